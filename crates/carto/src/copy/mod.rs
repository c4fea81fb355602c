//! The COPY endpoints: bulk upload (`copy_from`) and download (`copy_to`), streamed.
//!
//! Uploads are gzip-compressed at level 1 by default and sent with chunked transfer
//! encoding; downloads ask for gzip and are decoded as they arrive. Every stage is a bounded
//! stream with back-pressure, so memory stays at a few chunks whatever the data's size.

mod from;
mod parts;
mod records;
mod to;

use std::path::Path;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::Client;
use crate::error::Result;
use crate::progress::Progress;

pub use from::{CopyFromOutcome, CopyFromSink};
pub use parts::{is_resumable, Parts, PartsFormat, PartsOutcome, DEFAULT_PART_SIZE};
pub use to::CopyToStream;

/// Default bytes per chunk read, compressed and sent (and read from downloads).
///
/// Measured with `tests/it/copy_bench.rs` (`cargo test -p carto --release --test it
/// chunk_size_measurement -- --ignored --nocapture`): 200 MB of generated rows (id, int,
/// EWKT point, text) uploaded with gzip level 1 into an unlogged table, client and server in
/// one process, PostgreSQL 15 on the same 2-core machine (load average ~6 from other builds).
/// Two runs, wall seconds / process CPU seconds (client + in-process server, data generation
/// included; PostgreSQL not counted):
///
/// | chunk   | run 1       | run 2       |
/// |---------|-------------|-------------|
/// | 8 KiB   | 6.28 / 3.40 | 6.02 / 3.41 |
/// | 16 KiB  | 4.68 / 3.24 | 6.18 / 3.36 |
/// | 64 KiB  | 6.36 / 3.36 | 6.13 / 3.28 |
/// | 256 KiB | 5.53 / 3.23 | 6.02 / 3.35 |
/// | 1 MiB   | 7.08 / 3.29 | 6.87 / 3.55 |
///
/// Wall time is PostgreSQL's (~33 MB/s here) and within noise across sizes; CPU is flat from
/// 16 KiB to 256 KiB, a little higher at carto-python's 8 KiB and at 1 MiB. 64 KiB is on the
/// flat part while keeping a transfer's buffers (a few chunks) in the hundreds of KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// Default gzip level of uploads: level 1 compresses CSV about 3× at ~80 MB/s per core,
/// far faster than PostgreSQL loads it (see DESIGN.md's performance facts).
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

/// COPY uploads and downloads for one account. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> carto::Result<()> {
/// let copy = carto::Client::from_env()?.copy().with_chunk_size(256 * 1024);
/// let outcome = copy
///     .copy_from_file("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)", "t.csv")
///     .await?;
/// println!("{} rows", outcome.total_rows);
/// copy.copy_to_file("COPY t TO STDOUT WITH (FORMAT csv, HEADER true)", "back.csv", false)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CopyClient {
    pub(crate) client: Client,
    pub(crate) gzip_level: Option<u32>,
    pub(crate) chunk_size: usize,
    pub(crate) progress: Option<Progress>,
}

impl CopyClient {
    /// The COPY endpoints of `client`'s account, with the default settings.
    pub fn new(client: Client) -> Self {
        CopyClient {
            client,
            gzip_level: Some(DEFAULT_GZIP_LEVEL),
            chunk_size: DEFAULT_CHUNK_SIZE,
            progress: None,
        }
    }

    /// Compresses uploads at gzip `level` (0–9). Default [`DEFAULT_GZIP_LEVEL`].
    pub fn with_gzip_level(mut self, level: u32) -> Self {
        self.gzip_level = Some(level.min(9));
        self
    }

    /// Sends uploads uncompressed and asks for uncompressed downloads (for a fast link
    /// where the CPU is scarcer than bandwidth).
    pub fn without_compression(mut self) -> Self {
        self.gzip_level = None;
        self
    }

    /// Bytes per chunk read, compressed and sent. Default [`DEFAULT_CHUNK_SIZE`]; at least
    /// 1 KiB. Memory per transfer is a few chunks.
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.max(1024);
        self
    }

    /// Reports the progress of every transfer to `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Starts `sql` (a `COPY ... FROM STDIN`) and returns the sink to send its data into.
    ///
    /// [`CopyFromSink::finish`] ends the data and returns the server's outcome. Dropping the
    /// sink (or [`CopyFromSink::abort`]) before that breaks the upload off, and the server
    /// rolls the COPY back: no row lands. Never retried (the data is the caller's stream).
    pub async fn copy_from(&self, sql: &str) -> Result<CopyFromSink> {
        from::start_sink(self, sql)
    }

    /// Uploads everything `stream` yields into `sql` (a `COPY ... FROM STDIN`).
    ///
    /// An error from the stream aborts the upload (nothing is committed) and is returned.
    /// Never retried: the stream's data is consumed.
    pub async fn copy_from_stream<S, E>(&self, sql: &str, stream: S) -> Result<CopyFromOutcome>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        from::upload_stream(self, sql, stream).await
    }

    /// Uploads everything `reader` yields into `sql`. Never retried.
    pub async fn copy_from_reader<R>(&self, sql: &str, reader: R) -> Result<CopyFromOutcome>
    where
        R: AsyncRead + Send + 'static,
    {
        from::upload_reader(self, sql, reader).await
    }

    /// Uploads the file at `path` into `sql`. Retried (from the file's start) on a
    /// rate-limited or unavailable answer, as the client's [`RetryPolicy`](crate::RetryPolicy)
    /// allows.
    pub async fn copy_from_file(
        &self,
        sql: &str,
        path: impl AsRef<Path>,
    ) -> Result<CopyFromOutcome> {
        from::upload_file(self, sql, path.as_ref()).await
    }

    /// Loads the file at `path` into a table in parts of at most
    /// [`Parts::part_size`] bytes, for files bigger than the server takes in one request
    /// (CARTO's limit is 2 GB).
    ///
    /// The file is cut at record boundaries (CSV: newlines outside quotes; text: newlines
    /// not escaped); each part is loaded into a staging table of its own with one COPY, and
    /// when all are loaded one transaction inserts them into the target in file order and
    /// drops them: the target gets every row or none. A refused row fails the load with the
    /// line of the file (`COPY t, line 1234567, ...`), the staging tables dropped. A
    /// dropped connection or an unavailable server sends the part again (at most 3 times);
    /// after that, or when the process stops, the loaded parts stay, and a load with
    /// [`Parts::resume`] sends only the others ([`is_resumable`] tells which failures).
    /// The progress reported spans the whole file. The key must be able to create tables.
    pub async fn copy_from_file_in_parts(
        &self,
        path: impl AsRef<Path>,
        parts: &Parts,
    ) -> Result<PartsOutcome> {
        parts::upload(self, path.as_ref(), parts).await
    }

    /// Encodes `rows` into COPY text format and uploads them into `columns` of `table`
    /// (see [`crate::rows`] for how values are encoded). `table` is SQL (e.g. `public.t` or
    /// `"My Table"`); the column names are quoted here. Never retried.
    pub async fn copy_from_rows<S, T>(
        &self,
        table: &str,
        columns: &[&str],
        rows: S,
    ) -> Result<CopyFromOutcome>
    where
        S: Stream<Item = T>,
        T: Serialize,
    {
        from::upload_rows(self, table, columns, rows).await
    }

    /// Runs `sql` (a `COPY ... TO STDOUT`) and returns its output as a stream of chunks.
    ///
    /// If the COPY fails after the data began (the server then appends its error to the
    /// body), the stream ends with that error as its last item, and the error text is never
    /// yielded as data. Retried as the policy allows until the answer's status arrives.
    pub async fn copy_to(&self, sql: &str) -> Result<CopyToStream> {
        to::start(self, sql).await
    }

    /// [`copy_to`](Self::copy_to) as an `AsyncRead`; a failure is an `io::Error` wrapping
    /// the [`Error`](crate::Error).
    pub async fn copy_to_reader(&self, sql: &str) -> Result<impl AsyncRead + Send + Unpin> {
        Ok(self.copy_to(sql).await?.into_async_read())
    }

    /// Writes the output of `sql` into `writer`; returns the bytes written.
    ///
    /// On an error the writer may hold the rows that came before it, never the error
    /// text. Use [`copy_to_file`](Self::copy_to_file) for all-or-nothing files.
    pub async fn copy_to_writer<W>(&self, sql: &str, writer: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        to::to_writer(self, sql, writer).await
    }

    /// Writes the output of `sql` into the file at `path`; returns the bytes written.
    ///
    /// Without `append` the data goes to a temporary file in the same directory, renamed
    /// to `path` once complete: on failure `path` is untouched (absent if it was).
    /// With `append` the data is appended to `path` (created if absent); on failure the file
    /// is cut back to its length before the call. The same holds when the future is dropped
    /// before it completes (a timeout, Ctrl-C): the temporary file is removed, or the file cut
    /// back.
    pub async fn copy_to_file(
        &self,
        sql: &str,
        path: impl AsRef<Path>,
        append: bool,
    ) -> Result<u64> {
        to::to_file(self, sql, path.as_ref(), append, &mut |_| {}).await
    }

    /// [`copy_to_file`](Self::copy_to_file), showing each chunk of data to `inspect` before
    /// it is written (e.g. to count rows), with the same all-or-nothing file.
    pub async fn copy_to_file_inspecting(
        &self,
        sql: &str,
        path: impl AsRef<Path>,
        append: bool,
        mut inspect: impl FnMut(&[u8]) + Send,
    ) -> Result<u64> {
        to::to_file(self, sql, path.as_ref(), append, &mut inspect).await
    }
}
