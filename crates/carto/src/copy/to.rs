//! COPY TO: the download stream, and the appended error at its end.
//!
//! When a COPY fails after its first bytes went out, the status is already 200, so the
//! server appends its JSON error object (`{"error":[...],...}`) to the data and ends the
//! body. To keep that object out of the caller's data, the stream holds back the last
//! [`TAIL_WINDOW`] bytes or more: only when the body has ended does it know whether they end
//! with such an object.
//!
//! Telling the object from data: COPY text and CSV output end every row with `\n`, so data
//! never ends with `}`; binary output ends with its `\xff\xff` trailer. The stream's last
//! bytes are taken for the error object only if they parse entirely as a JSON object with an
//! `error` member and start at the stream's start, after a `\n`, or (binary format) anywhere.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::GzipDecoder;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};

use super::CopyClient;
use crate::download::{temp_path, Undo, UndoAction};
use crate::error::{ApiErrorBody, Error, Result};
use crate::progress::{Direction, Tracker};
use crate::sql::MAX_GET_QUERY_LEN;

/// Bytes held back at the end of a download. The server's error object is a message plus
/// PostgreSQL's DETAIL and HINT, a few hundred bytes as a rule; 64 KiB leaves a wide margin.
pub(crate) const TAIL_WINDOW: usize = 64 * 1024;

/// Writes to a file are gathered into this much: each write of a `tokio::fs::File` is a trip
/// to the blocking thread pool, and the network hands over chunks of a few KiB.
const FILE_BUFFER: usize = 256 * 1024;

/// What starts the server's appended error object.
const ERROR_PREFIX: &[u8] = b"{\"error\":";

/// PostgreSQL's binary COPY signature.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The output of a `COPY ... TO STDOUT`: a [`Stream`] of byte chunks, from
/// [`CopyClient::copy_to`].
///
/// A failure after the data began ends the stream with an `Err` (whose
/// [`is_mid_stream`](crate::Error::is_mid_stream) is true); the server's error text is
/// never yielded as data. Dropping the stream early cancels the query on the server.
pub struct CopyToStream {
    inner: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    held: VecDeque<Bytes>,
    held_len: usize,
    first_bytes: Option<bool>,
    ended: bool,
    error: Option<Error>,
    tracker: Arc<Tracker>,
    done: bool,
}

impl std::fmt::Debug for CopyToStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyToStream")
            .field("held_len", &self.held_len)
            .field("ended", &self.ended)
            .finish()
    }
}

pub(super) async fn start(copy: &CopyClient, sql: &str) -> Result<CopyToStream> {
    let client = &copy.client;
    let url = client.endpoint("sql/copyto")?;
    let accept = if copy.gzip_level.is_some() {
        "gzip"
    } else {
        "identity"
    };
    let response = client
        .send(client.retry_policy(), || {
            let request = if sql.len() < MAX_GET_QUERY_LEN {
                client.http().get(url.clone()).query(&[("q", sql)])
            } else {
                // Long statements go in a form body (URL lengths are limited on the way).
                client.http().post(url.clone()).form(&[("q", sql)])
            };
            Ok(request
                .query(&client.auth_params())
                .header(reqwest::header::ACCEPT_ENCODING, accept))
        })
        .await?;
    let gzipped = crate::client::is_gzipped(&response);
    let tracker = Tracker::new(Direction::Download, copy.progress.clone());
    let wire_tracker = tracker.clone();
    let wire = response
        .bytes_stream()
        .map_err(|e| Error::http(e).into_io())
        .inspect_ok(move |chunk| wire_tracker.add_wire_bytes(chunk.len()));
    let inner: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = if gzipped {
        let decoder = GzipDecoder::new(StreamReader::new(wire));
        Box::pin(ReaderStream::with_capacity(decoder, copy.chunk_size))
    } else {
        Box::pin(wire)
    };
    Ok(CopyToStream {
        inner,
        held: VecDeque::new(),
        held_len: 0,
        first_bytes: None,
        ended: false,
        error: None,
        tracker,
        done: false,
    })
}

impl CopyToStream {
    /// The stream as an `AsyncRead`; a failure is an `io::Error` wrapping the
    /// [`Error`](crate::Error).
    pub fn into_async_read(self) -> impl AsyncRead + Send + Unpin {
        StreamReader::new(self.map_err(Error::into_io))
    }

    /// Hands out a held chunk if enough bytes follow it to cover the tail window.
    fn release(&mut self) -> Option<Bytes> {
        let front = self.held.front()?.len();
        if self.held_len - front >= TAIL_WINDOW {
            self.held_len -= front;
            self.held.pop_front()
        } else {
            None
        }
    }

    /// The body has ended: split an appended error object off the held bytes.
    fn settle(&mut self) {
        let mut all = BytesMut::with_capacity(self.held_len);
        for chunk in self.held.drain(..) {
            all.extend_from_slice(&chunk);
        }
        let mut all = all.freeze();
        if let Some((at, body)) = appended_error(&all, self.first_bytes == Some(true)) {
            self.error = Some(Error::mid_stream(body));
            all.truncate(at);
        }
        self.held_len = all.len();
        if !all.is_empty() {
            self.held.push_back(all);
        }
    }

    fn hand_out(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes>>> {
        self.tracker.add_bytes(chunk.len());
        self.tracker.tick();
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Stream for CopyToStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.ended {
                if let Some(chunk) = this.held.pop_front() {
                    this.held_len -= chunk.len();
                    return this.hand_out(chunk);
                }
                this.done = true;
                return match this.error.take() {
                    Some(error) => Poll::Ready(Some(Err(error))),
                    None => {
                        this.tracker.finish(None);
                        Poll::Ready(None)
                    }
                };
            }
            if let Some(chunk) = this.release() {
                return this.hand_out(chunk);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    if this.first_bytes.is_none() {
                        this.first_bytes = Some(chunk.starts_with(BINARY_SIGNATURE));
                    }
                    this.held_len += chunk.len();
                    this.held.push_back(chunk);
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::io(error))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    this.settle();
                }
            }
        }
    }
}

/// Where an appended error object starts in `tail` (the last bytes of a body), and the
/// object, if the tail ends with one.
fn appended_error(tail: &[u8], binary: bool) -> Option<(usize, ApiErrorBody)> {
    if tail.last() != Some(&b'}') {
        return None;
    }
    let at = tail
        .windows(ERROR_PREFIX.len())
        .rposition(|w| w == ERROR_PREFIX)?;
    if !(at == 0 || binary || tail[at - 1] == b'\n') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&tail[at..]).ok()?;
    if !value.get("error").is_some_and(|e| e.is_array()) {
        return None;
    }
    let body: ApiErrorBody = serde_json::from_value(value).ok()?;
    Some((at, body))
}

pub(super) async fn to_writer<W>(copy: &CopyClient, sql: &str, writer: &mut W) -> Result<u64>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    to_writer_inspecting(copy, sql, writer, &mut |_| {}).await
}

/// [`to_writer`], showing each chunk to `inspect` before writing it.
async fn to_writer_inspecting<W>(
    copy: &CopyClient,
    sql: &str,
    writer: &mut W,
    inspect: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<u64>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut stream = start(copy, sql).await?;
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        inspect(&chunk);
        writer.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    writer.flush().await?;
    Ok(written)
}

pub(super) async fn to_file(
    copy: &CopyClient,
    sql: &str,
    path: &Path,
    append: bool,
    inspect: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<u64> {
    if append {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let before = file.metadata().await?.len();
        let mut undo = Undo(Some(UndoAction::Truncate(path.to_path_buf(), before)));
        let mut buffered = tokio::io::BufWriter::with_capacity(FILE_BUFFER, &mut file);
        let written = to_writer_inspecting(copy, sql, &mut buffered, inspect).await;
        drop(buffered);
        match written {
            Ok(n) => {
                file.sync_all().await?;
                undo.disarm();
                Ok(n)
            }
            Err(error) => {
                // Cut the file back so it holds no partial output.
                let _ = file.set_len(before).await;
                let _ = file.seek(std::io::SeekFrom::End(0)).await;
                Err(error)
            }
        }
    } else {
        let temp = temp_path(path);
        let mut undo = Undo(Some(UndoAction::Remove(temp.clone())));
        let mut file = tokio::fs::File::create(&temp).await?;
        let mut buffered = tokio::io::BufWriter::with_capacity(FILE_BUFFER, &mut file);
        let n = to_writer_inspecting(copy, sql, &mut buffered, inspect).await?;
        drop(buffered);
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, path).await?;
        undo.disarm();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_error_after_text_rows() {
        let tail = b"1\t2\n3\t4\n{\"error\":[\"division by zero\"]}";
        let (at, body) = appended_error(tail, false).unwrap();
        assert_eq!(&tail[..at], b"1\t2\n3\t4\n");
        assert_eq!(body.error, ["division by zero"]);
    }

    #[test]
    fn data_looking_like_an_error_is_data() {
        // A row ending with a newline is a row, whatever it holds.
        assert!(appended_error(b"{\"error\":[\"x\"]}\n", false).is_none());
        // Not after a newline in text format: part of a row.
        assert!(appended_error(b"a\t{\"error\":[\"x\"]}", false).is_none());
        // Not a whole JSON object.
        assert!(appended_error(b"1\n{\"error\":[\"x\"]} }", false).is_none());
        assert!(appended_error(b"", false).is_none());
    }

    #[test]
    fn binary_error_may_follow_any_byte() {
        let tail = b"\x00\x01\xff{\"error\":[\"boom\"],\"detail\":\"d\"}";
        let (at, body) = appended_error(tail, true).unwrap();
        assert_eq!(at, 3);
        assert_eq!(body.detail.as_deref(), Some("d"));
    }
}
