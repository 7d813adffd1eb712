//! Pod facts the workload controllers share (upstream's `podutil` and
//! `controller_utils`): active, ready, available after `minReadySeconds`, which pods to
//! delete first when scaling down, and the pod a template stamps out.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

/// Pods whose cost of deletion is annotated here go later (`PodDeletionCost`).
pub(crate) const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pod that counts towards replicas: not finished, not being deleted.
pub(crate) fn is_active(pod: &Pod) -> bool {
    let phase = phase(pod);
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// When the pod's `Ready` condition last became `True`, if it is ready.
fn ready_condition(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// The pod's `Ready` condition is `True`.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some()
}

/// When a ready pod becomes available: `minReadySeconds` after it became ready (`None`
/// when it is not ready). A pod without a transition time is available at once only
/// with `minReadySeconds` 0.
pub(crate) fn available_at(pod: &Pod, min_ready_seconds: i32) -> Option<jiff::Timestamp> {
    let since = ready_condition(pod)?;
    if min_ready_seconds <= 0 {
        return Some(jiff::Timestamp::MIN);
    }
    let since = since?;
    since
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        )))
        .ok()
}

/// Ready for at least `minReadySeconds` (upstream's `IsPodAvailable`: strictly after).
pub(crate) fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match available_at(pod, min_ready_seconds) {
        Some(t) if min_ready_seconds <= 0 => t <= now,
        Some(t) => t < now,
        None => false,
    }
}

/// The controller reference of an object, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.annotations()
        .get(DELETION_COST)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

/// Floor of log2 of the time since `t` (in nanoseconds); -1 for `t` in the future.
fn log_age(t: jiff::Timestamp, now: jiff::Timestamp) -> i64 {
    let d = now.as_nanosecond() - t.as_nanosecond();
    if d <= 0 {
        return -1;
    }
    // Exact floor(log2) of a positive integer.
    i64::from(127 - d.leading_zeros())
}

/// Orders timestamps "newer first"; missing ones come first. With `now`, times in the
/// same power-of-two age bucket tie and fall back to uid order, so scale-down picks
/// pseudo-randomly among pods of similar age (upstream's `LogarithmicScaleDown`).
fn newer_first(
    a: Option<jiff::Timestamp>,
    b: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    uids: (&str, &str),
) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) if a == b => Ordering::Equal,
        (Some(a), Some(b)) => match log_age(a, now).cmp(&log_age(b, now)) {
            Ordering::Equal => uids.0.cmp(uids.1),
            other => other,
        },
    }
}

/// Compares two pods for deletion: `Less` means `a` should go first. `rank` is how many
/// related active pods share the pod's node (pods on crowded nodes go first).
fn cmp_for_deletion(a: &Pod, ra: usize, b: &Pod, rb: usize, now: jiff::Timestamp) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let (na, nb) = (node(a), node(b));
    // 1. Unassigned before assigned.
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 2. Pending < Unknown < Running.
    let by_phase = phase_ordinal(a).cmp(&phase_ordinal(b));
    if by_phase != Ordering::Equal {
        return by_phase;
    }
    // 3. Not ready before ready.
    let (ready_a, ready_b) = (is_ready(a), is_ready(b));
    if ready_a != ready_b {
        return if ready_a {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    // 4. Lower deletion cost first.
    let by_cost = deletion_cost(a).cmp(&deletion_cost(b));
    if by_cost != Ordering::Equal {
        return by_cost;
    }
    // 5. Doubled up (more colocated related pods) first.
    if ra != rb {
        return rb.cmp(&ra);
    }
    let uids = (
        a.metadata.uid.as_deref().unwrap_or(""),
        b.metadata.uid.as_deref().unwrap_or(""),
    );
    // 6. Ready for a shorter time first.
    if ready_a && ready_b {
        let since = |p: &Pod| ready_condition(p).flatten();
        let by_ready = newer_first(since(a), since(b), now, uids);
        if by_ready != Ordering::Equal {
            return by_ready;
        }
    }
    // 7. More restarts first.
    let by_restarts = max_restarts(b).cmp(&max_restarts(a));
    if by_restarts != Ordering::Equal {
        return by_restarts;
    }
    // 8. Newer first.
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    newer_first(created(a), created(b), now, uids)
}

/// The `n` pods to delete first out of `pods`. `related` are the pods of every sibling
/// controller (the same Deployment's ReplicaSets), to spread the survivors over nodes.
pub(crate) fn pods_to_delete(
    pods: &[Arc<Pod>],
    related: &[Arc<Pod>],
    n: usize,
    now: jiff::Timestamp,
) -> Vec<Arc<Pod>> {
    if n >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: HashMap<String, usize> = HashMap::new();
    for p in related.iter().filter(|p| is_active(p)) {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        *on_node.entry(node).or_default() += 1;
    }
    let mut ranked: Vec<(Arc<Pod>, usize)> = pods
        .iter()
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            (p.clone(), on_node.get(&node).copied().unwrap_or(0))
        })
        .collect();
    ranked.sort_by(|(a, ra), (b, rb)| cmp_for_deletion(a, *ra, b, *rb, now));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

/// The pod `template` stamps out for its controller: `generateName` `<prefix>`, the
/// template's labels, annotations and finalizers, the controller reference, its spec.
pub(crate) fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: &str,
    controller_ref: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The `generateName` of a controller's pods: `<name>-`, or the name alone when that
/// would be too long (the API server truncates it further if needed).
pub(crate) fn pods_prefix(controller_name: &str) -> String {
    let prefix = format!("{controller_name}-");
    if prefix.len() > 253 {
        controller_name.to_string()
    } else {
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready: Option<&str>,
        restarts: i32,
        created: &str,
    ) -> Arc<Pod> {
        let mut conditions = vec![];
        if let Some(since) = ready {
            conditions
                .push(json!({"type": "Ready", "status": "True", "lastTransitionTime": since}));
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": phase, "conditions": conditions,
                           "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": ready.is_some(), "restartCount": restarts}]},
            }))
            .unwrap(),
        )
    }

    fn now() -> jiff::Timestamp {
        "2025-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn deletion_order() {
        let t_old = "2025-01-01T10:00:00Z";
        let t_new = "2025-01-01T11:59:00Z";
        // Each case: pods (a, b); `a` must be deleted before `b`.
        let cases = [
            (
                "unassigned first",
                pod("a", "", "Pending", None, 0, t_old),
                pod("b", "n1", "Pending", None, 0, t_old),
            ),
            (
                "pending before running",
                pod("a", "n1", "Pending", None, 0, t_old),
                pod("b", "n1", "Running", None, 0, t_old),
            ),
            (
                "unknown before running",
                pod("a", "n1", "Unknown", None, 0, t_old),
                pod("b", "n1", "Running", None, 0, t_old),
            ),
            (
                "not ready before ready",
                pod("a", "n1", "Running", None, 0, t_old),
                pod("b", "n1", "Running", Some(t_old), 0, t_old),
            ),
            (
                "ready more recently first",
                pod("a", "n1", "Running", Some(t_new), 0, t_old),
                pod("b", "n1", "Running", Some(t_old), 0, t_old),
            ),
            (
                "more restarts first",
                pod("a", "n1", "Running", Some(t_old), 5, t_old),
                pod("b", "n1", "Running", Some(t_old), 1, t_old),
            ),
            (
                "newer first",
                pod("a", "n1", "Running", Some(t_old), 0, t_new),
                pod("b", "n1", "Running", Some(t_old), 0, t_old),
            ),
        ];
        for (what, a, b) in cases {
            assert_eq!(
                cmp_for_deletion(&a, 1, &b, 1, now()),
                Ordering::Less,
                "{what}"
            );
            assert_eq!(
                cmp_for_deletion(&b, 1, &a, 1, now()),
                Ordering::Greater,
                "{what} (reversed)"
            );
            let picked = pods_to_delete(&[b.clone(), a.clone()], &[], 1, now());
            assert_eq!(picked[0].name_any(), "a", "{what}: pods_to_delete");
        }
        // Doubled-up pods go first.
        let a = pod("a", "n1", "Running", Some(t_old), 0, t_old);
        let b = pod("b", "n2", "Running", Some(t_old), 0, t_old);
        let c = pod("c", "n1", "Running", Some(t_old), 0, t_old);
        let picked = pods_to_delete(
            &[b.clone(), a.clone()],
            &[a.clone(), b.clone(), c],
            1,
            now(),
        );
        assert_eq!(picked[0].name_any(), "a");
        // Deletion cost.
        let mut cheap = (*pod("a", "n1", "Running", Some(t_old), 0, t_old)).clone();
        cheap.metadata.annotations = Some([(DELETION_COST.to_string(), "-5".to_string())].into());
        let dear = pod("b", "n1", "Running", Some(t_old), 9, t_new);
        assert_eq!(cmp_for_deletion(&cheap, 1, &dear, 1, now()), Ordering::Less);
        // All of them when n covers them.
        assert_eq!(
            pods_to_delete(&[a.clone(), b.clone()], &[], 5, now()).len(),
            2
        );
    }

    #[test]
    fn readiness_and_availability() {
        let ready = pod(
            "a",
            "n1",
            "Running",
            Some("2025-01-01T11:59:50Z"),
            0,
            "2025-01-01T11:00:00Z",
        );
        let unready = pod("b", "n1", "Running", None, 0, "2025-01-01T11:00:00Z");
        assert!(is_ready(&ready) && !is_ready(&unready));
        assert!(is_available(&ready, 0, now()));
        assert!(
            is_available(&ready, 5, now()),
            "ready 10s ago, minReadySeconds 5"
        );
        assert!(
            !is_available(&ready, 10, now()),
            "exactly 10s is not yet available"
        );
        assert!(!is_available(&ready, 30, now()));
        assert_eq!(
            available_at(&ready, 30),
            Some("2025-01-01T12:00:20Z".parse().unwrap())
        );
        assert!(!is_available(&unready, 0, now()));
        let mut done = (*unready).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(is_active(&unready) && !is_active(&done));
    }

    #[test]
    fn template_to_pod() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let p = pod_from_template(&template, "ns", &pods_prefix("web"), owner.clone());
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
        assert_eq!(p.annotations().get("a").map(String::as_str), Some("b"));
        assert_eq!(controller_of(&p.metadata), Some(&owner));
        assert_eq!(
            p.spec.unwrap().containers[0].image.as_deref(),
            Some("busybox")
        );
    }
}
