//! The claims of a bound service account token, as upstream issues them: the registered
//! claims (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`) and the private
//! `kubernetes.io` claim naming the namespace, the service account and the object the
//! token is bound to. Validation of the time window, issuer and audiences is pure here;
//! checking that the named objects still exist is the caller's (it needs the registry).

use serde::{Deserialize, Deserializer, Serialize};

/// How far clocks may disagree when checking `exp` and `nbf` (seconds), as upstream's
/// JWT validation.
pub const LEEWAY_SECS: i64 = 60;

/// Prefix of service account user names.
pub const USER_PREFIX: &str = "system:serviceaccount:";

/// A name and uid in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectRef {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Object uid (omitted when unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl ObjectRef {
    /// A reference to `name` with `uid`.
    pub fn new(name: impl Into<String>, uid: impl Into<String>) -> ObjectRef {
        ObjectRef {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubernetesClaim {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjectRef,
    /// The pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The node the token is bound to, or the node of the bound pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    /// For tokens whose lifetime was extended: when the requested lifetime ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// All claims of a service account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Audiences (a JSON string or array on input; always an array on output).
    #[serde(deserialize_with = "string_or_list")]
    pub aud: Vec<String>,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Issuer.
    pub iss: String,
    /// Unique token id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// The Kubernetes private claim.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Subject: `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(s) => vec![s],
        Aud::Many(v) => v,
    })
}

/// Why claims are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Past `exp` (plus leeway).
    #[error("token has expired")]
    Expired,
    /// Before `nbf` or `iat` (minus leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Another issuer.
    #[error("token issuer {0:?} is not trusted")]
    Issuer(String),
    /// No audience in common with the accepted ones.
    #[error("token audiences {token:?} is invalid for the target audiences {target:?}")]
    Audience {
        /// The token's audiences.
        token: Vec<String>,
        /// The accepted audiences.
        target: Vec<String>,
    },
    /// `sub` and the private claim disagree, or a name is missing.
    #[error("token subject {0:?} does not match its kubernetes.io claim")]
    Subject(String),
}

/// The service account user name for `namespace`/`name`.
pub fn username(namespace: &str, name: &str) -> String {
    format!("{USER_PREFIX}{namespace}:{name}")
}

impl Claims {
    /// Checks the time window at `now`, the issuer and the audiences; returns the
    /// audiences the token is valid for (its audiences that are among `accepted`).
    pub fn validate(
        &self,
        now: i64,
        issuer: &str,
        accepted: &[String],
    ) -> Result<Vec<String>, ClaimError> {
        if self.iss != issuer {
            return Err(ClaimError::Issuer(self.iss.clone()));
        }
        if now > self.exp.saturating_add(LEEWAY_SECS) {
            return Err(ClaimError::Expired);
        }
        if now < self.nbf.saturating_sub(LEEWAY_SECS) || now < self.iat.saturating_sub(LEEWAY_SECS)
        {
            return Err(ClaimError::NotYetValid);
        }
        let k = &self.kubernetes;
        if k.namespace.is_empty()
            || k.serviceaccount.name.is_empty()
            || self.sub != username(&k.namespace, &k.serviceaccount.name)
        {
            return Err(ClaimError::Subject(self.sub.clone()));
        }
        let common: Vec<String> = self
            .aud
            .iter()
            .filter(|a| accepted.contains(a))
            .cloned()
            .collect();
        if common.is_empty() {
            return Err(ClaimError::Audience {
                token: self.aud.clone(),
                target: accepted.to_vec(),
            });
        }
        Ok(common)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![ISS.into()],
            exp: now + 3600,
            iat: now,
            iss: ISS.into(),
            jti: "j".into(),
            kubernetes: KubernetesClaim {
                namespace: "ns".into(),
                serviceaccount: ObjectRef::new("sa", "u1"),
                pod: Some(ObjectRef::new("p", "u2")),
                ..Default::default()
            },
            nbf: now,
            sub: "system:serviceaccount:ns:sa".into(),
        }
    }

    #[test]
    fn validation_table() {
        let now = 1_700_000_000;
        let api = vec![ISS.to_string()];
        type Case = (
            &'static str,
            fn(&mut Claims),
            Result<Vec<String>, ClaimError>,
        );
        let cases: Vec<Case> = vec![
            ("valid", |_| {}, Ok(vec![ISS.into()])),
            (
                "expired within leeway",
                |c| c.exp -= 3600 + 30,
                Ok(vec![ISS.into()]),
            ),
            ("expired", |c| c.exp -= 3600 + 61, Err(ClaimError::Expired)),
            ("nbf within leeway", |c| c.nbf += 30, Ok(vec![ISS.into()])),
            (
                "not yet valid",
                |c| c.nbf += 120,
                Err(ClaimError::NotYetValid),
            ),
            (
                "issued in the future",
                |c| c.iat += 120,
                Err(ClaimError::NotYetValid),
            ),
            (
                "other issuer",
                |c| c.iss = "https://evil".into(),
                Err(ClaimError::Issuer("https://evil".into())),
            ),
            (
                "other audience",
                |c| c.aud = vec!["vault".into()],
                Err(ClaimError::Audience {
                    token: vec!["vault".into()],
                    target: vec![ISS.into()],
                }),
            ),
            (
                "one matching audience",
                |c| c.aud = vec!["vault".into(), ISS.into()],
                Ok(vec![ISS.into()]),
            ),
            (
                "subject mismatch",
                |c| c.sub = "system:serviceaccount:ns:other".into(),
                Err(ClaimError::Subject("system:serviceaccount:ns:other".into())),
            ),
            (
                "no namespace",
                |c| c.kubernetes.namespace.clear(),
                Err(ClaimError::Subject("system:serviceaccount:ns:sa".into())),
            ),
        ];
        for (name, edit, want) in cases {
            let mut c = claims(now);
            edit(&mut c);
            assert_eq!(c.validate(now, ISS, &api), want, "{name}");
        }
    }

    #[test]
    fn json_shape_matches_upstream() {
        let c = claims(100);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            json!({
                "aud": [ISS], "exp": 3700, "iat": 100, "iss": ISS, "jti": "j", "nbf": 100,
                "sub": "system:serviceaccount:ns:sa",
                "kubernetes.io": {
                    "namespace": "ns",
                    "serviceaccount": {"name": "sa", "uid": "u1"},
                    "pod": {"name": "p", "uid": "u2"}
                }
            })
        );
        let back: Claims = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn audience_may_be_a_single_string() {
        let mut v = serde_json::to_value(claims(0)).unwrap();
        v["aud"] = json!("api");
        let c: Claims = serde_json::from_value(v).unwrap();
        assert_eq!(c.aud, vec!["api".to_string()]);
    }
}
