//! Column types of a CSV file, inferred from a sample of its rows, for `carto import`.
//!
//! Each column gets the narrowest type every non-empty sample value fits: boolean, integer,
//! bigint, numeric, date, timestamp, timestamptz, geometry (WKT, EWKT or hex EWKB), else
//! text. Empty values are NULLs and fit any type. Hand-written because the rules are small
//! and must match what PostgreSQL's input functions accept, which no crate promises.

/// An inferred PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `boolean`: true/false, t/f, yes/no.
    Boolean,
    /// `integer`
    Integer,
    /// `bigint`
    BigInt,
    /// `numeric`
    Numeric,
    /// `date`: YYYY-MM-DD.
    Date,
    /// `timestamp`: a date and a time.
    Timestamp,
    /// `timestamptz`: a date and a time with an offset or Z.
    TimestampTz,
    /// `geometry`: WKT, EWKT or hex EWKB.
    Geometry,
    /// `text`
    Text,
}

impl ColumnType {
    /// The SQL type name.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Integer => "integer",
            ColumnType::BigInt => "bigint",
            ColumnType::Numeric => "numeric",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
            ColumnType::TimestampTz => "timestamptz",
            ColumnType::Geometry => "geometry",
            ColumnType::Text => "text",
        }
    }

    fn is_number(self) -> bool {
        matches!(
            self,
            ColumnType::Integer | ColumnType::BigInt | ColumnType::Numeric
        )
    }
}

/// The type of one value, or `None` for an empty one (a NULL).
fn classify(value: &str) -> Option<ColumnType> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    Some(if is_boolean(v) {
        ColumnType::Boolean
    } else if has_leading_zero(v) {
        // Codes (007, 08001): a number would lose the zeros.
        ColumnType::Text
    } else if let Ok(n) = v.parse::<i64>() {
        if i32::try_from(n).is_ok() {
            ColumnType::Integer
        } else {
            ColumnType::BigInt
        }
    } else if is_decimal(v) {
        ColumnType::Numeric
    } else if let Some(kind) = datetime_kind(v) {
        kind
    } else if is_geometry(v) {
        ColumnType::Geometry
    } else {
        ColumnType::Text
    })
}

/// The narrowest type both `a` and `b` fit.
fn widen(a: ColumnType, b: ColumnType) -> ColumnType {
    use ColumnType::*;
    if a == b {
        return a;
    }
    match (a, b) {
        (x, y) if x.is_number() && y.is_number() => {
            if x == Numeric || y == Numeric {
                Numeric
            } else {
                BigInt
            }
        }
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        (Timestamp, TimestampTz) | (TimestampTz, Timestamp) => TimestampTz,
        (Date, TimestampTz) | (TimestampTz, Date) => TimestampTz,
        _ => Text,
    }
}

/// Infers a type per column from sample rows (`rows[i][c]`).
pub fn infer(columns: usize, rows: &[Vec<String>]) -> Vec<ColumnType> {
    (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c).and_then(|v| classify(v)))
                .reduce(widen)
                .unwrap_or(ColumnType::Text)
        })
        .collect()
}

/// `007`, `-01.5`: digits after a leading 0, which only text keeps.
fn has_leading_zero(v: &str) -> bool {
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v).as_bytes();
    digits.len() > 1
        && digits[0] == b'0'
        && digits[1].is_ascii_digit()
        && digits.iter().all(|b| b.is_ascii_digit() || *b == b'.')
}

fn is_boolean(v: &str) -> bool {
    ["true", "false", "t", "f", "yes", "no"]
        .iter()
        .any(|b| v.eq_ignore_ascii_case(b))
}

/// `-12.5`, `3.`, `.5`, `1e-3`: what PostgreSQL's numeric input takes (no NaN/Infinity, which
/// in a CSV are more likely text).
fn is_decimal(v: &str) -> bool {
    let v = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (mantissa, exponent) = match v.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (v, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = exponent.map_or(true, |e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// `YYYY-MM-DD`, optionally followed by ` ` or `T`, `HH:MM[:SS[.fff]]`, and an offset.
fn datetime_kind(v: &str) -> Option<ColumnType> {
    let b = v.as_bytes();
    let date_ok = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&v.get(5..7)?.parse::<u32>().ok()?)
        && (1..=31).contains(&v.get(8..10)?.parse::<u32>().ok()?);
    if !date_ok {
        return None;
    }
    if b.len() == 10 {
        return Some(ColumnType::Date);
    }
    if b[10] != b' ' && b[10] != b'T' {
        return None;
    }
    let rest = v.get(11..)?;
    let time_len = rest
        .bytes()
        .take_while(|c| c.is_ascii_digit() || *c == b':' || *c == b'.')
        .count();
    let (time, zone) = rest.split_at(time_len);
    let parts: Vec<&str> = time.split(':').collect();
    let time_ok = (2..=3).contains(&parts.len())
        && parts[0].len() == 2
        && parts[1].len() == 2
        && parts.iter().all(|p| !p.is_empty());
    if !time_ok {
        return None;
    }
    match zone {
        "" => Some(ColumnType::Timestamp),
        "Z" | "z" => Some(ColumnType::TimestampTz),
        _ if (zone.starts_with('+') || zone.starts_with('-'))
            && zone
                .bytes()
                .skip(1)
                .all(|c| c.is_ascii_digit() || c == b':')
            && zone.len() >= 3 =>
        {
            Some(ColumnType::TimestampTz)
        }
        _ => None,
    }
}

const GEOMETRY_KEYWORDS: [&str; 7] = [
    "POINT",
    "LINESTRING",
    "POLYGON",
    "MULTIPOINT",
    "MULTILINESTRING",
    "MULTIPOLYGON",
    "GEOMETRYCOLLECTION",
];

/// `SRID=` at the start, compared by bytes: the value may have any characters after it.
fn is_srid_prefix(text: &str) -> bool {
    text.as_bytes()
        .get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"SRID="))
}

/// WKT or EWKT (`SRID=4326;POINT(1 2)`), or hex EWKB as PostGIS prints it.
fn is_geometry(v: &str) -> bool {
    let wkt = match v.split_once(';') {
        // By bytes: byte 5 of a value such as `abcdé;x` falls inside a character.
        Some((srid, rest)) if srid.len() > 5 && is_srid_prefix(srid) => {
            if !srid.bytes().skip(5).all(|c| c.is_ascii_digit()) {
                return false;
            }
            rest
        }
        _ => v,
    }
    .trim_start();
    let upper = wkt.to_ascii_uppercase();
    let keyword = GEOMETRY_KEYWORDS
        .iter()
        .filter(|k| upper.starts_with(*k))
        .max_by_key(|k| k.len());
    if let Some(keyword) = keyword {
        let rest = upper.get(keyword.len()..).unwrap_or_default().trim_start();
        let rest = rest
            .strip_prefix("ZM")
            .or_else(|| rest.strip_prefix('Z'))
            .or_else(|| rest.strip_prefix('M'))
            .unwrap_or(rest)
            .trim_start();
        return (rest.starts_with('(') && rest.ends_with(')')) || rest == "EMPTY";
    }
    // Hex EWKB: a byte-order byte (00 or 01) then at least a type; even length, all hex.
    v.len() >= 18
        && v.len() % 2 == 0
        && (v.starts_with("01") || v.starts_with("00"))
        && v.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A CSV header turned into SQL column names: lower case, letters, digits and `_`, not
/// starting with a digit, unique.
pub fn column_names(header: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for (i, raw) in header.iter().enumerate() {
        let mut name: String = raw
            .trim()
            .to_lowercase()
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        name = name.trim_matches('_').to_string();
        if name.is_empty() {
            name = format!("column_{}", i + 1);
        }
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert(0, '_');
        }
        let base = name.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

/// Names people give a longitude column.
pub const LONGITUDE_NAMES: [&str; 5] = ["lon", "lng", "long", "longitude", "x"];
/// Names people give a latitude column.
pub const LATITUDE_NAMES: [&str; 3] = ["lat", "latitude", "y"];

/// The (longitude, latitude) columns, by the names people give them, when both are numbers.
pub fn lon_lat(names: &[String], types: &[ColumnType]) -> Option<(usize, usize)> {
    let find = |candidates: &[&str]| {
        names
            .iter()
            .position(|n| candidates.contains(&n.as_str()))
            .filter(|&i| types[i].is_number())
    };
    let lon = find(&LONGITUDE_NAMES)?;
    let lat = find(&LATITUDE_NAMES)?;
    Some((lon, lat))
}

#[cfg(test)]
mod tests {
    use super::ColumnType::*;
    use super::*;

    fn column(values: &[&str]) -> ColumnType {
        let rows: Vec<Vec<String>> = values.iter().map(|v| vec![v.to_string()]).collect();
        infer(1, &rows)[0]
    }

    #[test]
    fn multi_byte_text_before_a_semicolon_is_not_a_geometry() {
        // Byte 5 falls inside `é`: this used to panic instead of answering false.
        assert!(!is_geometry("abcdé;POINT(1 2)"));
        assert!(is_geometry("SRID=4326;POINT(1 2)"));
    }

    #[test]
    fn scalar_types() {
        assert_eq!(column(&["1", "-2", ""]), Integer);
        assert_eq!(column(&["1", "3000000000"]), BigInt);
        assert_eq!(column(&["1", "2.5", "1e3", ".5"]), Numeric);
        assert_eq!(column(&["true", "F", "yes"]), Boolean);
        assert_eq!(column(&["1", "true"]), Text);
        assert_eq!(column(&["abc", "1"]), Text);
        assert_eq!(column(&["", ""]), Text);
        assert_eq!(column(&["1.2.3"]), Text);
        assert_eq!(column(&["NaN"]), Text);
        assert_eq!(column(&["007", "12"]), Text);
        assert_eq!(column(&["-01.5"]), Text);
        assert_eq!(column(&["0", "0.5", "-0.25"]), Numeric);
    }

    #[test]
    fn any_text_before_a_semicolon() {
        assert_eq!(column(&["abcdé;x", "é;", "SRIDé;POINT(1 2)"]), Text);
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(column(&["2024-01-31", "1999-12-01"]), Date);
        assert_eq!(
            column(&["2024-01-31 10:00", "2024-01-31T10:00:05.25"]),
            Timestamp
        );
        assert_eq!(
            column(&["2024-01-31 10:00:00+01", "2024-01-31T10:00:00Z"]),
            TimestampTz
        );
        assert_eq!(column(&["2024-01-31", "2024-01-31 10:00:00"]), Timestamp);
        assert_eq!(column(&["2024-13-31"]), Text);
        assert_eq!(column(&["2024-01-31 10"]), Text);
    }

    #[test]
    fn geometries() {
        assert_eq!(
            column(&["POINT(1 2)", "SRID=4326;MULTIPOLYGON(((0 0,1 0,1 1,0 0)))"]),
            Geometry
        );
        assert_eq!(column(&["point z (1 2 3)", "LINESTRING EMPTY"]), Geometry);
        assert_eq!(
            column(&["0101000020E6100000000000000000F03F0000000000000040"]),
            Geometry
        );
        assert_eq!(column(&["POINTLESS talk"]), Text);
        assert_eq!(column(&["SRID=x;POINT(1 2)"]), Text);
    }

    #[test]
    fn names() {
        let header: Vec<String> = ["Name", "2nd value", "name", "", "Lat (deg)"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            column_names(&header),
            ["name", "_2nd_value", "name_2", "column_4", "lat__deg"]
        );
    }

    #[test]
    fn lon_lat_pairs() {
        let names: Vec<String> = ["id", "latitude", "lng"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(lon_lat(&names, &[Integer, Numeric, Numeric]), Some((2, 1)));
        assert_eq!(lon_lat(&names, &[Integer, Text, Numeric]), None);
    }
}
