//! The controller manager: level-triggered controllers, each an API client with its own
//! identity, built on kube-runtime (watch, reflect, reconcile, requeue).
//!
//! Depends on: `client`, `api`. Must not depend on: `store`, `apiserver`.

mod clusterrole_aggregation;
mod deployment;
mod disruption;
mod garbage_collector;
mod namespace;
mod node_ipam;
mod replicaset;
mod root_ca_publisher;
mod serviceaccount;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientConfig};

/// Whether a namespace is going away (no new content may be created in it).
pub(crate) fn namespace_is_terminating(ns: &k8s_openapi::api::core::v1::Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating")
}

/// Running controllers.
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Waits (briefly) for every controller to stop after shutdown was signalled.
    pub async fn stop(self) {
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(std::time::Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("controllers did not stop within 5s; aborting them");
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// Starts every controller; they run until `shutdown`.
pub async fn start(
    cfg: ClientConfig,
    cluster_cidr: &str,
    shutdown: CancellationToken,
) -> Result<Controllers, client::Error> {
    let client = cfg.client_for("system:kube-controller-manager", &[])?;
    let tasks = vec![
        tokio::spawn(garbage_collector::run(client.clone(), shutdown.clone())),
        tokio::spawn(replicaset::run(client.clone(), shutdown.clone())),
        tokio::spawn(deployment::run(client.clone(), shutdown.clone())),
        tokio::spawn(clusterrole_aggregation::run(
            client.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(disruption::run(client.clone(), shutdown.clone())),
        tokio::spawn(serviceaccount::run(client.clone(), shutdown.clone())),
        tokio::spawn(root_ca_publisher::run(
            client.clone(),
            cfg.ca_pem.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(node_ipam::run(
            client.clone(),
            cluster_cidr.to_string(),
            shutdown.clone(),
        )),
        tokio::spawn(namespace::run(client, shutdown)),
    ];
    Ok(Controllers { tasks })
}
