//! The service proxy end to end: a node in its own network namespace, real busybox web
//! pods (each answers its own name, and its client's address through a CGI script),
//! Services programmed into nftables by kaji, and real TCP traffic through them — cluster
//! IP load balancing, not-ready endpoints left out, NodePort from an outside client,
//! externalTrafficPolicy Local preserving the client address, hairpin, session affinity,
//! rejection without endpoints, endpoint removal, and a restart of kaji that neither
//! duplicates rules nor interrupts the service.
//!
//! Services select their pods (the EndpointSlice controller publishes the endpoints),
//! except the externalTrafficPolicy case, whose selector-less Service gets a hand-written
//! slice with an endpoint on another (imaginary) node.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok, wait_pod};
use serde_json::{Value, json};

const WEB: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: NAME
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      mkdir -p /www/cgi-bin
      hostname > /www/index.html
      printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip
      chmod +x /www/cgi-bin/ip
      exec httpd -f -p 8080 -h /www
    readinessProbe:
      PROBE
      periodSeconds: 1
"#;

fn web_pod(server: &Server, name: &str, ready: bool) {
    let probe = if ready {
        "tcpSocket: {port: 8080}"
    } else {
        "exec: {command: [\"false\"]}"
    };
    apply(server, &WEB.replace("NAME", name).replace("PROBE", probe));
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn is_running(p: &Value) -> bool {
    p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        && p["status"]["podIP"].is_string()
}

/// A Service (selector-less unless `spec` has one).
fn service(server: &Server, name: &str, spec: Value) {
    let mut spec = spec;
    if spec.get("ports").is_none() {
        spec["ports"] = json!([{"name": "http", "port": 80, "targetPort": 8080}]);
    }
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name}, "spec": spec});
    apply(server, &svc.to_string());
}

/// Publishes the pods (and `extra` raw endpoints) as the Service's EndpointSlice, with
/// each pod's readiness, address and node as the EndpointSlice controller would.
fn publish(server: &Server, svc: &str, pods: &[&str], extra: &[Value]) {
    let mut endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            let pod: Value =
                serde_json::from_str(&ok(server.kubectl(&["get", "pod", p, "-o", "json"])))
                    .unwrap();
            let ready = is_ready(&pod);
            json!({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": pod["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "name": p, "namespace": "default",
                              "uid": pod["metadata"]["uid"]},
            })
        })
        .collect();
    endpoints.extend(extra.iter().cloned());
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-manual"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    });
    apply(server, &slice.to_string());
}

/// `n` HTTP requests (one new connection each) with one curl run, from inside the node's
/// namespace (`in_node`) or from the host, an outside client; the bodies in order.
fn requests(server: &Server, in_node: bool, url: &str, n: usize) -> Vec<String> {
    let mut cmd = if in_node {
        server.netns_command("curl")
    } else {
        Command::new("curl")
    };
    cmd.args(["-s", "--max-time", "3", "-H", "Connection: close"]);
    for _ in 0..n {
        cmd.arg(url);
    }
    let out = cmd.output().unwrap();
    // httpd's CGI reports IPv4 clients as `[::ffff:a.b.c.d]`.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.trim_start_matches("[::ffff:")
                .trim_end_matches(']')
                .to_string()
        })
        .collect()
}

fn count(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b.clone()).or_insert(0) += 1;
    }
    m
}

/// curl's exit code for one request from inside the node (7 = refused, 28 = timeout).
fn curl_exit(server: &Server, url: &str, secs: &str) -> (i32, Duration) {
    let t = Instant::now();
    let st = server
        .netns_command("curl")
        .args(["-s", "-o", "/dev/null", "--connect-timeout", secs, url])
        .status()
        .unwrap();
    (st.code().unwrap_or(-1), t.elapsed())
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) -> Duration {
    let t = Instant::now();
    loop {
        match f() {
            Ok(()) => return t.elapsed(),
            Err(e) if t.elapsed() > Duration::from_secs(secs) => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The rules of `table ip kaji` in the node's namespace, as sorted lines.
fn rules(server: &Server) -> Vec<String> {
    let out = server
        .netns_command("nft")
        .args(["-j", "-t", "list", "table", "ip", "kaji"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rules: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("rule").is_some())
        .map(|o| {
            let mut r = o["rule"].clone();
            r.as_object_mut().unwrap().remove("handle");
            r.to_string()
        })
        .collect();
    rules.sort();
    rules
}

fn start() -> (Server, String, String) {
    let server = Server::start_in_netns(&[]);
    let ns = server.netns.as_ref().unwrap();
    let (node_ip, host_ip) = (ns.node_ip.clone(), ns.host_ip.clone());
    import_busybox(&server);
    (server, node_ip, host_ip)
}

#[test]
fn services_balance_reject_nodeport_local_hairpin_affinity() {
    let (server, node_ip, host_ip) = start();
    for name in ["web-0", "web-1", "web-2"] {
        web_pod(&server, name, true);
    }
    web_pod(&server, "web-unready", false);
    for name in ["web-0", "web-1", "web-2"] {
        wait_pod(&server, name, 120, "Ready", is_ready);
    }
    let unready = wait_pod(&server, "web-unready", 60, "Running", is_running);
    assert!(!is_ready(&unready));

    service(
        &server,
        "web",
        json!({"type": "NodePort", "clusterIP": "10.43.100.10", "selector": {"app": "web"},
               "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
    );

    // ClusterIP: every ready endpoint gets a fair share, the unready one nothing.
    let url = "http://10.43.100.10/";
    eventually("cluster IP answers", 30, || {
        let b = requests(&server, true, url, 1);
        (b.len() == 1).then_some(()).ok_or(format!("{b:?}"))
    });
    let bodies = requests(&server, true, url, 300);
    let spread = count(&bodies);
    assert_eq!(bodies.len(), 300, "every request answered: {spread:?}");
    assert_eq!(
        spread.keys().collect::<Vec<_>>(),
        vec!["web-0", "web-1", "web-2"],
        "only ready endpoints"
    );
    for (pod, n) in &spread {
        assert!(*n >= 60, "{pod} got {n} of 300: {spread:?}");
    }
    eprintln!("cluster IP spread over 300 requests: {spread:?}");

    // NodePort from an outside client (the host), masqueraded (Cluster policy).
    let bodies = requests(&server, false, &format!("http://{node_ip}:30080/"), 30);
    assert_eq!(bodies.len(), 30, "{bodies:?}");
    assert!(
        bodies
            .iter()
            .all(|b| b.starts_with("web-") && b != "web-unready")
    );
    let seen = requests(
        &server,
        false,
        &format!("http://{node_ip}:30080/cgi-bin/ip"),
        1,
    );
    assert_eq!(seen.len(), 1);
    assert_ne!(
        seen[0], host_ip,
        "Cluster policy masquerades external clients"
    );
    assert!(seen[0].starts_with("10.42."), "{seen:?}");

    // externalTrafficPolicy Local: only node-local endpoints (a remote one never gets
    // traffic), and the pod sees the client's own address.
    service(
        &server,
        "local",
        json!({"type": "NodePort", "clusterIP": "10.43.100.11", "externalTrafficPolicy": "Local",
               "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30081}]}),
    );
    let remote = json!({"addresses": ["10.42.250.250"], "conditions": {"ready": true},
                        "nodeName": "some-other-node"});
    publish(&server, "local", &["web-0", "web-1"], &[remote]);
    let url_local = format!("http://{node_ip}:30081/cgi-bin/ip");
    eventually("Local node port answers", 30, || {
        let b = requests(&server, false, &url_local, 1);
        (b.len() == 1).then_some(()).ok_or(format!("{b:?}"))
    });
    let seen = requests(&server, false, &url_local, 30);
    assert_eq!(seen.len(), 30, "remote endpoint never chosen: {seen:?}");
    assert!(
        seen.iter().all(|s| *s == host_ip),
        "source address preserved: {seen:?}"
    );

    // Hairpin: a pod reaching its own Service sometimes lands on itself.
    let out = ok(server.kubectl(&[
        "exec",
        "web-0",
        "--",
        "sh",
        "-c",
        "for i in $(seq 30); do wget -qO- http://10.43.100.10/; done",
    ]));
    let hair = count(&out.lines().map(str::to_string).collect::<Vec<_>>());
    assert_eq!(hair.values().sum::<usize>(), 30, "{hair:?}");
    assert!(
        hair.contains_key("web-0"),
        "pod reached itself through its service: {hair:?}"
    );

    // ClientIP session affinity pins a client to one endpoint.
    service(
        &server,
        "sticky",
        json!({"clusterIP": "10.43.100.12", "sessionAffinity": "ClientIP", "selector": {"app": "web"},
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
    );
    let url_sticky = "http://10.43.100.12/";
    eventually("sticky answers", 30, || {
        let b = requests(&server, true, url_sticky, 1);
        (b.len() == 1).then_some(()).ok_or(format!("{b:?}"))
    });
    let sticky = count(&requests(&server, true, url_sticky, 50));
    assert_eq!(sticky.len(), 1, "pinned to one endpoint: {sticky:?}");
    assert_eq!(sticky.values().sum::<usize>(), 50);

    // No endpoints: refused at once (not a timeout); an unallocated service address is
    // dropped.
    service(
        &server,
        "empty",
        json!({"clusterIP": "10.43.100.13", "selector": {"app": "nothing"}}),
    );
    eventually("empty service rejects", 30, || {
        let (code, took) = curl_exit(&server, "http://10.43.100.13/", "3");
        (code == 7 && took < Duration::from_secs(2))
            .then_some(())
            .ok_or(format!("curl exit {code} after {took:?}"))
    });
    let (code, _) = curl_exit(&server, "http://10.43.100.200/", "1");
    assert_eq!(code, 28, "unallocated cluster IP times out");

    // A pod being deleted (terminating: not ready) stops getting new connections quickly.
    ok(server.kubectl(&["delete", "pod", "web-2", "--wait=false"]));
    let took = eventually("web-2 drained", 10, || {
        let b = count(&requests(&server, true, url, 30));
        (b.values().sum::<usize>() == 30 && !b.contains_key("web-2"))
            .then_some(())
            .ok_or(format!("{b:?}"))
    });
    eprintln!("endpoint removal took effect within {took:?}");

    // Deleting the Service removes its rules: its address is unallocated again (dropped).
    ok(server.kubectl(&["delete", "service", "sticky"]));
    eventually("sticky gone", 10, || {
        let (code, _) = curl_exit(&server, url_sticky, "1");
        (code == 28)
            .then_some(())
            .ok_or(format!("curl exit {code}"))
    });
}

#[test]
fn restart_keeps_rules_and_traffic() {
    let (mut server, node_ip, _) = start();
    web_pod(&server, "web-0", true);
    wait_pod(&server, "web-0", 120, "Ready", is_ready);
    service(
        &server,
        "web",
        json!({"type": "NodePort", "clusterIP": "10.43.100.10", "selector": {"app": "web"},
               "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
    );
    let url = "http://10.43.100.10/";
    eventually("service answers", 30, || {
        let b = requests(&server, true, url, 1);
        (b == ["web-0"]).then_some(()).ok_or(format!("{b:?}"))
    });
    let before = rules(&server);
    assert!(before.len() > 10, "{before:?}");

    // kaji stopped: the rules stay, the service keeps answering.
    server.stop();
    assert_eq!(rules(&server), before);
    assert_eq!(requests(&server, true, url, 3), ["web-0"; 3]);
    assert_eq!(
        requests(&server, false, &format!("http://{node_ip}:30080/"), 1),
        ["web-0"]
    );

    // Restarted: the table is reconciled in place, not duplicated.
    server.spawn();
    eventually("proxy resynced after restart", 60, || {
        let n = server
            .log()
            .matches("service proxy rules programmed")
            .count();
        (n >= 2).then_some(()).ok_or(format!("{n} syncs logged"))
    });
    assert_eq!(rules(&server), before, "same rules after a restart");
    assert_eq!(requests(&server, true, url, 3), ["web-0"; 3]);

    // Changes after the restart still apply (the new process owns the table).
    web_pod(&server, "web-1", true);
    wait_pod(&server, "web-1", 120, "Ready", is_ready);
    eventually("new endpoint used", 20, || {
        let b = count(&requests(&server, true, url, 30));
        (b.contains_key("web-1") && b.contains_key("web-0"))
            .then_some(())
            .ok_or(format!("{b:?}"))
    });
    assert!(rules(&server).len() > before.len());
}
