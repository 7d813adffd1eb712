//! Builds `kube::Client`s for kaji's in-process components (controllers, later the
//! scheduler and the node agent). Each component gets its own identity — a client
//! certificate issued by the cluster CA — and talks to the API server over HTTPS exactly
//! as an external client would.
//!
//! Depends on: `pki`. Must not depend on: `store`, `apiserver`.

use base64::Engine;

use crate::pki;

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server URL is malformed.
    #[error("invalid API server URL {0:?}")]
    Url(String),
    /// Issuing the component certificate failed.
    #[error("issuing client certificate: {0}")]
    Pki(#[from] pki::Error),
    /// kube rejected the configuration.
    #[error("building client: {0}")]
    Kube(#[from] kube::Error),
}

/// Where the API server is and how to mint component identities.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://127.0.0.1:6443`.
    pub url: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The cluster CA key (PEM), to issue component certificates.
    pub ca_key_pem: String,
}

impl ClientConfig {
    /// A client authenticating as `user` in `groups`.
    pub fn client_for(&self, user: &str, groups: &[&str]) -> Result<kube::Client, Error> {
        let (cert, key) = pki::issue_client_cert(&self.ca_pem, &self.ca_key_pem, user, groups)?;
        client_with_cert(&self.url, &self.ca_pem, &cert, &key, user)
    }
}

/// A client for the API server at `url` (verified with `ca_pem`) authenticating with a
/// client certificate issued to `user` (e.g. one a joining node received from the server).
pub fn client_with_cert(
    url: &str,
    ca_pem: &str,
    cert: &str,
    key: &str,
    user: &str,
) -> Result<kube::Client, Error> {
    let uri = url
        .parse::<http::Uri>()
        .map_err(|_| Error::Url(url.to_string()))?;
    let mut config = kube::Config::new(uri);
    config.root_cert = Some(pem_to_der(ca_pem));
    let b64 = base64::engine::general_purpose::STANDARD;
    config.auth_info.client_certificate_data = Some(b64.encode(cert));
    config.auth_info.client_key_data = Some(b64.encode(key).into());
    config.default_namespace = "default".into();
    // The API server names a write's field manager after the client (User-Agent), so
    // components show up in managedFields as upstream's do (`kube-controller-manager`).
    let agent = match user.strip_prefix("system:") {
        Some(n) if n.starts_with("node:") => "kubelet".to_string(),
        Some(n) => n.to_string(),
        None => user.to_string(),
    };
    if let Ok(v) = http::HeaderValue::from_str(&format!(
        "{agent}/{} (linux) kaji",
        crate::config::KUBELET_VERSION
    )) {
        config.headers.push((http::header::USER_AGENT, v));
    }
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    Ok(kube::Client::try_from(config)?)
}

/// DER bytes of every certificate in a PEM bundle.
fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}
