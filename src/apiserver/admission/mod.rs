//! Admission: the ordered chain of mutating then validating plugins every write passes
//! after defaulting and before it is stored, as upstream's admission chain.
//!
//! Mutating, in upstream's order: LimitRanger (default requests/limits), ServiceAccount
//! (default account, projected token volume), Priority (priorityClassName → priority),
//! DefaultTolerationSeconds (not-ready/unreachable tolerations).
//! Validating: NamespaceLifecycle (in the generic registry), LimitRanger (min/max/ratio),
//! Priority (one global default class), RBAC escalation prevention, and last
//! ResourceQuota (usage charged and enforced).
//!
//! Plugins read through the [`Registry`] (watch cache) and only the quota plugin writes
//! (ResourceQuota status); they depend on `api` (including the shared quota accounting in
//! [`crate::api::quota`]) and the registry, nothing else.

pub mod default_tolerations;
pub mod limit_ranger;
pub mod priority;
pub mod resource_quota;
pub mod service_account;

use std::fmt::Display;

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
    limit_ranger::mutate(reg, attrs, obj, old).await?;
    service_account::mutate(reg, attrs, obj, old).await?;
    priority::mutate(reg, attrs, obj, old).await?;
    default_tolerations::mutate(attrs, obj);
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
    priority::validate(reg, attrs, obj, old).await?;
    super::rbac::validate_escalation(reg, attrs, obj).await?;
    resource_quota::validate(reg, attrs, obj, old).await?;
    Ok(())
}

/// Whether the request is for the main resource `group/plural` (not a subresource).
pub(crate) fn is_main(attrs: &Attributes<'_>, group: &str, plural: &str) -> bool {
    attrs.subresource.is_none() && attrs.resource.group == group && attrs.resource.plural == plural
}

/// The name upstream's admission errors use: the requested name, or for a generated
/// name the `generateName` prefix (names are generated after admission upstream).
fn name_for_errors<'a>(attrs: &Attributes<'a>, obj: &'a Value) -> &'a str {
    let generate = obj["metadata"]["generateName"].as_str().unwrap_or("");
    if attrs.operation == Operation::Create
        && !generate.is_empty()
        && attrs.name.len() == generate.len() + 5
        && attrs.name.starts_with(generate)
    {
        return generate;
    }
    attrs.name
}

/// Upstream's admission `NewForbidden`: 403 `<resource> "<name>" is forbidden: <why>`.
pub(crate) fn forbidden(attrs: &Attributes<'_>, obj: &Value, why: impl Display) -> Status {
    let name = name_for_errors(attrs, obj);
    let resource = attrs.resource.group_resource();
    Status::forbidden(format!("{resource} \"{name}\" is forbidden: {why}")).with_details(
        attrs.resource.group,
        attrs.resource.plural,
        name,
    )
}

/// Joins errors as upstream's aggregate error prints them: duplicates dropped, one error
/// as is, several as `[a, b]`.
pub(crate) fn aggregate(errors: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for e in errors {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [one] => (*one).to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_like_upstream() {
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into(), "a".into()]), "[a, b]");
    }
}
