//! The controller manager: level-triggered controllers, each an API client with its own
//! identity, built on kube-runtime (watch, reflect, reconcile, requeue).
//!
//! Depends on: `client`, `api`. Must not depend on: `store`, `apiserver`.

mod clusterrole_aggregation;
mod cronjob;
mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod endpointslice;
mod garbage_collector;
mod hash;
mod history;
mod hpa;
mod job;
mod local_path;
mod namespace;
mod node_ipam;
mod node_lifecycle;
mod owners;
mod podgc;
mod pv_binder;
mod replicaset;
mod resourcequota;
mod root_ca_publisher;
mod serviceaccount;
pub mod servicelb;
mod statefulset;
mod ttl_after_finished;
mod watch;

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

/// Cluster settings the controllers need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pod network, split into node podCIDRs (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// How long a node may stay silent before it is marked Unknown and tainted
    /// unreachable (`--node-monitor-grace-period`).
    pub node_monitor_grace_period: std::time::Duration,
    /// Terminated pods kept before the pod GC deletes the oldest (0: unlimited;
    /// `--terminated-pod-gc-threshold`).
    pub terminated_pod_gc_threshold: i32,
    /// Where the local-path provisioner makes volumes (`<data-dir>/storage`); `None`
    /// with `--disable local-storage`.
    pub local_storage: Option<std::path::PathBuf>,
    /// ServiceLB's settings; `None` with `--disable servicelb`.
    pub servicelb: Option<servicelb::Settings>,
}

/// Starts every controller; they run until `shutdown`.
pub async fn start(
    cfg: ClientConfig,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<Controllers, client::Error> {
    let cluster_cidr = settings.cluster_cidr.as_str();
    let client = cfg.client_for("system:kube-controller-manager", &[])?;
    let mut tasks = vec![
        tokio::spawn(garbage_collector::run(client.clone(), shutdown.clone())),
        tokio::spawn(replicaset::run(client.clone(), shutdown.clone())),
        tokio::spawn(deployment::run(client.clone(), shutdown.clone())),
        tokio::spawn(daemonset::run(client.clone(), shutdown.clone())),
        tokio::spawn(statefulset::run(client.clone(), shutdown.clone())),
        tokio::spawn(pv_binder::run(client.clone(), shutdown.clone())),
        tokio::spawn(job::run(client.clone(), shutdown.clone())),
        tokio::spawn(cronjob::run(client.clone(), shutdown.clone())),
        tokio::spawn(ttl_after_finished::run(client.clone(), shutdown.clone())),
        tokio::spawn(podgc::run(
            client.clone(),
            settings.terminated_pod_gc_threshold,
            shutdown.clone(),
        )),
        tokio::spawn(clusterrole_aggregation::run(
            client.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(disruption::run(client.clone(), shutdown.clone())),
        tokio::spawn(hpa::run(client.clone(), shutdown.clone())),
        tokio::spawn(resourcequota::run(client.clone(), shutdown.clone())),
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
        tokio::spawn(node_lifecycle::run(
            client.clone(),
            settings.node_monitor_grace_period,
            shutdown.clone(),
        )),
        tokio::spawn(namespace::run(client.clone(), shutdown.clone())),
        tokio::spawn(endpointslice::run(client.clone(), shutdown.clone())),
        tokio::spawn(endpoints::run(client.clone(), shutdown.clone())),
    ];
    if let Some(lb) = &settings.servicelb {
        tasks.push(tokio::spawn(servicelb::run(
            client.clone(),
            lb.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(base) = &settings.local_storage {
        tasks.push(tokio::spawn(local_path::run(
            client,
            base.clone(),
            shutdown,
        )));
    }
    Ok(Controllers { tasks })
}
