//! The Node object: registration (addresses, capacity and allocatable from the machine,
//! well-known labels, taints, node info), the Lease in `kube-node-lease` renewed every
//! 10 s, and the status heartbeat with the Ready/MemoryPressure/DiskPressure/PIDPressure
//! conditions. The pressure conditions come from the eviction manager
//! (`super::eviction`); status is re-posted at once when they change, and a condition's
//! `lastTransitionTime` moves only when its status does.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::eviction::{Condition, Pressure, Signal};
use super::{AgentConfig, Error, now};

/// How often the Lease is renewed (upstream kubelet: every 10 s of a 40 s lease).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the full status is re-posted even without changes.
pub const STATUS_REPORT: Duration = Duration::from_secs(60);

/// The machine's hostname, lowercased.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The source address of the default route, found by "connecting" a UDP socket (no
/// packet is sent), or loopback when the machine has no route.
pub fn default_ip() -> Option<IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    if sock.connect("192.0.2.1:9").is_ok() {
        if let Ok(addr) = sock.local_addr() {
            return Some(addr.ip());
        }
    }
    Some(IpAddr::from([127, 0, 0, 1]))
}

fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Memory in KiB from /proc/meminfo (`MemTotal` or `MemAvailable`).
fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Filesystem capacity of `path` in bytes (for ephemeral-storage).
fn fs_capacity(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .arg("-B1")
        .arg("--output=size")
        .arg(path)
        .output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// The labels every node carries.
fn labels(cfg: &AgentConfig) -> serde_json::Map<String, Value> {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/hostname".into(), json!(cfg.node_name));
    l.insert("kubernetes.io/os".into(), json!("linux"));
    l.insert("kubernetes.io/arch".into(), json!(go_arch()));
    l.insert("beta.kubernetes.io/os".into(), json!("linux"));
    l.insert("beta.kubernetes.io/arch".into(), json!(go_arch()));
    l.insert("node.kubernetes.io/instance-type".into(), json!("kaji"));
    if cfg.server {
        l.insert(
            "node-role.kubernetes.io/control-plane".into(),
            json!("true"),
        );
        l.insert("node-role.kubernetes.io/master".into(), json!("true"));
    }
    for (k, v) in &cfg.labels {
        l.insert(k.clone(), json!(v));
    }
    l
}

/// The kubelet's four conditions: the pressure conditions from the eviction manager and
/// Ready. `existing` are the Node's current conditions: a condition keeps its
/// `lastTransitionTime` unless its status changes.
pub fn conditions(pressure: &Pressure, existing: &[Value]) -> Vec<Value> {
    let ts = now();
    let cond = |t: &str,
                status: bool,
                reason_true: &str,
                reason_false: &str,
                msg_true: &str,
                msg_false: &str| {
        let status = if status { "True" } else { "False" };
        let since = existing
            .iter()
            .find(|c| c["type"] == t && c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| ts.clone());
        json!({"type": t, "status": status,
               "lastHeartbeatTime": ts, "lastTransitionTime": since,
               "reason": if status == "True" { reason_true } else { reason_false },
               "message": if status == "True" { msg_true } else { msg_false }})
    };
    vec![
        cond(
            "MemoryPressure",
            pressure.contains(&Condition::MemoryPressure),
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "kubelet has insufficient memory available",
            "kubelet has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            pressure.contains(&Condition::DiskPressure),
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has disk pressure",
            "kubelet has no disk pressure",
        ),
        cond(
            "PIDPressure",
            pressure.contains(&Condition::PidPressure),
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "kubelet has insufficient PID available",
            "kubelet has sufficient PID available",
        ),
        cond(
            "Ready",
            true,
            "KubeletReady",
            "KubeletNotReady",
            "kubelet is posting ready status",
            "container runtime is not ready",
        ),
    ]
}

/// The node events the kubelet records when a pressure condition flips
/// (`NodeHasInsufficientMemory`, `NodeHasSufficientMemory`, ...).
fn transition_events(old: &[Value], new: &[Value]) -> Vec<&'static str> {
    const EVENTS: &[(&str, &str, &str)] = &[
        (
            "MemoryPressure",
            "NodeHasInsufficientMemory",
            "NodeHasSufficientMemory",
        ),
        (
            "DiskPressure",
            "NodeHasDiskPressure",
            "NodeHasNoDiskPressure",
        ),
        (
            "PIDPressure",
            "NodeHasInsufficientPID",
            "NodeHasSufficientPID",
        ),
    ];
    EVENTS
        .iter()
        .filter_map(|(t, on, off)| {
            let status = |list: &[Value]| {
                list.iter()
                    .find(|c| c["type"] == *t)
                    .and_then(|c| c["status"].as_str().map(str::to_string))
            };
            let now = status(new)?;
            if status(old).as_deref() == Some(now.as_str()) {
                return None;
            }
            Some(if now == "True" { *on } else { *off })
        })
        .collect()
}

/// The node's status as the agent observes it (`existing`: the Node's current
/// conditions, see [`conditions`]).
pub fn status(cfg: &AgentConfig, pressure: &Pressure, existing: &[Value]) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = meminfo("MemTotal");
    let storage = fs_capacity(&cfg.data_dir);
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{mem_kib}Ki"),
        "pods": cfg.max_pods.to_string(),
        "ephemeral-storage": format!("{}Ki", storage / 1024),
        "hugepages-2Mi": "0",
        "hugepages-1Gi": "0",
    });
    // Allocatable = capacity − the hard memory.available eviction threshold, as the
    // kubelet computes it.
    let mem_reserved = cfg
        .eviction
        .thresholds
        .iter()
        .find(|t| t.hard && t.signal == Signal::MemoryAvailable)
        .map(|t| t.quantity(mem_kib * 1024))
        .unwrap_or(0);
    let allocatable = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", (mem_kib * 1024).saturating_sub(mem_reserved) / 1024),
        "pods": cfg.max_pods.to_string(),
        "ephemeral-storage": format!("{}", storage * 9 / 10),
        "hugepages-2Mi": "0",
        "hugepages-1Gi": "0",
    });
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(pressure, existing),
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip.to_string()},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": read_trim("/etc/machine-id"),
            "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": cfg.runtime_version,
            "kubeletVersion": crate::config::KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": go_arch(),
        },
    })
}

/// Creates the Node, or takes over an existing one (re-registration after a restart).
pub async fn register(
    client: &kube::Client,
    cfg: &AgentConfig,
    pressure: &Pressure,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let taints: Vec<Value> = cfg
        .taints
        .iter()
        .map(|(k, v, e)| {
            let mut t = json!({"key": k, "effect": e});
            if !v.is_empty() {
                t["value"] = json!(v);
            }
            t
        })
        .collect();
    let mut spec = json!({});
    if !taints.is_empty() {
        spec["taints"] = Value::Array(taints);
    }
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels(cfg),
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kaji.io/node-ip": cfg.node_ip.to_string()}},
        "spec": spec,
        "status": status(cfg, pressure, &[]),
    });
    let obj: Node =
        serde_json::from_value(node.clone()).map_err(|e| Error::Config(e.to_string()))?;
    match nodes.create(&PostParams::default(), &obj).await {
        Ok(_) => tracing::info!(node = %cfg.node_name, "registered node"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": labels(cfg)}});
            nodes
                .patch(
                    &cfg.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            tracing::info!(node = %cfg.node_name, "node already registered; taking it over");
        }
        Err(e) => return Err(e.into()),
    }
    post_status(client, cfg, pressure).await?;
    renew_lease(client, cfg).await?;
    Ok(())
}

/// Posts the status; conditions other than the kubelet's are kept, and each condition's
/// `lastTransitionTime` moves only when its status changes.
async fn post_status(
    client: &kube::Client,
    cfg: &AgentConfig,
    pressure: &Pressure,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::to_value(nodes.get(&cfg.node_name).await?)
        .map_err(|e| Error::Config(e.to_string()))?;
    let existing: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut status = status(cfg, pressure, &existing);
    let ours = status["conditions"].as_array().cloned().unwrap_or_default();
    let events = transition_events(&existing, &ours);
    let mut all = ours;
    all.extend(
        existing
            .iter()
            .filter(|c| !KUBELET_CONDITIONS.contains(&c["type"].as_str().unwrap_or_default()))
            .cloned(),
    );
    status["conditions"] = Value::Array(all);
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    for reason in events {
        node_event(client, &cfg.node_name, reason);
    }
    Ok(())
}

/// The condition types the agent owns.
const KUBELET_CONDITIONS: &[&str] = &["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

/// Records `Node <name> status is now: <reason>`, without waiting.
fn node_event(client: &kube::Client, node: &str, reason: &str) {
    super::events::record_about(
        client,
        node,
        super::events::node_reference(node),
        super::events::Kind::Normal,
        reason,
        format!("Node {node} status is now: {reason}"),
        Default::default(),
    );
}

/// Renews (or creates) the node's Lease in `kube-node-lease`.
pub async fn renew_lease(client: &kube::Client, cfg: &AgentConfig) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let spec = json!({"holderIdentity": cfg.node_name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": micro_now()});
    match leases
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let nodes: Api<Node> = Api::all(client.clone());
            let node = nodes.get(&cfg.node_name).await?;
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": cfg.node_name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.node_name,
                                                  "uid": node.metadata.uid.unwrap_or_default()}]},
                "spec": spec,
            });
            let lease: Lease =
                serde_json::from_value(lease).map_err(|e| Error::Config(e.to_string()))?;
            leases.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Renews the Lease every 10 s and re-posts status every minute and whenever the
/// eviction manager's pressure conditions change, until `shutdown`.
pub async fn heartbeat(
    client: kube::Client,
    cfg: AgentConfig,
    mut pressure: watch::Receiver<Pressure>,
    shutdown: CancellationToken,
) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REPORT);
    // After the control plane was unreachable the node may have been marked Unknown:
    // report status at once when the lease goes through again.
    let mut lease_failed = false;
    let mut pressure_open = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lease_tick.tick() => {
                match renew_lease(&client, &cfg).await {
                    Ok(()) if lease_failed => {
                        lease_failed = false;
                        let p = pressure.borrow().clone();
                        if let Err(err) = post_status(&client, &cfg, &p).await {
                            tracing::warn!(%err, node = %cfg.node_name, "posting node status");
                        }
                    }
                    Ok(()) => {}
                    Err(err) => {
                        lease_failed = true;
                        tracing::warn!(%err, node = %cfg.node_name, "renewing node lease");
                    }
                }
            }
            _ = status_tick.tick() => {
                let p = pressure.borrow().clone();
                if let Err(err) = post_status(&client, &cfg, &p).await {
                    tracing::warn!(%err, node = %cfg.node_name, "posting node status");
                }
            }
            changed = pressure.changed(), if pressure_open => {
                if changed.is_err() {
                    // The eviction manager stopped: keep heartbeating on the last value.
                    pressure_open = false;
                    continue;
                }
                let p = pressure.borrow_and_update().clone();
                tracing::info!(node = %cfg.node_name, pressure = ?p, "node pressure changed");
                if let Err(err) = post_status(&client, &cfg, &p).await {
                    tracing::warn!(%err, node = %cfg.node_name, "posting node status");
                }
            }
        }
    }
}

/// Waits until the node has a podCIDR (assigned by the node IPAM controller).
pub async fn wait_pod_cidr(
    client: &kube::Client,
    cfg: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<String, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut warned = false;
    loop {
        let node = nodes.get(&cfg.node_name).await?;
        if let Some(cidr) = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
            return Ok(cidr);
        }
        if !warned {
            tracing::info!(node = %cfg.node_name, "waiting for a podCIDR to be assigned");
            warned = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Runtime("shutting down".into())),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_move_only_on_status_changes() {
        let old = "2020-01-01T00:00:00Z";
        let existing = vec![
            json!({"type": "MemoryPressure", "status": "False", "lastTransitionTime": old}),
            json!({"type": "DiskPressure", "status": "False", "lastTransitionTime": old}),
            json!({"type": "PIDPressure", "status": "False", "lastTransitionTime": old}),
            json!({"type": "Ready", "status": "True", "lastTransitionTime": old}),
        ];
        let pressure: Pressure = [Condition::MemoryPressure].into_iter().collect();
        let got = conditions(&pressure, &existing);
        let by_type = |t: &str| got.iter().find(|c| c["type"] == t).unwrap().clone();
        let mp = by_type("MemoryPressure");
        assert_eq!(mp["status"], "True");
        assert_eq!(mp["reason"], "KubeletHasInsufficientMemory");
        assert_ne!(mp["lastTransitionTime"], old);
        for t in ["DiskPressure", "PIDPressure", "Ready"] {
            assert_eq!(by_type(t)["lastTransitionTime"], old, "{t}");
            assert_ne!(by_type(t)["lastHeartbeatTime"], old, "{t}");
        }
        assert_eq!(by_type("PIDPressure")["reason"], "KubeletHasSufficientPID");
        assert_eq!(
            transition_events(&existing, &got),
            vec!["NodeHasInsufficientMemory"]
        );
        assert_eq!(
            transition_events(&got, &conditions(&Pressure::new(), &got)),
            vec!["NodeHasSufficientMemory"]
        );
        assert!(transition_events(&got, &got).is_empty());
    }
}
