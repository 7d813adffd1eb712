//! Write operations and their semantics, shared by every backend.
//!
//! A backend reads the key's current value, asks [`plan`] what the write means at the
//! next revision, and then applies the resulting [`Event`] (a put stores `event.kv`, a
//! delete removes the key) together with the history entry, atomically.

use bytes::Bytes;

use super::{Error, Event, EventKind, KeyValue, Result, Revision};

/// One logical write.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Create if absent.
    Create { key: String, value: Bytes },
    /// Compare-and-swap on the mod revision.
    Update {
        key: String,
        expected: Revision,
        value: Bytes,
    },
    /// Delete, optionally compare-and-swap on the mod revision.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Op {
    /// The key the operation writes.
    pub(crate) fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    /// Approximate size in bytes, for batching.
    pub(crate) fn size(&self) -> usize {
        match self {
            Op::Create { key, value } | Op::Update { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
        }
    }
}

/// Decides what `op` does given the key's `current` value, if it were committed at
/// `revision`. The write's acknowledgement is the returned event's `kv`.
pub(crate) fn plan(op: &Op, current: Option<KeyValue>, revision: Revision) -> Result<Event> {
    match (op, current) {
        (Op::Create { key, .. }, Some(_)) => Err(Error::AlreadyExists(key.clone())),
        (Op::Create { key, value }, None) => Ok(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        }),
        (Op::Update { key, .. } | Op::Delete { key, .. }, None) => {
            Err(Error::NotFound(key.clone()))
        }
        (
            Op::Update {
                key,
                expected,
                value,
            },
            Some(current),
        ) => {
            check_expected(key, *expected, &current)?;
            Ok(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: current.create_revision,
                    mod_revision: revision,
                },
                prev: Some(current),
            })
        }
        (Op::Delete { key, expected }, Some(current)) => {
            if let Some(expected) = expected {
                check_expected(key, *expected, &current)?;
            }
            Ok(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_revision: revision,
                    ..current.clone()
                },
                prev: Some(current),
            })
        }
    }
}

fn check_expected(key: &str, expected: Revision, current: &KeyValue) -> Result<()> {
    if current.mod_revision == expected {
        Ok(())
    } else {
        Err(Error::Conflict {
            key: key.to_owned(),
            expected,
            current: Box::new(current.clone()),
        })
    }
}
