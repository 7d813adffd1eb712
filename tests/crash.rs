//! Durability: a `kaji server` under concurrent write load is killed with SIGKILL; after a
//! restart every acknowledged write is there and revisions keep increasing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() {
    let mut server = Server::start(&[]);
    let mut max_acked: u64 = 0;
    for round in 0..3 {
        let client = server.client().await;
        let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..16 {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            let acked = acked.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut cm = ConfigMap::default();
                    cm.metadata.name = Some(format!("r{round}-w{w}-{i}"));
                    cm.data = Some([("payload".to_string(), "x".repeat(256))].into());
                    match api.create(&PostParams::default(), &cm).await {
                        Ok(c) => {
                            let rv = c.metadata.resource_version.unwrap().parse::<u64>().unwrap();
                            acked.lock().unwrap().push((c.metadata.name.unwrap(), rv));
                        }
                        Err(_) => break,
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500 + 500 * round as u64)).await;
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() > 50,
            "round {round}: load generated only {} writes",
            acked.len()
        );

        server.spawn();
        let client = server.client().await;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let list = api.list(&ListParams::default()).await.unwrap();
        let stored: std::collections::HashMap<String, u64> = list
            .items
            .iter()
            .map(|c| {
                (
                    c.metadata.name.clone().unwrap(),
                    c.metadata
                        .resource_version
                        .clone()
                        .unwrap()
                        .parse()
                        .unwrap(),
                )
            })
            .collect();
        for (name, rv) in &acked {
            assert_eq!(
                stored.get(name),
                Some(rv),
                "round {round}: acknowledged write {name}@{rv} lost after SIGKILL"
            );
            max_acked = max_acked.max(*rv);
        }
        let mut probe = ConfigMap::default();
        probe.metadata.name = Some(format!("probe-{round}"));
        let probe = api.create(&PostParams::default(), &probe).await.unwrap();
        let rv: u64 = probe.metadata.resource_version.unwrap().parse().unwrap();
        assert!(
            rv > max_acked,
            "round {round}: revision {rv} after restart must exceed {max_acked}"
        );
        max_acked = rv;
    }
}
