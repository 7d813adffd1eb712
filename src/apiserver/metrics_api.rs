//! The resource metrics API, `metrics.k8s.io/v1beta1` (`NodeMetrics`, `PodMetrics`),
//! served by the API server itself the way metrics-server serves it through aggregation:
//! what `kubectl top` and the HorizontalPodAutoscaler read.
//!
//! A background task ([`spawn_scraper`]) asks every Ready node's kubelet for its
//! `/stats/summary` every [`SCRAPE_INTERVAL`] (over TLS with the API server's kubelet
//! client certificate, at the address [`super::proxy`] uses) and keeps the latest usage
//! per node, pod and container: CPU as the kubelet's rate over its sampling window
//! (`usageNanoCores`), memory as the working set. `get` and `list` (namespaced for pods,
//! with label selectors, matched against the live Pod and Node objects) answer from that
//! snapshot; objects without a sample are left out of lists and are NotFound on `get`,
//! as metrics-server answers. Discovery gains the group (legacy and aggregated
//! documents) while the API is on; `--disable metrics-server` turns it off.
//!
//! Depends on: `api`, the registry (node and pod lookups), `proxy` (reaching kubelets).
//! Must not depend on: `agent`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderMap, Method, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::State;
use super::handlers::{Body, status_response};
use super::registry::ListOptions;
use super::request::RequestInfo;
use crate::api::resources::lookup;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::Status;

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// The served version.
pub const VERSION: &str = "v1beta1";
/// How often kubelets are scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
/// The window the kubelet's CPU rate covers (its sampling interval).
const WINDOW: &str = "10s";
/// Largest summary accepted from a kubelet.
const MAX_SUMMARY: usize = 32 << 20;

/// Usage of one object at one time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// When the kubelet sampled it (RFC 3339).
    pub timestamp: String,
    /// CPU in nanocores.
    pub cpu_nano: u64,
    /// Working set in bytes.
    pub memory_bytes: u64,
}

/// One pod's containers' usage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    /// The newest sample time among its containers.
    pub timestamp: String,
    /// (container name, usage), by name.
    pub containers: Vec<(String, Usage)>,
}

/// The latest scrape of every node.
#[derive(Debug, Default)]
struct Snapshot {
    nodes: HashMap<String, Usage>,
    /// Pods by (namespace, name), with the node that reported them.
    pods: HashMap<(String, String), (String, PodUsage)>,
}

/// The metrics API's state: the latest usage of every node and pod.
#[derive(Debug, Default)]
pub struct MetricsApi {
    snapshot: RwLock<Snapshot>,
}

// The subset of the kubelet's summary document this API needs.
#[derive(Debug, Deserialize)]
struct SummaryDoc {
    node: NodeDoc,
    #[serde(default)]
    pods: Vec<PodDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeDoc {
    #[serde(default)]
    cpu: Option<CpuDoc>,
    #[serde(default)]
    memory: Option<MemoryDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodDoc {
    pod_ref: PodRefDoc,
    #[serde(default)]
    containers: Vec<ContainerDoc>,
}

#[derive(Debug, Deserialize)]
struct PodRefDoc {
    name: String,
    namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerDoc {
    name: String,
    #[serde(default)]
    cpu: Option<CpuDoc>,
    #[serde(default)]
    memory: Option<MemoryDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CpuDoc {
    #[serde(default)]
    time: String,
    usage_nano_cores: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemoryDoc {
    #[serde(default)]
    time: String,
    working_set_bytes: Option<u64>,
}

/// Usage from a summary entry; `None` until the kubelet has a CPU rate (two samples).
fn usage(cpu: &Option<CpuDoc>, memory: &Option<MemoryDoc>) -> Option<Usage> {
    let cpu = cpu.as_ref()?;
    let memory = memory.as_ref()?;
    Some(Usage {
        timestamp: if cpu.time.is_empty() {
            memory.time.clone()
        } else {
            cpu.time.clone()
        },
        cpu_nano: cpu.usage_nano_cores?,
        memory_bytes: memory.working_set_bytes?,
    })
}

/// One kubelet's scrape: the node's usage and (namespace, name, usage) of its pods.
pub type NodeScrape = (Option<Usage>, Vec<(String, String, PodUsage)>);

/// Node and pod usage from one kubelet's `/stats/summary`. Pods are reported only when
/// every container has a sample (as metrics-server drops incomplete pods).
pub fn parse_summary(body: &[u8]) -> Result<NodeScrape, String> {
    let doc: SummaryDoc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let node = usage(&doc.node.cpu, &doc.node.memory);
    let mut pods = Vec::new();
    for p in doc.pods {
        if p.containers.is_empty() {
            continue;
        }
        let containers: Option<Vec<(String, Usage)>> = p
            .containers
            .iter()
            .map(|c| usage(&c.cpu, &c.memory).map(|u| (c.name.clone(), u)))
            .collect();
        let Some(mut containers) = containers else {
            continue;
        };
        containers.sort_by(|a, b| a.0.cmp(&b.0));
        let timestamp = containers
            .iter()
            .map(|(_, u)| u.timestamp.clone())
            .max()
            .unwrap_or_default();
        pods.push((
            p.pod_ref.namespace,
            p.pod_ref.name,
            PodUsage {
                timestamp,
                containers,
            },
        ));
    }
    Ok((node, pods))
}

/// CPU as metrics-server prints it (nanocores).
fn cpu_quantity(nano: u64) -> String {
    format!("{nano}n")
}

/// Memory as metrics-server prints it (KiB, rounded up).
fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes.div_ceil(1024))
}

fn node_is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Starts scraping the kubelets of Ready nodes until the server shuts down.
pub fn spawn_scraper(state: Arc<State>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = scrape_all(&state).await {
                tracing::debug!(%err, "scraping node metrics");
            }
        }
    });
}

async fn scrape_all(state: &Arc<State>) -> Result<(), String> {
    let (Some(api), Some(kubelet)) = (state.metrics_api.as_ref(), state.kubelet.as_ref()) else {
        return Ok(());
    };
    let nodes_ri = lookup("", "v1", "nodes").ok_or("nodes are not served")?;
    let nodes = state
        .registry
        .list(nodes_ri, None, &ListOptions::default())
        .await
        .map_err(|s| s.message)?
        .items;
    let scrapes = nodes
        .iter()
        .filter(|n| node_is_ready(n))
        .map(|node| async move {
            let name = node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let result = scrape_node(kubelet, node).await;
            (name, result)
        });
    let results = futures::future::join_all(scrapes).await;
    let mut snapshot = Snapshot::default();
    for (node, result) in results {
        match result {
            Ok((usage, pods)) => {
                if let Some(u) = usage {
                    snapshot.nodes.insert(node.clone(), u);
                }
                for (ns, name, p) in pods {
                    snapshot.pods.insert((ns, name), (node.clone(), p));
                }
            }
            Err(err) => tracing::info!(%node, %err, "scraping the kubelet's stats failed"),
        }
    }
    if let Ok(mut s) = api.snapshot.write() {
        *s = snapshot;
    }
    Ok(())
}

async fn scrape_node(
    kubelet: &super::proxy::KubeletClient,
    node: &Value,
) -> Result<NodeScrape, String> {
    let (host, port) = super::proxy::kubelet_address(node).ok_or("the node reports no address")?;
    let resp = super::proxy::send(
        kubelet,
        &host,
        port,
        &Method::GET,
        "/stats/summary",
        &HeaderMap::new(),
    )
    .await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(d) = frame.into_data() {
                buf.extend_from_slice(&d);
                if buf.len() > MAX_SUMMARY {
                    return Err("the summary is too large".to_string());
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "reading the summary timed out".to_string())??;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&buf).trim_end()
        ));
    }
    parse_summary(&buf)
}

fn node_metrics(node: &Value, u: &Usage) -> Value {
    let mut meta = json!({"name": node["metadata"]["name"], "creationTimestamp": now()});
    if let Some(l) = node["metadata"]["labels"].as_object() {
        meta["labels"] = Value::Object(l.clone());
    }
    json!({"kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": meta,
           "timestamp": u.timestamp, "window": WINDOW,
           "usage": {"cpu": cpu_quantity(u.cpu_nano), "memory": memory_quantity(u.memory_bytes)}})
}

fn pod_metrics(pod: &Value, u: &PodUsage) -> Value {
    let mut meta = json!({"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"],
                          "creationTimestamp": now()});
    if let Some(l) = pod["metadata"]["labels"].as_object() {
        meta["labels"] = Value::Object(l.clone());
    }
    let containers: Vec<Value> = u
        .containers
        .iter()
        .map(|(name, c)| {
            json!({"name": name, "usage": {"cpu": cpu_quantity(c.cpu_nano),
                                           "memory": memory_quantity(c.memory_bytes)}})
        })
        .collect();
    json!({"kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": meta,
           "timestamp": u.timestamp, "window": WINDOW, "containers": containers})
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn json_body(code: u16, v: &Value) -> http::Response<Body> {
    use http_body_util::Full;
    let mut r = http::Response::new(
        Full::new(bytes::Bytes::from(
            serde_json::to_vec(v).unwrap_or_default(),
        ))
        .boxed_unsync(),
    );
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves a resource request of the metrics group; `None` when the request is for
/// another group or the metrics API is off (the caller answers it).
pub async fn serve(
    state: &Arc<State>,
    req: &http::Request<Incoming>,
    info: &RequestInfo,
) -> Option<http::Response<Body>> {
    if info.group != GROUP {
        return None;
    }
    let api = state.metrics_api.as_ref()?;
    Some(match serve_inner(state, api, req, info).await {
        Ok(v) => json_body(200, &v),
        Err(s) => status_response(&s),
    })
}

async fn serve_inner(
    state: &Arc<State>,
    api: &MetricsApi,
    req: &http::Request<Incoming>,
    info: &RequestInfo,
) -> Result<Value, Status> {
    let nodes = info.resource == "nodes";
    if info.version != VERSION
        || !(nodes || info.resource == "pods")
        || info.subresource.is_some()
        || (nodes && info.namespace.is_some())
    {
        return Err(Status::not_found_path());
    }
    if !matches!(info.verb.as_str(), "get" | "list") || req.method() != Method::GET {
        return Err(Status::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let q: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |k: &str| {
        q.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let label = param("labelSelector")
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|e| Status::bad_request(format!("unable to parse requirement: {e}")))?;
    let field = param("fieldSelector")
        .map(FieldSelector::parse)
        .transpose()
        .map_err(|e| Status::bad_request(format!("invalid field selector: {e}")))?;
    let ri = lookup("", "v1", if nodes { "nodes" } else { "pods" })
        .ok_or_else(|| Status::internal("nodes and pods are not served"))?;
    let resource = if nodes { "nodes" } else { "pods" };
    let kind = if nodes { "NodeMetrics" } else { "PodMetrics" };
    let ns = info.namespace.as_deref();
    let snapshot = |obj: &Value| -> Option<Value> {
        let s = api.snapshot.read().ok()?;
        let name = obj["metadata"]["name"].as_str()?;
        if nodes {
            s.nodes.get(name).map(|u| node_metrics(obj, u))
        } else {
            let pod_ns = obj["metadata"]["namespace"].as_str()?;
            s.pods
                .get(&(pod_ns.to_string(), name.to_string()))
                .map(|(_, u)| pod_metrics(obj, u))
        }
    };
    if let Some(name) = &info.name {
        let missing = || {
            let shown = match ns {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            };
            Status::not_found(
                GROUP,
                &format!("{}metrics", resource.trim_end_matches('s')),
                &shown,
            )
        };
        let obj = match state.registry.get(ri, ns, name).await {
            Ok(o) => o,
            Err(s) if s.code == 404 => return Err(missing()),
            Err(s) => return Err(s),
        };
        return snapshot(&obj).ok_or_else(missing);
    }
    let opts = ListOptions {
        label,
        ..Default::default()
    };
    let objects = state.registry.list(ri, ns, &opts).await?.items;
    let items: Vec<Value> = objects
        .iter()
        .filter(|o| {
            field.as_ref().is_none_or(|f| {
                f.matches(|k| match k {
                    "metadata.name" => o["metadata"]["name"].as_str().map(str::to_string),
                    "metadata.namespace" => o["metadata"]["namespace"].as_str().map(str::to_string),
                    _ => None,
                })
            })
        })
        .filter_map(snapshot)
        .collect();
    Ok(
        json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"),
              "metadata": {}, "items": items}),
    )
}

fn resources() -> [(&'static str, &'static str, bool); 2] {
    [
        ("nodes", "NodeMetrics", false),
        ("pods", "PodMetrics", true),
    ]
}

fn group_doc() -> Value {
    let gv = format!("{GROUP}/{VERSION}");
    json!({"name": GROUP, "versions": [{"groupVersion": gv, "version": VERSION}],
           "preferredVersion": {"groupVersion": gv, "version": VERSION}})
}

fn aggregated_group() -> Value {
    let resources: Vec<Value> = resources()
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"resource": plural,
                   "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
                   "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                   "singularResource": "", "verbs": ["get", "list"]})
        })
        .collect();
    json!({"metadata": {"name": GROUP, "creationTimestamp": null},
           "versions": [{"version": VERSION, "resources": resources, "freshness": "Current"}]})
}

fn resource_list() -> Value {
    let resources: Vec<Value> = resources()
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                   "verbs": ["get", "list"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
           "resources": resources})
}

/// Adds the metrics group to a discovery document the caller built for `path` (`/apis`
/// legacy or aggregated), or answers `/apis/metrics.k8s.io[/v1beta1]` itself; `None`
/// when the path is not about this group or the API is off.
pub fn discovery(state: &State, path: &str, aggregated: Option<&str>) -> Option<Value> {
    state.metrics_api.as_ref()?;
    match path {
        "/apis" => Some(match aggregated {
            Some(v) => {
                let mut doc = super::discovery::aggregated(false, v);
                if let Some(items) = doc["items"].as_array_mut() {
                    items.push(aggregated_group());
                }
                doc
            }
            None => {
                let mut doc = super::discovery::api_group_list();
                if let Some(groups) = doc["groups"].as_array_mut() {
                    groups.push(group_doc());
                }
                doc
            }
        }),
        "/apis/metrics.k8s.io" => {
            let mut doc = group_doc();
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            Some(doc)
        }
        "/apis/metrics.k8s.io/v1beta1" => Some(resource_list()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let body = json!({
            "node": {"nodeName": "n1",
                     "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 250_000_000u64, "usageCoreNanoSeconds": 9},
                     "memory": {"time": "2024-05-01T10:00:00Z", "workingSetBytes": 2048}},
            "pods": [
                {"podRef": {"name": "burn", "namespace": "default", "uid": "u1"},
                 "containers": [
                    {"name": "b", "cpu": {"time": "2024-05-01T10:00:01Z", "usageNanoCores": 990_000_000u64},
                     "memory": {"time": "2024-05-01T10:00:01Z", "workingSetBytes": 1025}},
                    {"name": "a", "cpu": {"time": "2024-05-01T10:00:00Z", "usageNanoCores": 1},
                     "memory": {"workingSetBytes": 0}}]},
                // The first sample has no rate yet: left out.
                {"podRef": {"name": "new", "namespace": "default", "uid": "u2"},
                 "containers": [{"name": "c", "cpu": {"usageCoreNanoSeconds": 5}, "memory": {"workingSetBytes": 5}}]},
                {"podRef": {"name": "empty", "namespace": "default", "uid": "u3"}, "containers": []}
            ]
        });
        let (node, pods) = parse_summary(&serde_json::to_vec(&body).unwrap()).unwrap();
        let node = node.unwrap();
        assert_eq!((node.cpu_nano, node.memory_bytes), (250_000_000, 2048));
        assert_eq!(pods.len(), 1);
        let (ns, name, p) = &pods[0];
        assert_eq!((ns.as_str(), name.as_str()), ("default", "burn"));
        assert_eq!(p.timestamp, "2024-05-01T10:00:01Z");
        assert_eq!(p.containers[0].0, "a");
        let pod =
            json!({"metadata": {"name": "burn", "namespace": "default", "labels": {"app": "x"}}});
        let m = pod_metrics(&pod, p);
        assert_eq!(m["containers"][1]["usage"]["cpu"], "990000000n");
        assert_eq!(m["containers"][1]["usage"]["memory"], "2Ki");
        assert_eq!(m["metadata"]["labels"]["app"], "x");
        assert_eq!(m["window"], "10s");
        assert!(parse_summary(b"{").is_err());
    }

    #[test]
    fn discovery_documents() {
        let g = aggregated_group();
        assert_eq!(g["versions"][0]["resources"][1]["scope"], "Namespaced");
        assert_eq!(
            g["versions"][0]["resources"][0]["responseKind"]["kind"],
            "NodeMetrics"
        );
        let l = resource_list();
        assert_eq!(l["groupVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(l["resources"][1]["name"], "pods");
    }
}
