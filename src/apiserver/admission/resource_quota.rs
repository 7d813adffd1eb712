//! The ResourceQuota admission plugin (not yet implemented: admits everything).

use serde_json::Value;

use super::Attributes;
use crate::api::status::Status;
use crate::apiserver::registry::Registry;

/// Validating phase: charges and enforces quota.
pub async fn validate(
    _reg: &Registry,
    _attrs: &Attributes<'_>,
    _obj: &Value,
    _old: Option<&Value>,
) -> Result<(), Status> {
    Ok(())
}
