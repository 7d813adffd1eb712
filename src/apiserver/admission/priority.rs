//! The Priority admission plugin, as upstream's:
//!
//! - Pod creation resolves `spec.priorityClassName` (or, when empty, the class marked
//!   `globalDefault`, whose name is then set) into `spec.priority` and
//!   `spec.preemptionPolicy`; without any, priority 0 and `PreemptLowerPriority`. An
//!   unknown class is 403 `no PriorityClass with name x was found`; a `spec.priority` or
//!   `spec.preemptionPolicy` in the request that differs from the resolved one is 403.
//! - Pod updates keep the priority set at creation.
//! - Only one PriorityClass may be the global default.
//!
//! [`bootstrap`] creates the built-in `system-cluster-critical` and
//! `system-node-critical` classes at server start. Reads through the registry.

use serde_json::{Value, json};

use super::{Attributes, Operation, forbidden, is_main};
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::status::Status;
use crate::apiserver::registry::{ListOptions, Registry, WriteOptions};

/// The priority of pods that must stay on their node.
pub const SYSTEM_NODE_CRITICAL: (&str, i64) = ("system-node-critical", 2_000_001_000);

/// The priority of pods the cluster cannot work without.
pub const SYSTEM_CLUSTER_CRITICAL: (&str, i64) = ("system-cluster-critical", 2_000_000_000);

const DEFAULT_PREEMPTION_POLICY: &str = "PreemptLowerPriority";

fn priority_classes() -> Result<&'static ResourceInfo, Status> {
    lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| Status::internal("the priorityclasses resource is not registered"))
}

/// Creates the system PriorityClasses if they are missing.
pub async fn bootstrap(reg: &Registry) -> Result<(), Status> {
    let ri = priority_classes()?;
    let classes = [
        (
            SYSTEM_NODE_CRITICAL,
            "Used for system critical pods that must not be moved from their current node.",
        ),
        (
            SYSTEM_CLUSTER_CRITICAL,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ];
    for ((name, value), description) in classes {
        let obj = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": description,
            "preemptionPolicy": DEFAULT_PREEMPTION_POLICY,
        });
        let opts = WriteOptions {
            field_manager: Some("kube-apiserver".into()),
            ..WriteOptions::default()
        };
        match reg.create(ri, None, obj, &opts).await {
            Ok(_) => tracing::info!(priorityclass = name, "created system priority class"),
            Err(s) if s.code == 409 => {}
            Err(s) => return Err(s),
        }
    }
    Ok(())
}

/// The global default class (the lowest-valued one if several claim it).
async fn default_class(reg: &Registry) -> Result<Option<Value>, Status> {
    let classes = reg
        .list(priority_classes()?, None, &ListOptions::default())
        .await?
        .items;
    Ok(classes
        .into_iter()
        .filter(|c| c["globalDefault"].as_bool() == Some(true))
        .min_by_key(|c| c["value"].as_i64().unwrap_or(0)))
}

/// Mutating phase.
pub async fn mutate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Status> {
    if !is_main(attrs, "", "pods") {
        return Ok(());
    }
    match attrs.operation {
        Operation::Update => {
            if let Some(old) = old {
                for field in ["priority", "preemptionPolicy"] {
                    if obj["spec"][field].is_null() && !old["spec"][field].is_null() {
                        obj["spec"][field] = old["spec"][field].clone();
                    }
                }
            }
            Ok(())
        }
        Operation::Create => admit_new_pod(reg, attrs, obj).await,
        Operation::Delete => Ok(()),
    }
}

async fn admit_new_pod(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &mut Value,
) -> Result<(), Status> {
    let requested = obj["spec"]["priorityClassName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let class = if requested.is_empty() {
        default_class(reg).await?
    } else {
        match reg.get(priority_classes()?, None, &requested).await {
            Ok(c) => Some(c),
            Err(s) if s.code == 404 => {
                return Err(forbidden(
                    attrs,
                    obj,
                    format!("no PriorityClass with name {requested} was found"),
                ));
            }
            Err(s) => return Err(s),
        }
    };
    let (name, priority, policy) = match &class {
        Some(c) => (
            c["metadata"]["name"].as_str().unwrap_or("").to_string(),
            c["value"].as_i64().unwrap_or(0),
            c["preemptionPolicy"]
                .as_str()
                .unwrap_or(DEFAULT_PREEMPTION_POLICY)
                .to_string(),
        ),
        None => (String::new(), 0, DEFAULT_PREEMPTION_POLICY.to_string()),
    };
    resolve(obj, &name, priority, &policy).map_err(|why| forbidden(attrs, obj, why))
}

/// Sets the resolved class name, priority and preemption policy, refusing values in the
/// spec that contradict them.
fn resolve(pod: &mut Value, class: &str, priority: i64, policy: &str) -> Result<(), String> {
    if let Some(p) = pod["spec"]["priority"].as_i64()
        && p != priority
    {
        return Err(format!(
            "the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
        ));
    }
    if let Some(p) = pod["spec"]["preemptionPolicy"].as_str()
        && p != policy
    {
        return Err(format!(
            "the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        ));
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if !class.is_empty() {
        spec.insert("priorityClassName".into(), json!(class));
    }
    spec.insert("priority".into(), json!(priority));
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}

/// Validating phase: at most one PriorityClass is the global default.
pub async fn validate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &Value,
    _old: Option<&Value>,
) -> Result<(), Status> {
    if !is_main(attrs, "scheduling.k8s.io", "priorityclasses")
        || attrs.operation == Operation::Delete
        || obj["globalDefault"].as_bool() != Some(true)
    {
        return Ok(());
    }
    if let Some(existing) = default_class(reg).await? {
        let name = existing["metadata"]["name"].as_str().unwrap_or("");
        if attrs.operation == Operation::Create || name != attrs.name {
            return Err(forbidden(
                attrs,
                obj,
                format!(
                    "PriorityClass {name} is already marked as default. Only one default can exist"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_priority() {
        let mut pod = json!({"spec": {"priorityClassName": "high"}});
        resolve(&mut pod, "high", 1000, "Never").unwrap();
        assert_eq!(pod["spec"]["priority"], 1000);
        assert_eq!(pod["spec"]["preemptionPolicy"], "Never");
        let mut pod = json!({"spec": {}});
        resolve(&mut pod, "", 0, DEFAULT_PREEMPTION_POLICY).unwrap();
        assert_eq!(pod["spec"]["priority"], 0);
        assert!(pod["spec"].get("priorityClassName").is_none());
        let mut pod = json!({"spec": {"priority": 5}});
        assert_eq!(
            resolve(&mut pod, "", 0, DEFAULT_PREEMPTION_POLICY).unwrap_err(),
            "the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 0 from the given PriorityClass name"
        );
        let mut pod = json!({"spec": {"preemptionPolicy": "Never"}});
        assert!(resolve(&mut pod, "x", 10, DEFAULT_PREEMPTION_POLICY).is_err());
    }
}
