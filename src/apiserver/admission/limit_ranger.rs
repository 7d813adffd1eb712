//! The LimitRanger admission plugin, as upstream's, driven by the LimitRange objects of
//! the request's namespace:
//!
//! - mutating, on Pod creation: containers (and init containers) without a request or
//!   limit for a resource get the `defaultRequest`/`default` of the `Container` items,
//!   recorded in the `kubernetes.io/limit-ranger` annotation
//!   (`LimitRanger plugin set: cpu, memory request for container app; ...`);
//! - validating, on Pod creation: `Container` items' `min`, `max` and
//!   `maxLimitRequestRatio` per container, `Pod` items' against the pod's aggregate
//!   requests/limits; on PersistentVolumeClaim creation and update: `min`/`max` of the
//!   requested storage. Violations are 403 Forbidden with upstream's messages
//!   (`maximum cpu usage per Container is 1, but limit is 2`).
//!
//! Reads LimitRanges through the registry; writes nothing.

use serde_json::{Map, Value, json};

use super::{Attributes, Operation, aggregate, forbidden, is_main};
use crate::api::quota::{
    Quantity, ResourceList, pod_limits, pod_qos_class, pod_requests, resource_list,
};
use crate::api::resources::lookup;
use crate::api::status::Status;
use crate::apiserver::registry::{ListOptions, Registry};

/// The annotation listing what the plugin defaulted.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The LimitRanges of a namespace.
async fn limit_ranges(reg: &Registry, ns: &str) -> Result<Vec<Value>, Status> {
    let Some(ri) = lookup("", "v1", "limitranges") else {
        return Ok(vec![]);
    };
    Ok(reg.list(ri, Some(ns), &ListOptions::default()).await?.items)
}

fn namespace<'a>(attrs: &Attributes<'a>, obj: &'a Value) -> Option<&'a str> {
    attrs
        .namespace
        .or_else(|| obj["metadata"]["namespace"].as_str())
}

/// Mutating phase.
pub async fn mutate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &mut Value,
    _old: Option<&Value>,
) -> Result<(), Status> {
    if attrs.operation != Operation::Create || !is_main(attrs, "", "pods") {
        return Ok(());
    }
    let Some(ns) = namespace(attrs, obj).map(str::to_string) else {
        return Ok(());
    };
    for lr in limit_ranges(reg, &ns).await? {
        let (requests, limits) = container_defaults(&lr);
        if !requests.is_empty() || !limits.is_empty() {
            merge_defaults(obj, &requests, &limits);
        }
    }
    Ok(())
}

/// The default requests and limits of a LimitRange's `Container` items (later items win).
fn container_defaults(lr: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let mut requests = Map::new();
    let mut limits = Map::new();
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"].as_str() != Some("Container") {
            continue;
        }
        for (src, dst) in [("defaultRequest", &mut requests), ("default", &mut limits)] {
            for (k, v) in item[src].as_object().into_iter().flatten() {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
    (requests, limits)
}

/// Sets missing requests/limits on every container and records them in the annotation.
fn merge_defaults(pod: &mut Value, requests: &Map<String, Value>, limits: &Map<String, Value>) {
    let mut notes: Vec<String> = Vec::new();
    for (list, what) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(containers) = pod["spec"].get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut() {
            let name = c["name"].as_str().unwrap_or("").to_string();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let mut set_requests = Vec::new();
            let mut set_limits = Vec::new();
            for (field, defaults, set) in [
                ("limits", limits, &mut set_limits),
                ("requests", requests, &mut set_requests),
            ] {
                if defaults.is_empty() {
                    continue;
                }
                if !c["resources"][field].is_object() {
                    c["resources"][field] = json!({});
                }
                let Some(have) = c["resources"][field].as_object_mut() else {
                    continue;
                };
                for (k, v) in defaults {
                    if !have.contains_key(k) {
                        have.insert(k.clone(), v.clone());
                        set.push(k.clone());
                    }
                }
            }
            for (set, kind) in [(&mut set_requests, "request"), (&mut set_limits, "limit")] {
                if !set.is_empty() {
                    set.sort();
                    notes.push(format!("{} {kind} for {what} {name}", set.join(", ")));
                }
            }
        }
    }
    if notes.is_empty() {
        return;
    }
    // Defaulting computed the QoS class before these resources existed.
    if pod["status"].is_object() {
        pod["status"]["qosClass"] = json!(pod_qos_class(pod));
    }
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][ANNOTATION] =
        json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
}

/// Validating phase.
pub async fn validate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &Value,
    _old: Option<&Value>,
) -> Result<(), Status> {
    let pod = attrs.operation == Operation::Create && is_main(attrs, "", "pods");
    let pvc = matches!(attrs.operation, Operation::Create | Operation::Update)
        && is_main(attrs, "", "persistentvolumeclaims");
    if !pod && !pvc {
        return Ok(());
    }
    let Some(ns) = namespace(attrs, obj) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for lr in limit_ranges(reg, ns).await? {
        if pod {
            errors.extend(validate_pod(&lr, obj));
        } else {
            errors.extend(validate_pvc(&lr, obj));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(forbidden(attrs, obj, aggregate(&errors)))
    }
}

/// Milli-unit values (upstream compares at milli precision where it can).
fn milli(q: Option<&Quantity>) -> i128 {
    q.map_or(0, Quantity::milli_value)
}

fn min_constraint(
    kind: &str,
    resource: &str,
    enforced: Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let req = requests.get(resource);
    let lim = limits.get(resource);
    let e = enforced.milli_value();
    let Some(r) = req else {
        return Some(format!(
            "minimum {resource} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if milli(req) < e {
        return Some(format!(
            "minimum {resource} usage per {kind} is {enforced}, but request is {r}"
        ));
    }
    if let Some(l) = lim
        && milli(lim) < e
    {
        return Some(format!(
            "minimum {resource} usage per {kind} is {enforced}, but limit is {l}"
        ));
    }
    None
}

fn max_constraint(
    kind: &str,
    resource: &str,
    enforced: Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let req = requests.get(resource);
    let lim = limits.get(resource);
    let e = enforced.milli_value();
    let Some(l) = lim else {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if milli(lim) > e {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}, but limit is {l}"
        ));
    }
    if let Some(r) = req
        && milli(req) > e
    {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}, but request is {r}"
        ));
    }
    None
}

fn max_request_constraint(
    kind: &str,
    resource: &str,
    enforced: Quantity,
    requests: &ResourceList,
) -> Option<String> {
    let req = requests.get(resource);
    let Some(r) = req else {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if milli(req) > enforced.milli_value() {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}, but request is {r}"
        ));
    }
    None
}

fn ratio_constraint(
    kind: &str,
    resource: &str,
    enforced: Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let req = milli(requests.get(resource));
    let lim = milli(limits.get(resource));
    if req == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    if lim == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let ratio = lim as f64 / req as f64;
    #[allow(clippy::cast_precision_loss)]
    let max = enforced.milli_value() as f64;
    if ratio * 1000.0 > max {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but provided ratio is {ratio:.6}"
        ));
    }
    None
}

/// Checks `min`, `max` and `maxLimitRequestRatio` of one item against requests/limits.
fn check_item(
    item: &Value,
    kind: &str,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (k, v) in resource_list(&item["min"]) {
        errors.extend(min_constraint(kind, &k, v, requests, limits));
    }
    for (k, v) in resource_list(&item["max"]) {
        errors.extend(max_constraint(kind, &k, v, requests, limits));
    }
    for (k, v) in resource_list(&item["maxLimitRequestRatio"]) {
        errors.extend(ratio_constraint(kind, &k, v, requests, limits));
    }
    errors
}

/// A pod against one LimitRange.
fn validate_pod(lr: &Value, pod: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("Container") => {
                for list in ["containers", "initContainers"] {
                    for c in pod["spec"][list].as_array().into_iter().flatten() {
                        let requests = resource_list(&c["resources"]["requests"]);
                        let limits = resource_list(&c["resources"]["limits"]);
                        errors.extend(check_item(item, "Container", &requests, &limits));
                    }
                }
            }
            Some("Pod") => {
                errors.extend(check_item(
                    item,
                    "Pod",
                    &pod_requests(pod),
                    &pod_limits(pod),
                ));
            }
            _ => {}
        }
    }
    errors
}

/// A claim against one LimitRange: storage requests within `min`/`max`.
fn validate_pvc(lr: &Value, pvc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let requests = resource_list(&pvc["spec"]["resources"]["requests"]);
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"].as_str() != Some("PersistentVolumeClaim") {
            continue;
        }
        for (k, v) in resource_list(&item["min"]) {
            errors.extend(min_constraint(
                "PersistentVolumeClaim",
                &k,
                v,
                &requests,
                &ResourceList::new(),
            ));
        }
        for (k, v) in resource_list(&item["max"]) {
            errors.extend(max_request_constraint(
                "PersistentVolumeClaim",
                &k,
                v,
                &requests,
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(items: Value) -> Value {
        json!({"spec": {"limits": items}})
    }

    #[test]
    fn defaults_and_annotation() {
        let range = lr(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "64Mi"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "init"}],
        "containers": [
            {"name": "app"},
            {"name": "side", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}},
        ]}});
        let (r, l) = container_defaults(&range);
        merge_defaults(&mut pod, &r, &l);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "100m"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "128Mi"
        );
        assert_eq!(
            pod["spec"]["containers"][1]["resources"]["limits"]["cpu"],
            "1"
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; \
             memory request for container side; memory limit for container side; \
             cpu, memory request for init container init; cpu, memory limit for init container init"
        );
    }

    #[test]
    fn constraint_messages() {
        let pod = |req: Value, lim: Value| json!({"spec": {"containers": [{"name": "c", "resources": {"requests": req, "limits": lim}}]}});
        let cases = [
            (
                json!([{"type": "Container", "max": {"cpu": "1"}}]),
                pod(json!({"cpu": "500m"}), json!({"cpu": "2"})),
                vec!["maximum cpu usage per Container is 1, but limit is 2"],
            ),
            (
                json!([{"type": "Container", "max": {"cpu": "1"}}]),
                pod(json!({"cpu": "500m"}), json!({})),
                vec!["maximum cpu usage per Container is 1.  No limit is specified"],
            ),
            (
                json!([{"type": "Container", "min": {"memory": "64Mi"}}]),
                pod(json!({"memory": "32Mi"}), json!({"memory": "64Mi"})),
                vec!["minimum memory usage per Container is 64Mi, but request is 32Mi"],
            ),
            (
                json!([{"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}]),
                pod(json!({"cpu": "250m"}), json!({"cpu": "1"})),
                vec![
                    "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
                ],
            ),
            (
                json!([{"type": "Pod", "max": {"cpu": "1"}}]),
                json!({"spec": {"containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "600m"}, "limits": {"cpu": "600m"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "600m"}, "limits": {"cpu": "600m"}}}]}}),
                vec!["maximum cpu usage per Pod is 1, but limit is 1200m"],
            ),
            (
                json!([{"type": "Container", "max": {"cpu": "2"}, "min": {"cpu": "100m"}}]),
                pod(json!({"cpu": "1"}), json!({"cpu": "1"})),
                vec![],
            ),
        ];
        for (items, p, want) in cases {
            assert_eq!(validate_pod(&lr(items), &p), want);
        }
        let pvc = json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}});
        assert_eq!(
            validate_pvc(
                &lr(
                    json!([{"type": "PersistentVolumeClaim", "max": {"storage": "2Gi"}, "min": {"storage": "1Gi"}}])
                ),
                &pvc
            ),
            vec!["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]
        );
    }
}
