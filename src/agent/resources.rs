//! Resource requests and limits: Kubernetes quantities, QoS classes, and their translation
//! into the Linux container resources (cpu shares/quota, memory limit, OOM score) that the
//! runtime turns into cgroup settings.

use k8s_cri::v1 as cri;
use serde_json::Value;

pub use crate::api::quantity::parse_quantity;

fn quantity(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// The pod's QoS class (Guaranteed, Burstable, BestEffort), as upstream computes it.
pub fn qos_class(pod: &Value) -> &'static str {
    let mut containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    containers.extend(
        pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let rq = quantity(&req[r]).or_else(|| quantity(&lim[r]));
            let lm = quantity(&lim[r]);
            if rq.is_some_and(|x| x > 0.0) || lm.is_some_and(|x| x > 0.0) {
                any = true;
            }
            if lm.is_none() || rq != lm {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The cgroup parent of a pod's sandbox (cgroupfs driver layout).
pub fn cgroup_parent(pod: &Value, systemd: bool) -> String {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let qos = qos_class(pod);
    if systemd {
        let uid_ = uid.replace('-', "_");
        match qos {
            "Guaranteed" => format!("kubepods-pod{uid_}.slice"),
            q => format!("kubepods-{}-pod{uid_}.slice", q.to_lowercase()),
        }
    } else {
        match qos {
            "Guaranteed" => format!("/kubepods/pod{uid}"),
            q => format!("/kubepods/{}/pod{uid}", q.to_lowercase()),
        }
    }
}

/// Linux resources for a container from its requests and limits.
pub fn container_resources(container: &Value, qos: &str) -> cri::LinuxContainerResources {
    let req = &container["resources"]["requests"];
    let lim = &container["resources"]["limits"];
    let cpu_request = quantity(&req["cpu"]).or_else(|| quantity(&lim["cpu"]));
    let cpu_limit = quantity(&lim["cpu"]);
    let mem_limit = quantity(&lim["memory"]);
    let mem_request = quantity(&req["memory"]).or(mem_limit);
    let milli = |cpu: f64| (cpu * 1000.0).round() as i64;
    let shares = match cpu_request {
        Some(c) if c > 0.0 => (milli(c) * 1024 / 1000).max(2),
        _ => 2,
    };
    let (period, quota) = match cpu_limit {
        Some(c) if c > 0.0 => (100_000, (milli(c) * 100_000 / 1000).max(1000)),
        _ => (0, 0),
    };
    // OOM score adjustment as the kubelet computes it per QoS class.
    let oom_score_adj = match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let total = total_memory_bytes().max(1) as f64;
            let req = mem_request.unwrap_or(0.0);
            (1000 - (1000.0 * req / total) as i64).clamp(3, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_period: period,
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: mem_limit.map(|m| m as i64).unwrap_or(0),
        oom_score_adj,
        ..Default::default()
    }
}

fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("64Mi"), Some(67108864.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn qos_and_cgroups() {
        let be = json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "c"}]}});
        assert_eq!(qos_class(&be), "BestEffort");
        let g = json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        assert_eq!(cgroup_parent(&g, false), "/kubepods/podu");
        let b = json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
        assert_eq!(cgroup_parent(&b, false), "/kubepods/burstable/podu");
        let r = container_resources(&g["spec"]["containers"][0], "Guaranteed");
        assert_eq!(r.cpu_shares, 1024);
        assert_eq!(r.cpu_quota, 100_000);
        assert_eq!(r.memory_limit_in_bytes, 1 << 30);
        assert_eq!(r.oom_score_adj, -997);
    }
}
