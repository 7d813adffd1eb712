//! Container images without a registry, end to end with a real containerd: images built
//! from host files by scripts/build-image.sh (OCI layout with a gzip layer, and `docker
//! save` layout) and kaji's own pause image are imported through containerd's native API,
//! CRI reports them present, and a pod sandbox (on the built-in pause image) runs
//! containers from them whose exit codes and logs come back through CRI. The air-gap
//! directory is imported once, skipped while unchanged, and picked up by `kaji server`'s
//! agent at start.
//!
//! Needs root and containerd, runc and busybox-static (scripts/setup.sh installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use containerd_client::tonic::transport::Channel;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use kaji::agent::images::{self, Progress};

const PAUSE: &str = kaji::agent::DEFAULT_PAUSE_IMAGE;

fn build_image(name: &str, out: &Path, extra: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(name)
        .arg(out)
        .args(extra)
        .output()
        .expect("running build-image.sh");
    assert!(
        o.status.success(),
        "build-image.sh {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// PIDs of processes whose command line contains `needle` (a path unique to this test).
fn pids_with(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// Sends SIGTERM to each PID, waits up to `grace`, then SIGKILLs what is left.
fn terminate(pids: &[i32], grace: Duration) {
    for pid in pids {
        common::signal(*pid, "TERM");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists() && !zombie(*p))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        if Path::new(&format!("/proc/{pid}")).exists() && !zombie(*pid) {
            common::signal(*pid, "KILL");
        }
    }
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// A private containerd configured the way the agent configures its own (CRI plugin,
/// overlayfs, sandbox image kaji.local/pause:3.10), in a temporary directory.
struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let binary = kaji::agent::containerd::which("containerd")
            .expect("containerd is not installed (scripts/setup.sh installs it)");
        let dir = tempfile::tempdir().unwrap();
        let paths =
            kaji::agent::containerd::Paths::new(&dir.path().join("data"), &dir.path().join("run"));
        for d in [
            paths.config.parent().unwrap(),
            &paths.root,
            &paths.state,
            &paths.cni_conf_dir,
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            &paths.config,
            kaji::agent::containerd::render_config(&paths, PAUSE),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(&paths.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let mut c = Containerd {
            child: Some(child),
            dir,
            socket: paths.socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&c.socket).is_err() {
            if let Some(st) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({st}):\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&[child.id() as i32], Duration::from_secs(15));
            let _ = child.wait();
        }
        // Shims of containers this test failed to remove.
        terminate(
            &pids_with(&self.socket.display().to_string()),
            Duration::from_secs(5),
        );
    }
}

async fn cri_clients(
    socket: &Path,
) -> anyhow::Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>)> {
    let channel = containerd_client::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok((
        RuntimeServiceClient::new(channel.clone()),
        ImageServiceClient::new(channel),
    ))
}

/// Waits until CRI's ImageStatus reports `image` present; returns it.
async fn wait_image(
    images: &mut ImageServiceClient<Channel>,
    image: &str,
) -> anyhow::Result<cri::Image> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        if let Some(found) = images.image_status(req).await?.into_inner().image {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("CRI does not report {image} as present");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn host_network() -> Option<cri::NamespaceOption> {
    Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    })
}

/// Runs `command` in a new container of `sandbox` from `image`; returns its exit code and
/// its log file.
async fn run_to_completion(
    runtime: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    sandbox_config: &cri::PodSandboxConfig,
    name: &str,
    image: &str,
    command: &[&str],
) -> anyhow::Result<(i32, String)> {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: host_network(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .with_context(|| format!("creating container {name} from {image}"))?
        .into_inner()
        .container_id;
    runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("starting the container")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no container status")?;
        if status.state == cri::ContainerState::ContainerExited as i32 {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "container {name} did not exit: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&status.log_path)
        .with_context(|| format!("reading {}", status.log_path))?;
    runtime
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await?;
    Ok((status.exit_code, log))
}

/// The lines a container wrote to stdout, from its CRI log (`<time> stdout F <line>`).
fn stdout_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.splitn(4, ' ')
                .collect::<Vec<_>>()
                .get(1..4)
                .filter(|p| p[0] == "stdout")
                .map(|p| p[2].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_images_run_as_pods_through_cri() {
    let ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("busybox-oci.tar");
    build_image("busybox", &oci, &["--busybox", "--gzip"]);
    let docker = work.path().join("busybox-docker.tar");
    build_image(
        "kaji.test/tools/busybox:docker",
        &docker,
        &[
            "--busybox",
            "--format",
            "docker",
            "--entrypoint",
            "/bin/sh -c",
        ],
    );

    let logs = work.path().join("pods");
    std::fs::create_dir_all(&logs).unwrap();
    let result = async {
        // The built-in pause image: imported once, then found present.
        ensure!(
            images::ensure_pause_image(&ctd.socket, PAUSE).await?,
            "the first call imports the pause image"
        );
        ensure!(
            !images::ensure_pause_image(&ctd.socket, PAUSE).await?,
            "the second call finds it present"
        );

        // The OCI layout (gzip layer) through the library, with progress.
        let size = std::fs::metadata(&oci)?.len();
        let mut events = Vec::new();
        let names = images::import(&ctd.socket, tokio::fs::File::open(&oci).await?, |p| {
            events.push(p)
        })
        .await?;
        ensure!(
            names == ["docker.io/library/busybox:latest"],
            "imported {names:?}"
        );
        ensure!(
            events.contains(&Progress::Read(size)),
            "progress reached the file size {size}"
        );
        ensure!(
            events.contains(&Progress::Unpack {
                image: names[0].clone(),
                layer: 1,
                layers: 1
            }),
            "{events:?}"
        );
        ensure!(
            events.last() == Some(&Progress::Imported(names[0].clone())),
            "{events:?}"
        );

        // The docker-save layout through the CLI.
        let out = Command::new(common::kaji_bin())
            .args(["image", "import"])
            .arg(&docker)
            .arg(format!(
                "--container-runtime-endpoint=unix://{}",
                ctd.socket.display()
            ))
            .output()?;
        ensure!(
            out.status.success(),
            "kaji image import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "kaji.test/tools/busybox:docker",
            "stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );

        let (mut runtime, mut image_service) = cri_clients(&ctd.socket).await?;
        for (image, tag) in [
            (PAUSE, PAUSE),
            ("busybox", "docker.io/library/busybox:latest"),
            (
                "kaji.test/tools/busybox:docker",
                "kaji.test/tools/busybox:docker",
            ),
        ] {
            let found = wait_image(&mut image_service, image).await?;
            ensure!(
                found.repo_tags.iter().any(|t| t == tag),
                "{image}: tags {:?}",
                found.repo_tags
            );
            ensure!(found.size > 0, "{image}: size {}", found.size);
        }

        // A pod on the built-in pause image (no registry could provide it), host network.
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "images-e2e".into(),
                uid: uuid::Uuid::new_v4().to_string(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Host network shares the host's UTS namespace: no hostname of its own.
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: host_network(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox = runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("running the pod sandbox")?
            .into_inner()
            .pod_sandbox_id;
        let pod = async {
            let status = runtime
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("no sandbox status")?;
            ensure!(
                status.state == cri::PodSandboxState::SandboxReady as i32,
                "sandbox not ready: {status:?}"
            );

            let (code, log) = run_to_completion(
                &mut runtime,
                &sandbox,
                &sandbox_config,
                "echo",
                "busybox",
                &["echo", "hello"],
            )
            .await?;
            ensure!(code == 0, "echo exited {code}; log: {log}");
            ensure!(stdout_lines(&log) == ["hello"], "log: {log:?}");

            let (code, log) = run_to_completion(
                &mut runtime,
                &sandbox,
                &sandbox_config,
                "docker-image",
                "kaji.test/tools/busybox:docker",
                &[
                    "/bin/sh",
                    "-c",
                    "echo from the docker image; ls /bin/httpd; exit 7",
                ],
            )
            .await?;
            ensure!(code == 7, "exit code {code}; log: {log}");
            ensure!(
                stdout_lines(&log) == ["from the docker image", "/bin/httpd"],
                "log: {log:?}"
            );
            Ok(())
        }
        .await;
        let stop = runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            })
            .await;
        let remove = runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            })
            .await;
        pod?;
        stop.context("stopping the sandbox")?;
        remove.context("removing the sandbox")?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\ncontainerd log:\n{}", ctd.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airgap_directory_is_imported_once() {
    let ctd = Containerd::start();
    let data = tempfile::tempdir().unwrap();
    let dir = images::airgap::images_dir(data.path());
    std::fs::create_dir_all(&dir).unwrap();
    let state = data.path().join("agent").join(images::airgap::STATE_FILE);
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("one.tar");
    build_image("kaji.test/airgap/one:1", &tar, &["--busybox"]);
    // Compressed as a whole, as k3s's air-gap bundles are.
    let gz = dir.join("one.tar.gz");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", tar.display(), gz.display()))
        .status()
        .unwrap();
    assert!(o.success());
    std::fs::write(dir.join("README.txt"), "not an image").unwrap();
    // The same blobs already in another namespace (containerd shares content between
    // namespaces): kaji's import must take them over, not fail.
    let ctr = Command::new("ctr")
        .arg("--address")
        .arg(&ctd.socket)
        .args(["--namespace", "default", "images", "import"])
        .arg(&tar)
        .output()
        .expect("running ctr");
    assert!(
        ctr.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&ctr.stderr)
    );

    let first = images::airgap::import_dir(&dir, &state, &ctd.socket)
        .await
        .unwrap();
    assert_eq!(first, vec!["kaji.test/airgap/one:1".to_string()]);
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        recorded["files"]["one.tar.gz"]["images"],
        serde_json::json!(["kaji.test/airgap/one:1"]),
        "{recorded}"
    );
    assert_eq!(
        recorded["files"]["one.tar.gz"]["size"],
        std::fs::metadata(&gz).unwrap().len()
    );

    let (_, mut image_service) = cri_clients(&ctd.socket).await.unwrap();
    wait_image(&mut image_service, "kaji.test/airgap/one:1")
        .await
        .unwrap();

    // Unchanged: skipped. Touched (same bytes): skipped too.
    assert!(
        images::airgap::import_dir(&dir, &state, &ctd.socket)
            .await
            .unwrap()
            .is_empty()
    );
    let o = Command::new("touch")
        .arg("-d")
        .arg("2001-02-03")
        .arg(&gz)
        .status()
        .unwrap();
    assert!(o.success());
    assert!(
        images::airgap::import_dir(&dir, &state, &ctd.socket)
            .await
            .unwrap()
            .is_empty()
    );

    // New content under the same name, and a second archive: imported.
    build_image(
        "kaji.test/airgap/one:2",
        &tar,
        &["--busybox", "--env", "V=2"],
    );
    std::fs::copy(&tar, dir.join("one.tar.gz")).unwrap();
    build_image(
        "kaji.test/airgap/two",
        &dir.join("two.tar"),
        &["--busybox", "--format", "docker"],
    );
    let again = images::airgap::import_dir(&dir, &state, &ctd.socket)
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![
            "kaji.test/airgap/one:2".to_string(),
            "kaji.test/airgap/two:latest".to_string()
        ]
    );
    wait_image(&mut image_service, "kaji.test/airgap/two")
        .await
        .unwrap();
}

/// Terminates the processes whose command line names the path, when dropped.
struct KillOnDrop(Option<String>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(needle) = &self.0 {
            terminate(&pids_with(needle), Duration::from_secs(15));
        }
    }
}

#[test]
fn agent_imports_pause_and_airgap_images_at_start() {
    // Dropped after the server: then no agent is left to restart its containerd.
    let mut containerd_guard = KillOnDrop(None);
    let mut server = common::Server::start_with_agent(&["--node-ip=127.0.0.1"]);
    let data = server.data_dir();
    let socket = images::socket_path(&data, None);
    let config = data.join("agent/etc/containerd/config.toml");
    containerd_guard.0 = Some(config.display().to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("app.tar");
    build_image("kaji.test/airgap/app:v1", &tar, &["--busybox", "--gzip"]);

    let result = (|| -> anyhow::Result<()> {
        // The agent provides the pause image at its first start.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            ensure!(
                Instant::now() < deadline,
                "the agent's containerd socket {} did not appear",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        rt.block_on(async {
            let (_, mut image_service) = cri_clients(&socket).await?;
            wait_image(&mut image_service, PAUSE).await
        })?;

        // An archive dropped into the air-gap directory is imported at the next start.
        server.stop();
        terminate(
            &pids_with(&config.display().to_string()),
            Duration::from_secs(15),
        );
        let dir = images::airgap::images_dir(&data);
        ensure!(dir.is_dir(), "the agent creates {}", dir.display());
        std::fs::copy(&tar, dir.join("app.tar"))?;
        server.spawn();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut clients = None;
            while clients.is_none() {
                ensure!(
                    Instant::now() < deadline,
                    "the agent's containerd did not come back"
                );
                clients = cri_clients(&socket).await.ok();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (_, mut image_service) = clients.context("clients")?;
            let image = wait_image(&mut image_service, "kaji.test/airgap/app:v1").await?;
            ensure!(
                image.repo_tags == ["kaji.test/airgap/app:v1"],
                "{:?}",
                image.repo_tags
            );
            Ok(())
        })?;
        let state = std::fs::read_to_string(data.join("agent").join(images::airgap::STATE_FILE))?;
        ensure!(
            state.contains("kaji.test/airgap/app:v1"),
            "state file: {state}"
        );
        Ok(())
    })();
    let log = server.log();
    if server.child.is_some() {
        server.stop();
    }
    terminate(
        &pids_with(&config.display().to_string()),
        Duration::from_secs(15),
    );
    if let Err(e) = result {
        panic!("{e:#}\nserver log:\n{log}");
    }
}
