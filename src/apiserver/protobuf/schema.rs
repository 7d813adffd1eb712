//! The protobuf field table (`schema.txt`): which field numbers each message has, their
//! JSON names and value types. Parsed once, on first use; pure data, no IO.

use std::collections::HashMap;
use std::sync::LazyLock;

/// The table text, compiled into the binary.
const TABLE: &str = include_str!("schema.txt");

/// A malformed line in the table (a bug in `schema.txt`, caught by the unit tests).
#[derive(Debug, Clone, thiserror::Error)]
#[error("protobuf schema table, line {line}: {message}")]
pub struct SchemaError {
    line: usize,
    message: String,
}

/// A scalar protobuf type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
}

impl Scalar {
    fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            "bool" => Scalar::Bool,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            _ => return None,
        })
    }
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Scalar(Scalar),
    /// Index into [`Schema::messages`].
    Message(usize),
}

/// How often a field occurs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    Single,
    Repeated,
    /// `map<key, value>`, on the wire a repeated `{1: key, 2: value}` entry.
    Map(Scalar),
}

/// How a message turns into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// A JSON object with one member per field.
    Object,
    /// `meta/v1.Time`: RFC 3339, whole seconds.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    /// `meta/v1.Duration`: Go duration string.
    Duration,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`: embedded JSON (or a nested protobuf object).
    RawExtension,
    /// Raw JSON bytes (`FieldsV1`, apiextensions `JSON`).
    RawJson,
    /// A named slice: its `items` field is the JSON array.
    List,
    /// apiextensions `JSONSchemaPropsOrArray`.
    SchemaOrArray,
    /// apiextensions `JSONSchemaPropsOrBool`.
    SchemaOrBool,
    /// apiextensions `JSONSchemaPropsOrStringArray`.
    SchemaOrStrings,
}

impl Codec {
    fn parse(s: &str) -> Option<Codec> {
        Some(match s {
            "time" => Codec::Time,
            "microtime" => Codec::MicroTime,
            "duration" => Codec::Duration,
            "quantity" => Codec::Quantity,
            "intorstring" => Codec::IntOrString,
            "rawextension" => Codec::RawExtension,
            "rawjson" => Codec::RawJson,
            "list" => Codec::List,
            "schemaorarray" => Codec::SchemaOrArray,
            "schemaorbool" => Codec::SchemaOrBool,
            "schemaorstrings" => Codec::SchemaOrStrings,
            _ => return None,
        })
    }
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub number: u32,
    /// JSON member name (for inline fields, a name used in messages only).
    pub json: &'static str,
    pub kind: Kind,
    pub card: Card,
    /// Merge the message's members into the enclosing object (Go embedded struct).
    pub inline: bool,
    /// Emit a scalar even when it is zero (pointer or always-serialized field).
    pub zero: bool,
}

/// One message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub name: &'static str,
    pub codec: Codec,
    /// Sorted by field number.
    pub fields: Vec<Field>,
}

impl Message {
    /// The field with this number, if the table knows it.
    pub fn field(&self, number: u32) -> Option<&Field> {
        self.fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .map(|i| &self.fields[i])
    }
}

/// The parsed table.
#[derive(Debug)]
pub struct Schema {
    pub messages: Vec<Message>,
    by_name: HashMap<&'static str, usize>,
}

static SCHEMA: LazyLock<Result<Schema, SchemaError>> = LazyLock::new(|| Schema::parse(TABLE));

/// The built-in table.
pub fn schema() -> Result<&'static Schema, &'static SchemaError> {
    SCHEMA.as_ref()
}

impl Schema {
    /// Index of a message by table name (`core.v1.Pod`).
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// A message by index.
    pub fn message(&self, index: usize) -> &Message {
        &self.messages[index]
    }

    /// Parses the table text.
    pub fn parse(text: &'static str) -> Result<Schema, SchemaError> {
        let err = |line: usize, message: String| SchemaError {
            line: line + 1,
            message,
        };
        // Pass 1: message names, so fields may refer to messages declared later.
        let mut by_name = HashMap::new();
        let mut messages = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let Some(rest) = line.strip_prefix("message ") else {
                continue;
            };
            let (name, codec) = match rest.split_once(" = ") {
                Some((name, codec)) => (
                    name.trim(),
                    Codec::parse(codec.trim())
                        .ok_or_else(|| err(n, format!("unknown codec {codec:?}")))?,
                ),
                None => (rest.trim(), Codec::Object),
            };
            if by_name.insert(name, messages.len()).is_some() {
                return Err(err(n, format!("message {name} declared twice")));
            }
            messages.push(Message {
                name,
                codec,
                fields: Vec::new(),
            });
        }
        // Pass 2: fields.
        let mut current: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            if let Some(rest) = line.strip_prefix("message ") {
                let name = rest.split(" = ").next().unwrap_or(rest).trim();
                current = by_name.get(name).copied();
                continue;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some(msg) = current else {
                return Err(err(n, "field outside a message".into()));
            };
            let mut words = trimmed.split_whitespace();
            let (Some(number), Some(json), Some(ty)) = (words.next(), words.next(), words.next())
            else {
                return Err(err(n, "expected `<number> <name> <type>`".into()));
            };
            let number: u32 = number
                .parse()
                .ok()
                .filter(|n| (1..1 << 29).contains(n))
                .ok_or_else(|| err(n, format!("bad field number {number:?}")))?;
            let (card, elem) = if let Some(elem) = ty.strip_prefix("[]") {
                (Card::Repeated, elem)
            } else if let Some(inner) = ty.strip_prefix("map<").and_then(|t| t.strip_suffix('>')) {
                let (key, value) = inner
                    .split_once(',')
                    .ok_or_else(|| err(n, format!("bad map type {ty:?}")))?;
                let key = Scalar::parse(key)
                    .filter(|k| !matches!(k, Scalar::Bytes | Scalar::Double | Scalar::Float))
                    .ok_or_else(|| err(n, format!("bad map key in {ty:?}")))?;
                (Card::Map(key), value)
            } else {
                (Card::Single, ty)
            };
            let kind = match Scalar::parse(elem) {
                Some(s) => Kind::Scalar(s),
                None => Kind::Message(
                    *by_name
                        .get(elem)
                        .ok_or_else(|| err(n, format!("unknown type {elem:?}")))?,
                ),
            };
            let (mut inline, mut zero) = (false, false);
            for flag in words {
                match flag {
                    "inline" => inline = true,
                    "zero" => zero = true,
                    other => return Err(err(n, format!("unknown flag {other:?}"))),
                }
            }
            if inline && (card != Card::Single || !matches!(kind, Kind::Message(_))) {
                return Err(err(n, "only a single message field can be inline".into()));
            }
            let fields: &mut Vec<Field> = &mut messages[msg].fields;
            if fields.iter().any(|f| f.number == number) {
                return Err(err(n, format!("field number {number} used twice")));
            }
            fields.push(Field {
                number,
                json,
                kind,
                card,
                inline,
                zero,
            });
        }
        for m in &mut messages {
            m.fields.sort_by_key(|f| f.number);
        }
        Ok(Schema { messages, by_name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_is_consistent() {
        let s = schema().expect("schema.txt parses");
        assert!(s.messages.len() > 300, "{} messages", s.messages.len());
        for m in &s.messages {
            if let Codec::List = m.codec {
                assert_eq!(m.fields.len(), 1, "{}", m.name);
                assert_eq!(m.fields[0].card, Card::Repeated, "{}", m.name);
            }
            let mut names: Vec<&str> = m
                .fields
                .iter()
                .filter(|f| !f.inline)
                .map(|f| f.json)
                .collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                m.fields.iter().filter(|f| !f.inline).count(),
                "duplicate JSON names in {}",
                m.name
            );
        }
    }

    #[test]
    fn well_known_fields() {
        let s = schema().unwrap();
        let field = |msg: &str, n: u32| s.message(s.index(msg).unwrap()).field(n).unwrap().clone();
        // (message, field number, JSON name, card, zero)
        let cases: &[(&str, u32, &str, Card, bool)] = &[
            ("meta.v1.ObjectMeta", 2, "generateName", Card::Single, false),
            (
                "meta.v1.ObjectMeta",
                11,
                "labels",
                Card::Map(Scalar::String),
                false,
            ),
            ("core.v1.ConfigMap", 4, "immutable", Card::Single, true),
            (
                "core.v1.Secret",
                2,
                "data",
                Card::Map(Scalar::String),
                false,
            ),
            ("core.v1.PodSpec", 2, "containers", Card::Repeated, false),
            (
                "core.v1.PodSpec",
                21,
                "automountServiceAccountToken",
                Card::Single,
                true,
            ),
            ("core.v1.Container", 1, "name", Card::Single, true),
            ("apps.v1.DeploymentSpec", 1, "replicas", Card::Single, true),
            (
                "apps.v1.DeploymentSpec",
                5,
                "minReadySeconds",
                Card::Single,
                false,
            ),
            (
                "authorization.v1.ResourceAttributes",
                5,
                "resource",
                Card::Single,
                false,
            ),
            (
                "apiextensions.v1.JSONSchemaProps",
                38,
                "x-kubernetes-preserve-unknown-fields",
                Card::Single,
                true,
            ),
        ];
        for (msg, n, json, card, zero) in cases {
            let f = field(msg, *n);
            assert_eq!((f.json, f.card, f.zero), (*json, *card, *zero), "{msg}.{n}");
        }
        assert!(field("core.v1.Probe", 1).inline);
        assert_eq!(s.message(s.index("Time").unwrap()).codec, Codec::Time);
    }

    #[test]
    fn malformed_tables_are_errors() {
        for bad in [
            "  1 a string\n",
            "message A\n  x a string\n",
            "message A\n  1 a Nope\n",
            "message A\n  1 a string\n  1 b string\n",
            "message A = weird\n",
            "message A\n  1 a string inline\n",
            "message A\n  1 a map<bytes,string>\n",
            "message A\nmessage A\n",
            "message A\n  0 a string\n",
        ] {
            assert!(Schema::parse(bad).is_err(), "{bad:?}");
        }
    }
}
