//! Conversion between served versions and the storage version of a resource.
//!
//! Most resources are served in exactly their storage version. Two share storage across
//! versions or groups, as upstream: `autoscaling/v1` HorizontalPodAutoscalers are stored
//! as `autoscaling/v2`, and `events.k8s.io/v1` Events are stored as core `v1` Events.

use serde_json::{Map, Value, json};

use crate::api::ResourceInfo;

const HPA_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const HPA_CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const HPA_CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const HPA_BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Converts an object served as `ri` into the storage version.
pub fn to_storage(ri: &ResourceInfo, mut obj: Value) -> Value {
    if !ri.is_storage_version() {
        obj = match (ri.group, ri.version, ri.kind) {
            ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_v1_to_v2(obj),
            ("events.k8s.io", "v1", "Event") => event_new_to_core(obj),
            _ => obj,
        };
    }
    let api_version = if ri.storage.group.is_empty() {
        ri.storage.version.to_string()
    } else {
        format!("{}/{}", ri.storage.group, ri.storage.version)
    };
    set_type(&mut obj, &api_version, ri.kind);
    obj
}

/// Converts a stored object into the version served as `ri`.
pub fn from_storage(ri: &ResourceInfo, obj: &Value) -> Value {
    let mut out = if ri.is_storage_version() {
        obj.clone()
    } else {
        match (ri.group, ri.version, ri.kind) {
            ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_v2_to_v1(obj),
            ("events.k8s.io", "v1", "Event") => event_core_to_new(obj),
            _ => obj.clone(),
        }
    };
    set_type(&mut out, &ri.api_version(), ri.kind);
    out
}

fn set_type(obj: &mut Value, api_version: &str, kind: &str) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
}

fn annotations(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = obj
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let ann = meta
        .as_object_mut()?
        .entry("annotations")
        .or_insert_with(|| json!({}));
    ann.as_object_mut()
}

fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    let ann = obj
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?;
    let raw = ann.remove(key)?;
    let parsed = raw.as_str().and_then(|s| serde_json::from_str(s).ok());
    if ann.is_empty()
        && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("annotations");
    }
    parsed
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn hpa_v1_to_v2(mut obj: Value) -> Value {
    let extra_metrics = take_annotation(&mut obj, HPA_METRICS_ANNOTATION);
    let extra_current = take_annotation(&mut obj, HPA_CURRENT_METRICS_ANNOTATION);
    let conditions = take_annotation(&mut obj, HPA_CONDITIONS_ANNOTATION);
    let behavior = take_annotation(&mut obj, HPA_BEHAVIOR_ANNOTATION);
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let mut metrics: Vec<Value> = Vec::new();
        if let Some(Value::Array(extra)) = extra_metrics {
            metrics.extend(extra.into_iter().filter(|m| !is_cpu_utilization(m)));
        }
        if let Some(pct) = spec.remove("targetCPUUtilizationPercentage") {
            metrics.insert(
                0,
                json!({"type": "Resource", "resource": {"name": "cpu",
                       "target": {"type": "Utilization", "averageUtilization": pct}}}),
            );
        }
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = behavior {
            spec.insert("behavior".into(), b);
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let mut current: Vec<Value> = Vec::new();
        if let Some(pct) = status.remove("currentCPUUtilizationPercentage") {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                                "current": {"averageUtilization": pct}}}));
        }
        if let Some(Value::Array(extra)) = extra_current {
            current.extend(extra);
        }
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    obj
}

fn hpa_v2_to_v1(obj: &Value) -> Value {
    let mut out = obj.clone();
    let mut extra_metrics = Vec::new();
    let mut behavior = None;
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(Value::Array(metrics)) = spec.remove("metrics") {
            for m in metrics {
                if is_cpu_utilization(&m) && !spec.contains_key("targetCPUUtilizationPercentage") {
                    spec.insert(
                        "targetCPUUtilizationPercentage".into(),
                        m["resource"]["target"]["averageUtilization"].clone(),
                    );
                } else {
                    extra_metrics.push(m);
                }
            }
        }
        behavior = spec.remove("behavior");
    }
    let mut extra_current = Vec::new();
    let mut conditions = None;
    if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut) {
        if let Some(Value::Array(current)) = status.remove("currentMetrics") {
            for m in current {
                if m["type"] == "Resource"
                    && m["resource"]["name"] == "cpu"
                    && !m["resource"]["current"]["averageUtilization"].is_null()
                    && !status.contains_key("currentCPUUtilizationPercentage")
                {
                    status.insert(
                        "currentCPUUtilizationPercentage".into(),
                        m["resource"]["current"]["averageUtilization"].clone(),
                    );
                } else {
                    extra_current.push(m);
                }
            }
        }
        conditions = status.remove("conditions");
    }
    let mut put = |key: &str, v: Value| {
        if let Some(ann) = annotations(&mut out) {
            ann.insert(key.into(), json!(v.to_string()));
        }
    };
    if !extra_metrics.is_empty() {
        put(HPA_METRICS_ANNOTATION, Value::Array(extra_metrics));
    }
    if !extra_current.is_empty() {
        put(HPA_CURRENT_METRICS_ANNOTATION, Value::Array(extra_current));
    }
    if let Some(c) = conditions {
        put(HPA_CONDITIONS_ANNOTATION, c);
    }
    if let Some(b) = behavior {
        put(HPA_BEHAVIOR_ANNOTATION, b);
    }
    out
}

/// Field pairs (events.k8s.io/v1 name, core/v1 name) that differ only in name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename_fields(obj: &Value, from_new: bool) -> Value {
    let mut out = obj.clone();
    if let Some(m) = out.as_object_mut() {
        for (new, core) in EVENT_FIELDS {
            let (from, to) = if from_new { (new, core) } else { (core, new) };
            if let Some(v) = m.remove(*from) {
                m.insert((*to).to_string(), v);
            }
        }
    }
    out
}

fn event_new_to_core(obj: Value) -> Value {
    rename_fields(&obj, true)
}

fn event_core_to_new(obj: &Value) -> Value {
    rename_fields(obj, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn hpa_round_trip() {
        let v1 = lookup("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let obj = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1,
                     "maxReplicas": 5, "targetCPUUtilizationPercentage": 50}});
        let stored = to_storage(v1, obj.clone());
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        let back = from_storage(v1, &stored);
        assert_eq!(back, obj);
    }

    #[test]
    fn hpa_v2_memory_metric_survives_v1() {
        let v1 = lookup("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let stored = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {"maxReplicas": 5, "metrics": [
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]}});
        let served = from_storage(v1, &stored);
        assert!(served["metadata"]["annotations"][HPA_METRICS_ANNOTATION].is_string());
        assert_eq!(to_storage(v1, served)["spec"], stored["spec"]);
    }

    #[test]
    fn events_share_storage() {
        let ev = lookup("events.k8s.io", "v1", "events").unwrap();
        let obj = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started"});
        let stored = to_storage(ev, obj.clone());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["message"], "hello");
        assert_eq!(from_storage(ev, &stored), obj);
    }
}
