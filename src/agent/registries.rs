//! Private registry configuration, k3s style: `/etc/kaji/registries.yaml` (or the file
//! given with `--private-registry`) lists registry `mirrors` (endpoints tried for a
//! registry name) and per-host `configs` (credentials and TLS settings). This module owns
//! parsing that file and rendering it as the registry section of containerd 1.6's CRI
//! plugin configuration, which `containerd::render_config` appends.
//!
//! Depends on: `serde`, `serde-saphyr`. Must not depend on: `store`, `apiserver`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default location of the private registry file.
pub const DEFAULT_PATH: &str = "/etc/kaji/registries.yaml";

/// Errors reading the private registry file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("private registry file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid registries.yaml.
    #[error("private registry file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The contents of registries.yaml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// Registry name (`docker.io`, `host:port`, `*`) → its mirrors.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Registry host (`host:port`) → credentials and TLS settings.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

/// The mirrors of one registry name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Endpoint URLs (`http://host:port` or `https://host[:port]`), tried in order.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// Settings for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Credentials.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// Registry credentials (`username`/`password`, a base64 `auth`, or an identity token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// base64 of `username:password`.
    #[serde(default)]
    pub auth: Option<String>,
    /// An identity (refresh) token.
    #[serde(default)]
    pub identity_token: Option<String>,
}

/// Registry TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Client certificate (PEM file).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key (PEM file).
    #[serde(default)]
    pub key_file: Option<String>,
    /// CA bundle that signs the registry's certificate (PEM file).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Skip verifying the registry's certificate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The registry file the agent uses: the flag's if given, else the default one if it
/// exists, else none.
pub fn resolve_path(flag: Option<&Path>) -> Option<PathBuf> {
    match flag {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    }
}

impl Registries {
    /// Reads and validates a registries.yaml file.
    pub fn load(path: &Path) -> Result<Registries, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Registries::parse(&text).map_err(|message| Error::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates registries.yaml text (an empty document means no settings).
    pub fn parse(text: &str) -> Result<Registries, String> {
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        let regs: Option<Registries> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let regs = regs.unwrap_or_default();
        regs.validate()?;
        Ok(regs)
    }

    fn validate(&self) -> Result<(), String> {
        for (name, mirror) in &self.mirrors {
            if name.is_empty() {
                return Err("mirrors: empty registry name".into());
            }
            for ep in &mirror.endpoint {
                let rest = ep
                    .strip_prefix("http://")
                    .or_else(|| ep.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(format!(
                        "mirrors.{name}.endpoint: {ep:?} is not an http:// or https:// URL"
                    ));
                }
            }
        }
        for (host, cfg) in &self.configs {
            if host.is_empty() {
                return Err("configs: empty registry host".into());
            }
            if let Some(auth) = &cfg.auth
                && auth.username.is_some() != auth.password.is_some()
            {
                return Err(format!(
                    "configs.{host}.auth: username and password go together"
                ));
            }
            if let Some(tls) = &cfg.tls
                && tls.cert_file.is_some() != tls.key_file.is_some()
            {
                return Err(format!(
                    "configs.{host}.tls: cert_file and key_file go together"
                ));
            }
        }
        Ok(())
    }

    /// The containerd 1.6 CRI registry section (TOML, appended to config.toml); empty if
    /// there is nothing to configure.
    pub fn to_containerd_toml(&self) -> String {
        let mut out = String::new();
        if self.mirrors.is_empty() && self.configs.is_empty() {
            return out;
        }
        const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\".registry";
        out.push_str("\n# From the private registry file (registries.yaml).\n");
        for (name, mirror) in &self.mirrors {
            let endpoints: Vec<String> = mirror.endpoint.iter().map(|e| quote(e)).collect();
            let _ = writeln!(
                out,
                "[{CRI}.mirrors.{}]\n  endpoint = [{}]",
                quote(name),
                endpoints.join(", ")
            );
        }
        for (host, cfg) in &self.configs {
            if let Some(auth) = &cfg.auth {
                let _ = writeln!(out, "[{CRI}.configs.{}.auth]", quote(host));
                for (key, value) in [
                    ("username", &auth.username),
                    ("password", &auth.password),
                    ("auth", &auth.auth),
                    ("identitytoken", &auth.identity_token),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(out, "  {key} = {}", quote(v));
                    }
                }
            }
            if let Some(tls) = &cfg.tls {
                let _ = writeln!(out, "[{CRI}.configs.{}.tls]", quote(host));
                let _ = writeln!(out, "  insecure_skip_verify = {}", tls.insecure_skip_verify);
                for (key, value) in [
                    ("ca_file", &tls.ca_file),
                    ("cert_file", &tls.cert_file),
                    ("key_file", &tls.key_file),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(out, "  {key} = {}", quote(v));
                    }
                }
            }
        }
        out
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
mirrors:
  docker.io:
    endpoint: ["http://127.0.0.1:5000"]
  "127.0.0.1:5000":
    endpoint:
    - http://127.0.0.1:5000
configs:
  "registry.example.com:5443":
    auth: {username: alice, password: "s3\"cret"}
    tls:
      insecure_skip_verify: true
      ca_file: /etc/ssl/ca.pem
      cert_file: /etc/ssl/client.pem
      key_file: /etc/ssl/client.key
"#;

    #[test]
    fn parses_k3s_format() {
        let r = Registries::parse(FULL).unwrap();
        assert_eq!(
            r.mirrors["docker.io"].endpoint,
            vec!["http://127.0.0.1:5000"]
        );
        assert_eq!(
            r.mirrors["127.0.0.1:5000"].endpoint,
            vec!["http://127.0.0.1:5000"]
        );
        let c = &r.configs["registry.example.com:5443"];
        assert_eq!(c.auth.as_ref().unwrap().username.as_deref(), Some("alice"));
        let tls = c.tls.as_ref().unwrap();
        assert!(tls.insecure_skip_verify);
        assert_eq!(tls.key_file.as_deref(), Some("/etc/ssl/client.key"));
    }

    #[test]
    fn invalid_files() {
        for (text, want) in [
            ("mirrors: [1, 2]", ""),
            ("mirrorz: {}", "mirrorz"),
            (
                "mirrors: {docker.io: {endpoint: [\"127.0.0.1:5000\"]}}",
                "not an http:// or https:// URL",
            ),
            (
                "mirrors: {docker.io: {endpoints: [\"http://x\"]}}",
                "endpoints",
            ),
            (
                "configs: {r: {auth: {username: a}}}",
                "username and password go together",
            ),
            (
                "configs: {r: {tls: {cert_file: /c}}}",
                "cert_file and key_file go together",
            ),
            ("configs: {r: {tls: {insecure_skip_verify: maybe}}}", ""),
        ] {
            let err = Registries::parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn empty_file_is_no_settings() {
        for text in ["", "\n", "---\n", "mirrors: {}\n"] {
            let r = Registries::parse(text).unwrap();
            assert_eq!(r.to_containerd_toml(), "", "{text:?}");
        }
    }

    #[test]
    fn renders_containerd_cri_registry_section() {
        let toml = Registries::parse(FULL).unwrap().to_containerd_toml();
        for want in [
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"http://127.0.0.1:5000\"]",
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"127.0.0.1:5000\"]\n  endpoint = [\"http://127.0.0.1:5000\"]",
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"registry.example.com:5443\".auth]\n  username = \"alice\"\n  password = \"s3\\\"cret\"",
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"registry.example.com:5443\".tls]\n  insecure_skip_verify = true\n  ca_file = \"/etc/ssl/ca.pem\"\n  cert_file = \"/etc/ssl/client.pem\"\n  key_file = \"/etc/ssl/client.key\"",
        ] {
            assert!(toml.contains(want), "missing {want}\nin:\n{toml}");
        }
    }

    #[test]
    fn quotes_toml_strings() {
        for (s, want) in [
            ("a", "\"a\""),
            ("a\"b", "\"a\\\"b\""),
            ("c:\\d", "\"c:\\\\d\""),
            ("x\ny", "\"x\\ny\""),
            ("\u{1}", "\"\\u0001\""),
        ] {
            assert_eq!(quote(s), want);
        }
    }

    #[test]
    fn default_path_only_when_present() {
        assert_eq!(
            resolve_path(Some(Path::new("/x/r.yaml"))),
            Some(PathBuf::from("/x/r.yaml"))
        );
        assert_eq!(
            resolve_path(None).is_some(),
            Path::new(DEFAULT_PATH).exists()
        );
    }
}
