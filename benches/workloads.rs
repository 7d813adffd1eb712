//! `make bench` (workloads): the control plane's cost of bringing a 100-replica Deployment
//! to fully Available — Deployment and ReplicaSet controllers, scheduler and API server —
//! measured against a baseline in the same run: the same 100 pods created directly with
//! their node already set (no controllers, no scheduler). The node is "hollow" (as in
//! upstream's kubemark): the bench registers it, renews its Lease and reports each bound
//! pod Running and Ready at once, so container start-up does not blur the figure (pod
//! start through containerd is measured by the `pods` bench). Also reports the server's CPU
//! time and RSS over each phase.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use common::{cpu_secs, free_port, rss_mib};

const REPLICAS: usize = 100;
const NODE: &str = "hollow-1";

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn register_node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "spec": {"podCIDR": "10.42.9.0/24"},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "10.254.254.254"}],
    }});
    nodes
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Keeps the hollow node's Lease and Ready heartbeat fresh until `stop`.
async fn heartbeat(client: kube::Client, stop: Arc<AtomicBool>) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    while !stop.load(Ordering::SeqCst) {
        let now = jiff::Timestamp::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40,
                     "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
        });
        let _ = leases
            .patch(
                NODE,
                &PatchParams::apply("hollow-kubelet").force(),
                &Patch::Apply(&lease),
            )
            .await;
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "lastHeartbeatTime": now.to_string()}]}});
        let _ = nodes
            .patch_status(NODE, &PatchParams::default(), &Patch::Strategic(&status))
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Reports every pod bound to the hollow node Running and Ready, once.
async fn hollow_kubelet(client: kube::Client, stop: Arc<AtomicBool>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut done: HashSet<String> = HashSet::new();
    let mut n: u32 = 2;
    let wp = WatchParams::default().fields(&format!("spec.nodeName={NODE}"));
    let mut stream = pods.watch(&wp, "0").await.unwrap().boxed();
    while let Some(ev) = stream.next().await {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let pod = match ev {
            Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => p,
            _ => continue,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() || !done.insert(uid) {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        n += 1;
        let ip = format!("10.42.9.{}", n % 250 + 2);
        let now = jiff::Timestamp::now().to_string();
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                             "restartCount": 0, "started": true,
                             "state": {"running": {"startedAt": now}}})
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.254.254.254",
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": containers,
        }});
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let c = api.clone();
        tokio::spawn(async move {
            let _ = c
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        });
    }
}

fn pod(name: &str, node: Option<&str>) -> serde_json::Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "direct"}},
        "spec": {"containers": [{"name": "app", "image": "docker.io/library/busybox:1.36",
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

async fn ready_pods(api: &Api<Pod>, selector: &str) -> usize {
    let list = api
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = env!("CARGO_BIN_EXE_kaji");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kc");
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["server", "--disable-agent", "--bind-address=127.0.0.1"])
        .arg(format!("--https-listen-port={port}"))
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--write-kubeconfig={}", kubeconfig.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client(&kubeconfig).await;
    loop {
        if client.apiserver_version().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    register_node(&client).await;
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(heartbeat(client.clone(), stop.clone()));
    tokio::spawn(hollow_kubelet(client.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(pid);

    // Baseline: the same number of pods, created directly with their node set.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    let mut creates = futures::stream::iter((0..REPLICAS).map(|i| {
        let pods = pods.clone();
        async move {
            let p: Pod = serde_json::from_value(pod(&format!("direct-{i}"), Some(NODE))).unwrap();
            pods.create(&PostParams::default(), &p).await.unwrap();
        }
    }))
    .buffer_unordered(16);
    while creates.next().await.is_some() {}
    while ready_pods(&pods, "app=direct").await < REPLICAS {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "direct pods not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let direct = t0.elapsed();
    let direct_cpu = cpu_secs(pid) - cpu0;
    let _ = pods
        .delete_collection(
            &kube::api::DeleteParams::default().grace_period(0),
            &kube::api::ListParams::default().labels("app=direct"),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The Deployment path: controllers + scheduler + API server.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": pod("x", None)["spec"].clone()}},
    }))
    .unwrap();
    let (cpu1, t1) = (cpu_secs(pid), Instant::now());
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let mut peak_rss = rss_mib(pid);
    loop {
        let d = deployments.get("bench").await.unwrap();
        let st = d.status.unwrap_or_default();
        peak_rss = peak_rss.max(rss_mib(pid));
        if st.available_replicas.unwrap_or(0) as usize == REPLICAS
            && st.updated_replicas.unwrap_or(0) as usize == REPLICAS
        {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(300),
            "deployment not available: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deploy = t1.elapsed();
    let deploy_cpu = cpu_secs(pid) - cpu1;
    stop.store(true, Ordering::SeqCst);

    println!("\n== workloads: {REPLICAS}-replica Deployment to fully Available (hollow node) ==");
    println!("{:<44} {:>10} {:>12}", "", "wall (s)", "server CPU s");
    println!(
        "{:<44} {:>10.2} {:>12.2}",
        "baseline: 100 pods created bound, direct",
        direct.as_secs_f64(),
        direct_cpu
    );
    println!(
        "{:<44} {:>10.2} {:>12.2}",
        "Deployment → RS → scheduler → Available",
        deploy.as_secs_f64(),
        deploy_cpu
    );
    println!(
        "ratio (deployment / direct): wall {:.2}x, CPU {:.2}x",
        deploy.as_secs_f64() / direct.as_secs_f64(),
        deploy_cpu / direct_cpu.max(0.001)
    );
    println!(
        "server CPU during the rollout: {:.0}% of one core; RSS idle {idle_rss:.1} MiB, peak {peak_rss:.1} MiB",
        deploy_cpu / deploy.as_secs_f64() * 100.0
    );

    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
}
