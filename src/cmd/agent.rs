//! `kaji agent`: joins this machine to a server as a worker node and runs the node agent
//! (the same `crate::agent::run` as the agent inside `kaji server`).
//!
//! Joining: fetch the cluster CA (`GET /v1-kaji/cacerts`), check it against the hash in a
//! full token (`K10<hash>::server:<secret>`; a bare secret trusts it on first use), then
//! ask for the node's client certificates and the cluster settings with the secret
//! (`POST /v1-kaji/node-credentials`) with the node's password (`<data-dir>/agent/
//! node-password`, random, made on first start; the server refuses the node name to a
//! machine with another password while the Node exists). The answer is kept in
//! `<data-dir>/agent/credentials.json` (0600) and reused on restart, until the node
//! certificate comes within `pki::RENEW_BEFORE_DAYS` of expiry: the agent then joins again
//! with its token and password for fresh certificates.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentClients, AgentConfig};
use crate::config::AgentCommandArgs;
use crate::pki::join::{self as proto, ClusterSettings, NodeCredentials, Token};

/// Name of the stored credentials file in `<data-dir>/agent/`.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// Name of the node password file in `<data-dir>/agent/`.
pub const PASSWORD_FILE: &str = "node-password";

/// How long to wait between attempts while the server cannot be reached.
const RETRY: Duration = Duration::from_secs(2);

/// What `kaji agent` keeps between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    /// The server URL the credentials were issued by.
    server: String,
    /// The credentials.
    credentials: NodeCredentials,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: AgentCommandArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = normalize_url(
        args.server
            .as_deref()
            .context("--server (or KAJI_URL) is required: the URL of the server to join")?,
    )?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --token-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let token = token
        .map(|t| Token::parse(&t))
        .transpose()
        .context("--token")?;

    let agent_dir = args.data_dir.join("agent");
    create_private_dir(&agent_dir)?;
    let mut cfg = AgentConfig::from_args(
        &args.agent,
        args.data_dir.clone(),
        false,
        std::net::IpAddr::from([10, 43, 0, 10]),
        "cluster.local",
    )
    .context("agent settings")?;

    let shutdown = CancellationToken::new();
    let signals = spawn_signal_handler(shutdown.clone())?;
    let creds_path = agent_dir.join(CREDENTIALS_FILE);
    let password = node_password(&agent_dir.join(PASSWORD_FILE))?;
    let creds = match load_stored(&creds_path, &server, &cfg.node_name, token.as_ref()) {
        Some(c) => {
            tracing::info!(path = %creds_path.display(), "using stored node credentials");
            c
        }
        None => {
            let Some(token) = &token else {
                bail!("--token (or KAJI_TOKEN, --token-file) is required to join {server}");
            };
            let creds = tokio::select! {
                c = join(&server, token, &cfg.node_name, &password) => c?,
                _ = shutdown.cancelled() => bail!("interrupted while joining {server}"),
            };
            store(&creds_path, &server, &creds)?;
            tracing::info!(%server, node = %cfg.node_name, "joined the cluster");
            creds
        }
    };
    apply_cluster_settings(&mut cfg, &creds.cluster)?;
    cfg.ca_pem = creds.ca_pem.clone();
    let clients = AgentClients::from_credentials(&server, &creds.ca_pem, &creds)
        .context("building API clients from the node credentials")?;
    let agent = tokio::select! {
        a = crate::agent::run(clients, cfg, shutdown.clone()) => a.context("starting the node agent")?,
        _ = shutdown.cancelled() => bail!("interrupted while starting the node agent"),
    };
    tracing::info!(%server, "kaji agent is ready");
    let _ = signals.await;
    let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    tracing::info!("kaji agent stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT; the handle completes then.
fn spawn_signal_handler(
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
        shutdown.cancel();
    }))
}

/// `https://host:port` without a trailing slash.
fn normalize_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--server {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        bail!("--server {url:?}: expected https://HOST:PORT");
    }
    Ok(url.to_string())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    Ok(())
}

/// Stored credentials, if they were issued by `server` for `node_name` and (with a full
/// token) for the CA the token names.
fn load_stored(
    path: &Path,
    server: &str,
    node_name: &str,
    token: Option<&Token>,
) -> Option<NodeCredentials> {
    let text = std::fs::read_to_string(path).ok()?;
    let stored: Stored = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "ignoring unreadable stored credentials");
            return None;
        }
    };
    let reason = if stored.server != server {
        Some("they were issued by another server")
    } else if stored.credentials.node_name != node_name {
        Some("they were issued for another node name")
    } else if token.is_some_and(|t| !t.verifies(&stored.credentials.ca_pem)) {
        Some("the token names another cluster CA")
    } else {
        None
    };
    if let Some(reason) = reason {
        tracing::info!(path = %path.display(), "not reusing stored credentials: {reason}");
        return None;
    }
    if let Some(expiry) = crate::pki::not_after(&stored.credentials.node.cert_pem)
        && crate::pki::due_for_renewal(expiry)
    {
        if token.is_some() {
            tracing::info!(path = %path.display(), expiry, "the node certificates expire soon: joining again to renew them");
            return None;
        }
        tracing::warn!(
            path = %path.display(),
            expiry,
            "the node certificates expire soon; start the agent with --token to renew them"
        );
    }
    Some(stored.credentials)
}

/// The node's password: read from `path`, or made and stored there (0600) on first use.
fn node_password(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        if !text.is_empty() {
            return Ok(text.to_string());
        }
    }
    let password = proto::new_node_password();
    crate::pki::write_atomic(path, password.as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "made this node's password");
    Ok(password)
}

fn store(path: &Path, server: &str, creds: &NodeCredentials) -> anyhow::Result<()> {
    let stored = Stored {
        server: server.to_string(),
        credentials: creds.clone(),
    };
    let text = serde_json::to_vec_pretty(&stored)?;
    crate::pki::write_atomic(path, &text, 0o600)?;
    Ok(())
}

/// Why a join attempt failed: worth retrying (the server is not reachable yet) or not.
#[derive(Debug)]
enum JoinError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Joins `server`, retrying while it cannot be reached.
async fn join(
    server: &str,
    token: &Token,
    node_name: &str,
    password: &str,
) -> anyhow::Result<NodeCredentials> {
    let mut attempt = 0u32;
    loop {
        match join_once(server, token, node_name, password).await {
            Ok(c) => return Ok(c),
            Err(JoinError::Fatal(e)) => return Err(e),
            Err(JoinError::Retry(e)) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(15) {
                    tracing::warn!(%server, "cannot reach the server yet, retrying: {e:#}");
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn kube_config(server: &str) -> anyhow::Result<kube::Config> {
    let uri: http::Uri = server.parse().context("server URL")?;
    let mut config = kube::Config::new(uri);
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
}

/// Maps a request failure: API errors (the server answered) are final, the rest retried.
fn classify(what: &str, err: kube::Error) -> JoinError {
    match err {
        kube::Error::Api(s) if s.code == 401 => JoinError::Fatal(anyhow::anyhow!(
            "the server refused the join token: {}",
            s.message
        )),
        kube::Error::Api(s) if s.code == 404 => JoinError::Fatal(anyhow::anyhow!(
            "{what}: the server does not serve the join endpoints (is it a kaji server?)"
        )),
        // 409: another join for the same name was in flight.
        kube::Error::Api(s) if s.code >= 500 || s.code == 409 => {
            JoinError::Retry(anyhow::anyhow!("{what}: {}", s.message))
        }
        kube::Error::Api(s) => JoinError::Fatal(anyhow::anyhow!("{what}: {}", s.message)),
        other => JoinError::Retry(anyhow::Error::new(other).context(what.to_string())),
    }
}

async fn join_once(
    server: &str,
    token: &Token,
    node_name: &str,
    password: &str,
) -> Result<NodeCredentials, JoinError> {
    // 1. The CA bundle, over TLS not yet verified: it is checked against the token.
    let mut insecure = kube_config(server).map_err(JoinError::Fatal)?;
    insecure.accept_invalid_certs = true;
    let client = kube::Client::try_from(insecure)
        .map_err(|e| JoinError::Fatal(anyhow::Error::new(e).context("TLS client")))?;
    let req = http::Request::get(proto::CACERTS_PATH)
        .body(Vec::new())
        .map_err(|e| JoinError::Fatal(e.into()))?;
    let ca_pem = client
        .request_text(req)
        .await
        .map_err(|e| classify("fetching the cluster CA", e))?;
    if !ca_pem.contains("BEGIN CERTIFICATE") {
        return Err(JoinError::Fatal(anyhow::anyhow!(
            "{server}{} did not return a CA certificate",
            proto::CACERTS_PATH
        )));
    }
    if token.ca_hash.is_none() {
        tracing::warn!(
            %server,
            ca_hash = %proto::ca_hash(&ca_pem),
            "the join token carries no CA hash: trusting the CA the server presents \
             (use the full K10... token from <data-dir>/server/token to verify it)"
        );
    } else if !token.verifies(&ca_pem) {
        return Err(JoinError::Fatal(anyhow::anyhow!(
            "the cluster CA served by {server} does not match the join token's CA hash \
             (is --server the right server, or is someone in between?)"
        )));
    }

    // 2. The node credentials, over TLS verified with that CA.
    let mut config = kube_config(server).map_err(JoinError::Fatal)?;
    config.root_cert = Some(pem_certs(&ca_pem));
    let client = kube::Client::try_from(config)
        .map_err(|e| JoinError::Fatal(anyhow::Error::new(e).context("TLS client")))?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        proto::BASIC_USER,
        token.secret
    ));
    let body = serde_json::to_vec(&proto::CredentialsRequest {
        node_name: node_name.to_string(),
        node_password: Some(password.to_string()),
    })
    .map_err(|e| JoinError::Fatal(e.into()))?;
    let req = http::Request::post(proto::NODE_CREDENTIALS_PATH)
        .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| JoinError::Fatal(e.into()))?;
    let text = client
        .request_text(req)
        .await
        .map_err(|e| classify("requesting node credentials", e))?;
    let creds: NodeCredentials = serde_json::from_str(&text).map_err(|e| {
        JoinError::Fatal(anyhow::Error::new(e).context("invalid node credentials response"))
    })?;
    if creds.node_name != node_name {
        return Err(JoinError::Fatal(anyhow::anyhow!(
            "the server issued credentials for node {:?}, not {node_name:?}",
            creds.node_name
        )));
    }
    Ok(creds)
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// Takes the cluster-wide settings from the server: its networks, DNS and the
/// components it disables (on top of the ones this node's own flags disable).
fn apply_cluster_settings(cfg: &mut AgentConfig, cluster: &ClusterSettings) -> anyhow::Result<()> {
    cfg.cluster_dns = cluster
        .cluster_dns
        .parse()
        .with_context(|| format!("cluster DNS {:?} from the server", cluster.cluster_dns))?;
    cfg.cluster_domain = cluster.cluster_domain.clone();
    cfg.service_cidr = cluster.service_cidr.clone();
    cfg.cluster_cidr = cluster.cluster_cidr.clone();
    for c in &cluster.disable {
        if !cfg.disable.contains(c) {
            cfg.disable.push(c.clone());
        }
    }
    cfg.kube_proxy &= !cluster.disable_kube_proxy;
    cfg.network_policy &= !cluster.disable_network_policy;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn creds(node: &str, ca: &str) -> NodeCredentials {
        let pair = proto::CertPair {
            cert_pem: "C".into(),
            key_pem: "K".into(),
        };
        NodeCredentials {
            node_name: node.into(),
            ca_pem: ca.into(),
            node: pair.clone(),
            proxy: pair.clone(),
            dns: pair.clone(),
            ingress: pair,
            cluster: ClusterSettings {
                cluster_dns: "10.99.0.10".into(),
                cluster_domain: "corp.local".into(),
                service_cidr: "10.99.0.0/16".into(),
                cluster_cidr: "10.98.0.0/16".into(),
                disable: vec!["dns".into()],
                disable_kube_proxy: true,
                disable_network_policy: false,
            },
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("https://10.0.0.1:6443/").unwrap(),
            "https://10.0.0.1:6443"
        );
        assert!(normalize_url("http://10.0.0.1:6443").is_err());
        assert!(normalize_url("10.0.0.1:6443").is_err());
    }

    #[test]
    fn stored_credentials_are_reused_only_when_they_fit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CREDENTIALS_FILE);
        store(&path, "https://a:6443", &creds("n1", "CA1")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let full = Token::parse(&Token::full("CA1", "s")).unwrap();
        let other = Token::parse(&Token::full("CA2", "s")).unwrap();
        let bare = Token::parse("s").unwrap();
        let cases: &[(&str, &str, Option<&Token>, bool)] = &[
            ("https://a:6443", "n1", None, true),
            ("https://a:6443", "n1", Some(&full), true),
            ("https://a:6443", "n1", Some(&bare), true),
            ("https://a:6443", "n1", Some(&other), false),
            ("https://b:6443", "n1", None, false),
            ("https://a:6443", "n2", None, false),
        ];
        for (server, node, token, reused) in cases {
            assert_eq!(
                load_stored(&path, server, node, *token).is_some(),
                *reused,
                "{server} {node} {token:?}"
            );
        }
    }

    #[test]
    fn node_password_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PASSWORD_FILE);
        let first = node_password(&path).unwrap();
        assert_eq!(first.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(node_password(&path).unwrap(), first);
    }

    #[test]
    fn cluster_settings_override_defaults() {
        let args = crate::config::AgentArgs {
            node_name: Some("n1".into()),
            node_ip: Some("10.0.0.5".parse().unwrap()),
            disable: vec!["ingress".into()],
            ..Default::default()
        };
        let mut cfg = AgentConfig::from_args(
            &args,
            PathBuf::from("/tmp/x"),
            false,
            "10.43.0.10".parse().unwrap(),
            "cluster.local",
        )
        .unwrap();
        apply_cluster_settings(&mut cfg, &creds("n1", "CA").cluster).unwrap();
        assert_eq!(cfg.cluster_dns.to_string(), "10.99.0.10");
        assert_eq!(cfg.cluster_domain, "corp.local");
        assert_eq!(cfg.service_cidr, "10.99.0.0/16");
        assert_eq!(cfg.cluster_cidr, "10.98.0.0/16");
        assert!(!cfg.enabled("dns") && !cfg.enabled("ingress") && cfg.enabled("servicelb"));
        assert!(!cfg.kube_proxy);
        assert!(cfg.network_policy);
    }
}
