//! Events the agent records about pods (Pulling, Pulled, Created, Started, Killing,
//! BackOff, Unhealthy, Failed ...), as core/v1 Events with source `kubelet`, so that
//! `kubectl describe pod` and `kubectl get events` show them as upstream.

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Informational.
    Normal,
    /// Something went wrong.
    Warning,
}

/// Records an event about `pod` (optionally about one container), without waiting.
pub fn record(
    client: &kube::Client,
    node: &str,
    pod: &Value,
    kind: Kind,
    reason: &str,
    message: String,
    container: Option<&str>,
) {
    let client = client.clone();
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut involved = json!({
        "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
        "uid": pod["metadata"]["uid"], "resourceVersion": pod["metadata"]["resourceVersion"],
    });
    if let Some(c) = container {
        involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
    }
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": ns},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    });
    tokio::spawn(async move {
        let Ok(event) = serde_json::from_value::<Event>(event) else {
            return;
        };
        let api: Api<Event> = Api::namespaced(client, &ns);
        if let Err(err) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(%err, "recording event");
        }
    });
}
