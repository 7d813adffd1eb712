//! The StatefulSet controller, with the semantics of upstream's `pkg/controller/statefulset`:
//! pods with stable identities and stable storage.
//!
//! - **Identity.** Pod `<set>-<ordinal>` for ordinals `[start, start+replicas)`
//!   (`spec.ordinals.start`, default 0), labelled `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash`, with `hostname` = its
//!   name and `subdomain` = `serviceName`.
//! - **Storage.** Each `volumeClaimTemplate` becomes PVC `<claim>-<set>-<ordinal>`
//!   (labelled with the selector's `matchLabels`), created before the pod and kept when
//!   the pod goes; the pod's volume of that name points at it.
//!   `persistentVolumeClaimRetentionPolicy` is carried out through owner references, as
//!   upstream does: `whenDeleted: Delete` makes the set the claims' controller (the
//!   garbage collector removes them with the set), `whenScaled: Delete` makes a condemned
//!   pod the controller of its claims just before it is deleted.
//! - **Ordering** ([`plan`]). `OrderedReady` creates one pod at a time in ordinal order,
//!   each Running and Ready (and available after `minReadySeconds`) before the next, and
//!   deletes surplus pods one at a time from the highest ordinal, only while the others are
//!   healthy; `Parallel` creates and deletes without waiting. Failed pods are deleted and
//!   recreated with the same name.
//! - **Updates.** Templates are recorded as ControllerRevisions ([`super::history`]);
//!   `status.currentRevision`/`updateRevision`. `RollingUpdate` replaces pods at or above
//!   `partition` from the highest ordinal down, at most `maxUnavailable` (default 1)
//!   unhealthy at a time; pods below the partition are recreated at the current revision.
//!   `OnDelete` leaves existing pods alone.
//! - **Status** through `/status`: replicas, ready/available/current/updated counts,
//!   revisions (current becomes update once every replica is updated and ready),
//!   `observedGeneration`, `collisionCount`. Events `SuccessfulCreate`/`FailedCreate`/
//!   `SuccessfulDelete`/`FailedDelete` as `statefulset-controller` with upstream's wording.
//!
//! Depends on: `api` (label selectors), [`super::history`], the ReplicaSet controller's
//! shared helpers, kube-rs. Never the store or the API server.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::daemonset::scaled_value;
use super::history::{self, CONTROLLER_REVISION_HASH};
use super::owners::{claim_pods, label_selector, owners_of};
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::ownership::controller_ref;
use super::replicaset::pods::{available_at, is_available, is_ready, pod_from_template};
use super::replicaset::{error_message, is_not_found, labels_json};
use super::watch;
use crate::api::selector::LabelSelector;

const COMPONENT: &str = "statefulset-controller";
/// The label with a pod's own name.
pub(crate) const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a pod's ordinal.
pub(crate) const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the caches are not available")]
    CacheGone,
    #[error("{0}")]
    Failed(String),
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    revisions: Store<ControllerRevision>,
    recorder: Recorder,
}

/// Runs the StatefulSet controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let cfg = watcher::Config::default;
    let (set_store, set_events) = watch::reflect_all::<StatefulSet>(&client, cfg());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, cfg());
    let (pvc_store, pvc_events) = watch::reflect_all::<PersistentVolumeClaim>(&client, cfg());
    let (rev_store, rev_events) = watch::reflect_all::<ControllerRevision>(&client, cfg());
    let (for_pods, for_revs) = (set_store.clone(), set_store.clone());
    let queue = stream::select(
        stream::select(
            trigger_self(set_events.applied_objects(), ()),
            trigger_with(pod_events.touched_objects(), move |pod: Pod| {
                owners_of(&for_pods, &pod, selector)
            }),
        ),
        stream::select(
            trigger_with(
                rev_events.touched_objects(),
                move |rev: ControllerRevision| owners_of(&for_revs, &rev, selector),
            ),
            trigger_with(pvc_events.touched_objects(), |_: PersistentVolumeClaim| {
                Vec::<ObjectRef<StatefulSet>>::new()
            }),
        ),
    );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        pods: pod_store,
        claims: pvc_store,
        revisions: rev_store,
    });
    watch::run_applier(
        "statefulset",
        reconcile,
        error_policy,
        ctx,
        set_store,
        queue,
        controller::Config::default(),
        shutdown,
    )
    .await;
}

fn selector(set: &StatefulSet) -> Result<LabelSelector, String> {
    label_selector(set.spec.as_ref().map(|s| &s.selector))
}

fn error_policy(set: Arc<StatefulSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    let conflict = matches!(err, Error::Kube(kube::Error::Api(s)) if s.is_conflict());
    if conflict {
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(%err, sts = %set.name_any(), ns = ?set.namespace(), "statefulset sync failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    for ready in [
        ctx.pods.wait_until_ready().await,
        ctx.revisions.wait_until_ready().await,
    ] {
        ready.map_err(|_| Error::CacheGone)?;
    }
    ctx.claims
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    sync(&set, &ctx).await
}

// ---------------------------------------------------------------------------------------
// Pod facts and the ordering decisions.

fn spec_of(set: &StatefulSet) -> StatefulSetSpec {
    set.spec.clone().unwrap_or_default()
}

/// `<set>-<ordinal>`.
pub(crate) fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The ordinal of a pod of `set` (upstream's `getParentNameAndOrdinal`).
pub(crate) fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

fn healthy(pod: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    running_and_ready(pod) && !terminating(pod) && is_available(pod, min_ready, now)
}

fn revision_of(pod: &Pod) -> &str {
    pod.labels()
        .get(CONTROLLER_REVISION_HASH)
        .map_or("", String::as_str)
}

/// The rules one sync follows.
#[derive(Debug, Clone)]
struct Rules {
    /// `OrderedReady` (not `Parallel`).
    monotonic: bool,
    /// `RollingUpdate` (not `OnDelete`).
    rolling: bool,
    /// Indexes below this keep the current revision.
    partition: usize,
    max_unavailable: usize,
    min_ready: i32,
    /// The update revision's hash label value.
    update_revision: String,
}

/// One action of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Create the pod (and its claims) with this ordinal.
    Create(i32),
    /// Delete this pod (name, uid).
    Delete(String, String),
}

fn delete_step(p: &Pod) -> Step {
    Step::Delete(p.name_any(), p.uid().unwrap_or_default())
}

/// What to do now (upstream's `updateStatefulSet`): `replicas` are the slots
/// `[start, start+replicas)` in ordinal order with their pods, `condemned` the pods beyond,
/// highest ordinal first.
fn plan(
    rules: &Rules,
    replicas: &[(i32, Option<Arc<Pod>>)],
    condemned: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let ok = |p: &Pod| healthy(p, rules.min_ready, now);
    for (ordinal, pod) in replicas {
        match pod {
            None => {
                steps.push(Step::Create(*ordinal));
                if rules.monotonic {
                    return steps;
                }
            }
            Some(p) if terminating(p) => {
                if rules.monotonic {
                    return steps;
                }
            }
            Some(p) if matches!(phase(p), "Failed" | "Succeeded") => {
                steps.push(delete_step(p));
                if rules.monotonic {
                    return steps;
                }
            }
            Some(p) => {
                if rules.monotonic && !ok(p) {
                    return steps;
                }
            }
        }
    }
    let first_unhealthy = condemned.iter().find(|p| !ok(p)).map(|p| p.uid());
    for p in condemned {
        if terminating(p) {
            if rules.monotonic {
                return steps;
            }
            continue;
        }
        if rules.monotonic && !ok(p) && p.uid() != first_unhealthy.clone().flatten() {
            return steps;
        }
        steps.push(delete_step(p));
        if rules.monotonic {
            return steps;
        }
    }
    if !rules.rolling {
        return steps;
    }
    let in_range = || {
        replicas
            .iter()
            .skip(rules.partition)
            .filter_map(|(_, p)| p.as_ref())
    };
    let mut unavailable =
        replicas.len().saturating_sub(rules.partition) - in_range().filter(|p| ok(p)).count();
    for p in in_range().collect::<Vec<_>>().into_iter().rev() {
        if revision_of(p) == rules.update_revision || terminating(p) {
            continue;
        }
        if ok(p) {
            if unavailable >= rules.max_unavailable {
                break;
            }
            unavailable += 1;
        }
        steps.push(delete_step(p));
    }
    steps
}

/// The owner references a claim should have under the retention policy (upstream's
/// `updateClaimOwnerRefForSetAndPod`): references to the set and the pod are replaced.
fn claim_owner_refs(
    current: &[OwnerReference],
    set_ref: &OwnerReference,
    pod_ref: Option<&OwnerReference>,
    when_deleted: &str,
    when_scaled: &str,
    condemned: bool,
) -> Vec<OwnerReference> {
    let mut refs: Vec<OwnerReference> = current
        .iter()
        .filter(|r| {
            !(r.uid == set_ref.uid
                || (r.kind == set_ref.kind && r.name == set_ref.name)
                || pod_ref.is_some_and(|p| r.uid == p.uid || (r.kind == "Pod" && r.name == p.name)))
        })
        .cloned()
        .collect();
    let scaled_delete = when_scaled == "Delete" && condemned;
    if scaled_delete {
        if let Some(p) = pod_ref {
            refs.push(p.clone());
        }
    } else if when_deleted == "Delete" {
        refs.push(set_ref.clone());
    }
    refs
}

// ---------------------------------------------------------------------------------------
// Sync.

/// The current and update revisions (creating or renumbering as needed), every revision
/// of the set, and the collision count.
async fn revisions(
    set: &StatefulSet,
    ctx: &Ctx,
) -> Result<
    (
        ControllerRevision,
        ControllerRevision,
        Vec<Arc<ControllerRevision>>,
        i32,
    ),
    Error,
> {
    let ns = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let spec = spec_of(set);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let revs = history::owned(&ctx.revisions.state(), &ns, &uid);
    let data = history::template_patch(&spec.template);
    let mut collision = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let next = history::next_revision(&revs);
    let equal: Vec<&Arc<ControllerRevision>> = revs
        .iter()
        .filter(|r| {
            r.data
                .as_ref()
                .is_some_and(|d| history::same_data(&d.0, &data))
        })
        .collect();
    let update = match equal.last() {
        Some(r) if r.revision < next - 1 => history::set_revision_number(&api, r, next).await?,
        Some(r) => ControllerRevision::clone(r),
        None => {
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let rev =
                history::new_revision(&set.metadata, controller_ref(set), &labels, data, next);
            history::create(&api, &set.name_any(), rev, &mut collision).await?
        }
    };
    let current_name = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_default();
    let current = revs
        .iter()
        .find(|r| r.name_any() == current_name)
        .map(|r| ControllerRevision::clone(r))
        .unwrap_or_else(|| update.clone());
    Ok((current, update, revs, collision))
}

async fn sync(set: &StatefulSet, ctx: &Ctx) -> Result<Action, Error> {
    let ns = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let name = set.name_any();
    let spec = spec_of(set);
    let selector = match selector(set) {
        Ok(s) if !s.is_empty() => s,
        _ => {
            tracing::warn!(sts = %name, ns = %ns, "invalid or empty selector; not syncing");
            return Ok(Action::await_change());
        }
    };
    let (current, update, revs, collision) = revisions(set, ctx).await?;
    // Only pods named like the set's are its to adopt (upstream's `isMemberOf`).
    let pods = claim_pods(&ctx.client, set, &ctx.pods, |p| {
        selector.matches(Some(&labels_json(p.labels())))
            && ordinal_of(&name, &p.name_any()).is_some()
    })
    .await?;
    let replicas = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let mut slots: Vec<(i32, Option<Arc<Pod>>)> = (0..replicas)
        .map(|i| (start + i32::try_from(i).unwrap_or(i32::MAX), None))
        .collect();
    let mut condemned: Vec<Arc<Pod>> = Vec::new();
    for p in &pods {
        let Some(ord) = ordinal_of(&name, &p.name_any()) else {
            continue;
        };
        match usize::try_from(ord - start).ok().filter(|i| *i < replicas) {
            Some(i) => slots[i].1 = Some(p.clone()),
            None => condemned.push(p.clone()),
        }
    }
    condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(&name, &p.name_any())));

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy
        .type_
        .as_deref()
        .is_none_or(|t| t == "RollingUpdate");
    let ru = strategy.rolling_update.clone().unwrap_or_default();
    let partition = usize::try_from(ru.partition.unwrap_or(0).max(0)).unwrap_or(0);
    let total = i32::try_from(replicas).unwrap_or(i32::MAX);
    let max_unavailable = scaled_value(
        &ru.max_unavailable.unwrap_or(IntOrString::Int(1)),
        total,
        false,
    )
    .unwrap_or(1)
    .max(1);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let rules = Rules {
        monotonic: spec.pod_management_policy.as_deref() != Some("Parallel"),
        rolling,
        partition,
        max_unavailable: usize::try_from(max_unavailable).unwrap_or(1),
        min_ready,
        update_revision: history::hash_of(&update),
    };
    let now = jiff::Timestamp::now();
    let steps = if set.meta().deletion_timestamp.is_some() {
        Vec::new()
    } else {
        plan(&rules, &slots, &condemned, now)
    };

    let mut first_err = None;
    // Claims of existing pods follow the retention policy; missing ones are recreated.
    for (ordinal, pod) in &slots {
        if let Some(p) = pod
            && !terminating(p)
            && let Err(e) = ensure_claims(set, *ordinal, Some(p), false, ctx).await
        {
            first_err.get_or_insert(e);
        }
    }
    for step in &steps {
        let res = match step {
            Step::Create(ordinal) => {
                let use_current =
                    rolling && usize::try_from(ordinal - start).unwrap_or(0) < partition;
                let (template, revision) = if use_current {
                    (
                        history::template_of(&current).unwrap_or_else(|| spec.template.clone()),
                        &current,
                    )
                } else {
                    (spec.template.clone(), &update)
                };
                create_pod(set, *ordinal, &template, &history::hash_of(revision), ctx).await
            }
            Step::Delete(pod, pod_uid) => {
                if let Some(p) = condemned.iter().find(|p| p.name_any() == *pod)
                    && let Some(ord) = ordinal_of(&name, pod)
                    && let Err(e) = ensure_claims(set, ord, Some(p), true, ctx).await
                {
                    Err(e)
                } else {
                    delete_pod(set, pod, pod_uid, ctx).await
                }
            }
        };
        if let Err(e) = res {
            first_err.get_or_insert(e);
            break;
        }
    }

    // Status.
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: Some(collision),
        current_revision: Some(current.name_any()),
        update_revision: Some(update.name_any()),
        ..StatefulSetStatus::default()
    };
    let (mut ready, mut available, mut cur, mut upd) = (0, 0, 0, 0);
    let current_hash = history::hash_of(&current);
    for p in &pods {
        if ordinal_of(&name, &p.name_any()).is_none() {
            continue;
        }
        status.replicas += 1;
        if running_and_ready(p) {
            ready += 1;
            if is_available(p, min_ready, now) {
                available += 1;
            }
        }
        if !terminating(p) {
            if revision_of(p) == current_hash {
                cur += 1;
            }
            if revision_of(p) == rules.update_revision {
                upd += 1;
            }
        }
    }
    let desired = i32::try_from(replicas).unwrap_or(i32::MAX);
    if rolling && upd == desired && ready == desired && status.replicas == desired {
        cur = upd;
        status.current_revision = status.update_revision.clone();
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(cur);
    status.updated_replicas = Some(upd);
    update_status(set, status.clone(), ctx).await?;

    // History beyond the limit that no pod uses.
    let mut live: HashSet<String> = pods.iter().map(|p| revision_of(p).to_string()).collect();
    live.insert(current.name_any());
    live.insert(update.name_any());
    if let Some(c) = &status.current_revision {
        live.insert(c.clone());
    }
    let rev_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    for victim in history::to_prune(&revs, &live, spec.revision_history_limit.unwrap_or(10)) {
        if let Err(err) = rev_api.delete(&victim, &DeleteParams::default()).await
            && !is_not_found(&err)
        {
            tracing::debug!(%err, revision = %victim, "pruning revision");
        }
    }
    let _ = uid;
    if let Some(e) = first_err {
        return Err(e);
    }
    // Come back when a ready pod becomes available.
    if min_ready > 0
        && let Some(t) = pods
            .iter()
            .filter_map(|p| available_at(p, min_ready))
            .filter(|t| *t >= now)
            .min()
    {
        return Ok(Action::requeue(
            t.duration_since(now).unsigned_abs() + Duration::from_secs(1),
        ));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The claims of `ordinal`: template name → claim.
fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let spec = spec_of(set);
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let template_name = t.metadata.name.clone().unwrap_or_default();
            let mut claim = t;
            claim.metadata = ObjectMeta {
                name: Some(format!(
                    "{template_name}-{}",
                    pod_name(&set.name_any(), ordinal)
                )),
                namespace: set.namespace(),
                labels: Some({
                    let mut l = claim.metadata.labels.clone().unwrap_or_default();
                    l.extend(match_labels.clone());
                    l
                }),
                annotations: claim.metadata.annotations.clone(),
                ..ObjectMeta::default()
            };
            claim.status = None;
            (template_name, claim)
        })
        .collect()
}

fn pod_owner_ref(pod: &Pod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Creates the missing claims of `ordinal` and brings the owner references of existing
/// ones in line with the retention policy.
async fn ensure_claims(
    set: &StatefulSet,
    ordinal: i32,
    pod: Option<&Pod>,
    condemned: bool,
    ctx: &Ctx,
) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let policy = spec_of(set)
        .persistent_volume_claim_retention_policy
        .unwrap_or_default();
    let when_deleted = policy.when_deleted.as_deref().unwrap_or("Retain");
    let when_scaled = policy.when_scaled.as_deref().unwrap_or("Retain");
    let set_ref = controller_ref(set);
    let pod_ref = pod.map(pod_owner_ref);
    let podname = pod_name(&set.name_any(), ordinal);
    for (_, mut claim) in claims_for(set, ordinal) {
        let claim_name = claim.name_any();
        let existing = ctx.claims.get(&ObjectRef::new(&claim_name).within(&ns));
        match existing {
            Some(c) => {
                if c.metadata.deletion_timestamp.is_some() {
                    return Err(Error::Failed(format!(
                        "pvc {claim_name} is being deleted; waiting for it to go"
                    )));
                }
                let want = claim_owner_refs(
                    c.owner_references(),
                    &set_ref,
                    pod_ref.as_ref(),
                    when_deleted,
                    when_scaled,
                    condemned,
                );
                if want != c.owner_references() {
                    let patch = json!({"metadata": {"ownerReferences": want, "uid": c.uid()}});
                    api.patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
            }
            None => {
                claim.metadata.owner_references = Some(claim_owner_refs(
                    &[],
                    &set_ref,
                    pod_ref.as_ref(),
                    when_deleted,
                    when_scaled,
                    condemned,
                ))
                .filter(|r| !r.is_empty());
                match api.create(&PostParams::default(), &claim).await {
                    Ok(_) => ctx.recorder.event(
                        set,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!(
                            "create Claim {claim_name} Pod {podname} in StatefulSet {} success",
                            set.name_any()
                        ),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        let msg = error_message(&e);
                        ctx.recorder.event(
                            set,
                            EventType::Warning,
                            "FailedCreate",
                            format!(
                                "create Claim {claim_name} for Pod {podname} in StatefulSet {} failed error: {msg}",
                                set.name_any()
                            ),
                        );
                        return Err(e.into());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The pod of `ordinal` from `template` at revision `hash` (upstream's
/// `newStatefulSetPod`).
fn stateful_pod(set: &StatefulSet, ordinal: i32, template: &PodTemplateSpec, hash: &str) -> Pod {
    let spec = spec_of(set);
    let name = pod_name(&set.name_any(), ordinal);
    let mut pod = pod_from_template(
        template,
        &set.namespace().unwrap_or_default(),
        "",
        controller_ref(set),
    );
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash.to_string());
    let pod_spec = pod.spec.get_or_insert_with(PodSpec::default);
    pod_spec.hostname = Some(name);
    if let Some(svc) = spec.service_name.filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(svc);
    }
    let claims = claims_for(set, ordinal);
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| !claims.iter().any(|(t, _)| *t == v.name));
    for (template_name, claim) in claims {
        volumes.push(Volume {
            name: template_name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.name_any(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if volumes.is_empty() {
        pod_spec.volumes = None;
    }
    pod
}

async fn create_pod(
    set: &StatefulSet,
    ordinal: i32,
    template: &PodTemplateSpec,
    hash: &str,
    ctx: &Ctx,
) -> Result<(), Error> {
    ensure_claims(set, ordinal, None, false, ctx).await?;
    let pod = stateful_pod(set, ordinal, template, hash);
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            tracing::info!(sts = %set.name_any(), pod = %name, "created pod");
            ctx.recorder.event(
                set,
                EventType::Normal,
                "SuccessfulCreate",
                format!(
                    "create Pod {name} in StatefulSet {} successful",
                    set.name_any()
                ),
            );
            Ok(())
        }
        // The cache lags behind an earlier create.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => {
            ctx.recorder.event(
                set,
                EventType::Warning,
                "FailedCreate",
                format!(
                    "create Pod {name} in StatefulSet {} failed error: {}",
                    set.name_any(),
                    error_message(&e)
                ),
            );
            Err(e.into())
        }
    }
}

async fn delete_pod(set: &StatefulSet, name: &str, uid: &str, ctx: &Ctx) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    // The uid precondition keeps a stale cache from deleting a recreated namesake.
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            tracing::info!(sts = %set.name_any(), pod = %name, "deleted pod");
            ctx.recorder.event(
                set,
                EventType::Normal,
                "SuccessfulDelete",
                format!(
                    "delete Pod {name} in StatefulSet {} successful",
                    set.name_any()
                ),
            );
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => {
            ctx.recorder.event(
                set,
                EventType::Warning,
                "FailedDelete",
                format!(
                    "delete Pod {name} in StatefulSet {} failed error: {}",
                    set.name_any(),
                    error_message(&e)
                ),
            );
            Err(e.into())
        }
    }
}

async fn update_status(
    set: &StatefulSet,
    status: StatefulSetStatus,
    ctx: &Ctx,
) -> Result<(), Error> {
    let mut current = set.status.clone().unwrap_or_default();
    let conditions = current.conditions.take();
    let norm = |mut s: StatefulSetStatus| {
        for f in [
            &mut s.ready_replicas,
            &mut s.available_replicas,
            &mut s.current_replicas,
            &mut s.updated_replicas,
            &mut s.collision_count,
        ] {
            if *f == Some(0) {
                *f = None;
            }
        }
        s
    };
    if norm(current) == norm(status.clone()) {
        return Ok(());
    }
    let api: Api<StatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let mut updated = set.clone();
    updated.status = Some(StatefulSetStatus {
        conditions,
        ..status
    });
    updated.metadata.managed_fields = None;
    match api
        .replace_status(&set.name_any(), &PostParams::default(), &updated)
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

    fn pod(name: &str, rev: &str, state: &str) -> Arc<Pod> {
        let (phase, ready, deleting) = match state {
            "ready" => ("Running", true, false),
            "running" => ("Running", false, false),
            "pending" => ("Pending", false, false),
            "failed" => ("Failed", false, false),
            "terminating" => ("Running", true, true),
            other => panic!("{other}"),
        };
        let conds = if ready {
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}])
        } else {
            json!([])
        };
        let mut v = json!({"metadata": {"name": name, "uid": format!("u-{name}"), "labels": {CONTROLLER_REVISION_HASH: rev}},
            "spec": {"containers": []}, "status": {"phase": phase, "conditions": conds}});
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn rules(monotonic: bool, rolling: bool, partition: usize, max_unavailable: usize) -> Rules {
        Rules {
            monotonic,
            rolling,
            partition,
            max_unavailable,
            min_ready: 0,
            update_revision: "new".into(),
        }
    }

    fn slots(pods: Vec<Option<Arc<Pod>>>) -> Vec<(i32, Option<Arc<Pod>>)> {
        pods.into_iter()
            .enumerate()
            .map(|(i, p)| (i as i32, p))
            .collect()
    }

    fn show(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Create(o) => format!("create {o}"),
                Step::Delete(n, _) => format!("delete {n}"),
            })
            .collect()
    }

    #[test]
    fn ordering_decisions() {
        let now: jiff::Timestamp = "2025-01-02T00:00:00Z".parse().unwrap();
        let ready = |n: &str| Some(pod(n, "new", "ready"));
        // (name, rules, replica slots, condemned, expected steps)
        type Case = (
            &'static str,
            Rules,
            Vec<Option<Arc<Pod>>>,
            Vec<Arc<Pod>>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "ordered: first pod",
                rules(true, true, 0, 1),
                vec![None, None, None],
                vec![],
                vec!["create 0"],
            ),
            (
                "ordered: waits for web-0",
                rules(true, true, 0, 1),
                vec![Some(pod("w-0", "new", "running")), None, None],
                vec![],
                vec![],
            ),
            (
                "ordered: next once ready",
                rules(true, true, 0, 1),
                vec![ready("w-0"), None, None],
                vec![],
                vec!["create 1"],
            ),
            (
                "parallel: all at once",
                rules(false, true, 0, 1),
                vec![None, Some(pod("w-1", "new", "pending")), None],
                vec![],
                vec!["create 0", "create 2"],
            ),
            (
                "failed pod is replaced",
                rules(true, true, 0, 1),
                vec![Some(pod("w-0", "new", "failed")), None],
                vec![],
                vec!["delete w-0"],
            ),
            (
                "scale down: highest first, one at a time",
                rules(true, true, 0, 1),
                vec![ready("w-0")],
                vec![pod("w-2", "new", "ready"), pod("w-1", "new", "ready")],
                vec!["delete w-2"],
            ),
            (
                "scale down: waits for termination",
                rules(true, true, 0, 1),
                vec![ready("w-0")],
                vec![pod("w-2", "new", "terminating"), pod("w-1", "new", "ready")],
                vec![],
            ),
            (
                "scale down: not while a replica is unhealthy",
                rules(true, true, 0, 1),
                vec![Some(pod("w-0", "new", "running"))],
                vec![pod("w-1", "new", "ready")],
                vec![],
            ),
            (
                "scale down: unhealthy condemned pod goes first",
                rules(true, true, 0, 1),
                vec![ready("w-0")],
                vec![pod("w-2", "new", "running"), pod("w-1", "new", "ready")],
                vec!["delete w-2"],
            ),
            (
                "parallel scale down",
                rules(false, true, 0, 1),
                vec![ready("w-0")],
                vec![pod("w-2", "new", "ready"), pod("w-1", "new", "running")],
                vec!["delete w-2", "delete w-1"],
            ),
            (
                "rolling update: highest ordinal first",
                rules(true, true, 0, 1),
                vec![
                    Some(pod("w-0", "old", "ready")),
                    Some(pod("w-1", "old", "ready")),
                    Some(pod("w-2", "old", "ready")),
                ],
                vec![],
                vec!["delete w-2"],
            ),
            (
                "rolling update: waits for the updated pod",
                rules(true, true, 0, 1),
                vec![
                    Some(pod("w-0", "old", "ready")),
                    Some(pod("w-1", "old", "ready")),
                    Some(pod("w-2", "new", "running")),
                ],
                vec![],
                vec![],
            ),
            (
                "rolling update: partition",
                rules(true, true, 2, 1),
                vec![
                    Some(pod("w-0", "old", "ready")),
                    Some(pod("w-1", "old", "ready")),
                    Some(pod("w-2", "new", "ready")),
                ],
                vec![],
                vec![],
            ),
            (
                "rolling update: maxUnavailable 2",
                rules(false, true, 0, 2),
                vec![
                    Some(pod("w-0", "old", "ready")),
                    Some(pod("w-1", "old", "ready")),
                    Some(pod("w-2", "old", "ready")),
                ],
                vec![],
                vec!["delete w-2", "delete w-1"],
            ),
            (
                "OnDelete leaves old pods",
                rules(true, false, 0, 1),
                vec![Some(pod("w-0", "old", "ready"))],
                vec![],
                vec![],
            ),
        ];
        for (what, r, s, c, want) in cases {
            assert_eq!(show(&plan(&r, &slots(s), &c, now)), want, "{what}");
        }
    }

    #[test]
    fn names_and_ordinals() {
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web-1", "web-1-0"), Some(0));
        assert_eq!(pod_name("web", 3), "web-3");
    }

    #[test]
    fn stateful_pods_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "su"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "other", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]},
        }))
        .unwrap();
        let template = spec_of(&set).template;
        let p = stateful_pod(&set, 1, &template, "h1");
        assert_eq!(p.name_any(), "web-1");
        let l = p.labels();
        assert_eq!(l[POD_NAME_LABEL], "web-1");
        assert_eq!(l[POD_INDEX_LABEL], "1");
        assert_eq!(l[CONTROLLER_REVISION_HASH], "h1");
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 2);
        let data = vols.iter().find(|v| v.name == "data").unwrap();
        assert_eq!(
            data.persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-web-1"
        );
        let claims = claims_for(&set, 1);
        assert_eq!(claims[0].1.name_any(), "data-web-1");
        assert_eq!(claims[0].1.labels()["app"], "web");
    }

    #[test]
    fn retention_policy_owner_refs() {
        let set_ref = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "web".into(),
            uid: "su".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let pod_ref = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "web-1".into(),
            uid: "pu".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let other = OwnerReference {
            kind: "Thing".into(),
            name: "x".into(),
            uid: "xu".into(),
            ..set_ref.clone()
        };
        // (whenDeleted, whenScaled, condemned, expected owner uids)
        let cases = [
            ("Retain", "Retain", false, vec!["xu"]),
            ("Retain", "Retain", true, vec!["xu"]),
            ("Delete", "Retain", false, vec!["xu", "su"]),
            ("Delete", "Retain", true, vec!["xu", "su"]),
            ("Retain", "Delete", false, vec!["xu"]),
            ("Retain", "Delete", true, vec!["xu", "pu"]),
            ("Delete", "Delete", false, vec!["xu", "su"]),
            ("Delete", "Delete", true, vec!["xu", "pu"]),
        ];
        for (wd, ws, condemned, want) in cases {
            let refs = claim_owner_refs(
                &[other.clone(), set_ref.clone(), pod_ref.clone()],
                &set_ref,
                Some(&pod_ref),
                wd,
                ws,
                condemned,
            );
            let uids: Vec<&str> = refs.iter().map(|r| r.uid.as_str()).collect();
            assert_eq!(uids, want, "{wd}/{ws} condemned={condemned}");
        }
    }
}
