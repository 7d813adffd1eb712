//! Bad input gets the upstream HTTP code and a `Status` with a useful message, and the
//! store is unchanged.

mod common;

use common::Server;
use http::Request;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value, Vec<String>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .unwrap();
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (code, v, warnings)
}

async fn count(api: &Api<ConfigMap>) -> (usize, String) {
    let l = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = l
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        // The root CA publisher adds this one asynchronously.
        .filter(|n| n != "kube-root-ca.crt")
        .collect();
    (names.len(), names.join(","))
}

#[tokio::test]
async fn rejected_requests_change_nothing() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut existing = ConfigMap::default();
    existing.metadata.name = Some("keep".into());
    let existing = api.create(&PostParams::default(), &existing).await.unwrap();
    let before = count(&api).await;
    let cms = "/api/v1/namespaces/default/configmaps";

    // Malformed JSON.
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/json",
        b"{\"apiVersion\": \"v1\", \"kind\": ".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "BadRequest");
    // Malformed YAML.
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    // Valid YAML is accepted.
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n".to_vec(),
    )
    .await;
    assert_eq!(code, 201, "{s}");
    api.delete("from-yaml", &Default::default()).await.unwrap();
    // Wrong apiVersion / kind.
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/json",
        br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    assert!(s["message"].as_str().unwrap().contains("apps/v1"), "{s}");
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/json",
        br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    // Wrong field types.
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":5}}"#
            .to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    // Invalid names.
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name", "{s}");
    let (code, s, _) = send(
        &client,
        "POST",
        cms,
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    // Oversized body.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let (code, s, _) = send(&client, "POST", cms, "application/json", big.into_bytes()).await;
    assert_eq!(code, 413, "{s}");
    // Missing namespace.
    let (code, s, _) = send(
        &client,
        "POST",
        "/api/v1/namespaces/nope/configmaps",
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 404, "{s}");
    assert_eq!(s["message"], "namespaces \"nope\" not found");
    // Namespace in the body contradicting the URL.
    let (code, s, _) = send(&client, "POST", cms, "application/json", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"kube-system"}}"#.to_vec()).await;
    assert_eq!(code, 400, "{s}");
    // Unknown kinds and paths.
    let (code, s, _) = send(
        &client,
        "GET",
        "/api/v1/namespaces/default/frobnicators",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 404, "{s}");
    let (code, _, _) = send(
        &client,
        "GET",
        "/apis/nope.example.com/v1/things",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 404);
    // Unsupported media type.
    let (code, s, _) = send(&client, "POST", cms, "text/plain", b"hello".to_vec()).await;
    assert_eq!(code, 415, "{s}");
    // Stale resourceVersion.
    let mut stale = existing.clone();
    stale.metadata.resource_version = Some("1".into());
    let body = serde_json::to_vec(&stale).unwrap();
    let (code, s, _) = send(
        &client,
        "PUT",
        &format!("{cms}/keep"),
        "application/json",
        body,
    )
    .await;
    assert_eq!(code, 409, "{s}");
    assert_eq!(s["reason"], "Conflict");
    // Name in body differs from the URL.
    let mut other = existing.clone();
    other.metadata.name = Some("other".into());
    let (code, s, _) = send(
        &client,
        "PUT",
        &format!("{cms}/keep"),
        "application/json",
        serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    // Strict field validation rejects unknown fields; Warn accepts with a warning.
    let unknown =
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"strict"},"dataa":{"a":"b"}}"#
            .to_vec();
    let (code, s, _) = send(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=Strict"),
        "application/json",
        unknown.clone(),
    )
    .await;
    assert_eq!(code, 400, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"dataa\""),
        "{s}"
    );
    assert_eq!(
        count(&api).await,
        before,
        "nothing was written by rejected requests"
    );
    let (code, _, warnings) = send(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=Warn"),
        "application/json",
        unknown,
    )
    .await;
    assert_eq!(code, 201);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("unknown field \\\"dataa\\\"")
                || w.contains("unknown field \"dataa\"")),
        "{warnings:?}"
    );
    let strict = api.get("strict").await.unwrap();
    assert!(strict.data.is_none(), "unknown fields are dropped");
}

#[test]
fn unauthenticated_requests_get_401() {
    let server = Server::start(&[]);
    let base = format!("https://127.0.0.1:{}", server.port);
    let code = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{base}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code("/api/v1/namespaces"), "401");
    assert_eq!(code("/apis"), "401");
    assert_eq!(code("/healthz"), "200");
    assert_eq!(code("/livez"), "200");
    assert_eq!(code("/readyz"), "200");
    assert_eq!(code("/version"), "200");
    // A bad bearer token is 401 too.
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Bearer wrong",
            &format!("{base}/api"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

#[test]
fn bearer_tokens_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "admin-token,alice,u1,\"system:masters\"\nplain-token,bob,u2\n",
    )
    .unwrap();
    let server = Server::start(&[&format!("--token-auth-file={}", tokens.display())]);
    let get = |token: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Authorization: Bearer {token}"),
                &format!("https://127.0.0.1:{}/api/v1/namespaces", server.port),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("admin-token"), "200");
    assert_eq!(
        get("plain-token"),
        "403",
        "authenticated but not authorized"
    );
}
