//! Server-side apply and managedFields against a real `kaji server`: the real kubectl
//! (the default dispatcher, 1.27 and 1.33) with `apply --server-side`, the upgrade from
//! client-side apply, and kube-rs `Patch::Apply`.

mod common;

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use common::{Server, ok, stderr, stdout};

const DEPLOY: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: [\"httpd\", \"-f\", \"-p\", \"8080\"]
        ports:
        - containerPort: 8080
          name: http
      - name: sidecar
        image: busybox:1.36
        command: [\"sleep\", \"3600\"]
";

/// Another manager's configuration: replicas only.
const REPLICAS_3: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
";

fn write(server: &Server, name: &str, text: &str) -> PathBuf {
    let p = server.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn jsonpath(server: &Server, bin: &str, path: &str) -> String {
    let arg = format!("jsonpath={path}");
    ok(server.kubectl_version(bin, &["get", "deployment", "web", "-o", &arg], None))
}

/// `manager:operation` of every managedFields entry, one per line.
/// The field managers of the deployment, without the controllers' own entries (the
/// deployment controller writes revision annotations and status, as upstream's does).
fn managers(server: &Server, bin: &str) -> String {
    jsonpath(
        server,
        bin,
        r#"{range .metadata.managedFields[*]}{.manager}:{.operation}{"\n"}{end}"#,
    )
    .lines()
    .filter(|l| !l.starts_with("kube-controller-manager:"))
    .collect::<Vec<_>>()
    .join("\n")
}

fn server_side_apply(bin: &str) {
    let server = Server::start(&[]);
    let k = |args: &[&str]| server.kubectl_version(bin, args, None);
    let deploy = write(&server, "deploy.yaml", DEPLOY);
    let deploy = deploy.to_str().unwrap();
    let replicas = write(&server, "replicas.yaml", REPLICAS_3);
    let replicas = replicas.to_str().unwrap();

    // Create.
    let out = ok(k(&["apply", "--server-side", "-f", deploy]));
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{bin}: {out}"
    );
    assert_eq!(jsonpath(&server, bin, "{.spec.replicas}"), "2");
    assert_eq!(managers(&server, bin).trim(), "kubectl:Apply", "{bin}");

    // Re-applying the same manifest writes nothing.
    let rv = jsonpath(&server, bin, "{.metadata.resourceVersion}");
    let out = ok(k(&["apply", "--server-side", "-f", deploy]));
    assert!(out.contains("serverside-applied"), "{bin}: {out}");
    assert_eq!(
        jsonpath(&server, bin, "{.metadata.resourceVersion}"),
        rv,
        "{bin}: re-apply rewrote the object"
    );

    // Another manager changing replicas conflicts, and nothing changes.
    let out = k(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        replicas,
    ]);
    assert_eq!(out.status.code(), Some(1), "{bin}: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{bin}: {err}"
    );
    assert!(err.contains(r#"conflict with "kubectl""#), "{bin}: {err}");
    assert_eq!(jsonpath(&server, bin, "{.spec.replicas}"), "2");
    assert_eq!(jsonpath(&server, bin, "{.metadata.resourceVersion}"), rv);

    // --force-conflicts takes replicas over.
    let out = ok(k(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        replicas,
    ]));
    assert!(out.contains("serverside-applied"), "{bin}: {out}");
    assert_eq!(jsonpath(&server, bin, "{.spec.replicas}"), "3");

    // Both managers show up with --show-managed-fields, `other` owning replicas.
    let yaml = ok(k(&[
        "get",
        "deployment",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]));
    for needle in [
        "manager: kubectl",
        "manager: other",
        "operation: Apply",
        "f:replicas: {}",
        "k:{\"name\":\"sidecar\"}:",
    ] {
        assert!(
            yaml.contains(needle),
            "{bin}: {needle:?} missing from\n{yaml}"
        );
    }
    let plain = ok(k(&["get", "deployment", "web", "-o", "yaml"]));
    assert!(
        !plain.contains("managedFields"),
        "{bin}: managedFields shown without the flag"
    );
    let owners = jsonpath(
        &server,
        bin,
        r#"{.metadata.managedFields[?(@.manager=="other")].fieldsV1}"#,
    );
    assert_eq!(owners, r#"{"f:spec":{"f:replicas":{}}}"#, "{bin}");

    // Dropping the sidecar (and replicas, which `other` owns now) from the manifest removes
    // the sidecar; replicas stay as `other` set them.
    let v2 = DEPLOY
        .replace("  replicas: 2\n", "")
        .split("      - name: sidecar")
        .next()
        .unwrap()
        .to_string();
    let v2 = write(&server, "deploy-v2.yaml", &v2);
    ok(k(&["apply", "--server-side", "-f", v2.to_str().unwrap()]));
    assert_eq!(
        jsonpath(&server, bin, "{.spec.template.spec.containers[*].name}"),
        "web"
    );
    assert_eq!(jsonpath(&server, bin, "{.spec.replicas}"), "3");
}

#[test]
fn server_side_apply_kubectl() {
    server_side_apply("kubectl");
}

#[test]
fn server_side_apply_kubectl_1_27() {
    server_side_apply("kubectl.1.27");
}

#[test]
fn server_side_apply_kubectl_1_33() {
    server_side_apply("kubectl.1.33");
}

/// `kubectl apply` then `kubectl apply --server-side`: no conflicts with the client-side
/// applier, whose fields kubectl then migrates to its own Apply entry; a later client-side
/// apply still works from the updated last-applied annotation.
fn upgrade_from_client_side_apply(bin: &str) {
    let server = Server::start(&[]);
    let k = |args: &[&str]| server.kubectl_version(bin, args, None);
    let deploy = write(&server, "deploy.yaml", DEPLOY);
    let deploy = deploy.to_str().unwrap();
    let scaled = write(
        &server,
        "deploy-3.yaml",
        &DEPLOY.replace("replicas: 2", "replicas: 3"),
    );
    let scaled = scaled.to_str().unwrap();

    let out = ok(k(&["apply", "-f", deploy]));
    assert!(out.contains("deployment.apps/web created"), "{bin}: {out}");
    assert!(
        managers(&server, bin).contains("kubectl-client-side-apply:Update"),
        "{bin}"
    );

    let out = ok(k(&["apply", "--server-side", "-f", scaled]));
    assert!(out.contains("serverside-applied"), "{bin}: {out}");
    assert_eq!(jsonpath(&server, bin, "{.spec.replicas}"), "3");
    let m = managers(&server, bin);
    assert!(m.contains("kubectl:Apply"), "{bin}: {m}");
    assert!(
        !m.contains("kubectl-client-side-apply"),
        "{bin}: not migrated: {m}"
    );
    let last = jsonpath(
        &server,
        bin,
        r#"{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}"#,
    );
    assert!(
        last.contains(r#""replicas":3"#),
        "{bin}: last-applied not updated: {last}"
    );

    let out = ok(k(&["apply", "-f", deploy]));
    assert!(
        out.contains("deployment.apps/web configured"),
        "{bin}: {out}"
    );
    assert_eq!(jsonpath(&server, bin, "{.spec.replicas}"), "2");
}

#[test]
fn upgrade_from_client_side_apply_kubectl() {
    upgrade_from_client_side_apply("kubectl");
}

#[test]
fn upgrade_from_client_side_apply_kubectl_1_27() {
    upgrade_from_client_side_apply("kubectl.1.27");
}

#[tokio::test]
async fn kube_rs_patch_apply() {
    let server = Server::start(&[]);
    let api: Api<Deployment> = Api::namespaced(server.client().await, "default");
    let deploy = |replicas: i64| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "kr"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "kr"}},
                "template": {"metadata": {"labels": {"app": "kr"}},
                             "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
            }
        })
    };
    let entries = |d: &Deployment| -> Vec<(String, String, String)> {
        d.metadata
            .managed_fields
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.manager.clone().unwrap_or_default(),
                    e.operation.clone().unwrap_or_default(),
                    e.subresource.clone().unwrap_or_default(),
                )
            })
            .collect()
    };
    let owns_replicas = |d: &Deployment, manager: &str| {
        d.metadata.managed_fields.iter().flatten().any(|e| {
            e.manager.as_deref() == Some(manager)
                && e.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0["f:spec"]["f:replicas"].is_object())
        })
    };

    // Create, then update through apply.
    let created = api
        .patch("kr", &PatchParams::apply("mgr"), &Patch::Apply(deploy(1)))
        .await
        .unwrap();
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(
        entries(&created),
        vec![("mgr".into(), "Apply".into(), String::new())]
    );
    assert!(
        created.metadata.managed_fields.as_ref().unwrap()[0]
            .time
            .is_some()
    );
    let updated = api
        .patch("kr", &PatchParams::apply("mgr"), &Patch::Apply(deploy(4)))
        .await
        .unwrap();
    assert_eq!(updated.spec.as_ref().unwrap().replicas, Some(4));
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );

    // A second applier conflicts on replicas...
    let scale = |n: i64| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kr"}, "spec": {"replicas": n}});
    match api
        .patch("kr", &PatchParams::apply("other"), &Patch::Apply(scale(5)))
        .await
    {
        Err(kube::Error::Api(ae)) => {
            assert_eq!((ae.code, ae.reason.as_str()), (409, "Conflict"), "{ae:?}");
            assert_eq!(
                ae.message,
                r#"Apply failed with 1 conflict: conflict with "mgr": .spec.replicas"#
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(api.get("kr").await.unwrap().spec.unwrap().replicas, Some(4));
    // ...unless it forces.
    let forced = api
        .patch(
            "kr",
            &PatchParams::apply("other").force(),
            &Patch::Apply(scale(5)),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(5));
    assert!(owns_replicas(&forced, "other") && !owns_replicas(&forced, "mgr"));

    // A merge patch (an Update) takes the field it changes.
    let params = PatchParams {
        field_manager: Some("editor".into()),
        ..PatchParams::default()
    };
    let edited = api
        .patch(
            "kr",
            &params,
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await
        .unwrap();
    assert!(owns_replicas(&edited, "editor") && !owns_replicas(&edited, "other"));
    assert!(entries(&edited).contains(&("editor".into(), "Update".into(), String::new())));

    // Status applies are recorded against the status subresource.
    let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kr"}, "status": {"observedGeneration": 7}});
    let with_status = api
        .patch_status("kr", &PatchParams::apply("ctrl"), &Patch::Apply(status))
        .await
        .unwrap();
    assert_eq!(
        with_status.status.as_ref().unwrap().observed_generation,
        Some(7)
    );
    assert!(entries(&with_status).contains(&("ctrl".into(), "Apply".into(), "status".into())));
    assert_eq!(with_status.spec.unwrap().replicas, Some(6));

    // An apply carrying managedFields is refused.
    let mut bad = deploy(1);
    bad["metadata"]["managedFields"] = json!([]);
    match api
        .patch("kr", &PatchParams::apply("mgr"), &Patch::Apply(bad))
        .await
    {
        Err(kube::Error::Api(ae)) => assert_eq!(
            (ae.code, ae.message.as_str()),
            (400, "metadata.managedFields must be nil")
        ),
        other => panic!("expected a 400, got {other:?}"),
    }
}
