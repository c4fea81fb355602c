//! A serde `Serializer` writing one row of COPY text straight into the output buffer.
//!
//! Faster than going through `serde_json::Value` (no allocation per value), and exact where
//! JSON is not: NaN and the infinities stay floats, bytes become `bytea`. A top-level map
//! (rare: a `HashMap` row) still goes through `Value`, which can look members up by name.

use std::fmt::{self, Display, Write as _};

use bytes::{BufMut, BytesMut};
use serde::ser::{self, Impossible, Serialize};

use super::escape_into;

/// Why a row or a value could not be written.
#[derive(Debug)]
pub(super) enum SerError {
    /// The value is a list or an object: written as its JSON text instead.
    Nested,
    /// The row is a map: encoded through `serde_json::Value` instead.
    MapRow,
    /// Anything else, in words.
    Message(String),
}

impl Display for SerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerError::Nested => f.write_str("a nested value"),
            SerError::MapRow => f.write_str("a map row"),
            SerError::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SerError {}

impl ser::Error for SerError {
    fn custom<T: Display>(msg: T) -> Self {
        SerError::Message(msg.to_string())
    }
}

type R = Result<(), SerError>;

/// Writes `value` as one field: its COPY text, or its escaped JSON text if nested.
pub(super) fn write_value<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> R {
    let start = out.len();
    match value.serialize(Field { out: &mut *out }) {
        Err(SerError::Nested) => {
            out.truncate(start);
            let json =
                serde_json::to_string(value).map_err(|e| SerError::Message(e.to_string()))?;
            escape(&json, out)
        }
        other => other,
    }
}

fn escape(text: &str, out: &mut BytesMut) -> R {
    escape_into(text, out).map_err(|_| SerError::Message("a string contains NUL (\\0)".into()))
}

/// One field's value.
struct Field<'a> {
    out: &'a mut BytesMut,
}

impl Field<'_> {
    fn display(self, v: impl Display) -> R {
        let _ = write!(Writer(self.out), "{v}");
        Ok(())
    }

    fn float(self, v: f64) -> R {
        if v.is_nan() {
            self.out.put_slice(b"NaN");
        } else if v.is_infinite() {
            self.out
                .put_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
        } else {
            // `{}` prints the shortest text that reads back as the same f64.
            return self.display(v);
        }
        Ok(())
    }
}

/// `fmt::Write` into a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

impl ser::Serializer for Field<'_> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Impossible<(), SerError>;
    type SerializeTuple = Impossible<(), SerError>;
    type SerializeTupleStruct = Impossible<(), SerError>;
    type SerializeTupleVariant = Impossible<(), SerError>;
    type SerializeMap = Impossible<(), SerError>;
    type SerializeStruct = Impossible<(), SerError>;
    type SerializeStructVariant = Impossible<(), SerError>;

    fn serialize_bool(self, v: bool) -> R {
        self.out.put_u8(if v { b't' } else { b'f' });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> R {
        self.display(v)
    }
    fn serialize_i16(self, v: i16) -> R {
        self.display(v)
    }
    fn serialize_i32(self, v: i32) -> R {
        self.display(v)
    }
    fn serialize_i64(self, v: i64) -> R {
        self.display(v)
    }
    fn serialize_i128(self, v: i128) -> R {
        self.display(v)
    }
    fn serialize_u8(self, v: u8) -> R {
        self.display(v)
    }
    fn serialize_u16(self, v: u16) -> R {
        self.display(v)
    }
    fn serialize_u32(self, v: u32) -> R {
        self.display(v)
    }
    fn serialize_u64(self, v: u64) -> R {
        self.display(v)
    }
    fn serialize_u128(self, v: u128) -> R {
        self.display(v)
    }
    fn serialize_f32(self, v: f32) -> R {
        if v.is_finite() {
            // f32's own shortest text, not the f64 widening's longer one.
            self.display(v)
        } else {
            self.float(f64::from(v))
        }
    }
    fn serialize_f64(self, v: f64) -> R {
        self.float(v)
    }
    fn serialize_char(self, v: char) -> R {
        escape(v.encode_utf8(&mut [0; 4]), self.out)
    }
    fn serialize_str(self, v: &str) -> R {
        escape(v, self.out)
    }
    fn serialize_bytes(self, v: &[u8]) -> R {
        // bytea's hex input `\x...`, its backslash escaped for COPY text.
        self.out.put_slice(b"\\\\x");
        for byte in v {
            let _ = write!(Writer(self.out), "{byte:02x}");
        }
        Ok(())
    }
    fn serialize_none(self) -> R {
        self.out.put_slice(b"\\N");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> R {
        self.serialize_none()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> R {
        escape(variant, self.out)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> R {
        Err(SerError::Nested)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SerError> {
        Err(SerError::Nested)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SerError> {
        Err(SerError::Nested)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SerError> {
        Err(SerError::Nested)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        Err(SerError::Nested)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        Err(SerError::Nested)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, SerError> {
        Err(SerError::Nested)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        Err(SerError::Nested)
    }
}

/// A whole row: a struct (members picked by column name), a tuple or sequence (columns in
/// order), or one value (one column).
pub(super) struct Row<'a> {
    pub columns: &'a [String],
    pub out: &'a mut BytesMut,
    /// Per column: where its text is in `scratch` (struct rows).
    pub spans: &'a mut Vec<Option<(usize, usize)>>,
    pub scratch: &'a mut BytesMut,
}

/// A struct row being written: members go to `scratch`, then out in column order.
pub(super) struct StructRow<'a> {
    row: Row<'a>,
}

/// A tuple or sequence row being written: fields go out as they come.
pub(super) struct Positional<'a> {
    row: Row<'a>,
    written: usize,
}

impl Row<'_> {
    fn single<F: FnOnce(Field<'_>) -> R>(self, write: F) -> R {
        if self.columns.len() != 1 {
            return Err(SerError::Message(format!(
                "a row of one value for {} columns",
                self.columns.len()
            )));
        }
        write(Field { out: self.out })?;
        self.out.put_u8(b'\n');
        Ok(())
    }
}

macro_rules! single {
    ($($name:ident($ty:ty)),*) => {
        $(fn $name(self, v: $ty) -> R {
            self.single(|f| ser::Serializer::$name(f, v))
        })*
    };
}

impl<'a> ser::Serializer for Row<'a> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Positional<'a>;
    type SerializeTuple = Positional<'a>;
    type SerializeTupleStruct = Positional<'a>;
    type SerializeTupleVariant = Impossible<(), SerError>;
    type SerializeMap = Impossible<(), SerError>;
    type SerializeStruct = StructRow<'a>;
    type SerializeStructVariant = Impossible<(), SerError>;

    single!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8])
    );

    fn serialize_none(self) -> R {
        self.single(|f| ser::Serializer::serialize_none(f))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        self.serialize_none()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> R {
        self.single(|f| escape(variant, f.out))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> R {
        self.single(|f| write_value(value, f.out))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Positional<'a>, SerError> {
        Ok(Positional {
            row: self,
            written: 0,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Positional<'a>, SerError> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Positional<'a>, SerError> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        Err(SerError::MapRow)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        Err(SerError::MapRow)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<StructRow<'a>, SerError> {
        self.spans.clear();
        self.spans.resize(self.columns.len(), None);
        self.scratch.clear();
        Ok(StructRow { row: self })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        Err(SerError::MapRow)
    }
}

impl Positional<'_> {
    fn field<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        if self.written == self.row.columns.len() {
            return Err(SerError::Message(format!(
                "a row has more values than its {} columns",
                self.row.columns.len()
            )));
        }
        if self.written > 0 {
            self.row.out.put_u8(b'\t');
        }
        self.written += 1;
        write_value(value, self.row.out)
    }

    fn end(self) -> R {
        if self.written != self.row.columns.len() {
            return Err(SerError::Message(format!(
                "a row has {} values for {} columns",
                self.written,
                self.row.columns.len()
            )));
        }
        self.row.out.put_u8(b'\n');
        Ok(())
    }
}

impl ser::SerializeSeq for Positional<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.field(value)
    }
    fn end(self) -> R {
        Positional::end(self)
    }
}

impl ser::SerializeTuple for Positional<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.field(value)
    }
    fn end(self) -> R {
        Positional::end(self)
    }
}

impl ser::SerializeTupleStruct for Positional<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.field(value)
    }
    fn end(self) -> R {
        Positional::end(self)
    }
}

impl ser::SerializeStruct for StructRow<'_> {
    type Ok = ();
    type Error = SerError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> R {
        // Members that are not columns are left out, as with a map.
        let Some(index) = self.row.columns.iter().position(|c| c == key) else {
            return Ok(());
        };
        let start = self.row.scratch.len();
        write_value(value, self.row.scratch)?;
        self.row.spans[index] = Some((start, self.row.scratch.len()));
        Ok(())
    }

    fn end(self) -> R {
        let row = self.row;
        for (i, span) in row.spans.iter().enumerate() {
            if i > 0 {
                row.out.put_u8(b'\t');
            }
            match span {
                Some((start, end)) => row.out.put_slice(&row.scratch[*start..*end]),
                None => row.out.put_slice(b"\\N"),
            }
        }
        row.out.put_u8(b'\n');
        Ok(())
    }
}
