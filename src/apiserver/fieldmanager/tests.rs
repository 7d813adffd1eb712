//! Table-driven scenarios for [`super::update`] and [`super::apply`]. Each case names the
//! upstream test or document its expectation comes from.

use serde_json::{Value, json};

use super::*;

/// A Deployment manifest as a user writes it.
fn deploy(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": image}]}
            }
        }
    })
}

/// A partial configuration: only the fields given.
fn partial(spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
}

/// A configuration of metadata only.
fn meta_only(key: &str, value: Value) -> Value {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}});
    v["metadata"][key] = value;
    v
}

fn with_meta(mut v: Value, key: &str, value: Value) -> Value {
    v["metadata"][key] = value;
    v
}

#[derive(Clone)]
enum Step {
    /// Server-side apply by a manager (force flag).
    Apply(&'static str, Value, bool),
    /// Server-side apply through `/status`.
    ApplyStatus(&'static str, Value),
    /// A non-apply write by a manager: the current object (None on create) is changed by
    /// the function.
    Update(&'static str, fn(&mut Value)),
    /// A non-apply create of this object.
    Create(&'static str, Value),
}

/// The outcome checked at the end of a case.
enum Want {
    /// The final object's fields (subset: each listed top-level path must be equal) and
    /// `(manager, operation, fieldsV1)` for every entry, in upstream's order.
    Object {
        spec: Option<Value>,
        labels: Option<Value>,
        finalizers: Option<Value>,
        managers: Vec<(&'static str, &'static str, Value)>,
    },
    /// The last step failed with this status code and message.
    Error(u16, &'static str),
    /// The last step left the object byte-for-byte unchanged.
    Unchanged,
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    want: Want,
}

fn run(steps: &[Step]) -> (Option<Value>, Option<Value>, Result<(), Status>) {
    let (mut cur, mut prev): (Option<Value>, Option<Value>) = (None, None);
    let mut last = Ok(());
    for step in steps {
        prev = cur.clone();
        let next = match step {
            Step::Apply(m, config, force) => apply(
                "apps",
                "v1",
                "Deployment",
                cur.as_ref(),
                config,
                m,
                *force,
                None,
            ),
            Step::ApplyStatus(m, config) => apply(
                "apps",
                "v1",
                "Deployment",
                cur.as_ref(),
                config,
                m,
                false,
                Some("status"),
            ),
            Step::Update(m, change) => {
                let mut new = cur.clone().unwrap_or_else(|| json!({}));
                change(&mut new);
                update("apps", "v1", "Deployment", cur.as_ref(), &mut new, m, None);
                Ok(new)
            }
            Step::Create(m, obj) => {
                let mut new = obj.clone();
                update("apps", "v1", "Deployment", None, &mut new, m, None);
                Ok(new)
            }
        };
        match next {
            Ok(v) => {
                cur = Some(v);
                last = Ok(());
            }
            Err(s) => last = Err(s),
        }
    }
    (cur, prev, last)
}

fn entries(obj: &Value) -> Vec<(String, String, Value)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                        e["fieldsV1"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const APPLIED_DEPLOY: &str = r#"{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}}}}"#;

fn applied_deploy() -> Value {
    serde_json::from_str(APPLIED_DEPLOY).unwrap()
}

fn fields_without(path: &[&str]) -> Value {
    let mut v = applied_deploy();
    let (last, parents) = path.split_last().unwrap();
    let mut cur = &mut v;
    for p in parents {
        cur = &mut cur[*p];
    }
    cur.as_object_mut().unwrap().remove(*last);
    v
}

fn cases() -> Vec<Case> {
    let mut csa_manifest = deploy(1, "nginx:1");
    csa_manifest["metadata"]["annotations"] =
        json!({LAST_APPLIED: serde_json::to_string(&deploy(1, "nginx:1")).unwrap() + "\n"});
    vec![
        Case {
            // kubernetes docs "Server-Side Apply" (field management): an applier owns exactly
            // the fields of its configuration; LabelSelector is atomic.
            name: "apply creates and owns its configuration",
            steps: vec![Step::Apply("mgr", deploy(1, "nginx:1"), false)],
            want: Want::Object {
                spec: Some(deploy(1, "nginx:1")["spec"].clone()),
                labels: None,
                finalizers: None,
                managers: vec![("mgr", "Apply", applied_deploy())],
            },
        },
        Case {
            // structured-merge-diff merge/multiple_appliers_test.go (re-apply is a no-op) and
            // managedfieldsupdater.go (time only changes with the object).
            name: "re-applying the same configuration changes nothing",
            steps: vec![
                Step::Apply("mgr", deploy(1, "nginx:1"), false),
                Step::Apply("mgr", deploy(1, "nginx:1"), false),
            ],
            want: Want::Unchanged,
        },
        Case {
            // docs "Server-Side Apply" (merge strategy): fields removed from the configuration
            // are removed from the object when nobody else owns them.
            name: "apply removes a field it no longer applies",
            steps: vec![
                Step::Apply(
                    "mgr",
                    with_meta(
                        deploy(1, "nginx:1"),
                        "labels",
                        json!({"app": "web", "tier": "fe"}),
                    ),
                    false,
                ),
                Step::Apply("mgr", deploy(1, "nginx:1"), false),
            ],
            want: Want::Object {
                spec: None,
                labels: Some(json!({"app": "web"})),
                finalizers: None,
                managers: vec![("mgr", "Apply", applied_deploy())],
            },
        },
        Case {
            // structured-merge-diff merge/multiple_appliers_test.go: a field another applier
            // also applied with the same value is shared, and survives one of them dropping it.
            name: "a dropped field another manager owns stays",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::Apply("b", partial(json!({"replicas": 1})), false),
                Step::Apply(
                    "a",
                    with_meta(
                        partial(json!({"template": deploy(1, "nginx:1")["spec"]["template"]})),
                        "labels",
                        json!({"app": "web"}),
                    ),
                    false,
                ),
            ],
            want: Want::Object {
                spec: Some(json!({
                    "replicas": 1,
                    "template": deploy(1, "nginx:1")["spec"]["template"],
                })),
                labels: None,
                finalizers: None,
                managers: vec![
                    (
                        "a",
                        "Apply",
                        fields_without(&["f:spec", "f:replicas"]).pipe(|mut v| {
                            v["f:spec"].as_object_mut().unwrap().remove("f:selector");
                            v
                        }),
                    ),
                    ("b", "Apply", json!({"f:spec": {"f:replicas": {}}})),
                ],
            },
        },
        Case {
            // docs "Server-Side Apply" (conflicts): changing a field another applier owns is a
            // conflict; message format of apimachinery managedfields/internal/conflict.go.
            name: "two appliers conflict on replicas",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::Apply("b", partial(json!({"replicas": 2})), false),
            ],
            want: Want::Error(
                409,
                r#"Apply failed with 1 conflict: conflict with "a": .spec.replicas"#,
            ),
        },
        Case {
            // docs "Server-Side Apply" (conflicts): an updater is named with its API version.
            name: "conflict with an updater names its version",
            steps: vec![
                Step::Create("kubectl-client-side-apply", deploy(1, "nginx:1")),
                Step::Apply("other", partial(json!({"replicas": 2})), false),
            ],
            want: Want::Error(
                409,
                r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas"#,
            ),
        },
        Case {
            // docs "Server-Side Apply" (transferring ownership): force takes the field over.
            name: "force transfers ownership",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::Apply("b", partial(json!({"replicas": 2})), true),
            ],
            want: Want::Object {
                spec: Some(deploy(2, "nginx:1")["spec"].clone()),
                labels: None,
                finalizers: None,
                managers: vec![
                    ("a", "Apply", fields_without(&["f:spec", "f:replicas"])),
                    ("b", "Apply", json!({"f:spec": {"f:replicas": {}}})),
                ],
            },
        },
        Case {
            // structured-merge-diff merge/key_test.go: list-map items (containers by name)
            // are owned and merged separately.
            name: "containers merge by name",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::Apply(
                    "b",
                    partial(
                        json!({"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}}),
                    ),
                    false,
                ),
                Step::Apply("a", deploy(1, "nginx:2"), false),
            ],
            want: Want::Object {
                spec: Some(json!({
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx:2"}, {"name": "sidecar", "image": "busybox"}]}
                    }
                })),
                labels: None,
                finalizers: None,
                managers: vec![
                    ("a", "Apply", applied_deploy()),
                    (
                        "b",
                        "Apply",
                        json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"sidecar\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}),
                    ),
                ],
            },
        },
        Case {
            // structured-merge-diff merge/set_test.go: set items belong to whoever applied them.
            name: "finalizers merge as a set",
            steps: vec![
                Step::Apply(
                    "a",
                    meta_only("finalizers", json!(["example.com/a"])),
                    false,
                ),
                Step::Apply(
                    "b",
                    meta_only("finalizers", json!(["example.com/b"])),
                    false,
                ),
                Step::Apply("a", partial(json!({"paused": false})), false),
            ],
            want: Want::Object {
                spec: Some(json!({"paused": false})),
                labels: None,
                finalizers: Some(json!(["example.com/b"])),
                managers: vec![
                    ("a", "Apply", json!({"f:spec": {"f:paused": {}}})),
                    (
                        "b",
                        "Apply",
                        json!({"f:metadata": {"f:finalizers": {"v:\"example.com/b\"": {}}}}),
                    ),
                ],
            },
        },
        Case {
            // docs "Server-Side Apply" (field management): an Update that changes an applied
            // field takes it over; the applier then conflicts with the updater.
            name: "update after apply transfers the changed fields",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::Update("scaler", |o| o["spec"]["replicas"] = json!(3)),
            ],
            want: Want::Object {
                spec: Some(deploy(3, "nginx:1")["spec"].clone()),
                labels: None,
                finalizers: None,
                managers: vec![
                    ("a", "Apply", fields_without(&["f:spec", "f:replicas"])),
                    ("scaler", "Update", json!({"f:spec": {"f:replicas": {}}})),
                ],
            },
        },
        Case {
            name: "the applier then conflicts with the updater",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::Update("scaler", |o| o["spec"]["replicas"] = json!(3)),
                Step::Apply("a", deploy(1, "nginx:1"), false),
            ],
            want: Want::Error(
                409,
                r#"conflict with "scaler" using apps/v1: .spec.replicas"#,
            ),
        },
        Case {
            // A create owns every field it set; maps and list items that appear are members
            // (`.`); value structs like spec.strategy are not (kubectl create's entry).
            name: "create records every field",
            steps: vec![Step::Create(
                "kubectl-create",
                with_meta(deploy(1, "nginx:1"), "uid", json!("u")).pipe(|mut d| {
                    d["spec"]["strategy"] =
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}});
                    d["status"] = json!({"replicas": 0});
                    d
                }),
            )],
            want: Want::Object {
                spec: None,
                labels: None,
                finalizers: None,
                managers: vec![(
                    "kubectl-create",
                    "Update",
                    json!({
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {
                            "f:replicas": {}, "f:selector": {},
                            "f:strategy": {"f:type": {}, "f:rollingUpdate": {".": {}, "f:maxSurge": {}}},
                            "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                                "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}, "f:resources": {}}}}}
                        }
                    }),
                )],
            },
        },
        Case {
            // apimachinery managedfields/internal/fieldmanager.go (isResetManagedFields) and
            // skipnonapplied.go: `[]` clears managedFields and the object stays untracked.
            name: "managedFields reset by an empty list stays reset",
            steps: vec![
                Step::Create("kubectl-create", deploy(1, "nginx:1")),
                Step::Update("edit", |o| o["metadata"]["managedFields"] = json!([])),
                Step::Update("scaler", |o| o["spec"]["replicas"] = json!(5)),
            ],
            want: Want::Object {
                spec: Some(deploy(5, "nginx:1")["spec"].clone()),
                labels: None,
                finalizers: None,
                managers: vec![],
            },
        },
        Case {
            // skipnonapplied.go: the first apply to an untracked object hands its existing
            // fields to `before-first-apply`, which then conflicts like any updater.
            name: "first apply to an untracked object",
            steps: vec![
                Step::Create("kubectl-create", deploy(1, "nginx:1")),
                Step::Update("edit", |o| o["metadata"]["managedFields"] = json!([])),
                Step::Apply("a", partial(json!({"replicas": 2})), false),
            ],
            want: Want::Error(
                409,
                r#"conflict with "before-first-apply" using apps/v1: .spec.replicas"#,
            ),
        },
        Case {
            // docs "Server-Side Apply" (upgrading from client-side apply) and apimachinery
            // lastappliedmanager.go: `kubectl` takes over fields whose live value matches the
            // last-applied annotation.
            name: "kubectl upgrades from client-side apply",
            steps: vec![
                Step::Create("kubectl-client-side-apply", csa_manifest.clone()),
                Step::Apply("kubectl", deploy(2, "nginx:1"), false),
            ],
            want: Want::Object {
                spec: Some(deploy(2, "nginx:1")["spec"].clone()),
                labels: None,
                finalizers: None,
                managers: vec![
                    ("kubectl", "Apply", applied_deploy()),
                    (
                        "kubectl-client-side-apply",
                        "Update",
                        json!({"f:metadata": {"f:annotations": {".": {}, format!("f:{LAST_APPLIED}"): {}}, "f:labels": {".": {}, "f:app": {}}},
                               "f:spec": {"f:selector": {},
                                          "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                                                         "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}, "f:resources": {}}}}}}}),
                    ),
                ],
            },
        },
        Case {
            // lastappliedmanager.go: only the manager `kubectl` upgrades.
            name: "other appliers still conflict with client-side apply",
            steps: vec![
                Step::Create("kubectl-client-side-apply", csa_manifest),
                Step::Apply("other", deploy(2, "nginx:1"), false),
            ],
            want: Want::Error(
                409,
                "conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas",
            ),
        },
        Case {
            // structuredmerge.go: an apply may not carry managedFields.
            name: "apply with managedFields is rejected",
            steps: vec![Step::Apply(
                "a",
                with_meta(deploy(1, "x"), "managedFields", json!([])),
                false,
            )],
            want: Want::Error(400, "metadata.managedFields must be nil"),
        },
        Case {
            // versioncheck.go: the configuration must name the served kind.
            name: "apply without apiVersion and kind is rejected",
            steps: vec![Step::Apply(
                "a",
                json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}}),
                false,
            )],
            want: Want::Error(400, "invalid object type: /, Kind="),
        },
        Case {
            // kubernetes/kubernetes#121575 (structured-merge-diff v4.4.0): duplicate keys in
            // an applied configuration are a plain 500 error.
            name: "apply with duplicate list-map keys fails",
            steps: vec![Step::Apply(
                "a",
                partial(
                    json!({"template": {"spec": {"containers": [{"name": "c"}, {"name": "c"}]}}}),
                ),
                false,
            )],
            want: Want::Error(
                500,
                r#"failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .spec.template.spec.containers: duplicate entries for key [name="c"]"#,
            ),
        },
        Case {
            // Unknown fields (reported by fieldValidation) are neither applied nor owned.
            name: "unknown fields are dropped from the configuration",
            steps: vec![Step::Apply(
                "a",
                partial(json!({"replicas": 1, "bogus": true})),
                false,
            )],
            want: Want::Object {
                spec: Some(json!({"replicas": 1})),
                labels: None,
                finalizers: None,
                managers: vec![("a", "Apply", json!({"f:spec": {"f:replicas": {}}}))],
            },
        },
        Case {
            // Status applies are recorded with subresource `status` and own only status.
            name: "apply through status",
            steps: vec![
                Step::Apply("a", deploy(1, "nginx:1"), false),
                Step::ApplyStatus(
                    "ctrl",
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 9}, "status": {"replicas": 1}}),
                ),
            ],
            want: Want::Object {
                spec: Some(deploy(1, "nginx:1")["spec"].clone()),
                labels: None,
                finalizers: None,
                managers: vec![
                    ("a", "Apply", applied_deploy()),
                    ("ctrl", "Apply", json!({"f:status": {"f:replicas": {}}})),
                ],
            },
        },
    ]
}

trait Pipe: Sized {
    fn pipe(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }
}
impl Pipe for Value {}

#[test]
fn scenarios() {
    for case in cases() {
        let (obj, prev, last) = run(&case.steps);
        match case.want {
            Want::Error(code, message) => {
                let err = last.expect_err(case.name);
                assert_eq!(err.code, code, "{}: {err}", case.name);
                assert!(
                    err.message.contains(message),
                    "{}: got {:?}",
                    case.name,
                    err.message
                );
                if code == 409 {
                    assert_eq!(err.reason, "Conflict");
                    assert!(err.causes.iter().all(|c| c.reason == "FieldManagerConflict"
                        && c.message.starts_with("conflict with ")));
                }
            }
            Want::Unchanged => {
                last.expect(case.name);
                assert_eq!(obj, prev, "{}", case.name);
            }
            Want::Object {
                spec,
                labels,
                finalizers,
                managers,
            } => {
                last.expect(case.name);
                let obj = obj.expect(case.name);
                if let Some(spec) = spec {
                    assert_eq!(obj["spec"], spec, "{}: spec", case.name);
                }
                if let Some(labels) = labels {
                    assert_eq!(obj["metadata"]["labels"], labels, "{}: labels", case.name);
                }
                if let Some(finalizers) = finalizers {
                    assert_eq!(
                        obj["metadata"]["finalizers"], finalizers,
                        "{}: finalizers",
                        case.name
                    );
                }
                // Entries within one operation are ordered by time, which may tick between steps.
                let mut got = entries(&obj);
                got.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
                let want: Vec<(String, String, Value)> = managers
                    .into_iter()
                    .map(|(m, op, f)| (m.to_string(), op.to_string(), f))
                    .collect();
                assert_eq!(got, want, "{}: managers", case.name);
            }
        }
    }
}

#[test]
fn conflict_status_lists_every_conflict() {
    let steps = [
        Step::Apply("a", deploy(1, "nginx:1"), false),
        Step::Apply("b", deploy(2, "nginx:2"), false),
    ];
    let err = run(&steps).2.unwrap_err();
    assert_eq!(
        err.message,
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"nginx\"].image"
    );
    let body = err.to_json();
    assert_eq!(body["code"], 409);
    assert_eq!(
        body["details"]["causes"][0],
        json!({"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".spec.replicas"})
    );
}

#[test]
fn kubectl_apply_rewrites_the_last_applied_annotation() {
    let mut csa = deploy(1, "nginx:1");
    csa["metadata"]["annotations"] = json!({LAST_APPLIED: "{}\n"});
    let mut applied = deploy(1, "nginx:1");
    applied["metadata"]["annotations"] = json!({"team": "x"});
    let (obj, _, last) = run(&[
        Step::Create("kubectl-client-side-apply", csa),
        Step::Apply("kubectl", applied.clone(), false),
    ]);
    last.unwrap();
    let obj = obj.unwrap();
    let text = obj["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .unwrap();
    assert!(text.ends_with('\n'));
    let mut want = applied;
    want["metadata"]["annotations"] = json!({"team": "x"});
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), want);
}

#[test]
fn update_entries_are_capped() {
    let mut obj = deploy(1, "nginx:1");
    update("apps", "v1", "Deployment", None, &mut obj, "creator", None);
    for i in 0..12 {
        let old = obj.clone();
        obj["metadata"]["labels"][format!("l{i}")] = json!("x");
        update(
            "apps",
            "v1",
            "Deployment",
            Some(&old),
            &mut obj,
            &format!("m{i:02}"),
            None,
        );
    }
    let list = entries(&obj);
    assert_eq!(list.len(), 10, "{list:?}");
    assert!(list.iter().any(|(m, _, _)| m == ANCIENT_CHANGES));
    // Every label is still owned by someone.
    let owned: Set = list
        .iter()
        .map(|(_, _, f)| Set::from_fields_v1(f).unwrap())
        .fold(Set::new(), |a, b| a.union(&b));
    for i in 0..12 {
        let f = PathElement::field;
        assert!(
            owned.has(&[f("metadata"), f("labels"), f(&format!("l{i}"))]),
            "l{i}"
        );
    }
}

#[test]
fn client_sent_managed_fields() {
    let mut obj = deploy(1, "nginx:1");
    update("apps", "v1", "Deployment", None, &mut obj, "creator", None);
    let stored = obj.clone();
    // Omitted: kept.
    let mut new = stored.clone();
    new["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    new["spec"]["replicas"] = json!(2);
    update(
        "apps",
        "v1",
        "Deployment",
        Some(&stored),
        &mut new,
        "scaler",
        None,
    );
    assert_eq!(entries(&new).len(), 2);
    // Edited: honoured as the new base.
    let mut new = stored.clone();
    new["metadata"]["managedFields"][0]["manager"] = json!("renamed");
    update(
        "apps",
        "v1",
        "Deployment",
        Some(&stored),
        &mut new,
        "x",
        None,
    );
    assert_eq!(entries(&new)[0].0, "renamed");
    // Through a subresource: ignored.
    let mut new = stored.clone();
    new["metadata"]["managedFields"] = json!([]);
    new["status"] = json!({"replicas": 1});
    update(
        "apps",
        "v1",
        "Deployment",
        Some(&stored),
        &mut new,
        "ctrl",
        Some("status"),
    );
    let list = entries(&new);
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].2, json!({"f:status": {"f:replicas": {}}}));
    assert_eq!(new["metadata"]["managedFields"][1]["subresource"], "status");
    // Garbage: the stored ones are used.
    let mut new = stored.clone();
    new["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Bogus"}]);
    update(
        "apps",
        "v1",
        "Deployment",
        Some(&stored),
        &mut new,
        "y",
        None,
    );
    assert_eq!(
        new["metadata"]["managedFields"],
        stored["metadata"]["managedFields"]
    );
}
