//! Answers for the names cluster DNS is authoritative for, per the Kubernetes DNS-based
//! service discovery specification (schema 1.1.0) and CoreDNS's `kubernetes` plugin:
//!
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the cluster IP, of the ready endpoints of a
//!   headless Service, or a CNAME for an ExternalName Service;
//! - `<endpoint>.<svc>.<ns>.svc.<zone>`: the endpoint whose hostname (or dashed address)
//!   is `<endpoint>`;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for named ports;
//! - `<a-b-c-d>.<ns>.pod.<zone>`: the address in the name (CoreDNS `pods insecure`);
//! - `dns-version.<zone>` TXT, the zone's SOA and NS, `ns.dns.<zone>`;
//! - PTR for cluster IPs and endpoint addresses under `in-addr.arpa`/`ip6.arpa`.
//!
//! Names that are in the zone but do not exist get NXDOMAIN, existing names without data
//! of the asked type get NOERROR with no answer; both carry the zone's SOA. Everything
//! else (including reverse names of unknown addresses) is forwarded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::index::{Endpoint, Index, Kind, Service, undashed};

/// The schema version `dns-version.<zone>` reports.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How deep CNAMEs inside the cluster zone are followed.
const MAX_CHAIN: usize = 8;

/// The cluster zone's settings.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The cluster domain (lowercase, no trailing dot), e.g. `cluster.local`.
    pub domain: String,
    /// The cluster DNS address (`ns.dns.<zone>`).
    pub dns_ip: IpAddr,
    /// TTL of every answer (CoreDNS's default is 5 s).
    pub ttl: u32,
    /// The SOA serial.
    pub serial: u32,
}

impl Zone {
    /// A zone with the default TTL.
    pub fn new(domain: &str, dns_ip: IpAddr) -> Zone {
        Zone {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            dns_ip,
            ttl: 5,
            serial: 1,
        }
    }

    fn name(&self, relative: &str) -> Option<Name> {
        let s = if relative.is_empty() {
            format!("{}.", self.domain)
        } else {
            format!("{relative}.{}.", self.domain)
        };
        Name::from_ascii(s).ok()
    }

    /// The SOA record of `apex` (the cluster zone, or a reverse zone).
    pub fn soa(&self, apex: &str) -> Option<Record> {
        let soa = SOA::new(
            self.name("ns.dns")?,
            self.name("hostmaster")?,
            self.serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Some(Record::from_rdata(
            Name::from_ascii(format!("{apex}.")).ok()?.to_lowercase(),
            self.ttl,
            RData::SOA(soa),
        ))
    }
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not a cluster name: ask the upstream resolvers.
    Forward,
    /// A cluster name, but the watches have not listed yet.
    NotReady,
    /// An authoritative answer.
    Local(Local),
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (addresses of SRV targets, of the NS).
    pub additionals: Vec<Record>,
    /// A CNAME target outside the cluster zone, to resolve upstream and append.
    pub chase: Option<Name>,
}

impl Local {
    fn records(answers: Vec<Record>) -> Local {
        Local {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
            additionals: Vec::new(),
            chase: None,
        }
    }

    fn negative(zone: &Zone, apex: &str, rcode: ResponseCode) -> Local {
        Local {
            rcode,
            answers: Vec::new(),
            authorities: zone.soa(apex).into_iter().collect(),
            additionals: Vec::new(),
            chase: None,
        }
    }
}

/// A name under the zone: NXDOMAIN, NODATA, or records (NODATA if empty after filtering).
enum Found {
    Missing,
    Exists(Vec<Record>, Vec<Record>),
    Alias(Name),
}

/// Answers `qname`/`qtype` (class IN) from `index`.
pub fn resolve(index: &Index, zone: &Zone, qname: &Name, qtype: RecordType) -> Outcome {
    resolve_depth(index, zone, qname, qtype, 0)
}

fn resolve_depth(
    index: &Index,
    zone: &Zone,
    qname: &Name,
    qtype: RecordType,
    depth: usize,
) -> Outcome {
    let lower = qname.to_ascii().to_ascii_lowercase();
    let lower = lower.trim_end_matches('.');
    if let Some(ip) = parse_reverse(lower) {
        let Some(names) = index.reverse.get(&ip) else {
            return Outcome::Forward;
        };
        if qtype != RecordType::PTR {
            return Outcome::Forward;
        }
        let answers = names
            .iter()
            .filter_map(|r| {
                let rel = match &r.endpoint {
                    Some(ep) => format!("{ep}.{}.{}.svc", r.service, r.namespace),
                    None => format!("{}.{}.svc", r.service, r.namespace),
                };
                Some(Record::from_rdata(
                    qname.clone(),
                    zone.ttl,
                    RData::PTR(PTR(zone.name(&rel)?)),
                ))
            })
            .collect();
        return Outcome::Local(Local::records(answers));
    }
    let labels: Vec<&str> = if lower == zone.domain {
        Vec::new()
    } else if let Some(rest) = lower.strip_suffix(&format!(".{}", zone.domain)) {
        rest.split('.').rev().collect()
    } else {
        return Outcome::Forward;
    };
    if !index.synced {
        return Outcome::NotReady;
    }
    let found = lookup(index, zone, &labels, qname);
    let (mut answers, additionals) = match found {
        Found::Missing => {
            return Outcome::Local(Local::negative(zone, &zone.domain, ResponseCode::NXDomain));
        }
        Found::Exists(answers, additionals) => (answers, additionals),
        Found::Alias(target) => {
            let cname =
                Record::from_rdata(qname.clone(), zone.ttl, RData::CNAME(CNAME(target.clone())));
            if qtype == RecordType::CNAME {
                return Outcome::Local(Local::records(vec![cname]));
            }
            let mut rest = if depth >= MAX_CHAIN {
                Outcome::Local(Local::records(Vec::new()))
            } else {
                resolve_depth(index, zone, &target, qtype, depth + 1)
            };
            match &mut rest {
                Outcome::Forward => {
                    let mut l = Local::records(vec![cname]);
                    l.chase = Some(target);
                    return Outcome::Local(l);
                }
                Outcome::NotReady => return rest,
                Outcome::Local(l) => {
                    l.answers.insert(0, cname);
                    return rest;
                }
            }
        }
    };
    answers.retain(|r| r.record_type() == qtype || qtype == RecordType::ANY);
    if answers.is_empty() {
        return Outcome::Local(Local::negative(zone, &zone.domain, ResponseCode::NoError));
    }
    let mut l = Local::records(answers);
    if qtype == RecordType::SRV || qtype == RecordType::NS {
        l.additionals = additionals;
    }
    Outcome::Local(l)
}

/// Looks up the labels under the zone (right to left).
fn lookup(index: &Index, zone: &Zone, labels: &[&str], qname: &Name) -> Found {
    let ttl = zone.ttl;
    let rec = |data: RData| Record::from_rdata(qname.clone(), ttl, data);
    match labels {
        [] => {
            let mut answers: Vec<Record> = zone.soa(&zone.domain).into_iter().collect();
            let mut additionals = Vec::new();
            if let Some(ns) = zone.name("ns.dns") {
                answers.push(rec(RData::NS(NS(ns.clone()))));
                additionals.push(address(ns, zone.dns_ip, ttl));
            }
            Found::Exists(answers, additionals)
        }
        ["dns-version"] => Found::Exists(
            vec![rec(RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])))],
            Vec::new(),
        ),
        ["dns"] | ["svc"] | ["pod"] => Found::Exists(Vec::new(), Vec::new()),
        ["dns", "ns"] => Found::Exists(vec![address(qname.clone(), zone.dns_ip, ttl)], Vec::new()),
        ["svc", ns] | ["pod", ns] => {
            if index.namespaces.contains(*ns) {
                Found::Exists(Vec::new(), Vec::new())
            } else {
                Found::Missing
            }
        }
        ["pod", _ns, ip] => match undashed(ip) {
            Some(ip) => Found::Exists(vec![address(qname.clone(), ip, ttl)], Vec::new()),
            None => Found::Missing,
        },
        ["svc", ns, name] => match index.service(ns, name) {
            None => Found::Missing,
            Some(svc) => match &svc.kind {
                Kind::ExternalName(target) => match Name::from_ascii(format!("{target}.")) {
                    Ok(t) => Found::Alias(t),
                    Err(_) => Found::Exists(Vec::new(), Vec::new()),
                },
                Kind::ClusterIp(ips) => Found::Exists(
                    ips.iter()
                        .map(|ip| address(qname.clone(), *ip, ttl))
                        .collect(),
                    Vec::new(),
                ),
                Kind::Headless => Found::Exists(
                    svc.endpoints
                        .iter()
                        .map(|e| address(qname.clone(), e.ip, ttl))
                        .collect(),
                    Vec::new(),
                ),
            },
        },
        ["svc", ns, name, ep] => match index.service(ns, name) {
            None => Found::Missing,
            Some(svc) if matches!(svc.kind, Kind::ExternalName(_)) => Found::Missing,
            Some(svc) => {
                let matching: Vec<Record> = svc
                    .endpoints
                    .iter()
                    .filter(|e| e.label() == *ep)
                    .map(|e| address(qname.clone(), e.ip, ttl))
                    .collect();
                if !matching.is_empty() {
                    Found::Exists(matching, Vec::new())
                } else if ep
                    .strip_prefix('_')
                    .is_some_and(|proto| srv_ports(svc, proto, None).next().is_some())
                {
                    // `_tcp.<svc>...`: an empty non-terminal above the SRV names.
                    Found::Exists(Vec::new(), Vec::new())
                } else {
                    Found::Missing
                }
            }
        },
        ["svc", ns, name, proto, port] => {
            let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_'))
            else {
                return Found::Missing;
            };
            match index.service(ns, name) {
                None => Found::Missing,
                Some(svc) => srv(zone, svc, ns, name, proto, port, qname),
            }
        }
        _ => Found::Missing,
    }
}

/// The (endpoint or None for the Service, port) pairs for `_<port>._<proto>`.
fn srv_ports<'a>(
    svc: &'a Service,
    proto: &'a str,
    port: Option<&'a str>,
) -> Box<dyn Iterator<Item = (Option<&'a Endpoint>, u16)> + 'a> {
    let matches = move |p: &&super::index::Port| {
        !p.name.is_empty() && p.protocol == proto && port.is_none_or(|n| p.name == n)
    };
    match &svc.kind {
        Kind::ExternalName(_) => Box::new(std::iter::empty()),
        Kind::ClusterIp(_) => Box::new(svc.ports.iter().filter(matches).map(|p| (None, p.port))),
        Kind::Headless => Box::new(svc.endpoints.iter().flat_map(move |e| {
            e.ports
                .iter()
                .filter(matches)
                .map(move |p| (Some(e), p.port))
        })),
    }
}

fn srv(
    zone: &Zone,
    svc: &Service,
    ns: &str,
    name: &str,
    proto: &str,
    port: &str,
    qname: &Name,
) -> Found {
    let targets: Vec<(Option<&Endpoint>, u16)> = srv_ports(svc, proto, Some(port)).collect();
    if targets.is_empty() {
        return Found::Missing;
    }
    // Weights share 100 among the targets, as CoreDNS does.
    let weight = (100 / targets.len()).max(1) as u16;
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (ep, port) in targets {
        let rel = match ep {
            Some(e) => format!("{}.{name}.{ns}.svc", e.label()),
            None => format!("{name}.{ns}.svc"),
        };
        let Some(target) = zone.name(&rel) else {
            continue;
        };
        answers.push(Record::from_rdata(
            qname.clone(),
            zone.ttl,
            RData::SRV(SRV::new(0, weight, port, target.clone())),
        ));
        match (ep, &svc.kind) {
            (Some(e), _) => additionals.push(address(target, e.ip, zone.ttl)),
            (None, Kind::ClusterIp(ips)) => {
                additionals.extend(ips.iter().map(|ip| address(target.clone(), *ip, zone.ttl)))
            }
            _ => {}
        }
    }
    Found::Exists(answers, additionals)
}

fn address(name: Name, ip: IpAddr, ttl: u32) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

/// The address of a reverse name: `d.c.b.a.in-addr.arpa` or 32 nibbles under `ip6.arpa`.
pub fn parse_reverse(lower: &str) -> Option<IpAddr> {
    if let Some(rest) = lower.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = rest
            .split('.')
            .map(|o| {
                o.parse::<u8>()
                    .ok()
                    .filter(|_| o.len() <= 3 && !o.is_empty())
            })
            .collect::<Option<_>>()?;
        let [d, c, b, a] = octets[..] else {
            return None;
        };
        return Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    }
    let rest = lower.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|n| {
            (n.len() == 1)
                .then(|| u8::from_str_radix(n, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.rchunks(2).enumerate() {
        // Reversed: the last nibble in the name is the most significant.
        bytes[i] = (pair[1] << 4) | pair[0];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::super::index::Port;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn port(name: &str, port: u16) -> Port {
        Port {
            name: name.into(),
            protocol: "tcp".into(),
            port,
        }
    }

    fn fake_index() -> Index {
        let mut index = Index {
            synced: true,
            ..Default::default()
        };
        index.namespaces.insert("empty".into());
        index.insert(
            "default",
            "web",
            Service {
                kind: Kind::ClusterIp(vec![ip("10.43.0.20")]),
                ports: vec![port("http", 80), port("", 81)],
                endpoints: vec![Endpoint {
                    ip: ip("10.42.0.9"),
                    hostname: None,
                    ports: vec![port("http", 8080)],
                }],
            },
        );
        index.insert(
            "db",
            "pg",
            Service {
                kind: Kind::Headless,
                ports: vec![port("pg", 5432)],
                endpoints: vec![
                    Endpoint {
                        ip: ip("10.42.0.5"),
                        hostname: Some("pg-0".into()),
                        ports: vec![port("pg", 5432)],
                    },
                    Endpoint {
                        ip: ip("10.42.0.6"),
                        hostname: None,
                        ports: vec![port("pg", 5432)],
                    },
                ],
            },
        );
        index.insert(
            "default",
            "ext",
            Service {
                kind: Kind::ExternalName("www.example.com".into()),
                ports: vec![],
                endpoints: vec![],
            },
        );
        index.insert(
            "default",
            "alias",
            Service {
                kind: Kind::ExternalName("web.default.svc.cluster.local".into()),
                ports: vec![],
                endpoints: vec![],
            },
        );
        index.insert(
            "default",
            "empty-hl",
            Service {
                kind: Kind::Headless,
                ports: vec![],
                endpoints: vec![],
            },
        );
        index
    }

    /// A compact rendering: `RCODE; answers; authority types; additionals; chase`.
    fn render(o: &Outcome) -> String {
        match o {
            Outcome::Forward => "forward".into(),
            Outcome::NotReady => "not-ready".into(),
            Outcome::Local(l) => {
                let rr = |v: &Vec<Record>| {
                    v.iter()
                        .map(|r| format!("{} {}", r.record_type(), r.data))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                format!(
                    "{}; {}; {}; {}{}",
                    l.rcode,
                    rr(&l.answers),
                    l.authorities
                        .iter()
                        .map(|r| r.record_type().to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    rr(&l.additionals),
                    l.chase
                        .as_ref()
                        .map(|c| format!("; chase {c}"))
                        .unwrap_or_default()
                )
            }
        }
    }

    #[test]
    fn answers() {
        let index = fake_index();
        let zone = Zone::new("cluster.local", ip("10.43.0.10"));
        use RecordType::*;
        let cases: &[(&str, RecordType, &str)] = &[
            (
                "web.default.svc.cluster.local.",
                A,
                "No Error; A 10.43.0.20; ; ",
            ),
            (
                "WEB.Default.SVC.cluster.local.",
                A,
                "No Error; A 10.43.0.20; ; ",
            ),
            ("web.default.svc.cluster.local.", AAAA, "No Error; ; SOA; "),
            ("web.default.svc.cluster.local.", TXT, "No Error; ; SOA; "),
            (
                "nope.default.svc.cluster.local.",
                A,
                "Non-Existent Domain; ; SOA; ",
            ),
            (
                "web.nope.svc.cluster.local.",
                A,
                "Non-Existent Domain; ; SOA; ",
            ),
            ("default.svc.cluster.local.", A, "No Error; ; SOA; "),
            ("empty.svc.cluster.local.", A, "No Error; ; SOA; "),
            ("nope.svc.cluster.local.", A, "Non-Existent Domain; ; SOA; "),
            ("svc.cluster.local.", A, "No Error; ; SOA; "),
            (
                "a.b.c.d.e.f.cluster.local.",
                A,
                "Non-Existent Domain; ; SOA; ",
            ),
            (
                "_http._tcp.web.default.svc.cluster.local.",
                SRV,
                "No Error; SRV 0 100 80 web.default.svc.cluster.local.; ; A 10.43.0.20",
            ),
            (
                "_http._udp.web.default.svc.cluster.local.",
                SRV,
                "Non-Existent Domain; ; SOA; ",
            ),
            (
                "_http._tcp.web.default.svc.cluster.local.",
                A,
                "No Error; ; SOA; ",
            ),
            (
                "_tcp.web.default.svc.cluster.local.",
                SRV,
                "No Error; ; SOA; ",
            ),
            (
                "_udp.web.default.svc.cluster.local.",
                SRV,
                "Non-Existent Domain; ; SOA; ",
            ),
            (
                "pg.db.svc.cluster.local.",
                A,
                "No Error; A 10.42.0.5,A 10.42.0.6; ; ",
            ),
            (
                "pg-0.pg.db.svc.cluster.local.",
                A,
                "No Error; A 10.42.0.5; ; ",
            ),
            (
                "10-42-0-6.pg.db.svc.cluster.local.",
                A,
                "No Error; A 10.42.0.6; ; ",
            ),
            (
                "pg-1.pg.db.svc.cluster.local.",
                A,
                "Non-Existent Domain; ; SOA; ",
            ),
            (
                "_pg._tcp.pg.db.svc.cluster.local.",
                SRV,
                "No Error; SRV 0 50 5432 pg-0.pg.db.svc.cluster.local.,\
                 SRV 0 50 5432 10-42-0-6.pg.db.svc.cluster.local.; ; A 10.42.0.5,A 10.42.0.6",
            ),
            (
                "empty-hl.default.svc.cluster.local.",
                A,
                "No Error; ; SOA; ",
            ),
            (
                "ext.default.svc.cluster.local.",
                A,
                "No Error; CNAME www.example.com.; ; ; chase www.example.com.",
            ),
            (
                "ext.default.svc.cluster.local.",
                CNAME,
                "No Error; CNAME www.example.com.; ; ",
            ),
            (
                "alias.default.svc.cluster.local.",
                A,
                "No Error; CNAME web.default.svc.cluster.local.,A 10.43.0.20; ; ",
            ),
            (
                "10-42-0-99.default.pod.cluster.local.",
                A,
                "No Error; A 10.42.0.99; ; ",
            ),
            (
                "10-42-0-99.default.pod.cluster.local.",
                AAAA,
                "No Error; ; SOA; ",
            ),
            (
                "x.default.pod.cluster.local.",
                A,
                "Non-Existent Domain; ; SOA; ",
            ),
            ("dns-version.cluster.local.", TXT, "No Error; TXT 1.1.0; ; "),
            ("ns.dns.cluster.local.", A, "No Error; A 10.43.0.10; ; "),
            (
                "cluster.local.",
                SOA,
                "No Error; SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5; ; ",
            ),
            (
                "cluster.local.",
                NS,
                "No Error; NS ns.dns.cluster.local.; ; A 10.43.0.10",
            ),
            (
                "20.0.43.10.in-addr.arpa.",
                PTR,
                "No Error; PTR web.default.svc.cluster.local.; ; ",
            ),
            (
                "5.0.42.10.in-addr.arpa.",
                PTR,
                "No Error; PTR pg-0.pg.db.svc.cluster.local.; ; ",
            ),
            ("1.1.168.192.in-addr.arpa.", PTR, "forward"),
            ("example.com.", A, "forward"),
            ("cluster.local.example.com.", A, "forward"),
        ];
        for (name, qtype, want) in cases {
            let got = render(&resolve(
                &index,
                &zone,
                &Name::from_ascii(name).unwrap(),
                *qtype,
            ));
            assert_eq!(&got, want, "{name} {qtype}");
        }
    }

    #[test]
    fn not_synced() {
        let index = Index::default();
        let zone = Zone::new("cluster.local", ip("10.43.0.10"));
        let q = |n: &str| resolve(&index, &zone, &Name::from_ascii(n).unwrap(), RecordType::A);
        assert_eq!(q("web.default.svc.cluster.local."), Outcome::NotReady);
        assert_eq!(q("example.com."), Outcome::Forward);
    }

    #[test]
    fn answers_keep_the_query_case() {
        let index = fake_index();
        let zone = Zone::new("cluster.local", ip("10.43.0.10"));
        let name = Name::from_ascii("Web.Default.svc.cluster.local.").unwrap();
        let Outcome::Local(l) = resolve(&index, &zone, &name, RecordType::A) else {
            panic!()
        };
        assert_eq!(
            l.answers[0].name.to_ascii(),
            "Web.Default.svc.cluster.local."
        );
    }

    #[test]
    fn reverse_names() {
        let cases = [
            ("4.3.2.1.in-addr.arpa", Some("1.2.3.4")),
            ("3.2.1.in-addr.arpa", None),
            ("x.3.2.1.in-addr.arpa", None),
            ("256.3.2.1.in-addr.arpa", None),
            (
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
                Some("fd00::1"),
            ),
            ("1.0.ip6.arpa", None),
            ("example.com", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_reverse(name), want.map(ip), "{name}");
        }
    }
}
