//! The in-memory index of Roles, ClusterRoles, RoleBindings and ClusterRoleBindings the
//! authorizer reads on every request, and the task that keeps it current from the watch
//! cache.
//!
//! The index is a plain map structure behind a `std::sync::RwLock`: events take the
//! write lock for a single insert or removal, authorization takes the read lock and never
//! awaits while holding it. A `watch` channel publishes the newest cache revision the
//! index reflects, so that reviews and escalation checks can wait for read-your-writes.
//!
//! Depends on: the watch [`Cache`], [`rule`](super::rule).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::super::auth::UserInfo;
use super::super::cache::{Cache, CacheEvent, Change};
use super::super::request::RequestInfo;
use super::Rbac;
use super::rule::{GROUP, PolicyRule, RoleRef, Subject};
use crate::api::resources::lookup;

/// One RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Binding name.
    pub name: String,
    /// Namespace (`""` for ClusterRoleBindings).
    pub namespace: String,
    /// The role it grants.
    pub role_ref: RoleRef,
    /// Who it grants it to.
    pub subjects: Vec<Subject>,
}

impl Binding {
    /// Parses a binding object.
    pub fn from_object(obj: &Value) -> Binding {
        let meta = &obj["metadata"];
        Binding {
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
            role_ref: serde_json::from_value(obj["roleRef"].clone()).unwrap_or_default(),
            subjects: match &obj["subjects"] {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|s| serde_json::from_value(s.clone()).ok())
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Upstream's description of this binding and one of its subjects, for allow reasons:
    /// `ClusterRoleBinding "x" of ClusterRole "y" to Group "z"`.
    pub fn describe(&self, subject: &Subject) -> String {
        let (kind, name) = if self.namespace.is_empty() {
            ("ClusterRoleBinding", self.name.clone())
        } else {
            ("RoleBinding", format!("{}/{}", self.name, self.namespace))
        };
        format!(
            "{kind} {} of {} {} to {}",
            super::rule::go_quote(&name),
            self.role_ref.kind,
            super::rule::go_quote(&self.role_ref.name),
            subject.describe(&self.namespace)
        )
    }
}

/// Parses the `rules` of a Role or ClusterRole object (invalid rules are skipped).
pub fn rules_of(obj: &Value) -> Vec<PolicyRule> {
    match &obj["rules"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Which RBAC kind a store key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

const KINDS: [(Kind, &str); 4] = [
    (Kind::ClusterRoleBinding, "clusterrolebindings"),
    (Kind::ClusterRole, "clusterroles"),
    (Kind::RoleBinding, "rolebindings"),
    (Kind::Role, "roles"),
];

/// The store key prefixes of the four RBAC kinds.
#[derive(Debug, Clone)]
pub(super) struct Prefixes(Vec<(Kind, String)>);

impl Prefixes {
    pub(super) fn new() -> Prefixes {
        Prefixes(
            KINDS
                .iter()
                .map(|(kind, plural)| {
                    let prefix = lookup(GROUP, "v1", plural)
                        .map(|ri| ri.storage_prefix())
                        .unwrap_or_else(|| format!("/registry/{plural}.{GROUP}/"));
                    (*kind, prefix)
                })
                .collect(),
        )
    }

    fn classify<'k>(&self, key: &'k str) -> Option<(usize, Kind, &'k str)> {
        self.0
            .iter()
            .enumerate()
            .find_map(|(i, (kind, p))| key.strip_prefix(p.as_str()).map(|rest| (i, *kind, rest)))
    }
}

/// Where an allowing rule came from, for review reasons.
pub struct Source<'a> {
    /// The binding.
    pub binding: &'a Binding,
    /// The subject of the binding that matched the user.
    pub subject: &'a Subject,
}

/// The index proper.
#[derive(Debug, Default)]
pub struct Index {
    /// (namespace, name) → rules.
    roles: HashMap<(String, String), Arc<[PolicyRule]>>,
    /// name → rules.
    cluster_roles: HashMap<String, Arc<[PolicyRule]>>,
    /// namespace → name → binding.
    role_bindings: HashMap<String, BTreeMap<String, Binding>>,
    /// name → binding.
    cluster_role_bindings: BTreeMap<String, Binding>,
}

impl Index {
    /// Applies one object (`Some`) or its removal (`None`) at `rest` below its kind's
    /// prefix (`<ns>/<name>` or `<name>`).
    fn apply(&mut self, kind: Kind, rest: &str, obj: Option<&Value>) {
        let (ns, name) = match rest.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (String::new(), rest.to_string()),
        };
        match (kind, obj) {
            (Kind::Role, Some(o)) => {
                self.roles.insert((ns, name), rules_of(o).into());
            }
            (Kind::Role, None) => {
                self.roles.remove(&(ns, name));
            }
            (Kind::ClusterRole, Some(o)) => {
                self.cluster_roles.insert(name, rules_of(o).into());
            }
            (Kind::ClusterRole, None) => {
                self.cluster_roles.remove(&name);
            }
            (Kind::RoleBinding, Some(o)) => {
                self.role_bindings
                    .entry(ns)
                    .or_default()
                    .insert(name, Binding::from_object(o));
            }
            (Kind::RoleBinding, None) => {
                if let Some(m) = self.role_bindings.get_mut(&ns) {
                    m.remove(&name);
                    if m.is_empty() {
                        self.role_bindings.remove(&ns);
                    }
                }
            }
            (Kind::ClusterRoleBinding, Some(o)) => {
                self.cluster_role_bindings
                    .insert(name, Binding::from_object(o));
            }
            (Kind::ClusterRoleBinding, None) => {
                self.cluster_role_bindings.remove(&name);
            }
        }
    }

    /// Adds an object by store key (tests).
    #[cfg(test)]
    pub(super) fn put(&mut self, prefixes: &Prefixes, key: &str, obj: &Value) {
        if let Some((_, kind, rest)) = prefixes.classify(key) {
            self.apply(kind, rest, Some(obj));
        }
    }

    /// The rules a role reference resolves to within `binding_ns` (empty when missing).
    pub fn role_ref_rules(
        &self,
        role_ref: &RoleRef,
        binding_ns: &str,
    ) -> Option<&Arc<[PolicyRule]>> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&role_ref.name),
            "Role" => self
                .roles
                .get(&(binding_ns.to_string(), role_ref.name.clone())),
            _ => None,
        }
    }

    /// Visits every rule that applies to `user` for requests in `namespace` (cluster
    /// bindings first, then the namespace's role bindings), until `visit` returns false.
    pub fn visit_rules<'a>(
        &'a self,
        user: &UserInfo,
        namespace: Option<&str>,
        mut visit: impl FnMut(&Source<'a>, &'a PolicyRule) -> bool,
    ) {
        let namespaced = namespace
            .filter(|ns| !ns.is_empty())
            .and_then(|ns| self.role_bindings.get(ns))
            .into_iter()
            .flat_map(|m| m.values());
        for binding in self.cluster_role_bindings.values().chain(namespaced) {
            if binding.namespace.is_empty() && binding.role_ref.kind != "ClusterRole" {
                continue;
            }
            let Some(subject) = binding
                .subjects
                .iter()
                .find(|s| s.applies_to(&user.name, &user.groups, &binding.namespace))
            else {
                continue;
            };
            let Some(rules) = self.role_ref_rules(&binding.role_ref, &binding.namespace) else {
                continue;
            };
            let source = Source { binding, subject };
            for rule in rules.iter() {
                if !visit(&source, rule) {
                    return;
                }
            }
        }
    }

    /// Whether RBAC allows the request; the reason (which binding allowed it) when it does.
    pub fn allows(&self, user: &UserInfo, req: &RequestInfo) -> Option<String> {
        let mut reason = None;
        let ns = if req.is_resource {
            req.namespace.as_deref()
        } else {
            None
        };
        self.visit_rules(user, ns, |source, rule| {
            if rule.allows(req) {
                reason = Some(format!(
                    "RBAC: allowed by {}",
                    source.binding.describe(source.subject)
                ));
                return false;
            }
            true
        });
        reason
    }

    /// Every rule that applies to `user` in `namespace` (upstream `RulesFor`).
    pub fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        self.visit_rules(user, namespace, |_, rule| {
            out.push(rule.clone());
            true
        });
        out
    }
}

/// Builds the index from the cache and follows its events until `shutdown`.
pub(super) async fn run(rbac: Arc<Rbac>, cache: Arc<Cache>, shutdown: CancellationToken) {
    let prefixes = Prefixes::new();
    loop {
        // One receiver (from the first snapshot) carries every later event; events of a
        // kind at or below that kind's snapshot revision are already in the snapshot.
        let mut index = Index::default();
        let mut receiver = None;
        let mut snapshot_revs = Vec::with_capacity(prefixes.0.len());
        for (kind, prefix) in &prefixes.0 {
            let (entries, rev, rx) = cache.snapshot_and_subscribe(prefix).await;
            for e in entries {
                let Some(key) = object_key(&prefixes, &e.object) else {
                    continue;
                };
                if let Some(rest) = key.strip_prefix(prefix.as_str()) {
                    index.apply(*kind, rest, Some(&e.object));
                }
            }
            snapshot_revs.push(rev);
            if receiver.is_none() {
                receiver = Some(rx);
            }
        }
        let Some(mut rx) = receiver else { return };
        let start = snapshot_revs.first().copied().unwrap_or(0);
        rbac.replace_index(index, start);
        tracing::debug!(revision = start, "RBAC index built");
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(ev) => rbac.apply_event(&prefixes, &snapshot_revs, &ev),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "RBAC index fell behind the watch cache; rebuilding"
                    );
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// The store key of a cached object, rebuilt from its kind and metadata (entries do not
/// carry their keys).
fn object_key(prefixes: &Prefixes, obj: &Value) -> Option<String> {
    let kind = obj["kind"].as_str()?;
    let meta = &obj["metadata"];
    let name = meta["name"].as_str()?;
    let (k, ns) = match kind {
        "Role" => (Kind::Role, meta["namespace"].as_str()),
        "RoleBinding" => (Kind::RoleBinding, meta["namespace"].as_str()),
        "ClusterRole" => (Kind::ClusterRole, None),
        "ClusterRoleBinding" => (Kind::ClusterRoleBinding, None),
        _ => return None,
    };
    let prefix = &prefixes.0.iter().find(|(kind, _)| *kind == k)?.1;
    Some(match ns {
        Some(ns) => format!("{prefix}{ns}/{name}"),
        None => format!("{prefix}{name}"),
    })
}

impl Rbac {
    fn replace_index(&self, index: Index, revision: u64) {
        *self.write_index() = index;
        self.revision.send_replace(revision);
    }

    fn apply_event(&self, prefixes: &Prefixes, snapshot_revs: &[u64], ev: &CacheEvent) {
        if let Some((i, kind, rest)) = prefixes.classify(&ev.key)
            && ev.revision > snapshot_revs.get(i).copied().unwrap_or(0)
        {
            let obj = match ev.change {
                Change::Put => Some(ev.object.as_ref()),
                Change::Delete => None,
            };
            self.write_index().apply(kind, rest, obj);
        }
        self.revision.send_if_modified(|r| {
            if ev.revision > *r {
                *r = ev.revision;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn index_of(objects: &[Value]) -> Index {
        let prefixes = Prefixes::new();
        let mut idx = Index::default();
        for o in objects {
            let key = object_key(&prefixes, o).unwrap();
            idx.put(&prefixes, &key, o);
        }
        idx
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, "", groups.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn bindings_grant_roles_in_their_scope() {
        let idx = index_of(&[
            json!({"kind": "Role", "metadata": {"name": "reader", "namespace": "a"},
                   "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "cm"},
                   "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]},
                             {"verbs": ["get"], "nonResourceURLs": ["/metrics"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "rb", "namespace": "a"},
                   "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "reader"},
                   "subjects": [{"kind": "User", "name": "alice"},
                                {"kind": "ServiceAccount", "name": "sa"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "cm-in-b", "namespace": "b"},
                   "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "cm"},
                   "subjects": [{"kind": "Group", "name": "dev"}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "cm-everywhere"},
                   "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "cm"},
                   "subjects": [{"kind": "User", "name": "carol"}]}),
        ]);
        let r = |m: http::Method, p: &str| super::super::super::request::resolve(&m, p, false);
        use http::Method as M;
        let alice = user("alice", &[]);
        let sa = user("system:serviceaccount:a:sa", &["system:serviceaccounts"]);
        let bob = user("bob", &["dev"]);
        let carol = user("carol", &[]);
        let cases = [
            (&alice, r(M::GET, "/api/v1/namespaces/a/pods"), true),
            (&alice, r(M::GET, "/api/v1/namespaces/a/pods/x"), true),
            (&alice, r(M::DELETE, "/api/v1/namespaces/a/pods/x"), false),
            (&alice, r(M::GET, "/api/v1/namespaces/b/pods"), false),
            (&alice, r(M::GET, "/api/v1/pods"), false),
            (&sa, r(M::GET, "/api/v1/namespaces/a/pods"), true),
            (&sa, r(M::GET, "/api/v1/namespaces/b/pods"), false),
            (&bob, r(M::GET, "/api/v1/namespaces/b/configmaps/x"), true),
            (&bob, r(M::GET, "/api/v1/namespaces/a/configmaps/x"), false),
            // A ClusterRole bound in a namespace grants no URLs.
            (&bob, r(M::GET, "/metrics"), false),
            (&carol, r(M::GET, "/api/v1/namespaces/a/configmaps/x"), true),
            (&carol, r(M::GET, "/metrics"), true),
        ];
        for (i, (u, req, want)) in cases.iter().enumerate() {
            assert_eq!(
                idx.allows(u, req).is_some(),
                *want,
                "case {i}: {} {} {}",
                u.name,
                req.verb,
                req.path
            );
        }
        assert_eq!(
            idx.allows(&alice, &cases[0].1).unwrap(),
            "RBAC: allowed by RoleBinding \"rb/a\" of Role \"reader\" to User \"alice\""
        );
        assert_eq!(idx.rules_for(&alice, Some("a")).len(), 1);
        assert_eq!(idx.rules_for(&carol, None).len(), 2);
        assert_eq!(idx.rules_for(&bob, Some("b")).len(), 2);
        assert!(idx.rules_for(&bob, None).is_empty());
    }

    #[test]
    fn removals_and_missing_roles() {
        let prefixes = Prefixes::new();
        let mut idx = index_of(&[
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "x"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "missing"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
        ]);
        let alice = user("alice", &[]);
        assert!(idx.rules_for(&alice, None).is_empty());
        let role = json!({"kind": "ClusterRole", "metadata": {"name": "missing"},
            "rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]});
        let key = object_key(&prefixes, &role).unwrap();
        idx.put(&prefixes, &key, &role);
        assert_eq!(idx.rules_for(&alice, None).len(), 1);
        let (_, kind, rest) = prefixes.classify(&key).unwrap();
        idx.apply(kind, rest, None);
        assert!(idx.rules_for(&alice, None).is_empty());
    }
}
