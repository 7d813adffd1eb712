//! The template hashes workload controllers name things by (a ReplicaSet's
//! `pod-template-hash`, a ControllerRevision's `controller-revision-hash`): FNV-1a over a
//! canonical JSON rendering, spelled with upstream's safe alphabet.
//!
//! Depends on: serde_json only.

use serde_json::Value;

/// Characters a hash is spelled with (no vowels, no look-alikes), as upstream's
/// `SafeEncodeString`.
pub(crate) const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits, over the concatenation of `chunks`.
pub(crate) fn fnv32a(chunks: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for chunk in chunks {
        for b in *chunk {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A hash as upstream prints it: its decimal digits, each mapped into [`SAFE_ALPHABET`].
pub(crate) fn safe_encode(hash: u32) -> String {
    hash.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// JSON with object keys sorted, so equal values always hash alike; with `skip_empty`,
/// object fields that are null or (recursively) empty maps or empty lists are left out,
/// as the API treats them as absent.
pub(crate) fn canonical_json(v: &Value, skip_empty: bool) -> String {
    let mut out = String::new();
    write_canonical(v, skip_empty, &mut out);
    out
}

fn write_canonical(v: &Value, skip_empty: bool, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m
                .keys()
                .filter(|k| !(skip_empty && is_empty(&m[*k])))
                .collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], skip_empty, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, skip_empty, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Null, or a map whose values are all empty, or an empty list.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_rendering() {
        let v = json!({"b": 1, "a": {"d": null, "c": []}, "e": [{}, null], "f": "x"});
        for (skip, want) in [
            (
                false,
                r#"{"a":{"c":[],"d":null},"b":1,"e":[{},null],"f":"x"}"#,
            ),
            (true, r#"{"b":1,"e":[{},null],"f":"x"}"#),
        ] {
            assert_eq!(canonical_json(&v, skip), want, "skip_empty={skip}");
        }
    }

    #[test]
    fn fnv_and_encoding() {
        // FNV-1a test vectors.
        assert_eq!(fnv32a(&[]), 0x811c_9dc5);
        assert_eq!(fnv32a(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv32a(&[b"foo", b"bar"]), fnv32a(&[b"foobar"]));
        let s = safe_encode(1_234_567_890);
        assert_eq!(s.len(), 10);
        assert!(s.bytes().all(|c| SAFE_ALPHABET.contains(&c)), "{s}");
    }
}
