//! `carto_rs._native`: the Rust SDK's transfers for the `carto_rs` Python package.
//!
//! The package's public API (carto-python's classes) is Python, in `python/carto_rs/`; this
//! module moves the bytes. Every wait on the network releases the GIL, and uploads check
//! for signals between chunks so that Ctrl-C aborts them (the server then commits nothing).
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

create_exception!(
    _native,
    NativeError,
    PyException,
    "A failure from the Rust SDK; args: (message, status or None, the server's error list, \
     (limit, remaining, reset, retry_after) or None)."
);

/// Uploads hand the SDK this much at a time: fewer GIL round trips than one per line of
/// a generator, and still a bounded amount of memory.
const BATCH_BYTES: usize = 256 * 1024;

/// One runtime for the process: the SDK is async, Python calls are blocking.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("carto-rs")
            .enable_all()
            .build()
            .expect("a tokio runtime (threads and a reactor) can be created")
    })
}

fn sdk_error(error: carto::Error) -> PyErr {
    let rate_limit = error
        .rate_limit()
        .map(|r| (r.limit, r.remaining, r.reset, r.retry_after));
    NativeError::new_err((
        error.to_string(),
        error.status(),
        error.messages().to_vec(),
        rate_limit,
    ))
}

fn http_error(error: reqwest::Error) -> PyErr {
    NativeError::new_err((
        format!("request failed: {error}"),
        None::<u16>,
        Vec::<String>::new(),
        None::<(u64, u64, u64, u64)>,
    ))
}

/// A complete HTTP answer: status, headers and body.
type Answer<'py> = (u16, Vec<(String, String)>, Bound<'py, PyBytes>);

/// An account's connection: base URL, key and a pooled HTTP client.
#[pyclass(frozen, module = "carto_rs._native")]
struct Client {
    sdk: carto::Client,
    http: reqwest::Client,
    base_url: url::Url,
}

#[pymethods]
impl Client {
    /// A client for `base_url` (`https://{user}.carto.com/` or `https://host/user/{user}/`).
    /// `verify=False` skips TLS certificate checks (on-premises servers with their own CA).
    #[new]
    #[pyo3(signature = (base_url, api_key, user_agent, verify = true))]
    fn new(base_url: &str, api_key: String, user_agent: &str, verify: bool) -> PyResult<Self> {
        let credentials = carto::Credentials::new(base_url, api_key).map_err(sdk_error)?;
        let base_url = credentials.base_url().clone();
        let mut builder = reqwest::Client::builder()
            .no_gzip()
            .user_agent(user_agent)
            .danger_accept_invalid_certs(!verify);
        // RFC 6761: names under .localhost are the loopback host, whatever the resolver says
        // (curl and browsers do the same); this is how host-style URLs reach a local server.
        if let Some(host) = base_url.host_str().filter(|h| h.ends_with(".localhost")) {
            let port = base_url.port_or_known_default().unwrap_or(80);
            builder = builder.resolve(host, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let http = builder.build().map_err(http_error)?;
        let sdk = carto::Client::builder(credentials)
            // carto-python never retries: a 429 is the caller's CartoRateLimitException.
            .retry(carto::RetryPolicy::never())
            .http_client(http.clone())
            .build()
            .map_err(sdk_error)?;
        Ok(Client {
            sdk,
            http,
            base_url,
        })
    }

    /// The account's user name, as the SDK reads it from the base URL.
    #[getter]
    fn username(&self) -> String {
        self.sdk.credentials().username().to_string()
    }

    /// One request to `path` (relative to the base URL): `query` in the URL, then a form or
    /// a JSON text as the body. Returns `(status, headers, body)`; only a failure to talk to
    /// the server raises.
    #[pyo3(signature = (method, path, query, form = None, json = None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        path: &str,
        query: Vec<(String, String)>,
        form: Option<Vec<(String, String)>>,
        json: Option<String>,
    ) -> PyResult<Answer<'py>> {
        let url = self
            .base_url
            .join(path)
            .map_err(|e| PyValueError::new_err(format!("bad path {path:?}: {e}")))?;
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|e| PyValueError::new_err(format!("bad HTTP method {method:?}: {e}")))?;
        let mut request = self.http.request(method, url).query(&query);
        if let Some(form) = form {
            request = request.form(&form);
        }
        if let Some(json) = json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json);
        }
        let (status, headers, body) = py
            .allow_threads(|| {
                runtime().block_on(async {
                    let response = request.send().await?;
                    let status = response.status().as_u16();
                    let headers = response
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    let body = response.bytes().await?;
                    Ok::<_, reqwest::Error>((status, headers, body))
                })
            })
            .map_err(http_error)?;
        Ok((status, headers, PyBytes::new(py, &body)))
    }

    /// Streams the chunks of an iterable (bytes, bytearray, memoryview or str) into
    /// `COPY ... FROM STDIN`. Returns `(total_rows, time)`. `progress(n)` is called with the
    /// number of bytes sent since its last call. An exception from the iterable, the
    /// callback or a signal handler (Ctrl-C) aborts the upload: no row is committed.
    #[pyo3(signature = (sql, chunks, compress = true, level = 1, progress = None))]
    fn copy_from(
        &self,
        py: Python<'_>,
        sql: &str,
        chunks: &Bound<'_, PyAny>,
        compress: bool,
        level: u32,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(u64, f64)> {
        let copy = self.copy_client(compress, level);
        let mut sink = py
            .allow_threads(|| runtime().block_on(copy.copy_from(sql)))
            .map_err(sdk_error)?;
        match feed(py, &mut sink, chunks, progress) {
            Ok(()) => {
                let outcome = py
                    .allow_threads(|| runtime().block_on(sink.finish()))
                    .map_err(sdk_error)?;
                Ok((outcome.total_rows, outcome.time))
            }
            Err(error) => {
                py.allow_threads(|| runtime().block_on(sink.abort()));
                Err(error)
            }
        }
    }

    /// Starts `COPY ... TO STDOUT`; an error before the data raises here.
    #[pyo3(signature = (sql, compress = true))]
    fn copy_to(&self, py: Python<'_>, sql: &str, compress: bool) -> PyResult<CopyToReader> {
        let copy = self.copy_client(compress, carto::DEFAULT_GZIP_LEVEL);
        let stream = py
            .allow_threads(|| runtime().block_on(copy.copy_to(sql)))
            .map_err(sdk_error)?;
        Ok(CopyToReader {
            stream: Mutex::new(Some(stream)),
        })
    }
}

impl Client {
    fn copy_client(&self, compress: bool, level: u32) -> carto::CopyClient {
        let copy = self.sdk.copy();
        if compress {
            copy.with_gzip_level(level)
        } else {
            copy.without_compression()
        }
    }
}

/// Appends one item of an upload's iterable to `buffer`.
fn append_chunk(item: &Bound<'_, PyAny>, buffer: &mut Vec<u8>) -> PyResult<()> {
    if let Ok(bytes) = item.downcast::<PyBytes>() {
        buffer.extend_from_slice(bytes.as_bytes());
    } else if let Ok(text) = item.downcast::<PyString>() {
        buffer.extend_from_slice(text.to_cow()?.as_bytes());
    } else if let Ok(array) = item.downcast::<PyByteArray>() {
        buffer.extend_from_slice(&array.to_vec());
    } else if item.is_instance_of::<PyMemoryView>() {
        let bytes = item.call_method0("tobytes")?;
        buffer.extend_from_slice(bytes.downcast::<PyBytes>()?.as_bytes());
    } else {
        return Err(PyTypeError::new_err(format!(
            "copyfrom's data must yield bytes or str, not {}",
            item.get_type().name()?
        )));
    }
    Ok(())
}

fn feed(
    py: Python<'_>,
    sink: &mut carto::CopyFromSink,
    chunks: &Bound<'_, PyAny>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let mut buffer = Vec::with_capacity(BATCH_BYTES);
    let mut send = |buffer: &mut Vec<u8>| -> PyResult<()> {
        let chunk = Bytes::from(std::mem::replace(buffer, Vec::with_capacity(BATCH_BYTES)));
        let sent = chunk.len();
        py.allow_threads(|| runtime().block_on(sink.send(chunk)))
            .map_err(sdk_error)?;
        if let Some(progress) = progress {
            progress.call1((sent,))?;
        }
        Ok(())
    };
    for item in chunks.try_iter()? {
        append_chunk(&item?, &mut buffer)?;
        if buffer.len() >= BATCH_BYTES {
            send(&mut buffer)?;
        }
        // Ctrl-C lands here even when the iterable is not Python code (a list, a file).
        py.check_signals()?;
    }
    if !buffer.is_empty() {
        send(&mut buffer)?;
    }
    Ok(())
}

/// The data of a `COPY ... TO STDOUT`, read chunk by chunk.
#[pyclass(frozen, module = "carto_rs._native")]
struct CopyToReader {
    stream: Mutex<Option<carto::CopyToStream>>,
}

#[pymethods]
impl CopyToReader {
    /// The next chunk, or None at the end. A failure midway raises.
    fn next_chunk<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut guard = self
            .stream
            .lock()
            .map_err(|_| PyValueError::new_err("the stream failed in another thread"))?;
        let Some(stream) = guard.as_mut() else {
            return Ok(None);
        };
        match py.allow_threads(|| runtime().block_on(stream.next())) {
            Some(Ok(chunk)) => Ok(Some(PyBytes::new(py, &chunk))),
            Some(Err(error)) => {
                *guard = None;
                Err(sdk_error(error))
            }
            None => {
                *guard = None;
                Ok(None)
            }
        }
    }

    /// Stops reading: the rest of the answer is dropped and the query cancelled.
    fn close(&self) {
        if let Ok(mut guard) = self.stream.lock() {
            guard.take();
        }
    }
}

/// One column for [`encode_binary_rows`]: `("fixed", width, bytes, null flags as bytes or None)`,
/// `("variable", [bytes or None, ...])` or `("point", x float64 bytes, y float64 bytes, srid)`.
#[derive(FromPyObject)]
enum ColumnSpec {
    #[pyo3(transparent)]
    Fixed((String, usize, PyBackedBytes, Option<PyBackedBytes>)),
    #[pyo3(transparent)]
    Point((String, PyBackedBytes, PyBackedBytes, i32)),
    #[pyo3(transparent)]
    Variable((String, Vec<Option<Blob>>)),
}

/// A value of a variable-length column: bytes as they are, text as UTF-8.
#[derive(FromPyObject)]
enum Blob {
    Bytes(PyBackedBytes),
    Text(PyBackedStr),
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        match self {
            Blob::Bytes(bytes) => bytes,
            Blob::Text(text) => text.as_bytes(),
        }
    }
}

fn floats(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|b| f64::from_ne_bytes(b.try_into().expect("chunks of 8 bytes")))
        .collect()
}

/// A column's values in the shape the SDK's encoder borrows.
enum OwnedColumn {
    Fixed {
        width: usize,
        values: PyBackedBytes,
        nulls: Option<Vec<bool>>,
    },
    Point {
        x: Vec<f64>,
        y: Vec<f64>,
        srid: i32,
    },
    Variable(Vec<Option<Blob>>),
}

impl OwnedColumn {
    fn new(spec: ColumnSpec) -> PyResult<Self> {
        Ok(match spec {
            ColumnSpec::Fixed((kind, width, values, nulls)) => {
                if kind != "fixed" {
                    return Err(PyValueError::new_err(format!(
                        "unknown column kind {kind:?}"
                    )));
                }
                OwnedColumn::Fixed {
                    width,
                    values,
                    nulls: nulls.map(|n| n.iter().map(|b| *b != 0).collect()),
                }
            }
            ColumnSpec::Point((_, x, y, srid)) => OwnedColumn::Point {
                x: floats(&x),
                y: floats(&y),
                srid,
            },
            ColumnSpec::Variable((_, values)) => OwnedColumn::Variable(values),
        })
    }
}

/// Rows of PostgreSQL's binary COPY format from columns (see the SDK's `binary_copy`),
/// with the stream's header and/or trailer when asked.
#[pyfunction]
#[pyo3(signature = (columns, header = false, trailer = false))]
fn encode_binary_rows<'py>(
    py: Python<'py>,
    columns: Vec<ColumnSpec>,
    header: bool,
    trailer: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let owned = columns
        .into_iter()
        .map(OwnedColumn::new)
        .collect::<PyResult<Vec<_>>>()?;
    let variables: Vec<Vec<Option<&[u8]>>> = owned
        .iter()
        .map(|c| match c {
            OwnedColumn::Variable(values) => values
                .iter()
                .map(|v| v.as_ref().map(AsRef::as_ref))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let sdk_columns: Vec<carto::binary_copy::Column<'_>> = owned
        .iter()
        .zip(&variables)
        .map(|(column, variable)| match column {
            OwnedColumn::Fixed {
                width,
                values,
                nulls,
            } => carto::binary_copy::Column::Fixed {
                width: *width,
                values,
                nulls: nulls.as_deref(),
            },
            OwnedColumn::Point { x, y, srid } => {
                carto::binary_copy::Column::Point { x, y, srid: *srid }
            }
            OwnedColumn::Variable(_) => carto::binary_copy::Column::Variable { values: variable },
        })
        .collect();
    let mut out = Vec::new();
    if header {
        carto::binary_copy::write_header(&mut out);
    }
    carto::binary_copy::write_rows(&sdk_columns, &mut out).map_err(sdk_error)?;
    if trailer {
        carto::binary_copy::write_trailer(&mut out);
    }
    Ok(PyBytes::new(py, &out))
}

/// The module `carto_rs._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<CopyToReader>()?;
    m.add_function(wrap_pyfunction!(encode_binary_rows, m)?)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    // The package's version, without importlib.metadata (which costs ~80 ms of start-up).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
