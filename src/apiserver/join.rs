//! The join endpoints nodes use before they have an identity, served beside the API
//! (routed ahead of authentication), as k3s serves `/cacerts` and `/v1-k3s/...`:
//!
//! - `GET /v1-kaji/cacerts`: the cluster CA bundle, unauthenticated (the joining node
//!   checks it against the hash in its token).
//! - `POST /v1-kaji/node-credentials`, body `{"nodeName": "..."}`, authorized by the join
//!   secret as `Authorization: Bearer <secret>` (or the full token) or basic
//!   `node:<secret>`: client certificates signed by the cluster CA for the node's
//!   components (`system:node:<name>` in `system:nodes`, `system:kube-proxy`,
//!   `system:kaji-dns`, `system:kaji-ingress`), the CA bundle and the cluster settings the
//!   node must share with the server (see [`crate::pki::join`]).
//!
//! Node passwords: the request carries the node's password. The server keeps a salted hash
//! of it in the Secret `kube-system/<node>.node-password.kaji` (type
//! `kaji.io/node-password`), written on the node's first join. A later request for the same
//! name with another password is refused (403) while the Node object exists, so a token
//! holder cannot take over a running node's identity; once the Node is deleted the name is
//! free again and the new password replaces the old. A name the server's own node (or any
//! node registered without joining) uses cannot be joined at all.
//!
//! Depends on: `pki`, `api::status`, the [`Registry`] (for the password Secrets and Nodes).
//! Must not depend on: the store.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use serde_json::{Value, json};

use super::handlers::{Body, status_response};
use super::registry::{Registry, Update, WriteOptions};
use crate::api::resources::lookup;
use crate::api::status::Status;
use crate::pki;
use crate::pki::join::{self as proto, CertPair, ClusterSettings, NodeCredentials, Token};

/// Largest accepted credentials request body.
const MAX_BODY: usize = 64 * 1024;

/// Where node password Secrets live.
pub const NODE_PASSWORD_NAMESPACE: &str = "kube-system";
/// The type of node password Secrets.
pub const NODE_PASSWORD_TYPE: &str = "kaji.io/node-password";

/// The name of the Secret holding `node`'s password hash.
pub fn node_password_secret(node: &str) -> String {
    format!("{node}.node-password.kaji")
}

/// What the join endpoints need from the server.
#[derive(Clone)]
pub struct JoinConfig {
    /// The join secret (the part after `server:` in a full token).
    pub secret: String,
    /// The cluster CA certificate (PEM), served and used to sign node certificates.
    pub ca_cert_pem: String,
    /// The cluster CA key (PEM).
    pub ca_key_pem: String,
    /// Settings every node takes from the server.
    pub cluster: ClusterSettings,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Whether `path` is one of the join endpoints (served before authentication).
pub fn is_join_path(path: &str) -> bool {
    path.starts_with("/v1-kaji/")
}

/// Serves a join endpoint; `None` config (joining disabled) answers 404.
pub async fn serve(
    cfg: Option<&JoinConfig>,
    registry: &Registry,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(cfg) = cfg else {
        return status_response(&Status::not_found_path());
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, proto::CACERTS_PATH) => {
            text(StatusCode::OK, cfg.ca_cert_pem.clone())
        }
        (&Method::POST, proto::NODE_CREDENTIALS_PATH) => {
            match credentials(cfg, registry, req).await {
                Ok(r) => r,
                Err(s) => status_response(&s),
            }
        }
        (_, proto::CACERTS_PATH | proto::NODE_CREDENTIALS_PATH) => {
            status_response(&Status::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ))
        }
        _ => status_response(&Status::not_found_path()),
    }
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The secret presented in `Authorization`: a bearer token (bare or full) or basic
/// `node:<secret>`.
fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return Token::parse(token).ok().map(|t| t.secret);
    }
    let b64 = auth.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_user, secret) = decoded.split_once(':')?;
    Some(secret.to_string())
}

/// Checks the join secret; the 401 says what is wrong.
pub fn authorize(cfg: &JoinConfig, headers: &HeaderMap) -> Result<(), Status> {
    match presented_secret(headers) {
        None => Err(Status::new(
            401,
            "Unauthorized",
            "a join token is required (Authorization: Bearer <token>)",
        )),
        Some(s) if proto::constant_time_eq(s.as_bytes(), cfg.secret.as_bytes()) => Ok(()),
        Some(_) => Err(Status::new(
            401,
            "Unauthorized",
            "invalid join token: it does not match this server's token \
             (<data-dir>/server/token on the server)",
        )),
    }
}

async fn credentials(
    cfg: &JoinConfig,
    registry: &Registry,
    req: Request<Incoming>,
) -> Result<Response<Body>, Status> {
    if let Err(s) = authorize(cfg, req.headers()) {
        tracing::warn!("refused node credentials: {}", s.message);
        return Err(s);
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Status::bad_request(format!("reading request body: {e}")))?
        .to_bytes();
    let request: proto::CredentialsRequest = serde_json::from_slice(&body)
        .map_err(|e| Status::bad_request(format!("invalid credentials request: {e}")))?;
    let problems = crate::api::validation::is_dns1123_subdomain(&request.node_name);
    if !problems.is_empty() {
        return Err(Status::bad_request(format!(
            "invalid node name {:?}: {}",
            request.node_name,
            problems.join("; ")
        )));
    }
    let Some(password) = request.node_password.as_deref().filter(|p| !p.is_empty()) else {
        return Err(Status::bad_request(
            "invalid credentials request: nodePassword is required",
        ));
    };
    check_node_password(registry, &request.node_name, password).await?;
    let cfg = cfg.clone();
    let creds = tokio::task::spawn_blocking(move || issue(&cfg, &request.node_name))
        .await
        .map_err(|e| Status::internal(format!("issuing node credentials: {e}")))?
        .map_err(|e| Status::internal(format!("issuing node credentials: {e}")))?;
    tracing::info!(node = %creds.node_name, "issued node credentials");
    let body = serde_json::to_vec(&creds).map_err(|e| Status::internal(e.to_string()))?;
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn server_writes() -> WriteOptions {
    WriteOptions {
        field_manager: Some("kaji-join".into()),
        ..WriteOptions::default()
    }
}

/// Admits `password` for `node`: records it on the node's first join, accepts it when it
/// matches, and refuses another while the Node object exists (see the module docs).
async fn check_node_password(reg: &Registry, node: &str, password: &str) -> Result<(), Status> {
    let secrets =
        lookup("", "v1", "secrets").ok_or_else(|| Status::internal("secrets are not served"))?;
    let nodes =
        lookup("", "v1", "nodes").ok_or_else(|| Status::internal("nodes are not served"))?;
    let name = node_password_secret(node);
    let ns = Some(NODE_PASSWORD_NAMESPACE);
    let node_exists = match reg.get(nodes, None, node).await {
        Ok(_) => true,
        Err(s) if s.code == 404 => false,
        Err(s) => return Err(s),
    };
    let stored = match reg.get(secrets, ns, &name).await {
        Ok(secret) => Some(secret),
        Err(s) if s.code == 404 => None,
        Err(s) => return Err(s),
    };
    let stored_hash = stored.as_ref().and_then(stored_password_hash);
    if stored_hash
        .as_deref()
        .is_some_and(|h| proto::verify_node_password(h, password))
    {
        return Ok(());
    }
    if node_exists {
        tracing::warn!(node, "refused node credentials: node password mismatch");
        return Err(Status::new(
            403,
            "Forbidden",
            format!(
                "node password rejected: node {node:?} is registered and this machine's                  password does not match the one it joined with (another machine may use                  the same name: set a unique --node-name; or delete the Node with                  `kubectl delete node {node}` to free the name)"
            ),
        ));
    }
    let data = json!({"hash": base64::engine::general_purpose::STANDARD
        .encode(proto::hash_node_password(password))});
    let result = match stored {
        None => {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": NODE_PASSWORD_NAMESPACE,
                    "labels": {"kaji.io/node": node}},
                "type": NODE_PASSWORD_TYPE,
                "immutable": false,
                "data": data,
            });
            reg.create(secrets, ns, secret, &server_writes()).await
        }
        Some(mut secret) => {
            // The Node is gone: the name is free and the new password replaces the old.
            secret["data"] = data;
            reg.update(
                secrets,
                ns,
                &name,
                None,
                Update::Replace(&secret),
                &server_writes(),
            )
            .await
        }
    };
    match result {
        Ok(_) => {
            tracing::info!(node, "recorded the node's password");
            Ok(())
        }
        // Another request for the same name won a race: its password stands.
        Err(s) if s.code == 409 => Err(Status::new(
            409,
            "Conflict",
            format!("node {node:?} is joining from another request at the same time; retry"),
        )),
        Err(s) if s.code == 422 => Err(Status::bad_request(format!(
            "invalid node name {node:?}: {}",
            s.message
        ))),
        Err(s) => Err(s),
    }
}

/// The password hash kept in a node password Secret.
fn stored_password_hash(secret: &Value) -> Option<String> {
    let b64 = secret["data"]["hash"].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(raw).ok()
}

/// Issues the credentials of node `node_name`.
pub fn issue(cfg: &JoinConfig, node_name: &str) -> Result<NodeCredentials, pki::Error> {
    let pair = |user: &str, groups: &[&str]| {
        pki::issue_client_cert(&cfg.ca_cert_pem, &cfg.ca_key_pem, user, groups)
            .map(|(cert_pem, key_pem)| CertPair { cert_pem, key_pem })
    };
    Ok(NodeCredentials {
        node_name: node_name.to_string(),
        ca_pem: cfg.ca_cert_pem.clone(),
        node: pair(&proto::node_user(node_name), &[proto::NODES_GROUP])?,
        proxy: pair(proto::PROXY_USER, &[])?,
        dns: pair(proto::DNS_USER, &[])?,
        ingress: pair(proto::INGRESS_USER, &[])?,
        cluster: cfg.cluster.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JoinConfig {
        JoinConfig {
            secret: "s3cret".into(),
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            cluster: ClusterSettings {
                cluster_dns: "10.43.0.10".into(),
                cluster_domain: "cluster.local".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_cidr: "10.42.0.0/16".into(),
                disable: vec![],
                disable_kube_proxy: false,
                disable_network_policy: false,
            },
        }
    }

    #[test]
    fn token_authorization() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let full = Token::full("CA", "s3cret");
        let cases: &[(Option<String>, Option<&str>)] = &[
            (Some("Bearer s3cret".into()), None),
            (Some(format!("Bearer {full}")), None),
            (Some(basic("node:s3cret")), None),
            (None, Some("a join token is required")),
            (Some("Bearer wrong".into()), Some("invalid join token")),
            (Some(basic("node:wrong")), Some("invalid join token")),
            (Some("Basic !!".into()), Some("a join token is required")),
        ];
        for (header_value, want_err) in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = header_value {
                h.insert(header::AUTHORIZATION, v.parse().unwrap());
            }
            match (authorize(&cfg(), &h), want_err) {
                (Ok(()), None) => {}
                (Err(s), Some(w)) => {
                    assert_eq!(s.code, 401);
                    assert!(s.message.contains(w), "{header_value:?}: {}", s.message);
                }
                (got, want) => panic!("{header_value:?}: got {got:?}, want error {want:?}"),
            }
        }
    }

    #[test]
    fn issues_every_identity() {
        let dir = tempfile::tempdir().unwrap();
        let material = pki::ensure(&pki::PkiConfig {
            dir: dir.path().to_path_buf(),
            hostnames: vec!["localhost".into()],
            ips: vec![],
            cluster_domain: "cluster.local".into(),
        })
        .unwrap();
        let mut c = cfg();
        c.ca_cert_pem = material.ca_cert_pem;
        c.ca_key_pem = material.ca_key_pem;
        let creds = issue(&c, "node2").unwrap();
        let ident = |p: &CertPair| {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let der = CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap();
            pki::identity_from_der(der.as_ref()).unwrap()
        };
        assert_eq!(
            ident(&creds.node),
            ("system:node:node2".into(), vec!["system:nodes".to_string()])
        );
        assert_eq!(ident(&creds.proxy).0, "system:kube-proxy");
        assert_eq!(ident(&creds.dns).0, "system:kaji-dns");
        assert_eq!(ident(&creds.ingress).0, "system:kaji-ingress");
        assert_eq!(creds.ca_pem, c.ca_cert_pem);
    }
}
