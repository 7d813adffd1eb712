//! Images from a private registry and air-gapped nodes: a `kaji server` whose
//! `--private-registry` file mirrors a local plain-HTTP registry pulls a pod's image from
//! it (with `Pulling`/`Pulled` events), and a pod with `imagePullPolicy: Never` waits with
//! `ErrImageNeverPull` until the image arrives through `<data-dir>/agent/images/`.
//!
//! Needs root, containerd, runc, the CNI plugins, and for the registry test Debian's
//! `docker-registry` and `skopeo` (scripts/setup.sh installs them).

mod common;

use common::{apply, wait_pod};

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, ok};
use serde_json::Value;

/// Builds a one-layer busybox OCI archive named `name` at `out`.
fn build_busybox(name: &str, out: &Path) {
    let st = Command::new("bash")
        .arg(common::testdata("../scripts/build-image.sh"))
        .arg(name)
        .arg(out)
        .args(["--busybox", "--cmd", "sh"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A `docker-registry` process serving plain HTTP on loopback; killed by PID on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, "")
    }

    /// A registry that demands basic authentication (`htpasswd`, bcrypt, as distribution
    /// requires) for user `user` with `password`.
    fn start_with_login(dir: &Path, user: &str, password: &str) -> Registry {
        let htpasswd = dir.join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("htpasswd (Debian package apache2-utils) must be installed");
        assert!(out.status.success());
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        Registry::start_with(
            dir,
            &format!(
                "auth:\n  htpasswd:\n    realm: kaji-test\n    path: {}\n",
                htpasswd.display()
            ),
        )
    }

    fn start_with(dir: &Path, extra: &str) -> Registry {
        let port = common::free_port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let reg = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        common::signal(self.child.id() as i32, "KILL");
        let _ = self.child.wait();
    }
}

fn one_shot(name: &str, image: &str, policy: &str, message: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    imagePullPolicy: {policy}
    command: ["sh", "-c", "echo {message}"]
"#
    )
}

fn waiting_reason(pod: &Value) -> String {
    pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn pulls_from_a_private_registry_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let port = registry.port;
    let archive = dir.path().join("busybox.tar");
    build_busybox("docker.io/library/busybox:1.36", &archive);
    let image = format!("127.0.0.1:{port}/test/busybox:1.36");
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo (Debian package skopeo) must be installed");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let registries: PathBuf = dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!("mirrors:\n  \"127.0.0.1:{port}\":\n    endpoint: [\"http://127.0.0.1:{port}\"]\nconfigs:\n  \"127.0.0.1:{port}\":\n    tls: {{insecure_skip_verify: true}}\n"),
    )
    .unwrap();
    let flag = format!("--private-registry={}", registries.display());
    let server = Server::start_with_agent(&[&flag]);
    let config =
        std::fs::read_to_string(server.data_dir().join("agent/etc/containerd/config.toml"))
            .unwrap();
    assert!(
        config.contains(&format!("registry.mirrors.\"127.0.0.1:{port}\"]")),
        "{config}"
    );

    apply(
        &server,
        &one_shot("pulled", &image, "Always", "hello-from-the-registry"),
    );
    wait_pod(&server, "pulled", 120, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let logs = ok(server.kubectl(&["logs", "pulled"]));
    assert_eq!(logs.trim(), "hello-from-the-registry");
    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=pulled",
    ]));
    assert!(
        events.contains("Pulling") && events.contains(&format!("Pulling image \"{image}\"")),
        "Pulling event: {events}"
    );
    assert!(
        events.contains("Pulled") && events.contains("Successfully pulled image"),
        "Pulled event: {events}"
    );

    // An image the registry does not have fails to pull, visibly.
    apply(
        &server,
        &one_shot(
            "missing",
            &format!("127.0.0.1:{port}/test/nothing:1"),
            "Always",
            "never",
        ),
    );
    wait_pod(
        &server,
        "missing",
        60,
        "ErrImagePull or ImagePullBackOff",
        |p| {
            matches!(
                waiting_reason(p).as_str(),
                "ErrImagePull" | "ImagePullBackOff"
            )
        },
    );

    let _ = server.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--timeout=60s",
    ]);
    drop(server);
    drop(registry);
}

#[test]
fn air_gapped_image_with_pull_policy_never() {
    let mut server = Server::start_with_agent(&[]);
    let image = "kaji.test/airgap/busybox:1.36";
    apply(
        &server,
        &one_shot("airgap", image, "Never", "hello-from-the-airgap"),
    );
    let pod = wait_pod(&server, "airgap", 90, "ErrImageNeverPull", |p| {
        waiting_reason(p) == "ErrImageNeverPull"
    });
    assert_eq!(pod["status"]["phase"], "Pending");
    let events = ok(server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=airgap",
    ]));
    assert!(events.contains("ErrImageNeverPull"), "{events}");

    // The image arrives the air-gap way: a tarball in <data-dir>/agent/images/, imported
    // at the next start.
    let images = server.data_dir().join("agent/images");
    std::fs::create_dir_all(&images).unwrap();
    build_busybox(image, &images.join("airgap-busybox.tar"));
    server.stop();
    server.spawn();
    wait_pod(&server, "airgap", 120, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let logs = ok(server.kubectl(&["logs", "airgap"]));
    assert_eq!(logs.trim(), "hello-from-the-airgap");

    let _ = server.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--timeout=60s",
    ]);
}

#[test]
fn pulls_with_image_pull_secrets_from_a_registry_that_requires_login() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_login(dir.path(), "kaji", "s3cret");
    let port = registry.port;
    let archive = dir.path().join("busybox.tar");
    build_busybox("docker.io/library/busybox:1.36", &archive);
    let image = format!("127.0.0.1:{port}/private/busybox:1.36");
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds=kaji:s3cret",
        ])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The registry is plain HTTP: tell containerd so, without credentials.
    let registries: PathBuf = dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!("mirrors:\n  \"127.0.0.1:{port}\":\n    endpoint: [\"http://127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let flag = format!("--private-registry={}", registries.display());
    let server = Server::start_with_agent(&[&flag]);

    // Without a pull secret the registry refuses.
    apply(&server, &one_shot("anonymous", &image, "Always", "nope"));
    wait_pod(
        &server,
        "anonymous",
        90,
        "ErrImagePull or ImagePullBackOff",
        |p| {
            matches!(
                waiting_reason(p).as_str(),
                "ErrImagePull" | "ImagePullBackOff"
            )
        },
    );

    // With a docker-registry Secret in imagePullSecrets it pulls.
    ok(server.kubectl(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server=127.0.0.1:{port}"),
        "--docker-username=kaji",
        "--docker-password=s3cret",
    ]));
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: authenticated}}
spec:
  restartPolicy: Never
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
    command: ["sh", "-c", "echo pulled-with-a-secret"]
"#
        ),
    );
    wait_pod(&server, "authenticated", 120, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(
        ok(server.kubectl(&["logs", "authenticated"])).trim(),
        "pulled-with-a-secret"
    );
    let _ = server.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--timeout=60s",
    ]);
    drop(server);
    drop(registry);
}
