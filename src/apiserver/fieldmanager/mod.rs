//! Field management: `metadata.managedFields` and server-side apply
//! (`application/apply-patch+yaml`), with upstream kube-apiserver's semantics.
//!
//! Every write records which *manager* (the `fieldManager` query parameter, or the client's
//! User-Agent name) owns which fields. Non-apply writes ([`update`]) own the fields they
//! added or changed (operation `Update`, one entry per manager, API version and
//! subresource); applies ([`apply`]) own exactly the fields of their configuration
//! (operation `Apply`, one entry per manager and subresource). A field changed by one manager
//! is taken away from the others. An apply that would change a field another manager owns
//! fails with a 409 listing the conflicts unless forced; fields an applier stops applying
//! are removed from the object unless another manager owns them.
//!
//! The rules are upstream's field manager chain (k8s.io/apimachinery
//! `pkg/util/managedfields/internal`): managers and entries (`buildmanagerinfo.go`,
//! `managedfields.go`), timestamps only when the manager's change took effect
//! (`managedfieldsupdater.go`), metadata that is never owned (`stripmeta.go`), at most 10
//! `Update` entries (`capmanagers.go`), no tracking for objects whose managedFields were
//! reset (`skipnonapplied.go`, with `before-first-apply` owning an untracked object's fields
//! on its first apply), client-supplied managedFields (`fieldmanager.go`), and the upgrade
//! from client-side apply (`lastappliedmanager.go`, `lastappliedupdater.go`). Values are
//! merged, compared and pruned by [`merge`] over the type knowledge in [`schema`]; sets of
//! fields and their `FieldsV1` encoding are [`fieldset`].
//!
//! Depends on `api::status`, `api::resources` (which kinds have a status subresource) and
//! `apiserver::openapi` (schema names). No IO, no store access: the registry calls in with
//! the live and new objects.

pub mod fieldset;
pub mod merge;
pub mod schema;

use serde_json::{Map, Value, json};

use crate::api::status::{Cause, Status};
use fieldset::{FieldsError, PathElement, Set, path_string};
use merge::{Comparison, MergeError};
use schema::{Schema, TypeId};

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";
/// kubectl's client-side apply annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The manager whose applies upgrade client-side-applied objects (upstream hard-codes it).
const KUBECTL: &str = "kubectl";
/// Owner of an untracked object's fields at its first apply.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// Owner of the oldest `Update` entries beyond [`MAX_UPDATE_MANAGERS`].
const ANCIENT_CHANGES: &str = "ancient-changes";
/// How many `Update` entries an object keeps.
const MAX_UPDATE_MANAGERS: usize = 10;
/// Upstream's limit on the total size of an object's annotations.
const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

/// Why stored or sent `managedFields` could not be read (messages as upstream's).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// `managedFields` is not a list of objects.
    #[error("managedFields must be a list of entries")]
    NotAList,
    /// An entry's operation is neither `Apply` nor `Update`.
    #[error("operation must be `Apply` or `Update`")]
    Operation,
    /// An entry without apiVersion.
    #[error("apiVersion must not be empty")]
    ApiVersion,
    /// An entry without fieldsType.
    #[error("missing fieldsType in managed fields entry {0}")]
    MissingFieldsType(usize),
    /// An entry whose fieldsType is not `FieldsV1`.
    #[error("invalid fieldsType {1:?} in managed fields entry {0}")]
    FieldsType(usize, String),
    /// Two entries for the same manager.
    #[error("duplicate managed fields entry for manager {0:?}")]
    Duplicate(String),
    /// A malformed `fieldsV1`.
    #[error(transparent)]
    Fields(#[from] FieldsError),
}

/// What identifies an entry: manager, operation, subresource, and for updates the version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ManagerId {
    manager: String,
    operation: &'static str,
    /// Empty for `Apply`: an applier has one entry whatever version it applies.
    api_version: String,
    subresource: String,
}

impl ManagerId {
    fn new(
        manager: &str,
        operation: &'static str,
        api_version: &str,
        subresource: Option<&str>,
    ) -> ManagerId {
        ManagerId {
            manager: if manager.is_empty() {
                "unknown".to_string()
            } else {
                manager.to_string()
            },
            operation,
            api_version: if operation == APPLY {
                String::new()
            } else {
                api_version.to_string()
            },
            subresource: subresource.unwrap_or("").to_string(),
        }
    }

    /// Upstream's rendering in conflict messages: `"name"`, `"name" with subresource "s"`,
    /// `… using apps/v1` for updaters.
    fn display(&self) -> String {
        let mut s = quote(&self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {}", quote(&self.subresource)));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: ManagerId,
    api_version: String,
    time: Option<String>,
    set: Set,
}

/// The decoded `managedFields` of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Managed {
    entries: Vec<Entry>,
}

impl Managed {
    fn decode(v: Option<&Value>) -> Result<Managed, DecodeError> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Managed::default());
        };
        let list = v.as_array().ok_or(DecodeError::NotAList)?;
        let mut out = Managed::default();
        for (i, e) in list.iter().enumerate() {
            let e = e.as_object().ok_or(DecodeError::NotAList)?;
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
            let operation = match text("operation") {
                APPLY => APPLY,
                UPDATE => UPDATE,
                _ => return Err(DecodeError::Operation),
            };
            let api_version = text("apiVersion");
            if api_version.is_empty() {
                return Err(DecodeError::ApiVersion);
            }
            match text("fieldsType") {
                "FieldsV1" => {}
                "" => return Err(DecodeError::MissingFieldsType(i)),
                other => return Err(DecodeError::FieldsType(i, other.to_string())),
            }
            let set = match e.get("fieldsV1") {
                Some(f) if !f.is_null() => Set::from_fields_v1(f)?,
                _ => Set::new(),
            };
            let id = ManagerId {
                manager: text("manager").to_string(),
                operation,
                api_version: if operation == APPLY {
                    String::new()
                } else {
                    api_version.to_string()
                },
                subresource: text("subresource").to_string(),
            };
            if out.get(&id).is_some() {
                return Err(DecodeError::Duplicate(id.manager));
            }
            out.entries.push(Entry {
                id,
                api_version: api_version.to_string(),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                set,
            });
        }
        Ok(out)
    }

    /// The `managedFields` list in upstream's order (operation, time, manager, version,
    /// subresource), or None when there is no entry.
    fn encode(&self) -> Option<Value> {
        if self.entries.is_empty() {
            return None;
        }
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|p, q| {
            p.id.operation
                .cmp(q.id.operation)
                .then_with(|| seconds(&p.time).cmp(&seconds(&q.time)))
                .then_with(|| p.id.manager.cmp(&q.id.manager))
                .then_with(|| p.api_version.cmp(&q.api_version))
                .then_with(|| p.id.subresource.cmp(&q.id.subresource))
        });
        let list = entries
            .into_iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("manager".into(), json!(e.id.manager));
                m.insert("operation".into(), json!(e.id.operation));
                m.insert("apiVersion".into(), json!(e.api_version));
                if let Some(t) = &e.time {
                    m.insert("time".into(), json!(t));
                }
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.set.to_fields_v1());
                if !e.id.subresource.is_empty() {
                    m.insert("subresource".into(), json!(e.id.subresource));
                }
                Value::Object(m)
            })
            .collect();
        Some(Value::Array(list))
    }

    fn get(&self, id: &ManagerId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == *id)
    }

    fn get_mut(&mut self, id: &ManagerId) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == *id)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `id`'s fields (creating the entry), keeping its time.
    fn put(&mut self, id: &ManagerId, api_version: &str, set: Set) {
        match self.get_mut(id) {
            Some(e) => {
                e.set = set;
                e.api_version = api_version.to_string();
            }
            None => self.entries.push(Entry {
                id: id.clone(),
                api_version: api_version.to_string(),
                time: None,
                set,
            }),
        }
    }

    fn drop_empty(&mut self) {
        self.entries.retain(|e| !e.set.is_empty());
    }

    /// The union of every manager's fields.
    fn all_fields(&self) -> Set {
        self.entries
            .iter()
            .fold(Set::new(), |acc, e| acc.union(&e.set))
    }
}

/// Seconds since the epoch of an RFC 3339 time (0 when absent or unreadable).
fn seconds(t: &Option<String>) -> i64 {
    t.as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |ts| ts.as_second())
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Go's rendering of an object's group-version-kind (`apps/v1, Kind=Deployment`,
/// `/v1, Kind=Pod`).
fn gvk_string(obj: &Value) -> String {
    let av = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    if av.contains('/') {
        format!("{av}, Kind={kind}")
    } else {
        format!("/{av}, Kind={kind}")
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Fields no manager ever owns (upstream's `stripmeta.go`); removing a member keeps the
/// paths below it (`metadata.labels.x` stays owned when `metadata` is stripped).
fn strip_meta(set: &Set) -> Set {
    let f = PathElement::field;
    let mut strip = Set::new();
    for root in ["apiVersion", "kind", "metadata"] {
        strip.insert(&[f(root)]);
    }
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        strip.insert(&[f("metadata"), f(m)]);
    }
    set.difference(&strip)
}

/// Root fields a write cannot change and so never owns (upstream's `GetResetFields`):
/// `status` through the main resource of a kind with a status subresource, `spec`
/// through `/status`.
fn reset_fields(
    group: &str,
    version: &str,
    kind: &str,
    subresource: Option<&str>,
) -> &'static [&'static str] {
    match subresource {
        Some("status") => &["spec"],
        Some(_) => &[],
        None => {
            let has_status = crate::api::resources::lookup_kind(group, version, kind)
                .is_some_and(|r| r.has_status());
            if has_status { &["status"] } else { &[] }
        }
    }
}

fn without_roots(set: &Set, roots: &[&str]) -> Set {
    roots.iter().fold(set.clone(), |acc, r| {
        acc.without_subtree(&PathElement::field(r))
    })
}

fn managed_fields(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

fn take_managed_fields(obj: &mut Value) -> Option<Value> {
    obj.get_mut("metadata")?
        .as_object_mut()?
        .remove("managedFields")
}

fn set_managed_fields(obj: &mut Value, managed: &Managed) {
    let encoded = managed.encode();
    if !obj["metadata"].is_object() {
        if encoded.is_none() {
            return;
        }
        obj["metadata"] = json!({});
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        match encoded {
            Some(v) => {
                m.insert("managedFields".into(), v);
            }
            None => {
                m.remove("managedFields");
            }
        }
    }
}

/// Upstream's "reset" request: an empty list, or a list of one empty entry.
fn is_reset(requested: &Option<Value>) -> bool {
    match requested {
        Some(Value::Array(list)) => match list.as_slice() {
            [] => true,
            [one] => one.as_object().is_some_and(Map::is_empty),
            _ => false,
        },
        _ => false,
    }
}

fn filled(s: &Schema, root: TypeId, v: &Value) -> Value {
    let mut v = v.clone();
    merge::fill_zero(s, root, &mut v);
    v
}

/// One conflicting field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conflict {
    manager: ManagerId,
    path: Vec<PathElement>,
}

/// The type of the objects written and the root fields the write cannot change.
#[derive(Clone, Copy)]
struct Typed<'a> {
    s: &'a Schema,
    root: TypeId,
    reset: &'a [&'a str],
}

impl Typed<'_> {
    /// Changes from `old` to `new` as upstream's typed values see them, reset fields aside.
    fn compare(&self, old: &Value, new: &Value) -> Comparison {
        let (s, root) = (self.s, self.root);
        merge::compare(s, root, &filled(s, root, old), &filled(s, root, new))
            .without_roots(self.reset)
    }
}

/// Upstream's `Updater.update`: compares `old` and `new`, takes changed and removed fields
/// away from every manager but `workflow`, and fails on changed fields other managers own
/// unless `force`.
fn update_managers(
    t: &Typed<'_>,
    old: &Value,
    new: &Value,
    managed: &mut Managed,
    workflow: Option<&ManagerId>,
    force: bool,
) -> Result<Comparison, Vec<Conflict>> {
    let cmp = t.compare(old, new);
    let changed = cmp.changed();
    let mut conflicts = Vec::new();
    for e in &managed.entries {
        if Some(&e.id) == workflow {
            continue;
        }
        for path in e.set.intersection(&changed).paths() {
            conflicts.push(Conflict {
                manager: e.id.clone(),
                path,
            });
        }
    }
    if !force && !conflicts.is_empty() {
        conflicts.sort_by(|a, b| a.manager.cmp(&b.manager).then_with(|| a.path.cmp(&b.path)));
        return Err(conflicts);
    }
    for e in &mut managed.entries {
        if Some(&e.id) == workflow {
            continue;
        }
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    managed.drop_empty();
    Ok(cmp)
}

/// The 409 for apply conflicts, as upstream's `NewConflictError`.
fn conflict_status(conflicts: &[Conflict]) -> Status {
    let message = match conflicts {
        [one] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager.display(),
            path_string(&one.path)
        ),
        _ => {
            let mut lines = Vec::new();
            let mut current: Option<&ManagerId> = None;
            for c in conflicts {
                if current != Some(&c.manager) {
                    lines.push(format!("conflicts with {}:", c.manager.display()));
                    current = Some(&c.manager);
                }
                lines.push(format!("- {}", path_string(&c.path)));
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    let mut status = Status::new(409, "Conflict", message);
    status.causes = conflicts
        .iter()
        .map(|c| Cause {
            reason: "FieldManagerConflict".into(),
            message: format!("conflict with {}", c.manager.display()),
            field: path_string(&c.path),
        })
        .collect();
    status
}

/// Keeps at most [`MAX_UPDATE_MANAGERS`] `Update` entries by merging the oldest ones into
/// one `ancient-changes` entry per API version (upstream's `capmanagers.go`).
fn cap_update_managers(managed: &mut Managed) {
    let mut updaters: Vec<ManagerId> = managed
        .entries
        .iter()
        .filter(|e| e.id.operation == UPDATE)
        .map(|e| e.id.clone())
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    let time_of = |m: &Managed, id: &ManagerId| m.get(id).map_or(0, |e| seconds(&e.time));
    updaters.sort_by(|a, b| {
        time_of(managed, a)
            .cmp(&time_of(managed, b))
            .then_with(|| a.cmp(b))
    });
    let mut first_of_version: std::collections::HashMap<String, ManagerId> = Default::default();
    let mut length = updaters.len();
    for id in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(entry) = managed.get(&id).cloned() else {
            continue;
        };
        let bucket = ManagerId::new(ANCIENT_CHANGES, UPDATE, &entry.api_version, None);
        match first_of_version.get(&entry.api_version) {
            Some(first) => {
                if managed.get(&bucket).is_none()
                    && let Some(f) = managed.get_mut(first)
                {
                    f.id = bucket.clone();
                }
                if let Some(b) = managed.get_mut(&bucket) {
                    b.set = b.set.union(&entry.set);
                    b.time = entry.time.clone();
                }
                managed.entries.retain(|e| e.id != id);
                length -= 1;
            }
            None => {
                first_of_version.insert(entry.api_version.clone(), id);
            }
        }
    }
}

/// Records the fields `manager` set with a non-apply write (`Update` operation).
///
/// `old` is the object before the write (None on create), `new` the object about to be
/// stored; its `managedFields` are replaced. Fields that changed become the manager's and
/// are taken from every other manager. Client-sent `managedFields` that differ from the
/// stored ones are honoured (`[]` resets them, and an object without managedFields is not
/// tracked again until its next apply); through a subresource they are ignored.
pub fn update(
    group: &str,
    version: &str,
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
) {
    let s = schema::schema();
    let root = s.root(group, version, kind);
    let api_version = api_version(group, version);
    let live = match old.map(|o| Managed::decode(managed_fields(o))).transpose() {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, kind, "ignoring undecodable stored managedFields");
            Managed::default()
        }
    };
    let requested = take_managed_fields(new);
    let mut managed = if subresource.is_some() {
        live
    } else if is_reset(&requested) {
        Managed::default()
    } else {
        match Managed::decode(requested.as_ref()) {
            Ok(m) if !m.is_empty() => m,
            _ => live,
        }
    };
    // An existing object without managedFields stays untracked until it is applied to.
    if managed.is_empty() && old.is_some() {
        return;
    }
    let old_obj = match old {
        Some(o) => {
            let mut o = o.clone();
            take_managed_fields(&mut o);
            o
        }
        None => json!({}),
    };
    let typed = Typed {
        s,
        root,
        reset: reset_fields(group, version, kind, subresource),
    };
    // Forced, so it cannot fail.
    let cmp = update_managers(&typed, &old_obj, new, &mut managed, None, true).unwrap_or_default();
    let id = ManagerId::new(manager, UPDATE, &api_version, subresource);
    let current = strip_meta(&cmp.changed());
    if !current.is_empty() {
        let previous = managed.get(&id).map(|e| e.set.clone()).unwrap_or_default();
        managed.put(&id, &api_version, previous.union(&current));
        if let Some(e) = managed.get_mut(&id) {
            e.time = Some(now());
        }
    }
    cap_update_managers(&mut managed);
    set_managed_fields(new, &managed);
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create). Returns the
/// new object with managedFields, or a 409 Conflict naming the conflicting fields.
///
/// `applied` is the configuration as sent: its apiVersion and kind must name the served
/// kind, and fields the schema does not declare are dropped (the request's
/// `fieldValidation` has reported them). Its fields are merged into the live object and become `manager`'s (operation `Apply`);
/// fields it applied before and no longer applies are removed unless another manager owns
/// them. Changing a field another manager owns is a conflict unless `force`, which takes
/// the field over. As upstream, the applier `kubectl` may take over fields whose live value
/// still matches the client-side apply annotation, and keeps that annotation up to date.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    group: &str,
    version: &str,
    kind: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
) -> Result<Value, Status> {
    if managed_fields(applied).is_some_and(|m| !m.is_null()) {
        return Err(Status::bad_request("metadata.managedFields must be nil"));
    }
    let api_version = api_version(group, version);
    // The configuration must name the served kind (upstream's `versioncheck.go`).
    let sent_version = applied["apiVersion"].as_str().unwrap_or("");
    let sent_kind = applied["kind"].as_str().unwrap_or("");
    if sent_version != api_version || sent_kind != kind {
        return Err(Status::bad_request(format!(
            "invalid object type: {}",
            gvk_string(applied)
        )));
    }
    let s = schema::schema();
    let root = s.root(group, version, kind);
    let typed = Typed {
        s,
        root,
        reset: reset_fields(group, version, kind, subresource),
    };
    let mut managed = match live {
        Some(l) => Managed::decode(managed_fields(l))
            .map_err(|e| Status::internal(format!("failed to decode managed fields: {e}")))?,
        None => Managed::default(),
    };
    let live_obj = match live {
        Some(l) => {
            let mut l = l.clone();
            take_managed_fields(&mut l);
            l
        }
        None => json!({}),
    };
    if managed.is_empty() && live.is_some() {
        // An untracked object: whatever it holds belongs to `before-first-apply`.
        let id = ManagerId::new(BEFORE_FIRST_APPLY, UPDATE, &api_version, subresource);
        let cmp = typed.compare(&json!({}), &live_obj);
        let set = strip_meta(&cmp.changed());
        if !set.is_empty() {
            managed.put(&id, &api_version, set);
            if let Some(e) = managed.get_mut(&id) {
                e.time = Some(now());
            }
        }
    }
    let mut config = applied.clone();
    if s.is_known(root) {
        merge::prune_undeclared(s, root, &mut config);
    }
    let id = ManagerId::new(manager, APPLY, &api_version, subresource);
    let input = ApplyInput {
        typed,
        live: &live_obj,
        config: &config,
        id: &id,
        api_version: &api_version,
    };
    let (mut obj, managed) = match apply_structured(&input, managed.clone(), force) {
        Ok(done) => done,
        Err(ApplyError::Conflicts(conflicts)) if manager == KUBECTL => {
            // Upgrading from client-side apply: conflicts on fields whose live value is
            // still the last-applied one are taken over.
            let allowed = allowed_by_last_applied(s, root, &live_obj, &api_version);
            let remaining: Vec<Conflict> = conflicts
                .into_iter()
                .filter(|c| !allowed.as_ref().is_some_and(|a| a.has(&c.path)))
                .collect();
            if !remaining.is_empty() {
                return Err(conflict_status(&remaining));
            }
            apply_structured(&input, managed, true).map_err(|e| e.into_status(applied))?
        }
        Err(e) => return Err(e.into_status(applied)),
    };
    if manager == KUBECTL {
        update_last_applied(&mut obj, applied);
    }
    set_managed_fields(&mut obj, &managed);
    Ok(obj)
}

struct ApplyInput<'a> {
    typed: Typed<'a>,
    live: &'a Value,
    config: &'a Value,
    id: &'a ManagerId,
    api_version: &'a str,
}

enum ApplyError {
    Conflicts(Vec<Conflict>),
    Invalid(MergeError),
}

impl ApplyError {
    /// The Status upstream answers with; a configuration that does not fit its schema is
    /// a plain error there (500, no reason).
    fn into_status(self, applied: &Value) -> Status {
        match self {
            ApplyError::Conflicts(c) => conflict_status(&c),
            ApplyError::Invalid(e) => {
                let text = |k: &str| applied["metadata"][k].as_str().unwrap_or("");
                Status::new(
                    500,
                    "",
                    format!(
                        "failed to create typed patch object ({}/{}; {}): {e}",
                        text("namespace"),
                        text("name"),
                        gvk_string(applied)
                    ),
                )
            }
        }
    }
}

/// Upstream's `Updater.Apply`: merge, take ownership, prune what the applier dropped,
/// then take changed fields from the other managers (or fail on conflicts).
fn apply_structured(
    input: &ApplyInput<'_>,
    mut managed: Managed,
    force: bool,
) -> Result<(Value, Managed), ApplyError> {
    let ApplyInput {
        typed,
        live,
        config,
        id,
        api_version,
    } = *input;
    let Typed { s, root, reset } = typed;
    let mut merged = merge::merge(s, root, live, config).map_err(ApplyError::Invalid)?;
    // What the write cannot change stays as it is (the registry's strategies do the same:
    // status through the main resource, everything but status through `/status`).
    project(&mut merged, live, reset);
    let last = managed.get(id).map(|e| e.set.clone());
    let applied_set = merge::to_field_set(s, root, config).map_err(ApplyError::Invalid)?;
    managed.put(id, api_version, without_roots(&applied_set, reset));
    if let Some(last) = last.filter(|l| !l.is_empty()) {
        // Fields the applier owned before, owns no longer, and nobody else owns.
        let owned = merge::ensure_named_fields_are_members(s, root, &managed.all_fields());
        let previously = merge::ensure_named_fields_are_members(s, root, &last);
        merge::remove_items(s, root, &mut merged, &previously.difference(&owned));
    }
    update_managers(&typed, live, &merged, &mut managed, Some(id), force)
        .map_err(ApplyError::Conflicts)?;
    let changed = merged != *live;
    if let Some(e) = managed.get_mut(id) {
        e.set = strip_meta(&e.set);
        if changed {
            e.time = Some(now());
        }
    }
    managed.drop_empty();
    Ok((merged, managed))
}

/// Restores the `reset` root fields of `merged` from `live`; for `/status` (reset `spec`)
/// everything but `status` is restored.
fn project(merged: &mut Value, live: &Value, reset: &[&str]) {
    let (Some(m), Some(l)) = (merged.as_object_mut(), live.as_object()) else {
        return;
    };
    let restore: Vec<String> = if reset.contains(&"spec") {
        m.keys()
            .chain(l.keys())
            .filter(|k| *k != "status")
            .cloned()
            .collect()
    } else {
        reset.iter().map(|r| r.to_string()).collect()
    };
    for k in restore {
        match l.get(&k) {
            Some(v) => {
                m.insert(k, v.clone());
            }
            None => {
                m.remove(&k);
            }
        }
    }
}

/// The fields of the last-applied annotation whose live values still match it: what the
/// client-side applier effectively owns.
fn allowed_by_last_applied(
    s: &Schema,
    root: TypeId,
    live: &Value,
    api_version: &str,
) -> Option<Set> {
    let text = live["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .filter(|t| !t.is_empty())?;
    let last: Value = serde_json::from_str(text).ok()?;
    if last.get("apiVersion").and_then(Value::as_str) != Some(api_version) {
        return None;
    }
    let set = merge::to_field_set(s, root, &last).ok()?;
    let cmp = merge::compare(s, root, &last, live);
    Some(
        set.difference(&cmp.modified)
            .difference(&cmp.added)
            .difference(&cmp.removed),
    )
}

/// Rewrites an existing last-applied annotation to the configuration `kubectl` applied
/// server-side, so a later client-side apply diffs against it.
fn update_last_applied(obj: &mut Value, applied: &Value) {
    let has = obj["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .is_some_and(|t| !t.is_empty());
    if !has {
        return;
    }
    let mut config = applied.clone();
    if let Some(a) = config
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
    }
    let Ok(text) = serde_json::to_string(&config) else {
        return;
    };
    if let Some(annotations) = obj["metadata"]["annotations"].as_object_mut() {
        annotations.insert(LAST_APPLIED.into(), Value::String(format!("{text}\n")));
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATIONS_SIZE {
            annotations.remove(LAST_APPLIED);
        }
    }
}

#[cfg(test)]
mod tests;
