//! COPY FROM: the upload pipeline.
//!
//! source (sink channel, stream, reader or file) → byte counter → gzip (level 1 by default)
//! → chunks of `chunk_size` → chunked HTTP body. Each stage pulls from the one before, so a
//! slow server slows the source instead of filling memory.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_compression::tokio::bufread::GzipEncoder;
use async_compression::Level;
use bytes::{Bytes, BytesMut};
use futures::{Sink, Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::io::{ReaderStream, StreamReader};
use tokio_util::sync::PollSender;

use super::CopyClient;
use crate::error::{Error, Result};
use crate::progress::{Direction, Tracker};
use crate::retry::RetryPolicy;
use crate::rows::{copy_statement, RowEncoder};

/// Chunks waiting between a sink and the HTTP body: small, it is the back-pressure.
const SINK_CHANNEL_CHUNKS: usize = 2;

/// The server's answer to a successful upload.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct CopyFromOutcome {
    /// Rows the COPY loaded.
    pub total_rows: u64,
    /// Seconds the server spent.
    pub time: f64,
}

type BoxReader = Pin<Box<dyn AsyncRead + Send>>;

/// The first error of an upload's source, kept to be returned instead of the transport
/// error it causes (the body failing breaks the request off).
type Failure = Arc<std::sync::Mutex<Option<std::io::Error>>>;

/// The HTTP body for `source`: counted, compressed as configured, cut into chunks.
fn body(
    copy: &CopyClient,
    source: BoxReader,
    tracker: Arc<Tracker>,
    failure: Failure,
) -> reqwest::Body {
    let counted = Counted {
        inner: source,
        tracker: tracker.clone(),
    };
    let chunks: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = match copy.gzip_level {
        Some(level) => {
            let buffered = BufReader::with_capacity(copy.chunk_size, counted);
            let encoder = GzipEncoder::with_quality(buffered, Level::Precise(level as i32));
            Box::pin(ReaderStream::with_capacity(encoder, copy.chunk_size))
        }
        None => Box::pin(ReaderStream::with_capacity(counted, copy.chunk_size)),
    };
    let chunks = chunks
        .inspect_ok(move |chunk| {
            tracker.add_wire_bytes(chunk.len());
            tracker.tick();
        })
        .map_err(move |error| {
            let message = error.to_string();
            if let Ok(mut slot) = failure.lock() {
                slot.get_or_insert(error);
            }
            std::io::Error::other(message)
        });
    reqwest::Body::wrap_stream(chunks)
}

/// Sends one upload of `source` (made anew for each attempt), reads the outcome and
/// reports the transfer finished.
async fn send(
    copy: &CopyClient,
    sql: &str,
    retry: &RetryPolicy,
    source: impl FnMut() -> Result<BoxReader>,
    tracker: Arc<Tracker>,
) -> Result<CopyFromOutcome> {
    let outcome = post(copy, sql, retry, source, tracker.clone()).await?;
    tracker.finish(Some(outcome.total_rows));
    Ok(outcome)
}

/// Sends one upload of `source` (made anew for each attempt) and reads the outcome.
async fn post(
    copy: &CopyClient,
    sql: &str,
    retry: &RetryPolicy,
    mut source: impl FnMut() -> Result<BoxReader>,
    tracker: Arc<Tracker>,
) -> Result<CopyFromOutcome> {
    let client = &copy.client;
    let url = client.endpoint("sql/copyfrom")?;
    let failure = Failure::default();
    let sent = client
        .send(retry, || {
            let mut request = client
                .http()
                .post(url.clone())
                .query(&client.auth_params())
                .query(&[("q", sql)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body(copy, source()?, tracker.clone(), failure.clone()));
            if copy.gzip_level.is_some() {
                request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            Ok(request)
        })
        .await;
    let source_failure = failure.lock().ok().and_then(|mut slot| slot.take());
    let response = match (sent, source_failure) {
        (Ok(response), _) => response,
        // The source failed: that, not the broken-off request, is the cause.
        (Err(_), Some(error)) => return Err(Error::io(error)),
        (Err(error), None) => return Err(error),
    };
    let bytes = response.bytes().await.map_err(Error::http)?;
    let outcome: CopyFromOutcome = serde_json::from_slice(&bytes).map_err(|e| {
        Error::decode(format!(
            "copyfrom answered {}",
            String::from_utf8_lossy(&bytes)
        ))
        .with_source(e)
    })?;
    Ok(outcome)
}

fn tracker(copy: &CopyClient) -> Arc<Tracker> {
    Tracker::new(Direction::Upload, copy.progress.clone())
}

/// Hands out `source` once; a second attempt (which the never-retry policy prevents) fails.
fn once(source: BoxReader) -> impl FnMut() -> Result<BoxReader> {
    let mut source = Some(source);
    move || source.take().ok_or_else(Error::aborted)
}

pub(super) async fn upload_reader<R>(
    copy: &CopyClient,
    sql: &str,
    reader: R,
) -> Result<CopyFromOutcome>
where
    R: AsyncRead + Send + 'static,
{
    send(
        copy,
        sql,
        &RetryPolicy::never(),
        once(Box::pin(reader)),
        tracker(copy),
    )
    .await
}

pub(super) async fn upload_stream<S, E>(
    copy: &CopyClient,
    sql: &str,
    stream: S,
) -> Result<CopyFromOutcome>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let reader = StreamReader::new(stream.map_err(|e| std::io::Error::other(e.into())));
    upload_reader(copy, sql, reader).await
}

pub(super) async fn upload_file(
    copy: &CopyClient,
    sql: &str,
    path: &Path,
) -> Result<CopyFromOutcome> {
    // Opened up front so a missing file is reported before any request is made.
    let first = std::fs::File::open(path)?;
    let mut first = Some(first);
    let tracker = tracker(copy);
    let attempt_tracker = tracker.clone();
    let source = || -> Result<BoxReader> {
        let file = match first.take() {
            Some(file) => file,
            None => {
                attempt_tracker.restart();
                std::fs::File::open(path)?
            }
        };
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    };
    send(copy, sql, copy.client.retry_policy(), source, tracker).await
}

/// Uploads `range` of the file at `path` into `sql`, retried (reading the range again) as
/// the client's policy allows. The transfer is not reported finished: it is one part of a
/// bigger upload.
pub(super) async fn upload_file_range(
    copy: &CopyClient,
    sql: &str,
    path: &Path,
    range: std::ops::Range<u64>,
) -> Result<CopyFromOutcome> {
    use std::io::Seek;
    use tokio::io::AsyncReadExt;
    let tracker = tracker(copy);
    let attempt_tracker = tracker.clone();
    let mut attempts = 0;
    let source = || -> Result<BoxReader> {
        if attempts > 0 {
            attempt_tracker.restart();
        }
        attempts += 1;
        let mut file = std::fs::File::open(path)?;
        file.seek(std::io::SeekFrom::Start(range.start))?;
        let part = tokio::fs::File::from_std(file).take(range.end - range.start);
        Ok(Box::pin(part))
    };
    post(copy, sql, copy.client.retry_policy(), source, tracker).await
}

pub(super) async fn upload_rows<S, T>(
    copy: &CopyClient,
    table: &str,
    columns: &[&str],
    rows: S,
) -> Result<CopyFromOutcome>
where
    S: Stream<Item = T>,
    T: Serialize,
{
    let mut sink = start_sink(copy, &copy_statement(table, columns))?;
    let mut encoder = RowEncoder::new(columns.iter().map(|c| c.to_string()).collect());
    let mut buffer = BytesMut::with_capacity(copy.chunk_size);
    let mut rows = std::pin::pin!(rows);
    let mut count = 0u64;
    while let Some(row) = rows.next().await {
        // An encoding error drops the sink unfinished: the server rolls back.
        encoder.encode(&row, &mut buffer)?;
        count += 1;
        if buffer.len() >= copy.chunk_size {
            sink.tracker.add_rows(count);
            count = 0;
            sink.send(buffer.split().freeze()).await?;
        }
    }
    sink.tracker.add_rows(count);
    if !buffer.is_empty() {
        sink.send(buffer.freeze()).await?;
    }
    sink.finish().await
}

/// An upload in progress: a [`Sink`] of byte chunks, from [`CopyClient::copy_from`].
///
/// Send data with [`CopyFromSink::send`] (or the `Sink` trait: `feed`, `send_all`, ...),
/// then [`finish`](Self::finish) to learn the outcome (closing it through the `Sink`
/// trait also ends the data; `finish` still gives the outcome). Small chunks are merged
/// into chunks of the client's chunk size before they are sent (`flush` sends what is
/// merged so far); chunks of that size or more pass through as they are. Until `finish`,
/// nothing is committed: dropping the sink, or [`abort`](Self::abort), breaks the request
/// off and the server rolls the COPY back.
pub struct CopyFromSink {
    sender: PollSender<Bytes>,
    merged: BytesMut,
    chunk_size: usize,
    finished: Arc<AtomicBool>,
    task: Option<JoinHandle<Result<CopyFromOutcome>>>,
    pub(crate) tracker: Arc<Tracker>,
}

impl std::fmt::Debug for CopyFromSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyFromSink")
            .field("finished", &self.finished.load(Ordering::Relaxed))
            .finish()
    }
}

pub(super) fn start_sink(copy: &CopyClient, sql: &str) -> Result<CopyFromSink> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(SINK_CHANNEL_CHUNKS);
    let finished = Arc::new(AtomicBool::new(false));
    let end = finished.clone();
    // The channel closing is a clean end only if `finish` said so first; otherwise (the
    // sink dropped) the body fails, the request is broken off, and the server rolls back.
    let chunks = futures::stream::unfold(
        (receiver, end, false),
        |(mut receiver, end, done)| async move {
            if done {
                return None;
            }
            match receiver.recv().await {
                Some(chunk) => Some((Ok(chunk), (receiver, end, false))),
                None if end.load(Ordering::SeqCst) => None,
                None => Some((
                    Err(std::io::Error::other(Error::aborted())),
                    (receiver, end, true),
                )),
            }
        },
    );
    let reader: BoxReader = Box::pin(StreamReader::new(chunks));
    let tracker = tracker(copy);
    let chunk_size = copy.chunk_size;
    let copy = copy.clone();
    let sql = sql.to_string();
    let task_tracker = tracker.clone();
    let task = tokio::spawn(async move {
        send(
            &copy,
            &sql,
            &RetryPolicy::never(),
            once(reader),
            task_tracker,
        )
        .await
    });
    Ok(CopyFromSink {
        sender: PollSender::new(sender),
        merged: BytesMut::new(),
        chunk_size,
        finished,
        task: Some(task),
        tracker,
    })
}

impl CopyFromSink {
    /// Queues one chunk, waiting while the connection is busy. Small chunks are merged and
    /// go out once a full chunk has gathered (or on `flush`/`finish`), unlike
    /// `SinkExt::send`, which flushes after every item.
    pub async fn send(&mut self, chunk: impl Into<Bytes>) -> Result<()> {
        futures::SinkExt::feed(self, chunk.into()).await
    }

    /// Ends the data and waits for the server's outcome. Only now is the COPY committed.
    pub async fn finish(mut self) -> Result<CopyFromOutcome> {
        futures::SinkExt::flush(&mut self).await?;
        self.finished.store(true, Ordering::SeqCst);
        self.sender.close();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|_| Err(Error::aborted())),
            None => Err(Error::aborted()),
        }
    }

    /// Breaks the upload off and waits until the request is gone: the server rolls the
    /// COPY back. Dropping the sink does the same without waiting.
    pub async fn abort(mut self) {
        self.sender.close();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The request ended early (the server refused or failed): its error.
    fn poll_task_error(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        match self.task.as_mut() {
            Some(task) => {
                let outcome = ready!(Pin::new(task).poll(cx));
                self.task = None;
                Poll::Ready(match outcome {
                    Ok(Err(error)) => error,
                    _ => Error::aborted(),
                })
            }
            None => Poll::Ready(Error::aborted()),
        }
    }
}

impl CopyFromSink {
    /// Waits for a free slot in the channel to the request.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.task.as_ref().map_or(true, |t| t.is_finished()) {
            return self.poll_task_error(cx).map(Err);
        }
        match self.sender.poll_reserve(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(_)) => self.poll_task_error(cx).map(Err),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends merged bytes in pieces of the chunk size while there are `at_least` of them
    /// (1: everything).
    fn poll_send_merged(&mut self, cx: &mut Context<'_>, at_least: usize) -> Poll<Result<()>> {
        while !self.merged.is_empty() && self.merged.len() >= at_least {
            ready!(self.poll_slot(cx))?;
            let n = self.merged.len().min(self.chunk_size);
            let chunk = self.merged.split_to(n).freeze();
            self.sender.send_item(chunk).map_err(|_| Error::aborted())?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Sink<Bytes> for CopyFromSink {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let full = self.chunk_size;
        ready!(self.poll_send_merged(cx, full))?;
        // A slot is held for the next item, which may pass through unmerged.
        self.poll_slot(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        if self.merged.is_empty() && item.len() >= self.chunk_size {
            return self.sender.send_item(item).map_err(|_| Error::aborted());
        }
        self.sender.abort_send();
        self.merged.extend_from_slice(&item);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_send_merged(cx, 1)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_send_merged(cx, 1))?;
        // Closing is the end of the data, as `finish` says it (`forward` and `send_all`
        // close their sink when the stream ends); `finish` then gives the outcome.
        self.finished.store(true, Ordering::SeqCst);
        self.sender.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for CopyFromSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            if !self.finished.load(Ordering::SeqCst) {
                task.abort();
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts the bytes read from an upload's source.
    struct Counted {
        #[pin]
        inner: BoxReader,
        tracker: Arc<Tracker>,
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        this.tracker.add_bytes(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}
