//! kubectl 1.32/1.33 typed clients send `application/vnd.kubernetes.protobuf` request
//! bodies (create configmap|secret|deployment|job|..., auth can-i, create token) and never
//! retry as JSON: against a real `kaji server` they must all work, and what they stored
//! must read back with the fields the user asked for.

mod common;

use common::{Server, ok, stderr, stdout};
use serde_json::{Value, json};

fn get_json(server: &Server, bin: &str, args: &[&str]) -> Value {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let out = ok(server.kubectl_version(bin, &full, None));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn kubectl_1_33_typed_creates() {
    let bin = "kubectl.1.33";
    let server = Server::start(&[]);
    let k = |args: &[&str]| ok(server.kubectl_version(bin, args, None));
    let get = |args: &[&str]| get_json(&server, bin, args);

    // configmap: literal data and binary file data.
    let blob = server.dir.path().join("blob.bin");
    std::fs::write(&blob, [0u8, 1, 0xff, 0xfe]).unwrap();
    let out = k(&[
        "create",
        "configmap",
        "cm1",
        "--from-literal=a=b",
        &format!("--from-file=blob={}", blob.display()),
    ]);
    assert!(out.contains("configmap/cm1 created"), "{out}");
    let cm = get(&["configmap", "cm1"]);
    assert_eq!(cm["data"], json!({"a": "b"}));
    assert_eq!(cm["binaryData"], json!({"blob": "AAH//g=="}));
    assert!(cm["metadata"]["uid"].is_string(), "{cm}");

    // secret: bytes travel as bytes and come back base64.
    k(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=hunter2",
    ]);
    let s = get(&["secret", "s1"]);
    assert_eq!(s["data"]["password"], "aHVudGVyMg==");
    assert_eq!(s["type"], "Opaque");

    // deployment: replicas, container port, and the server's defaults on top.
    k(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
        "--port=8080",
    ]);
    let d = get(&["deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");

    // expose: a Service selecting the deployment's pods.
    k(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--name=websvc",
    ]);
    let svc = get(&["service", "websvc"]);
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);

    // namespace
    k(&["create", "namespace", "n1"]);
    assert_eq!(get(&["namespace", "n1"])["status"]["phase"], "Active");

    // services: IntOrString target port, node port.
    k(&["create", "service", "clusterip", "svc1", "--tcp=80:8080"]);
    let svc = get(&["service", "svc1"]);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        svc["spec"]["ports"][0],
        json!({"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080})
    );
    k(&[
        "create",
        "service",
        "nodeport",
        "np1",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert_eq!(
        get(&["service", "np1"])["spec"]["ports"][0]["nodePort"],
        30080
    );

    // job and cronjob
    k(&["create", "job", "j1", "--image=busybox", "--", "echo", "hi"]);
    let j = get(&["job", "j1"]);
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(pod["restartPolicy"], "Never");
    k(&[
        "create",
        "cronjob",
        "cj1",
        "--image=busybox",
        "--schedule=*/5 * * * *",
        "--",
        "date",
    ]);
    assert_eq!(get(&["cronjob", "cj1"])["spec"]["schedule"], "*/5 * * * *");

    // run (a Pod with labels, env and args)
    k(&[
        "run",
        "pod1",
        "--image=busybox",
        "--labels=a=b",
        "--env=K=V",
        "--",
        "sleep",
        "1",
    ]);
    let p = get(&["pod", "pod1"]);
    assert_eq!(p["metadata"]["labels"], json!({"a": "b"}));
    let c = &p["spec"]["containers"][0];
    assert_eq!(c["env"], json!([{"name": "K", "value": "V"}]));
    assert_eq!(c["args"], json!(["sleep", "1"]));

    // RBAC
    k(&[
        "create",
        "role",
        "r1",
        "--verb=get,list",
        "--resource=pods,deployments.apps",
    ]);
    let r = get(&["role", "r1"]);
    assert_eq!(
        r["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
               {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}])
    );
    k(&[
        "create",
        "rolebinding",
        "rb1",
        "--role=r1",
        "--user=alice",
        "--serviceaccount=default:default",
    ]);
    let rb = get(&["rolebinding", "rb1"]);
    assert_eq!(rb["roleRef"]["name"], "r1");
    assert_eq!(rb["subjects"][0]["name"], "alice");
    assert_eq!(
        rb["subjects"][1],
        json!({"kind": "ServiceAccount", "name": "default", "namespace": "default"})
    );
    k(&[
        "create",
        "clusterrole",
        "cr1",
        "--verb=get",
        "--non-resource-url=/logs",
    ]);
    assert_eq!(
        get(&["clusterrole", "cr1"])["rules"][0]["nonResourceURLs"],
        json!(["/logs"])
    );
    k(&[
        "create",
        "clusterrolebinding",
        "crb1",
        "--clusterrole=cr1",
        "--user=bob",
    ]);
    assert_eq!(
        get(&["clusterrolebinding", "crb1"])["subjects"][0]["name"],
        "bob"
    );

    // policy, quota, scheduling, networking, service accounts, autoscaling
    k(&[
        "create",
        "pdb",
        "pdb1",
        "--selector=app=web",
        "--min-available=50%",
    ]);
    assert_eq!(get(&["pdb", "pdb1"])["spec"]["minAvailable"], "50%");
    k(&["create", "quota", "q1", "--hard=cpu=1,memory=1Gi,pods=10"]);
    assert_eq!(
        get(&["quota", "q1"])["spec"]["hard"],
        json!({"cpu": "1", "memory": "1Gi", "pods": "10"})
    );
    k(&[
        "create",
        "priorityclass",
        "pc1",
        "--value=1000",
        "--preemption-policy=Never",
    ]);
    let pc = get(&["priorityclass", "pc1"]);
    assert_eq!(
        (pc["value"].clone(), pc["preemptionPolicy"].clone()),
        (json!(1000), json!("Never"))
    );
    k(&[
        "create",
        "ingress",
        "ing1",
        "--rule=foo.com/bar*=svc1:8080,tls=my-cert",
    ]);
    let ing = get(&["ingress", "ing1"]);
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"],
        8080
    );
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "my-cert");
    k(&["create", "serviceaccount", "sa1"]);
    get(&["serviceaccount", "sa1"]);
    k(&[
        "autoscale",
        "deployment",
        "web",
        "--min=1",
        "--max=3",
        "--cpu-percent=50",
    ]);
    let hpa = get(&["hpa", "web"]);
    assert_eq!(hpa["spec"]["maxReplicas"], 3);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "web");

    // server-side dry run: answered, not stored.
    let out = k(&[
        "create",
        "configmap",
        "dry",
        "--from-literal=x=y",
        "--dry-run=server",
        "-o",
        "json",
    ]);
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["data"], json!({"x": "y"}));
    let missing = server.kubectl_version(bin, &["get", "configmap", "dry"], None);
    assert!(
        !missing.status.success() && stderr(&missing).contains("NotFound"),
        "{}",
        stderr(&missing)
    );

    // Conflicts still come back as the usual errors.
    let again = server.kubectl_version(
        bin,
        &["create", "configmap", "cm1", "--from-literal=a=b"],
        None,
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn kubectl_1_33_reviews_and_tokens() {
    let bin = "kubectl.1.33";
    let server = Server::start(&[]);
    let k = |args: &[&str]| server.kubectl_version(bin, args, None);

    // SelfSubjectAccessReview / SelfSubjectRulesReview (protobuf bodies, §1.3).
    assert_eq!(
        stdout(&k(&["auth", "can-i", "create", "pods"])).trim(),
        "yes"
    );
    let out = ok(k(&["auth", "can-i", "--list"]));
    assert!(out.contains("Resources") && out.contains("*.*"), "{out}");
    // TokenRequest on serviceaccounts/token.
    let token = ok(k(&["create", "token", "default", "--duration=1h"]));
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
}

#[test]
fn kubectl_1_32_also_sends_protobuf() {
    let bin = "kubectl.1.32";
    let server = Server::start(&[]);
    ok(server.kubectl_version(
        bin,
        &["create", "configmap", "c", "--from-literal=k=v"],
        None,
    ));
    assert_eq!(
        get_json(&server, bin, &["configmap", "c"])["data"],
        json!({"k": "v"})
    );
    ok(server.kubectl_version(bin, &["create", "deployment", "d", "--image=busybox"], None));
    assert_eq!(
        get_json(&server, bin, &["deployment", "d"])["spec"]["replicas"],
        1
    );
}

#[tokio::test]
async fn malformed_protobuf_is_a_bad_request() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let send = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            let req = http::Request::post("/api/v1/namespaces/default/configmaps")
                .header("Content-Type", "application/vnd.kubernetes.protobuf")
                .body(kube::client::Body::from(body))
                .unwrap();
            let resp = client.send(req).await.unwrap();
            let code = resp.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                code,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    for body in [
        b"{\"kind\":\"ConfigMap\"}".to_vec(),
        b"k8s\x00\x0a\xff".to_vec(),
        b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12\x05\x0a\x10".to_vec(),
    ] {
        let (code, status) = send(body).await;
        assert_eq!(code, 400, "{status}");
        assert_eq!(status["reason"], "BadRequest", "{status}");
        assert!(
            status["message"].as_str().unwrap().contains("protobuf"),
            "{status}"
        );
    }
    // A well-formed body from the same client path is created.
    let body = std::fs::read(common::testdata("protobuf/configmap.bin")).unwrap();
    let (code, created) = send(body).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["data"], json!({"a": "b", "c": "d"}));
    // Nothing from the bad bodies was stored.
    let list = get_json(&server, "kubectl", &["configmaps"]);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&"cm1"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| ["cm1", "kube-root-ca.crt"].contains(n)),
        "{names:?}"
    );
}
