//! The scheduler: an API client with its own identity that watches pods without a node
//! (for `schedulerName: default-scheduler`), filters and scores nodes
//! ([`plugins`]), and binds through `pods/binding`. Pods that fit nowhere get the
//! `PodScheduled=False` condition and a `FailedScheduling` event with upstream's message
//! ("0/1 nodes are available: 1 Insufficient cpu."), and are retried with back-off when
//! nodes or pods change. A Lease (`kube-system/kube-scheduler`) elects one active
//! scheduler among several servers.
//!
//! Depends on: `client`, `api`. Must not depend on: `store`, `apiserver`, `agent`.

pub mod plugins;
pub mod volume_binding;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::plugins::NodeInfo;

/// The scheduler name pods ask for by default.
pub const SCHEDULER_NAME: &str = "default-scheduler";
const LEASE_NAME: &str = "kube-scheduler";
const LEASE_SECONDS: i32 = 15;
/// How many binds (each a binding, a status patch and an event) run at once.
const BIND_PARALLELISM: usize = 16;

/// Runs the scheduler until `shutdown`.
pub async fn run(client: kube::Client, identity: String, shutdown: CancellationToken) {
    // Leader election: only the holder of the Lease schedules.
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match try_acquire(&client, &identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => tracing::debug!(%err, "scheduler leader election"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    tracing::info!(%identity, "scheduler became leader");
    let renew_client = client.clone();
    let renew_id = identity.clone();
    let lost = CancellationToken::new();
    let lost_c = lost.clone();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sd.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            match try_acquire(&renew_client, &renew_id).await {
                Ok(true) => {}
                other => {
                    tracing::warn!(result = ?other, "scheduler lost its lease");
                    lost_c.cancel();
                    return;
                }
            }
        }
    });
    let stop = CancellationToken::new();
    let s1 = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = lost.cancelled() => {}
        }
        s1.cancel();
    });
    schedule_loop(client, stop).await;
}

fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Acquires or renews the scheduler Lease; true when we hold it.
async fn try_acquire(client: &kube::Client, identity: &str) -> Result<bool, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    match leases.get_opt(LEASE_NAME).await? {
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": LEASE_NAME, "namespace": "kube-system"},
                "spec": {"holderIdentity": identity, "leaseDurationSeconds": LEASE_SECONDS,
                         "acquireTime": micro_now(), "renewTime": micro_now(), "leaseTransitions": 0},
            }))
            .map_err(kube::Error::SerdeError)?;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let expired = spec.renew_time.as_ref().is_none_or(|t| {
                let age = jiff::Timestamp::now().duration_since(t.0);
                age > jiff::SignedDuration::from_secs(
                    spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64,
                )
            });
            if holder != identity && !expired {
                return Ok(false);
            }
            // An update (not a patch): the resourceVersion makes it a compare-and-swap, and
            // upstream's system:kube-scheduler role grants exactly get/create/update.
            let mut next = lease.clone();
            let mut spec = spec.clone();
            if holder != identity {
                spec.acquire_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                        jiff::Timestamp::now(),
                    ));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(identity.to_string());
            spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                jiff::Timestamp::now(),
            ));
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            next.spec = Some(spec);
            match leases
                .replace(LEASE_NAME, &PostParams::default(), &next)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

fn is_terminated(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

async fn schedule_loop(client: kube::Client, stop: CancellationToken) {
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let wake = Arc::new(Notify::new());
    let w1 = wake.clone();
    let node_stream = reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    );
    let s1 = stop.clone();
    tokio::spawn(async move {
        let mut st = node_stream.boxed();
        loop {
            tokio::select! {
                _ = s1.cancelled() => return,
                e = st.next() => match e { Some(_) => w1.notify_one(), None => return },
            }
        }
    });
    let w2 = wake.clone();
    let pod_stream = reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    );
    let s2 = stop.clone();
    tokio::spawn(async move {
        let mut st = pod_stream.boxed();
        loop {
            tokio::select! {
                _ = s2.cancelled() => return,
                e = st.next() => match e { Some(_) => w2.notify_one(), None => return },
            }
        }
    });
    let _ = nodes.wait_until_ready().await;
    let _ = pods.wait_until_ready().await;
    // Back-off of unschedulable pods: uid → (delay, not before, last message).
    let mut backoff: HashMap<String, (Duration, Instant, String)> = HashMap::new();
    // Pods bound in this process but not yet seen bound in the cache.
    let mut assumed: HashMap<String, (String, Value, Instant)> = HashMap::new();
    loop {
        let mut next = Duration::from_secs(5);
        let all_pods = pods.state();
        // Forget assumptions the cache has caught up with.
        assumed.retain(|uid, (_, _, at)| {
            let bound = all_pods.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(uid.as_str())
                    && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            });
            !bound && at.elapsed() < Duration::from_secs(30)
        });
        let mut infos: BTreeMap<String, NodeInfo> = nodes
            .state()
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.clone()?,
                    NodeInfo {
                        node: serde_json::to_value(n.as_ref()).ok()?,
                        pods: vec![],
                    },
                ))
            })
            .collect();
        for p in all_pods.iter().filter(|p| !is_terminated(p)) {
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                if let (Some(info), Ok(v)) = (infos.get_mut(node), serde_json::to_value(p.as_ref()))
                {
                    info.pods.push(v);
                }
            }
        }
        for (node, pod, _) in assumed.values() {
            if let Some(info) = infos.get_mut(node) {
                info.pods.push(pod.clone());
            }
        }
        let mut queue: Vec<Value> = all_pods
            .iter()
            .filter(|p| {
                let spec = p.spec.as_ref();
                spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
                    && spec
                        .and_then(|s| s.scheduler_name.as_deref())
                        .unwrap_or(SCHEDULER_NAME)
                        == SCHEDULER_NAME
                    && p.metadata.deletion_timestamp.is_none()
                    && !is_terminated(p)
                    && !assumed.contains_key(p.metadata.uid.as_deref().unwrap_or(""))
            })
            .filter_map(|p| serde_json::to_value(p.as_ref()).ok())
            .collect();
        // Higher priority first, then oldest.
        queue.sort_by_key(|p| {
            (
                std::cmp::Reverse(p["spec"]["priority"].as_i64().unwrap_or(0)),
                p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        });
        let node_list: Vec<NodeInfo> = infos.values().cloned().collect();
        let mut binds: Vec<(String, Value, String)> = Vec::new();
        for pod in queue {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if let Some((_, until, _)) = backoff.get(&uid) {
                if Instant::now() < *until {
                    next = next.min(*until - Instant::now());
                    continue;
                }
            }
            let volumes = volume_binding::resolve(&client, &pod).await;
            let placed = match &volumes {
                Ok(v) => schedule_one_with(&pod, &node_list, v),
                Err(reason) => Err(unschedulable_message(node_list.len(), reason)),
            };
            if let (Ok(node), Ok(v)) = (&placed, &volumes) {
                volume_binding::select_node(&client, &pod, v, node).await;
            }
            match placed {
                Ok(node) => {
                    // Assume the pod on its node now (later pods of this cycle see it),
                    // bind after the cycle: binds run concurrently, as upstream's binding
                    // cycles do, instead of one pod's three API writes after another's.
                    let mut bound = pod.clone();
                    bound["spec"]["nodeName"] = json!(node);
                    if let Some(info) = infos.get_mut(&node) {
                        info.pods.push(bound.clone());
                    }
                    assumed.insert(uid.clone(), (node.clone(), bound, Instant::now()));
                    binds.push((uid, pod, node));
                }
                Err(message) => {
                    let (delay, _, last) = backoff.get(&uid).cloned().unwrap_or((
                        Duration::from_millis(500),
                        Instant::now(),
                        String::new(),
                    ));
                    if message != last {
                        report_unschedulable(&client, &pod, &message).await;
                    }
                    let delay = (delay * 2).min(Duration::from_secs(10));
                    backoff.insert(uid, (delay, Instant::now() + delay, message));
                    next = next.min(delay);
                }
            }
        }
        let results = futures::stream::iter(binds)
            .map(|(uid, pod, node)| {
                let client = client.clone();
                async move {
                    let res = bind(&client, &pod, &node).await;
                    (uid, pod, res)
                }
            })
            .buffer_unordered(BIND_PARALLELISM)
            .collect::<Vec<_>>()
            .await;
        for (uid, pod, res) in results {
            match res {
                Ok(()) => {
                    backoff.remove(&uid);
                }
                Err(err) => {
                    // Forget the assumption: the pod is retried in the next cycle.
                    assumed.remove(&uid);
                    next = next.min(Duration::from_millis(500));
                    tracing::warn!(%err, pod = %pod["metadata"]["name"], "binding failed")
                }
            }
        }
        let live: std::collections::HashSet<String> = pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        backoff.retain(|u, _| live.contains(u));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {
                // A change in the cluster: give unschedulable pods another chance soon.
                for (_, until, _) in backoff.values_mut() {
                    *until = (*until).min(Instant::now() + Duration::from_millis(200));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Picks the best node, or explains why none fits.
pub fn schedule_one(pod: &Value, nodes: &[NodeInfo]) -> Result<String, String> {
    schedule_one_with(pod, nodes, &volume_binding::PodVolumes::default())
}

/// "0/N nodes are available: <reason>." for a pod no node can take.
fn unschedulable_message(nodes: usize, reason: &str) -> String {
    format!(
        "0/{nodes} nodes are available: {reason}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
    )
}

/// [`schedule_one`] with the pod's volume constraints (VolumeBinding).
pub fn schedule_one_with(
    pod: &Value,
    nodes: &[NodeInfo],
    volumes: &volume_binding::PodVolumes,
) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("0/0 nodes are available: no nodes available to schedule pods.".into());
    }
    let mut best: Option<(i64, String)> = None;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for info in nodes {
        let name = info.node["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let filtered = plugins::filter(pod, info, nodes)
            .and_then(|()| volume_binding::fits(volumes, &info.node).map_err(|r| vec![r]));
        match filtered {
            Ok(()) => {
                let s = plugins::score(pod, info);
                if best
                    .as_ref()
                    .is_none_or(|(b, n)| s > *b || (s == *b && name < *n))
                {
                    best = Some((s, name));
                }
            }
            Err(rs) => {
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    match best {
        Some((_, n)) => Ok(n),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            Err(format!(
                "0/{} nodes are available: {}. preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.",
                nodes.len(),
                parts.join(", "),
                nodes.len(),
                nodes.len()
            ))
        }
    }
}

async fn bind(client: &kube::Client, pod: &Value, node: &str) -> Result<(), kube::Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod["metadata"]["uid"]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/binding"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&binding).unwrap_or_default())
        .map_err(|e| kube::Error::Service(Box::new(e)))?;
    let _: Value = client.request(req).await?;
    let when = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": when}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await;
    event(
        client,
        pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
    )
    .await;
    Ok(())
}

async fn report_unschedulable(client: &kube::Client, pod: &Value, message: &str) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let when = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                   "message": message, "lastProbeTime": null, "lastTransitionTime": when}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Err(err) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
    {
        tracing::debug!(%err, "reporting unschedulable pod");
    }
    event(client, pod, "Warning", "FailedScheduling", message).await;
}

async fn event(client: &kube::Client, pod: &Value, kind: &str, reason: &str, message: &str) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let ev = json!({
        "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": pod["metadata"]["uid"]},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": SCHEDULER_NAME}, "reportingComponent": SCHEDULER_NAME,
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    });
    let Ok(ev) = serde_json::from_value::<k8s_openapi::api::core::v1::Event>(ev) else {
        return;
    };
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    if let Err(err) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(%err, "recording scheduler event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unschedulable_message_is_upstream_style() {
        let node = NodeInfo {
            node: json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}}}),
            pods: vec![],
        };
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
                         "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}});
        let err = schedule_one(&pod, std::slice::from_ref(&node)).unwrap_err();
        assert!(
            err.starts_with("0/1 nodes are available: 1 Insufficient cpu."),
            "{err}"
        );
        let fits = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c"}]}});
        assert_eq!(schedule_one(&fits, &[node]).unwrap(), "n1");
    }
}
