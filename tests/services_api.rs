//! Service networking on the control plane side: ClusterIP and NodePort allocation (as
//! kube-apiserver answers them, across restarts), the `kubernetes` Service and its
//! endpoints, the EndpointSlice and Endpoints controllers fed by pods whose status the
//! test writes itself, ServiceLB's load balancer addresses and port conflicts, and the
//! Service environment variables a real pod gets.

mod common;

use std::time::{Duration, Instant};

use common::{Server, import_busybox, ok, stderr, wait_pod};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn svc_json(server: &Server, name: &str) -> Value {
    serde_json::from_str(&ok(server.kubectl(&["get", "svc", name, "-o", "json"]))).unwrap()
}

fn create_svc(server: &Server, yaml: &str) -> std::process::Output {
    server.kubectl_version("kubectl", &["create", "-f", "-"], Some(yaml))
}

fn in_range(ip: &str) -> bool {
    ip.starts_with("10.43.") && ip != "10.43.0.0" && ip != "10.43.255.255"
}

/// Polls `f` until it returns Some, for at most `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn cluster_ips_and_node_ports_are_allocated_like_kube_apiserver() {
    // Without the cluster DNS Service, its reserved IP is free to request.
    let mut server = Server::start(&["--disable=dns"]);

    // The kubernetes Service: first IP of the range, 443 → the API server's port.
    let k = svc_json(&server, "kubernetes");
    assert_eq!(k["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(k["spec"]["clusterIPs"], json!(["10.43.0.1"]));
    assert_eq!(k["spec"]["ports"][0]["name"], "https");
    assert_eq!(k["spec"]["ports"][0]["port"], 443);
    assert_eq!(k["spec"]["ports"][0]["targetPort"], server.port);
    let eps: Value = serde_json::from_str(&ok(server.kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(eps["subsets"][0]["addresses"][0]["ip"], "127.0.0.1");
    assert_eq!(eps["subsets"][0]["ports"][0]["port"], server.port);
    let slice: Value = serde_json::from_str(&ok(server.kubectl(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], server.port);

    // Dynamic IPs: distinct, in range, never the reserved ones.
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut seen = Vec::new();
    for i in 0..6 {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("s{i}")},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        let created = services.create(&PostParams::default(), &svc).await.unwrap();
        let spec = created.spec.unwrap();
        let ip = spec.cluster_ip.unwrap();
        assert!(in_range(&ip), "{ip}");
        assert!(ip != "10.43.0.1" && ip != "10.43.0.10", "{ip}");
        assert_eq!(spec.cluster_ips.unwrap(), vec![ip.clone()]);
        assert_eq!(spec.ip_families.unwrap(), vec!["IPv4".to_string()]);
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        assert!(!seen.contains(&ip), "{ip} handed out twice");
        seen.push(ip);
    }

    // A requested IP is honoured once; a second request gets upstream's 422.
    ok(server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "dns",
        "--clusterip=10.43.0.10",
        "--tcp=53:53",
    ]));
    assert_eq!(svc_json(&server, "dns")["spec"]["clusterIP"], "10.43.0.10");
    let dup = server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "dns2",
        "--clusterip=10.43.0.10",
        "--tcp=53:53",
    ]);
    assert!(!dup.status.success());
    assert!(
        stderr(&dup).contains(
            "spec.clusterIPs: Invalid value: []string{\"10.43.0.10\"}: failed to allocate IP 10.43.0.10: provided IP is already allocated"
        ),
        "{}",
        stderr(&dup)
    );
    let err = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "far"},
                "spec": {"clusterIP": "10.99.0.5", "ports": [{"port": 80}]}}))
            .unwrap(),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains("the provided IP (10.99.0.5) is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
                "{}",
                s.message
            );
        }
        other => panic!("{other}"),
    }

    // Headless and ExternalName Services get no IP.
    ok(create_svc(
        &server,
        "apiVersion: v1\nkind: Service\nmetadata: {name: hl}\nspec: {clusterIP: None, selector: {app: x}, ports: [{port: 80}]}\n",
    ));
    assert_eq!(
        svc_json(&server, "hl")["spec"]["clusterIPs"],
        json!(["None"])
    );
    ok(server.kubectl(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ]));
    assert!(svc_json(&server, "ext")["spec"].get("clusterIP").is_none());

    // The cluster IP is immutable.
    let change = server.kubectl(&[
        "patch",
        "svc",
        "dns",
        "-p",
        r#"{"spec":{"clusterIP":"10.43.0.11","clusterIPs":["10.43.0.11"]}}"#,
    ]);
    assert!(!change.status.success());
    assert!(
        stderr(&change).contains("may not change once set"),
        "{}",
        stderr(&change)
    );

    // Node ports: requested, duplicate, out of range, automatic.
    ok(server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ]));
    let np = svc_json(&server, "np");
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
    let out = ok(server.kubectl(&["get", "svc", "np"]));
    assert!(out.contains("80:30080/TCP"), "{out}");
    let dup = server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np2",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert!(
        stderr(&dup).contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{}",
        stderr(&dup)
    );
    let far = server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np3",
        "--tcp=80:8080",
        "--node-port=8080",
    ]);
    assert!(
        stderr(&far).contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{}",
        stderr(&far)
    );
    ok(server.kubectl(&["create", "service", "nodeport", "auto", "--tcp=81:81"]));
    let auto = svc_json(&server, "auto")["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap();
    assert!((30000..=32767).contains(&auto));

    // LoadBalancer with Local traffic policy: node ports and a health check port.
    ok(create_svc(
        &server,
        "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: x}, ports: [{port: 8443}]}\n",
    ));
    let lb = svc_json(&server, "lb");
    let hc = lb["spec"]["healthCheckNodePort"].as_i64().unwrap();
    let lb_np = lb["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&hc) && (30000..=32767).contains(&lb_np) && hc != lb_np);

    // Type change to ClusterIP frees the node port.
    ok(server.kubectl(&[
        "patch",
        "svc",
        "np",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]));
    assert!(
        svc_json(&server, "np")["spec"]["ports"][0]
            .get("nodePort")
            .is_none()
    );
    ok(server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np4",
        "--tcp=80:8080",
        "--node-port=30080",
    ]));

    // Deleting frees the IP.
    ok(server.kubectl(&["delete", "svc", "dns"]));
    ok(server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "dns",
        "--clusterip=10.43.0.10",
        "--tcp=53:53",
    ]));

    // After a restart the allocations are still known.
    server.stop();
    server.spawn();
    let dup = server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "dns3",
        "--clusterip=10.43.0.10",
        "--tcp=53:53",
    ]);
    assert!(
        stderr(&dup).contains("provided IP is already allocated"),
        "{}",
        stderr(&dup)
    );
    let dup = server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np5",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert!(
        stderr(&dup).contains("provided port is already allocated"),
        "{}",
        stderr(&dup)
    );
    assert_eq!(
        svc_json(&server, "kubernetes")["spec"]["clusterIP"],
        "10.43.0.1"
    );
}

/// A pod (no node, so the API server deletes it at once unless finalized) with app=web.
fn pod_json(name: &str, port: Option<(&str, i32)>) -> Pod {
    let ports = match port {
        Some((n, p)) => json!([{"name": n, "containerPort": p}]),
        None => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "ports": ports}]}
    }))
    .unwrap()
}

async fn set_pod_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// (address, ready, serving, terminating, ports) of every endpoint of `svc`'s slices.
type Row = (String, bool, bool, bool, Vec<i32>);

async fn slice_rows(slices: &Api<EndpointSlice>, svc: &str) -> (Vec<EndpointSlice>, Vec<Row>) {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items;
    let mut rows = Vec::new();
    for s in &list {
        let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            rows.push((
                e.addresses[0].clone(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
                ports.clone(),
            ));
        }
    }
    rows.sort();
    (list, rows)
}

#[tokio::test]
async fn endpoint_slices_and_endpoints_follow_pods() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");

    let web: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
    .unwrap();
    services.create(&PostParams::default(), &web).await.unwrap();
    // No pods yet: one empty slice.
    let (list, rows) = eventually(20, "an empty slice", || async {
        let r = slice_rows(&slices, "web").await;
        (!r.0.is_empty()).then_some(r)
    })
    .await;
    assert!(rows.is_empty());
    let s = &list[0];
    assert!(s.metadata.name.as_deref().unwrap().starts_with("web-"));
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );

    // a: ready on 8080; b: not ready, named port on 9090; c: ready, no such named port;
    // d: terminating (a finalizer keeps it after deletion).
    for (name, port) in [
        ("a", Some(("http", 8080))),
        ("b", Some(("http", 9090))),
        ("c", None),
        ("d", Some(("http", 8080))),
    ] {
        let mut p = pod_json(name, port);
        if name == "d" {
            p.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        }
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    set_pod_status(&pods, "a", "10.42.0.1", true).await;
    set_pod_status(&pods, "b", "10.42.0.2", false).await;
    set_pod_status(&pods, "c", "10.42.0.3", true).await;
    set_pod_status(&pods, "d", "10.42.0.4", true).await;
    pods.delete("d", &DeleteParams::default()).await.unwrap();
    let want: Vec<Row> = vec![
        ("10.42.0.1".into(), true, true, false, vec![8080]),
        ("10.42.0.2".into(), false, false, false, vec![9090]),
        ("10.42.0.3".into(), true, true, false, vec![]),
        ("10.42.0.4".into(), false, true, true, vec![8080]),
    ];
    let (list, _) = eventually(20, "slices for a, b, c, d", || async {
        let r = slice_rows(&slices, "web").await;
        (r.1 == want).then_some(r)
    })
    .await;
    assert_eq!(list.len(), 3, "one slice per port set: {list:?}");
    let a = list
        .iter()
        .flat_map(|s| &s.endpoints)
        .find(|e| e.addresses[0] == "10.42.0.1")
        .unwrap();
    assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));

    // The Endpoints object: a and c ready, b not ready, d (terminating) left out.
    let ep = eventually(20, "endpoints", || async {
        let ep = endpoints.get_opt("web").await.unwrap()?;
        let subsets = ep.subsets.clone().unwrap_or_default();
        let ready: Vec<String> = subsets
            .iter()
            .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
            .collect();
        (ready.len() == 1 && subsets.len() == 2).then_some(ep)
    })
    .await;
    let subsets = ep.subsets.unwrap();
    let on_8080 = subsets
        .iter()
        .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
        .unwrap();
    assert_eq!(on_8080.addresses.as_ref().unwrap()[0].ip, "10.42.0.1");
    let on_9090 = subsets
        .iter()
        .find(|s| s.ports.as_ref().unwrap()[0].port == 9090)
        .unwrap();
    assert_eq!(
        on_9090.not_ready_addresses.as_ref().unwrap()[0].ip,
        "10.42.0.2"
    );
    let table = ok(server.kubectl(&["get", "endpoints", "web"]));
    assert!(table.contains("10.42.0.1:8080"), "{table}");

    // Nothing changes: no writes (the proxy and DNS watch these).
    let before: Vec<String> = slice_rows(&slices, "web")
        .await
        .0
        .iter()
        .map(|s| s.metadata.resource_version.clone().unwrap())
        .collect();
    let ep_rv = endpoints
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<String> = slice_rows(&slices, "web")
        .await
        .0
        .iter()
        .map(|s| s.metadata.resource_version.clone().unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        ep_rv,
        endpoints
            .get("web")
            .await
            .unwrap()
            .metadata
            .resource_version
    );

    // b turns ready: updated in place.
    set_pod_status(&pods, "b", "10.42.0.2", true).await;
    eventually(20, "b ready", || async {
        let r = slice_rows(&slices, "web").await;
        r.1.iter()
            .any(|row| row.0 == "10.42.0.2" && row.1)
            .then_some(())
    })
    .await;
    let table = ok(server.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]));
    assert!(
        table.contains("ADDRESSTYPE") && table.contains("IPv4"),
        "{table}"
    );

    // publishNotReadyAddresses and headless Services.
    let pnr: Service = serde_json::from_value(json!({"metadata": {"name": "pnr"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]}}))
    .unwrap();
    services.create(&PostParams::default(), &pnr).await.unwrap();
    set_pod_status(&pods, "b", "10.42.0.2", false).await;
    let (list, rows) = eventually(20, "pnr slices", || async {
        let r = slice_rows(&slices, "pnr").await;
        (r.1.len() == 4).then_some(r)
    })
    .await;
    assert!(rows.iter().all(|r| r.1), "all ready: {rows:?}");
    assert!(
        list[0]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("service.kubernetes.io/headless")
    );

    // A Service without a selector keeps its hand-written slice.
    let manual: Service = serde_json::from_value(json!({"metadata": {"name": "manual"},
        "spec": {"ports": [{"port": 80}]}}))
    .unwrap();
    services
        .create(&PostParams::default(), &manual)
        .await
        .unwrap();
    let mine: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "manual-1",
        "labels": {"kubernetes.io/service-name": "manual"}}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": [{"port": 80}]}))
    .unwrap();
    let mine = slices.create(&PostParams::default(), &mine).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (list, _) = slice_rows(&slices, "manual").await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].metadata.resource_version,
        mine.metadata.resource_version
    );
    assert!(endpoints.get_opt("manual").await.unwrap().is_none());

    // Deleting the Service removes its Endpoints (and the GC its slices).
    services
        .delete("pnr", &DeleteParams::default())
        .await
        .unwrap();
    eventually(20, "pnr endpoints gone", || async {
        endpoints
            .get_opt("pnr")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

fn node_json(name: &str, internal: &str, ready: bool) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": internal}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": "Test",
                "lastHeartbeatTime": jiff::Timestamp::now().to_string(), "lastTransitionTime": jiff::Timestamp::now().to_string()}]}}))
    .unwrap()
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn servicelb_publishes_node_ips_and_reports_port_conflicts() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    nodes
        .create(&PostParams::default(), &node_json("n1", "10.0.0.11", true))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node_json("n2", "10.0.0.12", false))
        .await
        .unwrap();

    let lb = |name: &str, port: i32| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": port}]}}))
        .unwrap()
    };
    services
        .create(&PostParams::default(), &lb("first", 8080))
        .await
        .unwrap();
    eventually(20, "first's ingress", || async {
        let s = services.get("first").await.unwrap();
        (ingress_ips(&s) == vec!["10.0.0.11"]).then_some(())
    })
    .await;
    let out = ok(server.kubectl(&["get", "svc", "first"]));
    assert!(out.contains("10.0.0.11"), "{out}");

    // A second node becomes Ready: both addresses.
    nodes
        .patch_status(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Test",
                "lastHeartbeatTime": jiff::Timestamp::now().to_string(), "lastTransitionTime": jiff::Timestamp::now().to_string()}]}})),
        )
        .await
        .unwrap();
    eventually(20, "two ingress IPs", || async {
        let s = services.get("first").await.unwrap();
        (ingress_ips(&s) == vec!["10.0.0.11", "10.0.0.12"]).then_some(())
    })
    .await;

    // The same port again: no address, a Warning event naming the holder.
    services
        .create(&PostParams::default(), &lb("second", 8080))
        .await
        .unwrap();
    let events = eventually(20, "PortConflict event", || async {
        let out = server.kubectl(&[
            "get",
            "events",
            "--field-selector=involvedObject.name=second,reason=PortConflict",
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (!v["items"].as_array()?.is_empty()).then_some(v)
    })
    .await;
    let ev = &events["items"][0];
    assert_eq!(ev["type"], "Warning");
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("8080/TCP is already used by LoadBalancer service default/first"),
        "{ev}"
    );
    assert!(ingress_ips(&services.get("second").await.unwrap()).is_empty());
    let out = ok(server.kubectl(&["get", "svc", "second"]));
    assert!(out.contains("<pending>"), "{out}");

    // Port 80 belongs to the ingress controller.
    services
        .create(&PostParams::default(), &lb("web", 80))
        .await
        .unwrap();
    eventually(20, "ingress conflict event", || async {
        let out = server.kubectl(&[
            "get",
            "events",
            "--field-selector=involvedObject.name=web,reason=PortConflict",
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let msg = v["items"].get(0)?["message"].as_str()?.to_string();
        msg.contains("ingress").then_some(())
    })
    .await;

    // The holder goes away: the second gets the addresses.
    services
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually(20, "second's ingress", || async {
        let s = services.get("second").await.unwrap();
        (ingress_ips(&s).len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pods_get_service_environment_variables() {
    let server = Server::start_with_agent(&[]);
    import_busybox(&server);
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "redis-primary"},
        "spec": {"selector": {"app": "redis"}, "ports": [{"name": "redis", "port": 6379}]}}))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: envtest}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "env | sort"]
    env: [{name: REDIS_PRIMARY_SERVICE_PORT, value: overridden}]
"#;
    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(pod)));
    wait_pod(&server, "envtest", 120, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let logs = ok(server.kubectl(&["logs", "envtest"]));
    assert!(
        logs.contains(&format!("REDIS_PRIMARY_SERVICE_HOST={ip}\n")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("REDIS_PRIMARY_PORT_6379_TCP=tcp://{ip}:6379\n")),
        "{logs}"
    );
    assert!(
        logs.contains("REDIS_PRIMARY_SERVICE_PORT_REDIS=6379\n"),
        "{logs}"
    );
    assert!(
        logs.contains("REDIS_PRIMARY_SERVICE_PORT=overridden\n"),
        "{logs}"
    );
    assert!(
        logs.contains("KUBERNETES_SERVICE_HOST=10.43.0.1\n"),
        "{logs}"
    );
    assert!(logs.contains("KUBERNETES_SERVICE_PORT=443\n"), "{logs}");

    // enableServiceLinks: false keeps only the kubernetes ones.
    let pod = pod.replace("envtest", "nolinks").replace(
        "restartPolicy: Never",
        "restartPolicy: Never\n  enableServiceLinks: false",
    );
    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(&pod)));
    wait_pod(&server, "nolinks", 120, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let logs = ok(server.kubectl(&["logs", "nolinks"]));
    assert!(!logs.contains("REDIS_PRIMARY_SERVICE_HOST"), "{logs}");
    assert!(
        logs.contains("KUBERNETES_SERVICE_HOST=10.43.0.1\n"),
        "{logs}"
    );
}
