//! Multi-node clusters: `kaji agent` joining a server with the join token, pods on the
//! joined node, and the node lifecycle controller (NotReady/Unknown, unreachable taints,
//! taint-based eviction, recovery when the agent comes back).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A `kaji agent` process joined to a test server, with its own data dir (and containerd)
/// in a network namespace of its own (two nodes cannot share one: each has its pod bridge
/// `cni0` with its own podCIDR gateway). It reaches the server over the namespace's veth
/// link. Dropping it removes every process and mount it left behind, then the namespace.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    netns: Netns,
}

impl Agent {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(server: &Server, netns: Netns, node: &str, token: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args = vec![
            "agent".to_string(),
            format!("--server=https://{}:{}", netns.host_ip, server.port),
            format!("--node-ip={}", netns.node_ip),
            format!("--data-dir={}", data.display()),
            format!("--node-name={node}"),
            "--kubelet-port=0".into(),
            "--disable-kube-proxy".into(),
            "--disable=dns,ingress".into(),
            "--disable-network-policy".into(),
        ];
        let mut a = Agent {
            child: None,
            dir,
            args,
            netns,
        };
        a.spawn(token);
        a
    }

    /// (Re)starts the agent on its data dir; the token comes through KAJI_TOKEN.
    fn spawn(&mut self, token: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .netns
            .command(kaji_bin())
            .args(&self.args)
            .env("KAJI_TOKEN", token)
            .env_remove("KAJI_CONFIG_FILE")
            .env_remove("KAJI_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kaji agent");
        self.child = Some(child);
    }

    /// SIGKILLs the agent, then its containerd and shims (everything started with its data
    /// dir on the command line), as if the machine dropped off the network.
    fn kill_node(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        pkill_dir(&self.data_dir());
    }

    /// SIGTERM and wait.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let data = self.data_dir();
        pkill_dir(&data);
        let prefix = data.display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

/// SIGKILLs everything a node with data dir `dir` runs: containerd and its shims (the dir
/// is on their command line) and the containers (their root filesystem is an overlay
/// whose layers live under the dir), as if the machine died.
fn pkill_dir(dir: &Path) {
    let prefix = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let on_cmdline = String::from_utf8_lossy(&cmdline).contains(&prefix);
        let rootfs_under_dir = std::fs::read_to_string(e.path().join("mountinfo"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .is_some_and(|l| l.contains(&prefix));
        if on_cmdline || rootfs_under_dir {
            signal(pid, "KILL");
        }
    }
}

/// Runs `kaji agent` as node `node` from a fresh data dir, expecting it to give up (wrong
/// token, or a node name taken by another machine), with a time limit.
fn agent_fails(server: &Server, token: &str, node: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(kaji_bin())
        .arg("agent")
        .arg(format!("--server=https://127.0.0.1:{}", server.port))
        .arg(format!("--token={token}"))
        .arg(format!("--data-dir={}", dir.path().display()))
        .arg(format!("--node-name={node}"))
        .arg("--kubelet-port=0")
        .env_remove("KAJI_CONFIG_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    pkill_dir(dir.path());
    out
}

fn get_json(server: &Server, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = server.kubectl(&a);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn ready_status(node: &Value) -> String {
    condition(node, "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn taints(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap(),
                        t["effect"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` until it returns `Some`, or panics with `what` and the logs.
fn wait_for<T>(
    secs: u64,
    what: &str,
    logs: &dyn Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not reached in {secs}s\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

const UNREACHABLE_NO_EXECUTE: &str = "node.kubernetes.io/unreachable:NoExecute";
const UNREACHABLE_NO_SCHEDULE: &str = "node.kubernetes.io/unreachable:NoSchedule";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable:NoSchedule";

#[test]
fn agent_joins_runs_pods_and_unreachable_nodes_are_evicted() {
    // node2's network namespace reaches the server (in the host's) over its veth link.
    let netns = Netns::create();
    let server = Server::start_with_agent(&[
        "--node-monitor-grace-period=10s",
        "--node-name=node1",
        "--bind-address=0.0.0.0",
        &format!("--tls-san={}", netns.host_ip),
    ]);
    import_busybox(&server);

    // The join token is stored in k3s's format, naming the CA's hash.
    let token_file = server.data_dir().join("server/token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        token.starts_with("K10") && token.contains("::server:"),
        "{token}"
    );
    let (hash, secret) = token
        .strip_prefix("K10")
        .unwrap()
        .split_once("::server:")
        .unwrap();

    // Wrong tokens are refused with a clear error; no node shows up.
    let out = agent_fails(&server, &format!("K10{hash}::server:wrong"), "intruder");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refused the join token"), "{err}");
    assert!(err.contains("invalid join token"), "{err}");
    let out = agent_fails(
        &server,
        &format!("K10{}::server:{secret}", "0".repeat(64)),
        "intruder",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match the join token's CA hash"),
        "{}",
        stderr(&out)
    );
    assert!(get_json(&server, &["node", "intruder"]).is_none());

    // node2 joins and becomes Ready.
    let mut agent = Agent::start(&server, netns, "node2", &token);
    let agent_log_path = agent.log_path();
    let logs = || {
        format!(
            "--- agent:\n{}\n--- server:\n{}",
            std::fs::read_to_string(&agent_log_path).unwrap_or_default(),
            server.log()
        )
    };
    let node2 = wait_for(120, "node2 Ready", &logs, || {
        get_json(&server, &["node", "node2"]).filter(|n| ready_status(n) == "True")
    });
    assert!(
        node2["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(
        node2["metadata"]["labels"]["node-role.kubernetes.io/control-plane"].is_null(),
        "a joined node is a worker"
    );
    let creds = agent.data_dir().join("agent/credentials.json");
    let password = agent.data_dir().join("agent/node-password");
    for file in [&creds, &password] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", file.display());
    }

    // The node's password is recorded (hashed) on the server; another machine with the
    // token cannot take node2's name, nor the server's own node's.
    let secret = get_json(
        &server,
        &["secret", "-n", "kube-system", "node2.node-password.kaji"],
    )
    .expect("node2's password secret");
    assert_eq!(secret["type"], "kaji.io/node-password");
    let plain = std::fs::read_to_string(&password).unwrap();
    assert!(
        !secret.to_string().contains(plain.trim()),
        "only a hash is stored"
    );
    let server_node = get_json(&server, &["nodes"]).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .find(|n| n != "node2")
        .expect("the server's node");
    for name in ["node2", server_node.as_str()] {
        let out = agent_fails(&server, &token, name);
        assert!(!out.status.success(), "{name}");
        let err = stderr(&out);
        assert!(err.contains("node password rejected"), "{name}: {err}");
    }
    assert_eq!(
        ready_status(&get_json(&server, &["node", "node2"]).unwrap()),
        "True"
    );

    // A pod for node2 runs there; its logs come through node2's kubelet API.
    import_into(&agent, &server);
    apply(
        &server,
        r#"apiVersion: v1
kind: Pod
metadata: {name: pinned}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello from node2; exec sleep 3600"]
"#,
    );
    let pod = wait_pod(&server, "pinned", 90, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(pod["spec"]["nodeName"], "node2");
    wait_for(30, "pod logs", &logs, || {
        let o = server.kubectl(&["logs", "pinned"]);
        (o.status.success() && stdout(&o).contains("hello from node2")).then_some(())
    });

    // Cordoning tracks into the unschedulable taint; a Deployment pod lands on node2.
    ok(server.kubectl(&["cordon", "node1"]));
    wait_for(15, "unschedulable taint on node1", &logs, || {
        get_json(&server, &["node", "node1"])
            .filter(|n| taints(n).contains(&UNSCHEDULABLE.to_string()))
    });
    apply(
        &server,
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        command: ["sleep", "3600"]
"#,
    );
    let web_pods = || -> Vec<Value> {
        get_json(&server, &["pods", "-l", "app=web"])
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    };
    let first = wait_for(90, "web pod running on node2", &logs, || {
        web_pods()
            .into_iter()
            .find(|p| p["spec"]["nodeName"] == "node2" && p["status"]["phase"] == "Running")
    });
    let first_name = first["metadata"]["name"].as_str().unwrap().to_string();
    ok(server.kubectl(&["uncordon", "node1"]));
    wait_for(15, "unschedulable taint removed", &logs, || {
        get_json(&server, &["node", "node1"])
            .filter(|n| !taints(n).contains(&UNSCHEDULABLE.to_string()))
    });

    // node2 drops off: Unknown and tainted unreachable within the grace period (10s) plus
    // the lease interval (10s) and a little.
    agent.kill_node();
    let killed = Instant::now();
    let node2 = wait_for(30, "node2 Unknown + unreachable taints", &logs, || {
        get_json(&server, &["node", "node2"]).filter(|n| {
            let t = taints(n);
            ready_status(n) == "Unknown"
                && t.contains(&UNREACHABLE_NO_EXECUTE.to_string())
                && t.contains(&UNREACHABLE_NO_SCHEDULE.to_string())
        })
    });
    assert!(killed.elapsed() < Duration::from_secs(30));
    eprintln!("node2 unreachable {:?} after the kill", killed.elapsed());
    let ready = condition(&node2, "Ready").unwrap();
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let out = ok(server.kubectl(&["get", "node", "node2"]));
    assert!(out.contains("NotReady"), "{out}");

    // Its pods are marked not ready.
    wait_for(15, "pinned pod Ready=False", &logs, || {
        get_json(&server, &["pod", "pinned"])
            .filter(|p| condition(p, "Ready").is_some_and(|c| c["status"] == "False"))
    });

    // The web pod tolerates unreachable for 5s only: evicted, and replaced on node1.
    let replacement = wait_for(60, "web pod replaced on node1", &logs, || {
        web_pods().into_iter().find(|p| {
            p["spec"]["nodeName"] == "node1"
                && p["status"]["phase"] == "Running"
                && p["metadata"]["name"] != first_name.as_str()
        })
    });
    assert!(replacement["metadata"]["deletionTimestamp"].is_null());
    eprintln!("web pod replaced {:?} after the kill", killed.elapsed());
    let old = get_json(&server, &["pod", &first_name]);
    assert!(
        old.as_ref()
            .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null()),
        "the evicted pod is being deleted: {old:?}"
    );
    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
        "-o",
        "json",
    ]));
    assert!(
        events.contains(&format!("Marking for deletion Pod default/{first_name}")),
        "{events}"
    );
    let node_events =
        ok(server.kubectl(&["get", "events", "--field-selector", "reason=NodeNotReady"]));
    assert!(node_events.contains("node2"), "{node_events}");

    // node2 comes back (with its stored credentials): Ready again, taints gone.
    agent.spawn(&token);
    wait_for(90, "node2 Ready again without taints", &logs, || {
        get_json(&server, &["node", "node2"]).filter(|n| {
            ready_status(n) == "True"
                && !taints(n)
                    .iter()
                    .any(|t| t.starts_with("node.kubernetes.io/"))
        })
    });
    assert!(agent.log().contains("using stored node credentials"));

    // Teardown while node2 still runs its pods, so its kubelet stops them.
    let _ = server.kubectl(&["delete", "deployment", "web", "--wait=false"]);
    let _ = server.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--wait=false",
    ]);
    wait_for(60, "pods gone", &logs, || {
        let o = server.kubectl(&["get", "pods", "-o", "name"]);
        (o.status.success() && o.stdout.is_empty()).then_some(())
    });
    agent.stop();
}

/// Imports the busybox image (built by `import_busybox` for the server) into the agent's
/// containerd.
fn import_into(agent: &Agent, server: &Server) {
    let busybox = server.dir.path().join("busybox.tar");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(kaji_bin())
            .args(["image", "import"])
            .arg(format!("--data-dir={}", agent.data_dir().display()))
            .arg(&busybox)
            .output()
            .unwrap();
        if out.status.success() {
            assert!(stdout(&out).contains("busybox:1.36"));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kaji image import into node2: {}\n{}",
            stderr(&out),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
