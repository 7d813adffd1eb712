//! Events the agent records about pods (Pulling, Pulled, Created, Started, Killing, Evicted,
//! BackOff, Unhealthy, Failed ...) and about its Node (NodeHas*, EvictionThresholdMet), as
//! core/v1 Events with source `kubelet`, so that `kubectl describe` and `kubectl get
//! events` show them as upstream.

use std::collections::BTreeMap;

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

/// The `involvedObject` of an event about `pod` (optionally about one of its containers).
pub fn pod_reference(pod: &Value, container: Option<&str>) -> Value {
    let mut involved = json!({
        "apiVersion": "v1", "kind": "Pod",
        "namespace": pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        "name": pod["metadata"]["name"].as_str().unwrap_or_default(),
        "uid": pod["metadata"]["uid"], "resourceVersion": pod["metadata"]["resourceVersion"],
    });
    if let Some(c) = container {
        involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
    }
    involved
}

/// The `involvedObject` of an event about Node `node` (the kubelet uses the node's name
/// as its uid in events).
pub fn node_reference(node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "name": node, "uid": node})
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
    record_about(
        client,
        node,
        pod_reference(pod, container),
        kind,
        reason,
        message,
        BTreeMap::new(),
    );
}

/// Records an event about `involved` (see [`pod_reference`], [`node_reference`]) in its
/// namespace (`default` for cluster-scoped objects), with `annotations` on the Event,
/// without waiting.
pub fn record_about(
    client: &kube::Client,
    node: &str,
    involved: Value,
    kind: Kind,
    reason: &str,
    message: String,
    annotations: BTreeMap<String, String>,
) {
    let client = client.clone();
    let ns = involved["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = involved["name"].as_str().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut event = json!({
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
    if !annotations.is_empty() {
        event["metadata"]["annotations"] = json!(annotations);
    }
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
