//! Admission: the ordered chain of mutating then validating plugins every write passes
//! after defaulting and before it is stored, as upstream's admission chain.
//!
//! Mutating: ServiceAccount (default account, projected token volume), LimitRanger
//! (default requests/limits), Priority (priorityClassName → priority).
//! Validating: NamespaceLifecycle (in the generic registry), LimitRanger (min/max),
//! ResourceQuota (usage charged and enforced), RBAC escalation prevention.

pub mod limit_ranger;
pub mod priority;
pub mod resource_quota;
pub mod service_account;

use serde_json::Value;

use super::auth::UserInfo;
use super::registry::Registry;
use crate::api::ResourceInfo;
use crate::api::status::Status;

/// The kind of write being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A change to an existing object.
    Update,
    /// A deletion.
    Delete,
}

/// What is being written, by whom.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The operation.
    pub operation: Operation,
    /// The storage-version resource.
    pub resource: &'static ResourceInfo,
    /// The subresource, if any (`status`, `scale`, ...).
    pub subresource: Option<&'a str>,
    /// The namespace, for namespaced resources.
    pub namespace: Option<&'a str>,
    /// The object name.
    pub name: &'a str,
    /// The requesting user (None for the server's own bootstrap writes).
    pub user: Option<&'a UserInfo>,
    /// Whether this is a dry run (nothing may be persisted, quota not charged).
    pub dry_run: bool,
}

/// Runs the mutating plugins in order.
pub async fn mutate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Status> {
    service_account::mutate(reg, attrs, obj, old).await?;
    limit_ranger::mutate(reg, attrs, obj, old).await?;
    priority::mutate(reg, attrs, obj, old).await?;
    Ok(())
}

/// Runs the validating plugins in order.
pub async fn validate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), Status> {
    limit_ranger::validate(reg, attrs, obj, old).await?;
    super::rbac::validate_escalation(reg, attrs, obj).await?;
    resource_quota::validate(reg, attrs, obj, old).await?;
    Ok(())
}
