//! The node lifecycle controller: node health, condition taints and taint-based eviction,
//! as upstream's NodeLifecycleController and TaintEvictionController do.
//!
//! - **Health**: a node whose `kube-node-lease` Lease and Ready heartbeat
//!   (`lastHeartbeatTime`) have not changed for the grace period (`--node-monitor-grace-period`,
//!   measured on this controller's clock, so skewed node clocks do not matter) gets its
//!   Ready, MemoryPressure, DiskPressure and PIDPressure conditions set to `Unknown`
//!   (`NodeStatusUnknown`, "Kubelet stopped posting node status."), a `NodeNotReady`
//!   event, and its pods' Ready condition set to False (upstream's MarkPodsNotReady).
//! - **Taints** follow the conditions: `node.kubernetes.io/unreachable` (Ready Unknown)
//!   and `node.kubernetes.io/not-ready` (Ready False) as NoSchedule and NoExecute, the
//!   pressure taints as NoSchedule, and `node.kubernetes.io/unschedulable:NoSchedule`
//!   for `spec.unschedulable` (`kubectl cordon`). They go away when the condition does.
//! - **Eviction**: a pod on a node with NoExecute taints it does not tolerate is deleted at
//!   once; if every such taint is tolerated, it is deleted `tolerationSeconds` (the
//!   smallest of the matching tolerations) after the taint's `timeAdded`, and never when
//!   a matching toleration has no `tolerationSeconds`. A `TaintManagerEviction` event
//!   names each eviction.
//!
//! The controller is a periodic pass over reflector caches of nodes, node leases and pods
//! (level-triggered: every decision is recomputed from the objects each second).
//!
//! Depends on: `controllers::replicaset::events`, kube-rs. Must not depend on: the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::replicaset::events::{EventType, Recorder};

/// Taint key for a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint key for a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint key for a cordoned node.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Condition → NoSchedule taint keys (condition type, status that taints, key).
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    ("Ready", "False", TAINT_NOT_READY),
    ("Ready", "Unknown", TAINT_UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];
/// The conditions set to Unknown when a node stops reporting.
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// How often the controller looks at every node and pod.
const PERIOD: Duration = Duration::from_secs(1);
/// How long an evicted pod is not evicted again (while the cache catches up).
const EVICTED_MEMORY: Duration = Duration::from_secs(60);

/// Errors of one pass.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// What the controller remembers about a node between passes.
#[derive(Debug, Clone, PartialEq)]
struct Health {
    /// When (controller clock) the node was last seen alive.
    probe: Timestamp,
    /// The last observed Lease renewTime.
    lease_renew: Option<String>,
    /// The last observed Ready lastHeartbeatTime.
    heartbeat: Option<String>,
}

impl Health {
    fn new(now: Timestamp, lease_renew: Option<String>, heartbeat: Option<String>) -> Health {
        Health {
            probe: now,
            lease_renew,
            heartbeat,
        }
    }

    /// Records what the node reports now; any change counts as a sign of life.
    fn observe(&mut self, now: Timestamp, lease_renew: Option<String>, heartbeat: Option<String>) {
        if lease_renew != self.lease_renew || heartbeat != self.heartbeat {
            self.probe = now;
            self.lease_renew = lease_renew;
            self.heartbeat = heartbeat;
        }
    }

    fn stale(&self, now: Timestamp, grace: Duration) -> bool {
        now.duration_since(self.probe).unsigned_abs() > grace && now > self.probe
    }
}

fn ts(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn heartbeat_of(node: &Node) -> Option<String> {
    condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.to_string())
}

/// The node's conditions with every kubelet-owned one set to Unknown, or `None` when they
/// already are.
fn unknown_conditions(node: &Node, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let mut conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    for kind in KUBELET_CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == *kind) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(ts(now));
                changed = true;
            }
            None => {
                conds.push(NodeCondition {
                    type_: kind.to_string(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(ts(now)),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conds)
}

fn is_managed(key: &str) -> bool {
    key == TAINT_UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|(_, _, k)| *k == key)
}

/// The taints the node should carry: its other taints unchanged, plus the ones its
/// conditions and `spec.unschedulable` call for (NoExecute ones stamped `timeAdded`).
/// `None` when the node already carries exactly those.
fn desired_taints(node: &Node, now: Timestamp) -> Option<Vec<Taint>> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut want: Vec<(&str, &str)> = Vec::new();
    for (kind, status, key) in CONDITION_TAINTS {
        if condition(node, kind).is_some_and(|c| c.status == *status) {
            want.push((key, "NoSchedule"));
            if *kind == "Ready" {
                want.push((key, "NoExecute"));
            }
        }
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        want.push((TAINT_UNSCHEDULABLE, "NoSchedule"));
    }
    let wanted = |t: &Taint| want.iter().any(|(k, e)| t.key == *k && t.effect == *e);
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !is_managed(&t.key) || wanted(t))
        .cloned()
        .collect();
    for (key, effect) in &want {
        if !out.iter().any(|t| t.key == *key && t.effect == *effect) {
            out.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                value: None,
                time_added: (*effect == "NoExecute").then(|| ts(now)),
            });
        }
    }
    (out != current).then_some(out)
}

/// Whether `tol` tolerates `taint` (upstream's ToleratesTaint).
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            // An empty key with Equal matches nothing (validation rejects it anyway).
            !key.is_empty()
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// What to do with a pod on a node with NoExecute taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Leave it: no NoExecute taint, or every one tolerated forever.
    Keep,
    /// Delete it now.
    Now,
    /// Delete it at this time (unless the taints go away first).
    At(Timestamp),
}

/// Decides a pod's eviction from the node's taints and the pod's tolerations.
/// `added` gives each taint's start time (`timeAdded`, or when it was first seen).
pub fn eviction_decision(
    taints: &[Taint],
    tolerations: &[Toleration],
    added: impl Fn(&Taint) -> Timestamp,
) -> Eviction {
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> = tolerations
            .iter()
            .filter(|tol| tolerates(tol, taint))
            .collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        // The shortest bounded toleration wins; an unbounded one only if all are.
        let Some(secs) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        let at = added(taint)
            .checked_add(jiff::SignedDuration::from_secs(secs.max(0)))
            .unwrap_or(Timestamp::MAX);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    match deadline {
        Some(d) => Eviction::At(d),
        None => Eviction::Keep,
    }
}

struct Controller {
    client: Client,
    grace: Duration,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    recorder: Recorder,
    health: HashMap<String, Health>,
    /// First sighting of NoExecute taints without `timeAdded` (node, key, effect).
    first_seen: HashMap<(String, String, String), Timestamp>,
    /// Pods deleted recently (uid → when), so a lagging cache does not evict twice.
    evicted: HashMap<String, Timestamp>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, grace: Duration, shutdown: CancellationToken) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .for_each(|_| async {});
    let lease_watch = watcher(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(lease_writer)
    .for_each(|_| async {});
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .for_each(|_| async {});
    let mut ctl = Controller {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client,
        grace,
        nodes,
        leases,
        pods,
        health: HashMap::new(),
        first_seen: HashMap::new(),
        evicted: HashMap::new(),
    };
    let main = async {
        if ctl.nodes.wait_until_ready().await.is_err()
            || ctl.leases.wait_until_ready().await.is_err()
            || ctl.pods.wait_until_ready().await.is_err()
        {
            return;
        }
        tracing::info!(grace = ?ctl.grace, "node lifecycle controller started");
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            ctl.pass().await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = node_watch => {}
        _ = lease_watch => {}
        _ = pod_watch => {}
        _ = main => {}
    }
}

impl Controller {
    /// One look at every node and its pods.
    async fn pass(&mut self) {
        let now = Timestamp::now();
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.health.retain(|n, _| names.contains(n));
        self.first_seen.retain(|(n, _, _), _| names.contains(n));
        self.evicted
            .retain(|_, at| now.duration_since(*at).unsigned_abs() < EVICTED_MEMORY);
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in self.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                by_node.entry(n).or_default().push(pod);
            }
        }
        for node in nodes {
            let name = node.name_any();
            let pods = by_node.remove(&name).unwrap_or_default();
            if let Err(err) = self.sync_node(&node, &pods, now).await {
                tracing::warn!(%err, node = %name, "node lifecycle");
            }
        }
    }

    async fn sync_node(
        &mut self,
        node: &Node,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> Result<(), Error> {
        let name = node.name_any();
        let lease_renew = self
            .leases
            .get(&reflector::ObjectRef::new(&name).within("kube-node-lease"))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            });
        let heartbeat = heartbeat_of(node);
        let health = self
            .health
            .entry(name.clone())
            .or_insert_with(|| Health::new(now, lease_renew.clone(), heartbeat.clone()));
        health.observe(now, lease_renew, heartbeat);
        let stale = health.stale(now, self.grace);
        let nodes: Api<Node> = Api::all(self.client.clone());

        let mut node = node.clone();
        if stale {
            if let Some(conds) = unknown_conditions(&node, now) {
                let was_ready = condition(&node, "Ready").is_some_and(|c| c.status == "True");
                let patch = json!({
                    "metadata": {"resourceVersion": node.resource_version()},
                    "status": {"conditions": conds},
                });
                node = nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                tracing::info!(node = %name, "node stopped posting status; marked Unknown");
                if was_ready {
                    self.recorder.event(
                        &node,
                        EventType::Normal,
                        "NodeNotReady",
                        format!("Node {name} status is now: NodeNotReady"),
                    );
                }
            }
        }
        if let Some(taints) = desired_taints(&node, now) {
            let patch = json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "spec": {"taints": if taints.is_empty() { serde_json::Value::Null } else { json!(taints) }},
            });
            node = nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = %name, taints = ?taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "updated node taints");
        }
        let unknown = condition(&node, "Ready").is_some_and(|c| c.status == "Unknown");
        let taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        for t in &taints {
            if t.time_added.is_none() {
                self.first_seen
                    .entry((name.clone(), t.key.clone(), t.effect.clone()))
                    .or_insert(now);
            }
        }
        self.first_seen.retain(|(n, k, e), _| {
            n != &name || taints.iter().any(|t| &t.key == k && &t.effect == e)
        });
        if !unknown && taints.is_empty() {
            return Ok(());
        }
        for pod in pods {
            if unknown {
                if let Err(err) = self.mark_not_ready(pod, now).await {
                    tracing::warn!(%err, pod = %pod.name_any(), "marking pod not ready");
                }
            }
            if !taints.is_empty() {
                if let Err(err) = self.maybe_evict(&name, pod, &taints, now).await {
                    tracing::warn!(%err, pod = %pod.name_any(), "taint eviction");
                }
            }
        }
        Ok(())
    }

    /// Sets the pod's Ready condition False (its node stopped reporting).
    async fn mark_not_ready(&self, pod: &Pod, now: Timestamp) -> Result<(), Error> {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        if ready.is_none_or(|c| c.status == "False") {
            return Ok(());
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": ts(now)}
        ]}});
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
        self.recorder.event(
            pod,
            EventType::Warning,
            "NodeNotReady",
            "Node is not ready".to_string(),
        );
        Ok(())
    }

    async fn maybe_evict(
        &mut self,
        node: &str,
        pod: &Pod,
        taints: &[Taint],
        now: Timestamp,
    ) -> Result<(), Error> {
        let uid = pod.uid().unwrap_or_default();
        if self.evicted.contains_key(&uid) {
            return Ok(());
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let first_seen = &self.first_seen;
        let decision = eviction_decision(taints, &tolerations, |t| {
            t.time_added.as_ref().map(|t| t.0).unwrap_or_else(|| {
                first_seen
                    .get(&(node.to_string(), t.key.clone(), t.effect.clone()))
                    .copied()
                    .unwrap_or(now)
            })
        });
        match decision {
            Eviction::Keep => return Ok(()),
            Eviction::At(at) if at > now => return Ok(()),
            Eviction::At(_) | Eviction::Now => {}
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        self.recorder.event(
            pod,
            EventType::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {ns}/{name}"),
        );
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(pod = %name, %ns, %node, "evicted pod from tainted node");
        self.evicted.insert(uid, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn taint(key: &str, effect: &str, added: Option<&str>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: added.map(|a| Time(t(a))),
        }
    }

    fn tol(key: Option<&str>, op: &str, effect: Option<&str>, secs: Option<i64>) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: Some(op.into()),
            effect: effect.map(str::to_string),
            value: None,
            toleration_seconds: secs,
        }
    }

    #[test]
    fn toleration_matching() {
        let unreachable = taint(TAINT_UNREACHABLE, "NoExecute", None);
        let cases = [
            (
                tol(Some(TAINT_UNREACHABLE), "Exists", Some("NoExecute"), None),
                true,
            ),
            (tol(Some(TAINT_UNREACHABLE), "Exists", None, None), true),
            (tol(None, "Exists", None, None), true),
            (
                tol(Some(TAINT_UNREACHABLE), "Exists", Some("NoSchedule"), None),
                false,
            ),
            (
                tol(Some(TAINT_NOT_READY), "Exists", Some("NoExecute"), None),
                false,
            ),
            (
                tol(Some(TAINT_UNREACHABLE), "Equal", Some("NoExecute"), None),
                true,
            ),
            (tol(None, "Equal", None, None), false),
        ];
        for (i, (tol, want)) in cases.iter().enumerate() {
            assert_eq!(tolerates(tol, &unreachable), *want, "case {i}: {tol:?}");
        }
        let mut with_value = unreachable.clone();
        with_value.value = Some("v".into());
        let mut eq = tol(Some(TAINT_UNREACHABLE), "Equal", None, None);
        assert!(!tolerates(&eq, &with_value));
        eq.value = Some("v".into());
        assert!(tolerates(&eq, &with_value));
    }

    #[test]
    fn eviction_timing() {
        let t0 = "2025-01-01T00:00:00Z";
        let unreachable = taint(TAINT_UNREACHABLE, "NoExecute", Some(t0));
        let not_ready = taint(TAINT_NOT_READY, "NoExecute", Some("2025-01-01T00:01:00Z"));
        let no_schedule = taint(TAINT_UNREACHABLE, "NoSchedule", None);
        let never = |_: &Taint| -> Timestamp { panic!("untimed taint consulted") };
        let added = |x: &Taint| x.time_added.as_ref().map(|t| t.0).unwrap();
        let tol_unreach = |s| tol(Some(TAINT_UNREACHABLE), "Exists", Some("NoExecute"), s);
        let tol_nr = |s| tol(Some(TAINT_NOT_READY), "Exists", Some("NoExecute"), s);
        type Case<'a> = (&'a str, Vec<Taint>, Vec<Toleration>, Eviction);
        let cases: Vec<Case> = vec![
            ("no taints", vec![], vec![], Eviction::Keep),
            (
                "NoSchedule only",
                vec![no_schedule.clone()],
                vec![],
                Eviction::Keep,
            ),
            (
                "untolerated",
                vec![unreachable.clone()],
                vec![],
                Eviction::Now,
            ),
            (
                "tolerated for 5s",
                vec![unreachable.clone()],
                vec![tol_unreach(Some(5))],
                Eviction::At(t("2025-01-01T00:00:05Z")),
            ),
            (
                "tolerated forever",
                vec![unreachable.clone()],
                vec![tol_unreach(None)],
                Eviction::Keep,
            ),
            (
                "shortest matching toleration wins",
                vec![unreachable.clone()],
                vec![tol_unreach(Some(300)), tol(None, "Exists", None, Some(30))],
                Eviction::At(t("2025-01-01T00:00:30Z")),
            ),
            (
                "negative seconds evict at the taint time",
                vec![unreachable.clone()],
                vec![tol_unreach(Some(-1))],
                Eviction::At(t(t0)),
            ),
            (
                "one of two taints untolerated",
                vec![unreachable.clone(), not_ready.clone()],
                vec![tol_unreach(Some(300))],
                Eviction::Now,
            ),
            (
                "earliest deadline of two taints",
                vec![unreachable.clone(), not_ready.clone()],
                vec![tol_unreach(Some(300)), tol_nr(Some(10))],
                Eviction::At(t("2025-01-01T00:01:10Z")),
            ),
            (
                "unbounded on one, bounded on the other",
                vec![unreachable.clone(), not_ready.clone()],
                vec![tol_unreach(None), tol_nr(Some(10))],
                Eviction::At(t("2025-01-01T00:01:10Z")),
            ),
        ];
        for (what, taints, tols, want) in cases {
            let got = if taints.iter().all(|x| x.time_added.is_some()) {
                eviction_decision(&taints, &tols, added)
            } else {
                eviction_decision(&taints, &tols, never)
            };
            assert_eq!(got, want, "{what}");
        }
    }

    fn node(conds: &[(&str, &str)], unschedulable: bool, taints: Vec<Taint>) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"unschedulable": unschedulable, "taints": taints},
            "status": {"conditions": conds.iter().map(|(t, s)| json!({
                "type": t, "status": s, "lastHeartbeatTime": "2025-01-01T00:00:10Z"
            })).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn keys(taints: &[Taint]) -> Vec<String> {
        let mut k: Vec<String> = taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        k.sort();
        k
    }

    #[test]
    fn taints_follow_conditions() {
        let now = t("2025-01-01T00:05:00Z");
        let user = taint("dedicated", "NoSchedule", None);
        let n = node(&[("Ready", "Unknown")], false, vec![user.clone()]);
        let got = desired_taints(&n, now).unwrap();
        assert_eq!(
            keys(&got),
            vec![
                "dedicated:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node.kubernetes.io/unreachable:NoSchedule"
            ]
        );
        let ne = got.iter().find(|t| t.effect == "NoExecute").unwrap();
        assert_eq!(ne.time_added.as_ref().unwrap().0, now);
        // Already tainted: nothing to do.
        let n2 = node(&[("Ready", "Unknown")], false, got.clone());
        assert_eq!(desired_taints(&n2, now), None);
        // Back to Ready: the managed taints go, the user's stays.
        let n3 = node(&[("Ready", "True")], false, got);
        assert_eq!(
            keys(&desired_taints(&n3, now).unwrap()),
            vec!["dedicated:NoSchedule"]
        );
        // Not ready, memory pressure, cordoned.
        let n4 = node(
            &[("Ready", "False"), ("MemoryPressure", "True")],
            true,
            vec![],
        );
        assert_eq!(
            keys(&desired_taints(&n4, now).unwrap()),
            vec![
                "node.kubernetes.io/memory-pressure:NoSchedule",
                "node.kubernetes.io/not-ready:NoExecute",
                "node.kubernetes.io/not-ready:NoSchedule",
                "node.kubernetes.io/unschedulable:NoSchedule",
            ]
        );
        // A healthy node without taints needs no update.
        assert_eq!(
            desired_taints(&node(&[("Ready", "True")], false, vec![]), now),
            None
        );
    }

    #[test]
    fn stale_nodes_get_unknown_conditions() {
        let now = t("2025-01-01T00:05:00Z");
        let n = node(
            &[("Ready", "True"), ("MemoryPressure", "False")],
            false,
            vec![],
        );
        let conds = unknown_conditions(&n, now).unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(
            ready.last_heartbeat_time.as_ref().unwrap().0,
            t("2025-01-01T00:00:10Z"),
            "the last heartbeat is kept"
        );
        assert_eq!(ready.last_transition_time.as_ref().unwrap().0, now);
        let disk = conds.iter().find(|c| c.type_ == "DiskPressure").unwrap();
        assert_eq!(disk.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        let all_unknown = node(
            &KUBELET_CONDITIONS
                .iter()
                .map(|c| (*c, "Unknown"))
                .collect::<Vec<_>>(),
            false,
            vec![],
        );
        assert!(unknown_conditions(&all_unknown, now).is_none());
    }

    #[test]
    fn health_tracks_signs_of_life() {
        let grace = Duration::from_secs(40);
        let t0 = t("2025-01-01T00:00:00Z");
        let mut h = Health::new(t0, Some("r1".into()), Some("h1".into()));
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        h.observe(at(30), Some("r1".into()), Some("h1".into()));
        assert!(!h.stale(at(30), grace));
        assert!(h.stale(at(41), grace), "no renewal for 41s");
        // A lease renewal alone keeps the node alive.
        h.observe(at(41), Some("r2".into()), Some("h1".into()));
        assert!(!h.stale(at(80), grace));
        assert!(h.stale(at(82), grace));
        // So does a status heartbeat.
        h.observe(at(82), Some("r2".into()), Some("h2".into()));
        assert!(!h.stale(at(90), grace));
    }
}
