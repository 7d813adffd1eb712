//! The DefaultTolerationSeconds admission plugin, as upstream's: pods (created or
//! updated, not subresources) that do not tolerate the `node.kubernetes.io/not-ready` and
//! `node.kubernetes.io/unreachable` NoExecute taints get tolerations for them with
//! `tolerationSeconds` (300 by default; `--default-not-ready-toleration-seconds` and
//! `--default-unreachable-toleration-seconds`), so the node lifecycle controller evicts
//! them five minutes after their node fails rather than at once.
//!
//! The durations are process-wide settings made once at server start ([`configure`]).

use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::{Value, json};

use super::{Attributes, Operation, is_main};

/// The taint a node gets when it is not ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// The taint a node gets when its kubelet stops reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// The default for both durations, in seconds.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

static NOT_READY_SECONDS: AtomicI64 = AtomicI64::new(DEFAULT_TOLERATION_SECONDS);
static UNREACHABLE_SECONDS: AtomicI64 = AtomicI64::new(DEFAULT_TOLERATION_SECONDS);

/// Sets the toleration durations added to pods (from the server flags).
pub fn configure(not_ready_seconds: i64, unreachable_seconds: i64) {
    NOT_READY_SECONDS.store(not_ready_seconds, Ordering::Relaxed);
    UNREACHABLE_SECONDS.store(unreachable_seconds, Ordering::Relaxed);
}

/// Mutating phase.
pub fn mutate(attrs: &Attributes<'_>, obj: &mut Value) {
    if attrs.operation == Operation::Delete || !is_main(attrs, "", "pods") {
        return;
    }
    add_tolerations(
        obj,
        NOT_READY_SECONDS.load(Ordering::Relaxed),
        UNREACHABLE_SECONDS.load(Ordering::Relaxed),
    );
}

/// Whether `t` tolerates a NoExecute taint with `key` (an empty key with `Exists`
/// tolerates every key; an empty effect every effect).
fn tolerates(t: &Value, key: &str) -> bool {
    let k = t["key"].as_str().unwrap_or("");
    let effect = t["effect"].as_str().unwrap_or("");
    (k == key || k.is_empty()) && (effect == "NoExecute" || effect.is_empty())
}

fn add_tolerations(pod: &mut Value, not_ready: i64, unreachable: i64) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let existing = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut add = Vec::new();
    for (key, seconds) in [
        (NOT_READY_TAINT, not_ready),
        (UNREACHABLE_TAINT, unreachable),
    ] {
        if !existing.iter().any(|t| tolerates(t, key)) {
            add.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": seconds,
            }));
        }
    }
    if add.is_empty() {
        return;
    }
    let list = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(vec![]));
    if let Some(l) = list.as_array_mut() {
        l.extend(add);
    } else {
        *list = Value::Array(add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_missing_tolerations() {
        let keys = |pod: &Value| -> Vec<(String, i64)> {
            pod["spec"]["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (
                        t["key"].as_str().unwrap_or("").to_string(),
                        t["tolerationSeconds"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        };
        let cases = [
            (
                json!({"spec": {}}),
                vec![
                    (NOT_READY_TAINT.into(), 300),
                    (UNREACHABLE_TAINT.into(), 60),
                ],
            ),
            (
                json!({"spec": {"tolerations": [{"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}}),
                vec![(NOT_READY_TAINT.into(), 5), (UNREACHABLE_TAINT.into(), 60)],
            ),
            (
                json!({"spec": {"tolerations": [{"operator": "Exists"}]}}),
                vec![(String::new(), -1)],
            ),
            (
                json!({"spec": {"tolerations": [{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}}),
                vec![
                    (UNREACHABLE_TAINT.into(), -1),
                    (NOT_READY_TAINT.into(), 300),
                    (UNREACHABLE_TAINT.into(), 60),
                ],
            ),
        ];
        for (mut pod, want) in cases {
            add_tolerations(&mut pod, 300, 60);
            assert_eq!(keys(&pod), want);
        }
    }
}
