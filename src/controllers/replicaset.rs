//! The ReplicaSet and ReplicationController controllers, with the semantics of upstream's
//! `pkg/controller/replicaset` (a ReplicationController is run by the same code, with a
//! map selector, as upstream's replication manager wraps the ReplicaSet controller).
//!
//! For each controller object it keeps `spec.replicas` active pods (not finished, not
//! being deleted) that match its selector:
//!
//! - **Claiming.** Orphan pods that match are adopted (a controller reference with
//!   `blockOwnerDeletion`), after a fresh read confirms the controller is not being
//!   deleted; owned pods that no longer match are released. Pods of other controllers
//!   are left alone.
//! - **Creating** from the template (`generateName: <name>-`, the template's labels and
//!   annotations) in slow-start batches of 1, 2, 4, ..., stopping at the first error, at
//!   most 500 per sync; **deleting** the least valuable pods first (unassigned, pending,
//!   not ready, lower deletion cost, doubled up on a node, ready for less time, more
//!   restarts, newer). Events `SuccessfulCreate`/`FailedCreate`/`SuccessfulDelete`/
//!   `FailedDelete` are recorded as `replicaset-controller` (`replication-controller`).
//! - **Expectations** ([`expectations`]): creates and deletes issued but not yet seen in
//!   the pod cache block further creates and deletes, so bursts of events never act twice.
//! - **Status** through `/status`: `replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//!   `availableReplicas` (ready for `minReadySeconds`), `observedGeneration` and the
//!   `ReplicaFailure` condition while creates or deletes fail.
//!
//! Built on kube-runtime's `applier` over reflectors of the controller objects and one
//! shared pod reflector; pod events lower expectations, then requeue the pod's controller
//! (or, for an orphan, every controller whose selector matches it).
//!
//! Submodules shared with the Deployment controller: [`events`] (an event recorder),
//! [`ownership`] (claiming) and [`pods`] (pod facts and ordering).
//!
//! Depends on: `api` (label selectors), kube-rs. Never the store or the API server.

pub(crate) mod events;
pub(crate) mod expectations;
pub(crate) mod ownership;
pub(crate) mod pods;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt, TryStreamExt, future, stream};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerCondition,
    ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::{self, Action, ReconcileRequest, trigger_self};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use self::events::{EventType, Recorder};
use self::expectations::Expectations;
use self::ownership::{Claim, adopt, controller_ref, decide, release};
use self::pods::{available_at, controller_of, is_active, is_available, is_ready};
use super::watch::{self, Failures};
use crate::api::selector::LabelSelector;

/// At most this many creations or deletions per sync (upstream's `BurstReplicas`).
const BURST_REPLICAS: usize = 500;
/// The first batch of a slow start (then 2, 4, 8, ...).
const SLOW_START_INITIAL_BATCH: usize = 1;
/// The condition set while pods cannot be created or deleted.
pub(crate) const REPLICA_FAILURE: &str = "ReplicaFailure";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the pod cache is not available")]
    CacheGone,
    #[error("{0}")]
    FailedCreate(String),
    #[error("{0}")]
    FailedDelete(String),
    #[error("{0} has no pod template")]
    NoTemplate(String),
}

impl Error {
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.is_conflict())
    }
}

/// The message of an API error as upstream prints it (the Status message).
pub(crate) fn error_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.is_not_found())
}

fn is_invalid(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.is_invalid())
}

/// Whether a create failed because the namespace is being deleted.
pub(crate) fn namespace_terminating(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// Labels as the selector matcher takes them.
pub(crate) fn labels_json(
    labels: &BTreeMap<String, String>,
) -> serde_json::Map<String, serde_json::Value> {
    labels
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect()
}

/// A condition of a ReplicaSet or ReplicationController (the two have the same shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    type_: String,
    status: String,
    reason: Option<String>,
    message: Option<String>,
    last_transition_time: Option<Time>,
}

/// The status both kinds share, with absent counts as zero.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ReplicaStatus {
    replicas: i32,
    fully_labeled_replicas: i32,
    ready_replicas: i32,
    available_replicas: i32,
    observed_generation: i64,
    conditions: Vec<Condition>,
}

fn nz(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// A kind that keeps a number of pod replicas: ReplicaSet or ReplicationController.
trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The event source (`replicaset-controller`, `replication-controller`).
    const COMPONENT: &'static str;
    fn desired_replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn label_selector(&self) -> Result<LabelSelector, String>;
    fn pod_template(&self) -> Option<&PodTemplateSpec>;
    fn replica_status(&self) -> ReplicaStatus;
    fn set_replica_status(&mut self, status: &ReplicaStatus);
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";

    fn desired_replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn label_selector(&self) -> Result<LabelSelector, String> {
        super::owners::label_selector(self.spec.as_ref().map(|s| &s.selector))
    }

    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn replica_status(&self) -> ReplicaStatus {
        let Some(s) = &self.status else {
            return ReplicaStatus::default();
        };
        ReplicaStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas.unwrap_or(0),
            available_replicas: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(0),
            conditions: s
                .conditions
                .iter()
                .flatten()
                .map(|c| Condition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.clone(),
                })
                .collect(),
        }
    }

    fn set_replica_status(&mut self, s: &ReplicaStatus) {
        let terminating = self.status.as_ref().and_then(|s| s.terminating_replicas);
        self.status = Some(ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: nz(s.fully_labeled_replicas),
            ready_replicas: nz(s.ready_replicas),
            available_replicas: nz(s.available_replicas),
            observed_generation: Some(s.observed_generation),
            terminating_replicas: terminating,
            conditions: (!s.conditions.is_empty()).then(|| {
                s.conditions
                    .iter()
                    .map(|c| ReplicaSetCondition {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
        });
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";

    fn desired_replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn label_selector(&self) -> Result<LabelSelector, String> {
        let labels = self
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        LabelSelector::from_label_selector_json(&serde_json::json!({"matchLabels": labels}))
    }

    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn replica_status(&self) -> ReplicaStatus {
        let Some(s) = &self.status else {
            return ReplicaStatus::default();
        };
        ReplicaStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas.unwrap_or(0),
            available_replicas: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(0),
            conditions: s
                .conditions
                .iter()
                .flatten()
                .map(|c| Condition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.clone(),
                })
                .collect(),
        }
    }

    fn set_replica_status(&mut self, s: &ReplicaStatus) {
        self.status = Some(ReplicationControllerStatus {
            replicas: s.replicas,
            fully_labeled_replicas: nz(s.fully_labeled_replicas),
            ready_replicas: nz(s.ready_replicas),
            available_replicas: nz(s.available_replicas),
            observed_generation: Some(s.observed_generation),
            conditions: (!s.conditions.is_empty()).then(|| {
                s.conditions
                    .iter()
                    .map(|c| ReplicationControllerCondition {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
        });
    }
}

/// `Kind/namespace/name`, the expectations key of a controller object.
fn expectations_key(kind: &str, ns: &str, name: &str) -> String {
    format!("{kind}/{ns}/{name}")
}

struct Ctx<K: Replicated> {
    client: Client,
    pods: Store<Pod>,
    owners: Store<K>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
    failures: Failures,
}

/// Runs the ReplicaSet and ReplicationController controllers until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let expectations = Arc::new(Expectations::default());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, watcher::Config::default());
    let (rs_store, rs_events) =
        watch::reflect_all::<ReplicaSet>(&client, watcher::Config::default());
    let (rc_store, rc_events) =
        watch::reflect_all::<ReplicationController>(&client, watcher::Config::default());
    let (rs_tx, rs_rx) = mpsc::unbounded::<ReconcileRequest<ReplicaSet>>();
    let (rc_tx, rc_rx) = mpsc::unbounded::<ReconcileRequest<ReplicationController>>();

    let pods = {
        let stop = shutdown.clone();
        let expectations = expectations.clone();
        let (rs_store, rc_store) = (rs_store.clone(), rc_store.clone());
        let mut tracker = PodTracker::default();
        pod_events
            .take_until(async move { stop.cancelled().await })
            .for_each(move |event| {
                match event {
                    Ok(event) => {
                        for touch in tracker.observe(event, &expectations) {
                            route(touch, &rs_store, &rc_store, &rs_tx, &rc_tx);
                        }
                    }
                    Err(err) => tracing::debug!(%err, "pod watch (replicaset controller)"),
                }
                future::ready(())
            })
    };
    let replicasets = controller_loop(
        client.clone(),
        rs_store,
        rs_events,
        rs_rx,
        pod_store.clone(),
        expectations.clone(),
        shutdown.clone(),
    );
    let replication_controllers = controller_loop(
        client,
        rc_store,
        rc_events,
        rc_rx,
        pod_store,
        expectations,
        shutdown,
    );
    futures::join!(pods, replicasets, replication_controllers);
}

/// Runs one kind's applier: its own objects' events plus the pod-driven requests.
async fn controller_loop<K: Replicated>(
    client: Client,
    store: Store<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    requests: mpsc::UnboundedReceiver<ReconcileRequest<K>>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    shutdown: CancellationToken,
) {
    let forget = expectations.clone();
    let own = events
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(obj) = event {
                forget.forget(&expectations_key(
                    &K::kind(&()),
                    &obj.namespace().unwrap_or_default(),
                    &obj.name_any(),
                ));
            }
        })
        .applied_objects();
    let queue = stream::select(trigger_self(own, ()), requests.map(Ok));
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), K::COMPONENT),
        client,
        pods,
        owners: store.clone(),
        expectations,
        failures: Failures::default(),
    });
    watch::run_applier(
        K::COMPONENT,
        reconcile,
        error_policy,
        ctx,
        store,
        queue,
        controller::Config::default(),
        shutdown,
    )
    .await;
}

/// The controller of a pod, when it is a ReplicaSet or ReplicationController.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnerKey {
    kind: &'static str,
    ns: String,
    name: String,
    uid: String,
}

impl OwnerKey {
    fn of(pod: &Pod) -> Option<OwnerKey> {
        let r = controller_of(&pod.metadata)?;
        let kind = match (r.kind.as_str(), r.api_version.split('/').next()) {
            ("ReplicaSet", Some("apps")) => "ReplicaSet",
            ("ReplicationController", Some("v1")) => "ReplicationController",
            _ => return None,
        };
        Some(OwnerKey {
            kind,
            ns: pod.namespace().unwrap_or_default(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
    }

    fn key(&self) -> String {
        expectations_key(self.kind, &self.ns, &self.name)
    }
}

/// What a pod event asks for: a sync of the pod's controller, or of every controller
/// that might adopt the orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Touch {
    Owner(OwnerKey),
    Orphan {
        ns: String,
        labels: BTreeMap<String, String>,
    },
}

#[derive(Debug)]
struct SeenPod {
    owner: Option<OwnerKey>,
    labels: BTreeMap<String, String>,
    deleting: bool,
}

/// Turns the pod watch into expectation updates and sync requests, remembering what it
/// saw of each pod (the "old object" of upstream's update handler).
#[derive(Debug, Default)]
struct PodTracker {
    seen: HashMap<String, SeenPod>,
    relist: Option<HashSet<String>>,
}

impl PodTracker {
    fn observe(&mut self, event: watcher::Event<Pod>, exp: &Expectations) -> Vec<Touch> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                if let Some(listed) = &mut self.relist {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                self.applied(&pod, exp)
            }
            watcher::Event::Apply(pod) => self.applied(&pod, exp),
            watcher::Event::Delete(pod) => {
                self.deleted(&pod.uid().unwrap_or_default(), OwnerKey::of(&pod), exp)
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the watch was down were deleted.
                let Some(listed) = self.relist.take() else {
                    return Vec::new();
                };
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                gone.iter()
                    .flat_map(|uid| self.deleted(uid, None, exp))
                    .collect()
            }
        }
    }

    fn applied(&mut self, pod: &Pod, exp: &Expectations) -> Vec<Touch> {
        let uid = pod.uid().unwrap_or_default();
        let owner = OwnerKey::of(pod);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let labels = pod.labels().clone();
        let prev = self.seen.insert(
            uid.clone(),
            SeenPod {
                owner: owner.clone(),
                labels: labels.clone(),
                deleting,
            },
        );
        if let Some(o) = &owner {
            let first_sight = prev.is_none();
            let newly_deleting = deleting && prev.as_ref().is_none_or(|p| !p.deleting);
            if newly_deleting {
                // A pod being deleted counts as deleted (and never as a creation).
                exp.deletion_observed(&o.key(), &o.uid, &uid);
            } else if first_sight {
                exp.creation_observed(&o.key(), &o.uid);
            }
        }
        let mut touches = Vec::new();
        if let Some(o) = &owner {
            touches.push(Touch::Owner(o.clone()));
        }
        if let Some(p) = &prev
            && p.owner != owner
            && let Some(old) = &p.owner
        {
            touches.push(Touch::Owner(old.clone()));
        }
        let changed = prev
            .as_ref()
            .is_none_or(|p| p.labels != labels || p.owner.is_some());
        if owner.is_none() && !deleting && changed {
            touches.push(Touch::Orphan {
                ns: pod.namespace().unwrap_or_default(),
                labels,
            });
        }
        touches
    }

    fn deleted(&mut self, uid: &str, owner: Option<OwnerKey>, exp: &Expectations) -> Vec<Touch> {
        let prev = self.seen.remove(uid);
        let owner = owner.or_else(|| prev.and_then(|p| p.owner));
        match owner {
            Some(o) => {
                exp.deletion_observed(&o.key(), &o.uid, uid);
                vec![Touch::Owner(o)]
            }
            None => Vec::new(),
        }
    }
}

/// Sends sync requests for a touch.
fn route(
    touch: Touch,
    rs_store: &Store<ReplicaSet>,
    rc_store: &Store<ReplicationController>,
    rs_tx: &mpsc::UnboundedSender<ReconcileRequest<ReplicaSet>>,
    rc_tx: &mpsc::UnboundedSender<ReconcileRequest<ReplicationController>>,
) {
    match touch {
        Touch::Owner(o) if o.kind == "ReplicaSet" => {
            let _ = rs_tx.unbounded_send(ObjectRef::new(&o.name).within(&o.ns).into());
        }
        Touch::Owner(o) => {
            let _ = rc_tx.unbounded_send(ObjectRef::new(&o.name).within(&o.ns).into());
        }
        Touch::Orphan { ns, labels } => {
            let labels = labels_json(&labels);
            for rs in selecting(rs_store, &ns, &labels) {
                let _ = rs_tx.unbounded_send(rs.into());
            }
            for rc in selecting(rc_store, &ns, &labels) {
                let _ = rc_tx.unbounded_send(rc.into());
            }
        }
    }
}

/// The controllers in `ns` whose selector matches `labels`.
fn selecting<K: Replicated>(
    store: &Store<K>,
    ns: &str,
    labels: &serde_json::Map<String, serde_json::Value>,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns))
        .filter(|o| o.label_selector().is_ok_and(|s| s.matches(Some(labels))))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

fn error_policy<K: Replicated>(obj: Arc<K>, err: &Error, ctx: Arc<Ctx<K>>) -> Action {
    let key = expectations_key(
        &K::kind(&()),
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    );
    let n = ctx.failures.record(&key);
    if err.is_conflict() && n < 10 {
        tracing::debug!(%err, object = %key, "conflict; retrying");
        return Action::requeue(Duration::from_millis(100));
    }
    let delay = watch::backoff(Duration::from_millis(250), n, 8);
    tracing::warn!(%err, object = %key, retry_in = ?delay, "sync failed");
    Action::requeue(delay)
}

async fn reconcile<K: Replicated>(obj: Arc<K>, ctx: Arc<Ctx<K>>) -> Result<Action, Error> {
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let action = sync(obj.as_ref(), ctx.as_ref()).await?;
    let key = expectations_key(
        &K::kind(&()),
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    );
    ctx.failures.clear(&key);
    Ok(action)
}

async fn sync<K: Replicated>(obj: &K, ctx: &Ctx<K>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let key = expectations_key(&K::kind(&()), &ns, &obj.name_any());
    let needs_sync = ctx.expectations.satisfied(&key, &uid);
    let selector = match obj.label_selector() {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, object = %key, "invalid selector; not syncing");
            return Ok(Action::await_change());
        }
    };
    let active: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && is_active(p))
        .collect();
    let pods = claim_pods(obj, &selector, active, ctx).await?;

    let mut failure = None;
    if needs_sync && obj.meta().deletion_timestamp.is_none() {
        failure = manage_replicas(obj, &pods, &key, ctx).await.err();
    }
    let now = jiff::Timestamp::now();
    let failure_reason = failure.as_ref().map(|e| match e {
        Error::FailedDelete(m) => ("FailedDelete", m.clone()),
        other => ("FailedCreate", other.to_string()),
    });
    let template_labels = obj
        .pod_template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let status = calculate_status(
        &obj.replica_status(),
        obj.meta().generation.unwrap_or(0),
        &template_labels,
        obj.min_ready_seconds(),
        &pods,
        failure_reason,
        now,
    );
    update_status(obj, &status, ctx).await?;
    if let Some(err) = failure {
        return Err(err);
    }

    // Come back when unmet expectations expire, or when a ready pod becomes available.
    let mut next = if needs_sync {
        None
    } else {
        ctx.expectations.time_left(&key, &uid)
    };
    let min_ready = obj.min_ready_seconds();
    if min_ready > 0
        && let Some(t) = pods
            .iter()
            .filter_map(|p| available_at(p, min_ready))
            .filter(|t| *t >= now)
            .min()
    {
        let wait = t.duration_since(now).unsigned_abs() + Duration::from_secs(1);
        next = Some(next.map_or(wait, |n| n.min(wait)));
    }
    Ok(next.map_or_else(Action::await_change, Action::requeue))
}

/// Adopts matching orphans and releases owned pods that stopped matching; returns the
/// pods the object now controls.
async fn claim_pods<K: Replicated>(
    obj: &K,
    selector: &LabelSelector,
    pods: Vec<Arc<Pod>>,
    ctx: &Ctx<K>,
) -> Result<Vec<Arc<Pod>>, Error> {
    let uid = obj.uid().unwrap_or_default();
    let ns = obj.namespace().unwrap_or_default();
    let deleting = obj.meta().deletion_timestamp.is_some();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut claimed = Vec::with_capacity(pods.len());
    let mut can_adopt = None;
    let mut first_err = None;
    for pod in pods {
        let matches = selector.matches(Some(&labels_json(pod.labels())));
        let pod_uid = pod.uid().unwrap_or_default();
        match decide(&uid, deleting, matches, &pod.metadata) {
            Claim::Owned => claimed.push(pod),
            Claim::Ignore => {}
            Claim::Adopt => {
                if can_adopt.is_none() {
                    can_adopt = Some(still_current(obj, ctx).await?);
                }
                if can_adopt != Some(true) {
                    continue;
                }
                match adopt(&api, &pod.name_any(), &pod_uid, &controller_ref(obj)).await {
                    Ok(p) => {
                        tracing::info!(pod = %pod.name_any(), ns = %ns, owner = %obj.name_any(), "adopted pod");
                        claimed.push(Arc::new(p));
                    }
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => {
                        first_err.get_or_insert(err);
                    }
                }
            }
            Claim::Release => match release(&api, &pod.name_any(), &pod_uid, &uid).await {
                Ok(_) => {
                    tracing::info!(pod = %pod.name_any(), ns = %ns, owner = %obj.name_any(), "released pod")
                }
                Err(err) if is_not_found(&err) || is_invalid(&err) => {}
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            },
        }
    }
    match first_err {
        Some(err) => Err(err.into()),
        None => Ok(claimed),
    }
}

/// A fresh read: the object still exists with this uid and is not being deleted (only
/// then may it adopt — the cache may lag behind a deletion).
async fn still_current<K: Replicated>(obj: &K, ctx: &Ctx<K>) -> Result<bool, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    Ok(api
        .get_opt(&obj.name_any())
        .await?
        .is_some_and(|fresh| fresh.uid() == obj.uid() && fresh.meta().deletion_timestamp.is_none()))
}

/// Runs `count` calls of `f` in batches of `initial`, then twice as many each time,
/// stopping after the first batch with an error. Returns the successes and that error.
async fn slow_start_batch<F, Fut>(count: usize, initial: usize, mut f: F) -> (usize, Option<String>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut remaining = count;
    let mut successes = 0;
    let mut batch = initial.max(1).min(remaining);
    while batch > 0 {
        let results = future::join_all((0..batch).map(|_| f())).await;
        let mut err = None;
        for r in results {
            match r {
                Ok(()) => successes += 1,
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if err.is_some() {
            return (successes, err);
        }
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    (successes, None)
}

/// Creates or deletes pods so that `pods` (the claimed active pods) reaches the desired
/// count, within one burst.
async fn manage_replicas<K: Replicated>(
    obj: &K,
    pods: &[Arc<Pod>],
    key: &str,
    ctx: &Ctx<K>,
) -> Result<(), Error> {
    let desired = usize::try_from(obj.desired_replicas()).unwrap_or(0);
    let uid = obj.uid().unwrap_or_default();
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if pods.len() < desired {
        let n = (desired - pods.len()).min(BURST_REPLICAS);
        let template = obj
            .pod_template()
            .ok_or_else(|| Error::NoTemplate(key.to_string()))?;
        ctx.expectations.expect_creations(key, &uid, n);
        tracing::info!(object = %key, need = desired, have = pods.len(), creating = n, "too few replicas");
        let owner = controller_ref(obj);
        let prefix = pods::pods_prefix(&name);
        let (created, err) = slow_start_batch(n, SLOW_START_INITIAL_BATCH, || {
            let pod = pods::pod_from_template(template, &ns, &prefix, owner.clone());
            let api = api.clone();
            async move {
                match api.create(&PostParams::default(), &pod).await {
                    Ok(p) => {
                        ctx.recorder.event(
                            obj,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        );
                        Ok(())
                    }
                    Err(e) => {
                        let msg = error_message(&e);
                        if !namespace_terminating(&e) {
                            ctx.recorder.event(
                                obj,
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating: {msg}"),
                            );
                        }
                        Err(msg)
                    }
                }
            }
        })
        .await;
        // The cache will never show the pods that were not created.
        for _ in created..n {
            ctx.expectations.creation_observed(key, &uid);
        }
        return match err {
            Some(e) => Err(Error::FailedCreate(e)),
            None => Ok(()),
        };
    }
    if pods.len() > desired {
        let n = (pods.len() - desired).min(BURST_REPLICAS);
        let related = related_pods(obj, pods, ctx);
        let victims = pods::pods_to_delete(pods, &related, n, jiff::Timestamp::now());
        ctx.expectations.expect_deletions(
            key,
            &uid,
            victims.iter().map(|p| p.uid().unwrap_or_default()),
        );
        tracing::info!(object = %key, need = desired, have = pods.len(), deleting = n, "too many replicas");
        let results = future::join_all(victims.iter().map(|p| {
            let api = api.clone();
            async move { (p, api.delete(&p.name_any(), &DeleteParams::default()).await) }
        }))
        .await;
        let mut first_err = None;
        for (pod, res) in results {
            match res {
                Ok(_) => ctx.recorder.event(
                    obj,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", pod.name_any()),
                ),
                Err(e) => {
                    // The cache will never show this deletion.
                    ctx.expectations
                        .deletion_observed(key, &uid, &pod.uid().unwrap_or_default());
                    if !is_not_found(&e) {
                        let msg = error_message(&e);
                        ctx.recorder.event(
                            obj,
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {msg}"),
                        );
                        first_err.get_or_insert(msg);
                    }
                }
            }
        }
        return match first_err {
            Some(e) => Err(Error::FailedDelete(e)),
            None => Ok(()),
        };
    }
    Ok(())
}

/// The active pods of every controller that shares `obj`'s own controller (the same
/// Deployment's ReplicaSets), used to spread survivors of a scale-down over nodes.
fn related_pods<K: Replicated>(obj: &K, pods: &[Arc<Pod>], ctx: &Ctx<K>) -> Vec<Arc<Pod>> {
    let Some(parent) = controller_of(obj.meta()) else {
        return pods.to_vec();
    };
    let ns = obj.namespace();
    let mut siblings: HashSet<String> = ctx
        .owners
        .state()
        .iter()
        .filter(|o| o.namespace() == ns)
        .filter(|o| controller_of(o.meta()).is_some_and(|r| r.uid == parent.uid))
        .filter_map(|o| o.uid())
        .collect();
    siblings.extend(obj.uid());
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && is_active(p))
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| siblings.contains(&r.uid)))
        .collect()
}

/// The status the pods imply, keeping (or setting, or clearing) `ReplicaFailure`.
fn calculate_status(
    current: &ReplicaStatus,
    generation: i64,
    template_labels: &BTreeMap<String, String>,
    min_ready_seconds: i32,
    pods: &[Arc<Pod>],
    failure: Option<(&str, String)>,
    now: jiff::Timestamp,
) -> ReplicaStatus {
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let fully_labeled = count(&|p: &Pod| {
        let labels = p.labels();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let mut conditions = current.conditions.clone();
    let has_failure = conditions.iter().any(|c| c.type_ == REPLICA_FAILURE);
    match failure {
        Some((reason, message)) if !has_failure => conditions.push(Condition {
            type_: REPLICA_FAILURE.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now_seconds(now)),
        }),
        None if has_failure => conditions.retain(|c| c.type_ != REPLICA_FAILURE),
        _ => {}
    }
    ReplicaStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: fully_labeled,
        ready_replicas: count(&is_ready),
        available_replicas: count(&|p: &Pod| is_available(p, min_ready_seconds, now)),
        observed_generation: generation,
        conditions,
    }
}

/// `now` at the precision the API keeps (seconds), so conditions compare equal later.
pub(crate) fn now_seconds(now: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Writes the status if it changed (one retry on a conflict, with a fresh read).
async fn update_status<K: Replicated>(
    obj: &K,
    status: &ReplicaStatus,
    ctx: &Ctx<K>,
) -> Result<(), Error> {
    if obj.replica_status() == *status {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let name = obj.name_any();
    let mut updated = obj.clone();
    for attempt in 0..2 {
        updated.set_replica_status(status);
        updated.meta_mut().managed_fields = None;
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() && attempt == 0 => {
                match api.get_opt(&name).await? {
                    Some(fresh) if fresh.uid() == obj.uid() => updated = fresh,
                    _ => return Ok(()),
                }
            }
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn slow_start_batches() {
        // (count, fail on call number, expected successes, expected calls)
        let cases = [
            (0, None, 0, 0),
            (1, None, 1, 1),
            (7, None, 7, 7),
            (10, Some(2), 2, 3),
            (10, Some(4), 6, 7),
        ];
        for (count, fail_at, want_ok, want_calls) in cases {
            let calls = AtomicUsize::new(0);
            let (ok, err) = slow_start_batch(count, 1, || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if Some(n) == fail_at {
                        Err(format!("boom {n}"))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
            assert_eq!(ok, want_ok, "successes for {count} / {fail_at:?}");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                want_calls,
                "calls for {count} / {fail_at:?}"
            );
            assert_eq!(err.is_some(), fail_at.is_some());
        }
    }

    #[test]
    fn status_from_pods() {
        let now: jiff::Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        let mk = |name: &str, labels: serde_json::Value, ready_since: Option<&str>| {
            let conditions: Vec<_> = ready_since
                .map(|t| json!({"type": "Ready", "status": "True", "lastTransitionTime": t}))
                .into_iter()
                .collect();
            Arc::new(pod(json!({"metadata": {"name": name, "labels": labels},
                "spec": {"containers": []}, "status": {"phase": "Running", "conditions": conditions}})))
        };
        let pods = vec![
            mk(
                "a",
                json!({"app": "web", "tier": "fe"}),
                Some("2025-01-01T11:00:00Z"),
            ),
            mk("b", json!({"app": "web"}), Some("2025-01-01T11:59:55Z")),
            mk("c", json!({"app": "web", "tier": "fe"}), None),
        ];
        let template: BTreeMap<String, String> =
            [("app".into(), "web".into()), ("tier".into(), "fe".into())].into();
        let s = calculate_status(
            &ReplicaStatus::default(),
            4,
            &template,
            30,
            &pods,
            None,
            now,
        );
        assert_eq!(
            (
                s.replicas,
                s.fully_labeled_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (3, 2, 2, 1, 4)
        );
        assert!(s.conditions.is_empty());
        // A create failure sets ReplicaFailure once; success clears it.
        let failed = calculate_status(
            &s,
            4,
            &template,
            0,
            &pods,
            Some(("FailedCreate", "quota".into())),
            now,
        );
        assert_eq!(failed.available_replicas, 2);
        assert_eq!(failed.conditions.len(), 1);
        assert_eq!(failed.conditions[0].reason.as_deref(), Some("FailedCreate"));
        assert_eq!(failed.conditions[0].message.as_deref(), Some("quota"));
        let again = calculate_status(
            &failed,
            4,
            &template,
            0,
            &pods,
            Some(("FailedCreate", "other".into())),
            now,
        );
        assert_eq!(
            again.conditions, failed.conditions,
            "an existing failure condition is kept"
        );
        let cleared = calculate_status(&failed, 4, &template, 0, &pods, None, now);
        assert!(cleared.conditions.is_empty());
    }

    #[test]
    fn status_round_trips_through_both_kinds() {
        let status = ReplicaStatus {
            replicas: 3,
            fully_labeled_replicas: 3,
            ready_replicas: 0,
            available_replicas: 1,
            observed_generation: 2,
            conditions: vec![Condition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some("m".into()),
                last_transition_time: None,
            }],
        };
        let mut rs = ReplicaSet::default();
        rs.set_replica_status(&status);
        assert_eq!(rs.replica_status(), status);
        assert_eq!(
            rs.status.as_ref().unwrap().ready_replicas,
            None,
            "zero counts are omitted"
        );
        let mut rc = ReplicationController::default();
        rc.set_replica_status(&status);
        assert_eq!(rc.replica_status(), status);
    }

    #[test]
    fn pod_tracker_lowers_expectations_and_routes() {
        let exp = Expectations::default();
        let mut t = PodTracker::default();
        let owned = |name: &str, uid: &str, deleting: bool| {
            let mut p = pod(
                json!({"metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-uid", "controller": true}]},
                "spec": {"containers": []}}),
            );
            if deleting {
                p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
            }
            p
        };
        let key = "ReplicaSet/ns/web";
        exp.expect_creations(key, "rs-uid", 2);
        let touches = t.observe(watcher::Event::Apply(owned("p1", "u1", false)), &exp);
        let owner = OwnerKey {
            kind: "ReplicaSet",
            ns: "ns".into(),
            name: "web".into(),
            uid: "rs-uid".into(),
        };
        assert_eq!(touches, vec![Touch::Owner(owner.clone())]);
        // A second event for the same pod is an update, not another creation.
        t.observe(watcher::Event::Apply(owned("p1", "u1", false)), &exp);
        assert!(!exp.satisfied(key, "rs-uid"));
        t.observe(watcher::Event::Apply(owned("p2", "u2", false)), &exp);
        assert!(exp.satisfied(key, "rs-uid"));

        exp.expect_deletions(key, "rs-uid", ["u1".to_string(), "u2".to_string()]);
        t.observe(watcher::Event::Apply(owned("p1", "u1", true)), &exp);
        t.observe(watcher::Event::Delete(owned("p1", "u1", true)), &exp);
        assert!(!exp.satisfied(key, "rs-uid"));
        // u2 vanished while the watch was down: the relist notices.
        t.observe(watcher::Event::Init, &exp);
        let touches = t.observe(watcher::Event::InitDone, &exp);
        assert_eq!(touches, vec![Touch::Owner(owner)]);
        assert!(exp.satisfied(key, "rs-uid"));

        // Orphans ask every matching controller; a label change asks again.
        let orphan = pod(
            json!({"metadata": {"name": "o", "namespace": "ns", "uid": "uo", "labels": {"app": "web"}}, "spec": {"containers": []}}),
        );
        let touches = t.observe(watcher::Event::Apply(orphan.clone()), &exp);
        assert!(matches!(&touches[..], [Touch::Orphan { ns, .. }] if ns == "ns"));
        assert!(
            t.observe(watcher::Event::Apply(orphan), &exp).is_empty(),
            "unchanged orphan"
        );
    }
}
