//! Structured merge over JSON values typed by a [`Schema`]: the operations server-side
//! apply and field tracking are built from, with the semantics of upstream's
//! `sigs.k8s.io/structured-merge-diff` (`typed` package):
//!
//! * [`to_field_set`]: the fields a value sets (an applied configuration's ownership):
//!   scalars, atomic lists and maps, list items (keyed or by value), empty and null
//!   fields, and the entries of maps that are not declared struct fields.
//! * [`merge`]: the configuration merged over the live object. Maps merge key by key;
//!   list-maps and sets merge item by item, in the configuration's order for the items it
//!   names, live-only items kept at their place; everything else the configuration sets
//!   replaces the live value. A field the configuration sets to `null` is removed.
//! * [`compare`]: added, modified and removed paths between two objects. Scalars and atomic
//!   values are compared as wholes; a map, struct, list or list item that appears or
//!   disappears is itself added or removed (upstream's `postItemHook`), which is where
//!   the `.` members of `fieldsV1` come from.
//! * [`remove_items`]: the value without the paths of a set (a member removes its subtree).
//! * [`ensure_named_fields_are_members`]: a set whose declared struct fields on the way to
//!   a member are members too (used when pruning).
//! * [`fill_zero`]: adds the fields a Go zero value always has (see
//!   [`super::schema`]), so comparisons see objects as upstream's typed values are.
//!
//! Depends on `fieldset` and `schema` only.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::fieldset::{PathElement, Set, path_string};
use super::schema::{DEDUCED, ListKind, Node, Schema, TypeId};

/// A value that does not fit its list's type. Messages follow upstream's typed errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Two items of a list-map or set have the same key.
    #[error("{path}: duplicate entries for key {key}")]
    Duplicate {
        /// The list's path.
        path: String,
        /// The duplicated key, e.g. `[name="c"]`.
        key: String,
    },
    /// An item of a list-map lacks a key field that has no default.
    #[error(
        "{path}: element {index}: associative list with keys has an element that omits key field {field:?} (and doesn't have default value)"
    )]
    MissingKey {
        /// The list's path.
        path: String,
        /// The item's position.
        index: usize,
        /// The missing key field.
        field: String,
    },
    /// An item of a list-map is not an object.
    #[error("{path}: element {index}: associative list with keys may not have non-map elements")]
    NotAMap {
        /// The list's path.
        path: String,
        /// The item's position.
        index: usize,
    },
    /// An item of a set is an object, a list or null.
    #[error(
        "{path}: element {index}: associative list without keys has an element that is not a scalar"
    )]
    NotAScalar {
        /// The list's path.
        path: String,
        /// The item's position.
        index: usize,
    },
}

/// Paths that differ between two objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Present only in the new object.
    pub added: Set,
    /// Present in both, with different values.
    pub modified: Set,
    /// Present only in the old object.
    pub removed: Set,
}

impl Comparison {
    /// The comparison without the paths under the root fields in `fields` (upstream's
    /// reset fields: `status` for the main resource, `spec` for `/status`).
    pub fn without_roots(&self, fields: &[&str]) -> Comparison {
        let strip = |s: &Set| {
            fields.iter().fold(s.clone(), |acc, f| {
                acc.without_subtree(&PathElement::field(f))
            })
        };
        Comparison {
            added: strip(&self.added),
            modified: strip(&self.modified),
            removed: strip(&self.removed),
        }
    }

    /// Added and modified paths: what a writer changed.
    pub fn changed(&self) -> Set {
        self.added.union(&self.modified)
    }
}

/// How a value is walked.
enum Shape<'s> {
    /// Compared and replaced as a whole.
    Leaf,
    /// An object whose keys are walked; field types are looked up in this type.
    Fields(TypeId),
    /// A list whose items are identified by key or value.
    Items(TypeId, &'s ListKind),
}

/// The shape of `ty` given the values present (`None` = absent; `null` counts as empty).
fn shape<'s>(s: &'s Schema, ty: TypeId, values: [Option<&Value>; 2]) -> Shape<'s> {
    let present = || values.into_iter().flatten().filter(|v| !v.is_null());
    let all_objects = || present().all(Value::is_object);
    let all_arrays = || present().all(Value::is_array);
    match s.node(ty) {
        Node::Scalar => Shape::Leaf,
        Node::Deduced => {
            if present().next().is_some() && all_objects() {
                Shape::Fields(DEDUCED)
            } else {
                Shape::Leaf
            }
        }
        Node::Struct { atomic: true, .. } | Node::Map { atomic: true, .. } => Shape::Leaf,
        Node::Struct { .. } | Node::Map { .. } => {
            if all_objects() {
                Shape::Fields(ty)
            } else {
                Shape::Leaf
            }
        }
        Node::List {
            kind: ListKind::Atomic,
            ..
        } => Shape::Leaf,
        Node::List { kind, .. } => {
            if all_arrays() {
                Shape::Items(ty, kind)
            } else {
                Shape::Leaf
            }
        }
    }
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

fn child_type(s: &Schema, ty: TypeId, pe: &PathElement) -> TypeId {
    match pe {
        PathElement::Field(name) => s.field(ty, name).0,
        _ => s.elem(ty),
    }
}

/// The path element of one list item.
fn item_element(
    kind: &ListKind,
    item: &Value,
    index: usize,
    path: &[PathElement],
) -> Result<PathElement, MergeError> {
    match kind {
        ListKind::Map { keys, defaults } => {
            let Value::Object(m) = item else {
                return Err(MergeError::NotAMap {
                    path: path_string(path),
                    index,
                });
            };
            let mut pairs = Vec::with_capacity(keys.len());
            for key in keys.iter() {
                let v = match m.get(*key) {
                    Some(v) => v,
                    None => match defaults.iter().find(|(k, _)| k == key) {
                        Some((_, d)) => d,
                        None => {
                            return Err(MergeError::MissingKey {
                                path: path_string(path),
                                index,
                                field: (*key).to_string(),
                            });
                        }
                    },
                };
                pairs.push((*key, v));
            }
            Ok(PathElement::key(pairs))
        }
        ListKind::Set | ListKind::Atomic => {
            if item.is_object() || item.is_array() || item.is_null() {
                return Err(MergeError::NotAScalar {
                    path: path_string(path),
                    index,
                });
            }
            Ok(PathElement::value(item))
        }
    }
}

/// The elements of every item, in order.
fn elements(
    kind: &ListKind,
    items: &[Value],
    path: &[PathElement],
) -> Result<Vec<PathElement>, MergeError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| item_element(kind, item, i, path))
        .collect()
}

// ---------------------------------------------------------------------------------------
// ToFieldSet

/// The set of fields `value` sets (upstream's `TypedValue.ToFieldSet`). Duplicate items
/// are owned as wholes.
pub fn to_field_set(s: &Schema, ty: TypeId, value: &Value) -> Result<Set, MergeError> {
    let mut out = Set::new();
    fieldset_walk(s, ty, value, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn fieldset_walk(
    s: &Schema,
    ty: TypeId,
    v: &Value,
    path: &mut Vec<PathElement>,
    out: &mut Set,
) -> Result<(), MergeError> {
    match shape(s, ty, [Some(v), None]) {
        // Scalars and atomic values; a null struct or list is also recorded by its parent.
        Shape::Leaf => out.insert(path),
        Shape::Fields(fty) => {
            let Value::Object(obj) = v else { return Ok(()) };
            for (k, child) in obj {
                let (cty, declared) = s.field(fty, k);
                path.push(PathElement::Field(k.clone()));
                fieldset_walk(s, cty, child, path, out)?;
                let empty_map = child.as_object().is_some_and(Map::is_empty);
                if child.is_null() || empty_map || !declared {
                    out.insert(path);
                }
                path.pop();
            }
        }
        Shape::Items(lty, kind) => {
            let Value::Array(items) = v else {
                return Ok(());
            };
            let pes = elements(kind, items, path)?;
            let mut seen = BTreeSet::new();
            let mut duplicates = BTreeSet::new();
            for pe in &pes {
                if !seen.insert(pe) {
                    duplicates.insert(pe);
                }
            }
            let elem = s.elem(lty);
            for (pe, item) in pes.iter().zip(items) {
                path.push(pe.clone());
                if !duplicates.contains(pe) {
                    fieldset_walk(s, elem, item, path, out)?;
                }
                out.insert(path);
                path.pop();
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Merge

/// `config` merged over `live` (upstream's `TypedValue.Merge`, right side wins). Errors
/// when the configuration's lists do not fit their types; a live list that does not fit
/// is replaced as a whole.
pub fn merge(s: &Schema, ty: TypeId, live: &Value, config: &Value) -> Result<Value, MergeError> {
    Ok(merge_walk(s, ty, Some(live), Some(config), &mut Vec::new())?.unwrap_or(Value::Null))
}

fn merge_walk(
    s: &Schema,
    ty: TypeId,
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    path: &mut Vec<PathElement>,
) -> Result<Option<Value>, MergeError> {
    let leaf = || Ok(rhs.or(lhs).cloned());
    if is_empty(lhs) && is_empty(rhs) {
        return leaf();
    }
    match shape(s, ty, [lhs, rhs]) {
        Shape::Leaf => leaf(),
        Shape::Fields(fty) => {
            let empty = Map::new();
            let lm = lhs.and_then(Value::as_object).unwrap_or(&empty);
            let rm = rhs.and_then(Value::as_object).unwrap_or(&empty);
            let keys: BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
            let mut out = Map::new();
            for k in keys {
                let r = rm.get(k);
                if r.is_some_and(Value::is_null) {
                    // The configuration sets the field to null: it is cleared.
                    continue;
                }
                let (cty, _) = s.field(fty, k);
                path.push(PathElement::Field(k.clone()));
                let merged = merge_walk(s, cty, lm.get(k), r, path)?;
                path.pop();
                if let Some(v) = merged {
                    out.insert(k.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
        Shape::Items(lty, kind) => {
            let empty = Vec::new();
            let la = lhs.and_then(Value::as_array).unwrap_or(&empty);
            let ra = rhs.and_then(Value::as_array).unwrap_or(&empty);
            let rpes = elements(kind, ra, path)?;
            let Ok(lpes) = elements(kind, la, path) else {
                return leaf();
            };
            let elem = s.elem(lty);
            // The configuration may not name an item twice.
            let mut observed_rhs: HashMap<&PathElement, &Value> = HashMap::new();
            for (pe, item) in rpes.iter().zip(ra) {
                if observed_rhs.insert(pe, item).is_some() {
                    return Err(MergeError::Duplicate {
                        path: path_string(path),
                        key: pe.to_string(),
                    });
                }
            }
            // Live duplicates are not merged item by item: the configuration's item
            // replaces them all.
            let mut observed_lhs: HashMap<&PathElement, Option<&Value>> = HashMap::new();
            for (pe, item) in lpes.iter().zip(la) {
                observed_lhs
                    .entry(pe)
                    .and_modify(|v| *v = None)
                    .or_insert(Some(item));
            }
            let order = merged_order(
                &lpes,
                &rpes,
                |pe| observed_rhs.contains_key(pe),
                |pe| observed_lhs.contains_key(pe),
            );
            let mut out = Vec::with_capacity(order.len());
            for step in order {
                let (pe, l, r) = match step {
                    Step::Live(i) => (&lpes[i], Some(&la[i]), None),
                    Step::Config(j) => {
                        let pe = &rpes[j];
                        (pe, observed_lhs.get(pe).copied().flatten(), Some(&ra[j]))
                    }
                };
                path.push(pe.clone());
                let merged = merge_walk(s, elem, l, r, path)?;
                path.pop();
                if let Some(v) = merged {
                    out.push(v);
                }
            }
            Ok(Some(Value::Array(out)))
        }
    }
}

/// One output item of a list merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The live item at this index, not named by the configuration.
    Live(usize),
    /// The configuration's item at this index (merged with its live counterpart).
    Config(usize),
}

/// The order of a merged list (upstream's `visitListItems`): live items keep their
/// relative order, items both sides have come in the configuration's order, and items
/// only the configuration has come before the next shared item (or at the end).
fn merged_order(
    lpes: &[PathElement],
    rpes: &[PathElement],
    in_rhs: impl Fn(&PathElement) -> bool,
    in_lhs: impl Fn(&PathElement) -> bool,
) -> Vec<Step> {
    let mut shared = rpes.iter().filter(|pe| in_lhs(pe));
    let mut next_shared = shared.next();
    let mut done: BTreeSet<&PathElement> = BTreeSet::new();
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    while li < lpes.len() || ri < rpes.len() {
        if li < lpes.len() && ri < rpes.len() {
            let pe = &lpes[li];
            if *pe == rpes[ri] {
                done.insert(pe);
                out.push(Step::Config(ri));
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if in_rhs(pe) && next_shared.is_some_and(|n| n != pe) {
                // A shared item, but not the next one in the configuration's order.
                li += 1;
                continue;
            }
        }
        if li < lpes.len() {
            let pe = &lpes[li];
            if !in_rhs(pe) {
                out.push(Step::Live(li));
                li += 1;
                continue;
            } else if done.contains(pe) {
                li += 1;
            }
        }
        if ri < rpes.len() {
            let pe = &rpes[ri];
            if done.insert(pe) {
                out.push(Step::Config(ri));
            }
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.next();
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Compare

/// The paths added, modified and removed from `old` to `new` (upstream's
/// `TypedValue.Compare`). Lists whose items do not fit their type compare as wholes.
pub fn compare(s: &Schema, ty: TypeId, old: &Value, new: &Value) -> Comparison {
    let mut c = Comparison::default();
    compare_walk(s, ty, Some(old), Some(new), &mut Vec::new(), &mut c);
    c
}

fn compare_walk(
    s: &Schema,
    ty: TypeId,
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
) {
    let leaf = |c: &mut Comparison, path: &[PathElement]| match (lhs, rhs) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(l), Some(r)) if l != r => c.modified.insert(path),
        _ => {}
    };
    if is_empty(lhs) && is_empty(rhs) {
        leaf(c, path);
        return;
    }
    match shape(s, ty, [lhs, rhs]) {
        Shape::Leaf => {
            leaf(c, path);
            return;
        }
        Shape::Fields(fty) => {
            let empty = Map::new();
            let lm = lhs.and_then(Value::as_object).unwrap_or(&empty);
            let rm = rhs.and_then(Value::as_object).unwrap_or(&empty);
            let keys: BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
            for k in keys {
                let (cty, _) = s.field(fty, k);
                path.push(PathElement::Field(k.clone()));
                compare_walk(s, cty, lm.get(k), rm.get(k), path, c);
                path.pop();
            }
        }
        Shape::Items(lty, kind) => {
            let empty = Vec::new();
            let la = lhs.and_then(Value::as_array).unwrap_or(&empty);
            let ra = rhs.and_then(Value::as_array).unwrap_or(&empty);
            let (Ok(lpes), Ok(rpes)) = (elements(kind, la, path), elements(kind, ra, path)) else {
                leaf(c, path);
                return;
            };
            let ((lm, ldup), (rm, rdup)) = (index_items(&lpes, la), index_items(&rpes, ra));
            if ldup || rdup {
                leaf(c, path);
                return;
            }
            let elem = s.elem(lty);
            let all: BTreeSet<&PathElement> = lpes.iter().chain(rpes.iter()).collect();
            for pe in all {
                path.push(pe.clone());
                compare_walk(s, elem, lm.get(pe).copied(), rm.get(pe).copied(), path, c);
                path.pop();
            }
        }
    }
    // A non-leaf that appears or disappears is itself added or removed.
    match (lhs, rhs) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        _ => {}
    }
}

/// Items by element, and whether any element repeats.
fn index_items<'a>(
    pes: &'a [PathElement],
    items: &'a [Value],
) -> (HashMap<&'a PathElement, &'a Value>, bool) {
    let mut m = HashMap::new();
    let mut dup = false;
    for (pe, item) in pes.iter().zip(items) {
        dup |= m.insert(pe, item).is_some();
    }
    (m, dup)
}

// ---------------------------------------------------------------------------------------
// RemoveItems, EnsureNamedFieldsAreMembers, zero values

/// Removes the paths of `set` from `value`; a member path removes its whole subtree.
pub fn remove_items(s: &Schema, ty: TypeId, value: &mut Value, set: &Set) {
    let mut path = Vec::new();
    remove_walk(s, ty, value, set, &mut path);
}

fn remove_walk(s: &Schema, ty: TypeId, v: &mut Value, set: &Set, path: &mut Vec<PathElement>) {
    match shape(s, ty, [Some(v), None]) {
        Shape::Leaf => {}
        Shape::Fields(fty) => {
            let Value::Object(obj) = v else { return };
            let keys: Vec<String> = obj.keys().cloned().collect();
            for k in keys {
                let pe = PathElement::Field(k.clone());
                if set.is_member(&pe) {
                    obj.remove(&k);
                } else if let (Some(sub), Some(child)) = (set.child(&pe), obj.get_mut(&k)) {
                    path.push(pe);
                    remove_walk(s, s.field(fty, &k).0, child, sub, path);
                    path.pop();
                }
            }
        }
        Shape::Items(lty, kind) => {
            let Value::Array(items) = v else { return };
            let elem = s.elem(lty);
            let old = std::mem::take(items);
            for (i, mut item) in old.into_iter().enumerate() {
                match item_element(kind, &item, i, path) {
                    Ok(pe) if set.is_member(&pe) => continue,
                    Ok(pe) => {
                        if let Some(sub) = set.child(&pe) {
                            path.push(pe);
                            remove_walk(s, elem, &mut item, sub, path);
                            path.pop();
                        }
                    }
                    Err(_) => {}
                }
                items.push(item);
            }
        }
    }
}

/// `set` plus every declared struct field that leads to one of its paths (upstream's
/// `Set.EnsureNamedFieldsAreMembers`).
pub fn ensure_named_fields_are_members(s: &Schema, ty: TypeId, set: &Set) -> Set {
    let mut out = Set::new();
    for pe in set.members() {
        out.insert_member(pe.clone());
    }
    let is_struct = matches!(s.node(ty), Node::Struct { .. });
    for (pe, child) in set.children() {
        if let PathElement::Field(name) = pe
            && is_struct
            && s.field(ty, name).1
        {
            out.insert_member(pe.clone());
        }
        let cty = child_type(s, ty, pe);
        out.set_child(pe.clone(), ensure_named_fields_are_members(s, cty, child));
    }
    out
}

/// Removes the keys of structs that their type does not declare (unknown fields, which the
/// request's `fieldValidation` already reported or rejected; the typed object drops them).
pub fn prune_undeclared(s: &Schema, ty: TypeId, v: &mut Value) {
    match (s.node(ty), v) {
        (Node::Struct { fields, .. }, Value::Object(obj)) => {
            obj.retain(|k, _| fields.contains_key(k));
            for (k, child) in obj.iter_mut() {
                prune_undeclared(s, s.field(ty, k).0, child);
            }
        }
        (Node::Map { elem, .. }, Value::Object(obj)) => {
            for child in obj.values_mut() {
                prune_undeclared(s, *elem, child);
            }
        }
        (Node::List { elem, .. }, Value::Array(items)) => {
            for item in items {
                prune_undeclared(s, *elem, item);
            }
        }
        _ => {}
    }
}

/// Adds, recursively, the fields that the Go zero value of each struct has: `{}` for
/// value structs, `null` for collections without `omitempty`.
pub fn fill_zero(s: &Schema, ty: TypeId, v: &mut Value) {
    match (s.node(ty), v) {
        (
            Node::Struct {
                fields,
                atomic: false,
            },
            Value::Object(obj),
        ) => {
            for (name, f) in fields {
                if f.zero_present && !obj.contains_key(name) {
                    let zero = match s.node(f.ty) {
                        Node::Struct { .. } => Value::Object(Map::new()),
                        _ => Value::Null,
                    };
                    obj.insert(name.clone(), zero);
                }
            }
            for (k, child) in obj.iter_mut() {
                fill_zero(s, s.field(ty, k).0, child);
            }
        }
        (
            Node::Map {
                elem,
                atomic: false,
            },
            Value::Object(obj),
        ) => {
            for child in obj.values_mut() {
                fill_zero(s, *elem, child);
            }
        }
        (Node::List { elem, kind }, Value::Array(items)) if *kind != ListKind::Atomic => {
            for item in items {
                fill_zero(s, *elem, item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::schema;
    use super::*;
    use serde_json::json;

    fn deploy() -> TypeId {
        schema().root("apps", "v1", "Deployment")
    }

    fn fields(v: &Value) -> Value {
        to_field_set(schema(), deploy(), v).unwrap().to_fields_v1()
    }

    #[test]
    fn field_sets_of_applied_configurations() {
        // Shapes as upstream records them for an applier (kubernetes docs "Server-Side
        // Apply", managed fields example; structured-merge-diff typed/toset_test.go).
        let cases = [
            (
                json!({"spec": {"replicas": 2}}),
                json!({"f:spec": {"f:replicas": {}}}),
            ),
            (
                json!({"metadata": {"labels": {"app": "x"}}}),
                json!({"f:metadata": {"f:labels": {"f:app": {}}}}),
            ),
            (
                // LabelSelector is an atomic struct.
                json!({"spec": {"selector": {"matchLabels": {"app": "x"}}}}),
                json!({"f:spec": {"f:selector": {}}}),
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}}}),
                json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                    ".": {}, "f:image": {}, "f:name": {},
                    // The protocol key defaults to TCP.
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                }}}}}}),
            ),
            (
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}, "v:\"b\"": {}}}}),
            ),
            (
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k"}]}}}}),
                json!({"f:spec": {"f:template": {"f:spec": {"f:tolerations": {}}}}}),
            ),
            (
                json!({"spec": {"template": {"spec": {"securityContext": {}, "nodeSelector": {"a": "b"}}}}}),
                json!({"f:spec": {"f:template": {"f:spec": {"f:securityContext": {}, "f:nodeSelector": {}}}}}),
            ),
        ];
        for (config, want) in cases {
            assert_eq!(fields(&config), want, "fields of {config}");
        }
    }

    #[test]
    fn field_set_errors() {
        let s = schema();
        let missing = json!({"spec": {"template": {"spec": {"containers": [{"image": "i"}]}}}});
        assert!(matches!(
            to_field_set(s, deploy(), &missing),
            Err(MergeError::MissingKey { .. })
        ));
        let dup =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}, {"name": "c"}]}}}});
        let live = json!({});
        assert_eq!(
            merge(s, deploy(), &live, &dup).unwrap_err().to_string(),
            r#".spec.template.spec.containers: duplicate entries for key [name="c"]"#
        );
    }

    #[test]
    fn merge_cases() {
        let s = schema();
        let c = |name: &str, image: &str| json!({"name": name, "image": image});
        let pod = |containers: Vec<Value>| json!({"spec": {"template": {"spec": {"containers": containers}}}});
        // (live, config, merged) — structured-merge-diff merge/key_test.go, set_test.go and
        // typed/merge_test.go ordering cases.
        let cases = [
            // Maps merge; the config wins on scalars.
            (
                json!({"spec": {"replicas": 1, "paused": true}}),
                json!({"spec": {"replicas": 3}}),
                json!({"spec": {"replicas": 3, "paused": true}}),
            ),
            // List-map items merge by key; live-only items stay in place.
            (
                pod(vec![c("a", "1"), c("b", "1")]),
                pod(vec![json!({"name": "b", "image": "2"})]),
                pod(vec![c("a", "1"), c("b", "2")]),
            ),
            // Items only the config has come before the next shared item, or last.
            (
                pod(vec![c("a", "1"), c("b", "1")]),
                pod(vec![c("x", "9"), c("b", "1")]),
                pod(vec![c("a", "1"), c("x", "9"), c("b", "1")]),
            ),
            (
                pod(vec![c("a", "1"), c("b", "1")]),
                pod(vec![c("a", "1"), c("x", "9")]),
                pod(vec![c("a", "1"), c("b", "1"), c("x", "9")]),
            ),
            // Shared items take the config's order; live-only items keep their place.
            (
                pod(vec![c("a", "1"), c("b", "1"), c("z", "0")]),
                pod(vec![c("b", "1"), c("a", "1")]),
                pod(vec![c("b", "1"), c("z", "0"), c("a", "1")]),
            ),
            // Sets: union.
            (
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["c", "a"]}}),
                json!({"metadata": {"finalizers": ["c", "a", "b"]}}),
            ),
            // Atomic lists are replaced.
            (
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "a"}, {"key": "b"}]}}}}),
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "c"}]}}}}),
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "c"}]}}}}),
            ),
            // Atomic structs too.
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "1"}, "matchExpressions": []}}}),
                json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}}),
                json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}}),
            ),
            // null clears a field.
            (
                json!({"spec": {"replicas": 1, "paused": true}}),
                json!({"spec": {"paused": null}}),
                json!({"spec": {"replicas": 1}}),
            ),
        ];
        for (live, config, want) in cases {
            assert_eq!(
                merge(s, deploy(), &live, &config).unwrap(),
                want,
                "{live} + {config}"
            );
        }
    }

    #[test]
    fn compare_marks_appearing_maps_and_items() {
        let s = schema();
        let old = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "1"}]}}}});
        let new = json!({"metadata": {"name": "d", "labels": {"x": "y"}}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "b", "image": "1"}]}}}});
        let c = compare(s, deploy(), &old, &new);
        assert_eq!(
            c.added.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {".": {}, "f:x": {}}}, "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"b\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(
            c.modified.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert_eq!(
            c.removed.to_fields_v1(),
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(compare(s, deploy(), &old, &old), Comparison::default());
    }

    #[test]
    fn zero_values_hide_value_structs() {
        // kubectl create's entry has `f:strategy: {f:rollingUpdate: {".": {}, ...}}`:
        // DeploymentStrategy is a value struct, RollingUpdateDeployment a pointer.
        let s = schema();
        let mut old = json!({});
        fill_zero(s, deploy(), &mut old);
        let mut new = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1}}, "template": {"spec": {"containers": [{"name": "c"}]}}}});
        fill_zero(s, deploy(), &mut new);
        let c = compare(s, deploy(), &old, &new);
        assert_eq!(
            c.added.to_fields_v1(),
            json!({"f:spec": {
                "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}}},
                "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:resources": {}}}}}
            }})
        );
    }

    #[test]
    fn remove_and_ensure_named() {
        let s = schema();
        let mut v = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}});
        let mut set = Set::new();
        let f = PathElement::field;
        set.insert(&[f("metadata"), f("labels"), f("a")]);
        set.insert(&[
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            PathElement::key([("name", &json!("a"))]),
        ]);
        remove_items(s, deploy(), &mut v, &set);
        assert_eq!(
            v,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "b"}]}}}})
        );
        let named = ensure_named_fields_are_members(s, deploy(), &set);
        assert!(named.has(&[f("metadata")]));
        assert!(named.has(&[f("metadata"), f("labels")]));
        // Map keys and list items are not named fields.
        assert!(named.has(&[f("spec"), f("template"), f("spec"), f("containers")]));
        assert_eq!(named.paths().len(), 8);
    }
}
