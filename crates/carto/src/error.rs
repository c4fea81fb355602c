//! The SDK's one error type.
//!
//! An opaque struct rather than a public enum, as tokio-postgres and reqwest do: callers ask
//! questions (`status()`, `is_rate_limited()`, `messages()`, ...) instead of matching
//! variants, so new cases (a new server error shape, a new transport failure) can be added
//! without breaking anyone's `match`. The cause, when there is one, is `source()`.
//!
//! No error ever holds the API key: transport errors are stripped of their URL (which carries
//! `api_key` in its query string) before they are stored.

use std::fmt;
use std::time::Duration;

use crate::batch::Job;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a CARTO SQL API.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// The server answered with an error (`status` 200 for one appended to a stream).
    Api {
        status: u16,
        body: ApiErrorBody,
        mid_stream: bool,
    },
    /// 429 with rate-limit headers.
    RateLimited {
        body: ApiErrorBody,
        limit: RateLimit,
    },
    /// Connecting, sending or receiving failed.
    Http,
    /// Reading or writing local data failed.
    Io,
    /// The base URL, key or another setting cannot be used.
    Config(String),
    /// The server's answer is not what the protocol says.
    Decode(String),
    /// A batch job ended other than `done`.
    JobFailed(Box<Job>),
    /// A COPY upload was aborted (dropped or `abort()`ed) before it finished.
    Aborted,
    /// A row could not be encoded for COPY.
    Encode(String),
}

/// The server's JSON error document: `{"error":[...],"context":...,"detail":...,"hint":...}`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct ApiErrorBody {
    #[serde(default, deserialize_with = "messages")]
    pub error: Vec<String>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
    /// carto-sql-api's `where`: PostgreSQL's CONTEXT (e.g. the line of a refused COPY row).
    #[serde(default, rename = "where")]
    pub where_: Option<String>,
}

/// `error` is a list of strings on this server, but tolerate a lone string or other values.
fn messages<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::Deserialize;
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Null => Vec::new(),
        other => vec![other.to_string()],
    })
}

impl ApiErrorBody {
    /// Reads an error answer's body: the JSON document, or else its text as the message.
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        match serde_json::from_slice::<ApiErrorBody>(bytes) {
            Ok(body) if !body.error.is_empty() => body,
            _ => {
                let text = String::from_utf8_lossy(bytes).trim().to_string();
                ApiErrorBody {
                    error: if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![text]
                    },
                    ..Default::default()
                }
            }
        }
    }
}

/// The rate-limit figures of a 429 answer (spec §8), as the server sent them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// `Carto-Rate-Limit-Limit`: requests allowed in a burst.
    pub limit: Option<u64>,
    /// `Carto-Rate-Limit-Remaining`: requests left now.
    pub remaining: Option<u64>,
    /// `Carto-Rate-Limit-Reset`: seconds until the allowance is full again.
    pub reset: Option<u64>,
    /// `Retry-After`: seconds to wait before the next request may pass.
    pub retry_after: Option<u64>,
}

impl RateLimit {
    pub(crate) fn from_headers(headers: &reqwest::header::HeaderMap) -> Self {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        RateLimit {
            limit: number("carto-rate-limit-limit"),
            remaining: number("carto-rate-limit-remaining"),
            reset: number("carto-rate-limit-reset"),
            retry_after: number("retry-after"),
        }
    }
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            inner: Box::new(Inner { kind, source: None }),
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new(Kind::Config(message.into()))
    }

    pub(crate) fn decode(message: impl Into<String>) -> Self {
        Error::new(Kind::Decode(message.into()))
    }

    pub(crate) fn encode(message: impl Into<String>) -> Self {
        Error::new(Kind::Encode(message.into()))
    }

    pub(crate) fn aborted() -> Self {
        Error::new(Kind::Aborted)
    }

    pub(crate) fn job_failed(job: Job) -> Self {
        Error::new(Kind::JobFailed(Box::new(job)))
    }

    /// A transport error, its URL (which holds the key) removed.
    pub(crate) fn http(error: reqwest::Error) -> Self {
        Error::new(Kind::Http).with_source(error.without_url())
    }

    pub(crate) fn io(error: std::io::Error) -> Self {
        // A stream error we raised ourselves travels inside io::Error through readers and
        // bodies; give it back as it was.
        if error.get_ref().is_some_and(|e| e.is::<Error>()) {
            if let Some(inner) = error.into_inner() {
                if let Ok(ours) = inner.downcast::<Error>() {
                    return *ours;
                }
            }
            return Error::new(Kind::Io);
        }
        Error::new(Kind::Io).with_source(error)
    }

    /// Wraps this error in an `io::Error`, so it can travel through readers and bodies and be
    /// recovered by [`Error::io`].
    pub(crate) fn into_io(self) -> std::io::Error {
        match self.inner.kind {
            Kind::Io if self.inner.source.is_some() => {
                match self.inner.source.map(|s| s.downcast::<std::io::Error>()) {
                    Some(Ok(io)) => *io,
                    Some(Err(other)) => std::io::Error::other(other),
                    None => std::io::Error::other("I/O error"),
                }
            }
            _ => std::io::Error::other(self),
        }
    }

    /// An error answer: status, headers and body of a response with status >= 400.
    pub(crate) fn from_response(
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Self {
        let body = ApiErrorBody::parse(body);
        let limit = RateLimit::from_headers(headers);
        let is_rate_limit = status == 429
            && (limit.retry_after.is_some() || body.detail.as_deref() == Some("rate-limit"));
        if is_rate_limit {
            Error::new(Kind::RateLimited { body, limit })
        } else {
            Error::new(Kind::Api {
                status,
                body,
                mid_stream: false,
            })
        }
    }

    /// An error the server appended to a 200 answer after streaming began.
    pub(crate) fn mid_stream(body: ApiErrorBody) -> Self {
        Error::new(Kind::Api {
            status: 200,
            body,
            mid_stream: true,
        })
    }

    fn body(&self) -> Option<&ApiErrorBody> {
        match &self.inner.kind {
            Kind::Api { body, .. } | Kind::RateLimited { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The HTTP status of an error answer (200 for an error appended to a streamed answer).
    pub fn status(&self) -> Option<u16> {
        match &self.inner.kind {
            Kind::Api { status, .. } => Some(*status),
            Kind::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// The server's messages (its `error` list); empty when the server did not answer.
    pub fn messages(&self) -> &[String] {
        self.body().map(|b| b.error.as_slice()).unwrap_or(&[])
    }

    /// The server's `context` (e.g. `limit`), when it sent one.
    pub fn context(&self) -> Option<&str> {
        self.body().and_then(|b| b.context.as_deref())
    }

    /// The server's `detail` (PostgreSQL's DETAIL, or `rate-limit`/`datasource` for limits).
    pub fn detail(&self) -> Option<&str> {
        self.body().and_then(|b| b.detail.as_deref())
    }

    /// The server's `hint` (PostgreSQL's HINT), when it sent one.
    pub fn hint(&self) -> Option<&str> {
        self.body().and_then(|b| b.hint.as_deref())
    }

    /// Where in the statement or its data PostgreSQL failed (its CONTEXT, e.g.
    /// `COPY t, line 52, column n: "x"`), when the server says (carto-sql-api does).
    pub fn where_(&self) -> Option<&str> {
        self.body().and_then(|b| b.where_.as_deref())
    }

    /// True for a 429 from the rate limiter (retrying later will pass).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.inner.kind, Kind::RateLimited { .. })
    }

    /// The rate-limit headers of a rate-limited answer.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        match &self.inner.kind {
            Kind::RateLimited { limit, .. } => Some(limit),
            _ => None,
        }
    }

    /// How long the server asked to wait (`Retry-After`), for a rate-limited answer.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rate_limit()
            .and_then(|l| l.retry_after)
            .map(Duration::from_secs)
    }

    /// True when the statement ran into the server's time limit (the 429 with
    /// `"detail":"datasource"`, or an appended error naming a statement timeout).
    pub fn is_timeout(&self) -> bool {
        match &self.inner.kind {
            Kind::Api { body, .. } => {
                body.detail.as_deref() == Some("datasource")
                    || body
                        .error
                        .iter()
                        .any(|m| m.contains("statement timeout") || m.contains("timeout error"))
            }
            _ => false,
        }
    }

    /// True for 401 and 403 answers (unknown key, or the key's role may not do this).
    pub fn is_access_denied(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// True when the server reported the error at the end of an answer whose data had
    /// already started (a COPY TO or a streamed query failing midway).
    pub fn is_mid_stream(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Api {
                mid_stream: true,
                ..
            }
        )
    }

    /// True when the request could not be sent or its answer not received.
    pub fn is_http(&self) -> bool {
        matches!(self.inner.kind, Kind::Http)
    }

    /// True when reading or writing local data (a file, a reader, a writer) failed.
    pub fn is_io(&self) -> bool {
        matches!(self.inner.kind, Kind::Io)
    }

    /// True when an upload was abandoned before it finished (nothing was committed).
    pub fn is_aborted(&self) -> bool {
        matches!(self.inner.kind, Kind::Aborted)
    }

    /// True when the credentials or another setting cannot be used.
    pub fn is_config(&self) -> bool {
        matches!(self.inner.kind, Kind::Config(_))
    }

    /// The job, when a batch job ended `failed`, `cancelled` or `unknown`.
    pub fn job(&self) -> Option<&Job> {
        match &self.inner.kind {
            Kind::JobFailed(job) => Some(job),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            Kind::Api {
                status,
                body,
                mid_stream,
            } => {
                if *mid_stream {
                    f.write_str("the server failed after the answer began: ")?;
                } else {
                    write!(f, "the server answered {status}: ")?;
                }
                write_body(f, body)
            }
            Kind::RateLimited { body, limit } => {
                f.write_str("rate limited")?;
                if let Some(s) = limit.retry_after {
                    write!(f, " (retry after {s} s)")?;
                }
                f.write_str(": ")?;
                write_body(f, body)
            }
            Kind::Http => f.write_str("HTTP request failed"),
            Kind::Io => f.write_str("I/O error"),
            Kind::Config(m) => write!(f, "invalid configuration: {m}"),
            Kind::Decode(m) => write!(f, "unexpected answer from the server: {m}"),
            Kind::JobFailed(job) => {
                write!(f, "batch job {} ended {}", job.job_id, job.status)?;
                if let Some(reason) = job.failed_reason() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Kind::Aborted => f.write_str("COPY upload aborted before it finished"),
            Kind::Encode(m) => write!(f, "cannot encode a row for COPY: {m}"),
        }
    }
}

fn write_body(f: &mut fmt::Formatter<'_>, body: &ApiErrorBody) -> fmt::Result {
    if body.error.is_empty() {
        f.write_str("(no message)")?;
    } else {
        f.write_str(&body.error.join("; "))?;
    }
    if let Some(detail) = &body.detail {
        write!(f, " (detail: {detail})")?;
    }
    if let Some(hint) = &body.hint {
        write!(f, " (hint: {hint})")?;
    }
    if let Some(place) = &body.where_ {
        write!(f, " (at {place})")?;
    }
    Ok(())
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("carto::Error");
        d.field("kind", &self.inner.kind);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::io(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_our_error() {
        let original = Error::mid_stream(ApiErrorBody {
            error: vec!["division by zero".into()],
            ..Default::default()
        });
        let back = Error::io(original.into_io());
        assert!(back.is_mid_stream());
        assert_eq!(back.messages(), ["division by zero"]);
    }

    #[test]
    fn rate_limit_needs_retry_after_or_detail() {
        let mut headers = reqwest::header::HeaderMap::new();
        let timeout = br#"{"error":["You are over platform's limits: SQL query timeout error."],"context":"limit","detail":"datasource"}"#;
        let e = Error::from_response(429, &headers, timeout);
        assert!(!e.is_rate_limited());
        assert!(e.is_timeout());
        headers.insert("retry-after", "3".parse().unwrap());
        headers.insert("carto-rate-limit-limit", "2".parse().unwrap());
        let e = Error::from_response(429, &headers, b"{\"error\":[\"x\"]}");
        assert!(e.is_rate_limited());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.rate_limit().unwrap().limit, Some(2));
    }

    #[test]
    fn non_json_body_becomes_the_message() {
        let e = Error::from_response(502, &Default::default(), b"<html>Bad gateway</html>\n");
        assert_eq!(e.messages(), ["<html>Bad gateway</html>"]);
        assert_eq!(e.status(), Some(502));
    }
}
