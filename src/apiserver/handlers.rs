//! HTTP handlers: content negotiation, request decoding, the verbs on resources
//! (get, list, watch, create, update, patch, delete, deletecollection) and their
//! subresources, and the non-resource endpoints (discovery, OpenAPI, health, metrics).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::State;
use super::auth::{Decision, UserInfo, forbidden_message};
use super::cache::{self, CacheEvent, Change, Subscription};
use super::discovery;
use super::metrics::{LatencyLabels, RequestLabels};
use super::registry::{self, DeleteOptions, FieldValidation, ListOptions, Update, WriteOptions};
use super::request::{RequestInfo, resolve};
use super::table;
use super::{eviction, rbac, serviceaccount};
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::Status;

/// Response body: a full buffer or a stream (watches).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest accepted request body (upstream: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn respond(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

/// A `Status` error response.
pub fn status_response(s: &Status) -> Response<Body> {
    let mut r = json_response(s.code, &s.to_json());
    if let Some(secs) = s.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

/// Decoded query parameters.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    /// A boolean parameter as upstream converts query strings: present and not one of
    /// `0`, `f`, `false` (any case). Clients differ: Python's sends `watch=True`.
    fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(|v| {
            !(v == "0" || v.eq_ignore_ascii_case("f") || v.eq_ignore_ascii_case("false"))
        })
    }
}

/// What representation the client wants back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Object,
    Table { include: String },
    PartialMetadata,
}

fn negotiate(headers: &HeaderMap, q: &Query) -> Result<Output, Status> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let include = q.get("includeObject").unwrap_or("Metadata").to_string();
    let mut json_ok = accept.is_empty();
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            return Ok(Output::Table { include });
        }
        if p.contains("as=PartialObjectMetadata") && p.contains("g=meta.k8s.io") {
            return Ok(Output::PartialMetadata);
        }
        let base = p.split(';').next().unwrap_or("");
        if matches!(
            base,
            "application/json" | "*/*" | "application/*" | "application/yaml" | ""
        ) {
            json_ok = true;
        }
    }
    if json_ok {
        Ok(Output::Object)
    } else {
        Err(Status::not_acceptable(
            "only the following media types are accepted: application/json, application/yaml",
        ))
    }
}

async fn read_body(req: Request<Incoming>) -> Result<(HeaderMap, Bytes), Status> {
    /// Oversized bodies are still read (and discarded) up to this size, so that the
    /// client gets the 413 instead of a broken pipe.
    const DRAIN: usize = 64 * 1024 * 1024;
    let (parts, mut body) = req.into_parts();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::bad_request(format!("reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if total > DRAIN {
                break;
            }
        }
    }
    if total > MAX_BODY {
        return Err(Status::too_large(format!(
            "the request body is too large: {total} bytes or more (limit {MAX_BODY})"
        )));
    }
    Ok((parts.headers, buf.freeze()))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parses a JSON or YAML body into a Value (400 on malformed input).
fn parse_body(ct: &str, body: &[u8]) -> Result<Value, Status> {
    match ct {
        "application/json"
        | ""
        | "application/merge-patch+json"
        | "application/json-patch+json"
        | "application/strategic-merge-patch+json" => serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("error decoding request body: {e}"))),
        "application/yaml"
        | "application/apply-patch+yaml"
        | "text/yaml"
        | "application/x-yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| Status::bad_request("the YAML request body is not UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| Status::bad_request(format!("error converting YAML to JSON: {e}")))
        }
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body)
            .map_err(|e| Status::bad_request(format!("error decoding protobuf request body: {e}"))),
        other => Err(Status::unsupported_media_type(other)),
    }
}

fn write_options(q: &Query, headers: &HeaderMap, user: &UserInfo) -> Result<WriteOptions, Status> {
    // Without ?fieldManager the manager is the client's name from its User-Agent, as
    // upstream (`kubectl/v1.33.1 (linux/amd64) ...` → `kubectl`).
    let from_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(|s| s.chars().take(128).collect::<String>())
        .filter(|s| !s.is_empty());
    Ok(WriteOptions {
        dry_run: q.get("dryRun") == Some("All"),
        field_manager: q.get("fieldManager").map(str::to_string).or(from_agent),
        field_validation: FieldValidation::parse(q.get("fieldValidation").unwrap_or(""))?,
        user: Some(user.clone()),
        apply: false,
    })
}

fn list_options(q: &Query) -> Result<ListOptions, Status> {
    let label = match q.get("labelSelector").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            LabelSelector::parse(s)
                .map_err(|e| Status::bad_request(format!("unable to parse requirement: {e}")))?,
        ),
        None => None,
    };
    let field = match q.get("fieldSelector").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            FieldSelector::parse(s)
                .map_err(|e| Status::bad_request(format!("invalid field selector: {e}")))?,
        ),
        None => None,
    };
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| Status::bad_request(format!("invalid limit {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    Ok(ListOptions {
        label,
        field,
        limit,
        continue_token: q.get("continue").map(str::to_string),
        resource_version: q.get("resourceVersion").map(str::to_string),
        resource_version_match: q.get("resourceVersionMatch").map(str::to_string),
    })
}

/// Serves one request for an authenticated (or anonymous) user.
pub async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
    cert_user: Option<UserInfo>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let info = resolve(&method, &path, q.flag("watch"));
    let resp = serve_inner(&state, req, cert_user, &info, &q).await;
    let verb = if info.is_resource {
        info.verb.to_uppercase()
    } else {
        method.as_str().to_string()
    };
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            verb: verb.clone(),
            group: info.group.clone(),
            version: info.version.clone(),
            resource: info.resource.clone(),
            subresource: info.subresource.clone().unwrap_or_default(),
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    if info.verb != "watch" {
        state
            .metrics
            .latency
            .get_or_create(&LatencyLabels {
                verb,
                group: info.group.clone(),
                resource: info.resource.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
    tracing::debug!(%method, %path, code = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

async fn authenticate(
    state: &State,
    headers: &HeaderMap,
    cert_user: Option<UserInfo>,
) -> Result<Option<UserInfo>, Status> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = auth.strip_prefix("Bearer ").map(str::trim)
    {
        if let Some(u) = state.tokens.authenticate(token) {
            return Ok(Some(u));
        }
        return match serviceaccount::authenticate(&state.registry, &state.issuer, token).await {
            Some(u) => Ok(Some(u)),
            None => Err(Status::unauthorized()),
        };
    }
    Ok(cert_user)
}

async fn serve_inner(
    state: &Arc<State>,
    req: Request<Incoming>,
    cert_user: Option<UserInfo>,
    info: &RequestInfo,
    q: &Query,
) -> Response<Body> {
    let path = info.path.as_str();
    // Unauthenticated endpoints.
    match path {
        "/healthz" | "/livez" => return respond(200, "text/plain; charset=utf-8", "ok"),
        "/readyz" => {
            return if state.is_ready() {
                respond(200, "text/plain; charset=utf-8", "ok")
            } else {
                respond(
                    500,
                    "text/plain; charset=utf-8",
                    "[-]store not ready\nreadyz check failed",
                )
            };
        }
        "/version" => return json_response(200, &discovery::version()),
        p if super::join::is_join_path(p) => {
            return super::join::serve(state.join.as_ref(), &state.registry, req).await;
        }
        _ => {}
    }
    let user = match authenticate(state, req.headers(), cert_user).await {
        Ok(Some(u)) => u,
        Ok(None) | Err(_) => return status_response(&Status::unauthorized()),
    };
    let user = match rbac::impersonate_fresh(&state.registry, user, req.headers()).await {
        Ok(u) => u,
        Err(s) => return status_response(&s),
    };
    if let Decision::Deny(_) = state
        .registry
        .rbac()
        .authorize_fresh(&state.registry, &user, info)
        .await
    {
        return status_response(&Status::forbidden(forbidden_message(&user, info)));
    }
    if !info.is_resource {
        return non_resource(state, &req, info, q).await;
    }
    if !state.is_ready() {
        return status_response(&Status::unavailable("the API server is starting"));
    }
    if let Some(r) = super::metrics_api::serve(state, &req, info).await {
        return r;
    }
    let Some(ri) = lookup(&info.group, &info.version, &info.resource) else {
        return status_response(&Status::not_found_path());
    };
    match resource(state, req, info, ri, q, &user).await {
        Ok(r) => r,
        Err(s) => status_response(&s),
    }
}

async fn non_resource(
    state: &Arc<State>,
    req: &Request<Incoming>,
    info: &RequestInfo,
    q: &Query,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status_response(&Status::method_not_allowed(
            "the server does not allow this method on the requested resource".to_string(),
        ));
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = info.path.trim_end_matches('/');
    let aggregated = discovery::aggregated_version(accept);
    if let Some(doc) = super::metrics_api::discovery(state, path, aggregated) {
        return match aggregated.filter(|_| path == "/apis") {
            Some(v) => respond(
                200,
                &discovery::aggregated_content_type(v),
                serde_json::to_vec(&doc).unwrap_or_default(),
            ),
            None => json_response(200, &doc),
        };
    }
    match path {
        "/api" | "/apis" => {
            let core = path == "/api";
            if let Some(v) = discovery::aggregated_version(accept) {
                let doc = discovery::aggregated(core, v);
                return respond(
                    200,
                    &discovery::aggregated_content_type(v),
                    serde_json::to_vec(&doc).unwrap_or_default(),
                );
            }
            let doc = if core {
                discovery::api_versions(&state.server_address)
            } else {
                discovery::api_group_list()
            };
            json_response(200, &doc)
        }
        "/.well-known/openid-configuration" | "/openid/v1/jwks" => {
            let doc = if path.ends_with("jwks") {
                serviceaccount::jwks(&state.issuer)
            } else {
                serviceaccount::openid_configuration(&state.issuer)
            };
            match doc {
                Some(d) => json_response(200, &d),
                None => status_response(&Status::not_found_path()),
            }
        }
        "/metrics" => respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.encode(),
        ),
        "/openapi/v2" | "/swagger-2.0.0.pb-v1" => {
            if accept.contains("protobuf") || path == "/swagger-2.0.0.pb-v1" {
                respond(
                    200,
                    "application/octet-stream",
                    Bytes::copy_from_slice(state.openapi.v2_protobuf()),
                )
            } else {
                respond(
                    200,
                    "application/json",
                    Bytes::copy_from_slice(state.openapi.v2_json()),
                )
            }
        }
        "/openapi/v3" => respond(
            200,
            "application/json",
            Bytes::copy_from_slice(state.openapi.v3_index()),
        ),
        _ => {
            if let Some(rest) = path.strip_prefix("/openapi/v3/") {
                return match state.openapi.v3_document(rest) {
                    Some((doc, hash)) => {
                        let mut r = respond(200, "application/json", Bytes::copy_from_slice(doc));
                        if let Ok(v) = HeaderValue::from_str(&format!("\"{hash}\"")) {
                            r.headers_mut().insert(header::ETAG, v);
                        }
                        if q.get("hash").is_some() {
                            r.headers_mut().insert(
                                header::CACHE_CONTROL,
                                HeaderValue::from_static("public, immutable"),
                            );
                        }
                        r
                    }
                    None => status_response(&Status::not_found_path()),
                };
            }
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let doc = match parts.as_slice() {
                ["api", v] => discovery::api_resource_list("", v),
                ["apis", g] => discovery::api_group(g),
                ["apis", g, v] => discovery::api_resource_list(g, v),
                _ => None,
            };
            match doc {
                Some(d) => json_response(200, &d),
                None => status_response(&Status::not_found_path()),
            }
        }
    }
}

fn list_body(ri: &ResourceInfo, page: &registry::ListPage) -> Value {
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
    }
    json!({"kind": ri.list_kind(), "apiVersion": ri.api_version(), "metadata": meta, "items": page.items})
}

fn render_one(ri: &ResourceInfo, obj: &Value, out: &Output) -> Value {
    match out {
        Output::Object => obj.clone(),
        Output::PartialMetadata => table::partial_metadata(obj),
        Output::Table { include } => {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            table::table(ri, std::slice::from_ref(obj), &rv, None, include, true)
        }
    }
}

async fn resource(
    state: &Arc<State>,
    req: Request<Incoming>,
    info: &RequestInfo,
    ri: &'static ResourceInfo,
    q: &Query,
    user: &UserInfo,
) -> Result<Response<Body>, Status> {
    if super::proxy::handles(ri, info) {
        return super::proxy::serve(state, req, info, ri).await;
    }
    let output = negotiate(req.headers(), q)?;
    let ns = info.namespace.as_deref();
    if ri.namespaced && ns.is_none() && !matches!(info.verb.as_str(), "list" | "watch") {
        return Err(Status::method_not_allowed(format!(
            "the server does not allow this method on the requested resource (a namespace is required for {})",
            ri.plural
        )));
    }
    if !ri.namespaced && info.namespace.is_some() && ri.plural != "namespaces" {
        return Err(Status::not_found_path());
    }
    let ns = if ri.namespaced { ns } else { None };
    let sub = info.subresource.as_deref();
    if let Some(s) = sub
        && ri.subresource(s).is_none()
    {
        return Err(Status::not_found_path());
    }
    let reg = &state.registry;
    if !ri.is_stored() {
        // Computed, create-only resources: access reviews and token reviews.
        if info.verb != "create" || info.name.is_some() {
            return Err(Status::method_not_allowed(format!(
                "{} only supports create",
                ri.group_resource()
            )));
        }
        let (headers, body) = read_body(req).await?;
        let obj = parse_body(&content_type(&headers), &body)?;
        let (obj, _) = reg.decode_object(ri, obj, FieldValidation::Ignore)?;
        let out = match ri.plural {
            "tokenreviews" => serviceaccount::token_review(reg, &state.issuer, obj).await?,
            _ => rbac::review(reg, ri, ns, user, obj).await?,
        };
        return Ok(json_response(201, &out));
    }
    match (info.verb.as_str(), sub) {
        ("create", Some("eviction")) | ("create", Some("token")) => {
            let name = info.name.clone().unwrap_or_default();
            let (headers, body) = read_body(req).await?;
            let obj = parse_body(&content_type(&headers), &body)?;
            let out = if sub == Some("eviction") {
                eviction::evict(reg, ns.unwrap_or_default(), &name, obj, Some(user)).await?
            } else {
                serviceaccount::token_request(
                    reg,
                    &state.issuer,
                    ns.unwrap_or_default(),
                    &name,
                    obj,
                )
                .await?
            };
            Ok(json_response(201, &out))
        }
        ("get", None) | ("get", Some("status")) => {
            let name = info.name.as_deref().unwrap_or("");
            let obj = reg.get(ri, ns, name).await?;
            Ok(json_response(200, &render_one(ri, &obj, &output)))
        }
        ("get", Some("scale")) => {
            let name = info.name.as_deref().unwrap_or("");
            let obj = reg.get(ri, ns, name).await?;
            Ok(json_response(200, &to_scale(&obj)))
        }
        ("list", None) => {
            let opts = list_options(q)?;
            let page = reg.list(ri, ns, &opts).await?;
            let body = match &output {
                Output::Object => list_body(ri, &page),
                Output::PartialMetadata => {
                    let mut b = list_body(ri, &page);
                    b["kind"] = json!("PartialObjectMetadataList");
                    b["apiVersion"] = json!("meta.k8s.io/v1");
                    b["items"] =
                        Value::Array(page.items.iter().map(table::partial_metadata).collect());
                    b
                }
                Output::Table { include } => table::table(
                    ri,
                    &page.items,
                    &page.revision.to_string(),
                    page.continue_token.as_deref(),
                    include,
                    true,
                ),
            };
            Ok(json_response(200, &body))
        }
        ("watch", None) => watch(state, ri, ns, info.name.as_deref(), q, output).await,
        ("create", None) => {
            let opts = write_options(q, req.headers(), user)?;
            let (headers, body) = read_body(req).await?;
            let obj = parse_body(&content_type(&headers), &body)?;
            let (obj, warnings) = reg.decode_object(ri, obj, opts.field_validation)?;
            let written = reg.create(ri, ns, obj, &opts).await?;
            Ok(with_warnings(
                json_response(201, &render_one(ri, &written.object, &output)),
                &warnings,
            ))
        }
        ("create", Some("binding")) => {
            let name = info.name.clone().unwrap_or_default();
            let (headers, body) = read_body(req).await?;
            let binding = parse_body(&content_type(&headers), &body)?;
            bind_pod(
                state,
                ri,
                ns,
                &name,
                &binding,
                &write_options(q, &headers, user)?,
            )
            .await
        }
        ("update", None) | ("update", Some("status")) | ("update", Some("finalize")) => {
            let name = info.name.clone().unwrap_or_default();
            let opts = write_options(q, req.headers(), user)?;
            let (headers, body) = read_body(req).await?;
            let obj = parse_body(&content_type(&headers), &body)?;
            let (obj, warnings) = reg.decode_object(ri, obj, opts.field_validation)?;
            let written = reg
                .update(ri, ns, &name, sub, Update::Replace(&obj), &opts)
                .await?;
            Ok(with_warnings(
                json_response(200, &render_one(ri, &written.object, &output)),
                &warnings,
            ))
        }
        ("update", Some("scale")) | ("patch", Some("scale")) => {
            let name = info.name.clone().unwrap_or_default();
            let opts = write_options(q, req.headers(), user)?;
            let patch_kind = content_type(req.headers());
            let is_patch = info.verb == "patch";
            let (headers, body) = read_body(req).await?;
            let input = parse_body(&content_type(&headers), &body)?;
            let written = reg
                .update(ri, ns, &name, None, Update::Mutate(Box::new(move |cur: &Value| {
                    let scale = if is_patch {
                        apply_patch(&patch_kind, "autoscaling", "Scale", &to_scale(cur), &input)?
                    } else {
                        input.clone()
                    };
                    let replicas = scale["spec"]["replicas"].as_i64().ok_or_else(|| {
                        Status::invalid("autoscaling", "Scale", &name_of(cur), vec![crate::api::status::Cause {
                            reason: "FieldValueRequired".into(), message: "Required value".into(), field: "spec.replicas".into(),
                        }])
                    })?;
                    if replicas < 0 {
                        return Err(Status::invalid("autoscaling", "Scale", &name_of(cur), vec![crate::api::status::Cause {
                            reason: "FieldValueInvalid".into(),
                            message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                            field: "spec.replicas".into(),
                        }]));
                    }
                    if let Some(rv) = scale["metadata"]["resourceVersion"].as_str()
                        && !rv.is_empty() && Some(rv) != cur["metadata"]["resourceVersion"].as_str() {
                            return Err(Status::conflict(ri.group, ri.plural, &name_of(cur), "the object has been modified; please apply your changes to the latest version and try again"));
                        }
                    let mut next = cur.clone();
                    next["spec"]["replicas"] = json!(replicas);
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                    Ok((next, Vec::new()))
                })), &opts)
                .await?;
            Ok(json_response(200, &to_scale(&written.object)))
        }
        ("patch", None) | ("patch", Some("status")) => {
            let name = info.name.clone().unwrap_or_default();
            let opts = write_options(q, req.headers(), user)?;
            let patch_kind = content_type(req.headers());
            if patch_kind == "application/apply-patch+yaml" {
                let (headers, body) = read_body(req).await?;
                let applied = parse_body(&content_type(&headers), &body)?;
                // Validated like any body, but applied as sent: the normalised form carries
                // typed defaults (`selector: {}`, ...) the applier would come to own.
                let (_, warnings) =
                    reg.decode_object(ri, applied.clone(), opts.field_validation)?;
                let written = reg
                    .apply(ri, ns, &name, sub, &applied, q.flag("force"), &opts)
                    .await?;
                let code = if written.created { 201 } else { 200 };
                return Ok(with_warnings(
                    json_response(code, &render_one(ri, &written.object, &output)),
                    &warnings,
                ));
            }
            let (headers, body) = read_body(req).await?;
            let patch = parse_body(&content_type(&headers), &body)?;
            let fv = opts.field_validation;
            let regc = state.clone();
            let written = reg
                .update(
                    ri,
                    ns,
                    &name,
                    sub,
                    Update::Mutate(Box::new(move |cur: &Value| {
                        let mut patched = apply_patch(&patch_kind, ri.group, ri.kind, cur, &patch)?;
                        // A patch without a resourceVersion is unconditional.
                        if patch["metadata"]["resourceVersion"].is_null()
                            && let Some(m) = patched["metadata"].as_object_mut()
                        {
                            m.remove("resourceVersion");
                        }
                        regc.registry.decode_object(ri, patched, fv)
                    })),
                    &opts,
                )
                .await?;
            Ok(with_warnings(
                json_response(200, &render_one(ri, &written.object, &output)),
                &written.warnings,
            ))
        }
        ("delete", None) => {
            let name = info.name.clone().unwrap_or_default();
            let (headers, body) = read_body(req).await?;
            let mut opts = delete_options(q, &content_type(&headers), &body)?;
            opts.user = Some(user.clone());
            let (obj, gone) = reg.delete(ri, ns, &name, &opts).await?;
            let _ = gone;
            Ok(json_response(200, &obj))
        }
        ("deletecollection", None) => {
            let lopts = list_options(q)?;
            let (headers, body) = read_body(req).await?;
            let mut opts = delete_options(q, &content_type(&headers), &body)?;
            opts.user = Some(user.clone());
            let page = reg.delete_collection(ri, ns, &lopts, &opts).await?;
            Ok(json_response(200, &list_body(ri, &page)))
        }
        _ => Err(Status::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

/// The `autoscaling/v1 Scale` view of a scalable object.
fn to_scale(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = {
        let sel = &obj["spec"]["selector"];
        let mut parts = Vec::new();
        if let Some(ml) = sel["matchLabels"].as_object() {
            parts.extend(
                ml.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))),
            );
        } else if let Some(ml) = sel.as_object() {
            parts.extend(
                ml.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))),
            );
        }
        parts.join(",")
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// Applies a patch of the given content type to `cur`.
pub fn apply_patch(
    content_type: &str,
    group: &str,
    kind: &str,
    cur: &Value,
    patch: &Value,
) -> Result<Value, Status> {
    match content_type {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = cur.clone();
            json_patch::patch(&mut doc, &p).map_err(|e| {
                let mut s = Status::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                );
                s.code = 422;
                s
            })?;
            Ok(doc)
        }
        "application/merge-patch+json" => {
            if !patch.is_object() {
                return Err(Status::bad_request("the merge patch must be a JSON object"));
            }
            let mut doc = cur.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        "application/strategic-merge-patch+json" => {
            if !patch.is_object() {
                return Err(Status::bad_request(
                    "the strategic merge patch must be a JSON object",
                ));
            }
            super::strategic::apply(group, kind, cur, patch)
                .map_err(|e| Status::new(422, "Invalid", e.to_string()))
        }
        other => Err(Status::unsupported_media_type(other)),
    }
}

fn delete_options(q: &Query, ct: &str, body: &[u8]) -> Result<DeleteOptions, Status> {
    let mut opts = DeleteOptions {
        grace_period: q.get("gracePeriodSeconds").and_then(|s| s.parse().ok()),
        propagation: q.get("propagationPolicy").map(str::to_string),
        dry_run: q.get("dryRun") == Some("All"),
        ..Default::default()
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = parse_body(ct, body)?;
        if let Some(g) = v["gracePeriodSeconds"].as_i64() {
            opts.grace_period = Some(g);
        }
        if let Some(p) = v["propagationPolicy"].as_str() {
            opts.propagation = Some(p.to_string());
        }
        if let Some(u) = v["preconditions"]["uid"].as_str() {
            opts.uid = Some(u.to_string());
        }
        if let Some(r) = v["preconditions"]["resourceVersion"].as_str() {
            opts.resource_version = Some(r.to_string());
        }
        if v["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            opts.dry_run = true;
        }
    }
    if let Some(p) = &opts.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(Status::bad_request(format!(
            "propagationPolicy {p:?} is not supported: use Orphan, Background or Foreground"
        )));
    }
    Ok(opts)
}

async fn bind_pod(
    state: &Arc<State>,
    ri: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    binding: &Value,
    opts: &WriteOptions,
) -> Result<Response<Body>, Status> {
    let target = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if target.is_empty() {
        return Err(Status::invalid(
            "",
            "Binding",
            name,
            vec![crate::api::status::Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field: "target.name".into(),
            }],
        ));
    }
    let pod_name = name.to_string();
    state
        .registry
        .update(
            ri,
            ns,
            name,
            Some("binding"),
            Update::Mutate(Box::new(move |cur: &Value| {
                let current = cur["spec"]["nodeName"].as_str().unwrap_or("");
                if !current.is_empty() {
                    return Err(Status::conflict(
                        "",
                        "pods",
                        &pod_name,
                        &format!("pod {pod_name} is already assigned to node \"{current}\""),
                    ));
                }
                if !cur["metadata"]["deletionTimestamp"].is_null() {
                    return Err(Status::conflict(
                        "",
                        "pods",
                        &pod_name,
                        "pod is being deleted, cannot be assigned to a host",
                    ));
                }
                let mut next = cur.clone();
                next["spec"]["nodeName"] = json!(target);
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                Ok((next, Vec::new()))
            })),
            opts,
        )
        .await?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// How a watch event is rendered.
struct WatchEncoder {
    ri: &'static ResourceInfo,
    output: Output,
    sent_columns: bool,
}

impl WatchEncoder {
    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        let object = match &self.output {
            Output::Object => registry::convert::from_storage(self.ri, obj),
            Output::PartialMetadata => table::partial_metadata(obj),
            Output::Table { include } => {
                let served = registry::convert::from_storage(self.ri, obj);
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let t = table::table(
                    self.ri,
                    std::slice::from_ref(&served),
                    &rv,
                    None,
                    include,
                    !self.sent_columns,
                );
                self.sent_columns = true;
                t
            }
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, revision: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match &self.output {
            Output::Table { .. } => {
                json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": [], "columnDefinitions": null})
            }
            _ => {
                json!({"kind": self.ri.kind, "apiVersion": self.ri.api_version(), "metadata": meta})
            }
        };
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn error(status: &Status) -> Bytes {
        let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": status.to_json()}))
            .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Filters one change through the selectors, giving the event type to send, if any.
fn classify(
    ri: &ResourceInfo,
    ev: &CacheEvent,
    label: Option<&LabelSelector>,
    field: Option<&FieldSelector>,
) -> Option<&'static str> {
    let now = registry::matches(ri, &ev.object, label, field);
    let before = ev
        .prev
        .as_ref()
        .map(|p| registry::matches(ri, p, label, field));
    match ev.change {
        Change::Delete => (now || before == Some(true)).then_some("DELETED"),
        Change::Put => match (before, now) {
            (None, true) | (Some(false), true) => Some("ADDED"),
            (Some(true), true) => Some("MODIFIED"),
            (Some(true), false) => Some("DELETED"),
            _ => None,
        },
    }
}

async fn watch(
    state: &Arc<State>,
    ri: &'static ResourceInfo,
    ns: Option<&str>,
    name: Option<&str>,
    q: &Query,
    output: Output,
) -> Result<Response<Body>, Status> {
    let mut opts = list_options(q)?;
    if let Some(n) = name {
        let term =
            FieldSelector::parse(&format!("metadata.name={n}")).map_err(Status::bad_request)?;
        opts.field = Some(term);
    }
    if let Some(f) = &opts.field {
        registry::check_field_selector(ri, f)?;
    }
    let sri = registry::storage_info(ri);
    let prefix = match name {
        Some(n) => registry::key(sri, ns, n),
        None => registry::list_prefix(sri, ns),
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv = opts.resource_version.clone().unwrap_or_default();
    let cache = state.registry.cache().clone();

    enum Source {
        Snapshot(Vec<cache::Entry>, u64, broadcast::Receiver<Arc<CacheEvent>>),
        Resume(Subscription, u64),
    }
    let source = if rv.is_empty() || rv == "0" || send_initial {
        if !rv.is_empty() && rv != "0" {
            let want = rv
                .parse::<u64>()
                .map_err(|_| Status::bad_request(format!("invalid resource version {rv:?}")))?;
            cache.wait_for(want, Duration::from_secs(3)).await;
        } else if rv.is_empty() {
            cache
                .sync()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let (items, rev, live) = cache.snapshot_and_subscribe(&prefix).await;
        Source::Snapshot(items, rev, live)
    } else {
        let after = rv
            .parse::<u64>()
            .map_err(|_| Status::bad_request(format!("invalid resource version {rv:?}")))?;
        match cache.subscribe(&prefix, after).await {
            Ok(sub) => Source::Resume(sub, after),
            Err(crate::store::Error::Compacted { .. }) => {
                let (tx, rx) = mpsc::channel::<Bytes>(1);
                let _ = tx.try_send(WatchEncoder::error(&Status::gone(format!(
                    "too old resource version: {after} ({})",
                    cache.revision()
                ))));
                drop(tx);
                return Ok(stream_response(rx));
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let shutdown = state.shutdown.clone();
    let metrics_watches = state.metrics.watches.clone();
    let label = opts.label.clone();
    let field = opts.field.clone();
    let prefix_owned = prefix.clone();
    tokio::spawn(async move {
        metrics_watches.inc();
        let mut enc = WatchEncoder {
            ri,
            output,
            sent_columns: false,
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark_tick = tokio::time::interval(Duration::from_secs(60));
        bookmark_tick.tick().await;
        let matches_key = |k: &str| k.starts_with(&prefix_owned);
        let mut last_rev;
        // Phase 1: initial state or backlog.
        enum Live {
            Cache(broadcast::Receiver<Arc<CacheEvent>>),
            Store(crate::store::WatchStream),
        }
        let mut live = match source {
            Source::Snapshot(items, rev, live) => {
                for e in items {
                    if registry::matches(ri, &e.object, label.as_ref(), field.as_ref())
                        && tx.send(enc.event("ADDED", &e.object)).await.is_err()
                    {
                        metrics_watches.dec();
                        return;
                    }
                }
                last_rev = rev;
                if send_initial && tx.send(enc.bookmark(rev, true)).await.is_err() {
                    metrics_watches.dec();
                    return;
                }
                Live::Cache(live)
            }
            Source::Resume(Subscription::Cache { backlog, live }, after) => {
                last_rev = after;
                for ev in backlog {
                    if let Some(t) = classify(ri, &ev, label.as_ref(), field.as_ref())
                        && tx.send(enc.event(t, &ev.object)).await.is_err()
                    {
                        metrics_watches.dec();
                        return;
                    }
                    last_rev = ev.revision;
                }
                Live::Cache(live)
            }
            Source::Resume(Subscription::Store(stream), after) => {
                last_rev = after;
                Live::Store(stream)
            }
        };
        loop {
            let ev: Arc<CacheEvent> = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                _ = bookmark_tick.tick() => {
                    if bookmarks && tx.send(enc.bookmark(last_rev, false)).await.is_err() {
                        break;
                    }
                    continue;
                }
                next = async {
                    match &mut live {
                        Live::Cache(rx) => match rx.recv().await {
                            Ok(ev) => Some(Ok(ev)),
                            Err(broadcast::error::RecvError::Lagged(_)) => Some(Err(())),
                            Err(broadcast::error::RecvError::Closed) => None,
                        },
                        Live::Store(s) => {
                            use futures::StreamExt;
                            match s.next().await {
                                Some(Ok(e)) => cache::from_store_event(&e).ok().map(|c| Ok(Arc::new(c))),
                                Some(Err(_)) => Some(Err(())),
                                None => None,
                            }
                        }
                    }
                } => match next {
                    Some(Ok(ev)) => ev,
                    Some(Err(())) => {
                        let _ = tx.send(WatchEncoder::error(&Status::gone("too old resource version: the watch fell behind"))).await;
                        break;
                    }
                    None => break,
                },
            };
            if ev.revision <= last_rev || !matches_key(&ev.key) {
                if ev.revision > last_rev {
                    last_rev = ev.revision;
                }
                continue;
            }
            last_rev = ev.revision;
            if let Some(t) = classify(ri, &ev, label.as_ref(), field.as_ref())
                && tx.send(enc.event(t, &ev.object)).await.is_err()
            {
                break;
            }
        }
        metrics_watches.dec();
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=5",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert!(!q.flag("allowWatchBookmarks"));
        for (v, want) in [
            ("True", true),
            ("true", true),
            ("", true),
            ("FALSE", false),
            ("0", false),
            ("f", false),
        ] {
            let q = Query::parse(Some(&format!("watch={v}")));
            assert_eq!(q.flag("watch"), want, "{v:?}");
        }
        assert_eq!(Query::parse(Some("x=%zz%4")).get("x"), Some("%zz%4"));
    }

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "d", "resourceVersion": "7"},
                       "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let s = to_scale(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn patches() {
        let cur = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1, 2]}});
        let merged = apply_patch(
            "application/merge-patch+json",
            "",
            "ConfigMap",
            &cur,
            &json!({"metadata": {"labels": {"a": null, "b": "2"}}}),
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"b": "2"}));
        let jp = apply_patch("application/json-patch+json", "", "ConfigMap", &cur, &json!([{"op": "test", "path": "/spec/x/0", "value": 1}, {"op": "replace", "path": "/spec/x/1", "value": 3}])).unwrap();
        assert_eq!(jp["spec"]["x"], json!([1, 3]));
        let failed = apply_patch(
            "application/json-patch+json",
            "",
            "ConfigMap",
            &cur,
            &json!([{"op": "test", "path": "/spec/x/0", "value": 9}]),
        );
        assert_eq!(failed.unwrap_err().code, 422);
        assert_eq!(
            apply_patch("text/plain", "", "ConfigMap", &cur, &json!({}))
                .unwrap_err()
                .code,
            415
        );
    }
}
