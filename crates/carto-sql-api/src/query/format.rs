//! The output formats of `/sql`: JSON, GeoJSON and CSV encoders that write a document piece by
//! piece as rows arrive (spec §4.1, §4.2).
//!
//! An encoder never sees the whole result: it gets the columns of each result set it must show,
//! then rows one at a time, then a summary to close the document with. The rows go straight into
//! the output buffer that the executor sends on in chunks.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tokio_postgres::error::DbError;
use tokio_postgres::SimpleQueryRow;

use super::values::{write_string, write_value, ValueKind};

/// A result column as the formats need it.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// The name as a JSON string followed by `:`, written once per row.
    key: Vec<u8>,
    /// Value conversion.
    pub kind: ValueKind,
    /// The `fields` entry.
    pub field: Value,
    /// Dropped by `skipfields`.
    pub skip: bool,
}

impl Column {
    /// A column named `name`.
    pub fn new(name: &str, kind: ValueKind, field: Value, skip: bool) -> Self {
        let mut key = Vec::with_capacity(name.len() + 3);
        write_string(name, &mut key);
        key.push(b':');
        Column {
            name: name.to_string(),
            key,
            kind,
            field,
            skip,
        }
    }
}

/// What closes a document.
pub struct Summary<'a> {
    /// Seconds since the request started running.
    pub time: f64,
    /// Count of the last command tag, else the rows streamed.
    pub total_rows: u64,
    /// Columns of the last result set.
    pub fields: &'a [Column],
    /// Server messages (NOTICE, WARNING, ...) the statements raised.
    pub notices: &'a [DbError],
}

/// Writes one output format.
pub trait Encoder: Send {
    /// The document's opening, written before anything else.
    fn head(&mut self, out: &mut Vec<u8>);
    /// A result set whose rows will be shown starts.
    fn columns(&mut self, columns: &[Column], out: &mut Vec<u8>);
    /// One row of the current result set.
    fn row(&mut self, columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>);
    /// Closes the document. `error` is set when a statement failed after rows had been sent;
    /// returns false if the format has no way to carry it (the response is then cut short).
    fn tail(&mut self, summary: &Summary<'_>, error: Option<&str>, out: &mut Vec<u8>) -> bool;
}

/// JSONP wrapping: `cb(` before, `)` after.
fn open_callback(callback: &Option<String>, out: &mut Vec<u8>) {
    if let Some(cb) = callback {
        out.extend_from_slice(cb.as_bytes());
        out.push(b'(');
    }
}

fn close_callback(callback: &Option<String>, out: &mut Vec<u8>) {
    if callback.is_some() {
        out.push(b')');
    }
}

fn write_error_member(error: Option<&str>, out: &mut Vec<u8>) {
    if let Some(message) = error {
        out.extend_from_slice(b",\"error\":[");
        write_string(message, out);
        out.push(b']');
    }
}

/// Server messages grouped by severity, lower-cased plus `s`: `"notices":[..],"warnings":[..]`.
fn write_notices(notices: &[DbError], out: &mut Vec<u8>) {
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for notice in notices {
        let severity = notice
            .parsed_severity()
            .map(|s| s.to_string())
            .unwrap_or_else(|| notice.severity().to_string());
        groups
            .entry(format!("{}s", severity.to_lowercase()))
            .or_default()
            .push(notice.message());
    }
    for (group, messages) in groups {
        out.push(b',');
        write_string(&group, out);
        out.push(b':');
        out.extend_from_slice(Value::from(messages).to_string().as_bytes());
    }
}

/// Writes `{"name":value,...}` for the columns `show` selects.
fn write_object(
    columns: &[Column],
    row: &SimpleQueryRow,
    show: impl Fn(usize, &Column) -> bool,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    let mut first = true;
    for (i, column) in columns.iter().enumerate() {
        if !show(i, column) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&column.key);
        // A row shorter than its description (the table changed since PREPARE) reads as NULLs.
        write_value(&column.kind, row.try_get(i).ok().flatten(), out);
    }
    out.push(b'}');
}

/// `{"rows":[...],"time":T,"fields":{...},"total_rows":N}` (key order as upstream).
pub struct Json {
    callback: Option<String>,
    first_row: bool,
}

impl Json {
    /// A JSON document, wrapped in `callback(...)` if one is given.
    pub fn new(callback: Option<String>) -> Self {
        Json {
            callback,
            first_row: true,
        }
    }
}

impl Encoder for Json {
    fn head(&mut self, out: &mut Vec<u8>) {
        open_callback(&self.callback, out);
        out.extend_from_slice(b"{\"rows\":[");
    }

    fn columns(&mut self, _columns: &[Column], _out: &mut Vec<u8>) {}

    fn row(&mut self, columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>) {
        if !self.first_row {
            out.push(b',');
        }
        self.first_row = false;
        write_object(columns, row, |_, c| !c.skip, out);
    }

    fn tail(&mut self, summary: &Summary<'_>, error: Option<&str>, out: &mut Vec<u8>) -> bool {
        let fields: Map<String, Value> = summary
            .fields
            .iter()
            .filter(|c| !c.skip)
            .map(|c| (c.name.clone(), c.field.clone()))
            .collect();
        out.extend_from_slice(b"],\"time\":");
        out.extend_from_slice(Value::from(summary.time).to_string().as_bytes());
        out.extend_from_slice(b",\"fields\":");
        out.extend_from_slice(Value::Object(fields).to_string().as_bytes());
        out.extend_from_slice(b",\"total_rows\":");
        out.extend_from_slice(summary.total_rows.to_string().as_bytes());
        write_error_member(error, out);
        write_notices(summary.notices, out);
        out.push(b'}');
        close_callback(&self.callback, out);
        true
    }
}

/// A GeoJSON FeatureCollection. The statement is wrapped so that its last column is
/// `ST_AsGeoJSON(the_geom, dp)`; that column is the geometry, the others the properties.
pub struct GeoJson {
    callback: Option<String>,
    first_row: bool,
    geometry: Option<usize>,
}

impl GeoJson {
    /// A FeatureCollection, wrapped in `callback(...)` if one is given.
    pub fn new(callback: Option<String>) -> Self {
        GeoJson {
            callback,
            first_row: true,
            geometry: None,
        }
    }
}

/// Writes `keys[0]`, the `ST_AsGeoJSON` text of column `geometry` (or `null`), `keys[1]` and
/// the properties object: every shown column but that one and the source geometry columns.
pub(crate) fn write_geometry_and_properties(
    columns: &[Column],
    row: &SimpleQueryRow,
    geometry: Option<usize>,
    keys: [&str; 2],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(keys[0].as_bytes());
    match geometry.and_then(|g| row.try_get(g).ok().flatten()) {
        // ST_AsGeoJSON's text is a JSON object already, on one line.
        Some(geojson) => out.extend_from_slice(geojson.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(keys[1].as_bytes());
    write_object(
        columns,
        row,
        |i, c| !c.skip && Some(i) != geometry && !GEOMETRY_COLUMNS.contains(&c.name.as_str()),
        out,
    );
}

/// Columns that are geometry, never properties.
const GEOMETRY_COLUMNS: [&str; 2] = ["the_geom", "the_geom_webmercator"];

impl Encoder for GeoJson {
    fn head(&mut self, out: &mut Vec<u8>) {
        open_callback(&self.callback, out);
        out.extend_from_slice(b"{\"type\": \"FeatureCollection\", \"features\": [");
    }

    fn columns(&mut self, columns: &[Column], _out: &mut Vec<u8>) {
        self.geometry = columns.len().checked_sub(1);
    }

    fn row(&mut self, columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>) {
        if !self.first_row {
            out.push(b',');
        }
        self.first_row = false;
        out.extend_from_slice(b"{\"type\":\"Feature\",");
        write_geometry_and_properties(
            columns,
            row,
            self.geometry,
            ["\"geometry\":", ",\"properties\":"],
            out,
        );
        out.push(b'}');
    }

    fn tail(&mut self, _summary: &Summary<'_>, error: Option<&str>, out: &mut Vec<u8>) -> bool {
        out.push(b']');
        write_error_member(error, out);
        out.push(b'}');
        close_callback(&self.callback, out);
        true
    }
}

/// CSV: a header row, CRLF line ends, fields quoted only when needed, `the_geom` first.
pub struct Csv {
    builder: csv::WriterBuilder,
    order: Vec<usize>,
}

impl Csv {
    /// A CSV document.
    pub fn new() -> Self {
        let mut builder = csv::WriterBuilder::new();
        builder
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .buffer_capacity(1024);
        Csv {
            builder,
            order: Vec::new(),
        }
    }

    fn write_record<'a>(&self, fields: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
        write_csv_record(&self.builder, fields, out);
    }
}

/// Appends one CSV record to `out`.
pub(crate) fn write_csv_record<'a>(
    builder: &csv::WriterBuilder,
    fields: impl Iterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
) {
    // The csv writer keeps its own buffer; writing into a Vec cannot fail.
    let mut writer = builder.from_writer(out);
    let _ = writer.write_record(fields);
    let _ = writer.flush();
}

/// The CSV fields of `row` in `order`: PostgreSQL's text, NULL as empty, and booleans as
/// `booleans` spells true and false rather than the wire's `t`/`f`.
pub(crate) fn csv_fields<'a>(
    columns: &[Column],
    row: &'a SimpleQueryRow,
    order: &[usize],
    booleans: [&'static [u8]; 2],
) -> Vec<&'a [u8]> {
    order
        .iter()
        .map(|i| {
            let text = row.try_get(*i).ok().flatten().unwrap_or("");
            match (&columns[*i].kind, text) {
                (ValueKind::Bool, "t") => booleans[0],
                (ValueKind::Bool, "f") => booleans[1],
                _ => text.as_bytes(),
            }
        })
        .collect()
}

impl Default for Csv {
    fn default() -> Self {
        Csv::new()
    }
}

impl Encoder for Csv {
    fn head(&mut self, _out: &mut Vec<u8>) {}

    fn columns(&mut self, columns: &[Column], out: &mut Vec<u8>) {
        let shown = || columns.iter().enumerate().filter(|(_, c)| !c.skip);
        self.order = shown()
            .filter(|(_, c)| c.name == "the_geom")
            .chain(shown().filter(|(_, c)| c.name != "the_geom"))
            .map(|(i, _)| i)
            .collect();
        let names: Vec<&[u8]> = self
            .order
            .iter()
            .map(|i| columns[*i].name.as_bytes())
            .collect();
        self.write_record(names.into_iter(), out);
    }

    fn row(&mut self, columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>) {
        // Booleans as `::text` spells them.
        let values = csv_fields(columns, row, &self.order, [b"true", b"false"]);
        self.write_record(values.into_iter(), out);
    }

    fn tail(&mut self, _summary: &Summary<'_>, error: Option<&str>, _out: &mut Vec<u8>) -> bool {
        error.is_none()
    }
}
