//! Impersonation: the `Impersonate-User`, `Impersonate-Uid`, `Impersonate-Group` and
//! `Impersonate-Extra-<key>` headers (`kubectl --as`, `--as-group`, `--as-uid`). Each
//! requested attribute is authorized as verb `impersonate` on `users`, `serviceaccounts`
//! (for `system:serviceaccount:<ns>:<name>`), `groups`,
//! `authentication.k8s.io/userextras/<key>` or `authentication.k8s.io/uids`, as upstream;
//! the request then proceeds as the impersonated user.
//!
//! Depends on: the [`Rbac`](super::Rbac) authorizer, [`auth::forbidden_message`].

use std::collections::BTreeMap;

use http::HeaderMap;

use super::super::auth::{UserInfo, forbidden_message};
use super::super::request::RequestInfo;
use super::Rbac;
use super::rule::{service_account_groups, split_service_account};
use crate::api::status::Status;

const USER: &str = "impersonate-user";
const UID: &str = "impersonate-uid";
const GROUP: &str = "impersonate-group";
const EXTRA_PREFIX: &str = "impersonate-extra-";
const AUTHN_GROUP: &str = "authentication.k8s.io";

/// One thing the caller asks to impersonate, as the authorization request it needs.
fn impersonation(
    resource: &str,
    group: &str,
    namespace: Option<&str>,
    name: &str,
    subresource: Option<&str>,
) -> RequestInfo {
    RequestInfo {
        is_resource: true,
        verb: "impersonate".into(),
        group: group.into(),
        namespace: namespace.map(str::to_string),
        resource: resource.into(),
        name: Some(name.into()),
        subresource: subresource.map(str::to_string),
        ..Default::default()
    }
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Result<Vec<&'h str>, Status> {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| Status::bad_request(format!("invalid {name} header")))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// See [`super::impersonate`].
pub fn impersonate(rbac: &Rbac, user: UserInfo, headers: &HeaderMap) -> Result<UserInfo, Status> {
    let requested_user = values(headers, USER)?
        .first()
        .copied()
        .unwrap_or("")
        .to_string();
    let uid = values(headers, UID)?
        .first()
        .copied()
        .unwrap_or("")
        .to_string();
    let groups: Vec<String> = values(headers, GROUP)?
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in headers.keys() {
        if let Some(key) = name.as_str().strip_prefix(EXTRA_PREFIX) {
            let key = percent_decode(&key.to_ascii_lowercase());
            for v in values(headers, name.as_str())? {
                extra.entry(key.clone()).or_default().push(v.to_string());
            }
        }
    }
    if requested_user.is_empty() {
        if !groups.is_empty() || !extra.is_empty() || !uid.is_empty() {
            return Err(Status::internal(
                "requested impersonation of groups, extra or uid without impersonating a user",
            ));
        }
        return Ok(user);
    }

    // What must be authorized, in upstream's order: the user (or service account), each
    // group, each extra value, the uid.
    let mut checks = Vec::new();
    let mut new_groups = Vec::new();
    match split_service_account(&requested_user) {
        Some((ns, name)) => {
            checks.push(impersonation("serviceaccounts", "", Some(ns), name, None));
            if groups.is_empty() {
                new_groups = service_account_groups(ns);
            }
        }
        None => checks.push(impersonation("users", "", None, &requested_user, None)),
    }
    for g in &groups {
        checks.push(impersonation("groups", "", None, g, None));
        new_groups.push(g.clone());
    }
    for (key, vals) in &extra {
        for v in vals {
            checks.push(impersonation("userextras", AUTHN_GROUP, None, v, Some(key)));
        }
    }
    if !uid.is_empty() {
        checks.push(impersonation("uids", AUTHN_GROUP, None, &uid, None));
    }
    for check in &checks {
        if !rbac.allowed(&user, check) {
            tracing::debug!(user = %user.name, as_user = %requested_user, resource = %check.resource, "impersonation denied");
            return Err(Status::forbidden(forbidden_message(&user, check)));
        }
    }

    if requested_user == "system:anonymous" {
        if !new_groups.iter().any(|g| g == "system:unauthenticated") {
            new_groups.push("system:unauthenticated".into());
        }
    } else if !new_groups
        .iter()
        .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
    {
        new_groups.push("system:authenticated".into());
    }
    Ok(UserInfo {
        name: requested_user,
        uid,
        groups: new_groups,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn rbac() -> Rbac {
        let g = super::super::rule::GROUP;
        Rbac::for_tests(&[
            json!({"kind": "ClusterRole", "metadata": {"name": "imp"},
                   "rules": [{"verbs": ["impersonate"], "apiGroups": [""], "resources": ["users"], "resourceNames": ["alice"]},
                             {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["groups"], "resourceNames": ["dev"]},
                             {"verbs": ["impersonate"], "apiGroups": ["authentication.k8s.io"], "resources": ["uids"]},
                             {"verbs": ["impersonate"], "apiGroups": ["authentication.k8s.io"], "resources": ["userextras/scopes"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "imp"},
                   "roleRef": {"apiGroup": g, "kind": "ClusterRole", "name": "imp"},
                   "subjects": [{"kind": "User", "name": "bob"}]}),
            json!({"kind": "Role", "metadata": {"name": "sa", "namespace": "ns"},
                   "rules": [{"verbs": ["impersonate"], "apiGroups": [""], "resources": ["serviceaccounts"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "sa", "namespace": "ns"},
                   "roleRef": {"apiGroup": g, "kind": "Role", "name": "sa"},
                   "subjects": [{"kind": "User", "name": "bob"}]}),
        ])
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn impersonation_is_authorized_per_attribute() {
        let rbac = rbac();
        let bob = UserInfo::new("bob", "u-bob", vec![]);
        let run = |pairs: &[(&str, &str)]| impersonate(&rbac, bob.clone(), &headers(pairs));

        // No headers: unchanged.
        assert_eq!(run(&[]).unwrap(), bob);
        // A user: gains system:authenticated only.
        let u = run(&[("Impersonate-User", "alice")]).unwrap();
        assert_eq!(
            (u.name.as_str(), u.groups.clone()),
            ("alice", vec!["system:authenticated".to_string()])
        );
        // Groups, extras and uid.
        let u = run(&[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "dev"),
            ("Impersonate-Uid", "1234"),
            ("Impersonate-Extra-Scopes", "a"),
            ("Impersonate-Extra-Scopes", "b"),
        ])
        .unwrap();
        assert_eq!(u.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(u.uid, "1234");
        assert_eq!(u.extra["scopes"], vec!["a", "b"]);
        // A service account in the namespace where impersonating accounts is granted.
        let u = run(&[("Impersonate-User", "system:serviceaccount:ns:sa")]).unwrap();
        assert_eq!(
            u.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );

        // Denials, with upstream messages.
        let denied = |pairs: &[(&str, &str)]| run(pairs).unwrap_err();
        let e = denied(&[("Impersonate-User", "carol")]);
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "users \"carol\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let e = denied(&[("Impersonate-User", "system:serviceaccount:other:sa")]);
        assert_eq!(
            e.message,
            "serviceaccounts \"sa\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"other\""
        );
        let e = denied(&[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "system:masters"),
        ]);
        assert!(
            e.message
                .starts_with("groups \"system:masters\" is forbidden"),
            "{}",
            e.message
        );
        let e = denied(&[
            ("Impersonate-User", "alice"),
            ("Impersonate-Extra-Other", "x"),
        ]);
        assert_eq!(
            e.message,
            "userextras.authentication.k8s.io \"x\" is forbidden: User \"bob\" cannot impersonate resource \"userextras/other\" in API group \"authentication.k8s.io\" at the cluster scope"
        );
        // Groups without a user.
        assert_eq!(denied(&[("Impersonate-Group", "dev")]).code, 500);
        // Someone without any impersonation grant.
        let carol = UserInfo::new("carol", "", vec![]);
        assert_eq!(
            impersonate(&rbac, carol, &headers(&[("Impersonate-User", "alice")]))
                .unwrap_err()
                .code,
            403
        );
        // system:masters may impersonate anyone.
        let admin = UserInfo::new("admin", "", vec!["system:masters".into()]);
        let u = impersonate(
            &rbac,
            admin,
            &headers(&[("Impersonate-User", "system:anonymous")]),
        )
        .unwrap();
        assert_eq!(u.groups, vec!["system:unauthenticated"]);
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }
}
