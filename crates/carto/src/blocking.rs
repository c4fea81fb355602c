//! The same clients for code without an async runtime.
//!
//! Each blocking [`Client`] drives the async one on a runtime of its own (one worker
//! thread), so both share one implementation and one [`Error`]. COPY uploads
//! are an `io::Write` plus [`CopyFromWriter::finish`]; downloads an `io::Read`.
//!
//! # Panics
//! Calling these methods (or dropping a [`Client`]) from inside an async runtime panics, as
//! `reqwest::blocking` does: use the async clients there.
//!
//! ```no_run
//! # fn demo() -> carto::Result<()> {
//! use std::io::Write;
//!
//! let client = carto::blocking::Client::from_env()?;
//! let mut upload = client.copy().copy_from("COPY t (id, name) FROM STDIN")?;
//! upload.write_all(b"1\tone\n2\ttwo\n")?;
//! let outcome = upload.finish()?;
//! println!("{} rows", outcome.total_rows);
//!
//! let mut download = client.copy().copy_to("COPY t TO STDOUT")?;
//! std::io::copy(&mut download, &mut std::io::stdout())?;
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::{BatchQuery, CopyFromOutcome, Credentials, Job, JobStatus, SqlResponse};

/// A blocking [`crate::Client`]. Cheap to clone; the runtime thread stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Client")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Client {
    /// A client with the default settings.
    pub fn new(credentials: Credentials) -> Result<Self> {
        Client::from_async(crate::Client::new(credentials)?)
    }

    /// A client from `CARTO_API_URL` and `CARTO_API_KEY`.
    pub fn from_env() -> Result<Self> {
        Client::new(Credentials::from_env()?)
    }

    /// Wraps an async client configured with [`crate::Client::builder`].
    pub fn from_async(inner: crate::Client) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("carto-blocking")
            .enable_all()
            .build()
            .map_err(Error::io)?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// The `/sql` endpoint.
    pub fn sql(&self) -> SqlClient {
        SqlClient {
            inner: self.inner.sql(),
            runtime: self.runtime.clone(),
        }
    }

    /// The COPY endpoints.
    pub fn copy(&self) -> CopyClient {
        CopyClient {
            inner: self.inner.copy(),
            runtime: self.runtime.clone(),
        }
    }

    /// The batch job endpoints.
    pub fn batch(&self) -> BatchClient {
        BatchClient {
            inner: self.inner.batch(),
            runtime: self.runtime.clone(),
        }
    }
}

/// A blocking [`crate::SqlClient`].
#[derive(Debug, Clone)]
pub struct SqlClient {
    inner: crate::SqlClient,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl SqlClient {
    /// See [`crate::SqlClient::send`].
    pub fn send(&self, sql: &str) -> Result<SqlResponse> {
        self.runtime.block_on(self.inner.send(sql))
    }

    /// See [`crate::SqlClient::send_as`].
    pub fn send_as<T: DeserializeOwned>(&self, sql: &str) -> Result<SqlResponse<T>> {
        self.runtime.block_on(self.inner.send_as(sql))
    }
}

/// A blocking [`crate::BatchClient`].
#[derive(Debug, Clone)]
pub struct BatchClient {
    inner: crate::BatchClient,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl BatchClient {
    /// See [`crate::BatchClient::with_poll_interval`].
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.inner = self.inner.with_poll_interval(interval);
        self
    }

    /// See [`crate::BatchClient::create`].
    pub fn create(&self, query: impl Into<BatchQuery>) -> Result<Job> {
        self.runtime.block_on(self.inner.create(query))
    }

    /// See [`crate::BatchClient::read`].
    pub fn read(&self, job_id: &str) -> Result<Job> {
        self.runtime.block_on(self.inner.read(job_id))
    }

    /// See [`crate::BatchClient::update`].
    pub fn update(&self, job_id: &str, query: impl Into<BatchQuery>) -> Result<Job> {
        self.runtime.block_on(self.inner.update(job_id, query))
    }

    /// See [`crate::BatchClient::cancel`].
    pub fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        self.runtime.block_on(self.inner.cancel(job_id))
    }

    /// See [`crate::BatchClient::create_and_wait`].
    pub fn create_and_wait(&self, query: impl Into<BatchQuery>) -> Result<Job> {
        self.runtime.block_on(self.inner.create_and_wait(query))
    }
}

/// A blocking [`crate::CopyClient`].
#[derive(Debug, Clone)]
pub struct CopyClient {
    inner: crate::CopyClient,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl CopyClient {
    /// See [`crate::CopyClient::with_gzip_level`].
    pub fn with_gzip_level(mut self, level: u32) -> Self {
        self.inner = self.inner.with_gzip_level(level);
        self
    }

    /// See [`crate::CopyClient::without_compression`].
    pub fn without_compression(mut self) -> Self {
        self.inner = self.inner.without_compression();
        self
    }

    /// See [`crate::CopyClient::with_chunk_size`].
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.inner = self.inner.with_chunk_size(bytes);
        self
    }

    /// See [`crate::CopyClient::with_progress`].
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.inner = self.inner.with_progress(progress);
        self
    }

    /// Starts `sql` (a `COPY ... FROM STDIN`): write the data, then
    /// [`finish`](CopyFromWriter::finish). Dropping the writer unfinished rolls back.
    pub fn copy_from(&self, sql: &str) -> Result<CopyFromWriter> {
        let sink = self.runtime.block_on(self.inner.copy_from(sql))?;
        Ok(CopyFromWriter {
            sink: Some(sink),
            buffer: BytesMut::with_capacity(self.inner.chunk_size),
            chunk_size: self.inner.chunk_size,
            runtime: self.runtime.clone(),
        })
    }

    /// Uploads everything `reader` yields into `sql`. Never retried.
    pub fn copy_from_reader(&self, sql: &str, reader: &mut dyn Read) -> Result<CopyFromOutcome> {
        let mut writer = self.copy_from(sql)?;
        std::io::copy(reader, &mut writer)?;
        writer.finish()
    }

    /// See [`crate::CopyClient::copy_from_file`].
    pub fn copy_from_file(&self, sql: &str, path: impl AsRef<Path>) -> Result<CopyFromOutcome> {
        self.runtime
            .block_on(self.inner.copy_from_file(sql, path.as_ref()))
    }

    /// See [`crate::CopyClient::copy_from_file_in_parts`].
    pub fn copy_from_file_in_parts(
        &self,
        path: impl AsRef<Path>,
        parts: &crate::Parts,
    ) -> Result<crate::PartsOutcome> {
        self.runtime
            .block_on(self.inner.copy_from_file_in_parts(path.as_ref(), parts))
    }

    /// See [`crate::CopyClient::copy_from_rows`]; `rows` is any iterator.
    pub fn copy_from_rows<I, T>(
        &self,
        table: &str,
        columns: &[&str],
        rows: I,
    ) -> Result<CopyFromOutcome>
    where
        I: IntoIterator<Item = T>,
        T: Serialize,
    {
        // `block_on` polls the upload on this thread, so the iterator need not be `Send`.
        let rows = futures::stream::iter(rows);
        self.runtime
            .block_on(self.inner.copy_from_rows(table, columns, rows))
    }

    /// Runs `sql` (a `COPY ... TO STDOUT`) and returns its output as an `io::Read`. A
    /// failure after the data began is an `io::Error` wrapping the [`Error`], never data.
    pub fn copy_to(&self, sql: &str) -> Result<CopyToReader> {
        let stream = self.runtime.block_on(self.inner.copy_to(sql))?;
        Ok(CopyToReader {
            stream,
            current: Bytes::new(),
            runtime: self.runtime.clone(),
        })
    }

    /// See [`crate::CopyClient::copy_to_writer`].
    pub fn copy_to_writer(&self, sql: &str, writer: &mut dyn Write) -> Result<u64> {
        self.runtime
            .block_on(self.inner.copy_to_writer(sql, &mut BlockingWrite(writer)))
    }

    /// See [`crate::CopyClient::copy_to_file`].
    pub fn copy_to_file(&self, sql: &str, path: impl AsRef<Path>, append: bool) -> Result<u64> {
        self.runtime
            .block_on(self.inner.copy_to_file(sql, path.as_ref(), append))
    }
}

/// A blocking upload: an `io::Write`; [`finish`](Self::finish) commits and returns the
/// outcome. Dropped unfinished, the server rolls the COPY back.
pub struct CopyFromWriter {
    sink: Option<crate::CopyFromSink>,
    buffer: BytesMut,
    chunk_size: usize,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for CopyFromWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyFromWriter")
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl CopyFromWriter {
    fn send_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        let sink = self.sink.as_mut().ok_or_else(Error::aborted)?;
        self.runtime.block_on(sink.send(chunk))
    }

    /// Sends what is buffered, ends the data and returns the server's outcome.
    pub fn finish(mut self) -> Result<CopyFromOutcome> {
        self.send_buffer()?;
        let sink = self.sink.take().ok_or_else(Error::aborted)?;
        self.runtime.block_on(sink.finish())
    }

    /// Breaks the upload off and waits until the request is gone; the server rolls back.
    pub fn abort(mut self) {
        if let Some(sink) = self.sink.take() {
            self.runtime.block_on(sink.abort());
        }
    }
}

impl Write for CopyFromWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= self.chunk_size {
            self.send_buffer().map_err(Error::into_io)?;
        }
        Ok(data.len())
    }

    /// Sends what is buffered (it does not end the data: that is `finish`).
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer().map_err(Error::into_io)
    }
}

/// A blocking download: an `io::Read` over the COPY output.
pub struct CopyToReader {
    stream: crate::CopyToStream,
    current: Bytes,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for CopyToReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CopyToReader")
    }
}

impl CopyToReader {
    /// The next chunk; empty at the end.
    fn next_chunk(&mut self) -> Result<Bytes> {
        if !self.current.is_empty() {
            return Ok(std::mem::take(&mut self.current));
        }
        match self.runtime.block_on(self.stream.next()) {
            Some(chunk) => chunk,
            None => Ok(Bytes::new()),
        }
    }
}

impl Read for CopyToReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.current.is_empty() {
            self.current = self.next_chunk().map_err(Error::into_io)?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// A blocking `io::Write` as an `AsyncWrite`, for driving the async implementation with
/// `block_on`: the future is polled on the caller's own thread, so a write that blocks only
/// blocks the caller, as a blocking API does. (tokio-util's `SyncIoBridge` is the other way
/// round: an async writer used from blocking code.)
struct BlockingWrite<'a>(&'a mut dyn Write);

impl tokio::io::AsyncWrite for BlockingWrite<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.get_mut().0.write(data))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.get_mut().0.flush())
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(context)
    }
}
