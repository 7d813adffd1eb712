//! API fidelity through the real kubectl: client-side apply of a changed manifest
//! (strategic merge), `diff`, `patch` with each patch type, `edit`, `scale`, `explain`,
//! and the columns `get` prints.

mod common;

use common::{Server, ok, stderr, testdata};

fn fidelity(bin: &str) {
    let server = Server::start(&[]);
    let k = |args: &[&str]| server.kubectl_version(bin, args, None);
    let app = testdata("e2e/app.yaml");
    let v2 = testdata("e2e/app-v2.yaml");
    ok(k(&["apply", "-f", app.to_str().unwrap()]));
    // A user's extra annotation on the live object must survive the re-apply.
    ok(k(&["annotate", "deploy/web", "-n", "demo", "team=blue"]));

    // diff shows the pending change and exits 1.
    let diff = k(&["diff", "-f", v2.to_str().unwrap()]);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "kubectl diff: {}",
        stderr(&diff)
    );
    let text = common::stdout(&diff);
    assert!(
        text.contains("busybox:1.37") && text.contains("LEVEL"),
        "{text}"
    );

    // Applying the changed manifest changes only what changed.
    let out = ok(k(&["apply", "-f", v2.to_str().unwrap()]));
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d: serde_json::Value = serde_json::from_str(&ok(k(&[
        "get", "deploy", "web", "-n", "demo", "-o", "json",
    ])))
    .unwrap();
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "web");
    assert_eq!(containers[0]["image"], "busybox:1.37");
    let env: Vec<&str> = containers[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, vec!["MODE", "LEVEL"]);
    assert_eq!(
        containers[0]["env"][0]["valueFrom"]["configMapKeyRef"]["key"],
        "MODE"
    );
    assert_eq!(containers[0]["ports"][0]["containerPort"], 8080);
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(containers[1]["image"], "busybox:1.36");
    assert_eq!(d["metadata"]["annotations"]["team"], "blue");
    assert_eq!(d["metadata"]["generation"], 2);
    let again = ok(k(&["apply", "-f", v2.to_str().unwrap()]));
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    let diff = k(&["diff", "-f", v2.to_str().unwrap()]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "no diff after apply: {}",
        common::stdout(&diff)
    );

    // patch with each patch type.
    ok(k(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.35"}]}}}}"#,
    ]));
    ok(k(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    ]));
    ok(k(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]));
    let d: serde_json::Value = serde_json::from_str(&ok(k(&[
        "get", "deploy", "web", "-n", "demo", "-o", "json",
    ])))
    .unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][1]["image"],
        "busybox:1.35"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:1.37",
        "strategic merge kept the other container"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "front");
    assert_eq!(d["spec"]["replicas"], 4);
    // Invalid patches are rejected and change nothing.
    let bad = k(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":9},{"op":"replace","path":"/spec/replicas","value":1}]"#,
    ]);
    assert!(!bad.status.success());
    let bad = k(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":-3}}"#,
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("Invalid"),
        "{}",
        stderr(&bad)
    );
    let bad = k(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#,
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("immutable"),
        "{}",
        stderr(&bad)
    );
    let d: serde_json::Value = serde_json::from_str(&ok(k(&[
        "get", "deploy", "web", "-n", "demo", "-o", "json",
    ])))
    .unwrap();
    assert_eq!(d["spec"]["replicas"], 4, "rejected patches changed nothing");

    // scale
    let out = ok(k(&["scale", "deploy/web", "-n", "demo", "--replicas=3"]));
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    assert_eq!(
        ok(k(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ])),
        "3"
    );

    // edit with an EDITOR script that rewrites the replica count.
    let editor = server.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 3/replicas: 5/' \"$1\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = common::kubectl_path(bin);
    let out = std::process::Command::new(path)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .env("EDITOR", &editor)
        .env("KUBE_EDITOR", &editor)
        .args(["edit", "deploy/web", "-n", "demo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl edit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(k(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ])),
        "5"
    );

    // explain reads the OpenAPI schemas.
    let ex = ok(k(&["explain", "deployment.spec.template.spec.containers"]));
    assert!(ex.contains("image") && ex.contains("livenessProbe"), "{ex}");

    // get prints upstream's columns.
    // (The Deployment's rollout is in progress without a node, so its counts vary; its
    // columns are checked on their own.)
    let deploy = ok(k(&["get", "deploy", "-n", "demo"]));
    let header: Vec<&str> = deploy
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{deploy}"
    );
    assert!(
        deploy
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web") && l.contains("0/5")),
        "{deploy}"
    );
    let out = ok(k(&["get", "svc,cm,secret", "-n", "demo"]));
    let golden = std::fs::read_to_string(testdata("golden/get-demo.txt")).unwrap();
    assert_eq!(
        normalize_age(&out),
        golden,
        "kubectl get output differs from testdata/golden/get-demo.txt"
    );
}

/// Replaces the AGE column's values (they depend on timing) with `<age>`.
fn normalize_age(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let is_age = |c: &str| {
            !c.is_empty()
                && c.chars().last().is_some_and(|l| "smhdy".contains(l))
                && c.chars().next().is_some_and(|f| f.is_ascii_digit())
        };
        let fixed: Vec<String> = cols
            .iter()
            .map(|c| {
                if is_age(c) {
                    "<age>".to_string()
                } else {
                    (*c).to_string()
                }
            })
            .collect();
        out.push_str(&fixed.join(" "));
        out.push('\n');
    }
    out
}

#[test]
fn fidelity_default_kubectl() {
    fidelity("kubectl");
}

#[test]
fn fidelity_kubectl_1_27() {
    fidelity("kubectl.1.27");
}

#[test]
fn fidelity_kubectl_1_33() {
    fidelity("kubectl.1.33");
}
