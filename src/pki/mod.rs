//! Cluster PKI: the cluster CA, the API server's serving certificate, client certificates
//! (the admin identity and in-process component identities), identity extraction from
//! client certificates, and the kubeconfig writer.
//!
//! Material lives in `<data-dir>/server/tls` (directory 0700, keys 0600) and is generated
//! on first start, then reused: the CA is never replaced automatically; leaf certificates
//! are re-issued by the same CA when they no longer match what is asked for (SANs, key,
//! issuer) or come within [`RENEW_BEFORE_DAYS`] days of expiry.
//!
//! Depends only on config-free inputs (paths, names, addresses) plus rcgen, x509-parser
//! and serde-saphyr. Must not depend on: `apiserver`, `store`, `config`, or any client.

pub mod join;
mod kubeconfig;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

pub use kubeconfig::write_kubeconfig;

/// CA certificate file name.
pub const CA_CERT: &str = "server-ca.crt";
/// CA key file name.
pub const CA_KEY: &str = "server-ca.key";
/// API server serving certificate file name.
pub const SERVING_CERT: &str = "serving-kube-apiserver.crt";
/// API server serving key file name.
pub const SERVING_KEY: &str = "serving-kube-apiserver.key";
/// Admin client certificate file name.
pub const ADMIN_CERT: &str = "client-admin.crt";
/// Admin client key file name.
pub const ADMIN_KEY: &str = "client-admin.key";

/// Common name of the serving certificate.
pub const SERVING_CN: &str = "kube-apiserver";
/// User name of the admin identity.
pub const ADMIN_USER: &str = "system:admin";
/// Group of the admin identity (bypasses authorization).
pub const ADMIN_GROUP: &str = "system:masters";

/// CA lifetime.
pub const CA_VALIDITY_DAYS: u64 = 3650;
/// Leaf (serving and client) certificate lifetime.
pub const LEAF_VALIDITY_DAYS: u64 = 365;
/// Leaf certificates closer than this to expiry are re-issued at start.
pub const RENEW_BEFORE_DAYS: u64 = 90;

const DAY: u64 = 24 * 60 * 60;
/// Certificates start this long in the past, to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// Errors preparing or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused to generate a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// The CA certificate or key is unusable.
    #[error("cluster CA: {0}")]
    Ca(String),
    /// A name cannot go into a certificate.
    #[error("invalid certificate name {0:?}")]
    Name(String),
    /// rcgen can put at most two `O` attributes into a subject.
    #[error("at most 2 organizations (groups) per client certificate are supported, got {0}")]
    TooManyOrganizations(usize),
    /// The kubeconfig could not be serialized.
    #[error("serializing kubeconfig: {0}")]
    Kubeconfig(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |source| Error::Generate { what, source }
}

/// What the server's certificates must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiConfig {
    /// `<data-dir>/server/tls`.
    pub dir: PathBuf,
    /// Extra DNS SANs for the serving certificate (host name, `--tls-san`); entries that
    /// parse as IP addresses become IP SANs.
    pub hostnames: Vec<String>,
    /// Extra IP SANs (advertise address, first service IP, ...).
    pub ips: Vec<IpAddr>,
    /// Cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
}

/// The server's certificate material, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerPki {
    /// Cluster CA certificate.
    pub ca_cert_pem: String,
    /// Cluster CA key (to issue component identities).
    pub ca_key_pem: String,
    /// API server serving certificate (the leaf; clients trust the CA).
    pub serving_cert_pem: String,
    /// API server serving key.
    pub serving_key_pem: String,
    /// Admin client certificate (`system:admin`, group `system:masters`).
    pub admin_cert_pem: String,
    /// Admin client key.
    pub admin_key_pem: String,
}

impl fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("serving_cert_pem", &self.serving_cert_pem)
            .field("admin_cert_pem", &self.admin_cert_pem)
            .finish_non_exhaustive()
    }
}

/// Loads the server's certificates from `cfg.dir`, generating or re-issuing what is
/// missing or no longer fits.
pub fn ensure(cfg: &PkiConfig) -> Result<ServerPki, Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.dir)
        .map_err(io_err(&cfg.dir))?;
    fs::set_permissions(&cfg.dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&cfg.dir))?;

    let (ca_cert_pem, ca_key_pem) = ensure_ca(&cfg.dir)?;
    let ca = Ca::parse(&ca_cert_pem, &ca_key_pem)?;

    let (dns, ips) = serving_sans(cfg);
    let serving = load_pair(&cfg.dir, SERVING_CERT, SERVING_KEY)?.filter(|(cert, key)| {
        leaf_reusable(&ca, cert, key, SERVING_CERT, |c| covers_sans(c, &dns, &ips))
    });
    let (serving_cert_pem, serving_key_pem) = match serving {
        Some(pair) => pair,
        None => {
            let mut params = leaf_params(SERVING_CN, &[])?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for name in &dns {
                let san = name
                    .clone()
                    .try_into()
                    .map_err(|_| Error::Name(name.clone()))?;
                params.subject_alt_names.push(SanType::DnsName(san));
            }
            params
                .subject_alt_names
                .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
            let pair = ca.issue(params, "serving certificate")?;
            store_pair(&cfg.dir, SERVING_CERT, SERVING_KEY, &pair)?;
            tracing::info!(dns = ?dns, ips = ?ips, "issued API server serving certificate");
            pair
        }
    };

    let admin = load_pair(&cfg.dir, ADMIN_CERT, ADMIN_KEY)?.filter(|(cert, key)| {
        leaf_reusable(&ca, cert, key, ADMIN_CERT, |c| {
            identity(c) == Some((ADMIN_USER.to_string(), vec![ADMIN_GROUP.to_string()]))
        })
    });
    let (admin_cert_pem, admin_key_pem) = match admin {
        Some(pair) => pair,
        None => {
            let pair = issue_client_cert(&ca_cert_pem, &ca_key_pem, ADMIN_USER, &[ADMIN_GROUP])?;
            store_pair(&cfg.dir, ADMIN_CERT, ADMIN_KEY, &pair)?;
            tracing::info!("issued admin client certificate");
            pair
        }
    };

    Ok(ServerPki {
        ca_cert_pem,
        ca_key_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
    })
}

/// Issues a client certificate (EKU clientAuth) for user `cn` in groups `orgs` (at most
/// two), signed by the given CA. Returns (certificate PEM, PKCS#8 key PEM).
pub fn issue_client_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cn: &str,
    orgs: &[&str],
) -> Result<(String, String), Error> {
    let ca = Ca::parse(ca_cert_pem, ca_key_pem)?;
    let mut params = leaf_params(cn, orgs)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    ca.issue(params, format!("client certificate for {cn}"))
}

/// When the first certificate in `pem` stops being valid (seconds since the epoch);
/// `None` if it does not parse.
pub fn not_after(pem: &str) -> Option<i64> {
    let der = pem_to_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether a certificate expiring at `not_after` (seconds since the epoch) is due for
/// renewal: it expires within [`RENEW_BEFORE_DAYS`] days, or has expired.
pub fn due_for_renewal(not_after: i64) -> bool {
    let renew_at = unix_now().as_secs() + RENEW_BEFORE_DAYS * DAY;
    u64::try_from(not_after).unwrap_or(0) < renew_at
}

/// The user (subject CN) and groups (subject O attributes) a client certificate
/// authenticates as; `None` if it does not parse or has no CN.
pub fn identity_from_der(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    identity(&cert)
}

fn identity(cert: &X509Certificate<'_>) -> Option<(String, Vec<String>)> {
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Some((cn, groups))
}

// ---------------------------------------------------------------------------------------
// CA

/// A loaded CA: its certificate (to check leaves against) and an issuer.
struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn parse(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let der = pem_to_der(cert_pem).ok_or_else(|| Error::Ca("certificate is not PEM".into()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Ca(format!("key: {e}")))?;
        {
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| Error::Ca(format!("certificate: {e}")))?;
            if !cert.is_ca() {
                return Err(Error::Ca("certificate is not a CA certificate".into()));
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(Error::Ca("key does not match the certificate".into()));
            }
            if !cert.validity().is_valid() {
                let not_after = cert.validity().not_after;
                tracing::warn!(%not_after, "the cluster CA certificate is not valid now");
            }
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| Error::Ca(format!("certificate: {e}")))?;
        Ok(Ca { der, issuer })
    }

    fn issue(
        &self,
        params: CertificateParams,
        what: impl Into<String>,
    ) -> Result<(String, String), Error> {
        let what = what.into();
        let key = KeyPair::generate().map_err(gen_err(format!("key for {what}")))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Whether `cert` carries a valid signature by this CA.
    fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        let Ok((_, ca)) = X509Certificate::from_der(&self.der) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// Loads the CA, generating it when there is none. A CA certificate without its key is an
/// error: replacing the CA would silently invalidate every issued credential.
fn ensure_ca(dir: &Path) -> Result<(String, String), Error> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert), Some(key)) => Ok((cert, key)),
        (Some(_), None) => Err(Error::Ca(format!(
            "{} exists but {} does not; restore the key or remove both to create a new CA",
            cert_path.display(),
            key_path.display()
        ))),
        // No certificate: a first start (possibly interrupted after writing the key).
        (None, _) => {
            let key = KeyPair::generate().map_err(gen_err("CA key"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(
                DnType::CommonName,
                format!("kaji-server-ca@{}", unix_now().as_secs()),
            );
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, CA_VALIDITY_DAYS);
            params.serial_number = Some(random_serial());
            let cert = params
                .self_signed(&key)
                .map_err(gen_err("CA certificate"))?;
            let pair = (cert.pem(), key.serialize_pem());
            // Key first: a crash in between leaves no certificate, which regenerates both.
            write_atomic(&key_path, pair.1.as_bytes(), 0o600)?;
            write_atomic(&cert_path, pair.0.as_bytes(), 0o644)?;
            tracing::info!(dir = %dir.display(), "generated cluster CA");
            Ok(pair)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Leaves

fn leaf_params(cn: &str, orgs: &[&str]) -> Result<CertificateParams, Error> {
    if cn.is_empty() {
        return Err(Error::Name(cn.to_string()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // rcgen keeps one value per attribute type; a second `O` goes in under its OID as a
    // custom type, which encodes identically.
    match orgs {
        [] => {}
        [o] => params.distinguished_name.push(DnType::OrganizationName, *o),
        [o1, o2] => {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *o1);
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 10]), *o2);
        }
        more => return Err(Error::TooManyOrganizations(more.len())),
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, LEAF_VALIDITY_DAYS);
    Ok(params)
}

/// Whether an existing leaf can be kept: it parses, matches its key, is signed by the CA,
/// is not close to expiry, and passes `fits`.
fn leaf_reusable(
    ca: &Ca,
    cert_pem: &str,
    key_pem: &str,
    name: &str,
    fits: impl FnOnce(&X509Certificate<'_>) -> bool,
) -> bool {
    let Some(der) = pem_to_der(cert_pem) else {
        tracing::warn!(file = name, "unparsable certificate; re-issuing");
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        tracing::warn!(file = name, "unparsable certificate; re-issuing");
        return false;
    };
    let key_matches = KeyPair::from_pem(key_pem)
        .is_ok_and(|k| cert.public_key().subject_public_key.data.as_ref() == k.public_key_raw());
    let reason = if !key_matches {
        "key does not match"
    } else if !ca.signed(&cert) {
        "not signed by the cluster CA"
    } else if due_for_renewal(cert.validity().not_after.timestamp()) {
        "expires soon"
    } else if !fits(&cert) {
        "names changed"
    } else {
        return true;
    };
    tracing::info!(file = name, reason, "re-issuing certificate");
    false
}

/// DNS names (lowercase) and IPs the serving certificate must carry.
fn serving_sans(cfg: &PkiConfig) -> (BTreeSet<String>, BTreeSet<IpAddr>) {
    let mut dns: BTreeSet<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    let domain = cfg.cluster_domain.trim_matches('.');
    if !domain.is_empty() {
        dns.insert(format!(
            "kubernetes.default.svc.{}",
            domain.to_ascii_lowercase()
        ));
    }
    let mut ips: BTreeSet<IpAddr> = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
    .into();
    for h in &cfg.hostnames {
        let h = h.trim();
        match h.parse::<IpAddr>() {
            Ok(ip) => {
                ips.insert(ip);
            }
            Err(_) if !h.is_empty() => {
                dns.insert(h.to_ascii_lowercase());
            }
            Err(_) => {}
        }
    }
    ips.extend(cfg.ips.iter().copied());
    (dns, ips)
}

fn covers_sans(cert: &X509Certificate<'_>, dns: &BTreeSet<String>, ips: &BTreeSet<IpAddr>) -> bool {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut have_dns = BTreeSet::new();
    let mut have_ips = BTreeSet::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => {
                have_dns.insert(d.to_ascii_lowercase());
            }
            GeneralName::IPAddress(b) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                    have_ips.insert(IpAddr::from(v4));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                    have_ips.insert(IpAddr::from(v6));
                }
            }
            _ => {}
        }
    }
    dns.is_subset(&have_dns) && ips.is_subset(&have_ips)
}

// ---------------------------------------------------------------------------------------
// Helpers

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn set_validity(params: &mut CertificateParams, days: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = unix_now();
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + Duration::from_secs(days * DAY);
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// DER of the first certificate in a PEM string.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (pem.label == "CERTIFICATE").then_some(pem.contents)
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn load_pair(dir: &Path, cert: &str, key: &str) -> Result<Option<(String, String)>, Error> {
    Ok(read_optional(&dir.join(cert))?.zip(read_optional(&dir.join(key))?))
}

fn store_pair(dir: &Path, cert: &str, key: &str, pair: &(String, String)) -> Result<(), Error> {
    write_atomic(&dir.join(key), pair.1.as_bytes(), 0o600)?;
    write_atomic(&dir.join(cert), pair.0.as_bytes(), 0o644)
}

/// Writes `contents` to `path` atomically (temporary file in the same directory, fsync,
/// rename, fsync of the directory) with permission bits `mode`, creating parent
/// directories.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; not every file system supports fsync on directories.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn cfg(dir: &Path) -> PkiConfig {
        PkiConfig {
            dir: dir.join("server/tls"),
            hostnames: vec!["node1".into()],
            ips: vec!["10.43.0.1".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from(pem_to_der(pem).unwrap())
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ensure_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let first = ensure(&c).unwrap();
        let second = ensure(&c).unwrap();
        assert_eq!(first, second);
        assert_eq!(mode(&c.dir), 0o700);
        for key in [CA_KEY, SERVING_KEY, ADMIN_KEY] {
            assert_eq!(mode(&c.dir.join(key)), 0o600, "{key}");
        }
        assert_eq!(
            fs::read_to_string(c.dir.join(CA_CERT)).unwrap(),
            first.ca_cert_pem
        );
        let ca = pem_to_der(&first.ca_cert_pem).unwrap();
        let (_, ca) = X509Certificate::from_der(&ca).unwrap();
        let cn = ca
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        assert!(cn.starts_with("kaji-server-ca@"), "{cn}");
        assert!(ca.is_ca());
        let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
            / (365 * 86400);
        assert_eq!(years, 10);
        // Keys are not printed.
        assert!(!format!("{first:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn new_sans_reissue_the_serving_cert_with_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path());
        let first = ensure(&c).unwrap();
        c.hostnames.push("api.example.com".into());
        c.hostnames.push("192.168.1.10".into());
        let second = ensure(&c).unwrap();
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.admin_cert_pem, second.admin_cert_pem);
        assert_ne!(first.serving_cert_pem, second.serving_cert_pem);
        let verifier = server_verifier(&second.ca_cert_pem);
        let leaf = der(&second.serving_cert_pem);
        for name in ["api.example.com", "192.168.1.10", "node1", "10.43.0.1"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap();
        }
        // Dropping a SAN keeps the (still covering) certificate.
        c.hostnames.pop();
        assert_eq!(ensure(&c).unwrap(), second);
    }

    #[test]
    fn a_new_ca_reissues_the_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let first = ensure(&c).unwrap();
        fs::remove_file(c.dir.join(CA_CERT)).unwrap();
        let second = ensure(&c).unwrap();
        assert_ne!(first.ca_cert_pem, second.ca_cert_pem);
        assert_ne!(first.serving_cert_pem, second.serving_cert_pem);
        assert_ne!(first.admin_cert_pem, second.admin_cert_pem);
        server_verifier(&second.ca_cert_pem)
            .verify_server_cert(
                &der(&second.serving_cert_pem),
                &[],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn a_ca_without_its_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        ensure(&c).unwrap();
        fs::remove_file(c.dir.join(CA_KEY)).unwrap();
        assert!(matches!(ensure(&c), Err(Error::Ca(_))));
    }

    fn server_verifier(ca_pem: &str) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn serving_cert_verifies_with_webpki() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure(&cfg(tmp.path())).unwrap();
        let verifier = server_verifier(&pki.ca_cert_pem);
        let leaf = der(&pki.serving_cert_pem);
        for name in [
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "kubernetes",
            "localhost",
            "127.0.0.1",
            "::1",
            "node1",
            "10.43.0.1",
        ] {
            let sn = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &sn, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], UnixTime::now())
                .is_err()
        );
        // The admin certificate is a client certificate, not a server one.
        let admin = der(&pki.admin_cert_pem);
        let localhost = ServerName::try_from("localhost").unwrap();
        assert!(
            verifier
                .verify_server_cert(&admin, &[], &localhost, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn client_certs_verify_and_carry_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure(&cfg(tmp.path())).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&pki.ca_cert_pem)).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let admin = der(&pki.admin_cert_pem);
        verifier
            .verify_client_cert(&admin, &[], UnixTime::now())
            .unwrap();
        assert_eq!(
            identity_from_der(&admin),
            Some((
                "system:admin".to_string(),
                vec!["system:masters".to_string()]
            ))
        );

        let (cert, key) = issue_client_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "system:kube-scheduler",
            &[],
        )
        .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let d = der(&cert);
        verifier
            .verify_client_cert(&d, &[], UnixTime::now())
            .unwrap();
        assert_eq!(
            identity_from_der(&d),
            Some(("system:kube-scheduler".to_string(), vec![]))
        );

        let (cert, _) =
            issue_client_cert(&pki.ca_cert_pem, &pki.ca_key_pem, "alice", &["dev", "ops"]).unwrap();
        assert_eq!(
            identity_from_der(&der(&cert)),
            Some((
                "alice".to_string(),
                vec!["dev".to_string(), "ops".to_string()]
            ))
        );
        assert!(matches!(
            issue_client_cert(&pki.ca_cert_pem, &pki.ca_key_pem, "bob", &["a", "b", "c"]),
            Err(Error::TooManyOrganizations(3))
        ));
        assert!(identity_from_der(b"not a certificate").is_none());
        // A foreign CA's key does not go with this CA's certificate.
        let other = ensure(&cfg(&tmp.path().join("other"))).unwrap();
        assert!(matches!(
            issue_client_cert(&pki.ca_cert_pem, &other.ca_key_pem, "x", &[]),
            Err(Error::Ca(_))
        ));
    }

    #[test]
    fn tls_handshake_with_the_issued_material() {
        use std::io::{Read, Write};

        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure(&cfg(tmp.path())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = |pem: &str| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&pki.ca_cert_pem)).unwrap();
        let roots = Arc::new(roots);
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![der(&pki.serving_cert_pem)], key(&pki.serving_key_pem))
            .unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![der(&pki.admin_cert_pem)], key(&pki.admin_key_pem))
            .unwrap();
        let name = ServerName::try_from("kubernetes.default.svc").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        client.writer().write_all(b"ping").unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let peer = server.peer_certificates().unwrap();
        assert_eq!(identity_from_der(&peer[0]).unwrap().0, "system:admin");
    }
}
