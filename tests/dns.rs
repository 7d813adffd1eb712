//! Cluster DNS end to end on a node in its own network namespace: `dig` against the
//! cluster DNS address (10.43.0.10) for Service, headless, StatefulSet-style, SRV,
//! ExternalName, PTR, negative and forwarded names (forwarded to a tiny fake upstream
//! resolver the test runs on 127.0.0.1:53 inside the namespace, named by --resolv-conf),
//! truncation with TCP fallback, and a short name resolved from inside a busybox pod
//! through the search path. A second test runs the same node with the service proxy on
//! (its rules drop traffic to cluster IPs no Service holds, but the node-local cluster DNS
//! address is exempt) and resolves names from the node and from a pod.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok};

/// A UDP resolver on 127.0.0.1:53: A queries get 192.0.2.10 (TTL 60), names starting with
/// `nx.` get NXDOMAIN, other types an empty answer. Each question is logged to argv[1].
const FAKE_UPSTREAM: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
log = open(sys.argv[1], "a")
while True:
    d, a = s.recvfrom(4096)
    i, labels = 12, []
    while d[i]:
        labels.append(d[i + 1:i + 1 + d[i]].decode())
        i += 1 + d[i]
    qname, qtype = ".".join(labels).lower(), struct.unpack(">H", d[i + 1:i + 3])[0]
    log.write("%s %d\n" % (qname, qtype)); log.flush()
    flags, an = 0x8180, b""
    if qname.startswith("nx."):
        flags = 0x8183
    elif qtype == 1:
        an = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 10])
    s.sendto(d[:2] + struct.pack(">HHHHH", flags, 1, 1 if an else 0, 0, 0) + d[12:i + 5] + an, a)
"#;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.43.100.10
  selector: {app: web}
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  labels: {kubernetes.io/service-name: db, endpointslice.kubernetes.io/managed-by: test}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [10.42.9.1], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.42.9.2], conditions: {ready: true}}
- {addresses: [10.42.9.3], hostname: db-2, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: www.example.test
"#;

/// A Service `api` at 10.43.100.11, without endpoints (names resolve all the same).
const API_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  clusterIP: 10.43.100.11
  ports: [{port: 80}]
"#;

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dig(server: &Server, args: &[&str]) -> String {
    let out = server
        .netns_command("dig")
        .args(["@10.43.0.10", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (Debian bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short`, lines sorted.
fn short(server: &Server, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    let mut lines: Vec<String> = dig(server, &a)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    lines.sort();
    lines
}

/// The `status:` of a full dig answer.
fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
}

/// The records of one section (`ANSWER`, `AUTHORITY`) of a full dig answer.
fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!(";; {name} SECTION:");
    out.split(&header)
        .nth(1)
        .map(|s| {
            s.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A node in its own network namespace whose upstream resolver (`--resolv-conf`) is the
/// fake one on 127.0.0.1:53, logging to the returned path; `extra` are more server flags.
fn start_with_upstream(extra: &[&str]) -> (Server, Upstream, tempfile::TempDir, PathBuf) {
    let conf_dir = tempfile::tempdir().unwrap();
    let resolv = conf_dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\nsearch example.test\n").unwrap();
    let upstream_log = conf_dir.path().join("upstream.log");
    let resolv_flag = format!("--resolv-conf={}", resolv.display());
    let mut flags = vec![resolv_flag.as_str()];
    flags.extend_from_slice(extra);
    let server = Server::start_in_netns(&flags);
    let upstream = Upstream(
        server
            .netns_command("python3")
            .args(["-c", FAKE_UPSTREAM])
            .arg(&upstream_log)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    (server, upstream, conf_dir, upstream_log)
}

/// Waits until the server's kube-dns Service resolves at the cluster DNS address.
fn wait_kube_dns(server: &Server) {
    eventually("kube-dns Service resolves", 60, || {
        let got = short(server, &["kube-dns.kube-system.svc.cluster.local"]);
        (got == ["10.43.0.10"])
            .then_some(())
            .ok_or_else(|| format!("{got:?}\n{}", server.log()))
    });
}

/// A busybox pod `client` that sleeps, Running.
fn start_client_pod(server: &Server) {
    import_busybox(server);
    apply(
        server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: sh
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#,
    );
    common::wait_pod(server, "client", 120, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
}

#[test]
fn cluster_dns() {
    // The service proxy is off here; `cluster_dns_with_service_proxy` covers it on.
    let (server, _upstream, _conf_dir, upstream_log) =
        start_with_upstream(&["--disable-kube-proxy"]);

    // The server creates kube-system/kube-dns at the cluster DNS address, and the node's
    // DNS server answers for it.
    wait_kube_dns(&server);
    let svc: serde_json::Value = serde_json::from_str(&ok(server.kubectl(&[
        "get",
        "service",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns");
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 2);

    apply(&server, OBJECTS);
    eventually("web resolves", 10, || {
        let got = short(&server, &["web.default.svc.cluster.local"]);
        (got == ["10.43.100.10"])
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });
    // Case-insensitive, and over TCP too.
    assert_eq!(
        short(&server, &["+tcp", "WEB.Default.svc.Cluster.Local"]),
        ["10.43.100.10"]
    );
    assert_eq!(
        short(
            &server,
            &["SRV", "_http._tcp.web.default.svc.cluster.local"]
        ),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        short(&server, &["SRV", "_dns._udp.web.default.svc.cluster.local"]),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    // Headless: the ready endpoints only; StatefulSet-style hostnames; SRV per endpoint.
    eventually("db resolves", 10, || {
        let got = short(&server, &["db.default.svc.cluster.local"]);
        (got == ["10.42.9.1", "10.42.9.2"])
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });
    assert_eq!(
        short(&server, &["db-0.db.default.svc.cluster.local"]),
        ["10.42.9.1"]
    );
    assert_eq!(
        short(&server, &["SRV", "_pg._tcp.db.default.svc.cluster.local"]),
        [
            "0 50 5432 10-42-9-2.db.default.svc.cluster.local.",
            "0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    let notready = dig(&server, &["db-2.db.default.svc.cluster.local"]);
    assert_eq!(status(&notready), "NXDOMAIN", "{notready}");
    // ExternalName: a CNAME, followed through the upstream resolver.
    assert_eq!(
        short(&server, &["ext.default.svc.cluster.local"]),
        ["192.0.2.10", "www.example.test."]
    );
    // PTR for a cluster IP and an endpoint.
    assert_eq!(
        short(&server, &["-x", "10.43.100.10"]),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        short(&server, &["-x", "10.42.9.1"]),
        ["db-0.db.default.svc.cluster.local."]
    );
    // Negative answers: NXDOMAIN for names that do not exist, NODATA for names that do;
    // both with the zone's SOA.
    for (name, qtype, want) in [
        ("nope.default.svc.cluster.local", "A", "NXDOMAIN"),
        ("web.nonexistent.svc.cluster.local", "A", "NXDOMAIN"),
        ("nonexistent.svc.cluster.local", "A", "NXDOMAIN"),
        ("web.default.svc.cluster.local", "AAAA", "NOERROR"),
        ("default.svc.cluster.local", "A", "NOERROR"),
        (
            "_http._udp.web.default.svc.cluster.local",
            "SRV",
            "NXDOMAIN",
        ),
    ] {
        let out = dig(&server, &[qtype, name]);
        assert_eq!(status(&out), want, "{name} {qtype}: {out}");
        assert!(section(&out, "ANSWER").is_empty(), "{name} {qtype}: {out}");
        let authority = section(&out, "AUTHORITY");
        assert!(
            authority.len() == 1 && authority[0].contains("SOA"),
            "{name} {qtype}: {out}"
        );
        assert!(out.contains(" aa"), "authoritative: {out}");
    }
    assert_eq!(
        short(&server, &["TXT", "dns-version.cluster.local"]),
        ["\"1.1.0\""]
    );

    // Forwarded names come from the upstream resolver, then from the cache.
    assert_eq!(short(&server, &["forwarded.example.test"]), ["192.0.2.10"]);
    assert_eq!(short(&server, &["forwarded.example.test"]), ["192.0.2.10"]);
    let log = std::fs::read_to_string(&upstream_log).unwrap_or_default();
    assert_eq!(
        log.lines()
            .filter(|l| *l == "forwarded.example.test 1")
            .count(),
        1,
        "the second query is answered from the cache: {log}"
    );
    let nx = dig(&server, &["nx.example.test"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");

    // A headless Service with many endpoints: over UDP without EDNS (512 bytes) the answer
    // is truncated, and dig's TCP retry gets all of them.
    let endpoints: String = (1..=40)
        .map(|i| format!("- {{addresses: [10.42.8.{i}]}}\n"))
        .collect();
    apply(
        &server,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big}}\nspec:\n  clusterIP: None\n  ports: [{{port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-1\n  labels: {{kubernetes.io/service-name: big, endpointslice.kubernetes.io/managed-by: test}}\n\
             addressType: IPv4\nendpoints:\n{endpoints}"
        ),
    );
    eventually("big resolves over TCP fallback", 10, || {
        let got = short(&server, &["+noedns", "big.default.svc.cluster.local"]);
        (got.len() == 40)
            .then_some(())
            .ok_or_else(|| format!("{} answers: {got:?}", got.len()))
    });
    let truncated = dig(
        &server,
        &["+noedns", "+ignore", "big.default.svc.cluster.local"],
    );
    assert!(
        truncated.contains(" tc"),
        "UDP answer has the TC bit: {truncated}"
    );

    // Deleting a Service removes its name.
    ok(server.kubectl(&["delete", "service", "web"]));
    eventually("web is gone", 10, || {
        let out = dig(&server, &["web.default.svc.cluster.local"]);
        (status(&out) == "NXDOMAIN").then_some(()).ok_or(out)
    });

    // From inside a pod: the short name of a Service through the search path.
    apply(&server, API_SERVICE);
    start_client_pod(&server);
    let resolv_conf = ok(server.kubectl(&["exec", "client", "--", "cat", "/etc/resolv.conf"]));
    assert!(
        resolv_conf.contains("nameserver 10.43.0.10")
            && resolv_conf.contains(
                "search default.svc.cluster.local svc.cluster.local cluster.local example.test"
            )
            && resolv_conf.contains("ndots:5"),
        "pod resolv.conf: {resolv_conf}"
    );
    // busybox's nslookup tries every search domain and exits 1 if any of them fails; the
    // first one (the pod's namespace) must answer.
    let out = common::stdout(&server.kubectl(&["exec", "client", "--", "nslookup", "api"]));
    assert!(
        out.contains("Name:\tapi.default.svc.cluster.local\nAddress: 10.43.100.11"),
        "nslookup api from a pod: {out}"
    );
    // And a forwarded name, from the pod.
    let out =
        common::stdout(&server.kubectl(&["exec", "client", "--", "nslookup", "pod.example.test."]));
    assert!(out.contains("192.0.2.10"), "nslookup from a pod: {out}");
}

/// With the service proxy on, its rules drop traffic to cluster IPs that no Service holds;
/// the cluster DNS address is served by the node itself and exempt, so the node and its
/// pods still resolve names (over UDP and TCP).
#[test]
fn cluster_dns_with_service_proxy() {
    let (server, _upstream, _conf_dir, _log) = start_with_upstream(&[]);
    // The proxy is on: it has programmed its table, with the `kubernetes` Service in it.
    eventually("service proxy rules", 60, || {
        let out = server
            .netns_command("nft")
            .args(["list", "table", "ip", "kaji"])
            .output()
            .map_err(|e| format!("nft: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        (out.status.success() && text.contains("10.43.0.1 "))
            .then_some(())
            .ok_or_else(|| format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    });

    // From the node itself (its output path crosses the proxy's rules).
    wait_kube_dns(&server);
    assert_eq!(
        short(&server, &["+tcp", "kube-dns.kube-system.svc.cluster.local"]),
        ["10.43.0.10"]
    );
    assert_eq!(
        short(&server, &["kubernetes.default.svc.cluster.local"]),
        ["10.43.0.1"]
    );
    apply(&server, API_SERVICE);
    eventually("api resolves on the node", 10, || {
        let got = short(&server, &["api.default.svc.cluster.local"]);
        (got == ["10.43.100.11"])
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });
    let out = server
        .netns_command("nslookup")
        .args(["api.default.svc.cluster.local", "10.43.0.10"])
        .output()
        .expect("nslookup (Debian bind9-dnsutils)");
    let text = common::stdout(&out);
    assert!(
        out.status.success() && text.contains("Address: 10.43.100.11"),
        "nslookup on the node: {text}"
    );

    // From a pod, through the search path.
    start_client_pod(&server);
    for (name, ip) in [("api", "10.43.100.11"), ("kubernetes", "10.43.0.1")] {
        let out = common::stdout(&server.kubectl(&["exec", "client", "--", "nslookup", name]));
        assert!(
            out.contains(&format!(
                "Name:\t{name}.default.svc.cluster.local\nAddress: {ip}"
            )),
            "nslookup {name} from a pod: {out}"
        );
    }
}
