//! The table of built-in resources the API server serves.
//!
//! One row per served group/version/resource, with everything discovery, routing and the
//! registry need: kind, scope, short names, categories, subresources, and where the
//! resource is stored (several served versions, or even groups, may share one storage
//! location, with conversion in between).

/// A subresource served below a resource (`pods/status`, `deployments/scale`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// Path segment, e.g. `status`.
    pub name: &'static str,
    /// Group of the kind it returns (`""` for core).
    pub group: &'static str,
    /// Version of the kind it returns.
    pub version: &'static str,
    /// Kind it returns.
    pub kind: &'static str,
    /// Verbs it supports.
    pub verbs: &'static [&'static str],
}

/// Where a resource lives in the store and which version is its storage representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    /// Group of the storage version.
    pub group: &'static str,
    /// Storage version.
    pub version: &'static str,
    /// Resource (plural) under which objects are stored.
    pub resource: &'static str,
}

/// One served group/version/resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Kind of a single object.
    pub kind: &'static str,
    /// Plural resource name (the URL segment).
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names (`po`, `deploy`, ...).
    pub short_names: &'static [&'static str],
    /// Categories (`all`, ...).
    pub categories: &'static [&'static str],
    /// Served subresources.
    pub subresources: &'static [Subresource],
    /// Storage location and version.
    pub storage: Storage,
    /// Whether this is the preferred version of its group.
    pub preferred: bool,
    /// Verbs served. Stored resources serve [`RESOURCE_VERBS`]; virtual ones (reviews)
    /// only `create`.
    pub verbs: &'static [&'static str],
}

/// Verbs every stored resource supports.
pub const RESOURCE_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

impl ResourceInfo {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for core), as upstream names resources in messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Kind of the list type.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether a subresource of this name is served.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether the resource has a status subresource (and so a spec/status split).
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }

    /// Whether objects of this resource are persisted (reviews are computed, not stored).
    pub fn is_stored(&self) -> bool {
        self.verbs.contains(&"get")
    }

    /// Whether this row is the storage version itself (no conversion needed).
    pub fn is_storage_version(&self) -> bool {
        self.storage.group == self.group && self.storage.version == self.version
    }

    /// The store key prefix under which all objects of this resource live.
    pub fn storage_prefix(&self) -> String {
        if self.storage.group.is_empty() {
            format!("/registry/{}/", self.storage.resource)
        } else {
            format!(
                "/registry/{}.{}/",
                self.storage.resource, self.storage.group
            )
        }
    }
}

macro_rules! sub {
    ($name:literal, $group:literal, $version:literal, $kind:literal, $verbs:expr) => {
        Subresource {
            name: $name,
            group: $group,
            version: $version,
            kind: $kind,
            verbs: $verbs,
        }
    };
}

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        group,
        version,
        kind,
        verbs: STATUS_VERBS,
    }
}

const CREATE_ONLY: &[&str] = &["create"];

/// A computed, create-only resource (access and token reviews).
const fn virtual_resource(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: Storage {
            group,
            version,
            resource: plural,
        },
        preferred: true,
        verbs: CREATE_ONLY,
    }
}

const SCALE: Subresource = sub!("scale", "autoscaling", "v1", "Scale", STATUS_VERBS);

macro_rules! res {
    ($group:literal / $version:literal, $kind:literal, $plural:literal, $singular:literal,
     ns: $ns:literal, short: [$($short:literal),*], cat: [$($cat:literal),*],
     subs: [$($sub:expr),*] $(, store: $sg:literal / $sv:literal / $sr:literal)? $(, preferred: $pref:literal)?) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: &[$($sub),*],
            storage: res!(@store $group, $version, $plural $(, $sg, $sv, $sr)?),
            preferred: res!(@pref $($pref)?),
            verbs: RESOURCE_VERBS,
        }
    };
    (@store $g:literal, $v:literal, $p:literal) => { Storage { group: $g, version: $v, resource: $p } };
    (@store $g:literal, $v:literal, $p:literal, $sg:literal, $sv:literal, $sr:literal) => {
        Storage { group: $sg, version: $sv, resource: $sr }
    };
    (@pref) => { true };
    (@pref $p:literal) => { $p };
}

/// Every built-in resource, in discovery order (groups in the order upstream lists them).
pub static RESOURCES: &[ResourceInfo] = &[
    // core/v1
    res!(""/"v1", "Pod", "pods", "pod", ns: true, short: ["po"], cat: ["all"],
         subs: [status("", "v1", "Pod"), sub!("binding", "", "v1", "Binding", &["create"]),
                sub!("eviction", "policy", "v1", "Eviction", &["create"]),
                sub!("log", "", "v1", "Pod", &["get"]),
                sub!("exec", "", "v1", "PodExecOptions", &["create", "get"]),
                sub!("attach", "", "v1", "PodAttachOptions", &["create", "get"]),
                sub!("portforward", "", "v1", "PodPortForwardOptions", &["create", "get"])]),
    res!(""/"v1", "Service", "services", "service", ns: true, short: ["svc"], cat: ["all"],
         subs: [status("", "v1", "Service")]),
    res!(""/"v1", "Endpoints", "endpoints", "endpoints", ns: true, short: ["ep"], cat: [], subs: []),
    res!(""/"v1", "ConfigMap", "configmaps", "configmap", ns: true, short: ["cm"], cat: [], subs: []),
    res!(""/"v1", "Secret", "secrets", "secret", ns: true, short: [], cat: [], subs: []),
    res!(""/"v1", "ServiceAccount", "serviceaccounts", "serviceaccount", ns: true, short: ["sa"],
         cat: [], subs: [sub!("token", "authentication.k8s.io", "v1", "TokenRequest", &["create"])]),
    res!(""/"v1", "Event", "events", "event", ns: true, short: ["ev"], cat: [], subs: []),
    res!(""/"v1", "Node", "nodes", "node", ns: false, short: ["no"], cat: [],
         subs: [status("", "v1", "Node")]),
    res!(""/"v1", "Namespace", "namespaces", "namespace", ns: false, short: ["ns"], cat: [],
         subs: [status("", "v1", "Namespace"), sub!("finalize", "", "v1", "Namespace", &["update"])]),
    res!(""/"v1", "ReplicationController", "replicationcontrollers", "replicationcontroller",
         ns: true, short: ["rc"], cat: ["all"], subs: [status("", "v1", "ReplicationController"), SCALE]),
    res!(""/"v1", "PersistentVolume", "persistentvolumes", "persistentvolume", ns: false,
         short: ["pv"], cat: [], subs: [status("", "v1", "PersistentVolume")]),
    res!(""/"v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim",
         ns: true, short: ["pvc"], cat: [], subs: [status("", "v1", "PersistentVolumeClaim")]),
    res!(""/"v1", "LimitRange", "limitranges", "limitrange", ns: true, short: ["limits"], cat: [],
         subs: []),
    res!(""/"v1", "ResourceQuota", "resourcequotas", "resourcequota", ns: true, short: ["quota"],
         cat: [], subs: [status("", "v1", "ResourceQuota")]),
    // apps/v1
    res!("apps"/"v1", "Deployment", "deployments", "deployment", ns: true, short: ["deploy"],
         cat: ["all"], subs: [status("apps", "v1", "Deployment"), SCALE]),
    res!("apps"/"v1", "ReplicaSet", "replicasets", "replicaset", ns: true, short: ["rs"],
         cat: ["all"], subs: [status("apps", "v1", "ReplicaSet"), SCALE]),
    res!("apps"/"v1", "StatefulSet", "statefulsets", "statefulset", ns: true, short: ["sts"],
         cat: ["all"], subs: [status("apps", "v1", "StatefulSet"), SCALE]),
    res!("apps"/"v1", "DaemonSet", "daemonsets", "daemonset", ns: true, short: ["ds"],
         cat: ["all"], subs: [status("apps", "v1", "DaemonSet")]),
    res!("apps"/"v1", "ControllerRevision", "controllerrevisions", "controllerrevision", ns: true,
         short: [], cat: [], subs: []),
    // batch/v1
    res!("batch"/"v1", "Job", "jobs", "job", ns: true, short: [], cat: ["all"],
         subs: [status("batch", "v1", "Job")]),
    res!("batch"/"v1", "CronJob", "cronjobs", "cronjob", ns: true, short: ["cj"], cat: ["all"],
         subs: [status("batch", "v1", "CronJob")]),
    // autoscaling/v2 (storage) and v1
    res!("autoscaling"/"v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
         "horizontalpodautoscaler", ns: true, short: ["hpa"], cat: ["all"],
         subs: [status("autoscaling", "v2", "HorizontalPodAutoscaler")]),
    res!("autoscaling"/"v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
         "horizontalpodautoscaler", ns: true, short: ["hpa"], cat: ["all"],
         subs: [status("autoscaling", "v1", "HorizontalPodAutoscaler")],
         store: "autoscaling"/"v2"/"horizontalpodautoscalers", preferred: false),
    // networking.k8s.io/v1
    res!("networking.k8s.io"/"v1", "Ingress", "ingresses", "ingress", ns: true, short: ["ing"],
         cat: [], subs: [status("networking.k8s.io", "v1", "Ingress")]),
    res!("networking.k8s.io"/"v1", "IngressClass", "ingressclasses", "ingressclass", ns: false,
         short: [], cat: [], subs: []),
    res!("networking.k8s.io"/"v1", "NetworkPolicy", "networkpolicies", "networkpolicy", ns: true,
         short: ["netpol"], cat: [], subs: []),
    // coordination.k8s.io/v1
    res!("coordination.k8s.io"/"v1", "Lease", "leases", "lease", ns: true, short: [], cat: [],
         subs: []),
    // discovery.k8s.io/v1
    res!("discovery.k8s.io"/"v1", "EndpointSlice", "endpointslices", "endpointslice", ns: true,
         short: [], cat: [], subs: []),
    // events.k8s.io/v1 shares storage with core/v1 events
    res!("events.k8s.io"/"v1", "Event", "events", "event", ns: true, short: ["ev"], cat: [],
         subs: [], store: ""/"v1"/"events"),
    // rbac.authorization.k8s.io/v1
    res!("rbac.authorization.k8s.io"/"v1", "ClusterRoleBinding", "clusterrolebindings",
         "clusterrolebinding", ns: false, short: [], cat: [], subs: []),
    res!("rbac.authorization.k8s.io"/"v1", "ClusterRole", "clusterroles", "clusterrole",
         ns: false, short: [], cat: [], subs: []),
    res!("rbac.authorization.k8s.io"/"v1", "RoleBinding", "rolebindings", "rolebinding", ns: true,
         short: [], cat: [], subs: []),
    res!("rbac.authorization.k8s.io"/"v1", "Role", "roles", "role", ns: true, short: [], cat: [],
         subs: []),
    // authentication.k8s.io/v1 and authorization.k8s.io/v1: computed reviews
    virtual_resource(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        false,
    ),
    virtual_resource(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        false,
    ),
    // kubectl 1.27 `auth whoami` asks for v1beta1 (then v1alpha1).
    ResourceInfo {
        preferred: false,
        ..virtual_resource(
            "authentication.k8s.io",
            "v1beta1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            "selfsubjectreview",
            false,
        )
    },
    ResourceInfo {
        preferred: false,
        ..virtual_resource(
            "authentication.k8s.io",
            "v1alpha1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            "selfsubjectreview",
            false,
        )
    },
    virtual_resource(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        true,
    ),
    virtual_resource(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        false,
    ),
    virtual_resource(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        false,
    ),
    virtual_resource(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview",
        false,
    ),
    // policy/v1
    res!("policy"/"v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget",
         ns: true, short: ["pdb"], cat: [], subs: [status("policy", "v1", "PodDisruptionBudget")]),
    // storage.k8s.io/v1
    res!("storage.k8s.io"/"v1", "StorageClass", "storageclasses", "storageclass", ns: false,
         short: ["sc"], cat: [], subs: []),
    // scheduling.k8s.io/v1
    res!("scheduling.k8s.io"/"v1", "PriorityClass", "priorityclasses", "priorityclass", ns: false,
         short: ["pc"], cat: [], subs: []),
    // apiextensions.k8s.io/v1
    res!("apiextensions.k8s.io"/"v1", "CustomResourceDefinition", "customresourcedefinitions",
         "customresourcedefinition", ns: false, short: ["crd", "crds"], cat: ["api-extensions"],
         subs: [status("apiextensions.k8s.io", "v1", "CustomResourceDefinition")]),
];

/// Finds the resource served at `group/version/plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds the resource for a kind in a group/version.
pub fn lookup_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The served groups, in discovery order, each with its versions (preferred first).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    if r.preferred {
                        versions.insert(0, r.version);
                    } else {
                        versions.push(r.version);
                    }
                }
            }
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// All resources served in one group/version, in table order.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Splits an `apiVersion` string into group and version.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for r in RESOURCES {
            assert!(lookup(r.group, r.version, r.plural).is_some());
            let storage = lookup(r.storage.group, r.storage.version, r.storage.resource)
                .expect("storage version is served");
            assert!(storage.is_storage_version(), "{} storage row", r.plural);
        }
        let groups = groups();
        assert_eq!(groups[0].0, "");
        let autoscaling = groups.iter().find(|(g, _)| *g == "autoscaling").unwrap();
        assert_eq!(autoscaling.1, vec!["v2", "v1"]);
    }

    #[test]
    fn names() {
        let d = lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(d.api_version(), "apps/v1");
        assert_eq!(d.group_resource(), "deployments.apps");
        assert_eq!(d.storage_prefix(), "/registry/deployments.apps/");
        let p = lookup("", "v1", "pods").unwrap();
        assert_eq!(p.storage_prefix(), "/registry/pods/");
        let ev = lookup("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(ev.storage_prefix(), "/registry/events/");
    }
}
