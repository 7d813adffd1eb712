//! Access reviews and self review, the computed create-only resources clients use to ask
//! the authorizer questions: `SelfSubjectAccessReview` (`kubectl auth can-i`),
//! `SubjectAccessReview`, `LocalSubjectAccessReview`, `SelfSubjectRulesReview`
//! (`kubectl auth can-i --list`) and `authentication.k8s.io SelfSubjectReview`
//! (`kubectl auth whoami`). Each answer is the request object with `status` filled.
//!
//! Works on the JSON form of the request (protobuf bodies are converted before this).
//! Depends on: the [`Rbac`](super::Rbac) authorizer and index.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::super::auth::UserInfo;
use super::super::request::RequestInfo;
use super::rule::PolicyRule;
use super::{Rbac, SUPERUSER_GROUP};
use crate::api::ResourceInfo;
use crate::api::status::{Cause, Status};

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The authorization request a `ResourceAttributes` object describes.
fn resource_request(ra: &Value) -> RequestInfo {
    RequestInfo {
        is_resource: true,
        path: String::new(),
        verb: str_field(ra, "verb").to_string(),
        group: str_field(ra, "group").to_string(),
        version: str_field(ra, "version").to_string(),
        namespace: non_empty(str_field(ra, "namespace")),
        resource: str_field(ra, "resource").to_string(),
        name: non_empty(str_field(ra, "name")),
        subresource: non_empty(str_field(ra, "subresource")),
    }
}

/// The authorization request a `NonResourceAttributes` object describes.
fn non_resource_request(nra: &Value) -> RequestInfo {
    RequestInfo {
        is_resource: false,
        path: str_field(nra, "path").to_string(),
        verb: str_field(nra, "verb").to_string(),
        ..Default::default()
    }
}

fn invalid(ri: &ResourceInfo, obj: &Value, field: &str, reason: &str, message: &str) -> Status {
    Status::invalid(
        ri.group,
        ri.kind,
        str_field(&obj["metadata"], "name"),
        vec![Cause {
            reason: reason.into(),
            message: message.into(),
            field: field.into(),
        }],
    )
}

/// The request of an access review spec: exactly one of resource or non-resource
/// attributes.
fn spec_request(ri: &ResourceInfo, obj: &Value) -> Result<RequestInfo, Status> {
    let spec = &obj["spec"];
    let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let nra = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (ra, nra) {
        (Some(ra), None) => Ok(resource_request(ra)),
        (None, Some(nra)) => Ok(non_resource_request(nra)),
        (None, None) => Err(invalid(
            ri,
            obj,
            "spec.resourceAttributes",
            "FieldValueRequired",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        (Some(_), Some(nra)) => Err(invalid(
            ri,
            obj,
            "spec.nonResourceAttributes",
            "FieldValueInvalid",
            &format!(
                "Invalid value: {nra}: cannot be specified in combination with resourceAttributes"
            ),
        )),
    }
}

fn access_status(allowed: bool, reason: &str) -> Value {
    let mut s = json!({"allowed": allowed});
    if !reason.is_empty() {
        s["reason"] = json!(reason);
    }
    s
}

/// `status.userInfo` of a SelfSubjectReview (and the shape of `UserInfo` generally).
fn user_info_json(user: &UserInfo) -> Value {
    let mut u = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        u["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        u["extra"] = json!(user.extra);
    }
    u
}

/// The user a SubjectAccessReview spec names.
fn spec_user(ri: &ResourceInfo, obj: &Value) -> Result<UserInfo, Status> {
    let spec = &obj["spec"];
    let name = str_field(spec, "user").to_string();
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            ri,
            obj,
            "spec.user",
            "FieldValueInvalid",
            "Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    let extra: BTreeMap<String, Vec<String>> = spec["extra"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let vals = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    (k.clone(), vals)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(UserInfo {
        name,
        uid: str_field(spec, "uid").to_string(),
        groups,
        extra,
    })
}

fn resource_rule_json(r: &PolicyRule) -> Value {
    let mut m = Map::new();
    m.insert("verbs".into(), json!(r.verbs));
    if !r.api_groups.is_empty() {
        m.insert("apiGroups".into(), json!(r.api_groups));
    }
    m.insert("resources".into(), json!(r.resources));
    if !r.resource_names.is_empty() {
        m.insert("resourceNames".into(), json!(r.resource_names));
    }
    Value::Object(m)
}

/// `SelfSubjectRulesReview` status: every rule that applies in the namespace.
fn rules_status(rbac: &Rbac, user: &UserInfo, namespace: &str) -> Value {
    let mut rules = Vec::new();
    if user.in_group(SUPERUSER_GROUP) {
        rules.push(PolicyRule::resource(&["*"], &["*"], &["*"]));
        rules.push(PolicyRule::urls(&["*"], &["*"]));
    }
    rules.extend(rbac.rules_for(user, Some(namespace)));
    let resource_rules: Vec<Value> = rules
        .iter()
        .filter(|r| !r.resources.is_empty())
        .map(resource_rule_json)
        .collect();
    let non_resource_rules: Vec<Value> = rules
        .iter()
        .filter(|r| !r.non_resource_urls.is_empty())
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}

/// See [`super::review`].
pub fn review(
    rbac: &Rbac,
    ri: &ResourceInfo,
    namespace: Option<&str>,
    user: &UserInfo,
    mut obj: Value,
) -> Result<Value, Status> {
    let status = match (ri.group, ri.kind) {
        ("authentication.k8s.io", "SelfSubjectReview") => json!({"userInfo": user_info_json(user)}),
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            let req = spec_request(ri, &obj)?;
            let (allowed, reason) = rbac.decide(user, &req);
            access_status(allowed, &reason)
        }
        ("authorization.k8s.io", "SubjectAccessReview") => {
            let subject = spec_user(ri, &obj)?;
            let req = spec_request(ri, &obj)?;
            let (allowed, reason) = rbac.decide(&subject, &req);
            access_status(allowed, &reason)
        }
        ("authorization.k8s.io", "LocalSubjectAccessReview") => {
            let ns = namespace.unwrap_or_default();
            if ns.is_empty() {
                return Err(Status::bad_request("namespace is required on this type"));
            }
            let meta_ns = str_field(&obj["metadata"], "namespace");
            if !meta_ns.is_empty() && meta_ns != ns {
                return Err(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
            if obj["spec"]
                .get("nonResourceAttributes")
                .is_some_and(|v| !v.is_null())
            {
                return Err(invalid(
                    ri,
                    &obj,
                    "spec.nonResourceAttributes",
                    "FieldValueInvalid",
                    "Invalid value: \"object\": disallowed on this kind of request",
                ));
            }
            let subject = spec_user(ri, &obj)?;
            let req = spec_request(ri, &obj)?;
            if req.namespace.as_deref().unwrap_or("") != ns {
                return Err(invalid(
                    ri,
                    &obj,
                    "spec.resourceAttributes.namespace",
                    "FieldValueInvalid",
                    &format!(
                        "Invalid value: {:?}: must match metadata.namespace",
                        req.namespace.as_deref().unwrap_or("")
                    ),
                ));
            }
            let (allowed, reason) = rbac.decide(&subject, &req);
            access_status(allowed, &reason)
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => {
            let ns = str_field(&obj["spec"], "namespace").to_string();
            if ns.is_empty() {
                return Err(Status::bad_request("no namespace on request"));
            }
            rules_status(rbac, user, &ns)
        }
        _ => {
            return Err(Status::method_not_allowed(format!(
                "{} are not served",
                ri.group_resource()
            )));
        }
    };
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["status"] = status;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    fn rbac() -> Rbac {
        let g = super::super::rule::GROUP;
        Rbac::for_tests(&[
            json!({"kind": "Role", "metadata": {"name": "pod-reader", "namespace": "ns"},
                   "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "alice-reads", "namespace": "ns"},
                   "roleRef": {"apiGroup": g, "kind": "Role", "name": "pod-reader"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "disco"},
                   "rules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "disco"},
                   "roleRef": {"apiGroup": g, "kind": "ClusterRole", "name": "disco"},
                   "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
        ])
    }

    fn ri(group: &str, plural: &str) -> &'static ResourceInfo {
        lookup(group, "v1", plural).unwrap()
    }

    fn ssar(ra: Value) -> Value {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "metadata": {}, "spec": {"resourceAttributes": ra}})
    }

    #[test]
    fn access_reviews() {
        let rbac = rbac();
        let alice = UserInfo::new("alice", "", vec![]);
        let ssar_ri = ri("authorization.k8s.io", "selfsubjectaccessreviews");
        let ask =
            |ra: Value| review(&rbac, ssar_ri, None, &alice, ssar(ra)).unwrap()["status"].clone();
        let yes = ask(json!({"namespace": "ns", "verb": "get", "resource": "pods"}));
        assert_eq!(yes["allowed"], true);
        assert_eq!(
            yes["reason"],
            "RBAC: allowed by RoleBinding \"alice-reads/ns\" of Role \"pod-reader\" to User \"alice\""
        );
        assert_eq!(
            ask(json!({"namespace": "ns", "verb": "delete", "resource": "pods"})),
            json!({"allowed": false})
        );
        assert_eq!(
            ask(json!({"namespace": "other", "verb": "get", "resource": "pods"}))["allowed"],
            false
        );
        let nr = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                        "spec": {"nonResourceAttributes": {"path": "/api/v1", "verb": "get"}}});
        assert_eq!(
            review(&rbac, ssar_ri, None, &alice, nr).unwrap()["status"]["allowed"],
            true
        );
        let neither = json!({"spec": {}});
        assert_eq!(
            review(&rbac, ssar_ri, None, &alice, neither)
                .unwrap_err()
                .code,
            422
        );

        // SubjectAccessReview: the subject from the spec, groups as given.
        let sar_ri = ri("authorization.k8s.io", "subjectaccessreviews");
        let sar = json!({"spec": {"user": "alice", "resourceAttributes": {"namespace": "ns", "verb": "list", "resource": "pods"}}});
        assert_eq!(
            review(&rbac, sar_ri, None, &alice, sar).unwrap()["status"]["allowed"],
            true
        );
        let sar = json!({"spec": {"user": "bob", "groups": ["system:masters"],
                                  "resourceAttributes": {"verb": "delete", "resource": "nodes"}}});
        assert_eq!(
            review(&rbac, sar_ri, None, &alice, sar).unwrap()["status"]["allowed"],
            true
        );
        let nobody = json!({"spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}});
        assert_eq!(
            review(&rbac, sar_ri, None, &alice, nobody)
                .unwrap_err()
                .code,
            422
        );

        // LocalSubjectAccessReview: namespaces must agree.
        let lsar_ri = ri("authorization.k8s.io", "localsubjectaccessreviews");
        let lsar = json!({"metadata": {}, "spec": {"user": "alice", "resourceAttributes": {"namespace": "ns", "verb": "get", "resource": "pods"}}});
        let out = review(&rbac, lsar_ri, Some("ns"), &alice, lsar.clone()).unwrap();
        assert_eq!(
            (
                out["status"]["allowed"].clone(),
                out["metadata"]["namespace"].clone()
            ),
            (json!(true), json!("ns"))
        );
        assert_eq!(
            review(&rbac, lsar_ri, Some("other"), &alice, lsar)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn rules_review_and_whoami() {
        let rbac = rbac();
        let alice = UserInfo::new("alice", "", vec![]);
        let ri_rules = ri("authorization.k8s.io", "selfsubjectrulesreviews");
        let body = json!({"spec": {"namespace": "ns"}});
        let st = review(&rbac, ri_rules, None, &alice, body).unwrap()["status"].clone();
        assert_eq!(
            st,
            json!({"resourceRules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}],
                   "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}],
                   "incomplete": false})
        );
        assert_eq!(
            review(&rbac, ri_rules, None, &alice, json!({"spec": {}}))
                .unwrap_err()
                .code,
            400
        );

        let whoami = ri("authentication.k8s.io", "selfsubjectreviews");
        let mut u = UserInfo::new("alice", "u1", vec!["dev".into()]);
        u.extra.insert("scopes".into(), vec!["a".into()]);
        let st = review(&rbac, whoami, None, &u, json!({})).unwrap()["status"].clone();
        assert_eq!(
            st,
            json!({"userInfo": {"username": "alice", "uid": "u1", "groups": ["dev", "system:authenticated"],
                                "extra": {"scopes": ["a"]}}})
        );
    }
}
