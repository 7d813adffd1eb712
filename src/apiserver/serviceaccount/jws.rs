//! Compact JWS (RFC 7515) with ES256 (ECDSA P-256 + SHA-256, RFC 7518 §3.4) over `ring`,
//! and the key material around it: PKCS#8 / SPKI PEM files, the JWK form of the public
//! key (RFC 7517/7518 §6.2) and the key id (`kid`).
//!
//! Pure functions and one key type; no I/O except [`SigningKey::load_or_create`]. Depends
//! on `ring`, `base64`, `sha2`, `rustls`'s PEM reader.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The only signing algorithm we issue and accept.
pub const ALG: &str = "ES256";

/// Largest token we try to parse (a real one is well under 2 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// DER prefix of a P-256 `SubjectPublicKeyInfo`: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (65 bytes, no unused bits) }; the uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a key could not be loaded or a token could not be produced or verified.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Reading or writing a key file failed.
    #[error("{path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The token is not three base64url segments of JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names another algorithm.
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    /// The header names a key we do not have.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// Signing failed (the system random source is unavailable).
    #[error("signing failed")]
    Sign,
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding (padding and the standard alphabet are rejected).
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// The DER `SubjectPublicKeyInfo` of an uncompressed P-256 point.
pub fn spki_der(point: &[u8]) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    der
}

/// The uncompressed point inside a P-256 `SubjectPublicKeyInfo`, if that is what it is.
pub fn point_from_spki(der: &[u8]) -> Option<&[u8]> {
    let point = der.strip_prefix(&P256_SPKI_PREFIX[..])?;
    (point.len() == 65 && point[0] == 0x04).then_some(point)
}

/// The key id: base64url(SHA-256(DER public key)), as upstream derives it.
pub fn key_id(point: &[u8]) -> String {
    b64url(&Sha256::digest(spki_der(point)))
}

/// The public key as a JWK (`kty` EC, `crv` P-256).
pub fn jwk(point: &[u8], kid: &str) -> Value {
    let (x, y) = if point.len() == 65 {
        (&point[1..33], &point[33..65])
    } else {
        (&[][..], &[][..])
    };
    json!({
        "use": "sig",
        "kty": "EC",
        "kid": kid,
        "crv": "P-256",
        "alg": ALG,
        "x": b64url(x),
        "y": b64url(y),
    })
}

/// PEM armour with 64-character lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An ES256 signing key with its public half.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    point: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A fresh key and its PKCS#8 DER.
    pub fn generate() -> Result<(SigningKey, Vec<u8>), Error> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| Error::Sign)?;
        let der = doc.as_ref().to_vec();
        let key = SigningKey::from_pkcs8(&der).map_err(|_| Error::Sign)?;
        Ok((key, der))
    }

    /// A key from PKCS#8 DER (P-256, public key included, as ring and OpenSSL write it).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a PKCS#8 ECDSA P-256 private key ({e})"))?;
        let point = pair.public_key().as_ref().to_vec();
        let kid = key_id(&point);
        Ok(SigningKey {
            pair,
            rng,
            point,
            kid,
        })
    }

    /// Loads `<dir>/<name>` (PEM `PRIVATE KEY`), or creates it (mode 0600), and keeps its
    /// public half beside it with the extension `.pub` (PEM `PUBLIC KEY`; `sa.key` →
    /// `sa.pub`). Returns the key and whether it was created.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<(SigningKey, bool), Error> {
        let path = dir.join(name);
        let pub_path = path.with_extension("pub");
        let file_err = |p: &Path, message: String| Error::KeyFile {
            path: p.display().to_string(),
            message,
        };
        let (key, created) = match std::fs::read(&path) {
            Ok(bytes) => {
                let der = PrivatePkcs8KeyDer::from_pem_slice(&bytes)
                    .map_err(|e| file_err(&path, format!("no PEM PRIVATE KEY block ({e})")))?;
                let key = SigningKey::from_pkcs8(der.secret_pkcs8_der())
                    .map_err(|m| file_err(&path, m))?;
                (key, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
                let (key, der) = SigningKey::generate()?;
                write_file(&path, pem("PRIVATE KEY", &der).as_bytes(), 0o600)
                    .map_err(|e| file_err(&path, e.to_string()))?;
                (key, true)
            }
            Err(e) => return Err(file_err(&path, e.to_string())),
        };
        let pub_pem = pem("PUBLIC KEY", &spki_der(&key.point));
        let current = std::fs::read_to_string(&pub_path).unwrap_or_default();
        if current != pub_pem {
            write_file(&pub_path, pub_pem.as_bytes(), 0o644)
                .map_err(|e| file_err(&pub_path, e.to_string()))?;
        }
        Ok((key, created))
    }

    /// The uncompressed public point (65 bytes).
    pub fn public_point(&self) -> &[u8] {
        &self.point
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `payload` as a compact JWS with header `{"alg":"ES256","kid":...}`.
    pub fn sign(&self, payload: &Value) -> Result<String, Error> {
        let header = json!({"alg": ALG, "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(payload.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| Error::Sign)?;
        Ok(format!("{signing_input}.{}", b64url(sig.as_ref())))
    }

    /// Verifies a compact JWS made with this key and returns its payload.
    pub fn verify(&self, token: &str) -> Result<Value, Error> {
        verify(&self.point, &self.kid, token)
    }
}

/// Splits a compact JWS and decodes its payload without checking the signature (to tell
/// whose token it is before verifying it).
pub fn peek_payload(token: &str) -> Result<Value, Error> {
    let parts = split(token)?;
    decode_json(parts[1])
}

fn split(token: &str) -> Result<[&str; 3], Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::Malformed("token too long"));
    }
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Ok([h, p, s]),
        _ => Err(Error::Malformed("not a compact JWS")),
    }
}

fn decode_json(segment: &str) -> Result<Value, Error> {
    let bytes = b64url_decode(segment).ok_or(Error::Malformed("invalid base64url"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| Error::Malformed("invalid JSON"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(Error::Malformed("not a JSON object"))
    }
}

/// Verifies a compact ES256 JWS against an uncompressed P-256 point and returns its
/// payload. A `kid` in the header must be `kid`; `crit` headers are refused.
pub fn verify(point: &[u8], kid: &str, token: &str) -> Result<Value, Error> {
    let [h, p, s] = split(token)?;
    let header = decode_json(h)?;
    match header.get("alg").and_then(Value::as_str) {
        Some(ALG) => {}
        Some(other) => return Err(Error::Algorithm(other.to_string())),
        None => return Err(Error::Malformed("no alg in header")),
    }
    if header.get("crit").is_some() {
        return Err(Error::Malformed("unsupported crit header"));
    }
    if let Some(k) = header.get("kid") {
        match k.as_str() {
            Some(k) if k == kid => {}
            _ => {
                return Err(Error::UnknownKey(
                    k.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    let sig = b64url_decode(s).ok_or(Error::Malformed("invalid base64url"))?;
    if sig.len() != 64 {
        return Err(Error::Signature);
    }
    let signing_input = &token[..h.len() + 1 + p.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| Error::Signature)?;
    decode_json(p)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let k = key();
        let payload = json!({"sub": "system:serviceaccount:default:default", "n": 1});
        let token = k.sign(&payload).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(k.verify(&token).unwrap(), payload);
        let header = decode_json(token.split('.').next().unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": k.kid()}));
    }

    #[test]
    fn verification_failures() {
        let k = key();
        let other = key();
        let token = k.sign(&json!({"a": 1})).unwrap();
        let [h, p, s] = split(&token).unwrap();
        let forged_payload = format!("{h}.{}.{s}", b64url(br#"{"a":2}"#));
        let mut sig = b64url_decode(s).unwrap();
        sig[10] ^= 1;
        let bad_sig = format!("{h}.{p}.{}", b64url(&sig));
        let none_alg = format!("{}.{p}.", b64url(br#"{"alg":"none"}"#));
        let hs256 = format!("{}.{p}.{s}", b64url(br#"{"alg":"HS256"}"#));
        let no_kid = {
            let h2 = b64url(br#"{"alg":"ES256"}"#);
            let input = format!("{h2}.{p}");
            let sig = k.pair.sign(&k.rng, input.as_bytes()).unwrap();
            format!("{input}.{}", b64url(sig.as_ref()))
        };
        let cases: Vec<(&str, String, Result<(), Error>)> = vec![
            ("valid", token.clone(), Ok(())),
            ("header without kid", no_kid, Ok(())),
            ("changed payload", forged_payload, Err(Error::Signature)),
            ("flipped signature bit", bad_sig, Err(Error::Signature)),
            ("alg none", none_alg, Err(Error::Algorithm("none".into()))),
            ("alg HS256", hs256, Err(Error::Algorithm("HS256".into()))),
            (
                "two segments",
                format!("{h}.{p}"),
                Err(Error::Malformed("not a compact JWS")),
            ),
            (
                "four segments",
                format!("{token}.x"),
                Err(Error::Malformed("not a compact JWS")),
            ),
            (
                "padding",
                format!("{h}=.{p}.{s}"),
                Err(Error::Malformed("invalid base64url")),
            ),
            (
                "huge",
                "a".repeat(MAX_TOKEN_LEN + 1),
                Err(Error::Malformed("token too long")),
            ),
        ];
        for (name, tok, want) in cases {
            assert_eq!(k.verify(&tok).map(|_| ()), want, "{name}");
        }
        // Another key: its kid is unknown, and without a kid the signature fails.
        assert_eq!(
            other.verify(&token).map(|_| ()),
            Err(Error::UnknownKey(k.kid().to_string()))
        );
        assert_eq!(
            verify(other.public_point(), k.kid(), &token).map(|_| ()),
            Err(Error::Signature)
        );
    }

    #[test]
    fn kid_is_base64url_sha256_of_spki_der() {
        let k = key();
        let der = spki_der(k.public_point());
        assert_eq!(der.len(), 91);
        assert_eq!(point_from_spki(&der), Some(k.public_point()));
        let want = URL_SAFE_NO_PAD.encode(Sha256::digest(&der));
        assert_eq!(k.kid(), want);
        assert_eq!(k.kid().len(), 43);
        assert!(!k.kid().contains(['=', '+', '/']));
    }

    #[test]
    fn jwk_carries_the_point_coordinates() {
        let k = key();
        let j = jwk(k.public_point(), k.kid());
        let x = b64url_decode(j["x"].as_str().unwrap()).unwrap();
        let y = b64url_decode(j["y"].as_str().unwrap()).unwrap();
        let mut point = vec![4u8];
        point.extend(x);
        point.extend(y);
        assert_eq!(point, k.public_point());
        assert_eq!(j["kty"], "EC");
        assert_eq!(j["crv"], "P-256");
        assert_eq!(j["alg"], "ES256");
        assert_eq!(j["use"], "sig");
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (k1, created) = SigningKey::load_or_create(dir.path(), "sa.key").unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("sa.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pub_pem = std::fs::read_to_string(dir.path().join("sa.pub")).unwrap();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let (k2, created) = SigningKey::load_or_create(dir.path(), "sa.key").unwrap();
        assert!(!created);
        assert_eq!(k1.kid(), k2.kid());
        let token = k1.sign(&json!({"x": 1})).unwrap();
        assert!(k2.verify(&token).is_ok());
        // Garbage in the key file is an error, not a silent new key.
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        assert!(matches!(
            SigningKey::load_or_create(dir.path(), "bad.key"),
            Err(Error::KeyFile { .. })
        ));
    }
}
