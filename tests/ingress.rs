//! The built-in ingress controller end to end: a node in its own network namespace, two
//! real web pods behind Services, Ingresses routing by host and path over HTTP and HTTPS
//! (certificate chosen by SNI from a Secret), status filled with the node address, and
//! route changes taking effect without a restart.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok};

fn web(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  containers:
  - name: web
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www/api && echo {name} > /www/index.html && echo {name}-api > /www/api/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// curl from the host to the node's address; returns (status, body).
fn curl(server: &Server, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .current_dir(server.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.trim().to_string())
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[test]
fn routes_by_host_and_path_with_tls() {
    let server = Server::start_in_netns(&[]);
    let node_ip = server.netns.as_ref().unwrap().node_ip.clone();
    import_busybox(&server);

    // The server creates the default IngressClass.
    eventually("IngressClass kaji", 30, || {
        let out = server.kubectl(&["get", "ingressclass", "kaji", "-o", "json"]);
        if !out.status.success() {
            return Err(common::stderr(&out));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["spec"]["controller"], "kaji.io/ingress-controller");
        assert_eq!(
            v["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
            "true"
        );
        Ok(())
    });

    apply(&server, &web("web1"));
    apply(&server, &web("web2"));

    // A certificate for a.example.com, in a TLS Secret.
    let dir = server.dir.path();
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=a.example.com",
            "-addext",
            "subjectAltName=DNS:a.example.com",
            "-keyout",
            "a.key",
            "-out",
            "a.crt",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    ok(server.kubectl(&[
        "create",
        "secret",
        "tls",
        "a-tls",
        &format!("--cert={}", dir.join("a.crt").display()),
        &format!("--key={}", dir.join("a.key").display()),
    ]));

    // No ingressClassName: the default class (kaji) serves it.
    apply(
        &server,
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: site
spec:
  tls:
  - hosts: [a.example.com]
    secretName: a-tls
  rules:
  - host: a.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web1, port: {number: 80}}}}
  - host: b.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: web2, port: {name: http}}}}
"#,
    );

    let http = format!("http://{node_ip}/");
    eventually("a.example.com routed to web1", 90, || {
        match curl(&server, &["-H", "Host: a.example.com", &http]) {
            (code, body) if code == "200" && body == "web1" => Ok(()),
            other => Err(format!("{other:?}\n{}", server.log())),
        }
    });
    // Path rules: /api goes to web2, / on that host matches nothing.
    eventually("b.example.com/api routed to web2", 60, || {
        match curl(
            &server,
            &["-H", "Host: b.example.com", &format!("{http}api/")],
        ) {
            (code, body) if code == "200" && body == "web2-api" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (code, _) = curl(&server, &["-H", "Host: b.example.com", &http]);
    assert_eq!(code, "404");
    let (code, body) = curl(&server, &["-H", "Host: nobody.example.com", &http]);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("404", "404 page not found")
    );

    // HTTPS with the Secret's certificate, verified against it by SNI.
    let resolve = format!("a.example.com:443:{node_ip}");
    eventually("HTTPS with the secret's certificate", 30, || {
        match curl(
            &server,
            &[
                "--resolve",
                &resolve,
                "--cacert",
                "a.crt",
                "https://a.example.com/",
            ],
        ) {
            (code, body) if code == "200" && body == "web1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Other names get the default (self-signed) certificate: verification fails.
    let resolve_b = format!("b.example.com:443:{node_ip}");
    let (code, _) = curl(
        &server,
        &[
            "--resolve",
            &resolve_b,
            "--cacert",
            "a.crt",
            "https://b.example.com/api/",
        ],
    );
    assert_eq!(
        code, "000",
        "the default certificate must not verify as a.example.com"
    );

    // Status carries the node address.
    eventually("ingress status", 30, || {
        let out = ok(server.kubectl(&[
            "get",
            "ingress",
            "site",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]));
        if out.trim() == node_ip {
            Ok(())
        } else {
            Err(out)
        }
    });

    // Changing the rule takes effect without a restart.
    ok(server.kubectl(&[
        "patch",
        "ingress",
        "site",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/http/paths/0/backend/service/name","value":"web2"}]"#,
    ]));
    eventually("a.example.com re-routed to web2", 30, || {
        match curl(&server, &["-H", "Host: a.example.com", &http]) {
            (code, body) if code == "200" && body == "web2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // A backend without ready endpoints answers 503.
    ok(server.kubectl(&["delete", "pod", "web2", "--grace-period=0", "--force"]));
    eventually("503 without endpoints", 30, || {
        match curl(&server, &["-H", "Host: a.example.com", &http]) {
            (code, _) if code == "503" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Requests are logged.
    assert!(
        server.log().contains("kaji::ingress::access"),
        "no access log lines"
    );
}
