//! Decoding Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`)
//! into the JSON form the rest of the API server works with.
//!
//! kubectl 1.32+ typed clients (`create configmap|secret|deployment|job|...`,
//! `auth can-i`, `create token`, `drain`'s evictions) send their bodies as protobuf and
//! do not retry with JSON. A body is the magic `k8s\0` followed by a `runtime.Unknown`
//! envelope `{1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding,
//! 4: contentType}` whose `raw` is the object's own generated message. The kind picks a
//! message in the field table (`schema.txt`, see [`schema`]); fields become JSON members
//! the way the Go types marshal them: zero scalars left out unless the field has
//! presence, embedded structs inlined, maps as objects, bytes as base64, and the custom
//! JSON forms of `Time`, `MicroTime`, `Duration`, `Quantity`, `IntOrString`,
//! `RawExtension`, `FieldsV1` and the apiextensions schema unions. Unknown field numbers
//! are skipped, as protobuf readers do.
//!
//! The input is untrusted: every length is checked, nesting is bounded by
//! [`MAX_DEPTH`], and malformed input is an error, never a panic.
//!
//! Depends only on `serde_json`, `base64` and `jiff`; it knows nothing of HTTP or the
//! registry (the handlers call [`decode`] and take it from there).

pub mod schema;
mod wire;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use schema::{Card, Codec, Kind, Scalar, Schema};
use wire::Reader;

/// Maximum nesting of messages (objects within objects) in one body.
pub const MAX_DEPTH: usize = 100;

/// The prefix of every protobuf-encoded Kubernetes object.
pub const MAGIC: &[u8] = b"k8s\x00";

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body does not start with the protobuf magic number \"k8s\\x00\"")]
    MissingMagic,
    #[error("unexpected end of data")]
    Truncated,
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    #[error("invalid field tag {0}")]
    BadTag(u64),
    #[error("field {number}: invalid wire type {wire}")]
    BadWireType { number: u32, wire: u8 },
    #[error("objects are nested too deeply")]
    TooDeep,
    #[error("{message}.{field}: expected {expected}, got {got}")]
    WrongWireType {
        message: &'static str,
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("{message}.{field}: {reason}")]
    Invalid {
        message: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("the object has no apiVersion and kind")]
    MissingTypeMeta,
    #[error("no protobuf schema for {api_version}, Kind={kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("unsupported content encoding {0:?}")]
    ContentEncoding(String),
    #[error("unsupported embedded content type {0:?}")]
    ContentType(String),
    #[error("{0}")]
    Schema(String),
}

/// Decodes a protobuf-encoded object into its JSON form (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    decode_object(body).map_err(|e| e.to_string())
}

/// [`decode`] with a typed error.
pub fn decode_object(body: &[u8]) -> Result<Value, DecodeError> {
    let schema = schema::schema().map_err(|e| {
        tracing::error!(error = %e, "protobuf schema table is broken");
        DecodeError::Schema(e.to_string())
    })?;
    Decoder { schema }.envelope(body, 0)
}

/// API groups and the table's package names (`<package>.<version>.<Kind>`).
const GROUP_PACKAGES: &[(&str, &str)] = &[
    ("", "core"),
    ("apps", "apps"),
    ("batch", "batch"),
    ("autoscaling", "autoscaling"),
    ("policy", "policy"),
    ("networking.k8s.io", "networking"),
    ("coordination.k8s.io", "coordination"),
    ("discovery.k8s.io", "discovery"),
    ("events.k8s.io", "events"),
    ("rbac.authorization.k8s.io", "rbac"),
    ("authentication.k8s.io", "authentication"),
    ("authorization.k8s.io", "authorization"),
    ("storage.k8s.io", "storage"),
    ("scheduling.k8s.io", "scheduling"),
    ("apiextensions.k8s.io", "apiextensions"),
    ("meta.k8s.io", "meta"),
];

/// meta/v1 kinds every group version also serves (request options).
const META_KINDS: &[&str] = &[
    "DeleteOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
    "Status",
];

/// The table message for a kind, if there is one.
pub fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let schema = schema::schema().ok()?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let found = GROUP_PACKAGES
        .iter()
        .find(|(g, _)| *g == group)
        .and_then(|(_, package)| schema.index(&format!("{package}.{version}.{kind}")))
        .or_else(|| {
            if META_KINDS.contains(&kind) {
                schema.index(&format!("meta.v1.{kind}"))
            } else {
                None
            }
        })?;
    let message = schema.message(found);
    (message.codec == Codec::Object).then_some(message.name)
}

struct Decoder<'s> {
    schema: &'s Schema,
}

/// The last occurrence of fields 1..=3 of a small message (later ones win, as in proto).
fn small_fields(buf: &[u8]) -> Result<[Option<wire::Value<'_>>; 3], DecodeError> {
    let mut out = [None; 3];
    let mut r = Reader::new(buf);
    while let Some((number, value)) = r.field()? {
        if let Some(slot) = (number as usize)
            .checked_sub(1)
            .and_then(|i| out.get_mut(i))
        {
            *slot = Some(value);
        }
    }
    Ok(out)
}

impl Decoder<'_> {
    /// `k8s\0` + `runtime.Unknown`.
    fn envelope(&self, body: &[u8], depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let rest = body.strip_prefix(MAGIC).ok_or(DecodeError::MissingMagic)?;
        const UNKNOWN: &str = "runtime.Unknown";
        let text = |field: &'static str, b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| invalid(UNKNOWN, field, "invalid UTF-8"))
        };
        let (mut api_version, mut kind) = (String::new(), String::new());
        let (mut raw, mut encoding, mut content_type): (&[u8], String, String) =
            (&[], String::new(), String::new());
        let mut r = Reader::new(rest);
        while let Some((number, value)) = r.field()? {
            let field = match number {
                1 => "typeMeta",
                2 => "raw",
                3 => "contentEncoding",
                4 => "contentType",
                _ => continue,
            };
            let wire::Value::Bytes(b) = value else {
                return Err(wrong_wire(UNKNOWN, field, "length-delimited", value));
            };
            match number {
                1 => {
                    let [v, k, _] = small_fields(b)?;
                    for (slot, value, name) in
                        [(&mut api_version, v, "apiVersion"), (&mut kind, k, "kind")]
                    {
                        match value {
                            None => {}
                            Some(wire::Value::Bytes(s)) => *slot = text(name, s)?,
                            Some(other) => {
                                return Err(wrong_wire(UNKNOWN, name, "length-delimited", other));
                            }
                        }
                    }
                }
                2 => raw = b,
                3 => encoding = text(field, b)?,
                _ => content_type = text(field, b)?,
            }
        }
        if !encoding.is_empty() {
            return Err(DecodeError::ContentEncoding(encoding));
        }
        if api_version.is_empty() || kind.is_empty() {
            return Err(DecodeError::MissingTypeMeta);
        }
        let mut object = match content_type.as_str() {
            "" | "application/vnd.kubernetes.protobuf" => {
                let name =
                    message_for(&api_version, &kind).ok_or_else(|| DecodeError::UnknownKind {
                        api_version: api_version.clone(),
                        kind: kind.clone(),
                    })?;
                let index = self
                    .schema
                    .index(name)
                    .ok_or_else(|| DecodeError::Schema(format!("no message {name}")))?;
                let mut object = Map::new();
                self.merge(index, raw, &mut object, depth + 1)?;
                object
            }
            "application/json" => match serde_json::from_slice(raw) {
                Ok(Value::Object(object)) => object,
                Ok(_) => {
                    return Err(invalid(
                        UNKNOWN,
                        "raw",
                        "the embedded JSON is not an object",
                    ));
                }
                Err(e) => return Err(invalid(UNKNOWN, "raw", format!("invalid JSON: {e}"))),
            },
            _ => return Err(DecodeError::ContentType(content_type)),
        };
        object.insert("apiVersion".into(), Value::String(api_version));
        object.insert("kind".into(), Value::String(kind));
        Ok(Value::Object(object))
    }

    /// Decodes the fields of message `index` from `buf` into `out` (merging, as a
    /// message that occurs twice on the wire merges in proto).
    fn merge(
        &self,
        index: usize,
        buf: &[u8],
        out: &mut Map<String, Value>,
        depth: usize,
    ) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let message = self.schema.message(index);
        let mut r = Reader::new(buf);
        while let Some((number, value)) = r.field()? {
            let Some(field) = message.field(number) else {
                continue; // unknown field: skipped, like any protobuf reader
            };
            let name = field.json;
            match (field.card, field.kind) {
                (Card::Single, Kind::Scalar(s)) => {
                    let v = scalar(s, value, message.name, name)?;
                    if field.zero || !is_zero(&v) {
                        out.insert(name.to_string(), v);
                    } else {
                        out.remove(name);
                    }
                }
                (Card::Single, Kind::Message(child)) => {
                    let b = bytes(value, message.name, name)?;
                    if field.inline {
                        self.merge(child, b, out, depth + 1)?;
                    } else if self.schema.message(child).codec == Codec::Object {
                        let entry = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                        if !entry.is_object() {
                            *entry = Value::Object(Map::new());
                        }
                        if let Value::Object(existing) = entry {
                            self.merge(child, b, existing, depth + 1)?;
                        }
                    } else {
                        match self.value(child, b, depth + 1)? {
                            Some(v) => out.insert(name.to_string(), v),
                            None => out.remove(name),
                        };
                    }
                }
                (Card::Repeated, Kind::Scalar(s)) => match value {
                    wire::Value::Bytes(b) if !matches!(s, Scalar::String | Scalar::Bytes) => {
                        // packed
                        let mut r = Reader::new(b);
                        while !r.is_empty() {
                            let v = match s {
                                Scalar::Double => wire::Value::Fixed64(r.fixed64()?),
                                Scalar::Float => wire::Value::Fixed32(r.fixed32()?),
                                _ => wire::Value::Varint(r.varint()?),
                            };
                            push(out, name, scalar(s, v, message.name, name)?);
                        }
                    }
                    v => push(out, name, scalar(s, v, message.name, name)?),
                },
                (Card::Repeated, Kind::Message(child)) => {
                    let b = bytes(value, message.name, name)?;
                    let v = self.value(child, b, depth + 1)?.unwrap_or(Value::Null);
                    push(out, name, v);
                }
                (Card::Map(key_type), kind) => {
                    let b = bytes(value, message.name, name)?;
                    let [key, val, _] = small_fields(b)?;
                    let key = match key {
                        None => zero_key(key_type),
                        Some(k) => match scalar(key_type, k, message.name, name)? {
                            Value::String(s) => s,
                            other => other.to_string(),
                        },
                    };
                    let val = match (kind, val) {
                        (Kind::Scalar(s), Some(v)) => scalar(s, v, message.name, name)?,
                        (Kind::Scalar(s), None) => zero_value(s),
                        (Kind::Message(child), v) => {
                            let b = match v {
                                Some(v) => bytes(v, message.name, name)?,
                                None => &[],
                            };
                            self.value(child, b, depth + 1)?.unwrap_or(Value::Null)
                        }
                    };
                    let entry = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                    if !entry.is_object() {
                        *entry = Value::Object(Map::new());
                    }
                    if let Value::Object(map) = entry {
                        map.insert(key, val);
                    }
                }
            }
        }
        Ok(())
    }

    /// A message as a JSON value; `None` where Go marshals `null` (unset times, empty
    /// raw JSON), which callers leave out.
    fn value(&self, index: usize, buf: &[u8], depth: usize) -> Result<Option<Value>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let message = self.schema.message(index);
        let name = message.name;
        match message.codec {
            Codec::Object => {
                let mut object = Map::new();
                self.merge(index, buf, &mut object, depth)?;
                Ok(Some(Value::Object(object)))
            }
            Codec::Time | Codec::MicroTime => {
                // {1: seconds int64, 2: nanos int32}; no data at all is the zero time.
                if buf.is_empty() {
                    return Ok(None);
                }
                let [seconds, nanos, _] = small_fields(buf)?;
                let seconds = opt_varint(seconds, name, "seconds")? as i64;
                let nanos = opt_varint(nanos, name, "nanos")? as i32;
                format_time(seconds, nanos, message.codec == Codec::MicroTime)
                    .map_err(|reason| invalid(name, "seconds", reason))
            }
            Codec::Duration => {
                // {1: duration int64 nanoseconds}
                let [d, _, _] = small_fields(buf)?;
                let d = opt_varint(d, name, "duration")? as i64;
                Ok(Some(Value::String(go_duration(d))))
            }
            Codec::Quantity => {
                // {1: string}
                let [s, _, _] = small_fields(buf)?;
                let s = match s {
                    None => "0".to_string(),
                    Some(v) => utf8(bytes(v, name, "string")?, name, "string")?,
                };
                Ok(Some(Value::String(s)))
            }
            Codec::IntOrString => {
                // {1: type int64 (0 int, 1 string), 2: intVal int32, 3: strVal string}
                let [ty, int_val, str_val] = small_fields(buf)?;
                match opt_varint(ty, name, "type")? {
                    0 => Ok(Some(Value::from(
                        opt_varint(int_val, name, "intVal")? as i32
                    ))),
                    1 => {
                        let s = match str_val {
                            None => String::new(),
                            Some(v) => utf8(bytes(v, name, "strVal")?, name, "strVal")?,
                        };
                        Ok(Some(Value::String(s)))
                    }
                    other => Err(invalid(name, "type", format!("unknown type {other}"))),
                }
            }
            Codec::RawExtension | Codec::RawJson => {
                // {1: raw bytes}
                let [raw, _, _] = small_fields(buf)?;
                let raw = match raw {
                    None => return Ok(None),
                    Some(v) => bytes(v, name, "raw")?,
                };
                if raw.is_empty() {
                    return Ok(None);
                }
                if message.codec == Codec::RawExtension && raw.starts_with(MAGIC) {
                    return self.envelope(raw, depth + 1).map(Some);
                }
                serde_json::from_slice(raw)
                    .map(Some)
                    .map_err(|e| invalid(name, "raw", format!("invalid JSON: {e}")))
            }
            Codec::List | Codec::SchemaOrArray | Codec::SchemaOrBool | Codec::SchemaOrStrings => {
                let mut object = Map::new();
                self.merge(index, buf, &mut object, depth)?;
                let non_empty_array =
                    |v: Option<Value>| v.filter(|v| v.as_array().is_some_and(|a| !a.is_empty()));
                Ok(match message.codec {
                    Codec::List => Some(
                        object
                            .remove("items")
                            .unwrap_or_else(|| Value::Array(Vec::new())),
                    ),
                    Codec::SchemaOrArray => non_empty_array(object.remove("jSONSchemas"))
                        .or_else(|| object.remove("schema")),
                    Codec::SchemaOrStrings => non_empty_array(object.remove("property"))
                        .or_else(|| object.remove("schema")),
                    _ => object
                        .remove("schema")
                        .or_else(|| Some(object.remove("allows").unwrap_or(Value::Bool(false)))),
                })
            }
        }
    }
}

fn invalid(message: &'static str, field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        message,
        field,
        reason: reason.into(),
    }
}

fn wrong_wire(
    message: &'static str,
    field: &'static str,
    expected: &'static str,
    got: wire::Value<'_>,
) -> DecodeError {
    DecodeError::WrongWireType {
        message,
        field,
        expected,
        got: got.wire_name(),
    }
}

fn bytes<'a>(
    v: wire::Value<'a>,
    message: &'static str,
    field: &'static str,
) -> Result<&'a [u8], DecodeError> {
    match v {
        wire::Value::Bytes(b) => Ok(b),
        other => Err(wrong_wire(message, field, "length-delimited", other)),
    }
}

fn utf8(b: &[u8], message: &'static str, field: &'static str) -> Result<String, DecodeError> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| invalid(message, field, "invalid UTF-8 in a string"))
}

fn opt_varint(
    v: Option<wire::Value<'_>>,
    message: &'static str,
    field: &'static str,
) -> Result<u64, DecodeError> {
    match v {
        None => Ok(0),
        Some(wire::Value::Varint(x)) => Ok(x),
        Some(other) => Err(wrong_wire(message, field, "varint", other)),
    }
}

/// One scalar value as JSON, the way Go's encoding/json writes the Go field.
fn scalar(
    s: Scalar,
    v: wire::Value<'_>,
    message: &'static str,
    field: &'static str,
) -> Result<Value, DecodeError> {
    use wire::Value as W;
    Ok(match (s, v) {
        (Scalar::String, W::Bytes(b)) => Value::String(utf8(b, message, field)?),
        (Scalar::Bytes, W::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Scalar::Bool, W::Varint(x)) => Value::Bool(x != 0),
        // int32 is sign-extended to 64 bits on the wire; Go truncates, and so do we.
        (Scalar::Int32, W::Varint(x)) => Value::from(x as i32),
        (Scalar::Int64, W::Varint(x)) => Value::from(x as i64),
        (Scalar::Uint32, W::Varint(x)) => Value::from(x as u32),
        (Scalar::Uint64, W::Varint(x)) => Value::from(x),
        (Scalar::Double, W::Fixed64(x)) => float(f64::from_bits(x), message, field)?,
        (Scalar::Float, W::Fixed32(x)) => float(f64::from(f32::from_bits(x)), message, field)?,
        (s, other) => {
            let expected = match s {
                Scalar::String | Scalar::Bytes => "length-delimited",
                Scalar::Double => "fixed64",
                Scalar::Float => "fixed32",
                _ => "varint",
            };
            return Err(wrong_wire(message, field, expected, other));
        }
    })
}

fn float(f: f64, message: &'static str, field: &'static str) -> Result<Value, DecodeError> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| invalid(message, field, "not a finite number"))
}

/// Zero values are left out for fields without presence, as Go's `omitempty` does.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null => true,
        _ => false,
    }
}

fn zero_value(s: Scalar) -> Value {
    match s {
        Scalar::String | Scalar::Bytes => Value::String(String::new()),
        Scalar::Bool => Value::Bool(false),
        Scalar::Double | Scalar::Float => Value::from(0.0),
        _ => Value::from(0),
    }
}

fn zero_key(s: Scalar) -> String {
    match zero_value(s) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Appends to the array member `name`, creating it on first use.
fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    let entry = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    if let Value::Array(a) = entry {
        a.push(v);
    }
}

/// Seconds of 0001-01-01T00:00:00Z, Go's zero `time.Time`.
const GO_ZERO_TIME: i64 = -62_135_596_800;
/// Seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: what RFC 3339 can write.
const RFC3339_RANGE: std::ops::RangeInclusive<i64> = -62_167_219_200..=253_402_300_799;

/// `meta/v1.Time` (whole seconds: upstream drops the nanoseconds of a protobuf Time) or
/// `MicroTime` (truncated to microseconds) as RFC 3339 UTC; `None` for Go's zero time,
/// which marshals as `null`.
fn format_time(seconds: i64, nanos: i32, micro: bool) -> Result<Option<Value>, String> {
    let (seconds, micros) = if micro {
        let nanos = i128::from(nanos - nanos % 1000);
        let total = i128::from(seconds) * 1_000_000_000 + nanos;
        let seconds = i64::try_from(total.div_euclid(1_000_000_000)).map_err(|e| e.to_string())?;
        // In 0..1_000_000: fits.
        (seconds, Some(total.rem_euclid(1_000_000_000) as u32 / 1000))
    } else {
        (seconds, None)
    };
    if seconds == GO_ZERO_TIME && micros.unwrap_or(0) == 0 {
        return Ok(None);
    }
    if !RFC3339_RANGE.contains(&seconds) {
        return Err(format!("{seconds} seconds is outside the years 0-9999"));
    }
    let ts = jiff::Timestamp::new(seconds, 0).map_err(|e| e.to_string())?;
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S");
    Ok(Some(Value::String(match micros {
        Some(micros) => format!("{base}.{micros:06}Z"),
        None => format!("{base}Z"),
    })))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `150ms`, `0s`.
fn go_duration(d: i64) -> String {
    let sign = if d < 0 { "-" } else { "" };
    let u = d.unsigned_abs();
    if u == 0 {
        return "0s".into();
    }
    // `value` has `digits` fractional decimal digits; trailing zeros are dropped.
    let fraction = |value: u64, digits: u32| {
        let scale = 10u64.pow(digits);
        let (int, mut frac) = (value / scale, value % scale);
        if frac == 0 {
            return int.to_string();
        }
        let mut width = digits as usize;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        format!("{int}.{frac:0width$}")
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", fraction(u, 3));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", fraction(u, 6));
    }
    let seconds = fraction(u % 60_000_000_000, 9);
    let minutes = u / 60_000_000_000;
    if minutes == 0 {
        return format!("{sign}{seconds}s");
    }
    let (hours, minutes) = (minutes / 60, minutes % 60);
    if hours == 0 {
        format!("{sign}{minutes}m{seconds}s")
    } else {
        format!("{sign}{hours}h{minutes}m{seconds}s")
    }
}

#[cfg(test)]
mod tests;
