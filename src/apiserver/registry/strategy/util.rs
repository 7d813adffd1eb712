//! Small helpers for reading and defaulting `serde_json::Value` objects, resource
//! quantities, and upstream-style renderings of values used in field errors.

use serde_json::{Map, Value};

/// Follows a path of object keys.
pub fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |cur, k| cur.get(*k))
        .filter(|v| !v.is_null())
}

/// The string at a key, or `""` (Go's zero value) when missing or not a string.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The string at a path, or `""`.
pub fn s_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

/// The integer at a key, if any.
pub fn i(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// The boolean at a key, `false` when missing (Go's zero value).
pub fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// The array at a key (empty when missing).
pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The object at a key, if any.
pub fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

/// Whether a key is missing or null.
pub fn absent(v: &Value, key: &str) -> bool {
    v.get(key).is_none_or(Value::is_null)
}

/// Whether a key is missing, null or the empty string (a Go string's zero value).
pub fn unset_str(v: &Value, key: &str) -> bool {
    match v.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Sets `key` to `val` when it is missing or null (a Go pointer's nil).
pub fn default_ptr(v: &mut Value, key: &str, val: Value) {
    if let Some(m) = v.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_string(), val);
    }
}

/// Sets a string `key` when it is missing, null or empty (a Go string's zero value).
pub fn default_str(v: &mut Value, key: &str, val: &str) {
    if unset_str(v, key)
        && let Some(m) = v.as_object_mut()
    {
        m.insert(key.to_string(), Value::String(val.to_string()));
    }
}

/// The child object at `key`, created (as `{}`) when missing or null. `None` when `v` is
/// not an object or the child is not an object.
pub fn child<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let m = v.as_object_mut()?;
    let c = m.entry(key.to_string()).or_insert(Value::Null);
    if c.is_null() {
        *c = Value::Object(Map::new());
    }
    c.is_object().then_some(c)
}

/// The existing child at a path of keys (not created), if it is not null.
pub fn existing<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cur = v;
    for k in path {
        cur = cur.get_mut(*k)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// Mutable elements of the array at `key` (nothing when missing).
pub fn items_mut<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// Removes nulls recursively from objects (Go's decoding treats a null like a missing
/// field), so two objects can be compared semantically.
pub fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Semantic equality of two optional values: null, missing and (for maps and lists)
/// empty are all the same, as `apiequality.Semantic.DeepEqual` mostly treats them.
pub fn sem_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn norm(v: Option<&Value>) -> Value {
        match v.map(strip_nulls) {
            None | Some(Value::Null) => Value::Null,
            Some(Value::Object(m)) if m.is_empty() => Value::Null,
            Some(Value::Array(a)) if a.is_empty() => Value::Null,
            Some(other) => other,
        }
    }
    norm(a) == norm(b)
}

/// Renders a `metav1.LabelSelector` as upstream's `%#v` does in field errors.
pub fn render_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|v| !v.is_null()) else {
        return "null".to_string();
    };
    let labels = crate::api::validation::render_string_map(obj(sel, "matchLabels"));
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(list) => {
            let items: Vec<String> = list
                .iter()
                .map(|e| {
                    let values = match e.get("values").and_then(Value::as_array) {
                        None => "[]string(nil)".to_string(),
                        Some(vs) => crate::api::validation::render_value(&Value::Array(vs.clone())),
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{values}}}",
                        crate::api::validation::go_quote(s(e, "key")),
                        crate::api::validation::go_quote(s(e, "operator")),
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

/// Parses a resource quantity into nano-units (so `"1"` is 1e9 and `"100m"` is 1e8),
/// saturating on overflow. Errors use upstream's messages.
pub fn parse_quantity(q: &str) -> Result<i128, &'static str> {
    const FORMAT: &str = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
    let bytes = q.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    if let Some(&c) = bytes.first()
        && (c == b'+' || c == b'-')
    {
        negative = c == b'-';
        pos = 1;
    }
    let num_start = pos;
    while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
        pos += 1;
    }
    let number = &q[num_start..pos];
    if number.is_empty() {
        return Err(FORMAT);
    }
    let suffix = &q[pos..];
    let suffix_ok = suffix.bytes().enumerate().all(|(i, c)| {
        b"eEinumkKMGTP".contains(&c) || c.is_ascii_digit() || ((c == b'-' || c == b'+') && i > 0)
    });
    if !suffix_ok {
        return Err(FORMAT);
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((a, b)) => (a, b),
        None => (number, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err("unable to parse numeric part of quantity");
    }
    // Value = digits * 10^(-frac_len) * multiplier; keep it in nano-units.
    let digits: String = format!("{int_part}{frac_part}");
    let mut mantissa: i128 = 0;
    for c in digits.bytes() {
        mantissa = mantissa
            .saturating_mul(10)
            .saturating_add(i128::from(c - b'0'));
    }
    let frac_len = i32::try_from(frac_part.len()).unwrap_or(i32::MAX);
    let (binary, exp10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other => {
            let exp = other
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i32>().ok())
                .ok_or("unable to parse quantity's suffix")?;
            (0, exp)
        }
    };
    let mut value = mantissa.saturating_mul(1i128 << binary);
    let scale = exp10.saturating_add(9).saturating_sub(frac_len);
    if scale >= 0 {
        for _ in 0..scale.min(40) {
            value = value.saturating_mul(10);
        }
    } else {
        for _ in 0..(-scale).min(40) {
            // Round up like upstream does for sub-nano precision.
            value = (value + 9) / 10;
        }
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        let cases: &[(&str, i128)] = &[
            ("1", 1_000_000_000),
            ("100m", 100_000_000),
            ("0.5", 500_000_000),
            ("1Ki", 1024 * 1_000_000_000),
            ("128Mi", 128 * (1 << 20) * 1_000_000_000),
            ("1k", 1_000_000_000_000),
            ("1e3", 1_000_000_000_000),
            ("-2", -2_000_000_000),
            ("1n", 1),
            ("1000m", 1_000_000_000),
        ];
        for (q, want) in cases {
            assert_eq!(parse_quantity(q), Ok(*want), "{q}");
        }
        for bad in ["", "abc", "1Qi", "1.2.3", "Mi", "1 Mi", "1Xi"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn helpers() {
        let mut v = json!({"a": null, "b": "", "c": {"d": 1}});
        default_ptr(&mut v, "a", json!(1));
        default_str(&mut v, "b", "x");
        default_str(&mut v, "z", "y");
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "x");
        assert_eq!(v["z"], "y");
        assert!(child(&mut v, "new").is_some());
        assert!(child(&mut v, "b").is_none());
        assert_eq!(get(&v, &["c", "d"]), Some(&json!(1)));
        assert!(sem_eq(Some(&json!({})), None));
        assert!(sem_eq(Some(&json!({"a": null})), Some(&json!({}))));
        assert!(!sem_eq(Some(&json!({"a": 1})), None));
        assert_eq!(
            render_label_selector(Some(&json!({"matchLabels": {"app": "x"}}))),
            "v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"x\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
        );
    }
}
