//! Cluster DNS (kaji's CoreDNS): answers `cluster.local` names from Services and
//! EndpointSlices and forwards the rest to the node's resolvers. Runs in every node agent,
//! node-locally (like NodeLocal DNSCache): the cluster DNS address lives on a `kaji-dns`
//! dummy interface of the node and pods' resolv.conf points at it, so no DNAT is involved.
//!
//! - [`index`]: the in-memory view (Services, ready endpoints, Namespaces, reverse map);
//! - [`answer`]: the Kubernetes DNS specification's records, NXDOMAIN vs NODATA;
//! - [`forward`]: upstream resolvers from resolv.conf, with a TTL-honouring cache;
//! - [`server`]: UDP/TCP serving, truncation, the dummy interface;
//! - [`watch`]: reflectors that keep the index current;
//! - [`ensure_service`]: the `kube-system/kube-dns` Service the server creates.
//!
//! Depends on: `client`, `api`, `config`. Must not depend on: `store`, `apiserver`.

pub mod answer;
pub mod forward;
pub mod index;
pub mod server;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;

pub use forward::node_resolv_conf;
pub use server::{Dns, Transport};

/// Longest time a forwarded answer is cached.
pub const MAX_CACHE_TTL: u32 = 30;

/// Errors of cluster DNS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path or address.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command (`ip`) failed.
    #[error("{0}")]
    Command(String),
    /// An upstream resolver failed.
    #[error("upstream {upstream}: {source}")]
    Upstream {
        /// The resolver.
        upstream: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// An upstream resolver did not answer in time.
    #[error("upstream {0}: timed out")]
    Timeout(SocketAddr),
    /// There is no upstream resolver.
    #[error("no upstream resolver (no usable nameserver in resolv.conf)")]
    NoUpstream,
    /// A message could not be encoded or decoded.
    #[error("DNS message: {0}")]
    Proto(String),
    /// An API request failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Settings of one node's DNS server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cluster DNS address (served on port 53).
    pub address: IpAddr,
    /// The port (53; tests and benches may pick another).
    pub port: u16,
    /// The cluster domain.
    pub domain: String,
    /// The resolv.conf naming the upstream resolvers.
    pub resolv_conf: PathBuf,
    /// Whether to put `address` on the `kaji-dns` dummy interface.
    pub manage_interface: bool,
}

/// Starts cluster DNS: the address on the dummy interface, UDP and TCP listeners, the
/// watches. The handle finishes after `shutdown`, once the address kaji added (if any)
/// is gone again.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let upstreams = forward::upstreams(&settings.resolv_conf, settings.address)?;
    if upstreams.is_empty() {
        tracing::warn!(resolv_conf = %settings.resolv_conf.display(), "cluster DNS has no upstream resolver; only cluster names will resolve");
    }
    let holder = if settings.manage_interface {
        server::ensure_address(settings.address).await?
    } else {
        server::Holder::Nothing
    };
    let (udp, tcp) = match server::bind(settings.address, settings.port).await {
        Ok(s) => s,
        Err(e) => {
            server::release_address(holder).await;
            return Err(e);
        }
    };
    let mut zone = answer::Zone::new(&settings.domain, settings.address);
    zone.serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    tracing::info!(
        address = %settings.address,
        domain = %zone.domain,
        upstreams = ?upstreams,
        "cluster DNS listening"
    );
    let dns = Arc::new(Dns::new(
        zone,
        forward::Forwarder::new(upstreams, MAX_CACHE_TTL),
    ));
    let udp_task = tokio::spawn(server::serve_udp(dns.clone(), udp, shutdown.clone()));
    let tcp_task = tokio::spawn(server::serve_tcp(dns.clone(), tcp, shutdown.clone()));
    let watch_task = tokio::spawn(watch::run(client, dns, shutdown.clone()));
    Ok(tokio::spawn(async move {
        let _ = tokio::join!(udp_task, tcp_task, watch_task);
        server::release_address(holder).await;
    }))
}

/// The namespace and name of the cluster DNS Service.
pub const SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The `kube-system/kube-dns` Service pointing at the cluster DNS address (no selector:
/// every node answers on that address itself).
pub fn service_manifest(cluster_dns: IpAddr) -> Service {
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE.1,
            "namespace": SERVICE.0,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "false"},
        },
        "spec": {
            "clusterIP": cluster_dns.to_string(),
            "clusterIPs": [cluster_dns.to_string()],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    });
    // The literal above is a valid Service.
    serde_json::from_value(v).unwrap_or_default()
}

/// Creates the `kube-system/kube-dns` Service if it does not exist, retrying in the
/// background until it succeeds or `shutdown` (kube-system may not exist yet).
pub fn ensure_service(
    client: kube::Client,
    cluster_dns: IpAddr,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Service> = Api::namespaced(client, SERVICE.0);
        let svc = service_manifest(cluster_dns);
        let mut delay = Duration::from_millis(200);
        loop {
            match api.create(&PostParams::default(), &svc).await {
                Ok(_) => {
                    tracing::info!(cluster_ip = %cluster_dns, "created Service kube-system/kube-dns");
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => return,
                Err(e) => tracing::debug!(error = %e, "creating Service kube-system/kube-dns"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_service() {
        let svc = service_manifest("10.43.0.10".parse().unwrap());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.10"));
        assert!(spec.selector.is_none());
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].protocol.as_deref(), Some("UDP"));
        assert_eq!(
            svc.metadata.labels.unwrap()["k8s-app"],
            "kube-dns".to_string()
        );
    }
}
