//! DaemonSets against a real `kaji server` with its node agent: a daemon pod per eligible
//! node (the real node runs it; fake Nodes registered through the API get pods bound to
//! them, or not, by nodeSelector and taints), `kubectl rollout status`, rolling updates,
//! `kubectl rollout history`/`undo` through ControllerRevisions, and the table columns.
//!
//! Needs root, containerd, runc and the CNI plugins, as the other pod tests do.

mod common;

use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok, stderr, stdout};
use serde_json::Value;

fn json_of(server: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(server.kubectl(&a))).unwrap()
}

/// The pods of a DaemonSet (by label `app=<name>`), not being deleted.
fn live_pods(server: &Server, app: &str) -> Vec<Value> {
    json_of(server, &["get", "pods", "-l", &format!("app={app}")])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn daemonset(name: &str, marker: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      {extra_spec}
      tolerations:
      - {{key: node.kubernetes.io/not-ready, operator: Exists}}
      - {{key: node.kubernetes.io/unreachable, operator: Exists}}
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "sleep 3600"]
        env: [{{name: MARKER, value: "{marker}"}}]
"#
    )
}

fn marker_of(pod: &Value) -> String {
    pod["spec"]["containers"][0]["env"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn rollout_status(server: &Server, what: &str) -> String {
    let out = server.kubectl(&["rollout", "status", what, "--timeout=180s"]);
    assert!(
        out.status.success(),
        "rollout status {what}: {}\n{}",
        stderr(&out),
        server.log()
    );
    stdout(&out)
}

#[test]
fn daemon_pods_follow_nodes_and_roll() {
    let server = Server::start_with_agent(&[]);
    import_busybox(&server);
    let node = wait_until("the node to register", 120, || {
        let nodes = json_of(&server, &["get", "nodes"]);
        nodes["items"][0]["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| nodes.to_string())
    });

    apply(&server, &daemonset("agent", "v1", ""));
    let out = rollout_status(&server, "ds/agent");
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = live_pods(&server, "agent");
    assert_eq!(pods.len(), 1, "one pod on the one node");
    let first = pods[0].clone();
    assert_eq!(first["spec"]["nodeName"], node.as_str());
    assert_eq!(first["status"]["phase"], "Running");
    // Pinned through required node affinity, as upstream does, with daemon tolerations.
    let term = &first["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(term["key"], "metadata.name");
    assert_eq!(term["values"][0], node.as_str());
    let tolerations = first["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/disk-pressure"),
        "{tolerations}"
    );
    assert!(
        first["metadata"]["labels"]["controller-revision-hash"].is_string(),
        "{}",
        first["metadata"]
    );
    let ds = json_of(&server, &["get", "ds", "agent"]);
    let st = &ds["status"];
    assert_eq!(
        (
            st["desiredNumberScheduled"].as_i64(),
            st["currentNumberScheduled"].as_i64(),
            st["numberReady"].as_i64(),
            st["updatedNumberScheduled"].as_i64(),
            st["numberAvailable"].as_i64(),
        ),
        (Some(1), Some(1), Some(1), Some(1), Some(1)),
        "{st}"
    );
    assert_eq!(st["observedGeneration"], ds["metadata"]["generation"]);
    let table = ok(server.kubectl(&["get", "ds", "agent"]));
    assert!(
        table.starts_with("NAME") && table.contains("DESIRED") && table.contains("NODE SELECTOR"),
        "{table}"
    );

    // A rolling update replaces the pod.
    apply(&server, &daemonset("agent", "v2", ""));
    rollout_status(&server, "ds/agent");
    let replaced = wait_until("the updated pod", 60, || {
        let pods = live_pods(&server, "agent");
        match &pods[..] {
            [p] if marker_of(p) == "v2" && p["status"]["phase"] == "Running" => Ok(p.clone()),
            _ => Err(format!("{} pods", pods.len())),
        }
    });
    assert_ne!(replaced["metadata"]["uid"], first["metadata"]["uid"]);
    assert_ne!(
        replaced["metadata"]["labels"]["controller-revision-hash"],
        first["metadata"]["labels"]["controller-revision-hash"]
    );
    let revisions = ok(server.kubectl(&["get", "controllerrevisions"]));
    assert!(revisions.contains("daemonset.apps/agent"), "{revisions}");
    let history = ok(server.kubectl(&["rollout", "history", "ds/agent"]));
    assert!(
        history.lines().any(|l| l.trim_start().starts_with('1'))
            && history.lines().any(|l| l.trim_start().starts_with('2')),
        "{history}"
    );
    // Undo restores the first template (a strategic merge patch from revision 1).
    ok(server.kubectl(&["rollout", "undo", "ds/agent"]));
    rollout_status(&server, "ds/agent");
    wait_until("the rolled-back pod", 60, || {
        let pods = live_pods(&server, "agent");
        match &pods[..] {
            [p] if marker_of(p) == "v1" && p["status"]["phase"] == "Running" => Ok(()),
            _ => Err(format!("{pods:?}")),
        }
    });
    let history = ok(server.kubectl(&["rollout", "history", "ds/agent"]));
    assert!(
        history.lines().any(|l| l.trim_start().starts_with('3')),
        "the restored revision is renumbered: {history}"
    );

    // More nodes: one labelled, one tainted. They have no agent, so their pods never run.
    apply(
        &server,
        r#"
apiVersion: v1
kind: Node
metadata: {name: fake-ssd, labels: {disk: ssd, kubernetes.io/hostname: fake-ssd}}
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
---
apiVersion: v1
kind: Node
metadata: {name: fake-tainted, labels: {kubernetes.io/hostname: fake-tainted}}
spec:
  taints: [{key: dedicated, value: db, effect: NoSchedule}]
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
"#,
    );
    apply(
        &server,
        &daemonset("ssd", "v1", "nodeSelector: {disk: ssd}"),
    );
    let bound = wait_until("daemon pods bound to the fake node", 60, || {
        let on_fake: Vec<Value> = live_pods(&server, "agent")
            .into_iter()
            .chain(live_pods(&server, "ssd"))
            .filter(|p| p["spec"]["nodeName"] == "fake-ssd")
            .collect();
        if on_fake.len() == 2 {
            Ok(on_fake)
        } else {
            Err(format!("{} pods on fake-ssd", on_fake.len()))
        }
    });
    assert_eq!(bound.len(), 2);
    // Give the controller a moment to (wrongly) act on the other nodes.
    std::thread::sleep(Duration::from_secs(2));
    let agent_nodes: Vec<String> = live_pods(&server, "agent")
        .iter()
        .map(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or("<unbound>")
                .to_string()
        })
        .collect();
    assert_eq!(
        agent_nodes.len(),
        2,
        "real node + fake-ssd, none on the tainted node: {agent_nodes:?}"
    );
    assert!(!agent_nodes.contains(&"fake-tainted".to_string()));
    let ssd_nodes: Vec<String> = live_pods(&server, "ssd")
        .iter()
        .map(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or("<unbound>")
                .to_string()
        })
        .collect();
    assert_eq!(
        ssd_nodes,
        ["fake-ssd"],
        "the nodeSelector excludes the real node"
    );
    let ds = json_of(&server, &["get", "ds", "agent"]);
    assert_eq!(
        ds["status"]["desiredNumberScheduled"], 2,
        "{}",
        ds["status"]
    );

    // Removing the label makes the pod misscheduled: it is deleted.
    ok(server.kubectl(&["label", "node", "fake-ssd", "disk-"]));
    wait_until("the ssd pod to go", 60, || {
        let pods = live_pods(&server, "ssd");
        if pods.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pods", pods.len()))
        }
    });
    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=ssd",
    ]));
    assert!(
        events.contains("SuccessfulCreate") && events.contains("SuccessfulDelete"),
        "{events}"
    );
}
