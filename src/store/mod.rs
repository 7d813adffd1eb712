//! The versioned key-value store underneath the API server.
//!
//! The store knows keys, bytes and revisions only — nothing about Kubernetes kinds. Every
//! successful write bumps one global, monotonically increasing revision (which the API
//! server exposes as `resourceVersion`); each key remembers the revision that created it
//! and the revision that last modified it. Writes are compare-and-swap on the key's mod
//! revision. A retained, revision-ordered event history lets watchers resume from any
//! revision newer than the compaction point; older ones get [`Error::Compacted`].
//!
//! **Durability:** a write future resolves only after the write is on disk (group commit:
//! concurrent writers share one fsync), and watchers see a write only once it is durable.
//!
//! Backends: [`SledStore`] (embedded default) and [`MemoryStore`] (unit tests only). An
//! etcd backend fits the same trait.
//!
//! Depends on: nothing else in the crate. Must not depend on: `api`, `apiserver`, or any
//! Kubernetes types.

mod codec;
mod memory;
mod op;
mod sled;
#[cfg(test)]
mod suite;
mod watch;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use self::memory::MemoryStore;
pub use self::sled::{SledOptions, SledStore};

/// A store revision; `0` means "before the first write".
pub type Revision = u64;

/// Result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by a [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("key {0:?} not found")]
    NotFound(String),
    /// A create found the key already present.
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    /// A compare-and-swap saw a different mod revision; `current` is the stored value.
    #[error("key {key:?} was modified (expected revision {expected}, found {})", current.mod_revision)]
    Conflict {
        /// The key that was written.
        key: String,
        /// The mod revision the caller expected.
        expected: Revision,
        /// What is stored now.
        current: Box<KeyValue>,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted (oldest retained is {compacted})")]
    Compacted {
        /// The revision that was asked for.
        requested: Revision,
        /// The compaction point: history at or below it is gone.
        compacted: Revision,
    },
    /// A watcher fell too far behind and its stream was cut; it must re-list.
    #[error("watcher fell behind the event stream")]
    Lagged,
    /// The underlying storage engine failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// Stored bytes could not be decoded (corruption or a format mismatch).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Bytes,
    /// The revision of the write that created the key.
    pub create_revision: Revision,
    /// The revision of the write that last modified the key.
    pub mod_revision: Revision,
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// A change to one key, as seen by watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// For `Put`: the new key-value. For `Delete`: the last value before deletion, with
    /// `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The previous value, if the key existed before this event.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which the event happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The result of a range read.
#[derive(Debug, Clone, Default)]
pub struct ListResult {
    /// Matching keys in key order.
    pub items: Vec<KeyValue>,
    /// The store revision the read reflects.
    pub revision: Revision,
    /// Whether more keys match beyond `limit`.
    pub more: bool,
}

/// A stream of events in revision order. It ends with an error item ([`Error::Lagged`],
/// [`Error::Closed`]) when the watch cannot continue.
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// A versioned key-value store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The newest durable revision (every write up to it is on disk and visible).
    async fn current_revision(&self) -> Result<Revision>;

    /// The compaction point: history at or below it is no longer retained.
    fn compacted_revision(&self) -> Revision;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads keys starting with `prefix` in key order, strictly after `start_after` when
    /// given, at most `limit` of them (`0` = no limit), as one consistent snapshot.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult>;

    /// Creates `key` if absent; fails with [`Error::AlreadyExists`] otherwise.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces `key` if its mod revision is `expected`; [`Error::Conflict`] if not,
    /// [`Error::NotFound`] if the key is absent.
    async fn update(&self, key: &str, expected: Revision, value: Bytes) -> Result<KeyValue>;

    /// Deletes `key`, if `expected` is given only when its mod revision matches. Returns
    /// the deleted value with `mod_revision` set to the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// Streams every event for keys starting with `prefix` with revision greater than
    /// `after`, first from the retained history, then live.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Discards history at or below `revision` (clamped to the current revision).
    async fn compact(&self, revision: Revision) -> Result<()>;
}
