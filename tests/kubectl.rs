//! The real kubectl (the default dispatcher plus the 1.27 and 1.33 binaries) against a
//! real `kaji server`: the everyday commands must work with the expected output.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Server, ok, stderr, stdout, testdata};

fn everyday_commands(bin: &str) {
    let server = Server::start(&[]);
    let k = |args: &[&str]| server.kubectl_version(bin, args, None);
    let app = testdata("e2e/app.yaml");
    let app = app.to_str().unwrap();

    // Namespaces that every cluster has.
    let out = ok(k(&["get", "ns"]));
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(ns), "{bin} get ns: {out}");
    }
    assert!(
        out.contains("Active"),
        "{bin}: namespace table shows STATUS: {out}"
    );

    // create -f
    let cm = testdata("e2e/configmap.yaml");
    let out = ok(k(&["create", "-f", cm.to_str().unwrap()]));
    assert!(out.contains("configmap/standalone created"), "{out}");
    let again = k(&["create", "-f", cm.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("AlreadyExists") || stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // apply -f of a multi-document manifest, then again unchanged.
    let out = ok(k(&["apply", "-f", app]));
    for line in [
        "namespace/demo created",
        "configmap/web-config created",
        "secret/web-secret created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(out.contains(line), "{bin} apply: missing {line:?} in {out}");
    }
    let out = ok(k(&["apply", "-f", app]));
    for line in [
        "namespace/demo unchanged",
        "configmap/web-config unchanged",
        "deployment.apps/web unchanged",
        "service/web unchanged",
    ] {
        assert!(
            out.contains(line),
            "{bin} re-apply: missing {line:?} in {out}"
        );
    }

    // A Secret applied with write-only stringData is re-patched each time, as upstream.
    assert!(out.contains("secret/web-secret"), "{out}");

    // get -o yaml|json|wide
    let yaml = ok(k(&["get", "deployment", "web", "-n", "demo", "-o", "yaml"]));
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("replicas: 2"),
        "{yaml}"
    );
    assert!(
        yaml.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{yaml}"
    );
    assert!(
        yaml.contains("generation: 1") && yaml.contains("uid:"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(k(&["get", "configmaps", "-n", "demo", "-o", "json"]))).unwrap();
    assert_eq!(json["kind"], "List");
    assert!(
        json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["metadata"]["name"] == "web-config")
    );
    let secret: serde_json::Value = serde_json::from_str(&ok(k(&[
        "get",
        "secret",
        "web-secret",
        "-n",
        "demo",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        secret["data"]["password"], "czNjcjN0",
        "stringData is folded into data"
    );
    let wide = ok(k(&["get", "deploy", "-n", "demo", "-o", "wide"]));
    assert!(
        wide.contains("CONTAINERS")
            && wide.contains("web,sidecar")
            && wide.contains("busybox:1.36")
            && wide.contains("app=web"),
        "{wide}"
    );
    let svc = ok(k(&["get", "svc", "web", "-n", "demo"]));
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");

    // get all
    let all = ok(k(&["get", "all", "-n", "demo"]));
    assert!(
        all.contains("deployment.apps/web") && all.contains("service/web"),
        "{bin} get all: {all}"
    );

    // label, annotate, selectors
    ok(k(&[
        "label",
        "configmap",
        "web-config",
        "-n",
        "demo",
        "tier=frontend",
    ]));
    ok(k(&[
        "annotate",
        "configmap",
        "web-config",
        "-n",
        "demo",
        "owner=team-a",
    ]));
    let labelled = ok(k(&[
        "get",
        "configmap",
        "-n",
        "demo",
        "--selector",
        "tier=frontend",
        "-o",
        "name",
    ]));
    assert_eq!(labelled.trim(), "configmap/web-config");
    let none = ok(k(&[
        "get",
        "configmap",
        "-n",
        "demo",
        "--selector",
        "tier=backend",
        "-o",
        "name",
    ]));
    assert_eq!(none.trim(), "");
    let ann = ok(k(&[
        "get",
        "configmap",
        "web-config",
        "-n",
        "demo",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]));
    assert_eq!(ann, "team-a");
    let by_field = ok(k(&[
        "get",
        "configmaps",
        "-A",
        "--field-selector",
        "metadata.name=standalone",
        "-o",
        "name",
    ]));
    assert_eq!(by_field.trim(), "configmap/standalone");
    let by_ns = ok(k(&[
        "get",
        "configmaps",
        "-A",
        "--field-selector",
        "metadata.namespace=demo",
        "-o",
        "name",
    ]));
    assert!(
        by_ns.contains("web-config") && !by_ns.contains("standalone"),
        "{by_ns}"
    );

    // api-resources
    let res = ok(k(&["api-resources"]));
    assert!(
        res.lines().any(|l| l.starts_with("deployments")
            && l.contains("deploy")
            && l.contains("apps/v1")
            && l.contains("Deployment")),
        "{res}"
    );
    assert!(
        res.lines()
            .any(|l| l.starts_with("pods") && l.contains("po")),
        "{res}"
    );

    // get -w prints later changes.
    let path = common::kubectl_path(bin);
    let mut watcher = Command::new(path)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .args([
            "get",
            "configmaps",
            "-n",
            "demo",
            "-w",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until the watch has listed (it prints the existing config map first).
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("initial list");
    let mut lines = vec![first];
    std::thread::sleep(Duration::from_millis(500));
    ok(server.kubectl_version(
        bin,
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late-arrival","namespace":"demo"},"data":{"a":"b"}}"#),
    ));
    let mut seen = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                seen |= l.contains("late-arrival") && l.contains("ADDED");
                lines.push(l);
                if seen {
                    break;
                }
            }
            Err(_) => continue,
        }
    }
    common::signal(watcher.id() as i32, "KILL");
    let _ = watcher.wait();
    assert!(
        seen,
        "{bin} get -w did not print the new config map: {lines:?}"
    );

    // delete -f removes everything, the namespace included.
    let out = ok(k(&["delete", "-f", app, "--timeout=60s"]));
    for line in [
        "namespace \"demo\" deleted",
        "deployment.apps \"web\" deleted",
        "service \"web\" deleted",
    ] {
        assert!(
            out.contains(line),
            "{bin} delete: missing {line:?} in {out}"
        );
    }
    let gone = k(&["get", "ns", "demo"]);
    assert!(
        !gone.status.success() && stderr(&gone).contains("NotFound"),
        "{}{}",
        stdout(&gone),
        stderr(&gone)
    );
    let left = ok(k(&["get", "configmaps", "-A", "-o", "name"]));
    assert!(
        !left.contains("late-arrival") && !left.contains("web-config"),
        "namespace contents deleted: {left}"
    );
}

#[test]
fn kubectl_default_version() {
    everyday_commands("kubectl");
}

#[test]
fn kubectl_1_27() {
    everyday_commands("kubectl.1.27");
}

#[test]
fn kubectl_1_33() {
    everyday_commands("kubectl.1.33");
}

#[test]
fn kubectl_version_reports_the_api_level() {
    let server = Server::start(&[]);
    let out = ok(server.kubectl(&["version", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "33");
    assert!(
        v["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.33.0+kaji.")
    );
}
