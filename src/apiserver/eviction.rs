//! The `pods/eviction` subresource (`POST .../pods/{name}/eviction`, a `policy/v1`
//! Eviction): deletes a pod unless a PodDisruptionBudget forbids it, with upstream's
//! semantics (`pkg/registry/core/pod/storage/eviction.go`).
//!
//! - Pods that already disrupt nothing — terminal (`Succeeded`, `Failed`), not yet
//!   running (`Pending`), or already being deleted — are deleted without consulting
//!   budgets.
//! - Otherwise the budgets of the pod's namespace whose selector matches the pod are
//!   found (a null or empty selector matches nothing here). More than one is a 500.
//! - With one budget, a ready pod is evicted only if the budget's status is current
//!   (`observedGeneration`) and allows a disruption: `status.disruptionsAllowed` is
//!   decremented and the pod recorded in `status.disruptedPods`, as a compare-and-swap on
//!   the budget's resourceVersion, before the pod is deleted. A pod that is not ready may
//!   be evicted without spending the budget when the budget is healthy anyway (or its
//!   `unhealthyPodEvictionPolicy` is `AlwaysAllow`); the delete then carries the pod's
//!   resourceVersion as a precondition so a pod that became ready meanwhile is not lost.
//! - Refusals are 429 TooManyRequests with a `DisruptionBudget` cause, which
//!   `kubectl drain` retries.
//!
//! Runs inside the API server: it reads and writes through the [`Registry`] only.

use std::time::Duration;

use serde_json::{Value, json};

use super::auth::UserInfo;
use super::registry::{DeleteOptions, ListOptions, Registry, Update, WriteOptions};
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::selector::LabelSelector;
use crate::api::status::{Cause, Status};

/// How often a compare-and-swap on a pod or a budget is retried on conflicts.
const RETRIES: usize = 20;
/// Pause between conflict retries.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Upstream refuses evictions while this many approved evictions are unconfirmed.
const MAX_DISRUPTED_POD_SIZE: usize = 2000;

const TOO_MANY_PDBS: &str = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";
const VIOLATES_BUDGET: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// `POST .../pods/{name}/eviction`.
pub async fn evict(
    reg: &Registry,
    namespace: &str,
    name: &str,
    eviction: Value,
    user: Option<&UserInfo>,
) -> Result<Value, Status> {
    let opts = parse_eviction(name, &eviction, user)?;
    let pods = resource("", "v1", "pods")?;

    // Pods whose eviction disrupts nothing are deleted right away.
    let pod = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pod = reg.get(pods, Some(namespace), name).await?;
            if !can_ignore_pdb(&pod) {
                break pod;
            }
            let mut del = opts.clone();
            if should_enforce_resource_version(&pod) && del.resource_version.is_none() {
                del.resource_version = resource_version(&pod);
            }
            match reg.delete(pods, Some(namespace), name, &del).await {
                Ok(_) => return Ok(success()),
                Err(s) if s.code == 409 && opts.resource_version.is_none() && attempt < RETRIES => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(s) => return Err(s),
            }
        }
    };

    let budgets = matching_budgets(reg, namespace, &pod).await?;
    if budgets.len() > 1 {
        return Err(Status::new(500, "", TOO_MANY_PDBS));
    }
    let mut precondition_from_pod = false;
    let mut budget_name = String::new();
    if let Some(pdb) = budgets.into_iter().next() {
        budget_name = meta_str(&pdb, "name").to_string();
        if !pod_ready(&pod) && unhealthy_pod_may_go(&pdb) {
            // An unready pod does not count as healthy: evicting it spends nothing.
            precondition_from_pod = true;
        } else {
            check_and_decrement(reg, namespace, name, pdb, opts.dry_run).await?;
        }
    }

    let mut del = opts.clone();
    if precondition_from_pod {
        del.resource_version = resource_version(&pod);
    }
    match reg.delete(pods, Some(namespace), name, &del).await {
        Ok(_) => Ok(success()),
        Err(s) if s.code == 409 && precondition_from_pod && opts.resource_version.is_none() => {
            // The pod changed (it may have become ready) since the budget was consulted.
            Err(still_processing(&budget_name))
        }
        Err(s) => Err(s),
    }
}

/// Validates the Eviction body and extracts its delete options.
fn parse_eviction(
    name: &str,
    eviction: &Value,
    user: Option<&UserInfo>,
) -> Result<DeleteOptions, Status> {
    if !eviction.is_object() {
        return Err(Status::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    if let Some(kind) = eviction.get("kind").and_then(Value::as_str)
        && kind != "Eviction"
    {
        return Err(Status::bad_request(format!(
            "not a Eviction object: {kind}"
        )));
    }
    if let Some(av) = eviction.get("apiVersion").and_then(Value::as_str)
        && !matches!(av, "policy/v1" | "policy/v1beta1")
    {
        return Err(Status::bad_request(format!(
            "unsupported apiVersion {av:?} for Eviction: use policy/v1"
        )));
    }
    if meta_str(eviction, "name") != name {
        return Err(Status::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    // Clients such as kube-rs send `delete_options`, which upstream ignores as an unknown
    // field; only `deleteOptions` counts.
    let d = eviction.get("deleteOptions").unwrap_or(&Value::Null);
    let mut opts = DeleteOptions {
        grace_period: d.get("gracePeriodSeconds").and_then(Value::as_i64),
        uid: d["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: d["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        propagation: d
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: d["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All")),
        user: user.cloned(),
    };
    if opts.propagation.is_none() && d["orphanDependents"].as_bool() == Some(true) {
        opts.propagation = Some("Orphan".into());
    }
    if let Some(p) = &opts.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(Status::bad_request(format!(
            "propagationPolicy {p:?} is not supported: use Orphan, Background or Foreground"
        )));
    }
    if let Some(g) = opts.grace_period
        && g < 0
    {
        return Err(Status::bad_request(format!(
            "gracePeriodSeconds must be non-negative, got {g}"
        )));
    }
    Ok(opts)
}

/// Verifies that the budget allows one more disruption and spends it (upstream's
/// `checkAndDecrement`), retrying on conflicting budget updates.
async fn check_and_decrement(
    reg: &Registry,
    namespace: &str,
    pod_name: &str,
    mut pdb: Value,
    dry_run: bool,
) -> Result<(), Status> {
    let pdbs = resource("policy", "v1", "poddisruptionbudgets")?;
    let pdb_name = meta_str(&pdb, "name").to_string();
    for attempt in 0..RETRIES {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
            pdb = reg.get(pdbs, Some(namespace), &pdb_name).await?;
        }
        let next = decrement(&pdb, pod_name, now())?;
        if dry_run {
            return Ok(());
        }
        let opts = WriteOptions {
            field_manager: Some("kube-apiserver".into()),
            ..Default::default()
        };
        match reg
            .update(
                pdbs,
                Some(namespace),
                &pdb_name,
                Some("status"),
                Update::Replace(&next),
                &opts,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(s) if s.code == 409 => continue,
            Err(s) => return Err(s),
        }
    }
    let mut s = Status::new(
        504,
        "Timeout",
        format!("Timeout: couldn't update PodDisruptionBudget {pdb_name:?} due to conflicts"),
    );
    s.retry_after = Some(10);
    Err(s)
}

/// The budget after spending one disruption on `pod_name` at `now`, or the refusal.
fn decrement(pdb: &Value, pod_name: &str, now: String) -> Result<Value, Status> {
    let name = meta_str(pdb, "name");
    let status = &pdb["status"];
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    if observed < generation {
        return Err(still_processing(name));
    }
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
    if allowed < 0 {
        return Err(forbidden(name, "pdb disruptions allowed is negative"));
    }
    if status["disruptedPods"]
        .as_object()
        .is_some_and(|m| m.len() > MAX_DISRUPTED_POD_SIZE)
    {
        return Err(forbidden(
            name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        let mut s = Status::new(429, "TooManyRequests", VIOLATES_BUDGET);
        s.causes.push(Cause {
            reason: "DisruptionBudget".into(),
            message: format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status["desiredHealthy"].as_i64().unwrap_or(0),
                status["currentHealthy"].as_i64().unwrap_or(0)
            ),
            field: String::new(),
        });
        return Err(s);
    }
    let mut next = pdb.clone();
    next["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if allowed - 1 == 0 {
        set_disruption_allowed_false(&mut next, &now);
    }
    if !next["status"]["disruptedPods"].is_object() {
        next["status"]["disruptedPods"] = json!({});
    }
    next["status"]["disruptedPods"][pod_name] = json!(now);
    Ok(next)
}

/// Sets the `DisruptionAllowed` condition to False/InsufficientPods (the budget is spent).
fn set_disruption_allowed_false(pdb: &mut Value, now: &str) {
    let observed = pdb["status"]["observedGeneration"].clone();
    if !pdb["status"]["conditions"].is_array() {
        pdb["status"]["conditions"] = json!([]);
    }
    let Some(conds) = pdb["status"]["conditions"].as_array_mut() else {
        return;
    };
    let wanted = json!({
        "type": "DisruptionAllowed",
        "status": "False",
        "reason": "InsufficientPods",
        "message": "",
        "observedGeneration": observed,
        "lastTransitionTime": now,
    });
    match conds.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
        Some(c) => {
            if c["status"] != "False" {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!("False");
            c["reason"] = json!("InsufficientPods");
            c["message"] = json!("");
            c["observedGeneration"] = observed;
        }
        None => conds.push(wanted),
    }
}

/// The budgets in the pod's namespace whose selector matches the pod's labels.
async fn matching_budgets(
    reg: &Registry,
    namespace: &str,
    pod: &Value,
) -> Result<Vec<Value>, Status> {
    let pdbs = resource("policy", "v1", "poddisruptionbudgets")?;
    let page = reg
        .list(pdbs, Some(namespace), &ListOptions::default())
        .await?;
    Ok(page
        .items
        .into_iter()
        .filter(|pdb| budget_selects(pdb, pod))
        .collect())
}

/// Whether a budget's selector selects the pod. Invalid, null and empty selectors select
/// nothing for eviction purposes.
fn budget_selects(pdb: &Value, pod: &Value) -> bool {
    let Ok(sel) = LabelSelector::from_label_selector_json(&pdb["spec"]["selector"]) else {
        return false;
    };
    if sel.is_nothing() || sel.is_empty() {
        return false;
    }
    sel.matches(pod["metadata"]["labels"].as_object())
}

/// Whether an unready pod may be evicted without spending the budget.
fn unhealthy_pod_may_go(pdb: &Value) -> bool {
    if pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" {
        return true;
    }
    let current = pdb["status"]["currentHealthy"].as_i64().unwrap_or(0);
    let desired = pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0);
    current >= desired && desired > 0
}

/// Terminal, pending and terminating pods can be evicted without consulting budgets.
fn can_ignore_pdb(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || !pod["metadata"]["deletionTimestamp"].is_null()
}

/// Whether the delete of a budget-free pod must be pinned to the version just read (so a
/// pod that starts running meanwhile is not evicted without its budget being consulted).
fn should_enforce_resource_version(pod: &Value) -> bool {
    !matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) && pod["metadata"]["deletionTimestamp"].is_null()
}

/// The pod's `Ready` condition is `True`.
fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn resource(group: &str, version: &str, plural: &str) -> Result<&'static ResourceInfo, Status> {
    lookup(group, version, plural)
        .ok_or_else(|| Status::internal(format!("resource {plural} is not served")))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

fn resource_version(obj: &Value) -> Option<String> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn success() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    })
}

/// 429 while the budget's status has not caught up with its spec.
fn still_processing(name: &str) -> Status {
    let mut s = Status::new(429, "TooManyRequests", VIOLATES_BUDGET);
    s.retry_after = Some(10);
    s.causes.push(Cause {
        reason: "DisruptionBudget".into(),
        message: format!("The disruption budget {name} is still being processed by the server."),
        field: String::new(),
    });
    s
}

fn forbidden(name: &str, why: &str) -> Status {
    Status::forbidden(format!(
        "poddisruptionbudget.policy \"{name}\" is forbidden: {why}"
    ))
    .with_details("policy", "poddisruptionbudget", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(generation: i64, observed: i64, allowed: i64) -> Value {
        json!({
            "metadata": {"name": "web", "generation": generation, "resourceVersion": "7"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"observedGeneration": observed, "disruptionsAllowed": allowed,
                       "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2},
        })
    }

    #[test]
    fn decrement_follows_the_budget() {
        struct Case {
            name: &'static str,
            pdb: Value,
            code: Option<u16>,
            cause: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "no disruptions allowed",
                pdb: pdb(1, 1, 0),
                code: Some(429),
                cause: Some("The disruption budget web needs 2 healthy pods and has 2 currently"),
            },
            Case {
                name: "stale status",
                pdb: pdb(2, 1, 3),
                code: Some(429),
                cause: Some("The disruption budget web is still being processed by the server."),
            },
            Case {
                name: "negative",
                pdb: pdb(1, 1, -1),
                code: Some(403),
                cause: None,
            },
            Case {
                name: "allowed",
                pdb: pdb(1, 1, 1),
                code: None,
                cause: None,
            },
        ];
        for c in cases {
            match decrement(&c.pdb, "p1", "2024-01-01T00:00:00Z".into()) {
                Err(s) => {
                    assert_eq!(Some(s.code), c.code, "{}", c.name);
                    if s.code == 429 {
                        assert_eq!(s.reason, "TooManyRequests", "{}", c.name);
                        assert_eq!(s.message, VIOLATES_BUDGET, "{}", c.name);
                    }
                    if let Some(cause) = c.cause {
                        assert_eq!(s.causes[0].reason, "DisruptionBudget", "{}", c.name);
                        assert_eq!(s.causes[0].message, cause, "{}", c.name);
                    }
                }
                Ok(next) => {
                    assert_eq!(c.code, None, "{}", c.name);
                    assert_eq!(next["status"]["disruptionsAllowed"], 0);
                    assert_eq!(
                        next["status"]["disruptedPods"]["p1"],
                        "2024-01-01T00:00:00Z"
                    );
                    assert_eq!(
                        next["status"]["conditions"][0]["reason"],
                        "InsufficientPods"
                    );
                    assert_eq!(
                        next["metadata"]["resourceVersion"], "7",
                        "CAS on the budget"
                    );
                }
            }
        }
    }

    #[test]
    fn which_pods_skip_budgets() {
        let cases = [
            (json!({"status": {"phase": "Running"}}), false),
            (json!({"status": {"phase": "Pending"}}), true),
            (json!({"status": {"phase": "Succeeded"}}), true),
            (json!({"status": {"phase": "Failed"}}), true),
            (
                json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"},
                       "status": {"phase": "Running"}}),
                true,
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(can_ignore_pdb(&pod), want, "{pod}");
        }
    }

    #[test]
    fn selectors_for_eviction() {
        let pod = json!({"metadata": {"labels": {"app": "web"}}});
        let cases = [
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (json!({}), false),
            (Value::Null, false),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]}),
                true,
            ),
        ];
        for (sel, want) in cases {
            let pdb = json!({"spec": {"selector": sel}});
            assert_eq!(budget_selects(&pdb, &pod), want, "{sel}");
        }
    }

    #[test]
    fn eviction_body_validation() {
        let ok = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"},
                        "deleteOptions": {"gracePeriodSeconds": 0, "dryRun": ["All"],
                                          "preconditions": {"uid": "u1"}}});
        let opts = parse_eviction("p", &ok, None).unwrap();
        assert_eq!(opts.grace_period, Some(0));
        assert!(opts.dry_run);
        assert_eq!(opts.uid.as_deref(), Some("u1"));
        let s = parse_eviction("q", &ok, None).unwrap_err();
        assert_eq!(s.code, 400);
        assert_eq!(
            s.message,
            "name in URL does not match name in Eviction object"
        );
        // kube-rs's body shape: no kind, snake_case options (ignored, as upstream does).
        let kube_rs =
            json!({"metadata": {"name": "p"}, "delete_options": {"gracePeriodSeconds": 5}});
        assert_eq!(
            parse_eviction("p", &kube_rs, None).unwrap().grace_period,
            None
        );
        let bad =
            json!({"metadata": {"name": "p"}, "deleteOptions": {"propagationPolicy": "Sideways"}});
        assert_eq!(parse_eviction("p", &bad, None).unwrap_err().code, 400);
    }

    #[test]
    fn unready_pods_and_healthy_budgets() {
        let mut b = pdb(1, 1, 0);
        assert!(unhealthy_pod_may_go(&b), "2 healthy of 2 desired");
        b["status"]["currentHealthy"] = json!(1);
        assert!(!unhealthy_pod_may_go(&b));
        b["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        assert!(unhealthy_pod_may_go(&b));
    }
}
