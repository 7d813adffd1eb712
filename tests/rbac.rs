//! RBAC against a real `kaji server` with the real kubectl: `auth can-i` (every kubectl
//! version), Roles and bindings for users and service accounts, `auth can-i --list`,
//! `auth whoami`, escalation prevention, bearer-token users, impersonation, ClusterRole
//! aggregation, the bootstrap policy surviving restarts, and kaji's own controllers
//! working under RBAC.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Server, ok, stderr, stdout};

/// Token file lines: `token,user,uid,"groups"`.
const TOKENS: &str = "bob-token,bob,u-bob\ncarol-token,carol,u-carol,\"devs\"\n";

fn with_tokens() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, TOKENS).unwrap();
    let server = Server::start(&[&format!("--token-auth-file={}", tokens.display())]);
    (server, dir)
}

/// kubectl authenticating with a bearer token only (no client certificate).
fn kubectl_token(server: &Server, token: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "--kubeconfig=/dev/null".to_string(),
        format!("--server=https://127.0.0.1:{}", server.port),
        "--insecure-skip-tls-verify".to_string(),
        format!("--token={token}"),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    server.kubectl(&refs)
}

/// `kubectl auth can-i` as the admin, impersonating when `as_user` is given; "yes"/"no".
fn can_i(server: &Server, bin: &str, as_user: Option<&str>, args: &[&str]) -> String {
    let mut all: Vec<&str> = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let as_flag;
    if let Some(u) = as_user {
        as_flag = format!("--as={u}");
        all.push(&as_flag);
    }
    let out = server.kubectl_version(bin, &all, None);
    // can-i exits 1 for "no"; anything on stderr besides that is a failure.
    let answer = stdout(&out).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "{bin} {all:?}: stdout {answer:?}, stderr {}",
        stderr(&out)
    );
    answer
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn admin_can_i_with_every_kubectl() {
    let server = Server::start(&[]);
    for bin in [
        "kubectl",
        "kubectl.1.27",
        "kubectl.1.31",
        "kubectl.1.32",
        "kubectl.1.33",
    ] {
        assert_eq!(
            can_i(&server, bin, None, &["create", "pods"]),
            "yes",
            "{bin}"
        );
        assert_eq!(
            can_i(&server, bin, None, &["delete", "nodes"]),
            "yes",
            "{bin}"
        );
        assert_eq!(
            can_i(&server, bin, None, &["get", "/healthz"]),
            "yes",
            "{bin}: non-resource URL"
        );
    }
    // whoami (authentication.k8s.io/v1 SelfSubjectReview; kubectl 1.28+).
    for bin in ["kubectl", "kubectl.1.31", "kubectl.1.32"] {
        let out = ok(server.kubectl_version(bin, &["auth", "whoami"], None));
        assert!(out.contains("Username    system:admin"), "{bin}: {out}");
        assert!(
            out.contains("[system:masters system:authenticated]"),
            "{bin}: {out}"
        );
    }
    let out = ok(server.kubectl(&["auth", "whoami", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "SelfSubjectReview");
    assert_eq!(v["status"]["userInfo"]["username"], "system:admin");
}

#[test]
fn roles_bind_users_and_service_accounts_in_their_namespace() {
    let server = Server::start(&[]);
    let k = |args: &[&str]| ok(server.kubectl(args));
    k(&["create", "namespace", "team"]);
    k(&[
        "-n",
        "team",
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    k(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "readers",
        "--role=pod-reader",
        "--user=alice",
        "--serviceaccount=team:robot",
    ]);
    let sa = "system:serviceaccount:team:robot";
    for bin in ["kubectl", "kubectl.1.27", "kubectl.1.31", "kubectl.1.33"] {
        for who in ["alice", sa] {
            let ask = |args: &[&str]| can_i(&server, bin, Some(who), args);
            assert_eq!(ask(&["get", "pods", "-n", "team"]), "yes", "{bin} {who}");
            assert_eq!(ask(&["list", "pods", "-n", "team"]), "yes", "{bin} {who}");
            assert_eq!(ask(&["delete", "pods", "-n", "team"]), "no", "{bin} {who}");
            assert_eq!(
                ask(&["get", "pods", "--subresource=log", "-n", "team"]),
                "no",
                "{bin} {who}"
            );
            assert_eq!(ask(&["get", "pods", "-n", "default"]), "no", "{bin} {who}");
            assert_eq!(ask(&["get", "pods", "-A"]), "no", "{bin} {who}");
            assert_eq!(ask(&["get", "secrets", "-n", "team"]), "no", "{bin} {who}");
        }
    }
    // Another service account of the namespace is not bound.
    assert_eq!(
        can_i(
            &server,
            "kubectl",
            Some("system:serviceaccount:team:other"),
            &["get", "pods", "-n", "team"]
        ),
        "no"
    );

    // The grant is real, not just an answer to can-i.
    let out = ok(server.kubectl(&["-n", "team", "get", "pods", "--as=alice"]));
    assert!(out.is_empty(), "{out}");
    let denied = server.kubectl(&["-n", "default", "get", "pods", "--as=alice"]);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains(
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&denied)
    );

    // can-i --list shows the role's rules plus what every user has.
    for bin in ["kubectl", "kubectl.1.27"] {
        let out = ok(server.kubectl_version(
            bin,
            &["-n", "team", "auth", "can-i", "--list", "--as=alice"],
            None,
        ));
        let pods = out
            .lines()
            .find(|l| l.starts_with("pods "))
            .unwrap_or_else(|| panic!("{bin}: no pods row in\n{out}"));
        assert!(pods.contains("[get list watch]"), "{bin}: {pods}");
        assert!(
            out.contains("selfsubjectaccessreviews.authorization.k8s.io"),
            "{out}"
        );
        assert!(out.contains("[/api/*]"), "{out}");
        let elsewhere = ok(server.kubectl_version(
            bin,
            &["-n", "default", "auth", "can-i", "--list", "--as=alice"],
            None,
        ));
        assert!(
            !elsewhere.lines().any(|l| l.starts_with("pods ")),
            "{elsewhere}"
        );
    }

    // whoami under impersonation: service accounts get their groups.
    let out = ok(server.kubectl(&["auth", "whoami", "--as", sa]));
    assert!(out.contains(&format!("Username    {sa}")), "{out}");
    assert!(
        out.contains("[system:serviceaccounts system:serviceaccounts:team system:authenticated]"),
        "{out}"
    );
    let out = ok(server.kubectl(&["auth", "whoami", "--as=alice", "--as-group=devs"]));
    assert!(out.contains("[devs system:authenticated]"), "{out}");

    // A real token of the service account (not impersonation) gets the same grant, and
    // the account's namespace group binds too.
    k(&["-n", "team", "create", "serviceaccount", "robot"]);
    let token = k(&["-n", "team", "create", "token", "robot"]);
    let robot = |args: &[&str]| kubectl_token(&server, token.trim(), args);
    let out = ok(robot(&["auth", "whoami"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("Username") && l.trim_end().ends_with(sa)),
        "{out}"
    );
    assert!(robot(&["-n", "team", "get", "pods"]).status.success());
    let out = robot(&["-n", "team", "get", "configmaps"]);
    assert!(
        stderr(&out).contains(&format!(
            "configmaps is forbidden: User \"{sa}\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team\""
        )),
        "{}",
        stderr(&out)
    );
    k(&[
        "-n",
        "team",
        "create",
        "role",
        "cm-reader",
        "--verb=list",
        "--resource=configmaps",
    ]);
    k(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "team-accounts",
        "--role=cm-reader",
        "--group=system:serviceaccounts:team",
    ]);
    assert!(robot(&["-n", "team", "get", "configmaps"]).status.success());

    // Removing the binding takes the permission away.
    k(&["-n", "team", "delete", "rolebinding", "readers"]);
    assert_eq!(
        can_i(
            &server,
            "kubectl",
            Some("alice"),
            &["get", "pods", "-n", "team"]
        ),
        "no"
    );
}

#[test]
fn bearer_token_users_get_exactly_their_roles() {
    let (server, _dir) = with_tokens();
    let bob = |args: &[&str]| kubectl_token(&server, "bob-token", args);

    // Authenticated, but nothing granted beyond discovery and self reviews.
    let out = bob(&["get", "pods"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "Error from server (Forbidden): pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    assert!(ok(bob(&["api-versions"])).contains("rbac.authorization.k8s.io/v1"));
    assert!(ok(bob(&["auth", "whoami"])).contains("Username    bob"));

    ok(server.kubectl(&[
        "create",
        "role",
        "pods",
        "--verb=list,get",
        "--resource=pods",
    ]));
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "bob-pods",
        "--role=pods",
        "--user=bob",
    ]));
    let out = bob(&["get", "pods"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No resources found in default namespace"),
        "{}",
        stderr(&out)
    );
    // Allowed to look, so a missing pod is a 404, not a 403.
    let out = bob(&["get", "pod", "web"]);
    assert!(
        stderr(&out).contains("pods \"web\" not found"),
        "{}",
        stderr(&out)
    );
    let out = bob(&["delete", "pod", "web"]);
    assert!(
        stderr(&out).contains(
            "pods \"web\" is forbidden: User \"bob\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    let out = bob(&["get", "pods", "-n", "kube-system"]);
    assert!(
        stderr(&out).contains("in the namespace \"kube-system\""),
        "{}",
        stderr(&out)
    );
    let out = bob(&["get", "nodes"]);
    assert!(
        stderr(&out).contains(
            "nodes is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&bob(&["auth", "can-i", "list", "pods"])).trim(),
        "yes"
    );
    assert_eq!(
        stdout(&bob(&["auth", "can-i", "create", "pods"])).trim(),
        "no"
    );

    // Groups from the token file bind too.
    ok(server.kubectl(&[
        "create",
        "clusterrolebinding",
        "devs-view",
        "--clusterrole=view",
        "--group=devs",
    ]));
    let carol = |args: &[&str]| kubectl_token(&server, "carol-token", args);
    wait_until(
        "carol reads pods through view",
        Duration::from_secs(20),
        || carol(&["get", "pods", "-A"]).status.success(),
    );
    let out = carol(&["get", "secrets"]);
    assert!(
        stderr(&out).contains("cannot list resource \"secrets\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn impersonation_needs_the_impersonate_verb() {
    let (server, _dir) = with_tokens();
    let bob = |args: &[&str]| kubectl_token(&server, "bob-token", args);
    // kubectl reports a refused discovery request as "unknown" (as against any API
    // server), so let bob fill the discovery cache as himself first.
    ok(bob(&["api-resources"]));
    let out = bob(&["get", "pods", "--as=alice"]);
    assert!(
        stderr(&out).contains(
            "users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        ),
        "{}",
        stderr(&out)
    );
    let out = bob(&["get", "pods", "--as=system:serviceaccount:default:robot"]);
    assert!(
        stderr(&out).contains(
            "serviceaccounts \"robot\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );

    ok(server.kubectl(&[
        "create",
        "clusterrole",
        "impersonate-alice",
        "--verb=impersonate",
        "--resource=users",
        "--resource-name=alice",
    ]));
    ok(server.kubectl(&[
        "create",
        "clusterrolebinding",
        "bob-as-alice",
        "--clusterrole=impersonate-alice",
        "--user=bob",
    ]));
    let out = ok(bob(&["auth", "whoami", "--as=alice"]));
    assert!(out.contains("Username    alice"), "{out}");
    // Only alice, and no groups.
    assert!(!bob(&["auth", "whoami", "--as=dave"]).status.success());
    let out = bob(&["get", "pods", "--as=alice", "--as-group=system:masters"]);
    assert!(
        stderr(&out).contains("groups \"system:masters\" is forbidden: User \"bob\" cannot impersonate resource \"groups\""),
        "{}",
        stderr(&out)
    );
    // Impersonating alice gives alice's rights, not bob's.
    ok(server.kubectl(&["create", "role", "pods", "--verb=list", "--resource=pods"]));
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "bob-pods",
        "--role=pods",
        "--user=bob",
    ]));
    assert!(bob(&["get", "pods"]).status.success());
    let out = bob(&["get", "pods", "--as=alice"]);
    assert!(
        stderr(&out).contains("User \"alice\" cannot list resource \"pods\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn escalation_is_prevented() {
    let (server, _dir) = with_tokens();
    let bob = |args: &[&str]| kubectl_token(&server, "bob-token", args);
    ok(server.kubectl(&[
        "create",
        "role",
        "role-writer",
        "--verb=create,get,update,patch",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
    ]));
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "bob-writes-roles",
        "--role=role-writer",
        "--user=bob",
    ]));

    // A Role granting what bob does not hold is refused, with upstream's message.
    let out = bob(&[
        "create",
        "role",
        "secret-deleter",
        "--verb=delete",
        "--resource=secrets",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "roles.rbac.authorization.k8s.io \"secret-deleter\" is forbidden: user \"bob\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\"]}"
        ),
        "{err}"
    );
    // Rules bob holds may be granted.
    ok(bob(&[
        "create",
        "role",
        "role-reader",
        "--verb=get",
        "--resource=roles.rbac.authorization.k8s.io",
    ]));
    // Binding a role bob could not create himself is refused too.
    ok(server.kubectl(&[
        "create",
        "role",
        "secret-deleter",
        "--verb=delete",
        "--resource=secrets",
    ]));
    let out = bob(&[
        "create",
        "rolebinding",
        "x",
        "--role=secret-deleter",
        "--user=dave",
    ]);
    assert!(
        stderr(&out)
            .contains("rolebindings.rbac.authorization.k8s.io \"x\" is forbidden: user \"bob\""),
        "{}",
        stderr(&out)
    );
    // Growing an existing role by update is an escalation as well.
    let out = bob(&[
        "patch",
        "role",
        "role-reader",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/rules/-","value":{"apiGroups":[""],"resources":["secrets"],"verbs":["delete"]}}]"#,
    ]);
    assert!(
        stderr(&out).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&out)
    );

    // Once bob holds `delete secrets`, all of that works.
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "bob-deletes",
        "--role=secret-deleter",
        "--user=bob",
    ]));
    ok(bob(&[
        "create",
        "role",
        "secret-deleter-2",
        "--verb=delete",
        "--resource=secrets",
    ]));
    ok(bob(&[
        "create",
        "rolebinding",
        "x",
        "--role=secret-deleter",
        "--user=dave",
    ]));

    // `escalate` lifts the check; `bind` allows binding without holding.
    ok(server.kubectl(&[
        "create",
        "role",
        "escalator",
        "--verb=escalate,bind",
        "--resource=roles.rbac.authorization.k8s.io",
    ]));
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "bob-escalates",
        "--role=escalator",
        "--user=bob",
    ]));
    ok(bob(&[
        "create",
        "role",
        "node-killer",
        "--verb=*",
        "--resource=pods",
    ]));
    ok(bob(&[
        "create",
        "rolebinding",
        "y",
        "--role=node-killer",
        "--user=dave",
    ]));
    // Not in other namespaces, and never cluster-wide.
    ok(server.kubectl(&["create", "namespace", "elsewhere"]));
    let out = bob(&[
        "-n",
        "elsewhere",
        "create",
        "role",
        "r",
        "--verb=get",
        "--resource=pods",
    ]);
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    let out = bob(&[
        "create",
        "clusterrole",
        "r",
        "--verb=get",
        "--resource=pods",
    ]);
    assert!(
        stderr(&out).contains("cannot create resource \"clusterroles\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn aggregated_cluster_roles_gather_labeled_rules() {
    let server = Server::start(&[]);
    let rules_of =
        |role: &str| ok(server.kubectl(&["get", "clusterrole", role, "-o", "jsonpath={.rules}"]));
    // The bootstrap aggregation: view has the aggregate-to-view rules, admin has edit's.
    wait_until(
        "view, edit and admin aggregate",
        Duration::from_secs(20),
        || {
            rules_of("view").contains("pods/log")
                && rules_of("edit").contains("pods/exec")
                && rules_of("admin").contains("localsubjectaccessreviews")
                && rules_of("admin").contains("pods/log")
        },
    );
    ok(server.kubectl(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]));
    let alice_lists_secrets = || can_i(&server, "kubectl", Some("alice"), &["list", "secrets"]);
    assert_eq!(alice_lists_secrets(), "no", "view does not show secrets");

    let manifest = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: secrets-view\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [\"\"]\n  resources: [\"secrets\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n";
    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(manifest)));
    wait_until("view gains secrets", Duration::from_secs(20), || {
        rules_of("view").contains("secrets")
    });
    // view aggregates into edit, edit into admin.
    wait_until(
        "admin gains listing secrets",
        Duration::from_secs(20),
        || {
            ok(server.kubectl(&["get", "clusterrole", "admin", "-o", "yaml"]))
                .contains("- secrets\n  verbs:\n  - get\n  - list\n  - watch")
        },
    );
    assert_eq!(alice_lists_secrets(), "yes");
    assert_eq!(
        can_i(&server, "kubectl", Some("alice"), &["delete", "secrets"]),
        "no"
    );
    assert!(
        server
            .kubectl(&["get", "secrets", "--as=alice"])
            .status
            .success()
    );

    // Removing the label removes the rules again.
    ok(server.kubectl(&[
        "label",
        "clusterrole",
        "secrets-view",
        "rbac.authorization.k8s.io/aggregate-to-view-",
    ]));
    wait_until("view loses secrets", Duration::from_secs(20), || {
        !rules_of("view").contains("secrets")
    });
    assert_eq!(alice_lists_secrets(), "no");
}

#[test]
fn bootstrap_policy_is_reconciled_at_start_and_components_work() {
    let mut server = Server::start(&[]);
    let out = ok(server.kubectl(&[
        "get",
        "clusterroles",
        "-l",
        "kubernetes.io/bootstrapping=rbac-defaults",
        "-o",
        "name",
    ]));
    for role in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:node",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:kaji-controller-manager",
    ] {
        assert!(
            out.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}\n")),
            "{role} missing:\n{out}"
        );
    }
    let out = ok(server.kubectl(&[
        "get",
        "clusterrolebinding",
        "cluster-admin",
        "-o",
        "jsonpath={.subjects[0].name}",
    ]));
    assert_eq!(out, "system:masters");

    // The controller manager runs under RBAC: namespaces are emptied and finalized.
    ok(server.kubectl(&["create", "namespace", "doomed"]));
    ok(server.kubectl(&[
        "-n",
        "doomed",
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
    ]));
    ok(server.kubectl(&["delete", "namespace", "doomed", "--wait=false"]));
    wait_until(
        "namespace doomed is deleted",
        Duration::from_secs(60),
        || {
            !server
                .kubectl(&["get", "namespace", "doomed"])
                .status
                .success()
        },
    );
    assert!(
        !server.log().contains("is forbidden"),
        "a component was denied:\n{}",
        server.log()
    );

    // A trimmed bootstrap role is restored at the next start; an opted-out one is not.
    ok(server.kubectl(&[
        "patch",
        "clusterrole",
        "system:basic-user",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/rules","value":[]}]"#,
    ]));
    ok(server.kubectl(&[
        "patch",
        "clusterrole",
        "system:discovery",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/rules","value":[]}]"#,
    ]));
    ok(server.kubectl(&[
        "annotate",
        "--overwrite",
        "clusterrole",
        "system:discovery",
        "rbac.authorization.kubernetes.io/autoupdate=false",
    ]));
    ok(server.kubectl(&["delete", "clusterrolebinding", "system:public-info-viewer"]));
    server.stop();
    server.spawn();
    let rules = ok(server.kubectl(&[
        "get",
        "clusterrole",
        "system:basic-user",
        "-o",
        "jsonpath={.rules}",
    ]));
    assert!(rules.contains("selfsubjectaccessreviews"), "{rules}");
    let rules = ok(server.kubectl(&[
        "get",
        "clusterrole",
        "system:discovery",
        "-o",
        "jsonpath={.rules}",
    ]));
    assert!(!rules.contains("/apis"), "{rules}");
    ok(server.kubectl(&["get", "clusterrolebinding", "system:public-info-viewer"]));
}

#[test]
fn review_resources_are_create_only() {
    let server = Server::start(&[]);
    let doc = ok(server.kubectl(&["get", "--raw", "/openapi/v3/apis/authorization.k8s.io/v1"]));
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let paths = v["paths"].as_object().unwrap();
    let ssar = &paths["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"];
    assert!(ssar.get("post").is_some(), "{ssar}");
    for m in ["get", "put", "patch", "delete"] {
        assert!(ssar.get(m).is_none(), "{m} on selfsubjectaccessreviews");
    }
    assert!(paths.contains_key(
        "/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews"
    ));
    assert!(
        !paths.keys().any(|p| p.contains("{name}")),
        "{:?}",
        paths.keys()
    );
    // A raw SubjectAccessReview, as an authorizing webhook client would send it.
    let sar = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","metadata":{},"spec":{"user":"alice","groups":["system:masters"],"resourceAttributes":{"verb":"delete","resource":"nodes"}}}"#;
    let out =
        ok(server.kubectl_version("kubectl", &["create", "-f", "-", "-o", "json"], Some(sar)));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["allowed"], true, "{out}");
    let out = server.kubectl(&["get", "selfsubjectaccessreviews"]);
    assert!(!out.status.success());
}
