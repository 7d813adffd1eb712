//! Per-kind policy for the generic registry: name rules, defaulting, validation,
//! immutable fields, selectable fields and typed decoding, following upstream's
//! `SetDefaults_*`, `Validate*` and registry strategies.
//!
//! Every function takes the `ResourceInfo` of the *storage* version (objects are in
//! their storage version: autoscaling/v2 HPA, core/v1 Event, ...); kind-specific
//! defaulting and validation only apply to storage-version rows. Object metadata is
//! validated separately with [`crate::api::validation::validate_object_meta`], using
//! [`name_rule`].
//!
//! Expected call order for a write (as upstream's `BeforeCreate`/`BeforeUpdate`):
//! [`typed_roundtrip`] (decode; warn about unknown fields) → [`default_object`] →
//! (create: uid/name filled in) [`prepare_for_create`] / (update) [`prepare_for_update`]
//! → `validate_object_meta` + [`validate_create`] / [`validate_update`].
//!
//! Depends on `crate::api` only; no IO.

mod core;
mod other;
mod pod;
mod typed;
mod util;
mod workloads;

use serde_json::{Value, json};

use crate::api::resources::ResourceInfo;
use crate::api::status::Cause;
pub use crate::api::validation::NameRule;
pub use typed::TypedCheck;
use util::{child, s_at};

/// The rule `metadata.name` must follow for a resource.
pub fn name_rule(ri: &ResourceInfo) -> NameRule {
    match (ri.group, ri.kind) {
        ("", "Namespace") => NameRule::Dns1123Label,
        ("", "Service") => NameRule::Dns1035Label,
        ("", "PersistentVolume") => NameRule::PathSegment,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// `(group, kind)` of a storage-version row; `None` for other served versions, which
/// get no kind-specific treatment.
fn storage_kind(ri: &ResourceInfo) -> Option<(&'static str, &'static str)> {
    ri.is_storage_version().then_some((ri.group, ri.kind))
}

/// Zero-valued status fields upstream always serializes (non-`omitempty` Go fields).
fn default_status(obj: &mut Value, zero: Value) {
    if let Some(status) = child(obj, "status")
        && let (Some(m), Value::Object(z)) = (status.as_object_mut(), zero)
    {
        for (k, v) in z {
            m.entry(k).or_insert(v);
        }
    }
}

/// Applies upstream defaulting in place (idempotent; runs on every write).
pub fn default_object(ri: &ResourceInfo, obj: &mut Value) {
    let Some(key) = storage_kind(ri) else { return };
    match key {
        ("", "Pod") => pod::default_pod(obj),
        ("", "Service") => core::default_service(obj),
        ("", "Secret") => core::default_secret(obj),
        ("", "Namespace") => core::default_namespace(obj),
        ("", "Node") => core::default_node(obj),
        ("", "PersistentVolumeClaim") => core::default_pvc(obj),
        ("", "PersistentVolume") => core::default_pv(obj),
        ("", "Endpoints") => core::default_endpoints(obj),
        ("", "LimitRange") => core::default_limitrange(obj),
        ("", "ReplicationController") => {
            workloads::default_replicationcontroller(obj);
            default_status(obj, json!({"replicas": 0}));
        }
        ("apps", "Deployment") => {
            workloads::default_deployment(obj);
            default_status(obj, json!({}));
        }
        ("apps", "ReplicaSet") => {
            workloads::default_replicaset(obj);
            default_status(obj, json!({"replicas": 0}));
        }
        ("apps", "StatefulSet") => {
            workloads::default_statefulset(obj);
            default_status(obj, json!({"replicas": 0, "availableReplicas": 0}));
        }
        ("apps", "DaemonSet") => {
            workloads::default_daemonset(obj);
            default_status(
                obj,
                json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}),
            );
        }
        ("batch", "Job") => {
            workloads::default_job(obj);
            default_status(obj, json!({}));
        }
        ("batch", "CronJob") => {
            workloads::default_cronjob(obj);
            default_status(obj, json!({}));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            other::default_hpa(obj);
            default_status(obj, json!({"desiredReplicas": 0}));
        }
        ("networking.k8s.io", "NetworkPolicy") => other::default_networkpolicy(obj),
        ("networking.k8s.io", "Ingress") => default_status(obj, json!({"loadBalancer": {}})),
        ("discovery.k8s.io", "EndpointSlice") => other::default_endpointslice(obj),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            other::default_rbac_subjects(obj)
        }
        ("policy", "PodDisruptionBudget") => default_status(
            obj,
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}),
        ),
        ("storage.k8s.io", "StorageClass") => other::default_storageclass(obj),
        ("scheduling.k8s.io", "PriorityClass") => other::default_priorityclass(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => other::default_crd(obj),
        _ => {}
    }
}

/// Create-only preparation (upstream strategies' `PrepareForCreate`), after defaulting and
/// once `metadata.uid` and `metadata.name` are set: a Pod's status starts as `Pending`
/// with its QoS class, a Namespace gets the `kubernetes` finalizer and phase `Active`, a
/// Job gets its generated selector and pod labels, a CRD's `status.storedVersions`
/// starts with its storage version.
pub fn prepare_for_create(ri: &ResourceInfo, obj: &mut Value) {
    let Some(key) = storage_kind(ri) else { return };
    match key {
        ("", "Pod") => {
            let qos = pod::qos_class(obj.get("spec").unwrap_or(&Value::Null));
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        ("", "Namespace") => core::prepare_namespace_create(obj),
        ("batch", "Job") => workloads::generate_job_selector(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => other::prepare_crd_create(obj),
        _ => {}
    }
}

/// Update-only preparation (`PrepareForUpdate`), before validation: a Service keeps its
/// allocated cluster IPs and node ports when the update omits them; a Namespace's
/// finalizers change only through `/finalize`. (Status preservation is generic.)
pub fn prepare_for_update(ri: &ResourceInfo, new: &mut Value, old: &Value) {
    let Some(key) = storage_kind(ri) else { return };
    match key {
        ("", "Service") => core::prepare_service_update(new, old),
        ("", "Namespace") => core::prepare_namespace_update(new, old),
        _ => {}
    }
}

/// Kind-specific validation of a new object (not its metadata).
pub fn validate_create(ri: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let Some(key) = storage_kind(ri) else {
        return Vec::new();
    };
    match key {
        ("", "Pod") => pod::validate_pod(obj),
        ("", "Service") => core::validate_service(obj),
        ("", "ConfigMap") => core::validate_configmap(obj),
        ("", "Secret") => core::validate_secret(obj),
        ("", "Namespace") => core::validate_namespace(obj),
        ("", "Node") => core::validate_node(obj),
        ("", "PersistentVolumeClaim") => core::validate_pvc(obj),
        ("", "PersistentVolume") => core::validate_pv(obj),
        ("", "Event") => core::validate_event(obj),
        ("", "Endpoints") => core::validate_endpoints(obj),
        ("", "LimitRange") => core::validate_limitrange(obj),
        ("", "ReplicationController") => workloads::validate_replicationcontroller(obj),
        ("apps", "Deployment") => workloads::validate_deployment(obj),
        ("apps", "ReplicaSet") => workloads::validate_replicaset(obj),
        ("apps", "StatefulSet") => workloads::validate_statefulset(obj),
        ("apps", "DaemonSet") => workloads::validate_daemonset(obj),
        ("apps", "ControllerRevision") => workloads::validate_controllerrevision(obj),
        ("batch", "Job") => workloads::validate_job(obj),
        ("batch", "CronJob") => workloads::validate_cronjob(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => other::validate_hpa(obj),
        ("networking.k8s.io", "Ingress") => other::validate_ingress(obj),
        ("networking.k8s.io", "IngressClass") => other::validate_ingressclass(obj),
        ("networking.k8s.io", "NetworkPolicy") => other::validate_networkpolicy(obj),
        ("coordination.k8s.io", "Lease") => other::validate_lease(obj),
        ("discovery.k8s.io", "EndpointSlice") => other::validate_endpointslice(obj),
        ("rbac.authorization.k8s.io", "Role") => other::validate_role(obj, true),
        ("rbac.authorization.k8s.io", "ClusterRole") => other::validate_role(obj, false),
        ("rbac.authorization.k8s.io", "RoleBinding") => other::validate_binding(obj, true),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => other::validate_binding(obj, false),
        ("policy", "PodDisruptionBudget") => other::validate_pdb(obj),
        ("storage.k8s.io", "StorageClass") => other::validate_storageclass(obj),
        ("scheduling.k8s.io", "PriorityClass") => other::validate_priorityclass(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => other::validate_crd(obj),
        _ => Vec::new(),
    }
}

/// Kind-specific validation of an update: [`validate_create`] on the new object (pods
/// use their own update rules) plus immutable fields.
pub fn validate_update(ri: &ResourceInfo, new: &Value, old: &Value) -> Vec<Cause> {
    let Some(key) = storage_kind(ri) else {
        return Vec::new();
    };
    if key == ("", "Pod") {
        return pod::validate_pod_update(new, old);
    }
    let mut causes = validate_create(ri, new);
    causes.extend(match key {
        ("", "Service") => core::validate_service_update(new, old),
        ("", "ConfigMap") => {
            core::validate_immutable_data(new, old, &["data", "binaryData"], false)
        }
        ("", "Secret") => core::validate_immutable_data(new, old, &["data"], true),
        ("", "PersistentVolumeClaim") => core::validate_pvc_update(new, old),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            workloads::validate_selector_immutable(new, old)
        }
        ("apps", "StatefulSet") => workloads::validate_statefulset_update(new, old),
        ("apps", "ControllerRevision") => workloads::validate_controllerrevision_update(new, old),
        ("batch", "Job") => workloads::validate_job_update(new, old),
        ("networking.k8s.io", "IngressClass") => other::validate_ingressclass_update(new, old),
        ("discovery.k8s.io", "EndpointSlice") => other::validate_endpointslice_update(new, old),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            other::validate_binding_update(new, old)
        }
        ("storage.k8s.io", "StorageClass") => other::validate_storageclass_update(new, old),
        ("scheduling.k8s.io", "PriorityClass") => other::validate_priorityclass_update(new, old),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            other::validate_crd_update(new, old)
        }
        _ => Vec::new(),
    });
    causes
}

const META_NAMESPACED: &[&str] = &["metadata.name", "metadata.namespace"];
const META_CLUSTER: &[&str] = &["metadata.name"];
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];
/// events.k8s.io/v1 names for the same fields (the object is still stored as core/v1).
const EVENTS_V1_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "deprecatedSource",
    "type",
];

/// Fields a field selector may use for this resource (others are rejected upstream with
/// `field label not supported: <field>`).
pub fn selectable_fields(ri: &ResourceInfo) -> &'static [&'static str] {
    match (ri.group, ri.kind) {
        ("", "Pod") => POD_FIELDS,
        ("", "Event") => EVENT_FIELDS,
        ("events.k8s.io", "Event") => EVENTS_V1_FIELDS,
        ("", "Secret") => &["metadata.name", "metadata.namespace", "type"],
        ("", "Node") => &["metadata.name", "spec.unschedulable"],
        ("", "Namespace") => &["metadata.name", "status.phase"],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => {
            &["metadata.name", "metadata.namespace", "status.replicas"]
        }
        ("batch", "Job") => &["metadata.name", "metadata.namespace", "status.successful"],
        ("", "Service") => &[
            "metadata.name",
            "metadata.namespace",
            "spec.clusterIP",
            "spec.type",
        ],
        _ if ri.namespaced => META_NAMESPACED,
        _ => META_CLUSTER,
    }
}

/// The value of a selectable field in `obj` (in its storage version). A missing field
/// has its Go zero value, as upstream's field sets do: `""`, `"false"` for booleans,
/// `"0"` for counts. `None` when the field is not selectable for this resource.
pub fn field_value(ri: &ResourceInfo, obj: &Value, field: &str) -> Option<String> {
    if !selectable_fields(ri).contains(&field) {
        return None;
    }
    let path: &[&str] = match field {
        "metadata.name" => &["metadata", "name"],
        "metadata.namespace" => &["metadata", "namespace"],
        "source" | "deprecatedSource" => &["source", "component"],
        "reportingController" => &["reportingComponent"],
        "spec.hostNetwork" | "spec.unschedulable" => {
            let key = field.trim_start_matches("spec.");
            let v = util::get(obj, &["spec", key])
                .and_then(Value::as_bool)
                .unwrap_or(false);
            return Some(v.to_string());
        }
        "status.replicas" | "status.successful" => {
            let key = field.trim_start_matches("status.");
            let v = util::get(obj, &["status", key])
                .and_then(Value::as_i64)
                .unwrap_or(0);
            return Some(v.to_string());
        }
        other => {
            if let Some(rest) = other.strip_prefix("regarding.") {
                return Some(s_at(obj, &["involvedObject", rest]).to_string());
            }
            let parts: Vec<&str> = other.split('.').collect();
            return Some(scalar_at(obj, &parts));
        }
    };
    Some(scalar_at(obj, path))
}

fn scalar_at(obj: &Value, path: &[&str]) -> String {
    match util::get(obj, path) {
        Some(Value::String(v)) => v.clone(),
        Some(Value::Bool(v)) => v.to_string(),
        Some(Value::Number(v)) => v.to_string(),
        _ => String::new(),
    }
}

/// Decodes `obj` through the k8s-openapi type of `ri`'s group/version/kind and re-encodes
/// it: Err carries an upstream-like decoding error (upstream wraps it as
/// `<Kind> in version "<v>" cannot be handled as a <Kind>: <err>`, a 400); `normalized`
/// has unknown fields dropped, which `unknown_fields` lists.
pub fn typed_roundtrip(ri: &ResourceInfo, obj: &Value) -> Result<TypedCheck, String> {
    typed::typed_roundtrip_gvk(ri.group, ri.version, ri.kind, obj)?
        .ok_or_else(|| format!("no typed schema for {} {}", ri.api_version(), ri.kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{RESOURCES, lookup};
    use crate::api::validation::validate_object_meta;

    fn ri(group: &str, plural: &str) -> &'static ResourceInfo {
        let version = match group {
            "" => "v1",
            "autoscaling" => "v2",
            _ => "v1",
        };
        lookup(group, version, plural).expect("resource")
    }

    #[test]
    fn name_rules() {
        assert_eq!(name_rule(ri("", "namespaces")), NameRule::Dns1123Label);
        assert_eq!(name_rule(ri("", "services")), NameRule::Dns1035Label);
        assert_eq!(
            name_rule(ri("rbac.authorization.k8s.io", "clusterroles")),
            NameRule::PathSegment
        );
        assert_eq!(
            name_rule(ri("apps", "deployments")),
            NameRule::Dns1123Subdomain
        );
        let meta = json!({"name": "system:controller:x"});
        assert!(
            validate_object_meta(
                &meta,
                false,
                name_rule(ri("rbac.authorization.k8s.io", "clusterroles")),
                "metadata"
            )
            .is_empty()
        );
        let meta = json!({"name": "1svc", "namespace": "default"});
        assert_eq!(
            validate_object_meta(&meta, true, name_rule(ri("", "services")), "metadata").len(),
            1
        );
    }

    #[test]
    fn every_kind_round_trips_defaults_and_validates_without_panicking() {
        for r in RESOURCES {
            let mut obj = json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x", "namespace": "default", "uid": "u"}});
            let c = typed_roundtrip(r, &obj).unwrap_or_else(|e| panic!("{}: {e}", r.kind));
            assert!(c.unknown_fields.is_empty());
            default_object(r, &mut obj);
            prepare_for_create(r, &mut obj);
            let again = typed_roundtrip(r, &obj)
                .unwrap_or_else(|e| panic!("{} after defaults: {e}", r.kind));
            assert!(
                again.unknown_fields.is_empty(),
                "{}: {:?}",
                r.kind,
                again.unknown_fields
            );
            let _ = validate_create(r, &obj);
            let _ = validate_update(r, &obj, &obj);
            assert!(selectable_fields(r).contains(&"metadata.name"));
            assert_eq!(
                selectable_fields(r).contains(&"metadata.namespace"),
                r.namespaced,
                "{}",
                r.plural
            );
        }
    }

    #[test]
    fn deployment_end_to_end() {
        let d = ri("apps", "deployments");
        let input = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}}}});
        let mut obj = typed_roundtrip(d, &input).unwrap().normalized;
        default_object(d, &mut obj);
        assert!(
            validate_create(d, &obj).is_empty(),
            "{:?}",
            validate_create(d, &obj)
        );
        let typed = typed_roundtrip(d, &obj).unwrap();
        assert!(typed.unknown_fields.is_empty());
        assert_eq!(
            typed.normalized["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        assert_eq!(typed.normalized["status"], json!({}));

        let mut changed = obj.clone();
        changed["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        changed["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        let c = validate_update(d, &changed, &obj);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.selector");
    }

    #[test]
    fn pods_end_to_end() {
        let p = ri("", "pods");
        let mut pod = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}});
        default_object(p, &mut pod);
        prepare_for_create(p, &mut pod);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
        assert!(validate_create(p, &pod).is_empty());
        let mut img = pod.clone();
        img["spec"]["containers"][0]["image"] = json!("busybox:1.36");
        assert!(validate_update(p, &img, &pod).is_empty());

        let mut bad = pod.clone();
        bad["spec"]["restartPolicy"] = json!("Sometimes");
        let c = validate_create(p, &bad);
        assert_eq!(c[0].field, "spec.restartPolicy");
        assert_eq!(c[0].reason, "FieldValueNotSupported");
    }

    #[test]
    fn non_storage_versions_are_left_alone() {
        let v1 = lookup("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let mut hpa = json!({"spec": {"maxReplicas": 3}});
        default_object(v1, &mut hpa);
        assert_eq!(hpa, json!({"spec": {"maxReplicas": 3}}));
        assert!(validate_create(v1, &json!({})).is_empty());
        let c = typed_roundtrip(
            v1,
            &json!({"spec": {"targetCPUUtilizationPercentage": 50, "maxReplicas": 3}}),
        )
        .unwrap();
        assert!(c.unknown_fields.is_empty());
    }

    #[test]
    fn field_selectors() {
        let p = ri("", "pods");
        let pod = json!({"metadata": {"name": "web-1", "namespace": "prod"},
            "spec": {"nodeName": "node-1", "restartPolicy": "Always"}, "status": {"phase": "Running", "podIP": "10.42.0.9"}});
        let cases: &[(&str, Option<&str>)] = &[
            ("metadata.name", Some("web-1")),
            ("metadata.namespace", Some("prod")),
            ("spec.nodeName", Some("node-1")),
            ("spec.hostNetwork", Some("false")),
            ("status.phase", Some("Running")),
            ("status.podIP", Some("10.42.0.9")),
            ("status.nominatedNodeName", Some("")),
            ("spec.containers", None),
        ];
        for (f, want) in cases {
            assert_eq!(field_value(p, &pod, f).as_deref(), *want, "{f}");
        }

        let ev = ri("", "events");
        let event = json!({"involvedObject": {"kind": "Pod", "name": "web-1", "uid": "u1"}, "reason": "Started",
            "source": {"component": "kubelet"}, "type": "Normal"});
        assert_eq!(
            field_value(ev, &event, "involvedObject.name").as_deref(),
            Some("web-1")
        );
        assert_eq!(
            field_value(ev, &event, "source").as_deref(),
            Some("kubelet")
        );
        assert_eq!(field_value(ev, &event, "type").as_deref(), Some("Normal"));
        let ev1 = lookup("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(
            field_value(ev1, &event, "regarding.uid").as_deref(),
            Some("u1")
        );

        let rs = ri("apps", "replicasets");
        assert_eq!(
            field_value(rs, &json!({}), "status.replicas").as_deref(),
            Some("0")
        );
        let node = ri("", "nodes");
        assert_eq!(
            field_value(
                node,
                &json!({"spec": {"unschedulable": true}}),
                "spec.unschedulable"
            )
            .as_deref(),
            Some("true")
        );
        assert_eq!(field_value(node, &json!({}), "metadata.namespace"), None);
        let sec = ri("", "secrets");
        assert_eq!(
            field_value(sec, &json!({"type": "Opaque"}), "type").as_deref(),
            Some("Opaque")
        );
        let svc = ri("", "services");
        assert_eq!(
            field_value(svc, &json!({"spec": {"type": "NodePort"}}), "spec.type").as_deref(),
            Some("NodePort")
        );
        let ns = ri("", "namespaces");
        assert_eq!(
            field_value(ns, &json!({"status": {"phase": "Active"}}), "status.phase").as_deref(),
            Some("Active")
        );
    }

    #[test]
    fn prepare_hooks() {
        let ns = ri("", "namespaces");
        let mut obj = json!({"metadata": {"name": "dev"}});
        default_object(ns, &mut obj);
        assert_eq!(obj["spec"]["finalizers"], json!(["kubernetes"]));
        prepare_for_create(ns, &mut obj);
        assert_eq!(obj["spec"]["finalizers"], json!(["kubernetes"]));
        let mut finalized = obj.clone();
        finalized["spec"]["finalizers"] = json!([]);
        // Defaulting on later writes must not re-add the finalizer.
        default_object(ns, &mut finalized);
        assert_eq!(finalized["spec"]["finalizers"], json!([]));

        let job = ri("batch", "jobs");
        let mut j = json!({"metadata": {"name": "pi", "namespace": "default"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl"}]}}}});
        default_object(job, &mut j);
        assert!(j["spec"].get("selector").is_none());
        j["metadata"]["uid"] = json!("abc");
        prepare_for_create(job, &mut j);
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "abc"
        );
        assert!(
            validate_create(job, &j).is_empty(),
            "{:?}",
            validate_create(job, &j)
        );

        let svc = ri("", "services");
        let old = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"], "ports": [{"port": 80}]}});
        let mut new = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        prepare_for_update(svc, &mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.7");
    }
}
