//! The watch cache: an in-memory mirror of every object in the store plus a window of
//! recent events, fed by one store watch. Lists, gets and watches are served from here,
//! never by scanning the store; a watch older than the window falls back to the store's
//! own history (which answers 410 Gone once compacted).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{RwLock, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{self, EventKind, Store};

/// How many recent events the cache keeps for resuming watches.
const HISTORY: usize = 10_000;
/// Capacity of the live fan-out channel; a watcher further behind is cut off.
const FANOUT: usize = 8_192;

/// An object as served: decoded JSON with `metadata.resourceVersion` set.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The object.
    pub object: Arc<Value>,
    /// Its mod revision.
    pub revision: u64,
}

/// Whether an event put or deleted its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One change, decoded.
#[derive(Debug, Clone)]
pub struct CacheEvent {
    /// Put or delete.
    pub change: Change,
    /// Store key.
    pub key: String,
    /// The new object (for deletes, the last state, with the delete's resourceVersion).
    pub object: Arc<Value>,
    /// The previous object, if any.
    pub prev: Option<Arc<Value>>,
    /// Revision of the change.
    pub revision: u64,
}

struct State {
    objects: BTreeMap<String, Entry>,
    history: VecDeque<Arc<CacheEvent>>,
    /// Every event with revision greater than this is in `history`.
    oldest: u64,
    revision: u64,
}

/// The cache. Cheap to share behind an `Arc`.
pub struct Cache {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    fanout: broadcast::Sender<Arc<CacheEvent>>,
    revision: watch::Sender<u64>,
}

/// A watch on the cache: the backlog of retained events, then live ones.
pub enum Subscription {
    /// Served from the cache's window.
    Cache {
        /// Events already past, in order.
        backlog: Vec<Arc<CacheEvent>>,
        /// Live events after the backlog (may repeat backlog revisions; skip those).
        live: broadcast::Receiver<Arc<CacheEvent>>,
    },
    /// Served from the store's history (older than the window).
    Store(store::WatchStream),
}

/// Decodes stored bytes into an object with its resourceVersion set.
pub fn decode(bytes: &[u8], revision: u64) -> Result<Value, store::Error> {
    let mut v: Value =
        serde_json::from_slice(bytes).map_err(|e| store::Error::Corrupt(e.to_string()))?;
    set_resource_version(&mut v, revision);
    Ok(v)
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(v: &mut Value, revision: u64) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// Converts a store event into a cache event.
pub fn from_store_event(e: &store::Event) -> Result<CacheEvent, store::Error> {
    let revision = e.kv.mod_revision;
    let object = Arc::new(decode(&e.kv.value, revision)?);
    let prev = match &e.prev {
        Some(p) => Some(Arc::new(decode(&p.value, p.mod_revision)?)),
        None => None,
    };
    Ok(CacheEvent {
        change: match e.kind {
            EventKind::Put => Change::Put,
            EventKind::Delete => Change::Delete,
        },
        key: e.kv.key.clone(),
        object,
        prev,
        revision,
    })
}

impl Cache {
    /// Loads every object from the store and starts following its changes until `shutdown`.
    pub async fn start(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cache>, store::Error> {
        let (fanout, _) = broadcast::channel(FANOUT);
        let (revision, _) = watch::channel(0);
        let cache = Arc::new(Cache {
            store,
            state: RwLock::new(State {
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest: 0,
                revision: 0,
            }),
            fanout,
            revision,
        });
        let rev = cache.reload().await?;
        let stream = cache.store.watch("/registry/", rev).await?;
        let c = cache.clone();
        tokio::spawn(async move { c.follow(stream, shutdown).await });
        Ok(cache)
    }

    async fn reload(&self) -> Result<u64, store::Error> {
        let list = self.store.list("/registry/", None, 0).await?;
        let mut objects = BTreeMap::new();
        for kv in list.items {
            let object = Arc::new(decode(&kv.value, kv.mod_revision)?);
            objects.insert(
                kv.key,
                Entry {
                    object,
                    revision: kv.mod_revision,
                },
            );
        }
        let mut st = self.state.write().await;
        st.objects = objects;
        st.history.clear();
        st.oldest = list.revision;
        st.revision = list.revision;
        self.revision.send_replace(list.revision);
        Ok(list.revision)
    }

    async fn follow(self: Arc<Self>, mut stream: store::WatchStream, shutdown: CancellationToken) {
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(e)) => match from_store_event(&e) {
                    Ok(ev) => self.apply(ev).await,
                    Err(err) => {
                        tracing::error!(key = %e.kv.key, %err, "undecodable object in store")
                    }
                },
                Some(Err(err)) => {
                    tracing::warn!(%err, "store watch interrupted; reloading the watch cache");
                    loop {
                        match self.reload().await {
                            Ok(rev) => match self.store.watch("/registry/", rev).await {
                                Ok(s) => {
                                    stream = s;
                                    break;
                                }
                                Err(err) => tracing::error!(%err, "re-watching the store"),
                            },
                            Err(err) => tracing::error!(%err, "reloading the watch cache"),
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                None => return,
            }
        }
    }

    async fn apply(&self, ev: CacheEvent) {
        let ev = Arc::new(ev);
        let mut st = self.state.write().await;
        match ev.change {
            Change::Put => {
                st.objects.insert(
                    ev.key.clone(),
                    Entry {
                        object: ev.object.clone(),
                        revision: ev.revision,
                    },
                );
            }
            Change::Delete => {
                st.objects.remove(&ev.key);
            }
        }
        st.history.push_back(ev.clone());
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.oldest = old.revision;
            }
        }
        st.revision = ev.revision;
        // Sending while holding the lock keeps the fan-out in revision order and lets
        // `subscribe` take a gap-free snapshot.
        let _ = self.fanout.send(ev.clone());
        drop(st);
        self.revision.send_replace(ev.revision);
    }

    /// The newest revision the cache reflects.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits until the cache reflects at least `revision`, for up to `timeout`.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        matches!(res, Ok(Ok(_)))
    }

    /// Waits until the cache has caught up with everything durable in the store, so a read
    /// observes every write acknowledged before it started.
    pub async fn sync(&self) -> Result<u64, store::Error> {
        let rev = self.store.current_revision().await?;
        if !self.wait_for(rev, Duration::from_secs(10)).await {
            return Err(store::Error::Backend(format!(
                "watch cache did not reach revision {rev}"
            )));
        }
        Ok(self.revision().max(rev))
    }

    /// Returns one object.
    pub async fn get(&self, key: &str) -> Option<Entry> {
        self.state.read().await.objects.get(key).cloned()
    }

    /// Returns every object whose key starts with `prefix` and is strictly after
    /// `start_after`, passing each through `keep`, stopping after `limit` kept items
    /// (`0` = all). Also returns the cache revision and whether more items remain.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> (Vec<Entry>, u64, Option<String>) {
        use std::ops::Bound;
        let st = self.state.read().await;
        let lower = match start_after {
            Some(k) if k >= prefix => Bound::Excluded(k.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut out = Vec::new();
        let mut last_key: Option<String> = None;
        let mut more = None;
        for (k, e) in st.objects.range((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if !keep(&e.object) {
                continue;
            }
            if limit > 0 && out.len() == limit {
                more = last_key.clone();
                break;
            }
            last_key = Some(k.clone());
            out.push(e.clone());
        }
        (out, st.revision, more)
    }

    /// Subscribes to changes with revision greater than `after` for keys under `prefix`.
    pub async fn subscribe(&self, prefix: &str, after: u64) -> Result<Subscription, store::Error> {
        let compacted = self.store.compacted_revision();
        if after < compacted {
            return Err(store::Error::Compacted {
                requested: after,
                compacted,
            });
        }
        let st = self.state.read().await;
        if after >= st.oldest {
            let backlog = st
                .history
                .iter()
                .filter(|e| e.revision > after && e.key.starts_with(prefix))
                .cloned()
                .collect();
            let live = self.fanout.subscribe();
            return Ok(Subscription::Cache { backlog, live });
        }
        drop(st);
        Ok(Subscription::Store(self.store.watch(prefix, after).await?))
    }

    /// Current objects under `prefix` plus a live subscription starting right after them,
    /// for watches that begin with synthetic ADDED events.
    pub async fn snapshot_and_subscribe(
        &self,
        prefix: &str,
    ) -> (Vec<Entry>, u64, broadcast::Receiver<Arc<CacheEvent>>) {
        let st = self.state.read().await;
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        (items, st.revision, self.fanout.subscribe())
    }
}
