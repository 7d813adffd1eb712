//! Schema knowledge for field management: which JSON values are structs (named fields),
//! granular or atomic maps, and atomic, set or map lists (with their key fields).
//!
//! The shape of every built-in type (properties, `$ref`s, arrays, `additionalProperties`)
//! comes from the same `openapi_schemas.json` the OpenAPI documents are built from (one
//! source of truth for structure). That file carries no `x-kubernetes-*` extensions, so the
//! extensions structured merge needs are tabled here, keyed by schema definition and field:
//!
//! * [`LIST_TYPES`]: `x-kubernetes-list-type` `map` (with `x-kubernetes-list-map-keys`) or
//!   `set`, and `x-kubernetes-map-type: atomic` on fields. Lists not listed are atomic, the
//!   upstream default. Taken from the `+listType`/`+listMapKey`/`+mapType` markers (and, where
//!   absent, `patchStrategy:"merge"`, which upstream's OpenAPI-to-schema conversion treats
//!   the same way) of the v1.33 Go types in k8s.io/api, k8s.io/apimachinery and
//!   k8s.io/apiextensions-apiserver.
//! * [`ATOMIC_STRUCTS`]: types marked `+structType=atomic` (e.g. `LabelSelector`, so a
//!   Deployment's `spec.selector` is owned as a whole).
//! * [`KEY_DEFAULTS`]: defaults of list-map key fields (`protocol` of ports is `TCP`), used
//!   when an item omits the key, as upstream's `+default` markers do.
//! * [`ZERO_PRESENT`]: fields that exist in the zero value of the Go type — non-pointer structs
//!   and collections without `omitempty` — so they are never "added" or "removed" as a
//!   whole; upstream compares typed objects, where such fields are always present, and only
//!   records `.` for the others (`f:rollingUpdate: {".": {}, ...}` but `f:strategy: {...}`).
//!
//! Kinds without a schema (custom resources, for now) get a root of apiVersion, kind and
//! ObjectMeta metadata, with everything else *deduced* from the value: maps granular,
//! lists atomic.
//!
//! Depends on `apiserver::openapi` (schema names) and nothing else. No IO.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::Value;

/// The schemas, generated from k8s-openapi (see `scripts/gen-openapi-schemas.py`).
const SCHEMAS_JSON: &str = include_str!("../openapi_schemas.json");

/// An index into [`Schema`]'s type nodes.
pub type TypeId = usize;

/// The type of scalars (and of values whose type admits any scalar, like int-or-string).
pub const SCALAR: TypeId = 0;
/// The deduced type: maps are granular, lists atomic, everything else a scalar.
pub const DEDUCED: TypeId = 1;

/// How a list's items relate (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// Items are unique scalars, merged as a set.
    Set,
    /// Items are objects identified by these key fields, merged item by item.
    Map {
        /// The key field names.
        keys: &'static [&'static str],
        /// Defaults of key fields (`(field, JSON value)`), used when an item omits one.
        defaults: Vec<(&'static str, Value)>,
    },
}

/// A named field of a struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's type.
    pub ty: TypeId,
    /// Whether the field exists in the Go zero value of its struct.
    pub zero_present: bool,
}

/// One type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A scalar (string, number, boolean, int-or-string, quantity, time, ...).
    Scalar,
    /// Anything; the value decides (see [`DEDUCED`]).
    Deduced,
    /// An object with named fields; keys not declared are deduced.
    Struct {
        /// The declared fields.
        fields: BTreeMap<String, Field>,
        /// `+structType=atomic`: owned and replaced as a whole.
        atomic: bool,
    },
    /// A map with arbitrary keys (`additionalProperties`).
    Map {
        /// The value type.
        elem: TypeId,
        /// `x-kubernetes-map-type: atomic`.
        atomic: bool,
    },
    /// A list.
    List {
        /// The item type.
        elem: TypeId,
        /// How items relate.
        kind: ListKind,
    },
}

/// A list or map annotation of one field.
#[derive(Debug, Clone, Copy)]
enum Annotation {
    /// `x-kubernetes-list-type: map` with these keys.
    ListMap(&'static [&'static str]),
    /// `x-kubernetes-list-type: set`.
    ListSet,
    /// `x-kubernetes-map-type: atomic` on a map-valued field.
    AtomicMap,
}
use Annotation::{AtomicMap, ListMap, ListSet};

/// `(definition, field, annotation)` for every non-default list or map (v1.33 markers).
const LIST_TYPES: &[(&str, &str, Annotation)] = &[
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement",
        "values",
        ListSet,
    ),
    (
        "io.k8s.api.batch.v1.UncountedTerminatedPods",
        "succeeded",
        ListSet,
    ),
    (
        "io.k8s.api.batch.v1.UncountedTerminatedPods",
        "failed",
        ListSet,
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        ListMap(&["containerPort", "protocol"]),
    ),
    ("io.k8s.api.core.v1.Container", "env", ListMap(&["name"])),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        ListMap(&["mountPath"]),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        ListMap(&["devicePath"]),
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "volumeMounts",
        ListMap(&["mountPath"]),
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "allocatedResourcesStatus",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        ListMap(&["containerPort", "protocol"]),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        ListMap(&["mountPath"]),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        ListMap(&["devicePath"]),
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", ListSet),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    ("io.k8s.api.core.v1.PodSpec", "volumes", ListMap(&["name"])),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        ListMap(&["name"]),
    ),
    ("io.k8s.api.core.v1.PodSpec", "nodeSelector", AtomicMap),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        ListMap(&["ip"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        ListMap(&["topologyKey", "whenUnsatisfiable"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", ListMap(&["ip"])),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerSpec",
        "selector",
        AtomicMap,
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.api.core.v1.ResourceRequirements",
        "claims",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.ResourceStatus",
        "resources",
        ListMap(&["resourceID"]),
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        ListMap(&["name"]),
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        ListMap(&["port", "protocol"]),
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "selector", AtomicMap),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    ("io.k8s.api.discovery.v1.Endpoint", "addresses", ListSet),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus",
        "conditions",
        ListMap(&["type"]),
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
        "x-kubernetes-validations",
        ListMap(&["rule"]),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        ListMap(&["uid"]),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        ListSet,
    ),
];

/// Schema definitions marked `+structType=atomic`.
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.api.autoscaling.v1.CrossVersionObjectReference",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.EndpointAddress",
    "io.k8s.api.core.v1.EndpointPort",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.ScopeSelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.SecretReference",
    "io.k8s.api.core.v1.TopologySelectorTerm",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.discovery.v1.EndpointPort",
    "io.k8s.api.networking.v1.ServiceBackendPort",
    "io.k8s.api.rbac.v1.RoleRef",
    "io.k8s.api.rbac.v1.Subject",
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
];

/// `(definition, list field, key field, default)`: `+default` of list-map key fields.
const KEY_DEFAULTS: &[(&str, &str, &str, &str)] = &[
    ("io.k8s.api.core.v1.Container", "ports", "protocol", "TCP"),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "protocol",
        "TCP",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "protocol", "TCP"),
];

/// `(definition, fields)`: struct, list and map fields present in the Go zero value of the
/// definition (non-pointer structs; slices and maps without `omitempty`).
const ZERO_PRESENT: &[(&str, &[&str])] = &[
    ("io.k8s.api.apps.v1.ControllerRevision", &["metadata"]),
    (
        "io.k8s.api.apps.v1.DaemonSet",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetSpec",
        &["template", "updateStrategy"],
    ),
    (
        "io.k8s.api.apps.v1.Deployment",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        &["template", "strategy"],
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSet",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.apps.v1.ReplicaSetSpec", &["template"]),
    (
        "io.k8s.api.apps.v1.StatefulSet",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetSpec",
        &["template", "updateStrategy"],
    ),
    (
        "io.k8s.api.authentication.v1.SelfSubjectReview",
        &["metadata", "status"],
    ),
    (
        "io.k8s.api.authentication.v1.SelfSubjectReviewStatus",
        &["userInfo"],
    ),
    (
        "io.k8s.api.authentication.v1.TokenRequest",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.authentication.v1.TokenRequestSpec",
        &["audiences"],
    ),
    (
        "io.k8s.api.authentication.v1.TokenReview",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.authentication.v1.TokenReviewStatus", &["user"]),
    (
        "io.k8s.api.authorization.v1.LocalSubjectAccessReview",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.authorization.v1.NonResourceRule", &["verbs"]),
    ("io.k8s.api.authorization.v1.ResourceRule", &["verbs"]),
    (
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.authorization.v1.SubjectAccessReview",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.authorization.v1.SubjectRulesReviewStatus",
        &["resourceRules", "nonResourceRules"],
    ),
    (
        "io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.autoscaling.v1.HorizontalPodAutoscalerSpec",
        &["scaleTargetRef"],
    ),
    (
        "io.k8s.api.autoscaling.v1.Scale",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ContainerResourceMetricSource",
        &["target"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ContainerResourceMetricStatus",
        &["current"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ExternalMetricSource",
        &["metric", "target"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ExternalMetricStatus",
        &["metric", "current"],
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerSpec",
        &["scaleTargetRef"],
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        &["currentMetrics"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ObjectMetricSource",
        &["describedObject", "target", "metric"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ObjectMetricStatus",
        &["metric", "current", "describedObject"],
    ),
    (
        "io.k8s.api.autoscaling.v2.PodsMetricSource",
        &["metric", "target"],
    ),
    (
        "io.k8s.api.autoscaling.v2.PodsMetricStatus",
        &["metric", "current"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ResourceMetricSource",
        &["target"],
    ),
    (
        "io.k8s.api.autoscaling.v2.ResourceMetricStatus",
        &["current"],
    ),
    (
        "io.k8s.api.batch.v1.CronJob",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.batch.v1.CronJobSpec", &["jobTemplate"]),
    ("io.k8s.api.batch.v1.Job", &["metadata", "spec", "status"]),
    ("io.k8s.api.batch.v1.JobSpec", &["template"]),
    ("io.k8s.api.batch.v1.JobTemplateSpec", &["metadata", "spec"]),
    ("io.k8s.api.batch.v1.PodFailurePolicy", &["rules"]),
    (
        "io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement",
        &["values"],
    ),
    ("io.k8s.api.batch.v1.SuccessPolicy", &["rules"]),
    ("io.k8s.api.coordination.v1.Lease", &["metadata", "spec"]),
    ("io.k8s.api.core.v1.Binding", &["metadata", "target"]),
    (
        "io.k8s.api.core.v1.CephFSPersistentVolumeSource",
        &["monitors"],
    ),
    ("io.k8s.api.core.v1.CephFSVolumeSource", &["monitors"]),
    ("io.k8s.api.core.v1.ConfigMap", &["metadata"]),
    ("io.k8s.api.core.v1.Container", &["resources"]),
    ("io.k8s.api.core.v1.ContainerImage", &["names"]),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        &["state", "lastState"],
    ),
    ("io.k8s.api.core.v1.Endpoints", &["metadata"]),
    ("io.k8s.api.core.v1.EphemeralContainer", &["resources"]),
    (
        "io.k8s.api.core.v1.Event",
        &["metadata", "involvedObject", "source"],
    ),
    ("io.k8s.api.core.v1.LimitRange", &["metadata", "spec"]),
    ("io.k8s.api.core.v1.LimitRangeSpec", &["limits"]),
    (
        "io.k8s.api.core.v1.Namespace",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.core.v1.Node", &["metadata", "spec", "status"]),
    (
        "io.k8s.api.core.v1.NodeDaemonEndpoints",
        &["kubeletEndpoint"],
    ),
    ("io.k8s.api.core.v1.NodeSelector", &["nodeSelectorTerms"]),
    (
        "io.k8s.api.core.v1.NodeStatus",
        &["daemonEndpoints", "nodeInfo"],
    ),
    (
        "io.k8s.api.core.v1.PersistentVolume",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaim",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimSpec",
        &["resources"],
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimTemplate",
        &["metadata", "spec"],
    ),
    ("io.k8s.api.core.v1.Pod", &["metadata", "spec", "status"]),
    ("io.k8s.api.core.v1.PodSpec", &["containers"]),
    ("io.k8s.api.core.v1.PodTemplateSpec", &["metadata", "spec"]),
    (
        "io.k8s.api.core.v1.PreferredSchedulingTerm",
        &["preference"],
    ),
    ("io.k8s.api.core.v1.ProjectedVolumeSource", &["sources"]),
    (
        "io.k8s.api.core.v1.RBDPersistentVolumeSource",
        &["monitors"],
    ),
    ("io.k8s.api.core.v1.RBDVolumeSource", &["monitors"]),
    (
        "io.k8s.api.core.v1.ReplicationController",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.core.v1.ResourceQuota",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.core.v1.Secret", &["metadata"]),
    (
        "io.k8s.api.core.v1.Service",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.core.v1.ServiceAccount", &["metadata"]),
    ("io.k8s.api.core.v1.ServiceStatus", &["loadBalancer"]),
    (
        "io.k8s.api.core.v1.TopologySelectorLabelRequirement",
        &["values"],
    ),
    (
        "io.k8s.api.core.v1.WeightedPodAffinityTerm",
        &["podAffinityTerm"],
    ),
    (
        "io.k8s.api.discovery.v1.Endpoint",
        &["addresses", "conditions"],
    ),
    (
        "io.k8s.api.discovery.v1.EndpointSlice",
        &["metadata", "endpoints", "ports"],
    ),
    (
        "io.k8s.api.events.v1.Event",
        &["metadata", "regarding", "deprecatedSource"],
    ),
    ("io.k8s.api.networking.v1.HTTPIngressPath", &["backend"]),
    ("io.k8s.api.networking.v1.HTTPIngressRuleValue", &["paths"]),
    (
        "io.k8s.api.networking.v1.Ingress",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.api.networking.v1.IngressClass",
        &["metadata", "spec"],
    ),
    ("io.k8s.api.networking.v1.IngressServiceBackend", &["port"]),
    ("io.k8s.api.networking.v1.IngressStatus", &["loadBalancer"]),
    (
        "io.k8s.api.networking.v1.NetworkPolicy",
        &["metadata", "spec"],
    ),
    (
        "io.k8s.api.networking.v1.NetworkPolicySpec",
        &["podSelector"],
    ),
    ("io.k8s.api.policy.v1.Eviction", &["metadata"]),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudget",
        &["metadata", "spec", "status"],
    ),
    ("io.k8s.api.rbac.v1.ClusterRole", &["metadata", "rules"]),
    (
        "io.k8s.api.rbac.v1.ClusterRoleBinding",
        &["metadata", "roleRef"],
    ),
    ("io.k8s.api.rbac.v1.PolicyRule", &["verbs"]),
    ("io.k8s.api.rbac.v1.Role", &["metadata", "rules"]),
    ("io.k8s.api.rbac.v1.RoleBinding", &["metadata", "roleRef"]),
    ("io.k8s.api.scheduling.v1.PriorityClass", &["metadata"]),
    ("io.k8s.api.storage.v1.StorageClass", &["metadata"]),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        &["metadata", "spec", "status"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionSpec",
        &["names", "versions"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus",
        &["conditions", "acceptedNames", "storedVersions"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.WebhookConversion",
        &["conversionReviewVersions"],
    ),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.Status", &["metadata"]),
];

/// The type graph of every built-in kind.
#[derive(Debug)]
pub struct Schema {
    nodes: Vec<Node>,
    named: HashMap<String, TypeId>,
    /// The root of kinds without a schema.
    unknown_root: TypeId,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema::build(SCHEMAS_JSON));

/// The schema of the built-in kinds (built on first use).
pub fn schema() -> &'static Schema {
    &SCHEMA
}

impl Schema {
    /// Builds the type graph from OpenAPI definitions (`name → schema`, bare-name `$ref`s).
    fn build(json: &str) -> Schema {
        let defs: BTreeMap<String, Value> = match serde_json::from_str(json) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "openapi_schemas.json does not parse; field management treats every kind as schemaless");
                BTreeMap::new()
            }
        };
        let mut b = Builder {
            nodes: vec![Node::Scalar, Node::Deduced],
            named: HashMap::new(),
            annotations: LIST_TYPES.iter().map(|(d, f, a)| ((*d, *f), *a)).collect(),
            atomic: ATOMIC_STRUCTS.iter().copied().collect(),
            zero: ZERO_PRESENT
                .iter()
                .flat_map(|(d, fs)| fs.iter().map(move |f| (*d, *f)))
                .collect(),
        };
        // Reserve an id per definition first, so `$ref`s resolve in any order.
        for name in defs.keys() {
            let id = b.nodes.len();
            b.nodes.push(Node::Deduced);
            b.named.insert(name.clone(), id);
        }
        for (name, def) in &defs {
            let node = b.definition(name, def);
            let id = b.named[name];
            b.nodes[id] = node;
        }
        let meta = b
            .named
            .get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .copied()
            .unwrap_or(DEDUCED);
        let field = |ty| Field {
            ty,
            zero_present: false,
        };
        let unknown_root = b.nodes.len();
        b.nodes.push(Node::Struct {
            fields: BTreeMap::from([
                ("apiVersion".to_string(), field(SCALAR)),
                ("kind".to_string(), field(SCALAR)),
                (
                    "metadata".to_string(),
                    Field {
                        ty: meta,
                        zero_present: true,
                    },
                ),
            ]),
            atomic: false,
        });
        Schema {
            nodes: b.nodes,
            named: b.named,
            unknown_root,
        }
    }

    /// The root type of a kind (`group`, `version` as served).
    pub fn root(&self, group: &str, version: &str, kind: &str) -> TypeId {
        let name = crate::apiserver::openapi::schema_name(group, version, kind);
        self.named.get(&name).copied().unwrap_or(self.unknown_root)
    }

    /// Whether the kind has a schema (it is not a kind without one, see [`Schema::root`]).
    pub fn is_known(&self, root: TypeId) -> bool {
        root != self.unknown_root
    }

    /// The node of a type.
    pub fn node(&self, ty: TypeId) -> &Node {
        self.nodes.get(ty).unwrap_or(&Node::Deduced)
    }

    /// The type of map key or struct field `name` in `ty`, and whether it is a declared
    /// struct field.
    pub fn field(&self, ty: TypeId, name: &str) -> (TypeId, bool) {
        match self.node(ty) {
            Node::Struct { fields, .. } => match fields.get(name) {
                Some(f) => (f.ty, true),
                None => (DEDUCED, false),
            },
            Node::Map { elem, .. } => (*elem, false),
            _ => (DEDUCED, false),
        }
    }

    /// The item type of a list type (deduced for anything else).
    pub fn elem(&self, ty: TypeId) -> TypeId {
        match self.node(ty) {
            Node::List { elem, .. } => *elem,
            _ => DEDUCED,
        }
    }
}

struct Builder {
    nodes: Vec<Node>,
    named: HashMap<String, TypeId>,
    annotations: HashMap<(&'static str, &'static str), Annotation>,
    atomic: HashSet<&'static str>,
    zero: HashSet<(&'static str, &'static str)>,
}

impl Builder {
    fn push(&mut self, node: Node) -> TypeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn definition(&mut self, name: &str, def: &Value) -> Node {
        match def.get("properties").and_then(Value::as_object) {
            Some(props) => {
                let mut fields = BTreeMap::new();
                for (prop, schema) in props {
                    let ty = self.property(name, prop, schema);
                    let zero_present = self.zero.contains(&(name, prop.as_str()));
                    fields.insert(prop.clone(), Field { ty, zero_present });
                }
                Node::Struct {
                    fields,
                    atomic: self.atomic.contains(name),
                }
            }
            None => {
                let id = self.inline(def, None);
                self.nodes[id].clone()
            }
        }
    }

    /// The type of field `prop` of definition `def`.
    fn property(&mut self, def: &str, prop: &str, schema: &Value) -> TypeId {
        let ann = self.annotations.get(&(def, prop)).copied();
        let defaults = KEY_DEFAULTS
            .iter()
            .filter(|(d, f, _, _)| *d == def && *f == prop)
            .map(|(_, _, k, v)| (*k, Value::String((*v).to_string())))
            .collect();
        self.inline(schema, ann.map(|a| (a, defaults)))
    }

    fn inline(
        &mut self,
        schema: &Value,
        ann: Option<(Annotation, Vec<(&'static str, Value)>)>,
    ) -> TypeId {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return self.named.get(r).copied().unwrap_or(DEDUCED);
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("array") => {
                let elem = match schema.get("items") {
                    Some(items) => self.inline(items, None),
                    None => DEDUCED,
                };
                let kind = match ann {
                    Some((ListMap(keys), defaults)) => ListKind::Map { keys, defaults },
                    Some((ListSet, _)) => ListKind::Set,
                    _ => ListKind::Atomic,
                };
                self.push(Node::List { elem, kind })
            }
            Some("object") => {
                if let Some(props) = schema.get("properties").filter(|p| p.is_object()) {
                    let node = self.definition("", &serde_json::json!({ "properties": props }));
                    return self.push(node);
                }
                match schema.get("additionalProperties") {
                    Some(elem) if elem.is_object() => {
                        let elem = self.inline(elem, None);
                        let atomic = matches!(ann, Some((AtomicMap, _)));
                        self.push(Node::Map { elem, atomic })
                    }
                    _ => DEDUCED,
                }
            }
            // Untyped definitions (e.g. `JSON`, `RawExtension`) admit any value.
            None if schema.get("format").is_none() => DEDUCED,
            _ => SCALAR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &Schema, mut ty: TypeId, fields: &[&str]) -> TypeId {
        for f in fields {
            ty = match s.node(ty) {
                Node::List { elem, .. } => s.field(*elem, f).0,
                _ => s.field(ty, f).0,
            };
        }
        ty
    }

    #[test]
    fn built_in_list_and_map_types() {
        let s = schema();
        let deploy = s.root("apps", "v1", "Deployment");
        let pod_spec = ["spec", "template", "spec"];
        let containers = path(
            s,
            deploy,
            &pod_spec
                .iter()
                .copied()
                .chain(["containers"])
                .collect::<Vec<_>>(),
        );
        assert!(matches!(
            s.node(containers),
            Node::List {
                kind: ListKind::Map { keys: ["name"], .. },
                ..
            }
        ));
        let ports = path(
            s,
            deploy,
            &["spec", "template", "spec", "containers", "ports"],
        );
        match s.node(ports) {
            Node::List {
                kind: ListKind::Map { keys, defaults },
                ..
            } => {
                assert_eq!(*keys, ["containerPort", "protocol"]);
                assert_eq!(defaults, &vec![("protocol", Value::String("TCP".into()))]);
            }
            other => panic!("ports: {other:?}"),
        }
        let tolerations = path(s, deploy, &["spec", "template", "spec", "tolerations"]);
        assert!(matches!(
            s.node(tolerations),
            Node::List {
                kind: ListKind::Atomic,
                ..
            }
        ));
        let finalizers = path(s, deploy, &["metadata", "finalizers"]);
        assert!(matches!(
            s.node(finalizers),
            Node::List {
                kind: ListKind::Set,
                ..
            }
        ));
        let selector = path(s, deploy, &["spec", "selector"]);
        assert!(matches!(
            s.node(selector),
            Node::Struct { atomic: true, .. }
        ));
        let labels = path(s, deploy, &["metadata", "labels"]);
        assert!(matches!(s.node(labels), Node::Map { atomic: false, .. }));
        let svc_selector = path(s, s.root("", "v1", "Service"), &["spec", "selector"]);
        assert!(matches!(
            s.node(svc_selector),
            Node::Map { atomic: true, .. }
        ));
        let max_surge = path(
            s,
            deploy,
            &["spec", "strategy", "rollingUpdate", "maxSurge"],
        );
        assert_eq!(max_surge, SCALAR);
        // Declared vs undeclared keys.
        assert!(s.field(deploy, "spec").1);
        assert!(!s.field(labels, "app").1);
    }

    #[test]
    fn zero_presence_follows_go_types() {
        let s = schema();
        let deploy = s.root("apps", "v1", "Deployment");
        let spec = s.field(deploy, "spec").0;
        let Node::Struct { fields, .. } = s.node(spec) else {
            panic!("spec is a struct")
        };
        assert!(
            fields["strategy"].zero_present,
            "DeploymentStrategy is a value struct"
        );
        assert!(fields["template"].zero_present);
        assert!(
            !fields["selector"].zero_present,
            "*LabelSelector is a pointer"
        );
        let strategy = fields["strategy"].ty;
        let Node::Struct { fields, .. } = s.node(strategy) else {
            panic!("strategy is a struct")
        };
        assert!(!fields["rollingUpdate"].zero_present);
    }

    #[test]
    fn unknown_kinds_have_object_meta() {
        let s = schema();
        let root = s.root("example.com", "v1", "Widget");
        let (meta, declared) = s.field(root, "metadata");
        assert!(declared);
        assert!(matches!(
            s.node(s.field(meta, "finalizers").0),
            Node::List {
                kind: ListKind::Set,
                ..
            }
        ));
        assert_eq!(s.field(root, "spec"), (DEDUCED, false));
    }
}
