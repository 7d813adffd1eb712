//! The kubeconfig writer.

use std::path::Path;

use base64::Engine;
use serde_json::json;

use super::{Error, write_atomic};

/// Writes a kubeconfig with one cluster, user and context, all named `cluster_name`
/// (`default`), authenticating with a client certificate; atomically, with permission
/// bits `mode`, creating parent directories.
pub fn write_kubeconfig(
    path: &Path,
    mode: u32,
    server_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    cluster_name: &str,
) -> Result<(), Error> {
    let yaml = render(server_url, ca_pem, cert_pem, key_pem, cluster_name)?;
    write_atomic(path, yaml.as_bytes(), mode)
}

fn render(
    server_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    name: &str,
) -> Result<String, Error> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": {"server": server_url, "certificate-authority-data": b64(ca_pem)},
        }],
        "users": [{
            "name": name,
            "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
        }],
        "contexts": [{
            "name": name,
            "context": {"cluster": name, "user": name},
        }],
        "current-context": name,
        "preferences": {},
    });
    serde_saphyr::to_string(&config).map_err(|e| Error::Kubeconfig(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::Value;

    use super::*;

    #[test]
    fn kubeconfig_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("etc/kaji/kaji.yaml");
        let pki = crate::pki::ensure(&crate::pki::PkiConfig {
            dir: tmp.path().join("tls"),
            hostnames: vec![],
            ips: vec![],
            cluster_domain: "cluster.local".into(),
        })
        .unwrap();
        let url = "https://127.0.0.1:6443";
        write_kubeconfig(
            &path,
            0o600,
            url,
            &pki.ca_cert_pem,
            &pki.admin_cert_pem,
            &pki.admin_key_pem,
            "default",
        )
        .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Config");
        assert_eq!(v["current-context"], "default");
        assert_eq!(v["contexts"][0]["name"], "default");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "default");
        assert_eq!(v["contexts"][0]["context"]["user"], "default");
        assert_eq!(v["clusters"][0]["name"], "default");
        assert_eq!(v["clusters"][0]["cluster"]["server"], url);
        assert_eq!(v["users"][0]["name"], "default");
        let decode = |v: &Value| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            String::from_utf8(b).unwrap()
        };
        assert_eq!(
            decode(&v["clusters"][0]["cluster"]["certificate-authority-data"]),
            pki.ca_cert_pem
        );
        assert_eq!(
            decode(&v["users"][0]["user"]["client-certificate-data"]),
            pki.admin_cert_pem
        );
        assert_eq!(
            decode(&v["users"][0]["user"]["client-key-data"]),
            pki.admin_key_pem
        );

        // Rewriting replaces the file (and its mode) atomically, leaving no temporary files.
        write_kubeconfig(
            &path,
            0o644,
            "https://10.0.0.1:6443",
            "ca",
            "cert",
            "key",
            "default",
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}
