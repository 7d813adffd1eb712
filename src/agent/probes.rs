//! Container probes (liveness, readiness, startup) and lifecycle hooks (postStart,
//! preStop). The pod workers ask this module whether a container is ready, started, or
//! must be restarted for failing its liveness probe, and run hooks through it.
//!
//! Probe workers are not implemented yet: containers without probes are handled as
//! upstream (ready once running); containers with probes are treated the same for now.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::cri::Cri;

/// Probe state of every container on the node.
#[derive(Default)]
pub struct Probes {}

impl Probes {
    /// A probe manager.
    pub fn new() -> Arc<Probes> {
        Arc::new(Probes {})
    }

    /// Makes sure probe workers run for `container_id` (idempotent).
    pub fn ensure(&self, _cri: &Cri, _pod: &Value, _container: &Value, _container_id: &str, _pod_ip: Option<&str>) {}

    /// Readiness of a container: None when it has no readiness probe.
    pub fn ready(&self, _container_id: &str) -> Option<bool> {
        None
    }

    /// Whether the startup probe succeeded: None when there is none.
    pub fn started(&self, _container_id: &str) -> Option<bool> {
        None
    }

    /// Whether the liveness probe has failed `failureThreshold` times (restart it).
    pub fn liveness_failed(&self, _container_id: &str) -> bool {
        false
    }

    /// Stops the probe workers of containers of the pod `uid`.
    pub fn forget_pod(&self, _uid: &str) {}

    /// Runs a lifecycle hook (`exec`, `sleep`; `httpGet` not yet) within `timeout`.
    pub async fn run_hook(&self, cri: &Cri, hook: &Value, container_id: &str, _pod_ip: Option<&str>, timeout: Duration) -> Result<(), String> {
        if let Some(cmd) = hook["exec"]["command"].as_array() {
            let cmd: Vec<String> = cmd.iter().filter_map(|c| c.as_str().map(str::to_string)).collect();
            let mut cri = cri.clone();
            let resp = cri
                .exec_sync(container_id, cmd, timeout.as_secs().max(1) as i64)
                .await
                .map_err(|e| e.to_string())?;
            if resp.exit_code != 0 {
                return Err(format!("command exited with {}: {}", resp.exit_code, String::from_utf8_lossy(&resp.stderr)));
            }
            return Ok(());
        }
        if let Some(secs) = hook["sleep"]["seconds"].as_u64() {
            tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
            return Ok(());
        }
        Err("unsupported hook handler".into())
    }
}
