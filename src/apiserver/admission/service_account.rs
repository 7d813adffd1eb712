//! The service account admission plugin (not yet implemented: admits everything unchanged).

use serde_json::Value;

use super::Attributes;
use crate::api::status::Status;
use crate::apiserver::registry::Registry;

/// Mutating phase.
pub async fn mutate(
    _reg: &Registry,
    _attrs: &Attributes<'_>,
    _obj: &mut Value,
    _old: Option<&Value>,
) -> Result<(), Status> {
    Ok(())
}
