//! Forwarding of non-cluster names to the node's upstream resolvers (the `nameserver`s of
//! its resolv.conf), over UDP with a TCP retry when the answer is truncated, and a small
//! positive/negative cache that honours the answers' TTLs (capped).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::Error;

/// The EDNS payload size kaji advertises (the DNS flag day 2020 recommendation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Most entries the cache holds.
const CACHE_ENTRIES: usize = 10_000;

/// The resolv.conf holding the node's upstream resolvers: `flag` if given; else, as k3s
/// does, /etc/resolv.conf unless it names only loopback resolvers (systemd-resolved's
/// 127.0.0.53 stub, which pods with `dnsPolicy: Default` cannot reach), then
/// /run/systemd/resolve/resolv.conf; /etc/resolv.conf as the last resort.
pub fn node_resolv_conf(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    let etc = PathBuf::from("/etc/resolv.conf");
    for candidate in [
        etc.clone(),
        PathBuf::from("/run/systemd/resolve/resolv.conf"),
    ] {
        let text = std::fs::read_to_string(&candidate).unwrap_or_default();
        if nameservers(&text).iter().any(|ip| !ip.is_loopback()) {
            return candidate;
        }
    }
    etc
}

/// The `nameserver` addresses of a resolv.conf (a `%zone` suffix is dropped).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next()? == "nameserver").then_some(())?;
            parts.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

/// The upstream resolvers for `resolv_conf`, leaving out `own` (cluster DNS itself: asking
/// it would loop) and unspecified addresses.
pub fn upstreams(resolv_conf: &Path, own: IpAddr) -> Result<Vec<SocketAddr>, Error> {
    let text = std::fs::read_to_string(resolv_conf).map_err(|source| Error::Io {
        path: resolv_conf.display().to_string(),
        source,
    })?;
    Ok(nameservers(&text)
        .into_iter()
        .filter(|ip| *ip != own && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: String,
    qtype: RecordType,
    qclass: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl Key {
    fn new(query: &Query, flags: Flags) -> Key {
        Key {
            name: query.name().to_ascii().to_ascii_lowercase(),
            qtype: query.query_type(),
            qclass: query.query_class(),
            dnssec_ok: flags.dnssec_ok,
            checking_disabled: flags.checking_disabled,
        }
    }
}

struct Entry {
    message: Message,
    stored: Instant,
    ttl: u32,
}

/// Asks upstream resolvers, through a cache.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    max_ttl: u32,
    cache: Mutex<HashMap<Key, Entry>>,
}

/// The request flags that shape an upstream query.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    /// Recursion desired.
    pub recursion_desired: bool,
    /// Checking disabled (DNSSEC).
    pub checking_disabled: bool,
    /// The EDNS DO bit.
    pub dnssec_ok: bool,
}

impl Forwarder {
    /// A forwarder to `upstreams` (tried in order) caching answers for at most `max_ttl`
    /// seconds.
    pub fn new(upstreams: Vec<SocketAddr>, max_ttl: u32) -> Forwarder {
        Forwarder {
            upstreams,
            timeout: Duration::from_secs(2),
            max_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The upstream resolvers.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream answer to `query` (from the cache if fresh), with TTLs counting down.
    pub async fn resolve(&self, query: &Query, flags: Flags) -> Result<Message, Error> {
        let key = Key::new(query, flags);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let mut last = Error::NoUpstream;
        for upstream in &self.upstreams {
            match self.exchange(*upstream, query, flags).await {
                Ok(m) => {
                    self.store(key, &m);
                    return Ok(m);
                }
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "upstream resolver failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The cached answer to `query`, if fresh (no IO).
    pub fn cached_answer(&self, query: &Query, flags: Flags) -> Option<Message> {
        self.cached(&Key::new(query, flags))
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(key)?;
        let age = entry.stored.elapsed().as_secs();
        if age >= u64::from(entry.ttl) {
            return None;
        }
        let mut m = entry.message.clone();
        let age = age as u32;
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(m)
    }

    fn store(&self, key: Key, m: &Message) {
        let Some(ttl) = cache_ttl(m, self.max_ttl) else {
            return;
        };
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Entry {
                message: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    async fn exchange(
        &self,
        upstream: SocketAddr,
        query: &Query,
        flags: Flags,
    ) -> Result<Message, Error> {
        let id: u16 = rand::random();
        let mut req = Message::new(id, MessageType::Query, OpCode::Query);
        req.metadata.recursion_desired = flags.recursion_desired;
        req.metadata.checking_disabled = flags.checking_disabled;
        req.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(flags.dnssec_ok);
        req.set_edns(edns);
        let bytes = req.to_vec().map_err(|e| Error::Proto(e.to_string()))?;
        let m = tokio::time::timeout(self.timeout, udp_exchange(upstream, &bytes, id, query))
            .await
            .map_err(|_| Error::Timeout(upstream))??;
        if !m.metadata.truncation {
            return Ok(m);
        }
        tokio::time::timeout(self.timeout, tcp_exchange(upstream, &bytes, id))
            .await
            .map_err(|_| Error::Timeout(upstream))?
    }
}

async fn udp_exchange(
    upstream: SocketAddr,
    bytes: &[u8],
    id: u16,
    query: &Query,
) -> Result<Message, Error> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let io = |source| Error::Upstream { upstream, source };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        // Answers that are not for this question (spoofing attempts, late answers) are
        // dropped.
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
            && m.queries.first().is_none_or(|q| q.name() == query.name())
        {
            return Ok(m);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, Error> {
    let io = |source| Error::Upstream { upstream, source };
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| Error::Proto("query too long".into()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(io)?;
    let n = stream.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let m = Message::from_vec(&buf).map_err(|e| Error::Proto(e.to_string()))?;
    if m.metadata.id != id {
        return Err(Error::Proto("answer for another query".into()));
    }
    Ok(m)
}

/// How long an upstream answer may be cached: the smallest answer TTL of a positive
/// answer, the SOA's negative TTL (RFC 2308) of NXDOMAIN/NODATA, capped at `max`; `None`
/// for answers not to cache (errors, truncated, no SOA on a negative answer, TTL 0).
fn cache_ttl(m: &Message, max: u32) -> Option<u32> {
    if m.metadata.truncation {
        return None;
    }
    let ttl = match m.metadata.response_code {
        ResponseCode::NoError if !m.answers.is_empty() => m.answers.iter().map(|r| r.ttl).min(),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    }?;
    Some(ttl.min(max)).filter(|t| *t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                    nameserver bogus\noptions ndots:2\nnameserver 127.0.0.53\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "127.0.0.53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn upstreams_skip_cluster_dns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(
            &p,
            "nameserver 10.43.0.10\nnameserver 0.0.0.0\nnameserver 127.0.0.1\n",
        )
        .unwrap();
        let got = upstreams(&p, "10.43.0.10".parse().unwrap()).unwrap();
        assert_eq!(got, vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(node_resolv_conf(Some(&p)), p);
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
        )
    }

    #[test]
    fn ttls() {
        let a = |ttl| {
            Record::from_rdata(
                Name::from_ascii("a.example.").unwrap(),
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            )
        };
        let msg = |rcode, answers: Vec<Record>, authorities: Vec<Record>, tc| {
            let mut m = Message::response(1, OpCode::Query);
            m.metadata.response_code = rcode;
            m.metadata.truncation = tc;
            m.answers = answers;
            m.authorities = authorities;
            m
        };
        let cases = [
            (
                msg(ResponseCode::NoError, vec![a(300), a(20)], vec![], false),
                Some(20),
            ),
            (
                msg(ResponseCode::NoError, vec![a(300)], vec![], false),
                Some(30),
            ),
            (msg(ResponseCode::NoError, vec![a(0)], vec![], false), None),
            (msg(ResponseCode::NoError, vec![a(10)], vec![], true), None),
            (
                msg(ResponseCode::NXDomain, vec![], vec![soa(60, 7)], false),
                Some(7),
            ),
            (
                msg(ResponseCode::NoError, vec![], vec![soa(4, 60)], false),
                Some(4),
            ),
            (msg(ResponseCode::NXDomain, vec![], vec![], false), None),
            (msg(ResponseCode::ServFail, vec![], vec![], false), None),
        ];
        for (i, (m, want)) in cases.iter().enumerate() {
            assert_eq!(cache_ttl(m, 30), *want, "case {i}");
        }
    }

    #[tokio::test]
    async fn forwards_and_caches() {
        // A one-shot upstream on loopback: answers the first query, then goes away; the
        // second resolve must come from the cache.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.add_queries(q.queries.clone());
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A::new(192, 0, 2, 7)),
            ));
            sock.send_to(&r.to_vec().unwrap(), from).await.unwrap();
        });
        let f = Forwarder::new(vec![addr], 30);
        let q = Query::query(Name::from_ascii("www.example.").unwrap(), RecordType::A);
        let m = f.resolve(&q, Flags::default()).await.unwrap();
        assert_eq!(m.answers[0].data, RData::A(A::new(192, 0, 2, 7)));
        upstream.await.unwrap();
        let again = f.resolve(&q, Flags::default()).await.unwrap();
        assert_eq!(again.answers[0].data, RData::A(A::new(192, 0, 2, 7)));
        assert!(again.answers[0].ttl <= 60);
        let other = Query::query(Name::from_ascii("other.example.").unwrap(), RecordType::A);
        let f2 = Forwarder {
            timeout: Duration::from_millis(200),
            ..Forwarder::new(vec![addr], 30)
        };
        assert!(f2.resolve(&other, Flags::default()).await.is_err());
    }
}
