//! The DaemonSet controller, with the semantics of upstream's `pkg/controller/daemon`: one
//! daemon pod on every eligible node.
//!
//! - **Eligibility.** A node should run the pod when the template's `nodeName` (if any),
//!   `nodeSelector` and required node affinity match it and its `NoSchedule`/`NoExecute`
//!   taints are tolerated; a pod already there may keep running as long as no
//!   `NoExecute` taint is untolerated. The pod is judged with the tolerations upstream adds
//!   to every daemon pod ([`daemon_tolerations`]: not-ready and unreachable `NoExecute`
//!   without seconds; disk-, memory-, pid-pressure and unschedulable `NoSchedule`;
//!   network-unavailable for host-network pods).
//! - **Pods** are stamped from the template (`generateName: <ds>-`) with the
//!   `controller-revision-hash` and `pod-template-generation` labels, those tolerations,
//!   and pinned to their node through required node affinity `metadata.name In [node]`
//!   (upstream's way: the scheduler binds them). Failed pods are deleted (event
//!   `FailedDaemonPod`) and replaced after a per-node back-off; extra pods on a node, pods
//!   on nodes that should not run them and pods on nodes that no longer exist are deleted.
//!   Pending creations per node are remembered until the cache shows the pod, so a burst
//!   of events never creates two. Events `SuccessfulCreate`/`FailedCreate`/
//!   `SuccessfulDelete`/`FailedDelete` as `daemonset-controller`.
//! - **Updates.** Templates are recorded as ControllerRevisions ([`super::history`]).
//!   `RollingUpdate` replaces old pods node by node within `maxUnavailable` (or, with
//!   `maxSurge`, starts the new pod first and deletes the old one once the new one is
//!   available); `OnDelete` only uses the new template for pods that are recreated.
//! - **Status** through `/status`: desired/current/ready/available/updated/misscheduled
//!   counts, `numberUnavailable`, `observedGeneration`, `collisionCount`.
//!
//! Depends on: `api` (label selectors), [`super::history`], the ReplicaSet controller's
//! shared helpers (`replicaset::{events, ownership, pods}`), kube-rs. Never the store or
//! the API server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{future, stream};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::history::{self, CONTROLLER_REVISION_HASH};
use super::owners::{claim_pods, label_selector, owners_of};
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::ownership::controller_ref;
use super::replicaset::pods::{is_available, is_ready, pod_from_template};
use super::replicaset::{error_message, is_not_found, labels_json, namespace_terminating};
use super::watch;
use crate::api::selector::LabelSelector;

const COMPONENT: &str = "daemonset-controller";
/// The (deprecated, still written) label with the DaemonSet generation a pod was made at.
pub(crate) const TEMPLATE_GENERATION: &str = "pod-template-generation";
/// How long a pod creation may take to show up in the cache before it is retried.
const CREATE_EXPECTATION: Duration = Duration::from_secs(60);
/// Back-off after deleting a failed daemon pod (doubling up to the maximum).
const FAILED_BACKOFF: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the caches are not available")]
    CacheGone,
    #[error("{0}")]
    Failed(String),
}

/// Creations and deletions issued but not yet seen in the cache, and failed-pod back-offs.
#[derive(Debug, Default)]
struct Pending {
    /// (DaemonSet uid, node) → when the create was issued.
    creates: HashMap<(String, String), Instant>,
    /// (DaemonSet uid, node) → (next delay, not before).
    backoff: HashMap<(String, String), (Duration, Instant)>,
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    recorder: Recorder,
    pending: Mutex<Pending>,
}

/// Runs the DaemonSet controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let cfg = watcher::Config::default;
    let (ds_store, ds_events) = watch::reflect_all::<DaemonSet>(&client, cfg());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, cfg());
    let (node_store, node_events) = watch::reflect_all::<Node>(&client, cfg());
    let (rev_store, rev_events) = watch::reflect_all::<ControllerRevision>(&client, cfg());
    let (for_pods, for_nodes, for_revs) = (ds_store.clone(), ds_store.clone(), ds_store.clone());
    let queue = stream::select(
        stream::select(
            trigger_self(ds_events.applied_objects(), ()),
            trigger_with(pod_events.touched_objects(), move |pod: Pod| {
                owners_of(&for_pods, &pod, selector)
            }),
        ),
        stream::select(
            trigger_with(node_events.touched_objects(), move |_node: Node| {
                for_nodes
                    .state()
                    .iter()
                    .map(|d| ObjectRef::from_obj(&**d))
                    .collect::<Vec<_>>()
            }),
            trigger_with(
                rev_events.touched_objects(),
                move |rev: ControllerRevision| owners_of(&for_revs, &rev, selector),
            ),
        ),
    );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        pods: pod_store,
        nodes: node_store,
        revisions: rev_store,
        pending: Mutex::new(Pending::default()),
    });
    watch::run_applier(
        "daemonset",
        reconcile,
        error_policy,
        ctx,
        ds_store,
        queue,
        controller::Config::default(),
        shutdown,
    )
    .await;
}

fn selector(ds: &DaemonSet) -> Result<LabelSelector, String> {
    label_selector(ds.spec.as_ref().map(|s| &s.selector))
}

fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    let conflict = matches!(err, Error::Kube(kube::Error::Api(s)) if s.is_conflict());
    if conflict {
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(%err, ds = %ds.name_any(), ns = ?ds.namespace(), "daemonset sync failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    for ready in [
        ctx.pods.wait_until_ready().await,
        ctx.nodes.wait_until_ready().await,
        ctx.revisions.wait_until_ready().await,
    ] {
        ready.map_err(|_| Error::CacheGone)?;
    }
    sync(&ds, &ctx).await
}

// ---------------------------------------------------------------------------------------
// Eligibility: tolerations, taints, node affinity.

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    }
}

/// The tolerations upstream adds to every daemon pod.
pub(crate) fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut t = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    t
}

/// Adds the daemon tolerations a spec lacks (an existing toleration with the same key
/// and effect is replaced, as upstream's `AddOrUpdateTolerationInPodSpec` does).
fn add_daemon_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations(host_network) {
        match list
            .iter_mut()
            .find(|x| x.key == t.key && x.effect == t.effect)
        {
            Some(existing) => *existing = t,
            None => list.push(t),
        }
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let op = t.operator.as_deref().unwrap_or("Equal");
        let key = t.key.as_deref().unwrap_or("");
        let key_ok = if key.is_empty() {
            op == "Exists"
        } else {
            key == taint.key
        };
        let value_ok = match op {
            "Exists" => true,
            "Equal" | "" => {
                t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
            _ => false,
        };
        effect_ok && key_ok && value_ok
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

pub(crate) fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then(|| node.metadata.name.as_deref().unwrap_or(""));
            requirement_matches(r, v)
        })
}

/// Whether a daemon pod should run on `node`, and whether one already there may keep
/// running (upstream's `NodeShouldRunDaemonPod`). `spec` is the template's spec.
pub(crate) fn node_should_run(node: &Node, spec: &PodSpec) -> (bool, bool) {
    let mut spec = spec.clone();
    add_daemon_tolerations(&mut spec);
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok =
        required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    let taints: Vec<&Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !tolerates(&tolerations, t))
        .collect();
    if taints.is_empty() {
        return (true, true);
    }
    let no_execute = taints.iter().any(|t| t.effect == "NoExecute");
    (false, !no_execute)
}

/// Replaces the required node affinity with `metadata.name In [node]` (upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is for: its `nodeName`, or the node its affinity pins it to.
pub(crate) fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|r| {
            (r.key == "metadata.name" && r.operator == "In")
                .then(|| r.values.as_ref().filter(|v| v.len() == 1)?.first().cloned())
                .flatten()
        })
    })
}

/// `value` (an int or a percentage of `total`) as a count.
pub(crate) fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let product = pct * i64::from(total);
            let scaled = if round_up {
                product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
            } else {
                product.div_euclid(100)
            };
            Ok(i32::try_from(scaled).unwrap_or(i32::MAX))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sync.

fn spec_of(ds: &DaemonSet) -> k8s_openapi::api::apps::v1::DaemonSetSpec {
    ds.spec.clone().unwrap_or_default()
}

fn is_rolling(ds: &DaemonSet) -> bool {
    spec_of(ds)
        .update_strategy
        .and_then(|s| s.type_)
        .is_none_or(|t| t == "RollingUpdate")
}

/// (maxSurge, maxUnavailable) against the desired number of nodes.
fn rolling_budget(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = spec_of(ds).update_strategy.and_then(|s| s.rolling_update);
    let surge = ru
        .as_ref()
        .and_then(|r| r.max_surge.clone())
        .unwrap_or(IntOrString::Int(0));
    let unavailable = ru
        .as_ref()
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let surge = scaled_value(&surge, desired, true).unwrap_or(0).max(0);
    let mut unavailable = scaled_value(&unavailable, desired, true)
        .unwrap_or(1)
        .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn by_age(a: &Arc<Pod>, b: &Arc<Pod>) -> std::cmp::Ordering {
    a.creation_timestamp()
        .cmp(&b.creation_timestamp())
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// Whether a pod has the DaemonSet's current template.
fn is_updated(pod: &Pod, hash: &str, generation: i64) -> bool {
    let labels = pod.labels();
    match labels.get(CONTROLLER_REVISION_HASH) {
        Some(h) => h == hash,
        None => labels.get(TEMPLATE_GENERATION) == Some(&generation.to_string()),
    }
}

/// What one sync decided to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    create_on: Vec<String>,
    delete: Vec<String>,
    failed: Vec<(String, String)>,
}

/// What the manage step needs to know about the DaemonSet's current revision.
#[derive(Debug, Clone, Copy)]
struct Revision<'a> {
    /// Whether rolling updates surge (two pods may share a node).
    surge: bool,
    hash: &'a str,
    generation: i64,
    min_ready: i32,
    now: jiff::Timestamp,
}

/// The manage step for one node (upstream's `podsShouldBeOnNode`): `pods` are the DS's
/// pods targeting the node.
fn plan_node(
    node: &str,
    (should_run, should_continue): (bool, bool),
    pods: &[Arc<Pod>],
    cx: &Revision<'_>,
    plan: &mut Plan,
) {
    let Revision {
        surge,
        hash,
        generation,
        min_ready,
        now,
    } = *cx;
    if should_run && pods.is_empty() {
        plan.create_on.push(node.to_string());
        return;
    }
    if !should_continue {
        plan.delete
            .extend(pods.iter().filter(|p| !deleting(p)).map(|p| p.name_any()));
        return;
    }
    let mut running: Vec<Arc<Pod>> = Vec::new();
    for p in pods.iter().filter(|p| !deleting(p)) {
        match phase(p) {
            "Failed" | "Succeeded" => {
                plan.delete.push(p.name_any());
                plan.failed.push((p.name_any(), node.to_string()));
            }
            _ => running.push(p.clone()),
        }
    }
    if running.len() <= 1 {
        return;
    }
    running.sort_by(by_age);
    if !surge {
        plan.delete
            .extend(running.iter().skip(1).map(|p| p.name_any()));
        return;
    }
    // With surge two pods may share a node: the oldest updated one while it is not yet
    // available, and the oldest old one while it is.
    let oldest_new = running.iter().find(|p| is_updated(p, hash, generation));
    let oldest_old = running.iter().find(|p| !is_updated(p, hash, generation));
    let keep: Vec<&Arc<Pod>> = match (oldest_new, oldest_old) {
        (Some(n), Some(o))
            if !is_available(n, min_ready, now) && is_available(o, min_ready, now) =>
        {
            vec![n, o]
        }
        (Some(n), _) => vec![n],
        (None, Some(o)) => vec![o],
        (None, None) => vec![],
    };
    plan.delete.extend(
        running
            .iter()
            .filter(|p| !keep.iter().any(|k| k.uid() == p.uid()))
            .map(|p| p.name_any()),
    );
}

/// The rolling update step (upstream's `rollingUpdate`): which old pods to delete and on
/// which nodes to surge a new pod.
fn plan_rolling_update(
    node_pods: &BTreeMap<String, Vec<Arc<Pod>>>,
    eligible: &HashSet<String>,
    (max_surge, max_unavailable): (i32, i32),
    hash: &str,
    generation: i64,
    min_ready: i32,
    now: jiff::Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let avail = |p: &Arc<Pod>| is_available(p, min_ready, now);
    let mut unavailable = 0;
    let mut surged = 0;
    let mut candidates_delete = Vec::new();
    let mut candidates_new = Vec::new();
    for (node, pods) in node_pods {
        if !eligible.contains(node) {
            continue;
        }
        let live: Vec<&Arc<Pod>> = pods.iter().filter(|p| !deleting(p)).collect();
        let new: Vec<&&Arc<Pod>> = live
            .iter()
            .filter(|p| is_updated(p, hash, generation))
            .collect();
        let old: Vec<&&Arc<Pod>> = live
            .iter()
            .filter(|p| !is_updated(p, hash, generation))
            .collect();
        if new.len() > 1 || old.len() > 1 {
            // The manage step cleans this node up first.
            unavailable += 1;
            continue;
        }
        match (new.first(), old.first()) {
            (None, None) => {
                if pods.iter().any(|p| deleting(p)) {
                    unavailable += 1;
                }
            }
            (Some(n), None) => {
                if !avail(n) {
                    unavailable += 1;
                }
            }
            (n, Some(o)) if max_surge == 0 => {
                let _ = n;
                if avail(o) {
                    candidates_delete.push(o.name_any());
                } else {
                    unavailable += 1;
                    plan.delete.push(o.name_any());
                }
            }
            (None, Some(o)) => {
                if avail(o) {
                    candidates_new.push(node.clone());
                } else {
                    // Nothing to lose: replace it at once, outside the surge budget.
                    plan.create_on.push(node.clone());
                }
            }
            (Some(n), Some(o)) => {
                surged += 1;
                if avail(n) {
                    plan.delete.push(o.name_any());
                }
            }
        }
    }
    if max_surge == 0 {
        let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
        plan.delete.extend(candidates_delete.into_iter().take(room));
    } else {
        let room = usize::try_from((max_surge - surged).max(0)).unwrap_or(0);
        plan.create_on.extend(candidates_new.into_iter().take(room));
    }
    plan
}

/// The current revision (created or renumbered as needed), the DaemonSet's revisions and
/// its collision count.
async fn construct_history(
    ds: &DaemonSet,
    ctx: &Ctx,
) -> Result<(ControllerRevision, Vec<Arc<ControllerRevision>>, i32), Error> {
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let spec = spec_of(ds);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let revs = history::owned(&ctx.revisions.state(), &ns, &uid);
    let data = history::template_patch(&spec.template);
    let mut collision = ds
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let matching: Vec<&Arc<ControllerRevision>> = revs
        .iter()
        .filter(|r| {
            r.data
                .as_ref()
                .is_some_and(|d| history::same_data(&d.0, &data))
        })
        .collect();
    let next = history::next_revision(&revs);
    let current = match matching.last() {
        // Duplicates (same data) are deleted, the newest kept.
        Some(cur) => {
            for dup in &matching[..matching.len() - 1] {
                let _ = api.delete(&dup.name_any(), &DeleteParams::default()).await;
            }
            if cur.revision < next - 1 {
                history::set_revision_number(&api, cur, next).await?
            } else {
                ControllerRevision::clone(cur)
            }
        }
        None => {
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let rev = history::new_revision(&ds.metadata, controller_ref(ds), &labels, data, next);
            history::create(&api, &ds.name_any(), rev, &mut collision).await?
        }
    };
    Ok((current, revs, collision))
}

async fn sync(ds: &DaemonSet, ctx: &Ctx) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let name = ds.name_any();
    let spec = spec_of(ds);
    let generation = ds.metadata.generation.unwrap_or(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let selector = match selector(ds) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            ctx.recorder.event(
                ds,
                EventType::Warning,
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.".into(),
            );
            return Ok(Action::await_change());
        }
        Err(err) => {
            tracing::warn!(%err, ds = %name, "invalid selector; not syncing");
            return Ok(Action::await_change());
        }
    };
    let being_deleted = ds.meta().deletion_timestamp.is_some();
    let (current, revisions, collision) = construct_history(ds, ctx).await?;
    let hash = history::hash_of(&current);

    let pods = claim_pods(&ctx.client, ds, &ctx.pods, |p| {
        selector.matches(Some(&labels_json(p.labels())))
    })
    .await?;
    let nodes = ctx.nodes.state();
    let node_names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let mut node_pods: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    let mut orphaned = Vec::new();
    for p in &pods {
        match target_node(p) {
            Some(n) if node_names.contains(&n) => node_pods.entry(n).or_default().push(p.clone()),
            _ if !deleting(p) => orphaned.push(p.name_any()),
            _ => {}
        }
    }
    let now = jiff::Timestamp::now();
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let decisions: BTreeMap<String, (bool, bool)> = nodes
        .iter()
        .map(|n| (n.name_any(), node_should_run(n, &template_spec)))
        .collect();
    let desired = i32::try_from(decisions.values().filter(|d| d.0).count()).unwrap_or(i32::MAX);
    let budget = rolling_budget(ds, desired);
    let surge = is_rolling(ds) && budget.0 > 0;
    let mut plan = Plan::default();
    for (n, d) in &decisions {
        let on_node = node_pods.get(n).cloned().unwrap_or_default();
        let cx = Revision {
            surge,
            hash: &hash,
            generation,
            min_ready,
            now,
        };
        plan_node(n, *d, &on_node, &cx, &mut plan);
    }
    plan.delete.extend(orphaned);
    let mut next_check: Option<Duration> = None;
    {
        let mut pending = ctx.pending.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget creations the cache now shows, and those that timed out.
        pending.creates.retain(|(u, n), at| {
            *u != uid || (!node_pods.contains_key(n) && at.elapsed() < CREATE_EXPECTATION)
        });
        plan.create_on.retain(|n| {
            let key = (uid.clone(), n.clone());
            if pending.creates.contains_key(&key) {
                return false;
            }
            match pending.backoff.get(&key) {
                Some((_, until)) if *until > Instant::now() => {
                    let wait = *until - Instant::now();
                    next_check = Some(next_check.map_or(wait, |w| w.min(wait)));
                    false
                }
                _ => true,
            }
        });
        for (_, node) in &plan.failed {
            let key = (uid.clone(), node.clone());
            let delay = pending
                .backoff
                .get(&key)
                .map_or(FAILED_BACKOFF, |(d, _)| (*d * 2).min(FAILED_BACKOFF_MAX));
            pending.backoff.insert(key, (delay, Instant::now() + delay));
        }
    }
    let mut first_err = None;
    if !being_deleted {
        for (pod, node) in &plan.failed {
            ctx.recorder.event(
                ds,
                EventType::Warning,
                "FailedDaemonPod",
                format!("Found failed daemon pod {ns}/{pod} on node {node}, will try to kill it"),
            );
        }
        let acted = !plan.create_on.is_empty() || !plan.delete.is_empty();
        if let Err(e) = execute(ds, &plan, &hash, ctx).await {
            first_err = Some(e);
        }
        if !acted && first_err.is_none() && is_rolling(ds) {
            let eligible: HashSet<String> = decisions
                .iter()
                .filter(|(_, d)| d.0)
                .map(|(n, _)| n.clone())
                .collect();
            let update = plan_rolling_update(
                &node_pods, &eligible, budget, &hash, generation, min_ready, now,
            );
            if !update.create_on.is_empty() || !update.delete.is_empty() {
                tracing::info!(ds = %name, ns = %ns, create = ?update.create_on, delete = ?update.delete, "rolling update");
            }
            if let Err(e) = execute(ds, &update, &hash, ctx).await {
                first_err = Some(e);
            }
        }
    }

    // Prune old revisions no pod uses.
    let mut live: HashSet<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(CONTROLLER_REVISION_HASH).cloned())
        .collect();
    live.insert(current.name_any());
    let old: Vec<Arc<ControllerRevision>> = revisions
        .into_iter()
        .filter(|r| r.name_any() != current.name_any())
        .collect();
    let rev_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    for victim in history::to_prune(&old, &live, spec.revision_history_limit.unwrap_or(10)) {
        if let Err(err) = rev_api.delete(&victim, &DeleteParams::default()).await
            && !is_not_found(&err)
        {
            tracing::debug!(%err, revision = %victim, "pruning revision");
        }
    }

    let status = calculate_status(
        &decisions, &node_pods, &hash, generation, min_ready, collision, now,
    );
    update_status(ds, status, ctx).await?;
    if let Some(e) = first_err {
        return Err(e);
    }
    // Come back when a ready pod becomes available.
    if min_ready > 0 {
        let wait = Duration::from_secs(u64::try_from(min_ready).unwrap_or(0) + 1);
        next_check = Some(next_check.map_or(wait, |w| w.min(wait)));
    }
    Ok(next_check.map_or_else(
        || Action::requeue(Duration::from_secs(300)),
        Action::requeue,
    ))
}

/// The pod for `node`.
fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = spec_of(ds);
    let mut pod = pod_from_template(
        &spec.template,
        &ds.namespace().unwrap_or_default(),
        &super::replicaset::pods::pods_prefix(&ds.name_any()),
        controller_ref(ds),
    );
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash.to_string());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        ds.metadata.generation.unwrap_or(0).to_string(),
    );
    let pod_spec = pod.spec.get_or_insert_with(PodSpec::default);
    add_daemon_tolerations(pod_spec);
    pin_to_node(pod_spec, node);
    pod
}

/// Creates and deletes what `plan` says, recording events.
async fn execute(ds: &DaemonSet, plan: &Plan, hash: &str, ctx: &Ctx) -> Result<(), Error> {
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut first_err: Option<String> = None;
    // Slow start: batches of 1, 2, 4, ... stopping at the first failure.
    let mut remaining: &[String] = &plan.create_on;
    let mut batch = 1;
    while !remaining.is_empty() && first_err.is_none() {
        let (now, rest) = remaining.split_at(batch.min(remaining.len()));
        remaining = rest;
        batch *= 2;
        {
            let mut pending = ctx.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for n in now {
                pending
                    .creates
                    .insert((uid.clone(), n.clone()), Instant::now());
            }
        }
        let results = future::join_all(now.iter().map(|node| {
            let pod = daemon_pod(ds, node, hash);
            let api = api.clone();
            async move { (node, api.create(&PostParams::default(), &pod).await) }
        }))
        .await;
        for (node, res) in results {
            match res {
                Ok(p) => ctx.recorder.event(
                    ds,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                ),
                Err(e) => {
                    ctx.pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .creates
                        .remove(&(uid.clone(), node.clone()));
                    let msg = error_message(&e);
                    if !namespace_terminating(&e) {
                        ctx.recorder.event(
                            ds,
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {msg}"),
                        );
                    }
                    first_err.get_or_insert(msg);
                }
            }
        }
    }
    let results = future::join_all(plan.delete.iter().map(|name| {
        let api = api.clone();
        async move { (name, api.delete(name, &DeleteParams::default()).await) }
    }))
    .await;
    for (name, res) in results {
        match res {
            Ok(_) => ctx.recorder.event(
                ds,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted pod: {name}"),
            ),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                let msg = error_message(&e);
                ctx.recorder.event(
                    ds,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {msg}"),
                );
                first_err.get_or_insert(msg);
            }
        }
    }
    match first_err {
        Some(e) => Err(Error::Failed(e)),
        None => Ok(()),
    }
}

fn calculate_status(
    decisions: &BTreeMap<String, (bool, bool)>,
    node_pods: &BTreeMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    generation: i64,
    min_ready: i32,
    collision: i32,
    now: jiff::Timestamp,
) -> DaemonSetStatus {
    let mut s = DaemonSetStatus {
        observed_generation: Some(generation),
        collision_count: (collision != 0).then_some(collision),
        ..DaemonSetStatus::default()
    };
    let (mut available, mut updated) = (0, 0);
    for (node, (should_run, _)) in decisions {
        let mut pods: Vec<Arc<Pod>> = node_pods
            .get(node)
            .into_iter()
            .flatten()
            .filter(|p| !deleting(p))
            .cloned()
            .collect();
        pods.sort_by(by_age);
        if !*should_run {
            if !pods.is_empty() {
                s.number_misscheduled += 1;
            }
            continue;
        }
        s.desired_number_scheduled += 1;
        let Some(pod) = pods.first() else { continue };
        s.current_number_scheduled += 1;
        if is_ready(pod) {
            s.number_ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if is_updated(pod, hash, generation) {
            updated += 1;
        }
    }
    s.number_available = (available != 0).then_some(available);
    s.updated_number_scheduled = (updated != 0).then_some(updated);
    let unavailable = s.desired_number_scheduled - available;
    s.number_unavailable = (unavailable > 0).then_some(unavailable);
    s
}

async fn update_status(ds: &DaemonSet, status: DaemonSetStatus, ctx: &Ctx) -> Result<(), Error> {
    let mut current = ds.status.clone().unwrap_or_default();
    current.conditions = None;
    if current == status {
        return Ok(());
    }
    let api: Api<DaemonSet> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    let mut updated = ds.clone();
    let conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    updated.status = Some(DaemonSetStatus {
        conditions,
        ..status
    });
    updated.metadata.managed_fields = None;
    match api
        .replace_status(&ds.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
        )
        .unwrap()
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn eligibility() {
        let plain = node("n1", json!({"disk": "ssd"}), json!([]));
        let tainted = node(
            "n2",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        let evicting = node(
            "n3",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]),
        );
        let not_ready = node(
            "n4",
            json!({}),
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        let net = node(
            "n5",
            json!({}),
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
        );
        let tolerate_db =
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]});
        // (node, pod spec, (should run, should continue running))
        let cases = [
            (&plain, json!({}), (true, true)),
            (
                &plain,
                json!({"nodeSelector": {"disk": "ssd"}}),
                (true, true),
            ),
            (
                &plain,
                json!({"nodeSelector": {"disk": "hdd"}}),
                (false, false),
            ),
            (&plain, json!({"nodeName": "other"}), (false, false)),
            (
                &plain,
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}),
                (true, true),
            ),
            (
                &plain,
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]}}}}),
                (false, false),
            ),
            (&tainted, json!({}), (false, true)),
            (&tainted, tolerate_db.clone(), (true, true)),
            (&evicting, json!({}), (false, false)),
            (&evicting, tolerate_db, (true, true)),
            (&not_ready, json!({}), (true, true)),
            (&net, json!({}), (false, true)),
            (&net, json!({"hostNetwork": true}), (true, true)),
        ];
        for (i, (n, s, want)) in cases.into_iter().enumerate() {
            assert_eq!(node_should_run(n, &spec(s)), want, "case {i}");
        }
    }

    #[test]
    fn pinning_and_tolerations() {
        let mut s = spec(
            json!({"tolerations": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "operator": "Exists", "tolerationSeconds": 5}]}),
        );
        add_daemon_tolerations(&mut s);
        let t = s.tolerations.as_ref().unwrap();
        assert_eq!(t.len(), 6);
        assert!(
            t.iter().all(|t| t.toleration_seconds.is_none()),
            "seconds are dropped"
        );
        pin_to_node(&mut s, "n7");
        let pod = Pod {
            spec: Some(s),
            ..Pod::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let bound: Pod =
            serde_json::from_value(json!({"spec": {"nodeName": "n8", "containers": []}})).unwrap();
        assert_eq!(target_node(&bound).as_deref(), Some("n8"));
    }

    fn pod(name: &str, hash: &str, created: &str, ready: bool, phase: &str) -> Arc<Pod> {
        let conds = if ready {
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}])
        } else {
            json!([])
        };
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created, "labels": {CONTROLLER_REVISION_HASH: hash}},
            "spec": {"containers": []}, "status": {"phase": phase, "conditions": conds}})).unwrap())
    }

    #[test]
    fn manage_plans() {
        let now: jiff::Timestamp = "2025-01-02T00:00:00Z".parse().unwrap();
        let t1 = "2025-01-01T00:00:00Z";
        let t2 = "2025-01-01T01:00:00Z";
        let mut plan = Plan::default();
        let cx = |surge| Revision {
            surge,
            hash: "h",
            generation: 1,
            min_ready: 0,
            now,
        };
        let running = |n, h, t| pod(n, h, t, true, "Running");
        plan_node("a", (true, true), &[], &cx(false), &mut plan);
        plan_node(
            "b",
            (false, false),
            &[running("b1", "h", t1)],
            &cx(false),
            &mut plan,
        );
        let two = [running("c2", "h", t2), running("c1", "h", t1)];
        plan_node("c", (true, true), &two, &cx(false), &mut plan);
        let failed = [pod("d1", "h", t1, false, "Failed")];
        plan_node("d", (true, true), &failed, &cx(false), &mut plan);
        plan_node(
            "e",
            (false, true),
            &[running("e1", "h", t1)],
            &cx(false),
            &mut plan,
        );
        // Surge: a new unavailable pod next to an available old one is fine.
        let surging = [
            running("f-old", "old", t1),
            pod("f-new", "h", t2, false, "Running"),
        ];
        plan_node("f", (true, true), &surging, &cx(true), &mut plan);
        assert_eq!(plan.create_on, ["a"]);
        assert_eq!(plan.delete, ["b1", "c2", "d1"]);
        assert_eq!(plan.failed, [("d1".to_string(), "d".to_string())]);
    }

    #[test]
    fn rolling_update_plans() {
        let now: jiff::Timestamp = "2025-01-02T00:00:00Z".parse().unwrap();
        let t = "2025-01-01T00:00:00Z";
        let nodes: BTreeMap<String, Vec<Arc<Pod>>> = [
            ("n1".to_string(), vec![pod("p1", "old", t, true, "Running")]),
            ("n2".to_string(), vec![pod("p2", "old", t, true, "Running")]),
            (
                "n3".to_string(),
                vec![pod("p3", "old", t, false, "Pending")],
            ),
            ("n4".to_string(), vec![pod("p4", "new", t, true, "Running")]),
        ]
        .into();
        let eligible: HashSet<String> = nodes.keys().cloned().collect();
        // maxUnavailable 2: the unavailable old pod goes at once and uses one unit.
        let p = plan_rolling_update(&nodes, &eligible, (0, 2), "new", 1, 0, now);
        assert_eq!(p.delete, ["p3", "p1"]);
        assert!(p.create_on.is_empty());
        let p = plan_rolling_update(&nodes, &eligible, (0, 1), "new", 1, 0, now);
        assert_eq!(p.delete, ["p3"]);
        // maxSurge 1: one new pod beside an available old one; the unavailable one is
        // replaced outside the budget.
        let p = plan_rolling_update(&nodes, &eligible, (1, 0), "new", 1, 0, now);
        assert_eq!(p.create_on, ["n3", "n1"]);
        assert!(p.delete.is_empty());
        assert_eq!(rolling_budget(&DaemonSet::default(), 3), (0, 1));
    }
}
