//! Field management: `metadata.managedFields` and server-side apply. (Not yet
//! implemented: updates leave managedFields alone and apply is refused.)

use serde_json::Value;

use crate::api::status::Status;

/// Records the fields `manager` set with a non-apply write (`Update` operation).
pub fn update(
    _group: &str,
    _version: &str,
    _kind: &str,
    _old: Option<&Value>,
    _new: &mut Value,
    _manager: &str,
    _subresource: Option<&str>,
) {
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create). Returns the
/// new object with managedFields, or a 409 Conflict naming the conflicting fields.
pub fn apply(
    _group: &str,
    _version: &str,
    _kind: &str,
    _live: Option<&Value>,
    _applied: &Value,
    _manager: &str,
    _force: bool,
    _subresource: Option<&str>,
) -> Result<Value, Status> {
    Err(Status::unsupported_media_type("application/apply-patch+yaml (server-side apply is not implemented yet)"))
}
