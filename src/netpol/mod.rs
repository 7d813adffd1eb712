//! NetworkPolicy enforcement (networking.k8s.io/v1) on one node: the node agent's
//! policy controller. It owns the nftables table `inet kaji-netpol` and nothing else
//! (the service proxy's `ip kaji` table is separate).
//!
//! Semantics follow upstream's documented behaviour: a pod is isolated for ingress
//! (egress) when a policy of its namespace selects it with that policy type; then only
//! the union of those policies' rules is allowed — peers by pod selector (the policy's
//! namespace), namespace selector (optionally with a pod selector), or IP block less
//! exceptions; ports by protocol and number, range (`endPort`) or name (the destination
//! pod's container port). Replies of allowed connections always pass; the node itself
//! may always reach its pods (kubelet probes). Service traffic is judged after the
//! proxy's DNAT, i.e. against the real pod.
//!
//! Enforcement is on the forward hook of an `inet` table. Pods of one node share the
//! `cni0` bridge, so their traffic is bridged, not routed; `br_netfilter` with
//! `net.bridge.bridge-nf-call-iptables=1` (set by [`start`]) passes bridged IPv4
//! traffic through the inet forward hook too, which also sees routed traffic from other
//! nodes and service traffic after DNAT. Traffic between pods and the node goes through
//! input/output and is not filtered, so egress policies do not cover the node-local
//! cluster DNS.
//!
//! Watches (kube-runtime reflectors, identity `system:kube-proxy`, role
//! `system:kaji-network-policy`) of NetworkPolicies, Namespaces and all Pods (the
//! peers; those on this node are the targets) feed a sync loop that coalesces changes
//! ([`Config::min_sync_interval`]) and replaces the whole table in one `nft -f -`
//! transaction ([`compile::script`]), only when the rules changed. Without any
//! isolated local pod the table is deleted. A restart replaces the table.
//!
//! Depends on: `api` (selectors), `client` (through `kube`), `reflect` (watches),
//! `netfilter` (running `nft`). Must not depend on: `store`, `apiserver`.

pub mod compile;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::{reflector, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reflect;

/// Errors of the policy controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` is not installed.
    #[error(
        "nft not found on PATH: network policies need it (Debian package nftables), or run with --disable-network-policy"
    )]
    MissingBinary,
    /// `nft` rejected a transaction.
    #[error("nft: {0}")]
    Nft(String),
    /// Running `nft` failed.
    #[error("running nft: {0}")]
    Command(std::io::Error),
}

impl From<crate::netfilter::Error> for Error {
    fn from(e: crate::netfilter::Error) -> Self {
        use crate::netfilter::Error as E;
        match e {
            E::NotFound => Error::MissingBinary,
            E::Rejected(msg) => Error::Nft(msg),
            E::Io(e) => Error::Command(e),
        }
    }
}

/// Settings of the policy controller on one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's name (its pods are the targets).
    pub node_name: String,
    /// The shortest time between two syncs.
    pub min_sync_interval: Duration,
}

impl Config {
    /// The settings for the node agent `cfg`.
    pub fn from_agent(cfg: &crate::agent::AgentConfig) -> Config {
        Config {
            node_name: cfg.node_name.clone(),
            min_sync_interval: Duration::from_millis(200),
        }
    }
}

/// Checks for `nft`, enables `br_netfilter`, and spawns the watches and the sync loop
/// until `shutdown`. The table stays installed when it ends (pods stay protected while
/// kaji restarts); [`cleanup`] removes it.
pub async fn start(
    client: kube::Client,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    if !crate::netfilter::available().await {
        return Err(Error::MissingBinary);
    }
    prepare_node().await;
    Ok(tokio::spawn(run(client, cfg, shutdown)))
}

/// Removes the policy table; no error if it does not exist.
pub async fn cleanup() -> Result<(), Error> {
    apply(&compile::script(&compile::Ruleset::default())).await
}

/// Makes bridged pod-to-pod traffic visible to the inet forward hook.
async fn prepare_node() {
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let _ = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .output()
            .await;
    }
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    match std::fs::write(path, "1") {
        Ok(()) => tracing::info!("set net.bridge.bridge-nf-call-iptables=1"),
        Err(e) => tracing::warn!(
            "cannot set net.bridge.bridge-nf-call-iptables (br_netfilter): {e}; network policies will not apply between pods of this node"
        ),
    }
}

/// Runs one `nft -f -` transaction.
async fn apply(script: &str) -> Result<(), Error> {
    Ok(crate::netfilter::apply(script).await?)
}

async fn run(client: kube::Client, cfg: Config, shutdown: CancellationToken) {
    let (policies, pol_w) = reflector::store::<NetworkPolicy>();
    let (pods, pod_w) = reflector::store::<Pod>();
    let (namespaces, ns_w) = reflector::store::<Namespace>();
    let wake = Arc::new(Notify::new());
    let watches = [
        reflect::spawn(
            "network policy",
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default(),
            pol_w,
            wake.clone(),
            shutdown.clone(),
        ),
        reflect::spawn(
            "network policy",
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            pod_w,
            wake.clone(),
            shutdown.clone(),
        ),
        reflect::spawn(
            "network policy",
            Api::<Namespace>::all(client),
            watcher::Config::default(),
            ns_w,
            wake.clone(),
            shutdown.clone(),
        ),
    ];
    // The first sync must see complete lists, or it would open up isolated pods.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        r = async { tokio::try_join!(policies.wait_until_ready(), pods.wait_until_ready(), namespaces.wait_until_ready()) } => {
            if r.is_err() { return; }
        }
    }
    let mut applied: Option<String> = None;
    let mut last_start = Instant::now() - cfg.min_sync_interval;
    let mut retry = Duration::from_secs(1);
    loop {
        let since = last_start.elapsed();
        if since < cfg.min_sync_interval {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(cfg.min_sync_interval - since) => {}
            }
        }
        last_start = Instant::now();
        let pol: Vec<NetworkPolicy> = policies.state().iter().map(|p| (**p).clone()).collect();
        let pod_infos: Vec<compile::PodInfo> = pods
            .state()
            .iter()
            .filter_map(|p| compile::PodInfo::from_pod(p, &cfg.node_name))
            .collect();
        let ns_state = namespaces.state();
        let ns = compile::namespaces(ns_state.iter().map(|n| n.as_ref()));
        let rs = compile::compile(&pol, &pod_infos, &ns);
        let script = compile::script(&rs);
        let mut wait = None;
        if applied.as_deref() != Some(script.as_str()) {
            match apply(&script).await {
                Ok(()) => {
                    tracing::info!(
                        policies = pol.len(),
                        ingress_isolated = rs.ingress.len(),
                        egress_isolated = rs.egress.len(),
                        rules = rs.rule_count(),
                        duration_ms = last_start.elapsed().as_secs_f64() * 1e3,
                        "network policies programmed"
                    );
                    applied = Some(script);
                    retry = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::error!(retry_in = ?retry, "network policy sync failed: {e}");
                    wait = Some(retry);
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
        match wait {
            Some(d) => tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(d) => {}
            },
            None => tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                // Re-applied now and then in case someone flushed the table.
                _ = tokio::time::sleep(Duration::from_secs(300)) => { applied = None; }
            },
        }
    }
    for w in watches {
        let _ = w.await;
    }
    tracing::debug!("network policy controller stopped (table left in place)");
}
