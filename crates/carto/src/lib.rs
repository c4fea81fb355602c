//! A client for CARTO's SQL API and servers compatible with it (such as `carto-sql-api`):
//! queries, batch jobs and streaming COPY in and out of PostgreSQL + PostGIS.
//!
//! ```no_run
//! use futures::StreamExt;
//!
//! # async fn demo() -> carto::Result<()> {
//! // Base URL and key: `https://{user}.carto.com/` or `https://host/user/{user}/`.
//! let client = carto::Client::new(carto::Credentials::new(
//!     "https://alice.carto.com/",
//!     std::env::var("CARTO_API_KEY").unwrap_or_default(),
//! )?)?;
//!
//! // Queries, rows as JSON objects (or your own types with `send_as`).
//! let answer = client.sql().send("SELECT 1 AS one").await?;
//! assert_eq!(answer.rows[0]["one"], 1);
//!
//! // Bulk upload: a file, a reader, a stream, a sink, or Rust values.
//! let copy = client.copy();
//! copy.copy_from_file("COPY cities FROM STDIN WITH (FORMAT csv, HEADER true)", "cities.csv")
//!     .await?;
//! let points = futures::stream::iter((0..1000).map(|i| (i, carto::Point::new(i as f64 / 10.0, 40.0))));
//! copy.copy_from_rows("places", &["id", "the_geom"], points).await?;
//!
//! // Bulk download as a stream of chunks, or straight into a file.
//! let mut chunks = copy.copy_to("COPY cities TO STDOUT WITH (FORMAT csv, HEADER true)").await?;
//! while let Some(chunk) = chunks.next().await {
//!     let _bytes = chunk?; // the last item is an Err if the COPY failed midway
//! }
//! copy.copy_to_file("COPY cities TO STDOUT", "cities.tsv", false).await?;
//!
//! // Batch jobs.
//! let job = client.batch().create_and_wait("UPDATE cities SET pop = pop + 1").await?;
//! println!("job {} {}", job.job_id, job.status);
//! # Ok(()) }
//! ```
//!
//! # Memory and back-pressure
//! Every transfer is a chain of bounded streams: an upload reads its source one chunk
//! ([`DEFAULT_CHUNK_SIZE`]) at a time, compresses it and hands it to the connection, which
//! takes the next only once the server has taken the last. A 100 GB file costs a few chunks
//! of memory, and a slow database slows the reading instead of filling memory.
//!
//! # Finishing and aborting
//! [`CopyFromSink::finish`] ends an upload and returns the server's outcome; only then is
//! the COPY committed. Dropping the sink (or [`CopyFromSink::abort`]) breaks the request off
//! and the server rolls back: no row lands. A [`CopyToStream`] ends with an `Err` if the COPY
//! failed after its data began, and never passes the server's error text on as data.
//!
//! # Compression
//! Uploads are gzip-compressed at level 1 by default (about 3× on CSV, far faster than
//! PostgreSQL loads it); downloads ask for gzip and are decoded as they arrive. See
//! [`CopyClient::with_gzip_level`] and [`CopyClient::without_compression`].
//!
//! # Retries
//! Answers 429 (rate limited, with `Retry-After`) and 503 are retried after the wait the
//! server asks for, within a [`RetryPolicy`] — only where the request can be replayed
//! (queries, batch calls, `copy_to` before any data, `copy_from_file`), never an upload of a
//! stream.
//!
//! # Blocking use
//! [`blocking`] has the same clients for code without an async runtime.
#![deny(missing_docs)]
// Slicing client text at a byte offset panics inside a multi-byte character: use `get(..)`
// or char-aware code. Tests may slice text they wrote themselves.
#![cfg_attr(not(test), deny(clippy::string_slice))]

pub mod batch;
pub mod binary_copy;
pub mod blocking;
mod client;
pub mod copy;
pub mod credentials;
mod download;
pub mod error;
pub mod progress;
pub mod retry;
pub mod rows;
pub mod sql;

pub use batch::{BatchClient, BatchQuery, Job, JobStatus};
/// Quoting for SQL built by hand (e.g. a `COPY` statement): `quote_ident("My Table")` is
/// `"My Table"`, `quote_literal("it's")` is `'it''s'`.
pub use carto_quote::{ident as quote_ident, literal as quote_literal};
pub use client::{Client, ClientBuilder};
pub use copy::{
    CopyClient, CopyFromOutcome, CopyFromSink, CopyToStream, Parts, PartsFormat, PartsOutcome,
    DEFAULT_CHUNK_SIZE, DEFAULT_GZIP_LEVEL, DEFAULT_PART_SIZE,
};
pub use credentials::Credentials;
pub use error::{Error, RateLimit, Result};
pub use progress::{Progress, ProgressUpdate};
pub use retry::RetryPolicy;
pub use rows::{Geometry, Point};
pub use sql::{Format, SqlClient, SqlResponse};
