//! `make bench` (part 2): pod start latency through kaji (create → Running and → Ready)
//! for one pod at a time and for 50 pods created at once, against `ctr run --rm` of the
//! same image on the same containerd in the same run; plus kaji's RSS and CPU with 0 and
//! 50 pods. Needs root, containerd, runc and the CNI plugins.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or_default()
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn idle_cpu_percent(pid: u32) -> f64 {
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(5));
    (cpu_ticks(pid) - t0) as f64 / 100.0 / 5.0 * 100.0
}

struct Kaji {
    child: std::process::Child,
    kubeconfig: std::path::PathBuf,
    data: std::path::PathBuf,
}

impl Kaji {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut c = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        c.wait_with_output().unwrap()
    }
    fn pods(&self) -> serde_json::Value {
        let out = self.kubectl(&["get", "pods", "-o", "json"], None);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Kaji {
    fn drop(&mut self) {
        let _ = self.kubectl(
            &["delete", "pods", "--all", "--grace-period=0", "--force"],
            None,
        );
        std::thread::sleep(Duration::from_secs(3));
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(self.data.display().to_string())
            .status();
    }
}

fn pod_yaml(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"bench":"yes"}}}},
"spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"c","image":"docker.io/library/busybox:1.36","imagePullPolicy":"IfNotPresent","command":["sleep","3600"],
"readinessProbe":{{"exec":{{"command":["true"]}},"periodSeconds":1}}}}]}}}}"#
    )
}

/// Creates pods `names` at once and returns per-pod (→Running, →Ready) latencies.
fn start_pods(k: &Kaji, names: &[String]) -> (Vec<Duration>, Vec<Duration>) {
    let list = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
        names
            .iter()
            .map(|n| pod_yaml(n))
            .collect::<Vec<_>>()
            .join(",")
    );
    let t0 = Instant::now();
    let out = k.kubectl(&["create", "-f", "-"], Some(&list));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut running = std::collections::HashMap::new();
    let mut ready = std::collections::HashMap::new();
    while ready.len() < names.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "pods did not start"
        );
        let pods = k.pods();
        for p in pods["items"].as_array().into_iter().flatten() {
            let n = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            if !names.contains(&n) {
                continue;
            }
            if p["status"]["containerStatuses"][0]["state"]["running"].is_object() {
                running.entry(n.clone()).or_insert(t0.elapsed());
            }
            if p["status"]["containerStatuses"][0]["ready"] == true {
                ready.entry(n).or_insert(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        running.into_values().collect(),
        ready.into_values().collect(),
    )
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_kaji");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kubeconfig = dir.path().join("kc");
    let port = free_port();
    let child = Command::new(bin)
        .args(["server", "--bind-address=127.0.0.1", "--kubelet-port=0"])
        .arg(format!("--https-listen-port={port}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--write-kubeconfig={}", kubeconfig.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let k = Kaji {
        child,
        kubeconfig,
        data: data.clone(),
    };
    // Test image.
    let tar = dir.path().join("busybox.tar");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    assert!(
        Command::new("bash")
            .arg(script)
            .arg("docker.io/library/busybox:1.36")
            .arg(&tar)
            .args(["--busybox"])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(bin)
            .args(["image", "import"])
            .arg(format!("--data-dir={}", data.display()))
            .arg(&tar)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "agent not ready");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Wait for the node and the default service account.
    loop {
        let o = k.kubectl(&["get", "sa", "default", "-o", "name"], None);
        let n = k.kubectl(&["get", "nodes", "-o", "name"], None);
        if o.status.success() && !n.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "cluster not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss0 = rss_mib(pid);
    let cpu0 = idle_cpu_percent(pid);

    // Baseline: ctr run --rm of the same image on the same containerd.
    let socket = data.join("run/containerd/containerd.sock");
    let mut ctr = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let st = Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args([
                "-n",
                "k8s.io",
                "run",
                "--rm",
                "docker.io/library/busybox:1.36",
            ])
            .arg(format!("bench-{i}"))
            .arg("true")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        ctr.push(t.elapsed());
    }
    // One pod at a time.
    let mut run1 = Vec::new();
    let mut ready1 = Vec::new();
    for i in 0..10 {
        let name = format!("single-{i}");
        let (r, y) = start_pods(&k, std::slice::from_ref(&name));
        run1.extend(r);
        ready1.extend(y);
        let _ = k.kubectl(
            &["delete", "pod", &name, "--grace-period=0", "--force"],
            None,
        );
    }
    // 50 at once.
    let names: Vec<String> = (0..50).map(|i| format!("burst-{i}")).collect();
    let (mut run50, mut ready50) = start_pods(&k, &names);
    std::thread::sleep(Duration::from_secs(5));
    let rss50 = rss_mib(pid);
    let cpu50 = idle_cpu_percent(pid);

    let ctr_p50 = pct(&mut ctr, 0.5);
    println!(
        "pod start latency (busybox; kaji agent over CRI vs `ctr run --rm` on the same containerd)"
    );
    println!(
        "  ctr run --rm (start+exit), 10 runs: p50 {:.0}ms p99 {:.0}ms",
        ctr_p50.as_secs_f64() * 1e3,
        pct(&mut ctr, 0.99).as_secs_f64() * 1e3
    );
    for (label, v) in [
        ("1 pod, create→Running", &mut run1),
        ("1 pod, create→Ready", &mut ready1),
        ("50 pods, create→Running", &mut run50),
        ("50 pods, create→Ready", &mut ready50),
    ] {
        let p50 = pct(v, 0.5);
        let p99 = pct(v, 0.99);
        println!(
            "  {label:<26} p50 {:>6.0}ms p99 {:>6.0}ms   ratio p50/ctr {:.1}x",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            p50.as_secs_f64() / ctr_p50.as_secs_f64()
        );
    }
    println!("kaji server+agent RSS: {rss0:.1} MiB with 0 pods, {rss50:.1} MiB with 50 pods");
    println!("kaji server+agent idle CPU: {cpu0:.2}% with 0 pods, {cpu50:.2}% with 50 pods");
}
