//! NetworkPolicy enforcement end to end: a node in its own network namespace, real
//! busybox pods (a web server, clients with and without labels, in two namespaces), and
//! real TCP connections between them through the `cni0` bridge while policies come and
//! go — default allow, deny-all, pod and namespace selectors, ipBlock with except, named
//! ports, egress isolation, host-to-pod probes, and a kaji restart that replaces the
//! `inet kaji-netpol` table instead of duplicating it.

mod common;

use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok, wait_pod};
use serde_json::Value;

const WEB: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /www && echo hello-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - {name: http, containerPort: 8080}
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
"#;

const CLIENT: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: NAME
  namespace: NS
  labels: LABELS
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: [sleep, "100000"]
"#;

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

fn pod_ip(server: &Server, ns: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = server.kubectl(&["-n", ns, "get", "pod", name, "-o", "json"]);
        if out.status.success() {
            let p: Value = serde_json::from_slice(&out.stdout).unwrap();
            if is_running(&p) {
                return p["status"]["podIP"].as_str().unwrap().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "pod {ns}/{name} not running: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether `ns/pod` gets the web page from `ip:port` (a new connection, 3 s timeout; busybox 1.35's `wget -T` crashes),
/// with what kubectl printed.
fn reaches(server: &Server, ns: &str, pod: &str, ip: &str, port: u16) -> (bool, String) {
    let url = format!("http://{ip}:{port}/");
    let out = server.kubectl(&[
        "-n", ns, "exec", pod, "--", "timeout", "3", "wget", "-q", "-O", "-", &url,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("hello-web"), text)
}

/// Waits until every `(namespace, pod, expected)` sees its expectation towards the web
/// pod (policies apply asynchronously, within a second or so).
fn expect(server: &Server, what: &str, ip: &str, port: u16, cases: &[(&str, &str, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outs: Vec<(bool, String)> = cases
            .iter()
            .map(|(ns, pod, _)| reaches(server, ns, pod, ip, port))
            .collect();
        let got: Vec<bool> = outs.iter().map(|o| o.0).collect();
        let want: Vec<bool> = cases.iter().map(|c| c.2).collect();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: got {got:?}, want {want:?} for {cases:?}\n{outs:?}\n{}\n{}",
            table(server).unwrap_or_default(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The policy table as `nft list` prints it, `None` if it does not exist.
fn table(server: &Server) -> Option<String> {
    let out = server
        .netns_command("nft")
        .args(["list", "table", "inet", "kaji-netpol"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn tables(server: &Server) -> Vec<String> {
    let out = server
        .netns_command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn policy(server: &Server, name: &str, spec: &str) {
    apply(
        server,
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"
        ),
    );
}

/// A node with the web pod, clients in `default` (unlabelled `client`, `frontend` with
/// role=frontend) and in namespace `other` (labelled team=other: `client`); returns the
/// web pod's IP.
fn setup(server: &Server) -> String {
    import_busybox(server);
    ok(server.kubectl(&["create", "namespace", "other"]));
    ok(server.kubectl(&["label", "namespace", "other", "team=other"]));
    apply(server, WEB);
    for (ns, name, labels) in [
        ("default", "client", "{}"),
        ("default", "frontend", "{role: frontend}"),
        ("other", "client", "{role: frontend}"),
    ] {
        apply(
            server,
            &CLIENT
                .replace("NAME", name)
                .replace("NS", ns)
                .replace("LABELS", labels),
        );
    }
    wait_pod(server, "web", 120, "Ready", is_ready);
    for (ns, name) in [
        ("default", "client"),
        ("default", "frontend"),
        ("other", "client"),
    ] {
        pod_ip(server, ns, name);
    }
    pod_ip(server, "default", "web")
}

#[test]
fn policies_isolate_and_allow() {
    let server = Server::start_in_netns(&[]);
    let web = setup(&server);
    let all = |c: bool, f: bool, o: bool| {
        [
            ("default", "client", c),
            ("default", "frontend", f),
            ("other", "client", o),
        ]
    };

    // No policy: everything is allowed, and kaji installs no table.
    expect(&server, "default allow", &web, 8080, &all(true, true, true));
    assert_eq!(table(&server), None);

    // Deny all ingress to app=web.
    policy(
        &server,
        "web",
        "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    );
    expect(&server, "deny all", &web, 8080, &all(false, false, false));
    // The node itself still reaches the pod: probes keep it Ready, curl works.
    let st = server
        .netns_command("curl")
        .args(["-s", "--max-time", "3", &format!("http://{web}:8080/")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("hello-web"),
        "host to pod under deny-all"
    );
    std::thread::sleep(Duration::from_secs(3));
    let p = wait_pod(&server, "web", 5, "Ready", is_ready);
    assert!(is_ready(&p));

    // Only role=frontend pods of the policy's namespace.
    policy(
        &server,
        "web",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: frontend}}\n",
    );
    expect(
        &server,
        "from frontend",
        &web,
        8080,
        &all(false, true, false),
    );

    // Namespaces labelled team=other (any pod there).
    policy(
        &server,
        "web",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: other}}\n",
    );
    expect(
        &server,
        "namespaceSelector",
        &web,
        8080,
        &all(false, false, true),
    );

    // ipBlock: the pod network except the frontend pod's address.
    let frontend = pod_ip(&server, "default", "frontend");
    policy(
        &server,
        "web",
        &format!(
            "  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.42.0.0/16, except: [{frontend}/32]}}\n"
        ),
    );
    expect(&server, "ipBlock", &web, 8080, &all(true, false, true));

    // A named port resolves to the web container's 8080; another port admits nothing.
    policy(
        &server,
        "web",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - ports:\n    - port: http\n",
    );
    expect(&server, "named port", &web, 8080, &all(true, true, true));
    policy(
        &server,
        "web",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - ports:\n    - port: 9090\n      endPort: 9099\n",
    );
    expect(
        &server,
        "other ports only",
        &web,
        8080,
        &all(false, false, false),
    );

    // Egress deny-all for the unlabelled client only (ingress to web open again).
    ok(server.kubectl(&["delete", "networkpolicy", "web"]));
    ok(server.kubectl(&["label", "pod", "client", "egress=deny"]));
    policy(
        &server,
        "client-egress",
        "  podSelector: {matchLabels: {egress: deny}}\n  policyTypes: [Egress]\n",
    );
    expect(&server, "egress deny", &web, 8080, &all(false, true, true));
    let t = table(&server).expect("table with an egress policy");
    assert!(t.contains("egress-"), "{t}");

    // Removing the last policy restores traffic and removes the table.
    ok(server.kubectl(&["delete", "networkpolicy", "client-egress"]));
    expect(
        &server,
        "policies removed",
        &web,
        8080,
        &all(true, true, true),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while table(&server).is_some() {
        assert!(
            Instant::now() < deadline,
            "table left after the last policy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn restart_replaces_the_table() {
    let mut server = Server::start_in_netns(&[]);
    let web = setup(&server);
    policy(
        &server,
        "web",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: frontend}}\n",
    );
    let cases = [("default", "client", false), ("default", "frontend", true)];
    expect(&server, "before restart", &web, 8080, &cases);
    let before = table(&server).expect("table");

    // Stopped: the table stays, the pods stay protected.
    server.stop();
    assert_eq!(table(&server).as_deref(), Some(before.as_str()));

    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    while server.log().matches("network policies programmed").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no sync after restart: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let count = tables(&server)
        .iter()
        .filter(|t| t.contains("kaji-netpol"))
        .count();
    assert_eq!(count, 1, "{:?}", tables(&server));
    assert_eq!(table(&server).as_deref(), Some(before.as_str()));
    expect(&server, "after restart", &web, 8080, &cases);

    // The restarted controller follows changes.
    ok(server.kubectl(&["delete", "networkpolicy", "web"]));
    expect(
        &server,
        "deleted after restart",
        &web,
        8080,
        &[("default", "client", true), ("default", "frontend", true)],
    );
}
