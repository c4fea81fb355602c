//! COPY FROM: the request body, gunzipped on the fly when it says so, streamed into
//! `COPY ... FROM STDIN` with back-pressure. Nothing holds more than one chunk at a time.
//!
//! COPY is one statement: any failure (bad row, quota, size limit, timeout, client gone) aborts
//! it, so no row of the upload is committed, and the connection that ran it is discarded.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_compression::tokio::bufread::GzipDecoder;
use axum::body::{Body, BodyDataStream};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;

use super::{BodyEncoding, Upload};
use crate::error::ApiError;

/// How much decoded data is read from the gzip decoder at a time.
const DECODED_CHUNK: usize = 64 * 1024;

/// After a failure, how long the rest of an upload is read and thrown away so the client,
/// still sending, gets to read the error instead of a reset connection.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Limits applied to one upload.
#[derive(Debug, Clone)]
pub(crate) struct UploadLimits {
    /// Maximum bytes received (compressed, if gzip).
    pub max_post_size: u64,
    /// How the limit is named in the error message (e.g. `2 GB`).
    /// Decoded bytes the user's quota still allows; `None` = unlimited.
    pub quota_remaining: Option<u64>,
    /// Largest body once gunzipped, in bytes; `None` = no limit of its own.
    pub max_decompressed: Option<u64>,
}

/// Why an upload stopped before PostgreSQL saw all of it.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    /// The client went away or sent a broken body.
    #[error("the client's body broke off: {0}")]
    Client(String),
    /// More bytes arrived than the maximum POST size.
    #[error("the body is larger than the maximum POST size")]
    TooLarge,
    /// The gzip data is broken.
    #[error("the body's gzip data is broken: {0}")]
    Gunzip(String),
}

/// How a maximum POST size is named in its error: upstream's default as upstream names it
/// (`2 GB`), any other in bytes.
fn size_label(bytes: u64) -> String {
    if bytes == crate::DEFAULT_MAX_POST_SIZE {
        "2 GB".into()
    } else {
        format!("{bytes} bytes")
    }
}

/// The request body as a stream of raw bytes that enforces the maximum POST size.
struct RawBody {
    inner: BodyDataStream,
    received: u64,
    limit: u64,
    failed: bool,
}

impl Stream for RawBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if self.received > self.limit {
                    self.failed = true;
                    return Poll::Ready(Some(Err(io::Error::other(UploadError::TooLarge))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.failed = true;
                let error = UploadError::Client(error.to_string());
                Poll::Ready(Some(Err(io::Error::other(error))))
            }
            other => other.map(|o| o.map(|r| r.map_err(io::Error::other))),
        }
    }
}

/// The decoded bytes of the upload.
enum Source {
    Plain(RawBody),
    Gzip(Box<GzipDecoder<StreamReader<RawBody, Bytes>>>),
}

impl Source {
    fn new(body: Body, gzip: bool, limit: u64) -> Self {
        let raw = RawBody {
            inner: body.into_data_stream(),
            received: 0,
            limit,
            failed: false,
        };
        if gzip {
            let mut decoder = GzipDecoder::new(StreamReader::new(raw));
            // Like gunzip, accept concatenated members.
            decoder.multiple_members(true);
            Source::Gzip(Box::new(decoder))
        } else {
            Source::Plain(raw)
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, UploadError> {
        match self {
            Source::Plain(raw) => match raw.next().await {
                None => Ok(None),
                Some(Ok(chunk)) => Ok(Some(chunk)),
                Some(Err(error)) => Err(classify(error)),
            },
            Source::Gzip(decoder) => {
                let mut buf = BytesMut::with_capacity(DECODED_CHUNK);
                match decoder.read_buf(&mut buf).await {
                    Ok(0) => Ok(None),
                    Ok(_) => Ok(Some(buf.freeze())),
                    Err(error) => Err(classify(error)),
                }
            }
        }
    }

    /// Reads and discards what the client still sends, within the size limit and
    /// [`DRAIN_TIME`].
    async fn drain(self) {
        let mut raw = match self {
            Source::Plain(raw) => raw,
            Source::Gzip(decoder) => decoder.into_inner().into_inner(),
        };
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(_)) = raw.next().await {}
        })
        .await;
    }
}

/// Tells a failure of the body (client, size limit) from one of the gzip data.
fn classify(error: io::Error) -> UploadError {
    if error
        .get_ref()
        .is_some_and(|inner| inner.is::<UploadError>())
    {
        return match error
            .into_inner()
            .map(|inner| inner.downcast::<UploadError>())
        {
            Some(Ok(inner)) => *inner,
            _ => UploadError::Client("broken request body".into()),
        };
    }
    UploadError::Gunzip(zlib_message(&error))
}

/// zlib's wording for a decoding failure, which clients of upstream may match on.
fn zlib_message(error: &io::Error) -> String {
    let text = error.to_string().to_lowercase();
    if error.kind() == io::ErrorKind::UnexpectedEof || text.contains("unexpected end") {
        "unexpected end of file".into()
    } else if text.contains("header") {
        "incorrect header check".into()
    } else if text.contains("crc") || text.contains("checksum") || text.contains("length") {
        "incorrect data check".into()
    } else {
        format!("invalid compressed data ({text})")
    }
}

/// Streams `body` into `COPY` `sql` on `client`, returning the number of rows copied (which
/// may be 0).
///
/// The caller discards the connection whenever this returns an error: the COPY may have been
/// aborted half-way.
pub async fn stream_body(
    client: &tokio_postgres::Client,
    upload: Upload,
    limits: &UploadLimits,
) -> Result<u64, ApiError> {
    let Upload {
        sql,
        body,
        encoding,
    } = upload;
    let sql = sql.as_str();
    let gzip = encoding == BodyEncoding::Gzip;
    let mut source = Source::new(body, gzip, limits.max_post_size);
    let sink = match client.copy_in::<_, Bytes>(sql).await {
        Ok(sink) => sink,
        Err(error) => {
            source.drain().await;
            return Err(ApiError::from_pg(&error));
        }
    };
    // Boxed, not pinned on the stack, so that dropping it really drops it (and aborts).
    let mut sink = Box::pin(sink);
    let mut decoded: u64 = 0;
    let failure = loop {
        let chunk = match source.next_chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break None,
            Err(UploadError::Client(reason)) => {
                tracing::info!(%reason, "client went away during COPY FROM");
                // Nobody is left to read an answer; dropping the sink aborts the COPY.
                return Err(ApiError::bad_request("Connection closed by client"));
            }
            Err(UploadError::TooLarge) => {
                break Some(ApiError::bad_request(format!(
                    "COPY FROM maximum POST size of {} exceeded",
                    size_label(limits.max_post_size)
                )))
            }
            Err(UploadError::Gunzip(message)) => {
                break Some(ApiError::bad_request(format!(
                    "Error while gunzipping: {message}"
                )))
            }
        };
        decoded += chunk.len() as u64;
        if let Some(max) = limits.max_decompressed.filter(|max| decoded > *max) {
            break Some(ApiError::bad_request(format!(
                "COPY FROM maximum decompressed size of {max} bytes exceeded"
            )));
        }
        if limits.quota_remaining.is_some_and(|quota| decoded > quota) {
            break Some(ApiError::bad_request("DB Quota exceeded"));
        }
        if let Err(error) = sink.send(chunk).await {
            break Some(ApiError::from_pg(&error));
        }
    };
    if let Some(error) = failure {
        // Dropping the unfinished sink sends CopyFail: nothing of this upload is committed.
        drop(sink);
        source.drain().await;
        return Err(error);
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| ApiError::from_pg(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_wording() {
        let header = io::Error::new(io::ErrorKind::InvalidData, "Invalid gzip header");
        assert_eq!(zlib_message(&header), "incorrect header check");
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(zlib_message(&eof), "unexpected end of file");
        let crc = io::Error::new(io::ErrorKind::InvalidData, "CRC computed does not match");
        assert_eq!(zlib_message(&crc), "incorrect data check");
    }
}
