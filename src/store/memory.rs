//! An in-memory [`Store`] with the same semantics as the sled backend, for unit tests.
//!
//! Everything lives behind one mutex: writes apply, append to the history and publish
//! to live watchers under it, so ordering is trivial. "Durable" means "applied" here.
//! History is kept until [`Store::compact`] discards it.

use std::{
    collections::{BTreeMap, VecDeque},
    ops::Bound,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::{
    Error, Event, EventKind, KeyValue, ListResult, Result, Revision, Store, WatchStream,
    op::{self, Op},
    watch::{self, Replay},
};

/// Default capacity of the live event channel (events a watcher may fall behind by).
const DEFAULT_WATCH_BUFFER: usize = 1024;

/// An in-memory store for tests.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    compacted: AtomicU64,
}

#[derive(Debug)]
struct State {
    kv: BTreeMap<String, KeyValue>,
    history: VecDeque<Arc<Event>>,
    revision: Revision,
    compacted: Revision,
    events: broadcast::Sender<Arc<Event>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_watch_buffer(DEFAULT_WATCH_BUFFER)
    }

    /// An empty store whose watchers may fall at most `watch_buffer` events behind
    /// before they get [`Error::Lagged`].
    pub fn with_watch_buffer(watch_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        MemoryStore {
            state: Mutex::new(State {
                kv: BTreeMap::new(),
                history: VecDeque::new(),
                revision: 0,
                compacted: 0,
                events,
            }),
            compacted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before anything can panic, so a poisoned state is
        // still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, op: Op) -> Result<KeyValue> {
        let mut state = self.lock();
        let current = state.kv.get(op.key()).cloned();
        let revision = state.revision + 1;
        let event = op::plan(&op, current, revision)?;
        match event.kind {
            EventKind::Put => {
                state.kv.insert(event.kv.key.clone(), event.kv.clone());
            }
            EventKind::Delete => {
                state.kv.remove(&event.kv.key);
            }
        }
        state.revision = revision;
        let event = Arc::new(event);
        state.history.push_back(Arc::clone(&event));
        // No receivers is fine.
        let _ = state.events.send(Arc::clone(&event));
        Ok(event.kv.clone())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    fn compacted_revision(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().kv.get(key).cloned())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let state = self.lock();
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut matching = state
            .kv
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v);
        let limit = if limit == 0 { usize::MAX } else { limit };
        let items: Vec<KeyValue> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        Ok(ListResult {
            items,
            revision: state.revision,
            more,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.write(Op::Create {
            key: key.to_owned(),
            value,
        })
    }

    async fn update(&self, key: &str, expected: Revision, value: Bytes) -> Result<KeyValue> {
        self.write(Op::Update {
            key: key.to_owned(),
            expected,
            value,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.write(Op::Delete {
            key: key.to_owned(),
            expected,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let state = self.lock();
        if after < state.compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted: state.compacted,
            });
        }
        // Subscribing and snapshotting under the lock: the replay ends exactly where the
        // live channel begins.
        let live = state.events.subscribe();
        let start = state.history.partition_point(|e| e.revision() <= after);
        let events = state
            .history
            .iter()
            .skip(start)
            .filter(|e| e.kv.key.starts_with(prefix))
            .map(|e| Event::clone(e))
            .collect();
        let mut replay = Some(Replay {
            events,
            scanned_to: state.revision.max(after),
            done: true,
        });
        drop(state);
        let load = move |_next: Revision| {
            futures::future::ready(Ok(replay.take().unwrap_or(Replay {
                done: true,
                ..Replay::default()
            })))
        };
        Ok(watch::event_stream(prefix.to_owned(), after, live, load))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        let target = revision.min(state.revision);
        if target <= state.compacted {
            return Ok(());
        }
        while state
            .history
            .front()
            .is_some_and(|e| e.revision() <= target)
        {
            state.history.pop_front();
        }
        state.compacted = target;
        self.compacted.store(target, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    super::super::suite::store_suite!(
        (MemoryStore::new(), ()),
        (MemoryStore::with_watch_buffer(8), ())
    );
}
