//! Runs a request's statements on one connection and streams the encoded document.
//!
//! A task owns the connection. It prepares each statement (to learn its column types), runs it
//! with the simple protocol as a stream of rows, encodes rows into a buffer and sends the buffer
//! on in chunks through a small bounded channel: a slow client slows the task, which stops
//! reading from PostgreSQL, so memory stays bounded whatever the result size.
//!
//! The first thing sent decides the HTTP status: an error before any row was encoded is sent
//! as the error itself (an ordinary error answer); once a row has been encoded the status is
//! 200 and a later error closes the document with an `error` member (spec §4.5). If the
//! response is dropped (client gone), the channel closes, the task stops at once and the
//! connection is discarded, which cancels the backend's query.

use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::Object;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::SimpleQueryMessage;

use super::format::{Column, Encoder, Summary};
use super::guard;
use super::values::{field, ValueKind};
use crate::db::{discard, set_statement_timeout, Notices};
use crate::error::ApiError;

/// Output is sent on once this many bytes are buffered (or sooner, when PostgreSQL pauses).
/// Large enough that per-chunk costs vanish next to per-row work, small enough that a few
/// chunks in flight are negligible memory.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the query task and the HTTP response.
const CHANNEL: usize = 4;

/// One statement to run.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Its SQL.
    pub sql: String,
    /// Whether its rows are shown (the JSON format shows every result set; GeoJSON and CSV
    /// only the last statement's).
    pub emit: bool,
}

/// What to run, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The statements, in order.
    pub statements: Vec<Statement>,
    /// Run them in one transaction (several statements without their own BEGIN/COMMIT).
    pub wrap_in_transaction: bool,
    /// The statements control transactions themselves, so the connection may be left inside
    /// one and must not be reused.
    pub controls_transactions: bool,
    /// Apply the system-table guard (non-master keys).
    pub guard: bool,
    /// Columns dropped from the output.
    pub skipfields: Vec<String>,
    /// `statement_timeout` to set first, if any.
    pub statement_timeout: Option<Duration>,
}

/// An item of the response body: bytes, or an error (only as the very first item, or after
/// rows in a format that cannot carry it, to cut the response short).
pub type Item = Result<Bytes, ApiError>;

/// Starts `plan` on `client`, encoding with `encoder`. Waits until the status is known: an
/// error before any row is returned as such; otherwise the stream yields the whole document.
/// `notices`, if given, collects the server messages the statements raise.
pub async fn start(
    client: Object,
    plan: Plan,
    encoder: Box<dyn Encoder>,
    notices: Option<Notices>,
) -> Result<impl Stream<Item = Item> + Send + 'static, ApiError> {
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    tokio::spawn(run(client, plan, encoder, notices, tx));
    match rx.recv().await {
        None => Err(ApiError::internal("query task ended without an answer")),
        Some(Err(error)) => Err(error),
        Some(Ok(first)) => {
            let rest = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Ok(futures::stream::once(async move { Ok(first) }).chain(rest))
        }
    }
}

/// Why running stopped early.
enum Failure {
    /// The response was dropped: the client went away.
    Gone,
    /// A statement (or the guard) failed.
    Error(ApiError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Error(ApiError::from_pg(&error))
    }
}

/// The output buffer and the channel it drains into.
struct Output {
    tx: mpsc::Sender<Item>,
    buf: Vec<u8>,
    /// A row has been encoded: the answer is a 200 from now on.
    streaming: bool,
}

impl Output {
    /// Sends what is buffered, if the answer has started.
    async fn flush(&mut self) -> Result<(), Failure> {
        if !self.streaming || self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK + CHUNK / 4),
        ));
        self.tx.send(Ok(chunk)).await.map_err(|_| Failure::Gone)
    }
}

/// Columns of the last result set and the count to report.
#[derive(Default)]
struct Progress {
    fields: Vec<Column>,
    total_rows: u64,
}

async fn run(
    client: Object,
    plan: Plan,
    mut encoder: Box<dyn Encoder>,
    mut notices: Option<Notices>,
    tx: mpsc::Sender<Item>,
) {
    let started = Instant::now();
    let closed = tx.clone();
    let mut out = Output {
        tx,
        buf: Vec::with_capacity(CHUNK + CHUNK / 4),
        streaming: false,
    };
    let mut progress = Progress::default();
    encoder.head(&mut out.buf);
    let outcome = tokio::select! {
        biased;
        _ = closed.closed() => Err(Failure::Gone),
        result = execute(&client, &plan, encoder.as_mut(), &mut out, &mut progress) => result,
    };
    drop(closed);
    // Every message of the statements arrived before their results ended.
    // The listener goes before the connection does: its next user installs its own.
    let notices = notices.take().map(|mut n| n.drain()).unwrap_or_default();
    let notices = notices.as_slice();
    match outcome {
        Ok(()) => {
            // Hand the connection back before the last bytes, which may wait on a slow client.
            if plan.controls_transactions {
                discard(client);
            } else {
                drop(client);
            }
            let summary = Summary {
                time: started.elapsed().as_secs_f64(),
                total_rows: progress.total_rows,
                fields: &progress.fields,
                notices,
            };
            encoder.tail(&summary, None, &mut out.buf);
            out.streaming = true;
            let _ = out.flush().await;
            tracing::debug!(rows = progress.total_rows, "query answered");
        }
        Err(Failure::Gone) => {
            tracing::info!("client went away during /sql; cancelling the query");
            discard(client);
        }
        Err(Failure::Error(error)) => {
            discard(client);
            if !out.streaming {
                let _ = out.tx.send(Err(error)).await;
                return;
            }
            tracing::info!(error = %error, "/sql failed after streaming began");
            let summary = Summary {
                time: started.elapsed().as_secs_f64(),
                total_rows: progress.total_rows,
                fields: &progress.fields,
                notices,
            };
            let mut tail = Vec::new();
            if encoder.tail(&summary, Some(&error.message()), &mut tail) {
                out.buf.extend_from_slice(&tail);
                let _ = out.flush().await;
            } else if out.flush().await.is_ok() {
                let _ = out.tx.send(Err(error)).await;
            }
        }
    }
}

async fn execute(
    client: &Object,
    plan: &Plan,
    encoder: &mut dyn Encoder,
    out: &mut Output,
    progress: &mut Progress,
) -> Result<(), Failure> {
    if let Some(timeout) = plan.statement_timeout {
        set_statement_timeout(client, timeout).await?;
    }
    if plan.wrap_in_transaction {
        client.batch_execute("BEGIN").await?;
    }
    for statement in &plan.statements {
        run_statement(client, plan, statement, encoder, out, progress).await?;
    }
    if plan.wrap_in_transaction {
        client.batch_execute("COMMIT").await?;
    }
    Ok(())
}

async fn run_statement(
    client: &Object,
    plan: &Plan,
    statement: &Statement,
    encoder: &mut dyn Encoder,
    out: &mut Output,
    progress: &mut Progress,
) -> Result<(), Failure> {
    if plan.guard && crate::sql_text::explainable(&statement.sql) {
        // Checked right before running, so that tables created by earlier statements exist.
        let explained = client
            .simple_query(&guard::explain_sql(&statement.sql))
            .await?;
        let plan_json = explained.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.try_get(0).ok().flatten(),
            _ => None,
        });
        if plan_json.map_or(true, guard::reads_system_table) {
            return Err(Failure::Error(guard::forbidden()));
        }
    }
    progress.fields = client
        .prepare(&statement.sql)
        .await?
        .columns()
        .iter()
        .map(|c| {
            Column::new(
                c.name(),
                ValueKind::of(c.type_()),
                field(c.type_(), c.type_modifier()),
                plan.skipfields.iter().any(|s| s == c.name()),
            )
        })
        .collect();
    // Describes the statement even if it fails mid-way: the error closes its document.
    progress.total_rows = 0;
    let columns = &progress.fields;
    if statement.emit {
        encoder.columns(columns, &mut out.buf);
    }
    let stream = client.simple_query_raw(&statement.sql).await?;
    futures::pin_mut!(stream);
    let mut rows_here = 0u64;
    let mut tag = None;
    loop {
        let message = match stream.next().now_or_never() {
            Some(message) => message,
            None => {
                // PostgreSQL has nothing more for now: send what we have instead of waiting.
                out.flush().await?;
                stream.next().await
            }
        };
        match message {
            None => break,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(SimpleQueryMessage::Row(row))) => {
                rows_here += 1;
                progress.total_rows = rows_here;
                if statement.emit {
                    encoder.row(columns, &row, &mut out.buf);
                    out.streaming = true;
                    if out.buf.len() >= CHUNK {
                        out.flush().await?;
                    }
                }
            }
            Some(Ok(SimpleQueryMessage::CommandComplete(n))) => tag = Some(n),
            Some(Ok(_)) => {}
        }
    }
    progress.total_rows = match tag {
        Some(n) if n > 0 || rows_here == 0 => n,
        _ => rows_here,
    };
    Ok(())
}
