//! `kubectl logs`, `exec`, `cp`, `attach` and `port-forward` end to end: a `kaji server`
//! with its node agent runs busybox pods through containerd; the real kubectl (the
//! default one, 1.27 which speaks only SPDY, and 1.33 which tries WebSocket first) goes
//! through the API server, which proxies to the agent's kubelet API, which proxies to
//! containerd's streaming server.
//!
//! Needs root, containerd, runc, the CNI plugins and busybox-static (scripts/setup.sh).

mod common;

use common::{import_busybox, wait_pod};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, ok, stderr, stdout};
use serde_json::Value;

/// A child process killed (by PID) and reaped when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deletes every pod when dropped (before the server stops), so no container outlives
/// the test even when an assertion fails.
struct DeletePods<'a>(&'a Server);

impl Drop for DeletePods<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--grace-period=1",
            "--timeout=60s",
        ]);
    }
}

/// Starts a long-running kubectl (`logs -f`, `port-forward`, `attach`) with its stdout
/// lines sent to the returned channel.
fn spawn_kubectl(server: &Server, bin: &str, args: &[&str]) -> (Spawned, mpsc::Receiver<String>) {
    let path = common::kubectl_path(bin);
    let mut child = Command::new(&path)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .arg(format!(
            "--cache-dir={}",
            server
                .dir
                .path()
                .join(format!("kubectl-cache-{bin}"))
                .display()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Spawned(child), rx)
}

/// Lines received until `done` says so or `secs` pass.
fn collect_lines(
    rx: &mpsc::Receiver<String>,
    secs: u64,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut lines = Vec::new();
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The admin kubeconfig's client certificate and key, written to files for curl.
fn admin_cert_files(server: &Server) -> (std::path::PathBuf, std::path::PathBuf) {
    use base64::Engine;
    let kc: Value =
        serde_json::to_value(kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap())
            .unwrap();
    let user = &kc["users"][0]["user"];
    let b64 = base64::engine::general_purpose::STANDARD;
    let cert = server.dir.path().join("admin.crt");
    let key = server.dir.path().join("admin.key");
    std::fs::write(
        &cert,
        b64.decode(user["client-certificate-data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        &key,
        b64.decode(user["client-key-data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    (cert, key)
}

const TALKER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo hello-stdout; echo hello-stderr >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done"]
  - name: web
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo served-by-httpd > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#;

/// Counts its own runs in an emptyDir (which outlives container restarts) and exits.
const CRASHER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "n=$(cat /state/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/n; echo run-$n; sleep 2; exit 1"]
    volumeMounts: [{name: state, mountPath: /state}]
  volumes:
  - name: state
    emptyDir: {}
"#;

const DONE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo finished"]
"#;

fn run_number(log: &str) -> Option<u32> {
    log.lines()
        .find_map(|l| l.strip_prefix("run-"))
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn logs_exec_cp_attach_port_forward_through_the_kubelet_api() {
    let server = Server::start_with_agent(&["--node-ip=127.0.0.1"]);
    let _cleanup = DeletePods(&server);
    import_busybox(&server);
    for manifest in [TALKER, CRASHER, DONE] {
        ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(manifest)));
    }
    wait_pod(&server, "talker", 120, "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && ready(p)
    });

    // The node advertises its kubelet API port, which serves only the API server.
    let node: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "nodes", "-o", "json"]))).unwrap();
    let port = node["items"][0]["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap();
    assert!(
        port > 0 && port != 10250,
        "an ephemeral kubelet port was asked for: {port}"
    );
    let url = format!("https://127.0.0.1:{port}/containerLogs/default/talker/main");
    let anonymous = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", " %{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(stdout(&anonymous).trim(), "Unauthorized\n 401");
    let (cert, key) = admin_cert_files(&server);
    let admin = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", " %{http_code}", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(&url)
        .output()
        .unwrap();
    let admin = stdout(&admin);
    assert!(
        admin.starts_with("Forbidden (user=") && admin.ends_with(" 403"),
        "{admin}"
    );

    // logs: both streams, -c, --tail, --timestamps, and the container defaulting error.
    let logs = ok(server.kubectl(&["logs", "talker", "-c", "main"]));
    for line in ["hello-stdout", "hello-stderr", "tick 1", "tick 2"] {
        assert!(logs.lines().any(|l| l == line), "{line:?} in {logs}");
    }
    let tail = ok(server.kubectl(&["logs", "talker", "-c", "main", "--tail=2"]));
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(lines.iter().all(|l| l.starts_with("tick ")), "{tail}");
    let stamped = ok(server.kubectl(&["logs", "talker", "-c", "main", "--tail=1", "--timestamps"]));
    let (ts, rest) = stamped.trim_end().split_once(' ').unwrap();
    assert!(
        ts.parse::<jiff::Timestamp>().is_ok() && ts.ends_with('Z') && ts.len() == 30,
        "{stamped}"
    );
    assert!(rest.starts_with("tick "), "{stamped}");
    let no_container =
        server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/talker/log"]);
    assert!(
        stderr(&no_container).contains(
            "a container name must be specified for pod talker, choose one of: [main web]"
        ),
        "{}",
        stderr(&no_container)
    );
    let web = ok(server.kubectl(&["logs", "talker", "-c", "web"]));
    assert_eq!(web, "", "httpd -f logs nothing");

    // logs -f streams lines as they are written.
    let (follow, rx) = spawn_kubectl(
        &server,
        "kubectl",
        &["logs", "-f", "talker", "-c", "main", "--tail=1"],
    );
    let streamed = collect_lines(&rx, 20, |l| l.len() >= 4);
    drop(follow);
    assert!(
        streamed.len() >= 4 && streamed.iter().all(|l| l.starts_with("tick ")),
        "{streamed:?}"
    );
    let ticks: Vec<u32> = streamed
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ticks while following: {ticks:?}"
    );

    // exec: output, exit codes and stdin, over SPDY (1.27) and WebSocket-then-SPDY (1.33).
    for bin in ["kubectl", "kubectl.1.27", "kubectl.1.33"] {
        let out = server.kubectl_version(
            bin,
            &[
                "exec",
                "talker",
                "-c",
                "main",
                "--",
                "sh",
                "-c",
                "echo hi; echo oops >&2; exit 3",
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(3), "{bin}: {}", stderr(&out));
        assert_eq!(stdout(&out), "hi\n", "{bin}");
        assert!(
            stderr(&out).contains("oops\n")
                && stderr(&out).contains("command terminated with exit code 3"),
            "{bin}: {}",
            stderr(&out)
        );
        let out = server.kubectl_version(
            bin,
            &[
                "exec", "-i", "talker", "-c", "main", "--", "tr", "a-z", "A-Z",
            ],
            Some("hello stdin\n"),
        );
        assert_eq!(ok(out), "HELLO STDIN\n", "{bin}");
    }

    // cp into and out of the pod (exec of tar both ways).
    let local = server.dir.path().join("local.txt");
    let content = "copied through tar\nsecond line\n";
    std::fs::write(&local, content).unwrap();
    ok(server.kubectl(&[
        "cp",
        local.to_str().unwrap(),
        "talker:/tmp/copied.txt",
        "-c",
        "main",
    ]));
    assert_eq!(
        ok(server.kubectl(&[
            "exec",
            "talker",
            "-c",
            "main",
            "--",
            "cat",
            "/tmp/copied.txt"
        ])),
        content
    );
    let back = server.dir.path().join("back.txt");
    ok(server.kubectl(&[
        "cp",
        "talker:/tmp/copied.txt",
        back.to_str().unwrap(),
        "-c",
        "main",
    ]));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), content);

    // attach shows the running container's output.
    let (attach, rx) = spawn_kubectl(&server, "kubectl", &["attach", "talker", "-c", "main"]);
    let attached = collect_lines(&rx, 20, |l| {
        l.iter().filter(|l| l.starts_with("tick ")).count() >= 2
    });
    drop(attach);
    assert!(
        attached.iter().filter(|l| l.starts_with("tick ")).count() >= 2,
        "{attached:?}"
    );

    // port-forward to busybox httpd: SPDY (1.27) and WebSocket-tunnel-then-SPDY (1.33).
    for bin in ["kubectl.1.27", "kubectl.1.33"] {
        let local_port = common::free_port();
        let mapping = format!("{local_port}:8080");
        let (pf, rx) = spawn_kubectl(&server, bin, &["port-forward", "pod/talker", &mapping]);
        let lines = collect_lines(&rx, 30, |l| {
            l.iter().any(|l| l.starts_with("Forwarding from 127.0.0.1"))
        });
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("Forwarding from 127.0.0.1")),
            "{bin}: {lines:?}"
        );
        for _ in 0..2 {
            let page = Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "10",
                    &format!("http://127.0.0.1:{local_port}/"),
                ])
                .output()
                .unwrap();
            assert_eq!(stdout(&page), "served-by-httpd\n", "{bin}");
        }
        drop(pf);
    }

    // --previous after a restart: the run before the current one.
    wait_pod(&server, "crasher", 120, "restarted", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let mut checked = false;
    for _ in 0..5 {
        let current = ok(server.kubectl(&["logs", "crasher"]));
        let previous = ok(server.kubectl(&["logs", "crasher", "--previous"]));
        let again = ok(server.kubectl(&["logs", "crasher"]));
        if current != again {
            continue; // restarted in between
        }
        let (cur, prev) = (run_number(&current), run_number(&previous));
        assert!(
            cur.is_some() && prev.is_some(),
            "current: {current:?}, previous: {previous:?}"
        );
        assert_eq!(
            prev.map(|p| p + 1),
            cur,
            "current: {current:?}, previous: {previous:?}"
        );
        checked = true;
        break;
    }
    assert!(checked, "the crasher kept restarting between reads");
    // Following a container ends when the container does.
    let started = Instant::now();
    let (follow, rx) = spawn_kubectl(&server, "kubectl", &["logs", "-f", "crasher"]);
    let lines = collect_lines(&rx, 60, |_| false);
    drop(follow);
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "logs -f did not end with the container: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("run-")), "{lines:?}");
    let previous = server.kubectl(&["logs", "talker", "-c", "main", "--previous"]);
    assert!(
        stderr(&previous)
            .contains("previous terminated container \"main\" in pod \"talker\" not found"),
        "{}",
        stderr(&previous)
    );

    // A completed pod keeps its logs but refuses exec.
    wait_pod(&server, "done", 120, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(ok(server.kubectl(&["logs", "done"])), "finished\n");
    let refused = server.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/done/exec?command=ls&stdout=true",
    ]);
    assert!(
        stderr(&refused).contains(
            "cannot exec into a container in a completed pod; current phase is Succeeded"
        ),
        "{}",
        stderr(&refused)
    );
}
