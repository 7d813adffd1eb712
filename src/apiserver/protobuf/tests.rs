//! Decoder tests: bodies captured from kubectl 1.33 (`testdata/protobuf/*.bin`, logged
//! with `-v=10`) and hand-built messages for what kubectl's generators never send.

use serde_json::json;

use super::*;

/// A protobuf message under construction (test-only encoder).
#[derive(Default, Clone)]
struct Msg(Vec<u8>);

impl Msg {
    fn new() -> Self {
        Msg::default()
    }
    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, n: u32, wire: u8) {
        self.raw_varint(u64::from(n) << 3 | u64::from(wire));
    }
    fn varint(mut self, n: u32, v: u64) -> Self {
        self.tag(n, 0);
        self.raw_varint(v);
        self
    }
    fn int(self, n: u32, v: i64) -> Self {
        self.varint(n, v as u64)
    }
    fn bytes(mut self, n: u32, b: &[u8]) -> Self {
        self.tag(n, 2);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, n: u32, s: &str) -> Self {
        self.bytes(n, s.as_bytes())
    }
    fn msg(self, n: u32, m: Msg) -> Self {
        self.bytes(n, &m.0)
    }
    fn double(mut self, n: u32, f: f64) -> Self {
        self.tag(n, 1);
        self.0.extend_from_slice(&f.to_bits().to_le_bytes());
        self
    }
    /// A `map<string, string>` entry.
    fn entry(self, n: u32, k: &str, v: &str) -> Self {
        self.msg(n, Msg::new().str(1, k).str(2, v))
    }
    /// A `map<string, Message>` entry.
    fn entry_msg(self, n: u32, k: &str, v: Msg) -> Self {
        self.msg(n, Msg::new().str(1, k).msg(2, v))
    }
}

fn int_or_string_int(i: i32) -> Msg {
    Msg::new().int(1, 0).int(2, i64::from(i))
}
fn int_or_string_str(s: &str) -> Msg {
    Msg::new().int(1, 1).str(3, s)
}
fn quantity(s: &str) -> Msg {
    Msg::new().str(1, s)
}
fn name_meta(name: &str) -> Msg {
    Msg::new().str(1, name)
}

/// `k8s\0` + runtime.Unknown{typeMeta, raw, contentEncoding "", contentType ""}.
fn object(api_version: &str, kind: &str, m: Msg) -> Vec<u8> {
    let unknown = Msg::new()
        .msg(1, Msg::new().str(1, api_version).str(2, kind))
        .msg(2, m)
        .str(3, "")
        .str(4, "");
    [MAGIC, &unknown.0].concat()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/testdata/protobuf/{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn kubectl_1_33_bodies() {
    let cases: &[(&str, Value)] = &[
        (
            "configmap",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"},
                   "data": {"a": "b", "c": "d"}}),
        ),
        (
            "configmap-binary",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm2"},
                   "data": {"text": "hello"}, "binaryData": {"blob": "AAH//g=="}}),
        ),
        (
            "secret",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
                   "data": {"k": "dg==", "empty": ""}}),
        ),
        (
            "deployment",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "labels": {"app": "web"}},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                            "strategy": {},
                            "template": {"metadata": {"labels": {"app": "web"}},
                                         "spec": {"containers": [{"name": "busybox", "image": "busybox",
                                                                  "ports": [{"containerPort": 8080}],
                                                                  "resources": {}}]}}},
                   "status": {}}),
        ),
        (
            "job",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j1"},
                   "spec": {"template": {"metadata": {}, "spec": {
                       "containers": [{"name": "j1", "image": "busybox", "command": ["echo", "hi"],
                                       "resources": {}}],
                       "restartPolicy": "Never"}}},
                   "status": {}}),
        ),
        (
            "namespace",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n1"},
                   "spec": {}, "status": {}}),
        ),
        (
            "service-nodeport",
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "svc2", "labels": {"app": "svc2"}},
                   "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                                       "targetPort": 8080, "nodePort": 30080}],
                            "selector": {"app": "svc2"}, "type": "NodePort"},
                   "status": {"loadBalancer": {}}}),
        ),
        (
            "rolebinding",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "rb1"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r1"},
                   "subjects": [
                       {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"},
                       {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"},
                       {"kind": "ServiceAccount", "name": "default", "namespace": "default"}]}),
        ),
        (
            "clusterrole",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "cr1"},
                   "rules": [{"nonResourceURLs": ["/logs"], "verbs": ["get"]}]}),
        ),
        (
            // The byte layout of kubectl-surface.md §1.3.
            "selfsubjectaccessreview",
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                   "metadata": {},
                   "spec": {"resourceAttributes": {"namespace": "default", "verb": "create",
                                                   "resource": "pods", "subresource": "log"}},
                   "status": {"allowed": false}}),
        ),
        (
            "selfsubjectrulesreview",
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                   "metadata": {}, "spec": {"namespace": "default"},
                   "status": {"incomplete": false}}),
        ),
        (
            "tokenrequest",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
                   "spec": {"audiences": ["api"], "expirationSeconds": 3600},
                   "status": {"token": ""}}),
        ),
        (
            "poddisruptionbudget",
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb1"},
                   "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "x"}}},
                   "status": {"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0,
                              "expectedPods": 0}}),
        ),
        (
            "resourcequota",
            json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q1"},
                   "spec": {"hard": {"cpu": "1", "memory": "1Gi", "pods": "10"}}, "status": {}}),
        ),
        (
            "ingress",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ing1"},
                   "spec": {"rules": [{"host": "foo.com", "http": {"paths": [{
                                "backend": {"service": {"name": "svc1", "port": {"number": 8080}}},
                                "path": "/bar", "pathType": "Prefix"}]}}],
                            "tls": [{"hosts": ["foo.com"], "secretName": "my-cert"}]},
                   "status": {"loadBalancer": {}}}),
        ),
        (
            "priorityclass",
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "pc1"},
                   "value": 1000, "description": "hi", "preemptionPolicy": "Never"}),
        ),
        (
            "horizontalpodautoscaler",
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "web"},
                   "spec": {"maxReplicas": 3, "minReplicas": 1,
                            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": 50}}}],
                            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}},
                   "status": {"desiredReplicas": 0}}),
        ),
    ];
    for (name, want) in cases {
        let got = decode(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, want, "{name}");
    }
    // Every captured body decodes.
    let dir = format!("{}/testdata/protobuf", env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let v = decode(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            v["kind"].is_string() && v["metadata"].is_object(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn deployment_with_int_or_string_quantities_and_pod_spec() {
    let container = Msg::new()
        .str(1, "app")
        .str(2, "nginx:1.27")
        .str(4, "--port=80")
        .msg(6, Msg::new().str(1, "http").int(3, 80).str(4, "TCP"))
        .msg(7, Msg::new().str(1, "MODE").str(2, "prod"))
        .msg(
            8,
            Msg::new()
                .entry_msg(1, "cpu", quantity("500m"))
                .entry_msg(1, "memory", quantity("128Mi"))
                .entry_msg(2, "cpu", quantity("100m")),
        )
        .str(14, "IfNotPresent");
    let pod_spec = Msg::new()
        .msg(
            1,
            Msg::new().str(1, "cfg").msg(
                2,
                Msg::new().msg(19, Msg::new().msg(1, name_meta("settings")).int(3, 0o644)),
            ),
        )
        .msg(2, container)
        .int(4, 0) // terminationGracePeriodSeconds: 0 (pointer: kept)
        .varint(11, 0) // hostNetwork: false (omitempty: dropped)
        .msg(
            14,
            Msg::new()
                .int(2, 0)
                .varint(3, 1)
                .varint(4, 1000)
                .varint(4, 2000),
        )
        .varint(21, 0); // automountServiceAccountToken: false (pointer: kept)
    let strategy = Msg::new().str(1, "RollingUpdate").msg(
        2,
        Msg::new()
            .msg(1, int_or_string_int(0))
            .msg(2, int_or_string_str("25%")),
    );
    let deployment = Msg::new()
        .msg(
            1,
            Msg::new()
                .str(1, "web")
                .str(3, "prod")
                .entry(11, "app", "web")
                .entry(12, "note", "x"),
        )
        .msg(
            2,
            Msg::new()
                .int(1, 0) // replicas: 0 is meaningful
                .msg(2, Msg::new().entry(1, "app", "web"))
                .msg(
                    3,
                    Msg::new()
                        .msg(1, Msg::new().entry(11, "app", "web"))
                        .msg(2, pod_spec),
                )
                .msg(4, strategy)
                .int(5, 0)
                .int(6, 5)
                .int(9, 600),
        );
    let got = decode_object(&object("apps/v1", "Deployment", deployment)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"},
                         "annotations": {"note": "x"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "volumes": [{"name": "cfg", "configMap": {"name": "settings", "defaultMode": 420}}],
                        "containers": [{
                            "name": "app", "image": "nginx:1.27", "args": ["--port=80"],
                            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "MODE", "value": "prod"}],
                            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"},
                                          "requests": {"cpu": "100m"}},
                            "imagePullPolicy": "IfNotPresent"
                        }],
                        "terminationGracePeriodSeconds": 0,
                        "securityContext": {"runAsUser": 0, "runAsNonRoot": true,
                                            "supplementalGroups": [1000, 2000]},
                        "automountServiceAccountToken": false
                    }
                },
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
                "revisionHistoryLimit": 5,
                "progressDeadlineSeconds": 600
            }
        })
    );
    // And it is a valid Deployment for the typed model.
    serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(got).unwrap();
}

#[test]
fn pod_with_probes_and_ports() {
    let probe = |handler: Msg| {
        Msg::new().msg(1, handler).int(2, 3).int(4, 10).int(6, 0) // failureThreshold 0: omitempty, dropped
    };
    let container = Msg::new()
        .str(1, "web")
        .str(2, "busybox")
        .str(3, "sleep")
        .str(4, "3600")
        .msg(6, Msg::new().int(3, 8080).int(2, 0))
        .msg(6, Msg::new().str(1, "dns").int(3, 53).str(4, "UDP"))
        .msg(
            10,
            probe(
                Msg::new().msg(
                    2,
                    Msg::new()
                        .str(1, "/healthz")
                        .msg(2, int_or_string_str("http"))
                        .msg(5, Msg::new().str(1, "X-A").str(2, "b")),
                ),
            ),
        )
        .msg(
            11,
            probe(Msg::new().msg(3, Msg::new().msg(1, int_or_string_int(8080)))),
        )
        .msg(
            22,
            probe(Msg::new().msg(1, Msg::new().str(1, "cat").str(1, "/ready"))),
        )
        .msg(15, Msg::new().varint(2, 0).varint(7, 1).int(4, 1000)) // privileged false, allowPrivilegeEscalation true
        .varint(16, 1)
        .varint(18, 1);
    let pod = Msg::new()
        .msg(1, Msg::new().str(1, "p").entry(11, "a", "b"))
        .msg(
            2,
            Msg::new()
                .msg(2, container)
                .str(3, "Never")
                .str(10, "node-1"),
        );
    let got = decode_object(&object("v1", "Pod", pod)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {
                "containers": [{
                    "name": "web", "image": "busybox", "command": ["sleep"], "args": ["3600"],
                    "ports": [{"containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                                                  "httpHeaders": [{"name": "X-A", "value": "b"}]},
                                      "initialDelaySeconds": 3, "periodSeconds": 10},
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3,
                                       "periodSeconds": 10},
                    "startupProbe": {"exec": {"command": ["cat", "/ready"]}, "initialDelaySeconds": 3,
                                     "periodSeconds": 10},
                    "securityContext": {"privileged": false, "allowPrivilegeEscalation": true,
                                        "runAsUser": 1000},
                    "stdin": true, "tty": true
                }],
                "restartPolicy": "Never",
                "nodeName": "node-1"
            }
        })
    );
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(got).unwrap();
}

#[test]
fn times_durations_and_raw_json() {
    // 2024-05-06T07:08:09Z = 1714979289
    let meta = Msg::new()
        .str(1, "e")
        .msg(8, Msg::new().int(1, 1_714_979_289).int(2, 999_999_999)) // nanos dropped, as upstream
        .msg(9, Msg::new()) // empty Time: Go's zero time, null, left out
        .msg(
            17,
            Msg::new()
                .str(1, "kubectl")
                .str(2, "Update")
                .msg(4, Msg::new().int(1, 0))
                .str(6, "FieldsV1")
                .msg(7, Msg::new().bytes(1, br#"{"f:data":{".":{}}}"#)),
        );
    let event = Msg::new()
        .msg(1, meta)
        .msg(2, Msg::new().int(1, 1_714_979_289).int(2, 123_456_789)) // eventTime: MicroTime
        .str(6, "Pulled")
        .msg(13, Msg::new().int(1, -1)) // before the epoch
        .msg(14, Msg::new().int(1, -62_135_596_800)); // Go's zero time again
    let got = decode_object(&object("events.k8s.io/v1", "Event", event)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "creationTimestamp": "2024-05-06T07:08:09Z",
                         "managedFields": [{"manager": "kubectl", "operation": "Update",
                                            "time": "1970-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:data": {".": {}}}}]},
            "eventTime": "2024-05-06T07:08:09.123456Z",
            "action": "Pulled",
            "deprecatedFirstTimestamp": "1969-12-31T23:59:59Z"
        })
    );
    serde_json::from_value::<k8s_openapi::api::events::v1::Event>(got).unwrap();

    let cases: &[(i64, &str)] = &[
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (150_000_000, "150ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_000_000_001, "1h2m3.000000001s"),
        (-5_000_000_000, "-5s"),
        (i64::MIN, "-2562047h47m16.854775808s"),
    ];
    for (nanos, want) in cases {
        assert_eq!(go_duration(*nanos), *want, "{nanos}");
    }

    let lease = Msg::new().msg(1, name_meta("l")).msg(
        2,
        Msg::new()
            .str(1, "")
            .int(2, 15)
            .msg(4, Msg::new().int(1, 10).int(2, -1_500)) // nanos below zero borrow a second
            .int(5, 0),
    );
    let got = decode_object(&object("coordination.k8s.io/v1", "Lease", lease)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"holderIdentity": "", "leaseDurationSeconds": 15,
               "renewTime": "1970-01-01T00:00:09.999999Z", "leaseTransitions": 0})
    );

    let revision = Msg::new()
        .msg(1, name_meta("r"))
        .msg(2, Msg::new().bytes(1, br#"{"spec":{"x":[1,2]}}"#))
        .int(3, 2);
    let got = decode_object(&object("apps/v1", "ControllerRevision", revision)).unwrap();
    assert_eq!(got["data"], json!({"spec": {"x": [1, 2]}}));
    assert_eq!(got["revision"], json!(2));
}

#[test]
fn reviews_tokens_and_evictions() {
    // SubjectAccessReview with `extra` (map of ExtraValue lists).
    let sar = Msg::new().msg(1, Msg::new()).msg(
        2,
        Msg::new()
            .msg(2, Msg::new().str(1, "/healthz").str(2, "get"))
            .str(3, "alice")
            .str(4, "devs")
            .str(4, "system:authenticated")
            .entry_msg(5, "scopes", Msg::new().str(1, "a").str(1, "b"))
            .entry_msg(5, "empty", Msg::new()),
    );
    let got = decode_object(&object(
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        sar,
    ))
    .unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
               "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}, "user": "alice",
                        "groups": ["devs", "system:authenticated"],
                        "extra": {"scopes": ["a", "b"], "empty": []}}})
    );
    serde_json::from_value::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(got)
        .unwrap();

    // TokenRequest bound to a pod.
    let tr = Msg::new().msg(1, Msg::new()).msg(
        2,
        Msg::new()
            .str(1, "https://kubernetes.default.svc")
            .msg(
                3,
                Msg::new()
                    .str(1, "Pod")
                    .str(2, "v1")
                    .str(3, "web-0")
                    .str(4, "1234"),
            )
            .int(4, 600),
    );
    let got = decode_object(&object("authentication.k8s.io/v1", "TokenRequest", tr)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"audiences": ["https://kubernetes.default.svc"],
               "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-0", "uid": "1234"},
               "expirationSeconds": 600})
    );

    // policy/v1 Eviction with delete options (gracePeriodSeconds 0 is a real value).
    let eviction = Msg::new()
        .msg(1, Msg::new().str(1, "web-0").str(3, "default"))
        .msg(
            2,
            Msg::new()
                .int(1, 0)
                .msg(2, Msg::new().str(1, "uid-1"))
                .str(5, "All"),
        );
    let got = decode_object(&object("policy/v1", "Eviction", eviction)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": "web-0", "namespace": "default"},
               "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "uid-1"},
                                 "dryRun": ["All"]}})
    );

    // meta/v1 options under any group version.
    let opts = Msg::new().int(1, 30).str(4, "Foreground");
    for api_version in ["v1", "apps/v1", "autoscaling/v2", "meta.k8s.io/v1"] {
        let got = decode_object(&object(api_version, "DeleteOptions", opts.clone())).unwrap();
        assert_eq!(
            got,
            json!({"apiVersion": api_version, "kind": "DeleteOptions", "gracePeriodSeconds": 30,
                   "propagationPolicy": "Foreground"})
        );
    }

    // autoscaling/v1 Scale and the core/v1 Binding subresources.
    let scale = Msg::new()
        .msg(1, name_meta("web"))
        .msg(2, Msg::new().int(1, 3));
    assert_eq!(
        decode_object(&object("autoscaling/v1", "Scale", scale)).unwrap()["spec"],
        json!({"replicas": 3})
    );
    let binding = Msg::new()
        .msg(1, name_meta("p"))
        .msg(2, Msg::new().str(1, "Node").str(3, "node-1"));
    assert_eq!(
        decode_object(&object("v1", "Binding", binding)).unwrap()["target"],
        json!({"kind": "Node", "name": "node-1"})
    );
}

#[test]
fn custom_resource_definition_schemas() {
    let string_schema = Msg::new().str(5, "string").str(15, "^a");
    let schema = Msg::new()
        .str(5, "object")
        .entry_msg(29, "name", string_schema.clone())
        .entry_msg(
            29,
            "tags",
            Msg::new()
                .str(5, "array")
                .msg(24, Msg::new().msg(1, string_schema.clone()))
                .int(16, 0)
                .str(42, "set"),
        )
        .entry_msg(
            29,
            "size",
            Msg::new()
                .str(5, "number")
                .double(9, 2.5)
                .double(11, 0.0)
                .msg(8, Msg::new().bytes(1, b"1.5"))
                .msg(20, Msg::new().bytes(1, b"1"))
                .msg(20, Msg::new().bytes(1, b"\"x\"")),
        )
        .entry_msg(
            29,
            "labels",
            Msg::new()
                .str(5, "object")
                .msg(30, Msg::new().msg(2, string_schema)),
        )
        .entry_msg(
            29,
            "free",
            Msg::new()
                .str(5, "object")
                .msg(30, Msg::new().varint(1, 0))
                .varint(38, 1),
        )
        .entry_msg(32, "name", Msg::new().str(2, "tags"))
        .str(23, "name")
        .msg(
            44,
            Msg::new().str(1, "self.name != ''").str(2, "name required"),
        );
    let crd = Msg::new().msg(1, name_meta("widgets.example.com")).msg(
        2,
        Msg::new()
            .str(1, "example.com")
            .msg(
                3,
                Msg::new()
                    .str(1, "widgets")
                    .str(2, "widget")
                    .str(4, "Widget")
                    .str(5, "WidgetList"),
            )
            .str(4, "Namespaced")
            .msg(
                7,
                Msg::new()
                    .str(1, "v1")
                    .varint(2, 1)
                    .varint(3, 1)
                    .msg(4, Msg::new().msg(1, schema))
                    .msg(5, Msg::new().msg(1, Msg::new())),
            ),
    );
    let got = decode_object(&object(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        crd,
    ))
    .unwrap();
    assert_eq!(
        got["spec"],
        json!({
            "group": "example.com",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^a"},
                        "tags": {"type": "array", "items": {"type": "string", "pattern": "^a"},
                                 "maxItems": 0, "x-kubernetes-list-type": "set"},
                        "size": {"type": "number", "maximum": 2.5, "minimum": 0.0, "default": 1.5,
                                 "enum": [1, "x"]},
                        "labels": {"type": "object",
                                   "additionalProperties": {"type": "string", "pattern": "^a"}},
                        "free": {"type": "object", "additionalProperties": false,
                                 "x-kubernetes-preserve-unknown-fields": true}
                    },
                    "dependencies": {"name": ["tags"]},
                    "required": ["name"],
                    "x-kubernetes-validations": [{"rule": "self.name != ''", "message": "name required"}]
                }},
                "subresources": {"status": {}}
            }]
        })
    );
    serde_json::from_value::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >(got)
    .unwrap();
}

#[test]
fn wire_details() {
    // Unknown fields of every wire type are skipped; a repeated scalar may be packed;
    // negative int32 is sign-extended to ten bytes; the last of a repeated singular
    // scalar wins, and a zero written last clears it; messages written twice merge.
    let mut spec = Msg::new()
        .str(99, "future field")
        .varint(98, 7)
        .double(97, 1.0)
        .bytes(4, &[0xe8, 0x07, 0xd0, 0x0f]) // supplementalGroups packed: 1000, 2000
        .int(2, -1) // runAsUser -1
        .int(5, 7)
        .int(5, 0); // fsGroup: pointer, so the final 0 stays
    spec.tag(96, 3); // a group, skipped whole
    spec = spec.varint(1, 1);
    spec.tag(96, 4);
    let pod = Msg::new()
        .msg(1, Msg::new().str(1, "a"))
        .msg(1, Msg::new().entry(11, "k", "v"))
        .msg(
            2,
            Msg::new()
                .msg(14, spec)
                .str(3, "Always")
                .str(3, "")
                .int(25, -5),
        );
    let got = decode_object(&object("v1", "Pod", pod)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"k": "v"}},
               "spec": {"securityContext": {"supplementalGroups": [1000, 2000], "runAsUser": -1,
                                            "fsGroup": 0},
                        "priority": -5}})
    );

    // A JSON payload inside the envelope is taken as is.
    let unknown = Msg::new()
        .msg(1, Msg::new().str(1, "v1").str(2, "ConfigMap"))
        .bytes(2, br#"{"metadata":{"name":"j"}}"#)
        .str(4, "application/json");
    let got = decode_object(&[MAGIC, &unknown.0].concat()).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}})
    );

    // A nested protobuf object inside a RawExtension.
    let inner = object("v1", "ConfigMap", Msg::new().msg(1, name_meta("in")));
    let revision = Msg::new()
        .msg(1, name_meta("r"))
        .msg(2, Msg::new().bytes(1, &inner));
    let got = decode_object(&object("apps/v1", "ControllerRevision", revision)).unwrap();
    assert_eq!(
        got["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "in"}})
    );
}

#[test]
fn malformed_bodies_are_errors() {
    let good = fixture("configmap");
    let deep = {
        // JSONSchemaProps nested through `not` far past MAX_DEPTH.
        let mut m = Msg::new().str(5, "string");
        for _ in 0..(MAX_DEPTH + 10) {
            m = Msg::new().msg(28, m);
        }
        object(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            Msg::new().msg(
                2,
                Msg::new().msg(7, Msg::new().msg(4, Msg::new().msg(1, m))),
            ),
        )
    };
    let nested_envelopes = {
        let mut body = object("v1", "ConfigMap", Msg::new());
        for _ in 0..(MAX_DEPTH + 10) {
            body = object(
                "apps/v1",
                "ControllerRevision",
                Msg::new().msg(2, Msg::new().bytes(1, &body)),
            );
        }
        body
    };
    let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
        ("empty", vec![], DecodeError::MissingMagic),
        (
            "json",
            br#"{"kind":"ConfigMap"}"#.to_vec(),
            DecodeError::MissingMagic,
        ),
        ("magic only", MAGIC.to_vec(), DecodeError::MissingTypeMeta),
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            DecodeError::Truncated,
        ),
        (
            "unknown kind",
            object("v1", "Widget", Msg::new()),
            DecodeError::UnknownKind {
                api_version: "v1".into(),
                kind: "Widget".into(),
            },
        ),
        (
            "unknown group",
            object("example.com/v1", "Pod", Msg::new()),
            DecodeError::UnknownKind {
                api_version: "example.com/v1".into(),
                kind: "Pod".into(),
            },
        ),
        (
            "a codec message is no kind",
            object("meta.k8s.io/v1", "Time", Msg::new()),
            DecodeError::UnknownKind {
                api_version: "meta.k8s.io/v1".into(),
                kind: "Time".into(),
            },
        ),
        (
            "wrong wire type",
            object("v1", "ConfigMap", Msg::new().varint(1, 5)),
            DecodeError::WrongWireType {
                message: "core.v1.ConfigMap",
                field: "metadata",
                expected: "length-delimited",
                got: "varint",
            },
        ),
        (
            "string as varint",
            object(
                "v1",
                "ConfigMap",
                Msg::new().msg(1, Msg::new().varint(1, 5)),
            ),
            DecodeError::WrongWireType {
                message: "meta.v1.ObjectMeta",
                field: "name",
                expected: "length-delimited",
                got: "varint",
            },
        ),
        (
            "invalid UTF-8",
            object(
                "v1",
                "ConfigMap",
                Msg::new().msg(1, Msg::new().bytes(1, &[0xff, 0xfe])),
            ),
            DecodeError::Invalid {
                message: "meta.v1.ObjectMeta",
                field: "name",
                reason: "invalid UTF-8 in a string".into(),
            },
        ),
        (
            "bad IntOrString type",
            object(
                "policy/v1",
                "PodDisruptionBudget",
                Msg::new().msg(2, Msg::new().msg(1, Msg::new().int(1, 7))),
            ),
            DecodeError::Invalid {
                message: "IntOrString",
                field: "type",
                reason: "unknown type 7".into(),
            },
        ),
        (
            "time out of range",
            object(
                "v1",
                "ConfigMap",
                Msg::new().msg(1, Msg::new().msg(8, Msg::new().int(1, i64::MAX))),
            ),
            DecodeError::Invalid {
                message: "Time",
                field: "seconds",
                reason: format!("{} seconds is outside the years 0-9999", i64::MAX),
            },
        ),
        (
            "content encoding",
            [
                MAGIC,
                &Msg::new()
                    .msg(1, Msg::new().str(1, "v1").str(2, "Pod"))
                    .str(3, "gzip")
                    .0,
            ]
            .concat(),
            DecodeError::ContentEncoding("gzip".into()),
        ),
        (
            "content type",
            [
                MAGIC,
                &Msg::new()
                    .msg(1, Msg::new().str(1, "v1").str(2, "Pod"))
                    .str(4, "application/cbor")
                    .0,
            ]
            .concat(),
            DecodeError::ContentType("application/cbor".into()),
        ),
        ("too deep", deep, DecodeError::TooDeep),
        ("nested envelopes", nested_envelopes, DecodeError::TooDeep),
        (
            "invalid raw JSON",
            object(
                "apps/v1",
                "ControllerRevision",
                Msg::new().msg(2, Msg::new().bytes(1, b"{nope")),
            ),
            DecodeError::Invalid {
                message: "RawExtension",
                field: "raw",
                reason: "invalid JSON: key must be a string at line 1 column 2".into(),
            },
        ),
        (
            "NaN",
            object(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                Msg::new().msg(
                    2,
                    Msg::new().msg(
                        7,
                        Msg::new().msg(4, Msg::new().msg(1, Msg::new().double(9, f64::NAN))),
                    ),
                ),
            ),
            DecodeError::Invalid {
                message: "apiextensions.v1.JSONSchemaProps",
                field: "maximum",
                reason: "not a finite number".into(),
            },
        ),
    ];
    for (name, body, want) in cases {
        assert_eq!(decode_object(&body), Err(want), "{name}");
    }
    // The string form is what the handler reports.
    assert!(decode(b"nope").unwrap_err().contains("magic"));
}

#[test]
fn garbage_never_panics() {
    // Every truncation and every single-byte corruption of real bodies decodes or errs.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for name in [
        "deployment",
        "rolebinding",
        "ingress",
        "horizontalpodautoscaler",
    ] {
        let body = fixture(name);
        for len in 0..body.len() {
            let _ = decode_object(&body[..len]);
        }
        for i in 4..body.len() {
            for _ in 0..8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut b = body.clone();
                b[i] = seed as u8;
                let _ = decode_object(&b);
            }
        }
    }
}

#[test]
fn every_served_kind_has_a_schema() {
    for r in crate::api::RESOURCES {
        assert!(
            message_for(&r.api_version(), r.kind).is_some(),
            "{} {}",
            r.api_version(),
            r.kind
        );
        for sub in r.subresources {
            let api_version = if sub.group.is_empty() {
                sub.version.to_string()
            } else {
                format!("{}/{}", sub.group, sub.version)
            };
            assert!(
                message_for(&api_version, sub.kind).is_some(),
                "{api_version} {}",
                sub.kind
            );
        }
    }
    assert_eq!(
        message_for("authentication.k8s.io/v1", "TokenRequest"),
        Some("authentication.v1.TokenRequest")
    );
    assert_eq!(
        message_for("v1", "DeleteOptions"),
        Some("meta.v1.DeleteOptions")
    );
}

#[test]
fn codec_field_numbers_match_the_table() {
    // The codecs read fixed field numbers; the table declares the same ones.
    let s = schema::schema().unwrap();
    let cases: &[(&str, &[(u32, &str)])] = &[
        ("Time", &[(1, "seconds"), (2, "nanos")]),
        ("MicroTime", &[(1, "seconds"), (2, "nanos")]),
        ("Duration", &[(1, "duration")]),
        ("Quantity", &[(1, "string")]),
        ("IntOrString", &[(1, "type"), (2, "intVal"), (3, "strVal")]),
        ("RawExtension", &[(1, "raw")]),
        ("FieldsV1", &[(1, "Raw")]),
        ("apiextensions.v1.JSON", &[(1, "raw")]),
        (
            "apiextensions.v1.JSONSchemaPropsOrArray",
            &[(1, "schema"), (2, "jSONSchemas")],
        ),
        (
            "apiextensions.v1.JSONSchemaPropsOrBool",
            &[(1, "allows"), (2, "schema")],
        ),
        (
            "apiextensions.v1.JSONSchemaPropsOrStringArray",
            &[(1, "schema"), (2, "property")],
        ),
        ("authorization.v1.ExtraValue", &[(1, "items")]),
    ];
    for (name, fields) in cases {
        let Some(i) = s.index(name) else {
            // Duration is not reachable from a served kind today.
            assert_eq!(*name, "Duration");
            continue;
        };
        let m = s.message(i);
        let got: Vec<(u32, &str)> = m.fields.iter().map(|f| (f.number, f.json)).collect();
        assert_eq!(&got, fields, "{name}");
    }
}
