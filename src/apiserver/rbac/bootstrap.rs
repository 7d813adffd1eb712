//! The bootstrap RBAC policy: upstream's default ClusterRoles (cluster-admin, the
//! aggregated admin/edit/view and the `system:aggregate-to-*` roles that feed them, the
//! discovery, basic-user and public-info roles, the component roles) and their
//! ClusterRoleBindings, plus the role kaji's single controller-manager identity needs.
//!
//! Created at every start when missing, and reconciled as upstream does when the
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is not `"false"`: missing
//! rules, labels, annotations, aggregation selectors and subjects are added, nothing is
//! removed; a binding whose roleRef differs is recreated.
//!
//! Depends on: the registry (writes as the server itself, so no escalation check applies).

use serde_json::{Map, Value, json};

use super::super::registry::{DeleteOptions, FieldValidation, Registry, Update, WriteOptions};
use super::index::rules_of;
use super::rule::{GROUP, PolicyRule, RoleRef, Subject, covers};
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::status::Status;

/// Label on every bootstrap object.
pub const BOOTSTRAPPING_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// Annotation that lets the server reconcile an object at start (`"false"` opts out).
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// Label prefix of the aggregation labels (`...aggregate-to-admin` and so on).
pub const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// The user kaji's in-process controllers authenticate as.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The kaji role covering everything kaji's controllers do.
pub const KAJI_CONTROLLER_MANAGER_ROLE: &str = "system:kaji-controller-manager";

/// A bootstrap ClusterRole.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// Name.
    pub name: &'static str,
    /// `aggregate-to-X` labels it carries (X values).
    pub aggregate_to: &'static [&'static str],
    /// For aggregated roles: the `aggregate-to-X` label (X) its aggregationRule selects.
    pub aggregates: Option<&'static str>,
    /// Its rules (empty for aggregated roles: the aggregation controller fills them).
    pub rules: Vec<PolicyRule>,
}

/// A bootstrap ClusterRoleBinding.
#[derive(Debug, Clone)]
pub struct BindingSpec {
    /// Name.
    pub name: &'static str,
    /// ClusterRole it grants.
    pub role: &'static str,
    /// To whom.
    pub subjects: Vec<Subject>,
}

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule::resource(verbs, groups, resources)
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENT_WRITE: &[&str] = &["create", "patch", "update"];

fn role(name: &'static str, rules: Vec<PolicyRule>) -> RoleSpec {
    RoleSpec {
        name,
        aggregate_to: &[],
        aggregates: None,
        rules,
    }
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<RoleSpec> {
    let events = r(EVENT_WRITE, &["", "events.k8s.io"], &["events"]);
    vec![
        role(
            "cluster-admin",
            vec![r(&["*"], &["*"], &["*"]), PolicyRule::urls(&["*"], &["*"])],
        ),
        RoleSpec {
            name: "admin",
            aggregate_to: &[],
            aggregates: Some("admin"),
            rules: vec![],
        },
        RoleSpec {
            name: "edit",
            aggregate_to: &["admin"],
            aggregates: Some("edit"),
            rules: vec![],
        },
        RoleSpec {
            name: "view",
            aggregate_to: &["edit"],
            aggregates: Some("view"),
            rules: vec![],
        },
        RoleSpec {
            name: "system:aggregate-to-admin",
            aggregate_to: &["admin"],
            aggregates: None,
            rules: vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                r(ALL_VERBS, &[GROUP], &["rolebindings", "roles"]),
            ],
        },
        RoleSpec {
            name: "system:aggregate-to-edit",
            aggregate_to: &["edit"],
            aggregates: None,
            rules: vec![
                r(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                r(&["impersonate"], &[""], &["serviceaccounts"]),
                r(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                r(&["create"], &[""], &["pods/eviction"]),
                r(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                r(&["create"], &[""], &["serviceaccounts/token"]),
                r(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(WRITE, &["batch"], &["cronjobs", "jobs"]),
                r(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(WRITE, &["policy"], &["poddisruptionbudgets"]),
                r(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                r(ALL_VERBS, &["coordination.k8s.io"], &["leases"]),
            ],
        },
        // What metrics-server ships: reading resource metrics is part of view (and so of
        // edit and admin).
        RoleSpec {
            name: "system:aggregated-metrics-reader",
            aggregate_to: &["admin", "edit", "view"],
            aggregates: None,
            rules: vec![r(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        },
        RoleSpec {
            name: "system:aggregate-to-view",
            aggregate_to: &["view"],
            aggregates: None,
            rules: vec![
                r(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                r(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                r(READ, &[""], &["namespaces"]),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                r(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                r(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                r(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                r(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        },
        role(
            "system:auth-delegator",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:basic-user",
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:discovery",
            vec![PolicyRule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![PolicyRule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:monitoring",
            vec![PolicyRule::urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![PolicyRule::urls(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
        ),
        role(
            "system:kube-controller-manager",
            vec![
                events.clone(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"])
                    .names(&["kube-controller-manager"]),
                r(&["create"], &[""], &["secrets", "serviceaccounts"]),
                r(&["delete"], &[""], &["secrets"]),
                r(
                    &["get"],
                    &[""],
                    &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                ),
                r(&["update"], &[""], &["secrets", "serviceaccounts"]),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                r(&["list", "watch"], &["*"], &["*"]),
                r(&["create"], &[""], &["serviceaccounts/token"]),
            ],
        ),
        role(
            KAJI_CONTROLLER_MANAGER_ROLE,
            vec![
                // Read everything; the garbage collector and the namespace controller also
                // update, patch and delete anything (upstream's generic-garbage-collector
                // and namespace-controller roles).
                r(READ, &["*"], &["*"]),
                r(
                    &["update", "patch", "delete", "deletecollection"],
                    &["*"],
                    &["*"],
                ),
                r(
                    &["create"],
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "events",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "pods",
                        "secrets",
                        "serviceaccounts",
                        "serviceaccounts/token",
                    ],
                ),
                r(
                    &["create"],
                    &["apps"],
                    &["controllerrevisions", "replicasets"],
                ),
                r(&["create"], &["batch"], &["jobs"]),
                // The local-path provisioner creates its StorageClass.
                r(&["create"], &["storage.k8s.io"], &["storageclasses"]),
                r(&["create"], &["discovery.k8s.io"], &["endpointslices"]),
                r(&["create"], &["events.k8s.io"], &["events"]),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                // The ClusterRole aggregation controller writes rules it does not hold.
                r(&["escalate"], &[GROUP], &["clusterroles"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                events.clone(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"])
                    .names(&["kube-scheduler"]),
                r(READ, &[""], &["nodes"]),
                r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                r(&["create"], &[""], &["bindings", "pods/binding"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(READ, &[""], &["replicationcontrollers", "services"]),
                r(READ, &["apps", "extensions"], &["replicasets"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(READ, &["policy"], &["poddisruptionbudgets"]),
                r(
                    READ,
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                r(READ, &["storage.k8s.io"], &["csinodes"]),
                r(READ, &[""], &["namespaces"]),
                r(READ, &["storage.k8s.io"], &["csidrivers"]),
                r(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
            ],
        ),
        role(
            "system:volume-scheduler",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        role(
            "system:kube-dns",
            vec![r(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        role(
            "system:node",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews", "subjectaccessreviews"],
                ),
                r(READ, &[""], &["services"]),
                r(&["create", "get", "list", "watch"], &[""], &["nodes"]),
                r(&["patch", "update"], &[""], &["nodes/status"]),
                r(&["patch", "update"], &[""], &["nodes"]),
                r(EVENT_WRITE, &[""], &["events"]),
                r(READ, &[""], &["pods"]),
                r(&["create", "delete"], &[""], &["pods"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(&["create"], &[""], &["pods/eviction"]),
                r(READ, &[""], &["configmaps", "secrets"]),
                r(
                    &["get"],
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                r(&["get"], &[""], &["endpoints"]),
                r(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                r(
                    &["create", "delete", "get", "patch", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                r(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
                r(&["create"], &[""], &["serviceaccounts/token"]),
                r(
                    &["get", "patch", "update"],
                    &[""],
                    &["persistentvolumeclaims/status"],
                ),
                r(READ, &["storage.k8s.io"], &["csidrivers"]),
                r(
                    &["create", "delete", "get", "patch", "update"],
                    &["storage.k8s.io"],
                    &["csinodes"],
                ),
                r(READ, &["node.k8s.io"], &["runtimeclasses"]),
            ],
        ),
        role(
            "system:node-proxier",
            vec![
                r(&["list", "watch"], &[""], &["endpoints", "services"]),
                r(READ, &[""], &["nodes"]),
                events.clone(),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        // kaji's node-local components (not upstream roles).
        role(
            "system:kaji-network-policy",
            vec![
                r(&["list", "watch"], &[""], &["pods", "namespaces"]),
                r(
                    &["list", "watch"],
                    &["networking.k8s.io"],
                    &["networkpolicies"],
                ),
            ],
        ),
        role(
            "system:kaji-dns",
            vec![
                r(
                    &["list", "watch"],
                    &[""],
                    &["services", "namespaces", "pods"],
                ),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:kaji-ingress",
            vec![
                r(
                    &["get", "list", "watch"],
                    &[""],
                    &["services", "secrets", "nodes"],
                ),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                r(
                    &["get", "list", "watch"],
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                ),
                r(
                    &["update", "patch"],
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                ),
                events,
            ],
        ),
    ]
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<BindingSpec> {
    let b = |name, role, subjects| BindingSpec {
        name,
        role,
        subjects,
    };
    vec![
        b(
            "cluster-admin",
            "cluster-admin",
            vec![Subject::group("system:masters")],
        ),
        b(
            "system:basic-user",
            "system:basic-user",
            vec![Subject::group("system:authenticated")],
        ),
        b(
            "system:discovery",
            "system:discovery",
            vec![Subject::group("system:authenticated")],
        ),
        b(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![
                Subject::group("system:authenticated"),
                Subject::group("system:unauthenticated"),
            ],
        ),
        b(
            "system:monitoring",
            "system:monitoring",
            vec![Subject::group("system:monitoring")],
        ),
        b(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![Subject::group("system:serviceaccounts")],
        ),
        b(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![Subject::user(CONTROLLER_MANAGER_USER)],
        ),
        b(
            KAJI_CONTROLLER_MANAGER_ROLE,
            KAJI_CONTROLLER_MANAGER_ROLE,
            vec![Subject::user(CONTROLLER_MANAGER_USER)],
        ),
        // kaji's embedded cluster-level components (the manifest deployer and friends)
        // act with full authority, as k3s's do.
        b(
            "system:kaji-controller",
            "cluster-admin",
            vec![Subject::user("system:kaji-controller")],
        ),
        b(
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec![Subject::user("system:kube-scheduler")],
        ),
        b(
            "system:volume-scheduler",
            "system:volume-scheduler",
            vec![Subject::user("system:kube-scheduler")],
        ),
        b(
            "system:kube-dns",
            "system:kube-dns",
            vec![Subject::service_account("kube-system", "kube-dns")],
        ),
        // kaji has no Node authorizer: nodes get the system:node role through their group.
        b(
            "system:node",
            "system:node",
            vec![Subject::group("system:nodes")],
        ),
        b(
            "system:node-proxier",
            "system:node-proxier",
            vec![Subject::user("system:kube-proxy")],
        ),
        b(
            "system:kaji-network-policy",
            "system:kaji-network-policy",
            vec![Subject::user("system:kube-proxy")],
        ),
        b(
            "system:kaji-dns",
            "system:kaji-dns",
            vec![Subject::user("system:kaji-dns")],
        ),
        b(
            "system:kaji-ingress",
            "system:kaji-ingress",
            vec![Subject::user("system:kaji-ingress")],
        ),
    ]
}

fn labels(extra: &[&str]) -> Value {
    let mut m = Map::new();
    m.insert(BOOTSTRAPPING_LABEL.0.into(), json!(BOOTSTRAPPING_LABEL.1));
    for x in extra {
        m.insert(format!("{AGGREGATE_TO}{x}"), json!("true"));
    }
    Value::Object(m)
}

fn metadata(name: &str, extra_labels: &[&str]) -> Value {
    json!({
        "name": name,
        "labels": labels(extra_labels),
        "annotations": {AUTOUPDATE_ANNOTATION: "true"},
    })
}

impl RoleSpec {
    /// The ClusterRole object.
    pub fn object(&self) -> Value {
        let mut o = json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "ClusterRole",
            "metadata": metadata(self.name, self.aggregate_to),
        });
        match self.aggregates {
            Some(x) => {
                o["aggregationRule"] = json!({"clusterRoleSelectors": [
                    {"matchLabels": {format!("{AGGREGATE_TO}{x}"): "true"}}
                ]});
            }
            None => o["rules"] = json!(self.rules),
        }
        o
    }
}

impl BindingSpec {
    /// The ClusterRoleBinding object.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "ClusterRoleBinding",
            "metadata": metadata(self.name, &[]),
            "roleRef": RoleRef::cluster_role(self.role),
            "subjects": self.subjects,
        })
    }
}

fn write_options() -> WriteOptions {
    WriteOptions {
        field_manager: Some("kube-apiserver".into()),
        ..Default::default()
    }
}

fn protected(existing: &Value) -> bool {
    existing["metadata"]["annotations"][AUTOUPDATE_ANNOTATION].as_str() == Some("false")
}

/// Adds the keys of `expected[field]` missing from `existing[field]` (metadata maps).
fn merge_map(existing: &mut Value, expected: &Value, field: &str) -> bool {
    let Some(want) = expected["metadata"][field].as_object() else {
        return false;
    };
    if !existing["metadata"][field].is_object() {
        existing["metadata"][field] = json!({});
    }
    let mut changed = false;
    if let Some(have) = existing["metadata"][field].as_object_mut() {
        for (k, v) in want {
            if !have.contains_key(k) {
                have.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

/// Adds what `expected` has and `existing` lacks; whether anything changed.
fn reconcile_role_object(existing: &mut Value, expected: &Value) -> bool {
    let mut changed = merge_map(existing, expected, "labels");
    changed |= merge_map(existing, expected, "annotations");
    let want_selectors = expected["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !want_selectors.is_empty() {
        if !existing["aggregationRule"].is_object() {
            existing["aggregationRule"] = json!({});
        }
        let have = existing["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut merged = have.clone();
        for s in want_selectors {
            if !merged.contains(&s) {
                merged.push(s);
            }
        }
        if merged != have {
            existing["aggregationRule"]["clusterRoleSelectors"] = Value::Array(merged);
            changed = true;
        }
    }
    // Rules of aggregated roles belong to the aggregation controller.
    let aggregated = |o: &Value| o["aggregationRule"].is_object();
    if !(aggregated(expected) && aggregated(existing)) {
        let (_, missing) = covers(&rules_of(existing), &rules_of(expected));
        if !missing.is_empty() {
            let mut rules = existing["rules"].as_array().cloned().unwrap_or_default();
            rules.extend(missing.iter().map(|r| json!(r)));
            existing["rules"] = Value::Array(rules);
            changed = true;
        }
    }
    changed
}

/// Adds missing labels, annotations and subjects; whether anything changed.
fn reconcile_binding_object(existing: &mut Value, expected: &Value) -> bool {
    let mut changed = merge_map(existing, expected, "labels");
    changed |= merge_map(existing, expected, "annotations");
    let mut subjects = existing["subjects"].as_array().cloned().unwrap_or_default();
    let have: Vec<Subject> = subjects
        .iter()
        .filter_map(|s| serde_json::from_value(s.clone()).ok())
        .collect();
    for s in expected["subjects"].as_array().into_iter().flatten() {
        let Ok(want) = serde_json::from_value::<Subject>(s.clone()) else {
            continue;
        };
        let present = have
            .iter()
            .any(|h| h.kind == want.kind && h.name == want.name && h.namespace == want.namespace);
        if !present {
            subjects.push(s.clone());
            changed = true;
        }
    }
    if changed {
        existing["subjects"] = Value::Array(subjects);
    }
    changed
}

fn info(plural: &str) -> Result<&'static ResourceInfo, Status> {
    lookup(GROUP, "v1", plural).ok_or_else(|| Status::internal(format!("{plural} are not served")))
}

/// Creates `expected` or reconciles the existing object with `reconcile`.
async fn ensure(
    reg: &Registry,
    ri: &'static ResourceInfo,
    expected: Value,
    reconcile: fn(&mut Value, &Value) -> bool,
) -> Result<(), Status> {
    let (expected, _) = reg.decode_object(ri, expected, FieldValidation::Strict)?;
    let name = expected["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for _attempt in 0..5 {
        let existing = match reg.get(ri, None, &name).await {
            Ok(o) => o,
            Err(s) if s.code == 404 => match reg
                .create(ri, None, expected.clone(), &write_options())
                .await
            {
                Ok(_) => {
                    tracing::info!(kind = ri.kind, %name, "created bootstrap RBAC object");
                    return Ok(());
                }
                Err(s) if s.code == 409 => continue,
                Err(s) => return Err(s),
            },
            Err(s) => return Err(s),
        };
        if protected(&existing) {
            return Ok(());
        }
        if ri.kind == "ClusterRoleBinding" && existing["roleRef"] != expected["roleRef"] {
            tracing::info!(%name, "recreating bootstrap ClusterRoleBinding with a different roleRef");
            match reg.delete(ri, None, &name, &DeleteOptions::default()).await {
                Ok(_) => {}
                Err(s) if s.code == 404 => {}
                Err(s) => return Err(s),
            }
            continue;
        }
        let mut updated = existing.clone();
        if !reconcile(&mut updated, &expected) {
            return Ok(());
        }
        match reg
            .update(
                ri,
                None,
                &name,
                None,
                Update::Replace(&updated),
                &write_options(),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(kind = ri.kind, %name, "reconciled bootstrap RBAC object");
                return Ok(());
            }
            Err(s) if s.code == 409 => continue,
            Err(s) => return Err(s),
        }
    }
    Err(Status::internal(format!(
        "could not reconcile {} {name}: too many conflicts",
        ri.kind
    )))
}

/// See [`super::bootstrap`]: ensures the policy, then waits until the authorizer's index
/// reflects it, so the first requests of kaji's own components are authorized.
pub async fn reconcile(reg: &Registry) -> Result<(), Status> {
    let roles = info("clusterroles")?;
    let bindings = info("clusterrolebindings")?;
    for spec in cluster_roles() {
        ensure(reg, roles, spec.object(), reconcile_role_object).await?;
    }
    for spec in cluster_role_bindings() {
        ensure(reg, bindings, spec.object(), reconcile_binding_object).await?;
    }
    reg.rbac().sync(reg).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::auth::UserInfo;
    use crate::apiserver::rbac::Rbac;
    use crate::apiserver::request::resolve;
    use http::Method;

    fn policy() -> Rbac {
        let mut objects: Vec<Value> = cluster_roles().iter().map(RoleSpec::object).collect();
        objects.extend(cluster_role_bindings().iter().map(BindingSpec::object));
        Rbac::for_tests(&objects)
    }

    #[test]
    fn policy_is_well_formed() {
        let roles = cluster_roles();
        let names: Vec<&str> = roles.iter().map(|r| r.name).collect();
        for b in cluster_role_bindings() {
            assert!(
                names.contains(&b.role),
                "{} binds missing role {}",
                b.name,
                b.role
            );
        }
        for r in &roles {
            let o = r.object();
            assert_eq!(
                o["metadata"]["labels"][BOOTSTRAPPING_LABEL.0],
                "rbac-defaults"
            );
            assert_eq!(r.aggregates.is_some(), o["rules"].is_null(), "{}", r.name);
        }
        // aggregate-to-view feeds view, view feeds edit, edit feeds admin.
        let labeled = |name: &str, to: &str| {
            roles
                .iter()
                .find(|r| r.name == name)
                .unwrap()
                .aggregate_to
                .contains(&to)
        };
        assert!(labeled("system:aggregate-to-view", "view"));
        assert!(labeled("system:aggregated-metrics-reader", "view"));
        assert!(labeled("view", "edit") && labeled("edit", "admin"));
    }

    #[test]
    fn components_get_what_they_need() {
        let rbac = policy();
        let cm = UserInfo::new(CONTROLLER_MANAGER_USER, "", vec![]);
        let ok = |u: &UserInfo, m: Method, p: &str| rbac.allowed(u, &resolve(&m, p, false));
        // The namespace controller sweeps every namespaced resource and finalizes.
        assert!(ok(&cm, Method::GET, "/api/v1/namespaces/x/secrets"));
        assert!(ok(
            &cm,
            Method::DELETE,
            "/apis/apps/v1/namespaces/x/deployments"
        ));
        assert!(ok(&cm, Method::PUT, "/api/v1/namespaces/x/finalize"));
        assert!(ok(
            &cm,
            Method::POST,
            "/api/v1/namespaces/x/serviceaccounts"
        ));
        assert!(ok(&cm, Method::POST, "/api/v1/namespaces/x/configmaps"));
        assert!(ok(
            &cm,
            Method::PUT,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"
        ));
        assert!(!ok(&cm, Method::POST, "/api/v1/namespaces/x/pods/p/exec"));
        assert!(!ok(&cm, Method::GET, "/metrics"));

        let node = UserInfo::new("system:node:n1", "", vec!["system:nodes".into()]);
        assert!(ok(&node, Method::POST, "/api/v1/nodes"));
        assert!(ok(
            &node,
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
        ));
        assert!(!ok(&node, Method::DELETE, "/api/v1/nodes/n1"));

        let sched = UserInfo::new("system:kube-scheduler", "", vec![]);
        assert!(ok(
            &sched,
            Method::POST,
            "/api/v1/namespaces/x/pods/p/binding"
        ));
        assert!(!ok(&sched, Method::POST, "/api/v1/namespaces/x/pods"));

        // Every authenticated user: discovery and self reviews, nothing else.
        let alice = UserInfo::new("alice", "", vec![]);
        assert!(ok(&alice, Method::GET, "/apis/apps/v1"));
        assert!(ok(&alice, Method::GET, "/openapi/v3"));
        assert!(ok(
            &alice,
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        ));
        assert!(ok(
            &alice,
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ));
        assert!(!ok(
            &alice,
            Method::POST,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        ));
        assert!(!ok(&alice, Method::GET, "/api/v1/namespaces"));
        assert!(!ok(&alice, Method::GET, "/metrics"));
    }

    #[test]
    fn reconciling_adds_without_removing() {
        let spec = cluster_roles()
            .into_iter()
            .find(|r| r.name == "system:basic-user")
            .unwrap();
        let expected = spec.object();
        // A user-modified role: one rule removed, one added, a label changed.
        let mut existing = expected.clone();
        existing["rules"] = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        existing["metadata"]["labels"][BOOTSTRAPPING_LABEL.0] = json!("mine");
        assert!(reconcile_role_object(&mut existing, &expected));
        let rules = rules_of(&existing);
        assert!(rules.contains(&PolicyRule::resource(&["get"], &[""], &["pods"])));
        assert!(covers(&rules, &spec.rules).0);
        assert_eq!(
            existing["metadata"]["labels"][BOOTSTRAPPING_LABEL.0],
            "mine"
        );
        assert!(
            !reconcile_role_object(&mut existing, &expected),
            "second pass is a no-op"
        );

        // Aggregated roles: selectors reconciled, rules left to the controller.
        let admin = cluster_roles()
            .into_iter()
            .find(|r| r.name == "admin")
            .unwrap()
            .object();
        let mut existing = admin.clone();
        existing["rules"] = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        assert!(!reconcile_role_object(&mut existing, &admin));
        existing["aggregationRule"]["clusterRoleSelectors"] = json!([]);
        assert!(reconcile_role_object(&mut existing, &admin));
        assert_eq!(existing["aggregationRule"], admin["aggregationRule"]);

        // Bindings gain missing subjects.
        let b = cluster_role_bindings()
            .into_iter()
            .find(|b| b.name == "system:public-info-viewer")
            .unwrap();
        let expected = b.object();
        let mut existing = expected.clone();
        existing["subjects"] = json!([{"kind": "Group", "apiGroup": GROUP, "name": "system:authenticated"},
                                      {"kind": "User", "apiGroup": GROUP, "name": "extra"}]);
        assert!(reconcile_binding_object(&mut existing, &expected));
        assert_eq!(existing["subjects"].as_array().unwrap().len(), 3);
        assert!(protected(
            &json!({"metadata": {"annotations": {AUTOUPDATE_ANNOTATION: "false"}}})
        ));
    }
}
