//! COPY TO: `COPY ... TO STDOUT` output streamed to the client as PostgreSQL sends it.
//!
//! The status is decided when the COPY starts: an error before the first byte is an ordinary
//! error answer. An error after that is appended to the body as the spec's JSON error object,
//! and the stream ends. If the client goes away, the stream is dropped, which cancels the
//! backend's query and discards the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use deadpool_postgres::Object;
use futures::{Stream, StreamExt};
use tokio_postgres::CopyOutStream;

use crate::db::discard;
use crate::error::ApiError;

/// The body of a copyto answer: the COPY data, then possibly an appended error.
pub struct CopyToBody {
    client: Option<Object>,
    inner: Pin<Box<CopyOutStream>>,
    buffer: BytesMut,
    finished: bool,
}

/// Largest chunk handed to hyper (the SDK's and `/sql`'s chunk size too).
const CHUNK: usize = 64 * 1024;

/// Starts `sql` (a checked `COPY ... TO STDOUT`) on `client`.
pub async fn start(client: Object, sql: &str) -> Result<CopyToBody, ApiError> {
    match client.copy_out(sql).await {
        Ok(stream) => Ok(CopyToBody {
            client: Some(client),
            inner: Box::pin(stream),
            buffer: BytesMut::new(),
            finished: false,
        }),
        Err(error) => {
            discard(client);
            Err(ApiError::from_pg(&error))
        }
    }
}

impl Stream for CopyToBody {
    type Item = Result<Bytes, std::io::Error>;

    /// PostgreSQL sends one CopyData message per row; passed on one by one they become one
    /// HTTP chunk (and one write) per row. Rows that are already here are gathered into
    /// chunks of up to `CHUNK` (64 KiB); whatever is gathered goes out as soon as PostgreSQL pauses.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.buffer.extend_from_slice(&chunk);
                    if self.buffer.len() >= CHUNK {
                        return Poll::Ready(Some(Ok(self.buffer.split().freeze())));
                    }
                }
                Poll::Pending if self.buffer.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Some(Ok(self.buffer.split().freeze()))),
                Poll::Ready(None) => {
                    // Done: the connection goes back to the pool in a clean state.
                    self.finished = true;
                    self.client.take();
                    if self.buffer.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(self.buffer.split().freeze())));
                }
                Poll::Ready(Some(Err(error))) => {
                    self.finished = true;
                    if let Some(client) = self.client.take() {
                        discard(client);
                    }
                    let error = ApiError::from_pg(&error);
                    tracing::info!(error = %error, "COPY TO failed after streaming began");
                    self.buffer.extend_from_slice(error.to_json().as_bytes());
                    return Poll::Ready(Some(Ok(self.buffer.split().freeze())));
                }
            }
        }
    }
}

impl Drop for CopyToBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away. Cancel the query and close the
        // connection so the backend is freed and never reused mid-COPY.
        if let Some(client) = self.client.take() {
            tracing::info!("client went away during COPY TO; cancelling");
            discard(client);
        }
    }
}
