//! Service accounts against a real `kaji server`: the `default` account and the
//! `kube-root-ca.crt` ConfigMap in every namespace, `kubectl create token`, bearer-token
//! authentication with those tokens (and its refusal of tampered, expired, foreign-audience
//! and unbound tokens), TokenReview, pod admission (service account defaulting and the
//! projected token volume) and OIDC discovery whose key verifies the tokens.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{Server, ok, stderr, stdout};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, SelfSubjectReview, TokenRequest, TokenRequestSpec, TokenReview,
    TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn api_code(r: Result<impl std::fmt::Debug, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn b64url(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url segment")
}

fn segment_json(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("JWS segment");
    serde_json::from_slice(&b64url(seg)).expect("JSON segment")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn default_sa(client: &kube::Client, ns: &str) -> ServiceAccount {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("serviceaccount default in {ns}"),
        Duration::from_secs(20),
        || {
            let api = api.clone();
            async move { api.get_opt("default").await.ok().flatten() }
        },
    )
    .await
}

/// The cluster CA from the admin kubeconfig.
fn cluster_ca(server: &Server) -> String {
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let data = kc.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority_data
        .clone()
        .unwrap();
    String::from_utf8(STANDARD.decode(data).unwrap()).unwrap()
}

/// A kube-rs client that authenticates with only a bearer token (no client certificate).
async fn token_client(server: &Server, token: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    kube::Client::try_from(cfg).unwrap()
}

/// What a request with this bearer token gets: 403 means authenticated (but not yet
/// authorized: RBAC grants service accounts nothing here), 401 means rejected.
async fn token_status(server: &Server, token: &str) -> u16 {
    let client = token_client(server, token).await;
    let api: Api<ServiceAccount> = Api::namespaced(client, "default");
    match api.get("default").await {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("request failed: {e}"),
    }
}

async fn request_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audiences: Vec<String>,
    bound: Option<BoundObjectReference>,
) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences,
            bound_object_ref: bound,
            expiration_seconds: Some(3600),
        },
        ..Default::default()
    };
    let out = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap();
    out.status.expect("TokenRequest status").token
}

async fn review(client: &kube::Client, token: &str, audiences: Option<Vec<String>>) -> Value {
    let api: Api<TokenReview> = Api::all(client.clone());
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences,
        },
        ..Default::default()
    };
    let out = api.create(&PostParams::default(), &tr).await.unwrap();
    serde_json::to_value(out.status.expect("TokenReview status")).unwrap()
}

/// Signs `claims` with the server's own service account key, as a forger who stole the
/// key (or the server itself) would.
fn sign_with_server_key(server: &Server, claims: &Value) -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let path = server.data_dir().join("server/tls/service-account.key");
    let der = PrivatePkcs8KeyDer::from_pem_file(&path).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .unwrap();
    let header = server_jws_header(server);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// The JWS header the server uses (alg and kid), from its JWKS.
fn server_jws_header(server: &Server) -> Value {
    let jwks: Value =
        serde_json::from_str(&ok(server.kubectl(&["get", "--raw", "/openid/v1/jwks"]))).unwrap();
    json!({"alg": "ES256", "kid": jwks["keys"][0]["kid"]})
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn default_account_and_root_ca_in_every_namespace() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let first = default_sa(&client, "default").await;
    let out = ok(server.kubectl(&["get", "sa", "-n", "default"]));
    assert!(out.lines().any(|l| l.starts_with("default ")), "{out}");

    // A new namespace gets its own account and CA ConfigMap.
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team-a".into());
    ns_api.create(&PostParams::default(), &ns).await.unwrap();
    default_sa(&client, "team-a").await;
    let out = ok(server.kubectl(&["get", "sa", "-n", "team-a"]));
    assert!(out.lines().any(|l| l.starts_with("default ")), "{out}");

    let ca = cluster_ca(&server);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    wait_for(
        "kube-root-ca.crt in team-a",
        Duration::from_secs(20),
        || {
            let cms = cms.clone();
            async move { cms.get_opt("kube-root-ca.crt").await.ok().flatten() }
        },
    )
    .await;
    for ns in ["default", "kube-system", "team-a"] {
        let got = ok(server.kubectl(&[
            "get",
            "cm",
            "kube-root-ca.crt",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]));
        assert_eq!(got.trim_end(), ca.trim_end(), "CA in {ns}");
    }

    // Deleting the account or tampering with the CA map is undone.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    let again = wait_for("default recreated", Duration::from_secs(20), || {
        let sas = sas.clone();
        let old = first.metadata.uid.clone();
        async move {
            sas.get_opt("default")
                .await
                .ok()
                .flatten()
                .filter(|sa| sa.metadata.uid != old)
        }
    })
    .await;
    assert_ne!(again.metadata.uid, first.metadata.uid);

    let mut cm = cms.get("kube-root-ca.crt").await.unwrap();
    cm.data = Some([("ca.crt".to_string(), "bogus".to_string())].into());
    cms.replace("kube-root-ca.crt", &PostParams::default(), &cm)
        .await
        .unwrap();
    wait_for("CA restored", Duration::from_secs(20), || {
        let cms = cms.clone();
        let ca = ca.clone();
        async move {
            let cm = cms.get("kube-root-ca.crt").await.ok()?;
            (cm.data?.get("ca.crt")? == &ca).then_some(())
        }
    })
    .await;
}

fn assert_jwt(out: &str) -> String {
    let token = out.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWS: {out}");
    let header = segment_json(&token, 0);
    assert_eq!(header["alg"], "ES256");
    let claims = segment_json(&token, 1);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(claims["aud"], json!([ISSUER]));
    assert_eq!(claims["kubernetes.io"]["namespace"], "default");
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, 3600);
    token
}

async fn create_token_with(bin: &str) {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_sa(&client, "default").await;
    let out = server.kubectl_version(bin, &["create", "token", "default"], None);
    assert!(out.status.success(), "{bin}: {}", stderr(&out));
    let token = assert_jwt(&stdout(&out));
    assert_eq!(token_status(&server, &token).await, 403);

    // Lifetime and audience flags, and the errors users see.
    let out = ok(server.kubectl_version(
        bin,
        &[
            "create",
            "token",
            "default",
            "--duration=2h",
            "--audience=vault",
        ],
        None,
    ));
    let claims = segment_json(out.trim(), 1);
    assert_eq!(claims["aud"], json!(["vault"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7200
    );
    let out = server.kubectl_version(bin, &["create", "token", "nope"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("serviceaccounts \"nope\" not found"),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl_version(bin, &["create", "token", "default", "--duration=5m"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("may not specify a duration less than 10 minutes"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn create_token_kubectl_1_27() {
    create_token_with("kubectl.1.27").await;
}

/// kubectl 1.32+ sends the TokenRequest body as protobuf.
#[tokio::test]
async fn create_token_kubectl_1_33_protobuf_body() {
    create_token_with("kubectl.1.33").await;
}

/// The default `kubectl` (dispatching to 1.33 for this server; a protobuf body).
#[tokio::test]
async fn create_token_default_kubectl() {
    create_token_with("kubectl").await;
}

#[tokio::test]
async fn bearer_tokens_and_token_review() {
    let mut server = Server::start(&[]);
    let client = server.client().await;
    let sa = default_sa(&client, "default").await;
    let sa_uid = sa.metadata.uid.clone().unwrap();
    let token = request_token(&client, "default", "default", vec![], None).await;

    // A valid token is authenticated (RBAC then decides: 403, not 401).
    let client_sa = token_client(&server, &token).await;
    let err = api_code(
        Api::<ServiceAccount>::namespaced(client_sa, "default")
            .get("default")
            .await,
    );
    assert_eq!(err, 403);
    // ... and whoami (SelfSubjectReview, allowed to every authenticated user) names it.
    let whoami: Api<SelfSubjectReview> = Api::all(token_client(&server, &token).await);
    let me = whoami
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let me = me.status.unwrap().user_info.unwrap();
    assert_eq!(
        me.username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    assert_eq!(me.uid.as_deref(), Some(sa_uid.as_str()));
    assert!(
        me.extra
            .unwrap_or_default()
            .contains_key("authentication.kubernetes.io/credential-id")
    );

    // Tampered: another payload under the same signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = segment_json(&token, 1);
    claims["sub"] = json!("system:serviceaccount:kube-system:default");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(token_status(&server, &forged).await, 401);
    let mut sig = b64url(parts[2]);
    sig[5] ^= 0x80;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(token_status(&server, &bad_sig).await, 401);
    assert_eq!(token_status(&server, "not-a-jwt").await, 401);

    // Properly signed by the server's key: valid, expired, foreign audience, stale uid.
    let base = json!({
        "iss": ISSUER, "sub": "system:serviceaccount:default:default", "aud": [ISSUER],
        "iat": now() - 10, "nbf": now() - 10, "exp": now() + 600, "jti": "test",
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "default", "uid": sa_uid}},
    });
    assert_eq!(
        token_status(&server, &sign_with_server_key(&server, &base)).await,
        403
    );
    let mut expired = base.clone();
    expired["iat"] = json!(now() - 7200);
    expired["nbf"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let expired = sign_with_server_key(&server, &expired);
    assert_eq!(token_status(&server, &expired).await, 401);
    let mut other_aud = base.clone();
    other_aud["aud"] = json!(["vault"]);
    assert_eq!(
        token_status(&server, &sign_with_server_key(&server, &other_aud)).await,
        401
    );
    let mut stale = base.clone();
    stale["kubernetes.io"]["serviceaccount"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    assert_eq!(
        token_status(&server, &sign_with_server_key(&server, &stale)).await,
        401
    );

    // TokenReview.
    let st = review(&client, &token, None).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(
        st["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(st["user"]["uid"], sa_uid.as_str());
    let groups: Vec<&str> = st["user"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]
    );
    assert_eq!(st["audiences"], json!([ISSUER]));
    let jti = segment_json(&token, 1)["jti"].as_str().unwrap().to_string();
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/credential-id"],
        json!([format!("JTI={jti}")])
    );
    let st = review(&client, &expired, None).await;
    assert_ne!(st["authenticated"], true);
    assert!(st["error"].as_str().unwrap().contains("expired"), "{st}");

    // A token for another audience is good for that audience only.
    let vault = request_token(&client, "default", "default", vec!["vault".into()], None).await;
    assert_eq!(token_status(&server, &vault).await, 401);
    let st = review(&client, &vault, Some(vec!["vault".into()])).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["audiences"], json!(["vault"]));
    let st = review(&client, &vault, None).await;
    assert_ne!(st["authenticated"], true);

    // The signing key survives a restart: tokens stay valid.
    server.stop();
    server.spawn();
    assert_eq!(token_status(&server, &token).await, 403);

    // Deleting the account invalidates its tokens.
    let client = server.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(token_status(&server, &token).await, 401);
}

fn test_pod(name: &str, spec: Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    if let Some(extra) = spec.as_object() {
        for (k, v) in extra {
            p["spec"][k] = v.clone();
        }
    }
    serde_json::from_value(p).unwrap()
}

#[tokio::test]
async fn pod_admission_and_pod_bound_tokens() {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_sa(&client, "default").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Defaulted account and the projected token volume, mounted in every container.
    let mut p = test_pod(
        "web",
        json!({"initContainers": [{"name": "init", "image": "busybox"}]}),
    );
    p = pods.create(&PostParams::default(), &p).await.unwrap();
    let spec = serde_json::to_value(p.spec.clone().unwrap()).unwrap();
    assert_eq!(spec["serviceAccountName"], "default");
    let vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .expect("token volume")
        .clone();
    let vname = vol["name"].as_str().unwrap();
    assert_eq!(vname.len(), "kube-api-access-".len() + 5);
    let sources = &vol["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(vol["projected"]["defaultMode"], 420);
    for list in ["containers", "initContainers"] {
        let mounts = &spec[list][0]["volumeMounts"];
        assert_eq!(
            mounts,
            &json!([{"name": vname, "mountPath": MOUNT_PATH, "readOnly": true}]),
            "{list}"
        );
    }
    // kubectl shows the same.
    let out = ok(server.kubectl(&[
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.spec.containers[0].volumeMounts[0].mountPath}",
    ]));
    assert_eq!(out, MOUNT_PATH);

    // Opting out on the pod.
    let p = test_pod("no-token", json!({"automountServiceAccountToken": false}));
    let p = pods.create(&PostParams::default(), &p).await.unwrap();
    let spec = p.spec.unwrap();
    assert!(spec.volumes.unwrap_or_default().is_empty());
    assert!(
        spec.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .is_empty()
    );

    // A missing account is refused, with upstream's message.
    let p = test_pod("orphan", json!({"serviceAccountName": "ghost"}));
    match pods.create(&PostParams::default(), &p).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert_eq!(
                s.message,
                "pods \"orphan\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }

    // A token bound to the pod works while the pod exists, and stops when it is deleted.
    let web = pods.get("web").await.unwrap();
    let bound = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web".into()),
        uid: web.metadata.uid.clone(),
    };
    let token = request_token(&client, "default", "default", vec![], Some(bound.clone())).await;
    let claims = segment_json(&token, 1);
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web");
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        json!(web.metadata.uid)
    );
    assert_eq!(token_status(&server, &token).await, 403);
    let st = review(&client, &token, None).await;
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web"])
    );
    // A stale uid in the reference is a conflict.
    let mut wrong = bound.clone();
    wrong.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            bound_object_ref: Some(wrong),
            expiration_seconds: None,
        },
        ..Default::default()
    };
    assert_eq!(
        api_code(
            sas.create_token_request("default", &PostParams::default(), &req)
                .await
        ),
        409
    );
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("pod gone", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move { matches!(pods.get_opt("web").await, Ok(None)).then_some(()) }
    })
    .await;
    assert_eq!(token_status(&server, &token).await, 401);
    let st = review(&client, &token, None).await;
    assert_ne!(st["authenticated"], true);
    assert!(st["error"].as_str().unwrap().contains("not found"), "{st}");
}

#[tokio::test]
async fn oidc_discovery_keys_verify_tokens() {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    let server = Server::start(&[]);
    let client = server.client().await;
    default_sa(&client, "default").await;
    let token = request_token(&client, "default", "default", vec![], None).await;

    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::get(path).body(vec![]).unwrap();
            let text = client.request_text(req).await.unwrap();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    // Service accounts themselves may read the discovery documents (the bootstrap
    // `system:service-account-issuer-discovery` binding), as pods verifying tokens do.
    let as_sa = token_client(&server, &token).await;
    for path in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        let req = http::Request::get(path).body(vec![]).unwrap();
        as_sa.request_text(req).await.unwrap();
    }

    let oidc = get("/.well-known/openid-configuration").await;
    assert_eq!(oidc["issuer"], ISSUER);
    assert_eq!(oidc["jwks_uri"], format!("{ISSUER}/openid/v1/jwks"));
    assert_eq!(oidc["response_types_supported"], json!(["id_token"]));
    assert_eq!(oidc["subject_types_supported"], json!(["public"]));
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );

    let jwks = get("/openid/v1/jwks").await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert_eq!(segment_json(&token, 0)["kid"], key["kid"]);

    // kid = base64url(SHA-256(DER SubjectPublicKeyInfo)) of the key in service-account.pub.
    let mut point = vec![4u8];
    point.extend(b64url(key["x"].as_str().unwrap()));
    point.extend(b64url(key["y"].as_str().unwrap()));
    assert_eq!(point.len(), 65);
    let pub_pem =
        std::fs::read_to_string(server.data_dir().join("server/tls/service-account.pub")).unwrap();
    let spki: String = pub_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let spki = STANDARD.decode(spki).unwrap();
    assert!(spki.ends_with(&point));
    use sha2::Digest;
    assert_eq!(
        key["kid"],
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&spki))
    );

    // The published key verifies the token's ES256 signature, and only for its content.
    let (input, sig) = token.rsplit_once('.').unwrap();
    let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
    verifier
        .verify(input.as_bytes(), &b64url(sig))
        .expect("signature verifies");
    let mut tampered = input.as_bytes().to_vec();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert!(verifier.verify(&tampered, &b64url(sig)).is_err());
}
