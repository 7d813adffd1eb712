//! Deletion semantics against a real `kaji server`: the garbage collector (background,
//! orphan and foreground cascading deletion, dangling owner references) and the
//! `pods/eviction` subresource honouring PodDisruptionBudgets whose status the
//! disruption controller maintains.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Server, ok, stdout};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Polls `check` every 200 ms for up to 30 s; panics with `what` on timeout.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn exists<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap().is_some()
}

fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &str, block: bool) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
           "controller": block, "blockOwnerDeletion": block})
}

async fn configmap(api: &Api<ConfigMap>, name: &str, owners: Vec<Value>) -> ConfigMap {
    let mut body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": name}, "data": {"k": "v"}});
    if !owners.is_empty() {
        body["metadata"]["ownerReferences"] = Value::Array(owners);
    }
    api.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap()
}

/// Pods need their service account, which the service account controller creates.
async fn default_service_account(client: &kube::Client) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for("the default service account", || async {
        exists(&sas, "default").await
    })
    .await;
}

fn uid_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap()
}

#[tokio::test]
async fn dependents_of_deleted_or_missing_owners_are_collected() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Background: deleting the owner removes its dependent; a dependent with a second,
    // living owner stays and only loses the dangling reference.
    let owner = configmap(&cms, "owner", vec![]).await;
    let keeper = configmap(&cms, "keeper", vec![]).await;
    let o = owner_ref("v1", "ConfigMap", "owner", &uid_of(&owner), false);
    let k = owner_ref("v1", "ConfigMap", "keeper", &uid_of(&keeper), false);
    configmap(&cms, "dependent", vec![o.clone()]).await;
    configmap(&cms, "shared", vec![o, k]).await;
    configmap(&cms, "bystander", vec![]).await;
    // Give the collector a moment: nothing may be collected while owners live.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        exists(&cms, "dependent").await,
        "a dependent with a live owner stays"
    );

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    wait_for("the dependent of a deleted owner is collected", || async {
        !exists(&cms, "dependent").await
    })
    .await;
    wait_for(
        "the shared dependent drops the dangling reference",
        || async {
            let s = cms.get("shared").await.unwrap();
            let refs = s.metadata.owner_references.unwrap_or_default();
            refs.len() == 1 && refs[0].name == "keeper"
        },
    )
    .await;
    assert!(exists(&cms, "bystander").await);
    assert!(exists(&cms, "keeper").await);

    // An owner reference to a uid that never existed dangles from the start.
    configmap(
        &cms,
        "ghost-dependent",
        vec![owner_ref(
            "v1",
            "ConfigMap",
            "ghost",
            "6b1a0e1c-0000-4000-8000-000000000001",
            false,
        )],
    )
    .await;
    // An owner with the right name but another uid is not the owner either.
    let real = configmap(&cms, "real", vec![]).await;
    assert_ne!(uid_of(&real), "6b1a0e1c-0000-4000-8000-000000000002");
    configmap(
        &cms,
        "impostor-dependent",
        vec![owner_ref(
            "v1",
            "ConfigMap",
            "real",
            "6b1a0e1c-0000-4000-8000-000000000002",
            false,
        )],
    )
    .await;
    wait_for("dependents of missing owners are collected", || async {
        !exists(&cms, "ghost-dependent").await && !exists(&cms, "impostor-dependent").await
    })
    .await;
    assert!(
        exists(&cms, "real").await,
        "the same-named object is left alone"
    );
}

/// Pods labelled `app=<app>` with a blocking controller reference to `uid`.
async fn owned_pods(pods: &Api<Pod>, app: &str, uid: &str) -> Vec<String> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|p| {
            p.metadata.owner_references.iter().flatten().any(|r| {
                r.uid == uid && r.controller == Some(true) && r.block_owner_deletion == Some(true)
            })
        })
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

/// A ReplicaSet of two pods, which the ReplicaSet controller creates with controller
/// references (`blockOwnerDeletion: true`) to it; returns the pods' names.
async fn replicaset_with_pods(client: &kube::Client, name: &str) -> Vec<String> {
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
    let uid = uid_of(&rs);
    wait_for(&format!("ReplicaSet {name} owns two pods"), || async {
        owned_pods(&pods, name, &uid).await.len() == 2
    })
    .await;
    let mut names = owned_pods(&pods, name, &uid).await;
    names.sort();
    names
}

#[tokio::test]
async fn kubectl_cascading_deletion_of_a_replicaset() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    default_service_account(&client).await;

    // Background (kubectl's default): the pods follow their ReplicaSet.
    let x = replicaset_with_pods(&client, "x").await;
    ok(server.kubectl(&["delete", "rs", "x", "--timeout=60s"]));
    wait_for("pods of a deleted ReplicaSet are collected", || async {
        !exists(&pods, &x[0]).await && !exists(&pods, &x[1]).await
    })
    .await;

    // Orphan: the ReplicaSet goes, the pods stay without the owner reference.
    let y = replicaset_with_pods(&client, "y").await;
    let out = ok(server.kubectl(&["delete", "rs", "y", "--cascade=orphan", "--timeout=60s"]));
    assert!(out.contains("replicaset.apps \"y\" deleted"), "{out}");
    wait_for("the orphaned ReplicaSet is gone", || async {
        !exists(&rss, "y").await
    })
    .await;
    for name in &y {
        let pod = pods.get(name).await.unwrap();
        assert!(
            pod.metadata.owner_references.unwrap_or_default().is_empty(),
            "{name} was orphaned"
        );
        assert!(pod.metadata.deletion_timestamp.is_none(), "{name} stays");
    }
    let listed = ok(server.kubectl(&["get", "pods", "-l", "app=y", "-o", "name"]));
    assert_eq!(listed.lines().count(), 2, "{listed}");

    // Foreground: the ReplicaSet stays (deleting) until its pods are gone. One pod gets a
    // finalizer, so the owner visibly waits for it.
    let z = replicaset_with_pods(&client, "z").await;
    pods.patch(
        &z[0],
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    ok(server.kubectl(&["delete", "rs", "z", "--cascade=foreground", "--wait=false"]));
    wait_for(
        "the unheld pod is collected and the held one is deleting",
        || async {
            !exists(&pods, &z[1]).await
                && pods
                    .get_opt(&z[0])
                    .await
                    .unwrap()
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let owner = rss.get("z").await.expect("the owner waits for its pods");
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(
        owner
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    let shown = ok(server.kubectl(&["get", "rs", "z", "-o", "jsonpath={.metadata.finalizers}"]));
    assert!(shown.contains("foregroundDeletion"), "{shown}");
    pods.patch(
        &z[0],
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_for("the owner disappears once its pods are gone", || async {
        !exists(&pods, &z[0]).await && !exists(&rss, "z").await
    })
    .await;
    let out = server.kubectl(&["get", "rs", "z"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("NotFound"),
        "{}",
        common::stderr(&out)
    );
}

async fn ready_pod(pods: &Api<Pod>, name: &str, app: &str, running: bool) {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    if running {
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
}

/// An admin client that reports 429s instead of retrying them (kube-rs retries 429s with
/// backoff by default, which would turn every refused eviction into minutes of waiting).
async fn client_without_retries(server: &Server) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

/// Waits until the budget's status reflects its current spec and allows `allowed`.
async fn budget_settles(pdbs: &Api<PodDisruptionBudget>, name: &str, healthy: i32, allowed: i32) {
    wait_for(
        &format!("budget {name} allows {allowed} disruptions"),
        || async {
            let pdb = pdbs.get(name).await.unwrap();
            let s = pdb.status.unwrap_or_default();
            s.observed_generation == pdb.metadata.generation
                && s.current_healthy == healthy
                && s.disruptions_allowed == allowed
        },
    )
    .await;
}

#[tokio::test]
async fn eviction_honours_disruption_budgets() {
    let server = Server::start(&[]);
    let client = client_without_retries(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    default_service_account(&client).await;
    ready_pod(&pods, "e-1", "e", true).await;
    ready_pod(&pods, "e-2", "e", true).await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "e-pdb"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "e"}}},
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    budget_settles(&pdbs, "e-pdb", 2, 0).await;
    let status = pdbs.get("e-pdb").await.unwrap().status.unwrap();
    assert_eq!((status.expected_pods, status.desired_healthy), (2, 2));
    let cond = &status.conditions.unwrap()[0];
    assert_eq!(
        (
            cond.type_.as_str(),
            cond.status.as_str(),
            cond.reason.as_str()
        ),
        ("DisruptionAllowed", "False", "InsufficientPods")
    );

    // minAvailable=2 of 2 ready pods: the eviction is refused with 429.
    let err = pods
        .evict("e-1", &EvictParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(s) = &err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(s.code, 429);
    assert_eq!(s.reason, "TooManyRequests");
    assert_eq!(
        s.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let cause = &s.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.reason, "DisruptionBudget");
    assert_eq!(
        cause.message,
        "The disruption budget e-pdb needs 2 healthy pods and has 2 currently"
    );
    assert!(
        exists(&pods, "e-1").await,
        "a refused eviction deletes nothing"
    );

    let table = ok(server.kubectl(&["get", "pdb"]));
    let header = table.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "MIN AVAILABLE",
        "MAX UNAVAILABLE",
        "ALLOWED DISRUPTIONS",
        "AGE",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["e-pdb", "2", "N/A", "0"], "{table}");

    // minAvailable=1: one eviction is allowed, the next is refused.
    pdbs.patch(
        "e-pdb",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
    )
    .await
    .unwrap();
    budget_settles(&pdbs, "e-pdb", 2, 1).await;
    let row = stdout(&server.kubectl(&["get", "pdb", "e-pdb", "--no-headers"]));
    assert_eq!(row.split_whitespace().nth(3), Some("1"), "{row}");

    let done = pods.evict("e-1", &EvictParams::default()).await.unwrap();
    assert_eq!(
        done.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    assert!(
        !exists(&pods, "e-1").await,
        "an unscheduled pod is deleted at once"
    );
    let spent = pdbs.get("e-pdb").await.unwrap().status.unwrap();
    assert_eq!(
        spent.disruptions_allowed, 0,
        "the eviction spent the budget"
    );
    let err = pods
        .evict("e-2", &EvictParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 429);
    assert!(exists(&pods, "e-2").await);
    budget_settles(&pdbs, "e-pdb", 1, 0).await;

    // Pods that are not running yet disrupt nothing: evicted whatever the budget says.
    ready_pod(&pods, "e-3", "e", false).await;
    pods.evict("e-3", &EvictParams::default()).await.unwrap();
    assert!(!exists(&pods, "e-3").await);

    // A pod covered by two budgets cannot be evicted.
    let second: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "e-pdb-2"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "e"}}},
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &second).await.unwrap();
    let err = pods
        .evict("e-2", &EvictParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(s) = &err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(s.code, 500);
    assert_eq!(
        s.message,
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    );
    assert!(exists(&pods, "e-2").await);
}
