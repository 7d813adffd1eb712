//! Container probes (liveness, readiness, startup) and lifecycle hooks (postStart,
//! preStop) — the kubelet's prober manager and hook runner.
//!
//! The pod workers call [`Probes::ensure`] for every running container on each sync; the
//! first call starts one worker per probe of the container ([`worker`]), which runs the
//! handler every period through CRI `ExecSync` (exec), a small HTTP/1.1 client
//! ([`http`], httpGet), a TCP connect (tcpSocket) or a gRPC health check ([`grpc`]), and
//! publishes readiness, startup and liveness results that the pod workers read back
//! ([`Probes::ready`], [`Probes::started`], [`Probes::failed_probe`]). A change wakes the
//! pod's worker through [`Probes::changes`]. Failed probes are recorded as `Unhealthy`
//! Warning events with upstream's messages. A restarted container (new id) replaces its
//! predecessor's workers; [`Probes::forget_pod`] stops them all.
//!
//! Depends on: `agent::cri` (exec), `agent::events`; nothing above the agent.

pub mod grpc;
pub mod http;
pub mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_cri::v1 as cri;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cri::{Cri, is_not_found};
use super::events::{self, Kind};
pub use worker::{Failed, Outcome, ProbeKind, ProbeSpec, Results};
use worker::{Shared, Target};

/// Probe workers of one container.
struct Entry {
    uid: String,
    name: String,
    container: Value,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

/// Probe state of every container on the node.
pub struct Probes {
    /// Where events go: the API client and this node's name (None in unit tests).
    events: Option<(kube::Client, String)>,
    /// The node's IP: the pod IP of host-network pods.
    node_ip: Option<IpAddr>,
    /// Probe workers by container id.
    containers: Mutex<HashMap<String, Entry>>,
    /// Per pod uid: notified when a probe result of one of its containers changes.
    pods: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Probes {
    /// A probe manager that records events through `client` as node `node_name`.
    pub fn new(client: kube::Client, node_name: &str, node_ip: IpAddr) -> Arc<Probes> {
        Arc::new(Probes::with(
            Some((client, node_name.to_string())),
            Some(node_ip),
        ))
    }

    fn with(events: Option<(kube::Client, String)>, node_ip: Option<IpAddr>) -> Probes {
        Probes {
            events,
            node_ip,
            containers: Mutex::default(),
            pods: Mutex::default(),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notified whenever a probe result of a container of pod `uid` changes (a stored
    /// permit covers changes that happen while the pod worker is busy).
    pub fn changes(&self, uid: &str) -> Arc<Notify> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uid.to_string())
            .or_default()
            .clone()
    }

    /// Makes sure probe workers run for the running container `container_id`
    /// (idempotent); a new id for the same container replaces the old workers.
    pub fn ensure(
        &self,
        cri: &Cri,
        pod: &Value,
        container: &Value,
        container_id: &str,
        pod_ip: Option<&str>,
    ) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = container["name"].as_str().unwrap_or_default().to_string();
        let mut map = self.containers();
        if map.contains_key(container_id) {
            return;
        }
        map.retain(|_, e| {
            let same = e.uid == uid && e.name == name;
            if same {
                e.cancel.cancel();
            }
            !same
        });
        let specs = ProbeSpec::all(container);
        let shared = Arc::new(Shared::new(&specs, self.changes(&uid)));
        let cancel = CancellationToken::new();
        map.insert(
            container_id.to_string(),
            Entry {
                uid,
                name: name.clone(),
                container: container.clone(),
                shared: shared.clone(),
                cancel: cancel.clone(),
            },
        );
        drop(map);
        if specs.is_empty() {
            return;
        }
        let host_network = pod["spec"]["hostNetwork"] == true;
        let ip = match (host_network, self.node_ip) {
            (true, Some(node_ip)) => Some(node_ip.to_string()),
            _ => pod_ip
                .filter(|ip| !ip.is_empty())
                .or(pod["status"]["podIP"].as_str())
                .map(str::to_string),
        };
        let target = Arc::new(CriTarget {
            cri: cri.clone(),
            container_id: container_id.to_string(),
            container: container.clone(),
            name,
            pod: pod.clone(),
            pod_ip: ip,
            events: self.events.clone(),
        });
        tracing::debug!(pod = %pod["metadata"]["name"], container = %target.name, probes = specs.len(), "starting probe workers");
        tokio::spawn(async move {
            let started = container_started(&target.cri, &target.container_id).await;
            let target: Arc<dyn Target> = target;
            let workers = specs.into_iter().map(|spec| {
                worker::run(
                    spec,
                    started,
                    target.clone(),
                    shared.clone(),
                    cancel.clone(),
                )
            });
            futures::future::join_all(workers).await;
        });
    }

    /// The results for a container; before its workers exist, what they start with.
    fn results(&self, container_id: &str, container: &Value) -> Results {
        match self.containers().get(container_id) {
            Some(e) => e.shared.results(),
            None => {
                let has = |k: ProbeKind| container[k.field()].is_object();
                Results {
                    ready: has(ProbeKind::Readiness).then_some(false),
                    started: has(ProbeKind::Startup).then_some(false),
                    failed: None,
                }
            }
        }
    }

    /// Readiness of a container: None when it has no readiness probe (ready once
    /// started); false until its probe first succeeds.
    pub fn ready(&self, container_id: &str, container: &Value) -> Option<bool> {
        self.results(container_id, container).ready
    }

    /// Whether the startup probe succeeded: None when there is none.
    pub fn started(&self, container_id: &str, container: &Value) -> Option<bool> {
        self.results(container_id, container).started
    }

    /// The liveness or startup probe that failed `failureThreshold` times: the container
    /// must be restarted (within the probe's grace period when it sets one).
    pub fn failed_probe(&self, container_id: &str) -> Option<Failed> {
        self.containers()
            .get(container_id)
            .and_then(|e| e.shared.results().failed)
    }

    /// Whether the liveness (or startup) probe has failed `failureThreshold` times.
    pub fn liveness_failed(&self, container_id: &str) -> bool {
        self.failed_probe(container_id).is_some()
    }

    /// Stops the probe workers of containers of the pod `uid`.
    pub fn forget_pod(&self, uid: &str) {
        self.containers().retain(|_, e| {
            if e.uid == uid {
                e.cancel.cancel();
            }
            e.uid != uid
        });
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Runs a lifecycle hook (`exec`, `httpGet`, `sleep`) within `timeout`.
    pub async fn run_hook(
        &self,
        cri: &Cri,
        hook: &Value,
        container_id: &str,
        pod_ip: Option<&str>,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(cmd) = hook["exec"]["command"].as_array() {
            let cmd: Vec<String> = cmd
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            let mut cri = cri.clone();
            let secs = timeout.as_secs().max(1) as i64;
            let resp = match tokio::time::timeout(
                timeout + Duration::from_secs(2),
                cri.exec_sync(container_id, cmd.clone(), secs),
            )
            .await
            {
                Err(_) => return Err(format!("command {:?} timed out", cmd.join(" "))),
                Ok(r) => r.map_err(|e| e.to_string())?,
            };
            if resp.exit_code != 0 {
                return Err(format!(
                    "command exited with {}: {}",
                    resp.exit_code,
                    String::from_utf8_lossy(&resp.stderr)
                ));
            }
            return Ok(());
        }
        self.run_network_hook(hook, container_id, pod_ip, timeout)
            .await
    }

    /// The `httpGet` and `sleep` hooks (no runtime needed).
    async fn run_network_hook(
        &self,
        hook: &Value,
        container_id: &str,
        pod_ip: Option<&str>,
        timeout: Duration,
    ) -> Result<(), String> {
        if hook["httpGet"].is_object() {
            // Named ports resolve against the container spec once its workers know it.
            let container = self
                .containers()
                .get(container_id)
                .map(|e| e.container.clone())
                .unwrap_or(Value::Null);
            let node_ip = self.node_ip.map(|ip| ip.to_string());
            let ip = pod_ip.filter(|ip| !ip.is_empty()).or(node_ip.as_deref());
            let req = http::build(&hook["httpGet"], &container, ip, http::HOOK_USER_AGENT)?;
            return http::hook(&req, timeout).await.map_err(|e| e.to_string());
        }
        if let Some(secs) = hook["sleep"]["seconds"].as_u64() {
            tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
            return Ok(());
        }
        Err("unsupported hook handler".into())
    }
}

/// When the container started, from the runtime (now if unknown).
async fn container_started(cri: &Cri, id: &str) -> Instant {
    let now = Instant::now();
    let mut c = cri.clone();
    match c.container_status(id).await {
        Ok(s) if s.started_at > 0 => {
            let age_ns = (jiff::Timestamp::now().as_nanosecond() - i128::from(s.started_at)).max(0);
            let age = Duration::from_nanos(u64::try_from(age_ns).unwrap_or(u64::MAX));
            now.checked_sub(age).unwrap_or(now)
        }
        _ => now,
    }
}

/// Probes a container through CRI and the network; records events about it.
struct CriTarget {
    cri: Cri,
    container_id: String,
    container: Value,
    name: String,
    pod: Value,
    pod_ip: Option<String>,
    events: Option<(kube::Client, String)>,
}

impl CriTarget {
    /// Whether the container still runs (a runtime error is not taken as "gone").
    async fn running(&self) -> bool {
        let mut c = self.cri.clone();
        match c.container_status(&self.container_id).await {
            Ok(s) => s.state == cri::ContainerState::ContainerRunning as i32,
            Err(e) => !is_not_found(&e),
        }
    }
}

#[async_trait]
impl Target for CriTarget {
    async fn probe(&self, spec: &ProbeSpec) -> Outcome {
        let outcome = match exec_command(&spec.handler) {
            Some(cmd) => exec(&self.cri, &self.container_id, cmd, spec.timeout).await,
            None => {
                network(
                    &spec.handler,
                    &self.container,
                    self.pod_ip.as_deref(),
                    spec.timeout,
                )
                .await
            }
        };
        match outcome {
            Outcome::Success | Outcome::Warning(_) | Outcome::Gone => outcome,
            _ if !self.running().await => Outcome::Gone,
            _ => outcome,
        }
    }

    fn event(&self, reason: &'static str, message: String) {
        tracing::debug!(pod = %self.pod["metadata"]["name"], container = %self.name, %reason, %message, "probe event");
        if let Some((client, node)) = &self.events {
            events::record(
                client,
                node,
                &self.pod,
                Kind::Warning,
                reason,
                message,
                Some(&self.name),
            );
        }
    }
}

fn exec_command(handler: &Value) -> Option<Vec<String>> {
    handler["exec"]["command"].as_array().map(|c| {
        c.iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    })
}

/// An exec probe: exit code 0 passes; the output is the failure message.
async fn exec(cri: &Cri, id: &str, cmd: Vec<String>, timeout: Duration) -> Outcome {
    let line = cmd.join(" ");
    let mut c = cri.clone();
    let secs = timeout.as_secs().max(1) as i64;
    match tokio::time::timeout(timeout + Duration::from_secs(2), c.exec_sync(id, cmd, secs)).await {
        Err(_) => Outcome::Failure(format!("command {line:?} timed out")),
        Ok(Err(e)) => {
            let msg = e.to_string();
            if msg.contains("timeout") || msg.contains("deadline exceeded") {
                Outcome::Failure(format!("command {line:?} timed out"))
            } else {
                Outcome::Error(msg)
            }
        }
        Ok(Ok(resp)) => {
            let mut out = resp.stdout;
            out.extend_from_slice(&resp.stderr);
            if resp.exit_code == 0 {
                Outcome::Success
            } else {
                Outcome::Failure(String::from_utf8_lossy(&out).into_owned())
            }
        }
    }
}

/// httpGet, tcpSocket and grpc probes against the pod IP (or the handler's host).
async fn network(
    handler: &Value,
    container: &Value,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> Outcome {
    if handler["httpGet"].is_object() {
        return match http::build(
            &handler["httpGet"],
            container,
            pod_ip,
            http::PROBE_USER_AGENT,
        ) {
            Ok(req) => http::probe(&req, timeout).await,
            Err(e) => Outcome::Error(e),
        };
    }
    if handler["tcpSocket"].is_object() {
        let t = &handler["tcpSocket"];
        let host = match t["host"].as_str().filter(|h| !h.is_empty()).or(pod_ip) {
            Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => return Outcome::Error("the pod has no IP address yet".into()),
        };
        return match http::resolve_port(&t["port"], container) {
            Ok(port) => tcp(&host, port, timeout).await,
            Err(e) => Outcome::Error(e),
        };
    }
    if handler["grpc"].is_object() {
        let g = &handler["grpc"];
        let Some(host) = pod_ip else {
            return Outcome::Error("the pod has no IP address yet".into());
        };
        let Some(port) = g["port"]
            .as_i64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            return Outcome::Error(format!("invalid port number: {}", g["port"]));
        };
        return grpc::check(host, port, g["service"].as_str().unwrap_or(""), timeout).await;
    }
    Outcome::Error("missing probe handler".into())
}

/// A tcpSocket probe: the connection opens within the timeout.
async fn tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = http::join_host_port(host, port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: connect: {}", http::os_error(&e))),
        Ok(Ok(_)) => Outcome::Success,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn network_handlers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let container = json!({"name": "app", "ports": [{"name": "web", "containerPort": port}]});
        let t = Duration::from_secs(2);
        let cases = [
            (
                json!({"tcpSocket": {"port": "web"}}),
                Some("127.0.0.1"),
                Outcome::Success,
            ),
            (
                json!({"tcpSocket": {"port": closed}}),
                Some("127.0.0.1"),
                Outcome::Failure(format!(
                    "dial tcp 127.0.0.1:{closed}: connect: connection refused"
                )),
            ),
            (
                json!({"tcpSocket": {"port": closed, "host": "127.0.0.1"}}),
                None,
                Outcome::Failure(format!(
                    "dial tcp 127.0.0.1:{closed}: connect: connection refused"
                )),
            ),
            (
                json!({"tcpSocket": {"port": "db"}}),
                Some("127.0.0.1"),
                Outcome::Error("strconv.Atoi: parsing \"db\": invalid syntax".into()),
            ),
            (
                json!({"httpGet": {"port": port, "path": "/healthz"}}),
                Some("127.0.0.1"),
                Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
            ),
            (
                json!({"httpGet": {"port": port}}),
                None,
                Outcome::Error("the pod has no IP address yet".into()),
            ),
            (
                json!({"grpc": {"port": 0}}),
                Some("127.0.0.1"),
                Outcome::Error("invalid port number: 0".into()),
            ),
            (
                json!({"periodSeconds": 3}),
                Some("127.0.0.1"),
                Outcome::Error("missing probe handler".into()),
            ),
        ];
        for (handler, ip, want) in cases {
            assert_eq!(
                network(&handler, &container, ip, t).await,
                want,
                "{handler}"
            );
        }
    }

    #[test]
    fn results_before_workers_start() {
        let probes = Probes::with(None, None);
        let cases = [
            (json!({"name": "a"}), None, None),
            (
                json!({"name": "a", "readinessProbe": {"tcpSocket": {"port": 1}}}),
                Some(false),
                None,
            ),
            (
                json!({"name": "a", "startupProbe": {"tcpSocket": {"port": 1}}, "livenessProbe": {"tcpSocket": {"port": 1}}}),
                None,
                Some(false),
            ),
        ];
        for (c, ready, started) in cases {
            assert_eq!(probes.ready("abc", &c), ready, "{c}");
            assert_eq!(probes.started("abc", &c), started, "{c}");
            assert!(!probes.liveness_failed("abc"));
            assert_eq!(probes.failed_probe("abc"), None);
        }
    }

    #[tokio::test]
    async fn pods_share_one_notification_until_forgotten() {
        let probes = Probes::with(None, None);
        let a = probes.changes("uid-1");
        assert!(Arc::ptr_eq(&a, &probes.changes("uid-1")));
        assert!(!Arc::ptr_eq(&a, &probes.changes("uid-2")));
        // A change notified while nobody waits is not lost.
        a.notify_one();
        tokio::time::timeout(Duration::from_secs(1), probes.changes("uid-1").notified())
            .await
            .expect("stored permit");
        probes.forget_pod("uid-1");
        assert!(!Arc::ptr_eq(&a, &probes.changes("uid-1")));
    }

    #[tokio::test]
    async fn http_hooks_accept_any_response() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let probes = Probes::with(None, Some("127.0.0.1".parse().unwrap()));
        let hook = json!({"httpGet": {"port": port, "path": "/shutdown"}});
        // No pod IP: a host-network pod's IP is the node's.
        probes
            .run_network_hook(&hook, "c1", None, Duration::from_secs(2))
            .await
            .unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = probes
            .run_network_hook(
                &json!({"httpGet": {"port": closed}}),
                "c1",
                Some("127.0.0.1"),
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "Get \"http://127.0.0.1:{closed}/\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
            )
        );
        let err = probes
            .run_network_hook(
                &json!({"tcpSocket": {"port": 1}}),
                "c1",
                None,
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert_eq!(err, "unsupported hook handler");
        let started = Instant::now();
        probes
            .run_network_hook(
                &json!({"sleep": {"seconds": 30}}),
                "c1",
                None,
                Duration::from_millis(200),
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sleep hooks end at the timeout"
        );
    }
}
