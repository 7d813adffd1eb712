//! The command line: --version, --help, the config file, certificate reuse, the written
//! kubeconfig, and a clean shutdown on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Server, kaji_bin};

#[test]
fn version_and_help() {
    let out = Command::new(kaji_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kaji {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(kaji_bin())
        .args(["server", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--bind-address",
        "--https-listen-port",
        "--advertise-address",
        "--tls-san",
        "--write-kubeconfig",
        "--write-kubeconfig-mode",
        "--token",
        "--cluster-cidr",
        "--service-cidr",
        "--cluster-dns",
        "--cluster-domain",
        "--disable-agent",
        "--debug",
        "--config",
    ] {
        assert!(help.contains(flag), "server --help lacks {flag}:\n{help}");
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_restart_reuses_certificates() {
    let mut server = Server::start(&["--tls-san=kaji.example.test"]);
    let mode = std::fs::metadata(&server.kubeconfig)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "kubeconfig is private");
    let kc = std::fs::read_to_string(&server.kubeconfig).unwrap();
    assert!(
        kc.contains(&format!("https://127.0.0.1:{}", server.port)),
        "{kc}"
    );
    let ca = server.data_dir().join("server/tls/server-ca.crt");
    let ca_before = std::fs::read(&ca).unwrap();
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM exit status: {status}\n{}",
        server.log()
    );
    assert!(
        server.log().contains("kaji server stopped"),
        "{}",
        server.log()
    );
    server.spawn();
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        ca_before,
        "the CA is reused on restart"
    );
    // The serving certificate carries the extra SAN: curl resolves it to 127.0.0.1.
    let out = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("kaji.example.test:{}:127.0.0.1", server.port),
            &format!("https://kaji.example.test:{}/version", server.port),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "TLS with the CA and the extra SAN: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://127.0.0.1:{}/version", server.port),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"minor\":\"33\""));
}

#[test]
fn config_file_sets_flags() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("from-config.yaml");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "write-kubeconfig: {}\nwrite-kubeconfig-mode: \"0640\"\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let mut server = Server::start(&[&format!("--config={}", config.display())]);
    // The command line's --write-kubeconfig (from the harness) wins over the file...
    assert!(server.kubeconfig.exists());
    // ...but the mode comes from the file.
    let mode = std::fs::metadata(&server.kubeconfig)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    assert!(!kubeconfig.exists());
    assert!(server.stop().success());
}
