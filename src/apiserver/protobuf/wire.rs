//! The protobuf wire format, read-only: varints, tags and field values over a byte
//! slice. Every length is checked against the input; nothing here allocates or panics.

use super::DecodeError;

/// Nesting of groups being skipped, bounded like message nesting.
const MAX_GROUP_DEPTH: usize = 32;

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: strings, bytes, messages, packed repeated scalars.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
    /// Wire types 3/4: a (deprecated) group, skipped whole.
    Group,
}

impl Value<'_> {
    /// The wire type's name, for messages.
    pub fn wire_name(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::Fixed64(_) => "fixed64",
            Value::Bytes(_) => "length-delimited",
            Value::Fixed32(_) => "fixed32",
            Value::Group => "group",
        }
    }
}

/// A cursor over an encoded message.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Whether the whole input was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Reads a base-128 varint (at most 10 bytes).
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a little-endian fixed64 (a packed `double`).
    pub fn fixed64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.fixed::<8>()?))
    }

    /// Reads a little-endian fixed32 (a packed `float`).
    pub fn fixed32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.fixed::<4>()?))
    }

    /// Reads a length-delimited payload.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    /// Reads a tag: field number and wire type.
    fn tag(&mut self) -> Result<(u32, u8), DecodeError> {
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 || number >= 1 << 29 {
            return Err(DecodeError::BadTag(tag));
        }
        // Lossless: checked against 2^29 above.
        Ok((number as u32, (tag & 7) as u8))
    }

    /// Reads the next field, or `None` at the end of the message.
    pub fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.is_empty() {
            return Ok(None);
        }
        let (number, wire) = self.tag()?;
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(self.fixed64()?),
            2 => Value::Bytes(self.bytes()?),
            3 => {
                self.skip_group(number, 0)?;
                Value::Group
            }
            5 => Value::Fixed32(self.fixed32()?),
            // 4 (end group without a start) and the undefined 6 and 7.
            _ => return Err(DecodeError::BadWireType { number, wire }),
        };
        Ok(Some((number, value)))
    }

    /// Skips to the end-group tag matching a start-group tag for `number`.
    fn skip_group(&mut self, number: u32, depth: usize) -> Result<(), DecodeError> {
        if depth >= MAX_GROUP_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        loop {
            if self.is_empty() {
                return Err(DecodeError::Truncated);
            }
            let (n, wire) = self.tag()?;
            match wire {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    self.bytes()?;
                }
                3 => self.skip_group(n, depth + 1)?,
                4 if n == number => return Ok(()),
                5 => {
                    self.take(4)?;
                }
                _ => return Err(DecodeError::BadWireType { number: n, wire }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let cases: &[(&[u8], Result<u64, DecodeError>)] = &[
            (&[0], Ok(0)),
            (&[1], Ok(1)),
            (&[0xac, 0x02], Ok(300)),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                Ok(u64::MAX),
            ),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                Err(DecodeError::VarintOverflow),
            ),
            (&[0x80; 11], Err(DecodeError::VarintOverflow)),
            (&[0x80], Err(DecodeError::Truncated)),
            (&[], Err(DecodeError::Truncated)),
        ];
        for (input, want) in cases {
            assert_eq!(&Reader::new(input).varint(), want, "{input:?}");
        }
    }

    #[test]
    fn fields() {
        // 1: varint 150, 2: "hi", 3: group { 1: 5 }, 4: fixed32, 5: fixed64
        let buf = [
            0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1b, 0x08, 0x05, 0x1c, 0x25, 1, 0, 0, 0,
            0x29, 2, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut r = Reader::new(&buf);
        assert_eq!(r.field().unwrap(), Some((1, Value::Varint(150))));
        assert_eq!(r.field().unwrap(), Some((2, Value::Bytes(b"hi"))));
        assert_eq!(r.field().unwrap(), Some((3, Value::Group)));
        assert_eq!(r.field().unwrap(), Some((4, Value::Fixed32(1))));
        assert_eq!(r.field().unwrap(), Some((5, Value::Fixed64(2))));
        assert_eq!(r.field().unwrap(), None);
    }

    #[test]
    fn malformed_fields() {
        let cases: &[&[u8]] = &[
            &[0x12, 0x05, b'a'], // length past the end
            &[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // huge length
            &[0x00, 0x01],       // field number 0
            &[0x0e, 0x01],       // wire type 6
            &[0x0c],             // end group without start
            &[0x0b, 0x08, 0x01], // group never ends
            &[0x0b, 0x14],       // group ends with the wrong number
            &[0x0d, 0x01, 0x02], // fixed32 truncated
            &[0x09, 0x01],       // fixed64 truncated
        ];
        for input in cases {
            assert!(Reader::new(input).field().is_err(), "{input:?}");
        }
        // Deeply nested groups stop at the bound instead of recursing on.
        let deep: Vec<u8> = std::iter::repeat_n(0x0b, 10_000).collect();
        assert_eq!(Reader::new(&deep).field(), Err(DecodeError::TooDeep));
    }
}
