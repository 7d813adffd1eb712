//! `make bench` (part 2): pod start latency through kaji (create → Running and → Ready)
//! for one pod at a time and for 50 pods created at once, each against baselines of the
//! same work done directly on the agent's own containerd in the same run:
//!
//! - `ctr run --rm` of the same image, one at a time (start and exit);
//! - 50 `ctr run -d` launched at once (same image, same snapshotter, no pod network);
//! - 50 pods started at once straight through CRI, as `crictl runp` + `create` + `start`
//!   would (RunPodSandbox with the CNI network, CreateContainer, StartContainer), each
//!   over its own CRI connection;
//! - the same 50 CRI starts with at most one per CPU in flight.
//!
//! Plus kaji's RSS and CPU with 0 and 50 pods. Pod states are followed with one
//! `kubectl get pods -w` stream (not polling), so the observer costs next to no CPU.
//!
//! `KAJI_BENCH_BEFORE=/path/to/older/kaji` runs the whole suite first with that binary,
//! then with this build, in the same run (before/after under the same machine load).
//! `KAJI_BENCH_LOG=/path/prefix` keeps each server's log (with `KAJI_LOG` as its filter).
//!
//! Needs root, containerd, runc, ctr and the CNI plugins. The node runs in the host
//! network namespace with DNS, ingress, kube-proxy and network policy disabled (as the
//! test harness does), so it does not clash with tests running beside it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use common::{cpu_ticks, free_port, pct, rss_mib};

const IMAGE: &str = "docker.io/library/busybox:1.36";
const BURST: usize = 50;
/// The concurrency of the bounded CRI baseline: one per CPU, at least two.
fn bounded() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .max(2)
}

fn idle_cpu_percent(pid: u32) -> f64 {
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(5));
    (cpu_ticks(pid) - t0) as f64 / 100.0 / 5.0 * 100.0
}

/// When each bench pod was first seen Running and Ready, from one watch stream.
#[derive(Default)]
struct Seen {
    bound: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

struct Kaji {
    child: std::process::Child,
    kubeconfig: PathBuf,
    data: PathBuf,
    seen: Arc<Mutex<Seen>>,
    watch: Arc<Mutex<Option<std::process::Child>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
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

    /// Follows the bench pods with `kubectl get pods -w -o json` (restarted if it ends).
    fn start_watch(&self) {
        let (kc, seen, slot, stop) = (
            self.kubeconfig.clone(),
            self.seen.clone(),
            self.watch.clone(),
            self.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut child = Command::new("kubectl")
                    .env("KUBECONFIG", &kc)
                    .args(["get", "pods", "-l", "bench=yes", "-w", "-o", "json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let out = child.stdout.take().unwrap();
                *slot.lock().unwrap() = Some(child);
                let stream = serde_json::Deserializer::from_reader(std::io::BufReader::new(out))
                    .into_iter::<serde_json::Value>();
                for p in stream {
                    let Ok(p) = p else { break };
                    let now = Instant::now();
                    let n = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let cs = &p["status"]["containerStatuses"][0];
                    let mut s = seen.lock().unwrap();
                    if p["spec"]["nodeName"].is_string() {
                        s.bound.entry(n.clone()).or_insert(now);
                    }
                    if cs["state"]["running"].is_object() {
                        s.running.entry(n.clone()).or_insert(now);
                    }
                    if cs["ready"] == true {
                        s.ready.entry(n).or_insert(now);
                    }
                }
                if let Some(mut c) = slot.lock().unwrap().take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
}

impl Drop for Kaji {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(mut c) = self.watch.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.kubectl(
            &["delete", "pods", "--all", "--grace-period=0", "--force"],
            None,
        );
        // Let the agent tear the pods down before it stops.
        let deadline = Instant::now() + Duration::from_secs(60);
        let socket = self.data.join("run/containerd/containerd.sock");
        while Instant::now() < deadline {
            let out = Command::new("ctr")
                .arg("-a")
                .arg(&socket)
                .args(["-n", "k8s.io", "c", "ls", "-q"])
                .output();
            let left = out.map(|o| o.stdout.len()).unwrap_or(0);
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
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

fn pod_json(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"bench":"yes"}}}},
"spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"c","image":"{IMAGE}","imagePullPolicy":"IfNotPresent","command":["sleep","3600"],
"readinessProbe":{{"exec":{{"command":["true"]}},"periodSeconds":1}}}}]}}}}"#
    )
}

/// Per-pod latencies from create: → bound by the scheduler, → Running, → Ready.
type Latencies = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// Creates pods `names` at once and returns their latencies.
fn start_pods(k: &Kaji, names: &[String]) -> Latencies {
    let list = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
        names
            .iter()
            .map(|n| pod_json(n))
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
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "pods did not start"
        );
        {
            let s = k.seen.lock().unwrap();
            if names.iter().all(|n| s.ready.contains_key(n)) {
                let lat = |m: &HashMap<String, Instant>| {
                    names
                        .iter()
                        .filter_map(|n| m.get(n))
                        .map(|t| t.saturating_duration_since(t0))
                        .collect::<Vec<_>>()
                };
                return (lat(&s.bound), lat(&s.running), lat(&s.ready));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctr(socket: &Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("-a").arg(socket).args(["-n", "k8s.io"]);
    c
}

/// `BURST` × `ctr run -d` launched at once; per container: launch → task started.
fn ctr_burst(socket: &Path) -> Vec<Duration> {
    let t0 = Instant::now();
    let children: Vec<_> = (0..BURST)
        .map(|i| {
            ctr(socket)
                .args(["run", "-d", "--snapshotter", "overlayfs", IMAGE])
                .arg(format!("ctr-burst-{i}"))
                .args(["sleep", "3600"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Reap in order of exit: each ctr returns once its task runs.
    let mut pending: Vec<_> = children.into_iter().map(Some).collect();
    let mut done = vec![None; BURST];
    while done.iter().any(Option::is_none) {
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(c) = slot {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "ctr run -d failed");
                    done[i] = Some(t0.elapsed());
                    *slot = None;
                }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "ctr burst stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..BURST {
        let id = format!("ctr-burst-{i}");
        let _ = ctr(socket)
            .args(["task", "rm", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = ctr(socket)
            .args(["c", "rm", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    done.into_iter().flatten().collect()
}

/// `BURST` pods started at once straight through CRI, each over its own connection (as
/// `crictl runp` + `create` + `start`): per pod, launch → StartContainer returned.
/// With `limit`, at most that many pods are being started at once.
fn cri_burst(socket: &Path, logs: &Path, limit: Option<usize>) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(limit.unwrap_or(BURST)));
        let tasks: Vec<_> = (0..BURST)
            .map(|i| {
                let (socket, logs, gate) = (socket.to_path_buf(), logs.to_path_buf(), gate.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire().await;
                    cri_pod(&socket, &logs, i)
                        .await
                        .map(|id| (id, t0.elapsed()))
                })
            })
            .collect();
        let mut out = Vec::new();
        let mut sandboxes = Vec::new();
        for t in tasks {
            let (id, d) = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("CRI baseline: {e}"));
            sandboxes.push(id);
            out.push(d);
        }
        let mut c = kaji::agent::cri::Cri::connect(&socket.display().to_string())
            .await
            .unwrap();
        for id in sandboxes {
            let _ = c.stop_sandbox(&id).await;
            let _ = c.remove_sandbox(&id).await;
        }
        out
    })
}

async fn cri_pod(socket: &Path, logs: &Path, i: usize) -> Result<String, String> {
    let mut c = kaji::agent::cri::Cri::connect(&socket.display().to_string())
        .await
        .map_err(|e| e.to_string())?;
    let uid = format!("00000000-0000-4000-8000-{i:012}");
    let name = format!("cri-burst-{i}");
    let log_dir = logs.join(&name);
    let _ = std::fs::create_dir_all(log_dir.join("c"));
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(cri::DnsConfig::default()),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = c
        .run_sandbox(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let ctr = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "c/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(Default::default()),
            security_context: Some(Default::default()),
        }),
        ..Default::default()
    };
    let id = c
        .create_container(&sandbox, ctr, config)
        .await
        .map_err(|e| e.to_string())?;
    c.start_container(&id).await.map_err(|e| e.to_string())?;
    Ok(sandbox)
}

/// One full pass of the suite against `bin`.
struct Pass {
    label: String,
    ctr_seq: Vec<Duration>,
    ctr_burst: Vec<Duration>,
    cri_burst: Vec<Duration>,
    cri_bounded: Vec<Duration>,
    run1: Vec<Duration>,
    ready1: Vec<Duration>,
    bound50: Vec<Duration>,
    run50: Vec<Duration>,
    ready50: Vec<Duration>,
    rss0: f64,
    rss50: f64,
    cpu0: f64,
    cpu50: f64,
}

fn pass(label: &str, bin: &Path) -> Pass {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kubeconfig = dir.path().join("kc");
    let port = free_port();
    let log = match std::env::var("KAJI_BENCH_LOG") {
        Ok(prefix) => Stdio::from(std::fs::File::create(format!("{prefix}-{label}.log")).unwrap()),
        Err(_) => Stdio::null(),
    };
    let child = Command::new(bin)
        .args(["server", "--bind-address=127.0.0.1", "--kubelet-port=0"])
        .args([
            "--disable=dns,ingress",
            "--disable-kube-proxy",
            "--disable-network-policy",
        ])
        .arg(format!("--https-listen-port={port}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--write-kubeconfig={}", kubeconfig.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let k = Kaji {
        child,
        kubeconfig,
        data: data.clone(),
        seen: Arc::default(),
        watch: Arc::default(),
        stop: Arc::default(),
    };
    // Test image.
    let tar = dir.path().join("busybox.tar");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    assert!(
        Command::new("bash")
            .arg(script)
            .arg(IMAGE)
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
    k.start_watch();
    std::thread::sleep(Duration::from_secs(3));
    let rss0 = rss_mib(pid);
    let cpu0 = idle_cpu_percent(pid);

    // Baselines on the same containerd.
    let socket = data.join("run/containerd/containerd.sock");
    let mut ctr_seq = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let st = ctr(&socket)
            .args(["run", "--rm", IMAGE])
            .arg(format!("bench-{i}"))
            .arg("true")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        ctr_seq.push(t.elapsed());
    }
    let ctr_burst = ctr_burst(&socket);
    std::thread::sleep(Duration::from_secs(2));
    let cri_all = cri_burst(&socket, &dir.path().join("cri-logs"), None);
    std::thread::sleep(Duration::from_secs(2));
    let cri_bounded = cri_burst(&socket, &dir.path().join("cri-logs"), Some(bounded()));
    std::thread::sleep(Duration::from_secs(2));

    // One pod at a time.
    let mut run1 = Vec::new();
    let mut ready1 = Vec::new();
    for i in 0..10 {
        let name = format!("single-{i}");
        let (_, r, y) = start_pods(&k, std::slice::from_ref(&name));
        run1.extend(r);
        ready1.extend(y);
        let _ = k.kubectl(
            &["delete", "pod", &name, "--grace-period=0", "--force"],
            None,
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    // BURST at once.
    let names: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
    let (bound50, run50, ready50) = start_pods(&k, &names);
    std::thread::sleep(Duration::from_secs(5));
    let rss50 = rss_mib(pid);
    let cpu50 = idle_cpu_percent(pid);
    drop(k);
    Pass {
        label: label.to_string(),
        ctr_seq,
        ctr_burst,
        cri_burst: cri_all,
        cri_bounded,
        run1,
        ready1,
        bound50,
        run50,
        ready50,
        rss0,
        rss50,
        cpu0,
        cpu50,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(p: &mut Pass) {
    let ctr_p50 = pct(&mut p.ctr_seq, 0.5);
    let (cri50, cri99) = (pct(&mut p.cri_burst, 0.5), pct(&mut p.cri_burst, 0.99));
    println!("== {} ==", p.label);
    println!(
        "  baseline ctr run --rm (start+exit), 10 one by one: p50 {:.0}ms p99 {:.0}ms",
        ms(ctr_p50),
        ms(pct(&mut p.ctr_seq, 0.99))
    );
    println!(
        "  baseline {BURST} × ctr run -d at once:               p50 {:.0}ms p99 {:.0}ms",
        ms(pct(&mut p.ctr_burst, 0.5)),
        ms(pct(&mut p.ctr_burst, 0.99))
    );
    println!(
        "  baseline {BURST} pods at once via CRI (runp+create+start): p50 {:.0}ms p99 {:.0}ms",
        ms(cri50),
        ms(cri99)
    );
    println!(
        "  baseline {BURST} pods via CRI, at most {} at a time:      p50 {:.0}ms p99 {:.0}ms",
        bounded(),
        ms(pct(&mut p.cri_bounded, 0.5)),
        ms(pct(&mut p.cri_bounded, 0.99))
    );
    for (label, v) in [
        ("1 pod, create→Running", &mut p.run1),
        ("1 pod, create→Ready", &mut p.ready1),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "  {label:<26} p50 {:>6.0}ms p99 {:>6.0}ms   p50/ctr {:.1}x",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / ctr_p50.as_secs_f64()
        );
    }
    println!(
        "  50 pods, create→bound       p50 {:>6.0}ms p99 {:>6.0}ms   (scheduler)",
        ms(pct(&mut p.bound50, 0.5)),
        ms(pct(&mut p.bound50, 0.99))
    );
    for (label, v) in [
        ("50 pods, create→Running", &mut p.run50),
        ("50 pods, create→Ready", &mut p.ready50),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "  {label:<26} p50 {:>6.0}ms p99 {:>6.0}ms   vs CRI burst: p50 {:.2}x p99 {:.2}x",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / cri50.as_secs_f64(),
            p99.as_secs_f64() / cri99.as_secs_f64()
        );
    }
    println!(
        "  RSS {:.1} MiB with 0 pods, {:.1} MiB with {BURST}; idle CPU {:.2}% / {:.2}%",
        p.rss0, p.rss50, p.cpu0, p.cpu50
    );
}

fn main() {
    let mut passes = Vec::new();
    if let Ok(before) = std::env::var("KAJI_BENCH_BEFORE") {
        passes.push(pass("before", Path::new(&before)));
    }
    passes.push(pass(
        "kaji (this build)",
        Path::new(env!("CARGO_BIN_EXE_kaji")),
    ));
    println!("pod start latency (busybox; kaji agent over CRI vs containerd directly, same run)");
    for p in &mut passes {
        report(p);
    }
}
