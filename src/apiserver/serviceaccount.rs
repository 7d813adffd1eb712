//! Service account tokens: signing and verifying JWTs, TokenRequest, TokenReview and the
//! OIDC discovery documents. (Not yet implemented.)

use std::path::Path;

use serde_json::Value;

use super::auth::UserInfo;
use super::registry::Registry;
use crate::api::status::Status;

/// Issues and verifies service account tokens.
pub struct TokenIssuer {}

impl TokenIssuer {
    /// Loads the signing key from `dir`, creating it on first start.
    pub fn load_or_create(_dir: &Path, _issuer_url: &str) -> Result<TokenIssuer, Status> {
        Ok(TokenIssuer {})
    }
}

/// `POST .../serviceaccounts/{name}/token`.
pub async fn token_request(
    _reg: &Registry,
    _issuer: &TokenIssuer,
    _namespace: &str,
    _name: &str,
    _body: Value,
) -> Result<Value, Status> {
    Err(Status::method_not_allowed("TokenRequest is not served yet"))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub async fn token_review(_reg: &Registry, _issuer: &TokenIssuer, _body: Value) -> Result<Value, Status> {
    Err(Status::method_not_allowed("TokenReview is not served yet"))
}

/// Authenticates a bearer token that is a service account JWT.
pub async fn authenticate(_reg: &Registry, _issuer: &TokenIssuer, _token: &str) -> Option<UserInfo> {
    None
}

/// `/.well-known/openid-configuration`.
pub fn openid_configuration(_issuer: &TokenIssuer) -> Option<Value> {
    None
}

/// `/openid/v1/jwks`.
pub fn jwks(_issuer: &TokenIssuer) -> Option<Value> {
    None
}
