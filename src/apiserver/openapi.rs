//! OpenAPI documents: `/openapi/v2` (swagger 2.0 as JSON and as gnostic protobuf) and
//! `/openapi/v3` (the index plus one OpenAPI 3.0 document per group-version).
//!
//! kubectl needs these before `apply`/`create -f` with its default `--validate=strict`:
//! it looks for the PATCH operation of the object's group-version-kind
//! (`x-kubernetes-group-version-kind`) and checks that it lists the `fieldValidation`
//! query parameter (1.29+ in the v3 document of the group-version, 1.27/1.28 in the v2
//! protobuf). `kubectl explain` reads `components.schemas` (v3) or `definitions` (v2).
//!
//! Paths and operations are derived from the resource table ([`crate::api::resources`]);
//! the schemas come from `openapi_schemas.json`, generated from k8s-openapi's copy of the
//! upstream definitions by `scripts/gen-openapi-schemas.py` (they carry upstream's
//! descriptions but no `x-kubernetes-patch-*` metadata).
//!
//! Strategic merge patch is deliberately *not* advertised in the PATCH operations
//! (`consumes` in v2, `requestBody.content` in v3): kubectl computes client-side-apply
//! patches from the OpenAPI schema only when the PATCH operation advertises it, and
//! without patch-merge keys in our schemas it would compute list-replacing patches or
//! print warnings. Without it kubectl silently uses the merge keys compiled into it for
//! the built-in kinds — the same as against a server without OpenAPI. Flip
//! [`ADVERTISE_STRATEGIC_MERGE_PATCH`] once the schemas carry the patch metadata.
//!
//! Everything is computed once by [`OpenApi::build`] (about 5 MB in all, most of it the
//! full field schemas); serving is a lookup. Serve the protobuf with `Content-Type:
//! application/octet-stream`: kubectl 1.27/1.28 fail to parse the `…spec.v2@v1.0+protobuf`
//! type as a MIME type.
//!
//! Depends on: `api::resources`. No IO.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::api::resources::{self, ResourceInfo};

/// Whether PATCH operations advertise `application/strategic-merge-patch+json` (see the
/// module documentation for why this is off).
pub const ADVERTISE_STRATEGIC_MERGE_PATCH: bool = false;

/// Generated schemas keyed by upstream definition name; `$ref`s hold bare names.
const SCHEMAS_JSON: &str = include_str!("openapi_schemas.json");

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const LIST_META_DESC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The precomputed OpenAPI documents.
#[derive(Debug, Clone)]
pub struct OpenApi {
    v3_index: Vec<u8>,
    /// `api/v1`, `apis/apps/v1`, ... → (document, hash).
    v3_docs: BTreeMap<String, (Vec<u8>, String)>,
    v2_json: Vec<u8>,
    v2_protobuf: Vec<u8>,
}

impl OpenApi {
    /// Builds every document; `version` is reported as `info.version`.
    pub fn build(version: &str) -> OpenApi {
        let schemas = Schemas::load();
        let gvs = group_versions();

        let mut v3_docs = BTreeMap::new();
        let mut index = Map::new();
        for (group, gv_version) in &gvs {
            let key = gv_path(group, gv_version);
            let paths = paths_for(group, gv_version);
            let doc = v3_document(version, &paths, &schemas);
            let bytes = serde_json::to_vec(&doc).unwrap_or_default();
            let hash = hex_upper(&Sha256::digest(&bytes));
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            );
            v3_docs.insert(key, (bytes, hash));
        }
        let v3_index = serde_json::to_vec(&json!({ "paths": index })).unwrap_or_default();

        let all_paths: Vec<PathSpec> = gvs.iter().flat_map(|(g, v)| paths_for(g, v)).collect();
        let v2 = v2_document(version, &all_paths, &schemas);
        let v2_json = serde_json::to_vec(&v2).unwrap_or_default();
        let v2_protobuf = proto::Encoder::default().document(&v2);

        OpenApi {
            v3_index,
            v3_docs,
            v2_json,
            v2_protobuf,
        }
    }

    /// `GET /openapi/v3` (JSON).
    pub fn v3_index(&self) -> &[u8] {
        &self.v3_index
    }

    /// `GET /openapi/v3/<path>` for `path` like `api/v1` or `apis/apps/v1` (JSON), with
    /// the hash the index advertises for it (use it as the ETag; a request whose `hash`
    /// query parameter matches may be cached immutably).
    pub fn v3_document(&self, path: &str) -> Option<(&[u8], &str)> {
        let path = path.trim_matches('/');
        self.v3_docs
            .get(path)
            .map(|(doc, hash)| (doc.as_slice(), hash.as_str()))
    }

    /// `GET /openapi/v2` (and `/swagger-2.0.0.pb-v1`) when the client accepts
    /// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`: a serialized
    /// `openapi.v2.Document` (github.com/google/gnostic-models/openapiv2), to be sent as
    /// `application/octet-stream`.
    pub fn v2_protobuf(&self) -> &[u8] {
        &self.v2_protobuf
    }

    /// `GET /openapi/v2` otherwise: the same document as swagger 2.0 JSON.
    pub fn v2_json(&self) -> &[u8] {
        &self.v2_json
    }
}

// ---------------------------------------------------------------------------------------
// Names

/// Upstream schema name prefix of a group-version (`io.k8s.api.apps.v1`).
pub fn schema_prefix(group: &str, version: &str) -> String {
    match group {
        "" => format!("io.k8s.api.core.{version}"),
        "apiextensions.k8s.io" => {
            format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}")
        }
        g => format!("io.k8s.api.{}.{version}", g.split('.').next().unwrap_or(g)),
    }
}

/// Upstream schema name of a kind (`io.k8s.api.apps.v1.Deployment`).
pub fn schema_name(group: &str, version: &str, kind: &str) -> String {
    format!("{}.{kind}", schema_prefix(group, version))
}

fn meta(name: &str) -> String {
    format!("{META}.{name}")
}

/// `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    resources::groups()
        .into_iter()
        .flat_map(|(g, versions)| versions.into_iter().map(move |v| (g, v)))
        .collect()
}

/// `networking.k8s.io` → `Networking`, `rbac.authorization.k8s.io` → `RbacAuthorization`,
/// core → `Core`: the group part of upstream operation ids.
fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".to_string();
    }
    group
        .trim_end_matches(".k8s.io")
        .split('.')
        .map(capitalize)
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

// ---------------------------------------------------------------------------------------
// Operations (one model rendered to v2 and v3)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
    Patch,
}

impl Method {
    fn key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Put => "put",
            Method::Post => "post",
            Method::Delete => "delete",
            Method::Patch => "patch",
        }
    }
}

/// A query parameter of an operation.
#[derive(Debug)]
struct QueryParam {
    name: &'static str,
    ty: &'static str,
    description: &'static str,
}

const PRETTY: QueryParam = QueryParam {
    name: "pretty",
    ty: "string",
    description: "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
};
const ALLOW_WATCH_BOOKMARKS: QueryParam = QueryParam {
    name: "allowWatchBookmarks",
    ty: "boolean",
    description: "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should not assume bookmarks are returned at any specific interval, nor may they assume the server will send any BOOKMARK event during a session. If this is not a watch, this field is ignored.",
};
const CONTINUE: QueryParam = QueryParam {
    name: "continue",
    ty: "string",
    description: "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue) and the server may reject a continue value it does not recognize.",
};
const FIELD_SELECTOR: QueryParam = QueryParam {
    name: "fieldSelector",
    ty: "string",
    description: "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
};
const LABEL_SELECTOR: QueryParam = QueryParam {
    name: "labelSelector",
    ty: "string",
    description: "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
};
const LIMIT: QueryParam = QueryParam {
    name: "limit",
    ty: "integer",
    description: "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.",
};
const RESOURCE_VERSION: QueryParam = QueryParam {
    name: "resourceVersion",
    ty: "string",
    description: "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset",
};
const RESOURCE_VERSION_MATCH: QueryParam = QueryParam {
    name: "resourceVersionMatch",
    ty: "string",
    description: "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset",
};
const TIMEOUT_SECONDS: QueryParam = QueryParam {
    name: "timeoutSeconds",
    ty: "integer",
    description: "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.",
};
const WATCH: QueryParam = QueryParam {
    name: "watch",
    ty: "boolean",
    description: "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.",
};
const DRY_RUN: QueryParam = QueryParam {
    name: "dryRun",
    ty: "string",
    description: "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
};
const FIELD_MANAGER: QueryParam = QueryParam {
    name: "fieldManager",
    ty: "string",
    description: "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
};
const FIELD_VALIDATION: QueryParam = QueryParam {
    name: "fieldValidation",
    ty: "string",
    description: "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
};
const FORCE: QueryParam = QueryParam {
    name: "force",
    ty: "boolean",
    description: "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
};
const GRACE_PERIOD_SECONDS: QueryParam = QueryParam {
    name: "gracePeriodSeconds",
    ty: "integer",
    description: "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used. Defaults to a per object value if not specified. zero means delete immediately.",
};
const ORPHAN_DEPENDENTS: QueryParam = QueryParam {
    name: "orphanDependents",
    ty: "boolean",
    description: "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.",
};
const PROPAGATION_POLICY: QueryParam = QueryParam {
    name: "propagationPolicy",
    ty: "string",
    description: "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. The default policy is decided by the existing finalizer set in the metadata.finalizers and the resource-specific default policy. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.",
};

const LIST_PARAMS: &[&QueryParam] = &[
    &ALLOW_WATCH_BOOKMARKS,
    &CONTINUE,
    &FIELD_SELECTOR,
    &LABEL_SELECTOR,
    &LIMIT,
    &RESOURCE_VERSION,
    &RESOURCE_VERSION_MATCH,
    &TIMEOUT_SECONDS,
    &WATCH,
];
const WRITE_PARAMS: &[&QueryParam] = &[&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION];
const PATCH_PARAMS: &[&QueryParam] = &[&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION, &FORCE];
const DELETE_PARAMS: &[&QueryParam] = &[
    &DRY_RUN,
    &GRACE_PERIOD_SECONDS,
    &ORPHAN_DEPENDENTS,
    &PROPAGATION_POLICY,
];
const DELETE_COLLECTION_PARAMS: &[&QueryParam] = &[
    &CONTINUE,
    &DRY_RUN,
    &FIELD_SELECTOR,
    &GRACE_PERIOD_SECONDS,
    &LABEL_SELECTOR,
    &LIMIT,
    &ORPHAN_DEPENDENTS,
    &PROPAGATION_POLICY,
    &RESOURCE_VERSION,
    &RESOURCE_VERSION_MATCH,
    &TIMEOUT_SECONDS,
];

const NO_PARAMS: &[&QueryParam] = &[];

type Codes = &'static [(&'static str, &'static str)];
const NO_CODES: Codes = &[];
const CREATED: Codes = &[("201", "Created")];
const ACCEPTED: Codes = &[("202", "Accepted")];
const CREATED_ACCEPTED: Codes = &[("201", "Created"), ("202", "Accepted")];

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn patch_types() -> Vec<&'static str> {
    PATCH_TYPES
        .iter()
        .copied()
        .filter(|t| ADVERTISE_STRATEGIC_MERGE_PATCH || !t.contains("strategic"))
        .collect()
}

/// Group, version, kind.
type Gvk = (&'static str, &'static str, &'static str);

/// One operation on one path.
#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    /// `x-kubernetes-action`: get, list, post, put, patch, delete, deletecollection.
    action: &'static str,
    operation_id: String,
    description: String,
    tag: String,
    gvk: Gvk,
    params: &'static [&'static QueryParam],
    /// Schema name of the request body, if any.
    body: Option<String>,
    /// Schema name of the successful response.
    response: String,
    /// Further success codes besides 200.
    also: Codes,
}

/// One path with its operations.
#[derive(Debug, Clone)]
struct PathSpec {
    path: String,
    namespaced: bool,
    /// Kind named by the `{name}` path parameter, if the path has one.
    named: Option<&'static str>,
    ops: Vec<Operation>,
}

/// Every path served for one group-version, in table order.
fn paths_for(group: &'static str, version: &'static str) -> Vec<PathSpec> {
    let mut out = Vec::new();
    for r in resources::in_group_version(group, version) {
        resource_paths(r, &mut out);
    }
    out
}

/// What an operation sends or returns.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// The object of the operation's kind.
    Object,
    /// The list kind of the operation's kind.
    List,
    Patch,
    DeleteOptions,
    Status,
}

/// How one verb appears as an operation.
struct Verb {
    method: Method,
    /// `x-kubernetes-action`.
    action: &'static str,
    /// First word of the operation id (`list`, `read`, `patch`, ...).
    id: &'static str,
    /// Inserted after the version in the operation id (`Collection`).
    id_infix: &'static str,
    /// Description of the operation on a resource; `{kind}` is replaced.
    description: &'static str,
    /// What it does, for subresource descriptions ("read status of the specified Pod").
    doing: &'static str,
    params: &'static [&'static QueryParam],
    body: Option<Payload>,
    response: Payload,
    also: Codes,
}

const LIST: Verb = Verb {
    method: Method::Get,
    action: "list",
    id: "list",
    id_infix: "",
    description: "list or watch objects of kind {kind}",
    doing: "list",
    params: LIST_PARAMS,
    body: None,
    response: Payload::List,
    also: NO_CODES,
};
const CREATE: Verb = Verb {
    method: Method::Post,
    action: "post",
    id: "create",
    id_infix: "",
    description: "create a {kind}",
    doing: "create",
    params: WRITE_PARAMS,
    body: Some(Payload::Object),
    response: Payload::Object,
    also: CREATED_ACCEPTED,
};
const DELETE_COLLECTION: Verb = Verb {
    method: Method::Delete,
    action: "deletecollection",
    id: "delete",
    id_infix: "Collection",
    description: "delete collection of {kind}",
    doing: "delete",
    params: DELETE_COLLECTION_PARAMS,
    body: Some(Payload::DeleteOptions),
    response: Payload::Status,
    also: NO_CODES,
};
const GET: Verb = Verb {
    method: Method::Get,
    action: "get",
    id: "read",
    id_infix: "",
    description: "read the specified {kind}",
    doing: "read",
    params: NO_PARAMS,
    body: None,
    response: Payload::Object,
    also: NO_CODES,
};
const UPDATE: Verb = Verb {
    method: Method::Put,
    action: "put",
    id: "replace",
    id_infix: "",
    description: "replace the specified {kind}",
    doing: "replace",
    params: WRITE_PARAMS,
    body: Some(Payload::Object),
    response: Payload::Object,
    also: CREATED,
};
const PATCH: Verb = Verb {
    method: Method::Patch,
    action: "patch",
    id: "patch",
    id_infix: "",
    description: "partially update the specified {kind}",
    doing: "partially update",
    params: PATCH_PARAMS,
    body: Some(Payload::Patch),
    response: Payload::Object,
    also: CREATED,
};
const DELETE: Verb = Verb {
    method: Method::Delete,
    action: "delete",
    id: "delete",
    id_infix: "",
    description: "delete a {kind}",
    doing: "delete",
    params: DELETE_PARAMS,
    body: Some(Payload::DeleteOptions),
    response: Payload::Status,
    also: ACCEPTED,
};

/// The verb a subresource's discovery verb maps to.
fn subresource_verb(verb: &str) -> Option<&'static Verb> {
    match verb {
        "get" => Some(&GET),
        "update" => Some(&UPDATE),
        "patch" => Some(&PATCH),
        "create" => Some(&CREATE),
        _ => None,
    }
}

fn resource_paths(r: &'static ResourceInfo, out: &mut Vec<PathSpec>) {
    let prefix = format!("/{}", gv_path(r.group, r.version));
    let tag = format!("{}_{}", lower_first(&group_camel(r.group)), r.version);
    let scope = if r.namespaced { "Namespaced" } else { "" };
    // `sub`: subresource name; `suffix`: operation id suffix (`ForAllNamespaces`).
    let op = |verb: &Verb, gvk: Gvk, scope: &str, sub: &str, suffix: &str| {
        let obj = schema_name(gvk.0, gvk.1, gvk.2);
        let payload = |p: Payload| match p {
            Payload::Object => obj.clone(),
            Payload::List => format!("{obj}List"),
            Payload::Patch => meta("Patch"),
            Payload::DeleteOptions => meta("DeleteOptions"),
            Payload::Status => meta("Status"),
        };
        let kind = r.kind;
        let description = if sub.is_empty() {
            verb.description.replace("{kind}", kind)
        } else {
            format!("{} {sub} of the specified {kind}", verb.doing)
        };
        Operation {
            method: verb.method,
            action: verb.action,
            operation_id: format!(
                "{}{}{}{}{scope}{kind}{}{suffix}",
                verb.id,
                group_camel(r.group),
                capitalize(r.version),
                verb.id_infix,
                capitalize(sub),
            ),
            description,
            tag: tag.clone(),
            gvk,
            params: verb.params,
            body: verb.body.map(payload),
            response: payload(verb.response),
            also: verb.also,
        }
    };
    let gvk = (r.group, r.version, r.kind);
    let collection = if r.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{prefix}/{}", r.plural)
    };
    if !r.is_stored() {
        // Computed, create-only resources (access and token reviews): POST only.
        out.push(PathSpec {
            path: collection,
            namespaced: r.namespaced,
            named: None,
            ops: vec![op(&CREATE, gvk, scope, "", "")],
        });
        return;
    }
    out.push(PathSpec {
        path: collection.clone(),
        namespaced: r.namespaced,
        named: None,
        ops: [&LIST, &CREATE, &DELETE_COLLECTION]
            .into_iter()
            .map(|v| op(v, gvk, scope, "", ""))
            .collect(),
    });
    out.push(PathSpec {
        path: format!("{collection}/{{name}}"),
        namespaced: r.namespaced,
        named: Some(r.kind),
        ops: [&GET, &UPDATE, &PATCH, &DELETE]
            .into_iter()
            .map(|v| op(v, gvk, scope, "", ""))
            .collect(),
    });
    if r.namespaced {
        out.push(PathSpec {
            path: format!("{prefix}/{}", r.plural),
            namespaced: false,
            named: None,
            ops: vec![op(&LIST, gvk, "", "", "ForAllNamespaces")],
        });
    }
    for sub in r.subresources {
        let sub_gvk = (sub.group, sub.version, sub.kind);
        out.push(PathSpec {
            path: format!("{collection}/{{name}}/{}", sub.name),
            namespaced: r.namespaced,
            named: Some(r.kind),
            ops: sub
                .verbs
                .iter()
                .filter_map(|v| subresource_verb(v))
                .map(|v| op(v, sub_gvk, scope, sub.name, ""))
                .collect(),
        });
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn gvk_value(gvk: (&str, &str, &str)) -> Value {
    json!({"group": gvk.0, "version": gvk.1, "kind": gvk.2})
}

// ---------------------------------------------------------------------------------------
// Schemas

/// The schema set: generated definitions plus list kinds and GVK extensions.
struct Schemas {
    /// name → schema with bare-name `$ref`s.
    defs: BTreeMap<String, Value>,
}

impl Schemas {
    fn load() -> Schemas {
        let mut defs: BTreeMap<String, Value> =
            serde_json::from_str(SCHEMAS_JSON).unwrap_or_default();
        let mut gvks: BTreeMap<String, BTreeSet<(String, String, String)>> = BTreeMap::new();
        let mut add = |name: String, g: &str, v: &str, k: String| {
            gvks.entry(name)
                .or_default()
                .insert((g.to_string(), v.to_string(), k));
        };
        for r in resources::RESOURCES {
            let name = schema_name(r.group, r.version, r.kind);
            if r.is_stored() {
                let list = format!("{name}List");
                defs.entry(list.clone())
                    .or_insert_with(|| list_schema(r, &name));
                add(list, r.group, r.version, r.list_kind());
            }
            add(name, r.group, r.version, r.kind.to_string());
            for s in r.subresources {
                add(
                    schema_name(s.group, s.version, s.kind),
                    s.group,
                    s.version,
                    s.kind.to_string(),
                );
            }
        }
        for kind in ["Status", "DeleteOptions"] {
            add(meta(kind), "", "v1", kind.to_string());
        }
        // Older served versions without a generated schema (SelfSubjectReview v1beta1 and
        // v1alpha1) share the shape of the group's preferred version.
        for r in resources::RESOURCES.iter().filter(|r| !r.preferred) {
            let name = schema_name(r.group, r.version, r.kind);
            if !defs.contains_key(&name)
                && let Some(p) = resources::RESOURCES
                    .iter()
                    .find(|p| p.preferred && p.group == r.group && p.kind == r.kind)
                && let Some(s) = defs.get(&schema_name(p.group, p.version, p.kind)).cloned()
            {
                defs.insert(name, s);
            }
        }
        for (name, set) in gvks {
            let list: Vec<Value> = set.iter().map(|(g, v, k)| gvk_value((g, v, k))).collect();
            let schema = defs.entry(name.clone()).or_insert_with(|| {
                json!({"description": format!("{name} (no schema available)"), "type": "object"})
            });
            if let Value::Object(m) = schema {
                m.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
            }
        }
        Schemas { defs }
    }

    /// `names` and every schema they reference, transitively.
    fn closure(&self, names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = names.into_iter().collect();
        while let Some(name) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(s) = self.defs.get(&name) {
                collect_refs(s, &mut stack);
            }
        }
        seen
    }
}

fn list_schema(r: &ResourceInfo, item: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {} objects.", r.kind, r.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"description": API_VERSION_DESC, "type": "string"},
            "kind": {"description": KIND_DESC, "type": "string"},
            "items": {
                "description": format!("Items is the list of {} objects.", r.kind),
                "type": "array",
                "items": {"$ref": item},
            },
            "metadata": {"$ref": meta("ListMeta"), "description": LIST_META_DESC},
        },
    })
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Rewrites bare `$ref` names into `prefix + name`; in v3 style, a `$ref` with siblings
/// (a description) becomes `allOf: [{$ref}]` as upstream does (siblings of `$ref` are
/// ignored in OpenAPI 3.0).
fn rewrite_refs(v: &Value, prefix: &str, v3: bool) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let target = json!({"$ref": format!("{prefix}{r}")});
                let mut out = Map::new();
                if v3 && m.len() > 1 {
                    out.insert("allOf".into(), json!([target]));
                } else {
                    out.insert("$ref".into(), target["$ref"].clone());
                }
                for (k, x) in m {
                    if k != "$ref" {
                        out.insert(k.clone(), rewrite_refs(x, prefix, v3));
                    }
                }
                return Value::Object(out);
            }
            Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), rewrite_refs(x, prefix, v3)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| rewrite_refs(x, prefix, v3)).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// v3

fn v3_document(version: &str, paths: &[PathSpec], schemas: &Schemas) -> Value {
    const REF: &str = "#/components/schemas/";
    let schema_ref = |name: &str| json!({"$ref": format!("{REF}{name}")});
    let mut used = Vec::new();
    let mut out = Map::new();
    for p in paths {
        let mut item = Map::new();
        item.insert("parameters".into(), Value::Array(path_params(p, true)));
        for op in &p.ops {
            let mut o = Map::new();
            o.insert("tags".into(), json!([op.tag]));
            o.insert("description".into(), json!(op.description));
            o.insert("operationId".into(), json!(op.operation_id));
            if !op.params.is_empty() {
                o.insert(
                    "parameters".into(),
                    op.params.iter().map(|q| query_param(q, true)).collect(),
                );
            }
            if let Some(body) = &op.body {
                used.push(body.clone());
                let types: Vec<&str> = match op.method {
                    Method::Patch => patch_types(),
                    Method::Delete => vec!["*/*"],
                    _ => vec!["application/json", "application/yaml"],
                };
                let content: Map<String, Value> = types
                    .into_iter()
                    .map(|t| (t.to_string(), json!({"schema": schema_ref(body)})))
                    .collect();
                let mut rb = json!({"content": content});
                if op.method != Method::Delete {
                    rb["required"] = json!(true);
                }
                o.insert("requestBody".into(), rb);
            }
            used.push(op.response.clone());
            let mut content = Map::new();
            for t in ["application/json", "application/yaml"] {
                content.insert(t.into(), json!({"schema": schema_ref(&op.response)}));
            }
            if op.action == "list" {
                content.insert(
                    "application/json;stream=watch".into(),
                    json!({"schema": schema_ref(&op.response)}),
                );
            }
            let mut responses = Map::new();
            responses.insert(
                "200".into(),
                json!({"description": "OK", "content": content}),
            );
            for (code, text) in op.also {
                responses.insert(
                    (*code).into(),
                    json!({"description": text, "content": {
                        "application/json": {"schema": schema_ref(&op.response)},
                        "application/yaml": {"schema": schema_ref(&op.response)}}}),
                );
            }
            responses.insert("401".into(), json!({"description": "Unauthorized"}));
            o.insert("responses".into(), Value::Object(responses));
            o.insert("x-kubernetes-action".into(), json!(op.action));
            o.insert("x-kubernetes-group-version-kind".into(), gvk_value(op.gvk));
            item.insert(op.method.key().into(), Value::Object(o));
        }
        out.insert(p.path.clone(), Value::Object(item));
    }
    let components: Map<String, Value> = schemas
        .closure(used)
        .into_iter()
        .filter_map(|n| {
            schemas
                .defs
                .get(&n)
                .map(|s| (n, rewrite_refs(s, REF, true)))
        })
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": out,
        "components": {"schemas": components},
    })
}

/// A query parameter, in v3 (`schema`) or v2 (inline `type`) style.
fn query_param(q: &QueryParam, v3: bool) -> Value {
    param(q.name, "query", q.description, false, q.ty, v3)
}

fn param(name: &str, place: &str, description: &str, required: bool, ty: &str, v3: bool) -> Value {
    let mut p = json!({"name": name, "in": place, "description": description});
    if required {
        p["required"] = json!(true);
    }
    if v3 {
        p["schema"] = json!({"type": ty, "uniqueItems": true});
    } else {
        p["type"] = json!(ty);
        p["uniqueItems"] = json!(true);
    }
    p
}

/// The parameters every operation of a path shares: `name`, `namespace`, `pretty`.
fn path_params(p: &PathSpec, v3: bool) -> Vec<Value> {
    let mut params = Vec::new();
    if let Some(kind) = p.named {
        let description = format!("name of the {kind}");
        params.push(param("name", "path", &description, true, "string", v3));
    }
    if p.namespaced {
        let description = "object name and auth scope, such as for teams and projects";
        params.push(param("namespace", "path", description, true, "string", v3));
    }
    params.push(query_param(&PRETTY, v3));
    params
}

// ---------------------------------------------------------------------------------------
// v2

fn v2_document(version: &str, paths: &[PathSpec], schemas: &Schemas) -> Value {
    const REF: &str = "#/definitions/";
    let mut out = Map::new();
    for p in paths {
        let mut item = Map::new();
        item.insert("parameters".into(), Value::Array(path_params(p, false)));
        for op in &p.ops {
            let mut o = Map::new();
            o.insert("description".into(), json!(op.description));
            let consumes = match op.method {
                Method::Patch => patch_types(),
                _ => vec!["*/*"],
            };
            o.insert("consumes".into(), json!(consumes));
            let mut produces = vec!["application/json", "application/yaml"];
            if op.action == "list" {
                produces.push("application/json;stream=watch");
            }
            o.insert("produces".into(), json!(produces));
            o.insert("schemes".into(), json!(["https"]));
            o.insert("tags".into(), json!([op.tag]));
            o.insert("operationId".into(), json!(op.operation_id));
            let mut params: Vec<Value> = Vec::new();
            if let Some(body) = &op.body {
                params.push(
                    json!({"name": "body", "in": "body", "required": op.method != Method::Delete,
                                   "schema": {"$ref": format!("{REF}{body}")}}),
                );
            }
            params.extend(op.params.iter().map(|q| query_param(q, false)));
            if !params.is_empty() {
                o.insert("parameters".into(), Value::Array(params));
            }
            let mut responses = Map::new();
            let schema = json!({"$ref": format!("{REF}{}", op.response)});
            responses.insert("200".into(), json!({"description": "OK", "schema": schema}));
            for (code, text) in op.also {
                responses.insert(
                    (*code).into(),
                    json!({"description": text, "schema": schema}),
                );
            }
            responses.insert("401".into(), json!({"description": "Unauthorized"}));
            o.insert("responses".into(), Value::Object(responses));
            o.insert("x-kubernetes-action".into(), json!(op.action));
            o.insert("x-kubernetes-group-version-kind".into(), gvk_value(op.gvk));
            item.insert(op.method.key().into(), Value::Object(o));
        }
        out.insert(p.path.clone(), Value::Object(item));
    }
    let definitions: Map<String, Value> = schemas
        .defs
        .iter()
        .map(|(n, s)| (n.clone(), rewrite_refs(s, REF, false)))
        .collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": out,
        "definitions": definitions,
    })
}

// ---------------------------------------------------------------------------------------
// gnostic protobuf

/// A hand-written encoder from swagger 2.0 JSON to `openapi.v2.Document`
/// (github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto), mirroring gnostic's own
/// JSON-to-proto conversion for the subset of swagger kaji produces. Field numbers are
/// upstream's. Keys it does not know are collected in `unknown` (tests keep it empty).
mod proto {
    use serde_json::{Map, Value};

    #[derive(Default)]
    pub(super) struct Encoder {
        pub(super) unknown: Vec<String>,
    }

    /// A protobuf message under construction.
    #[derive(Default)]
    struct Msg(Vec<u8>);

    impl Msg {
        fn varint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.0.push((v as u8 & 0x7f) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
        }
        fn key(&mut self, field: u32, wire: u8) {
            self.varint((u64::from(field) << 3) | u64::from(wire));
        }
        fn bytes(&mut self, field: u32, b: &[u8]) {
            self.key(field, 2);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
        }
        fn msg(&mut self, field: u32, m: Msg) {
            self.bytes(field, &m.0);
        }
        fn string(&mut self, field: u32, s: &str) {
            if !s.is_empty() {
                self.bytes(field, s.as_bytes());
            }
        }
        fn bool(&mut self, field: u32, b: bool) {
            if b {
                self.key(field, 0);
                self.varint(1);
            }
        }
        /// A bool member of a oneof: present even when false.
        fn oneof_bool(&mut self, field: u32, b: bool) {
            self.key(field, 0);
            self.varint(u64::from(b));
        }
        fn int64(&mut self, field: u32, v: i64) {
            if v != 0 {
                self.key(field, 0);
                self.varint(v as u64);
            }
        }
        fn double(&mut self, field: u32, v: f64) {
            if v != 0.0 {
                self.key(field, 1);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn strings(v: &Value) -> Vec<&str> {
        match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The members of a JSON object (none for anything else).
    fn entries(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
        v.as_object().into_iter().flat_map(Map::iter)
    }

    fn text(v: &Value) -> &str {
        v.as_str().unwrap_or_default()
    }

    /// YAML rendering of a vendor-extension value (`Any.yaml`), as gnostic produces it.
    pub(super) fn yaml(v: &Value) -> String {
        serde_saphyr::to_string(v).unwrap_or_default()
    }

    impl Encoder {
        fn unknown(&mut self, at: &str, key: &str) {
            self.unknown.push(format!("{at}: {key}"));
        }

        /// `Any { value = 1 (google.protobuf.Any), yaml = 2 }`.
        fn any(&self, v: &Value) -> Msg {
            let mut m = Msg::default();
            m.string(2, &yaml(v));
            m
        }

        /// `NamedAny { name = 1, value = 2 }` into `field` of `m`.
        fn vendor(&self, m: &mut Msg, field: u32, name: &str, v: &Value) {
            let mut na = Msg::default();
            na.string(1, name);
            na.msg(2, self.any(v));
            m.msg(field, na);
        }

        /// `Document`.
        pub(super) fn document(&mut self, v: &Value) -> Vec<u8> {
            let mut m = Msg::default();
            for (k, x) in entries(v) {
                match k.as_str() {
                    "swagger" => m.string(1, text(x)),
                    "info" => {
                        let i = self.info(x);
                        m.msg(2, i)
                    }
                    "host" => m.string(3, text(x)),
                    "basePath" => m.string(4, text(x)),
                    "schemes" => strings(x).into_iter().for_each(|s| m.string(5, s)),
                    "consumes" => strings(x).into_iter().for_each(|s| m.string(6, s)),
                    "produces" => strings(x).into_iter().for_each(|s| m.string(7, s)),
                    "paths" => {
                        let p = self.paths(x);
                        m.msg(8, p)
                    }
                    "definitions" => {
                        let mut d = Msg::default();
                        for (name, s) in entries(x) {
                            let mut ns = Msg::default();
                            ns.string(1, name);
                            ns.msg(2, self.schema(s, name));
                            d.msg(1, ns);
                        }
                        m.msg(9, d)
                    }
                    k if k.starts_with("x-") => self.vendor(&mut m, 16, k, x),
                    k => self.unknown("document", k),
                }
            }
            m.0
        }

        fn info(&mut self, v: &Value) -> Msg {
            let mut m = Msg::default();
            for (k, x) in entries(v) {
                match k.as_str() {
                    "title" => m.string(1, text(x)),
                    "version" => m.string(2, text(x)),
                    "description" => m.string(3, text(x)),
                    k if k.starts_with("x-") => self.vendor(&mut m, 7, k, x),
                    k => self.unknown("info", k),
                }
            }
            m
        }

        /// `Paths { vendor_extension = 1, path = 2 (NamedPathItem) }`.
        fn paths(&mut self, v: &Value) -> Msg {
            let mut m = Msg::default();
            for (k, x) in entries(v) {
                if k.starts_with("x-") {
                    self.vendor(&mut m, 1, k, x);
                    continue;
                }
                let mut np = Msg::default();
                np.string(1, k);
                np.msg(2, self.path_item(x, k));
                m.msg(2, np);
            }
            m
        }

        /// `PathItem { _ref 1, get 2, put 3, post 4, delete 5, options 6, head 7, patch 8,
        /// parameters 9, vendor_extension 10 }`.
        fn path_item(&mut self, v: &Value, at: &str) -> Msg {
            let mut m = Msg::default();
            for (k, x) in entries(v) {
                let field = match k.as_str() {
                    "$ref" => {
                        m.string(1, text(x));
                        continue;
                    }
                    "get" => 2,
                    "put" => 3,
                    "post" => 4,
                    "delete" => 5,
                    "options" => 6,
                    "head" => 7,
                    "patch" => 8,
                    "parameters" => {
                        for p in x.as_array().into_iter().flatten() {
                            let pi = self.parameters_item(p, at);
                            m.msg(9, pi);
                        }
                        continue;
                    }
                    k if k.starts_with("x-") => {
                        self.vendor(&mut m, 10, k, x);
                        continue;
                    }
                    k => {
                        self.unknown(at, k);
                        continue;
                    }
                };
                let op = self.operation(x, &format!("{at} {k}"));
                m.msg(field, op);
            }
            m
        }

        /// `Operation { tags 1, summary 2, description 3, external_docs 4, operation_id 5,
        /// produces 6, consumes 7, parameters 8, responses 9, schemes 10, deprecated 11,
        /// security 12, vendor_extension 13 }`.
        fn operation(&mut self, v: &Value, at: &str) -> Msg {
            let mut m = Msg::default();
            for (k, x) in entries(v) {
                match k.as_str() {
                    "tags" => strings(x).into_iter().for_each(|s| m.string(1, s)),
                    "summary" => m.string(2, text(x)),
                    "description" => m.string(3, text(x)),
                    "operationId" => m.string(5, text(x)),
                    "produces" => strings(x).into_iter().for_each(|s| m.string(6, s)),
                    "consumes" => strings(x).into_iter().for_each(|s| m.string(7, s)),
                    "parameters" => {
                        for p in x.as_array().into_iter().flatten() {
                            let pi = self.parameters_item(p, at);
                            m.msg(8, pi);
                        }
                    }
                    "responses" => {
                        let r = self.responses(x, at);
                        m.msg(9, r)
                    }
                    "schemes" => strings(x).into_iter().for_each(|s| m.string(10, s)),
                    "deprecated" => m.bool(11, x.as_bool().unwrap_or_default()),
                    k if k.starts_with("x-") => self.vendor(&mut m, 13, k, x),
                    k => self.unknown(at, k),
                }
            }
            m
        }

        /// `ParametersItem { parameter 1 (Parameter), json_reference 2 }` where
        /// `Parameter { body_parameter 1, non_body_parameter 2 }` and
        /// `NonBodyParameter { header 1, form_data 2, query 3, path 4 }`.
        fn parameters_item(&mut self, v: &Value, at: &str) -> Msg {
            let mut item = Msg::default();
            if let Some(r) = v.get("$ref") {
                let mut jr = Msg::default();
                jr.string(1, text(r));
                if let Some(d) = v.get("description") {
                    jr.string(2, text(d));
                }
                item.msg(2, jr);
                return item;
            }
            let at = format!("{at} parameter {}", v.get("name").map(text).unwrap_or("?"));
            let mut parameter = Msg::default();
            match v.get("in").map(text).unwrap_or_default() {
                "body" => {
                    let mut b = Msg::default();
                    for (k, x) in entries(v) {
                        match k.as_str() {
                            "description" => b.string(1, text(x)),
                            "name" => b.string(2, text(x)),
                            "in" => b.string(3, text(x)),
                            "required" => b.bool(4, x.as_bool().unwrap_or_default()),
                            "schema" => {
                                let s = self.schema(x, &at);
                                b.msg(5, s)
                            }
                            k if k.starts_with("x-") => self.vendor(&mut b, 6, k, x),
                            k => self.unknown(&at, k),
                        }
                    }
                    parameter.msg(1, b);
                }
                place => {
                    // Query and formData share one numbering, path and header another.
                    let (oneof, query_like) = match place {
                        "header" => (1, false),
                        "formData" => (2, true),
                        "query" => (3, true),
                        _ => (4, false),
                    };
                    let shift = u32::from(query_like);
                    let mut s = Msg::default();
                    for (k, x) in entries(v) {
                        match k.as_str() {
                            "required" => s.bool(1, x.as_bool().unwrap_or_default()),
                            "in" => s.string(2, text(x)),
                            "description" => s.string(3, text(x)),
                            "name" => s.string(4, text(x)),
                            "allowEmptyValue" if query_like => {
                                s.bool(5, x.as_bool().unwrap_or_default())
                            }
                            "type" => s.string(5 + shift, text(x)),
                            "format" => s.string(6 + shift, text(x)),
                            "uniqueItems" => s.bool(19 + shift, x.as_bool().unwrap_or_default()),
                            k if k.starts_with("x-") => self.vendor(&mut s, 22 + shift, k, x),
                            k => self.unknown(&at, k),
                        }
                    }
                    let mut nb = Msg::default();
                    nb.msg(oneof, s);
                    parameter.msg(2, nb);
                }
            }
            item.msg(1, parameter);
            item
        }

        /// `Responses { response_code 1 (NamedResponseValue), vendor_extension 2 }`,
        /// `ResponseValue { response 1, json_reference 2 }`,
        /// `Response { description 1, schema 2 (SchemaItem { schema 1 }), headers 3,
        /// examples 4, vendor_extension 5 }`.
        fn responses(&mut self, v: &Value, at: &str) -> Msg {
            let mut m = Msg::default();
            for (code, r) in entries(v) {
                if code.starts_with("x-") {
                    self.vendor(&mut m, 2, code, r);
                    continue;
                }
                let at = format!("{at} response {code}");
                let mut resp = Msg::default();
                for (k, x) in entries(r) {
                    match k.as_str() {
                        "description" => resp.string(1, text(x)),
                        "schema" => {
                            let mut si = Msg::default();
                            si.msg(1, self.schema(x, &at));
                            resp.msg(2, si);
                        }
                        k if k.starts_with("x-") => self.vendor(&mut resp, 5, k, x),
                        k => self.unknown(&at, k),
                    }
                }
                let mut rv = Msg::default();
                rv.msg(1, resp);
                let mut named = Msg::default();
                named.string(1, code);
                named.msg(2, rv);
                m.msg(1, named);
            }
            m
        }

        /// `Schema`: _ref 1, format 2, title 3, description 4, default 5, multiple_of 6,
        /// maximum 7, exclusive_maximum 8, minimum 9, exclusive_minimum 10, max_length 11,
        /// min_length 12, pattern 13, max_items 14, min_items 15, unique_items 16,
        /// max_properties 17, min_properties 18, required 19, enum 20,
        /// additional_properties 21, type 22, items 23, all_of 24, properties 25,
        /// discriminator 26, read_only 27, xml 28, external_docs 29, example 30,
        /// vendor_extension 31.
        fn schema(&mut self, v: &Value, at: &str) -> Msg {
            let mut m = Msg::default();
            for (k, x) in entries(v) {
                let int = || x.as_i64().unwrap_or_default();
                let num = || x.as_f64().unwrap_or_default();
                match k.as_str() {
                    "$ref" => m.string(1, text(x)),
                    "format" => m.string(2, text(x)),
                    "title" => m.string(3, text(x)),
                    "description" => m.string(4, text(x)),
                    "default" => m.msg(5, self.any(x)),
                    "multipleOf" => m.double(6, num()),
                    "maximum" => m.double(7, num()),
                    "exclusiveMaximum" => m.bool(8, x.as_bool().unwrap_or_default()),
                    "minimum" => m.double(9, num()),
                    "exclusiveMinimum" => m.bool(10, x.as_bool().unwrap_or_default()),
                    "maxLength" => m.int64(11, int()),
                    "minLength" => m.int64(12, int()),
                    "pattern" => m.string(13, text(x)),
                    "maxItems" => m.int64(14, int()),
                    "minItems" => m.int64(15, int()),
                    "uniqueItems" => m.bool(16, x.as_bool().unwrap_or_default()),
                    "maxProperties" => m.int64(17, int()),
                    "minProperties" => m.int64(18, int()),
                    "required" => strings(x).into_iter().for_each(|s| m.string(19, s)),
                    "enum" => {
                        for e in x.as_array().into_iter().flatten() {
                            m.msg(20, self.any(e));
                        }
                    }
                    "additionalProperties" => {
                        let mut ap = Msg::default();
                        match x {
                            Value::Bool(b) => ap.oneof_bool(2, *b),
                            _ => ap.msg(1, self.schema(x, at)),
                        }
                        m.msg(21, ap);
                    }
                    "type" => {
                        let mut t = Msg::default();
                        strings(x).into_iter().for_each(|s| t.string(1, s));
                        m.msg(22, t);
                    }
                    "items" => {
                        let mut it = Msg::default();
                        match x {
                            Value::Array(a) => {
                                for s in a {
                                    it.msg(1, self.schema(s, at));
                                }
                            }
                            _ => it.msg(1, self.schema(x, at)),
                        }
                        m.msg(23, it);
                    }
                    "allOf" => {
                        for s in x.as_array().into_iter().flatten() {
                            let s = self.schema(s, at);
                            m.msg(24, s);
                        }
                    }
                    "properties" => {
                        let mut props = Msg::default();
                        for (name, s) in entries(x) {
                            let mut ns = Msg::default();
                            ns.string(1, name);
                            ns.msg(2, self.schema(s, &format!("{at}.{name}")));
                            props.msg(1, ns);
                        }
                        m.msg(25, props);
                    }
                    "discriminator" => m.string(26, text(x)),
                    "readOnly" => m.bool(27, x.as_bool().unwrap_or_default()),
                    "example" => m.msg(30, self.any(x)),
                    k if k.starts_with("x-") => self.vendor(&mut m, 31, k, x),
                    k => self.unknown(at, k),
                }
            }
            m
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf reader for checking the encoding.
    fn fields(mut b: &[u8]) -> Vec<(u32, &[u8])> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, key & 7);
            match wire {
                0 => {
                    let start = b;
                    varint(&mut b);
                    out.push((field, &start[..start.len() - b.len()]));
                }
                1 => {
                    out.push((field, &b[..8]));
                    b = &b[8..];
                }
                2 => {
                    let len = varint(&mut b) as usize;
                    out.push((field, &b[..len]));
                    b = &b[len..];
                }
                5 => {
                    out.push((field, &b[..4]));
                    b = &b[4..];
                }
                w => panic!("unexpected wire type {w}"),
            }
        }
        out
    }

    fn all(b: &[u8], field: u32) -> Vec<&[u8]> {
        fields(b)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| v)
            .collect()
    }

    fn one(b: &[u8], field: u32) -> Option<&[u8]> {
        all(b, field).into_iter().next()
    }

    fn string(b: &[u8], field: u32) -> String {
        one(b, field)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .unwrap_or_default()
    }

    /// vendor extensions (`NamedAny`) of a message → name → yaml.
    fn vendor(b: &[u8], field: u32) -> BTreeMap<String, String> {
        all(b, field)
            .into_iter()
            .map(|na| (string(na, 1), string(one(na, 2).unwrap(), 2)))
            .collect()
    }

    fn parse_json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn api() -> OpenApi {
        OpenApi::build("v1.33.0+kaji")
    }

    #[test]
    fn index_hashes_match_documents() {
        let api = api();
        let index = parse_json(api.v3_index());
        let paths = index["paths"].as_object().unwrap();
        let gvs = group_versions();
        assert_eq!(paths.len(), gvs.len());
        for (g, v) in gvs {
            let key = gv_path(g, v);
            let url = paths[&key]["serverRelativeURL"].as_str().unwrap();
            let (doc, hash) = api.v3_document(&key).unwrap();
            assert_eq!(url, format!("/openapi/v3/{key}?hash={hash}"));
            assert_eq!(hash, hex_upper(&Sha256::digest(doc)));
            assert_eq!(hash.len(), 64);
            assert!(
                hash.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            );
        }
        assert!(paths.contains_key("api/v1"));
        assert!(paths.contains_key("apis/apps/v1"));
        assert!(paths.contains_key("apis/autoscaling/v1"));
        assert!(api.v3_document("/apis/apps/v1").is_some());
        assert!(api.v3_document("apis/nope/v1").is_none());
    }

    /// What kubectl 1.29+ does (cli-runtime `supportsQueryParamV3`): the first PATCH
    /// operation of the GVK must list `fieldValidation` as a query parameter.
    #[test]
    fn v3_every_patch_supports_field_validation() {
        let api = api();
        for r in resources::RESOURCES.iter().filter(|r| r.is_stored()) {
            // Create-only reviews have no PATCH (as upstream).
            let (doc, _) = api.v3_document(&gv_path(r.group, r.version)).unwrap();
            let doc = parse_json(doc);
            let want = gvk_value((r.group, r.version, r.kind));
            let mut found = false;
            for (path, item) in doc["paths"].as_object().unwrap() {
                let Some(patch) = item.get("patch") else {
                    continue;
                };
                let params = patch["parameters"].as_array().unwrap();
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"),
                    "{path}"
                );
                for name in ["dryRun", "fieldManager", "force"] {
                    assert!(params.iter().any(|p| p["name"] == name), "{path} {name}");
                }
                found |= patch["x-kubernetes-group-version-kind"] == want;
                // Strategic merge patch is not advertised (module docs).
                let content = patch["requestBody"]["content"].as_object().unwrap();
                assert!(!content.contains_key("application/strategic-merge-patch+json"));
                assert!(content.contains_key("application/merge-patch+json"));
            }
            assert!(found, "no PATCH operation for {}", r.kind);
            for (path, item) in doc["paths"].as_object().unwrap() {
                for m in ["post", "put"] {
                    if let Some(op) = item.get(m) {
                        let params = op["parameters"].as_array().unwrap();
                        assert!(
                            params.iter().any(|p| p["name"] == "fieldValidation"),
                            "{path} {m}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn v3_paths_and_schemas() {
        let api = api();
        let doc = parse_json(api.v3_document("apis/apps/v1").unwrap().0);
        assert_eq!(doc["openapi"], "3.0.0");
        assert_eq!(doc["info"]["version"], "v1.33.0+kaji");
        let paths = doc["paths"].as_object().unwrap();
        let item = &paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        for m in ["get", "put", "patch", "delete"] {
            assert_eq!(
                item[m]["x-kubernetes-group-version-kind"]["kind"],
                "Deployment"
            );
        }
        assert_eq!(item["patch"]["x-kubernetes-action"], "patch");
        assert_eq!(
            item["patch"]["operationId"],
            "patchAppsV1NamespacedDeployment"
        );
        let coll = &paths["/apis/apps/v1/namespaces/{namespace}/deployments"];
        assert_eq!(coll["get"]["x-kubernetes-action"], "list");
        assert_eq!(coll["post"]["x-kubernetes-action"], "post");
        assert_eq!(coll["delete"]["x-kubernetes-action"], "deletecollection");
        assert!(paths.contains_key("/apis/apps/v1/deployments"));
        let scale = &paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(
            scale["patch"]["x-kubernetes-group-version-kind"]["group"],
            "autoscaling"
        );

        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let d = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        assert!(
            d["description"]
                .as_str()
                .unwrap()
                .contains("declarative updates")
        );
        for f in ["apiVersion", "kind", "metadata", "spec", "status"] {
            assert!(d["properties"][f]["description"].is_string(), "{f}");
        }
        assert_eq!(
            d["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        // Every reference resolves inside the document.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r}");
        }
        // Deep fields are there for `kubectl explain deploy.spec.template.spec.containers`.
        assert!(schemas["io.k8s.api.core.v1.Container"]["properties"]["image"].is_object());
        assert!(schemas.contains_key("io.k8s.api.autoscaling.v1.Scale"));
        assert!(schemas.contains_key("io.k8s.api.apps.v1.DeploymentList"));

        let core = parse_json(api.v3_document("api/v1").unwrap().0);
        let pods = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(
            pods["x-kubernetes-group-version-kind"],
            json!({"group": "", "kind": "Pod", "version": "v1"})
        );
        assert!(core["paths"]["/api/v1/nodes/{name}"]["get"].is_object());
        assert!(core["paths"]["/api/v1/namespaces/{name}/finalize"]["put"].is_object());
        let cm = &core["components"]["schemas"]["io.k8s.api.core.v1.ConfigMap"]["properties"];
        assert!(cm["data"].is_object() && cm.get("spec").is_none());
    }

    /// An empty schema (`{}`) breaks `kubectl explain` ("expected schema argument to
    /// subtemplate 'typeguess'").
    #[test]
    fn no_empty_schemas() {
        fn no_empty(v: &Value, at: &str) {
            let Some(m) = v.as_object() else { return };
            assert!(!m.is_empty(), "{at}: empty schema");
            for (k, x) in m {
                match k.as_str() {
                    "properties" => {
                        for (n, s) in x.as_object().unwrap() {
                            no_empty(s, &format!("{at}.{n}"));
                        }
                    }
                    "items" | "additionalProperties" => no_empty(x, &format!("{at}[]")),
                    _ => {}
                }
            }
        }
        let api = api();
        for (g, v) in group_versions() {
            let doc = parse_json(api.v3_document(&gv_path(g, v)).unwrap().0);
            for (name, s) in doc["components"]["schemas"].as_object().unwrap() {
                no_empty(s, name);
            }
        }
    }

    /// The checks kube-openapi's `proto.NewOpenAPIData` makes on the v2 document (kubectl
    /// 1.27/1.28 refuse the whole document otherwise).
    #[test]
    fn v2_json_is_parseable_by_kubectl() {
        let api = api();
        let doc = parse_json(api.v2_json());
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/definitions/").unwrap();
            assert!(defs.contains_key(name), "{r}");
        }
        fn walk(v: &Value, at: &str) {
            let Some(m) = v.as_object() else { return };
            if let Some(t) = m.get("type") {
                assert!(t.is_string(), "{at}: single type");
                if t == "array" {
                    assert!(
                        m.get("items").is_some_and(Value::is_object),
                        "{at}: array items"
                    );
                }
            }
            for (k, x) in m {
                match k.as_str() {
                    "properties" => x
                        .as_object()
                        .unwrap()
                        .iter()
                        .for_each(|(n, s)| walk(s, &format!("{at}.{n}"))),
                    "items" | "additionalProperties" => walk(x, at),
                    _ => {}
                }
            }
        }
        for (n, s) in defs {
            walk(s, n);
        }
        for r in resources::RESOURCES {
            let d = &defs[&schema_name(r.group, r.version, r.kind)];
            let gvks = d["x-kubernetes-group-version-kind"].as_array().unwrap();
            assert!(gvks.contains(&gvk_value((r.group, r.version, r.kind))));
            assert!(
                d["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{}",
                r.kind
            );
        }
    }

    #[test]
    fn protobuf_encoder_knows_every_key() {
        let doc = parse_json(api().v2_json());
        let mut enc = proto::Encoder::default();
        let bytes = enc.document(&doc);
        assert!(
            enc.unknown.is_empty(),
            "{:?}",
            &enc.unknown[..enc.unknown.len().min(10)]
        );
        assert_eq!(bytes, api().v2_protobuf());
    }

    #[test]
    fn vendor_extension_yaml() {
        assert_eq!(
            proto::yaml(&gvk_value(("apps", "v1", "Deployment"))),
            "group: apps\nkind: Deployment\nversion: v1\n"
        );
        assert_eq!(
            proto::yaml(&gvk_value(("", "v1", "Pod"))),
            "group: \"\"\nkind: Pod\nversion: v1\n"
        );
        assert_eq!(
            proto::yaml(&json!([gvk_value(("apps", "v1", "Deployment"))])),
            "- group: apps\n  kind: Deployment\n  version: v1\n"
        );
    }

    /// Walks the protobuf the way kubectl 1.27/1.28 do (cli-runtime `supportsQueryParam`,
    /// kubectl `openapi.NewOpenAPIData`): document.paths.path[].value.patch → vendor
    /// extension `x-kubernetes-group-version-kind` (YAML map) → parameters[].parameter
    /// .non_body_parameter.query_parameter_sub_schema.name == "fieldValidation"; and
    /// definitions with the GVK list, description and properties.
    #[test]
    fn protobuf_round_trip() {
        let api = api();
        let doc = api.v2_protobuf();
        assert_eq!(string(doc, 1), "2.0");
        assert_eq!(string(one(doc, 2).unwrap(), 1), "Kubernetes");
        assert_eq!(string(one(doc, 2).unwrap(), 2), "v1.33.0+kaji");

        let paths = one(doc, 8).unwrap();
        let mut patch_gvks = Vec::new();
        for named in all(paths, 2) {
            let name = string(named, 1);
            let item = one(named, 2).unwrap();
            let Some(patch) = one(item, 8) else { continue };
            let ext = vendor(patch, 13);
            let gvk: BTreeMap<String, String> =
                serde_saphyr::from_str(&ext["x-kubernetes-group-version-kind"]).unwrap();
            assert_eq!(ext["x-kubernetes-action"].trim(), "patch");
            let mut query = Vec::new();
            for pi in all(patch, 8) {
                let Some(param) = one(pi, 1) else { continue };
                if let Some(nb) = one(param, 2) {
                    if let Some(q) = one(nb, 3) {
                        query.push(string(q, 4));
                        assert_eq!(string(q, 2), "query");
                    }
                } else if let Some(body) = one(param, 1) {
                    assert_eq!(string(body, 2), "body");
                    let schema = one(body, 5).unwrap();
                    assert_eq!(
                        string(schema, 1),
                        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
                    );
                }
            }
            for q in ["fieldValidation", "dryRun", "fieldManager", "force"] {
                assert!(query.iter().any(|n| n == q), "{name}: {q}");
            }
            let consumes: Vec<String> = all(patch, 7)
                .into_iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect();
            assert!(consumes.contains(&"application/merge-patch+json".to_string()));
            assert!(!consumes.iter().any(|c| c.contains("strategic")));
            // path-level parameters: the path parameter `name`.
            let path_params: Vec<String> = all(item, 9)
                .into_iter()
                .filter_map(|pi| one(one(one(pi, 1)?, 2)?, 4).map(|p| string(p, 4)))
                .collect();
            assert!(path_params.contains(&"name".to_string()), "{name}");
            patch_gvks.push((name, gvk));
        }
        for r in resources::RESOURCES.iter().filter(|r| r.is_stored()) {
            // Create-only reviews have no PATCH (as upstream).
            let first = patch_gvks.iter().find(|(_, g)| {
                g["group"] == r.group && g["version"] == r.version && g["kind"] == r.kind
            });
            assert!(first.is_some(), "no PATCH for {}", r.kind);
        }
        assert!(patch_gvks.iter().any(|(n, g)| n
            == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
            && g["kind"] == "Deployment"
            && g["group"] == "apps"));

        let defs = one(doc, 9).unwrap();
        let deployment = all(defs, 1)
            .into_iter()
            .find(|ns| string(ns, 1) == "io.k8s.api.apps.v1.Deployment")
            .and_then(|ns| one(ns, 2))
            .unwrap();
        assert!(string(deployment, 4).contains("declarative updates"));
        assert_eq!(string(one(deployment, 22).unwrap(), 1), "object");
        let ext = vendor(deployment, 31);
        assert_eq!(
            ext["x-kubernetes-group-version-kind"],
            "- group: apps\n  kind: Deployment\n  version: v1\n"
        );
        let gvks: Vec<BTreeMap<String, String>> =
            serde_saphyr::from_str(&ext["x-kubernetes-group-version-kind"]).unwrap();
        assert_eq!(gvks[0]["kind"], "Deployment");
        let props: BTreeMap<String, &[u8]> = all(one(deployment, 25).unwrap(), 1)
            .into_iter()
            .map(|ns| (string(ns, 1), one(ns, 2).unwrap()))
            .collect();
        assert_eq!(
            props.keys().cloned().collect::<Vec<_>>(),
            ["apiVersion", "kind", "metadata", "spec", "status"]
        );
        assert_eq!(
            string(props["metadata"], 1),
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert!(string(props["spec"], 4).contains("desired behavior"));
    }

    #[test]
    fn schema_names_follow_upstream() {
        assert_eq!(schema_name("", "v1", "Pod"), "io.k8s.api.core.v1.Pod");
        assert_eq!(
            schema_name("apps", "v1", "Deployment"),
            "io.k8s.api.apps.v1.Deployment"
        );
        assert_eq!(
            schema_name("autoscaling", "v2", "HorizontalPodAutoscaler"),
            "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler"
        );
        assert_eq!(
            schema_name("networking.k8s.io", "v1", "Ingress"),
            "io.k8s.api.networking.v1.Ingress"
        );
        assert_eq!(
            schema_name("rbac.authorization.k8s.io", "v1", "Role"),
            "io.k8s.api.rbac.v1.Role"
        );
        assert_eq!(
            schema_name("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
        );
        assert_eq!(
            group_camel("rbac.authorization.k8s.io"),
            "RbacAuthorization"
        );
        // Every served kind has a generated schema (not the placeholder).
        let schemas = Schemas::load();
        for r in resources::RESOURCES {
            let s = &schemas.defs[&schema_name(r.group, r.version, r.kind)];
            assert!(s["properties"]["metadata"].is_object(), "{}", r.kind);
            assert!(
                !s["description"]
                    .as_str()
                    .unwrap()
                    .contains("no schema available"),
                "{}",
                r.kind
            );
        }
    }
}
