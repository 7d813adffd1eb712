//! The embedded default [`Store`]: sled 0.34 with group commit.
//!
//! # On-disk layout
//!
//! One sled database (`<path>`) with three trees (record formats in [`super::codec`]):
//!
//! - `kv`: key bytes → `create_revision | mod_revision | value`, the current state.
//! - `log`: 8-byte big-endian revision → history entry (kind, key value, previous
//!   value). Exactly one entry per revision, so the history is contiguous above the
//!   compaction point.
//! - `meta`: `format` (u64, currently 1), `revision` (u64, the newest committed
//!   revision) and `compacted` (u64, the compaction point).
//!
//! Each batch of writes is one sled multi-tree transaction over `kv`, `log` and `meta`;
//! sled recovers a transaction atomically or not at all, so after a crash the revision
//! counter, the current state and the history always agree.
//!
//! # Group commit
//!
//! Writers hand their operation to a single committer thread and wait for its answer.
//! The committer takes whatever is queued (up to [`SledOptions::max_batch`] operations
//! or [`SledOptions::max_batch_bytes`]), applies it as one transaction (each operation
//! gets the next revision; failed compare-and-swaps get no revision), calls
//! `Db::flush` (write + fsync) once for the whole batch, and only then publishes the
//! new durable revision, broadcasts the events to live watchers in revision order, and
//! answers the writers. While it flushes, new writers queue up and form the next batch,
//! so concurrent writers share fsyncs. A failed flush or transaction poisons the store:
//! every later write fails with [`Error::Backend`] and the process should restart (the
//! on-disk state is whatever sled recovers, which never includes an unacknowledged
//! write as acknowledged).
//!
//! # Reads
//!
//! Reads run on the blocking pool under a snapshot lock that the committer holds only
//! while applying a batch, so a `list` sees exactly the state at one revision. A read
//! returns only after the revision it reflects is durable, so callers never observe a
//! write that a crash could still lose.
//!
//! # Watches
//!
//! A watch subscribes to the live channel, then replays the `log` tree in chunks up to
//! the durable head, then continues live (see [`super::watch`]).

use std::{
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use ::sled::{
    Batch, Db, IVec, Tree,
    transaction::{
        ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree,
    },
};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, oneshot, watch as state_watch};

use super::{
    Error, Event, EventKind, KeyValue, ListResult, Result, Revision, Store, WatchStream, codec,
    op::{self, Op},
    watch::{self, Replay},
};

const TREE_KV: &str = "kv";
const TREE_LOG: &str = "log";
const TREE_META: &str = "meta";
const META_FORMAT: &[u8] = b"format";
const META_REVISION: &[u8] = b"revision";
const META_COMPACTED: &[u8] = b"compacted";
const FORMAT_VERSION: u64 = 1;
/// History entries removed per sled batch during compaction.
const COMPACT_CHUNK: usize = 1024;

/// Tuning knobs for [`SledStore::open_with`].
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// sled's page cache size in bytes (sled's own default is 1 GiB).
    pub cache_capacity: u64,
    /// Capacity of the live event channel: how many events a watcher may fall behind
    /// before its stream ends with [`Error::Lagged`].
    pub watch_buffer: usize,
    /// History entries read per step while a watcher replays.
    pub replay_chunk: usize,
    /// Most operations committed (and flushed) together.
    pub max_batch: usize,
    /// A batch stops growing once its keys and values reach this many bytes.
    pub max_batch_bytes: usize,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 64 * 1024 * 1024,
            watch_buffer: 1024,
            replay_chunk: 512,
            max_batch: 512,
            max_batch_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The sled-backed store. See the module docs for the layout and the commit protocol.
///
/// Open it once per process: sled locks the database directory. Dropping the store (or
/// [`SledStore::close`]) stops the committer after it has finished queued writes; open
/// watch streams then end with [`Error::Closed`].
pub struct SledStore {
    inner: Arc<Inner>,
    requests: mpsc::Sender<Command>,
    committer: Mutex<Option<thread::JoinHandle<()>>>,
    compact_lock: tokio::sync::Mutex<()>,
    replay_chunk: usize,
}

/// State shared by the store handle, the committer thread and blocking read tasks.
struct Inner {
    path: PathBuf,
    db: Db,
    kv: Tree,
    log: Tree,
    meta: Tree,
    /// Held for writing while the committer applies a batch; reads hold it for reading
    /// so they see one revision's state.
    snapshot: RwLock<()>,
    /// The newest applied (maybe not yet durable) revision; written under `snapshot`.
    committed: AtomicU64,
    /// The compaction point.
    compacted: AtomicU64,
    /// The newest durable revision (published by the committer).
    durable: state_watch::Receiver<Durable>,
    /// Live event channel; `None` once the committer has stopped.
    events: Mutex<Option<broadcast::Sender<Arc<Event>>>>,
}

#[derive(Debug, Clone)]
struct Durable {
    revision: Revision,
    /// Set when a flush or commit failed; the store refuses further writes.
    failed: Option<Arc<str>>,
}

enum Command {
    Write {
        op: Op,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("durable", &self.inner.durable.borrow().revision)
            .field("compacted", &self.inner.compacted.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Backend(format!("store task failed: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values (an optional sender or join handle) cannot be left half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SledStore {
    /// Opens (or creates) the store at `path` with default options.
    ///
    /// This does blocking IO (sled recovery); call it from `spawn_blocking` or before the
    /// runtime is busy.
    pub fn open(path: &Path) -> Result<SledStore> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates) the store at `path`.
    pub fn open_with(path: &Path, options: SledOptions) -> Result<SledStore> {
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            .open()
            .map_err(|e| Error::Backend(format!("opening {}: {e}", path.display())))?;
        let kv = db.open_tree(TREE_KV).map_err(backend)?;
        let log = db.open_tree(TREE_LOG).map_err(backend)?;
        let meta = db.open_tree(TREE_META).map_err(backend)?;

        match meta.get(META_FORMAT).map_err(backend)? {
            Some(raw) => {
                let format = codec::decode_rev(&raw)?;
                if format != FORMAT_VERSION {
                    return Err(Error::Corrupt(format!(
                        "store format {format} is not supported (expected {FORMAT_VERSION})"
                    )));
                }
            }
            None => {
                meta.insert(META_FORMAT, &codec::rev_key(FORMAT_VERSION)[..])
                    .map_err(backend)?;
            }
        }

        let read_meta = |key: &[u8]| -> Result<Revision> {
            meta.get(key)
                .map_err(backend)?
                .map_or(Ok(0), |raw| codec::decode_rev(&raw))
        };
        let mut revision = read_meta(META_REVISION)?;
        let compacted = read_meta(META_COMPACTED)?;
        // Both are written in the same transaction, so they agree; be lenient anyway and
        // never hand out a revision twice.
        if let Some((last, _)) = log.last().map_err(backend)? {
            let last = codec::decode_rev(&last)?;
            if last > revision {
                tracing::warn!(last, revision, "history is ahead of the revision counter");
                revision = last;
            }
        }
        if compacted > revision {
            tracing::warn!(
                compacted,
                revision,
                "compaction point is ahead of the revision"
            );
            revision = compacted;
        }

        let (durable_tx, durable_rx) = state_watch::channel(Durable {
            revision,
            failed: None,
        });
        let (events_tx, _) = broadcast::channel(options.watch_buffer.max(1));
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            db,
            kv,
            log,
            meta,
            snapshot: RwLock::new(()),
            committed: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            durable: durable_rx,
            events: Mutex::new(Some(events_tx.clone())),
        });
        // A compaction interrupted by a crash may have left entries behind.
        let removed = inner.remove_history_through(compacted)?;
        inner.db.flush().map_err(backend)?;

        let (requests, requests_rx) = mpsc::channel();
        let committer = Committer {
            inner: Arc::clone(&inner),
            requests: requests_rx,
            durable: durable_tx,
            events: events_tx,
            revision,
            flushed: revision,
            max_batch: options.max_batch.max(1),
            max_batch_bytes: options.max_batch_bytes.max(1),
        };
        let handle = thread::Builder::new()
            .name("kaji-store-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| Error::Backend(format!("starting the committer thread: {e}")))?;
        tracing::info!(
            path = %path.display(),
            revision,
            compacted,
            stale_history_removed = removed,
            "opened sled store"
        );
        Ok(SledStore {
            inner,
            requests,
            committer: Mutex::new(Some(handle)),
            compact_lock: tokio::sync::Mutex::new(()),
            replay_chunk: options.replay_chunk.max(1),
        })
    }

    /// Stops accepting writes, waits for queued writes to be committed and flushed, and
    /// stops the committer. Later writes and watches fail with [`Error::Closed`]; reads
    /// keep working until the store is dropped.
    pub async fn close(&self) -> Result<()> {
        let handle = lock(&self.committer).take();
        if let Some(handle) = handle {
            let (reply, done) = oneshot::channel();
            if self.requests.send(Command::Close { reply }).is_ok() {
                // An error means the committer already stopped.
                let _ = done.await;
            }
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(join_error)?
                .map_err(|_| Error::Backend("the committer thread panicked".into()))?;
        }
        self.durable_revision().map(|_| ())
    }

    /// The error for a write that found the committer gone.
    fn stopped_error(&self) -> Error {
        match &self.inner.durable.borrow().failed {
            Some(reason) => Error::Backend(reason.to_string()),
            None => Error::Closed,
        }
    }

    fn durable_revision(&self) -> Result<Revision> {
        let durable = self.inner.durable.borrow();
        match &durable.failed {
            Some(reason) => Err(Error::Backend(reason.to_string())),
            None => Ok(durable.revision),
        }
    }

    /// Waits until `revision` is durable.
    async fn wait_durable(&self, revision: Revision) -> Result<()> {
        let mut durable = self.inner.durable.clone();
        match durable
            .wait_for(|d| d.revision >= revision || d.failed.is_some())
            .await
        {
            Ok(d) if d.revision >= revision => Ok(()),
            Ok(d) => Err(Error::Backend(
                d.failed.as_deref().unwrap_or("store failed").to_owned(),
            )),
            Err(_) => Err(self.stopped_error()),
        }
    }

    async fn write(&self, op: Op) -> Result<KeyValue> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Command::Write { op, reply })
            .map_err(|_| self.stopped_error())?;
        answer.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// Runs a read on the blocking pool under the snapshot lock; `f` gets the revision
    /// the state reflects. Returns once that revision is durable.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, Revision) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let (value, revision) = tokio::task::spawn_blocking(move || {
            // The lock guards no data, so poisoning is irrelevant.
            let _snapshot = inner.snapshot.read().unwrap_or_else(|e| e.into_inner());
            let revision = inner.committed.load(Ordering::Acquire);
            f(&inner, revision).map(|v| (v, revision))
        })
        .await
        .map_err(join_error)??;
        self.wait_durable(revision).await?;
        Ok(value)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Stop the committer and wait for it, so the database is released when the
        // last handle goes (a reopen in the same process would fail on sled's lock
        // otherwise). This blocks for at most one batch commit.
        if let Some(handle) = lock(&self.committer).take() {
            let (reply, _done) = oneshot::channel();
            let _ = self.requests.send(Command::Close { reply });
            if handle.join().is_err() {
                tracing::error!("the store committer thread panicked");
            }
        }
    }
}

impl Inner {
    /// Deletes history entries at or below `revision`; returns how many.
    fn remove_history_through(&self, revision: Revision) -> Result<usize> {
        let end = codec::rev_key(revision);
        let mut removed = 0;
        loop {
            let keys = self
                .log
                .range(..=&end[..])
                .keys()
                .take(COMPACT_CHUNK)
                .collect::<Result<Vec<IVec>, _>>()
                .map_err(backend)?;
            if keys.is_empty() {
                return Ok(removed);
            }
            removed += keys.len();
            let mut batch = Batch::default();
            for key in keys {
                batch.remove(key);
            }
            self.log.apply_batch(batch).map_err(backend)?;
        }
    }

    fn compact_to(&self, target: Revision) -> Result<()> {
        // Record the point durably before deleting anything, and publish it before the
        // deletion starts so new watches below it are refused up front (running replays
        // notice the gap and end with `Compacted`).
        self.meta
            .insert(META_COMPACTED, &codec::rev_key(target)[..])
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        self.compacted.fetch_max(target, Ordering::AcqRel);
        let removed = self.remove_history_through(target)?;
        self.db.flush().map_err(backend)?;
        tracing::debug!(revision = target, removed, "compacted store history");
        Ok(())
    }

    /// Reads the next chunk of durable history for a watcher, starting at `next`.
    fn read_history(&self, prefix: &str, next: Revision, chunk: usize) -> Result<Replay> {
        let head = self.durable.borrow().revision;
        let scanned_before = next.saturating_sub(1);
        if next > head {
            return Ok(Replay {
                events: Vec::new(),
                scanned_to: scanned_before,
                done: true,
            });
        }
        let compacted = self.compacted.load(Ordering::Acquire);
        if scanned_before < compacted {
            return Err(Error::Compacted {
                requested: scanned_before,
                compacted,
            });
        }
        let end = head.min(next.saturating_add(chunk as u64 - 1));
        let (from, to) = (codec::rev_key(next), codec::rev_key(end));
        let mut expected = next;
        let mut events = Vec::new();
        for entry in self.log.range(&from[..]..=&to[..]) {
            let (key, raw) = entry.map_err(backend)?;
            let revision = codec::decode_rev(&key)?;
            if revision != expected {
                return Err(self.history_gap(scanned_before, expected));
            }
            if codec::event_key_has_prefix(&raw, prefix.as_bytes())? {
                let event = codec::decode_event(&raw)?;
                if event.revision() != revision {
                    return Err(Error::Corrupt(format!(
                        "history entry {revision} holds an event of revision {}",
                        event.revision()
                    )));
                }
                events.push(event);
            }
            expected += 1;
        }
        if expected != end + 1 {
            return Err(self.history_gap(scanned_before, expected));
        }
        Ok(Replay {
            events,
            scanned_to: end,
            done: end == head,
        })
    }

    /// The error for a history entry that should exist but does not.
    fn history_gap(&self, requested: Revision, missing: Revision) -> Error {
        let compacted = self.compacted.load(Ordering::Acquire);
        if missing <= compacted {
            Error::Compacted {
                requested,
                compacted,
            }
        } else {
            Error::Corrupt(format!("history entry for revision {missing} is missing"))
        }
    }
}

/// The single writer: batches queued operations, commits, flushes, publishes.
struct Committer {
    inner: Arc<Inner>,
    requests: mpsc::Receiver<Command>,
    durable: state_watch::Sender<Durable>,
    events: broadcast::Sender<Arc<Event>>,
    /// Newest committed revision.
    revision: Revision,
    /// Newest durable revision.
    flushed: Revision,
    max_batch: usize,
    max_batch_bytes: usize,
}

type Reply = oneshot::Sender<Result<KeyValue>>;

impl Committer {
    fn run(mut self) {
        // Ends when the store is dropped (all senders gone) or closed.
        while let Ok(first) = self.requests.recv() {
            let mut ops = Vec::new();
            let mut replies: Vec<Reply> = Vec::new();
            let mut close = None;
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Write { op, reply } => {
                        bytes += op.size();
                        ops.push(op);
                        replies.push(reply);
                    }
                    Command::Close { reply } => {
                        close = Some(reply);
                        break;
                    }
                }
                if ops.len() < self.max_batch && bytes < self.max_batch_bytes {
                    next = self.requests.try_recv().ok();
                }
            }
            let healthy = ops.is_empty() || self.commit(ops, replies);
            if let Some(reply) = close {
                let _ = reply.send(());
                break;
            }
            if !healthy {
                break;
            }
        }
        tracing::debug!(revision = self.revision, "store committer stopped");
    }

    /// Commits, flushes and answers one batch. Returns false if the store is now failed.
    fn commit(&mut self, ops: Vec<Op>, replies: Vec<Reply>) -> bool {
        let staged = {
            // The lock guards no data, so poisoning is irrelevant.
            let _snapshot = self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let staged = self.transact(&ops);
            if let Ok((revision, _)) = &staged {
                self.inner.committed.store(*revision, Ordering::Release);
            }
            staged
        };
        let (revision, outcomes) = match staged {
            Ok(staged) => staged,
            Err(e) => {
                self.fail(replies, format!("committing a write batch: {e}"));
                return false;
            }
        };
        self.revision = revision;
        if revision > self.flushed {
            if let Err(e) = self.inner.db.flush() {
                self.fail(replies, format!("flushing the store to disk: {e}"));
                return false;
            }
            tracing::trace!(
                batch = outcomes.len(),
                from = self.flushed + 1,
                to = revision,
                "group commit flushed"
            );
            self.flushed = revision;
            // Publish the durable revision before the events: a watcher that subscribes
            // and then reads the durable head must receive every event above that head.
            self.durable.send_replace(Durable {
                revision,
                failed: None,
            });
        }
        // Failed operations are answered after the flush too: what they observed (for
        // example the `current` of a conflict) is durable by now.
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            let answer = outcome.map(|event| {
                let event = Arc::new(event);
                // No receivers is fine.
                let _ = self.events.send(Arc::clone(&event));
                event.kv.clone()
            });
            // The writer may have given up waiting; the write stands regardless.
            let _ = reply.send(answer);
        }
        true
    }

    /// Applies `ops` in one transaction. Returns the new committed revision and each
    /// operation's outcome.
    fn transact(&self, ops: &[Op]) -> Result<(Revision, Vec<Result<Event>>)> {
        let base = self.revision;
        let trees = (&self.inner.kv, &self.inner.log, &self.inner.meta);
        let result: Result<_, TransactionError<Error>> = trees.transaction(|(kv, log, meta)| {
            let mut revision = base;
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in ops {
                let outcome = stage(kv, log, op, revision + 1)?;
                if outcome.is_ok() {
                    revision += 1;
                }
                outcomes.push(outcome);
            }
            if revision != base {
                meta.insert(META_REVISION, &codec::rev_key(revision)[..])?;
            }
            Ok((revision, outcomes))
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => backend(e),
        })
    }

    /// Marks the store failed and answers the batch with the error.
    fn fail(&mut self, replies: Vec<Reply>, reason: String) {
        tracing::error!(%reason, "store failed; refusing further writes");
        let reason: Arc<str> = reason.into();
        self.durable.send_replace(Durable {
            revision: self.flushed,
            failed: Some(Arc::clone(&reason)),
        });
        for reply in replies {
            let _ = reply.send(Err(Error::Backend(reason.to_string())));
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Drop the last live-channel sender so watch streams end with `Closed`.
        lock(&self.inner.events).take();
    }
}

/// Stages one operation at `revision` inside the batch transaction. The outer result
/// is a storage failure (aborting the batch); the inner one the operation's outcome.
fn stage(
    kv: &TransactionalTree,
    log: &TransactionalTree,
    op: &Op,
    revision: Revision,
) -> ConflictableTransactionResult<Result<Event>, Error> {
    let key = op.key().as_bytes();
    let current = match kv.get(key)? {
        None => None,
        Some(raw) => match codec::decode_value(key, &raw) {
            Ok(current) => Some(current),
            Err(e) => return Ok(Err(e)),
        },
    };
    let planned = op::plan(op, current, revision)
        .and_then(|event| codec::encode_event(&event).map(|entry| (event, entry)));
    let (event, entry) = match planned {
        Ok(planned) => planned,
        Err(e) => return Ok(Err(e)),
    };
    match event.kind {
        EventKind::Put => {
            kv.insert(key, codec::encode_value(&event.kv))?;
        }
        EventKind::Delete => {
            kv.remove(key)?;
        }
    }
    log.insert(&codec::rev_key(revision)[..], entry)?;
    Ok(Ok(event))
}

#[async_trait]
impl Store for SledStore {
    async fn current_revision(&self) -> Result<Revision> {
        self.durable_revision()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted.load(Ordering::Acquire)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |inner, _| {
            inner
                .kv
                .get(key.as_bytes())
                .map_err(backend)?
                .map(|raw| codec::decode_value(key.as_bytes(), &raw))
                .transpose()
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.read(move |inner, revision| {
            let start = match &start_after {
                Some(after) if after.as_str() >= prefix.as_str() => {
                    Bound::Excluded(after.as_bytes())
                }
                _ => Bound::Included(prefix.as_bytes()),
            };
            let limit = if limit == 0 { usize::MAX } else { limit };
            let mut items = Vec::new();
            let mut more = false;
            for entry in inner.kv.range::<&[u8], _>((start, Bound::Unbounded)) {
                let (key, raw) = entry.map_err(backend)?;
                if !key.starts_with(prefix.as_bytes()) {
                    break;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(codec::decode_value(&key, &raw)?);
            }
            Ok(ListResult {
                items,
                revision,
                more,
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.write(Op::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(&self, key: &str, expected: Revision, value: Bytes) -> Result<KeyValue> {
        self.write(Op::Update {
            key: key.to_owned(),
            expected,
            value,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.write(Op::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before anything else: every event above the durable head the
        // replay will read later is broadcast after this point.
        let live = match &*lock(&self.inner.events) {
            Some(events) => events.subscribe(),
            None => return Err(self.stopped_error()),
        };
        let compacted = self.compacted_revision();
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        // A weak handle: open watch streams must not keep the database open.
        let inner = Arc::downgrade(&self.inner);
        let owned_prefix = prefix.to_owned();
        let chunk = self.replay_chunk;
        let load = move |next: Revision| {
            let inner: Weak<Inner> = inner.clone();
            let prefix = owned_prefix.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let inner = inner.upgrade().ok_or(Error::Closed)?;
                    inner.read_history(&prefix, next, chunk)
                })
                .await
                .map_err(join_error)?
            }
        };
        Ok(watch::event_stream(prefix.to_owned(), after, live, load))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let _serialized = self.compact_lock.lock().await;
        let target = revision.min(self.durable_revision()?);
        if target <= self.compacted_revision() {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.compact_to(target))
            .await
            .map_err(join_error)?
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        io::{BufRead, BufReader},
        path::Path,
        process::{Command as Process, Stdio},
        sync::Arc,
        time::Duration,
    };

    use futures::StreamExt;

    use super::super::{
        Error, EventKind, Store,
        suite::{assert_quiet, bytes, next_event},
    };
    use super::{SledOptions, SledStore};

    fn open(options: SledOptions) -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), options).unwrap();
        (store, dir)
    }

    super::super::suite::store_suite!(
        open(SledOptions::default()),
        open(SledOptions {
            watch_buffer: 8,
            ..SledOptions::default()
        })
    );

    #[tokio::test]
    async fn reopen_keeps_data_revision_and_history() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.create("/a", bytes("1")).await.unwrap();
            s.create("/b", bytes("2")).await.unwrap();
            s.update("/a", 1, bytes("3")).await.unwrap();
            s.delete("/b", None).await.unwrap();
            s.create("/c", bytes("5")).await.unwrap();
            s.compact(1).await.unwrap();
            s.close().await.unwrap();
            // Closed: writes and watches are refused, reads still work.
            assert!(matches!(
                s.create("/z", bytes("")).await,
                Err(Error::Closed)
            ));
            assert!(matches!(s.watch("", 1).await, Err(Error::Closed)));
            assert_eq!(s.get("/c").await.unwrap().unwrap().mod_revision, 5);
        }
        // Dropping without close also releases the database.
        for round in 0..2u64 {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.current_revision().await.unwrap(), 5 + round);
            assert_eq!(s.compacted_revision(), 1);
            let a = s.get("/a").await.unwrap().unwrap();
            assert_eq!(
                (a.create_revision, a.mod_revision, &a.value[..]),
                (1, 3, &b"3"[..])
            );
            assert_eq!(s.get("/b").await.unwrap(), None);
            assert!(matches!(s.watch("", 0).await, Err(Error::Compacted { .. })));

            // History survived: every revision above the compaction point replays.
            let mut w = s.watch("", 1).await.unwrap();
            let mut kinds = Vec::new();
            for revision in 2..=5 + round {
                let event = next_event(&mut w).await;
                assert_eq!(event.revision(), revision);
                kinds.push(event.kind);
            }
            assert_eq!(
                kinds[..4],
                [
                    EventKind::Put,
                    EventKind::Put,
                    EventKind::Delete,
                    EventKind::Put
                ]
            );
            let deleted = s
                .watch("/b", 2)
                .await
                .unwrap()
                .next()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(deleted.prev.unwrap().value, bytes("2"));

            // Revisions continue after a restart.
            let d = s.create(&format!("/d{round}"), bytes("")).await.unwrap();
            assert_eq!(d.mod_revision, 6 + round);
            assert_eq!(next_event(&mut w).await.kv, d);
            drop(s);
            // The stream notices the store went away.
            assert!(matches!(w.next().await, Some(Err(Error::Closed))));
        }
    }

    #[tokio::test]
    async fn corrupt_records_are_errors_not_panics() {
        let (s, _dir) = open(SledOptions::default());
        s.create("/ok", bytes("v")).await.unwrap();
        s.inner.kv.insert("/bad", &[1, 2, 3][..]).unwrap();
        assert!(matches!(s.get("/bad").await, Err(Error::Corrupt(_))));
        assert!(matches!(s.list("/", None, 0).await, Err(Error::Corrupt(_))));
        assert!(matches!(
            s.update("/bad", 1, bytes("")).await,
            Err(Error::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn corrupt_history_ends_the_watch() {
        let (s, _dir) = open(SledOptions::default());
        s.create("/a", bytes("v")).await.unwrap();
        s.create("/b", bytes("v")).await.unwrap();
        s.inner
            .log
            .insert(&super::codec::rev_key(2)[..], &[1, 0][..])
            .unwrap();
        let mut w = s.watch("", 0).await.unwrap();
        assert!(matches!(w.next().await, Some(Err(Error::Corrupt(_)))));
        assert!(w.next().await.is_none());
        // Entries of other prefixes are only decoded as far as the key.
        let mut w = s.watch("/a", 0).await.unwrap();
        assert!(matches!(w.next().await, Some(Err(Error::Corrupt(_)))));
        // A missing entry above the compaction point is corruption, below it compaction.
        s.inner.log.remove(&super::codec::rev_key(2)[..]).unwrap();
        let mut w = s.watch("/zzz", 0).await.unwrap();
        assert!(matches!(w.next().await, Some(Err(Error::Corrupt(_)))));
        let mut w = s.watch("/a", 1).await.unwrap();
        assert!(matches!(w.next().await, Some(Err(Error::Corrupt(_)))));
        let mut w = s.watch("/", 2).await.unwrap();
        assert_quiet(&mut w).await;
    }

    /// Replays longer than the live buffer and chunk size must not lag.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_replay_under_load_does_not_lag() {
        let (s, _dir) = open(SledOptions {
            watch_buffer: 16,
            replay_chunk: 7,
            ..SledOptions::default()
        });
        let s = Arc::new(s);
        for i in 0..200 {
            s.create(&format!("/p/{i}"), bytes("v")).await.unwrap();
        }
        let writer = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..200 {
                    s.create(&format!("/q/{i}"), bytes("v")).await.unwrap();
                    // Gentle enough that the live phase never lags by 16 events.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let mut w = s.watch("", 0).await.unwrap();
        for revision in 1..=400 {
            assert_eq!(next_event(&mut w).await.revision(), revision);
        }
        writer.await.unwrap();
        assert_quiet(&mut w).await;
    }

    const CRASH_DIR: &str = "KAJI_STORE_CRASH_DIR";
    const CRASH_ROUND: &str = "KAJI_STORE_CRASH_ROUND";

    /// The child half of [`kill9_loses_no_acknowledged_write`]: writes concurrently and
    /// prints every acknowledgement until it is killed.
    #[test]
    #[ignore = "run as a child process by kill9_loses_no_acknowledged_write"]
    fn crash_child() {
        let (Ok(dir), Ok(round)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_ROUND)) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let s = Arc::new(SledStore::open(Path::new(&dir)).unwrap());
            let mut tasks = Vec::new();
            for t in 0..16 {
                let s = Arc::clone(&s);
                let round = round.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0.. {
                        // Keys ending in /d are deleted after their update.
                        let suffix = if i % 3 == 0 { "/d" } else { "" };
                        let key = format!("/crash/{round}/{t}/{i}{suffix}");
                        let value = bytes(&"x".repeat(i % 2000));
                        let created = s.create(&key, value.clone()).await.unwrap();
                        println!("PUT {key} {}", created.mod_revision);
                        let updated = s.update(&key, created.mod_revision, value).await.unwrap();
                        println!("PUT {key} {}", updated.mod_revision);
                        if !suffix.is_empty() {
                            let deleted = s.delete(&key, None).await.unwrap();
                            println!("DEL {key} {}", deleted.mod_revision);
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    /// kill -9 a process that is writing as fast as it can, several times over the same
    /// database: every acknowledged write must survive, the store must reopen, revisions
    /// must keep increasing and the history must stay contiguous.
    #[cfg(unix)]
    #[test]
    fn kill9_loses_no_acknowledged_write() {
        use std::os::unix::process::ExitStatusExt;

        let dir = tempfile::tempdir().unwrap();
        let test_name = format!(
            "{}::crash_child",
            module_path!().split_once("::").map_or("", |(_, rest)| rest)
        );
        // key -> (last acknowledged revision, deleted?)
        let mut acked: BTreeMap<String, (u64, bool)> = BTreeMap::new();
        let mut max_acked = 0;
        for round in 0..8u64 {
            let previous_max = max_acked;
            let mut child = Process::new(std::env::current_exe().unwrap())
                .args([test_name.as_str(), "--exact", "--ignored", "--nocapture"])
                .env(CRASH_DIR, dir.path())
                .env(CRASH_ROUND, round.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            // Even rounds kill after a number of acknowledgements (mid-write), odd rounds
            // after a delay (possibly while the child is still opening and recovering).
            let kill_after = 100 + round * 150;
            let delay = (round % 2 == 1).then(|| Duration::from_millis(3 * round * round));
            let (kill_now, kill_signal) = std::sync::mpsc::channel::<()>();
            let killer = std::thread::spawn(move || {
                match delay {
                    Some(delay) => drop(kill_signal.recv_timeout(delay)),
                    None => drop(kill_signal.recv()),
                }
                // Child::kill sends SIGKILL.
                let _ = child.kill();
                child.wait()
            });
            let mut seen = 0;
            let mut round_min = u64::MAX;
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                // Only complete lines count: the kill may cut the last one.
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if !line.ends_with('\n') => break,
                    Ok(_) => {}
                }
                let mut parts = line.trim_end().split(' ');
                let (Some(kind @ ("PUT" | "DEL")), Some(key), Some(rev)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let rev: u64 = rev.parse().unwrap();
                let entry = acked.entry(key.to_owned()).or_insert((0, false));
                if rev > entry.0 {
                    *entry = (rev, kind == "DEL");
                }
                max_acked = max_acked.max(rev);
                round_min = round_min.min(rev);
                seen += 1;
                if seen == kill_after {
                    let _ = kill_now.send(());
                }
            }
            drop(kill_now);
            let status = killer.join().unwrap().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "the child must die from SIGKILL, not exit ({status}, round {round})"
            );

            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let s = SledStore::open(dir.path()).unwrap();
                let head = s.current_revision().await.unwrap();
                assert!(
                    head >= max_acked,
                    "revision went back: {head} < {max_acked}"
                );
                for (key, (rev, deleted)) in &acked {
                    let found = s.get(key).await.unwrap();
                    match found {
                        _ if *deleted => assert!(found.is_none(), "{key} deleted at {rev} is back"),
                        Some(kv) => assert!(kv.mod_revision >= *rev, "{key} lost write {rev}"),
                        // Not yet acknowledged deletes may have made it.
                        None => assert!(key.ends_with("/d"), "{key} written at {rev} is lost"),
                    }
                }
                // History is complete and contiguous up to the head.
                let mut w = s.watch("", 0).await.unwrap();
                for revision in 1..=head {
                    assert_eq!(next_event(&mut w).await.revision(), revision);
                }
                let listed = s.list("/crash/", None, 0).await.unwrap();
                assert!(listed.items.iter().all(|kv| kv.mod_revision <= head));
                s.close().await.unwrap();
            });
            assert!(
                seen == 0 || round_min > previous_max,
                "revisions must keep increasing after a crash"
            );
            eprintln!(
                "round {round}: {seen} acks, {} keys, max revision {max_acked}",
                acked.len()
            );
        }
    }
}
