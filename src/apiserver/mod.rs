//! The Kubernetes API server: TLS listener (HTTP/1.1 and HTTP/2), authentication and
//! authorization, discovery, OpenAPI, and the REST handlers over the registry.
//!
//! This is the only module that touches the [`Store`]: it reads through the watch
//! [`cache::Cache`] and writes through the generic [`registry::Registry`].
//!
//! Depends on: `api`, `store`, `pki`. Must not depend on: controllers, agent, or any other
//! API client component.

pub mod admission;
pub mod auth;
pub mod cache;
pub mod discovery;
pub mod eviction;
pub mod fieldmanager;
pub mod handlers;
pub mod join;
pub mod metrics;
pub mod metrics_api;
pub mod openapi;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod serviceaccount;
pub mod strategic;
pub mod table;

mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::resources::lookup;
use crate::store::Store;

pub use self::auth::{TokenAuthenticator, UserInfo};

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS material is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The service CIDR or node port range is invalid.
    #[error(transparent)]
    Services(#[from] registry::service_alloc::ConfigError),
    /// The store failed while loading the watch cache or bootstrapping.
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
    /// Creating a bootstrap object failed.
    #[error("bootstrapping {what}: {status}")]
    Bootstrap {
        /// What was being created.
        what: String,
        /// The API error.
        status: crate::api::status::Status,
    },
}

/// TLS material for serving and client verification (PEM).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The cluster CA that signs client certificates.
    pub client_ca_pem: String,
    /// The serving certificate chain.
    pub cert_pem: String,
    /// The serving key.
    pub key_pem: String,
}

/// API server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub bind: SocketAddr,
    /// Serving TLS.
    pub tls: TlsConfig,
    /// Static bearer tokens.
    pub tokens: TokenAuthenticator,
    /// The address advertised in discovery (`host:port`).
    pub advertise: String,
    /// How often to compact the store's history.
    pub compaction_interval: Duration,
    /// How many revisions of history to keep at each compaction.
    pub compaction_retain: u64,
    /// Where the service account signing key lives (`<data-dir>/server/tls`).
    pub service_account_key_dir: std::path::PathBuf,
    /// The service account token issuer (`https://kubernetes.default.svc.<domain>`).
    pub service_account_issuer: String,
    /// The client certificate presented to kubelets (logs, exec, attach, port-forward).
    pub kubelet_client: Option<proxy::KubeletClientConfig>,
    /// The node join endpoints (`/v1-kaji/...`); `None` answers them with 404.
    pub join: Option<join::JoinConfig>,
    /// Whether the built-in resource metrics API (`metrics.k8s.io`) is served.
    pub metrics_api: bool,
    /// Service cluster IP and node port ranges.
    pub services: registry::service_alloc::Ranges,
    /// The address published in the `default/kubernetes` Endpoints (the advertise address).
    pub endpoint_ip: std::net::IpAddr,
}

/// Shared state of the request handlers.
pub struct State {
    registry: registry::Registry,
    tokens: TokenAuthenticator,
    issuer: serviceaccount::TokenIssuer,
    openapi: openapi::OpenApi,
    metrics: metrics::Metrics,
    ready: AtomicBool,
    shutdown: CancellationToken,
    server_address: String,
    kubelet: Option<proxy::KubeletClient>,
    join: Option<join::JoinConfig>,
    metrics_api: Option<metrics_api::MetricsApi>,
}

impl State {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A running API server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Completes when the listener and all connections have finished after shutdown.
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts the API server over `store`: loads the watch cache, creates the bootstrap
/// namespaces, starts compaction, and serves until `shutdown` is cancelled.
pub async fn start(
    cfg: Config,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    let cache = cache::Cache::start(store.clone(), shutdown.clone()).await?;
    let rbac = rbac::Rbac::new(cache.clone(), shutdown.clone());
    let issuer = serviceaccount::TokenIssuer::load_or_create(
        &cfg.service_account_key_dir,
        &cfg.service_account_issuer,
    )
    .map_err(|status| Error::Bootstrap {
        what: "service account signing key".into(),
        status,
    })?;
    let services = registry::service_alloc::Allocator::new(&cfg.services)?;
    services.rebuild(&cache).await;
    let services = Arc::new(services);
    let state = Arc::new(State {
        registry: registry::Registry::new(store.clone(), cache, rbac)
            .with_service_allocator(services.clone()),
        tokens: cfg.tokens.clone(),
        issuer,
        openapi: openapi::OpenApi::build(&discovery::git_version()),
        metrics: metrics::Metrics::new(),
        ready: AtomicBool::new(false),
        shutdown: shutdown.clone(),
        server_address: cfg.advertise.clone(),
        kubelet: cfg
            .kubelet_client
            .as_ref()
            .map(proxy::KubeletClient::new)
            .transpose()
            .map_err(Error::Tls)?,
        join: cfg.join.clone(),
        metrics_api: cfg.metrics_api.then(metrics_api::MetricsApi::default),
    });
    bootstrap(&state).await?;
    state.ready.store(true, Ordering::Release);
    if cfg.metrics_api {
        metrics_api::spawn_scraper(state.clone());
    }
    spawn_compactor(
        state.clone(),
        cfg.compaction_interval,
        cfg.compaction_retain,
    );
    let tls = server::tls_config(&cfg.tls)?;
    let listener = tokio::net::TcpListener::bind(cfg.bind)
        .await
        .map_err(|source| Error::Listen {
            addr: cfg.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: cfg.bind,
        source,
    })?;
    tracing::info!(%addr, "API server listening");
    spawn_kubernetes_service(
        state.clone(),
        services.first_ip().into(),
        cfg.endpoint_ip,
        addr.port(),
    )
    .await;
    let done = tokio::spawn(server::serve(listener, tls, state, shutdown));
    Ok(Running { addr, done })
}

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn bootstrap(state: &State) -> Result<(), Error> {
    let Some(ns) = lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    for name in SYSTEM_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match state
            .registry
            .create(ns, None, obj, &registry::WriteOptions::default())
            .await
        {
            Ok(_) => tracing::info!(namespace = name, "created system namespace"),
            Err(s) if s.code == 409 => {}
            Err(status) => {
                return Err(Error::Bootstrap {
                    what: format!("namespace {name}"),
                    status,
                });
            }
        }
    }
    rbac::bootstrap(&state.registry)
        .await
        .map_err(|status| Error::Bootstrap {
            what: "RBAC bootstrap policy".into(),
            status,
        })?;
    admission::priority::bootstrap(&state.registry)
        .await
        .map_err(|status| Error::Bootstrap {
            what: "system priority classes".into(),
            status,
        })?;
    Ok(())
}

/// Creates the `default/kubernetes` Service, Endpoints and EndpointSlice now, then keeps
/// them current every 10 seconds.
async fn spawn_kubernetes_service(
    state: Arc<State>,
    cluster_ip: std::net::IpAddr,
    endpoint_ip: std::net::IpAddr,
    port: u16,
) {
    use registry::kubernetes_service::reconcile;
    if let Err(err) = reconcile(&state.registry, cluster_ip, endpoint_ip, port).await {
        tracing::warn!(%err, "reconciling the kubernetes service");
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = reconcile(&state.registry, cluster_ip, endpoint_ip, port).await {
                tracing::warn!(%err, "reconciling the kubernetes service");
            }
        }
    });
}

/// Compacts the store periodically, keeping the last `retain` revisions (like the
/// upstream API server's periodic etcd compaction).
fn spawn_compactor(state: Arc<State>, interval: Duration, retain: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(rev) = state.registry.current_revision().await else {
                continue;
            };
            let target = rev.saturating_sub(retain);
            if target == 0 {
                continue;
            }
            match state.registry.compact(target).await {
                Ok(()) => tracing::debug!(revision = target, "compacted store history"),
                Err(err) => tracing::warn!(%err, "store compaction failed"),
            }
        }
    });
}
