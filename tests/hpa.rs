//! The HorizontalPodAutoscaler end to end: `kubectl autoscale` on a Deployment of CPU
//! burners scales it up from real usage read through the metrics API, `kubectl get hpa`
//! shows the utilization, and once the load stops it scales back down (with a short
//! scale-down stabilization window).
//!
//! Needs root, containerd, runc and the CNI plugins (CI installs them).

mod common;

use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok, stdout};
use serde_json::Value;

fn replicas(server: &Server) -> i64 {
    let out = server.kubectl(&[
        "get",
        "deployment",
        "burner",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    stdout(&out).trim().parse().unwrap_or(-1)
}

fn wait_replicas(server: &Server, want: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while replicas(server) != want {
        assert!(
            Instant::now() < deadline,
            "deployment never reached {want} replicas (now {}):\n{}\n{}\n{}",
            replicas(server),
            stdout(&server.kubectl(&["get", "hpa", "burner", "-o", "yaml"])),
            stdout(&server.kubectl(&["top", "pods"])),
            stdout(&server.kubectl(&["get", "events"])),
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The messages of the autoscaler's SuccessfulRescale events.
fn rescale_events(server: &Server) -> String {
    let list: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "events", "-o", "json"]))).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "SuccessfulRescale")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn autoscaler_scales_on_cpu() {
    let server = Server::start_with_agent(&[]);
    import_busybox(&server);
    // The burners spin until the test creates `stop` in a host directory they share.
    let ctl = server.dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    apply(
        &server,
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burner}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burner}}}}
  template:
    metadata: {{labels: {{app: burner}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "while [ ! -f /ctl/stop ]; do :; done; exec sleep 3600"]
        resources: {{requests: {{cpu: 50m}}}}
        volumeMounts: [{{name: ctl, mountPath: /ctl}}]
      volumes:
      - name: ctl
        hostPath: {{path: {}}}
"#,
            ctl.display()
        ),
    );
    ok(server.kubectl(&[
        "autoscale",
        "deployment",
        "burner",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]));
    ok(server.kubectl(&[
        "patch",
        "hpa",
        "burner",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ]));

    // One burner uses ~20x its request: straight to the maximum of 3.
    wait_replicas(&server, 3, 180);
    let hpa = ok(server.kubectl(&["get", "hpa", "burner"]));
    let row = hpa.lines().nth(1).unwrap_or_default();
    let target = row
        .split_whitespace()
        .skip_while(|f| *f != "cpu:")
        .nth(1)
        .unwrap_or_default();
    let current: i64 = target
        .split('/')
        .next()
        .and_then(|c| c.strip_suffix('%'))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no utilization in TARGETS: {hpa}"));
    assert!(target.ends_with("/50%") && current > 100, "{hpa}");
    let events = rescale_events(&server);
    assert!(
        events.contains(
            "New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );
    let status: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "hpa", "burner", "-o", "json"]))).unwrap();
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let cond = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(cond("AbleToScale")["status"], "True");
    assert_eq!(cond("ScalingActive")["reason"], "ValidMetricFound");
    assert!(status["status"]["lastScaleTime"].is_string());

    // The load stops: back down to the minimum.
    std::fs::write(ctl.join("stop"), "").unwrap();
    wait_replicas(&server, 1, 180);
    let events = rescale_events(&server);
    assert!(
        events.contains("New size: 1; reason: All metrics below target"),
        "{events}"
    );
    let _ = server.kubectl(&["delete", "deployment", "burner", "--timeout=60s"]);
}
