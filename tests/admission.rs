//! Admission plugins against a real `kaji server` with the real kubectl: LimitRanger
//! defaults and min/max/ratio, ResourceQuota charging and enforcement with the quota
//! controller freeing usage, Priority classes, DefaultTolerationSeconds, and kubectl
//! 1.27's `auth whoami` (SelfSubjectReview v1beta1). Every rejection is checked to leave
//! nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::{Server, ok, stderr, stdout};
use serde_json::Value;

fn apply_err(server: &Server, yaml: &str) -> String {
    let out = server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(yaml));
    assert!(!out.status.success(), "apply succeeded: {}", stdout(&out));
    stderr(&out)
}

fn apply(server: &Server, yaml: &str) {
    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(yaml)));
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(server.kubectl(&all))).unwrap()
}

#[track_caller]
fn assert_absent(server: &Server, ns: &str, kind: &str, name: &str) {
    let out = server.kubectl(&["-n", ns, "get", kind, name]);
    assert!(
        !out.status.success(),
        "{kind} {name} exists after a rejection"
    );
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
}

fn pod_yaml(ns: &str, name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n{resources}"
    )
}

fn cpu_pod(ns: &str, name: &str, cpu: &str) -> String {
    pod_yaml(
        ns,
        name,
        &format!(
            "    resources:\n      requests: {{cpu: {cpu}, memory: 64Mi}}\n      limits: {{cpu: {cpu}, memory: 64Mi}}\n"
        ),
    )
}

/// Waits until quota `name`'s status satisfies `check`.
fn wait_quota(
    server: &Server,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = get_json(server, &["-n", ns, "resourcequota", name]);
        if check(&q["status"]) {
            return q;
        }
        assert!(
            Instant::now() < deadline,
            "quota {name}: {what} not reached: {}\n{}",
            q["status"],
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn limit_ranges_default_and_constrain_pods_and_claims() {
    let server = Server::start(&[]);
    ok(server.kubectl(&["create", "namespace", "lr"]));
    apply(
        &server,
        r#"
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: lr}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m, memory: 64Mi}
    max: {cpu: "1"}
    min: {cpu: 50m}
    maxLimitRequestRatio: {cpu: "5"}
  - type: Pod
    max: {memory: 1Gi}
  - type: PersistentVolumeClaim
    max: {storage: 2Gi}
"#,
    );
    // Defaults fill what the pod leaves out, and say so.
    apply(&server, &pod_yaml("lr", "plain", ""));
    let pod = get_json(&server, &["-n", "lr", "pod", "plain"]);
    let res = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(res["requests"]["cpu"], "100m");
    assert_eq!(res["requests"]["memory"], "64Mi");
    assert_eq!(res["limits"]["cpu"], "500m");
    assert_eq!(res["limits"]["memory"], "128Mi");
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    // Max per container.
    let err = apply_err(&server, &cpu_pod("lr", "big", "2"));
    assert!(
        err.contains(
            r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{err}"
    );
    assert_absent(&server, "lr", "pod", "big");
    // Min and ratio (limit defaults to 500m, request 60m: ratio 8.33 > 5).
    let err = apply_err(
        &server,
        &pod_yaml("lr", "tiny", "    resources:\n      requests: {cpu: 10m}\n"),
    );
    assert!(
        err.contains("minimum cpu usage per Container is 50m, but request is 10m"),
        "{err}"
    );
    let err = apply_err(
        &server,
        &pod_yaml(
            "lr",
            "bursty",
            "    resources:\n      requests: {cpu: 60m}\n",
        ),
    );
    assert!(
        err.contains(
            "cpu max limit to request ratio per Container is 5, but provided ratio is 8.333333"
        ),
        "{err}"
    );
    assert_absent(&server, "lr", "pod", "tiny");
    assert_absent(&server, "lr", "pod", "bursty");
    // Pod-level max over the sum of containers.
    let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: pair, namespace: lr}\nspec:\n  containers:\n  - {name: a, image: busybox:1.36, resources: {limits: {memory: 768Mi}}}\n  - {name: b, image: busybox:1.36, resources: {limits: {memory: 768Mi}}}\n";
    let err = apply_err(&server, two);
    assert!(
        err.contains("maximum memory usage per Pod is 1Gi, but limit is 1536Mi"),
        "{err}"
    );
    assert_absent(&server, "lr", "pod", "pair");
    // Claims: max storage.
    let pvc = |size: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: lr}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n"
        )
    };
    let err = apply_err(&server, &pvc("5Gi"));
    assert!(
        err.contains(r#"persistentvolumeclaims "data" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"#),
        "{err}"
    );
    assert_absent(&server, "lr", "pvc", "data");
    apply(&server, &pvc("1Gi"));
}

#[test]
fn resource_quota_counts_pods_and_frees_them_on_delete() {
    let server = Server::start(&[]);
    ok(server.kubectl(&["create", "namespace", "q"]));
    ok(server.kubectl(&[
        "-n",
        "q",
        "create",
        "quota",
        "q",
        "--hard=pods=2,configmaps=20",
    ]));
    wait_quota(&server, "q", "q", "hard filled in", |st| {
        st["hard"]["pods"] == "2" && st["used"]["pods"] == "0"
    });
    apply(&server, &pod_yaml("q", "p1", ""));
    apply(&server, &pod_yaml("q", "p2", ""));
    let err = apply_err(&server, &pod_yaml("q", "p3", ""));
    assert!(
        err.contains(r#"pods "p3" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"#),
        "{err}"
    );
    assert_absent(&server, "q", "pod", "p3");
    // What kubectl shows.
    let table = ok(server.kubectl(&["-n", "q", "get", "quota"]));
    assert!(
        table.contains("REQUEST") && table.contains("LIMIT"),
        "{table}"
    );
    assert!(table.contains("pods: 2/2"), "{table}");
    let described = ok(server.kubectl(&["-n", "q", "describe", "quota", "q"]));
    let pods_line = described
        .lines()
        .find(|l| l.starts_with("pods"))
        .unwrap_or_default();
    assert_eq!(
        pods_line.split_whitespace().collect::<Vec<_>>(),
        ["pods", "2", "2"],
        "{described}"
    );
    // Deleting a pod frees its share once the controller has recounted.
    ok(server.kubectl(&[
        "-n",
        "q",
        "delete",
        "pod",
        "p1",
        "--grace-period=0",
        "--force",
    ]));
    wait_quota(&server, "q", "q", "usage freed", |st| {
        st["used"]["pods"] == "1"
    });
    apply(&server, &pod_yaml("q", "p3", ""));
    wait_quota(&server, "q", "q", "usage charged", |st| {
        st["used"]["pods"] == "2"
    });
}

#[test]
fn resource_quota_compute_resources_need_requests_and_are_enforced() {
    let server = Server::start(&[]);
    ok(server.kubectl(&["create", "namespace", "c"]));
    apply(
        &server,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute, namespace: c}\nspec:\n  hard: {requests.cpu: \"1\", requests.memory: 1Gi, limits.cpu: \"2\"}\n",
    );
    wait_quota(&server, "c", "compute", "hard filled in", |st| {
        st["used"]["requests.cpu"] == "0"
    });
    let err = apply_err(&server, &pod_yaml("c", "naked", ""));
    assert!(
        err.contains(r#"pods "naked" is forbidden: failed quota: compute: must specify limits.cpu for: app; requests.cpu for: app; requests.memory for: app"#),
        "{err}"
    );
    assert_absent(&server, "c", "pod", "naked");
    apply(&server, &cpu_pod("c", "a", "600m"));
    let err = apply_err(&server, &cpu_pod("c", "b", "600m"));
    assert!(
        err.contains(r#"pods "b" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"#),
        "{err}"
    );
    assert_absent(&server, "c", "pod", "b");
    apply(&server, &cpu_pod("c", "b", "400m"));
    let q = wait_quota(&server, "c", "compute", "charged", |st| {
        st["used"]["requests.cpu"] == "1"
    });
    assert_eq!(q["status"]["used"]["limits.cpu"], "1");
    assert_eq!(q["status"]["used"]["requests.memory"], "128Mi");
    let table = ok(server.kubectl(&["-n", "c", "get", "quota", "compute"]));
    assert!(
        table.contains("requests.cpu: 1/1, requests.memory: 128Mi/1Gi"),
        "{table}"
    );
    assert!(table.contains("limits.cpu: 1/2"), "{table}");
    // Dry runs are checked but charge nothing.
    let out = server.kubectl_version(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&cpu_pod("c", "dry", "100m")),
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("exceeded quota: compute"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn resource_quota_object_counts_and_node_ports() {
    let server = Server::start(&[]);
    ok(server.kubectl(&["create", "namespace", "o"]));
    ok(server.kubectl(&[
        "-n",
        "o",
        "create",
        "quota",
        "objects",
        "--hard=count/deployments.apps=1,services.nodeports=1,services=3",
    ]));
    wait_quota(&server, "o", "objects", "hard filled in", |st| {
        st["used"]["count/deployments.apps"] == "0"
    });
    ok(server.kubectl(&[
        "-n",
        "o",
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
    ]));
    let out = server.kubectl(&[
        "-n",
        "o",
        "create",
        "deployment",
        "web2",
        "--image=busybox:1.36",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"deployments.apps "web2" is forbidden: exceeded quota: objects, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"#),
        "{}",
        stderr(&out)
    );
    assert_absent(&server, "o", "deployment", "web2");
    // Two node ports do not fit in a quota of one; one does, then no more.
    let svc = |name: &str, ports: &[u16]| {
        let ports: String = ports
            .iter()
            .map(|p| format!("  - {{name: p{p}, port: {p}}}\n"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: o}}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports:\n{ports}"
        )
    };
    let err = apply_err(&server, &svc("two", &[80, 443]));
    assert!(
        err.contains("exceeded quota: objects, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"),
        "{err}"
    );
    assert_absent(&server, "o", "service", "two");
    apply(&server, &svc("one", &[80]));
    let err = apply_err(&server, &svc("another", &[8080]));
    assert!(
        err.contains("services.nodeports=1, used: services.nodeports=1"),
        "{err}"
    );
    ok(server.kubectl(&[
        "-n",
        "o",
        "create",
        "service",
        "clusterip",
        "plain",
        "--tcp=80",
    ]));
    // Deleting the deployment frees its count.
    ok(server.kubectl(&["-n", "o", "delete", "deployment", "web"]));
    wait_quota(&server, "o", "objects", "deployment freed", |st| {
        st["used"]["count/deployments.apps"] == "0" && st["used"]["services"] == "2"
    });
    ok(server.kubectl(&[
        "-n",
        "o",
        "create",
        "deployment",
        "web2",
        "--image=busybox:1.36",
    ]));
}

#[test]
fn priority_classes_and_default_tolerations() {
    let server = Server::start(&["--default-unreachable-toleration-seconds=120"]);
    let pc = get_json(&server, &["priorityclass", "system-cluster-critical"]);
    assert_eq!(pc["value"], 2_000_000_000);
    let pc = get_json(&server, &["priorityclass", "system-node-critical"]);
    assert_eq!(pc["value"], 2_000_001_000);
    apply(
        &server,
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\npreemptionPolicy: Never\n",
    );
    let with_class = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  priorityClassName: {class}\n  containers:\n  - {{name: app, image: busybox:1.36}}\n"
        )
    };
    apply(&server, &with_class("important", "high"));
    let pod = get_json(&server, &["pod", "important"]);
    assert_eq!(pod["spec"]["priority"], 1000);
    assert_eq!(pod["spec"]["preemptionPolicy"], "Never");
    // Default tolerations: not-ready at the default, unreachable as configured.
    let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
    let seconds = |key: &str| {
        tolerations
            .iter()
            .find(|t| t["key"] == key && t["effect"] == "NoExecute" && t["operator"] == "Exists")
            .map(|t| t["tolerationSeconds"].clone())
    };
    assert_eq!(seconds("node.kubernetes.io/not-ready"), Some(300.into()));
    assert_eq!(seconds("node.kubernetes.io/unreachable"), Some(120.into()));
    // Unknown classes are refused.
    let err = apply_err(&server, &with_class("lost", "nope"));
    assert!(
        err.contains(r#"pods "lost" is forbidden: no PriorityClass with name nope was found"#),
        "{err}"
    );
    assert_absent(&server, "default", "pod", "lost");
    // A priority that contradicts the class is refused.
    let err = apply_err(
        &server,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: liar, namespace: default}\nspec:\n  priorityClassName: high\n  priority: 7\n  containers:\n  - {name: app, image: busybox:1.36}\n",
    );
    assert!(
        err.contains("the integer value of priority (7) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"),
        "{err}"
    );
    // No class: priority 0, until a global default exists.
    apply(&server, &pod_yaml("default", "ordinary", ""));
    let pod = get_json(&server, &["pod", "ordinary"]);
    assert_eq!(pod["spec"]["priority"], 0);
    assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    apply(
        &server,
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: everyone}\nvalue: 50\nglobalDefault: true\n",
    );
    apply(&server, &pod_yaml("default", "defaulted", ""));
    let pod = get_json(&server, &["pod", "defaulted"]);
    assert_eq!(pod["spec"]["priorityClassName"], "everyone");
    assert_eq!(pod["spec"]["priority"], 50);
    let err = apply_err(
        &server,
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: second}\nvalue: 60\nglobalDefault: true\n",
    );
    assert!(
        err.contains(
            "PriorityClass everyone is already marked as default. Only one default can exist"
        ),
        "{err}"
    );
    assert_absent(&server, "default", "priorityclass", "second");
}

#[test]
fn kubectl_1_27_auth_whoami() {
    let server = Server::start(&[]);
    let out = ok(server.kubectl_version("kubectl.1.27", &["auth", "whoami"], None));
    assert!(out.contains("Username    system:admin"), "{out}");
    assert!(out.contains("system:masters"), "{out}");
    let out = ok(server.kubectl_version("kubectl.1.27", &["auth", "whoami", "-o", "json"], None));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1beta1");
    assert_eq!(v["status"]["userInfo"]["username"], "system:admin");
    let versions = ok(server.kubectl(&["api-versions"]));
    assert!(
        versions.contains("authentication.k8s.io/v1beta1"),
        "{versions}"
    );
}
