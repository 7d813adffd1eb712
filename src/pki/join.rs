//! Joining nodes to a cluster: the join token and the messages of the join protocol.
//!
//! The token follows k3s's format `K10<sha256 hex of the CA bundle>::server:<secret>`: the
//! secret proves the joining node to the server, the hash lets the node verify the CA
//! bundle it downloads (`GET /v1-kaji/cacerts`) before trusting anything the server says.
//! A bare secret is accepted too; the node then trusts the CA it is first shown.
//!
//! A node also proves it is the machine that first joined under its name, as k3s does with
//! its node password: the agent keeps a random password and sends it with every credentials
//! request; the server keeps a salted hash of it ([`hash_node_password`]) and refuses the
//! name to a node with another password while the Node object exists.
//!
//! The server side of the protocol lives in `apiserver::join`, the client side in
//! `cmd::agent`; both speak the types defined here.
//!
//! Depends on: sha2, serde. Must not depend on: `apiserver`, `store`, `config`, any client.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Path of the unauthenticated CA bundle endpoint.
pub const CACERTS_PATH: &str = "/v1-kaji/cacerts";
/// Path of the token-protected node credentials endpoint.
pub const NODE_CREDENTIALS_PATH: &str = "/v1-kaji/node-credentials";
/// The user name the token authenticates as with HTTP basic auth (`node:<secret>`).
pub const BASIC_USER: &str = "node";

/// Users of a node's components other than the kubelet (`system:node:<name>`).
pub const PROXY_USER: &str = "system:kube-proxy";
/// Cluster DNS.
pub const DNS_USER: &str = "system:kaji-dns";
/// The ingress controller.
pub const INGRESS_USER: &str = "system:kaji-ingress";
/// The group every kubelet identity is in.
pub const NODES_GROUP: &str = "system:nodes";

/// Errors parsing a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("the join token is empty")]
    Empty,
    /// The token looks like a full token but is malformed.
    #[error("malformed join token (expected K10<ca hash>::server:<secret> or a bare secret)")]
    Malformed,
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// SHA-256 (lower-case hex) of the CA bundle, when the token carries it.
    pub ca_hash: Option<String>,
    /// The shared secret.
    pub secret: String,
}

impl Token {
    /// Parses a full (`K10...::server:...`) or bare token.
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = s.strip_prefix("K10") else {
            return Ok(Token {
                ca_hash: None,
                secret: s.to_string(),
            });
        };
        let Some((hash, creds)) = rest.split_once("::") else {
            return Err(TokenError::Malformed);
        };
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        let secret = match creds.split_once(':') {
            Some((_user, secret)) => secret,
            None => creds,
        };
        if secret.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(Token {
            ca_hash: Some(hash),
            secret: secret.to_string(),
        })
    }

    /// The full token for a cluster whose CA bundle is `ca_pem`.
    pub fn full(ca_pem: &str, secret: &str) -> String {
        format!("K10{}::server:{secret}", ca_hash(ca_pem))
    }

    /// Whether `ca_pem` is the CA bundle this token names (true for bare tokens).
    pub fn verifies(&self, ca_pem: &str) -> bool {
        self.ca_hash
            .as_deref()
            .is_none_or(|h| constant_time_eq(h.as_bytes(), ca_hash(ca_pem).as_bytes()))
    }
}

/// SHA-256 of a CA bundle as lower-case hex.
pub fn ca_hash(ca_pem: &str) -> String {
    hex(&Sha256::digest(ca_pem.as_bytes()))
}

/// Compares two secrets without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /v1-kaji/node-credentials` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRequest {
    /// The name the node registers with.
    pub node_name: String,
    /// The node's password (see the module docs); required by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_password: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn salted_digest(salt: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    hex(&h.finalize())
}

/// A fresh random node password (32 random bytes, hex).
pub fn new_node_password() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

/// The stored form of a node password: `sha256$<salt>$<hex digest of salt:password>`.
/// Node passwords are random and long, so a salted SHA-256 is enough to keep the stored
/// form from being replayed; it is not meant to slow down guessing of weak passwords.
pub fn hash_node_password(password: &str) -> String {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = hex(&salt);
    let digest = salted_digest(&salt, password);
    format!("sha256${salt}${digest}")
}

/// Whether `password` is the one `stored` was made from (see [`hash_node_password`]).
pub fn verify_node_password(stored: &str, password: &str) -> bool {
    let mut parts = stored.splitn(3, '$');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("sha256"), Some(salt), Some(digest)) => {
            constant_time_eq(salted_digest(salt, password).as_bytes(), digest.as_bytes())
        }
        _ => false,
    }
}

/// A certificate and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// Cluster-wide settings a node takes from the server rather than from its own flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    /// The cluster DNS service IP.
    pub cluster_dns: String,
    /// The cluster domain.
    pub cluster_domain: String,
    /// The service network.
    pub service_cidr: String,
    /// The pod network.
    pub cluster_cidr: String,
    /// Built-in components the server disables cluster-wide (`dns`, `ingress`, ...).
    #[serde(default)]
    pub disable: Vec<String>,
    /// Whether the service proxy is off cluster-wide.
    #[serde(default)]
    pub disable_kube_proxy: bool,
    /// Whether NetworkPolicy enforcement is off cluster-wide.
    #[serde(default)]
    pub disable_network_policy: bool,
}

/// `POST /v1-kaji/node-credentials` response: one client certificate per node component,
/// the cluster CA and the cluster settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentials {
    /// The node these were issued for.
    pub node_name: String,
    /// The cluster CA bundle (verifies the API server; verifies its kubelet client).
    pub ca_pem: String,
    /// `system:node:<name>` in `system:nodes`.
    pub node: CertPair,
    /// [`PROXY_USER`].
    pub proxy: CertPair,
    /// [`DNS_USER`].
    pub dns: CertPair,
    /// [`INGRESS_USER`].
    pub ingress: CertPair,
    /// Cluster settings.
    pub cluster: ClusterSettings,
}

/// The kubelet user of a node.
pub fn node_user(node_name: &str) -> String {
    format!("system:node:{node_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn parse_tokens() {
        let full = Token::full(CA, "s3cret");
        assert!(full.starts_with("K10"));
        assert!(full.ends_with("::server:s3cret"));
        type Want<'a> = Result<(Option<&'a str>, &'a str), TokenError>;
        let cases: &[(&str, Want)] = &[
            ("abc", Ok((None, "abc"))),
            ("  abc\n", Ok((None, "abc"))),
            ("", Err(TokenError::Empty)),
            ("K10abc::server:x", Err(TokenError::Malformed)),
            ("K10nohash", Err(TokenError::Malformed)),
        ];
        for (input, want) in cases {
            let got = Token::parse(input).map(|t| (t.ca_hash, t.secret));
            let want = want
                .clone()
                .map(|(h, s)| (h.map(str::to_string), s.to_string()));
            assert_eq!(got, want, "{input:?}");
        }
        let t = Token::parse(&full).unwrap();
        assert_eq!(t.secret, "s3cret");
        assert_eq!(t.ca_hash.as_deref(), Some(ca_hash(CA).as_str()));
        // A node:secret credential part (k3s's agent tokens) keeps only the secret.
        let t = Token::parse(&format!("K10{}::node:pw", ca_hash(CA))).unwrap();
        assert_eq!(t.secret, "pw");
    }

    #[test]
    fn ca_verification() {
        let t = Token::parse(&Token::full(CA, "x")).unwrap();
        assert!(t.verifies(CA));
        assert!(!t.verifies(&CA.replace("MIIB", "MIIC")));
        assert!(Token::parse("bare").unwrap().verifies("anything"));
    }

    #[test]
    fn node_passwords() {
        let pw = new_node_password();
        assert_eq!(pw.len(), 64);
        assert_ne!(pw, new_node_password());
        let stored = hash_node_password(&pw);
        assert!(stored.starts_with("sha256$"));
        assert!(!stored.contains(&pw));
        assert!(verify_node_password(&stored, &pw));
        assert!(!verify_node_password(&stored, "other"));
        // Each hash has its own salt.
        assert_ne!(stored, hash_node_password(&pw));
        for bad in ["", "sha256$", "md5$a$b", "sha256$salt"] {
            assert!(!verify_node_password(bad, &pw), "{bad:?}");
        }
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
