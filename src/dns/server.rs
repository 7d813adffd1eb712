//! The DNS protocol side: turns request packets into answer packets (cluster names from the
//! index, the rest through the forwarder), serves them over UDP (truncating to the
//! client's payload size with the TC bit) and TCP (RFC 1035 length framing, several
//! queries per connection), and manages the `kaji-dns` dummy interface holding the
//! cluster DNS address (or the address on `lo` where the kernel lacks the dummy driver).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::Error;
use super::answer::{self, Outcome, Zone};
use super::forward::{EDNS_PAYLOAD, Flags, Forwarder};
use super::index::Index;

/// The dummy interface that holds the cluster DNS address on each node.
pub const INTERFACE: &str = "kaji-dns";

/// How long an idle TCP connection stays open.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers are limited to the client's payload size.
    Udp,
    /// TCP: answers up to 64 KiB.
    Tcp,
}

/// Cluster DNS: the zone, the current index and the forwarder.
pub struct Dns {
    zone: Zone,
    index: RwLock<Arc<Index>>,
    forwarder: Forwarder,
}

/// A parsed request that needs the forwarder.
struct Pending {
    request: Message,
    outcome: Outcome,
    transport: Transport,
}

enum Step {
    Done(Option<Vec<u8>>),
    Async(Box<Pending>),
}

impl Dns {
    /// Cluster DNS for `zone`, forwarding through `forwarder`, with an empty (not yet
    /// synced) index.
    pub fn new(zone: Zone, forwarder: Forwarder) -> Dns {
        Dns {
            zone,
            index: RwLock::new(Arc::new(Index::default())),
            forwarder,
        }
    }

    /// Replaces the index.
    pub fn set_index(&self, index: Index) {
        if let Ok(mut current) = self.index.write() {
            *current = Arc::new(index);
        }
    }

    fn index(&self) -> Arc<Index> {
        self.index
            .read()
            .map(|i| i.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The answer packet for a request packet (`None`: drop it).
    pub async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match self.handle_local(packet, transport) {
            Step::Done(r) => r,
            Step::Async(p) => self.handle_forward(*p).await,
        }
    }

    /// Answers what needs no upstream; hands back the rest.
    fn handle_local(&self, packet: &[u8], transport: Transport) -> Step {
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                // Answer FORMERR if there is at least a header to take the ID from.
                if packet.len() < 12 || packet[2] & 0x80 != 0 {
                    return Step::Done(None);
                }
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return Step::Done(m.to_vec().ok());
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return Step::Done(None);
        }
        if request.metadata.op_code != OpCode::Query {
            return Step::Done(self.error(&request, ResponseCode::NotImp, transport));
        }
        let [query] = &request.queries[..] else {
            return Step::Done(self.error(&request, ResponseCode::FormErr, transport));
        };
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return Step::Done(self.error(&request, ResponseCode::Refused, transport));
        }
        let outcome = if query.query_class() == DNSClass::IN {
            answer::resolve(&self.index(), &self.zone, query.name(), query.query_type())
        } else {
            Outcome::Forward
        };
        match outcome {
            Outcome::NotReady => {
                Step::Done(self.error(&request, ResponseCode::ServFail, transport))
            }
            Outcome::Local(local) if local.chase.is_none() => {
                let mut m = response_to(&request);
                m.metadata.authoritative = true;
                m.metadata.response_code = local.rcode;
                m.answers = local.answers;
                m.authorities = local.authorities;
                m.additionals = local.additionals;
                Step::Done(encode(&request, m, transport))
            }
            Outcome::Forward => {
                // A fresh cached answer is served right here, without a task.
                match self.forwarder.cached_answer(query, flags_of(&request)) {
                    Some(up) => {
                        let mut m = response_to(&request);
                        fill_from_upstream(&mut m, up);
                        Step::Done(encode(&request, m, transport))
                    }
                    None => Step::Async(Box::new(Pending {
                        request,
                        outcome: Outcome::Forward,
                        transport,
                    })),
                }
            }
            outcome => Step::Async(Box::new(Pending {
                request,
                outcome,
                transport,
            })),
        }
    }

    async fn handle_forward(&self, p: Pending) -> Option<Vec<u8>> {
        let request = &p.request;
        let query = request.queries.first()?;
        let flags = flags_of(request);
        let mut m = response_to(request);
        match p.outcome {
            Outcome::Local(local) => {
                // An ExternalName's CNAME, followed upstream.
                let target = local.chase.clone()?;
                let mut q = query.clone();
                q.set_name(target);
                m.metadata.authoritative = true;
                m.answers = local.answers;
                match self.forwarder.resolve(&q, flags).await {
                    Ok(up) => {
                        m.metadata.response_code = up.metadata.response_code;
                        m.answers.extend(up.answers);
                        m.authorities = up.authorities;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "following an ExternalName upstream");
                        m.metadata.response_code = ResponseCode::ServFail;
                    }
                }
            }
            _ => match self.forwarder.resolve(query, flags).await {
                Ok(up) => fill_from_upstream(&mut m, up),
                Err(e) => {
                    tracing::debug!(name = %query.name(), error = %e, "forwarding failed");
                    m.metadata.response_code = ResponseCode::ServFail;
                }
            },
        }
        encode(request, m, p.transport)
    }

    fn error(&self, request: &Message, rcode: ResponseCode, t: Transport) -> Option<Vec<u8>> {
        let mut m = response_to(request);
        m.metadata.response_code = rcode;
        encode(request, m, t)
    }
}

/// The flags of `request` that shape the upstream query.
fn flags_of(request: &Message) -> Flags {
    Flags {
        recursion_desired: request.metadata.recursion_desired,
        checking_disabled: request.metadata.checking_disabled,
        dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
    }
}

/// Copies an upstream answer into the response to the client.
fn fill_from_upstream(m: &mut Message, up: Message) {
    m.metadata.response_code = up.metadata.response_code;
    m.metadata.authoritative = up.metadata.authoritative;
    m.metadata.authentic_data = up.metadata.authentic_data;
    m.answers = up.answers;
    m.authorities = up.authorities;
    m.additionals = up.additionals;
}

/// An empty response echoing the request's ID, question, RD flag (and EDNS).
fn response_to(request: &Message) -> Message {
    let mut m = Message::response(request.metadata.id, request.metadata.op_code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = request.metadata.checking_disabled;
    m.add_queries(request.queries.iter().cloned());
    if let Some(req_edns) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(req_edns.flags().dnssec_ok);
        m.set_edns(edns);
    }
    m
}

/// Encodes a response; over UDP an answer larger than the client takes (512 bytes, or its
/// EDNS payload size) is replaced by an empty one with the TC bit, so it retries over TCP.
fn encode(request: &Message, m: Message, transport: Transport) -> Option<Vec<u8>> {
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(
            request
                .edns
                .as_ref()
                .map(|e| e.max_payload())
                .unwrap_or(512)
                .clamp(512, 4096),
        ),
    };
    match m.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Some(bytes),
        Ok(_) => {
            let mut t = m.truncate();
            t.metadata.truncation = true;
            t.to_vec().ok()
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding a DNS answer");
            let mut err = response_to(request);
            err.metadata.response_code = ResponseCode::ServFail;
            err.to_vec().ok()
        }
    }
}

/// Serves UDP queries on `socket` until `shutdown`.
pub async fn serve_udp(dns: Arc<Dns>, socket: UdpSocket, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux; keep serving.
                    tracing::debug!(error = %e, "DNS UDP receive");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        match dns.handle_local(&buf[..n], Transport::Udp) {
            Step::Done(Some(answer)) => {
                let _ = socket.send_to(&answer, from).await;
            }
            Step::Done(None) => {}
            Step::Async(p) => {
                let (dns, socket) = (dns.clone(), socket.clone());
                tokio::spawn(async move {
                    if let Some(answer) = dns.handle_forward(*p).await {
                        let _ = socket.send_to(&answer, from).await;
                    }
                });
            }
        }
    }
}

/// Serves TCP connections on `listener` until `shutdown`.
pub async fn serve_tcp(dns: Arc<Dns>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (dns, shutdown) = (dns.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tcp_connection(&dns, stream) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn tcp_connection(dns: &Dns, mut stream: TcpStream) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(answer) = dns.handle(&buf, Transport::Tcp).await else {
            continue;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Binds UDP and TCP port `port` on `ip`.
pub async fn bind(ip: IpAddr, port: u16) -> Result<(UdpSocket, TcpListener), Error> {
    let addr = SocketAddr::new(ip, port);
    let io = |source| Error::Io {
        path: addr.to_string(),
        source,
    };
    let udp = UdpSocket::bind(addr).await.map_err(io)?;
    let tcp = TcpListener::bind(addr).await.map_err(io)?;
    Ok((udp, tcp))
}

/// What kaji added to hold the cluster DNS address, to undo at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nothing: the address was already local.
    Nothing,
    /// The `kaji-dns` dummy interface.
    Dummy(IpAddr),
    /// The address on `lo` (kernels without the dummy driver).
    Loopback(IpAddr),
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Puts `ip` on the `kaji-dns` dummy interface (creating it), or on `lo` where the kernel
/// has no dummy driver, unless the address is already local elsewhere.
pub async fn ensure_address(ip: IpAddr) -> Result<Holder, Error> {
    let exists = ip_cmd(&["link", "show", INTERFACE]).await.is_ok();
    if !exists {
        // Already local (e.g. a node-local cache someone else runs): just serve on it.
        if std::net::UdpSocket::bind((ip, 0)).is_ok() {
            return Ok(Holder::Nothing);
        }
        if let Err(e) = ip_cmd(&["link", "add", INTERFACE, "type", "dummy"]).await {
            tracing::info!(error = %e, "no dummy interface; putting the cluster DNS address on lo");
            let cidr = host_cidr(ip);
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", "lo"];
            if ip.is_ipv6() {
                args.push("nodad");
            }
            ip_cmd(&args).await?;
            return Ok(Holder::Loopback(ip));
        }
    }
    let cidr = host_cidr(ip);
    let mut args = vec!["addr", "replace", cidr.as_str(), "dev", INTERFACE];
    if ip.is_ipv6() {
        args.push("nodad");
    }
    ip_cmd(&args).await?;
    ip_cmd(&["link", "set", INTERFACE, "up"]).await?;
    Ok(Holder::Dummy(ip))
}

/// Undoes [`ensure_address`].
pub async fn release_address(holder: Holder) {
    let result = match holder {
        Holder::Nothing => return,
        Holder::Dummy(_) => ip_cmd(&["link", "del", INTERFACE]).await,
        Holder::Loopback(ip) => ip_cmd(&["addr", "del", &host_cidr(ip), "dev", "lo"]).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "removing the cluster DNS address");
    }
}

async fn ip_cmd(args: &[&str]) -> Result<(), Error> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| Error::Io {
            path: "ip".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::index::{Kind, Service};
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn dns() -> Dns {
        let dns = Dns::new(
            Zone::new("cluster.local", "10.43.0.10".parse().unwrap()),
            Forwarder::new(vec![], 30),
        );
        let mut index = Index {
            synced: true,
            ..Default::default()
        };
        index.insert(
            "default",
            "web",
            Service {
                kind: Kind::ClusterIp(vec!["10.43.0.20".parse().unwrap()]),
                ports: vec![],
                endpoints: vec![],
            },
        );
        let many = (0..60)
            .map(|i| super::super::index::Endpoint {
                ip: IpAddr::from([10, 42, 1, i]),
                hostname: None,
                ports: vec![],
            })
            .collect();
        index.insert(
            "default",
            "many",
            Service {
                kind: Kind::Headless,
                ports: vec![],
                endpoints: many,
            },
        );
        dns.set_index(index);
        dns
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn packets() {
        let dns = dns();
        struct Case {
            packet: Vec<u8>,
            transport: Transport,
            rcode: Option<ResponseCode>,
            answers: usize,
            tc: bool,
        }
        let udp = Transport::Udp;
        let cases = [
            Case {
                packet: query("web.default.svc.cluster.local.", RecordType::A, None),
                transport: udp,
                rcode: Some(ResponseCode::NoError),
                answers: 1,
                tc: false,
            },
            // 60 A records do not fit in 512 bytes: TC, then TCP gets them all.
            Case {
                packet: query("many.default.svc.cluster.local.", RecordType::A, None),
                transport: udp,
                rcode: Some(ResponseCode::NoError),
                answers: 0,
                tc: true,
            },
            Case {
                packet: query("many.default.svc.cluster.local.", RecordType::A, Some(4096)),
                transport: udp,
                rcode: Some(ResponseCode::NoError),
                answers: 60,
                tc: false,
            },
            Case {
                packet: query("many.default.svc.cluster.local.", RecordType::A, None),
                transport: Transport::Tcp,
                rcode: Some(ResponseCode::NoError),
                answers: 60,
                tc: false,
            },
            // No upstream: forwarded names fail.
            Case {
                packet: query("example.com.", RecordType::A, None),
                transport: udp,
                rcode: Some(ResponseCode::ServFail),
                answers: 0,
                tc: false,
            },
            Case {
                packet: vec![
                    0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0xff, 0xff, 0, 0, 0, 0, 9,
                ],
                transport: udp,
                rcode: Some(ResponseCode::FormErr),
                answers: 0,
                tc: false,
            },
            Case {
                packet: vec![1, 2, 3],
                transport: udp,
                rcode: None,
                answers: 0,
                tc: false,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let got = dns.handle(&c.packet, c.transport).await;
            match (&c.rcode, got) {
                (None, got) => assert!(got.is_none(), "case {i}"),
                (Some(rcode), Some(bytes)) => {
                    let m = Message::from_vec(&bytes).unwrap();
                    assert_eq!(m.metadata.response_code, *rcode, "case {i}");
                    assert_eq!(m.answers.len(), c.answers, "case {i}");
                    assert_eq!(m.metadata.truncation, c.tc, "case {i}");
                    assert_eq!(m.metadata.message_type, MessageType::Response);
                    if c.transport == udp && !c.tc {
                        assert!(bytes.len() <= 4096);
                    }
                }
                (Some(_), None) => panic!("case {i}: no answer"),
            }
        }
    }

    #[tokio::test]
    async fn answer_echoes_id_and_flags() {
        let dns = dns();
        let bytes = dns
            .handle(
                &query("web.default.svc.cluster.local.", RecordType::A, Some(1232)),
                Transport::Udp,
            )
            .await
            .unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 4242);
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.answers[0].ttl, 5);
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
    }
}
