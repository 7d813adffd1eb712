//! The disruption controller: keeps every PodDisruptionBudget's status current, so the
//! `pods/eviction` subresource can decide whether a pod may go (upstream's
//! `pkg/controller/disruption`).
//!
//! For each budget it selects the pods of its namespace (a null selector selects nothing,
//! an empty one everything) and computes:
//!
//! - `expectedPods`: the number of selected pods when `minAvailable` is an integer;
//!   otherwise (a percentage, or `maxUnavailable`) the sum of the scales of the pods'
//!   controllers (Deployment through its ReplicaSet, ReplicaSet, StatefulSet,
//!   ReplicationController — any kind with a `scale` subresource). Pods without a
//!   controller are not counted.
//! - `desiredHealthy`: `minAvailable` (percentages round up), or `expectedPods` minus
//!   `maxUnavailable`.
//! - `currentHealthy`: selected pods that are Ready, not being deleted, and not recently
//!   evicted (in `disruptedPods`).
//! - `disruptionsAllowed`: `currentHealthy - desiredHealthy`, never negative, and zero
//!   while no pods are expected.
//! - `disruptedPods`: the eviction subresource's records, pruned once the pod is gone or
//!   being deleted, or after two minutes without the pod being deleted.
//! - `observedGeneration` and the `DisruptionAllowed` condition (`SufficientPods` /
//!   `InsufficientPods`; `SyncFailed` with zero disruptions when the status cannot be
//!   computed — the fail-safe direction).
//!
//! Written through the `status` subresource with the budget's resourceVersion. Built on
//! kube-runtime's `applier` over a budget reflector and a shared pod reflector; pod events
//! requeue the budgets selecting the pod, and every budget is re-checked periodically.
//!
//! Depends on: `api` (selectors, the resource table), kube-rs. Never the store or the
//! API server's internals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::owners::label_selector;
use super::watch;
use crate::api::RESOURCES;
use crate::api::resources::split_api_version;
use crate::api::selector::LabelSelector;

/// How long an approved eviction may take before the pod counts as healthy again.
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);
/// Every budget is recomputed at least this often.
const RESYNC: Duration = Duration::from_secs(60);
/// The condition the controller maintains.
const CONDITION: &str = "DisruptionAllowed";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid selector: {0}")]
    Selector(String),
    #[error("found no controllers for pod {0:?}")]
    NoController(String),
    #[error("invalid value for IntOrString: invalid value {0:?}")]
    IntOrPercent(String),
    #[error("the pod cache is not available")]
    CacheGone,
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (pdb_store, pdb_events) =
        watch::reflect_all::<PodDisruptionBudget>(&client, watcher::Config::default());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, watcher::Config::default());
    let budgets = pdb_store.clone();
    let queue = stream::select(
        trigger_self(pdb_events.applied_objects(), ()),
        trigger_with(pod_events.touched_objects(), move |pod: Pod| {
            budgets_selecting(&budgets, &pod)
        }),
    );
    let ctx = Arc::new(Ctx {
        client,
        pods: pod_store,
    });
    watch::run_applier(
        "disruption",
        reconcile,
        error_policy,
        ctx,
        pdb_store,
        queue,
        controller::Config::default(),
        shutdown,
    )
    .await;
}

/// The budgets whose selector selects `pod` (requeued when the pod changes).
fn budgets_selecting(
    budgets: &Store<PodDisruptionBudget>,
    pod: &Pod,
) -> Vec<ObjectRef<PodDisruptionBudget>> {
    budgets
        .state()
        .iter()
        .filter(|pdb| pdb.namespace() == pod.namespace())
        .filter(|pdb| selector(pdb).is_ok_and(|s| s.matches(labels(pod).as_ref())))
        .map(|pdb| ObjectRef::from_obj(&**pdb))
        .collect()
}

fn error_policy(_pdb: Arc<PodDisruptionBudget>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(%err, "disruption controller error; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    match try_sync(&pdb, &ctx).await {
        Ok(action) => Ok(action),
        // A conflicting write is retried without touching the status.
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => {
            Err(Error::Kube(kube::Error::Api(s)))
        }
        Err(err) => {
            tracing::warn!(pdb = %pdb.name_any(), ns = ?pdb.namespace(), %err, "cannot compute budget status; allowing no disruptions");
            fail_safe(&pdb, &ctx, &err).await?;
            Err(err)
        }
    }
}

async fn try_sync(pdb: &PodDisruptionBudget, ctx: &Ctx) -> Result<Action, Error> {
    let sel = selector(pdb)?;
    let ns = pdb.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| sel.matches(labels(p).as_ref()))
        .collect();
    let spec = pdb.spec.clone().unwrap_or_default();
    let scale = if needs_scale(&spec.min_available, &spec.max_unavailable) {
        Some(expected_scale(ctx, &ns, &pods).await?)
    } else {
        None
    };
    let (expected, desired) = expected_and_desired(
        &spec.min_available,
        &spec.max_unavailable,
        pods.len(),
        scale,
    )?;
    let now = jiff::Timestamp::now();
    let previous = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let (disrupted, recheck) = disrupted_pods(&pods, &previous, now);
    let healthy = current_healthy(&pods, &disrupted);
    let next = next_status(pdb, healthy, desired, expected, disrupted, now);
    if let Some(status) = next {
        let mut updated = pdb.clone();
        updated.status = Some(status);
        updated.metadata.managed_fields = None;
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        api.replace_status(&pdb.name_any(), &PostParams::default(), &updated)
            .await?;
        tracing::debug!(pdb = %pdb.name_any(), ns = %ns, healthy, desired, expected, "budget status updated");
    }
    let wait = recheck
        .map(|t| t.duration_since(now).unsigned_abs())
        .map_or(RESYNC, |d| d.min(RESYNC));
    Ok(Action::requeue(wait + Duration::from_millis(100)))
}

/// Sets disruptionsAllowed to zero with a `SyncFailed` condition, so no eviction is
/// approved on a budget whose status could not be computed.
async fn fail_safe(pdb: &PodDisruptionBudget, ctx: &Ctx, err: &Error) -> Result<(), Error> {
    let mut updated = pdb.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    status.disruptions_allowed = 0;
    let observed = status.observed_generation;
    set_condition(
        status.conditions.get_or_insert_with(Vec::new),
        "False",
        "SyncFailed",
        &err.to_string(),
        observed,
        jiff::Timestamp::now(),
    );
    updated.metadata.managed_fields = None;
    let api: Api<PodDisruptionBudget> =
        Api::namespaced(ctx.client.clone(), &pdb.namespace().unwrap_or_default());
    api.replace_status(&pdb.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

/// The budget's pod selector (`null` selects nothing, `{}` everything).
fn selector(pdb: &PodDisruptionBudget) -> Result<LabelSelector, Error> {
    label_selector(pdb.spec.as_ref().and_then(|s| s.selector.as_ref())).map_err(Error::Selector)
}

fn labels(pod: &Pod) -> Option<serde_json::Map<String, serde_json::Value>> {
    pod.metadata.labels.as_ref().map(|l| {
        l.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect()
    })
}

/// Whether the budget is relative to its pods' controllers' scale.
fn needs_scale(min_available: &Option<IntOrString>, max_unavailable: &Option<IntOrString>) -> bool {
    max_unavailable.is_some() || matches!(min_available, Some(IntOrString::String(_)))
}

/// `(expectedPods, desiredHealthy)` from the spec, the number of selected pods and (when
/// [`needs_scale`]) the controllers' total scale.
fn expected_and_desired(
    min_available: &Option<IntOrString>,
    max_unavailable: &Option<IntOrString>,
    pod_count: usize,
    scale: Option<i32>,
) -> Result<(i32, i32), Error> {
    let pods = i32::try_from(pod_count).unwrap_or(i32::MAX);
    if let Some(mu) = max_unavailable {
        let expected = scale.unwrap_or(0);
        let unavailable = scaled_value(mu, expected)?;
        return Ok((expected, (expected - unavailable).max(0)));
    }
    match min_available {
        Some(IntOrString::Int(n)) => Ok((pods, *n)),
        Some(pct @ IntOrString::String(_)) => {
            let expected = scale.unwrap_or(0);
            Ok((expected, scaled_value(pct, expected)?))
        }
        None => Ok((0, 0)),
    }
}

/// An integer, or a percentage of `total` rounded up (upstream's
/// `GetScaledValueFromIntOrPercent` with `roundUp`).
fn scaled_value(v: &IntOrString, total: i32) -> Result<i32, Error> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::IntOrPercent(s.clone()))?;
            let value = (pct * i64::from(total) + 99).div_euclid(100);
            Ok(i32::try_from(value).unwrap_or(i32::MAX))
        }
    }
}

/// The controller reference of a pod (or other object).
fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs?.iter().find(|r| r.controller == Some(true))
}

/// The sum of the scales of the controllers of `pods`.
async fn expected_scale(ctx: &Ctx, ns: &str, pods: &[Arc<Pod>]) -> Result<i32, Error> {
    let mut scales: HashMap<String, i32> = HashMap::new();
    let mut seen_refs: HashSet<String> = HashSet::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let Some(cref) = controller_of(pod.metadata.owner_references.as_ref()) else {
            unmanaged.push(pod.name_any());
            continue;
        };
        if !seen_refs.insert(cref.uid.clone()) {
            continue;
        }
        match find_scale(ctx, ns, cref).await? {
            Some((uid, scale)) => {
                scales.insert(uid, scale);
            }
            None => return Err(Error::NoController(pod.name_any())),
        }
    }
    if !unmanaged.is_empty() {
        tracing::debug!(ns, pods = ?unmanaged, "pods selected by a budget have no controller; they are not counted");
    }
    Ok(scales.values().sum())
}

/// The controller `cref` of a pod in `ns` and its desired replicas: a ReplicaSet counts
/// as its Deployment when one controls it.
async fn find_scale(
    ctx: &Ctx,
    ns: &str,
    cref: &OwnerReference,
) -> Result<Option<(String, i32)>, Error> {
    let (group, version) = split_api_version(&cref.api_version);
    if group == "apps" && cref.kind == "ReplicaSet" {
        let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
        let Some(rs) = rss
            .get_opt(&cref.name)
            .await?
            .filter(|rs| rs.metadata.uid.as_deref() == Some(cref.uid.as_str()))
        else {
            return Ok(None);
        };
        if let Some(dref) = controller_of(rs.metadata.owner_references.as_ref())
            .filter(|d| d.kind == "Deployment" && split_api_version(&d.api_version).0 == "apps")
        {
            let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            if let Some(d) = deps
                .get_opt(&dref.name)
                .await?
                .filter(|d| d.metadata.uid.as_deref() == Some(dref.uid.as_str()))
            {
                let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                return Ok(Some((dref.uid.clone(), replicas)));
            }
        }
        let replicas = rs.spec.and_then(|s| s.replicas).unwrap_or(1);
        return Ok(Some((cref.uid.clone(), replicas)));
    }
    // Any other served kind with a scale subresource: its spec.replicas.
    let Some(ri) = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.kind == cref.kind && r.subresource("scale").is_some())
        .max_by_key(|r| (r.version == version, r.preferred))
    else {
        return Ok(None);
    };
    let gvk = GroupVersionKind::gvk(ri.group, ri.version, ri.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, ri.plural);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let Some(obj) = api
        .get_opt(&cref.name)
        .await?
        .filter(|o| o.metadata.uid.as_deref() == Some(cref.uid.as_str()))
    else {
        return Ok(None);
    };
    // Built-in workloads default spec.replicas to 1.
    let replicas = obj.data["spec"]["replicas"]
        .as_i64()
        .and_then(|r| i32::try_from(r).ok())
        .unwrap_or(1);
    Ok(Some((cref.uid.clone(), replicas)))
}

/// The recorded evictions still pending (pod present, not yet being deleted, recorded
/// less than [`DELETION_TIMEOUT`] ago) and when the earliest of them expires.
fn disrupted_pods(
    pods: &[Arc<Pod>],
    previous: &BTreeMap<String, Time>,
    now: jiff::Timestamp,
) -> (BTreeMap<String, Time>, Option<jiff::Timestamp>) {
    let mut kept = BTreeMap::new();
    let mut recheck: Option<jiff::Timestamp> = None;
    let timeout = jiff::SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or_default();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        let Some(at) = previous.get(&name) else {
            continue;
        };
        let expires = at.0 + timeout;
        if expires < now {
            tracing::info!(pod = %name, ns = ?pod.namespace(), "pod was expected to be deleted after its eviction but was not");
            continue;
        }
        recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
        kept.insert(name, at.clone());
    }
    (kept, recheck)
}

/// Pods that are Ready, not being deleted, and not being evicted.
fn current_healthy(pods: &[Arc<Pod>], disrupted: &BTreeMap<String, Time>) -> i32 {
    let n = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !disrupted.contains_key(&p.name_any()))
        .filter(|p| pod_ready(p))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The new status, or `None` when the current one is already right.
fn next_status(
    pdb: &PodDisruptionBudget,
    current_healthy: i32,
    desired_healthy: i32,
    expected: i32,
    disrupted: BTreeMap<String, Time>,
    now: jiff::Timestamp,
) -> Option<PodDisruptionBudgetStatus> {
    let mut allowed = current_healthy - desired_healthy;
    if expected <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let generation = pdb.metadata.generation;
    let old = pdb.status.clone().unwrap_or_default();
    let unchanged = old.current_healthy == current_healthy
        && old.desired_healthy == desired_healthy
        && old.expected_pods == expected
        && old.disruptions_allowed == allowed
        && old.disrupted_pods.clone().unwrap_or_default() == disrupted
        && old.observed_generation == generation
        && condition_up_to_date(&old, generation);
    if unchanged {
        return None;
    }
    let mut conditions = old.conditions.unwrap_or_default();
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    set_condition(&mut conditions, status, reason, "", generation, now);
    Some(PodDisruptionBudgetStatus {
        conditions: Some(conditions),
        current_healthy,
        desired_healthy,
        disrupted_pods: if disrupted.is_empty() {
            None
        } else {
            Some(disrupted)
        },
        disruptions_allowed: allowed,
        expected_pods: expected,
        observed_generation: generation,
    })
}

/// Whether the `DisruptionAllowed` condition agrees with `disruptionsAllowed`.
fn condition_up_to_date(status: &PodDisruptionBudgetStatus, generation: Option<i64>) -> bool {
    let Some(c) = status
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION))
    else {
        return false;
    };
    if status.observed_generation != generation {
        return false;
    }
    if status.disruptions_allowed > 0 {
        c.status == "True" && c.reason == "SufficientPods"
    } else {
        c.status == "False" && c.reason == "InsufficientPods"
    }
}

/// Sets the `DisruptionAllowed` condition; its transition time moves only when its
/// status changes (upstream's `SetStatusCondition`).
fn set_condition(
    conditions: &mut Vec<Condition>,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: jiff::Timestamp,
) {
    match conditions.iter_mut().find(|c| c.type_ == CONDITION) {
        Some(c) => {
            if c.status != status {
                c.status = status.to_string();
                c.last_transition_time = Time(now);
            }
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: CONDITION.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation,
            last_transition_time: Time(now),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(name: &str, ready: bool, deleting: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                deletion_timestamp: deleting.then(|| Time(jiff::Timestamp::now())),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn expected_and_desired_like_upstream() {
        use IntOrString::{Int, String as Pct};
        /// (name, minAvailable, maxUnavailable, selected pods, scale, (expected, desired))
        type Case = (
            &'static str,
            Option<IntOrString>,
            Option<IntOrString>,
            usize,
            Option<i32>,
            (i32, i32),
        );
        let cases: &[Case] = &[
            (
                "int minAvailable counts pods",
                Some(Int(2)),
                None,
                3,
                None,
                (3, 2),
            ),
            (
                "percent minAvailable rounds up",
                Some(Pct("50%".into())),
                None,
                3,
                Some(3),
                (3, 2),
            ),
            ("maxUnavailable int", None, Some(Int(1)), 2, Some(4), (4, 3)),
            (
                "maxUnavailable percent rounds up",
                None,
                Some(Pct("10%".into())),
                5,
                Some(5),
                (5, 4),
            ),
            (
                "maxUnavailable beyond scale",
                None,
                Some(Int(9)),
                2,
                Some(2),
                (2, 0),
            ),
            ("neither", None, None, 4, None, (0, 0)),
        ];
        for (name, min, max, pods, scale, want) in cases {
            assert!(needs_scale(min, max) == scale.is_some(), "{name}");
            assert_eq!(
                expected_and_desired(min, max, *pods, *scale).unwrap(),
                *want,
                "{name}"
            );
        }
        assert!(scaled_value(&Pct("x".into()), 3).is_err());
    }

    #[test]
    fn healthy_pods_and_disruptions() {
        let now = jiff::Timestamp::now();
        let pods = vec![
            pod("a", true, false),
            pod("b", true, false),
            pod("c", false, false),
            pod("d", true, true),
            pod("e", true, false),
        ];
        let recent = Time(now - jiff::SignedDuration::from_secs(10));
        let old = Time(now - jiff::SignedDuration::from_secs(600));
        let previous: BTreeMap<String, Time> = [
            ("b".to_string(), recent.clone()),
            ("d".to_string(), recent.clone()),
            ("e".to_string(), old),
            ("gone".to_string(), recent.clone()),
        ]
        .into();
        let (kept, recheck) = disrupted_pods(&pods, &previous, now);
        assert_eq!(
            kept.keys().collect::<Vec<_>>(),
            vec!["b"],
            "only b is still being evicted"
        );
        assert_eq!(
            recheck,
            Some(recent.0 + jiff::SignedDuration::from_secs(120))
        );
        // a and e are healthy; b is being evicted, c unready, d deleting.
        assert_eq!(current_healthy(&pods, &kept), 2);
    }

    #[test]
    fn status_and_condition() {
        let mut pdb = PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(3),
                ..Default::default()
            },
            ..Default::default()
        };
        let now = jiff::Timestamp::now();
        let s = next_status(&pdb, 2, 1, 2, BTreeMap::new(), now).expect("changed");
        assert_eq!(s.disruptions_allowed, 1);
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SufficientPods")
        );
        pdb.status = Some(s);
        assert!(
            next_status(&pdb, 2, 1, 2, BTreeMap::new(), now).is_none(),
            "stable"
        );
        let s = next_status(&pdb, 1, 1, 2, BTreeMap::new(), now).expect("changed");
        assert_eq!(s.disruptions_allowed, 0);
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InsufficientPods")
        );
        // No expected pods: nothing may be disrupted even with healthy pods.
        let s = next_status(&pdb, 3, 0, 0, BTreeMap::new(), now).expect("changed");
        assert_eq!(s.disruptions_allowed, 0);
    }
}
