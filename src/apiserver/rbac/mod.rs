//! Authorization: RBAC over Roles, ClusterRoles and their bindings, the bootstrap policy,
//! escalation prevention, access reviews and impersonation.
//!
//! (Not yet implemented: allows what [`BootstrapAuthorizer`] allows.)

use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::admission::Attributes;
use super::auth::{Authorizer, BootstrapAuthorizer, Decision, UserInfo};
use super::cache::Cache;
use super::registry::Registry;
use super::request::RequestInfo;
use crate::api::ResourceInfo;
use crate::api::status::Status;

/// The RBAC authorizer and its index of roles and bindings.
pub struct Rbac {
    _cache: Arc<Cache>,
}

impl Rbac {
    /// Builds the authorizer over the watch cache, keeping its index current until
    /// `shutdown`.
    pub fn new(cache: Arc<Cache>, _shutdown: CancellationToken) -> Arc<Rbac> {
        Arc::new(Rbac { _cache: cache })
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        BootstrapAuthorizer.authorize(user, req)
    }
}

/// Creates or reconciles the bootstrap ClusterRoles and ClusterRoleBindings.
pub async fn bootstrap(_reg: &Registry) -> Result<(), Status> {
    Ok(())
}

/// Refuses Role/ClusterRole writes that grant more than the writer holds, and bindings to
/// roles the writer could not grant (unless it has `escalate` / `bind`).
pub async fn validate_escalation(
    _reg: &Registry,
    _attrs: &Attributes<'_>,
    _obj: &Value,
) -> Result<(), Status> {
    Ok(())
}

/// Answers a create of an access review (SelfSubjectAccessReview, SubjectAccessReview,
/// LocalSubjectAccessReview, SelfSubjectRulesReview) or SelfSubjectReview.
pub async fn review(
    _reg: &Registry,
    ri: &ResourceInfo,
    _namespace: Option<&str>,
    _user: &UserInfo,
    _body: Value,
) -> Result<Value, Status> {
    Err(Status::method_not_allowed(format!("{} are not served yet", ri.plural)))
}

/// Applies `Impersonate-*` headers: checks the `impersonate` permission and returns the
/// user to act as.
pub fn impersonate(_rbac: &Rbac, user: UserInfo, headers: &HeaderMap) -> Result<UserInfo, Status> {
    if headers.keys().any(|k| k.as_str().starts_with("impersonate-")) {
        return Err(Status::forbidden("impersonation is not supported yet"));
    }
    Ok(user)
}
