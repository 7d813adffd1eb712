//! Service account tokens in upstream's bound-token design: the API server signs
//! short-lived JWTs (ES256, compact JWS) for a ServiceAccount, optionally bound to a Pod,
//! Secret or Node, and accepts them back as bearer tokens as long as the account and the
//! bound object still exist with the same uid. (Legacy Secret-based tokens are not issued
//! or accepted.)
//!
//! Serves `POST .../serviceaccounts/{name}/token` (TokenRequest),
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` (TokenReview), the bearer-token
//! authenticator, and the OIDC discovery documents (`/.well-known/openid-configuration`,
//! `/openid/v1/jwks`) that let other parties verify the tokens.
//!
//! Submodules: [`jws`] (ES256 compact JWS and key files over `ring`), [`claims`] (the
//! token's claims and their pure validation). Depends on `api` (resource table, Status)
//! and the registry for reads; must not write to the store.

pub mod claims;
pub mod jws;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use self::claims::{ClaimError, Claims, KubernetesClaim, ObjectRef};
use super::auth::UserInfo;
use super::registry::Registry;
use crate::api::ResourceInfo;
use crate::api::resources::lookup;
use crate::api::status::{Cause, Status};

/// The signing key's file name in the key directory (`service-account.pub` beside it).
pub const KEY_FILE: &str = "service-account.key";

/// TokenRequest's default lifetime (seconds).
pub const DEFAULT_EXPIRATION_SECS: i64 = 3600;

/// The shortest lifetime a TokenRequest may ask for (seconds).
pub const MIN_EXPIRATION_SECS: i64 = 600;

/// The lifetime the kubelet (and our admission-injected projected volume) requests; pod
/// bound tokens asking for exactly this are issued for [`EXTENDED_EXPIRATION_SECS`] with a
/// `warnafter` claim, as upstream's `--service-account-extend-token-expiration`.
pub const WARN_ONLY_EXPIRATION_SECS: i64 = 3607;

/// The extended lifetime of kubelet-requested pod tokens (one year).
pub const EXTENDED_EXPIRATION_SECS: i64 = 365 * 24 * 3600;

/// How long after its deletion timestamp a bound object still validates tokens.
pub const DELETION_GRACE_SECS: i64 = 60;

/// `user.extra` keys of an authenticated service account token.
pub mod extra {
    /// The bound pod's name.
    pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
    /// The bound pod's uid.
    pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
    /// The bound (or pod's) node name.
    pub const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
    /// The bound (or pod's) node uid.
    pub const NODE_UID: &str = "authentication.kubernetes.io/node-uid";
    /// `JTI=<jti>` of the token.
    pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWS we signed.
    #[error("invalid bearer token, {0}")]
    Jws(#[from] jws::Error),
    /// The payload is not service account claims.
    #[error("invalid bearer token, malformed claims: {0}")]
    Payload(String),
    /// The claims fail validation.
    #[error("invalid bearer token, {0}")]
    Claims(#[from] ClaimError),
    /// The service account or bound object is gone or was replaced.
    #[error("invalid bearer token, {0}")]
    Stale(String),
    /// Looking up an object failed.
    #[error("looking up {what}: {message}")]
    Lookup {
        /// What was looked up.
        what: String,
        /// The failure.
        message: String,
    },
}

/// Issues and verifies service account tokens.
#[derive(Debug)]
pub struct TokenIssuer {
    key: jws::SigningKey,
    issuer: String,
    api_audiences: Vec<String>,
}

/// A successfully authenticated token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The service account user (its `extra` filled as below).
    pub user: UserInfo,
    /// The user's extra attributes (pod, node, credential id).
    pub extra: BTreeMap<String, Vec<String>>,
    /// The token's audiences that were asked for.
    pub audiences: Vec<String>,
}

impl TokenIssuer {
    /// Loads the signing key from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path, issuer_url: &str) -> Result<TokenIssuer, Status> {
        let (key, created) = jws::SigningKey::load_or_create(dir, KEY_FILE)
            .map_err(|e| Status::internal(format!("service account signing key: {e}")))?;
        if created {
            tracing::info!(dir = %dir.display(), kid = key.kid(), "created service account signing key");
        }
        Ok(TokenIssuer::new(key, issuer_url))
    }

    /// An issuer over an existing key; the API audience is the issuer URL.
    pub fn new(key: jws::SigningKey, issuer_url: &str) -> TokenIssuer {
        TokenIssuer {
            key,
            issuer: issuer_url.to_string(),
            api_audiences: vec![issuer_url.to_string()],
        }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API server itself accepts.
    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    /// The signing key's id.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Signs claims into a compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String, Status> {
        let payload = serde_json::to_value(claims).map_err(|e| Status::internal(e.to_string()))?;
        self.key
            .sign(&payload)
            .map_err(|e| Status::internal(format!("signing service account token: {e}")))
    }

    /// Checks that `token` is ours (issuer, then signature) and decodes its claims; the
    /// time window, audiences and referenced objects are not checked here.
    pub fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        let unverified = jws::peek_payload(token)?;
        let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss != self.issuer {
            return Err(ClaimError::Issuer(iss.to_string()).into());
        }
        let payload = self.key.verify(token)?;
        serde_json::from_value(payload).map_err(|e| TokenError::Payload(e.to_string()))
    }
}

fn core(plural: &str) -> Result<&'static ResourceInfo, Status> {
    lookup("", "v1", plural).ok_or_else(|| Status::internal(format!("no resource {plural}")))
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an object's deletion began longer than the grace ago.
fn deleted_past_grace(obj: &Value, now: i64) -> bool {
    obj["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .is_some_and(|ts| ts.as_second() < now - DELETION_GRACE_SECS)
}

/// Reads the object a claim refers to and checks it is the same object (uid) and not
/// deleted past the grace period.
async fn check_ref(
    reg: &Registry,
    plural: &str,
    what: &str,
    ns: Option<&str>,
    r: &ObjectRef,
    now: i64,
) -> Result<Value, TokenError> {
    let lookup_err = |s: Status| TokenError::Lookup {
        what: format!("{what} {}", r.name),
        message: s.message,
    };
    let ri = core(plural).map_err(lookup_err)?;
    let obj = match reg.get(ri, ns, &r.name).await {
        Ok(o) => o,
        Err(s) if s.code == 404 => {
            return Err(TokenError::Stale(format!(
                "{plural} {:?} not found",
                r.name
            )));
        }
        Err(s) => return Err(lookup_err(s)),
    };
    let uid = meta(&obj, "uid");
    if uid != r.uid {
        return Err(TokenError::Stale(format!(
            "{what} UID ({uid}) does not match claim ({})",
            r.uid
        )));
    }
    if deleted_past_grace(&obj, now) {
        let name = match ns {
            Some(ns) => format!("{ns}/{}", r.name),
            None => r.name.clone(),
        };
        return Err(TokenError::Stale(format!("{what} {name} has been deleted")));
    }
    Ok(obj)
}

/// Verifies a token for `audiences` and checks that its service account and bound
/// object still exist: the whole bearer-token and TokenReview path.
pub async fn verify(
    reg: &Registry,
    issuer: &TokenIssuer,
    token: &str,
    audiences: &[String],
) -> Result<Authenticated, TokenError> {
    let claims = issuer.decode(token)?;
    let now = now_secs();
    let audiences = claims.validate(now, &issuer.issuer, audiences)?;
    let k = &claims.kubernetes;
    let ns = Some(k.namespace.as_str());
    check_ref(
        reg,
        "serviceaccounts",
        "service account",
        ns,
        &k.serviceaccount,
        now,
    )
    .await?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(pod) = &k.pod {
        check_ref(reg, "pods", "pod", ns, pod, now).await?;
        extra.insert(extra::POD_NAME.into(), vec![pod.name.clone()]);
        extra.insert(extra::POD_UID.into(), vec![pod.uid.clone()]);
    } else if let Some(secret) = &k.secret {
        check_ref(reg, "secrets", "secret", ns, secret, now).await?;
    } else if let Some(node) = &k.node {
        check_ref(reg, "nodes", "node", None, node, now).await?;
    }
    if let Some(node) = &k.node {
        extra.insert(extra::NODE_NAME.into(), vec![node.name.clone()]);
        if !node.uid.is_empty() {
            extra.insert(extra::NODE_UID.into(), vec![node.uid.clone()]);
        }
    }
    if !claims.jti.is_empty() {
        extra.insert(
            extra::CREDENTIAL_ID.into(),
            vec![format!("JTI={}", claims.jti)],
        );
    }
    let mut user = UserInfo::new(
        claims::username(&k.namespace, &k.serviceaccount.name),
        k.serviceaccount.uid.clone(),
        vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", k.namespace),
        ],
    );
    user.extra = extra.clone();
    Ok(Authenticated {
        user,
        extra,
        audiences,
    })
}

fn invalid_expiration(name: &str, secs: &Value, message: &str) -> Status {
    Status::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {secs}: {message}"),
            field: "spec.expirationSeconds".into(),
        }],
    )
}

/// `POST .../serviceaccounts/{name}/token`.
pub async fn token_request(
    reg: &Registry,
    issuer: &TokenIssuer,
    namespace: &str,
    name: &str,
    body: Value,
) -> Result<Value, Status> {
    if !body.is_object() {
        return Err(Status::bad_request(
            "the body of the request is not a TokenRequest object",
        ));
    }
    let spec = &body["spec"];
    let mut audiences = str_list(&spec["audiences"]);
    if audiences.is_empty() {
        audiences = issuer.api_audiences.clone();
    }
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECS,
        v => v.as_i64().ok_or_else(|| {
            Status::bad_request(format!(
                "spec.expirationSeconds: expected an integer, got {v}"
            ))
        })?,
    };
    if expiration < MIN_EXPIRATION_SECS {
        return Err(invalid_expiration(
            name,
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > 1 << 32 {
        return Err(invalid_expiration(
            name,
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let sa = reg
        .get(core("serviceaccounts")?, Some(namespace), name)
        .await?;
    let mut kc = KubernetesClaim {
        namespace: namespace.to_string(),
        serviceaccount: ObjectRef::new(name, meta(&sa, "uid")),
        ..Default::default()
    };
    let bound = &spec["boundObjectRef"];
    let mut bound_to_pod = false;
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or("");
        let api_version = bound["apiVersion"].as_str().unwrap_or("");
        let obj_name = bound["name"].as_str().unwrap_or("");
        let want_uid = bound["uid"].as_str().unwrap_or("");
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let unsupported = || {
            let gvk = if group.is_empty() {
                format!("/{api_version}, Kind={kind}")
            } else {
                format!("{api_version}, Kind={kind}")
            };
            Status::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to object of kind {gvk:?}"
            ))
        };
        if !group.is_empty() {
            return Err(unsupported());
        }
        let (obj, what) = match kind {
            "Pod" => {
                let pod = reg.get(core("pods")?, Some(namespace), obj_name).await?;
                if pod["spec"]["serviceAccountName"].as_str().unwrap_or("") != name {
                    return Err(Status::bad_request(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
                kc.pod = Some(ObjectRef::new(obj_name, meta(&pod, "uid")));
                if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    let uid = match reg.get(core("nodes")?, None, node).await {
                        Ok(n) => meta(&n, "uid").to_string(),
                        Err(_) => String::new(),
                    };
                    kc.node = Some(ObjectRef::new(node, uid));
                }
                bound_to_pod = true;
                (pod, "Pod")
            }
            "Secret" => {
                let secret = reg.get(core("secrets")?, Some(namespace), obj_name).await?;
                kc.secret = Some(ObjectRef::new(obj_name, meta(&secret, "uid")));
                (secret, "Secret")
            }
            "Node" => {
                let node = reg.get(core("nodes")?, None, obj_name).await?;
                kc.node = Some(ObjectRef::new(obj_name, meta(&node, "uid")));
                (node, "Node")
            }
            _ => return Err(unsupported()),
        };
        let uid = meta(&obj, "uid");
        if !want_uid.is_empty() && want_uid != uid {
            return Err(Status::conflict(
                "",
                what,
                obj_name,
                &format!(
                    "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
    }
    let now = now_secs();
    let mut exp = now + expiration;
    if bound_to_pod && expiration == WARN_ONLY_EXPIRATION_SECS {
        kc.warnafter = Some(exp);
        exp = now + EXTENDED_EXPIRATION_SECS;
    }
    let claims = Claims {
        aud: audiences.clone(),
        exp,
        iat: now,
        iss: issuer.issuer.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: kc,
        nbf: now,
        sub: claims::username(namespace, name),
    };
    let token = issuer.sign(&claims)?;
    tracing::debug!(
        namespace,
        serviceaccount = name,
        exp,
        "issued service account token"
    );
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if bound.is_object() {
        out_spec["boundObjectRef"] = bound.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": rfc3339(now + expiration)},
    }))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub async fn token_review(
    reg: &Registry,
    issuer: &TokenIssuer,
    body: Value,
) -> Result<Value, Status> {
    let token = body["spec"]["token"].as_str().unwrap_or("");
    if token.is_empty() {
        return Err(Status::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let mut audiences = str_list(&body["spec"]["audiences"]);
    if audiences.is_empty() {
        audiences = issuer.api_audiences.clone();
    }
    let status = match verify(reg, issuer, token, &audiences).await {
        Ok(a) => json!({
            "authenticated": true,
            "user": {
                "username": a.user.name,
                "uid": a.user.uid,
                "groups": a.user.groups,
                "extra": a.extra,
            },
            "audiences": a.audiences,
        }),
        Err(e) => {
            tracing::debug!(err = %e, "TokenReview: token not authenticated");
            json!({"user": {}, "error": e.to_string()})
        }
    };
    let mut out = body;
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenReview");
    if !out["metadata"].is_object() {
        out["metadata"] = json!({});
    }
    out["metadata"]["creationTimestamp"] = Value::Null;
    out["status"] = status;
    Ok(out)
}

/// Authenticates a bearer token that is a service account JWT.
pub async fn authenticate(reg: &Registry, issuer: &TokenIssuer, token: &str) -> Option<UserInfo> {
    match verify(reg, issuer, token, &issuer.api_audiences).await {
        Ok(a) => Some(a.user),
        Err(err) => {
            tracing::debug!(%err, "bearer token rejected");
            None
        }
    }
}

/// `/.well-known/openid-configuration`.
pub fn openid_configuration(issuer: &TokenIssuer) -> Option<Value> {
    Some(json!({
        "issuer": issuer.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", issuer.issuer.trim_end_matches('/')),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [jws::ALG],
    }))
}

/// `/openid/v1/jwks`.
pub fn jwks(issuer: &TokenIssuer) -> Option<Value> {
    Some(json!({"keys": [jws::jwk(issuer.key.public_point(), issuer.key.kid())]}))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(jws::SigningKey::generate().unwrap().0, ISS)
    }

    fn claims(iss: &str) -> Claims {
        let now = now_secs();
        Claims {
            aud: vec![ISS.into()],
            exp: now + 600,
            iat: now,
            iss: iss.into(),
            jti: "id".into(),
            kubernetes: KubernetesClaim {
                namespace: "default".into(),
                serviceaccount: ObjectRef::new("default", "uid-1"),
                ..Default::default()
            },
            nbf: now,
            sub: "system:serviceaccount:default:default".into(),
        }
    }

    #[test]
    fn decode_accepts_own_tokens_only() {
        let a = issuer();
        let b = issuer();
        let c = claims(ISS);
        let token = a.sign(&c).unwrap();
        assert_eq!(a.decode(&token).unwrap(), c);
        // Same issuer URL, other key: the kid is unknown.
        assert!(matches!(
            b.decode(&token),
            Err(TokenError::Jws(jws::Error::UnknownKey(_)))
        ));
        // Another issuer is refused before the signature is even checked.
        let foreign = a.sign(&claims("https://accounts.example")).unwrap();
        assert!(matches!(
            a.decode(&foreign),
            Err(TokenError::Claims(ClaimError::Issuer(_)))
        ));
        // Not claims at all.
        let junk = a.key.sign(&json!({"iss": ISS})).unwrap();
        assert!(matches!(a.decode(&junk), Err(TokenError::Payload(_))));
        assert!(matches!(
            a.decode("opaque-static-token"),
            Err(TokenError::Jws(jws::Error::Malformed(_)))
        ));
    }

    #[test]
    fn discovery_documents() {
        let i = issuer();
        let oidc = openid_configuration(&i).unwrap();
        assert_eq!(oidc["issuer"], ISS);
        assert_eq!(oidc["jwks_uri"], format!("{ISS}/openid/v1/jwks"));
        assert_eq!(
            oidc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        let keys = jwks(&i).unwrap();
        assert_eq!(keys["keys"][0]["kid"], i.kid());
        assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn deletion_grace() {
        let now = 1_700_000_000;
        let at = |secs: i64| json!({"metadata": {"deletionTimestamp": rfc3339(secs)}});
        assert!(!deleted_past_grace(&json!({"metadata": {}}), now));
        assert!(!deleted_past_grace(&at(now - 30), now));
        assert!(!deleted_past_grace(&at(now + 30), now));
        assert!(deleted_past_grace(&at(now - 61), now));
    }

    #[test]
    fn error_messages_name_the_cause() {
        let e = TokenError::from(ClaimError::Expired);
        assert_eq!(e.to_string(), "invalid bearer token, token has expired");
        let e = TokenError::from(jws::Error::Signature);
        assert_eq!(e.to_string(), "invalid bearer token, invalid signature");
    }
}
