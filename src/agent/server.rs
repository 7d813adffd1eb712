//! The kubelet API of the node agent: HTTPS (port 10250 by default, `--kubelet-port`) with
//! the endpoints the API server proxies `pods/log`, `pods/exec`, `pods/attach` and
//! `pods/portforward` to, at the upstream kubelet's paths:
//!
//! - `GET /containerLogs/{ns}/{pod}/{container}`: the container's log file (see
//!   [`super::logs`]), streamed while following;
//! - `GET|POST /exec/{ns}/{pod}[/{uid}]/{container}?command=…&stdin&stdout&stderr&tty`,
//!   `/attach/…` and `/portForward/{ns}/{pod}[/{uid}]`: the container (or sandbox) is
//!   found through CRI by its kubelet labels, CRI `Exec`/`Attach`/`PortForward` hands out
//!   a one-time URL on containerd's streaming server, and the client's upgrade request
//!   (WebSocket or SPDY/3.1, whatever the client speaks) is forwarded there unchanged; a
//!   `101` is relayed and bytes are copied both ways, any other answer is relayed as is
//!   (kubectl falls back from WebSocket to SPDY on its own).
//!
//! - `GET /stats/summary` and `GET /metrics/resource`: the latest resource usage sample
//!   (see [`super::stats`]) as the summary API's JSON and as Prometheus text.
//!
//! The serving certificate is self-signed and kept in `<data-dir>/agent/`. Callers must
//! present a client certificate signed by the cluster CA whose subject is the API
//! server's kubelet client identity ([`APISERVER_CLIENT_CN`]); anyone else gets 401/403.
//!
//! Depends on: `agent::cri`, `agent::logs`, `pki` (certificate identities). Must not
//! depend on: `apiserver`, `store`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::cri::{Cri, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use super::logs::{self, LogOptions};
use super::{AgentConfig, Error};

/// The user (certificate CN) the API server presents to kubelets; the only caller the
/// kubelet API serves.
pub const APISERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// The default kubelet API port.
pub const DEFAULT_PORT: u16 = 10250;

const SERVING_CERT: &str = "serving-kubelet.crt";
const SERVING_KEY: &str = "serving-kubelet.key";

/// Response body: a buffer or a stream (logs, relayed answers).
type Body = UnsyncBoxBody<Bytes, Infallible>;

struct Ctx {
    cri: Cri,
    stats: super::stats::Stats,
    shutdown: CancellationToken,
}

/// Starts the kubelet API on `0.0.0.0:<cfg.kubelet_port>` (an ephemeral port for 0).
/// Returns the bound port and the task serving until `shutdown`.
pub async fn start(
    cfg: &AgentConfig,
    cri: Cri,
    stats: super::stats::Stats,
    shutdown: CancellationToken,
) -> Result<(u16, tokio::task::JoinHandle<()>), Error> {
    let tls = tls_config(cfg)?;
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.kubelet_port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| Error::Io {
            path: format!("kubelet API listener {bind}"),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| Error::Io {
            path: format!("kubelet API listener {bind}"),
            source,
        })?
        .port();
    tracing::info!(port, "kubelet API listening");
    let ctx = Arc::new(Ctx {
        cri,
        stats,
        shutdown: shutdown.clone(),
    });
    let acceptor = TlsAcceptor::from(tls);
    let handle = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        tracing::warn!(%err, "kubelet API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "kubelet API TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|der| crate::pki::identity_from_der(der.as_ref()))
                    .map(|(cn, _)| cn);
                let service = service_fn(move |req| {
                    let ctx = ctx.clone();
                    let user = user.clone();
                    async move { Ok::<_, Infallible>(handle(ctx, req, user).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades();
                if let Err(err) = conn.await {
                    tracing::debug!(%peer, %err, "kubelet API connection ended with an error");
                }
            });
        }
        tracing::info!("kubelet API stopped");
    });
    Ok((port, handle))
}

/// The serving certificate (self-signed, kept in `<data-dir>/agent/`) and client
/// verification against the cluster CA (optional at the TLS layer: a caller without a
/// certificate gets a 401 rather than a failed handshake).
fn tls_config(cfg: &AgentConfig) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (cert_pem, key_pem) = serving_cert(cfg)?;
    let tls_err =
        |what: &str, e: &dyn std::fmt::Display| Error::Config(format!("kubelet API {what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("serving certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| tls_err("serving key", &e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(cfg.ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| tls_err("cluster CA", &e))?)
            .map_err(|e| tls_err("cluster CA", &e))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(
            "kubelet API: no cluster CA certificate to verify callers with".into(),
        ));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err("client verifier", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("serving certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads the kubelet serving certificate, generating a self-signed one on first start.
fn serving_cert(cfg: &AgentConfig) -> Result<(String, String), Error> {
    let dir = cfg.data_dir.join("agent");
    let (cert_path, key_path) = (dir.join(SERVING_CERT), dir.join(SERVING_KEY));
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        return Ok((cert, key));
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut names = vec![
        cfg.node_name.clone(),
        "localhost".to_string(),
        cfg.node_ip.to_string(),
    ];
    if !cfg.node_ip.is_loopback() {
        names.push("127.0.0.1".to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Config(format!("generating the kubelet serving certificate: {e}")))?;
    let (cert, key) = (generated.cert.pem(), generated.signing_key.serialize_pem());
    write_private(&key_path, &key).map_err(io(&key_path))?;
    std::fs::write(&cert_path, &cert).map_err(io(&cert_path))?;
    tracing::info!(path = %cert_path.display(), "generated the kubelet serving certificate");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data.as_bytes())
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A plain-text answer, as the kubelet gives its errors.
fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    body.push('\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An HTTP error answer of a handler.
#[derive(Debug)]
struct HttpError(StatusCode, String);

impl HttpError {
    fn bad_request(m: impl Into<String>) -> HttpError {
        HttpError(StatusCode::BAD_REQUEST, m.into())
    }
    fn not_found(m: impl Into<String>) -> HttpError {
        HttpError(StatusCode::NOT_FOUND, m.into())
    }
    /// A CRI error, mapped as the kubelet's streaming errors are (NotFound → 404,
    /// ResourceExhausted → 429, anything else → 500).
    fn rpc(what: &str, s: tonic::Status) -> HttpError {
        let code = match s.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError(code, format!("{what}: {}", s.message()))
    }
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
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// A boolean: `1` (what the API server sends) or `true`.
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1") | Some("true") | Some("True"))
    }
    fn number(&self, k: &str) -> Result<Option<i64>, HttpError> {
        match self.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                HttpError::bad_request(format!("invalid {k} {v:?}: expected an integer"))
            }),
        }
    }
}

/// Which streaming operation a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Logs {
        ns: String,
        pod: String,
        container: String,
    },
    Exec {
        ns: String,
        pod: String,
        container: String,
    },
    Attach {
        ns: String,
        pod: String,
        container: String,
    },
    PortForward {
        ns: String,
        pod: String,
    },
    Healthz,
    /// `/stats/summary`.
    StatsSummary,
    /// `/metrics/resource`.
    MetricsResource,
}

/// Decodes a path segment the way query values are decoded (`+` is a space).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let s = |x: &str| x.to_string();
    Some(match p.as_slice() {
        ["healthz"] => Route::Healthz,
        ["stats", "summary"] => Route::StatsSummary,
        ["metrics", "resource"] => Route::MetricsResource,
        ["containerLogs", ns, pod, c] => Route::Logs {
            ns: s(ns),
            pod: s(pod),
            container: s(c),
        },
        ["exec", ns, pod, c] | ["exec", ns, pod, _, c] => Route::Exec {
            ns: s(ns),
            pod: s(pod),
            container: s(c),
        },
        ["attach", ns, pod, c] | ["attach", ns, pod, _, c] => Route::Attach {
            ns: s(ns),
            pod: s(pod),
            container: s(c),
        },
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => Route::PortForward {
            ns: s(ns),
            pod: s(pod),
        },
        _ => return None,
    })
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, user: Option<String>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some(route) = route(&path) else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    if route == Route::Healthz {
        return text(StatusCode::OK, "ok");
    }
    let verb = if req.method() == Method::POST {
        "create"
    } else {
        "get"
    };
    match user.as_deref() {
        None => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Some(APISERVER_CLIENT_CN) => {}
        Some(other) => {
            tracing::info!(user = other, %path, "kubelet API request refused");
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={other}, verb={verb}, resource=nodes, subresource(s)=[{}])",
                    match route {
                        Route::StatsSummary => "stats",
                        Route::MetricsResource => "metrics",
                        _ => "proxy",
                    }
                ),
            );
        }
    }
    let streaming = matches!(
        route,
        Route::Exec { .. } | Route::Attach { .. } | Route::PortForward { .. }
    );
    if (streaming && !matches!(*req.method(), Method::GET | Method::POST))
        || (!streaming && *req.method() != Method::GET)
    {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", req.method()),
        );
    }
    let q = Query::parse(req.uri().query());
    let result = match route {
        Route::Logs { ns, pod, container } => container_logs(&ctx, &ns, &pod, &container, &q).await,
        Route::Exec { ns, pod, container } => {
            match exec_url(&ctx, &ns, &pod, &container, &q, true).await {
                Ok(url) => Ok(proxy_stream(&url, req).await),
                Err(e) => Err(e),
            }
        }
        Route::Attach { ns, pod, container } => {
            match exec_url(&ctx, &ns, &pod, &container, &q, false).await {
                Ok(url) => Ok(proxy_stream(&url, req).await),
                Err(e) => Err(e),
            }
        }
        Route::PortForward { ns, pod } => match port_forward_url(&ctx, &ns, &pod, &q).await {
            Ok(url) => Ok(proxy_stream(&url, req).await),
            Err(e) => Err(e),
        },
        Route::Healthz => Ok(text(StatusCode::OK, "ok")),
        Route::StatsSummary | Route::MetricsResource => Ok(stats_response(&ctx, &route)),
    };
    match result {
        Ok(r) => r,
        Err(HttpError(code, message)) => {
            tracing::debug!(%path, code = code.as_u16(), %message, "kubelet API request failed");
            text(code, message)
        }
    }
}

/// The latest usage sample as `/stats/summary` JSON or `/metrics/resource` text (503
/// until the first sample is taken).
fn stats_response(ctx: &Ctx, route: &Route) -> Response<Body> {
    let Some(summary) = ctx.stats.latest() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no stats sample yet");
    };
    let (body, content_type) = if *route == Route::StatsSummary {
        (
            serde_json::to_vec(&*summary).unwrap_or_default(),
            "application/json",
        )
    } else {
        (
            summary.prometheus().into_bytes(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The pod's containers of one name, newest first.
async fn containers_named(
    cri: &mut Cri,
    ns: &str,
    pod: &str,
    name: &str,
) -> Result<Vec<cri::Container>, HttpError> {
    let selector = [
        (LABEL_POD_NAMESPACE, ns),
        (LABEL_POD_NAME, pod),
        (LABEL_CONTAINER_NAME, name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let filter = cri::ContainerFilter {
        label_selector: selector,
        ..Default::default()
    };
    let mut items = cri
        .runtime()
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|s| HttpError::rpc("ListContainers", s))?
        .into_inner()
        .containers;
    items.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(items)
}

fn is_running(c: &cri::Container) -> bool {
    c.state == cri::ContainerState::ContainerRunning as i32
}

fn log_options(q: &Query) -> Result<LogOptions, HttpError> {
    let non_negative = |k: &str| -> Result<Option<u64>, HttpError> {
        match q.number(k)? {
            Some(n) if n < 0 => Err(HttpError::bad_request(format!(
                "{k} must be greater than or equal to 0"
            ))),
            n => Ok(n.map(|n| n as u64)),
        }
    };
    let since = match (
        q.number("sinceSeconds")?,
        q.get("sinceTime").filter(|s| !s.is_empty()),
    ) {
        (Some(secs), _) => {
            Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs.max(0)))
        }
        (None, Some(t)) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| HttpError::bad_request(format!("invalid sinceTime {t:?}: {e}")))?,
        ),
        (None, None) => None,
    };
    Ok(LogOptions {
        follow: q.flag("follow"),
        previous: q.flag("previous"),
        timestamps: q.flag("timestamps"),
        tail_lines: non_negative("tailLines")?,
        since,
        limit_bytes: non_negative("limitBytes")?,
    })
}

async fn container_logs(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    q: &Query,
) -> Result<Response<Body>, HttpError> {
    let opts = log_options(q)?;
    let mut cri = ctx.cri.clone();
    let containers = containers_named(&mut cri, ns, pod, container).await?;
    let Some(current) = containers.first() else {
        return Err(HttpError::bad_request(format!(
            "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
        )));
    };
    let status = cri
        .runtime()
        .container_status(cri::ContainerStatusRequest {
            container_id: current.id.clone(),
            verbose: false,
        })
        .await
        .map_err(|s| HttpError::rpc("ContainerStatus", s))?
        .into_inner()
        .status
        .ok_or_else(|| {
            HttpError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ContainerStatus: empty".into(),
            )
        })?;
    let current_path = std::path::PathBuf::from(&status.log_path);
    let path = if opts.previous {
        logs::previous_file(&current_path).ok_or_else(|| {
            HttpError::bad_request(format!(
                "previous terminated container {container:?} in pod {pod:?} not found"
            ))
        })?
    } else {
        current_path
    };
    if !path.is_file() {
        return Err(HttpError::not_found(format!(
            "log file for container {container:?} in pod {pod:?} not found: {}",
            path.display()
        )));
    }
    let follow_id = (!opts.previous).then(|| current.id.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        let running = move || {
            let mut cri = cri.clone();
            let id = follow_id.clone();
            async move {
                let Some(id) = id else { return false };
                match cri
                    .runtime()
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await
                {
                    Ok(r) => r
                        .into_inner()
                        .status
                        .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32),
                    Err(_) => false,
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            r = logs::stream(&path, &opts, running, tx) => if let Err(err) = r {
                tracing::warn!(%err, "streaming container logs");
            },
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// CRI Exec (`exec`) or Attach: the streaming URL for the pod's running container.
async fn exec_url(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    q: &Query,
    exec: bool,
) -> Result<String, HttpError> {
    let (stdin, stdout, stderr, tty) = (
        q.flag("input") || q.flag("stdin"),
        q.flag("output") || q.flag("stdout"),
        q.flag("error") || q.flag("stderr"),
        q.flag("tty"),
    );
    if !stdin && !stdout && !stderr {
        return Err(HttpError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let command = q.all("command");
    if exec && command.is_empty() {
        return Err(HttpError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let mut cri = ctx.cri.clone();
    let containers = containers_named(&mut cri, ns, pod, container).await?;
    let Some(target) = containers
        .iter()
        .find(|c| is_running(c))
        .or(containers.first())
    else {
        return Err(HttpError::not_found(format!(
            "container not found ({container:?})"
        )));
    };
    let id = target.id.clone();
    let url = if exec {
        cri.runtime()
            .exec(cri::ExecRequest {
                container_id: id,
                cmd: command,
                tty,
                stdin,
                stdout,
                stderr: stderr && !tty,
            })
            .await
            .map_err(|s| HttpError::rpc("Exec", s))?
            .into_inner()
            .url
    } else {
        cri.runtime()
            .attach(cri::AttachRequest {
                container_id: id,
                stdin,
                tty,
                stdout,
                stderr: stderr && !tty,
            })
            .await
            .map_err(|s| HttpError::rpc("Attach", s))?
            .into_inner()
            .url
    };
    Ok(url)
}

/// CRI PortForward: the streaming URL for the pod's ready sandbox.
async fn port_forward_url(ctx: &Ctx, ns: &str, pod: &str, q: &Query) -> Result<String, HttpError> {
    let ports = q
        .all("port")
        .iter()
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(i32::from)
                .ok_or_else(|| HttpError::bad_request(format!("invalid port {p:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut cri = ctx.cri.clone();
    let selector = [(LABEL_POD_NAMESPACE, ns), (LABEL_POD_NAME, pod)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let filter = cri::PodSandboxFilter {
        label_selector: selector,
        ..Default::default()
    };
    let mut sandboxes = cri
        .runtime()
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|s| HttpError::rpc("ListPodSandbox", s))?
        .into_inner()
        .items;
    sandboxes.retain(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let Some(sandbox) = sandboxes.first() else {
        return Err(HttpError::not_found(format!(
            "pod not found (\"{ns}/{pod}\")"
        )));
    };
    Ok(cri
        .runtime()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox.id.clone(),
            port: ports,
        })
        .await
        .map_err(|s| HttpError::rpc("PortForward", s))?
        .into_inner()
        .url)
}

/// Forwards `req` to containerd's streaming server at `url` and relays the answer: a
/// `101 Switching Protocols` joins the two upgraded connections, anything else is passed
/// through as it came.
async fn proxy_stream(url: &str, mut req: Request<Incoming>) -> Response<Body> {
    match forward(url, &mut req).await {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(%url, %message, "proxying to the runtime's streaming server");
            text(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

async fn forward(url: &str, req: &mut Request<Incoming>) -> Result<Response<Body>, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid streaming URL {url:?}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("streaming URL {url:?} has no host"))?
        .clone();
    if uri.scheme_str() != Some("http") {
        return Err(format!("streaming URL {url:?}: only http is supported"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("connecting to {authority}: timed out"))?
    .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "streaming server connection ended with an error");
        }
    });
    let client_upgrade = hyper::upgrade::on(&mut *req);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    for (name, value) in req.headers() {
        if !crate::httprelay::hop_by_hop(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
    );
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| format!("request to {authority}: {e}"))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        crate::httprelay::join_upgraded(client_upgrade, backend_upgrade, "streaming server");
    }
    Ok(crate::httprelay::relay(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let s = String::from;
        let cases = [
            (
                "/containerLogs/default/web/nginx",
                Some(Route::Logs {
                    ns: s("default"),
                    pod: s("web"),
                    container: s("nginx"),
                }),
            ),
            (
                "/exec/ns1/p/c",
                Some(Route::Exec {
                    ns: s("ns1"),
                    pod: s("p"),
                    container: s("c"),
                }),
            ),
            (
                "/exec/ns1/p/uid-1/c",
                Some(Route::Exec {
                    ns: s("ns1"),
                    pod: s("p"),
                    container: s("c"),
                }),
            ),
            (
                "/attach/ns1/p/c",
                Some(Route::Attach {
                    ns: s("ns1"),
                    pod: s("p"),
                    container: s("c"),
                }),
            ),
            (
                "/portForward/ns1/p",
                Some(Route::PortForward {
                    ns: s("ns1"),
                    pod: s("p"),
                }),
            ),
            (
                "/portForward/ns1/p/uid-1",
                Some(Route::PortForward {
                    ns: s("ns1"),
                    pod: s("p"),
                }),
            ),
            ("/healthz", Some(Route::Healthz)),
            ("/stats/summary", Some(Route::StatsSummary)),
            ("/metrics/resource", Some(Route::MetricsResource)),
            ("/containerLogs/default/web", None),
            ("/pods", None),
        ];
        for (path, want) in cases {
            assert_eq!(route(path), want, "{path}");
        }
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo+hi%3B+exit+3&stdin=1&stdout=true&tty=0&tailLines=5",
        ));
        assert_eq!(q.all("command"), ["sh", "-c", "echo hi; exit 3"]);
        assert!(q.flag("stdin") && q.flag("stdout") && !q.flag("tty") && !q.flag("stderr"));
        assert_eq!(q.number("tailLines").unwrap(), Some(5));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let opts = log_options(&Query::parse(Some(
            "follow=true&previous=true&limitBytes=10&sinceTime=2024-05-01T10%3A00%3A00Z",
        )))
        .unwrap();
        assert!(opts.follow && opts.previous && !opts.timestamps);
        assert_eq!(opts.limit_bytes, Some(10));
        assert_eq!(opts.since, Some("2024-05-01T10:00:00Z".parse().unwrap()));
        assert_eq!(
            log_options(&Query::parse(Some("tailLines=-1")))
                .unwrap_err()
                .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            log_options(&Query::parse(Some("tailLines=x")))
                .unwrap_err()
                .0,
            StatusCode::BAD_REQUEST
        );
    }
}
