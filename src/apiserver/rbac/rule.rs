//! RBAC vocabulary and the pure functions over it: policy rules, subjects and role
//! references as they appear in Role/ClusterRole/binding objects; whether a rule allows a
//! request; whether one set of rules covers another (escalation prevention); and the
//! compact rule descriptions upstream prints in escalation errors.
//!
//! No IO and no state: depends only on `serde` and [`RequestInfo`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::super::request::RequestInfo;

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One `rbac.authorization.k8s.io/v1 PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyRule {
    /// Verbs (`get`, `list`, ..., or `*`).
    #[serde(deserialize_with = "null_as_empty")]
    pub verbs: Vec<String>,
    /// API groups (`""` is core; `*` is all).
    #[serde(
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*/subresource` or `*`.
    #[serde(
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resources: Vec<String>,
    /// Object names the rule is restricted to (empty = all).
    #[serde(
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resource_names: Vec<String>,
    /// Non-resource URL paths; a trailing `*` matches any suffix.
    #[serde(
        rename = "nonResourceURLs",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl PolicyRule {
    /// A resource rule: `verbs` on `resources` in `groups`.
    pub fn resource(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            ..Default::default()
        }
    }

    /// A non-resource rule: `verbs` on URL paths.
    pub fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            non_resource_urls: strings(urls),
            ..Default::default()
        }
    }

    /// Restricts a resource rule to named objects.
    pub fn names(mut self, names: &[&str]) -> PolicyRule {
        self.resource_names = strings(names);
        self
    }

    /// Whether this rule allows the request (upstream `RuleAllows`).
    pub fn allows(&self, req: &RequestInfo) -> bool {
        if !verb_matches(self, &req.verb) {
            return false;
        }
        if !req.is_resource {
            return url_matches(self, &req.path);
        }
        let combined = match req.subresource.as_deref() {
            Some(sub) if !sub.is_empty() => format!("{}/{sub}", req.resource),
            _ => req.resource.clone(),
        };
        group_matches(self, &req.group)
            && resource_matches(self, &combined, req.subresource.as_deref().unwrap_or(""))
            && name_matches(self, req.name.as_deref().unwrap_or(""))
    }
}

fn has(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == s)
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    has(&rule.verbs, "*") || has(&rule.verbs, verb)
}

fn group_matches(rule: &PolicyRule, group: &str) -> bool {
    has(&rule.api_groups, "*") || has(&rule.api_groups, group)
}

/// `*`, the exact `resource[/subresource]`, or `*/subresource`.
fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/").is_some_and(|s| s == subresource))
    })
}

fn name_matches(rule: &PolicyRule, name: &str) -> bool {
    rule.resource_names.is_empty() || has(&rule.resource_names, name)
}

fn url_pattern_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

fn url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls
        .iter()
        .any(|p| url_pattern_matches(p, path))
}

/// A binding subject.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// API group (`rbac.authorization.k8s.io` for users and groups, `""` for accounts).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// Name.
    pub name: String,
    /// Namespace (service accounts).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl Subject {
    /// A `User` subject.
    pub fn user(name: &str) -> Subject {
        Subject {
            kind: "User".into(),
            api_group: GROUP.into(),
            name: name.into(),
            namespace: String::new(),
        }
    }

    /// A `Group` subject.
    pub fn group(name: &str) -> Subject {
        Subject {
            kind: "Group".into(),
            api_group: GROUP.into(),
            name: name.into(),
            namespace: String::new(),
        }
    }

    /// A `ServiceAccount` subject.
    pub fn service_account(namespace: &str, name: &str) -> Subject {
        Subject {
            kind: "ServiceAccount".into(),
            api_group: String::new(),
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// Whether the subject names `user` (with its groups). `binding_ns` is the namespace
    /// of a RoleBinding (service account subjects default to it), `""` for
    /// ClusterRoleBindings.
    pub fn applies_to(&self, user: &str, groups: &[String], binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => self.name == user,
            "Group" => has(groups, &self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                !ns.is_empty()
                    && !self.name.is_empty()
                    && service_account_user(ns, &self.name) == user
            }
            _ => false,
        }
    }

    /// Upstream's description of a subject in allow reasons (`User "alice"`,
    /// `ServiceAccount "sa/ns"`).
    pub fn describe(&self, binding_ns: &str) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                format!("{} {}", self.kind, go_quote(&format!("{}/{ns}", self.name)))
            }
            _ => format!("{} {}", self.kind, go_quote(&self.name)),
        }
    }
}

/// The user name of a service account.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Splits `system:serviceaccount:<ns>:<name>` into namespace and name.
pub fn split_service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((ns, name))
}

/// The groups every service account is in.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

/// A binding's `roleRef`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoleRef {
    /// Always `rbac.authorization.k8s.io`.
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: String,
    /// Role name.
    pub name: String,
}

impl RoleRef {
    /// A reference to a ClusterRole.
    pub fn cluster_role(name: &str) -> RoleRef {
        RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: name.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Covering (escalation prevention)

/// Splits a rule into one rule per (group, resource, verb[, name]) and (URL, verb), as
/// upstream's `BreakdownRule`.
pub fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    verbs: vec![verb.clone()],
                    api_groups: vec![group.clone()],
                    resources: vec![resource.clone()],
                    ..Default::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    for name in &rule.resource_names {
                        let mut r = base.clone();
                        r.resource_names = vec![name.clone()];
                        out.push(r);
                    }
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: vec![url.clone()],
                ..Default::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(set, w))
}

fn resources_cover(owner: &[String], wanted: &[String]) -> bool {
    if has(owner, "*") || has_all(owner, wanted) {
        return true;
    }
    wanted.iter().all(|w| {
        has(owner, w)
            || w.split_once('/')
                .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
    })
}

fn urls_cover(owner: &[String], wanted: &[String]) -> bool {
    wanted
        .iter()
        .all(|w| owner.iter().any(|o| url_pattern_matches(o, w)))
}

/// Whether `owner` grants everything `sub` does.
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs);
    let groups = has(&owner.api_groups, "*") || has_all(&owner.api_groups, &sub.api_groups);
    let resources = resources_cover(&owner.resources, &sub.resources);
    let urls = urls_cover(&owner.non_resource_urls, &sub.non_resource_urls);
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    verbs && groups && resources && urls && names
}

/// Whether `owner` covers every rule of `servant`; the uncovered broken-down rules when
/// not (upstream `Covers`).
pub fn covers(owner: &[PolicyRule], servant: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let mut missing = Vec::new();
    for rule in servant {
        for sub in breakdown(rule) {
            if !owner.iter().any(|o| rule_covers(o, &sub)) {
                missing.push(sub);
            }
        }
    }
    (missing.is_empty(), missing)
}

/// Merges rules naming one group and one resource (and at most one name) that differ only
/// in their verbs, as upstream's `CompactRules` does for escalation messages.
pub fn compact(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut simple: BTreeMap<(String, String, Option<String>), PolicyRule> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rules {
        let is_simple = r.resource_names.len() <= 1
            && r.non_resource_urls.is_empty()
            && r.api_groups.len() == 1
            && r.resources.len() == 1;
        if !is_simple {
            out.push(r.clone());
            continue;
        }
        let key = (
            r.api_groups[0].clone(),
            r.resources[0].clone(),
            r.resource_names.first().cloned(),
        );
        simple
            .entry(key)
            .and_modify(|e| e.verbs.extend(r.verbs.iter().cloned()))
            .or_insert_with(|| r.clone());
    }
    out.extend(simple.into_values());
    out
}

/// Go's `%q` of a string.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn go_quote_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", items.join(" "))
}

/// Upstream's `CompactString` of a rule:
/// `{APIGroups:[""], Resources:["secrets"], Verbs:["delete"]}`.
pub fn compact_string(r: &PolicyRule) -> String {
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:{}", go_quote_list(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:{}", go_quote_list(&r.resources)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!(
            "NonResourceURLs:{}",
            go_quote_list(&r.non_resource_urls)
        ));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!(
            "ResourceNames:{}",
            go_quote_list(&r.resource_names)
        ));
    }
    if !r.verbs.is_empty() {
        parts.push(format!("Verbs:{}", go_quote_list(&r.verbs)));
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn req(method: Method, path: &str) -> RequestInfo {
        super::super::super::request::resolve(&method, path, false)
    }

    #[test]
    fn rule_matching() {
        let pods = "/api/v1/namespaces/ns/pods";
        let cases: Vec<(PolicyRule, RequestInfo, bool)> = vec![
            (
                PolicyRule::resource(&["get"], &[""], &["pods"]),
                req(Method::GET, &format!("{pods}/a")),
                true,
            ),
            (
                PolicyRule::resource(&["get"], &[""], &["pods"]),
                req(Method::GET, pods),
                false,
            ),
            (
                PolicyRule::resource(&["list"], &[""], &["pods"]),
                req(Method::GET, pods),
                true,
            ),
            (
                PolicyRule::resource(&["*"], &[""], &["pods"]),
                req(Method::DELETE, &format!("{pods}/a")),
                true,
            ),
            (
                PolicyRule::resource(&["get"], &["apps"], &["pods"]),
                req(Method::GET, &format!("{pods}/a")),
                false,
            ),
            (
                PolicyRule::resource(&["get"], &["*"], &["*"]),
                req(Method::GET, "/apis/apps/v1/namespaces/x/deployments/d"),
                true,
            ),
            // Subresources need their own grant...
            (
                PolicyRule::resource(&["get"], &[""], &["pods"]),
                req(Method::GET, &format!("{pods}/a/log")),
                false,
            ),
            (
                PolicyRule::resource(&["get"], &[""], &["pods/log"]),
                req(Method::GET, &format!("{pods}/a/log")),
                true,
            ),
            (
                PolicyRule::resource(&["get"], &[""], &["pods/log"]),
                req(Method::GET, &format!("{pods}/a")),
                false,
            ),
            // ... or `*/sub`, or `*`.
            (
                PolicyRule::resource(&["update"], &["apps"], &["*/scale"]),
                req(
                    Method::PUT,
                    "/apis/apps/v1/namespaces/x/deployments/d/scale",
                ),
                true,
            ),
            (
                PolicyRule::resource(&["update"], &["apps"], &["*/scale"]),
                req(Method::PUT, "/apis/apps/v1/namespaces/x/deployments/d"),
                false,
            ),
            (
                PolicyRule::resource(&["update"], &["apps"], &["*"]),
                req(
                    Method::PUT,
                    "/apis/apps/v1/namespaces/x/deployments/d/scale",
                ),
                true,
            ),
            // Resource names restrict gets, not lists.
            (
                PolicyRule::resource(&["get", "list"], &[""], &["pods"]).names(&["a"]),
                req(Method::GET, &format!("{pods}/a")),
                true,
            ),
            (
                PolicyRule::resource(&["get", "list"], &[""], &["pods"]).names(&["a"]),
                req(Method::GET, &format!("{pods}/b")),
                false,
            ),
            (
                PolicyRule::resource(&["get", "list"], &[""], &["pods"]).names(&["a"]),
                req(Method::GET, pods),
                false,
            ),
            // Non-resource URLs.
            (
                PolicyRule::urls(&["get"], &["/healthz"]),
                req(Method::GET, "/healthz"),
                true,
            ),
            (
                PolicyRule::urls(&["get"], &["/healthz"]),
                req(Method::GET, "/healthz/etcd"),
                false,
            ),
            (
                PolicyRule::urls(&["get"], &["/apis/*"]),
                req(Method::GET, "/apis/apps/v1"),
                true,
            ),
            (
                PolicyRule::urls(&["get"], &["/apis/*"]),
                req(Method::GET, "/apis"),
                false,
            ),
            (
                PolicyRule::urls(&["get"], &["*"]),
                req(Method::GET, "/anything"),
                true,
            ),
            (
                PolicyRule::urls(&["get"], &["/api"]),
                req(Method::POST, "/api"),
                false,
            ),
            // Resource rules never grant URLs and the reverse.
            (
                PolicyRule::resource(&["*"], &["*"], &["*"]),
                req(Method::GET, "/healthz"),
                false,
            ),
            (
                PolicyRule::urls(&["*"], &["*"]),
                req(Method::GET, pods),
                false,
            ),
        ];
        for (i, (rule, r, want)) in cases.iter().enumerate() {
            assert_eq!(
                rule.allows(r),
                *want,
                "case {i}: {rule:?} vs {} {}",
                r.verb,
                r.path
            );
        }
    }

    #[test]
    fn subjects() {
        let groups = vec!["dev".to_string(), "system:authenticated".to_string()];
        let sa = service_account_user("ns", "sa");
        let cases = [
            (Subject::user("alice"), "alice", "", true),
            (Subject::user("alice"), "bob", "", false),
            (Subject::group("dev"), "bob", "", true),
            (Subject::group("ops"), "bob", "", false),
            (Subject::service_account("ns", "sa"), sa.as_str(), "", true),
            (Subject::service_account("", "sa"), sa.as_str(), "ns", true),
            (Subject::service_account("", "sa"), sa.as_str(), "", false),
            (
                Subject::service_account("other", "sa"),
                sa.as_str(),
                "ns",
                false,
            ),
        ];
        for (s, user, ns, want) in cases {
            assert_eq!(s.applies_to(user, &groups, ns), want, "{s:?} {user} {ns}");
        }
        assert_eq!(split_service_account(&sa), Some(("ns", "sa")));
        assert_eq!(split_service_account("system:serviceaccount:ns"), None);
        assert_eq!(split_service_account("alice"), None);
        assert_eq!(
            Subject::service_account("", "sa").describe("ns"),
            "ServiceAccount \"sa/ns\""
        );
        assert_eq!(Subject::user("alice").describe("ns"), "User \"alice\"");
    }

    #[test]
    fn covering() {
        let r = PolicyRule::resource;
        let cases: Vec<(Vec<PolicyRule>, Vec<PolicyRule>, bool)> = vec![
            (
                vec![r(&["*"], &["*"], &["*"])],
                vec![r(&["delete"], &[""], &["secrets"])],
                true,
            ),
            (
                vec![r(&["get", "list"], &[""], &["pods"])],
                vec![r(&["get"], &[""], &["pods"])],
                true,
            ),
            (
                vec![r(&["get"], &[""], &["pods"])],
                vec![r(&["get", "delete"], &[""], &["pods"])],
                false,
            ),
            (
                vec![
                    r(&["get"], &[""], &["pods"]),
                    r(&["delete"], &[""], &["pods"]),
                ],
                vec![r(&["get", "delete"], &[""], &["pods"])],
                true,
            ),
            (
                vec![r(&["get"], &[""], &["*/status"])],
                vec![r(&["get"], &[""], &["pods/status"])],
                true,
            ),
            (
                vec![r(&["get"], &[""], &["*/status"])],
                vec![r(&["get"], &[""], &["pods"])],
                false,
            ),
            (
                vec![r(&["get"], &["apps"], &["pods"])],
                vec![r(&["get"], &[""], &["pods"])],
                false,
            ),
            // Names: an unrestricted owner covers named grants, not the reverse.
            (
                vec![r(&["get"], &[""], &["pods"])],
                vec![r(&["get"], &[""], &["pods"]).names(&["a"])],
                true,
            ),
            (
                vec![r(&["get"], &[""], &["pods"]).names(&["a"])],
                vec![r(&["get"], &[""], &["pods"])],
                false,
            ),
            (
                vec![r(&["get"], &[""], &["pods"]).names(&["a", "b"])],
                vec![r(&["get"], &[""], &["pods"]).names(&["b"])],
                true,
            ),
            // URLs.
            (
                vec![PolicyRule::urls(&["get"], &["/apis/*"])],
                vec![PolicyRule::urls(&["get"], &["/apis/apps"])],
                true,
            ),
            (
                vec![PolicyRule::urls(&["get"], &["/apis"])],
                vec![PolicyRule::urls(&["get"], &["/apis/*"])],
                false,
            ),
            (
                vec![r(&["*"], &["*"], &["*"])],
                vec![PolicyRule::urls(&["get"], &["/healthz"])],
                false,
            ),
            // Nothing to cover.
            (vec![], vec![], true),
        ];
        for (i, (owner, servant, want)) in cases.iter().enumerate() {
            assert_eq!(covers(owner, servant).0, *want, "case {i}");
        }
        let (_, missing) = covers(
            &[r(&["get"], &[""], &["pods"])],
            &[r(&["get", "delete", "patch"], &[""], &["pods", "secrets"])],
        );
        let described: Vec<String> = compact(&missing).iter().map(compact_string).collect();
        assert_eq!(
            described,
            vec![
                "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\" \"patch\"]}",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"delete\" \"patch\"]}",
            ]
        );
        assert_eq!(
            compact_string(&PolicyRule::urls(&["get"], &["/x"])),
            "{NonResourceURLs:[\"/x\"], Verbs:[\"get\"]}"
        );
    }

    #[test]
    fn rules_decode_from_json() {
        let v = serde_json::json!({"verbs": ["get"], "apiGroups": null, "nonResourceURLs": ["/x"]});
        let r: PolicyRule = serde_json::from_value(v).unwrap();
        assert_eq!(r, PolicyRule::urls(&["get"], &["/x"]));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"verbs": ["get"], "nonResourceURLs": ["/x"]})
        );
    }
}
