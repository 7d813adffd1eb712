//! The other official client families against kaji, unchanged: kube-rs's WebSocket
//! exec/attach/port-forward (it has no SPDY fallback), kube-rs's runtime watcher and
//! reflector, and the official Python client (`python3-kubernetes`, Debian's 22.6.0:
//! typed clients, strategic merge patch, watch streams, pod logs, WebSocket exec and
//! `ApiException`s).
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static and python3-kubernetes
//! (scripts/setup.sh).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, import_busybox};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, AttachParams, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Deletes every pod and deployment when dropped (before the server stops), so no
/// container outlives the test even when an assertion fails.
struct DeleteWorkloads<'a>(&'a Server);

impl Drop for DeleteWorkloads<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "deployments,pods",
            "--all",
            "--grace-period=1",
            "--timeout=60s",
        ]);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Everything `r` yields until it ends (or `secs` pass).
async fn read_all(mut r: impl AsyncRead + Unpin, secs: u64) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), r.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// What `r` yields until `done` says so (or `secs` pass).
async fn read_until(
    mut r: impl AsyncRead + Unpin,
    secs: u64,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), async {
        let mut chunk = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&buf)) {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

const TALKER: &str = r#"{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "talker"},
  "spec": {"containers": [
    {"name": "main", "image": "docker.io/library/busybox:1.36", "imagePullPolicy": "IfNotPresent",
     "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done"]},
    {"name": "web", "image": "docker.io/library/busybox:1.36", "imagePullPolicy": "IfNotPresent",
     "command": ["sh", "-c", "mkdir -p /www && echo served-by-httpd > /www/index.html && exec httpd -f -p 8080 -h /www"]}
  ]}
}"#;

#[test]
fn kube_rs_exec_attach_and_portforward_over_websocket() {
    let server = Server::start_with_agent(&["--node-ip=127.0.0.1"]);
    let _cleanup = DeleteWorkloads(&server);
    import_busybox(&server);
    runtime().block_on(async {
        let client = server.client().await;
        let pods: Api<Pod> = Api::default_namespaced(client);
        let pod: Pod = serde_json::from_str(TALKER).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let running = kube::runtime::wait::await_condition(
            pods.clone(),
            "talker",
            kube::runtime::conditions::is_pod_running(),
        );
        tokio::time::timeout(Duration::from_secs(120), running)
            .await
            .unwrap_or_else(|_| panic!("talker not running in 120s:\n{}", server.log()))
            .unwrap();

        // exec: stdout, stderr and the exit status from the error channel.
        let ap = AttachParams::default()
            .container("main")
            .stdout(true)
            .stderr(true);
        let mut p = pods
            .exec(
                "talker",
                ["sh", "-c", "echo hi; echo oops >&2; exit 3"],
                &ap,
            )
            .await
            .unwrap_or_else(|e| panic!("exec over WebSocket: {e}\n{}", server.log()));
        let (out, err) = (p.stdout().unwrap(), p.stderr().unwrap());
        let status = p.take_status().unwrap();
        let (out, err) = tokio::join!(read_all(out, 30), read_all(err, 30));
        let status = tokio::time::timeout(Duration::from_secs(30), status)
            .await
            .unwrap()
            .expect("an exit status");
        p.join().await.unwrap();
        assert_eq!(out, "hi\n");
        assert_eq!(err, "oops\n");
        assert_eq!(status.status.as_deref(), Some("Failure"), "{status:?}");
        assert_eq!(
            status.reason.as_deref(),
            Some("NonZeroExitCode"),
            "{status:?}"
        );
        let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
        assert!(
            causes
                .iter()
                .any(|c| c.reason.as_deref() == Some("ExitCode")
                    && c.message.as_deref() == Some("3")),
            "{causes:?}"
        );

        let mut p = pods.exec("talker", ["true"], &ap).await.unwrap();
        let status = p.take_status().unwrap().await.expect("an exit status");
        assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
        p.join().await.unwrap();

        // exec with stdin: what is written comes back through cat.
        let ap_in = AttachParams::default()
            .container("main")
            .stdin(true)
            .stdout(true)
            .stderr(false);
        let mut p = pods.exec("talker", ["cat"], &ap_in).await.unwrap();
        let mut stdin = p.stdin().unwrap();
        let stdout = p.stdout().unwrap();
        stdin
            .write_all(b"hello stdin\nsecond line\n")
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let echoed = read_until(stdout, 30, |s| s.contains("second line\n")).await;
        assert_eq!(echoed, "hello stdin\nsecond line\n");
        // The v4 protocol cannot half-close stdin: end cat by closing the connection.
        p.abort();
        // A command that ends on its own after reading its input reports success.
        let mut p = pods
            .exec(
                "talker",
                ["sh", "-c", "read line; echo got:$line | tr a-z A-Z"],
                &ap_in,
            )
            .await
            .unwrap();
        let mut stdin = p.stdin().unwrap();
        let stdout = p.stdout().unwrap();
        let status = p.take_status().unwrap();
        stdin.write_all(b"ping\n").await.unwrap();
        assert_eq!(read_all(stdout, 30).await, "GOT:PING\n");
        let status = status.await.expect("an exit status");
        assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
        drop(stdin);
        p.join().await.unwrap();

        // attach: the running container's output.
        let mut p = pods
            .attach(
                "talker",
                &AttachParams::default()
                    .container("main")
                    .stdout(true)
                    .stderr(false),
            )
            .await
            .unwrap_or_else(|e| panic!("attach over WebSocket: {e}\n{}", server.log()));
        let attached = read_until(p.stdout().unwrap(), 20, |s| {
            s.lines().filter(|l| l.starts_with("tick ")).count() >= 3
        })
        .await;
        p.abort();
        let ticks: Vec<u32> = attached
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .collect();
        assert!(ticks.len() >= 3, "{attached:?}");
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "consecutive ticks while attached: {ticks:?}"
        );

        // port-forward to httpd in the pod, twice (one connection per forwarder).
        for _ in 0..2 {
            let mut pf = pods
                .portforward("talker", &[8080])
                .await
                .unwrap_or_else(|e| panic!("port-forward over WebSocket: {e}\n{}", server.log()));
            let mut s = pf.take_stream(8080).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let page = read_until(&mut s, 30, |s| s.contains("served-by-httpd\n")).await;
            assert!(page.starts_with("HTTP/1."), "{page:?}");
            assert!(
                page.ends_with("\r\n\r\nserved-by-httpd\n"),
                "the page from httpd: {page:?}"
            );
            drop(s);
            pf.abort();
        }
    });
}

/// The Python program: each step appends to `out`, printed as JSON at the end.
const PYTHON: &str = r#"
import json, sys, time
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()
out = {}

out["namespaces"] = sorted(n.metadata.name for n in core.list_namespace().items)

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-config"), data={"greeting": "hello"})
created = core.create_namespaced_config_map("default", cm)
out["configmap_data"] = created.data
out["configmap_created_tz"] = str(created.metadata.creation_timestamp.tzinfo is not None)

try:
    core.create_namespaced_config_map("default", cm)
    out["conflict"] = None
except ApiException as e:
    body = json.loads(e.body)
    out["conflict"] = {"status": e.status, "reason": body.get("reason"), "kind": body.get("kind"),
                       "message": body.get("message")}
try:
    core.read_namespaced_config_map("missing", "default")
    out["not_found"] = None
except ApiException as e:
    body = json.loads(e.body)
    out["not_found"] = {"status": e.status, "reason": body.get("reason"), "message": body.get("message")}

labels = {"app": "py-web"}
container = client.V1Container(
    name="main", image="docker.io/library/busybox:1.36", image_pull_policy="IfNotPresent",
    command=["sh", "-c", "echo started-$GREETING; exec sleep 3600"],
    env=[client.V1EnvVar(name="GREETING", value_from=client.V1EnvVarSource(
        config_map_key_ref=client.V1ConfigMapKeySelector(name="py-config", key="greeting")))])
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web", labels=labels),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels=labels),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels=labels),
            spec=client.V1PodSpec(containers=[container], termination_grace_period_seconds=1))))
apps.create_namespaced_deployment("default", dep)
got = apps.read_namespaced_deployment("py-web", "default")
out["read"] = {"replicas": got.spec.replicas, "strategy": got.spec.strategy.type,
               "image": got.spec.template.spec.containers[0].image}

patched = apps.patch_namespaced_deployment(
    "py-web", "default", {"metadata": {"labels": {"patched": "yes"}}, "spec": {"minReadySeconds": 0,
    "template": {"spec": {"containers": [{"name": "main", "imagePullPolicy": "IfNotPresent"}]}}}})
out["patched"] = {"labels": patched.metadata.labels,
                  "containers": [c.name for c in patched.spec.template.spec.containers],
                  "command": patched.spec.template.spec.containers[0].command}

w = watch.Watch()
events = []
running = None
for ev in w.stream(core.list_namespaced_pod, "default", label_selector="app=py-web", timeout_seconds=120):
    pod = ev["object"]
    events.append(ev["type"])
    if pod.status.phase == "Running":
        running = pod.metadata.name
        w.stop()
out["watch"] = {"first": events[0] if events else None, "running": running is not None,
                "types": sorted(set(events))}

log = ""
for _ in range(100):
    log = core.read_namespaced_pod_log(running, "default", container="main")
    if log:
        break
    time.sleep(0.2)
out["log"] = log

out["exec"] = stream(core.connect_get_namespaced_pod_exec, running, "default",
                     command=["sh", "-c", "echo from-exec; echo to-stderr >&2"],
                     stderr=True, stdin=False, stdout=True, tty=False)
resp = stream(core.connect_get_namespaced_pod_exec, running, "default",
              command=["sh", "-c", "read x; echo got-$x; exit 7"],
              stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
resp.write_stdin("line\n")
stdout = ""
deadline = time.time() + 30
while resp.is_open() and time.time() < deadline:
    resp.update(timeout=1)
    stdout += resp.read_stdout()
resp.close()
out["exec_stdin"] = {"stdout": stdout, "returncode": resp.returncode}

apps.delete_namespaced_deployment("py-web", "default")
try:
    apps.read_namespaced_deployment("py-web", "default")
    out["deleted"] = False
except ApiException as e:
    out["deleted"] = e.status == 404
core.delete_namespaced_config_map("py-config", "default")
print(json.dumps(out))
"#;

#[test]
fn python_client_crud_watch_logs_and_exec() {
    let server = Server::start_with_agent(&["--node-ip=127.0.0.1"]);
    let _cleanup = DeleteWorkloads(&server);
    import_busybox(&server);
    let script = server.dir.path().join("client.py");
    std::fs::write(&script, PYTHON).unwrap();
    // Debian's python3-kubernetes is installed for the system interpreter.
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        server.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    let namespaces = r["namespaces"].as_array().unwrap();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(&json!(ns)), "{ns} in {namespaces:?}");
    }
    assert_eq!(r["configmap_data"], json!({"greeting": "hello"}));
    assert_eq!(r["configmap_created_tz"], "True", "an RFC 3339 UTC time");
    assert_eq!(
        r["conflict"],
        json!({"status": 409, "reason": "AlreadyExists", "kind": "Status",
               "message": "configmaps \"py-config\" already exists"})
    );
    assert_eq!(
        r["not_found"],
        json!({"status": 404, "reason": "NotFound",
               "message": "configmaps \"missing\" not found"})
    );
    assert_eq!(
        r["read"],
        json!({"replicas": 1, "strategy": "RollingUpdate",
               "image": "docker.io/library/busybox:1.36"})
    );
    assert_eq!(
        r["patched"],
        json!({"labels": {"app": "py-web", "patched": "yes"}, "containers": ["main"],
               "command": ["sh", "-c", "echo started-$GREETING; exec sleep 3600"]}),
        "a strategic merge patch merges the containers list by name"
    );
    assert_eq!(r["watch"]["first"], "ADDED");
    assert_eq!(r["watch"]["running"], true, "{}", r["watch"]);
    assert_eq!(r["log"], "started-hello\n");
    // The preloaded exec output is stdout and stderr as they arrived, interleaved.
    let mut exec: Vec<&str> = r["exec"].as_str().unwrap().lines().collect();
    exec.sort();
    assert_eq!(exec, ["from-exec", "to-stderr"], "{}", r["exec"]);
    assert_eq!(
        r["exec_stdin"],
        json!({"stdout": "got-line\n", "returncode": 7})
    );
    assert_eq!(r["deleted"], true);
}

/// The label every object of the watcher test carries.
const WATCHED: &str = "kaji.test/watched=yes";

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kaji.test/watched": "yes"}},
        "data": {"v": value},
    }))
    .unwrap()
}

/// A watcher event as "kind name=value".
fn describe(ev: &watcher::Event<ConfigMap>) -> String {
    let show = |cm: &ConfigMap| {
        format!(
            "{}={}",
            cm.metadata.name.as_deref().unwrap_or_default(),
            cm.data
                .as_ref()
                .and_then(|d| d.get("v"))
                .cloned()
                .unwrap_or_default()
        )
    };
    match ev {
        watcher::Event::Init => "Init".into(),
        watcher::Event::InitApply(cm) => format!("InitApply {}", show(cm)),
        watcher::Event::InitDone => "InitDone".into(),
        watcher::Event::Apply(cm) => format!("Apply {}", show(cm)),
        watcher::Event::Delete(cm) => format!("Delete {}", show(cm)),
    }
}

#[test]
fn kube_rs_watcher_and_reflector_see_changes_in_order() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let client = server.client().await;
        let cms: Api<ConfigMap> = Api::default_namespaced(client);
        let pp = PostParams::default();
        cms.create(&pp, &config_map("a", "1")).await.unwrap();
        cms.create(&pp, &config_map("other", "x")).await.unwrap();
        // Unlabelled: the selector keeps it out.
        let mut unlabelled = config_map("unlabelled", "0");
        unlabelled.metadata.labels = None;
        cms.create(&pp, &unlabelled).await.unwrap();

        // Both initial-list strategies: paged list + watch, and a streaming list (watch with
        // sendInitialEvents, ended by the initial-events-end bookmark). A short server-side
        // timeout makes the watcher re-watch from its last resourceVersion in between.
        for streaming in [false, true] {
            let mut cfg = watcher::Config::default()
                .labels(WATCHED)
                .timeout(2)
                .page_size(1);
            if streaming {
                cfg = cfg.streaming_lists();
            }
            let (store, writer) = reflector::store();
            let mut events = Box::pin(reflector(writer, watcher(cms.clone(), cfg)));
            let mut seen = Vec::new();
            let mut next = async || {
                let ev = tokio::time::timeout(Duration::from_secs(20), events.try_next())
                    .await
                    .expect("a watcher event within 20s")
                    .unwrap_or_else(|e| panic!("watcher error (streaming={streaming}): {e}"))
                    .expect("the watcher stream does not end");
                describe(&ev)
            };
            for _ in 0..4 {
                seen.push(next().await);
            }
            let mut initial = seen.clone();
            initial[1..3].sort();
            assert_eq!(
                initial,
                ["Init", "InitApply a=1", "InitApply other=x", "InitDone"],
                "streaming={streaming}"
            );
            assert_eq!(store.state().len(), 2);

            let b = format!("b{}", u8::from(streaming));
            cms.create(&pp, &config_map(&b, "1")).await.unwrap();
            assert_eq!(next().await, format!("Apply {b}=1"));
            // Let the server end the watch (timeout=2s) before the next change.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let patch = json!({"data": {"v": "2"}});
            cms.patch(&b, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            assert_eq!(next().await, format!("Apply {b}=2"), "after a re-watch");
            cms.delete(&b, &DeleteParams::default()).await.unwrap();
            assert_eq!(next().await, format!("Delete {b}=2"));
            cms.patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"v": "3"}})),
            )
            .await
            .unwrap();
            assert_eq!(next().await, "Apply a=3");
            let mut state: Vec<String> = store
                .state()
                .iter()
                .map(|cm| describe(&watcher::Event::Apply(cm.as_ref().clone())))
                .collect();
            state.sort();
            assert_eq!(
                state,
                ["Apply a=3", "Apply other=x"],
                "the reflector's store"
            );
            cms.patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"v": "1"}})),
            )
            .await
            .unwrap();
            assert_eq!(next().await, "Apply a=1");
        }

        // The same through the applied_objects() decoder, as controllers use it.
        let stream = watcher(cms.clone(), watcher::Config::default().labels(WATCHED))
            .applied_objects()
            .map_ok(|cm| cm.metadata.name.unwrap_or_default());
        let mut stream = Box::pin(stream);
        let mut names = Vec::new();
        for _ in 0..2 {
            names.push(stream.try_next().await.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(names, ["a", "other"]);
        cms.create(&pp, &config_map("c", "1")).await.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(20), stream.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            "c"
        );
    });
}
