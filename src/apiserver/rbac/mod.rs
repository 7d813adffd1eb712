//! Authorization: RBAC over Roles, ClusterRoles and their bindings, the bootstrap policy,
//! escalation prevention, access reviews and impersonation — upstream's RBAC authorizer
//! and registry rules.
//!
//! - [`Rbac`] is the [`Authorizer`] every request passes. It answers synchronously from
//!   an in-memory [`index`] of the four RBAC kinds that a background task keeps current
//!   from the watch cache. Members of `system:masters` are always allowed (upstream's
//!   privileged-group authorizer); everyone else gets exactly what their bindings grant.
//!   The request path uses [`Rbac::authorize_fresh`] / [`impersonate_fresh`], which re-check
//!   a denial once the index has caught up with the store, so a grant is effective as soon
//!   as its write is acknowledged.
//! - [`bootstrap`] creates or reconciles the default ClusterRoles and bindings
//!   ([`bootstrap`](mod@bootstrap) module) at every start.
//! - [`validate_escalation`] is the admission step for RBAC writes ([`escalation`]).
//! - [`review`] answers access reviews and self reviews ([`review`](mod@review)).
//! - [`impersonate`] applies `Impersonate-*` headers ([`impersonate`](mod@impersonate)).
//!
//! Depends on: the watch cache, the registry, `auth` (users, the 403 message), `request`.
//! ClusterRole aggregation is a controller (`controllers::clusterrole_aggregation`), an API
//! client like upstream's, not part of the API server.

pub mod bootstrap;
pub mod escalation;
pub mod impersonate;
pub mod index;
pub mod review;
pub mod rule;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use http::HeaderMap;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::index::Index;
use self::rule::PolicyRule;
use super::admission::Attributes;
use super::auth::{Authorizer, Decision, UserInfo};
use super::cache::Cache;
use super::registry::Registry;
use super::request::RequestInfo;
use crate::api::ResourceInfo;
use crate::api::status::Status;

/// The group whose members may do anything (upstream `user.SystemPrivilegedGroup`).
pub const SUPERUSER_GROUP: &str = "system:masters";

/// How long reviews and escalation checks wait for the index to reflect earlier writes.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The RBAC authorizer and its index of roles and bindings.
pub struct Rbac {
    index: RwLock<Index>,
    /// The newest watch-cache revision the index reflects.
    revision: watch::Sender<u64>,
}

impl Rbac {
    /// Builds the authorizer over the watch cache, keeping its index current until
    /// `shutdown`.
    pub fn new(cache: Arc<Cache>, shutdown: CancellationToken) -> Arc<Rbac> {
        let rbac = Arc::new(Rbac::empty());
        tokio::spawn(index::run(rbac.clone(), cache, shutdown));
        rbac
    }

    fn empty() -> Rbac {
        Rbac {
            index: RwLock::new(Index::default()),
            revision: watch::channel(0).0,
        }
    }

    /// An authorizer over a fixed set of RBAC objects (for tests).
    #[cfg(test)]
    pub(crate) fn for_tests(objects: &[Value]) -> Rbac {
        let rbac = Rbac::empty();
        let prefixes = index::Prefixes::new();
        {
            let mut idx = rbac.write_index();
            for o in objects {
                let kind = o["kind"].as_str().unwrap_or_default();
                let plural = match kind {
                    "Role" => "roles",
                    "ClusterRole" => "clusterroles",
                    "RoleBinding" => "rolebindings",
                    _ => "clusterrolebindings",
                };
                let ri = crate::api::resources::lookup(rule::GROUP, "v1", plural).unwrap();
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let key = super::registry::key(ri, o["metadata"]["namespace"].as_str(), name);
                idx.put(&prefixes, &key, o);
            }
        }
        rbac
    }

    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent map (each update is a single
        // insert or remove), so a poisoned lock is still usable.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the request is allowed, and why (the binding that allowed it, as upstream's
    /// SubjectAccessReview reason).
    pub fn decide(&self, user: &UserInfo, req: &RequestInfo) -> (bool, String) {
        if user.in_group(SUPERUSER_GROUP) {
            return (true, String::new());
        }
        match self.read_index().allows(user, req) {
            Some(reason) => (true, reason),
            None => (false, String::new()),
        }
    }

    /// Whether the request is allowed.
    pub fn allowed(&self, user: &UserInfo, req: &RequestInfo) -> bool {
        self.decide(user, req).0
    }

    /// Every RBAC rule that applies to `user` in `namespace` (cluster-wide rules only when
    /// `None`).
    pub fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<PolicyRule> {
        self.read_index().rules_for(user, namespace)
    }

    /// [`Authorizer::authorize`], but a denial is only final once the index reflects every
    /// write acknowledged before the request: a client that was just granted access (its
    /// RoleBinding created a moment ago) is not refused because the index lags the store.
    /// Allowed requests never wait.
    pub async fn authorize_fresh(
        &self,
        reg: &Registry,
        user: &UserInfo,
        req: &RequestInfo,
    ) -> Decision {
        let decision = self.authorize(user, req);
        if decision == Decision::Allow {
            return decision;
        }
        if let Err(err) = self.sync(reg).await {
            tracing::warn!(%err, "authorizing against a possibly stale RBAC index");
            return decision;
        }
        self.authorize(user, req)
    }

    /// The newest watch-cache revision the index reflects.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits until the index reflects every write acknowledged before this call.
    pub async fn sync(&self, reg: &Registry) -> Result<(), Status> {
        let want = reg
            .cache()
            .sync()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut rx = self.revision.subscribe();
        match tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|r| *r >= want)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Status::internal(format!(
                "the RBAC index did not reach revision {want} (at {})",
                self.revision()
            ))),
        }
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        if self.allowed(user, req) {
            Decision::Allow
        } else {
            Decision::Deny(String::new())
        }
    }
}

/// Creates or reconciles the bootstrap ClusterRoles and ClusterRoleBindings.
pub async fn bootstrap(reg: &Registry) -> Result<(), Status> {
    bootstrap::reconcile(reg).await
}

/// Refuses Role/ClusterRole writes that grant more than the writer holds, and bindings to
/// roles the writer could not grant (unless it has `escalate` / `bind`).
pub async fn validate_escalation(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &Value,
) -> Result<(), Status> {
    escalation::validate(reg, attrs, obj).await
}

/// Answers a create of an access review (SelfSubjectAccessReview, SubjectAccessReview,
/// LocalSubjectAccessReview, SelfSubjectRulesReview) or SelfSubjectReview.
pub async fn review(
    reg: &Registry,
    ri: &ResourceInfo,
    namespace: Option<&str>,
    user: &UserInfo,
    body: Value,
) -> Result<Value, Status> {
    let rbac = reg.rbac();
    rbac.sync(reg).await?;
    review::review(rbac, ri, namespace, user, body)
}

/// Applies `Impersonate-*` headers: checks the `impersonate` permission and returns the
/// user to act as.
pub fn impersonate(rbac: &Rbac, user: UserInfo, headers: &HeaderMap) -> Result<UserInfo, Status> {
    impersonate::impersonate(rbac, user, headers)
}

/// [`impersonate`], but a refusal is only final once the index reflects every write
/// acknowledged before the request (see [`Rbac::authorize_fresh`]).
pub async fn impersonate_fresh(
    reg: &Registry,
    user: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, Status> {
    let rbac = reg.rbac();
    match impersonate::impersonate(rbac, user.clone(), headers) {
        Err(denied) if denied.code == 403 => match rbac.sync(reg).await {
            Ok(()) => impersonate::impersonate(rbac, user, headers),
            Err(err) => {
                tracing::warn!(%err, "impersonating against a possibly stale RBAC index");
                Err(denied)
            }
        },
        other => other,
    }
}
