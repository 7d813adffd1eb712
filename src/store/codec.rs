//! On-disk encoding of stored values and history entries (used by the sled backend).
//!
//! All integers are big-endian. Every decoder validates lengths and returns
//! [`Error::Corrupt`] instead of panicking on truncated or malformed input.
//!
//! Stored value (tree `kv`, keyed by the UTF-8 key bytes):
//!
//! ```text
//! create_revision u64 | mod_revision u64 | value bytes (rest of the record)
//! ```
//!
//! History entry (tree `log`, keyed by the 8-byte big-endian revision):
//!
//! ```text
//! kind u8 (1 = put, 2 = delete)
//! key_len u32 | key
//! create_revision u64 | mod_revision u64 | value_len u32 | value      -- the event's kv
//! prev_tag u8 (0 = none, 1 = prev with its own value, 2 = prev with the kv's value)
//! [prev create_revision u64 | prev mod_revision u64 | [value_len u32 | value if tag 1]]
//! ```
//!
//! Tag 2 is what a delete writes: its previous value equals the event's value, so it
//! is stored once.

use bytes::Bytes;

use super::{Error, Event, EventKind, KeyValue, Result, Revision};

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const PREV_NONE: u8 = 0;
const PREV_OWN_VALUE: u8 = 1;
const PREV_SAME_VALUE: u8 = 2;

/// The sled key of a revision: 8 bytes big-endian, so byte order is revision order.
pub(crate) fn rev_key(revision: Revision) -> [u8; 8] {
    revision.to_be_bytes()
}

/// Decodes an 8-byte big-endian revision.
pub(crate) fn decode_rev(raw: &[u8]) -> Result<Revision> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| Error::Corrupt(format!("revision must be 8 bytes, found {}", raw.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes the stored form of a key's current value.
pub(crate) fn encode_value(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&kv.mod_revision.to_be_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes a stored value read under `key`.
pub(crate) fn decode_value(key: &[u8], raw: &[u8]) -> Result<KeyValue> {
    let mut r = Reader::new(raw);
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    let value = Bytes::copy_from_slice(r.rest());
    Ok(KeyValue {
        key: decode_key(key)?,
        value,
        create_revision,
        mod_revision,
    })
}

/// Decodes a stored key (UTF-8).
pub(crate) fn decode_key(raw: &[u8]) -> Result<String> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|e| Error::Corrupt(format!("key is not UTF-8: {e}")))
}

/// Encodes a history entry. Fails only for keys or values longer than `u32::MAX`.
pub(crate) fn encode_event(event: &Event) -> Result<Vec<u8>> {
    let kv = &event.kv;
    let prev_len = event.prev.as_ref().map_or(0, |p| 20 + p.value.len());
    let mut out = Vec::with_capacity(1 + 4 + kv.key.len() + 20 + kv.value.len() + 1 + prev_len);
    out.push(match event.kind {
        EventKind::Put => KIND_PUT,
        EventKind::Delete => KIND_DELETE,
    });
    put_len(&mut out, kv.key.len())?;
    out.extend_from_slice(kv.key.as_bytes());
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&kv.mod_revision.to_be_bytes());
    put_len(&mut out, kv.value.len())?;
    out.extend_from_slice(&kv.value);
    match &event.prev {
        None => out.push(PREV_NONE),
        Some(prev) => {
            let same = prev.value == kv.value;
            out.push(if same {
                PREV_SAME_VALUE
            } else {
                PREV_OWN_VALUE
            });
            out.extend_from_slice(&prev.create_revision.to_be_bytes());
            out.extend_from_slice(&prev.mod_revision.to_be_bytes());
            if !same {
                put_len(&mut out, prev.value.len())?;
                out.extend_from_slice(&prev.value);
            }
        }
    }
    Ok(out)
}

/// Decodes a history entry.
pub(crate) fn decode_event(raw: &[u8]) -> Result<Event> {
    let mut r = Reader::new(raw);
    let kind = match r.u8()? {
        KIND_PUT => EventKind::Put,
        KIND_DELETE => EventKind::Delete,
        other => return Err(Error::Corrupt(format!("unknown event kind {other}"))),
    };
    let key_len = r.len()?;
    let key = decode_key(r.take(key_len)?)?;
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    let value_len = r.len()?;
    let value = Bytes::copy_from_slice(r.take(value_len)?);
    let prev = match r.u8()? {
        PREV_NONE => None,
        tag @ (PREV_OWN_VALUE | PREV_SAME_VALUE) => {
            let create_revision = r.u64()?;
            let mod_revision = r.u64()?;
            let value = if tag == PREV_SAME_VALUE {
                value.clone()
            } else {
                let len = r.len()?;
                Bytes::copy_from_slice(r.take(len)?)
            };
            Some(KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision,
            })
        }
        other => {
            return Err(Error::Corrupt(format!(
                "unknown previous-value tag {other}"
            )));
        }
    };
    r.finish()?;
    Ok(Event {
        kind,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        },
        prev,
    })
}

/// Whether the key of an encoded history entry starts with `prefix`, without decoding
/// the values.
pub(crate) fn event_key_has_prefix(raw: &[u8], prefix: &[u8]) -> Result<bool> {
    let mut r = Reader::new(raw);
    let _kind = r.u8()?;
    let key_len = r.len()?;
    Ok(r.take(key_len)?.starts_with(prefix))
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = u32::try_from(len)
        .map_err(|_| Error::Backend(format!("record of {len} bytes is too large")))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A bounds-checked cursor over an encoded record.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "record truncated: need {n} bytes at offset {}, record is {} bytes",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        decode_rev(self.take(8)?)
    }

    fn len(&mut self) -> Result<usize> {
        let raw: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| Error::Corrupt("bad length field".into()))?;
        usize::try_from(u32::from_be_bytes(raw))
            .map_err(|_| Error::Corrupt("length does not fit in memory".into()))
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "{} trailing bytes after record",
                self.buf.len() - self.pos
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &'static [u8], create: u64, modr: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from_static(value),
            create_revision: create,
            mod_revision: modr,
        }
    }

    #[test]
    fn value_round_trip() {
        let v = kv("/a/b", b"hello", 3, 7);
        let raw = encode_value(&v);
        assert_eq!(decode_value(b"/a/b", &raw).unwrap(), v);
        assert!(matches!(
            decode_value(b"/a/b", &raw[..15]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_value(&[0xff], &raw),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn event_round_trip() {
        let events = [
            Event {
                kind: EventKind::Put,
                kv: kv("k", b"v1", 1, 1),
                prev: None,
            },
            Event {
                kind: EventKind::Put,
                kv: kv("k", b"v2", 1, 2),
                prev: Some(kv("k", b"v1", 1, 1)),
            },
            Event {
                kind: EventKind::Delete,
                kv: kv("k", b"v2", 1, 3),
                prev: Some(kv("k", b"v2", 1, 2)),
            },
            Event {
                kind: EventKind::Put,
                kv: kv("", b"", 4, 4),
                prev: None,
            },
        ];
        for ev in events {
            let raw = encode_event(&ev).unwrap();
            assert_eq!(decode_event(&raw).unwrap(), ev);
            assert!(event_key_has_prefix(&raw, ev.kv.key.as_bytes()).unwrap());
            assert!(!event_key_has_prefix(&raw, b"zz").unwrap());
            // Every truncation and any trailing garbage is reported, never a panic.
            for cut in 0..raw.len() {
                assert!(
                    matches!(decode_event(&raw[..cut]), Err(Error::Corrupt(_))),
                    "cut at {cut}"
                );
            }
            let mut longer = raw.clone();
            longer.push(0);
            assert!(matches!(decode_event(&longer), Err(Error::Corrupt(_))));
        }
    }

    #[test]
    fn garbage_is_corrupt_not_panic() {
        for raw in [
            &[][..],
            &[9][..],
            &[1, 0xff, 0xff, 0xff, 0xff][..],
            &[1, 0, 0, 0, 1, b'k'][..],
        ] {
            assert!(matches!(decode_event(raw), Err(Error::Corrupt(_))));
        }
        assert!(matches!(decode_rev(&[1, 2, 3]), Err(Error::Corrupt(_))));
        assert_eq!(decode_rev(&rev_key(42)).unwrap(), 42);
    }
}
