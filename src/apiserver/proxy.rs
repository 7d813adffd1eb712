//! The streaming pod subresources, proxied to the node's kubelet API as upstream does:
//! `pods/log` (GET, `text/plain`, streamed while following), `pods/exec`, `pods/attach`
//! and `pods/portforward` (GET with a WebSocket upgrade, POST with an SPDY/3.1 upgrade).
//!
//! The handler checks the pod (scheduled; not completed for exec/attach), defaults and
//! validates the container as the upstream REST storage does, finds the kubelet from the
//! Node (`status.addresses` and `status.daemonEndpoints.kubeletEndpoint.Port`), connects
//! over TLS with the API server's kubelet client certificate (the kubelet's self-signed
//! serving certificate is not verified, as with upstream's default of no
//! `--kubelet-certificate-authority`), and forwards the request: a `101` from the kubelet
//! joins both upgraded connections, any other answer to an upgrade request is relayed as
//! it came (kubectl falls back from WebSocket to SPDY on a non-101), and log errors become
//! `Status` bodies.
//!
//! Depends on: `api`, the registry (pod and node lookups). Must not depend on: `agent`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use serde_json::Value;

use super::State;
use super::handlers::Body;
use super::request::RequestInfo;
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::status::{Cause, Status};
use crate::httprelay::relay;

/// The default kubelet port when a Node does not report one.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Largest error body read from a kubelet.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The API server's client identity towards kubelets (PEM).
#[derive(Clone)]
pub struct KubeletClientConfig {
    /// Client certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl std::fmt::Debug for KubeletClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClientConfig")
            .field("cert_pem", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// Connects to kubelets.
pub struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
}

/// Accepts any kubelet serving certificate (kubelets serve self-signed ones), while still
/// checking the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl KubeletClient {
    /// A client presenting `cfg`'s certificate.
    pub fn new(cfg: &KubeletClientConfig) -> Result<KubeletClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cfg.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("kubelet client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes())
            .map_err(|e| format!("kubelet client key: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("kubelet client certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// The pod subresources this module serves.
pub const SUBRESOURCES: &[&str] = &["log", "exec", "attach", "portforward"];

/// Whether a request is for one of the proxied pod subresources.
pub fn handles(ri: &ResourceInfo, info: &RequestInfo) -> bool {
    ri.group.is_empty()
        && ri.plural == "pods"
        && info
            .subresource
            .as_deref()
            .is_some_and(|s| SUBRESOURCES.contains(&s))
}

/// Decoded query parameters (repeatable).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    fn all(&self, k: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// A boolean parameter as the API server decodes it (`true`/`1`; absent or `false`).
    fn flag(&self, k: &str) -> Result<bool, Status> {
        match self.get(k) {
            None => Ok(false),
            Some("true" | "True" | "1") => Ok(true),
            Some("false" | "False" | "0") => Ok(false),
            Some(v) => Err(Status::bad_request(format!(
                "invalid value for {k}: {v:?} is not a boolean"
            ))),
        }
    }
    fn number(&self, k: &str) -> Result<Option<i64>, Status> {
        self.get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    Status::bad_request(format!("invalid value for {k}: {v:?} is not an integer"))
                })
            })
            .transpose()
    }
}

/// Encodes a query value (RFC 3986 unreserved characters kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The container a request addresses: the given one if the pod has it (app, init or
/// ephemeral), else the only app container.
fn choose_container(pod: &Value, given: Option<&str>) -> Result<String, Status> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &pod["spec"];
    let app = names(&spec["containers"]);
    match given {
        Some(c) => {
            let known = app
                .iter()
                .chain(&names(&spec["initContainers"]))
                .chain(&names(&spec["ephemeralContainers"]))
                .any(|n| n == c);
            if known {
                Ok(c.to_string())
            } else {
                Err(Status::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match app.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(Status::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                let init = names(&spec["initContainers"]);
                if !init.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(Status::bad_request(msg))
            }
        },
    }
}

fn invalid_cause(field: &str, value: impl std::fmt::Display, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {value}: {why}"),
        field: field.into(),
    }
}

/// The kubelet query for `pods/log`, after upstream's `PodLogOptions` validation.
fn log_query(q: &Query, pod: &str) -> Result<Vec<(&'static str, String)>, Status> {
    let mut out = Vec::new();
    let mut causes = Vec::new();
    for flag in ["follow", "previous", "timestamps"] {
        if q.flag(flag)? {
            out.push((flag, "true".to_string()));
        }
    }
    let tail = q.number("tailLines")?;
    let limit = q.number("limitBytes")?;
    let since_seconds = q.number("sinceSeconds")?;
    let since_time = q.get("sinceTime");
    if let Some(t) = tail {
        if t < 0 {
            causes.push(invalid_cause(
                "tailLines",
                t,
                "must be greater than or equal to 0",
            ));
        }
        out.push(("tailLines", t.to_string()));
    }
    if let Some(l) = limit {
        if l < 1 {
            causes.push(invalid_cause("limitBytes", l, "must be greater than 0"));
        }
        out.push(("limitBytes", l.to_string()));
    }
    if let Some(s) = since_seconds {
        if s < 1 {
            causes.push(invalid_cause("sinceSeconds", s, "must be greater than 0"));
        }
        out.push(("sinceSeconds", s.to_string()));
    }
    if let Some(t) = since_time {
        let parsed = t
            .parse::<jiff::Timestamp>()
            .map_err(|e| Status::bad_request(format!("invalid value for sinceTime: {t:?}: {e}")))?;
        out.push(("sinceTime", parsed.to_string()));
    }
    if since_seconds.is_some() && since_time.is_some() {
        causes.push(Cause {
            reason: "FieldValueForbidden".into(),
            message: "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                .into(),
            field: String::new(),
        });
    }
    if !causes.is_empty() {
        return Err(Status::invalid("", "PodLogOptions", pod, causes));
    }
    Ok(out)
}

/// The kubelet query for exec and attach (`input`/`output`/`error`/`tty` = `1`, repeated
/// `command`), as upstream's API server builds it.
fn stream_query(q: &Query, exec: bool) -> Result<Vec<(&'static str, String)>, Status> {
    let stdin = q.flag("stdin")?;
    let stdout = q.flag("stdout")?;
    let stderr = q.flag("stderr")?;
    let tty = q.flag("tty")?;
    if !stdin && !stdout && !stderr {
        return Err(Status::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let mut out = Vec::new();
    if exec {
        let command = q.all("command");
        if command.is_empty() {
            return Err(Status::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        out.extend(command.into_iter().map(|c| ("command", c.to_string())));
    }
    for (on, key) in [
        (stdin, "input"),
        (stdout, "output"),
        (stderr, "error"),
        (tty, "tty"),
    ] {
        if on {
            out.push((key, "1".to_string()));
        }
    }
    Ok(out)
}

/// The kubelet's address (`host:port`) from the Node.
pub(crate) fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| {
            addrs
                .iter()
                .find(|a| a["type"] == *t)
                .and_then(|a| a["address"].as_str())
                .filter(|s| !s.is_empty())
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= 65535)
        .map(|p| p as u16)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_string(), port))
}

fn text_response(code: u16, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serves `pods/{log,exec,attach,portforward}`.
pub async fn serve(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    info: &RequestInfo,
    ri: &'static ResourceInfo,
) -> Result<Response<Body>, Status> {
    let sub = info.subresource.as_deref().unwrap_or_default();
    let (Some(ns), Some(name)) = (info.namespace.as_deref(), info.name.as_deref()) else {
        return Err(Status::not_found_path());
    };
    let method = req.method().clone();
    let allowed = if sub == "log" {
        method == Method::GET
    } else {
        method == Method::GET || method == Method::POST
    };
    if !allowed {
        return Err(Status::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let q = Query::parse(req.uri().query());
    let pod = state.registry.get(ri, Some(ns), name).await?;
    let node_name = pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (path, query) = match sub {
        "log" => {
            let query = log_query(&q, name)?;
            let container = choose_container(&pod, q.get("container"))?;
            if node_name.is_empty() {
                // Not scheduled yet: nothing has been logged.
                return Ok(text_response(200, ""));
            }
            (format!("/containerLogs/{ns}/{name}/{container}"), query)
        }
        "exec" | "attach" => {
            let container = choose_container(&pod, q.get("container"))?;
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if matches!(phase, "Succeeded" | "Failed") {
                let what = if sub == "exec" { "exec into" } else { "attach" };
                return Err(Status::bad_request(format!(
                    "cannot {what} a container in a completed pod; current phase is {phase}"
                )));
            }
            let query = stream_query(&q, sub == "exec")?;
            if node_name.is_empty() {
                return Err(Status::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            let verb = if sub == "exec" { "exec" } else { "attach" };
            (format!("/{verb}/{ns}/{name}/{container}"), query)
        }
        _ => {
            let mut query = Vec::new();
            for p in q.all("ports") {
                match p.parse::<u16>() {
                    Ok(port) if port > 0 => query.push(("port", port.to_string())),
                    _ => {
                        return Err(Status::invalid(
                            "",
                            "PodPortForwardOptions",
                            name,
                            vec![invalid_cause(
                                "ports",
                                p,
                                "must be between 1 and 65535, inclusive",
                            )],
                        ));
                    }
                }
            }
            if node_name.is_empty() {
                return Err(Status::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            (format!("/portForward/{ns}/{name}"), query)
        }
    };
    let nodes =
        lookup("", "v1", "nodes").ok_or_else(|| Status::internal("nodes are not served"))?;
    let node = state.registry.get(nodes, None, &node_name).await?;
    let (host, port) = kubelet_address(&node)
        .ok_or_else(|| Status::internal(format!("node {node_name:?} reports no address")))?;
    let Some(kubelet) = state.kubelet.as_ref() else {
        return Err(Status::internal(
            "the API server has no kubelet client credentials",
        ));
    };
    let query: Vec<String> = query
        .into_iter()
        .map(|(k, v)| format!("{k}={}", encode(&v)))
        .collect();
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = send(kubelet, &host, port, &method, &target, req.headers())
        .await
        .map_err(|e| {
            tracing::warn!(node = %node_name, error = %e, "kubelet request failed");
            Status::internal(e)
        })?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        crate::httprelay::join_upgraded(client_upgrade, backend_upgrade, "kubelet");
        return Ok(relay(resp));
    }
    if upgrade || resp.status().is_success() {
        return Ok(relay(resp));
    }
    Err(error_status(resp).await)
}

/// A kubelet's error answer as a Status, as upstream's response checker maps them.
async fn error_status(resp: Response<Incoming>) -> Status {
    let code = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
    match code {
        400 => Status::bad_request(text),
        404 => Status::new(404, "NotFound", text),
        401 => Status::new(401, "Unauthorized", text),
        403 => Status::new(403, "Forbidden", text),
        500 => Status::internal(text),
        _ => Status::new(code, "InternalError", text),
    }
}

/// Headers not forwarded to the kubelet: per-hop ones (the upgrade headers are kept: they
/// are the point), and the caller's own credentials.
fn dropped(name: &header::HeaderName) -> bool {
    crate::httprelay::hop_by_hop(name) || name.as_str().starts_with("impersonate-")
}

pub(crate) async fn send(
    kubelet: &KubeletClient,
    host: &str,
    port: u16,
    method: &Method,
    target: &str,
    headers: &http::HeaderMap,
) -> Result<Response<Incoming>, String> {
    let url = format!(
        "https://{}:{port}{target}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    );
    let fail = |e: &dyn std::fmt::Display| format!("{method} {url:?}: {e}");
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| fail(&"dial timed out"))?
    .map_err(|e| fail(&e))?;
    let _ = tcp.set_nodelay(true);
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?,
    };
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        kubelet.tls.connect(server_name, tcp),
    )
    .await
    .map_err(|_| fail(&"TLS handshake timed out"))?
    .map_err(|e| fail(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| fail(&e))?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "kubelet connection ended with an error");
        }
    });
    let mut out = Request::builder()
        .method(method.clone())
        .uri(target)
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(&e))?;
    for (name, value) in headers {
        if !dropped(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    let authority = format!(
        "{}:{port}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    );
    out.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(&authority).map_err(|e| fail(&e))?,
    );
    tokio::time::timeout(Duration::from_secs(30), sender.send_request(out))
        .await
        .map_err(|_| fail(&"no answer in 30s"))?
        .map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let c = |n: &[&str]| {
            Value::Array(
                n.iter()
                    .map(|n| json!({"name": n, "image": "busybox"}))
                    .collect(),
            )
        };
        json!({"metadata": {"name": "web"}, "spec": {"containers": c(containers), "initContainers": c(init)}})
    }

    #[test]
    fn container_defaulting() {
        let cases: &[(Value, Option<&str>, Result<&str, &str>)] = &[
            (pod(&["app"], &[]), None, Ok("app")),
            (pod(&["app", "side"], &[]), Some("side"), Ok("side")),
            (pod(&["app"], &["setup"]), Some("setup"), Ok("setup")),
            (
                pod(&["a", "b"], &[]),
                None,
                Err("a container name must be specified for pod web, choose one of: [a b]"),
            ),
            (
                pod(&["a", "b"], &["i"]),
                None,
                Err(
                    "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [i]",
                ),
            ),
            (
                pod(&["app"], &[]),
                Some("nope"),
                Err("container nope is not valid for pod web"),
            ),
        ];
        for (p, given, want) in cases {
            let got = choose_container(p, *given).map_err(|s| s.message);
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{given:?}");
        }
    }

    #[test]
    fn log_options_are_validated_and_forwarded() {
        let q = Query::parse(Some(
            "container=c&follow=true&tailLines=10&timestamps=1&sinceTime=2024-05-01T10%3A00%3A00Z",
        ));
        let got = log_query(&q, "web").unwrap();
        assert_eq!(
            got,
            vec![
                ("follow", "true".to_string()),
                ("timestamps", "true".into()),
                ("tailLines", "10".into()),
                ("sinceTime", "2024-05-01T10:00:00Z".into())
            ]
        );
        let bad = log_query(
            &Query::parse(Some(
                "tailLines=-1&sinceSeconds=5&sinceTime=2024-05-01T10:00:00Z",
            )),
            "web",
        )
        .unwrap_err();
        assert_eq!(bad.code, 422);
        assert!(
            bad.message.starts_with("PodLogOptions \"web\" is invalid"),
            "{}",
            bad.message
        );
        assert_eq!(bad.causes.len(), 2);
        assert_eq!(
            log_query(&Query::parse(Some("follow=maybe")), "web")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            log_query(&Query::parse(Some("limitBytes=x")), "web")
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn exec_query_uses_kubelet_parameters() {
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo+hi%3B+exit+3&container=c&stdin=true&stdout=true&stderr=true",
        ));
        let got = stream_query(&q, true).unwrap();
        let rendered: Vec<String> = got
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        assert_eq!(
            rendered.join("&"),
            "command=sh&command=-c&command=echo%20hi%3B%20exit%203&input=1&output=1&error=1"
        );
        assert_eq!(
            stream_query(&Query::parse(Some("command=ls")), true)
                .unwrap_err()
                .message,
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        assert_eq!(
            stream_query(&Query::parse(Some("stdout=true")), true)
                .unwrap_err()
                .message,
            "you must specify at least one command for the container"
        );
        assert_eq!(
            stream_query(&Query::parse(Some("stdout=true&tty=true")), false).unwrap(),
            vec![("output", "1".to_string()), ("tty", "1".into())]
        );
    }

    #[test]
    fn kubelet_addresses() {
        let node = |addrs: Value, port: Value| json!({"status": {"addresses": addrs, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
        let cases = [
            (
                node(
                    json!([{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}]),
                    json!(10250),
                ),
                Some(("10.0.0.5", 10250)),
            ),
            (
                node(json!([{"type": "Hostname", "address": "n1"}]), json!(12345)),
                Some(("n1", 12345)),
            ),
            (
                node(
                    json!([{"type": "InternalIP", "address": "10.0.0.5"}]),
                    json!(0),
                ),
                Some(("10.0.0.5", 10250)),
            ),
            (node(json!([]), json!(10250)), None),
        ];
        for (n, want) in cases {
            assert_eq!(kubelet_address(&n), want.map(|(h, p)| (h.to_string(), p)));
        }
    }
}
