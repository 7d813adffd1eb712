//! Resource metrics end to end: the kubelet's `/stats/summary` and `/metrics/resource`,
//! the built-in `metrics.k8s.io` API behind `kubectl top`, its discovery and RBAC, and
//! container log rotation.
//!
//! The pod tests need root, containerd, runc and the CNI plugins (CI installs them).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok, stdout, wait_pod};
use serde_json::Value;

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
}

/// `kubectl top pods` rows: name → (millicores, rest of the line).
fn top_pods(server: &Server) -> Option<std::collections::HashMap<String, i64>> {
    let out = server.kubectl(&["top", "pods", "--no-headers"]);
    if !out.status.success() {
        return None;
    }
    Some(
        stdout(&out)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let name = f.next()?.to_string();
                let cpu = f.next()?.strip_suffix('m')?.parse().ok()?;
                Some((name, cpu))
            })
            .collect(),
    )
}

/// GETs `path` from this server's kubelet API with the API server's client identity.
fn kubelet_get(server: &Server, path: &str, with_cert: bool) -> (u16, String) {
    let node: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "nodes", "-o", "json"]))).unwrap();
    let port = node["items"][0]["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap();
    let tls = server.data_dir().join("server/tls");
    let ca = std::fs::read_to_string(tls.join("server-ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(tls.join("server-ca.key")).unwrap();
    let (cert, key) = kaji::pki::issue_client_cert(
        &ca,
        &ca_key,
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}"]);
    if with_cert {
        cmd.arg("--cert")
            .arg(dir.path().join("c.pem"))
            .arg("--key")
            .arg(dir.path().join("k.pem"));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn kubectl_top_stats_and_log_rotation() {
    let server = Server::start_with_agent(&[
        "--kubelet-arg=container-log-max-size=1Mi",
        "--kubelet-arg=container-log-max-files=3",
    ]);
    import_busybox(&server);
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: burner}
spec:
  containers:
  - name: burn
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "while :; do :; done"]
  terminationGracePeriodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - name: nap
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
  - name: nap2
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
  terminationGracePeriodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: logger}
spec:
  containers:
  - name: log
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "n=0; while :; do n=$((n+1)); echo \"$n aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"; if [ $((n % 2000)) = 0 ]; then sleep 1; fi; done"]
  terminationGracePeriodSeconds: 1
"#,
    );
    for p in ["burner", "sleeper", "logger"] {
        wait_pod(&server, p, 90, "Running", running);
    }

    // kubectl top pods: real millicores for the burner, about nothing for the sleeper.
    let deadline = Instant::now() + Duration::from_secs(120);
    let top = loop {
        if let Some(top) = top_pods(&server)
            && top.get("burner").is_some_and(|c| *c > 100)
            && top.contains_key("sleeper")
        {
            break top;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl top pods never showed the burner: {:?}\n{}",
            top_pods(&server),
            stdout(&server.kubectl(&["top", "pods"]))
        );
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(top["sleeper"] < 50, "{top:?}");
    let containers = ok(server.kubectl(&["top", "pods", "sleeper", "--containers"]));
    assert!(
        containers.contains("nap2") && containers.contains("nap "),
        "{containers}"
    );
    let all = ok(server.kubectl(&["top", "pods", "-A"]));
    assert!(all.contains("NAMESPACE") && all.contains("burner"), "{all}");
    let nodes = ok(server.kubectl(&["top", "nodes"]));
    let node_name =
        ok(server.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]));
    assert!(
        nodes.contains("CPU(cores)") && nodes.contains(&node_name),
        "{nodes}"
    );
    let missing = server.kubectl(&["top", "pod", "nope"]);
    assert!(
        common::stderr(&missing).contains("podmetrics.metrics.k8s.io \"default/nope\" not found"),
        "{}",
        common::stderr(&missing)
    );
    let raw: Value = serde_json::from_str(&ok(server.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burner",
    ])))
    .unwrap();
    assert_eq!(raw["kind"], "PodMetrics");
    assert_eq!(raw["containers"][0]["name"], "burn");

    // The kubelet's own endpoints.
    let (code, body) = kubelet_get(&server, "/stats/summary", true);
    assert_eq!(code, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], node_name.as_str());
    assert!(summary["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let burner = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "burner")
        .expect("burner in the summary");
    assert!(
        burner["cpu"]["usageNanoCores"].as_u64().unwrap() > 100_000_000,
        "{burner}"
    );
    assert!(
        burner["containers"][0]["memory"]["workingSetBytes"]
            .as_u64()
            .is_some()
    );
    let (code, text) = kubelet_get(&server, "/metrics/resource", true);
    assert_eq!(code, 200);
    assert!(
        text.contains("container_cpu_usage_seconds_total{container=\"burn\",namespace=\"default\",pod=\"burner\"}"),
        "{text}"
    );
    assert!(text.contains("node_memory_working_set_bytes ") && text.contains("scrape_error 0"));
    let (code, _) = kubelet_get(&server, "/stats/summary", false);
    assert_eq!(code, 401);

    // Log rotation: the logger's file was rotated (and older ones compressed), at most
    // three files are kept, and kubectl logs still reads the current file.
    let pod: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "pod", "logger", "-o", "json"]))).unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let dir = server
        .data_dir()
        .join(format!("agent/logs/default_logger_{uid}/log"));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let rotated = names.iter().filter(|n| n.starts_with("0.log.")).count();
        assert!(names.len() <= 4, "{names:?}");
        if names.iter().any(|n| n.ends_with(".gz")) && rotated <= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no compressed rotated log in {}: {names:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let size = std::fs::metadata(dir.join("0.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(size < 20 << 20, "current log is {size} bytes");
    // Right after a rotation the new file may still be empty (as upstream, only the
    // current file is read): ask again until the logger has written to it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let tail = loop {
        let tail = ok(server.kubectl(&["logs", "logger", "--tail=3"]));
        if tail.lines().count() >= 3 || Instant::now() > deadline {
            break tail;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 3, "{tail}");
    assert!(
        lines
            .iter()
            .all(|l| l.split(' ').next().unwrap().parse::<u64>().is_ok() && l.ends_with("aaaa")),
        "{tail}"
    );
    let _ = server.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--timeout=60s",
    ]);
}

#[test]
fn metrics_api_discovery_rbac_and_disable() {
    let server = Server::start(&[]);
    let versions = ok(server.kubectl(&["api-versions"]));
    assert!(
        versions.lines().any(|l| l == "metrics.k8s.io/v1beta1"),
        "{versions}"
    );
    let resources = ok(server.kubectl(&["api-resources", "--api-group=metrics.k8s.io"]));
    assert!(
        resources.contains("PodMetrics") && resources.contains("NodeMetrics"),
        "{resources}"
    );
    let legacy: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "--raw", "/apis"]))).unwrap();
    assert!(
        legacy["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "metrics.k8s.io")
    );
    let list: Value = serde_json::from_str(&ok(server.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/nodes",
    ])))
    .unwrap();
    assert_eq!(list["kind"], "NodeMetricsList");
    // Reading metrics is part of `view`.
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let can = server.kubectl(&["auth", "can-i", "list", "pods.metrics.k8s.io", "--as=alice"]);
        if stdout(&can).trim() == "yes" {
            break;
        }
        assert!(Instant::now() < deadline, "alice cannot read pod metrics");
        std::thread::sleep(Duration::from_millis(500));
    }
    let watch = server.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/pods?watch=true",
    ]);
    assert!(!watch.status.success());

    let off = Server::start(&["--disable=metrics-server"]);
    let versions = ok(off.kubectl(&["api-versions"]));
    assert!(!versions.contains("metrics.k8s.io"), "{versions}");
    let top = off.kubectl(&["top", "pods"]);
    assert!(!top.status.success());
    assert!(
        common::stderr(&top).contains("Metrics API not available"),
        "{}",
        common::stderr(&top)
    );
}
