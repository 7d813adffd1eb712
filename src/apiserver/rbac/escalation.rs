//! Escalation prevention, the admission step for RBAC writes: a user may only create or
//! update a Role/ClusterRole whose rules it already holds (unless it has `escalate` on
//! it), and only bind a role whose rules it holds (unless it has `bind` on it), as
//! upstream's RBAC registry does. Members of `system:masters` and the server itself are
//! exempt.
//!
//! Depends on: the [`Rbac`](super::Rbac) index, the registry (to read referenced roles).

use serde_json::Value;

use super::super::admission::{Attributes, Operation};
use super::super::auth::UserInfo;
use super::super::registry::Registry;
use super::super::request::RequestInfo;
use super::index::{Binding, rules_of};
use super::rule::{GROUP, PolicyRule, compact, compact_string, covers, go_quote, go_quote_list};
use super::{Rbac, SUPERUSER_GROUP};
use crate::api::resources::lookup;
use crate::api::status::Status;

/// Everything: what an aggregationRule can gather.
fn full_authority() -> Vec<PolicyRule> {
    vec![
        PolicyRule::resource(&["*"], &["*"], &["*"]),
        PolicyRule::urls(&["*"], &["*"]),
    ]
}

/// Checks that `user` holds every rule in `rules` within `namespace`; the upstream
/// message listing what is missing otherwise.
pub fn confirm_no_escalation(
    rbac: &Rbac,
    user: &UserInfo,
    namespace: Option<&str>,
    rules: &[PolicyRule],
) -> Result<(), String> {
    let owner = rbac.rules_for(user, namespace);
    let (ok, missing) = covers(&owner, rules);
    if ok {
        return Ok(());
    }
    let mut described: Vec<String> = compact(&missing).iter().map(compact_string).collect();
    described.sort();
    described.dedup();
    Err(format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(&user.name),
        go_quote_list(&user.groups),
        described.join("\n")
    ))
}

fn forbidden(plural: &str, name: &str, why: &str) -> Status {
    Status::forbidden(format!(
        "{plural}.{GROUP} {} is forbidden: {why}",
        go_quote(name)
    ))
    .with_details(GROUP, plural, name)
}

/// Whether the user may perform `verb` on a role (`escalate` or `bind`).
fn may(
    rbac: &Rbac,
    user: &UserInfo,
    verb: &str,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let req = RequestInfo {
        is_resource: true,
        verb: verb.to_string(),
        group: GROUP.to_string(),
        version: "*".to_string(),
        namespace: namespace.map(str::to_string),
        resource: plural.to_string(),
        name: name.map(str::to_string),
        ..Default::default()
    };
    rbac.allowed(user, &req)
}

/// Everything that decides what an object grants, for spotting updates that change only
/// metadata the garbage collector manages (upstream skips the check for those).
fn grant_relevant(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "ownerReferences",
            "finalizers",
            "managedFields",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(k);
        }
    }
    v
}

/// See [`super::validate_escalation`].
pub async fn validate(reg: &Registry, attrs: &Attributes<'_>, obj: &Value) -> Result<(), Status> {
    let Some(user) = attrs.user else {
        return Ok(());
    };
    let ri = attrs.resource;
    if ri.group != GROUP
        || attrs.subresource.is_some()
        || !matches!(attrs.operation, Operation::Create | Operation::Update)
        || user.in_group(SUPERUSER_GROUP)
    {
        return Ok(());
    }
    let plural = ri.plural;
    if !matches!(
        plural,
        "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings"
    ) {
        return Ok(());
    }
    let ns = if ri.namespaced { attrs.namespace } else { None };
    let name = attrs.name;
    let rbac = reg.rbac();
    rbac.sync(reg).await?;
    let old = if attrs.operation == Operation::Update {
        reg.get(ri, ns, name).await.ok()
    } else {
        None
    };
    if let Some(old) = &old
        && grant_relevant(old) == grant_relevant(obj)
    {
        return Ok(());
    }
    match plural {
        "roles" | "clusterroles" => {
            // Upstream checks `escalate` against the request's own name: none on create.
            let req_name = (attrs.operation == Operation::Update).then_some(name);
            if may(rbac, user, "escalate", plural, ns, req_name) {
                return Ok(());
            }
            confirm_no_escalation(rbac, user, ns, &rules_of(obj))
                .map_err(|why| forbidden(plural, name, &why))?;
            let aggregates = |o: &Value| !o["aggregationRule"].is_null();
            if plural == "clusterroles"
                && (aggregates(obj) || old.as_ref().is_some_and(aggregates))
                && confirm_no_escalation(rbac, user, None, &full_authority()).is_err()
            {
                return Err(forbidden(
                    plural,
                    name,
                    "must have cluster-admin privileges to use an aggregationRule",
                ));
            }
            Ok(())
        }
        _ => {
            let binding = Binding::from_object(obj);
            let role_plural = match binding.role_ref.kind.as_str() {
                "Role" => "roles",
                _ => "clusterroles",
            };
            if may(
                rbac,
                user,
                "bind",
                role_plural,
                ns,
                Some(&binding.role_ref.name),
            ) {
                return Ok(());
            }
            let role_ri = lookup(GROUP, "v1", role_plural)
                .ok_or_else(|| Status::internal(format!("{role_plural} are not served")))?;
            let role_ns = if role_plural == "roles" { ns } else { None };
            let role = reg.get(role_ri, role_ns, &binding.role_ref.name).await?;
            confirm_no_escalation(rbac, user, ns, &rules_of(&role))
                .map_err(|why| forbidden(plural, name, &why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escalation_message_lists_missing_rules() {
        let rbac = Rbac::for_tests(&[
            json!({"kind": "Role", "metadata": {"name": "r", "namespace": "ns"},
                   "rules": [{"verbs": ["create", "get"], "apiGroups": [GROUP], "resources": ["roles"]},
                             {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "rb", "namespace": "ns"},
                   "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
        ]);
        let alice = UserInfo::new("alice", "", vec![]);
        let want = [
            PolicyRule::resource(&["get", "delete"], &[""], &["secrets"]),
            PolicyRule::urls(&["get"], &["/x"]),
        ];
        let err = confirm_no_escalation(&rbac, &alice, Some("ns"), &want).unwrap_err();
        assert_eq!(
            err,
            "user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\"]}\n\
             {NonResourceURLs:[\"/x\"], Verbs:[\"get\"]}"
        );
        // Held rules, in the namespace where they are held.
        let held = [PolicyRule::resource(&["get"], &[""], &["secrets"])];
        assert!(confirm_no_escalation(&rbac, &alice, Some("ns"), &held).is_ok());
        assert!(confirm_no_escalation(&rbac, &alice, Some("other"), &held).is_err());
        assert!(confirm_no_escalation(&rbac, &alice, None, &held).is_err());
        assert!(!may(&rbac, &alice, "escalate", "roles", Some("ns"), None));
        assert!(
            forbidden("roles", "x", "why")
                .message
                .starts_with("roles.rbac.authorization.k8s.io \"x\" is forbidden: why")
        );
    }

    #[test]
    fn gc_only_updates_are_not_checked() {
        let a = json!({"metadata": {"name": "r", "resourceVersion": "1"}, "rules": []});
        let mut b = a.clone();
        b["metadata"]["ownerReferences"] = json!([{"name": "o"}]);
        b["metadata"]["resourceVersion"] = json!("2");
        assert_eq!(grant_relevant(&a), grant_relevant(&b));
        b["metadata"]["labels"] = json!({"x": "y"});
        assert_ne!(grant_relevant(&a), grant_relevant(&b));
    }
}
