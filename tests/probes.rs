//! Probes and lifecycle hooks, end to end: a `kaji server` with its node agent runs
//! busybox pods through containerd, and what users see through kubectl follows the
//! probes — a failing liveness probe restarts the container (restartCount, `Killing` and
//! `Unhealthy` events), readiness (httpGet against busybox httpd, tcpSocket) flips the
//! pod's Ready condition both ways, a startup probe holds readiness back and keeps the
//! liveness probe quiet, and a preStop hook runs before the container gets SIGTERM.
//!
//! The pods use the host network with the node IP 127.0.0.1, so every probe goes over
//! loopback and no CNI bridge is needed. Needs root, containerd, runc and busybox-static.

mod common;

use common::{apply, import_busybox, wait_pod};

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, free_port, ok};
use serde_json::Value;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

fn get_pod(server: &Server, name: &str) -> Option<Value> {
    let out = server.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn condition(pod: &Value, kind: &str) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

fn ready(pod: &Value) -> bool {
    condition(pod, "Ready")["status"] == "True"
}

fn running(pod: &Value) -> bool {
    pod["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// (type, reason, message) of the events about a pod.
fn events(server: &Server, pod: &str) -> Vec<(String, String, String)> {
    let out = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "json",
    ]));
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("type"), s("reason"), s("message"))
        })
        .collect()
}

fn events_table(server: &Server, pod: &str) -> String {
    events(server, pod)
        .iter()
        .map(|(t, r, m)| format!("{t} {r} {m}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until an event about `pod` matches.
fn wait_event(
    server: &Server,
    pod: &str,
    kind: &str,
    reason: &str,
    message: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, _, m)) = events(server, pod)
            .into_iter()
            .find(|(t, r, m)| t == kind && r == reason && message(m))
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} {reason} event for {pod}:\n{}",
            events_table(server, pod)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Deletes every pod (running preStop hooks) and waits until the runtime has no
/// containers left; runs on drop too, before the server stops.
struct Cleanup<'a>(&'a Server);

impl Cleanup<'_> {
    fn run(&self) -> Result<(), String> {
        let _ = self.0.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--grace-period=5",
            "--timeout=90s",
        ]);
        let socket = self.0.data_dir().join("run/containerd/containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("ctr")
                .arg("-a")
                .arg(&socket)
                .args(["-n", "k8s.io", "containers", "ls", "-q"])
                .output()
                .map_err(|e| e.to_string())?;
            let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("containers left behind: {left}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.run();
        }
    }
}

#[test]
fn probes_and_hooks_drive_pod_status() {
    // Dropped last: the pods using it are deleted first.
    let host = tempfile::tempdir().unwrap();
    let server = Server::start_with_agent(&["--node-ip=127.0.0.1"]);
    let cleanup = Cleanup(&server);
    import_busybox(&server);
    let www = host.path().join("www");
    let hook = host.path().join("hook");
    let (web_port, tcp_port) = (free_port(), free_port());

    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: liveness}}
spec:
  hostNetwork: true
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "touch /tmp/healthy; sleep 5; rm -f /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {{command: ["cat", "/tmp/healthy"]}}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  hostNetwork: true
  containers:
  - name: web
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["httpd", "-f", "-p", "127.0.0.1:{web_port}", "-h", "/www"]
    ports: [{{name: http, containerPort: {web_port}}}]
    readinessProbe:
      httpGet: {{path: /ready, port: http}}
      periodSeconds: 1
    volumeMounts: [{{name: www, mountPath: /www}}]
  volumes:
  - name: www
    hostPath: {{path: {www}, type: DirectoryOrCreate}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tcp}}
spec:
  hostNetwork: true
  containers:
  - name: server
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 4; exec httpd -f -p 127.0.0.1:{tcp_port} -h /"]
    readinessProbe:
      tcpSocket: {{port: {tcp_port}}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: slowstart}}
spec:
  hostNetwork: true
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 6; touch /tmp/started; sleep 3600"]
    startupProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 60
    livenessProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 20
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'echo TERM >> /hook/log; exit 0' TERM; echo started >> /hook/log; while true; do sleep 0.2; done"]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop >> /hook/log; sleep 1; echo prestop-done >> /hook/log"]}}
    volumeMounts: [{{name: hook, mountPath: /hook}}]
  volumes:
  - name: hook
    hostPath: {{path: {hook}, type: DirectoryOrCreate}}
"#,
            www = www.display(),
            hook = hook.display(),
        ),
    );

    // Startup probe: the container runs but is neither started nor ready until the
    // probe passes (~6 s); the liveness probe, which would fail until then, stays quiet.
    let pod = wait_pod(&server, "slowstart", 120, "running", running);
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        (cs["started"].as_bool(), cs["ready"].as_bool()),
        (Some(false), Some(false)),
        "{}",
        pod["status"]
    );
    assert_eq!(condition(&pod, "Ready")["reason"], "ContainersNotReady");
    let pod = wait_pod(&server, "slowstart", 60, "Ready once started", ready);
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["started"], true);
    let started_at: jiff::Timestamp = cs["state"]["running"]["startedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ready_at: jiff::Timestamp = condition(&pod, "Ready")["lastTransitionTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ready_at.duration_since(started_at).as_secs() >= 5,
        "ready {ready_at} too soon after start {started_at}"
    );
    wait_event(&server, "slowstart", "Warning", "Unhealthy", |m| {
        m.starts_with("Startup probe failed")
    });
    assert_eq!(
        cs["restartCount"], 0,
        "liveness is gated by the startup probe"
    );
    assert!(
        !events(&server, "slowstart")
            .iter()
            .any(|(_, _, m)| m.starts_with("Liveness probe")),
        "{}",
        events_table(&server, "slowstart")
    );

    // Liveness: the file disappears after 5 s, two failed probes later the container is
    // killed and restarted.
    let pod = wait_pod(&server, "liveness", 120, "restarted", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let cs = &pod["status"]["containerStatuses"][0];
    assert!(
        cs["lastState"]["terminated"].is_object() || cs["state"]["terminated"].is_object(),
        "{}",
        pod["status"]
    );
    wait_event(&server, "liveness", "Normal", "Killing", |m| {
        m == "Container app failed liveness probe, will be restarted"
    });
    let msg = wait_event(&server, "liveness", "Warning", "Unhealthy", |m| {
        m.starts_with("Liveness probe failed: ")
    });
    assert!(
        msg.contains("/tmp/healthy"),
        "the exec output is the message: {msg}"
    );
    // The new container runs (with a fresh /tmp/healthy).
    wait_pod(&server, "liveness", 60, "running again", running);

    // Readiness over HTTP: NotReady (404) until the file exists, Ready with it, NotReady
    // again once it is gone.
    let pod = wait_pod(&server, "web", 60, "running", running);
    assert!(!ready(&pod), "{}", pod["status"]);
    assert_eq!(pod["status"]["podIP"], "127.0.0.1");
    wait_event(&server, "web", "Warning", "Unhealthy", |m| {
        m == "Readiness probe failed: HTTP probe failed with statuscode: 404"
    });
    std::fs::write(www.join("ready"), "ok").unwrap();
    wait_pod(&server, "web", 30, "Ready with /ready present", ready);
    let table = ok(server.kubectl(&["get", "pod", "web"]));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("1/1")),
        "{table}"
    );
    std::fs::remove_file(www.join("ready")).unwrap();
    let pod = wait_pod(&server, "web", 30, "NotReady with /ready gone", |p| {
        condition(p, "Ready")["status"] == "False"
    });
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "readiness never restarts"
    );

    // Readiness over TCP: refused until the server listens (after 4 s), then Ready.
    wait_pod(&server, "tcp", 60, "Ready once listening", ready);
    wait_event(&server, "tcp", "Warning", "Unhealthy", |m| {
        m == format!(
            "Readiness probe failed: dial tcp 127.0.0.1:{tcp_port}: connect: connection refused"
        )
    });

    // preStop runs (and finishes) before the container is sent SIGTERM.
    wait_pod(&server, "hooked", 60, "running", running);
    ok(server.kubectl(&["delete", "pod", "hooked", "--timeout=60s"]));
    assert!(get_pod(&server, "hooked").is_none());
    let log = std::fs::read_to_string(hook.join("log")).unwrap_or_default();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["started", "prestop", "prestop-done", "TERM"],
        "hook log"
    );

    // Nothing is left in the runtime once the pods are deleted.
    cleanup
        .run()
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
}
