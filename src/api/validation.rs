//! Name, label and object-metadata validation rules, with upstream's messages (no IO).
//!
//! This module owns the string rules of `k8s.io/apimachinery/pkg/util/validation`
//! (DNS-1123 subdomains and labels, DNS-1035 labels, qualified names, label values, port
//! names, ...), implemented by hand instead of with regexes, and the checks of
//! `ValidateObjectMeta` / `ValidateObjectMetaUpdate`. It also holds the builders for
//! [`Cause`]s in upstream's `field.Error` format (`Invalid value: "x": detail`), which the
//! per-kind strategies in the registry use as well.

use serde_json::{Map, Value};

use crate::api::status::Cause;

/// Which name rule a resource's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lower-case alphanumerics, `-` and `.`, at most 253 characters.
    Dns1123Subdomain,
    /// RFC 1123 label: lower-case alphanumerics and `-`, at most 63 characters.
    Dns1123Label,
    /// RFC 1035 label: like a 1123 label but must start with a letter.
    Dns1035Label,
    /// Anything usable as a URL path segment: no `/` or `%`, not `.` or `..`.
    PathSegment,
}

/// Maximum length of a DNS-1123 label.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Maximum length of a DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Maximum length of a DNS-1035 label.
pub const DNS1035_LABEL_MAX_LENGTH: usize = 63;
/// Maximum length of a label value (and of the name part of a qualified name).
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;
/// Maximum total size of all annotation keys and values.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_MAP_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_MAP_KEY_ERR: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const WILDCARD_DNS1123_SUBDOMAIN_FMT: &str =
    "\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const WILDCARD_DNS1123_SUBDOMAIN_ERR: &str = "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character";

/// Upstream's `RegexError`: the message, examples and the regex "used for validation".
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(e);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// Upstream's `MaxLenError`.
pub fn max_len_error(len: usize) -> String {
    format!("must be no more than {len} characters")
}

/// Upstream's `EmptyError`.
pub fn empty_error() -> String {
    "must be non-empty".to_string()
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn match_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// `label(\.label)*`
fn match_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(match_dns1123_label)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`
fn match_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn match_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// Errors for a DNS-1123 label (e.g. a namespace name); empty when valid.
pub fn is_dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !match_dns1123_label(s) {
        if match_dns1123_subdomain(s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// Errors for a DNS-1123 subdomain (most object names); empty when valid.
pub fn is_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !match_dns1123_subdomain(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Errors for a DNS-1035 label (service names); empty when valid.
pub fn is_dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1035_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1035_LABEL_MAX_LENGTH));
    }
    if !match_dns1035_label(s) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// Errors for a wildcard DNS-1123 subdomain (`*.example.com`).
pub fn is_wildcard_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    let ok = s.strip_prefix("*.").is_some_and(match_dns1123_subdomain);
    if !ok {
        errs.push(regex_error(
            WILDCARD_DNS1123_SUBDOMAIN_ERR,
            WILDCARD_DNS1123_SUBDOMAIN_FMT,
            &["*.example.com"],
        ));
    }
    errs
}

/// Errors for a qualified name (label and annotation keys, finalizers): an optional DNS
/// subdomain prefix and `/`, then a name of at most 63 characters.
pub fn is_qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("prefix part {}", empty_error()));
            } else {
                for msg in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {msg}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("name part {}", empty_error()));
    } else if name.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(LABEL_VALUE_MAX_LENGTH)
        ));
    }
    if !match_qualified_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Errors for a label value (may be empty).
pub fn is_valid_label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !(s.is_empty() || match_qualified_name(s)) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Errors for a name that must be usable as a URL path segment.
pub fn is_path_segment_name(s: &str) -> Vec<String> {
    for bad in [".", ".."] {
        if s == bad {
            return vec![format!("may not be '{bad}'")];
        }
    }
    is_path_segment_prefix(s)
}

/// Errors for a `generateName` prefix of a path-segment name.
pub fn is_path_segment_prefix(s: &str) -> Vec<String> {
    ["/", "%"]
        .iter()
        .filter(|bad| s.contains(*bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

/// Errors for a ConfigMap or Secret data key.
pub fn is_config_map_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
    if !ok {
        errs.push(regex_error(
            CONFIG_MAP_KEY_ERR,
            CONFIG_MAP_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        errs.push("must not be '.'".to_string());
    } else if s == ".." {
        errs.push("must not be '..'".to_string());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// Errors for a port number (1-65535).
pub fn is_valid_port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec![inclusive_range_error(1, 65535)]
    }
}

/// Upstream's `InclusiveRangeError`.
pub fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

/// Errors for a named port (IANA_SVC_NAME: at most 15 characters, `[-a-z0-9]`, a letter).
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if port.is_empty() || !port.bytes().all(|c| is_lower_alnum(c) || c == b'-') {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// Errors for a percent string (`[0-9]+%`).
pub fn is_valid_percent(s: &str) -> Vec<String> {
    let ok = s
        .strip_suffix('%')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()));
    if ok {
        Vec::new()
    } else {
        vec![regex_error(
            "a valid percent string must be a numeric string followed by an ending '%'",
            "[0-9]+%",
            &["1%", "93%"],
        )]
    }
}

/// Errors for an environment variable name (relaxed rule: printable ASCII except `=`).
pub fn is_env_var_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.is_empty() || !s.bytes().all(|c| (32..=126).contains(&c) && c != b'=') {
        errs.push("a valid environment variable name must consist only of printable ASCII characters other than '='".to_string());
    }
    errs
}

/// Errors for an IP address.
pub fn is_valid_ip(s: &str) -> Vec<String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        Vec::new()
    } else {
        vec!["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".to_string()]
    }
}

/// Validates a name (or, with `prefix`, a `generateName`) against a [`NameRule`].
pub fn validate_name(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    // A generateName may end in '-': upstream masks a trailing dash before checking.
    let masked;
    let name = if prefix && rule != NameRule::PathSegment && name.len() > 1 && name.ends_with('-') {
        masked = format!("{}a", &name[..name.len() - 1]);
        masked.as_str()
    } else {
        name
    };
    match rule {
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
        NameRule::Dns1123Label => is_dns1123_label(name),
        NameRule::Dns1035Label => is_dns1035_label(name),
        NameRule::PathSegment if prefix => is_path_segment_prefix(name),
        NameRule::PathSegment => is_path_segment_name(name),
    }
}

// ---------------------------------------------------------------------------------------
// Cause builders in upstream `field.Error` format.

/// Quotes a string the way Go's `%q` does.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders a JSON value roughly as upstream renders a bad value in a field error
/// (`"x"` for strings, `map[string]string{"a":"b"}` for string maps, ...).
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(m) if m.values().all(Value::is_string) => render_string_map(Some(m)),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let items: Vec<String> = a.iter().filter_map(Value::as_str).map(go_quote).collect();
            format!("[]string{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Renders a `map[string]string` as Go's `%#v` does (keys sorted).
pub fn render_string_map(m: Option<&Map<String, Value>>) -> String {
    let Some(m) = m else {
        return "map[string]string(nil)".to_string();
    };
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let items: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}:{}",
                go_quote(k),
                go_quote(m[k.as_str()].as_str().unwrap_or(""))
            )
        })
        .collect();
    format!("map[string]string{{{}}}", items.join(", "))
}

fn with_detail(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    }
}

/// `FieldValueRequired`: `Required value[: detail]`.
pub fn required(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: with_detail("Required value".into(), detail),
        field: field.into(),
    }
}

/// `FieldValueInvalid` with a JSON bad value: `Invalid value: <value>: detail`.
pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Cause {
    invalid_raw(field, &render_value(value), detail)
}

/// `FieldValueInvalid` with a string bad value.
pub fn invalid_str(field: impl Into<String>, value: &str, detail: &str) -> Cause {
    invalid_raw(field, &go_quote(value), detail)
}

/// `FieldValueInvalid` with an already rendered bad value.
pub fn invalid_raw(field: impl Into<String>, rendered: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: with_detail(format!("Invalid value: {rendered}"), detail),
        field: field.into(),
    }
}

/// `FieldValueNotSupported`: `Unsupported value: "x": supported values: "a", "b"`.
pub fn not_supported(field: impl Into<String>, value: &str, valid: &[&str]) -> Cause {
    let detail = if valid.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = valid.iter().map(|v| go_quote(v)).collect();
        format!("supported values: {}", quoted.join(", "))
    };
    Cause {
        reason: "FieldValueNotSupported".into(),
        message: with_detail(format!("Unsupported value: {}", go_quote(value)), &detail),
        field: field.into(),
    }
}

/// `FieldValueForbidden`: `Forbidden: detail`.
pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        message: with_detail("Forbidden".into(), detail),
        field: field.into(),
    }
}

/// `FieldValueDuplicate`: `Duplicate value: <value>`.
pub fn duplicate(field: impl Into<String>, rendered: &str) -> Cause {
    Cause {
        reason: "FieldValueDuplicate".into(),
        message: format!("Duplicate value: {rendered}"),
        field: field.into(),
    }
}

/// `FieldValueNotFound`: `Not found: <value>`.
pub fn not_found(field: impl Into<String>, rendered: &str) -> Cause {
    Cause {
        reason: "FieldValueNotFound".into(),
        message: format!("Not found: {rendered}"),
        field: field.into(),
    }
}

/// `FieldValueTooLong`: `Too long: may not be more than N bytes`.
pub fn too_long(field: impl Into<String>, max: usize) -> Cause {
    let unit = if max == 1 { "byte" } else { "bytes" };
    Cause {
        reason: "FieldValueTooLong".into(),
        message: format!("Too long: may not be more than {max} {unit}"),
        field: field.into(),
    }
}

/// Upstream's `IsNegativeErrorMsg` check on an integer field, if present.
pub fn validate_nonnegative(v: Option<&Value>, field: &str) -> Vec<Cause> {
    match v.and_then(Value::as_i64) {
        Some(n) if n < 0 => {
            vec![invalid(
                field,
                &Value::from(n),
                "must be greater than or equal to 0",
            )]
        }
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Metadata.

/// Validates label keys and values (`metadata.labels`, selectors' `matchLabels`, ...).
pub fn validate_labels(labels: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(Value::Object(m)) = labels else {
        return causes;
    };
    for (k, v) in m {
        for msg in is_qualified_name(k) {
            causes.push(invalid_str(path, k, &msg));
        }
        match v {
            Value::String(s) => {
                for msg in is_valid_label_value(s) {
                    causes.push(invalid_str(path, s, &msg));
                }
            }
            Value::Null => {}
            other => causes.push(invalid(path, other, "label values must be strings")),
        }
    }
    causes
}

/// Validates annotation keys and the total annotation size.
pub fn validate_annotations(annotations: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(Value::Object(m)) = annotations else {
        return causes;
    };
    let mut total = 0usize;
    for (k, v) in m {
        for msg in is_qualified_name(&k.to_lowercase()) {
            causes.push(invalid_str(path, k, &msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        causes.push(too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    causes
}

/// Validates a `metav1.LabelSelector` (`matchLabels` and `matchExpressions`).
pub fn validate_label_selector(sel: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return causes;
    };
    causes.extend(validate_labels(
        sel.get("matchLabels"),
        &format!("{path}.matchLabels"),
    ));
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for (i, expr) in exprs.into_iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = expr.get("values").and_then(Value::as_array);
        let n_values = values.map_or(0, Vec::len);
        let op = expr.get("operator").and_then(Value::as_str).unwrap_or("");
        match op {
            "In" | "NotIn" => {
                if n_values == 0 {
                    causes.push(required(
                        format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if n_values > 0 {
                    causes.push(forbidden(
                        format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            _ => causes.push(invalid_str(
                format!("{p}.operator"),
                op,
                "not a valid selector operator",
            )),
        }
        let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
        for msg in is_qualified_name(key) {
            causes.push(invalid_str(format!("{p}.key"), key, &msg));
        }
        for (j, v) in values.into_iter().flatten().enumerate() {
            let s = v.as_str().unwrap_or("");
            for msg in is_valid_label_value(s) {
                causes.push(invalid_str(format!("{p}.values[{j}]"), s, &msg));
            }
        }
    }
    causes
}

fn meta_str<'a>(meta: &'a Value, key: &str) -> &'a str {
    meta.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Validates object metadata as upstream's `ValidateObjectMeta` does. `meta` is the
/// `metadata` object, `path` its field path (normally `metadata`).
pub fn validate_object_meta(
    meta: &Value,
    namespaced: bool,
    name_rule: NameRule,
    path: &str,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let generate_name = meta_str(meta, "generateName");
    if !generate_name.is_empty() {
        for msg in validate_name(name_rule, generate_name, true) {
            causes.push(invalid_str(
                format!("{path}.generateName"),
                generate_name,
                &msg,
            ));
        }
    }
    let name = meta_str(meta, "name");
    if name.is_empty() {
        if generate_name.is_empty() {
            causes.push(required(
                format!("{path}.name"),
                "name or generateName is required",
            ));
        }
    } else {
        for msg in validate_name(name_rule, name, false) {
            causes.push(invalid_str(format!("{path}.name"), name, &msg));
        }
    }
    let namespace = meta_str(meta, "namespace");
    if namespaced {
        if namespace.is_empty() {
            causes.push(required(format!("{path}.namespace"), ""));
        } else {
            for msg in is_dns1123_label(namespace) {
                causes.push(invalid_str(format!("{path}.namespace"), namespace, &msg));
            }
        }
    } else if !namespace.is_empty() {
        causes.push(forbidden(
            format!("{path}.namespace"),
            "not allowed on this type",
        ));
    }
    causes.extend(validate_nonnegative(
        meta.get("generation"),
        &format!("{path}.generation"),
    ));
    causes.extend(validate_labels(
        meta.get("labels"),
        &format!("{path}.labels"),
    ));
    causes.extend(validate_annotations(
        meta.get("annotations"),
        &format!("{path}.annotations"),
    ));
    causes.extend(validate_owner_references(
        meta.get("ownerReferences"),
        &format!("{path}.ownerReferences"),
    ));
    causes.extend(validate_finalizers(
        meta.get("finalizers"),
        &format!("{path}.finalizers"),
    ));
    causes
}

fn validate_owner_references(refs: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut first_controller: Option<String> = None;
    for r in refs.and_then(Value::as_array).into_iter().flatten() {
        let api_version = meta_str(r, "apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            causes.push(invalid_str(
                format!("{path}.apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        for key in ["kind", "name", "uid"] {
            let v = meta_str(r, key);
            if v.is_empty() {
                causes.push(invalid_str(format!("{path}.{key}"), v, "must not be empty"));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let current = format!("{}/{}", meta_str(r, "kind"), meta_str(r, "name"));
            match &first_controller {
                Some(first) => causes.push(invalid(
                    path,
                    refs.unwrap_or(&Value::Null),
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                )),
                None => first_controller = Some(current),
            }
        }
    }
    causes
}

fn validate_finalizers(finalizers: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let list = finalizers.and_then(Value::as_array);
    let mut orphan = false;
    let mut foreground = false;
    for f in list.into_iter().flatten() {
        let s = f.as_str().unwrap_or("");
        for msg in is_qualified_name(s) {
            causes.push(invalid_str(path, s, &msg));
        }
        orphan |= s == "orphan";
        foreground |= s == "foregroundDeletion";
    }
    if orphan && foreground {
        causes.push(invalid(
            path,
            finalizers.unwrap_or(&Value::Null),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    causes
}

/// Immutable metadata on update (`ValidateObjectMetaUpdate`): name, namespace, uid.
pub fn validate_object_meta_update(new: &Value, old: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for key in ["name", "namespace", "uid"] {
        let (n, o) = (meta_str(new, key), meta_str(old, key));
        // An empty uid on update means "unchanged" (the store fills it in).
        if n != o && !(key == "uid" && n.is_empty()) {
            causes.push(invalid_str(
                format!("{path}.{key}"),
                n,
                "field is immutable",
            ));
        }
    }
    causes.extend(validate_nonnegative(
        new.get("generation"),
        &format!("{path}.generation"),
    ));
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dns_names() {
        let cases: &[(&str, bool, bool, bool)] = &[
            // (input, subdomain ok, 1123 label ok, 1035 label ok)
            ("a", true, true, true),
            ("abc-123", true, true, true),
            ("1abc", true, true, false),
            ("example.com", true, false, false),
            ("Bad_Name", false, false, false),
            ("-a", false, false, false),
            ("a-", false, false, false),
            ("", false, false, false),
            ("a..b", false, false, false),
            ("a.", false, false, false),
        ];
        for (s, sub, l1123, l1035) in cases {
            assert_eq!(is_dns1123_subdomain(s).is_empty(), *sub, "subdomain {s:?}");
            assert_eq!(is_dns1123_label(s).is_empty(), *l1123, "1123 label {s:?}");
            assert_eq!(is_dns1035_label(s).is_empty(), *l1035, "1035 label {s:?}");
        }
        assert_eq!(
            is_dns1123_label("a.b"),
            vec!["must not contain dots".to_string()]
        );
        assert_eq!(
            is_dns1123_subdomain(&"a".repeat(254))[0],
            "must be no more than 253 characters"
        );
        assert_eq!(is_dns1123_label(&"a".repeat(64)).len(), 1);
        assert_eq!(
            is_dns1123_subdomain("Bad_Name")[0],
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(
            is_dns1035_label("1a")[0],
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        );
    }

    #[test]
    fn qualified_names_and_label_values() {
        let cases: &[(&str, usize)] = &[
            ("app", 0),
            ("app.kubernetes.io/name", 0),
            ("Example.com/x", 1),
            ("a/b/c", 1),
            ("/x", 1),
            ("x/", 2),
            ("app:monolith", 1),
            ("My_Name.1", 0),
            ("_x", 1),
        ];
        for (s, n) in cases {
            assert_eq!(
                is_qualified_name(s).len(),
                *n,
                "{s:?}: {:?}",
                is_qualified_name(s)
            );
        }
        assert!(is_qualified_name("a/b/c")[0].starts_with("a qualified name must consist of"));
        assert!(is_qualified_name("app:monolith")[0].starts_with(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used"
        ));
        assert_eq!(is_qualified_name("x/")[0], "name part must be non-empty");
        assert!(is_qualified_name(&"a".repeat(64))[0].contains("no more than 63"));
        for (v, ok) in [("", true), ("v1.0", true), ("-x", false), ("a b", false)] {
            assert_eq!(is_valid_label_value(v).is_empty(), ok, "{v:?}");
        }
        assert_eq!(is_valid_label_value(&"a".repeat(64)).len(), 1);
    }

    #[test]
    fn path_segments_ports_keys() {
        assert_eq!(is_path_segment_name(".."), vec!["may not be '..'"]);
        assert_eq!(
            is_path_segment_name("a/b%c"),
            vec!["may not contain '/'", "may not contain '%'"]
        );
        assert!(is_path_segment_name("system:admin").is_empty());
        assert!(is_valid_port_num(80).is_empty());
        assert_eq!(
            is_valid_port_num(0),
            vec!["must be between 1 and 65535, inclusive"]
        );
        assert_eq!(is_valid_port_num(65536).len(), 1);
        assert!(is_valid_port_name("http").is_empty());
        assert_eq!(is_valid_port_name("80").len(), 1);
        assert_eq!(is_valid_port_name("a--b").len(), 1);
        assert_eq!(is_valid_port_name("this-is-way-too-long").len(), 1);
        assert!(is_config_map_key("config.yaml").is_empty());
        assert_eq!(is_config_map_key("a/b").len(), 1);
        assert_eq!(is_config_map_key("..x"), vec!["must not start with '..'"]);
        assert!(is_valid_percent("25%").is_empty());
        assert_eq!(is_valid_percent("25").len(), 1);
        assert!(is_env_var_name("MY_VAR.x-1").is_empty());
        assert_eq!(is_env_var_name("A=B").len(), 1);
        assert!(is_wildcard_dns1123_subdomain("*.example.com").is_empty());
        assert_eq!(is_wildcard_dns1123_subdomain("*example.com").len(), 1);
    }

    #[test]
    fn names_with_generate_prefix() {
        assert!(validate_name(NameRule::Dns1123Subdomain, "web-", true).is_empty());
        assert!(!validate_name(NameRule::Dns1123Subdomain, "web-", false).is_empty());
        assert!(validate_name(NameRule::PathSegment, "..", true).is_empty());
        assert!(validate_name(NameRule::Dns1035Label, "svc-", true).is_empty());
    }

    #[test]
    fn cause_formats() {
        let c = invalid_str("metadata.name", "Bad_Name", "detail");
        assert_eq!(c.message, "Invalid value: \"Bad_Name\": detail");
        assert_eq!(c.reason, "FieldValueInvalid");
        assert_eq!(required("spec.containers", "").message, "Required value");
        assert_eq!(
            not_supported(
                "spec.restartPolicy",
                "Sometimes",
                &["Always", "OnFailure", "Never"]
            )
            .message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        assert_eq!(
            forbidden("x", "not allowed on this type").message,
            "Forbidden: not allowed on this type"
        );
        assert_eq!(
            too_long("metadata.annotations", 262144).message,
            "Too long: may not be more than 262144 bytes"
        );
        assert_eq!(duplicate("a", "\"x\"").message, "Duplicate value: \"x\"");
        assert_eq!(
            render_value(&json!({"b": "2", "a": "1"})),
            "map[string]string{\"a\":\"1\", \"b\":\"2\"}"
        );
        assert_eq!(render_value(&json!(["x", "y"])), "[]string{\"x\", \"y\"}");
        assert_eq!(render_value(&json!(3)), "3");
        assert_eq!(go_quote("a\"b\\\n"), "\"a\\\"b\\\\\\n\"");
    }

    #[test]
    fn object_meta() {
        struct Case {
            meta: Value,
            namespaced: bool,
            rule: NameRule,
            want: &'static [(&'static str, &'static str)],
        }
        let cases = [
            Case {
                meta: json!({"name": "ok", "namespace": "default"}),
                namespaced: true,
                rule: NameRule::Dns1123Subdomain,
                want: &[],
            },
            Case {
                meta: json!({"namespace": "default"}),
                namespaced: true,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueRequired", "metadata.name")],
            },
            Case {
                meta: json!({"generateName": "web-", "namespace": "d"}),
                namespaced: true,
                rule: NameRule::Dns1123Subdomain,
                want: &[],
            },
            Case {
                meta: json!({"name": "Bad_Name", "namespace": "default"}),
                namespaced: true,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueInvalid", "metadata.name")],
            },
            Case {
                meta: json!({"name": "n"}),
                namespaced: true,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueRequired", "metadata.namespace")],
            },
            Case {
                meta: json!({"name": "n", "namespace": "x"}),
                namespaced: false,
                rule: NameRule::Dns1123Label,
                want: &[("FieldValueForbidden", "metadata.namespace")],
            },
            Case {
                meta: json!({"name": "n", "namespace": "Bad"}),
                namespaced: true,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueInvalid", "metadata.namespace")],
            },
            Case {
                meta: json!({"name": "n", "labels": {"bad key!": "v", "ok": "bad value!"}}),
                namespaced: false,
                rule: NameRule::Dns1123Subdomain,
                want: &[
                    ("FieldValueInvalid", "metadata.labels"),
                    ("FieldValueInvalid", "metadata.labels"),
                ],
            },
            Case {
                meta: json!({"name": "n", "annotations": {"a/b/c": "v"}}),
                namespaced: false,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueInvalid", "metadata.annotations")],
            },
            Case {
                meta: json!({"name": "n", "annotations": {"big": "x".repeat(300_000)}}),
                namespaced: false,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueTooLong", "metadata.annotations")],
            },
            Case {
                meta: json!({"name": "n", "finalizers": ["a/b/c", "example.com/ok"]}),
                namespaced: false,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueInvalid", "metadata.finalizers")],
            },
            Case {
                meta: json!({"name": "n", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"}]}),
                namespaced: false,
                rule: NameRule::Dns1123Subdomain,
                want: &[("FieldValueInvalid", "metadata.ownerReferences.uid")],
            },
            Case {
                meta: json!({"name": "system:admin"}),
                namespaced: false,
                rule: NameRule::PathSegment,
                want: &[],
            },
            Case {
                meta: json!({"name": "my.svc"}),
                namespaced: false,
                rule: NameRule::Dns1035Label,
                want: &[("FieldValueInvalid", "metadata.name")],
            },
        ];
        for c in cases {
            let got = validate_object_meta(&c.meta, c.namespaced, c.rule, "metadata");
            let got: Vec<(&str, &str)> = got
                .iter()
                .map(|c| (c.reason.as_str(), c.field.as_str()))
                .collect();
            assert_eq!(got, c.want, "{}", c.meta);
        }
        let c = &validate_object_meta(
            &json!({"name": "n"}),
            true,
            NameRule::Dns1123Subdomain,
            "metadata",
        )[0];
        assert_eq!(c.message, "Required value");
        let c = &validate_object_meta(&json!({}), false, NameRule::Dns1123Subdomain, "metadata")[0];
        assert_eq!(
            c.message,
            "Required value: name or generateName is required"
        );
    }

    #[test]
    fn label_selectors_and_updates() {
        let sel = json!({"matchLabels": {"app": "x"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": []},
            {"key": "env", "operator": "Exists", "values": ["x"]},
            {"key": "k", "operator": "Bogus"},
        ]});
        let got: Vec<String> = validate_label_selector(Some(&sel), "spec.selector")
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            got,
            vec![
                "spec.selector.matchExpressions[0].values",
                "spec.selector.matchExpressions[1].values",
                "spec.selector.matchExpressions[2].operator"
            ]
        );
        let old = json!({"name": "a", "namespace": "n", "uid": "1"});
        assert!(validate_object_meta_update(&old, &old, "metadata").is_empty());
        let new = json!({"name": "b", "namespace": "n", "uid": "1"});
        let c = validate_object_meta_update(&new, &old, "metadata");
        assert_eq!(c[0].field, "metadata.name");
        assert_eq!(c[0].message, "Invalid value: \"b\": field is immutable");
    }
}
