//! The ResourceQuota admission plugin, as upstream's: every write that charges quota
//! (creation of any namespaced object; updates of Services and PersistentVolumeClaims by
//! their increase) is checked against each ResourceQuota of the namespace that applies to
//! it (limits something the object charges; scopes match), and on success the charge is
//! written to the quotas' `status.used` before the object is stored.
//!
//! Like upstream, admission enforces `status.hard` (what the quota controller has
//! observed), so a quota takes effect once the controller has filled its status; a quota
//! whose usage is not yet known for a limited resource rejects (`status unknown for
//! quota`). Pods must state requests/limits for quota'd cpu/memory (`failed quota: q:
//! must specify limits.cpu for: app`). Overuse is 403 `exceeded quota: q, requested:
//! pods=1, used: pods=2, limited: pods=2`.
//!
//! Race freedom: charges for one namespace are serialised by an in-process lock held from
//! evaluation to the status write, and the write is a compare-and-swap on the quota's
//! resourceVersion (a concurrent controller write makes us re-evaluate). The quota
//! controller recomputes usage from the stored objects (freeing quota on deletion).
//! Accounting lives in [`crate::api::quota`], shared with the controller.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

use super::{Attributes, Operation, forbidden};
use crate::api::ResourceInfo;
use crate::api::quota::{
    self, Quantity, ResourceList, matching_resources, pod_constraints, quota_matches, resource_list,
};
use crate::api::resources::lookup;
use crate::api::status::Status;
use crate::apiserver::registry::{ListOptions, Registry, Update, WriteOptions};

/// The field manager of quota status writes made by admission.
const MANAGER: &str = "kube-apiserver";

/// How often a charge is re-evaluated when the quota changed underneath it.
const MAX_ATTEMPTS: usize = 8;

type NamespaceLocks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

static LOCKS: LazyLock<NamespaceLocks> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The lock serialising quota charges in `ns`.
fn namespace_lock(ns: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut map = match LOCKS.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    if map.len() > 1024 {
        map.retain(|_, l| Arc::strong_count(l) > 1);
    }
    map.entry(ns.to_string()).or_default().clone()
}

fn resource_quotas() -> Result<&'static ResourceInfo, Status> {
    lookup("", "v1", "resourcequotas")
        .ok_or_else(|| Status::internal("the resourcequotas resource is not registered"))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Whether upstream's evaluator for the kind handles the operation.
fn handles(attrs: &Attributes<'_>) -> bool {
    if attrs.subresource.is_some() || !attrs.resource.namespaced {
        return false;
    }
    match attrs.operation {
        Operation::Create => true,
        Operation::Update => {
            attrs.resource.group.is_empty()
                && matches!(attrs.resource.plural, "services" | "persistentvolumeclaims")
        }
        Operation::Delete => false,
    }
}

/// The boxed future of [`validate`].
pub type Admission<'a> = Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'a>>;

/// Validating phase: charges and enforces quota. Boxed, as the status write passes
/// through admission again (a recursion that ends at once: subresources are ignored).
pub fn validate<'a>(
    reg: &'a Registry,
    attrs: &'a Attributes<'a>,
    obj: &'a Value,
    old: Option<&'a Value>,
) -> Admission<'a> {
    Box::pin(charge(reg, attrs, obj, old))
}

async fn charge(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), Status> {
    if !handles(attrs) {
        return Ok(());
    }
    let Some(ns) = attrs
        .namespace
        .or_else(|| obj["metadata"]["namespace"].as_str())
    else {
        return Ok(());
    };
    let rq = resource_quotas()?;
    // Fast path, without the lock: nothing to charge.
    let quotas = reg.list(rq, Some(ns), &ListOptions::default()).await?.items;
    if quotas.is_empty() || evaluate(attrs, obj, old, &quotas, now())?.is_empty() {
        return Ok(());
    }
    // A create that will fail because the object exists charges nothing.
    if attrs.operation == Operation::Create
        && reg.get(attrs.resource, Some(ns), attrs.name).await.is_ok()
    {
        return Ok(());
    }
    let lock = namespace_lock(ns);
    let _guard = lock.lock().await;
    let mut charged: BTreeSet<String> = BTreeSet::new();
    for _ in 0..MAX_ATTEMPTS {
        let quotas: Vec<Value> = reg
            .list(rq, Some(ns), &ListOptions::default())
            .await?
            .items
            .into_iter()
            .filter(|q| !charged.contains(q["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        let updated = evaluate(attrs, obj, old, &quotas, now())?;
        if updated.is_empty() || attrs.dry_run {
            return Ok(());
        }
        let mut conflict = false;
        for q in &updated {
            let name = q["metadata"]["name"].as_str().unwrap_or("").to_string();
            let opts = WriteOptions {
                field_manager: Some(MANAGER.into()),
                ..WriteOptions::default()
            };
            match reg
                .update(
                    rq,
                    Some(ns),
                    &name,
                    Some("status"),
                    Update::Replace(q),
                    &opts,
                )
                .await
            {
                Ok(_) => {
                    charged.insert(name);
                }
                Err(s) if s.code == 409 => {
                    conflict = true;
                    break;
                }
                Err(s) => return Err(s),
            }
        }
        if !conflict {
            return Ok(());
        }
    }
    Err(Status::conflict(
        "",
        "resourcequotas",
        ns,
        "too many concurrent quota updates; please retry",
    ))
}

fn names(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

/// Checks the request against `quotas`; returns the quotas whose `status.used` must be
/// raised (with the new usage), empty when nothing is charged.
fn evaluate(
    attrs: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
    quotas: &[Value],
    now: i64,
) -> Result<Vec<Value>, Status> {
    let (group, plural) = (attrs.resource.group, attrs.resource.plural);
    let pods = (group, plural) == ("", "pods");
    let mut interesting: Vec<(&Value, ResourceList, ResourceList)> = Vec::new();
    for q in quotas {
        let qname = q["metadata"]["name"].as_str().unwrap_or("");
        let hard = resource_list(&q["status"]["hard"]);
        if !quota_matches(q, &hard, group, plural, obj) {
            continue;
        }
        let restricted = matching_resources(&hard, group, plural);
        if pods {
            pod_constraints(obj, &restricted)
                .map_err(|e| forbidden(attrs, obj, format!("failed quota: {qname}: {e}")))?;
        }
        let used = resource_list(&q["status"]["used"]);
        if !restricted.iter().all(|r| used.contains_key(r)) {
            return Err(forbidden(
                attrs,
                obj,
                format!(
                    "status unknown for quota: {qname}, resources: {}",
                    names(&restricted)
                ),
            ));
        }
        interesting.push((q, hard, used));
    }
    if interesting.is_empty() {
        return Ok(vec![]);
    }
    let mut delta = quota::usage(group, plural, obj, now);
    let negative: BTreeSet<String> = delta
        .iter()
        .filter(|(_, v)| v.nanos < 0)
        .map(|(k, _)| k.clone())
        .collect();
    if !negative.is_empty() {
        return Err(forbidden(
            attrs,
            obj,
            format!(
                "quota usage is negative for resource(s): {}",
                names(&negative)
            ),
        ));
    }
    if attrs.operation == Operation::Update
        && let Some(old) = old
        && old["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty())
    {
        delta = quota::subtract_non_negative(&delta, &quota::usage(group, plural, old, now));
    }
    delta.retain(|_, v| !v.is_zero());
    if delta.is_empty() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for (q, hard, used) in interesting {
        let requested = quota::mask(&delta, hard.keys());
        if requested.is_empty() {
            continue;
        }
        let new_used = quota::add(&used, &requested);
        let exceeded: BTreeSet<String> = requested
            .keys()
            .filter(|k| {
                let limit = hard.get(*k).copied().unwrap_or_else(Quantity::zero);
                new_used.get(*k).is_some_and(|u| *u > limit)
            })
            .cloned()
            .collect();
        if !exceeded.is_empty() {
            return Err(forbidden(
                attrs,
                obj,
                format!(
                    "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                    q["metadata"]["name"].as_str().unwrap_or(""),
                    quota::pretty(&quota::mask(&requested, exceeded.iter())),
                    quota::pretty(&quota::mask(&used, exceeded.iter())),
                    quota::pretty(&quota::mask(&hard, exceeded.iter())),
                ),
            ));
        }
        let mut charged = q.clone();
        charged["status"]["used"] = quota::to_json(&new_used);
        out.push(charged);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(plural: &str, op: Operation, name: &'a str) -> Attributes<'a> {
        let group = if plural == "deployments" { "apps" } else { "" };
        Attributes {
            operation: op,
            resource: lookup(group, "v1", plural).unwrap(),
            subresource: None,
            namespace: Some("default"),
            name,
            user: None,
            dry_run: false,
        }
    }

    fn quota(name: &str, hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": "7"},
               "spec": {"hard": hard.clone()}, "status": {"hard": hard, "used": used}})
    }

    fn pod(name: &str, cpu: Option<&str>) -> Value {
        let res = match cpu {
            Some(c) => json!({"requests": {"cpu": c}, "limits": {"cpu": c}}),
            None => json!({}),
        };
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "resources": res}]}})
    }

    #[test]
    fn pods_count() {
        let q = [quota("q", json!({"pods": "2"}), json!({"pods": "2"}))];
        let a = attrs("pods", Operation::Create, "p3");
        let err = evaluate(&a, &pod("p3", None), None, &q, 0).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        );
        let q = [quota("q", json!({"pods": "2"}), json!({"pods": "1"}))];
        let out = evaluate(&a, &pod("p3", None), None, &q, 0).unwrap();
        assert_eq!(out[0]["status"]["used"]["pods"], "2");
    }

    #[test]
    fn compute_constraints_and_status() {
        let q = [quota(
            "compute",
            json!({"requests.cpu": "1", "limits.cpu": "2"}),
            json!({"requests.cpu": "500m", "limits.cpu": "500m"}),
        )];
        let a = attrs("pods", Operation::Create, "x");
        let err = evaluate(&a, &pod("x", None), None, &q, 0).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"x\" is forbidden: failed quota: compute: must specify limits.cpu for: app; requests.cpu for: app"
        );
        let err = evaluate(&a, &pod("x", Some("600m")), None, &q, 0).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"x\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
        );
        let out = evaluate(&a, &pod("x", Some("500m")), None, &q, 0).unwrap();
        assert_eq!(out[0]["status"]["used"]["requests.cpu"], "1");
        assert_eq!(out[0]["status"]["used"]["limits.cpu"], "1");
        let unknown = [quota("new", json!({"pods": "2"}), json!({}))];
        let err = evaluate(&a, &pod("x", None), None, &unknown, 0).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"x\" is forbidden: status unknown for quota: new, resources: pods"
        );
    }

    #[test]
    fn services_and_counts() {
        let q = [quota(
            "svc",
            json!({"services.nodeports": "1", "count/deployments.apps": "1"}),
            json!({"services.nodeports": "0", "count/deployments.apps": "1"}),
        )];
        let svc = json!({"metadata": {"name": "s", "resourceVersion": "3"},
            "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        let a = attrs("services", Operation::Create, "s");
        let err = evaluate(&a, &svc, None, &q, 0).unwrap_err();
        assert!(err.message.ends_with(
            "exceeded quota: svc, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"
        ));
        // An update charges only the increase.
        let up = attrs("services", Operation::Update, "s");
        assert!(evaluate(&up, &svc, Some(&svc), &q, 0).unwrap().is_empty());
        let d = attrs("deployments", Operation::Create, "web");
        let err = evaluate(&d, &json!({"metadata": {"name": "web"}}), None, &q, 0).unwrap_err();
        assert_eq!(
            err.message,
            "deployments.apps \"web\" is forbidden: exceeded quota: svc, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"
        );
        // Quotas with scopes only apply to pods.
        let mut scoped = quota("be", json!({"pods": "0"}), json!({"pods": "0"}));
        scoped["spec"]["scopes"] = json!(["BestEffort"]);
        let p = attrs("pods", Operation::Create, "x");
        assert!(
            evaluate(
                &p,
                &pod("x", Some("1")),
                None,
                std::slice::from_ref(&scoped),
                0
            )
            .unwrap()
            .is_empty()
        );
        assert!(evaluate(&p, &pod("x", None), None, &[scoped], 0).is_err());
    }
}
