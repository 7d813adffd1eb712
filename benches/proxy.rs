//! `make bench` (part 3): the service proxy. A node in its own network namespace (as the
//! integration tests run it) with one busybox web pod:
//!
//! - request latency and throughput through a ClusterIP against the pod IP directly, in
//!   the same run (new TCP connection per request, from the node), and their ratio;
//! - time for an endpoint change to reach the data plane: a Service without endpoints
//!   (rejecting), then its EndpointSlice created, until a request through it succeeds;
//! - nftables sync time with 1,000 Services (each with an EndpointSlice) created through
//!   the API: the proxy's own sync duration (from its debug log) and end to end.
//!
//! Needs root, containerd, runc, the CNI plugins, nft and curl.

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use bench::{ms, pct};

/// `n` requests, a new connection each, in one curl run inside the node: per-request
/// total times and the wall time.
fn run_requests(server: &common::Server, url: &str, n: usize) -> (Vec<Duration>, Duration) {
    let mut cmd = server.netns_command("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "3",
        "-H",
        "Connection: close",
        "-w",
        "%{http_code} %{time_total}\n",
    ]);
    for _ in 0..n {
        cmd.arg(url);
    }
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let wall = t.elapsed();
    let lat: Vec<Duration> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (code, t) = l.split_once(' ')?;
            let secs: f64 = t.parse().ok()?;
            (code == "200").then(|| Duration::from_secs_f64(secs))
        })
        .collect();
    assert_eq!(lat.len(), n, "every request answered ({url})");
    (lat, wall)
}

fn answers(server: &common::Server, url: &str) -> Option<i32> {
    server
        .netns_command("curl")
        .args(["-s", "-o", "/dev/null", "--connect-timeout", "1", url])
        .status()
        .ok()?
        .code()
}

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn slice(svc: &str, ips: &[&str]) -> EndpointSlice {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-manual"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .unwrap()
}

/// The proxy's sync durations (ms) and service-port counts from the server's debug log.
fn syncs(log: &str) -> Vec<(usize, f64)> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("service proxy"))
        .filter_map(|l| {
            let field = |k: &str| -> Option<&str> {
                let rest = &l[l.find(&format!("{k}="))? + k.len() + 1..];
                rest.split_whitespace().next()
            };
            Some((
                field("service_ports")?.parse().ok()?,
                field("duration_ms")?.parse().ok()?,
            ))
        })
        .collect()
}

fn main() {
    // The proxy's per-sync figures are debug logs. Set before any thread exists.
    #[allow(unsafe_code)]
    // SAFETY: single-threaded at this point; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("KAJI_LOG", "info,kaji::proxy=debug");
    }
    let server = common::Server::start_in_netns(&[]);
    common::import_busybox(&server);
    common::apply(
        &server,
        r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
"#,
    );
    let pod = common::wait_pod(&server, "web", 120, "Ready", |p| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let pod_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(server.client());
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let pp = PostParams::default();

    // 1. ClusterIP vs pod IP.
    rt.block_on(async {
        svcs.create(&pp, &service("web", "10.43.100.10"))
            .await
            .unwrap();
        slices.create(&pp, &slice("web", &[&pod_ip])).await.unwrap();
    });
    let svc_url = "http://10.43.100.10/";
    let pod_url = format!("http://{pod_ip}:8080/");
    let t = Instant::now();
    while answers(&server, svc_url) != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "service never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = 1000;
    let _ = run_requests(&server, &pod_url, 100); // warm-up
    let _ = run_requests(&server, svc_url, 100);
    let (mut direct, direct_wall) = run_requests(&server, &pod_url, n);
    let (mut via, via_wall) = run_requests(&server, svc_url, n);
    let (d50, v50) = (pct(&mut direct, 0.5), pct(&mut via, 0.5));
    println!(
        "service proxy (nftables), busybox httpd pod, {n} requests with a new TCP connection each:"
    );
    println!(
        "  pod IP direct:   {:>6.0} req/s  p50 {:.2}ms p99 {:.2}ms",
        n as f64 / direct_wall.as_secs_f64(),
        ms(d50),
        ms(pct(&mut direct, 0.99))
    );
    println!(
        "  via ClusterIP:   {:>6.0} req/s  p50 {:.2}ms p99 {:.2}ms",
        n as f64 / via_wall.as_secs_f64(),
        ms(v50),
        ms(pct(&mut via, 0.99))
    );
    println!(
        "  ratio ClusterIP/direct: throughput {:.2}x, p50 latency {:.2}x",
        direct_wall.as_secs_f64() / via_wall.as_secs_f64(),
        v50.as_secs_f64() / d50.as_secs_f64()
    );

    // 2. Endpoint change → data plane.
    let rounds = 30;
    let mut lat = Vec::new();
    for i in 0..rounds {
        let name = format!("prop-{i}");
        let ip = format!("10.43.101.{}", i + 1);
        let url = format!("http://{ip}/");
        rt.block_on(svcs.create(&pp, &service(&name, &ip))).unwrap();
        // Programmed without endpoints: refused (curl exit 7).
        let t = Instant::now();
        while answers(&server, &url) != Some(7) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} never rejected"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        rt.block_on(slices.create(&pp, &slice(&name, &[&pod_ip])))
            .unwrap();
        let t = Instant::now();
        while answers(&server, &url) != Some(0) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} never answered"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        lat.push(t.elapsed());
    }
    println!(
        "endpoint change (EndpointSlice created) → traffic flows, {rounds} rounds: p50 {:.0}ms p99 {:.0}ms (min sync interval 150ms)",
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99))
    );

    // 3. 1,000 services.
    let total = 1000usize;
    let before = syncs(&server.log()).len();
    let t = Instant::now();
    rt.block_on(async {
        futures::stream::iter(0..total)
            .map(|i| {
                let (svcs, slices, pp) = (svcs.clone(), slices.clone(), pp.clone());
                let ip = pod_ip.clone();
                async move {
                    let name = format!("bulk-{i}");
                    let cip = format!("10.43.{}.{}", 110 + i / 250, i % 250 + 1);
                    svcs.create(&pp, &service(&name, &cip)).await.unwrap();
                    slices.create(&pp, &slice(&name, &[&ip])).await.unwrap();
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await
    });
    let created = t.elapsed();
    let last_url = format!(
        "http://10.43.{}.{}/",
        110 + (total - 1) / 250,
        (total - 1) % 250 + 1
    );
    while answers(&server, &last_url) != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "bulk services never programmed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_programmed = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let during: Vec<(usize, f64)> = syncs(&server.log()).into_iter().skip(before).collect();
    let big: Vec<f64> = during
        .iter()
        .filter(|(p, _)| *p >= total)
        .map(|(_, d)| *d)
        .collect();
    // One more endpoint change with 1,000 services installed.
    let t1 = Instant::now();
    let patch = json!({"endpoints": [{"addresses": [pod_ip], "conditions": {"ready": true}},
                                     {"addresses": ["10.42.0.250"], "conditions": {"ready": false}}]});
    rt.block_on(slices.patch(
        "bulk-0-manual",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    ))
    .unwrap();
    let n_before = syncs(&server.log()).len();
    while syncs(&server.log()).len() == n_before {
        assert!(t1.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    let one_change = t1.elapsed();
    let last = syncs(&server.log()).last().copied().unwrap_or_default();
    let rules = server
        .netns_command("nft")
        .args(["-a", "list", "table", "ip", "kaji"])
        .output()
        .unwrap();
    let rule_count = String::from_utf8_lossy(&rules.stdout)
        .lines()
        .filter(|l| l.contains("# handle") && !l.trim_start().starts_with("chain"))
        .count();
    println!(
        "{total} services + slices: created through the API in {:.1}s, all programmed after {:.1}s; {} syncs meanwhile",
        created.as_secs_f64(),
        all_programmed.as_secs_f64(),
        during.len()
    );
    println!(
        "  proxy sync with ≥{total} service ports ({rule_count} rules): {} syncs, max {:.0}ms, last {:.0}ms",
        big.len(),
        big.iter().copied().fold(0.0, f64::max),
        big.last().copied().unwrap_or_default()
    );
    println!(
        "  one endpoint change with {} service ports: sync {:.0}ms, API write → synced {:.0}ms",
        last.0,
        last.1,
        ms(one_change)
    );
}
