//! kube-runtime plumbing the controllers share, so that each controller's `run` only says
//! what it watches and how events map to the objects it reconciles:
//!
//! - [`reflect_all`]: a cache of every object of a kind and the watch stream that fills it
//!   (with kube-runtime's default back-off);
//! - [`run_applier`] and [`run_controller`]: the reconcile loop, until shutdown, with failed
//!   reconciles logged at debug level (retries are the error policy's business);
//! - [`Failures`] and [`backoff`]: exponential retry delays per object that reset after a
//!   successful sync.
//!
//! Depends on: kube-rs (`kube::runtime`), tokio-util. Never the store or the API server.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt, future};
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller, ReconcileRequest};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The longest retry delay [`backoff`] gives.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A cache of every `K` in the cluster (all namespaces) and the watch events that fill it.
/// The store stays empty (and never ready) until the stream is polled, usually as one of
/// the controller's triggers (`applied_objects()` / `touched_objects()`).
pub(crate) fn reflect_all<K>(
    client: &Client,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .reflect(writer);
    (store, events)
}

/// Runs kube-runtime's applier over `store` for the requests `queue` yields, until
/// `shutdown` is cancelled (or the queue ends). A failed reconcile is logged at debug
/// level as "`<name>` reconcile"; `error_policy` decides when to retry it.
#[allow(clippy::too_many_arguments)] // the applier's own six, the log name and shutdown
pub(crate) async fn run_applier<K, Ctx, Fut, E, R, QE>(
    name: &str,
    mut reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action,
    ctx: Arc<Ctx>,
    store: Store<K>,
    queue: impl Stream<Item = Result<R, QE>>,
    config: controller::Config,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + 'static,
    Fut: Future<Output = Result<Action, E>>,
    E: std::error::Error + 'static,
    R: Into<ReconcileRequest<K>>,
    QE: std::error::Error + 'static,
{
    let queue = queue.take_until(async move { shutdown.cancelled().await });
    controller::applier(
        move |obj, ctx| Box::pin(reconcile(obj, ctx)),
        error_policy,
        ctx,
        store,
        queue,
        config,
    )
    .for_each(|res| {
        if let Err(err) = res {
            tracing::debug!(%err, "{name} reconcile");
        }
        future::ready(())
    })
    .await;
}

/// Runs a kube-runtime [`Controller`] until `shutdown` (letting running reconciles
/// finish). A failed reconcile is logged at debug level as "`<name>` reconcile".
pub(crate) async fn run_controller<K, Ctx, Fut, E>(
    name: &str,
    controller: Controller<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            if let Err(err) = res {
                tracing::debug!(%err, "{name} reconcile");
            }
            future::ready(())
        })
        .await;
}

/// Consecutive failed syncs per object (by a key the controller chooses), for retry
/// delays that grow while an object keeps failing and reset once it syncs.
#[derive(Debug, Default)]
pub(crate) struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `key`; returns how many there have been in a row.
    pub(crate) fn record(&self, key: &str) -> u32 {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets `key`'s failures (after a successful sync).
    pub(crate) fn clear(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// The retry delay after `failures` failures in a row: `base` doubled per failure, at
/// most `max_doublings` times, and never more than a minute.
pub(crate) fn backoff(base: Duration, failures: u32, max_doublings: u32) -> Duration {
    base.saturating_mul(1u32 << failures.min(max_doublings).min(31))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        for (base, n, max, want) in [
            (ms(250), 1, 8, ms(500)),
            (ms(250), 2, 8, ms(1000)),
            (ms(250), 7, 8, ms(32_000)),
            (ms(250), 8, 8, Duration::from_secs(60)),
            (ms(250), 30, 8, Duration::from_secs(60)),
            (ms(500), 6, 7, ms(32_000)),
            (ms(500), 7, 7, Duration::from_secs(60)),
            (ms(1), 20, 3, ms(8)),
        ] {
            assert_eq!(
                backoff(base, n, max),
                want,
                "{base:?} after {n} (max {max})"
            );
        }
    }

    #[test]
    fn failures_count_per_key_and_reset() {
        let f = Failures::default();
        assert_eq!(f.record("a"), 1);
        assert_eq!(f.record("a"), 2);
        assert_eq!(f.record("b"), 1);
        f.clear("a");
        assert_eq!(f.record("a"), 1);
        assert_eq!(f.record("b"), 2);
    }
}
