//! The watch side of the node's sync loops (service proxy, network policies, ingress): a
//! kube-runtime reflector that keeps a local cache of one kind current and pokes a
//! [`Notify`] on every change, so one loop can coalesce the changes of several kinds into
//! one sync.
//!
//! Depends on: kube-rs (`kube::runtime`), tokio, tokio-util; nothing in the crate. Must not
//! depend on: `store`, `apiserver`.

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Spawns a task that watches `api` (with kube-runtime's default back-off), keeps `writer`
/// current and calls `wake.notify_one()` on each event, until `shutdown` or the watch
/// ends. Watch errors are retried and logged at debug level as "`<what>` watch".
pub fn spawn<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => tracing::debug!("{what} watch: {e}"),
                    None => return,
                },
            }
        }
    })
}
