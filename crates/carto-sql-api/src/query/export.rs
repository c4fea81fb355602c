//! The file formats of `/sql` that CARTO writes with GDAL's `ogr2ogr`: `shp` (a zipped
//! shapefile set), `kml`, `gpkg` and `spatialite` (spec §4.2).
//!
//! The query runs exactly as for the other formats (same guard, role, timeout, `skipfields`);
//! its rows are spooled as CSV plus a `.csvt` type sidecar into a private temporary directory,
//! so that `ogr2ogr` keeps integers, reals, dates and date-times apart (GeoJSON would not).
//! Both the spool and the converted file are capped by [`Exports::max_size`]; the directory is
//! removed when the request ends, including when the client goes away and the handler's future
//! is dropped, which also kills `ogr2ogr` (`kill_on_drop`). [`Exports::max_concurrent`] caps the
//! exports running at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::SimpleQueryRow;

use super::exec::{self, Plan};
use super::format::{csv_fields, write_csv_record, Column, Encoder, Summary};
use super::Format;
use crate::error::{Answer, ApiError};

/// Default [`Exports::max_size`]: 1 GiB.
pub const DEFAULT_MAX_EXPORT_SIZE: u64 = 1 << 30;

/// Default [`Exports::max_concurrent`].
pub const DEFAULT_MAX_CONCURRENT_EXPORTS: usize = 2;

/// Seconds a client is told to wait when every export slot is taken.
const EXPORTS_RETRY_AFTER: u32 = 5;

/// How much of `ogr2ogr`'s messages is read to find the error to show.
const MAX_MESSAGES: u64 = 64 * 1024;

/// The column name the spooled CSV gives the geometry, whatever the query called it, so that
/// no user-chosen name ever reaches `ogr2ogr`'s options.
const GEOMETRY_NAME: &str = "the_geom";

/// Settings and shared state of the `ogr2ogr` exports.
#[derive(Debug, Clone)]
pub struct Exports {
    /// Largest spooled result and largest produced file, in bytes; past it the export is
    /// answered 413. Default 1 GiB.
    pub max_size: u64,
    /// Exports converting at once; more are answered 429 with `Retry-After`. Default 2.
    pub max_concurrent: usize,
    /// Where the private temporary directories go. Default `None`: the system's.
    pub temp_dir: Option<PathBuf>,
    /// The `ogr2ogr` program to run. Default `ogr2ogr`, looked up in `PATH`.
    pub ogr2ogr: PathBuf,
    /// Created on first use, so that `max_concurrent` may be set after [`Exports::default`];
    /// shared by clones.
    slots: Arc<OnceLock<Arc<Semaphore>>>,
    /// Whether `ogr2ogr` runs, checked once.
    available: Arc<OnceCell<bool>>,
}

impl Default for Exports {
    fn default() -> Self {
        Exports {
            max_size: DEFAULT_MAX_EXPORT_SIZE,
            max_concurrent: DEFAULT_MAX_CONCURRENT_EXPORTS,
            temp_dir: None,
            ogr2ogr: PathBuf::from("ogr2ogr"),
            slots: Arc::default(),
            available: Arc::default(),
        }
    }
}

impl Exports {
    /// Whether `ogr2ogr` can be run; the first call runs `ogr2ogr --version` and logs a warning
    /// when it cannot, later calls reuse that answer.
    pub async fn ogr2ogr_available(&self) -> bool {
        *self
            .available
            .get_or_init(|| async {
                let outcome = Command::new(&self.ogr2ogr)
                    .arg("--version")
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await;
                match outcome {
                    Ok(output) if output.status.success() => true,
                    outcome => {
                        let cause = match outcome {
                            Ok(output) => format!("exited with {}", output.status),
                            Err(error) => error.to_string(),
                        };
                        tracing::warn!(
                            program = %self.ogr2ogr.display(),
                            %cause,
                            "GDAL's ogr2ogr is missing: /sql formats shp, kml, gpkg and spatialite will be refused"
                        );
                        false
                    }
                }
            })
            .await
    }

    fn slots(&self) -> Arc<Semaphore> {
        self.slots
            .get_or_init(|| Arc::new(Semaphore::new(self.max_concurrent.max(1))))
            .clone()
    }
}

/// The `ogr2ogr` arguments that select `format`'s driver, and the output file's name.
fn driver(format: Format) -> (&'static [&'static str], &'static str) {
    match format {
        Format::Shp => (&["-f", "ESRI Shapefile"], "export.shp.zip"),
        Format::Kml => (&["-f", "KML"], "export.kml"),
        Format::Gpkg => (&["-f", "GPKG"], "export.gpkg"),
        _ => (
            &["-f", "SQLite", "-dsco", "SPATIALITE=YES"],
            "export.sqlite",
        ),
    }
}

/// Runs `plan` and answers its last result set converted to `format` by `ogr2ogr`, as a file
/// named after `layer`.
pub async fn answer(
    client: deadpool_postgres::Object,
    plan: Plan,
    format: Format,
    layer: &str,
    exports: &Exports,
) -> Result<Response, ApiError> {
    if !exports.ogr2ogr_available().await {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "Format {} needs GDAL's ogr2ogr, which this server does not have",
                format.id()
            ),
        ));
    }
    let permit = take_slot(exports)?;
    let dir = private_dir(exports)?;
    let layout = Arc::new(Mutex::new(Vec::new()));
    let csv = dir.path().join("data.csv");
    let encoder = Box::new(SpoolCsv {
        layout: layout.clone(),
        order: Vec::new(),
        builder: csv_builder(),
    });
    spool(client, plan, encoder, &csv, exports.max_size).await?;
    let types = layout
        .lock()
        .map(|l| l.clone())
        .map_err(|_| ApiError::internal("export layout lock poisoned"))?;
    let csvt: Vec<String> = types.iter().map(|t| format!("\"{t}\"")).collect();
    tokio::fs::write(dir.path().join("data.csvt"), csvt.join(",") + "\n")
        .await
        .map_err(|e| ApiError::internal(format!("writing the export types: {e}")))?;
    let (driver_args, output_name) = driver(format);
    let output = dir.path().join(output_name);
    convert(exports, driver_args, layer, &csv, &output, types.first()).await?;
    send(vec![Piece::File(output)], dir, permit, exports.max_size).await
}

/// A part of a document answered from a private directory.
pub(super) enum Piece {
    /// Text written by the server.
    Text(Bytes),
    /// A file of the directory.
    File(PathBuf),
}

/// Answers `pieces` one after the other, with their total as `Content-Length`; a 413 if it is
/// past `max_size`.
pub(super) async fn send(
    pieces: Vec<Piece>,
    dir: tempfile::TempDir,
    permit: OwnedSemaphorePermit,
    max_size: u64,
) -> Result<Response, ApiError> {
    let mut size = 0u64;
    let mut parts = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match piece {
            Piece::Text(text) => {
                size += text.len() as u64;
                parts.push(futures::stream::once(async { Ok(text) }).boxed());
            }
            Piece::File(path) => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| ApiError::internal(format!("opening the export: {e}")))?;
                size += file
                    .metadata()
                    .await
                    .map_err(|e| ApiError::internal(format!("reading the export: {e}")))?
                    .len();
                parts.push(tokio_util::io::ReaderStream::new(file).boxed());
            }
        }
    }
    if size > max_size {
        return Err(too_large(max_size));
    }
    // Open files stay readable once their directory is gone, so nothing is left on disk
    // whatever the client does next; the slot is held until the last byte has been sent.
    drop(dir);
    let body = futures::stream::iter(parts).flatten().map(move |chunk| {
        let _slot = &permit;
        chunk
    });
    let mut response = Response::new(Body::from_stream(body));
    if let Ok(length) = axum::http::HeaderValue::from_str(&size.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, length);
    }
    Ok(response)
}

/// One of [`Exports::max_concurrent`]'s slots, held until the answer's last byte is sent; a
/// 429 with `Retry-After` when every slot is taken.
pub(super) fn take_slot(exports: &Exports) -> Result<OwnedSemaphorePermit, ApiError> {
    exports.slots().try_acquire_owned().map_err(|_| {
        Answer {
            context: Some("limit".into()),
            detail: Some("exports".into()),
            retry_after: Some(EXPORTS_RETRY_AFTER),
            ..Answer::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many file exports at once (this server converts {} at a time): try again shortly",
                    exports.max_concurrent.max(1)
                ),
            )
        }
        .into()
    })
}

/// A private temporary directory under [`Exports::temp_dir`], removed when dropped.
pub(super) fn private_dir(exports: &Exports) -> Result<tempfile::TempDir, ApiError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("carto-export-");
    match &exports.temp_dir {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .map_err(|e| ApiError::internal(format!("creating the export directory: {e}")))
}

/// The 413 of an export past [`Exports::max_size`].
pub(super) fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "The export is larger than this server's limit of {limit} bytes (--max-export-size): \
             select fewer rows or columns"
        ),
    )
}

/// Writes the rows of `plan`'s last result set to `path` as `encoder` writes them, stopping
/// (and cancelling the query) past `max_size`.
pub(super) async fn spool(
    client: deadpool_postgres::Object,
    plan: Plan,
    encoder: Box<dyn Encoder>,
    path: &Path,
    max_size: u64,
) -> Result<(), ApiError> {
    let stream = exec::start(client, plan, encoder, None).await?;
    futures::pin_mut!(stream);
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(format!("creating the export spool: {e}")))?;
    let mut file = tokio::io::BufWriter::new(file);
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > max_size {
            // Dropping the stream cancels the query.
            return Err(too_large(max_size));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("writing the export spool: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("writing the export spool: {e}")))
}

/// Runs `ogr2ogr` from the spooled `csv` to `output`. Every argument is passed as argv, never
/// through a shell, and the only user-chosen one, `layer`, is a sanitized name given as the
/// value of `-nln`.
async fn convert(
    exports: &Exports,
    driver_args: &[&str],
    layer: &str,
    csv: &Path,
    output: &Path,
    first_type: Option<&String>,
) -> Result<(), ApiError> {
    let mut command = Command::new(&exports.ogr2ogr);
    command
        .args(driver_args)
        .args(["-a_srs", "EPSG:4326", "-nln", layer]);
    command.args(["-oo", "EMPTY_STRING_AS_NULL=YES"]);
    if first_type.is_some_and(|t| t == "WKT") {
        command.args([
            "-oo",
            &format!("GEOM_POSSIBLE_NAMES={GEOMETRY_NAME}"),
            "-oo",
            "KEEP_GEOM_COLUMNS=NO",
        ]);
    }
    // GDAL may warn once per row, so its messages go to a file rather than memory.
    let messages = csv.with_extension("log");
    let log = std::fs::File::create(&messages)
        .map_err(|e| ApiError::internal(format!("creating the ogr2ogr log: {e}")))?;
    command
        .arg(output)
        .arg(csv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    let status = command
        .status()
        .await
        .map_err(|e| ApiError::internal(format!("running ogr2ogr: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let mut head = Vec::new();
    if let Ok(file) = tokio::fs::File::open(&messages).await {
        use tokio::io::AsyncReadExt;
        let _ = file.take(MAX_MESSAGES).read_to_end(&mut head).await;
    }
    let stderr = String::from_utf8_lossy(&head);
    let cause = stderr
        .lines()
        .find(|l| l.starts_with("ERROR"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("no message")
        .trim();
    Err(ApiError::bad_request(format!(
        "ogr2ogr could not write this result as {}: {cause}",
        output
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("the format")
    )))
}

fn csv_builder() -> csv::WriterBuilder {
    let mut builder = csv::WriterBuilder::new();
    builder
        .quote_style(csv::QuoteStyle::Necessary)
        .buffer_capacity(1024);
    builder
}

/// The CSV that `ogr2ogr` reads: the geometry column first, named [`GEOMETRY_NAME`], then the
/// attributes; other geometry columns are left out. The `.csvt` types are recorded in `layout`.
struct SpoolCsv {
    layout: Arc<Mutex<Vec<String>>>,
    order: Vec<usize>,
    builder: csv::WriterBuilder,
}

fn field_type(column: &Column, key: &str) -> String {
    column
        .field
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn is_geometry(column: &Column) -> bool {
    matches!(
        field_type(column, "type").as_str(),
        "geometry" | "geography"
    )
}

/// Spatial columns are never attributes: only one geometry goes in the file, and a raster's
/// hex would be of no use to a reader.
fn is_spatial(column: &Column) -> bool {
    is_geometry(column) || field_type(column, "type") == "raster"
}

/// The `.csvt` type that keeps a PostgreSQL type's values what they are.
fn csvt_type(column: &Column) -> &'static str {
    match field_type(column, "pgtype").as_str() {
        "int2" | "int4" | "oid" => "Integer",
        "int8" => "Integer64",
        "float4" | "float8" | "numeric" => "Real",
        "bool" => "Integer(Boolean)",
        "date" => "Date",
        "timestamp" | "timestamptz" => "DateTime",
        "time" => "Time",
        _ => "String",
    }
}

impl Encoder for SpoolCsv {
    fn head(&mut self, _out: &mut Vec<u8>) {}

    fn columns(&mut self, columns: &[Column], out: &mut Vec<u8>) {
        let shown = || columns.iter().enumerate().filter(|(_, c)| !c.skip);
        let geometry = shown()
            .find(|(_, c)| c.name == GEOMETRY_NAME && is_geometry(c))
            .or_else(|| shown().find(|(_, c)| is_geometry(c)))
            .map(|(i, _)| i);
        self.order = geometry
            .into_iter()
            .chain(shown().filter(|(_, c)| !is_spatial(c)).map(|(i, _)| i))
            .collect();
        let mut names = Vec::new();
        let mut types = Vec::new();
        for &i in &self.order {
            if Some(i) == geometry {
                names.push(GEOMETRY_NAME.as_bytes());
                types.push("WKT".to_string());
            } else {
                names.push(columns[i].name.as_bytes());
                types.push(csvt_type(&columns[i]).to_string());
            }
        }
        if let Ok(mut layout) = self.layout.lock() {
            *layout = types;
        }
        if names.len() == 1 {
            // GDAL before 3.7 refuses a CSV whose header has no separator; an empty trailing
            // name is its own writer's way around that, and its reader ignores it.
            names.push(b"");
        }
        write_csv_record(&self.builder, names.into_iter(), out);
    }

    fn row(&mut self, columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>) {
        // `Integer(Boolean)` reads 1 and 0.
        let values = csv_fields(columns, row, &self.order, [b"1", b"0"]);
        write_csv_record(&self.builder, values.into_iter(), out);
    }

    fn tail(&mut self, _summary: &Summary<'_>, error: Option<&str>, _out: &mut Vec<u8>) -> bool {
        error.is_none()
    }
}
