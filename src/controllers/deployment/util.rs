//! The arithmetic of Deployments (upstream's `deployment/util`), free of IO: surge and
//! unavailability fenceposts, the pod-template hash, revisions and the annotations that
//! carry them, ReplicaSet orderings and counts, proportional scaling, conditions and the
//! status a set of ReplicaSets implies.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::Value;

use crate::controllers::hash;
use crate::controllers::replicaset::REPLICA_FAILURE;

/// Label (and selector term) that keeps each template's ReplicaSet apart.
pub(crate) const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Revision of a ReplicaSet, and of its Deployment (the new ReplicaSet's).
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet that was rolled back to.
pub(crate) const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub(crate) const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas plus surge when the ReplicaSet was last scaled.
pub(crate) const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// Longest `revision-history` annotation kept.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

pub(crate) const PROGRESSING: &str = "Progressing";
pub(crate) const AVAILABLE: &str = "Available";
pub(crate) const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub(crate) const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub(crate) const RS_UPDATED: &str = "ReplicaSetUpdated";
pub(crate) const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub(crate) const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub(crate) const FAILED_RS_CREATE: &str = "FailedRSCreate";
pub(crate) const PAUSED: &str = "DeploymentPaused";
pub(crate) const RESUMED: &str = "DeploymentResumed";
pub(crate) const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub(crate) const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

// ---------------------------------------------------------------------------------------
// Spec accessors.

/// `spec.replicas` (default 1).
pub(crate) fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// A ReplicaSet's `spec.replicas` (default 1).
pub(crate) fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub(crate) fn min_ready_seconds(d: &Deployment) -> i32 {
    d.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

pub(crate) fn paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

pub(crate) fn is_recreate(d: &Deployment) -> bool {
    strategy_type(d) == "Recreate"
}

fn strategy_type(d: &Deployment) -> &str {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

fn is_rolling(d: &Deployment) -> bool {
    strategy_type(d) == "RollingUpdate"
}

/// A progress deadline is set (and is not the "never" value).
pub(crate) fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// A ReplicaSet's `status.availableReplicas`.
pub(crate) fn rs_available(rs: &ReplicaSet) -> i32 {
    status_of(rs).2
}

// ---------------------------------------------------------------------------------------
// Surge and unavailability.

/// An int or a percentage of `total` (percentages round up or down as asked).
pub(crate) use crate::controllers::daemonset::scaled_value;

fn rolling_params(d: &Deployment) -> (IntOrString, IntOrString) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    (
        ru.and_then(|r| r.max_surge.clone())
            .unwrap_or(IntOrString::Int(0)),
        ru.and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::Int(0)),
    )
}

/// Surge (rounded up) and unavailability (rounded down) for `desired` replicas; both
/// zero would stall a rollout, so unavailability becomes 1 then.
pub(crate) fn resolve_fenceposts(
    max_surge: &IntOrString,
    max_unavailable: &IntOrString,
    desired: i32,
) -> Result<(i32, i32), String> {
    let surge = scaled_value(max_surge, desired, true)?;
    let mut unavailable = scaled_value(max_unavailable, desired, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// How many pods a rolling update may run above `spec.replicas` (0 for Recreate).
pub(crate) fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    let (surge, unavailable) = rolling_params(d);
    resolve_fenceposts(&surge, &unavailable, replicas(d)).map_or(0, |(s, _)| s)
}

/// How many pods may be unavailable during a rolling update (0 for Recreate).
pub(crate) fn max_unavailable(d: &Deployment) -> i32 {
    let desired = replicas(d);
    if !is_rolling(d) || desired == 0 {
        return 0;
    }
    let (surge, unavailable) = rolling_params(d);
    resolve_fenceposts(&surge, &unavailable, desired).map_or(0, |(_, u)| u.min(desired))
}

/// The new ReplicaSet's next size: toward `spec.replicas` within the surge (rolling), or
/// all at once (Recreate).
pub(crate) fn new_rs_new_replicas(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: &ReplicaSet,
) -> Result<i32, String> {
    if !is_rolling(d) {
        return Ok(replicas(d));
    }
    let desired = replicas(d);
    let surge = scaled_value(&rolling_params(d).0, desired, true)?;
    let current: i32 = replica_count(all);
    let max_total = desired + surge;
    if current >= max_total {
        return Ok(rs_replicas(new));
    }
    let up = (max_total - current).min(desired - rs_replicas(new));
    Ok(rs_replicas(new) + up)
}

// ---------------------------------------------------------------------------------------
// Templates and hashes.

/// The `pod-template-hash` of a template (and the Deployment's collision count).
pub(crate) fn pod_template_hash(
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> String {
    let text = hash::canonical_json(
        &serde_json::to_value(template).unwrap_or(Value::Null),
        false,
    );
    // The collision count as the 8 bytes upstream's hasher writes for it.
    let mut count = Vec::new();
    if let Some(c) = collision_count {
        count.extend_from_slice(&c.to_le_bytes());
        count.extend_from_slice(&[0; 4]);
    }
    hash::safe_encode(hash::fnv32a(&[text.as_bytes(), &count]))
}

/// Drops nulls and empty maps and lists, which the API treats as absent.
fn normalized(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let m: serde_json::Map<String, Value> = m
                .into_iter()
                .filter_map(|(k, v)| normalized(v).map(|v| (k, v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        Value::Array(a) => (!a.is_empty()).then(|| {
            Value::Array(
                a.into_iter()
                    .map(|x| normalized(x).unwrap_or(Value::Null))
                    .collect(),
            )
        }),
        other => Some(other),
    }
}

fn without_hash(t: &PodTemplateSpec) -> Option<Value> {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    normalized(serde_json::to_value(&t).unwrap_or(Value::Null))
}

/// Templates equal but for the `pod-template-hash` label.
pub(crate) fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The template of the Deployment (an empty one if missing).
pub(crate) fn template(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

/// The ReplicaSet a template matches: the oldest whose template equals the Deployment's.
pub(crate) fn find_new(d: &Deployment, rss: &[ReplicaSet]) -> Option<usize> {
    let t = template(d);
    let mut idx: Vec<usize> = (0..rss.len()).collect();
    idx.sort_by(|a, b| by_creation(&rss[*a], &rss[*b]));
    idx.into_iter().find(|i| {
        rss[*i]
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|rt| equal_ignore_hash(rt, &t))
    })
}

// ---------------------------------------------------------------------------------------
// Revisions and annotations.

/// The revision annotation of an object (0 when absent or not a number).
pub(crate) fn revision_of(annotations: &BTreeMap<String, String>) -> i64 {
    annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn max_revision(rss: &[&ReplicaSet]) -> i64 {
    rss.iter()
        .map(|rs| revision_of(rs.annotations()))
        .max()
        .unwrap_or(0)
}

fn skip_annotation(k: &str) -> bool {
    matches!(
        k,
        LAST_APPLIED | REVISION | REVISION_HISTORY | DESIRED_REPLICAS | MAX_REPLICAS | ROLLBACK_TO
    )
}

/// Copies the Deployment's own annotations (not the controller's) onto a ReplicaSet.
fn copy_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let mut changed = false;
    let target = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.annotations() {
        if skip_annotation(k) || target.get(k) == Some(v) {
            continue;
        }
        target.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Sets `desired-replicas` and `max-replicas`; true when they changed.
pub(crate) fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if a.get(k) != Some(&v) {
            a.insert(k.to_string(), v);
            changed = true;
        }
    }
    changed
}

pub(crate) fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let a = rs.annotations();
    a.get(DESIRED_REPLICAS) != Some(&desired.to_string())
        || a.get(MAX_REPLICAS) != Some(&max.to_string())
}

fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key)?.parse().ok()
}

pub(crate) fn desired_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    int_annotation(rs, DESIRED_REPLICAS)
}

/// The new ReplicaSet's annotations: the Deployment's, the revision (raised to
/// `new_revision`, remembering the old one in `revision-history` — a rollback), and for
/// a ReplicaSet about to be created the replica annotations. True when any changed.
pub(crate) fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = copy_annotations(d, rs);
    let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = a.get(REVISION).cloned();
    let old_int = match &old {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return changed,
        },
    };
    if old_int < new_revision {
        a.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = a.get(REVISION_HISTORY).cloned().unwrap_or_default();
            if history.is_empty() {
                a.insert(REVISION_HISTORY.into(), old);
            } else {
                let mut parts: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > MAX_REVISION_HISTORY_CHARS && start < parts.len() {
                    total -= parts[start].len() + 1;
                    start += 1;
                }
                if total <= MAX_REVISION_HISTORY_CHARS {
                    parts = parts.split_off(start);
                    parts.push(&old);
                    let joined = parts.join(",");
                    a.insert(REVISION_HISTORY.into(), joined);
                }
            }
        }
    }
    if !exists && set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d)) {
        changed = true;
    }
    changed
}

/// Sets the Deployment's revision annotation; true when it changed.
pub(crate) fn set_deployment_revision(d: &mut Deployment, revision: &str) -> bool {
    let a = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if a.get(REVISION).map(String::as_str) == Some(revision) {
        return false;
    }
    a.insert(REVISION.into(), revision.into());
    true
}

// ---------------------------------------------------------------------------------------
// Orderings and counts.

fn created(rs: &ReplicaSet) -> Option<jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Older first; ties by name.
pub(crate) fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(a)
        .cmp(&created(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// Lower revision first; ties by creation.
pub(crate) fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    revision_of(a.annotations())
        .cmp(&revision_of(b.annotations()))
        .then_with(|| by_creation(a, b))
}

/// Larger first; ties older first.
pub(crate) fn by_size_older(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    rs_replicas(b)
        .cmp(&rs_replicas(a))
        .then_with(|| by_creation(a, b))
}

/// Larger first; ties newer first.
pub(crate) fn by_size_newer(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    rs_replicas(b)
        .cmp(&rs_replicas(a))
        .then_with(|| by_creation(b, a))
}

/// Sum of `spec.replicas`.
pub(crate) fn replica_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| rs_replicas(rs)).sum()
}

/// Sum of `status.replicas`.
pub(crate) fn actual_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| status_of(rs).0).sum()
}

fn ready_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| status_of(rs).1).sum()
}

pub(crate) fn available_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| status_of(rs).2).sum()
}

/// All pods of the ReplicaSet are the Deployment's desired, available pods.
pub(crate) fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let desired = replicas(d);
    rs_replicas(rs) == desired
        && desired_replicas_annotation(rs) == Some(desired)
        && rs_available(rs) == desired
}

// ---------------------------------------------------------------------------------------
// Proportional scaling.

/// How many replicas `rs` gains (or loses) when the Deployment is resized, in proportion
/// to its share of the size it was last scaled for.
fn fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    if replicas(d) == 0 {
        return -rs_replicas(rs);
    }
    let deployment_replicas = replicas(d) + max_surge(d);
    let annotated = int_annotation(rs, MAX_REPLICAS)
        .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated == 0 {
        return 0;
    }
    let size = f64::from(rs_replicas(rs)) * f64::from(deployment_replicas) / f64::from(annotated);
    // Saturating float-to-int conversion, as intended.
    #[allow(clippy::cast_possible_truncation)]
    let rounded = size.round() as i32;
    rounded - rs_replicas(rs)
}

fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let f = fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        f.min(allowed)
    } else {
        f.max(allowed)
    }
}

/// New sizes for the active ReplicaSets (given by index into `rss`) when a rolling
/// Deployment is resized mid-rollout: the difference is spread in proportion to their
/// sizes, the leftover going to the largest (newest when growing, oldest when shrinking).
pub(crate) fn proportional_sizes(
    d: &Deployment,
    rss: &[ReplicaSet],
    active: &[usize],
) -> Vec<(usize, i32)> {
    let all: Vec<&ReplicaSet> = active.iter().map(|i| &rss[*i]).collect();
    let current = replica_count(&all);
    let allowed = if replicas(d) > 0 {
        replicas(d) + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    let mut order = active.to_vec();
    match to_add.cmp(&0) {
        Ordering::Greater => order.sort_by(|a, b| by_size_newer(&rss[*a], &rss[*b])),
        Ordering::Less => order.sort_by(|a, b| by_size_older(&rss[*a], &rss[*b])),
        Ordering::Equal => {}
    }
    let mut added = 0;
    let mut sizes: Vec<(usize, i32)> = order
        .iter()
        .map(|i| {
            let rs = &rss[*i];
            if to_add == 0 {
                return (*i, rs_replicas(rs));
            }
            let p = proportion(rs, d, to_add, added);
            added += p;
            (*i, rs_replicas(rs) + p)
        })
        .collect();
    if to_add != 0
        && let Some(first) = sizes.first_mut()
    {
        first.1 = (first.1 + to_add - added).max(0);
    }
    sizes
}

// ---------------------------------------------------------------------------------------
// Conditions and status.

pub(crate) fn condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

pub(crate) fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Sets a condition, unless one with the same status and reason exists; a condition
/// whose status does not change keeps its transition time.
pub(crate) fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(cur) = condition(status, &cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != cond.type_);
    conditions.push(cond);
}

pub(crate) fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
        if c.is_empty() {
            status.conditions = None;
        }
    }
}

fn nz(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// The status `all` ReplicaSets (with `new` among them) imply for the Deployment.
pub(crate) fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: &Time,
) -> DeploymentStatus {
    let available = available_count(all);
    let total = replica_count(all);
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nz(actual_count(all)),
        updated_replicas: nz(new.map_or(0, |rs| status_of(rs).0)),
        ready_replicas: nz(ready_count(all)),
        available_replicas: nz(available),
        unavailable_replicas: nz((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.filter(|c| !c.is_empty()),
        terminating_replicas: None,
    };
    if available >= replicas(d) - max_unavailable(d) {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    status
}

fn counts(s: &DeploymentStatus) -> (i32, i32, i32, i32) {
    (
        s.replicas.unwrap_or(0),
        s.updated_replicas.unwrap_or(0),
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

/// Every desired replica is updated and available, and no old pod remains.
pub(crate) fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let (replicas_, updated, _, available) = counts(s);
    let desired = replicas(d);
    updated == desired
        && replicas_ == desired
        && available == desired
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// The rollout moved since the Deployment's last recorded status.
pub(crate) fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let (old_total, old_updated, old_ready, old_available) = counts(&old);
    let (new_total, new_updated, new_ready, new_available) = counts(new);
    new_updated > old_updated
        || (new_total - new_updated) < (old_total - old_updated)
        || new_ready > old_ready
        || new_available > old_available
}

/// The Progressing condition was last updated more than the deadline ago.
pub(crate) fn deployment_timed_out(
    d: &Deployment,
    new: &DeploymentStatus,
    now: jiff::Timestamp,
) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(cond) = condition(new, PROGRESSING) else {
        return false;
    };
    match cond.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => return false,
        Some(TIMED_OUT) => return true,
        _ => {}
    }
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(0);
    let Some(from) = cond.last_update_time.as_ref() else {
        return false;
    };
    from.0
        .checked_add(jiff::SignedDuration::from_secs(i64::from(deadline)))
        .is_ok_and(|t| t < now)
}

/// The ReplicaFailure condition of the new ReplicaSet (else of an old one), as a
/// Deployment condition.
pub(crate) fn replica_failure(
    new: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
) -> Option<DeploymentCondition> {
    let of = |rs: &ReplicaSet| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == REPLICA_FAILURE)
            .map(|c| DeploymentCondition {
                type_: REPLICA_FAILURE.into(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time.clone(),
            })
    };
    new.and_then(of)
        .or_else(|| old.iter().find_map(|rs| of(rs)))
}

/// Statuses compared as the API stores them (absent zero counts, empty lists).
pub(crate) fn same_status(a: Option<&DeploymentStatus>, b: &DeploymentStatus) -> bool {
    let norm = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for f in [
            &mut s.replicas,
            &mut s.updated_replicas,
            &mut s.ready_replicas,
            &mut s.available_replicas,
            &mut s.unavailable_replicas,
        ] {
            if *f == Some(0) {
                *f = None;
            }
        }
        if s.conditions.as_ref().is_some_and(Vec::is_empty) {
            s.conditions = None;
        }
        s
    };
    norm(&a.cloned().unwrap_or_default()) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        }))
        .unwrap()
    }

    fn rs(
        name: &str,
        replicas: i32,
        available: i32,
        created: &str,
        annotations: Value,
    ) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": replicas, "availableReplicas": available, "readyReplicas": available},
        }))
        .unwrap()
    }

    #[test]
    fn fenceposts() {
        // (replicas, maxSurge, maxUnavailable) → (surge, unavailable)
        let cases = [
            (10, json!("25%"), json!("25%"), (3, 2)),
            (4, json!("25%"), json!("25%"), (1, 1)),
            (1, json!("25%"), json!("25%"), (1, 0)),
            (3, json!(1), json!(0), (1, 0)),
            (3, json!(0), json!(0), (0, 1)),
            (3, json!("0%"), json!("0%"), (0, 1)),
            (5, json!("50%"), json!("50%"), (3, 2)),
            (10, json!(2), json!("10%"), (2, 1)),
            (3, json!(0), json!(5), (0, 3)),
        ];
        for (n, s, u, want) in cases {
            let d = deployment(n, s.clone(), u.clone());
            assert_eq!(
                (max_surge(&d), max_unavailable(&d)),
                want,
                "{n} replicas, surge {s}, unavailable {u}"
            );
        }
        assert!(scaled_value(&IntOrString::String("x%".into()), 10, true).is_err());
        let mut recreate = deployment(3, json!(1), json!(1));
        recreate.spec.as_mut().unwrap().strategy =
            serde_json::from_value(json!({"type": "Recreate"})).unwrap();
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
        assert_eq!(max_unavailable(&deployment(0, json!(1), json!(1))), 0);
    }

    #[test]
    fn new_replica_set_growth() {
        let d = deployment(4, json!(1), json!(0));
        let old = rs("old", 4, 4, "2025-01-01T00:00:00Z", json!({}));
        let new = rs("new", 0, 0, "2025-01-02T00:00:00Z", json!({}));
        assert_eq!(
            new_rs_new_replicas(&d, &[&old, &new], &new),
            Ok(1),
            "one surge pod"
        );
        let new1 = rs("new", 1, 0, "2025-01-02T00:00:00Z", json!({}));
        assert_eq!(
            new_rs_new_replicas(&d, &[&old, &new1], &new1),
            Ok(1),
            "at the surge limit"
        );
        let old3 = rs("old", 3, 3, "2025-01-01T00:00:00Z", json!({}));
        assert_eq!(new_rs_new_replicas(&d, &[&old3, &new1], &new1), Ok(2));
        let old0 = rs("old", 0, 0, "2025-01-01T00:00:00Z", json!({}));
        assert_eq!(
            new_rs_new_replicas(&d, &[&old0, &new1], &new1),
            Ok(4),
            "never above spec.replicas"
        );
    }

    #[test]
    fn hashes() {
        let d = deployment(1, json!(1), json!(0));
        let t = template(&d);
        let h = pod_template_hash(&t, None);
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
        assert_eq!(h, pod_template_hash(&t, None), "stable");
        assert_ne!(
            h,
            pod_template_hash(&t, Some(1)),
            "a collision changes the hash"
        );
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("j".into());
        assert_ne!(h, pod_template_hash(&other, None));
        // The hash label, and empty versus absent fields, do not make templates differ.
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), h.clone());
        labelled.metadata.as_mut().unwrap().annotations = Some(BTreeMap::new());
        assert!(equal_ignore_hash(&t, &labelled));
        assert!(!equal_ignore_hash(&t, &other));
    }

    #[test]
    fn revisions_and_history() {
        let mut d = deployment(3, json!(1), json!(0));
        d.metadata.annotations = Some(
            [
                ("kubernetes.io/change-cause".into(), "v2".into()),
                (REVISION.into(), "9".into()),
            ]
            .into(),
        );
        let mut new = rs("a", 0, 0, "2025-01-01T00:00:00Z", json!({}));
        assert!(set_new_rs_annotations(&d, &mut new, 1, false));
        let a = new.annotations();
        assert_eq!(a.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(
            a.get("kubernetes.io/change-cause").map(String::as_str),
            Some("v2")
        );
        assert_eq!(a.get(DESIRED_REPLICAS).map(String::as_str), Some("3"));
        assert_eq!(a.get(MAX_REPLICAS).map(String::as_str), Some("4"));
        assert!(
            !set_new_rs_annotations(&d, &mut new, 1, true),
            "nothing to change"
        );
        // Rolled back to: the revision rises, the old one is remembered.
        assert!(set_new_rs_annotations(&d, &mut new, 3, true));
        assert_eq!(
            new.annotations().get(REVISION).map(String::as_str),
            Some("3")
        );
        assert_eq!(
            new.annotations().get(REVISION_HISTORY).map(String::as_str),
            Some("1")
        );
        assert!(set_new_rs_annotations(&d, &mut new, 5, true));
        assert_eq!(
            new.annotations().get(REVISION_HISTORY).map(String::as_str),
            Some("1,3")
        );
        assert!(
            !set_new_rs_annotations(&d, &mut new, 4, true),
            "never lowered"
        );
        assert!(set_deployment_revision(&mut d, "5"));
        assert!(!set_deployment_revision(&mut d, "5"));
        assert_eq!(
            max_revision(&[
                &new,
                &rs("b", 0, 0, "2025-01-01T00:00:00Z", json!({REVISION: "2"}))
            ]),
            5
        );
    }

    #[test]
    fn proportional_scaling() {
        // A rollout at 10 replicas (surge 3, max-replicas 13) resized to 15 (surge 4, so
        // 19 allowed): the 6 extra pods go 8:5 to the old and new ReplicaSets.
        let d = deployment(15, json!("25%"), json!("25%"));
        let ann = json!({MAX_REPLICAS: "13", DESIRED_REPLICAS: "10"});
        let rss = vec![
            rs("old", 8, 8, "2025-01-01T00:00:00Z", ann.clone()),
            rs("new", 5, 0, "2025-01-02T00:00:00Z", ann.clone()),
        ];
        let sizes: BTreeMap<usize, i32> =
            proportional_sizes(&d, &rss, &[0, 1]).into_iter().collect();
        assert_eq!(sizes.values().sum::<i32>(), 19);
        assert_eq!((sizes[&0], sizes[&1]), (12, 7));
        // Shrinking to 5 (surge 2, 7 allowed) takes from both, rounding to the larger.
        let d = deployment(5, json!("25%"), json!("25%"));
        let sizes: BTreeMap<usize, i32> =
            proportional_sizes(&d, &rss, &[0, 1]).into_iter().collect();
        assert_eq!(sizes.values().sum::<i32>(), 7);
        assert_eq!((sizes[&0], sizes[&1]), (4, 3));
        // Scaling to zero empties everything.
        let d = deployment(0, json!("25%"), json!("25%"));
        let sizes: BTreeMap<usize, i32> =
            proportional_sizes(&d, &rss, &[0, 1]).into_iter().collect();
        assert_eq!((sizes[&0], sizes[&1]), (0, 0));
    }

    #[test]
    fn conditions_and_status() {
        let now = Time("2025-01-01T12:00:00Z".parse().unwrap());
        let later = Time("2025-01-01T12:05:00Z".parse().unwrap());
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", NEW_RS_CREATED, "a".into(), &now),
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", NEW_RS_CREATED, "b".into(), &later),
        );
        assert_eq!(
            condition(&s, PROGRESSING).unwrap().message.as_deref(),
            Some("a"),
            "same status and reason: kept"
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", RS_UPDATED, "c".into(), &later),
        );
        let c = condition(&s, PROGRESSING).unwrap();
        assert_eq!(
            (c.reason.as_deref(), c.last_transition_time.as_ref()),
            (Some(RS_UPDATED), Some(&now)),
            "same status keeps the transition time"
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "False", TIMED_OUT, "d".into(), &later),
        );
        assert_eq!(
            condition(&s, PROGRESSING)
                .unwrap()
                .last_transition_time
                .as_ref(),
            Some(&later)
        );
        remove_condition(&mut s, PROGRESSING);
        assert!(s.conditions.is_none());

        let d = deployment(4, json!(1), json!(1));
        let old = rs("old", 2, 2, "2025-01-01T00:00:00Z", json!({}));
        let new = rs("new", 3, 1, "2025-01-02T00:00:00Z", json!({}));
        let st = calculate_status(&d, &[&old, &new], Some(&new), &now);
        assert_eq!(
            (
                st.replicas,
                st.updated_replicas,
                st.ready_replicas,
                st.available_replicas,
                st.unavailable_replicas,
                st.observed_generation
            ),
            (Some(5), Some(3), Some(3), Some(3), Some(2), Some(1))
        );
        assert_eq!(
            condition(&st, AVAILABLE).unwrap().status,
            "True",
            "3 available ≥ 4 - 1"
        );
        assert!(!deployment_complete(&d, &st));
        let done = rs("new", 4, 4, "2025-01-02T00:00:00Z", json!({}));
        let st = calculate_status(&d, &[&done], Some(&done), &now);
        assert!(deployment_complete(&d, &st));
        assert!(deployment_progressing(&d, &st));
        let d0 = deployment(4, json!(0), json!(1));
        let none = rs("new", 4, 0, "2025-01-02T00:00:00Z", json!({}));
        let st = calculate_status(&d0, &[&none], Some(&none), &now);
        assert_eq!(
            condition(&st, AVAILABLE).unwrap().reason.as_deref(),
            Some(MIN_UNAVAILABLE)
        );
    }

    #[test]
    fn timeouts() {
        let mut d = deployment(1, json!(1), json!(0));
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
        let start = Time("2025-01-01T12:00:00Z".parse().unwrap());
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", RS_UPDATED, "x".into(), &start),
        );
        assert!(!deployment_timed_out(
            &d,
            &s,
            "2025-01-01T12:00:59Z".parse().unwrap()
        ));
        assert!(deployment_timed_out(
            &d,
            &s,
            "2025-01-01T12:01:01Z".parse().unwrap()
        ));
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(i32::MAX);
        assert!(!deployment_timed_out(
            &d,
            &s,
            "2030-01-01T00:00:00Z".parse().unwrap()
        ));
    }

    #[test]
    fn orderings() {
        let a = rs("a", 3, 0, "2025-01-01T00:00:00Z", json!({REVISION: "2"}));
        let b = rs("b", 3, 0, "2025-01-02T00:00:00Z", json!({REVISION: "1"}));
        let c = rs("c", 5, 0, "2025-01-03T00:00:00Z", json!({}));
        assert_eq!(by_creation(&a, &b), Ordering::Less);
        assert_eq!(by_revision(&a, &b), Ordering::Greater);
        assert_eq!(by_size_older(&a, &b), Ordering::Less);
        assert_eq!(by_size_newer(&a, &b), Ordering::Greater);
        assert_eq!(by_size_newer(&c, &a), Ordering::Less, "larger first");
    }
}
