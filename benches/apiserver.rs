//! `make bench`: API server throughput and latency over HTTPS against raw sled, measured in
//! the same run (create, get, list, strategic merge patch, JSON merge patch, server-side
//! apply), the memory cost of managedFields (stored bytes and server RSS per object for
//! client-side create vs server-side apply), plus start-to-ready time, idle memory and
//! binary size.
//!
//! Every figure that depends on the machine is reported with a baseline from the same run
//! (raw sled flushed writes), because these machines are noisy.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

use common::{cpu_ticks, free_port, pct, rss_kib};

const PHASE: Duration = Duration::from_secs(3);

struct Stats {
    ops: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn from(mut lat: Vec<Duration>, elapsed: Duration) -> Stats {
        Stats {
            ops: lat.len(),
            elapsed,
            p50: pct(&mut lat, 0.5),
            p99: pct(&mut lat, 0.99),
        }
    }
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Raw sled: insert + flush per write, `threads` writers.
fn raw_sled(threads: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let start = Instant::now();
    let count = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let db = &db;
            let count = &count;
            s.spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < PHASE {
                    db.insert(format!("/k/{t}/{i}"), vec![b'x'; 300]).unwrap();
                    db.flush().unwrap();
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    count.into_inner() as f64 / start.elapsed().as_secs_f64()
}

fn cm(name: String) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name);
    c.data = Some([("payload".to_string(), "x".repeat(200))].into());
    c
}

async fn run_phase<F, Fut>(clients: usize, f: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while start.elapsed() < PHASE {
                let t = Instant::now();
                f(c, i).await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Stats::from(all, start.elapsed())
}

struct ServerProc(Child);
impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = env!("CARGO_BIN_EXE_kaji");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args(["server", "--disable-agent", "--bind-address=127.0.0.1"])
        .arg(format!("--https-listen-port={port}"))
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--write-kubeconfig={}", kubeconfig.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = ServerProc(child);
    let pid = server.0.id();
    loop {
        let ok = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "1",
                &format!("https://127.0.0.1:{port}/readyz"),
            ])
            .output()
            .map(|o| o.stdout == b"ok")
            .unwrap_or(false);
        if ok && kubeconfig.exists() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start_to_ready = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(pid);
    let ticks0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (cpu_ticks(pid) - ticks0) as f64 / 100.0 / 5.0 * 100.0;
    let binary = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();

    println!("kaji benchmark (phases of {PHASE:?}; HTTPS over loopback; kube-rs client)");
    println!();
    println!(
        "{:>7} | {:>9} | {:>12} | {:>10} | {:>9} | {:>9} | {:>10}",
        "clients", "operation", "raw sled w/s", "ops/s", "p50", "p99", "ratio"
    );
    for clients in [1usize, 16, 64] {
        let raw = raw_sled(clients);
        let ns = format!("bench{clients}");
        let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some(ns.clone());
        nsapi.create(&PostParams::default(), &n).await.unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let a = api.clone();
        let creates = run_phase(clients, move |c, i| {
            let a = a.clone();
            async move {
                a.create(&PostParams::default(), &cm(format!("c{c}-{i}")))
                    .await
                    .unwrap();
            }
        })
        .await;
        let a = api.clone();
        let gets = run_phase(clients, move |c, _i| {
            let a = a.clone();
            async move {
                a.get(&format!("c{c}-0")).await.unwrap();
            }
        })
        .await;
        let a = api.clone();
        let lists = run_phase(clients, move |_c, _i| {
            let a = a.clone();
            async move {
                a.list(&ListParams::default().limit(100)).await.unwrap();
            }
        })
        .await;
        // Writes that change an existing object (each client its own `c{c}-0`).
        let a = api.clone();
        let smp = run_phase(clients, move |c, i| {
            let a = a.clone();
            async move {
                let p = json!({"data": {"n": format!("s{i}")}});
                a.patch(
                    &format!("c{c}-0"),
                    &PatchParams::default(),
                    &Patch::Strategic(p),
                )
                .await
                .unwrap();
            }
        })
        .await;
        let a = api.clone();
        let merge = run_phase(clients, move |c, i| {
            let a = a.clone();
            async move {
                let p = json!({"data": {"n": format!("m{i}")}});
                a.patch(
                    &format!("c{c}-0"),
                    &PatchParams::default(),
                    &Patch::Merge(p),
                )
                .await
                .unwrap();
            }
        })
        .await;
        let a = api.clone();
        let ssa = run_phase(clients, move |c, i| {
            let a = a.clone();
            async move {
                let p = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("c{c}-0")},
                    "data": {"n": format!("a{i}"), "payload": "x".repeat(200)}});
                a.patch(
                    &format!("c{c}-0"),
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(p),
                )
                .await
                .unwrap();
            }
        })
        .await;
        for (op, st) in [
            ("create", &creates),
            ("get", &gets),
            ("list(100)", &lists),
            ("patch smp", &smp),
            ("patch mrg", &merge),
            ("apply", &ssa),
        ] {
            println!(
                "{:>7} | {:>9} | {:>12.0} | {:>10.0} | {:>7.2}ms | {:>7.2}ms | {:>9.3}x",
                clients,
                op,
                raw,
                st.rate(),
                st.p50.as_secs_f64() * 1e3,
                st.p99.as_secs_f64() * 1e3,
                st.rate() / raw,
            );
        }
    }

    managed_fields_cost(&client, pid).await;

    // Watch delivery latency: from sending a create to receiving its ADDED event.
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = api
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut lat = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        api.create(&PostParams::default(), &cm(format!("watch-{i}")))
            .await
            .unwrap();
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Added(_))) => break,
                Some(Ok(_)) => continue,
                other => panic!("watch ended: {other:?}"),
            }
        }
        lat.push(t.elapsed());
    }
    let w = Stats::from(lat, Duration::from_secs(1));
    println!();
    println!(
        "watch delivery (create sent → ADDED received, 200 events): p50 {:.2}ms  p99 {:.2}ms",
        w.p50.as_secs_f64() * 1e3,
        w.p99.as_secs_f64() * 1e3
    );
    println!(
        "server start → ready: {:.0}ms",
        start_to_ready.as_secs_f64() * 1e3
    );
    println!(
        "idle RSS: {:.1} MiB   idle CPU: {:.2}%",
        idle_rss as f64 / 1024.0,
        idle_cpu
    );
    println!(
        "binary size ({}): {:.1} MiB",
        if bin.contains("/release/") {
            "release"
        } else {
            "debug"
        },
        binary as f64 / 1048576.0
    );
}

/// How many objects each managedFields measurement writes.
const MF_OBJECTS: usize = 2000;

fn cm_json(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "bench"}},
           "data": {"payload": "x".repeat(200), "mode": "fast"}})
}

fn deploy_json(name: &str) -> serde_json::Value {
    // Paused: the deployment controller leaves it alone (no ReplicaSets to skew RSS).
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 1, "paused": true, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "web", "image": "nginx:1.25",
                "ports": [{"containerPort": 80, "name": "http"}],
                "env": [{"name": "MODE", "value": "prod"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}})
}

/// Writes `MF_OBJECTS` objects of one kind into a fresh namespace, by create or by
/// server-side apply, and reports stored JSON bytes per object with and without
/// `managedFields` and the server's RSS growth per object.
async fn managed_fields_batch(client: &kube::Client, pid: u32, kind: &str, apply: bool) {
    let (group_version, plural, make): (&str, &str, fn(&str) -> serde_json::Value) = match kind {
        "ConfigMap" => ("v1", "configmaps", cm_json),
        _ => ("apps/v1", "deployments", deploy_json),
    };
    let ns = format!("mf-{}-{}", plural, if apply { "apply" } else { "create" });
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut n = k8s_openapi::api::core::v1::Namespace::default();
    n.metadata.name = Some(ns.clone());
    nsapi.create(&PostParams::default(), &n).await.unwrap();
    let (group, version) = group_version.split_once('/').unwrap_or(("", group_version));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kib(pid);
    let start = Instant::now();
    futures::stream::iter(0..MF_OBJECTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("o{i}");
                let obj: DynamicObject = serde_json::from_value(make(&name)).unwrap();
                if apply {
                    api.patch(
                        &name,
                        &PatchParams::apply("bench-apply"),
                        &Patch::Apply(&obj),
                    )
                    .await
                    .unwrap();
                } else {
                    api.create(&PostParams::default(), &obj).await.unwrap();
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let rate = MF_OBJECTS as f64 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = rss_kib(pid);
    let list = api.list(&ListParams::default()).await.unwrap();
    let (mut with, mut without) = (0usize, 0usize);
    for o in &list.items {
        let mut v = serde_json::to_value(o).unwrap();
        with += serde_json::to_vec(&v).unwrap().len();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        without += serde_json::to_vec(&v).unwrap().len();
    }
    let count = list.items.len().max(1);
    println!(
        "{:>10} | {:>6} | {:>8.0} | {:>14} | {:>17} | {:>13} | {:>14.0}",
        kind,
        if apply { "apply" } else { "create" },
        rate,
        with / count,
        without / count,
        (with - without) / count,
        (rss1.saturating_sub(rss0) * 1024) as f64 / count as f64,
    );
}

async fn managed_fields_cost(client: &kube::Client, pid: u32) {
    println!();
    println!(
        "managedFields cost ({MF_OBJECTS} objects per row, 16 clients; bytes = stored JSON per object)"
    );
    println!(
        "{:>10} | {:>6} | {:>8} | {:>14} | {:>17} | {:>13} | {:>14}",
        "kind",
        "write",
        "objs/s",
        "bytes (all)",
        "bytes (no mgdFld)",
        "mgdFld bytes",
        "RSS bytes/obj"
    );
    for kind in ["ConfigMap", "Deployment"] {
        for apply in [false, true] {
            managed_fields_batch(client, pid, kind, apply).await;
        }
    }
}
