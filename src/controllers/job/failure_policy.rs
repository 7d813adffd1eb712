//! `spec.podFailurePolicy`: which rule a failed pod matches (exit codes of its
//! terminated containers, init containers second, exit code 0 never matching; or its
//! conditions) and what that means for the Job.

use k8s_openapi::api::batch::v1::PodFailurePolicy;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

/// The outcome of matching a failed pod against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Match {
    /// The Job fails with this message (a `FailJob` rule).
    pub(crate) fail_job: Option<String>,
    /// The failure counts towards the backoff limits (false for `Ignore`).
    pub(crate) counts: bool,
    /// The action of the matched rule, if any.
    pub(crate) action: Option<String>,
}

const NO_MATCH: fn() -> Match = || Match {
    fail_job: None,
    counts: true,
    action: None,
};

/// Matches `pod` (a failed pod) against the rules, first match wins.
pub(crate) fn matches(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Match {
    let Some(policy) = policy else {
        return NO_MATCH();
    };
    let status = pod.status.clone().unwrap_or_default();
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    for (index, rule) in policy.rules.iter().enumerate() {
        let action = rule.action.as_str();
        let described = if let Some(req) = &rule.on_exit_codes {
            let hit = |cs: &[ContainerStatus]| -> Option<(String, i32)> {
                cs.iter().find_map(|c| {
                    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let named = req.container_name.as_ref().is_none_or(|n| *n == c.name);
                    let listed = req.values.contains(&code);
                    let op_ok = match req.operator.as_str() {
                        "In" => listed,
                        "NotIn" => !listed,
                        _ => false,
                    };
                    (named && code != 0 && op_ok).then(|| (c.name.clone(), code))
                })
            };
            let found =
                hit(status.container_statuses.as_deref().unwrap_or_default()).or_else(|| {
                    hit(status
                        .init_container_statuses
                        .as_deref()
                        .unwrap_or_default())
                });
            found.map(|(c, code)| {
                format!(
                    "Container {c} for pod {ns}/{name} failed with exit code {code} matching {action} rule at index {index}"
                )
            })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            status
                .conditions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|c| {
                    patterns
                        .iter()
                        .any(|p| p.type_ == c.type_ && p.status == c.status)
                })
                .map(|c| {
                    format!(
                        "Pod {ns}/{name} has condition {} matching {action} rule at index {index}",
                        c.type_
                    )
                })
        } else {
            None
        };
        let Some(message) = described else { continue };
        let m = |fail_job, counts| Match {
            fail_job,
            counts,
            action: Some(action.to_string()),
        };
        match action {
            "Ignore" => return m(None, false),
            "FailIndex" | "Count" => return m(None, true),
            "FailJob" => return m(Some(message), true),
            _ => {}
        }
    }
    NO_MATCH()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed_pod(exit: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn rules() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
        ]}))
        .unwrap();
        let disrupted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        let cases = [
            (
                failed_pod(42, json!([])),
                Some(
                    "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0",
                ),
                true,
                Some("FailJob"),
            ),
            (
                failed_pod(1, disrupted.clone()),
                None,
                false,
                Some("Ignore"),
            ),
            (failed_pod(7, json!([])), None, true, Some("Count")),
            (failed_pod(1, json!([])), None, true, None),
            (failed_pod(0, json!([])), None, true, None),
        ];
        for (pod, msg, counts, action) in cases {
            let m = matches(Some(&policy), &pod);
            assert_eq!(m.fail_job.as_deref(), msg);
            assert_eq!(m.counts, counts);
            assert_eq!(m.action.as_deref(), action);
        }
        assert_eq!(matches(None, &failed_pod(42, json!([]))), NO_MATCH());
        let by_condition: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}))
        .unwrap();
        assert_eq!(
            matches(Some(&by_condition), &failed_pod(1, disrupted))
                .fail_job
                .as_deref(),
            Some("Pod ns/p has condition DisruptionTarget matching FailJob rule at index 0")
        );
    }
}
