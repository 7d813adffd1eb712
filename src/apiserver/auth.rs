//! Authentication and authorization.
//!
//! Authentication: client certificates verified against the cluster CA during the TLS
//! handshake (CN = user, O = groups), and bearer tokens from a static token file
//! (`token,user,uid,"group1,group2"` per line, as upstream's `--token-auth-file`).
//! Authorization is behind the [`Authorizer`] trait, implemented by RBAC
//! (`super::rbac::Rbac`); kaji's own components are authorized by the RBAC bootstrap
//! policy like any other user.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::request::RequestInfo;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// UID, if known.
    pub uid: String,
    /// Groups, including the implicit `system:authenticated`.
    pub groups: Vec<String>,
    /// Extra attributes (from impersonation or the authenticator), key → values.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with the given name and groups plus `system:authenticated`.
    pub fn new(
        name: impl Into<String>,
        uid: impl Into<String>,
        mut groups: Vec<String>,
    ) -> UserInfo {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo {
            name: name.into(),
            uid: uid.into(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Errors loading authentication configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token file could not be read.
    #[error("reading token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of the token file is malformed.
    #[error("token file {path} line {line}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Static bearer tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenAuthenticator {
    tokens: HashMap<String, UserInfo>,
}

impl TokenAuthenticator {
    /// Loads a token file: `token,user,uid[,"group1,group2"]` per line; `#` comments.
    pub fn from_file(path: &Path) -> Result<TokenAuthenticator, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                return Err(Error::Parse {
                    path: path.display().to_string(),
                    line: i + 1,
                    reason: "expected token,user,uid[,groups]".into(),
                });
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                UserInfo::new(fields[1].clone(), fields[2].clone(), groups),
            );
        }
        Ok(TokenAuthenticator { tokens })
    }

    /// Adds one token.
    pub fn insert(&mut self, token: impl Into<String>, user: UserInfo) {
        self.tokens.insert(token.into(), user);
    }

    /// Looks up a bearer token.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        self.tokens.get(token).cloned()
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, with a reason for the 403 message.
    Deny(String),
}

/// Decides whether a user may perform a request.
pub trait Authorizer: Send + Sync {
    /// Authorizes one request.
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision;
}

/// The upstream 403 message for a denied request.
pub fn forbidden_message(user: &UserInfo, req: &RequestInfo) -> String {
    if !req.is_resource {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.name, req.verb, req.path
        );
    }
    let resource = match &req.subresource {
        Some(s) => format!("{}/{}", req.resource, s),
        None => req.resource.clone(),
    };
    let what = match &req.name {
        Some(n) => format!(
            "{} \"{}\" is forbidden",
            qualified(&req.group, &req.resource),
            n
        ),
        None => format!("{} is forbidden", qualified(&req.group, &req.resource)),
    };
    let scope = match &req.namespace {
        Some(ns) if req.resource != "namespaces" => format!(" in the namespace \"{ns}\""),
        _ => " at the cluster scope".to_string(),
    };
    format!(
        "{what}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}",
        user.name, req.verb, req.group
    )
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(&p, "# comment\nabc,alice,u1,\"dev,ops\"\ndef,bob,u2\n").unwrap();
        let t = TokenAuthenticator::from_file(&p).unwrap();
        let a = t.authenticate("abc").unwrap();
        assert_eq!(a.name, "alice");
        assert!(a.in_group("dev") && a.in_group("ops") && a.in_group("system:authenticated"));
        assert_eq!(
            t.authenticate("def").unwrap().groups,
            vec!["system:authenticated"]
        );
        assert!(t.authenticate("nope").is_none());
        std::fs::write(&p, "onlytoken\n").unwrap();
        assert!(TokenAuthenticator::from_file(&p).is_err());
    }

    #[test]
    fn forbidden_messages() {
        let req = super::super::request::resolve(
            &http::Method::GET,
            "/api/v1/namespaces/default/pods",
            false,
        );
        let alice = UserInfo::new("alice", "", vec![]);
        assert_eq!(
            forbidden_message(&alice, &req),
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}
