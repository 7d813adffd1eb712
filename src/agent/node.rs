//! The Node object: registration (addresses, capacity and allocatable from the machine,
//! well-known labels, taints, node info), the Lease in `kube-node-lease` renewed every
//! 10 s, and the status heartbeat with the Ready/MemoryPressure/DiskPressure/PIDPressure
//! conditions.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{AgentConfig, Error};

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

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
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

fn conditions(cfg: &AgentConfig) -> Vec<Value> {
    let ts = now();
    let mem_avail = meminfo("MemAvailable");
    let mem_total = meminfo("MemTotal").max(1);
    let memory_pressure = mem_avail * 100 / mem_total < 5;
    // The kubelet's default hard eviction threshold: nodefs.available < 10%.
    let disk_pressure = super::stats::fs_stats(&cfg.data_dir)
        .is_some_and(|fs| fs.capacity_bytes > 0 && fs.available_bytes * 10 < fs.capacity_bytes);
    let pid_pressure = false;
    let cond = |t: &str,
                status: bool,
                reason_true: &str,
                reason_false: &str,
                msg_true: &str,
                msg_false: &str| {
        json!({"type": t, "status": if status { "True" } else { "False" },
               "lastHeartbeatTime": ts, "lastTransitionTime": ts,
               "reason": if status { reason_true } else { reason_false },
               "message": if status { msg_true } else { msg_false }})
    };
    vec![
        cond(
            "MemoryPressure",
            memory_pressure,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "kubelet has insufficient memory available",
            "kubelet has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            disk_pressure,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has disk pressure",
            "kubelet has no disk pressure",
        ),
        cond(
            "PIDPressure",
            pid_pressure,
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

/// The node's status as the agent observes it.
pub fn status(cfg: &AgentConfig) -> Value {
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
    // Reserve a little memory for the system, as the kubelet's eviction threshold does.
    let allocatable = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem_kib.saturating_sub(100 * 1024)),
        "pods": cfg.max_pods.to_string(),
        "ephemeral-storage": format!("{}", storage * 9 / 10),
        "hugepages-2Mi": "0",
        "hugepages-1Gi": "0",
    });
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(cfg),
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
pub async fn register(client: &kube::Client, cfg: &AgentConfig) -> Result<(), Error> {
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
        "status": status(cfg),
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
    post_status(client, cfg).await?;
    renew_lease(client, cfg).await?;
    Ok(())
}

async fn post_status(client: &kube::Client, cfg: &AgentConfig) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": status(cfg)});
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
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

/// Renews the Lease every 10 s and re-posts status every minute, until `shutdown`.
pub async fn heartbeat(client: kube::Client, cfg: AgentConfig, shutdown: CancellationToken) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REPORT);
    // After the control plane was unreachable the node may have been marked Unknown:
    // report status at once when the lease goes through again.
    let mut lease_failed = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lease_tick.tick() => {
                match renew_lease(&client, &cfg).await {
                    Ok(()) if lease_failed => {
                        lease_failed = false;
                        if let Err(err) = post_status(&client, &cfg).await {
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
                if let Err(err) = post_status(&client, &cfg).await {
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
