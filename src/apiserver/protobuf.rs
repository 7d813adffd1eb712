//! Decoding Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`:
//! the `k8s\0` magic and a `runtime.Unknown` envelope) into JSON. (Not yet implemented.)

use serde_json::Value;

/// Decodes a protobuf-encoded object into its JSON form.
pub fn decode(_body: &[u8]) -> Result<Value, String> {
    Err("protobuf request bodies are not supported yet; send application/json".into())
}
