//! kube-rs against a real `kaji server`: CRUD, optimistic concurrency, watches that resume
//! from a resourceVersion, kube-runtime's watcher, and 410 Gone after compaction.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(BTreeMap::from([("app".to_string(), "demo".to_string())]));
    c.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_and_conflicts() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = api
        .create(&PostParams::default(), &cm("one", &[("a", "1")]))
        .await
        .unwrap();
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());

    // AlreadyExists
    let err = api
        .create(&PostParams::default(), &cm("one", &[]))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409);

    // get, replace, stale replace → Conflict
    let mut got = api.get("one").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["a"], "1");
    got.data = Some(BTreeMap::from([("a".into(), "2".into())]));
    let replaced = api
        .replace("one", &PostParams::default(), &got)
        .await
        .unwrap();
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "revisions increase");
    let err = api
        .replace("one", &PostParams::default(), &got)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409, "stale resourceVersion is a conflict");
    assert_eq!(
        api.get("one").await.unwrap().data.unwrap()["a"],
        "2",
        "the stale write changed nothing"
    );

    // merge patch
    let patched = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"b": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["b"], "3");

    // list with a label selector, pagination
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("page-{i}"), &[]))
            .await
            .unwrap();
    }
    let page1 = api
        .list(&ListParams::default().labels("app=demo").limit(2))
        .await
        .unwrap();
    assert_eq!(page1.items.len(), 2);
    let token = page1.metadata.continue_.clone().expect("continue token");
    let page2 = api
        .list(
            &ListParams::default()
                .labels("app=demo")
                .limit(10)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 4, "6 objects in total");
    assert!(page2.metadata.continue_.is_none());
    let sel = api
        .list(&ListParams::default().labels("app=demo"))
        .await
        .unwrap();
    assert_eq!(sel.items.len(), 6);
    let none = api
        .list(&ListParams::default().labels("app=nothing"))
        .await
        .unwrap();
    assert!(none.items.is_empty());

    // delete, then 404
    api.delete("one", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(&api.get("one").await.unwrap_err()), 404);

    // cluster-scoped resource and generation on spec changes
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&ns.to_string()));
    }
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    })).unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1), "defaulted");
    let d = deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(
        d.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    let d = deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2), "metadata change does not");
    // status only through /status
    let d = deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert!(
        d.status.as_ref().and_then(|s| s.replicas) != Some(7),
        "status ignored on the main resource"
    );
    let d = deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"replicas": 7}, "spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(d.status.unwrap().replicas, Some(7));
    assert_eq!(d.spec.unwrap().replicas, Some(3), "spec ignored on /status");
    // scale subresource
    let scale = deploys.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(
        deploys.get("web").await.unwrap().spec.unwrap().replicas,
        Some(5)
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = api
        .create(&PostParams::default(), &cm("w0", &[]))
        .await
        .unwrap();
    let from = first.metadata.resource_version.unwrap();
    for i in 1..=3 {
        api.create(&PostParams::default(), &cm(&format!("w{i}"), &[]))
            .await
            .unwrap();
    }
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    api.delete("w2", &DeleteParams::default()).await.unwrap();

    let mut stream = api
        .watch(
            &WatchParams::default().labels("app=demo").timeout(10),
            &from,
        )
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("event in time")
            .unwrap()
            .expect("stream open");
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            "ADDED w1",
            "ADDED w2",
            "ADDED w3",
            "MODIFIED w1",
            "DELETED w2"
        ]
    );

    // Live events arrive too.
    api.create(&PostParams::default(), &cm("w4", &[]))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("live event")
            .unwrap()
            .unwrap();
        if let WatchEvent::Added(o) = ev {
            assert_eq!(o.metadata.name.as_deref(), Some("w4"));
            break;
        }
    }

    // kube-runtime's watcher: initial list, then changes.
    let mut w = watcher(api.clone(), watcher::Config::default().labels("app=demo")).boxed();
    let mut init_names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => init_names.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    init_names.sort();
    assert_eq!(init_names, vec!["w0", "w1", "w3", "w4"]);
    api.patch(
        "w3",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(o) => assert_eq!(o.data.unwrap()["x"], "1"),
        other => panic!("unexpected {other:?}"),
    }
    // Changing a label so the object leaves the selector is a delete for the watcher.
    api.patch(
        "w0",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Delete(o) => assert_eq!(o.metadata.name.as_deref(), Some("w0")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn gone_after_compaction() {
    let server = Server::start(&[
        "--store-compaction-interval=1",
        "--store-compaction-retain=5",
    ]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = api
        .create(&PostParams::default(), &cm("c0", &[]))
        .await
        .unwrap();
    let old = first.metadata.resource_version.unwrap();
    for i in 1..30 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    // Wait for a compaction past `old`.
    let mut got_gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut stream = api
            .watch(&WatchParams::default().timeout(5), &old)
            .await
            .unwrap()
            .boxed();
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Error(e)))) => {
                assert_eq!(e.code, 410);
                assert_eq!(e.reason, "Expired");
                got_gone = true;
                break;
            }
            Ok(Err(kube::Error::Api(e))) => {
                assert_eq!(e.code, 410);
                got_gone = true;
                break;
            }
            _ => continue,
        }
    }
    assert!(got_gone, "a watch from a compacted revision gets 410 Gone");
    // A list at that exact old revision is gone too, but a fresh list works.
    let err = api
        .list(
            &ListParams::default()
                .at(&old)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 410);
    assert_eq!(
        api.list(&ListParams::default().labels("app=demo"))
            .await
            .unwrap()
            .items
            .len(),
        30
    );
    // kube-runtime's watcher recovers by re-listing.
    let mut w = watcher(api.clone(), watcher::Config::default().labels("app=demo")).boxed();
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(_) => n += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(n, 30);
}
