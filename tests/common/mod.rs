//! Test harness: starts a real `kaji server` as a child process on a free loopback port
//! with a temporary data dir, and hands out kubectl and kube-rs clients for it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running server; killed (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub extra_args: Vec<String>,
    /// Whether `spawn` runs the node agent (only servers from `start_with_agent` do).
    pub agent: bool,
    /// The network namespace the server runs in (`start_in_netns`), else `None`.
    pub netns: Option<Netns>,
    /// The address the API server is reached at (127.0.0.1, or the node's netns address).
    pub host: String,
}

/// A network namespace made for one test node: a veth pair to the host (`<prefix>.1` on the
/// host, `<prefix>.2` = the node IP inside), loopback up, and no route off the machine, so
/// stray packets for service or pod addresses go nowhere. Removed on drop.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub host_ip: String,
    pub node_ip: String,
}

impl Netns {
    pub fn create() -> Netns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // 10.254.0.0/16 holds 16384 /30 links; pick one from the pid and a counter.
        let n = (std::process::id().wrapping_mul(31) + NEXT.fetch_add(1, Ordering::SeqCst)) % 16384;
        let base = n * 4;
        let name = format!("kaji-t{n}");
        let host_if = format!("kt{n}");
        let host_ip = format!("10.254.{}.{}", base / 256, base % 256 + 1);
        let node_ip = format!("10.254.{}.{}", base / 256, base % 256 + 2);
        // A namespace left by a killed earlier run of the same test is replaced.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        run(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{node_ip}/30"),
            "dev",
            "eth0",
        ]);
        run(&["-n", &name, "link", "set", "eth0", "up"]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        Netns {
            name,
            host_if,
            host_ip,
            node_ip,
        }
    }

    /// A command that runs inside the namespace (network only; the mount namespace is the
    /// host's, so data dirs and sockets are shared).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn kaji_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kaji"))
}

impl Server {
    /// Starts a server with extra flags and waits until it is ready.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut s = Server {
            child: None,
            dir,
            port,
            kubeconfig,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            agent: false,
            netns: None,
            host: "127.0.0.1".into(),
        };
        s.spawn();
        s
    }

    /// Starts a server that also runs the node agent (embedded containerd); waits until
    /// the API server is ready (the agent may still be starting).
    ///
    /// The node shares the host's network namespace with other tests, so the components
    /// that claim node-wide network state (service proxy rules, the DNS address, ports
    /// 80/443) are off; networking tests use [`Server::start_in_netns`].
    pub fn start_with_agent(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut extra_args: Vec<String> = vec![
            "--disable=dns,ingress".into(),
            "--disable-kube-proxy".into(),
            "--disable-network-policy".into(),
        ];
        extra_args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            child: None,
            dir,
            port,
            kubeconfig,
            extra_args,
            agent: true,
            netns: None,
            host: "127.0.0.1".into(),
        };
        s.spawn();
        s
    }

    /// Starts a server with its node agent and every networking component inside a network
    /// namespace of its own (see [`Netns`]); the API server listens on the node IP, which
    /// the test reaches over the veth link.
    pub fn start_in_netns(extra: &[&str]) -> Server {
        let netns = Netns::create();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut extra_args: Vec<String> = vec![
            format!("--bind-address={}", netns.node_ip),
            format!("--node-ip={}", netns.node_ip),
        ];
        extra_args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            child: None,
            dir,
            port,
            kubeconfig,
            extra_args,
            agent: true,
            host: netns.node_ip.clone(),
            netns: Some(netns),
        };
        s.spawn();
        s
    }

    /// A command run inside this server's network namespace (the host's if it has none).
    pub fn netns_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)starts the process on the same data dir and port.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = self.netns_command(kaji_bin());
        let child = cmd
            .arg("server")
            .args((!self.agent).then_some("--disable-agent"))
            // Servers run side by side: each kubelet API takes a free port.
            .args(self.agent.then_some("--kubelet-port=0"))
            .args(self.netns.is_none().then_some("--bind-address=127.0.0.1"))
            .arg(format!("--https-listen-port={}", self.port))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--write-kubeconfig={}", self.kubeconfig.display()))
            .args(&self.extra_args)
            .env_remove("KAJI_CONFIG_FILE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kaji server");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kaji server exited early ({status}):\n{}", self.log());
            }
            if self.kubeconfig.exists() && readyz_at(&self.host, self.port) {
                return;
            }
            if Instant::now() > deadline {
                panic!("kaji server not ready in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id() as i32, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_version("kubectl", args, None)
    }

    /// Runs a kubectl binary (`kubectl`, `kubectl.1.27`, ...) with this server's
    /// kubeconfig and a private cache dir; `stdin` is piped in when given.
    pub fn kubectl_version(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let path = kubectl_path(bin);
        let cache = self.dir.path().join(format!("kubectl-cache-{bin}"));
        let mut cmd = Command::new(&path);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .arg(format!("--cache-dir={}", cache.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// A kube-rs client for the admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The temp dir goes with the server: show the end of its log with the failure.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!("--- last lines of the kaji server log ---\n{tail}\n--- end of log ---");
        }
        if self.agent && self.child.is_some() {
            // Containers outlive kaji by design (restart safety): remove the pods first.
            let _ = self.kubectl(&[
                "delete",
                "pods",
                "--all",
                "-A",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let out = self.kubectl(&["get", "pods", "-A", "-o", "name"]);
                if !out.status.success() || out.stdout.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.agent {
            // Whatever this server's runtime left (shims of a failed test, a containerd
            // orphaned by kill9) is identified by the test's private data dir.
            let _ = Command::new("pkill")
                .arg("-KILL")
                .arg("-f")
                .arg(self.dir.path().display().to_string())
                .status();
            if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
                let prefix = self.dir.path().display().to_string();
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
}

pub fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// GET /readyz over TLS without verification (it is unauthenticated).
pub fn readyz(port: u16) -> bool {
    readyz_at("127.0.0.1", port)
}

/// GET /readyz on `host:port`.
pub fn readyz_at(host: &str, port: u16) -> bool {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "2",
            &format!("https://{host}:{port}/readyz"),
        ])
        .output();
    matches!(out, Ok(o) if o.status.success() && o.stdout == b"ok")
}

/// Finds a kubectl binary: `kubectl` from PATH, or a versioned one beside its real file.
pub fn kubectl_path(bin: &str) -> PathBuf {
    let base = which("kubectl").expect("kubectl on PATH");
    if bin == "kubectl" {
        return base;
    }
    let real = std::fs::canonicalize(&base).unwrap_or(base);
    real.parent().unwrap().join(bin)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a kubectl run succeeded and returns its stdout.
#[track_caller]
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "kubectl failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

pub fn testdata(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(p)
}

// Helpers for tests that run real pods.

/// Builds a busybox test image and imports it with `kaji image import` (the agent
/// provides the pause image itself).
pub fn import_busybox(server: &Server) {
    let busybox = server.dir.path().join("busybox.tar");
    let script = testdata("../scripts/build-image.sh");
    let st = Command::new("bash")
        .arg(&script)
        .args(["docker.io/library/busybox:1.36"])
        .arg(&busybox)
        .args(["--busybox", "--cmd", "sh"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let socket = server.data_dir().join("run/containerd/containerd.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(kaji_bin())
            .args(["image", "import"])
            .arg(format!("--data-dir={}", server.data_dir().display()))
            .arg(&busybox)
            .output()
            .unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("busybox:1.36"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kaji image import ({}): {}\n{}",
            socket.display(),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn wait_pod(
    server: &Server,
    name: &str,
    secs: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = server.kubectl(&["get", "pod", name, "-o", "json"]);
        if out.status.success() {
            let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
            if check(&pod) {
                return pod;
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {name}: {what} not reached in {secs}s: {}\n{}",
                    serde_json::to_string_pretty(&pod["status"]).unwrap(),
                    server.log()
                );
            }
        } else if Instant::now() > deadline {
            panic!(
                "pod {name} not found: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn apply(server: &Server, yaml: &str) {
    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(yaml)));
}
