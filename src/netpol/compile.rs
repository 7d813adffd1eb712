//! Compiles NetworkPolicies and the pods and namespaces they select into the
//! `inet kaji-netpol` nftables table (pure: no IO).
//!
//! Layout of the table (IPv4 only, as the pod network):
//!
//! ```text
//! chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept
//!     ip saddr vmap { <egress-isolated local pod> : jump egress-<ip>, ... }
//!     ip daddr vmap { <ingress-isolated local pod> : jump ingress-<ip>, ... } }
//! chain egress-<ip>  { <allowed destination> return ... ; drop }
//! chain ingress-<ip> { <allowed source> accept ... ; drop }
//! ```
//!
//! A connection between two pods passes when the source's egress chain returns (or the
//! source is not egress-isolated) and the destination's ingress chain accepts (or the
//! destination is not ingress-isolated); only a connection's first packet is judged,
//! replies and related packets pass with `ct state`. Traffic the node itself sends goes
//! through the output hook, never forward, so it is always allowed (kubelet probes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};

use crate::api::selector::LabelSelector;

/// The nftables table of network policies (family `inet`).
pub const TABLE: &str = "kaji-netpol";

/// A pod as policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// `metadata.labels`.
    pub labels: Map<String, Value>,
    /// Named container ports: (name, protocol in lower case, port).
    pub ports: Vec<(String, String, u16)>,
    /// Whether it runs on this node (a policy target here).
    pub local: bool,
}

impl PodInfo {
    /// The pod's view, or `None` when policies do not concern it: host-network pods,
    /// pods without an IPv4 address, and finished pods.
    pub fn from_pod(pod: &Pod, node_name: &str) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
        let labels = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.clone()?;
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                Some((name, proto, u16::try_from(p.container_port).ok()?))
            })
            .collect();
        Some(PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip,
            labels,
            ports,
            local: spec.node_name.as_deref() == Some(node_name),
        })
    }

    fn named_port(&self, name: &str, proto: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && p == proto)
            .map(|(_, _, port)| *port)
    }
}

/// Namespace name → labels.
pub type Namespaces = BTreeMap<String, Map<String, Value>>;

/// The namespaces' labels, keyed by name.
pub fn namespaces<'a>(list: impl IntoIterator<Item = &'a Namespace>) -> Namespaces {
    list.into_iter()
        .filter_map(|ns| {
            let labels = ns
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            Some((ns.metadata.name.clone()?, labels))
        })
        .collect()
}

/// The compiled table: per-pod chains and the dispatch maps of the forward chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ruleset {
    /// Ingress-isolated local pods and their chains' rules.
    pub ingress: BTreeMap<Ipv4Addr, Vec<String>>,
    /// Egress-isolated local pods and their chains' rules.
    pub egress: BTreeMap<Ipv4Addr, Vec<String>>,
}

impl Ruleset {
    /// Whether no local pod is isolated (the table is not needed).
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty()
    }

    /// Rules in the per-pod chains.
    pub fn rule_count(&self) -> usize {
        self.ingress
            .values()
            .chain(self.egress.values())
            .map(Vec::len)
            .sum()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

fn selector(sel: Option<&KSelector>) -> LabelSelector {
    let v = serde_json::to_value(sel).unwrap_or(Value::Null);
    // A selector the API server accepted converts; anything else selects nothing.
    LabelSelector::from_label_selector_json(&v).unwrap_or_else(|_| LabelSelector::nothing())
}

/// The policy types, defaulted as the API server does if absent.
fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = p.spec.as_ref() else {
        return (false, false);
    };
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.is_some()),
    }
}

fn selects(p: &NetworkPolicy, pod: &PodInfo) -> bool {
    p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
        && p.spec.as_ref().is_some_and(|s| {
            // An absent podSelector (optional since 1.31) selects every pod.
            s.pod_selector
                .as_ref()
                .map_or_else(LabelSelector::everything, |x| selector(Some(x)))
                .matches(Some(&pod.labels))
        })
}

/// An IPv4 CIDR with its host bits cleared, as nft wants it.
fn cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((Ipv4Addr::from(u32::from(ip) & mask), len))
}

fn in_cidr(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net)
}

/// What a peer allows, resolved.
#[derive(Debug, Clone, PartialEq)]
enum Peer {
    /// These pod addresses.
    Pods(BTreeSet<Ipv4Addr>),
    /// A CIDR less the exceptions.
    Block((Ipv4Addr, u8), Vec<(Ipv4Addr, u8)>),
}

impl Peer {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        match self {
            Peer::Pods(ips) => ips.contains(&ip),
            Peer::Block(c, except) => in_cidr(ip, *c) && !except.iter().any(|e| in_cidr(ip, *e)),
        }
    }

    /// The nft match, `field` being `saddr` or `daddr`.
    fn expr(&self, field: &str) -> String {
        match self {
            Peer::Pods(ips) => {
                let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
                format!("ip {field} {{ {} }}", list.join(", "))
            }
            Peer::Block((net, len), except) => {
                let mut s = format!("ip {field} {net}/{len}");
                for (n, l) in except {
                    s.push_str(&format!(" ip {field} != {n}/{l}"));
                }
                s
            }
        }
    }
}

fn ip_block(b: &IPBlock) -> Option<Peer> {
    let c = cidr(&b.cidr)?;
    let except = b.except.iter().flatten().filter_map(|e| cidr(e)).collect();
    Some(Peer::Block(c, except))
}

/// The peer resolved against the cluster's pods, `None` if it matches nothing.
fn peer(
    p: &NetworkPolicyPeer,
    policy_ns: &str,
    pods: &[PodInfo],
    namespaces: &Namespaces,
) -> Option<Peer> {
    if let Some(b) = &p.ip_block {
        return ip_block(b);
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return None;
    }
    let pod_sel = p
        .pod_selector
        .as_ref()
        .map(|s| selector(Some(s)))
        .unwrap_or_default();
    let ns_sel = p.namespace_selector.as_ref().map(|s| selector(Some(s)));
    let ips: BTreeSet<Ipv4Addr> = pods
        .iter()
        .filter(|pod| match &ns_sel {
            None => pod.namespace == policy_ns,
            Some(sel) => sel.matches(namespaces.get(&pod.namespace)),
        })
        .filter(|pod| pod_sel.matches(Some(&pod.labels)))
        .map(|pod| pod.ip)
        .collect();
    (!ips.is_empty()).then_some(Peer::Pods(ips))
}

/// A port entry: protocol and either a number range, a name, or nothing (all ports).
#[derive(Debug, Clone, PartialEq)]
enum Port {
    Range(String, Option<(u16, u16)>),
    Named(String, String),
}

fn port(p: &NetworkPolicyPort) -> Option<Port> {
    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    Some(match &p.port {
        None => Port::Range(proto, None),
        Some(IntOrString::Int(n)) => {
            let from = u16::try_from(*n).ok()?;
            let to = p
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .filter(|e| *e >= from)
                .unwrap_or(from);
            Port::Range(proto, Some((from, to)))
        }
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            Ok(n) => Port::Range(proto, Some((n, n))),
            Err(_) => Port::Named(proto, name.clone()),
        },
    })
}

fn port_expr(proto: &str, range: Option<(u16, u16)>) -> String {
    match range {
        None => format!("meta l4proto {proto}"),
        Some((a, b)) if a == b => format!("meta l4proto {proto} th dport {a}"),
        Some((a, b)) => format!("meta l4proto {proto} th dport {a}-{b}"),
    }
}

fn join(parts: &[&str], verdict: &str) -> String {
    let mut s: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    s.push(verdict);
    s.join(" ")
}

/// One rule of a policy: its peers and ports (`None`: any).
type RuleRef<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// The rules of one pod's chain for `dir`, or `None` if no policy isolates it that way.
fn pod_chain(
    dir: Direction,
    target: &PodInfo,
    policies: &[&NetworkPolicy],
    pods: &[PodInfo],
    namespaces: &Namespaces,
) -> Option<Vec<String>> {
    let mut isolated = false;
    let mut rules: Vec<String> = Vec::new();
    let (field, verdict) = match dir {
        Direction::Ingress => ("saddr", "accept"),
        Direction::Egress => ("daddr", "return"),
    };
    for p in policies.iter().filter(|p| selects(p, target)) {
        let (ing, eg) = policy_types(p);
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        // Each rule: (peers, ports).
        let entries: Vec<RuleRef> = match dir {
            Direction::Ingress if ing => {
                isolated = true;
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect()
            }
            Direction::Egress if eg => {
                isolated = true;
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect()
            }
            _ => continue,
        };
        for (peers, ports) in entries {
            // `None` in `resolved` stands for "any peer".
            let resolved: Vec<Option<Peer>> = match peers.filter(|v| !v.is_empty()) {
                None => vec![None],
                Some(list) => list
                    .iter()
                    .filter_map(|x| peer(x, ns, pods, namespaces))
                    .map(Some)
                    .collect(),
            };
            let port_list: Vec<Option<Port>> = match ports.filter(|v| !v.is_empty()) {
                None => vec![None],
                // An unknown protocol matches nothing.
                Some(list) => list.iter().filter_map(port).map(Some).collect(),
            };
            for pe in &resolved {
                let pe_expr = pe.as_ref().map(|x| x.expr(field)).unwrap_or_default();
                for po in &port_list {
                    match po {
                        None => rules.push(join(&[&pe_expr], verdict)),
                        Some(Port::Range(proto, range)) => {
                            rules.push(join(&[&pe_expr, &port_expr(proto, *range)], verdict))
                        }
                        // A named port is the destination pod's: for ingress the target
                        // itself, for egress every pod the peer covers that names it.
                        Some(Port::Named(proto, name)) => match dir {
                            Direction::Ingress => {
                                if let Some(n) = target.named_port(name, proto) {
                                    rules.push(join(
                                        &[&pe_expr, &port_expr(proto, Some((n, n)))],
                                        verdict,
                                    ));
                                }
                            }
                            Direction::Egress => {
                                for dst in pods {
                                    if pe.as_ref().is_some_and(|x| !x.contains(dst.ip)) {
                                        continue;
                                    }
                                    if let Some(n) = dst.named_port(name, proto) {
                                        rules.push(join(
                                            &[
                                                &format!("ip daddr {}", dst.ip),
                                                &port_expr(proto, Some((n, n))),
                                            ],
                                            verdict,
                                        ));
                                    }
                                }
                            }
                        },
                    }
                }
            }
        }
    }
    if !isolated {
        return None;
    }
    // Identical rules from overlapping policies are kept once.
    let mut seen = BTreeSet::new();
    rules.retain(|r| seen.insert(r.clone()));
    rules.push("drop".to_string());
    Some(rules)
}

/// Compiles `policies` for the local pods among `pods` (all the cluster's pods, the
/// peers).
pub fn compile(policies: &[NetworkPolicy], pods: &[PodInfo], namespaces: &Namespaces) -> Ruleset {
    let policies: Vec<&NetworkPolicy> = policies.iter().collect();
    let mut rs = Ruleset::default();
    for target in pods.iter().filter(|p| p.local) {
        if let Some(r) = pod_chain(Direction::Ingress, target, &policies, pods, namespaces) {
            rs.ingress.insert(target.ip, r);
        }
        if let Some(r) = pod_chain(Direction::Egress, target, &policies, pods, namespaces) {
            rs.egress.insert(target.ip, r);
        }
    }
    rs
}

/// The `nft -f -` transaction that replaces the table with `rs` (or removes it when
/// `rs` is empty). Replacing the whole table in one transaction is atomic: no packet
/// ever sees a half-written table, and a restart never duplicates it.
pub fn script(rs: &Ruleset) -> String {
    let mut s = format!("add table inet {TABLE}\ndelete table inet {TABLE}\n");
    if rs.is_empty() {
        return s;
    }
    s.push_str(&format!("table inet {TABLE} {{\n"));
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    s.push_str("\t\tct state established,related accept\n");
    let vmap = |field: &str, kind: &str, m: &BTreeMap<Ipv4Addr, Vec<String>>| {
        let items: Vec<String> = m
            .keys()
            .map(|ip| format!("{ip} : jump {kind}-{ip}"))
            .collect();
        format!("\t\tip {field} vmap {{ {} }}\n", items.join(", "))
    };
    if !rs.egress.is_empty() {
        s.push_str(&vmap("saddr", "egress", &rs.egress));
    }
    if !rs.ingress.is_empty() {
        s.push_str(&vmap("daddr", "ingress", &rs.ingress));
    }
    s.push_str("\t}\n");
    for (kind, m) in [("egress", &rs.egress), ("ingress", &rs.ingress)] {
        for (ip, rules) in m {
            s.push_str(&format!("\tchain {kind}-{ip} {{\n"));
            for r in rules {
                s.push_str(&format!("\t\t{r}\n"));
            }
            s.push_str("\t}\n");
        }
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, labels: Value, local: bool) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            ip: ip.parse().unwrap(),
            labels: labels.as_object().cloned().unwrap_or_default(),
            ports: vec![("http".into(), "tcp".into(), 8080)],
            local,
        }
    }

    fn policy(ns: &str, spec: Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": ns},
            "spec": spec,
        }))
        .unwrap()
    }

    fn cluster() -> (Vec<PodInfo>, Namespaces) {
        let pods = vec![
            pod("default", "web", "10.42.0.2", json!({"app": "web"}), true),
            pod(
                "default",
                "front",
                "10.42.0.3",
                json!({"role": "frontend"}),
                true,
            ),
            pod("default", "other", "10.42.1.4", json!({}), false),
            pod(
                "prod",
                "front",
                "10.42.1.5",
                json!({"role": "frontend"}),
                false,
            ),
        ];
        let mut ns = Namespaces::new();
        ns.insert("default".into(), Map::new());
        ns.insert(
            "prod".into(),
            json!({"env": "prod"}).as_object().cloned().unwrap(),
        );
        (pods, ns)
    }

    #[test]
    fn compiles_policies() {
        let web = "10.42.0.2".parse::<Ipv4Addr>().unwrap();
        let front = "10.42.0.3".parse::<Ipv4Addr>().unwrap();
        // (case, policy spec, expected ingress of web, expected egress of front)
        type Case = (
            &'static str,
            Value,
            Option<Vec<&'static str>>,
            Option<Vec<&'static str>>,
        );
        let cases: Vec<Case> = vec![
            (
                "no policy selects: nothing isolated",
                json!({"podSelector": {"matchLabels": {"app": "nothing"}}}),
                None,
                None,
            ),
            (
                "deny all ingress",
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}),
                Some(vec!["drop"]),
                None,
            ),
            (
                "policyTypes defaulted to Ingress",
                json!({"podSelector": {"matchLabels": {"app": "web"}}}),
                Some(vec!["drop"]),
                None,
            ),
            (
                "allow from frontend pods of the namespace",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}]}),
                Some(vec!["ip saddr { 10.42.0.3 } accept", "drop"]),
                None,
            ),
            (
                "namespaceSelector with podSelector",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                                              "podSelector": {"matchLabels": {"role": "frontend"}}}]}]}),
                Some(vec!["ip saddr { 10.42.1.5 } accept", "drop"]),
                None,
            ),
            (
                "all namespaces",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
                Some(vec![
                    "ip saddr { 10.42.0.2, 10.42.0.3, 10.42.1.4, 10.42.1.5 } accept",
                    "drop",
                ]),
                None,
            ),
            (
                "ipBlock with except and host bits",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"ipBlock": {"cidr": "10.42.1.9/16", "except": ["10.42.1.0/24"]}}]}]}),
                Some(vec![
                    "ip saddr 10.42.0.0/16 ip saddr != 10.42.1.0/24 accept",
                    "drop",
                ]),
                None,
            ),
            (
                "ports: numeric, range, named, protocol only",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"ports": [{"port": 80}, {"port": 9000, "endPort": 9100, "protocol": "UDP"},
                                              {"port": "http"}, {"port": "nope"}, {"protocol": "SCTP"}]}]}),
                Some(vec![
                    "meta l4proto tcp th dport 80 accept",
                    "meta l4proto udp th dport 9000-9100 accept",
                    "meta l4proto tcp th dport 8080 accept",
                    "meta l4proto sctp accept",
                    "drop",
                ]),
                None,
            ),
            (
                "empty from: all sources",
                json!({"podSelector": {}, "ingress": [{}]}),
                Some(vec!["accept", "drop"]),
                None,
            ),
            (
                "egress deny all for frontend",
                json!({"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"]}),
                None,
                Some(vec!["drop"]),
            ),
            (
                "egress defaulted when rules present; named port per destination",
                json!({"podSelector": {"matchLabels": {"role": "frontend"}},
                       "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                   "ports": [{"port": "http"}]}]}),
                None,
                Some(vec![
                    "ip daddr 10.42.0.2 meta l4proto tcp th dport 8080 return",
                    "drop",
                ]),
            ),
            (
                "peer selecting nothing allows nothing",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"x": "y"}}}]}]}),
                Some(vec!["drop"]),
                None,
            ),
        ];
        let (pods, ns) = cluster();
        for (name, spec, ingress, egress) in cases {
            let rs = compile(&[policy("default", spec)], &pods, &ns);
            let want = |v: Option<Vec<&str>>| v.map(|v| v.iter().map(|s| s.to_string()).collect());
            assert_eq!(
                rs.ingress.get(&web).cloned(),
                want(ingress),
                "{name}: ingress"
            );
            assert_eq!(
                rs.egress.get(&front).cloned(),
                want(egress),
                "{name}: egress"
            );
            // Remote pods are never targets here.
            assert!(
                rs.ingress
                    .keys()
                    .chain(rs.egress.keys())
                    .all(|ip| ip.octets()[2] == 0),
                "{name}"
            );
        }
    }

    #[test]
    fn policies_of_other_namespaces_do_not_isolate() {
        let (pods, ns) = cluster();
        let rs = compile(&[policy("prod", json!({"podSelector": {}}))], &pods, &ns);
        assert!(rs.is_empty());
        assert_eq!(
            script(&rs),
            format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
        );
    }

    #[test]
    fn union_of_policies_and_script_shape() {
        let (pods, ns) = cluster();
        let p1 = policy(
            "default",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}),
        );
        let p2 = policy(
            "default",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}, {"ports": [{"port": 81}]}]}),
        );
        let rs = compile(&[p1, p2], &pods, &ns);
        let web: Ipv4Addr = "10.42.0.2".parse().unwrap();
        assert_eq!(
            rs.ingress[&web],
            vec![
                "meta l4proto tcp th dport 80 accept".to_string(),
                "meta l4proto tcp th dport 81 accept".to_string(),
                "drop".to_string()
            ]
        );
        let s = script(&rs);
        assert!(s.contains("ip daddr vmap { 10.42.0.2 : jump ingress-10.42.0.2, 10.42.0.3 : jump ingress-10.42.0.3 }"), "{s}");
        assert!(s.contains("ct state established,related accept"));
        assert!(!s.contains("saddr vmap"));
        assert_eq!(rs.rule_count(), 6);
    }

    #[tokio::test]
    async fn script_is_valid_nft() {
        // `nft -c` checks syntax without touching the kernel's rules (needs nft and
        // CAP_NET_ADMIN; skipped otherwise).
        let (pods, ns) = cluster();
        let rs = compile(
            &[
                policy(
                    "default",
                    json!({"podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                                          {"podSelector": {}}],
                                 "ports": [{"port": 80}, {"port": 9000, "endPort": 9100, "protocol": "UDP"}, {"protocol": "SCTP"}]}]}),
                ),
                policy(
                    "default",
                    json!({"podSelector": {"matchLabels": {"role": "frontend"}}, "egress": [{}]}),
                ),
            ],
            &pods,
            &ns,
        );
        let s = script(&rs);
        match crate::netfilter::check(&s).await {
            Ok(()) => {}
            // Without nft, or without the privilege to check against the kernel.
            Err(crate::netfilter::Error::NotFound) => {}
            Err(crate::netfilter::Error::Rejected(e)) if e.contains("Operation not permitted") => {}
            Err(e) => panic!("{e}\n{s}"),
        }
    }
}
