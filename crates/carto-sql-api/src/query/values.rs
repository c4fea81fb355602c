//! How `/sql` describes columns (`fields`) and writes their text-format values as JSON (spec §4.1).
//!
//! Values arrive in PostgreSQL's text format (the simple query protocol), so conversion works on
//! text: numbers and JSON are copied through once checked, booleans, timestamps and arrays are
//! rewritten, everything else (geometry as hex EWKB, bytea as `\x..` hex, time, intervals...) is
//! passed on as a JSON string.

use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, Offset, TimeZone};
use serde_json::{json, Value};
use tokio_postgres::types::{Kind, Type};

/// How one column's text values become JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `t`/`f` → `true`/`false`.
    Bool,
    /// Integers, floats, numeric: JSON numbers; `NaN` and infinities as strings.
    Number,
    /// `json`/`jsonb`: inlined as they are.
    Json,
    /// `timestamp` (no zone): read as the server's local time.
    Timestamp,
    /// `timestamptz`: shown in the server's zone.
    TimestampTz,
    /// `date`: midnight, server's local time.
    Date,
    /// An array of the element kind, parsed from PostgreSQL's array literal.
    Array(Box<ValueKind>),
    /// Anything else: the text as a JSON string.
    Text,
}

impl ValueKind {
    /// The conversion for a column of type `ty`.
    pub fn of(ty: &Type) -> Self {
        if let Kind::Array(element) = ty.kind() {
            return ValueKind::Array(Box::new(ValueKind::of(element)));
        }
        match *ty {
            Type::BOOL => ValueKind::Bool,
            Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::OID
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::NUMERIC => ValueKind::Number,
            Type::JSON | Type::JSONB => ValueKind::Json,
            Type::TIMESTAMP => ValueKind::Timestamp,
            Type::TIMESTAMPTZ => ValueKind::TimestampTz,
            Type::DATE => ValueKind::Date,
            _ => ValueKind::Text,
        }
    }
}

/// CARTO's type name for a column (spec §4.1): first matching substring rule of the PostgreSQL
/// type name, `[]` appended for arrays.
pub fn carto_type(ty: &Type) -> String {
    let (base, array) = match ty.kind() {
        Kind::Array(element) => (element.name(), true),
        _ => (ty.name(), false),
    };
    let carto = if is_spatial_name(base) {
        base.to_string()
    } else if base.contains("bool") {
        "boolean".into()
    } else if base.contains("int") || base.contains("float") || base.contains("numeric") {
        "number".into()
    } else if base.contains("text") || base.contains("char") || base.contains("unknown") {
        "string".into()
    } else if base.contains("date") || base.contains("time") {
        "date".into()
    } else {
        base.to_string()
    };
    if array {
        format!("{carto}[]")
    } else {
        carto
    }
}

fn is_spatial_name(name: &str) -> bool {
    matches!(name, "geometry" | "geography" | "raster")
}

/// The `fields` entry of a column of type `ty` with type modifier `typmod`.
///
/// Spatial columns describe their declared shape (`geometry(Point,4326)` → `wkbtype` `Point`,
/// `dims` 2, `srid` 4326); an unconstrained one (typmod -1, e.g. an expression) gets only its type.
pub fn field(ty: &Type, typmod: i32) -> Value {
    if ty.name().is_empty() {
        return json!({ "type": format!("unknown({})", ty.oid()) });
    }
    if is_spatial_name(ty.name()) {
        let mut entry = json!({ "type": ty.name() });
        if let (Some(shape), true) = (SpatialTypmod::decode(typmod), ty.name() != "raster") {
            entry["wkbtype"] = json!(shape.wkbtype);
            entry["dims"] = json!(shape.dims);
            entry["srid"] = json!(shape.srid);
        }
        return entry;
    }
    json!({ "type": carto_type(ty), "pgtype": ty.name() })
}

/// What a PostGIS geometry/geography type modifier declares.
#[derive(Debug, PartialEq, Eq)]
pub struct SpatialTypmod {
    /// Geometry type name as PostGIS spells it, without the Z/M suffix (`Point`, `Geometry`...).
    pub wkbtype: &'static str,
    /// 2, 3 or 4: two plus one for each of Z and M.
    pub dims: u8,
    /// Declared SRID (0 when none).
    pub srid: i32,
}

/// PostGIS geometry type numbers, in order.
const WKB_TYPES: [&str; 16] = [
    "Geometry",
    "Point",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
    "CircularString",
    "CompoundCurve",
    "CurvePolygon",
    "MultiCurve",
    "MultiSurface",
    "PolyhedralSurface",
    "Triangle",
    "Tin",
];

impl SpatialTypmod {
    /// Decodes PostGIS's packed type modifier: bit 0 M, bit 1 Z, bits 2–7 the type number,
    /// bits 8–27 the SRID with bit 28 as its sign. A negative typmod means unconstrained.
    pub fn decode(typmod: i32) -> Option<Self> {
        if typmod < 0 {
            return None;
        }
        let srid = ((typmod & 0x0FFF_FF00) - (typmod & 0x1000_0000)) >> 8;
        let kind = ((typmod & 0xFC) >> 2) as usize;
        let z = ((typmod & 0x02) >> 1) as u8;
        let m = (typmod & 0x01) as u8;
        Some(SpatialTypmod {
            wkbtype: WKB_TYPES.get(kind).copied().unwrap_or("Unknown"),
            dims: 2 + z + m,
            srid,
        })
    }
}

/// Appends the JSON of one value (`None` = SQL NULL) to `out`.
pub fn write_value(kind: &ValueKind, text: Option<&str>, out: &mut Vec<u8>) {
    let Some(text) = text else {
        out.extend_from_slice(b"null");
        return;
    };
    match kind {
        ValueKind::Bool => out.extend_from_slice(if text == "t" { b"true" } else { b"false" }),
        ValueKind::Number => {
            if is_json_number(text) {
                out.extend_from_slice(text.as_bytes());
            } else {
                // NaN, Infinity, -Infinity, or a magnitude JSON readers cannot hold.
                write_string(text, out);
            }
        }
        ValueKind::Json => {
            // PostgreSQL only stores valid JSON; checking would cost a parse per value.
            out.extend_from_slice(text.as_bytes());
        }
        ValueKind::Timestamp | ValueKind::TimestampTz | ValueKind::Date => {
            match iso_datetime(kind, text) {
                Some(iso) => write_string(&iso, out),
                None => write_string(text, out),
            }
        }
        ValueKind::Array(element) => {
            let mark = out.len();
            if write_array(element, text, out).is_none() {
                // Not a literal we understand (e.g. a custom delimiter): keep PostgreSQL's text.
                out.truncate(mark);
                write_string(text, out);
            }
        }
        ValueKind::Text => write_string(text, out),
    }
}

/// Appends `text` as a JSON string.
pub fn write_string(text: &str, out: &mut Vec<u8>) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// True when `text` is a JSON number that JSON readers can represent as a finite double.
fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && bytes[int_start] == b'0') {
        return false;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == frac_start {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == bytes.len() && text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Writes a PostgreSQL array literal (`{1,2,NULL}`, `{{"a b",c}}`, `[0:1]={1,2}`) as nested JSON
/// arrays; `None` if the text is not such a literal.
fn write_array(element: &ValueKind, text: &str, out: &mut Vec<u8>) -> Option<()> {
    // Arrays with explicit bounds start with their dimensions; the elements follow `=`.
    let body = if text.starts_with('[') {
        text.split_once('=')?.1
    } else {
        text
    };
    let bytes = body.as_bytes();
    let end = parse_array(element, bytes, 0, out)?;
    (end == bytes.len()).then_some(())
}

/// Parses the array starting at `bytes[i]` (a `{`), writing it; returns the index after its `}`.
fn parse_array(
    element: &ValueKind,
    bytes: &[u8],
    mut i: usize,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let skip_blanks = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    out.push(b'[');
    i = skip_blanks(i + 1);
    if bytes.get(i) == Some(&b'}') {
        out.push(b']');
        return Some(i + 1);
    }
    loop {
        i = skip_blanks(i);
        match bytes.get(i)? {
            b'{' => i = parse_array(element, bytes, i, out)?,
            b'"' => {
                let mut value = Vec::new();
                i += 1;
                loop {
                    match *bytes.get(i)? {
                        b'\\' => {
                            value.push(*bytes.get(i + 1)?);
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        c => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                // A quoted element is never NULL, even when it reads "NULL".
                write_value(element, Some(std::str::from_utf8(&value).ok()?), out);
            }
            _ => {
                let start = i;
                while bytes.get(i).is_some_and(|c| *c != b',' && *c != b'}') {
                    i += 1;
                }
                let raw = std::str::from_utf8(&bytes[start..i]).ok()?.trim();
                let value = (!raw.eq_ignore_ascii_case("NULL")).then_some(raw);
                write_value(element, value, out);
            }
        }
        i = skip_blanks(i);
        match bytes.get(i)? {
            b',' => {
                out.push(b',');
                i += 1;
            }
            b'}' => {
                out.push(b']');
                return Some(i + 1);
            }
            _ => return None,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS±hhmm` (`Z` at offset 0) in the server's zone, as upstream renders dates.
/// `None` for what chrono cannot read (infinity, BC dates, a non-ISO `DateStyle`).
fn iso_datetime(kind: &ValueKind, text: &str) -> Option<String> {
    let local: DateTime<Local> = match kind {
        ValueKind::Date => {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            Local
                .from_local_datetime(&date.and_hms_opt(0, 0, 0)?)
                .earliest()?
        }
        ValueKind::Timestamp => {
            let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()?;
            Local.from_local_datetime(&naive).earliest()?
        }
        _ => {
            let (datetime, offset) = split_offset(text)?;
            let naive = NaiveDateTime::parse_from_str(datetime, "%Y-%m-%d %H:%M:%S%.f").ok()?;
            let zoned = offset.from_local_datetime(&naive).single()?;
            zoned.with_timezone(&Local)
        }
    };
    let seconds = local.offset().fix().local_minus_utc();
    let clock = local.format("%Y-%m-%dT%H:%M:%S");
    if seconds == 0 {
        Some(format!("{clock}Z"))
    } else {
        let sign = if seconds < 0 { '-' } else { '+' };
        let minutes = seconds.unsigned_abs() / 60;
        Some(format!(
            "{clock}{sign}{:02}{:02}",
            minutes / 60,
            minutes % 60
        ))
    }
}

/// Splits `2000-01-01 00:00:00.5+05:30` into the clock part and its offset.
fn split_offset(text: &str) -> Option<(&str, FixedOffset)> {
    let pos = text.rfind(['+', '-']).filter(|p| *p > 10)?;
    let (datetime, offset) = text.split_at(pos);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut seconds = 0;
    for (part, unit) in offset.get(1..)?.split(':').zip([3600, 60, 1]) {
        seconds += part.parse::<i32>().ok()? * unit;
    }
    Some((datetime, FixedOffset::east_opt(sign * seconds)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON value of one text value.
    fn to_json(kind: &ValueKind, text: Option<&str>) -> Value {
        let mut out = Vec::new();
        write_value(kind, text, &mut out);
        serde_json::from_slice(&out).unwrap_or(Value::Null)
    }

    #[test]
    fn carto_type_names() {
        assert_eq!(carto_type(&Type::INT4), "number");
        assert_eq!(carto_type(&Type::TEXT), "string");
        assert_eq!(carto_type(&Type::BOOL), "boolean");
        assert_eq!(carto_type(&Type::TIMESTAMPTZ), "date");
        assert_eq!(carto_type(&Type::INT4_ARRAY), "number[]");
        assert_eq!(carto_type(&Type::UUID), "uuid");
        assert_eq!(carto_type(&Type::INTERVAL), "number");
        assert_eq!(carto_type(&Type::POINT), "number");
    }

    #[test]
    fn numbers() {
        let n = |t| to_json(&ValueKind::Number, Some(t));
        assert_eq!(n("12"), json!(12));
        assert_eq!(n("-1.5e-07"), json!(-1.5e-07));
        assert_eq!(n("NaN"), json!("NaN"));
        assert_eq!(n("Infinity"), json!("Infinity"));
        assert_eq!(n("-Infinity"), json!("-Infinity"));
        assert_eq!(n("1e400"), json!("1e400"));
        assert_eq!(to_json(&ValueKind::Bool, Some("f")), json!(false));
        assert_eq!(to_json(&ValueKind::Text, None), Value::Null);
    }

    #[test]
    fn arrays() {
        let ints = ValueKind::Array(Box::new(ValueKind::Number));
        let texts = ValueKind::Array(Box::new(ValueKind::Text));
        assert_eq!(to_json(&ints, Some("{}")), json!([]));
        assert_eq!(to_json(&ints, Some("{1,2,NULL}")), json!([1, 2, null]));
        assert_eq!(
            to_json(&ints, Some("{{1,2},{3,4}}")),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(to_json(&ints, Some("[0:1]={5,6}")), json!([5, 6]));
        assert_eq!(
            to_json(&texts, Some(r#"{"a b","x\"y",NULL,"NULL",plain}"#)),
            json!(["a b", "x\"y", null, "NULL", "plain"])
        );
        assert_eq!(to_json(&texts, Some("{a,")), json!("{a,"));
        let bools = ValueKind::Array(Box::new(ValueKind::Bool));
        assert_eq!(to_json(&bools, Some("{t,f}")), json!([true, false]));
    }

    #[test]
    fn typmods() {
        // geometry(Point,4326), geometry(PointZ,4326), geometry(Geometry,3857).
        assert_eq!(
            SpatialTypmod::decode(4326 << 8 | 1 << 2),
            Some(SpatialTypmod {
                wkbtype: "Point",
                dims: 2,
                srid: 4326
            })
        );
        assert_eq!(
            SpatialTypmod::decode(4326 << 8 | 1 << 2 | 2).map(|t| t.dims),
            Some(3)
        );
        assert_eq!(SpatialTypmod::decode(-1), None);
    }

    #[test]
    fn offsets() {
        let (clock, offset) = split_offset("2000-01-01 10:00:00-05:30").unwrap();
        assert_eq!(clock, "2000-01-01 10:00:00");
        assert_eq!(offset.local_minus_utc(), -(5 * 3600 + 30 * 60));
        assert!(split_offset("2000-01-01").is_none());
        assert_eq!(iso_datetime(&ValueKind::TimestampTz, "infinity"), None);
    }
}
