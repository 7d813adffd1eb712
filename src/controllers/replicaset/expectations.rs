//! Expectations: how many pod creations and which pod deletions a controller has issued
//! but not yet seen in its pod cache (upstream's `UIDTrackingControllerExpectations`).
//!
//! A controller that acts on a cache must not act again before the cache reflects its
//! previous actions, or a burst of events makes it create or delete twice. So before
//! issuing N creates it records "expect N", every newly observed pod it owns lowers the
//! count, and it syncs again (creates or deletes) only once every expectation is met — or
//! after [`TTL`], when the cache is assumed to have missed something. Deletions are
//! tracked by pod uid, so a pod seen "deleted" twice (terminating, then gone) counts once.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// After this long unmet expectations are ignored (upstream's `ExpectationsTimeout`).
pub(crate) const TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Record {
    owner_uid: String,
    adds: i64,
    deletes: HashSet<String>,
    set_at: Instant,
}

impl Record {
    fn fulfilled(&self) -> bool {
        self.adds <= 0 && self.deletes.is_empty()
    }
}

/// Expectations of every controller object, keyed by `kind/namespace/name`.
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    records: Mutex<HashMap<String, Record>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the object `owner_uid` at `key` may act: nothing is pending, or what is
    /// pending has expired or belonged to an earlier object of the same name.
    pub(crate) fn satisfied(&self, key: &str, owner_uid: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(r) => r.owner_uid != owner_uid || r.fulfilled() || r.set_at.elapsed() > TTL,
        }
    }

    /// How long until unmet expectations expire (`None` when they are met).
    pub(crate) fn time_left(&self, key: &str, owner_uid: &str) -> Option<Duration> {
        if self.satisfied(key, owner_uid) {
            return None;
        }
        let records = self.lock();
        let r = records.get(key)?;
        Some(TTL.saturating_sub(r.set_at.elapsed()))
    }

    /// Expects `n` creations by the object `owner_uid` (replacing any earlier record).
    pub(crate) fn expect_creations(&self, key: &str, owner_uid: &str, n: usize) {
        self.lock().insert(
            key.to_string(),
            Record {
                owner_uid: owner_uid.to_string(),
                adds: i64::try_from(n).unwrap_or(i64::MAX),
                deletes: HashSet::new(),
                set_at: Instant::now(),
            },
        );
    }

    /// Expects the deletion of the pods with these uids (replacing any earlier record).
    pub(crate) fn expect_deletions(
        &self,
        key: &str,
        owner_uid: &str,
        pods: impl IntoIterator<Item = String>,
    ) {
        self.lock().insert(
            key.to_string(),
            Record {
                owner_uid: owner_uid.to_string(),
                adds: 0,
                deletes: pods.into_iter().collect(),
                set_at: Instant::now(),
            },
        );
    }

    /// A pod created by `owner_uid` was observed (or a create was abandoned).
    pub(crate) fn creation_observed(&self, key: &str, owner_uid: &str) {
        if let Some(r) = self.lock().get_mut(key)
            && r.owner_uid == owner_uid
        {
            r.adds -= 1;
        }
    }

    /// The pod `pod_uid` was observed deleted (or its delete failed).
    pub(crate) fn deletion_observed(&self, key: &str, owner_uid: &str, pod_uid: &str) {
        if let Some(r) = self.lock().get_mut(key)
            && r.owner_uid == owner_uid
        {
            r.deletes.remove(pod_uid);
        }
    }

    /// Forgets `key` (its object was deleted).
    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_and_deletions() {
        let e = Expectations::default();
        assert!(e.satisfied("rs/ns/a", "u1"), "no record");
        e.expect_creations("rs/ns/a", "u1", 2);
        assert!(!e.satisfied("rs/ns/a", "u1"));
        assert!(e.time_left("rs/ns/a", "u1").is_some_and(|d| d <= TTL));
        e.creation_observed("rs/ns/a", "other-uid");
        assert!(
            !e.satisfied("rs/ns/a", "u1"),
            "another object's pods do not count"
        );
        e.creation_observed("rs/ns/a", "u1");
        assert!(!e.satisfied("rs/ns/a", "u1"));
        e.creation_observed("rs/ns/a", "u1");
        assert!(e.satisfied("rs/ns/a", "u1"));
        assert_eq!(e.time_left("rs/ns/a", "u1"), None);

        e.expect_deletions("rs/ns/a", "u1", ["p1".to_string(), "p2".to_string()]);
        assert!(!e.satisfied("rs/ns/a", "u1"));
        e.deletion_observed("rs/ns/a", "u1", "p1");
        e.deletion_observed("rs/ns/a", "u1", "p1");
        e.deletion_observed("rs/ns/a", "u1", "unrelated");
        assert!(
            !e.satisfied("rs/ns/a", "u1"),
            "one deletion seen twice counts once"
        );
        e.deletion_observed("rs/ns/a", "u1", "p2");
        assert!(e.satisfied("rs/ns/a", "u1"));

        e.expect_creations("rs/ns/a", "u1", 1);
        assert!(
            e.satisfied("rs/ns/a", "u2"),
            "a recreated object starts afresh"
        );
        e.forget("rs/ns/a");
        assert!(e.satisfied("rs/ns/a", "u1"));
    }
}
