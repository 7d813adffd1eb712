//! The node agent (kaji's kubelet): registers the Node and keeps its Lease and status
//! fresh, runs the embedded containerd, and (as the pod workers land) runs every Pod bound
//! to the node through CRI.
//!
//! The same code runs inside `kaji server` and as `kaji agent` on another machine: it
//! reaches the control plane only through a `kube::Client` (a URL and credentials).
//!
//! Depends on: `client`, `api`, `config`. Must not depend on: `store`, `apiserver`.

pub mod containerd;
pub mod cri;
pub mod env;
pub mod events;
pub mod eviction;
pub mod images;
pub mod logs;
pub mod network;
pub mod node;
pub mod pleg;
pub mod pod_workers;
pub mod probes;
pub mod pull_secrets;
pub mod registries;
pub mod resources;
pub mod server;
pub mod stats;
pub mod volumes;

use std::net::IpAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A required program is not installed.
    #[error("{0} not found on PATH (install the Debian package that provides it)")]
    MissingBinary(&'static str),
    /// The container runtime failed.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// An API request failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// A flag value is invalid.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A volume cannot be set up (yet).
    #[error("{0}")]
    Volume(String),
}

/// The pause image kaji builds and imports itself, offline.
pub const DEFAULT_PAUSE_IMAGE: &str = "kaji.local/pause:3.10";

/// Settings of one node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's name.
    pub node_name: String,
    /// The node's InternalIP.
    pub node_ip: IpAddr,
    /// Extra node labels.
    pub labels: Vec<(String, String)>,
    /// Node taints (`key`, `value`, `effect`).
    pub taints: Vec<(String, String, String)>,
    /// Whether this node also runs the control plane (adds the control-plane role labels).
    pub server: bool,
    /// `<data-dir>`.
    pub data_dir: PathBuf,
    /// Volatile runtime dir (sockets, containerd state).
    pub run_dir: PathBuf,
    /// A CRI socket to use instead of the embedded containerd.
    pub runtime_endpoint: Option<String>,
    /// The sandbox image.
    pub pause_image: String,
    /// Maximum pods on this node.
    pub max_pods: u32,
    /// The cluster DNS service IP.
    pub cluster_dns: IpAddr,
    /// The cluster domain.
    pub cluster_domain: String,
    /// `runtimeName://version` of the container runtime, once connected.
    pub runtime_version: String,
    /// The kubelet API port (0: an ephemeral port, the bound one is reported).
    pub kubelet_port: u16,
    /// The cluster CA (PEM) that signs the API server's kubelet client certificate.
    pub ca_pem: String,
    /// The private registry file (registries.yaml) rendered into containerd's config.
    pub private_registry: Option<PathBuf>,
    /// Built-in components switched off with `--disable` (canonical names).
    pub disable: Vec<String>,
    /// Whether the service proxy runs on this node (not `--disable-kube-proxy`).
    pub kube_proxy: bool,
    /// Whether NetworkPolicies are enforced on this node.
    pub network_policy: bool,
    /// The cluster's pod network (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// The cluster's service network (`--service-cidr`).
    pub service_cidr: String,
    /// Container log rotation (`container-log-max-size`, `container-log-max-files`).
    pub log_rotation: logs::RotationPolicy,
    /// The node's resolv.conf (`--resolv-conf`, see [`crate::dns::node_resolv_conf`]).
    pub resolv_conf: PathBuf,
    /// Node-pressure eviction (`eviction-*` kubelet args).
    pub eviction: eviction::EvictionConfig,
}

impl AgentConfig {
    /// Whether a built-in component (`dns`, `servicelb`, `ingress`, ...) runs.
    pub fn enabled(&self, component: &str) -> bool {
        !self.disable.iter().any(|c| c == component)
    }
}

impl AgentConfig {
    /// Builds the agent configuration from flags.
    pub fn from_args(
        args: &crate::config::AgentArgs,
        data_dir: PathBuf,
        server: bool,
        cluster_dns: IpAddr,
        cluster_domain: &str,
    ) -> Result<AgentConfig, Error> {
        let node_name = args.node_name.clone().unwrap_or_else(node::hostname);
        let node_ip = match args.node_ip {
            Some(ip) => ip,
            None => node::default_ip().ok_or_else(|| {
                Error::Config("cannot determine the node IP; pass --node-ip".into())
            })?,
        };
        let labels = args
            .node_label
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| Error::Config(format!("--node-label {l:?}: expected key=value")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let taints = args
            .node_taint
            .iter()
            .map(|t| {
                parse_taint(t).ok_or_else(|| {
                    Error::Config(format!("--node-taint {t:?}: expected key[=value]:Effect"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut max_pods = 110;
        let mut log_rotation = logs::RotationPolicy::default();
        let mut eviction_args = eviction::EvictionArgs::default();
        for arg in &args.kubelet_arg {
            match arg.split_once('=') {
                Some((k, v)) if eviction_args.accept(k, v) => {}
                Some(("max-pods", v)) => {
                    max_pods = v
                        .parse()
                        .map_err(|_| Error::Config(format!("--kubelet-arg {arg:?}")))?
                }
                Some(("container-log-max-size", v)) => {
                    log_rotation.max_size = crate::api::quantity::parse_quantity(v)
                        .filter(|s| *s >= 1.0)
                        .ok_or_else(|| Error::Config(format!("--kubelet-arg {arg:?}")))?
                        as u64
                }
                Some(("container-log-max-files", v)) => {
                    log_rotation.max_files =
                        v.parse().ok().filter(|n| *n >= 2).ok_or_else(|| {
                            Error::Config(format!("--kubelet-arg {arg:?}: must be at least 2"))
                        })?
                }
                _ => {
                    return Err(Error::Config(format!(
                        "--kubelet-arg {arg:?}: unsupported (supported: max-pods, container-log-max-size, container-log-max-files, eviction-hard, eviction-soft, eviction-soft-grace-period, eviction-pressure-transition-period, eviction-max-pod-grace-period)"
                    )));
                }
            }
        }
        let eviction = eviction::EvictionConfig::from_args(&eviction_args)
            .map_err(|e| Error::Config(format!("--kubelet-arg: {e}")))?;
        let run_dir = default_run_dir(&data_dir);
        let private_registry = registries::resolve_path(args.private_registry.as_deref());
        if let Some(path) = &private_registry {
            registries::Registries::load(path).map_err(|e| Error::Config(e.to_string()))?;
        }
        Ok(AgentConfig {
            node_name: node_name.to_lowercase(),
            node_ip,
            labels,
            taints,
            server,
            run_dir,
            data_dir,
            runtime_endpoint: args.container_runtime_endpoint.clone(),
            pause_image: args
                .pause_image
                .clone()
                .unwrap_or_else(|| DEFAULT_PAUSE_IMAGE.to_string()),
            max_pods,
            cluster_dns,
            cluster_domain: cluster_domain.to_string(),
            runtime_version: String::new(),
            kubelet_port: args.kubelet_port,
            ca_pem: String::new(),
            private_registry,
            disable: args.disable.clone(),
            kube_proxy: !args.disable_kube_proxy,
            network_policy: !args.disable_network_policy,
            cluster_cidr: "10.42.0.0/16".to_string(),
            service_cidr: "10.43.0.0/16".to_string(),
            log_rotation,
            resolv_conf: crate::dns::node_resolv_conf(args.resolv_conf.as_deref()),
            eviction,
        })
    }
}

/// The current time as the API's RFC 3339 timestamps (`metav1.Time`, whole seconds).
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The volatile runtime dir of an agent: `/run/kaji` for the default data dir, else
/// `<data-dir>/run`.
pub fn default_run_dir(data_dir: &std::path::Path) -> PathBuf {
    if data_dir == std::path::Path::new("/var/lib/kaji") {
        PathBuf::from("/run/kaji")
    } else {
        data_dir.join("run")
    }
}

fn parse_taint(s: &str) -> Option<(String, String, String)> {
    let (kv, effect) = s.rsplit_once(':')?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return None;
    }
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    Some((k.to_string(), v.to_string(), effect.to_string()))
}

/// The API clients of one node's components, each with its own identity (and RBAC role).
#[derive(Clone)]
pub struct AgentClients {
    /// The kubelet: `system:node:<name>` in `system:nodes`.
    pub node: kube::Client,
    /// The service proxy: `system:kube-proxy` (role `system:node-proxier`).
    pub proxy: kube::Client,
    /// Cluster DNS: `system:kaji-dns`.
    pub dns: kube::Client,
    /// The ingress controller: `system:kaji-ingress`.
    pub ingress: kube::Client,
}

/// The user names of the node components other than the kubelet.
pub const PROXY_USER: &str = "system:kube-proxy";
/// See [`AgentClients::dns`].
pub const DNS_USER: &str = "system:kaji-dns";
/// See [`AgentClients::ingress`].
pub const INGRESS_USER: &str = "system:kaji-ingress";

impl AgentClients {
    /// Issues every identity from a client configuration that holds the cluster CA key
    /// (the server's own node).
    pub fn issue(
        cfg: &crate::client::ClientConfig,
        node_name: &str,
    ) -> Result<AgentClients, crate::client::Error> {
        Ok(AgentClients {
            node: cfg.client_for(&format!("system:node:{node_name}"), &["system:nodes"])?,
            proxy: cfg.client_for(PROXY_USER, &[])?,
            dns: cfg.client_for(DNS_USER, &[])?,
            ingress: cfg.client_for(INGRESS_USER, &[])?,
        })
    }

    /// Builds every identity from the certificates a joining node received from the
    /// server (`kaji agent`), for the API server at `url` verified with `ca_pem`.
    pub fn from_credentials(
        url: &str,
        ca_pem: &str,
        creds: &crate::pki::join::NodeCredentials,
    ) -> Result<AgentClients, crate::client::Error> {
        let client = |user: &str, pair: &crate::pki::join::CertPair| {
            crate::client::client_with_cert(url, ca_pem, &pair.cert_pem, &pair.key_pem, user)
        };
        Ok(AgentClients {
            node: client(&crate::pki::join::node_user(&creds.node_name), &creds.node)?,
            proxy: client(PROXY_USER, &creds.proxy)?,
            dns: client(DNS_USER, &creds.dns)?,
            ingress: client(INGRESS_USER, &creds.ingress)?,
        })
    }
}

/// Runs the agent until `shutdown`: container runtime, node registration, heartbeats.
pub async fn run(
    clients: AgentClients,
    cfg: AgentConfig,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = clients.node.clone();
    if cfg.runtime_endpoint.is_none() {
        let paths = containerd::Paths::new(&cfg.data_dir, &cfg.run_dir);
        containerd::start(&cfg, paths, shutdown.clone()).await?;
    }
    let socket = match &cfg.runtime_endpoint {
        Some(e) => std::path::PathBuf::from(e.strip_prefix("unix://").unwrap_or(e)),
        None => containerd::Paths::new(&cfg.data_dir, &cfg.run_dir).socket,
    };
    let (cri, version) = cri::Cri::wait_ready(&socket).await?;
    tracing::info!(runtime = %version, "container runtime ready");
    if cfg.runtime_endpoint.is_none() {
        images::prepare_node_images(&cfg, &socket)
            .await
            .map_err(|e| Error::Runtime(e.to_string()))?;
    }
    let mut cfg = cfg;
    cfg.runtime_version = version;
    let node_stats = stats::Stats::default();
    let (kubelet_port, kubelet_api) =
        server::start(&cfg, cri.clone(), node_stats.clone(), shutdown.clone()).await?;
    cfg.kubelet_port = kubelet_port;
    let (evictions, pressure) = eviction::Manager::new(
        client.clone(),
        &cfg.node_name,
        cfg.eviction.clone(),
        eviction::Sources {
            node_fs: cfg.data_dir.clone(),
            image_fs: match &cfg.runtime_endpoint {
                None => containerd::Paths::new(&cfg.data_dir, &cfg.run_dir).root,
                Some(_) => PathBuf::from("/var/lib/containerd"),
            },
        },
        node_stats.clone(),
    );
    node::register(&client, &cfg, &pressure.borrow().clone()).await?;
    let pod_cidr = node::wait_pod_cidr(&client, &cfg, &shutdown).await?;
    network::write_conflist(
        &containerd::Paths::new(&cfg.data_dir, &cfg.run_dir).cni_conf_dir,
        &pod_cidr,
        &network::ipam_dir(&cfg.data_dir),
    )?;
    let cfg = std::sync::Arc::new(cfg);
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        (*cfg).clone(),
        pressure,
        shutdown.clone(),
    ));
    // Node-level components beside the pod workers; each runs until `shutdown`.
    let mut components: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    if cfg.enabled("ingress") {
        components.push(tokio::spawn(crate::ingress::run(
            clients.ingress.clone(),
            crate::ingress::Listen::default(),
            shutdown.clone(),
        )));
    }
    if cfg.enabled("dns") {
        let settings = crate::dns::Settings {
            address: cfg.cluster_dns,
            port: 53,
            domain: cfg.cluster_domain.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
            manage_interface: true,
        };
        // Pods keep running without it; the failure (e.g. port 53 taken) is logged.
        match crate::dns::run(clients.dns.clone(), settings, shutdown.clone()).await {
            Ok(dns) => components.push(dns),
            Err(e) => tracing::error!(error = %e, "cluster DNS did not start"),
        }
    }
    if cfg.kube_proxy {
        let (_, proxy) = crate::proxy::start(
            clients.proxy.clone(),
            crate::proxy::Config::from_agent(&cfg),
            shutdown.clone(),
        )
        .await
        .map_err(|e| Error::Config(format!("service proxy: {e}")))?;
        components.push(proxy);
    }
    if cfg.network_policy {
        let netpol = crate::netpol::start(
            clients.proxy.clone(),
            crate::netpol::Config::from_agent(&cfg),
            shutdown.clone(),
        )
        .await
        .map_err(|e| Error::Config(format!("network policy: {e}")))?;
        components.push(netpol);
    }
    components.push(tokio::spawn(stats::run_sampler(
        stats::Sampler::new(&cfg.node_name, &cfg.data_dir, stats::Cgroups::host()),
        cri.clone(),
        node_stats,
        shutdown.clone(),
    )));
    components.push(tokio::spawn(evictions.run(shutdown.clone())));
    components.push(tokio::spawn(logs::run_rotation(
        cri.clone(),
        cfg.log_rotation,
        shutdown.clone(),
    )));
    let workers = tokio::spawn(pod_workers::run(client, cfg, cri, shutdown));
    let handle = tokio::spawn(async move {
        let _ = workers.await;
        let _ = heartbeat.await;
        let _ = kubelet_api.await;
        for c in components {
            let _ = c.await;
        }
    });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints() {
        assert_eq!(
            parse_taint("dedicated=gpu:NoSchedule"),
            Some(("dedicated".into(), "gpu".into(), "NoSchedule".into()))
        );
        assert_eq!(
            parse_taint("edge:NoExecute"),
            Some(("edge".into(), "".into(), "NoExecute".into()))
        );
        assert_eq!(parse_taint("x=y:Sometimes"), None);
    }
}
