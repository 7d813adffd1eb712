//! Pods run for real: a `kaji server` with its node agent runs pods through containerd and
//! runc — scheduling, shared volumes and localhost between containers, restarts with
//! back-off, OOM kills, and containers that survive a SIGKILL of kaji itself.
//!
//! Needs root, containerd, runc and the CNI plugins (CI installs them).

mod common;

use common::{apply, import_busybox, wait_pod};

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, ok};

fn delete_all_pods(server: &Server) {
    let _ = server.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--timeout=60s",
    ]);
}

#[test]
fn pods_run_for_real() {
    let server = Server::start_with_agent(&[]);
    import_busybox(&server);

    // Two containers sharing an emptyDir and talking over localhost.
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: duo, labels: {app: duo}}
spec:
  containers:
  - name: web
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo hello-from-web > /shared/index.html; httpd -f -p 8080 -h /shared"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  - name: client
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "sleep 1; while true; do wget -qO- http://localhost:8080/ || echo failed; sleep 1; done"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  volumes:
  - name: shared
    emptyDir: {}
"#,
    );
    let pod = wait_pod(&server, "duo", 90, "Running and Ready", |p| {
        p["status"]["phase"] == "Running"
            && p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    assert!(
        !pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty(),
        "scheduled"
    );
    let ip = pod["status"]["podIP"].as_str().unwrap_or("");
    assert!(
        ip.starts_with("10.42."),
        "pod IP from the node's podCIDR: {ip}"
    );
    // The client container's log (CRI format on the node) shows the web container's page.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let log = server
        .data_dir()
        .join(format!("agent/logs/default_duo_{uid}/client/0.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("hello-from-web") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client never reached web over localhost: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=duo",
    ]));
    for reason in ["Scheduled", "Created", "Started"] {
        assert!(events.contains(reason), "{reason} event: {events}");
    }

    // A crashing container: CrashLoopBackOff with a growing back-off and restart count.
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo about to fail; exit 3"]
"#,
    );
    let pod = wait_pod(
        &server,
        "crasher",
        90,
        "CrashLoopBackOff after 2 restarts",
        |p| {
            let cs = &p["status"]["containerStatuses"][0];
            cs["restartCount"].as_i64().unwrap_or(0) >= 2
                && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        },
    );
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    let msg = cs["state"]["waiting"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("back-off 20s") || msg.starts_with("back-off 40s"),
        "growing back-off: {msg}"
    );
    assert_eq!(pod["status"]["phase"], "Running");
    let table = ok(server.kubectl(&["get", "pod", "crasher"]));
    assert!(table.contains("CrashLoopBackOff"), "{table}");

    // A container that exceeds its memory limit is OOMKilled (restartPolicy Never: Failed).
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "tail /dev/zero"]
    resources: {limits: {memory: 32Mi}}
"#,
    );
    let pod = wait_pod(&server, "hog", 90, "OOMKilled", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "OOMKilled",
        "{}",
        pod["status"]
    );

    // A pod that fits nowhere is refused with upstream's message, then placed when the
    // node frees up.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let big = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: big}}
spec:
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
    resources: {{requests: {{cpu: "{cpus}"}}}}
"#
    );
    apply(&server, &big.replace("name: big", "name: hold"));
    wait_pod(&server, "hold", 60, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    apply(&server, &big);
    let pod = wait_pod(&server, "big", 30, "Unschedulable", |p| {
        p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
        })
    });
    let cond = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .unwrap()
        .clone();
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .starts_with("0/1 nodes are available: 1 Insufficient cpu."),
        "{cond}"
    );
    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=big",
    ]));
    assert!(events.contains("FailedScheduling"), "{events}");
    ok(server.kubectl(&["delete", "pod", "hold", "--grace-period=1"]));
    wait_pod(
        &server,
        "big",
        90,
        "scheduled after the node freed up",
        |p| p["spec"]["nodeName"].is_string(),
    );

    delete_all_pods(&server);
}

#[test]
fn containers_survive_sigkill_of_kaji() {
    let mut server = Server::start_with_agent(&[]);
    import_busybox(&server);
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
"#,
    );
    let before = wait_pod(&server, "steady", 90, "Running", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    });
    let id = before["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    server.kill9();
    server.spawn();
    // Give the agent time to re-adopt, then check nothing was restarted.
    std::thread::sleep(Duration::from_secs(8));
    let after = wait_pod(&server, "steady", 60, "Running", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    });
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap(),
        id,
        "same container after restart"
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    // Deleting the pod leaves nothing behind in the runtime.
    ok(server.kubectl(&[
        "delete",
        "pod",
        "steady",
        "--grace-period=1",
        "--timeout=60s",
    ]));
    let socket = server.data_dir().join("run/containerd/containerd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args(["-n", "k8s.io", "containers", "ls", "-q"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers left behind: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
