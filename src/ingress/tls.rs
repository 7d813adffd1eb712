//! Certificates for the HTTPS listener: chosen per connection by SNI from the Ingresses'
//! `spec.tls` Secrets, with a self-signed default for names no Secret covers (as Traefik
//! does). Replaced as a whole on every table rebuild, so a renewed Secret takes effect for
//! new connections without touching open ones.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Errors loading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM could not be parsed or the key type is unsupported.
    #[error("{0}")]
    Invalid(String),
}

/// Parses a `tls.crt` / `tls.key` pair.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("tls.crt: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("tls.crt: no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Invalid(format!("tls.key: {e}")))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Invalid(format!("tls.key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(certs, key)))
}

/// The self-signed certificate served when no Secret matches.
pub fn default_certificate() -> Result<Arc<CertifiedKey>, TlsError> {
    let generated = rcgen::generate_simple_self_signed(vec!["kaji-ingress.local".to_string()])
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    certified_key(
        generated.cert.pem().as_bytes(),
        generated.signing_key.serialize_pem().as_bytes(),
    )
}

/// SNI certificate selection over a swappable host → certificate map.
#[derive(Debug)]
pub struct SniResolver {
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// A resolver with only the default certificate.
    pub fn new(default: Arc<CertifiedKey>) -> SniResolver {
        SniResolver {
            certs: RwLock::new(HashMap::new()),
            default,
        }
    }

    /// Replaces the host map (keys: lower-case hosts or `*.suffix`).
    pub fn replace(&self, certs: HashMap<String, Arc<CertifiedKey>>) {
        if let Ok(mut guard) = self.certs.write() {
            *guard = certs;
        }
    }

    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().ok()?;
        let name = name.to_lowercase();
        certs.get(&name).cloned().or_else(|| {
            let (_, suffix) = name.split_once('.')?;
            certs.get(&format!("*.{suffix}")).cloned()
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.lookup(n))
            .or_else(|| Some(self.default.clone()))
    }
}

/// The rustls configuration of the HTTPS listener (h2 and HTTP/1.1 by ALPN).
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_generated_pairs_and_rejects_garbage() {
        let g = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
        assert!(
            certified_key(
                g.cert.pem().as_bytes(),
                g.signing_key.serialize_pem().as_bytes()
            )
            .is_ok()
        );
        assert!(certified_key(b"nope", b"nope").is_err());
        let r = SniResolver::new(default_certificate().unwrap());
        let mut m = HashMap::new();
        m.insert(
            "*.example.com".to_string(),
            certified_key(
                g.cert.pem().as_bytes(),
                g.signing_key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        );
        r.replace(m);
        assert!(r.lookup("X.example.com").is_some());
        assert!(r.lookup("example.com").is_none());
    }
}
