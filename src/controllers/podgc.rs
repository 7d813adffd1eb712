//! The pod garbage collector (upstream's `pkg/controller/podgc`). Every 20 seconds it
//! force-deletes (grace period 0), first marking a pod that has not finished as `Failed`:
//!
//! - **terminated pods** (phase Succeeded or Failed) beyond `--terminated-pod-gc-threshold`
//!   (0 turns this off), evicted ones first, then the oldest;
//! - **orphaned pods** bound to a node that no longer exists: once the node has been
//!   missing from the cache for a 40 s quarantine and a fresh read confirms it is gone
//!   (condition `DisruptionTarget`, reason `DeletionByPodGC`);
//! - **unscheduled terminating pods** (being deleted, never bound to a node);
//! - **terminating pods on out-of-service nodes** (not Ready, tainted
//!   `node.kubernetes.io/out-of-service`).
//!
//! Depends on kube-rs. Never the store or the API server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::replicaset::{error_message, is_not_found, now_seconds};

/// How often the collector runs.
const CHECK_PERIOD: Duration = Duration::from_secs(20);
/// How long a node must be missing before its pods count as orphaned.
const QUARANTINE: Duration = Duration::from_secs(40);
/// The taint that marks a node as out of service.
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// Why a pod is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Terminated,
    Orphaned,
    UnscheduledTerminating,
    OutOfService,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn node_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn is_terminated(p: &Pod) -> bool {
    !matches!(phase(p), "Pending" | "Running" | "Unknown")
}

fn out_of_service(n: &Node) -> bool {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == OUT_OF_SERVICE_TAINT && t.effect == "NoExecute")
        });
    !ready && tainted
}

/// The pods to collect now, in order, and which nodes are missing (candidates for the
/// orphan check: their pods go once `confirmed_gone` names them).
fn plan(
    pods: &[Arc<Pod>],
    nodes: &[Arc<Node>],
    threshold: i32,
    confirmed_gone: &HashSet<String>,
) -> (Vec<(Arc<Pod>, Reason)>, HashSet<String>) {
    let mut out: Vec<(Arc<Pod>, Reason)> = Vec::new();
    let node_map: HashMap<String, &Arc<Node>> = nodes.iter().map(|n| (n.name_any(), n)).collect();
    // Terminating pods on out-of-service nodes.
    for p in pods {
        if p.metadata.deletion_timestamp.is_some()
            && node_map
                .get(node_name(p))
                .is_some_and(|n| out_of_service(n))
        {
            out.push((p.clone(), Reason::OutOfService));
        }
    }
    // Terminated pods over the threshold: evicted first, then oldest.
    if threshold > 0 {
        let mut terminated: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_terminated(p)).collect();
        let excess = terminated
            .len()
            .saturating_sub(usize::try_from(threshold).unwrap_or(0));
        if excess > 0 {
            let evicted =
                |p: &Pod| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            terminated.sort_by(|a, b| {
                evicted(b)
                    .cmp(&evicted(a))
                    .then_with(|| created(a).cmp(&created(b)))
                    .then_with(|| a.name_any().cmp(&b.name_any()))
            });
            out.extend(
                terminated
                    .into_iter()
                    .take(excess)
                    .map(|p| (p.clone(), Reason::Terminated)),
            );
        }
    }
    // Orphans.
    let mut missing = HashSet::new();
    for p in pods {
        let node = node_name(p);
        if node.is_empty() || node_map.contains_key(node) {
            continue;
        }
        missing.insert(node.to_string());
        if confirmed_gone.contains(node) {
            out.push((p.clone(), Reason::Orphaned));
        }
    }
    // Unscheduled terminating pods.
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() && node_name(p).is_empty() {
            out.push((p.clone(), Reason::UnscheduledTerminating));
        }
    }
    let mut seen = HashSet::new();
    out.retain(|(p, _)| seen.insert(p.uid().unwrap_or_default()));
    (out, missing)
}

/// Runs the pod garbage collector until `shutdown`; `threshold` is the number of
/// terminated pods kept (0: unlimited).
pub async fn run(client: Client, threshold: i32, shutdown: CancellationToken) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let stop = shutdown.clone();
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .take_until(async move { stop.cancelled().await })
        .for_each(|_| future::ready(()));
    let stop = shutdown.clone();
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .take_until(async move { stop.cancelled().await })
        .for_each(|_| future::ready(()));
    let collector = async move {
        if pods.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
        let mut missing_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            gc_once(&client, &pods, &nodes, threshold, &mut missing_since).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CHECK_PERIOD) => {}
            }
        }
    };
    futures::join!(pod_watch, node_watch, collector);
}

async fn gc_once(
    client: &Client,
    pods: &Store<Pod>,
    nodes: &Store<Node>,
    threshold: i32,
    missing_since: &mut HashMap<String, tokio::time::Instant>,
) {
    let all_pods = pods.state();
    let all_nodes = nodes.state();
    // Nodes missing for the whole quarantine, confirmed gone by a fresh read.
    let (_, missing) = plan(&all_pods, &all_nodes, 0, &HashSet::new());
    let now = tokio::time::Instant::now();
    missing_since.retain(|n, _| missing.contains(n));
    let mut gone = HashSet::new();
    let node_api: Api<Node> = Api::all(client.clone());
    for node in missing {
        let since = *missing_since.entry(node.clone()).or_insert(now);
        if now.duration_since(since) < QUARANTINE {
            continue;
        }
        match node_api.get_opt(&node).await {
            Ok(None) => {
                gone.insert(node);
            }
            Ok(Some(_)) => {}
            Err(err) => tracing::debug!(%err, %node, "podgc: checking a node"),
        }
    }
    let (victims, _) = plan(&all_pods, &all_nodes, threshold, &gone);
    for (pod, reason) in victims {
        if let Err(err) = collect(client, &pod, reason).await {
            tracing::warn!(pod = %pod.name_any(), ns = %pod.namespace().unwrap_or_default(), ?reason, err = %error_message(&err), "podgc: deleting a pod");
        }
    }
}

/// Marks the pod Failed (unless it finished) and deletes it with no grace period.
async fn collect(client: &Client, pod: &Pod, reason: Reason) -> Result<(), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    tracing::info!(pod = %name, ns = %ns, ?reason, "podgc: deleting pod");
    if !matches!(phase(pod), "Succeeded" | "Failed") {
        let mut status = json!({"phase": "Failed"});
        if reason == Reason::Orphaned {
            status["conditions"] = json!([{
                "type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists",
                "lastTransitionTime": now_seconds(Timestamp::now()),
            }]);
        }
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&json!({"status": status})),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        created: &str,
        deleting: bool,
        evicted: bool,
    ) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase},
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2025-01-01T01:00:00Z");
        }
        if evicted {
            v["status"]["reason"] = json!("Evicted");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str, ready: bool, out_of_service: bool) -> Arc<Node> {
        let taints: Vec<_> = out_of_service
            .then(|| json!({"key": OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}))
            .into_iter()
            .collect();
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"taints": taints},
                "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn what_gets_collected() {
        let nodes = vec![node("n1", true, false), node("dead", false, true)];
        let pods = vec![
            pod(
                "old-done",
                "n1",
                "Succeeded",
                "2025-01-01T00:00:00Z",
                false,
                false,
            ),
            pod(
                "new-done",
                "n1",
                "Failed",
                "2025-01-01T00:05:00Z",
                false,
                false,
            ),
            pod(
                "evicted",
                "n1",
                "Failed",
                "2025-01-01T00:09:00Z",
                false,
                true,
            ),
            pod(
                "running",
                "n1",
                "Running",
                "2025-01-01T00:00:00Z",
                false,
                false,
            ),
            pod(
                "orphan",
                "gone",
                "Running",
                "2025-01-01T00:00:00Z",
                false,
                false,
            ),
            pod(
                "unscheduled",
                "",
                "Pending",
                "2025-01-01T00:00:00Z",
                true,
                false,
            ),
            pod(
                "stuck",
                "dead",
                "Running",
                "2025-01-01T00:00:00Z",
                true,
                false,
            ),
        ];
        let names = |v: &[(Arc<Pod>, Reason)]| -> Vec<(String, Reason)> {
            v.iter().map(|(p, r)| (p.name_any(), *r)).collect()
        };
        // Threshold 1: two of three terminated pods go, evicted first, then the oldest.
        let (v, missing) = plan(&pods, &nodes, 1, &HashSet::new());
        assert_eq!(
            names(&v),
            [
                ("stuck".to_string(), Reason::OutOfService),
                ("evicted".to_string(), Reason::Terminated),
                ("old-done".to_string(), Reason::Terminated),
                ("unscheduled".to_string(), Reason::UnscheduledTerminating),
            ]
        );
        assert_eq!(missing, HashSet::from(["gone".to_string()]));
        // The orphan goes once its node is confirmed gone; threshold 0 keeps terminated pods.
        let (v, _) = plan(&pods, &nodes, 0, &HashSet::from(["gone".to_string()]));
        assert!(names(&v).contains(&("orphan".to_string(), Reason::Orphaned)));
        assert!(!v.iter().any(|(_, r)| *r == Reason::Terminated));
        // Under the threshold nothing terminated goes.
        let (v, _) = plan(&pods, &nodes, 10, &HashSet::new());
        assert!(!v.iter().any(|(_, r)| *r == Reason::Terminated));
    }
}
