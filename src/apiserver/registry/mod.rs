//! The registry: one generic store over the key-value [`Store`] plus one strategy per
//! resource (defaulting, validation, selectable fields — see [`strategy`]).
//!
//! The generic store owns the object lifecycle rules every resource shares, as upstream's
//! `registry/generic/registry/store.go`: names and generateName, uid and timestamps,
//! generation, optimistic concurrency on resourceVersion, the status subresource split,
//! graceful deletion and finalizers, namespace existence and termination, and version
//! conversion to and from the storage version. Reads come from the watch [`Cache`];
//! writes go to the store.

pub mod convert;
pub mod kubernetes_service;
pub mod service_alloc;
pub mod strategy;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::admission::{self, Attributes, Operation};
use super::auth::UserInfo;
use super::cache::{self, Cache};
use super::fieldmanager;
use super::rbac::Rbac;
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::{Cause, Status};
use crate::api::validation::validate_object_meta;
use crate::store::{self, Store};

/// How a write handles fields the schema does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn (the upstream default).
    #[default]
    Warn,
    /// Reject the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter value.
    pub fn parse(s: &str) -> Result<FieldValidation, Status> {
        match s {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(Status::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}; supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// Options shared by writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and respond, but persist nothing.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// The requesting user, for admission (None for the server's own writes).
    pub user: Option<UserInfo>,
    /// Whether this write is a server-side apply (managedFields are then computed by the
    /// apply itself, not recorded as an update).
    pub apply: bool,
}

/// Options of a delete (`DeleteOptions` body and query parameters).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `propagationPolicy`.
    pub propagation: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The requesting user.
    pub user: Option<UserInfo>,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub label: Option<LabelSelector>,
    /// `fieldSelector`.
    pub field: Option<FieldSelector>,
    /// `limit` (0 = none).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Items in the requested version.
    pub items: Vec<Value>,
    /// The list's resourceVersion.
    pub revision: u64,
    /// Continue token, if there are more.
    pub continue_token: Option<String>,
}

/// The result of a successful write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The object as stored (in the requested version).
    pub object: Value,
    /// Whether a new object was created (201 instead of 200).
    pub created: bool,
    /// Warnings for the `Warning` response header.
    pub warnings: Vec<String>,
}

/// The generic registry over one store and its watch cache.
pub struct Registry {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    rbac: Arc<Rbac>,
    /// Service ClusterIP and NodePort allocation (None: Services get none).
    services: Option<Arc<service_alloc::Allocator>>,
}

/// The store key of an object.
pub fn key(ri: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    match (ri.namespaced, namespace) {
        (true, Some(ns)) => format!("{}{ns}/{name}", ri.storage_prefix()),
        _ => format!("{}{name}", ri.storage_prefix()),
    }
}

/// The key prefix of a list (all namespaces when `namespace` is None).
pub fn list_prefix(ri: &ResourceInfo, namespace: Option<&str>) -> String {
    match (ri.namespaced, namespace) {
        (true, Some(ns)) => format!("{}{ns}/", ri.storage_prefix()),
        _ => ri.storage_prefix(),
    }
}

/// The storage-version row for a served resource.
pub fn storage_info(ri: &ResourceInfo) -> &'static ResourceInfo {
    lookup(ri.storage.group, ri.storage.version, ri.storage.resource).unwrap_or_else(|| {
        lookup(ri.group, ri.version, ri.plural).unwrap_or(&crate::api::RESOURCES[0])
    })
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).get(field).and_then(Value::as_str)
}

/// Whether upstream tracks `metadata.generation` for this kind.
fn tracks_generation(ri: &ResourceInfo) -> bool {
    matches!(
        ri.storage.group,
        "apps" | "batch" | "autoscaling" | "policy" | "apiextensions.k8s.io" | "networking.k8s.io"
    ) || ri.kind == "ReplicationController"
}

/// Everything but metadata and status: a change here bumps generation.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Encodes an object for the store: no resourceVersion (the revision is the version).
fn encode(obj: &Value) -> Result<Bytes, Status> {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| Status::internal(e.to_string()))
}

/// Maps a store error to an API Status for the given object.
fn store_err(ri: &ResourceInfo, name: &str, e: store::Error) -> Status {
    match e {
        store::Error::NotFound(_) => Status::not_found(ri.group, ri.plural, name),
        store::Error::AlreadyExists(_) => Status::already_exists(ri.group, ri.plural, name),
        store::Error::Conflict { .. } => Status::conflict(
            ri.group,
            ri.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        store::Error::Compacted { .. } => Status::gone("too old resource version"),
        other => Status::internal(other.to_string()),
    }
}

fn parse_rv(s: &str) -> Result<u64, Status> {
    s.parse::<u64>()
        .map_err(|_| Status::bad_request(format!("invalid resource version {s:?}")))
}

/// Encodes a continue token: the list revision and the last key returned.
fn encode_continue(revision: u64, last_key: &str) -> String {
    use base64::Engine;
    let raw = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": last_key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(u64, String), Status> {
    use base64::Engine;
    let bad = || Status::bad_request("continue key is not valid: invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, start))
}

/// Whether `obj` passes the label and field selectors of `opts`.
pub fn matches(
    ri: &ResourceInfo,
    obj: &Value,
    label: Option<&LabelSelector>,
    field: Option<&FieldSelector>,
) -> bool {
    if let Some(l) = label
        && !l.matches(meta(obj).get("labels").and_then(Value::as_object))
    {
        return false;
    }
    if let Some(f) = field {
        let sri = storage_info(ri);
        if !f.matches(|name| strategy::field_value(sri, obj, name)) {
            return false;
        }
    }
    true
}

/// Checks that every term of a field selector names a selectable field.
pub fn check_field_selector(ri: &ResourceInfo, f: &FieldSelector) -> Result<(), Status> {
    let sri = storage_info(ri);
    let fields = strategy::selectable_fields(sri);
    for (name, _, _) in f.terms() {
        let ok = fields.contains(&name.as_str())
            || name == "metadata.name"
            || (ri.namespaced && name == "metadata.namespace");
        if !ok {
            return Err(Status::bad_request(format!(
                "field label not supported: {name}"
            )));
        }
    }
    Ok(())
}

impl Registry {
    /// A registry over `store`, reading through `cache`.
    pub fn new(store: Arc<dyn Store>, cache: Arc<Cache>, rbac: Arc<Rbac>) -> Registry {
        Registry {
            store,
            cache,
            rbac,
            services: None,
        }
    }

    /// Allocates Service cluster IPs and node ports with `alloc`.
    pub fn with_service_allocator(mut self, alloc: Arc<service_alloc::Allocator>) -> Registry {
        self.services = Some(alloc);
        self
    }

    /// The Service allocator, if any.
    pub fn service_allocator(&self) -> Option<&Arc<service_alloc::Allocator>> {
        self.services.as_ref()
    }

    /// The RBAC authorizer.
    pub fn rbac(&self) -> &Arc<Rbac> {
        &self.rbac
    }

    /// The watch cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Reads one object, in the version of `ri`.
    pub async fn get(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, Status> {
        self.cache
            .sync()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match self.cache.get(&key(ri, ns, name)).await {
            Some(e) => Ok(convert::from_storage(ri, &e.object)),
            None => Err(Status::not_found(ri.group, ri.plural, name)),
        }
    }

    /// Lists objects, in the version of `ri`.
    pub async fn list(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, Status> {
        if let Some(f) = &opts.field {
            check_field_selector(ri, f)?;
        }
        let prefix = list_prefix(ri, ns);
        let mut start_after = None;
        let mut list_rev = None;
        if let Some(token) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let (rv, start) = decode_continue(token)?;
            if !start.starts_with(&prefix) {
                return Err(Status::bad_request(
                    "continue key is not valid: key does not match the request",
                ));
            }
            start_after = Some(start);
            list_rev = Some(rv);
        }
        match opts.resource_version.as_deref() {
            None | Some("") => {
                self.cache
                    .sync()
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            Some("0") => {}
            Some(rv) => {
                let want = parse_rv(rv)?;
                if opts.resource_version_match.as_deref() == Some("Exact")
                    && want != self.cache.revision()
                {
                    return Err(Status::gone(format!(
                        "too old resource version: {want} ({})",
                        self.cache.revision()
                    )));
                }
                if !self
                    .cache
                    .wait_for(want, std::time::Duration::from_secs(3))
                    .await
                {
                    let mut s = Status::timeout(format!(
                        "Too large resource version: {want}, current: {}",
                        self.cache.revision()
                    ));
                    s.reason = "Timeout";
                    s.retry_after = Some(1);
                    return Err(s);
                }
            }
        }
        let (entries, revision, more) = self
            .cache
            .list(&prefix, start_after.as_deref(), opts.limit, |o| {
                matches(ri, o, opts.label.as_ref(), opts.field.as_ref())
            })
            .await;
        let revision = list_rev.unwrap_or(revision);
        let items = entries
            .iter()
            .map(|e| convert::from_storage(ri, &e.object))
            .collect();
        Ok(ListPage {
            items,
            revision,
            continue_token: more.map(|k| encode_continue(revision, &k)),
        })
    }

    /// Decodes a request body into a typed-checked object in the version of `ri`,
    /// dropping unknown fields per `fieldValidation`.
    pub fn decode_object(
        &self,
        ri: &ResourceInfo,
        obj: Value,
        fv: FieldValidation,
    ) -> Result<(Value, Vec<String>), Status> {
        if !obj.is_object() {
            return Err(Status::bad_request(
                "the body of the request is not a JSON object",
            ));
        }
        // apiVersion/kind, when present, must name this resource.
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        if !av.is_empty() && av != ri.api_version() {
            return Err(Status::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                ri.api_version()
            )));
        }
        if !kind.is_empty() && kind != ri.kind {
            return Err(Status::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                ri.kind
            )));
        }
        let mut obj = obj;
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), json!(ri.api_version()));
            m.insert("kind".into(), json!(ri.kind));
        }
        let checked = strategy::typed_roundtrip(ri, &obj).map_err(|e| {
            Status::bad_request(format!("error decoding {} request body: {e}", ri.kind))
        })?;
        let mut warnings = Vec::new();
        if !checked.unknown_fields.is_empty() {
            match fv {
                FieldValidation::Strict => {
                    let list: Vec<String> = checked
                        .unknown_fields
                        .iter()
                        .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
                        .collect();
                    return Err(Status::bad_request(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(
                        checked
                            .unknown_fields
                            .iter()
                            .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.'))),
                    );
                }
                FieldValidation::Ignore => {}
            }
        }
        let mut normalized = checked.normalized;
        if ri.group.is_empty() && ri.kind == "Secret" {
            fold_string_data(&mut normalized);
        }
        Ok((normalized, warnings))
    }

    async fn check_namespace(&self, ri: &ResourceInfo, ns: Option<&str>) -> Result<(), Status> {
        if !ri.namespaced {
            return Ok(());
        }
        let Some(ns) = ns else {
            return Err(Status::bad_request(
                "the namespace of the object is required",
            ));
        };
        self.cache
            .sync()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let nsri = lookup("", "v1", "namespaces")
            .ok_or_else(|| Status::internal("namespaces not served"))?;
        match self.cache.get(&key(nsri, None, ns)).await {
            None => Err(Status::not_found("", "namespaces", ns)),
            Some(e) => {
                if !e.object["metadata"]["deletionTimestamp"].is_null() {
                    let mut s = Status::forbidden(format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        ri.plural, ""
                    ));
                    s.message = format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    );
                    s.reason = "Forbidden";
                    return Err(s);
                }
                Ok(())
            }
        }
    }

    fn validate(&self, sri: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Result<(), Status> {
        let mut causes: Vec<Cause> = validate_object_meta(
            meta(obj),
            sri.namespaced,
            strategy::name_rule(sri),
            "metadata",
        );
        causes.extend(match old {
            None => strategy::validate_create(sri, obj),
            Some(old) => strategy::validate_update(sri, obj, old),
        });
        if causes.is_empty() {
            Ok(())
        } else {
            let name = meta_str(obj, "name")
                .or_else(|| meta_str(obj, "generateName"))
                .unwrap_or("");
            Err(Status::invalid(sri.group, sri.kind, name, causes))
        }
    }

    /// Creates an object given in the version of `ri` (already decoded with
    /// [`Registry::decode_object`]).
    pub async fn create(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Written, Status> {
        let sri = storage_info(ri);
        let mut obj = convert::to_storage(ri, obj);
        // Namespace: from the URL; the body may repeat it but not contradict it.
        if ri.namespaced {
            let body_ns = meta_str(&obj, "namespace").map(str::to_string);
            match (ns, body_ns.as_deref()) {
                (Some(u), Some(b)) if !b.is_empty() && u != b => {
                    return Err(Status::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(u), _) => {
                    meta_mut(&mut obj).insert("namespace".into(), json!(u));
                }
                (None, _) => {}
            }
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        // Names.
        let has_name = meta_str(&obj, "name").is_some_and(|n| !n.is_empty());
        if !has_name
            && let Some(generate) = meta_str(&obj, "generateName")
                .filter(|g| !g.is_empty())
                .map(str::to_string)
        {
            let base: String = generate.chars().take(63 - 5).collect();
            meta_mut(&mut obj).insert("name".into(), json!(format!("{base}{}", random_suffix())));
        }
        // System-owned metadata.
        {
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now()));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if tracks_generation(sri) {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        // Status is not settable on create for kinds with a status subresource (except
        // nodes, whose agent reports status from the start).
        if sri.has_status()
            && sri.kind != "Node"
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        strategy::default_object(sri, &mut obj);
        strategy::prepare_for_create(sri, &mut obj);
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        let attrs = Attributes {
            operation: Operation::Create,
            resource: sri,
            subresource: None,
            namespace: ns,
            name: &name,
            user: opts.user.as_ref(),
            dry_run: opts.dry_run,
        };
        // Field ownership is recorded before admission, as upstream: what admission adds
        // belongs to nobody.
        if !opts.apply {
            fieldmanager::update(
                ri.group,
                ri.version,
                ri.kind,
                None,
                &mut obj,
                &manager(opts),
                None,
            );
        }
        admission::mutate(self, &attrs, &mut obj, None).await?;
        self.validate(sri, &obj, None)?;
        self.check_namespace(ri, ns).await?;
        admission::validate(self, &attrs, &obj, None).await?;
        let svc_txn =
            service_alloc::allocate(self.services.as_ref(), sri, &mut obj, None, opts.dry_run)?;
        let k = key(sri, ns, &name);
        let bytes = encode(&obj)?;
        if opts.dry_run {
            if self.cache.get(&k).await.is_some() {
                return Err(Status::already_exists(ri.group, ri.plural, &name));
            }
            return Ok(Written {
                object: convert::from_storage(ri, &obj),
                created: true,
                warnings: vec![],
            });
        }
        let kv = self
            .store
            .create(&k, bytes)
            .await
            .map_err(|e| store_err(ri, &name, e))?;
        svc_txn.commit();
        cache::set_resource_version(&mut obj, kv.mod_revision);
        Ok(Written {
            object: convert::from_storage(ri, &obj),
            created: true,
            warnings: vec![],
        })
    }

    /// Reads the current stored object (fresh from the store, for compare-and-swap).
    async fn current(
        &self,
        sri: &ResourceInfo,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(Value, u64), Status> {
        let k = key(sri, ns, name);
        match self
            .store
            .get(&k)
            .await
            .map_err(|e| store_err(ri, name, e))?
        {
            Some(kv) => {
                let obj = cache::decode(&kv.value, kv.mod_revision)
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok((obj, kv.mod_revision))
            }
            None => Err(Status::not_found(ri.group, ri.plural, name)),
        }
    }

    /// Replaces an object (PUT), or its status or another subresource, given in the
    /// version of `ri`. `mutate`, when given, computes the new object from the current
    /// one (PATCH); it is re-run on conflicts.
    pub async fn update(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        new: Update<'_>,
        opts: &WriteOptions,
    ) -> Result<Written, Status> {
        let sri = storage_info(ri);
        for _attempt in 0..16 {
            let (old, old_rev) = self.current(sri, ri, ns, name).await?;
            let old_served = convert::from_storage(ri, &old);
            let (requested, warnings) = match &new {
                Update::Replace(obj) => ((*obj).clone(), Vec::new()),
                Update::Mutate(f) => f(&old_served)?,
            };
            // Preconditions: a resourceVersion in the body must match.
            if let Some(rv) = meta_str(&requested, "resourceVersion").filter(|s| !s.is_empty())
                && parse_rv(rv).ok() != Some(old_rev)
            {
                return Err(Status::conflict(
                    ri.group,
                    ri.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            if let Some(n) = meta_str(&requested, "name")
                && n != name
            {
                return Err(Status::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if let (Some(u), Some(b)) = (ns, meta_str(&requested, "namespace"))
                && ri.namespaced
                && !b.is_empty()
                && u != b
            {
                return Err(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let requested = convert::to_storage(ri, requested);
            let mut obj = self.prepare_update(sri, subresource, requested, &old)?;
            strategy::default_object(sri, &mut obj);
            if subresource.is_none() {
                strategy::prepare_for_update(sri, &mut obj, &old);
            }
            let attrs = Attributes {
                operation: Operation::Update,
                resource: sri,
                subresource,
                namespace: ns,
                name,
                user: opts.user.as_ref(),
                dry_run: opts.dry_run,
            };
            if !opts.apply {
                fieldmanager::update(
                    ri.group,
                    ri.version,
                    ri.kind,
                    Some(&old),
                    &mut obj,
                    &manager(opts),
                    subresource,
                );
            }
            admission::mutate(self, &attrs, &mut obj, Some(&old)).await?;
            let old_for_validation = if subresource == Some("binding") {
                None
            } else {
                Some(&old)
            };
            self.validate(sri, &obj, old_for_validation)?;
            admission::validate(self, &attrs, &obj, Some(&old)).await?;
            let svc_txn = match subresource {
                None => service_alloc::allocate(
                    self.services.as_ref(),
                    sri,
                    &mut obj,
                    Some(&old),
                    opts.dry_run,
                )?,
                Some(_) => service_alloc::allocate(None, sri, &mut obj, None, true)?,
            };
            // Identical objects are not rewritten (no new revision, no watch event).
            let mut old_cmp = old.clone();
            cache::set_resource_version(&mut old_cmp, 0);
            let mut new_cmp = obj.clone();
            cache::set_resource_version(&mut new_cmp, 0);
            if old_cmp == new_cmp {
                return Ok(Written {
                    object: old_served,
                    created: false,
                    warnings,
                });
            }
            // Removing the last finalizer of an object being deleted deletes it.
            let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
            let ns_finalizers_left = sri.kind == "Namespace"
                && obj["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
            if deleting
                && finalizers_empty(&obj)
                && !ns_finalizers_left
                && subresource != Some("status")
            {
                if opts.dry_run {
                    return Ok(Written {
                        object: convert::from_storage(ri, &obj),
                        created: false,
                        warnings,
                    });
                }
                match self.store.delete(&key(sri, ns, name), Some(old_rev)).await {
                    Ok(kv) => {
                        drop(svc_txn);
                        service_alloc::release(self.services.as_ref(), sri, &old);
                        cache::set_resource_version(&mut obj, kv.mod_revision);
                        return Ok(Written {
                            object: convert::from_storage(ri, &obj),
                            created: false,
                            warnings,
                        });
                    }
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(ri, name, e)),
                }
            }
            if opts.dry_run {
                return Ok(Written {
                    object: convert::from_storage(ri, &obj),
                    created: false,
                    warnings,
                });
            }
            match self
                .store
                .update(&key(sri, ns, name), old_rev, encode(&obj)?)
                .await
            {
                Ok(kv) => {
                    svc_txn.commit();
                    cache::set_resource_version(&mut obj, kv.mod_revision);
                    return Ok(Written {
                        object: convert::from_storage(ri, &obj),
                        created: false,
                        warnings,
                    });
                }
                Err(store::Error::Conflict { .. }) => {
                    // With an explicit resourceVersion the caller must retry; otherwise
                    // re-read and apply again (upstream's GuaranteedUpdate).
                    if let Update::Replace(obj) = &new
                        && meta_str(obj, "resourceVersion").is_some_and(|s| !s.is_empty())
                    {
                        return Err(store_err(
                            ri,
                            name,
                            store::Error::Conflict {
                                key: String::new(),
                                expected: old_rev,
                                current: Box::new(store::KeyValue {
                                    key: String::new(),
                                    value: Bytes::new(),
                                    create_revision: 0,
                                    mod_revision: 0,
                                }),
                            },
                        ));
                    }
                    continue;
                }
                Err(e) => return Err(store_err(ri, name, e)),
            }
        }
        Err(Status::conflict(
            ri.group,
            ri.plural,
            name,
            "too many concurrent updates; please retry",
        ))
    }

    /// Applies the update rules: system metadata is kept, the status subresource changes
    /// only status, the main resource never changes status, generation follows spec.
    fn prepare_update(
        &self,
        sri: &ResourceInfo,
        subresource: Option<&str>,
        requested: Value,
        old: &Value,
    ) -> Result<Value, Status> {
        let mut obj = match subresource {
            Some("status") => {
                let mut o = old.clone();
                o["status"] = requested.get("status").cloned().unwrap_or(json!({}));
                // managedFields as computed by a status apply (updates recompute them).
                match requested["metadata"].get("managedFields") {
                    Some(mf) => o["metadata"]["managedFields"] = mf.clone(),
                    None => {
                        if let Some(m) = o["metadata"].as_object_mut() {
                            m.remove("managedFields");
                        }
                    }
                }
                // Labels and annotations may be changed through status too (upstream allows
                // metadata updates via status for most kinds); keep the rest.
                o
            }
            Some("binding") if sri.kind == "Pod" => {
                // pods/binding assigns the node; nothing else of the spec changes.
                let mut o = old.clone();
                o["spec"]["nodeName"] = requested["spec"]["nodeName"].clone();
                o
            }
            Some("finalize") if sri.kind == "Namespace" => {
                let mut o = old.clone();
                o["spec"]["finalizers"] = requested["spec"]["finalizers"].clone();
                if o["spec"]["finalizers"].is_null()
                    && let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut)
                {
                    spec.remove("finalizers");
                }
                o
            }
            Some(other) => {
                return Err(Status::not_found_path().with_details("", other, ""));
            }
            None => {
                let mut o = requested;
                if sri.has_status() {
                    match old.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                o
            }
        };
        // System metadata is immutable through updates.
        let old_meta = meta(old).clone();
        let m = meta_mut(&mut obj);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ] {
            match old_meta.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.remove("selfLink");
        // Finalizers may only be removed, not added, once deletion started (upstream allows
        // additions too, but nothing here relies on it); keep as requested.
        if tracks_generation(sri) {
            let old_gen = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let changed = spec_of(&obj) != spec_of(old);
            let generation = if changed && subresource.is_none() {
                old_gen + 1
            } else {
                old_gen
            };
            meta_mut(&mut obj).insert("generation".into(), json!(generation));
        } else {
            meta_mut(&mut obj).remove("generation");
        }
        Ok(obj)
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates the object if absent,
    /// otherwise merges `applied` into it as `fieldManager`, with conflict detection.
    /// `applied` is the configuration as sent (validated with [`Registry::decode_object`]);
    /// the merged result is normalised here.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        applied: &Value,
        force: bool,
        opts: &WriteOptions,
    ) -> Result<Written, Status> {
        let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
            return Err(Status::bad_request(
                "PATCH, with apply, requires a non-empty fieldManager",
            ));
        };
        if let Some(n) = meta_str(applied, "name")
            && n != name
        {
            return Err(Status::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let mut opts = opts.clone();
        opts.apply = true;
        let sri = storage_info(ri);
        for _attempt in 0..8 {
            match self.current(sri, ri, ns, name).await {
                Err(s) if s.code == 404 && subresource.is_none() => {
                    let obj = fieldmanager::apply(
                        ri.group, ri.version, ri.kind, None, applied, &manager, force, None,
                    )?;
                    let (mut obj, _) = self.decode_object(ri, obj, FieldValidation::Ignore)?;
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    match self.create(ri, ns, obj, &opts).await {
                        Err(s) if s.reason == "AlreadyExists" => continue,
                        other => return other,
                    }
                }
                Err(s) => return Err(s),
                Ok(_) => {
                    let manager = manager.clone();
                    return self
                        .update(
                            ri,
                            ns,
                            name,
                            subresource,
                            Update::Mutate(Box::new(move |cur: &Value| {
                                let next = fieldmanager::apply(
                                    ri.group,
                                    ri.version,
                                    ri.kind,
                                    Some(cur),
                                    applied,
                                    &manager,
                                    force,
                                    subresource,
                                )?;
                                let (mut next, _) =
                                    self.decode_object(ri, next, FieldValidation::Ignore)?;
                                if let Some(m) = next["metadata"].as_object_mut() {
                                    m.remove("resourceVersion");
                                }
                                Ok((next, Vec::new()))
                            })),
                            &opts,
                        )
                        .await;
                }
            }
        }
        Err(Status::conflict(
            ri.group,
            ri.plural,
            name,
            "too many concurrent updates; please retry",
        ))
    }

    /// Deletes an object, honouring preconditions, graceful deletion (pods on a node) and
    /// finalizers. Returns the object as it was (or is, while finalizers remain) and
    /// whether it is now gone.
    pub async fn delete(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), Status> {
        let sri = storage_info(ri);
        for _attempt in 0..16 {
            let (old, old_rev) = self.current(sri, ri, ns, name).await?;
            if let Some(uid) = &opts.uid {
                let actual = meta_str(&old, "uid").unwrap_or("");
                if uid != actual {
                    return Err(Status::conflict(
                        ri.group,
                        ri.plural,
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                        ),
                    ));
                }
            }
            if let Some(rv) = &opts.resource_version
                && parse_rv(rv).ok() != Some(old_rev)
            {
                return Err(Status::conflict(
                    ri.group,
                    ri.plural,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {old_rev}"
                    ),
                ));
            }
            let mut obj = old.clone();
            let already_deleting = !obj["metadata"]["deletionTimestamp"].is_null();
            // Pods bound to a node terminate gracefully: the node agent kills the
            // containers and then deletes the pod with a zero grace period.
            let mut graceful = false;
            if sri.kind == "Pod" && !obj["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
                let phase = obj["status"]["phase"].as_str().unwrap_or("");
                let grace = opts
                    .grace_period
                    .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30);
                if grace > 0 && phase != "Succeeded" && phase != "Failed" {
                    graceful = true;
                    let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
                    if !already_deleting || current.is_some_and(|c| grace < c) {
                        let ts = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                        let m = meta_mut(&mut obj);
                        m.insert(
                            "deletionTimestamp".into(),
                            json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                        );
                        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    }
                }
            }
            // Foreground and Orphan deletion hand the object to the garbage collector
            // through its finalizers.
            let gc_finalizer = match opts.propagation.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            if let Some(f) = gc_finalizer {
                let m = meta_mut(&mut obj);
                let list = m.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.retain(|x| x != "foregroundDeletion" && x != "orphan");
                    a.push(json!(f));
                }
            }
            let namespace_finalizers = sri.kind == "Namespace"
                && obj["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
            if graceful || !finalizers_empty(&obj) || namespace_finalizers {
                if !graceful && !already_deleting {
                    let m = meta_mut(&mut obj);
                    m.insert("deletionTimestamp".into(), json!(now()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                if sri.kind == "Namespace" {
                    obj["status"]["phase"] = json!("Terminating");
                }
                if obj == old {
                    return Ok((convert::from_storage(ri, &old), false));
                }
                if opts.dry_run {
                    return Ok((convert::from_storage(ri, &obj), false));
                }
                match self
                    .store
                    .update(&key(sri, ns, name), old_rev, encode(&obj)?)
                    .await
                {
                    Ok(kv) => {
                        cache::set_resource_version(&mut obj, kv.mod_revision);
                        return Ok((convert::from_storage(ri, &obj), false));
                    }
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(ri, name, e)),
                }
            }
            if opts.dry_run {
                return Ok((convert::from_storage(ri, &old), true));
            }
            match self.store.delete(&key(sri, ns, name), Some(old_rev)).await {
                Ok(kv) => {
                    service_alloc::release(self.services.as_ref(), sri, &old);
                    cache::set_resource_version(&mut obj, kv.mod_revision);
                    return Ok((convert::from_storage(ri, &obj), true));
                }
                Err(store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(ri, name, e)),
            }
        }
        Err(Status::conflict(
            ri.group,
            ri.plural,
            name,
            "too many concurrent updates; please retry",
        ))
    }

    /// Deletes every object matching the selectors; returns what was deleted.
    pub async fn delete_collection(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<ListPage, Status> {
        let page = self
            .list(
                ri,
                ns,
                &ListOptions {
                    limit: 0,
                    continue_token: None,
                    ..list.clone()
                },
            )
            .await?;
        let mut deleted = Vec::new();
        for item in page.items {
            let name = meta_str(&item, "name").unwrap_or("").to_string();
            let item_ns = meta_str(&item, "namespace").map(str::to_string);
            match self
                .delete(ri, item_ns.as_deref().or(ns), &name, opts)
                .await
            {
                Ok((obj, _)) => deleted.push(obj),
                Err(s) if s.code == 404 => {}
                Err(s) => return Err(s),
            }
        }
        Ok(ListPage {
            items: deleted,
            revision: self.cache.revision(),
            continue_token: None,
        })
    }

    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<u64, Status> {
        self.store
            .current_revision()
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Compacts the store's history up to `revision`.
    pub async fn compact(&self, revision: u64) -> Result<(), store::Error> {
        self.store.compact(revision).await
    }
}

/// The field manager of a write: `fieldManager`, else the client's name (as upstream
/// derives it from the User-Agent, done by the handler), else `unknown`.
fn manager(opts: &WriteOptions) -> String {
    opts.field_manager
        .clone()
        .unwrap_or_else(|| "unknown".to_string())
}

/// The new state for [`Registry::update`].
pub enum Update<'a> {
    /// PUT: the object as sent.
    Replace(&'a Value),
    /// PATCH: computes the new object from the current one (in the served version).
    #[allow(clippy::type_complexity)]
    Mutate(Box<dyn Fn(&Value) -> Result<(Value, Vec<String>), Status> + Send + Sync + 'a>),
}

/// Moves a Secret's write-only `stringData` into `data` (base64), as upstream does when
/// decoding; `stringData` wins over `data` for the same key.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(m) = obj.as_object_mut() else { return };
    let Some(Value::Object(string_data)) = m.remove("stringData") else {
        return;
    };
    let data = m.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        data[k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn finalizers_empty(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|a| a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "/registry/pods/default/x");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/pods/default/x".to_string())
        );
        assert!(decode_continue("garbage!").is_err());
    }

    #[test]
    fn keys() {
        let pods = lookup("", "v1", "pods").unwrap();
        assert_eq!(key(pods, Some("ns"), "p"), "/registry/pods/ns/p");
        assert_eq!(list_prefix(pods, None), "/registry/pods/");
        let nodes = lookup("", "v1", "nodes").unwrap();
        assert_eq!(key(nodes, None, "n1"), "/registry/nodes/n1");
    }
}
