//! Node-pressure eviction by the node agent: a hard `memory.available` threshold set
//! above the machine's memory puts the node under memory pressure for the whole test, so
//! the node reports `MemoryPressure=True`, gets the `memory-pressure:NoSchedule` taint,
//! evicts pods (BestEffort before a higher-priority Burstable one) with the kubelet's
//! status, message and events, and new pods without a toleration stay Pending.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn get_json(server: &Server, args: &[&str]) -> Value {
    let out = ok(server.kubectl(args));
    serde_json::from_str(&out).unwrap()
}

fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

fn wait_for<T>(secs: u64, what: &str, server: &Server, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not reached in {secs}s\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

const PODS: &str = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: important}
value: 1000
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  terminationGracePeriodSeconds: 30
  tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]
  containers:
  - name: hog
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: vip}
spec:
  priorityClassName: important
  tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]
  containers:
  - name: vip
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources:
      requests: {cpu: 100m}
"#;

const TOLERANT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: tolerant}
spec:
  replicas: 1
  selector: {matchLabels: {app: tolerant}}
  template:
    metadata: {labels: {app: tolerant}}
    spec:
      tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        command: ["sleep", "3600"]
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        command: ["sleep", "3600"]
"#;

#[test]
fn memory_pressure_taints_the_node_and_evicts_besteffort_pods_first() {
    let server = Server::start_with_agent(&[
        "--kubelet-arg=eviction-hard=memory.available<100Ti",
        "--kubelet-arg=eviction-pressure-transition-period=5s",
        "--disable=local-storage,metrics-server",
    ]);
    import_busybox(&server);

    // The node reports memory pressure with the kubelet's reason and message, and the node
    // lifecycle controller taints it.
    let node = wait_for(60, "MemoryPressure=True and the taint", &server, || {
        let nodes = get_json(&server, &["get", "nodes", "-o", "json"]);
        let node = nodes["items"][0].clone();
        let c = condition(&node, "MemoryPressure")?;
        let tainted = node["spec"]["taints"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule"
            })
        });
        (c["status"] == "True" && tainted).then_some(node)
    });
    let mp = condition(&node, "MemoryPressure").unwrap().clone();
    assert_eq!(mp["reason"], "KubeletHasInsufficientMemory");
    assert_eq!(mp["message"], "kubelet has insufficient memory available");
    let disk = condition(&node, "DiskPressure").unwrap();
    assert_eq!(disk["status"], "False", "{disk}");
    assert_eq!(disk["reason"], "KubeletHasNoDiskPressure");
    let node_name = node["metadata"]["name"].as_str().unwrap().to_string();

    // A BestEffort pod and a higher-priority Burstable pod (no memory request: allocatable
    // memory is 0 under this threshold), both tolerating the taint.
    apply(&server, PODS);
    let hog = wait_for(60, "the BestEffort pod evicted", &server, || {
        let pod = get_json(&server, &["get", "pod", "hog", "-o", "json"]);
        (pod["status"]["phase"] == "Failed").then_some(pod)
    });
    // ... before the other one.
    let vip = get_json(&server, &["get", "pod", "vip", "-o", "json"]);
    assert_ne!(vip["status"]["phase"], "Failed", "{}", vip["status"]);
    assert_eq!(hog["status"]["reason"], "Evicted", "{}", hog["status"]);
    let message = hog["status"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 100Ti, available: "
        ),
        "{message}"
    );
    let target = condition(&hog, "DisruptionTarget").expect("DisruptionTarget condition");
    assert_eq!(target["status"], "True");
    assert_eq!(target["reason"], "TerminationByKubelet");
    assert_eq!(target["message"], message.as_str());
    // kubectl shows the reason as the pod's status.
    let table = ok(server.kubectl(&["get", "pod", "hog"]));
    assert!(table.contains("Evicted"), "{table}");

    // An Evicted warning event with the same message, and the containers are killed.
    wait_for(30, "the Evicted and Killing events", &server, || {
        let events = get_json(
            &server,
            &[
                "get",
                "events",
                "--field-selector=involvedObject.name=hog",
                "-o",
                "json",
            ],
        );
        let items = events["items"].as_array()?;
        let evicted = items.iter().find(|e| e["reason"] == "Evicted")?;
        assert_eq!(evicted["type"], "Warning");
        assert_eq!(evicted["message"], message.as_str());
        assert_eq!(evicted["source"]["component"], "kubelet");
        assert_eq!(
            evicted["metadata"]["annotations"]["starved_resource"],
            "memory"
        );
        items.iter().any(|e| e["reason"] == "Killing").then_some(())
    });

    // The higher-priority pod goes next.
    let vip = wait_for(40, "the higher-priority pod evicted", &server, || {
        let pod = get_json(&server, &["get", "pod", "vip", "-o", "json"]);
        (pod["status"]["phase"] == "Failed").then_some(pod)
    });
    assert_eq!(vip["status"]["reason"], "Evicted");
    let vip_message = vip["status"]["message"].as_str().unwrap();
    assert!(
        vip_message.starts_with("The node was low on resource: memory."),
        "{vip_message}"
    );
    // Allocatable memory is the capacity minus the hard memory threshold (here: none).
    let node = get_json(&server, &["get", "node", &node_name, "-o", "json"]);
    assert_eq!(node["status"]["allocatable"]["memory"], "0Ki");

    // The evicted pod's container is reported killed.
    wait_for(40, "hog's container terminated", &server, || {
        let pod = get_json(&server, &["get", "pod", "hog", "-o", "json"]);
        let state = &pod["status"]["containerStatuses"][0]["state"];
        (state["running"].is_null() && !state["terminated"].is_null()).then_some(())
    });

    // A ReplicaSet replaces its evicted pod.
    apply(&server, TOLERANT);
    wait_for(60, "an evicted ReplicaSet pod replaced", &server, || {
        let pods = get_json(
            &server,
            &["get", "pods", "-l", "app=tolerant", "-o", "json"],
        );
        let items = pods["items"].as_array()?;
        let evicted = items.iter().any(|p| p["status"]["reason"] == "Evicted");
        (evicted && items.len() >= 2).then_some(())
    });

    // New pods without a toleration stay Pending, naming the taint.
    apply(&server, DEPLOYMENT);
    let pending = wait_for(60, "an unschedulable Deployment pod", &server, || {
        let pods = get_json(&server, &["get", "pods", "-l", "app=web", "-o", "json"]);
        let pod = pods["items"].as_array()?.first()?.clone();
        let c = condition(&pod, "PodScheduled")?;
        (c["status"] == "False").then_some(pod)
    });
    assert_eq!(pending["status"]["phase"], "Pending");
    let sched = condition(&pending, "PodScheduled").unwrap();
    assert_eq!(sched["reason"], "Unschedulable");
    let why = sched["message"].as_str().unwrap();
    assert!(
        why.contains("untolerated taint {node.kubernetes.io/memory-pressure: }"),
        "{why}"
    );
    let name = pending["metadata"]["name"].as_str().unwrap().to_string();
    wait_for(30, "a FailedScheduling event", &server, || {
        let events = get_json(
            &server,
            &[
                "get",
                "events",
                &format!("--field-selector=involvedObject.name={name}"),
                "-o",
                "json",
            ],
        );
        events["items"]
            .as_array()?
            .iter()
            .any(|e| {
                e["reason"] == "FailedScheduling"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("node.kubernetes.io/memory-pressure"))
            })
            .then_some(())
    });

    // The condition kept its transition time across status updates, and the node
    // recorded the transition.
    let node = get_json(&server, &["get", "node", &node_name, "-o", "json"]);
    let now = condition(&node, "MemoryPressure").unwrap();
    assert_eq!(now["status"], "True");
    assert_eq!(now["lastTransitionTime"], mp["lastTransitionTime"]);
    let events = get_json(&server, &["get", "events", "-n", "default", "-o", "json"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"]["kind"] == "Node")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"EvictionThresholdMet"), "{reasons:?}");
}
