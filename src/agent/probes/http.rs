//! A small HTTP/1.1 GET client for `httpGet` probes and lifecycle hooks, over a tokio
//! `TcpStream` (and rustls for HTTPS, without certificate verification, as upstream).
//!
//! One request per connection (`Connection: close`), the kubelet's default headers
//! (`User-Agent: kube-probe/1.33`, `Accept: */*`) unless the pod overrides them, up to 10
//! KiB of body, one deadline for the whole exchange including redirects. Probes follow
//! redirects only to the same host name (otherwise the 3xx itself is the answer, a
//! warning upstream); hooks follow any. Error messages read like Go's `net/http`, which is
//! what users of upstream see in events.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::worker::Outcome;

/// The User-Agent of probe requests.
pub const PROBE_USER_AGENT: &str = "kube-probe/1.33";
/// The User-Agent of lifecycle hook requests.
pub const HOOK_USER_AGENT: &str = "kube-lifecycle/1.33";
/// How much of a response body is read (upstream's limit).
const MAX_BODY: usize = 10 << 10;
/// Maximum size of the status line and headers.
const MAX_HEAD: usize = 64 << 10;
/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Errors of one GET, worded like Go's client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be built from the pod spec.
    #[error("{0}")]
    Invalid(String),
    /// The TCP connection failed.
    #[error("Get \"{url}\": dial tcp {addr}: {reason}")]
    Dial {
        /// The URL.
        url: String,
        /// `host:port`.
        addr: String,
        /// Why (`connect: connection refused`).
        reason: String,
    },
    /// The deadline passed before the response headers arrived.
    #[error(
        "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
    )]
    Timeout {
        /// The URL.
        url: String,
    },
    /// The TLS handshake failed.
    #[error("Get \"{url}\": {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server broke the protocol or the connection.
    #[error("Get \"{url}\": {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redirects did not end.
    #[error("Get \"{url}\": stopped after 10 redirects")]
    TooManyRedirects {
        /// The last URL.
        url: String,
    },
}

/// HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS without certificate verification.
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// `host:port` (`[v6]:port`).
    pub fn host_port(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_port(),
            self.path
        )
    }
}

/// `host:port`, with brackets around IPv6 addresses.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A GET request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Where.
    pub url: Url,
    /// Header lines in order, defaults included.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A request with the kubelet's default headers merged into the pod's `headers`: a
    /// `User-Agent` and `Accept: */*` unless set (an empty `Accept` removes it).
    pub fn new(url: Url, headers: Vec<(String, String)>, user_agent: &str) -> Request {
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut out: Vec<(String, String)> = Vec::new();
        if !has("User-Agent") {
            out.push(("User-Agent".into(), user_agent.into()));
        }
        if !has("Accept") {
            out.push(("Accept".into(), "*/*".into()));
        }
        out.extend(
            headers
                .into_iter()
                .filter(|(n, v)| !(n.eq_ignore_ascii_case("Accept") && v.is_empty())),
        );
        Request { url, headers: out }
    }

    /// The `Host` header the pod set, if any.
    fn host_header(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Host"))
            .map(|(_, v)| v.as_str())
    }

    /// The request bytes.
    fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n",
            self.url.path,
            self.host_header()
                .map(str::to_string)
                .unwrap_or_else(|| self.url.host_port())
        );
        for (name, value) in self.headers.iter().filter(|(n, _)| {
            !n.eq_ignore_ascii_case("Host") && !n.eq_ignore_ascii_case("Connection")
        }) {
            // Header injection through the pod spec is not possible: the API validates
            // names; values lose any line breaks here.
            let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            s.push_str(&format!("{name}: {value}\r\n"));
        }
        s.push_str("Connection: close\r\n\r\n");
        s.into_bytes()
    }
}

/// A response: status, headers and the first 10 KiB of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header lines.
    pub headers: Vec<(String, String)>,
    /// The (decoded, truncated) body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Resolves a port of a probe or hook: a number, a named container port, or a number in
/// a string (upstream's `ResolveContainerPort`).
pub fn resolve_port(port: &Value, container: &Value) -> Result<u16, String> {
    let n = match port {
        Value::Number(n) => n.as_i64().unwrap_or(-1),
        Value::String(name) => match container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name.as_str())
        {
            Some(p) => p["containerPort"].as_i64().unwrap_or(-1),
            None => name
                .parse::<i64>()
                .map_err(|_| format!("strconv.Atoi: parsing {name:?}: invalid syntax"))?,
        },
        other => return Err(format!("intOrString had no kind: {other}")),
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

/// Builds the request of an `httpGet` action: scheme (HTTP), host (the pod IP), port,
/// path and headers.
pub fn build(
    action: &Value,
    container: &Value,
    pod_ip: Option<&str>,
    user_agent: &str,
) -> Result<Request, String> {
    let scheme = match action["scheme"]
        .as_str()
        .unwrap_or("HTTP")
        .to_ascii_uppercase()
        .as_str()
    {
        "HTTP" | "" => Scheme::Http,
        "HTTPS" => Scheme::Https,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let host = match action["host"].as_str().filter(|h| !h.is_empty()) {
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => pod_ip
            .filter(|ip| !ip.is_empty())
            .ok_or("the pod has no IP address yet")?
            .to_string(),
    };
    let port = resolve_port(&action["port"], container)?;
    let headers = action["httpHeaders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some((
                h["name"].as_str()?.to_string(),
                h["value"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect();
    let url = Url {
        scheme,
        host,
        port,
        path: request_path(action["path"].as_str().unwrap_or("")),
    };
    Ok(Request::new(url, headers, user_agent))
}

/// The request target for a spec path: a leading `/`, spaces and non-ASCII
/// percent-encoded, the query kept, a fragment dropped.
fn request_path(path: &str) -> String {
    let path = path.split('#').next().unwrap_or("");
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for b in path.bytes() {
        if b.is_ascii_graphic() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which redirects to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Only those to the original host name (probes).
    SameHost,
    /// Any (hooks).
    Any,
}

/// GET with redirects, all within `timeout`.
pub async fn get(req: &Request, timeout: Duration, follow: Follow) -> Result<Response, Error> {
    let deadline = Instant::now() + timeout;
    let mut req = req.clone();
    let original_host = req.url.host.to_ascii_lowercase();
    let mut redirects = 0;
    loop {
        let resp = send(&req, deadline).await?;
        let location = resp
            .header("Location")
            .filter(|_| matches!(resp.status, 301 | 302 | 303 | 307 | 308));
        let Some((next, absolute)) = location.and_then(|l| resolve(&req.url, l)) else {
            return Ok(resp);
        };
        if follow == Follow::SameHost && next.host.to_ascii_lowercase() != original_host {
            return Ok(resp);
        }
        if redirects >= MAX_REDIRECTS {
            return Err(Error::TooManyRedirects {
                url: next.to_string(),
            });
        }
        redirects += 1;
        if absolute {
            // A custom Host header survives relative redirects only (as Go's client).
            req.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("Host"));
        }
        req.url = next;
    }
}

/// An `httpGet` probe: 2xx and 3xx pass (a redirect not followed is a warning).
pub async fn probe(req: &Request, timeout: Duration) -> Outcome {
    match get(req, timeout, Follow::SameHost).await {
        Err(e) => Outcome::Failure(e.to_string()),
        Ok(r) if (300..400).contains(&r.status) => Outcome::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            String::from_utf8_lossy(&r.body)
        )),
        Ok(r) if (200..300).contains(&r.status) => Outcome::Success,
        Ok(r) => Outcome::Failure(format!("HTTP probe failed with statuscode: {}", r.status)),
    }
}

/// An `httpGet` lifecycle hook: any response counts; an HTTPS request answered in plain
/// HTTP is retried over HTTP, as upstream does.
pub async fn hook(req: &Request, timeout: Duration) -> Result<(), Error> {
    match get(req, timeout, Follow::Any).await {
        Ok(_) => Ok(()),
        Err(Error::Tls { reason, .. })
            if req.url.scheme == Scheme::Https && reason.contains("InvalidContentType") =>
        {
            let mut plain = req.clone();
            plain.url.scheme = Scheme::Http;
            plain
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("Authorization"));
            get(&plain, timeout, Follow::Any).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Resolves a `Location` against the current URL; also says whether it was absolute.
pub fn resolve(base: &Url, location: &str) -> Option<(Url, bool)> {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or("");
    let lower = location.to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("http://") {
        (Scheme::Http, &location[7..])
    } else if lower.starts_with("https://") {
        (Scheme::Https, &location[8..])
    } else if let Some(rest) = location.strip_prefix("//") {
        (base.scheme, rest)
    } else {
        let path = if location.starts_with('/') {
            location.to_string()
        } else if location.starts_with('?') {
            format!("{}{location}", base.path.split('?').next().unwrap_or("/"))
        } else if location.is_empty() {
            base.path.clone()
        } else {
            let dir = base.path.split('?').next().unwrap_or("/");
            format!(
                "{}{location}",
                &dir[..dir.rfind('/').map(|i| i + 1).unwrap_or(0)]
            )
        };
        return Some((
            Url {
                path: request_path(&remove_dot_segments(&path)),
                ..base.clone()
            },
            false,
        ));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => p.parse().ok()?,
        None => scheme.default_port(),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Some((
        Url {
            scheme,
            host,
            port,
            path: request_path(&remove_dot_segments(&path)),
        },
        true,
    ))
}

/// RFC 3986 dot-segment removal on the path part.
fn remove_dot_segments(path: &str) -> String {
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = p.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut joined = out.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    match query {
        Some(q) => format!("{joined}?{q}"),
        None => joined,
    }
}

/// One request on a new connection.
async fn send(req: &Request, deadline: Instant) -> Result<Response, Error> {
    let url = req.url.to_string();
    let addr = req.url.host_port();
    let timeout = || Error::Timeout { url: url.clone() };
    let tcp = match tokio::time::timeout_at(
        deadline,
        TcpStream::connect((req.url.host.as_str(), req.url.port)),
    )
    .await
    {
        Err(_) => return Err(timeout()),
        Ok(Err(e)) => {
            return Err(Error::Dial {
                url,
                addr,
                reason: format!("connect: {}", os_error(&e)),
            });
        }
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    match req.url.scheme {
        Scheme::Http => exchange(tcp, req, deadline, &url).await,
        Scheme::Https => {
            let name = ServerName::try_from(req.url.host.clone())
                .map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
            let connector = tls_connector().map_err(|reason| Error::Tls {
                url: url.clone(),
                reason,
            })?;
            let tls = match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
                Err(_) => return Err(timeout()),
                Ok(Err(e)) => {
                    return Err(Error::Tls {
                        url,
                        reason: tls_reason(&e),
                    });
                }
                Ok(Ok(s)) => s,
            };
            exchange(tls, req, deadline, &url).await
        }
    }
}

/// An I/O error in Go's words: "connection refused", not "Connection refused (os error 111)".
pub fn os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn tls_reason(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(m)) => format!("tls: received corrupt message ({m:?})"),
        Some(other) => format!("tls: {other}"),
        None => os_error(e),
    }
}

/// The shared HTTPS connector (ring, no certificate verification).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<tokio_rustls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        })
        .clone()
}

/// Accepts any server certificate (upstream probes skip verification) but still checks
/// the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Writes the request and reads the response on a connected stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &Request,
    deadline: Instant,
    url: &str,
) -> Result<Response, Error> {
    let transport = |reason: String| Error::Transport {
        url: url.to_string(),
        reason,
    };
    let head = async {
        s.write_all(&req.encode())
            .await
            .map_err(|e| transport(os_error(&e)))?;
        s.flush().await.map_err(|e| transport(os_error(&e)))?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            let (status, headers, consumed) =
                read_head(&mut s, &mut buf).await.map_err(transport)?;
            buf.drain(..consumed);
            // 1xx interim responses are skipped (101 is not expected for a GET).
            if !(100..200).contains(&status) {
                return Ok((status, headers, buf));
            }
        }
    };
    let (status, headers, rest) = match tokio::time::timeout_at(deadline, head).await {
        Err(_) => {
            return Err(Error::Timeout {
                url: url.to_string(),
            });
        }
        Ok(r) => r?,
    };
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    match tokio::time::timeout_at(deadline, read_body(&mut s, &resp, rest)).await {
        Err(_) => {
            return Err(transport("context deadline exceeded (Client.Timeout or context cancellation while reading body)".into()));
        }
        Ok(Ok(body)) => resp.body = body,
        Ok(Err(reason)) => return Err(transport(reason)),
    }
    Ok(resp)
}

/// Reads up to the end of a response head; returns status, headers and the bytes of
/// `buf` it used.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<(String, String)>, usize), String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let (status, headers) = parse_head(&buf[..end])?;
            return Ok((status, headers, end + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err("net/http: server response headers exceeded 65536 bytes; aborted".into());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| os_error(&e))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "EOF".into()
            } else {
                "unexpected EOF".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("net/http: malformed HTTP response {status_line:?}"));
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| format!("malformed HTTP status code {code:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed MIME header line: {line}"));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((status, headers))
}

/// Reads the body per its framing (Content-Length, chunked, or until close), keeping
/// at most `MAX_BODY` bytes and stopping once that much has arrived.
async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    resp: &Response,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if resp.status == 204 || resp.status == 304 {
        return Ok(Vec::new());
    }
    let chunked = resp
        .header("Transfer-Encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let length = if chunked {
        None
    } else {
        resp.header("Content-Length")
            .and_then(|l| l.parse::<usize>().ok())
    };
    let mut chunk = [0u8; 4096];
    loop {
        if chunked {
            match decode_chunked(&buf) {
                Chunked::Done(body) => return Ok(body),
                Chunked::Partial(body) if body.len() >= MAX_BODY => return Ok(body),
                Chunked::Partial(_) => {}
                Chunked::Invalid => return Err("invalid chunked encoding".into()),
            }
        } else if let Some(len) = length {
            if buf.len() >= len.min(MAX_BODY) {
                buf.truncate(len.min(MAX_BODY));
                return Ok(buf);
            }
        } else if buf.len() >= MAX_BODY {
            buf.truncate(MAX_BODY);
            return Ok(buf);
        }
        let n = s.read(&mut chunk).await.map_err(|e| os_error(&e))?;
        if n == 0 {
            if chunked || length.is_some() {
                return Err("unexpected EOF".into());
            }
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

enum Chunked {
    /// The whole body (up to the size limit) arrived.
    Done(Vec<u8>),
    /// Only part of it so far.
    Partial(Vec<u8>),
    /// Not chunked encoding.
    Invalid,
}

fn decode_chunked(mut data: &[u8]) -> Chunked {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Chunked::Partial(body);
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Chunked::Invalid;
        };
        data = &data[line_end + 2..];
        if size == 0 {
            body.truncate(MAX_BODY);
            return Chunked::Done(body);
        }
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..data.len().min(size)]);
            return Chunked::Partial(body);
        }
        body.extend_from_slice(&data[..size]);
        if body.len() >= MAX_BODY {
            body.truncate(MAX_BODY);
            return Chunked::Done(body);
        }
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;
    use tokio::net::TcpListener;

    use super::*;

    fn url(scheme: Scheme, host: &str, port: u16, path: &str) -> Url {
        Url {
            scheme,
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    /// A one-shot-per-connection HTTP server answering each request with the next canned
    /// response (the last repeats); records the raw requests.
    struct Canned {
        port: u16,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn canned(responses: Vec<String>) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = requests.clone();
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let resp =
                    responses[i.min(responses.len() - 1)].replace("{port}", &port.to_string());
                i += 1;
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    // A TLS ClientHello (0x16) is answered at once, in plain HTTP.
                    while find(&buf, b"\r\n\r\n").is_none() && buf.first() != Some(&0x16) {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    if resp == "HANG" {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Canned { port, requests }
    }

    fn req(port: u16, path: &str, headers: &[(&str, &str)]) -> Request {
        Request::new(
            url(Scheme::Http, "127.0.0.1", port, path),
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            PROBE_USER_AGENT,
        )
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn probe_outcomes_by_status() {
        let cases = [
            (OK.to_string(), Outcome::Success),
            (
                "HTTP/1.0 204 No Content\r\n\r\n".to_string(),
                Outcome::Success,
            ),
            (
                "HTTP/1.1 399 Odd\r\nContent-Length: 0\r\n\r\n".to_string(),
                Outcome::Warning("Probe terminated redirects, Response body: ".into()),
            ),
            (
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad".to_string(),
                Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
            ),
            (
                "HTTP/1.1 404 Not Found\r\n\r\n".to_string(),
                Outcome::Failure("HTTP probe failed with statuscode: 404".into()),
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                    .to_string(),
                Outcome::Success,
            ),
            (
                "garbage\r\n\r\n".to_string(),
                Outcome::Failure(String::new()),
            ),
        ];
        for (resp, want) in cases {
            let server = canned(vec![resp.clone()]).await;
            let got = probe(&req(server.port, "/healthz", &[]), Duration::from_secs(2)).await;
            match want {
                Outcome::Failure(m) if m.is_empty() => {
                    assert!(
                        matches!(&got, Outcome::Failure(m) if m.contains("malformed HTTP response")),
                        "{resp:?}: {got:?}"
                    )
                }
                want => assert_eq!(got, want, "{resp:?}"),
            }
        }
    }

    #[tokio::test]
    async fn request_carries_kubelet_headers() {
        let server = canned(vec![OK.into()]).await;
        probe(&req(server.port, "/ready?x=1", &[]), Duration::from_secs(2)).await;
        let sent = server.requests.lock().unwrap()[0].clone();
        let want = format!(
            "GET /ready?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            server.port
        );
        assert_eq!(sent, want);

        // The pod's headers override Host, User-Agent and Accept (empty Accept = none).
        let server = canned(vec![OK.into()]).await;
        let r = req(
            server.port,
            "/",
            &[
                ("Host", "example.test"),
                ("user-agent", "mine"),
                ("Accept", ""),
                ("X-Custom", "a\r\nb"),
            ],
        );
        probe(&r, Duration::from_secs(2)).await;
        let sent = server.requests.lock().unwrap()[0].clone();
        assert_eq!(
            sent,
            "GET / HTTP/1.1\r\nHost: example.test\r\nuser-agent: mine\r\nX-Custom: ab\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn redirects() {
        // Same host: followed (to another path).
        let server = canned(vec![
            "HTTP/1.1 302 Found\r\nLocation: /other\r\nContent-Length: 0\r\n\r\n".into(),
            OK.into(),
        ])
        .await;
        assert_eq!(
            probe(&req(server.port, "/", &[]), Duration::from_secs(2)).await,
            Outcome::Success
        );
        assert!(server.requests.lock().unwrap()[1].starts_with("GET /other HTTP/1.1"));

        // Another host: not followed by probes, a warning with the body.
        let server = canned(vec!["HTTP/1.1 301 Moved\r\nLocation: http://elsewhere.invalid/x\r\nContent-Length: 4\r\n\r\nmove".into()]).await;
        assert_eq!(
            probe(&req(server.port, "/", &[]), Duration::from_secs(2)).await,
            Outcome::Warning("Probe terminated redirects, Response body: move".into())
        );
        assert_eq!(server.requests.lock().unwrap().len(), 1);

        // Absolute redirect to the same host name on another port is followed.
        let target = canned(vec![OK.into()]).await;
        let server = canned(vec![format!(
            "HTTP/1.1 307 Temporary\r\nLocation: http://127.0.0.1:{}/t\r\n\r\n",
            target.port
        )])
        .await;
        assert_eq!(
            probe(&req(server.port, "/", &[]), Duration::from_secs(2)).await,
            Outcome::Success
        );
        assert!(target.requests.lock().unwrap()[0].starts_with("GET /t HTTP/1.1"));

        // Endless redirects stop after 10.
        let server = canned(vec![
            "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n".into(),
        ])
        .await;
        let got = probe(&req(server.port, "/", &[]), Duration::from_secs(5)).await;
        assert_eq!(
            got,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{}/loop\": stopped after 10 redirects",
                server.port
            ))
        );
        assert_eq!(server.requests.lock().unwrap().len(), 11);

        // Hooks follow any host.
        let server = canned(vec![format!(
            "HTTP/1.1 302 Found\r\nLocation: http://localhost:{}/x\r\n\r\n",
            target.port
        )])
        .await;
        hook(&req(server.port, "/", &[]), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(target.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bodies() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
                "hello world",
            ),
            ("HTTP/1.1 200 OK\r\n\r\nuntil close", "until close"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi and more",
                "hi",
            ),
        ];
        for (resp, body) in cases {
            let server = canned(vec![resp.into()]).await;
            let r = get(
                &req(server.port, "/", &[]),
                Duration::from_secs(2),
                Follow::SameHost,
            )
            .await
            .unwrap();
            assert_eq!(String::from_utf8_lossy(&r.body), body, "{resp:?}");
        }
        let big = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(50_000));
        let server = canned(vec![big]).await;
        let r = get(
            &req(server.port, "/", &[]),
            Duration::from_secs(2),
            Follow::SameHost,
        )
        .await
        .unwrap();
        assert_eq!(r.body.len(), MAX_BODY);
    }

    #[tokio::test]
    async fn connection_errors_read_like_go() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let got = probe(&req(closed, "/healthz", &[]), Duration::from_secs(2)).await;
        assert_eq!(
            got,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{closed}/healthz\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
            ))
        );

        let server = canned(vec!["HANG".into()]).await;
        let started = std::time::Instant::now();
        let got = probe(&req(server.port, "/", &[]), Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            got,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{}/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                server.port
            ))
        );
    }

    #[tokio::test]
    async fn https_without_verification() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["probe.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 2048];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let r = Request::new(
            url(Scheme::Https, "127.0.0.1", port, "/"),
            vec![],
            PROBE_USER_AGENT,
        );
        assert_eq!(
            probe(&r, Duration::from_secs(5)).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );

        // A hook to an HTTPS URL answered in plain HTTP falls back to HTTP.
        let plain = canned(vec![OK.into()]).await;
        let r = Request::new(
            url(Scheme::Https, "127.0.0.1", plain.port, "/hook"),
            vec![],
            HOOK_USER_AGENT,
        );
        hook(&r, Duration::from_secs(2)).await.unwrap();
        let reqs = plain.requests.lock().unwrap().clone();
        assert!(
            reqs.last().unwrap().starts_with("GET /hook HTTP/1.1")
                && reqs
                    .last()
                    .unwrap()
                    .contains("User-Agent: kube-lifecycle/1.33"),
            "{reqs:?}"
        );
    }

    #[test]
    fn resolving_locations() {
        let base = url(Scheme::Http, "10.0.0.5", 8080, "/a/b?q=1");
        let cases = [
            (
                "/x",
                Some((url(Scheme::Http, "10.0.0.5", 8080, "/x"), false)),
            ),
            (
                "c",
                Some((url(Scheme::Http, "10.0.0.5", 8080, "/a/c"), false)),
            ),
            (
                "../up",
                Some((url(Scheme::Http, "10.0.0.5", 8080, "/up"), false)),
            ),
            (
                "?z=2",
                Some((url(Scheme::Http, "10.0.0.5", 8080, "/a/b?z=2"), false)),
            ),
            (
                "https://Example.com/p#frag",
                Some((url(Scheme::Https, "Example.com", 443, "/p"), true)),
            ),
            (
                "http://u:pw@10.0.0.5:9090",
                Some((url(Scheme::Http, "10.0.0.5", 9090, "/"), true)),
            ),
            (
                "//[fd00::1]:81/v6",
                Some((url(Scheme::Http, "fd00::1", 81, "/v6"), true)),
            ),
            ("http://:80/", None),
            ("http://host:notaport/", None),
        ];
        for (loc, want) in cases {
            assert_eq!(resolve(&base, loc), want, "{loc}");
        }
    }

    #[test]
    fn building_from_the_pod_spec() {
        let container = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        let cases = [
            (
                json!({"port": "http", "path": "healthz"}),
                Some("10.42.0.7"),
                Ok("http://10.42.0.7:8080/healthz"),
            ),
            (
                json!({"port": 443, "scheme": "HTTPS", "host": "fd00::2"}),
                None,
                Ok("https://[fd00::2]:443/"),
            ),
            (
                json!({"port": "9000", "path": "/a b"}),
                Some("10.42.0.7"),
                Ok("http://10.42.0.7:9000/a%20b"),
            ),
            (
                json!({"port": "metrics"}),
                Some("10.42.0.7"),
                Err("strconv.Atoi: parsing \"metrics\": invalid syntax"),
            ),
            (
                json!({"port": 70000}),
                Some("10.42.0.7"),
                Err("invalid port number: 70000"),
            ),
            (
                json!({"port": 80}),
                None,
                Err("the pod has no IP address yet"),
            ),
        ];
        for (action, ip, want) in cases {
            let got = build(&action, &container, ip, PROBE_USER_AGENT).map(|r| r.url.to_string());
            assert_eq!(got.as_deref().map_err(String::as_str), want, "{action}");
        }
        let r = build(&json!({"port": 80, "httpHeaders": [{"name": "X-A", "value": "1"}, {"name": "Accept", "value": "application/json"}]}), &container, Some("1.2.3.4"), PROBE_USER_AGENT).unwrap();
        assert_eq!(
            r.headers,
            vec![
                ("User-Agent".into(), "kube-probe/1.33".into()),
                ("X-A".into(), "1".into()),
                ("Accept".into(), "application/json".into())
            ]
        );
    }

    #[test]
    fn go_style_io_errors() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(os_error(&e), "connection refused");
        assert_eq!(
            os_error(&std::io::Error::other("Weird thing")),
            "weird thing"
        );
    }
}
