//! The built-in ingress controller (kaji's Traefik): an HTTP/HTTPS reverse proxy on the
//! node's ports 80 and 443 routing by Ingress rules straight to ready Service endpoints
//! (pod IPs, as ingress-nginx and Traefik do), with TLS from Secrets chosen by SNI. Runs in
//! every node agent; the `kaji` IngressClass (created by the server, marked default) selects
//! the Ingresses it serves.
//!
//! Watches keep a routing [`routes::Table`] current; every change builds a new table and
//! swaps it in, so reloads never drop a connection. Each request is logged on the
//! `kaji::ingress::access` target. Ingress `status.loadBalancer` lists the Ready nodes'
//! addresses (every node serves every Ingress), written only when it differs, so agents on
//! several nodes agree instead of fighting.
//!
//! Depends on: `client` (through `kube`), `api`, `reflect`. Must not depend on: `store`, `apiserver`.

pub mod routes;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use routes::{Table, Unavailable};
use tls::SniResolver;

/// The IngressClass the server creates.
pub const CLASS_NAME: &str = "kaji";
/// `spec.controller` of IngressClasses this controller serves.
pub const CONTROLLER_NAME: &str = "kaji.io/ingress-controller";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Errors of the ingress controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Where the controller listens.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// Plain HTTP (80).
    pub http: SocketAddr,
    /// HTTPS (443).
    pub https: SocketAddr,
}

impl Default for Listen {
    fn default() -> Listen {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Listen {
            http: SocketAddr::new(any, 80),
            https: SocketAddr::new(any, 443),
        }
    }
}

/// Creates the `kaji` IngressClass (default class) unless it exists. Called by the server.
pub async fn ensure_ingress_class(client: kube::Client) -> Result<(), Error> {
    let api: Api<IngressClass> = Api::all(client);
    if api.get_opt(CLASS_NAME).await?.is_some() {
        return Ok(());
    }
    let class: IngressClass = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": CLASS_NAME,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
            "labels": {"app.kubernetes.io/managed-by": "kaji"},
        },
        "spec": {"controller": CONTROLLER_NAME},
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

struct State {
    table: RwLock<Arc<Table>>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    next: AtomicUsize,
    client: HttpClient<HttpConnector, Incoming>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: kube::Client, listen: Listen, shutdown: CancellationToken) {
    let default_cert = match tls::default_certificate() {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(%err, "ingress: cannot create the default certificate");
            return;
        }
    };
    let resolver = Arc::new(SniResolver::new(default_cert));
    let wake = Arc::new(Notify::new());
    let (ingresses, w) = reflector::store::<Ingress>();
    crate::reflect::spawn(
        "ingress: ingresses",
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        wake.clone(),
        shutdown.clone(),
    );
    let (classes, w) = reflector::store::<IngressClass>();
    crate::reflect::spawn(
        "ingress: ingress classes",
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        wake.clone(),
        shutdown.clone(),
    );
    let (services, w) = reflector::store::<Service>();
    crate::reflect::spawn(
        "ingress: services",
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        wake.clone(),
        shutdown.clone(),
    );
    let (slices, w) = reflector::store::<EndpointSlice>();
    crate::reflect::spawn(
        "ingress: endpoint slices",
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        wake.clone(),
        shutdown.clone(),
    );
    let (secrets, w) = reflector::store::<Secret>();
    crate::reflect::spawn(
        "ingress: TLS secrets",
        Api::all(client.clone()),
        watcher::Config::default().fields("type=kubernetes.io/tls"),
        w,
        wake.clone(),
        shutdown.clone(),
    );
    let (nodes, w) = reflector::store::<Node>();
    crate::reflect::spawn(
        "ingress: nodes",
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        wake.clone(),
        shutdown.clone(),
    );

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let state = Arc::new(State {
        table: RwLock::new(Arc::new(Table::default())),
        services,
        slices,
        next: AtomicUsize::new(0),
        client: HttpClient::builder(TokioExecutor::new()).build(connector),
    });

    let http = tokio::spawn(serve(state.clone(), listen.http, None, shutdown.clone()));
    let tls_config = match tls::server_config(resolver.clone()) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(%err, "ingress: TLS configuration failed");
            return;
        }
    };
    let https = tokio::spawn(serve(
        state.clone(),
        listen.https,
        Some(tokio_rustls::TlsAcceptor::from(tls_config)),
        shutdown.clone(),
    ));

    let status_api = client.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
        }
        // Coalesce bursts of events into one rebuild.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let classes = classes.state();
        let all = ingresses.state();
        let ours: Vec<&Ingress> = all
            .iter()
            .map(|i| i.as_ref())
            .filter(|i| serves(i, &classes))
            .collect();
        let table = Table::build(&ours);
        resolver.replace(load_certificates(&table, &secrets));
        if let Ok(mut guard) = state.table.write() {
            *guard = Arc::new(table);
        }
        let addresses = ready_node_addresses(&nodes.state());
        for ing in ours {
            update_status(&status_api, ing, &addresses).await;
        }
    }
    let _ = http.await;
    let _ = https.await;
    tracing::info!("ingress controller stopped");
}

/// Whether this controller serves the Ingress: its class is one of ours, or it names no
/// class and one of ours is the default.
fn serves(ing: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let ours = |name: &str| {
        classes.iter().any(|c| {
            c.metadata.name.as_deref() == Some(name)
                && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
        })
    };
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
                .map(String::as_str)
        });
    match named {
        Some(name) => ours(name),
        None => classes.iter().any(|c| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
        }),
    }
}

fn load_certificates(
    table: &Table,
    secrets: &Store<Secret>,
) -> HashMap<String, Arc<rustls::sign::CertifiedKey>> {
    let mut out = HashMap::new();
    let all = secrets.state();
    for (host, r) in &table.tls {
        let Some(secret) = all.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(r.namespace.as_str())
                && s.metadata.name.as_deref() == Some(r.secret.as_str())
        }) else {
            tracing::warn!(host, secret = %format!("{}/{}", r.namespace, r.secret), "ingress TLS secret not found; serving the default certificate");
            continue;
        };
        let data = secret.data.as_ref();
        let (Some(crt), Some(key)) = (
            data.and_then(|d| d.get("tls.crt")),
            data.and_then(|d| d.get("tls.key")),
        ) else {
            continue;
        };
        match tls::certified_key(&crt.0, &key.0) {
            Ok(ck) => {
                out.insert(host.clone(), ck);
            }
            Err(err) => {
                tracing::warn!(host, %err, secret = %format!("{}/{}", r.namespace, r.secret), "invalid ingress TLS secret")
            }
        }
    }
    out
}

/// InternalIPs (ExternalIP when set) of the Ready nodes, sorted.
fn ready_node_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for n in nodes {
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            continue;
        }
        let addrs = status.and_then(|s| s.addresses.as_ref());
        let pick = |ty: &str| {
            addrs.and_then(|a| a.iter().find(|a| a.type_ == ty).map(|a| a.address.clone()))
        };
        if let Some(ip) = pick("ExternalIP").or_else(|| pick("InternalIP")) {
            out.insert(ip);
        }
    }
    out.into_iter().collect()
}

async fn update_status(client: &kube::Client, ing: &Ingress, addresses: &[String]) {
    let current: Vec<String> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    if current == addresses {
        return;
    }
    let (Some(ns), Some(name)) = (&ing.metadata.namespace, &ing.metadata.name) else {
        return;
    };
    let ingress: Vec<_> = addresses.iter().map(|ip| json!({"ip": ip})).collect();
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    if let Err(err) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(%err, ingress = %format!("{ns}/{name}"), "updating ingress status");
    }
}

async fn serve(
    state: Arc<State>,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(err) => {
                tracing::warn!(%addr, %err, "ingress: cannot listen; retrying in 10s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    tracing::info!(%addr, scheme, "ingress listening");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "ingress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req, peer, scheme).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "ingress connection ended with an error");
            }
        });
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    let started = Instant::now();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let table = state
        .table
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|_| Arc::new(Table::default()));
    let (response, upstream) = match table.route(&host, &path) {
        None => (text(StatusCode::NOT_FOUND, "404 page not found\n"), None),
        Some(backend) => {
            match routes::endpoints(backend, &state.services.state(), &state.slices.state()) {
                Err(Unavailable::NoService | Unavailable::NoPort) => {
                    (text(StatusCode::NOT_FOUND, "404 page not found\n"), None)
                }
                Err(Unavailable::NoEndpoints) => (
                    text(StatusCode::SERVICE_UNAVAILABLE, "no available server\n"),
                    None,
                ),
                Ok(endpoints) => {
                    let i = state.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                    let target = endpoints[i];
                    let upgrade = req.headers().contains_key(header::UPGRADE);
                    let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
                    prepare_upstream(&mut req, target, &host, peer, scheme, upgrade);
                    (forward(&state, req, downstream).await, Some(target))
                }
            }
        }
    };
    tracing::info!(
        target: "kaji::ingress::access",
        client = %peer.ip(),
        host,
        method = %method,
        path,
        status = response.status().as_u16(),
        upstream = upstream.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
        duration_ms = started.elapsed().as_millis() as u64,
    );
    response
}

fn prepare_upstream(
    req: &mut Request<Incoming>,
    target: SocketAddr,
    host: &str,
    peer: SocketAddr,
    scheme: &str,
    upgrade: bool,
) {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Ok(uri) = format!("http://{target}{path_and_query}").parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
    let headers = req.headers_mut();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if upgrade {
        if let Some(v) = upgrade_value {
            headers.insert(header::UPGRADE, v);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, v.clone());
        headers.insert("x-forwarded-host", v);
    }
    let client_ip = peer.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {client_ip}"),
        None => client_ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(&client_ip) {
        headers.insert("x-real-ip", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
    downstream: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let mut resp = match state.client.request(req).await {
        Ok(r) => r,
        Err(err) => {
            tracing::debug!(%err, "ingress upstream request failed");
            return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(down), Ok(up)) = (downstream.await, upstream.await) {
                    let mut down = TokioIo::new(down);
                    let mut up = TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
    }
    Response::from_parts(parts, body.boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        let mut v = json!({"metadata": {"name": name}, "spec": {"controller": controller}});
        if default {
            v["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn ingress(class: Option<&str>, legacy: Option<&str>) -> Ingress {
        let mut v = json!({"metadata": {"name": "i", "namespace": "default"}, "spec": {}});
        if let Some(c) = class {
            v["spec"]["ingressClassName"] = json!(c);
        }
        if let Some(c) = legacy {
            v["metadata"]["annotations"] = json!({LEGACY_CLASS_ANNOTATION: c});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn class_selection() {
        let ours_default = vec![
            class("kaji", CONTROLLER_NAME, true),
            class("nginx", "k8s.io/ingress-nginx", false),
        ];
        let ours_not_default = vec![class("kaji", CONTROLLER_NAME, false)];
        assert!(serves(&ingress(Some("kaji"), None), &ours_default));
        assert!(!serves(&ingress(Some("nginx"), None), &ours_default));
        assert!(!serves(&ingress(Some("missing"), None), &ours_default));
        assert!(serves(&ingress(None, None), &ours_default));
        assert!(!serves(&ingress(None, None), &ours_not_default));
        assert!(serves(&ingress(None, Some("kaji")), &ours_not_default));
        assert!(!serves(&ingress(None, Some("nginx")), &ours_default));
    }

    #[test]
    fn node_addresses_prefer_external_and_skip_unready() {
        let node = |name: &str, ready: &str, addrs: serde_json::Value| -> Arc<Node> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "status": {"conditions": [{"type": "Ready", "status": ready}], "addresses": addrs}
                }))
                .unwrap(),
            )
        };
        let nodes = vec![
            node(
                "a",
                "True",
                json!([{"type": "InternalIP", "address": "10.0.0.2"}]),
            ),
            node(
                "b",
                "True",
                json!([{"type": "InternalIP", "address": "10.0.0.3"}, {"type": "ExternalIP", "address": "1.2.3.4"}]),
            ),
            node(
                "c",
                "Unknown",
                json!([{"type": "InternalIP", "address": "10.0.0.4"}]),
            ),
        ];
        assert_eq!(ready_node_addresses(&nodes), vec!["1.2.3.4", "10.0.0.2"]);
    }
}
