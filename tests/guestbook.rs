//! The guestbook shape from the Kubernetes talks, end to end on a node in its own network
//! namespace: a "backend" Deployment (1 replica) and a "replica" Deployment (2) behind
//! Services, and a "frontend" Deployment (3) whose pods reach the backend by DNS name and
//! through the injected environment variables. The frontend is reached from outside the
//! node through a LoadBalancer Service and through an Ingress by host name; killing the
//! backend pod and rolling the frontend never leave a Service pointing at a dead pod.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, apply, import_busybox, ok};
use serde_json::Value;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: backend
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir /www && hostname > /www/index.html && exec httpd -f -p 6379 -h /www"]
        ports: [{name: store, containerPort: 6379}]
        readinessProbe: {tcpSocket: {port: 6379}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{name: store, port: 6379, targetPort: store}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: replica}
spec:
  replicas: 2
  selector: {matchLabels: {app: replica}}
  template:
    metadata: {labels: {app: replica}}
    spec:
      containers:
      - name: replica
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir /www && hostname > /www/index.html && exec httpd -f -p 6379 -h /www"]
        readinessProbe: {tcpSocket: {port: 6379}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: replica}
spec:
  selector: {app: replica}
  ports: [{port: 6379}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend}
spec:
  replicas: 3
  strategy: {rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}, annotations: {version: "1"}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: frontend
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        # A CGI page that asks the backend (by DNS name) who it is.
        command:
        - sh
        - -c
        - |
          mkdir -p /www/cgi-bin
          printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "frontend $(hostname) backend $(wget -qO- http://backend:6379/)"\n' > /www/cgi-bin/index.cgi
          chmod +x /www/cgi-bin/index.cgi
          echo ok > /www/healthz
          exec httpd -f -p 8080 -h /www
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
        # Stay up while the endpoint update reaches the proxies (the usual pattern).
        lifecycle: {preStop: {sleep: {seconds: 2}}}
---
apiVersion: v1
kind: Service
metadata: {name: frontend}
spec:
  type: LoadBalancer
  selector: {app: frontend}
  ports: [{name: http, port: 8081, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: guestbook}
spec:
  rules:
  - host: guestbook.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: frontend, port: {name: http}}}}
"#;

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

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(server.kubectl(&a))).unwrap()
}

fn running_pods(server: &Server, app: &str) -> Vec<Value> {
    let list = get_json(server, &["pods", "-l", &format!("app={app}")]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .cloned()
        .collect()
}

/// An HTTP GET from the host through curl; `None` on any failure.
fn http_get(url: &str, host: Option<&str>) -> Option<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "--max-time", "3"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn guestbook() {
    let server = Server::start_in_netns(&[]);
    let node_ip = server.netns.as_ref().unwrap().node_ip.clone();
    import_busybox(&server);
    apply(&server, APP);

    eventually("all guestbook pods ready", 120, || {
        let counts = (
            running_pods(&server, "backend").len(),
            running_pods(&server, "replica").len(),
            running_pods(&server, "frontend").len(),
        );
        if counts == (1, 2, 3) {
            Ok(())
        } else {
            Err(format!(
                "ready (backend, replica, frontend) = {counts:?}\n{}",
                server.log()
            ))
        }
    });
    let backend_ip = get_json(&server, &["service", "backend"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let backend_pod = running_pods(&server, "backend")[0].clone();
    let backend_name = backend_pod["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    // Every frontend pod reaches the backend by DNS name and by the injected variables.
    for pod in running_pods(&server, "frontend") {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let env = ok(server.kubectl(&["exec", name, "--", "env"]));
        assert!(
            env.contains(&format!("BACKEND_SERVICE_HOST={backend_ip}")),
            "{name} env lacks BACKEND_SERVICE_HOST={backend_ip}:\n{env}"
        );
        assert!(env.contains("BACKEND_SERVICE_PORT_STORE=6379"), "{env}");
        assert!(env.contains("REPLICA_SERVICE_HOST="), "{env}");
        eventually("backend by DNS name", 30, || {
            let out = server.kubectl(&[
                "exec",
                name,
                "--",
                "wget",
                "-qO-",
                "http://backend.default.svc.cluster.local:6379/",
            ]);
            match common::stdout(&out).trim() {
                n if n == backend_name => Ok(()),
                other => Err(format!("{other:?} {}", common::stderr(&out))),
            }
        });
        let out = ok(server.kubectl(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "wget -qO- http://$BACKEND_SERVICE_HOST:$BACKEND_SERVICE_PORT/",
        ]));
        assert_eq!(out.trim(), backend_name);
    }

    // From outside: the LoadBalancer address (the node) and the Ingress by host name.
    let lb = format!("http://{node_ip}:8081/cgi-bin/index.cgi");
    eventually("LoadBalancer service", 60, || {
        let svc = get_json(&server, &["service", "frontend"]);
        let ingress = &svc["status"]["loadBalancer"]["ingress"][0]["ip"];
        if ingress != node_ip.as_str() {
            return Err(format!("status.loadBalancer: {}", svc["status"]));
        }
        match http_get(&lb, None) {
            Some(body) if body.contains(&format!("backend {backend_name}")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let via_ingress = format!("http://{node_ip}/cgi-bin/index.cgi");
    eventually("Ingress by host name", 60, || {
        match http_get(&via_ingress, Some("guestbook.example.com")) {
            Some(body) if body.starts_with("frontend frontend-") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // All three frontends answer through the load balancer.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        if let Some(body) = http_get(&lb, None) {
            if let Some(host) = body.split_whitespace().nth(1) {
                seen.insert(host.to_string());
            }
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "frontends seen through the LoadBalancer: {seen:?}"
    );

    // Kill the backend pod: its address leaves the endpoints promptly, and the new pod
    // takes over.
    let old_ip = backend_pod["status"]["podIP"].as_str().unwrap().to_string();
    let killed = Instant::now();
    ok(server.kubectl(&["delete", "pod", &backend_name, "--wait=false"]));
    eventually("dead backend removed from the endpoints", 10, || {
        let slices = get_json(
            &server,
            &["endpointslices", "-l", "kubernetes.io/service-name=backend"],
        );
        let ready_old =
            slices["items"].as_array().unwrap().iter().any(|s| {
                s["endpoints"].as_array().into_iter().flatten().any(|e| {
                    e["addresses"][0] == old_ip.as_str() && e["conditions"]["ready"] == true
                })
            });
        if ready_old {
            Err(format!("{old_ip} still ready after {:?}", killed.elapsed()))
        } else {
            Ok(())
        }
    });
    eventually("a new backend serves", 60, || match http_get(&lb, None) {
        Some(body) if body.contains("backend backend-") && !body.contains(&backend_name) => Ok(()),
        other => Err(format!("{other:?}")),
    });

    // Roll the frontend while a client keeps asking through the LoadBalancer: no request
    // fails (maxUnavailable 0, readiness gates, preStop delay).
    ok(server.kubectl(&[
        "patch",
        "deployment",
        "frontend",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"version":"2"}}}}}"#,
    ]));
    let url = lb.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let client = std::thread::spawn(move || {
        let (mut ok_count, mut failed) = (0, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            match http_get(&url, None) {
                Some(_) => ok_count += 1,
                None => failed.push(Instant::now()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (ok_count, failed)
    });
    let status = server.kubectl(&["rollout", "status", "deployment/frontend", "--timeout=180s"]);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok_count, failed) = client.join().unwrap();
    assert!(
        status.status.success(),
        "rollout: {}",
        common::stderr(&status)
    );
    assert!(
        ok_count > 20,
        "too few requests during the rollout: {ok_count}"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling update",
        failed.len(),
        failed.len() + ok_count
    );
}
