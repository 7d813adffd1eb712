//! Keeps the DNS index current: kube-runtime reflectors on Services, EndpointSlices and
//! Namespaces (all namespaces); after any change the index is rebuilt from the reflector
//! stores (changes arriving together are coalesced). Queries never reach the API.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::index::Index;
use super::server::Dns;

/// How long changes are gathered before a rebuild.
const COALESCE: Duration = Duration::from_millis(20);

/// Watches the API and feeds `dns` new indexes until `shutdown`.
pub async fn run(client: kube::Client, dns: Arc<Dns>, shutdown: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let services = reflect::<Service>(&client, &changed, &shutdown);
    let slices = reflect::<EndpointSlice>(&client, &changed, &shutdown);
    let namespaces = reflect::<Namespace>(&client, &changed, &shutdown);
    let ready = async {
        let _ = tokio::join!(
            services.wait_until_ready(),
            slices.wait_until_ready(),
            namespaces.wait_until_ready()
        );
    };
    tokio::select! {
        _ = ready => {}
        _ = shutdown.cancelled() => return,
    }
    tracing::info!("cluster DNS: services and endpoints listed");
    loop {
        let mut index = Index::build(&services.state(), &slices.state(), &namespaces.state());
        index.synced = true;
        dns.set_index(index);
        tokio::select! {
            _ = changed.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Starts a reflector for `K` in every namespace; notifies `changed` on each event.
fn reflect<K>(
    client: &kube::Client,
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let (changed, shutdown) = (changed.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                _ = shutdown.cancelled() => return,
            };
            match event {
                None => return,
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(e)) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "cluster DNS watch")
                }
            }
        }
    });
    reader
}
