//! Field paths and sets of field paths, and their `FieldsV1` JSON encoding.
//!
//! A path names one field of an object from its root: struct and map fields by name
//! (`.spec.replicas`), items of list-maps by their key fields (`[name="nginx"]`), items of
//! set-lists by value (`[="example.com/x"]`). A [`Set`] is a trie of such paths, as upstream's
//! `sigs.k8s.io/structured-merge-diff/fieldpath.Set`: each node has *members* (paths that
//! end there) and *children* (sub-sets under a path element). A path can be both a member
//! and a prefix of other members, e.g. a container that an applier owns as a whole *and*
//! whose `image` it owns.
//!
//! The `FieldsV1` encoding (the `fieldsV1` of a `managedFields` entry) is one JSON object per
//! node: keys `f:<name>`, `k:<key object>`, `v:<value>` or `i:<index>` for the path elements,
//! `{}` for a member without children, and `".": {}` inside a child object when the child's
//! path is itself a member.
//!
//! Depends on nothing but serde_json; knows nothing about schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// Why a `fieldsV1` document could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldsError {
    /// A node of the document is not a JSON object.
    #[error("expected an object in fieldsV1 at {0:?}")]
    NotAnObject(String),
    /// A key is none of `f:`, `k:`, `v:`, `i:` or `.`.
    #[error("unknown path element prefix in fieldsV1 key {0:?}")]
    UnknownPrefix(String),
    /// The payload of a `k:`, `v:` or `i:` key is malformed.
    #[error("invalid path element in fieldsV1 key {0:?}")]
    BadElement(String),
}

/// One step of a field path. The derived order (fields, then keys, then values, then
/// indices) is upstream's `PathElement` order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of a struct or a key of a map.
    Field(String),
    /// An item of a list-map, by its key fields: `(name, canonical JSON value)` sorted by name.
    Key(Vec<(String, String)>),
    /// An item of a set-list, by its value (canonical JSON).
    Value(String),
    /// A list item by position (only read from `fieldsV1`, never produced).
    Index(usize),
}

impl PathElement {
    /// A field element.
    pub fn field(name: &str) -> PathElement {
        PathElement::Field(name.to_string())
    }

    /// A list-map key element from `(name, value)` pairs, in any order.
    pub fn key<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a Value)>) -> PathElement {
        let mut fields: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), canonical(v)))
            .collect();
        fields.sort();
        PathElement::Key(fields)
    }

    /// A set-list value element.
    pub fn value(v: &Value) -> PathElement {
        PathElement::Value(canonical(v))
    }

    /// The `fieldsV1` key of this element (`f:name`, `k:{"name":"c"}`, `v:"x"`, `i:0`).
    pub fn to_fields_key(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(fields) => {
                let inner: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", canonical(&Value::String(k.clone()))))
                    .collect();
                format!("k:{{{}}}", inner.join(","))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `fieldsV1` key (not `.`).
    pub fn from_fields_key(key: &str) -> Result<PathElement, FieldsError> {
        let bad = || FieldsError::BadElement(key.to_string());
        if let Some(name) = key.strip_prefix("f:") {
            Ok(PathElement::Field(name.to_string()))
        } else if let Some(rest) = key.strip_prefix("k:") {
            let obj: Map<String, Value> = serde_json::from_str(rest).map_err(|_| bad())?;
            Ok(PathElement::key(obj.iter().map(|(k, v)| (k.as_str(), v))))
        } else if let Some(rest) = key.strip_prefix("v:") {
            let v: Value = serde_json::from_str(rest).map_err(|_| bad())?;
            Ok(PathElement::value(&v))
        } else if let Some(rest) = key.strip_prefix("i:") {
            rest.parse().map(PathElement::Index).map_err(|_| bad())
        } else {
            Err(FieldsError::UnknownPrefix(key.to_string()))
        }
    }
}

impl fmt::Display for PathElement {
    /// Upstream's path notation: `.name`, `[k1=v1,k2=v2]`, `[=v]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(fields) => {
                let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", inner.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Upstream's string form of a path, e.g. `.spec.template.spec.containers[name="c"].image`.
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// Canonical JSON of a value (object keys sorted, compact).
fn canonical(v: &Value) -> String {
    // serde_json's Map keeps keys sorted (no `preserve_order`), so this is canonical.
    serde_json::to_string(v).unwrap_or_default()
}

/// A set of field paths (see the module documentation).
///
/// Invariant: no child set is empty, so structural equality is set equality.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, Set>,
}

impl Set {
    /// The empty set.
    pub fn new() -> Set {
        Set::default()
    }

    /// Whether the set holds no path.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds a path (the empty path is not representable and is ignored).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Whether `path` is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// Whether the single-element path `pe` is a member.
    pub fn is_member(&self, pe: &PathElement) -> bool {
        self.members.contains(pe)
    }

    /// Makes `pe` a member.
    pub fn insert_member(&mut self, pe: PathElement) {
        self.members.insert(pe);
    }

    /// The members at this level.
    pub fn members(&self) -> impl Iterator<Item = &PathElement> {
        self.members.iter()
    }

    /// The sub-set under `pe`, if any.
    pub fn child(&self, pe: &PathElement) -> Option<&Set> {
        self.children.get(pe)
    }

    /// The children at this level.
    pub fn children(&self) -> impl Iterator<Item = (&PathElement, &Set)> {
        self.children.iter()
    }

    /// Replaces (or, when `set` is empty, removes) the child under `pe`.
    pub fn set_child(&mut self, pe: PathElement, set: Set) {
        if set.is_empty() {
            self.children.remove(&pe);
        } else {
            self.children.insert(pe, set);
        }
    }

    /// The union of two sets.
    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, child) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    /// The paths of `self` that are not in `other` (member by member; a member of `other`
    /// does not remove the paths below it).
    pub fn difference(&self, other: &Set) -> Set {
        let members = self.members.difference(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            let rest = match other.children.get(pe) {
                Some(o) => child.difference(o),
                None => child.clone(),
            };
            if !rest.is_empty() {
                children.insert(pe.clone(), rest);
            }
        }
        Set { members, children }
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &Set) -> Set {
        let members = self.members.intersection(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let both = child.intersection(o);
                if !both.is_empty() {
                    children.insert(pe.clone(), both);
                }
            }
        }
        Set { members, children }
    }

    /// The set without `pe` and everything below it.
    pub fn without_subtree(&self, pe: &PathElement) -> Set {
        let mut out = self.clone();
        out.members.remove(pe);
        out.children.remove(pe);
        out
    }

    /// The set restricted to `pe` and everything below it.
    pub fn only_subtree(&self, pe: &PathElement) -> Set {
        let mut out = Set::new();
        if self.members.contains(pe) {
            out.members.insert(pe.clone());
        }
        if let Some(c) = self.children.get(pe) {
            out.children.insert(pe.clone(), c.clone());
        }
        out
    }

    /// Every member path, in order.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        let keys: BTreeSet<&PathElement> =
            self.members.iter().chain(self.children.keys()).collect();
        for pe in keys {
            prefix.push(pe.clone());
            if self.members.contains(pe) {
                out.push(prefix.clone());
            }
            if let Some(child) = self.children.get(pe) {
                child.collect_paths(prefix, out);
            }
            prefix.pop();
        }
    }

    /// The `FieldsV1` JSON of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut obj = Map::new();
        let keys: BTreeSet<&PathElement> =
            self.members.iter().chain(self.children.keys()).collect();
        for pe in keys {
            let v = match self.children.get(pe) {
                Some(child) => {
                    let mut inner = match child.to_fields_v1() {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    if self.members.contains(pe) {
                        inner.insert(".".into(), Value::Object(Map::new()));
                    }
                    Value::Object(inner)
                }
                None => Value::Object(Map::new()),
            };
            obj.insert(pe.to_fields_key(), v);
        }
        Value::Object(obj)
    }

    /// Decodes a `FieldsV1` JSON document.
    pub fn from_fields_v1(v: &Value) -> Result<Set, FieldsError> {
        Ok(decode_node(v, "")?.1)
    }
}

/// Decodes one node: whether it carries `"."`, and the set below it.
fn decode_node(v: &Value, at: &str) -> Result<(bool, Set), FieldsError> {
    let Value::Object(obj) = v else {
        return Err(FieldsError::NotAnObject(at.to_string()));
    };
    let mut set = Set::new();
    let mut dot = false;
    for (k, child) in obj {
        if k == "." {
            dot = true;
            continue;
        }
        let pe = PathElement::from_fields_key(k)?;
        let (member, sub) = decode_node(child, k)?;
        if sub.is_empty() || member {
            set.members.insert(pe.clone());
        }
        set.set_child(pe, sub);
    }
    Ok((dot, set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str) -> PathElement {
        PathElement::field(name)
    }

    #[test]
    fn fields_v1_round_trip() {
        // Shapes as upstream writes them (kubernetes docs "Server-Side Apply", field
        // management example): `.` marks a list item that is itself owned.
        let cases = [
            json!({"f:spec": {"f:replicas": {}}}),
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}),
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}}),
            json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}}}),
            json!({"f:metadata": {"f:finalizers": {"v:\"example.com/a\"": {}}}}),
            json!({"f:x": {"i:0": {}}}),
        ];
        for fields in cases {
            let set = Set::from_fields_v1(&fields).unwrap();
            assert_eq!(set.to_fields_v1(), fields, "round trip of {fields}");
        }
    }

    #[test]
    fn fields_v1_rejects_garbage() {
        assert!(matches!(
            Set::from_fields_v1(&json!({"x:y": {}})),
            Err(FieldsError::UnknownPrefix(_))
        ));
        assert!(matches!(
            Set::from_fields_v1(&json!({"k:{nope": {}})),
            Err(FieldsError::BadElement(_))
        ));
        assert!(matches!(
            Set::from_fields_v1(&json!({"f:a": 1})),
            Err(FieldsError::NotAnObject(_))
        ));
    }

    #[test]
    fn key_elements_are_sorted_and_printed_like_upstream() {
        let pe = PathElement::key([("protocol", &json!("TCP")), ("containerPort", &json!(80))]);
        assert_eq!(
            pe.to_fields_key(),
            r#"k:{"containerPort":80,"protocol":"TCP"}"#
        );
        assert_eq!(pe.to_string(), r#"[containerPort=80,protocol="TCP"]"#);
        let path = vec![
            f("spec"),
            PathElement::key([("name", &json!("c"))]),
            f("image"),
        ];
        assert_eq!(path_string(&path), r#".spec[name="c"].image"#);
        assert_eq!(PathElement::value(&json!("a")).to_string(), r#"[="a"]"#);
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::new();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("spec"), f("paused")]);
        a.insert(&[f("metadata")]);
        a.insert(&[f("metadata"), f("labels"), f("app")]);
        let mut b = Set::new();
        b.insert(&[f("spec"), f("replicas")]);
        b.insert(&[f("metadata")]);

        let d = a.difference(&b);
        assert!(d.has(&[f("spec"), f("paused")]));
        assert!(!d.has(&[f("spec"), f("replicas")]));
        // Removing the member `metadata` keeps the paths below it.
        assert!(!d.has(&[f("metadata")]));
        assert!(d.has(&[f("metadata"), f("labels"), f("app")]));

        let i = a.intersection(&b);
        assert_eq!(
            i.paths(),
            vec![vec![f("metadata")], vec![f("spec"), f("replicas")]]
        );
        assert_eq!(b.union(&d), a);
        assert!(a.difference(&a).is_empty());
        assert!(
            a.without_subtree(&f("spec"))
                .paths()
                .iter()
                .all(|p| p[0] != f("spec"))
        );
        assert_eq!(a.only_subtree(&f("spec")).paths().len(), 2);
    }
}
