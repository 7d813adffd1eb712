//! Decoding built-in objects through their k8s-openapi types, as upstream decodes into Go
//! structs: wrong types fail with upstream-like messages (`json: cannot unmarshal string
//! into Go struct field DeploymentSpec.spec.replicas of type int32`), unknown fields are
//! dropped and reported (`.spec.replicasx`), quantities are checked.
//!
//! Decoding goes through a small deserializer over `&serde_json::Value` that tracks the
//! path of the value being decoded, so errors can name the field.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::util::parse_quantity;

/// The result of decoding an object through its typed schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedCheck {
    /// The object as the typed schema serializes it (unknown fields dropped).
    pub normalized: Value,
    /// Fields present in the input but unknown to the schema, as JSON paths
    /// (`.spec.template.spec.containers[0].imagex`), in input order.
    pub unknown_fields: Vec<String>,
}

macro_rules! typed_kinds {
    ($( ($g:literal, $v:literal, $k:literal) => $t:ty ),* $(,)?) => {
        /// Round-trips `obj` through the k8s-openapi type for `(group, version, kind)`;
        /// `None` when no type is known.
        fn roundtrip_kind(group: &str, version: &str, kind: &str, obj: &Value) -> Option<Result<Value, String>> {
            match (group, version, kind) {
                $( ($g, $v, $k) => Some(roundtrip::<$t>(obj)), )*
                _ => None,
            }
        }

        /// Every `(group, version, kind)` with a typed schema.
        #[cfg(test)]
        pub(crate) const TYPED_KINDS: &[(&str, &str, &str)] = &[$( ($g, $v, $k) ),*];
    };
}

use k8s_openapi::api as k;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;

typed_kinds! {
    ("", "v1", "Pod") => k::core::v1::Pod,
    ("", "v1", "Service") => k::core::v1::Service,
    ("", "v1", "Endpoints") => k::core::v1::Endpoints,
    ("", "v1", "ConfigMap") => k::core::v1::ConfigMap,
    ("", "v1", "Secret") => k::core::v1::Secret,
    ("", "v1", "ServiceAccount") => k::core::v1::ServiceAccount,
    ("", "v1", "Event") => k::core::v1::Event,
    ("", "v1", "Node") => k::core::v1::Node,
    ("", "v1", "Namespace") => k::core::v1::Namespace,
    ("", "v1", "ReplicationController") => k::core::v1::ReplicationController,
    ("", "v1", "PersistentVolume") => k::core::v1::PersistentVolume,
    ("", "v1", "PersistentVolumeClaim") => k::core::v1::PersistentVolumeClaim,
    ("", "v1", "LimitRange") => k::core::v1::LimitRange,
    ("", "v1", "ResourceQuota") => k::core::v1::ResourceQuota,
    ("", "v1", "Binding") => k::core::v1::Binding,
    ("apps", "v1", "Deployment") => k::apps::v1::Deployment,
    ("apps", "v1", "ReplicaSet") => k::apps::v1::ReplicaSet,
    ("apps", "v1", "StatefulSet") => k::apps::v1::StatefulSet,
    ("apps", "v1", "DaemonSet") => k::apps::v1::DaemonSet,
    ("apps", "v1", "ControllerRevision") => k::apps::v1::ControllerRevision,
    ("batch", "v1", "Job") => k::batch::v1::Job,
    ("batch", "v1", "CronJob") => k::batch::v1::CronJob,
    ("autoscaling", "v2", "HorizontalPodAutoscaler") => k::autoscaling::v2::HorizontalPodAutoscaler,
    ("autoscaling", "v1", "HorizontalPodAutoscaler") => k::autoscaling::v1::HorizontalPodAutoscaler,
    ("autoscaling", "v1", "Scale") => k::autoscaling::v1::Scale,
    ("networking.k8s.io", "v1", "Ingress") => k::networking::v1::Ingress,
    ("networking.k8s.io", "v1", "IngressClass") => k::networking::v1::IngressClass,
    ("networking.k8s.io", "v1", "NetworkPolicy") => k::networking::v1::NetworkPolicy,
    ("coordination.k8s.io", "v1", "Lease") => k::coordination::v1::Lease,
    ("discovery.k8s.io", "v1", "EndpointSlice") => k::discovery::v1::EndpointSlice,
    ("events.k8s.io", "v1", "Event") => k::events::v1::Event,
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => k::rbac::v1::ClusterRoleBinding,
    ("rbac.authorization.k8s.io", "v1", "ClusterRole") => k::rbac::v1::ClusterRole,
    ("rbac.authorization.k8s.io", "v1", "RoleBinding") => k::rbac::v1::RoleBinding,
    ("rbac.authorization.k8s.io", "v1", "Role") => k::rbac::v1::Role,
    ("policy", "v1", "PodDisruptionBudget") => k::policy::v1::PodDisruptionBudget,
    ("policy", "v1", "Eviction") => k::policy::v1::Eviction,
    ("storage.k8s.io", "v1", "StorageClass") => k::storage::v1::StorageClass,
    ("scheduling.k8s.io", "v1", "PriorityClass") => k::scheduling::v1::PriorityClass,
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition") => apiext::CustomResourceDefinition,
    ("authentication.k8s.io", "v1", "TokenReview") => k::authentication::v1::TokenReview,
    ("authentication.k8s.io", "v1", "SelfSubjectReview") => k::authentication::v1::SelfSubjectReview,
    // Served for kubectl 1.27 through the v1 type (see SAME_SHAPE).
    ("authentication.k8s.io", "v1beta1", "SelfSubjectReview") => k::authentication::v1::SelfSubjectReview,
    ("authentication.k8s.io", "v1alpha1", "SelfSubjectReview") => k::authentication::v1::SelfSubjectReview,
    ("authorization.k8s.io", "v1", "LocalSubjectAccessReview") => k::authorization::v1::LocalSubjectAccessReview,
    ("authorization.k8s.io", "v1", "SelfSubjectAccessReview") => k::authorization::v1::SelfSubjectAccessReview,
    ("authorization.k8s.io", "v1", "SelfSubjectRulesReview") => k::authorization::v1::SelfSubjectRulesReview,
    ("authorization.k8s.io", "v1", "SubjectAccessReview") => k::authorization::v1::SubjectAccessReview,
}

/// Served versions decoded through another version's type: (group, version, kind, the
/// version whose type they share).
const SAME_SHAPE: &[(&str, &str, &str, &str)] = &[
    (
        "authentication.k8s.io",
        "v1beta1",
        "SelfSubjectReview",
        "v1",
    ),
    (
        "authentication.k8s.io",
        "v1alpha1",
        "SelfSubjectReview",
        "v1",
    ),
];

/// Decodes `obj` as the typed object for `(group, version, kind)` and re-encodes it.
/// Err carries an upstream-like decoding message; `Ok(None)` means no typed schema.
pub fn typed_roundtrip_gvk(
    group: &str,
    version: &str,
    kind: &str,
    obj: &Value,
) -> Result<Option<TypedCheck>, String> {
    // Versions with the shape of another version decode through its type and keep
    // their own apiVersion.
    let alias = SAME_SHAPE
        .iter()
        .find(|(g, v, k, _)| (*g, *v, *k) == (group, version, kind))
        .map(|(_, _, _, typed)| *typed);
    let result = match alias {
        Some(typed) => {
            let mut input = obj.clone();
            if input.get("apiVersion").is_some() {
                input["apiVersion"] = Value::String(format!("{group}/{typed}"));
            }
            roundtrip_kind(group, typed, kind, &input)
        }
        None => roundtrip_kind(group, version, kind, obj),
    };
    let Some(result) = result else {
        return Ok(None);
    };
    let mut normalized = result?;
    if alias.is_some()
        && let (Some(av), Some(m)) = (obj.get("apiVersion"), normalized.as_object_mut())
    {
        m.insert("apiVersion".into(), av.clone());
    }
    let mut unknown_fields = Vec::new();
    let mut path = String::new();
    find_unknown(obj, &normalized, &mut path, &mut unknown_fields);
    Ok(Some(TypedCheck {
        normalized,
        unknown_fields,
    }))
}

fn roundtrip<T>(obj: &Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    if !obj.is_object() {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type struct",
            json_kind(obj)
        ));
    }
    let track = RefCell::new(Track::default());
    let typed = T::deserialize(De {
        value: obj,
        track: &track,
    })
    .map_err(|e| track.into_inner().message(e))?;
    serde_json::to_value(&typed).map_err(|e| format!("re-encoding failed: {e}"))
}

/// Collects fields present (and not null) in `input` but absent in `output`.
fn find_unknown(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (key, value) in i {
                if value.is_null() {
                    continue;
                }
                let len = path.len();
                path.push('.');
                path.push_str(key);
                match o.get(key) {
                    None => out.push(path.clone()),
                    Some(ov) => find_unknown(value, ov, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (iv, ov)) in i.iter().zip(o.iter()).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{idx}]"));
                find_unknown(iv, ov, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---------------------------------------------------------------------------------------
// The path-tracking deserializer.

#[derive(Debug)]
enum DeError {
    /// A JSON value of the wrong type (or a number out of range) for the target.
    Mismatch {
        json: &'static str,
        literal: Option<String>,
        expected: String,
    },
    /// Any other failure, prefixed with the path when reported.
    Other(String),
    /// A failure reported exactly as given (upstream reports these without a path).
    Verbatim(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Mismatch {
                json,
                literal,
                expected,
            } => match literal {
                Some(l) => write!(f, "invalid type: {json} {l}, expected {expected}"),
                None => write!(f, "invalid type: {json}, expected {expected}"),
            },
            DeError::Other(m) | DeError::Verbatim(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DeError {}

fn unexpected_kind(u: &de::Unexpected<'_>) -> (&'static str, Option<String>) {
    match u {
        de::Unexpected::Bool(_) => ("bool", None),
        de::Unexpected::Unsigned(n) => ("number", Some(n.to_string())),
        de::Unexpected::Signed(n) => ("number", Some(n.to_string())),
        de::Unexpected::Float(n) => ("number", Some(n.to_string())),
        de::Unexpected::Str(_) | de::Unexpected::Char(_) => ("string", None),
        de::Unexpected::Map => ("object", None),
        de::Unexpected::Seq => ("array", None),
        de::Unexpected::Unit | de::Unexpected::Option => ("null", None),
        _ => ("value", None),
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Other(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let (json, literal) = unexpected_kind(&unexp);
        DeError::Mismatch {
            json,
            literal,
            expected: exp.to_string(),
        }
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        match unexp {
            de::Unexpected::Unsigned(_) | de::Unexpected::Signed(_) | de::Unexpected::Float(_) => {
                let (json, literal) = unexpected_kind(&unexp);
                DeError::Mismatch {
                    json,
                    literal,
                    expected: exp.to_string(),
                }
            }
            other => DeError::Other(format!("invalid value: {other}, expected {exp}")),
        }
    }
}

/// Maps serde's "expected" descriptions to the Go types upstream names.
fn go_type(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => {
            let (sign, bits) = expected.split_at(1);
            format!("{}int{bits}", if sign == "u" { "u" } else { "" })
        }
        "f32" => "float32".into(),
        "f64" => "float64".into(),
        "a boolean" => "bool".into(),
        "a string" => "string".into(),
        "a map" => "map".into(),
        "a sequence" => "array".into(),
        "a base64-encoded string" => "[]uint8".into(),
        "IntOrString" | "a 32-bit integer" => "intstr.IntOrString".into(),
        "Quantity" => "resource.Quantity".into(),
        other if other.starts_with(|c: char| c.is_ascii_uppercase()) && !other.contains(' ') => {
            format!("v1.{other}")
        }
        other => other.to_string(),
    }
}

#[derive(Debug, Clone)]
enum Seg {
    /// An object key; `true` when it is a struct field (not a map key).
    Key(String, bool),
    Index(usize),
}

#[derive(Debug, Default)]
struct Track {
    segs: Vec<Seg>,
    structs: Vec<&'static str>,
    /// Where the first failure happened: full path, Go field path, innermost struct.
    failure: Option<(String, String, Option<&'static str>)>,
}

impl Track {
    fn record(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let mut full = String::new();
        let mut go = Vec::new();
        for s in &self.segs {
            match s {
                Seg::Key(k, is_field) => {
                    full.push('.');
                    full.push_str(k);
                    if *is_field {
                        go.push(k.as_str());
                    }
                }
                Seg::Index(i) => full.push_str(&format!("[{i}]")),
            }
        }
        self.failure = Some((full, go.join("."), self.structs.last().copied()));
    }

    fn message(self, err: DeError) -> String {
        let Some((full, go_path, strukt)) = self.failure else {
            return err.to_string();
        };
        match err {
            DeError::Mismatch {
                json,
                literal,
                expected,
            } => {
                let lit = literal.map(|l| format!(" {l}")).unwrap_or_default();
                let field = match strukt {
                    Some(s) if !go_path.is_empty() => format!("{s}.{go_path}"),
                    _ => full.trim_start_matches('.').to_string(),
                };
                format!(
                    "json: cannot unmarshal {json}{lit} into Go struct field {field} of type {}",
                    go_type(&expected)
                )
            }
            DeError::Other(m) => format!("{}: {m}", full.trim_start_matches('.')),
            DeError::Verbatim(m) => m,
        }
    }
}

struct De<'de, 't> {
    value: &'de Value,
    track: &'t RefCell<Track>,
}

impl<'de> Deserializer<'de> for De<'de, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(a) => visitor.visit_seq(SeqDe {
                iter: a.iter(),
                index: 0,
                track: self.track,
            }),
            Value::Object(m) => visitor.visit_map(MapDe {
                iter: m.iter(),
                value: None,
                is_struct: false,
                track: self.track,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.value.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == "Quantity"
            && let Value::String(q) = self.value
            && let Err(e) = parse_quantity(q)
        {
            return Err(DeError::Verbatim(e.to_string()));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.track.borrow_mut().structs.push(name);
        let result = match self.value {
            Value::Object(m) => visitor.visit_map(MapDe {
                iter: m.iter(),
                value: None,
                is_struct: true,
                track: self.track,
            }),
            _ => De {
                value: self.value,
                track: self.track,
            }
            .deserialize_any(visitor),
        };
        self.track.borrow_mut().structs.pop();
        result
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.value {
            Value::String(s) => {
                visitor.visit_enum(de::value::BorrowedStrDeserializer::<DeError>::new(s))
            }
            other => Err(DeError::Mismatch {
                json: json_kind(other),
                literal: None,
                expected: "string".into(),
            }),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit_struct seq tuple tuple_struct map identifier
    }
}

struct MapDe<'de, 't> {
    iter: serde_json::map::Iter<'de>,
    value: Option<(&'de str, &'de Value)>,
    is_struct: bool,
    track: &'t RefCell<Track>,
}

impl<'de> MapAccess<'de> for MapDe<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.value = Some((k.as_str(), v));
                seed.deserialize(de::value::BorrowedStrDeserializer::<DeError>::new(k))
                    .map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.value.take() else {
            return Err(DeError::Other("value requested before key".into()));
        };
        self.track
            .borrow_mut()
            .segs
            .push(Seg::Key(key.to_string(), self.is_struct));
        let result = seed.deserialize(De {
            value,
            track: self.track,
        });
        let mut t = self.track.borrow_mut();
        if result.is_err() {
            t.record();
        }
        t.segs.pop();
        result
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct SeqDe<'de, 't> {
    iter: std::slice::Iter<'de, Value>,
    index: usize,
    track: &'t RefCell<Track>,
}

impl<'de> SeqAccess<'de> for SeqDe<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(value) = self.iter.next() else {
            return Ok(None);
        };
        self.track.borrow_mut().segs.push(Seg::Index(self.index));
        self.index += 1;
        let result = seed.deserialize(De {
            value,
            track: self.track,
        });
        let mut t = self.track.borrow_mut();
        if result.is_err() {
            t.record();
        }
        t.segs.pop();
        result.map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(group: &str, version: &str, kind: &str, obj: Value) -> Result<TypedCheck, String> {
        typed_roundtrip_gvk(group, version, kind, &obj).map(|c| c.expect("typed kind"))
    }

    #[test]
    fn every_table_row_has_a_type() {
        for r in crate::api::resources::RESOURCES {
            assert!(
                TYPED_KINDS.contains(&(r.group, r.version, r.kind)),
                "no typed schema for {}/{} {}",
                r.group,
                r.version,
                r.kind
            );
            let minimal =
                json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}});
            let c = check(r.group, r.version, r.kind, minimal)
                .unwrap_or_else(|e| panic!("{}: {e}", r.kind));
            assert!(
                c.unknown_fields.is_empty(),
                "{}: {:?}",
                r.kind,
                c.unknown_fields
            );
            assert_eq!(c.normalized["metadata"]["name"], "x");
        }
    }

    #[test]
    fn realistic_deployment_round_trips() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "weird/Key.x": "v"},
                         "annotations": {"deployment.kubernetes.io/revision": "1", "x": ""},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
                                            "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "containers": [{
                            "name": "nginx", "image": "nginx:1.25",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "A", "value": "b"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": 0.25}},
                            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                        }],
                        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cm", "configMap": {"name": "c", "defaultMode": 420}}]
                    }
                }
            },
            "status": {"replicas": 3, "conditions": [{"type": "Available", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
        });
        let c = check("apps", "v1", "Deployment", d.clone()).unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        let n = &c.normalized;
        assert_eq!(n["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 1);
        assert_eq!(n["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            n["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "128Mi"
        );
        assert_eq!(n["metadata"]["labels"]["weird/Key.x"], "v");
        assert_eq!(
            n["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert_eq!(
            n["spec"]["template"]["spec"]["volumes"][0]["emptyDir"],
            json!({})
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_paths() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labelz": {"a": "b"}},
            "spec": {
                "replicasx": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}, {"name": "d", "image": "y", "imagex": "z", "nullish": null}]}}
            },
            "extra": {"deep": 1}
        });
        let c = check("apps", "v1", "Deployment", d).unwrap();
        assert_eq!(
            c.unknown_fields,
            vec![
                ".extra",
                ".metadata.labelz",
                ".spec.replicasx",
                ".spec.template.spec.containers[1].imagex"
            ]
        );
        assert!(c.normalized["spec"].get("replicasx").is_none());
    }

    #[test]
    fn pod_service_configmap_secret() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN"]}}}],
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]}]}}}},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}],
                "startTime": "2024-05-01T10:00:00Z",
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "busybox", "imageID": "",
                    "state": {"running": {"startedAt": "2024-05-01T10:00:01Z"}}}]}});
        let c = check("", "v1", "Pod", pod).unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        assert_eq!(
            c.normalized["status"]["containerStatuses"][0]["state"]["running"]["startedAt"],
            "2024-05-01T10:00:01Z"
        );

        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "b", "port": 81, "targetPort": 8081}],
                     "type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"]},
            "status": {"loadBalancer": {}}});
        let c = check("", "v1", "Service", svc).unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        assert_eq!(c.normalized["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(c.normalized["spec"]["ports"][1]["targetPort"], 8081);

        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a.yaml": "x: 1\n", "empty": ""}, "binaryData": {"bin": "AAEC"}, "immutable": true});
        let c = check("", "v1", "ConfigMap", cm).unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        assert_eq!(c.normalized["data"]["empty"], "");
        assert_eq!(c.normalized["binaryData"]["bin"], "AAEC");

        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
            "data": {"k": "dmFsdWU="}, "stringData": {"s": "plain"}});
        let c = check("", "v1", "Secret", secret).unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        assert_eq!(c.normalized["data"]["k"], "dmFsdWU=");
    }

    #[test]
    fn node_event_lease_slice_round_trip() {
        let cases: Vec<(&str, &str, &str, Value)> = vec![
            (
                "",
                "v1",
                "Node",
                json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "node-role.kubernetes.io/control-plane": ""}},
                "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"], "taints": [{"key": "k", "effect": "NoSchedule", "timeAdded": null}]},
                "status": {"capacity": {"cpu": "2", "memory": "4030184Ki", "pods": "110"},
                    "allocatable": {"cpu": "2", "ephemeral-storage": "18698430040", "memory": "3927784Ki", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-05-01T10:00:00Z",
                        "lastTransitionTime": "2024-05-01T09:00:00Z", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
                    "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "n1"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1", "osImage": "Debian",
                        "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.33.0", "kubeProxyVersion": "",
                        "operatingSystem": "linux", "architecture": "amd64"},
                    "images": [{"names": ["docker.io/library/busybox:latest"], "sizeBytes": 2231050}]}}),
            ),
            (
                "",
                "v1",
                "Event",
                json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "web.17c", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web", "uid": "u", "apiVersion": "v1", "fieldPath": "spec.containers{c}"},
                "reason": "Pulled", "message": "ok", "source": {"component": "kubelet", "host": "n1"},
                "firstTimestamp": "2024-05-01T10:00:00Z", "lastTimestamp": "2024-05-01T10:00:00Z", "count": 1, "type": "Normal",
                "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": "n1"}),
            ),
            (
                "coordination.k8s.io",
                "v1",
                "Lease",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "n1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": "2024-05-01T10:00:00.123456Z"}}),
            ),
            (
                "discovery.k8s.io",
                "v1",
                "EndpointSlice",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u"}}],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
            ),
        ];
        for (g, v, k, obj) in cases {
            let c = check(g, v, k, obj).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert!(c.unknown_fields.is_empty(), "{k}: {:?}", c.unknown_fields);
        }
    }

    #[test]
    fn crd_schema_round_trips() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {"size": {"type": "integer", "default": 1, "minimum": 0},
                                           "mode": {"type": "string", "enum": ["a", "b"]},
                                           "tags": {"type": "array", "items": {"type": "string"}},
                                           "extra": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}]}});
        let c = check(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            crd,
        )
        .unwrap();
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
    }

    #[test]
    fn decode_errors_name_the_field() {
        let cases: &[(&str, &str, &str, Value, &str)] = &[
            (
                "apps",
                "v1",
                "Deployment",
                json!({"spec": {"replicas": "3"}}),
                "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32",
            ),
            (
                "apps",
                "v1",
                "Deployment",
                json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}}}}),
                "json: cannot unmarshal string into Go struct field ContainerPort.spec.template.spec.containers.ports.containerPort of type int32",
            ),
            (
                "",
                "v1",
                "Pod",
                json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "lots"}}}]}}),
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            ),
            (
                "",
                "v1",
                "Pod",
                json!({"spec": {"hostNetwork": "yes"}}),
                "json: cannot unmarshal string into Go struct field PodSpec.spec.hostNetwork of type bool",
            ),
            (
                "",
                "v1",
                "Pod",
                json!({"spec": {"containers": {"name": "c"}}}),
                "json: cannot unmarshal object into Go struct field PodSpec.spec.containers of type array",
            ),
            (
                "apps",
                "v1",
                "Deployment",
                json!({"spec": {"replicas": 3000000000u64}}),
                "json: cannot unmarshal number 3000000000 into Go struct field DeploymentSpec.spec.replicas of type int32",
            ),
            (
                "",
                "v1",
                "ConfigMap",
                json!({"metadata": {"labels": {"a": 1}}}),
                "json: cannot unmarshal number 1 into Go struct field ObjectMeta.metadata.labels of type string",
            ),
        ];
        for (g, v, k, obj, want) in cases {
            let err = check(g, v, k, obj.clone()).unwrap_err();
            assert_eq!(err, *want, "{obj}");
        }
        let err = check("", "v1", "Secret", json!({"data": {"k": "not base64!"}})).unwrap_err();
        assert!(err.starts_with("data.k: "), "{err}");
        let err = check(
            "apps",
            "v1",
            "Deployment",
            json!({"apiVersion": "apps/v1beta1"}),
        )
        .unwrap_err();
        assert!(err.contains("apps/v1beta1"), "{err}");
        assert!(check("", "v1", "Pod", json!([])).is_err());
        assert!(
            typed_roundtrip_gvk("x", "v1", "Nope", &json!({}))
                .unwrap()
                .is_none()
        );
    }
}
