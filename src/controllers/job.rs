//! The Job controller (batch/v1), with the semantics of upstream's `pkg/controller/job`.
//!
//! For each Job it claims the pods its selector matches (adopting orphans with the
//! `batch.kubernetes.io/job-tracking` finalizer, releasing pods that stopped matching)
//! and then:
//!
//! - **runs pods**: up to `parallelism` active pods, never more than the completions
//!   still missing, created from the template with the tracking finalizer in slow-start
//!   batches (`SuccessfulCreate`/`FailedCreate`), deleting the surplus when parallelism
//!   shrinks (`SuccessfulDelete`). After failures, re-creation backs off (10 s doubling to
//!   6 min, [`backoff`]). Indexed Jobs give each pod an index (annotation and label
//!   `batch.kubernetes.io/job-completion-index`, `JOB_COMPLETION_INDEX` from the downward
//!   API, hostname `<job>-<index>`), start the lowest pending indexes and delete pods
//!   with duplicate or out-of-range indexes;
//! - **counts finished pods exactly once**: a finished pod's uid first goes into
//!   `status.uncountedTerminatedPods`, then its finalizer is removed, then it moves into
//!   `succeeded`/`failed` (or `completedIndexes`); finalizer removals issued but not yet
//!   seen are remembered, so a stale cache never counts twice. Orphaned pods (Job gone
//!   or finished) lose the finalizer too;
//! - **decides the outcome**: `backoffLimit` (pod failures, or container restarts with
//!   `restartPolicy: OnFailure`), `activeDeadlineSeconds`, `podFailurePolicy`
//!   ([`failure_policy`]: FailJob / Ignore / Count / FailIndex rules), completions. The
//!   interim `FailureTarget` / `SuccessCriteriaMet` condition is written first, active pods
//!   are deleted, and `Failed` / `Complete` (with `completionTime`) follow once no pod is
//!   terminating or uncounted, with events (`Completed`, `BackoffLimitExceeded`,
//!   `DeadlineExceeded`, `PodFailurePolicy`);
//! - **suspends**: a suspended Job deletes its active pods (not counted as failures) and
//!   has `Suspended=True`; resuming resets `startTime`;
//! - **reports** `active`, `ready`, `terminating`, `startTime` through `/status`.
//!
//! Expectations (shared with the ReplicaSet controller) keep bursts of pod events from
//! creating or deleting twice. Built on kube-runtime's `applier` over Job and pod
//! reflectors.
//!
//! Depends on kube-rs and the shared controller helpers in `replicaset`. Never the store
//! or the API server.

mod backoff;
pub(crate) mod failure_policy;
pub(crate) mod indexes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt, future, stream};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, ReconcileRequest, trigger_self};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use self::indexes::{COMPLETION_INDEX, Indexes, completion_index};
use super::owners::label_selector;
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::expectations::Expectations;
use super::replicaset::ownership::{Claim, controller_ref, decide, release};
use super::replicaset::pods::{
    controller_of, is_active, is_ready, pod_from_template, pods_prefix, pods_to_delete,
};
use super::replicaset::{
    error_message, is_not_found, labels_json, namespace_terminating, now_seconds,
};
use super::watch::{self, Failures};
use crate::api::selector::LabelSelector;

/// The finalizer that keeps a finished pod until the controller has counted it.
pub(crate) const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The environment variable with an Indexed Job pod's index.
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// At most this many pods in `uncountedTerminatedPods` at once.
const MAX_UNCOUNTED: usize = 500;
/// At most this many pod creations or deletions per sync.
const MAX_PER_SYNC: usize = 500;
/// The value of `spec.managedBy` that means this controller.
const MANAGED_BY_US: &str = "kubernetes.io/job-controller";
const COMPONENT: &str = "job-controller";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the pod cache is not available")]
    CacheGone,
    #[error("{0}")]
    Pods(String),
}

impl Error {
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.is_conflict())
    }
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    jobs: Store<Job>,
    expectations: Arc<Expectations>,
    /// Pods (uids) whose finalizer removal was issued but not yet observed, per Job key.
    removals: Arc<FinalizerRemovals>,
    backoff: Mutex<HashMap<String, backoff::Record>>,
    recorder: Recorder,
    failures: Failures,
}

/// Finalizer removals in flight, per Job key.
#[derive(Debug, Default)]
struct FinalizerRemovals(Mutex<HashMap<String, HashSet<String>>>);

impl FinalizerRemovals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn expect(&self, key: &str, uid: &str) {
        self.lock()
            .entry(key.into())
            .or_default()
            .insert(uid.into());
    }
    fn observed(&self, key: &str, uid: &str) {
        let mut m = self.lock();
        if let Some(set) = m.get_mut(key) {
            set.remove(uid);
            if set.is_empty() {
                m.remove(key);
            }
        }
    }
    fn pending(&self, key: &str) -> HashSet<String> {
        self.lock().get(key).cloned().unwrap_or_default()
    }
    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// `Job/namespace/name`, the expectations key of a Job.
fn job_key(ns: &str, name: &str) -> String {
    format!("Job/{ns}/{name}")
}

// ---------------------------------------------------------------------------------------
// Wiring.

/// Runs the Job controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let expectations = Arc::new(Expectations::default());
    let removals = Arc::new(FinalizerRemovals::default());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, watcher::Config::default());
    let (job_store, job_events) = watch::reflect_all::<Job>(&client, watcher::Config::default());
    let (req_tx, req_rx) = mpsc::unbounded::<ReconcileRequest<Job>>();
    let (orphan_tx, orphan_rx) = mpsc::unbounded::<(String, String)>();

    let pods = {
        let stop = shutdown.clone();
        let expectations = expectations.clone();
        let removals = removals.clone();
        let jobs = job_store.clone();
        let mut tracker = PodTracker::default();
        pod_events
            .take_until(async move { stop.cancelled().await })
            .for_each(move |event| {
                match event {
                    Ok(event) => {
                        for touch in tracker.observe(event, &expectations, &removals) {
                            route(touch, &jobs, &req_tx, &orphan_tx);
                        }
                    }
                    Err(err) => tracing::debug!(%err, "pod watch (job controller)"),
                }
                future::ready(())
            })
    };
    let forget = (expectations.clone(), removals.clone());
    let own = job_events
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(job) = event {
                let key = job_key(&job.namespace().unwrap_or_default(), &job.name_any());
                forget.0.forget(&key);
                forget.1.forget(&key);
            }
        })
        .applied_objects();
    let queue = stream::select(trigger_self(own, ()), req_rx.map(Ok));
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        pods: pod_store,
        jobs: job_store.clone(),
        expectations,
        removals,
        backoff: Mutex::new(HashMap::new()),
        failures: Failures::default(),
    });
    let orphans = orphan_worker(orphan_rx, ctx.clone(), shutdown.clone());
    let jobs = watch::run_applier(
        "job",
        reconcile,
        error_policy,
        ctx,
        job_store,
        queue,
        controller::Config::default(),
        shutdown,
    );
    futures::join!(pods, jobs, orphans);
}

/// The Job controlling a pod, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Owner {
    ns: String,
    name: String,
    uid: String,
}

impl Owner {
    fn of(pod: &Pod) -> Option<Owner> {
        let r = controller_of(&pod.metadata)?;
        (r.kind == "Job" && r.api_version == "batch/v1").then(|| Owner {
            ns: pod.namespace().unwrap_or_default(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
    }
    fn key(&self) -> String {
        job_key(&self.ns, &self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Touch {
    /// Sync the pod's Job.
    Owner(Owner),
    /// An orphan: every Job whose selector matches may adopt it.
    Orphan {
        ns: String,
        labels: BTreeMap<String, String>,
    },
    /// A pod with the tracking finalizer to check for a Job that is gone or finished.
    Finalizer { ns: String, name: String },
}

#[derive(Debug)]
struct SeenPod {
    owner: Option<Owner>,
    deleting: bool,
}

fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

/// Turns pod events into expectation updates and sync requests.
#[derive(Debug, Default)]
struct PodTracker {
    seen: HashMap<String, SeenPod>,
    relist: Option<HashSet<String>>,
}

impl PodTracker {
    fn observe(
        &mut self,
        event: watcher::Event<Pod>,
        exp: &Expectations,
        removals: &FinalizerRemovals,
    ) -> Vec<Touch> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                if let Some(listed) = &mut self.relist {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                self.applied(&pod, exp, removals)
            }
            watcher::Event::Apply(pod) => self.applied(&pod, exp, removals),
            watcher::Event::Delete(pod) => self.deleted(
                &pod.uid().unwrap_or_default(),
                Owner::of(&pod),
                exp,
                removals,
            ),
            watcher::Event::InitDone => {
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
                    .flat_map(|uid| self.deleted(uid, None, exp, removals))
                    .collect()
            }
        }
    }

    fn applied(
        &mut self,
        pod: &Pod,
        exp: &Expectations,
        removals: &FinalizerRemovals,
    ) -> Vec<Touch> {
        let uid = pod.uid().unwrap_or_default();
        let owner = Owner::of(pod);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let prev = self.seen.insert(
            uid.clone(),
            SeenPod {
                owner: owner.clone(),
                deleting,
            },
        );
        let mut touches = Vec::new();
        if let Some(o) = &owner {
            if deleting && prev.as_ref().is_none_or(|p| !p.deleting) {
                exp.deletion_observed(&o.key(), &o.uid, &uid);
            } else if prev.is_none() {
                exp.creation_observed(&o.key(), &o.uid);
            }
            if !has_finalizer(pod) {
                removals.observed(&o.key(), &uid);
            }
            touches.push(Touch::Owner(o.clone()));
        }
        if let Some(old) = prev
            .and_then(|p| p.owner)
            .filter(|old| Some(old) != owner.as_ref())
        {
            touches.push(Touch::Owner(old));
        }
        if controller_of(&pod.metadata).is_none() && !deleting {
            touches.push(Touch::Orphan {
                ns: pod.namespace().unwrap_or_default(),
                labels: pod.labels().clone(),
            });
        }
        if has_finalizer(pod) {
            touches.push(Touch::Finalizer {
                ns: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
            });
        }
        touches
    }

    fn deleted(
        &mut self,
        uid: &str,
        owner: Option<Owner>,
        exp: &Expectations,
        removals: &FinalizerRemovals,
    ) -> Vec<Touch> {
        let prev = self.seen.remove(uid);
        match owner.or_else(|| prev.and_then(|p| p.owner)) {
            Some(o) => {
                exp.deletion_observed(&o.key(), &o.uid, uid);
                removals.observed(&o.key(), uid);
                vec![Touch::Owner(o)]
            }
            None => Vec::new(),
        }
    }
}

fn route(
    touch: Touch,
    jobs: &Store<Job>,
    tx: &mpsc::UnboundedSender<ReconcileRequest<Job>>,
    orphans: &mpsc::UnboundedSender<(String, String)>,
) {
    match touch {
        Touch::Owner(o) => {
            let _ = tx.unbounded_send(ObjectRef::new(&o.name).within(&o.ns).into());
        }
        Touch::Orphan { ns, labels } => {
            let labels = labels_json(&labels);
            for job in jobs.state() {
                if job.namespace().as_deref() == Some(ns.as_str())
                    && selector(&job).is_ok_and(|s| s.matches(Some(&labels)))
                {
                    let _ = tx.unbounded_send(ObjectRef::from_obj(&*job).into());
                }
            }
        }
        Touch::Finalizer { ns, name } => {
            let _ = orphans.unbounded_send((ns, name));
        }
    }
}

/// Removes the tracking finalizer from pods whose Job is gone or finished (or that no
/// Job controls), as upstream's orphan queue does.
async fn orphan_worker(
    mut rx: mpsc::UnboundedReceiver<(String, String)>,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            n = rx.next() => n,
        };
        let Some((ns, name)) = next else { return };
        if ctx.jobs.wait_until_ready().await.is_err() || ctx.pods.wait_until_ready().await.is_err()
        {
            return;
        }
        let Some(pod) = ctx.pods.get(&ObjectRef::new(&name).within(&ns)) else {
            continue;
        };
        if !has_finalizer(&pod) {
            continue;
        }
        if let Some(r) = controller_of(&pod.metadata) {
            if r.kind != "Job" || r.api_version != "batch/v1" {
                continue;
            }
            let cached = ctx.jobs.get(&ObjectRef::new(&r.name).within(&ns));
            let live = match cached {
                Some(j) if j.uid().as_deref() == Some(r.uid.as_str()) => !is_finished(&j),
                _ => {
                    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
                    match api.get_opt(&r.name).await {
                        Ok(Some(j)) => {
                            j.uid().as_deref() == Some(r.uid.as_str()) && !is_finished(&j)
                        }
                        Ok(None) => false,
                        Err(err) => {
                            tracing::debug!(%err, pod = %name, ns = %ns, "checking a pod's job");
                            true
                        }
                    }
                }
            };
            if live {
                continue;
            }
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        match remove_finalizer(&api, &name).await {
            Ok(()) => {
                tracing::debug!(pod = %name, ns = %ns, "removed the job tracking finalizer from an orphan pod")
            }
            Err(err) => {
                tracing::warn!(%err, pod = %name, ns = %ns, "removing the job tracking finalizer")
            }
        }
    }
}

async fn remove_finalizer(api: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn error_policy(job: Arc<Job>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = job_key(&job.namespace().unwrap_or_default(), &job.name_any());
    let n = ctx.failures.record(&key);
    if err.is_conflict() && n < 10 {
        tracing::debug!(%err, job = %key, "conflict; retrying");
        return Action::requeue(Duration::from_millis(100));
    }
    let delay = watch::backoff(Duration::from_millis(250), n, 8);
    tracing::warn!(%err, job = %key, retry_in = ?delay, "job sync failed");
    Action::requeue(delay)
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let action = sync(&job, &ctx).await?;
    let key = job_key(&job.namespace().unwrap_or_default(), &job.name_any());
    ctx.failures.clear(&key);
    Ok(action)
}

// ---------------------------------------------------------------------------------------
// Job and pod facts.

fn spec(job: &Job) -> k8s_openapi::api::batch::v1::JobSpec {
    job.spec.clone().unwrap_or_default()
}

fn selector(job: &Job) -> Result<LabelSelector, String> {
    label_selector(job.spec.as_ref().and_then(|s| s.selector.as_ref()))
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job has `Complete` or `Failed`.
pub(crate) fn is_finished(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

fn is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// Replacement pods wait until the old ones are fully `Failed`.
fn only_replace_failed(job: &Job) -> bool {
    let s = job.spec.as_ref();
    s.and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed")
        || s.is_some_and(|s| s.pod_failure_policy.is_some())
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// A failed pod: phase Failed, or (unless only failed pods are replaced) being deleted
/// before it succeeded.
fn is_pod_failed(p: &Pod, job: &Job) -> bool {
    if phase(p) == "Failed" {
        return true;
    }
    if only_replace_failed(job) {
        return false;
    }
    p.metadata.deletion_timestamp.is_some() && phase(p) != "Succeeded"
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some() && phase(p) != "Succeeded" && phase(p) != "Failed"
}

/// With `restartPolicy: OnFailure`: the restarts of running and pending pods reach the
/// backoff limit.
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>]) -> bool {
    let s = spec(job);
    if s.template
        .spec
        .as_ref()
        .and_then(|p| p.restart_policy.as_deref())
        != Some("OnFailure")
    {
        return false;
    }
    let restarts: i64 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum();
    let limit = i64::from(s.backoff_limit.unwrap_or(6));
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: (!reason.is_empty()).then(|| reason.into()),
        message: (!message.is_empty()).then(|| message.into()),
        last_probe_time: Some(now_seconds(now)),
        last_transition_time: Some(now_seconds(now)),
    }
}

/// Sets a condition (adding it unless it would be False); true if anything changed.
fn ensure_condition(
    conds: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status
            || c.reason.as_deref().unwrap_or("") != reason
            || c.message.as_deref().unwrap_or("") != message
        {
            *c = new_condition(type_, status, reason, message, now);
            return true;
        }
        return false;
    }
    if status != "False" {
        conds.push(new_condition(type_, status, reason, message, now));
        return true;
    }
    false
}

fn count<T>(items: impl IntoIterator<Item = T>) -> i32 {
    i32::try_from(items.into_iter().count()).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------------------
// Accounting (pure).

/// What one sync learns about finished pods: which to add to the uncounted lists, which
/// indexes newly succeeded, whose finalizers may go.
#[derive(Debug, Default, PartialEq)]
struct Accounting {
    succeeded: Vec<String>,
    failed: Vec<String>,
    indexes: Vec<i32>,
    remove_finalizer: Vec<String>,
    reached_max: bool,
}

/// Upstream's accounting loop of `trackJobStatusAndRemoveFinalizers`: every tracked pod
/// (finalizer present, removal not in flight) that finished — or, when the Job is
/// terminating or finished, any pod — is counted once and released.
fn account(
    job: &Job,
    pods: &[Arc<Pod>],
    in_flight: &HashSet<String>,
    uncounted: &UncountedTerminatedPods,
    prev_indexes: &Indexes,
    finished: Option<&JobCondition>,
) -> Accounting {
    let mut out = Accounting::default();
    let uncounted_succeeded: HashSet<&String> = uncounted.succeeded.iter().flatten().collect();
    let uncounted_failed: HashSet<&String> = uncounted.failed.iter().flatten().collect();
    let indexed = is_indexed(job);
    let completions = spec(job).completions.unwrap_or(0);
    let policy = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref());
    let job_failing =
        finished.is_some_and(|c| c.type_ != "SuccessCriteriaMet" && c.type_ != "Complete");
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    if indexed {
        sorted.sort_by_key(|p| completion_index(p).unwrap_or(i32::MAX));
    }
    let mut seen_indexes: BTreeSet<i32> = BTreeSet::new();
    for pod in sorted {
        let uid = pod.uid().unwrap_or_default();
        if !has_finalizer(pod) || in_flight.contains(&uid) {
            continue;
        }
        let failed = is_pod_failed(pod, job);
        let removable = job.metadata.deletion_timestamp.is_some()
            || finished.is_some()
            || phase(pod) == "Succeeded"
            || failed;
        if !removable {
            continue;
        }
        out.remove_finalizer.push(uid.clone());
        let index = completion_index(pod).filter(|i| *i < completions);
        if phase(pod) == "Succeeded" && !uncounted_failed.contains(&uid) {
            if indexed {
                if let Some(ix) = index
                    && !prev_indexes.has(ix)
                    && seen_indexes.insert(ix)
                {
                    out.indexes.push(ix);
                }
            } else if !uncounted_succeeded.contains(&uid) {
                out.succeeded.push(uid.clone());
            }
        } else if (failed || job_failing)
            && !uncounted_failed.contains(&uid)
            && (!indexed || index.is_some())
            && failure_policy::matches(policy, pod).counts
        {
            out.failed.push(uid.clone());
        }
        if out.indexes.len()
            + out.succeeded.len()
            + out.failed.len()
            + uncounted_succeeded.len()
            + uncounted_failed.len()
            >= MAX_UNCOUNTED
        {
            out.reached_max = true;
            break;
        }
    }
    out
}

/// Moves uncounted pods whose finalizer is gone into the counters; true if any moved.
fn clean_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let u = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    let mut changed = false;
    for (list, counter) in [
        (&mut u.succeeded, &mut status.succeeded),
        (&mut u.failed, &mut status.failed),
    ] {
        let before = list.as_ref().map_or(0, Vec::len);
        let kept: Vec<String> = list
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|uid| with_finalizer.contains(uid))
            .collect();
        let moved = before - kept.len();
        if moved > 0 {
            changed = true;
            *counter = Some(counter.unwrap_or(0) + count(0..moved));
        }
        *list = (!kept.is_empty()).then_some(kept);
    }
    changed
}

/// Newly finished tracked pods not yet in the uncounted lists: (succeeded, failed).
fn new_finished_pods<'a>(
    job: &Job,
    pods: &'a [Arc<Pod>],
    uncounted: &UncountedTerminatedPods,
    in_flight: &HashSet<String>,
) -> (Vec<&'a Pod>, Vec<&'a Pod>) {
    let completions = spec(job).completions.unwrap_or(0);
    let valid = |p: &Pod, list: &Option<Vec<String>>| {
        let uid = p.uid().unwrap_or_default();
        has_finalizer(p)
            && !list.iter().flatten().any(|u| *u == uid)
            && !in_flight.contains(&uid)
            && (!is_indexed(job) || completion_index(p).is_some_and(|i| i < completions))
    };
    let succeeded = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| valid(p, &uncounted.succeeded) && phase(p) == "Succeeded")
        .collect();
    let failed = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| valid(p, &uncounted.failed) && is_pod_failed(p, job))
        .collect();
    (succeeded, failed)
}

/// How many pods should be active.
fn want_active(job: &Job, active: i32, succeeded: i32) -> i32 {
    let s = spec(job);
    let parallelism = s.parallelism.unwrap_or(1);
    match s.completions {
        None if succeeded > 0 => active,
        None => parallelism,
        Some(c) => (c - succeeded).clamp(0, parallelism.max(0)),
    }
}

/// Active pods to delete: for Indexed Jobs first those with a duplicate or out-of-range
/// index, then the least valuable until `at_least`.
fn pods_for_removal(
    job: &Job,
    active: &[Arc<Pod>],
    at_least: usize,
    now: Timestamp,
) -> Vec<Arc<Pod>> {
    let mut rm: Vec<Arc<Pod>> = Vec::new();
    let mut left: Vec<Arc<Pod>> = Vec::new();
    if is_indexed(job) {
        let completions = spec(job).completions.unwrap_or(0);
        let mut by_index: BTreeMap<i32, Vec<Arc<Pod>>> = BTreeMap::new();
        for p in active {
            match completion_index(p).filter(|i| *i < completions) {
                Some(i) => by_index.entry(i).or_default().push(p.clone()),
                None => rm.push(p.clone()),
            }
        }
        for (_, group) in by_index {
            if group.len() > 1 {
                let extra = pods_to_delete(&group, &[], group.len() - 1, now);
                let extra_uids: HashSet<String> = extra.iter().filter_map(|p| p.uid()).collect();
                left.extend(
                    group
                        .into_iter()
                        .filter(|p| !p.uid().is_some_and(|u| extra_uids.contains(&u))),
                );
                rm.extend(extra);
            } else {
                left.extend(group);
            }
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < at_least {
        rm.extend(pods_to_delete(&left, &[], at_least - rm.len(), now));
    }
    rm
}

/// Adds `JOB_COMPLETION_INDEX` (from the index annotation) to every container lacking it.
fn add_index_env(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let var = EnvVar {
        name: INDEX_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
            }),
            ..EnvVarSource::default()
        }),
    };
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == INDEX_ENV) {
            env.push(var.clone());
        }
    }
}

/// The pod for `job` (for `index`, when Indexed).
fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let s = spec(job);
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let prefix = match index {
        Some(i) => indexes::generate_name(&name, i),
        None => pods_prefix(&name),
    };
    let mut pod = pod_from_template(&s.template, &ns, &prefix, controller_ref(job));
    let finalizers = pod.metadata.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    if let Some(i) = index {
        add_index_env(&mut pod);
        pod.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if let Some(ps) = pod.spec.as_mut() {
            ps.hostname = Some(format!("{name}-{i}"));
        }
    }
    pod
}

// ---------------------------------------------------------------------------------------
// The sync.

/// What a sync has found and changed so far.
struct State {
    key: String,
    uid: String,
    pods: Vec<Arc<Pod>>,
    active_pods: Vec<Arc<Pod>>,
    active: i32,
    ready: i32,
    terminating: i32,
    succeeded: i32,
    succeeded_indexes: Indexes,
    prev_indexes: Indexes,
    in_flight: HashSet<String>,
    finished: Option<JobCondition>,
    backoff: backoff::Record,
    requeue: Option<Duration>,
}

impl State {
    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

async fn sync(shared: &Job, ctx: &Ctx) -> Result<Action, Error> {
    let ns = shared.namespace().unwrap_or_default();
    let key = job_key(&ns, &shared.name_any());
    if let Some(m) = shared.spec.as_ref().and_then(|s| s.managed_by.as_deref())
        && m != MANAGED_BY_US
    {
        return Ok(Action::await_change());
    }
    if is_finished(shared) {
        ctx.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        return Ok(Action::await_change());
    }
    let mode = spec(shared).completion_mode.unwrap_or_default();
    if !mode.is_empty() && mode != "NonIndexed" && mode != "Indexed" {
        ctx.recorder.event(
            shared,
            EventType::Warning,
            "UnknownCompletionMode",
            "Skipped Job sync because completion mode is unknown".into(),
        );
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let mut job = shared.clone();
    let mut status = job.status.take().unwrap_or_default();
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default)
        .clone();
    let uid = job.uid().unwrap_or_default();
    let satisfied = ctx.expectations.satisfied(&key, &uid);
    let pods = claim_pods(&job, ctx).await?;
    let in_flight = ctx.removals.pending(&key);
    let active_pods: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let (new_succeeded, new_failed) = new_finished_pods(&job, &pods, &uncounted, &in_flight);
    let policy = job.spec.as_ref().and_then(|s| s.pod_failure_policy.clone());
    let counted_failures = new_failed
        .iter()
        .filter(|p| failure_policy::matches(policy.as_ref(), p).counts)
        .count();
    let uncounted_len = |l: &Option<Vec<String>>| count(l.iter().flatten());
    let succeeded =
        status.succeeded.unwrap_or(0) + count(&new_succeeded) + uncounted_len(&uncounted.succeeded);
    let failed =
        status.failed.unwrap_or(0) + count(0..counted_failures) + uncounted_len(&uncounted.failed);
    if status.start_time.is_none() && !is_suspended(&job) {
        status.start_time = Some(now_seconds(now));
    }
    let prev_backoff = ctx
        .backoff
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .copied()
        .unwrap_or_default();
    let mut st = State {
        key: key.clone(),
        uid,
        active: count(&active_pods),
        ready: count(active_pods.iter().filter(|p| is_ready(p))),
        terminating: count(pods.iter().filter(|p| is_terminating(p))),
        active_pods,
        succeeded,
        succeeded_indexes: Indexes::default(),
        prev_indexes: Indexes::default(),
        in_flight,
        finished: None,
        backoff: backoff::update(prev_backoff, &new_succeeded, &new_failed),
        requeue: None,
        pods,
    };
    job.status = Some(status);

    // The outcome, if already decided.
    let js = spec(&job);
    st.finished = condition(&job, "SuccessCriteriaMet").cloned();
    if st.finished.is_none() {
        if let Some(ft) = condition(&job, "FailureTarget") {
            st.finished = Some(new_condition(
                "Failed",
                "True",
                ft.reason.as_deref().unwrap_or(""),
                ft.message.as_deref().unwrap_or(""),
                now,
            ));
        } else if policy.is_some() {
            let msg = st
                .pods
                .iter()
                .filter(|p| is_pod_failed(p, &job))
                .find_map(|p| failure_policy::matches(policy.as_ref(), p).fail_job);
            if let Some(msg) = msg {
                st.finished = Some(new_condition(
                    "FailureTarget",
                    "True",
                    "PodFailurePolicy",
                    &msg,
                    now,
                ));
            }
        }
    }
    if st.finished.is_none() {
        let start = job
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0);
        if failed > js.backoff_limit.unwrap_or(6) || past_backoff_limit_on_failure(&job, &st.pods) {
            st.finished = Some(new_condition(
                "FailureTarget",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
        } else if let (Some(deadline), Some(start), false) =
            (js.active_deadline_seconds, start, is_suspended(&job))
        {
            let elapsed = now.duration_since(start).as_secs();
            if elapsed >= deadline {
                st.finished = Some(new_condition(
                    "FailureTarget",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                ));
            } else {
                let left = now.duration_since(start);
                let wait = Duration::from_secs(u64::try_from(deadline).unwrap_or(u64::MAX))
                    .saturating_sub(left.unsigned_abs());
                st.requeue_in(wait + Duration::from_millis(100));
            }
        }
    }
    if is_indexed(&job) {
        let completions = js.completions.unwrap_or(0);
        let prev = Indexes::parse(
            job.status
                .as_ref()
                .and_then(|s| s.completed_indexes.as_deref())
                .unwrap_or(""),
            completions,
        );
        let mut now_done = prev.clone();
        for p in &st.pods {
            if phase(p) == "Succeeded"
                && has_finalizer(p)
                && let Some(i) = completion_index(p).filter(|i| *i < completions)
            {
                now_done.0.insert(i);
            }
        }
        st.succeeded = now_done.total();
        st.prev_indexes = prev;
        st.succeeded_indexes = now_done;
    }

    let mut suspend_changed = false;
    let mut manage_err = None;
    if st.finished.is_some() {
        let victims = st.active_pods.clone();
        let (deleted_ready, deleted, err) =
            delete_pods(&job, &victims, false, &st.key, &st.uid, ctx).await;
        if deleted != count(&victims) || !satisfied {
            // Pods may remain, or the cache may not show every pod yet.
            st.finished = None;
        }
        st.active -= deleted;
        st.terminating += deleted;
        st.ready -= deleted_ready;
        manage_err = err;
    } else {
        let mut managed = false;
        if satisfied && job.metadata.deletion_timestamp.is_none() {
            manage_err = manage_job(&job, &mut st, ctx, now).await.err();
            managed = true;
        } else if !satisfied && let Some(left) = ctx.expectations.time_left(&key, &st.uid) {
            st.requeue_in(left);
        }
        let complete = match js.completions {
            None => st.succeeded > 0 && st.active == 0,
            Some(c) => st.succeeded >= c && st.active == 0,
        };
        if complete {
            st.finished = Some(new_condition(
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else if managed {
            let suspended = is_suspended(&job);
            let status = job.status.get_or_insert_with(JobStatus::default);
            let conds = status.conditions.get_or_insert_with(Vec::new);
            let event = if suspended {
                ensure_condition(
                    conds,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    now,
                )
                .then_some(("Suspended", "Job suspended"))
            } else {
                let resumed = ensure_condition(
                    conds,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    now,
                );
                if resumed {
                    // activeDeadlineSeconds counts from the resumption.
                    status.start_time = Some(now_seconds(now));
                }
                resumed.then_some(("Resumed", "Job resumed"))
            };
            if let Some((reason, message)) = event {
                suspend_changed = true;
                ctx.recorder
                    .event(&job, EventType::Normal, reason, message.into());
            }
        }
    }

    let status = job.status.get_or_insert_with(JobStatus::default);
    let needs_update = suspend_changed
        || st.active != status.active.unwrap_or(0)
        || Some(st.ready) != status.ready
        || Some(st.terminating) != status.terminating
        || shared.status.as_ref().and_then(|s| s.start_time.as_ref()) != status.start_time.as_ref()
        || shared
            .status
            .as_ref()
            .and_then(|s| s.uncounted_terminated_pods.as_ref())
            .is_none();
    status.active = (st.active != 0).then_some(st.active);
    status.ready = Some(st.ready);
    status.terminating = Some(st.terminating);
    track_status(&mut job, &mut st, needs_update, ctx, now).await?;
    if let Some(e) = manage_err {
        return Err(e);
    }
    Ok(st
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Claims the pods of `job` (all phases): adopts matching orphans (with the tracking
/// finalizer), releases owned pods that stopped matching.
async fn claim_pods(job: &Job, ctx: &Ctx) -> Result<Vec<Arc<Pod>>, Error> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let Ok(sel) = selector(job) else {
        return Ok(Vec::new());
    };
    let deleting = job.metadata.deletion_timestamp.is_some();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut claimed = Vec::new();
    let mut can_adopt = None;
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str()) {
            continue;
        }
        let matches = sel.matches(Some(&labels_json(pod.labels())));
        match decide(&uid, deleting, matches, &pod.metadata) {
            Claim::Owned => claimed.push(pod),
            Claim::Ignore => {}
            Claim::Adopt => {
                if can_adopt.is_none() {
                    let fresh = Api::<Job>::namespaced(ctx.client.clone(), &ns)
                        .get_opt(&job.name_any())
                        .await?;
                    can_adopt = Some(fresh.is_some_and(|f| {
                        f.uid() == job.uid() && f.metadata.deletion_timestamp.is_none()
                    }));
                }
                if can_adopt != Some(true) {
                    continue;
                }
                let patch = json!({"metadata": {"ownerReferences": [controller_ref(job)],
                    "finalizers": [TRACKING_FINALIZER], "uid": pod.uid()}});
                match api
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                {
                    Ok(p) => claimed.push(Arc::new(p)),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Claim::Release => {
                match release(&api, &pod.name_any(), &pod.uid().unwrap_or_default(), &uid).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(claimed)
}

/// Deletes pods (first removing their finalizer when `release`, so they are not
/// counted). Returns (deleted ready pods, deleted pods, first error).
async fn delete_pods(
    job: &Job,
    pods: &[Arc<Pod>],
    release: bool,
    key: &str,
    uid: &str,
    ctx: &Ctx,
) -> (i32, i32, Option<Error>) {
    if pods.is_empty() {
        return (0, 0, None);
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let results = future::join_all(pods.iter().map(|p| {
        let api = api.clone();
        async move {
            if release
                && has_finalizer(p)
                && let Err(e) = remove_finalizer(&api, &p.name_any()).await
            {
                return (p, Err(e));
            }
            (
                p,
                api.delete(&p.name_any(), &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )
        }
    }))
    .await;
    let (mut ready, mut deleted, mut first) = (0, 0, None);
    for (pod, res) in results {
        match res {
            Ok(()) => {
                deleted += 1;
                if is_ready(pod) {
                    ready += 1;
                }
                ctx.recorder.event(
                    job,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", pod.name_any()),
                );
            }
            Err(e) => {
                ctx.expectations
                    .deletion_observed(key, uid, &pod.uid().unwrap_or_default());
                if is_not_found(&e) {
                    deleted += 1;
                    continue;
                }
                ctx.recorder.event(
                    job,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {}", error_message(&e)),
                );
                first.get_or_insert(Error::Pods(error_message(&e)));
            }
        }
    }
    (ready, deleted, first)
}

/// Creates or deletes pods towards the wanted number of active pods.
async fn manage_job(job: &Job, st: &mut State, ctx: &Ctx, now: Timestamp) -> Result<(), Error> {
    let js = spec(job);
    if is_suspended(job) {
        let victims = pods_for_removal(job, &st.active_pods, st.active_pods.len(), now);
        ctx.expectations
            .expect_deletions(&st.key, &st.uid, victims.iter().filter_map(|p| p.uid()));
        let (ready, removed, err) = delete_pods(job, &victims, true, &st.key, &st.uid, ctx).await;
        st.active -= removed;
        st.terminating += removed;
        st.ready -= ready;
        return err.map_or(Ok(()), Err);
    }
    let want = want_active(job, st.active, st.succeeded);
    let surplus = usize::try_from(st.active - want).unwrap_or(0);
    let mut victims = pods_for_removal(job, &st.active_pods, surplus, now);
    victims.truncate(MAX_PER_SYNC);
    if !victims.is_empty() {
        tracing::info!(job = %st.key, deleting = victims.len(), want, "too many pods running");
        ctx.expectations
            .expect_deletions(&st.key, &st.uid, victims.iter().filter_map(|p| p.uid()));
        let (ready, removed, err) = delete_pods(job, &victims, true, &st.key, &st.uid, ctx).await;
        st.active -= removed;
        st.terminating += removed;
        st.ready -= ready;
        return err.map_or(Ok(()), Err);
    }
    let waiting = if only_replace_failed(job) {
        st.terminating
    } else {
        0
    };
    let mut diff = usize::try_from(want - waiting - st.active).unwrap_or(0);
    if diff == 0 {
        return Ok(());
    }
    let wait = backoff::remaining(&st.backoff, now);
    if !wait.is_zero() {
        tracing::debug!(job = %st.key, ?wait, "pod creation backing off");
        st.requeue_in(wait);
        return Ok(());
    }
    diff = diff.min(MAX_PER_SYNC);
    let mut slots: Vec<Option<i32>> = vec![None; diff];
    if is_indexed(job) {
        let mut busy: BTreeSet<i32> = st
            .active_pods
            .iter()
            .filter_map(|p| completion_index(p))
            .collect();
        if only_replace_failed(job) {
            busy.extend(
                st.pods
                    .iter()
                    .filter(|p| is_terminating(p))
                    .filter_map(|p| completion_index(p)),
            );
        }
        let pending = indexes::first_pending(
            &st.succeeded_indexes,
            &busy,
            diff,
            js.completions.unwrap_or(0),
        );
        slots = pending.into_iter().map(Some).collect();
        diff = slots.len();
        if diff == 0 {
            return Ok(());
        }
    }
    tracing::info!(job = %st.key, creating = diff, want, "too few pods running");
    ctx.expectations.expect_creations(&st.key, &st.uid, diff);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let mut created = 0usize;
    let mut attempted = 0usize;
    let mut batch = 1usize;
    let mut first_err = None;
    while attempted < diff {
        let this: Vec<Option<i32>> = slots[attempted..(attempted + batch).min(diff)].to_vec();
        attempted += this.len();
        let results = future::join_all(this.into_iter().map(|ix| {
            let api = api.clone();
            let pod = new_pod(job, ix);
            async move { api.create(&PostParams::default(), &pod).await }
        }))
        .await;
        for r in results {
            match r {
                Ok(p) => {
                    created += 1;
                    ctx.recorder.event(
                        job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                }
                Err(e) => {
                    ctx.expectations.creation_observed(&st.key, &st.uid);
                    if namespace_terminating(&e) {
                        continue;
                    }
                    ctx.recorder.event(
                        job,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {}", error_message(&e)),
                    );
                    first_err.get_or_insert(Error::Pods(error_message(&e)));
                }
            }
        }
        if first_err.is_some() {
            break;
        }
        batch *= 2;
    }
    // Creates never attempted will never be observed.
    for _ in attempted..diff {
        ctx.expectations.creation_observed(&st.key, &st.uid);
    }
    st.active += count(0..created);
    first_err.map_or(Ok(()), Err)
}

/// Counts finished pods through `uncountedTerminatedPods`, removes their finalizers,
/// writes the interim and final conditions, and records the outcome.
async fn track_status(
    job: &mut Job,
    st: &mut State,
    mut needs_flush: bool,
    ctx: &Ctx,
    now: Timestamp,
) -> Result<(), Error> {
    let mut with_finalizer: HashSet<String> = st
        .pods
        .iter()
        .filter(|p| has_finalizer(p))
        .filter_map(|p| p.uid())
        .filter(|u| !st.in_flight.contains(u))
        .collect();
    let status = job.status.get_or_insert_with(JobStatus::default);
    if clean_uncounted(status, &with_finalizer) {
        needs_flush = true;
    }
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let acc = account(
        job,
        &st.pods,
        &st.in_flight,
        &uncounted,
        &st.prev_indexes,
        st.finished.as_ref(),
    );
    let status = job.status.get_or_insert_with(JobStatus::default);
    let u = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    if !acc.succeeded.is_empty() {
        u.succeeded
            .get_or_insert_with(Vec::new)
            .extend(acc.succeeded.iter().cloned());
        needs_flush = true;
    }
    if !acc.failed.is_empty() {
        u.failed
            .get_or_insert_with(Vec::new)
            .extend(acc.failed.iter().cloned());
        needs_flush = true;
    }
    if is_indexed(job) {
        let mut done = st.prev_indexes.clone();
        done.0.extend(acc.indexes.iter().copied());
        let text = done.to_string();
        let status = job.status.get_or_insert_with(JobStatus::default);
        if status.completed_indexes.as_deref().unwrap_or("") != text {
            needs_flush = true;
        }
        status.succeeded = (done.total() != 0).then_some(done.total());
        status.completed_indexes = Some(text);
    }
    let status = job.status.get_or_insert_with(JobStatus::default);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(f) = st.finished.clone() {
        if f.type_ == "FailureTarget" {
            conds.push(f.clone());
            needs_flush = true;
            st.finished = Some(new_condition(
                "Failed",
                "True",
                f.reason.as_deref().unwrap_or(""),
                f.message.as_deref().unwrap_or(""),
                now,
            ));
        } else if f.type_ == "SuccessCriteriaMet" {
            if !conds
                .iter()
                .any(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True")
            {
                conds.push(f.clone());
                needs_flush = true;
            }
            st.finished = Some(new_condition(
                "Complete",
                "True",
                f.reason.as_deref().unwrap_or(""),
                f.message.as_deref().unwrap_or(""),
                now,
            ));
        }
    }

    // 1. Record the uncounted pods before touching finalizers.
    if needs_flush {
        write_status(job, ctx).await?;
        ctx.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(st.key.clone(), st.backoff);
        needs_flush = false;
    }
    // 2. Release the pods.
    let mut rm_err = None;
    if !acc.remove_finalizer.is_empty() {
        let ns = job.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for uid in &acc.remove_finalizer {
            ctx.removals.expect(&st.key, uid);
        }
        let victims: Vec<&Arc<Pod>> = st
            .pods
            .iter()
            .filter(|p| p.uid().is_some_and(|u| acc.remove_finalizer.contains(&u)))
            .collect();
        let results = future::join_all(victims.iter().map(|p| {
            let api = api.clone();
            async move {
                (
                    p.uid().unwrap_or_default(),
                    remove_finalizer(&api, &p.name_any()).await,
                )
            }
        }))
        .await;
        for (uid, res) in results {
            match res {
                Ok(()) => {
                    with_finalizer.remove(&uid);
                }
                Err(e) => {
                    ctx.removals.observed(&st.key, &uid);
                    rm_err.get_or_insert(Error::Pods(format!(
                        "removing tracking finalizer: {}",
                        error_message(&e)
                    )));
                }
            }
        }
    }
    // 3. Count the released pods.
    let status = job.status.get_or_insert_with(JobStatus::default);
    if clean_uncounted(status, &with_finalizer) {
        needs_flush = true;
    }
    if let Some(e) = rm_err {
        if needs_flush {
            write_status(job, ctx).await?;
        }
        return Err(e);
    }
    // 4. The final condition, once nothing is left uncounted or terminating.
    let status = job.status.get_or_insert_with(JobStatus::default);
    let uncounted_left = status.uncounted_terminated_pods.as_ref().is_some_and(|u| {
        u.succeeded.iter().flatten().count() + u.failed.iter().flatten().count() > 0
    });
    let mut finished_now = None;
    if let Some(f) = st.finished.clone()
        && !acc.reached_max
        && !uncounted_left
        && st.terminating == 0
    {
        let conds = status.conditions.get_or_insert_with(Vec::new);
        ensure_condition(
            conds,
            &f.type_,
            "True",
            f.reason.as_deref().unwrap_or(""),
            f.message.as_deref().unwrap_or(""),
            now,
        );
        if f.type_ == "Complete" {
            status.completion_time = Some(now_seconds(now));
        }
        needs_flush = true;
        finished_now = Some(f);
    } else if st.finished.is_some() && st.terminating > 0 {
        // Pods are still going away; their updates will sync the Job again.
        tracing::debug!(job = %st.key, terminating = st.terminating, "waiting for pods to terminate");
    }
    if needs_flush {
        write_status(job, ctx).await?;
        if let Some(f) = finished_now {
            record_finished(job, &f, ctx);
        }
    }
    Ok(())
}

fn record_finished(job: &Job, f: &JobCondition, ctx: &Ctx) {
    if f.type_ == "Complete" {
        let s = spec(job);
        let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
        if s.completions.is_some_and(|c| succeeded > c) {
            ctx.recorder.event(
                job,
                EventType::Warning,
                "TooManySucceededPods",
                "Too many succeeded pods running after completion count reached".into(),
            );
        }
        ctx.recorder
            .event(job, EventType::Normal, "Completed", "Job completed".into());
        tracing::info!(job = %job.name_any(), ns = %job.namespace().unwrap_or_default(), "job completed");
    } else {
        let reason = f.reason.clone().unwrap_or_default();
        ctx.recorder.event(
            job,
            EventType::Warning,
            &reason,
            f.message.clone().unwrap_or_default(),
        );
        tracing::info!(job = %job.name_any(), ns = %job.namespace().unwrap_or_default(), %reason, "job failed");
    }
}

/// PUTs the status (with the Job's resourceVersion, so a stale view conflicts) and keeps
/// the new resourceVersion for the next write.
async fn write_status(job: &mut Job, ctx: &Ctx) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    job.metadata.managed_fields = None;
    let updated = api
        .replace_status(&job.name_any(), &PostParams::default(), &*job)
        .await?;
    job.metadata.resource_version = updated.metadata.resource_version;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        let mut spec = spec;
        spec["template"] = json!({"metadata": {"labels": {"a": "b"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}});
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "ns", "uid": "job-uid"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn pod(
        name: &str,
        phase: &str,
        index: Option<i32>,
        finalizer: bool,
        deleting: bool,
    ) -> Arc<Pod> {
        let mut annotations = serde_json::Map::new();
        if let Some(i) = index {
            annotations.insert(COMPLETION_INDEX.into(), json!(i.to_string()));
        }
        let finalizers: Vec<&str> = if finalizer {
            vec![TRACKING_FINALIZER]
        } else {
            vec![]
        };
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "annotations": annotations, "finalizers": finalizers,
                "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(Time("2025-01-01T00:01:00Z".parse().unwrap()));
        }
        Arc::new(p)
    }

    #[test]
    fn wanted_active_pods() {
        // (spec, active, succeeded, want)
        let cases = [
            (json!({"completions": 5, "parallelism": 2}), 0, 0, 2),
            (json!({"completions": 5, "parallelism": 2}), 2, 4, 1),
            (json!({"completions": 5, "parallelism": 2}), 0, 5, 0),
            (json!({"completions": 5, "parallelism": 0}), 2, 0, 0),
            (json!({"parallelism": 3}), 0, 0, 3),
            (json!({"parallelism": 3}), 2, 1, 2),
            (json!({"completions": 3, "parallelism": 10}), 0, 1, 2),
        ];
        for (spec, active, succeeded, want) in cases {
            assert_eq!(
                want_active(&job(spec.clone(), json!({})), active, succeeded),
                want,
                "{spec}"
            );
        }
    }

    #[test]
    fn accounting_counts_each_pod_once() {
        let j = job(json!({"completions": 5, "parallelism": 2}), json!({}));
        let pods = vec![
            pod("ok", "Succeeded", None, true, false),
            pod("bad", "Failed", None, true, false),
            pod("running", "Running", None, true, false),
            pod("gone", "Running", None, true, true),
            pod("counted", "Succeeded", None, false, false),
            pod("uncounted", "Succeeded", None, true, false),
            pod("inflight", "Failed", None, true, false),
        ];
        let uncounted = UncountedTerminatedPods {
            succeeded: Some(vec!["uid-uncounted".into()]),
            failed: None,
        };
        let in_flight: HashSet<String> = ["uid-inflight".to_string()].into();
        let acc = account(&j, &pods, &in_flight, &uncounted, &Indexes::default(), None);
        assert_eq!(acc.succeeded, ["uid-ok"]);
        assert_eq!(
            acc.failed,
            ["uid-bad", "uid-gone"],
            "a deleted running pod failed"
        );
        assert_eq!(
            acc.remove_finalizer,
            ["uid-ok", "uid-bad", "uid-gone", "uid-uncounted"]
        );
        assert!(!acc.reached_max);
        // With podReplacementPolicy Failed a terminating pod is not failed yet.
        let j2 = job(
            json!({"completions": 5, "podReplacementPolicy": "Failed"}),
            json!({}),
        );
        let acc = account(
            &j2,
            &pods,
            &in_flight,
            &uncounted,
            &Indexes::default(),
            None,
        );
        assert_eq!(acc.failed, ["uid-bad"]);
        // A failing Job releases (and counts as failed) every tracked pod.
        let failing = new_condition(
            "Failed",
            "True",
            "BackoffLimitExceeded",
            "",
            Timestamp::now(),
        );
        let acc = account(
            &j,
            &pods,
            &in_flight,
            &uncounted,
            &Indexes::default(),
            Some(&failing),
        );
        assert_eq!(acc.failed, ["uid-bad", "uid-running", "uid-gone"]);

        // Moving released pods into the counters.
        let mut status = JobStatus {
            succeeded: Some(2),
            uncounted_terminated_pods: Some(UncountedTerminatedPods {
                succeeded: Some(vec!["a".into(), "b".into()]),
                failed: Some(vec!["c".into()]),
            }),
            ..JobStatus::default()
        };
        let with: HashSet<String> = ["b".to_string()].into();
        assert!(clean_uncounted(&mut status, &with));
        assert_eq!((status.succeeded, status.failed), (Some(3), Some(1)));
        let u = status.uncounted_terminated_pods.as_ref().unwrap();
        assert_eq!(u.succeeded.as_deref(), Some(&["b".to_string()][..]));
        assert_eq!(u.failed, None);
        assert!(!clean_uncounted(&mut status, &with), "nothing more to move");
    }

    #[test]
    fn indexed_accounting_and_removal() {
        let j = job(
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
            json!({}),
        );
        let pods = vec![
            pod("a", "Succeeded", Some(1), true, false),
            pod("b", "Succeeded", Some(1), true, false),
            pod("c", "Succeeded", Some(7), true, false),
            pod("d", "Succeeded", Some(0), true, false),
        ];
        let prev = Indexes::parse("0", 3);
        let acc = account(
            &j,
            &pods,
            &HashSet::new(),
            &UncountedTerminatedPods::default(),
            &prev,
            None,
        );
        assert_eq!(
            acc.indexes,
            [1],
            "index 0 was already counted, 7 is out of range"
        );
        assert!(acc.succeeded.is_empty());
        assert_eq!(acc.remove_finalizer.len(), 4);

        let now: Timestamp = "2025-01-01T01:00:00Z".parse().unwrap();
        let active = vec![
            pod("x", "Running", Some(0), true, false),
            pod("y", "Running", Some(0), true, false),
            pod("z", "Running", Some(5), true, false),
            pod("w", "Running", Some(2), true, false),
        ];
        let rm = pods_for_removal(&j, &active, 0, now);
        let mut names: Vec<String> = rm.iter().map(|p| p.name_any()).collect();
        names.sort();
        assert_eq!(
            names.len(),
            2,
            "one duplicate of index 0 and the out-of-range pod"
        );
        assert!(names.contains(&"z".to_string()));
    }

    #[test]
    fn indexed_pods_from_the_template() {
        let j = job(
            json!({"completions": 3, "completionMode": "Indexed"}),
            json!({}),
        );
        let p = new_pod(&j, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(
            p.annotations().get(COMPLETION_INDEX).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            p.labels().get(COMPLETION_INDEX).map(String::as_str),
            Some("2")
        );
        assert_eq!(p.labels().get("a").map(String::as_str), Some("b"));
        assert!(has_finalizer(&p));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert_eq!(env[0].name, INDEX_ENV);
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        let plain = new_pod(&job(json!({"completions": 3}), json!({})), None);
        assert_eq!(plain.metadata.generate_name.as_deref(), Some("pi-"));
        assert!(plain.spec.unwrap().hostname.is_none());
        assert_eq!(controller_of(&plain.metadata).unwrap().kind, "Job");
    }

    #[test]
    fn conditions_and_limits() {
        let now = Timestamp::now();
        let mut conds = Vec::new();
        assert!(!ensure_condition(
            &mut conds,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
            now
        ));
        assert!(conds.is_empty(), "a False condition is not added");
        assert!(ensure_condition(
            &mut conds,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now
        ));
        assert!(!ensure_condition(
            &mut conds,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now
        ));
        assert!(ensure_condition(
            &mut conds,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
            now
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, "False");

        let on_failure = |limit: i32| -> Job {
            let mut j = job(json!({"backoffLimit": limit}), json!({}));
            j.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .restart_policy = Some("OnFailure".into());
            j
        };
        let restarted: Arc<Pod> = Arc::new(serde_json::from_value(json!({"metadata": {"name": "r"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 2}]}})).unwrap());
        assert!(past_backoff_limit_on_failure(
            &on_failure(2),
            std::slice::from_ref(&restarted)
        ));
        assert!(!past_backoff_limit_on_failure(
            &on_failure(3),
            std::slice::from_ref(&restarted)
        ));
        assert!(past_backoff_limit_on_failure(
            &on_failure(0),
            std::slice::from_ref(&restarted)
        ));
        assert!(!past_backoff_limit_on_failure(
            &job(json!({"backoffLimit": 0}), json!({})),
            &[restarted]
        ));
    }
}
