//! Workload controllers against a real `kaji server`: ReplicaSets and
//! ReplicationControllers keep their pods (creating, adopting, releasing, deleting the
//! least valuable first, counting ready and available pods), and Deployments roll out
//! through ReplicaSets (revisions, surge and unavailability limits, undo, history, pause,
//! proportional scaling, Recreate, progress deadlines) as `kubectl rollout` expects.
//!
//! Most tests run without a node: pods stay unscheduled and the test plays the kubelet
//! by patching pod status (Running, Ready). The last test runs real pods through the
//! node agent and containerd (root, containerd, runc and CNI plugins needed).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, ok, stderr, stdout};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod, ReplicationController, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const REVISION: &str = "deployment.kubernetes.io/revision";

/// Polls `check` every 100 ms for up to `secs`; panics with `what` (and the last value
/// seen) on timeout.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Pods need their service account, which the service account controller creates.
async fn default_service_account(client: &kube::Client) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for("the default service account", 30, || async {
        match sas.get_opt("default").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Active (not terminating) pods matching `selector`, sorted by name.
async fn active_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    let mut list: Vec<Pod> = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    list.sort_by_key(|p| p.name_any());
    list
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Plays the kubelet: the pod is Running and Ready as of now.
async fn mark_ready(pods: &Api<Pod>, name: &str) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": true,
                               "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("marking {name} ready: {e}"));
}

fn owner_of(pod: &Pod) -> Option<(String, String, String, bool)> {
    pod.owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| {
            (
                r.kind.clone(),
                r.name.clone(),
                r.uid.clone(),
                r.block_owner_deletion == Some(true),
            )
        })
}

fn labels(v: &[(&str, &str)]) -> BTreeMap<String, String> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn events_for(client: &kube::Client, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
}

fn replicaset(name: &str, replicas: i32, app: &str, min_ready: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "minReadySeconds": min_ready,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app, "tier": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
    }))
    .unwrap()
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.fully_labeled_replicas.unwrap_or(0),
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replicaset_keeps_its_pods() {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");

    // An orphan that matches is adopted rather than duplicated.
    let stray: Pod = serde_json::from_value(
        json!({"metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &stray).await.unwrap();
    // Let the controller's pod cache see it before the ReplicaSet appears (a ReplicaSet
    // that comes first creates 3 pods and then trims back after adopting).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let rs = rss
        .create(&PostParams::default(), &replicaset("web", 3, "web", 0))
        .await
        .unwrap();
    let rs_uid = rs.uid().unwrap();
    let three = wait_for("3 pods owned by the ReplicaSet", 30, || async {
        let list = active_pods(&pods, "app=web").await;
        let owned = list
            .iter()
            .filter(|p| owner_of(p).is_some_and(|o| o.2 == rs_uid))
            .count();
        if list.len() == 3 && owned == 3 {
            Ok(list)
        } else {
            Err(format!("{} pods, {owned} owned", list.len()))
        }
    })
    .await;
    for p in &three {
        assert_eq!(
            owner_of(p),
            Some(("ReplicaSet".into(), "web".into(), rs_uid.clone(), true)),
            "{}",
            p.name_any()
        );
        if p.name_any() != "stray" {
            assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
            assert_eq!(
                p.labels(),
                &labels(&[("app", "web"), ("tier", "web")]),
                "labels from the template"
            );
        }
    }
    assert!(
        three.iter().any(|p| p.name_any() == "stray"),
        "the orphan was adopted: {:?}",
        three.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    let created = wait_for("two SuccessfulCreate events", 30, || async {
        let events = events_for(&client, "web").await;
        let created: Vec<Event> = events
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
            .collect();
        if created.len() == 2 {
            Ok(created)
        } else {
            Err(format!("{created:?}"))
        }
    })
    .await;
    for e in &created {
        assert!(
            e.message
                .as_deref()
                .unwrap_or("")
                .starts_with("Created pod: web-"),
            "{e:?}"
        );
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("replicaset-controller")
        );
    }
    wait_for(
        "status.replicas 3 and fullyLabeledReplicas 2",
        30,
        || async {
            let s = rs_status(&rss.get("web").await.unwrap());
            // The adopted pod lacks the template's `tier` label.
            if (s.0, s.1) == (3, 2) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;

    // A deleted pod is replaced.
    let victim = three
        .iter()
        .find(|p| p.name_any() != "stray")
        .unwrap()
        .name_any();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("a replacement pod", 30, || async {
        let list = active_pods(&pods, "app=web").await;
        let names: Vec<String> = list.iter().map(|p| p.name_any()).collect();
        if list.len() == 3 && !names.contains(&victim) {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;

    // A pod relabelled out of the selector is released (and replaced).
    let relabel = active_pods(&pods, "app=web")
        .await
        .into_iter()
        .find(|p| p.name_any() != "stray")
        .unwrap()
        .name_any();
    ok(server.kubectl(&["label", "pod", &relabel, "app=elsewhere", "--overwrite"]));
    wait_for("the relabelled pod released and replaced", 30, || async {
        let released = pods.get(&relabel).await.map_err(|e| e.to_string())?;
        let list = active_pods(&pods, "app=web").await;
        if owner_of(&released).is_none() && list.len() == 3 {
            Ok(())
        } else {
            Err(format!(
                "owner {:?}, {} pods",
                owner_of(&released),
                list.len()
            ))
        }
    })
    .await;

    // Readiness: status follows the pods.
    for p in active_pods(&pods, "app=web").await {
        mark_ready(&pods, &p.name_any()).await;
    }
    wait_for("3 ready and available replicas", 30, || async {
        let s = rs_status(&rss.get("web").await.unwrap());
        if (s.2, s.3) == (3, 3) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let table = ok(server.kubectl(&["get", "rs", "web"]));
    assert!(
        table.lines().nth(1).is_some_and(
            |l| l.split_whitespace().take(4).collect::<Vec<_>>() == ["web", "3", "3", "3"]
        ),
        "{table}"
    );

    // Scaling down deletes the least valuable pods: the unready one goes first.
    let list = active_pods(&pods, "app=web").await;
    let unready = list[0].name_any();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    pods.patch_status(
        &unready,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "lastTransitionTime": now}]}})),
    )
    .await
    .unwrap();
    wait_for("readyReplicas 2", 30, || async {
        let s = rs_status(&rss.get("web").await.unwrap());
        if s.2 == 2 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    ok(server.kubectl(&["scale", "rs", "web", "--replicas=2"]));
    let left = wait_for("2 pods", 30, || async {
        let list = active_pods(&pods, "app=web").await;
        if list.len() == 2 {
            Ok(list)
        } else {
            Err(format!("{}", list.len()))
        }
    })
    .await;
    assert!(
        left.iter().all(|p| p.name_any() != unready),
        "the unready pod was deleted first"
    );
    ok(server.kubectl(&["scale", "rs", "web", "--replicas=1"]));
    wait_for("1 pod and status.replicas 1", 30, || async {
        let list = active_pods(&pods, "app=web").await;
        let s = rs_status(&rss.get("web").await.unwrap());
        if list.len() == 1 && s.0 == 1 {
            Ok(())
        } else {
            Err(format!("{} pods, {s:?}", list.len()))
        }
    })
    .await;
    wait_for("two SuccessfulDelete events", 30, || async {
        let events = events_for(&client, "web").await;
        let deleted = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("SuccessfulDelete"))
            .count();
        if deleted == 2 {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    let described = ok(server.kubectl(&["describe", "rs", "web"]));
    assert!(
        described.contains("SuccessfulDelete") && described.contains("replicaset-controller"),
        "{described}"
    );

    // minReadySeconds: ready pods become available only after it.
    rss.create(&PostParams::default(), &replicaset("slow", 2, "slow", 3))
        .await
        .unwrap();
    let slow = wait_for("2 slow pods", 30, || async {
        let list = active_pods(&pods, "app=slow").await;
        if list.len() == 2 {
            Ok(list)
        } else {
            Err(format!("{}", list.len()))
        }
    })
    .await;
    for p in &slow {
        mark_ready(&pods, &p.name_any()).await;
    }
    wait_for("2 ready, 0 available", 30, || async {
        let s = rs_status(&rss.get("slow").await.unwrap());
        if (s.2, s.3) == (2, 0) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    wait_for("2 available after minReadySeconds", 15, || async {
        let s = rs_status(&rss.get("slow").await.unwrap());
        if s.3 == 2 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let slow_rs = rss.get("slow").await.unwrap();
    assert_eq!(
        slow_rs.status.unwrap().observed_generation,
        slow_rs.metadata.generation
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_controller_keeps_its_pods() {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "default");
    ok(server.kubectl_version(
        "kubectl",
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: legacy}}
    spec: {containers: [{name: c, image: busybox}]}
"#,
        ),
    ));
    let list = wait_for("2 pods", 30, || async {
        let list = active_pods(&pods, "app=legacy").await;
        if list.len() == 2 {
            Ok(list)
        } else {
            Err(format!("{}", list.len()))
        }
    })
    .await;
    let uid = rcs.get("legacy").await.unwrap().uid().unwrap();
    for p in &list {
        assert_eq!(
            owner_of(p),
            Some((
                "ReplicationController".into(),
                "legacy".into(),
                uid.clone(),
                true
            ))
        );
        mark_ready(&pods, &p.name_any()).await;
    }
    wait_for("2 ready replicas", 30, || async {
        let s = rcs.get("legacy").await.unwrap().status.unwrap_or_default();
        if (s.replicas, s.ready_replicas, s.available_replicas) == (2, Some(2), Some(2)) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let events = events_for(&client, "legacy").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SuccessfulCreate")
                && e.source.as_ref().and_then(|s| s.component.as_deref())
                    == Some("replication-controller")),
        "{events:?}"
    );
    ok(server.kubectl(&["scale", "rc", "legacy", "--replicas=0"]));
    wait_for("no pods", 30, || async {
        let n = active_pods(&pods, "app=legacy").await.len();
        if n == 0 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: "busybox:1"}]}
"#;

/// The Deployment's ReplicaSets (by revision) as (name, spec.replicas, revision, image).
async fn replicasets_of(rss: &Api<ReplicaSet>, app: &str) -> Vec<(String, i32, String, String)> {
    let mut list: Vec<(String, i32, String, String)> = rss
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|rs| {
            let image = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            (
                rs.name_any(),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                rs.annotations().get(REVISION).cloned().unwrap_or_default(),
                image,
            )
        })
        .collect();
    list.sort_by_key(|r| r.2.parse::<i64>().unwrap_or(0));
    list
}

/// Plays the kubelet during a rollout: checks the pod-count limits, then makes every
/// unready pod ready, until the Deployment reports the rollout complete. Returns the
/// largest number of pods seen at once and the smallest number of ready ones.
async fn drive_rollout(
    client: &kube::Client,
    name: &str,
    max_pods: usize,
    min_ready: usize,
) -> (usize, usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut most, mut fewest_ready) = (0, usize::MAX);
    loop {
        let d = deployments.get(name).await.unwrap();
        let list = active_pods(&pods, &format!("app={name}")).await;
        let ready = list.iter().filter(|p| is_ready(p)).count();
        most = most.max(list.len());
        fewest_ready = fewest_ready.min(ready);
        assert!(
            list.len() <= max_pods,
            "{} pods at once, more than {max_pods} (maxSurge)",
            list.len()
        );
        assert!(
            ready >= min_ready,
            "{ready} ready pods, fewer than {min_ready} (maxUnavailable)"
        );
        let want = usize::try_from(d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)).unwrap();
        let s = d.status.clone().unwrap_or_default();
        let n = |v: Option<i32>| usize::try_from(v.unwrap_or(0)).unwrap();
        let complete = s.observed_generation >= d.metadata.generation
            && n(s.updated_replicas) == want
            && n(s.replicas) == want
            && n(s.available_replicas) == want;
        if complete && list.len() == want && ready == want {
            return (most, fewest_ready);
        }
        for p in list.iter().filter(|p| !is_ready(p)) {
            mark_ready(&pods, &p.name_any()).await;
        }
        assert!(
            Instant::now() < deadline,
            "rollout of {name} did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The images of the active pods of `app`.
async fn images(pods: &Api<Pod>, app: &str) -> Vec<String> {
    active_pods(pods, &format!("app={app}"))
        .await
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.containers[0].image.clone()))
        .collect()
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_rolls_out_and_back() {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(WEB)));
    let first = wait_for("the first ReplicaSet at 4 replicas", 30, || async {
        let list = replicasets_of(&rss, "web").await;
        match &list[..] {
            [rs] if rs.1 == 4 => Ok(rs.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let rs1 = rss.get(&first.0).await.unwrap();
    let hash = rs1
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("pod-template-hash label");
    assert_eq!(first.0, format!("web-{hash}"));
    assert_eq!(first.2, "1", "revision 1");
    let spec = rs1.spec.clone().unwrap();
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .unwrap()
            .get("pod-template-hash"),
        Some(&hash),
        "hash in the selector"
    );
    assert_eq!(
        spec.template
            .unwrap()
            .metadata
            .unwrap()
            .labels
            .unwrap()
            .get("pod-template-hash"),
        Some(&hash),
        "hash in the template"
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/desired-replicas")
            .map(String::as_str),
        Some("4")
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/max-replicas")
            .map(String::as_str),
        Some("5")
    );
    let d = wait_for("the Deployment at revision 1", 30, || async {
        let d = deployments.get("web").await.unwrap();
        match d.annotations().get(REVISION).map(String::as_str) {
            Some("1") => Ok(d),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        owner_of_rs(&rs1),
        Some(("Deployment".to_string(), d.uid().unwrap()))
    );

    drive_rollout(&client, "web", 4, 0).await;
    let status = ok(server.kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"]));
    assert!(status.contains("successfully rolled out"), "{status}");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
    let s = d.status.clone().unwrap();
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(4), Some(4), Some(4), Some(4), None)
    );
    assert_eq!(s.observed_generation, d.metadata.generation);

    // A new image: a second ReplicaSet, revision 2, replacing pods one at a time (surge
    // 1, no unavailability).
    ok(server.kubectl(&["set", "image", "deploy/web", "c=busybox:2"]));
    let (most, fewest_ready) = drive_rollout(&client, "web", 5, 4).await;
    assert_eq!(images(&pods, "web").await, ["busybox:2"; 4]);
    assert_eq!(most, 5, "the rollout used its surge");
    assert_eq!(fewest_ready, 4);
    let status = ok(server.kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"]));
    assert!(status.contains("successfully rolled out"), "{status}");
    let list = replicasets_of(&rss, "web").await;
    assert_eq!(
        list.iter()
            .map(|r| (r.1, r.2.as_str(), r.3.as_str()))
            .collect::<Vec<_>>(),
        [(0, "1", "busybox:1"), (4, "2", "busybox:2")]
    );
    assert_eq!(
        deployments
            .get("web")
            .await
            .unwrap()
            .annotations()
            .get(REVISION)
            .map(String::as_str),
        Some("2")
    );
    let events = events_for(&client, "web").await;
    let scaling: Vec<String> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
        .filter_map(|e| e.message.clone())
        .collect();
    let second = &list[1].0;
    assert!(
        scaling.contains(&format!("Scaled up replica set {} from 0 to 4", first.0)),
        "{scaling:?}"
    );
    assert!(
        scaling.contains(&format!("Scaled up replica set {second} from 0 to 1")),
        "{scaling:?}"
    );
    assert!(
        scaling.contains(&format!("Scaled down replica set {} from 4 to 3", first.0)),
        "{scaling:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.source.as_ref().and_then(|s| s.component.as_deref())
                == Some("deployment-controller"))
    );

    // History lists both revisions; undo goes back to the first template as revision 3.
    let history = ok(server.kubectl(&["rollout", "history", "deploy/web"]));
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    ok(server.kubectl(&["rollout", "undo", "deploy/web"]));
    drive_rollout(&client, "web", 5, 4).await;
    assert_eq!(images(&pods, "web").await, ["busybox:1"; 4]);
    let status = ok(server.kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"]));
    assert!(status.contains("successfully rolled out"), "{status}");
    let list = replicasets_of(&rss, "web").await;
    assert_eq!(
        list.iter()
            .map(|r| (r.0.as_str(), r.1, r.2.as_str()))
            .collect::<Vec<_>>(),
        [(second.as_str(), 0, "2"), (first.0.as_str(), 4, "3")],
        "the first ReplicaSet is revision 3"
    );
    let rs1 = rss.get(&first.0).await.unwrap();
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        deployments
            .get("web")
            .await
            .unwrap()
            .annotations()
            .get(REVISION)
            .map(String::as_str),
        Some("3")
    );
    let history = ok(server.kubectl(&["rollout", "history", "deploy/web"]));
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");

    // Restart: a new template (annotation), so a new ReplicaSet; with
    // revisionHistoryLimit 1 only one old ReplicaSet survives.
    ok(server.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"revisionHistoryLimit":1}}"#,
    ]));
    ok(server.kubectl(&["rollout", "restart", "deploy/web"]));
    drive_rollout(&client, "web", 5, 4).await;
    ok(server.kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"]));
    wait_for(
        "old ReplicaSets cleaned up to the history limit",
        30,
        || async {
            let list = replicasets_of(&rss, "web").await;
            let revs: Vec<&str> = list.iter().map(|r| r.2.as_str()).collect();
            if revs == ["3", "4"] {
                Ok(())
            } else {
                Err(format!("{list:?}"))
            }
        },
    )
    .await;
}

fn owner_of_rs(rs: &ReplicaSet) -> Option<(String, String)> {
    rs.owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.uid.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_pause_scale_and_deadline() {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // 10 replicas with the default 25% surge (3) and unavailability (2).
    ok(server.kubectl_version(
        "kubectl",
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: big}
spec:
  replicas: 10
  selector: {matchLabels: {app: big}}
  template:
    metadata: {labels: {app: big}}
    spec: {containers: [{name: c, image: "busybox:1"}]}
"#,
        ),
    ));
    drive_rollout(&client, "big", 13, 0).await;
    ok(server.kubectl(&["rollout", "status", "deploy/big", "--timeout=30s"]));

    // Paused: a template change rolls nothing out.
    ok(server.kubectl(&["rollout", "pause", "deploy/big"]));
    ok(server.kubectl(&["set", "image", "deploy/big", "c=busybox:2"]));
    wait_for("the paused condition", 30, || async {
        let d = deployments.get("big").await.unwrap();
        match condition(&d, "Progressing") {
            Some((s, r)) if s == "Unknown" && r == "DeploymentPaused" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = replicasets_of(&rss, "big").await;
    assert_eq!(list.len(), 1, "no new ReplicaSet while paused: {list:?}");
    // ... but scaling still works.
    ok(server.kubectl(&["scale", "deploy/big", "--replicas=12"]));
    wait_for("the paused deployment scaled to 12", 30, || async {
        let list = replicasets_of(&rss, "big").await;
        if list.len() == 1 && list[0].1 == 12 {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    })
    .await;
    ok(server.kubectl(&["scale", "deploy/big", "--replicas=10"]));
    let undo = server.kubectl(&["rollout", "undo", "deploy/big"]);
    assert!(
        !undo.status.success(),
        "kubectl refuses to undo a paused deployment"
    );

    // Resumed: the rollout starts; the new pods never become ready, so it stops at the
    // limits: old 8 (10 - 2 unavailable), new 5 (13 - 8).
    wait_for("10 ready old pods", 30, || async {
        let list = active_pods(&pods, "app=big").await;
        let ready = list.iter().filter(|p| is_ready(p)).count();
        for p in list.iter().filter(|p| !is_ready(p)) {
            mark_ready(&pods, &p.name_any()).await;
        }
        if ready == 10 && list.len() == 10 {
            Ok(())
        } else {
            Err(format!("{} pods, {ready} ready", list.len()))
        }
    })
    .await;
    ok(server.kubectl(&["rollout", "resume", "deploy/big"]));
    let stuck = wait_for("a rollout stuck at old 8, new 5", 30, || async {
        let list = replicasets_of(&rss, "big").await;
        match &list[..] {
            [old, new] if (old.1, new.1) == (8, 5) => Ok(list.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Resized mid-rollout: 15 replicas allow 19 pods; the 6 new ones are spread in
    // proportion (8:5 → 12:7).
    ok(server.kubectl(&["scale", "deploy/big", "--replicas=15"]));
    wait_for("proportional scaling to 12 and 7", 30, || async {
        let list = replicasets_of(&rss, "big").await;
        match &list[..] {
            [old, new] if old.0 == stuck[0].0 && (old.1, new.1) == (12, 7) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // 8 available pods are fewer than 15 - 3.
    wait_for("Available False", 30, || async {
        let d = deployments.get("big").await.unwrap();
        match condition(&d, "Available") {
            Some((s, r)) if s == "False" && r == "MinimumReplicasUnavailable" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Once the old ReplicaSet's 12 pods are ready the Deployment is available again.
    let old_hash = rss.get(&stuck[0].0).await.unwrap().labels()["pod-template-hash"].clone();
    let old_selector = format!("app=big,pod-template-hash={old_hash}");
    wait_for("12 ready pods of the old ReplicaSet", 30, || async {
        let list = active_pods(&pods, &old_selector).await;
        let ready = list.iter().filter(|p| is_ready(p)).count();
        for p in list.iter().filter(|p| !is_ready(p)) {
            mark_ready(&pods, &p.name_any()).await;
        }
        if ready == 12 {
            Ok(())
        } else {
            Err(format!("{} pods, {ready} ready", list.len()))
        }
    })
    .await;
    wait_for("Available again", 30, || async {
        let d = deployments.get("big").await.unwrap();
        match condition(&d, "Available") {
            Some((s, r)) if s == "True" && r == "MinimumReplicasAvailable" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A rollout that cannot progress passes its deadline; `rollout status` says so.
    ok(server.kubectl(&[
        "patch",
        "deploy",
        "big",
        "--type=merge",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":2}}"#,
    ]));
    wait_for("ProgressDeadlineExceeded", 30, || async {
        let d = deployments.get("big").await.unwrap();
        match condition(&d, "Progressing") {
            Some((s, r)) if s == "False" && r == "ProgressDeadlineExceeded" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let out = server.kubectl(&["rollout", "status", "deploy/big", "--timeout=20s"]);
    assert!(
        !out.status.success(),
        "rollout status fails past the deadline"
    );
    assert!(
        stderr(&out).contains("exceeded its progress deadline"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_recreate_replaces_all_pods_at_once() {
    let server = Server::start(&[]);
    let client = server.client().await;
    default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    ok(server.kubectl_version(
        "kubectl",
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: rec}
spec:
  replicas: 3
  strategy: {type: Recreate}
  selector: {matchLabels: {app: rec}}
  template:
    metadata: {labels: {app: rec}}
    spec: {containers: [{name: c, image: "busybox:1"}]}
"#,
        ),
    ));
    drive_rollout(&client, "rec", 3, 0).await;
    ok(server.kubectl(&["set", "image", "deploy/rec", "c=busybox:2"]));
    // Never old and new pods side by side.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = active_pods(&pods, "app=rec").await;
        let images: Vec<String> = list
            .iter()
            .filter_map(|p| p.spec.as_ref().and_then(|s| s.containers[0].image.clone()))
            .collect();
        assert!(
            !(images.contains(&"busybox:1".to_string())
                && images.contains(&"busybox:2".to_string())),
            "old and new pods at once: {images:?}"
        );
        if images.len() == 3 && images.iter().all(|i| i == "busybox:2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recreate did not finish: {images:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drive_rollout(&client, "rec", 3, 0).await;
    ok(server.kubectl(&["rollout", "status", "deploy/rec", "--timeout=30s"]));
    let list = replicasets_of(&rss, "rec").await;
    assert_eq!(
        list.iter().map(|r| (r.1, r.2.as_str())).collect::<Vec<_>>(),
        [(0, "1"), (3, "2")]
    );
}

// ---------------------------------------------------------------------------------------
// Real pods.

/// Builds the test images (busybox and a pause image) and imports them into the agent's
/// containerd.
fn import_images(server: &Server) {
    let dir = server.dir.path();
    let script = common::testdata("../scripts/build-image.sh");
    let busybox = dir.join("busybox.tar");
    let pause = dir.join("pause.tar");
    for (name, out, extra) in [
        (
            "docker.io/library/busybox:1.36",
            &busybox,
            vec!["--cmd", "sh"],
        ),
        (
            "kaji.local/pause:3.10",
            &pause,
            vec!["--entrypoint", "/bin/sleep 2147483647"],
        ),
    ] {
        let st = Command::new("bash")
            .arg(&script)
            .arg(name)
            .arg(out)
            .arg("--busybox")
            .args(&extra)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "build-image.sh: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let socket = server.data_dir().join("run/containerd/containerd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd socket never appeared:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for tar in [&busybox, &pause] {
        let st = Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tar)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

/// What the pods and the node say, and the end of the server log, for a failed test.
fn diagnostics(server: &Server) -> String {
    let pods = server.kubectl(&["get", "pods", "-o", "wide"]);
    let events = server.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
    let nodes = server.kubectl(&["get", "nodes", "-o", "wide"]);
    let log = server.log();
    let tail: Vec<&str> = log.lines().rev().take(80).collect();
    format!(
        "pods:\n{}\nnodes:\n{}\nevents:\n{}\nserver log (last lines):\n{}",
        stdout(&pods),
        stdout(&nodes),
        stdout(&events),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

const REAL: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: real}
spec:
  replicas: 3
  selector: {matchLabels: {app: real}}
  template:
    metadata: {labels: {app: real}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: docker.io/library/busybox:1.36
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "echo v1; sleep 3600"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn deployment_runs_real_pods() {
    let server = Server::start_with_agent(&[]);
    import_images(&server);
    let client = server.client().await;
    default_service_account(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    ok(server.kubectl_version("kubectl", &["apply", "-f", "-"], Some(REAL)));
    let out = server.kubectl(&["rollout", "status", "deploy/real", "--timeout=120s"]);
    assert!(
        out.status.success(),
        "rollout status: {}{}\n{}",
        stdout(&out),
        stderr(&out),
        diagnostics(&server)
    );
    let running = active_pods(&pods, "app=real").await;
    assert_eq!(running.len(), 3);
    for p in &running {
        assert!(
            p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
            "scheduled: {}",
            p.name_any()
        );
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
    }

    // A rolling update to a new command completes with real pods.
    ok(server.kubectl(&["patch", "deploy", "real", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command","value":["sh","-c","echo v2; sleep 3600"]}]"#]));
    let out = server.kubectl(&["rollout", "status", "deploy/real", "--timeout=120s"]);
    assert!(
        out.status.success(),
        "rollout status after the update: {}{}\n{}",
        stdout(&out),
        stderr(&out),
        diagnostics(&server)
    );
    let updated = wait_for("3 running pods with the new command", 60, || async {
        let list = active_pods(&pods, "app=real").await;
        let new = list
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers[0].command.clone())
                    .is_some_and(|c| c.join(" ").contains("v2"))
                    && is_ready(p)
            })
            .count();
        if list.len() == 3 && new == 3 {
            Ok(list)
        } else {
            Err(format!("{} pods, {new} updated and ready", list.len()))
        }
    })
    .await;
    assert!(
        updated
            .iter()
            .all(|p| !running.iter().any(|o| o.uid() == p.uid())),
        "every pod was replaced"
    );

    // Deleting the Deployment leaves no pods behind (the garbage collector removes its
    // ReplicaSets, then their pods).
    ok(server.kubectl(&["delete", "deployment", "real"]));
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    wait_for("the garbage collector to delete the Deployment's ReplicaSets and pods", 90, || async {
        let rs_left = rss.list(&ListParams::default().labels("app=real")).await.map_err(|e| e.to_string())?.items.len();
        let pods_left = pods.list(&ListParams::default().labels("app=real")).await.map_err(|e| e.to_string())?.items.len();
        if rs_left == 0 && pods_left == 0 {
            Ok(())
        } else {
            Err(format!("{rs_left} ReplicaSets and {pods_left} pods remain after `kubectl delete deployment` — dependents of the deleted Deployment were not garbage-collected"))
        }
    })
    .await;
}
