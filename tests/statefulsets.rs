//! StatefulSets against a real `kaji server` with its node agent: ordered creation with
//! stable names, a PersistentVolumeClaim per pod provisioned by the local-path provisioner
//! and bound by the PV binder, data surviving pod deletion, partitioned rolling updates,
//! `kubectl rollout status`, and scale-down in reverse order keeping the claims.
//!
//! Needs root, containerd, runc and the CNI plugins, as the other pod tests do.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok, stderr, stdout};
use serde_json::Value;

fn json_of(server: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(server.kubectl(&a))).unwrap()
}

fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!(
                    "timed out waiting for {what}; last seen: {last}\n{}",
                    DIAG.with(|d| d.borrow().clone())
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

thread_local! {
    /// What a timeout prints besides the last value (the cluster's state).
    static DIAG: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Records the cluster's state for a timeout message.
fn diagnose(server: &Server) {
    let mut out = String::new();
    for args in [
        &["get", "pods,pvc,pv", "-o", "wide"][..],
        &["describe", "pods"][..],
        &["get", "events"][..],
    ] {
        let o = server.kubectl(args);
        out += &stdout(&o);
        out += &stderr(&o);
    }
    let log = server.log();
    let tail: Vec<&str> = log.lines().rev().take(80).collect();
    out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    DIAG.with(|d| *d.borrow_mut() = out);
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The set's pods by name.
fn pods(server: &Server) -> BTreeMap<String, Value> {
    json_of(server, &["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p,
            )
        })
        .collect()
}

fn statefulset(marker: &str, replicas: u32, partition: u32) -> String {
    // kubectl reports any set partition (even 0) as a partitioned roll out.
    let strategy = if partition == 0 {
        "{type: RollingUpdate}".to_string()
    } else {
        format!("{{type: RollingUpdate, rollingUpdate: {{partition: {partition}}}}}")
    };
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  updateStrategy: {strategy}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "sleep 3600"]
        env: [{{name: MARKER, value: "{marker}"}}]
        readinessProbe:
          exec: {{command: ["true"]}}
          periodSeconds: 1
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    )
}

fn rollout_status(server: &Server) -> String {
    let out = server.kubectl(&["rollout", "status", "sts/web", "--timeout=240s"]);
    assert!(
        out.status.success(),
        "rollout status: {}\n{}",
        stderr(&out),
        server.log()
    );
    stdout(&out)
}

fn revision(pod: &Value) -> String {
    pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ordered_pods_with_stable_storage() {
    let server = Server::start_with_agent(&[]);
    import_busybox(&server);
    // The local-path class exists and is the default.
    let classes = wait_until("the local-path StorageClass", 60, || {
        let out = server.kubectl(&["get", "storageclass"]);
        let s = stdout(&out);
        if s.contains("local-path (default)") {
            Ok(s)
        } else {
            Err(s + &stderr(&out))
        }
    });
    assert!(
        classes.contains("rancher.io/local-path") && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );

    apply(&server, &statefulset("v1", 3, 0));
    // Ordered creation: a pod appears only once its predecessor is Running and Ready.
    let mut order: Vec<String> = Vec::new();
    let started = Instant::now();
    wait_until("three ready pods", 300, || {
        let snapshot = pods(&server);
        for (name, _) in snapshot.iter() {
            if !order.contains(name) {
                order.push(name.clone());
            }
        }
        for i in 1..3 {
            if snapshot.contains_key(&format!("web-{i}")) {
                let prev = snapshot.get(&format!("web-{}", i - 1));
                assert!(
                    prev.is_some_and(|p| p["status"]["phase"] == "Running" && ready(p)),
                    "web-{i} exists while web-{} is not ready: {:?}",
                    i - 1,
                    prev.map(|p| &p["status"])
                );
            }
        }
        let n = snapshot.values().filter(|p| ready(p)).count();
        if n == 3 {
            Ok(())
        } else {
            if Instant::now() > started + Duration::from_secs(280) {
                diagnose(&server);
            }
            Err(format!(
                "{n} ready of {:?}",
                snapshot.keys().collect::<Vec<_>>()
            ))
        }
    });
    assert_eq!(order, ["web-0", "web-1", "web-2"]);
    let out = rollout_status(&server);
    assert!(out.contains("rolling update complete 3 pods"), "{out}");

    // Identity.
    let web1 = &pods(&server)["web-1"];
    assert_eq!(web1["spec"]["hostname"], "web-1");
    assert_eq!(web1["spec"]["subdomain"], "web");
    assert_eq!(
        web1["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "web-1"
    );
    assert_eq!(
        web1["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );

    // A claim per pod, bound to a local-path volume on the node.
    let data_dir = server.data_dir();
    for i in 0..3 {
        let pvc = json_of(&server, &["get", "pvc", &format!("data-web-{i}")]);
        assert_eq!(pvc["status"]["phase"], "Bound", "{}", pvc);
        assert_eq!(pvc["spec"]["storageClassName"], "local-path");
        assert_eq!(
            pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
            "yes"
        );
        let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
        assert_eq!(
            pv_name,
            format!("pvc-{}", pvc["metadata"]["uid"].as_str().unwrap())
        );
        let pv = json_of(&server, &["get", "pv", &pv_name]);
        assert_eq!(pv["status"]["phase"], "Bound");
        assert_eq!(pv["spec"]["claimRef"]["name"], format!("data-web-{i}"));
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        let path = pv["spec"]["hostPath"]["path"].as_str().unwrap();
        assert!(
            path.starts_with(&data_dir.join("storage").display().to_string()),
            "{path}"
        );
    }
    let table = ok(server.kubectl(&["get", "pvc"]));
    assert!(
        table.contains("data-web-0") && table.contains("Bound") && table.contains("RWO"),
        "{table}"
    );
    let table = ok(server.kubectl(&["get", "pv"]));
    assert!(
        table.contains("default/data-web-1") && table.contains("Delete"),
        "{table}"
    );

    // Data written through web-1 survives the pod.
    ok(server.kubectl(&[
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo persisted > /data/file",
    ]));
    let old_uid = web1["metadata"]["uid"].clone();
    ok(server.kubectl(&["delete", "pod", "web-1", "--wait=false"]));
    wait_until("web-1 to come back", 120, || {
        let snapshot = pods(&server);
        match snapshot.get("web-1") {
            Some(p) if p["metadata"]["uid"] != old_uid && ready(p) => Ok(()),
            other => Err(format!("{:?}", other.map(|p| &p["status"]))),
        }
    });
    let content = ok(server.kubectl(&["exec", "web-1", "--", "cat", "/data/file"]));
    assert_eq!(content.trim(), "persisted");

    // A partitioned rolling update touches only ordinals at or above the partition.
    apply(&server, &statefulset("v2", 3, 2));
    let out = rollout_status(&server);
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let sts = json_of(&server, &["get", "sts", "web"]);
    let update = sts["status"]["updateRevision"]
        .as_str()
        .unwrap()
        .to_string();
    let current = sts["status"]["currentRevision"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(update, current);
    let snapshot = pods(&server);
    assert!(update.ends_with(&revision(&snapshot["web-2"])), "{update}");
    for p in ["web-0", "web-1"] {
        assert!(current.ends_with(&revision(&snapshot[p])), "{p}: {current}");
    }
    assert_eq!(sts["status"]["updatedReplicas"], 1, "{}", sts["status"]);
    let revisions = ok(server.kubectl(&["get", "controllerrevisions"]));
    assert!(revisions.contains("statefulset.apps/web"), "{revisions}");

    // Scale down: web-2 goes before web-1; the claims stay (Retain by default).
    ok(server.kubectl(&["scale", "sts", "web", "--replicas=1"]));
    wait_until("one pod left", 180, || {
        let snapshot = pods(&server);
        let leaving = |n: &str| {
            snapshot
                .get(n)
                .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null())
        };
        if leaving("web-1") {
            assert!(
                !snapshot.contains_key("web-2"),
                "web-1 is going while web-2 still exists"
            );
        }
        if snapshot.len() == 1 && snapshot.contains_key("web-0") {
            Ok(())
        } else {
            Err(format!("{:?}", snapshot.keys().collect::<Vec<_>>()))
        }
    });
    let claims = ok(server.kubectl(&["get", "pvc", "-o", "name"]));
    for i in 0..3 {
        assert!(claims.contains(&format!("data-web-{i}")), "{claims}");
    }
    // Deleting a claim releases its volume; the provisioner deletes it (policy Delete) and
    // the node agent removes its directory.
    let pvc = json_of(&server, &["get", "pvc", "data-web-2"]);
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
    let pv = json_of(&server, &["get", "pv", &pv_name]);
    let dir = std::path::PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(dir.is_dir(), "{}", dir.display());
    ok(server.kubectl(&["delete", "pvc", "data-web-2"]));
    wait_until("the released volume to be deleted", 60, || {
        let out = server.kubectl(&["get", "pv", &pv_name]);
        if out.status.success() {
            Err(stdout(&out))
        } else {
            Ok(())
        }
    });
    wait_until("the volume directory to be removed", 90, || {
        if dir.exists() {
            Err(dir.display().to_string())
        } else {
            Ok(())
        }
    });

    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]));
    assert!(
        events.contains("create Pod web-0 in StatefulSet web successful")
            && events.contains("create Claim data-web-0 Pod web-0 in StatefulSet web success")
            && events.contains("delete Pod web-2 in StatefulSet web successful"),
        "{events}"
    );
}
