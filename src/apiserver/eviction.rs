//! The `pods/eviction` subresource: deletes a pod unless a PodDisruptionBudget forbids it.
//! (Not yet implemented.)

use serde_json::Value;

use super::auth::UserInfo;
use super::registry::Registry;
use crate::api::status::Status;

/// `POST .../pods/{name}/eviction`.
pub async fn evict(
    _reg: &Registry,
    _namespace: &str,
    _name: &str,
    _eviction: Value,
    _user: Option<&UserInfo>,
) -> Result<Value, Status> {
    Err(Status::method_not_allowed("eviction is not served yet"))
}
