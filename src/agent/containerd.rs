//! The embedded container runtime: like k3s, the agent writes its own containerd
//! configuration (CRI plugin with kaji's CNI directories, sandbox image, overlayfs
//! snapshotter and a cgroup driver matching the host) and runs `containerd` as a
//! supervised child process, restarting it if it dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::registries::Registries;
use super::{AgentConfig, Error};

const TEMPLATE: &str = include_str!("../../embedded/containerd/config.toml.tmpl");

/// Directories searched for the CNI plugin binaries, first match wins.
pub const CNI_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni"];

/// Paths of the embedded containerd.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `<data-dir>/agent/etc/containerd/config.toml`.
    pub config: PathBuf,
    /// containerd's persistent root.
    pub root: PathBuf,
    /// containerd's state dir (sockets, runtime state).
    pub state: PathBuf,
    /// The gRPC socket (CRI and native API).
    pub socket: PathBuf,
    /// Where kaji writes the CNI configuration.
    pub cni_conf_dir: PathBuf,
    /// Where the CNI plugin binaries are.
    pub cni_bin_dir: PathBuf,
    /// containerd's log file.
    pub log: PathBuf,
}

impl Paths {
    /// Paths for an agent whose data dir is `data_dir`.
    pub fn new(data_dir: &Path, run_dir: &Path) -> Paths {
        let agent = data_dir.join("agent");
        let cni_bin_dir = CNI_BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("bridge").exists())
            .unwrap_or_else(|| PathBuf::from(CNI_BIN_DIRS[0]));
        Paths {
            config: agent.join("etc/containerd/config.toml"),
            root: agent.join("containerd"),
            state: run_dir.join("containerd"),
            socket: run_dir.join("containerd/containerd.sock"),
            cni_conf_dir: agent.join("etc/cni/net.d"),
            cni_bin_dir,
            log: agent.join("containerd/containerd.log"),
        }
    }
}

/// Whether the host's cgroup setup is driven by systemd (cgroup v2 with systemd as PID 1).
fn systemd_cgroup() -> bool {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    pid1.trim() == "systemd" && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Whether this process may lower OOM scores (CAP_SYS_RESOURCE). Without it (nested
/// containers, some sandboxes) containerd must not ask runc for negative scores.
fn can_lower_oom_score() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Renders the containerd configuration without private registries (see
/// [`render_config_with_registries`]).
pub fn render_config(paths: &Paths, sandbox_image: &str) -> String {
    render_config_with_registries(paths, sandbox_image, &Registries::default())
}

/// Renders the containerd configuration (from `config.toml.tmpl` beside it if the user
/// put one there, else the embedded template), with the private registry section at the
/// `{{registries}}` placeholder or, without one, at the end.
pub fn render_config_with_registries(
    paths: &Paths,
    sandbox_image: &str,
    registries: &Registries,
) -> String {
    let custom = paths.config.with_extension("toml.tmpl");
    let mut template = std::fs::read_to_string(&custom).unwrap_or_else(|_| TEMPLATE.to_string());
    if !template.contains("{{registries}}") {
        template.push_str("{{registries}}");
    }
    template
        .replace("{{root}}", &paths.root.display().to_string())
        .replace("{{state}}", &paths.state.display().to_string())
        .replace("{{address}}", &paths.socket.display().to_string())
        .replace("{{sandbox_image}}", sandbox_image)
        .replace(
            "{{systemd_cgroup}}",
            if systemd_cgroup() { "true" } else { "false" },
        )
        .replace(
            "{{restrict_oom_score_adj}}",
            if can_lower_oom_score() {
                "false"
            } else {
                "true"
            },
        )
        .replace("{{cni_bin_dir}}", &paths.cni_bin_dir.display().to_string())
        .replace(
            "{{cni_conf_dir}}",
            &paths.cni_conf_dir.display().to_string(),
        )
        // Last, so that no value from the user's file is taken for a placeholder.
        .replace("{{registries}}", &registries.to_containerd_toml())
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Writes the configuration and starts containerd, restarting it whenever it exits,
/// until `shutdown`; returns once the socket answers.
pub async fn start(
    cfg: &AgentConfig,
    paths: Paths,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    for dir in [
        paths.config.parent().unwrap_or(Path::new("/")),
        paths.root.as_path(),
        paths.state.as_path(),
        paths.cni_conf_dir.as_path(),
    ] {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let registries = match &cfg.private_registry {
        Some(path) => Registries::load(path).map_err(|e| Error::Config(e.to_string()))?,
        None => Registries::default(),
    };
    std::fs::write(
        &paths.config,
        render_config_with_registries(&paths, &cfg.pause_image, &registries),
    )
    .map_err(|e| io(&paths.config, e))?;
    let binary = which("containerd").ok_or(Error::MissingBinary("containerd"))?;
    stop_stale(&paths).await;
    let mut child = spawn(&binary, &paths)?;
    wait_for_socket(&paths.socket, &mut child).await?;
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    stop(&mut child).await;
                    return;
                }
                status = child.wait() => {
                    tracing::warn!(?status, "containerd exited; restarting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    match spawn(&binary, &paths) {
                        Ok(c) => child = c,
                        Err(err) => tracing::error!(%err, "restarting containerd"),
                    }
                }
            }
        }
    });
    Ok(())
}

fn pid_file(paths: &Paths) -> PathBuf {
    paths.state.join("kaji-containerd.pid")
}

/// Stops a containerd left running by a previous kaji that was killed (SIGKILL leaves its
/// child behind). Its containers keep running: they belong to their shims, and the new
/// containerd re-attaches to them.
async fn stop_stale(paths: &Paths) {
    let Ok(text) = std::fs::read_to_string(pid_file(paths)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "containerd" {
        return;
    }
    tracing::info!(pid, "stopping the containerd left by a previous run");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await;
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .await;
}

fn spawn(binary: &Path, paths: &Paths) -> Result<Child, Error> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|e| io(&paths.log, e))?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(&paths.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| io(&paths.log, e))?)
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| io(binary, e))?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(pid_file(paths), pid.to_string());
    }
    tracing::info!(pid = child.id(), config = %paths.config.display(), "started containerd");
    Ok(child)
}

async fn wait_for_socket(socket: &Path, child: &mut Child) -> Result<(), Error> {
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Runtime(format!(
                "containerd exited during start-up ({status})"
            )));
        }
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Runtime(format!(
        "containerd socket {} did not appear",
        socket.display()
    )))
}

/// Stops containerd with SIGTERM (running containers keep running: their shims are
/// separate processes, so restarting kaji does not restart pods).
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Finds a program on PATH (and the sbin directories, which root's PATH may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let paths = Paths::new(Path::new("/var/lib/kaji"), Path::new("/run/kaji"));
        let text = render_config(&paths, "kaji.local/pause:3.10");
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("sandbox_image = \"kaji.local/pause:3.10\""));
        assert!(text.contains("address = \"/run/kaji/containerd/containerd.sock\""));
        assert!(text.contains("conf_dir = \"/var/lib/kaji/agent/etc/cni/net.d\""));
    }

    #[test]
    fn appends_private_registries() {
        let paths = Paths::new(Path::new("/var/lib/kaji"), Path::new("/run/kaji"));
        let regs = Registries::parse(
            "mirrors: {\"127.0.0.1:5000\": {endpoint: [\"http://127.0.0.1:5000\"]}}",
        )
        .unwrap();
        let text = render_config_with_registries(&paths, "kaji.local/pause:3.10", &regs);
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"127.0.0.1:5000\"]\n  endpoint = [\"http://127.0.0.1:5000\"]"), "{text}");
    }
}
