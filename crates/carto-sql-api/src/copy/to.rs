//! COPY TO: `COPY ... TO STDOUT` output streamed to the client as PostgreSQL sends it.
//!
//! The status is decided when the COPY starts: an error before the first byte is an ordinary
//! error answer. An error after that is appended to the body as the spec's JSON error object,
//! and the stream ends. If the client goes away, the stream is dropped, which cancels the
//! backend's query and discards the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use deadpool_postgres::Object;
use futures::{Stream, StreamExt};
use tokio_postgres::CopyOutStream;

use crate::db::discard;
use crate::error::ApiError;

/// The body of a copyto answer: the COPY data, then possibly an appended error.
pub struct CopyToBody {
    client: Option<Object>,
    inner: Pin<Box<CopyOutStream>>,
    finished: bool,
}

/// Starts `sql` (a checked `COPY ... TO STDOUT`) on `client`.
pub async fn copy_to(client: Object, sql: &str) -> Result<CopyToBody, ApiError> {
    match client.copy_out(sql).await {
        Ok(stream) => Ok(CopyToBody {
            client: Some(client),
            inner: Box::pin(stream),
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

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(None) => {
                // Done: the connection goes back to the pool in a clean state.
                self.finished = true;
                self.client.take();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                self.finished = true;
                if let Some(client) = self.client.take() {
                    discard(client);
                }
                let error = ApiError::from_pg(&error);
                tracing::info!(error = %error, "COPY TO failed after streaming began");
                Poll::Ready(Some(Ok(Bytes::from(error.to_json()))))
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
