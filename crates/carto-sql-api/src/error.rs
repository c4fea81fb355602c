//! The server's one error type and its rendering as the SQL API's `{"error": [...]}` JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_postgres::error::SqlState;

/// The text of the timeout-limit body (spec §3).
pub const TIMEOUT_MESSAGE: &str = "You are over platform's limits: SQL query timeout error. \
     Refactor your query before running again or contact CARTO support for more details.";

/// The message of a request that found every connection it could use busy.
pub const BUSY_MESSAGE: &str = "You are over platform's limits: too many queries of this account \
     are running at once. Wait for them to finish, or try again later.";

/// The message of a request made while PostgreSQL cannot be reached.
pub const UNAVAILABLE_MESSAGE: &str =
    "The database is temporarily unavailable. Please try again in a few seconds.";

/// `Retry-After` of [`ApiError::busy`], in seconds.
const BUSY_RETRY_AFTER: u32 = 1;

/// `Retry-After` of [`ApiError::unavailable`], in seconds: the embedded cluster is restarted
/// within a few seconds.
const UNAVAILABLE_RETRY_AFTER: u32 = 5;

/// An error answered to a client: a status, the message shown in `error[0]`, and PostgreSQL's
/// `detail`/`hint` or a limit's `context` when there are any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// The message, `error[0]` in the body.
    pub message: String,
    /// `context` member (limit errors only).
    pub context: Option<String>,
    /// `detail` member (PostgreSQL's DETAIL, or the kind of limit).
    pub detail: Option<String>,
    /// `hint` member (PostgreSQL's HINT).
    pub hint: Option<String>,
    /// `where` member: PostgreSQL's CONTEXT, e.g. `COPY t, line 52, column n: "x"`, so a
    /// client can tell which line of an upload was refused. Not in upstream's answers;
    /// clients that do not know it ignore it.
    pub where_: Option<String>,
    /// Seconds for the `Retry-After` header, when trying again later may succeed.
    pub retry_after: Option<u32>,
}

/// The JSON body of an error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    where_: Option<&'a str>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            context: None,
            detail: None,
            hint: None,
            where_: None,
            retry_after: None,
        }
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 `Unauthorized`: the API key is unknown.
    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized")
    }

    /// 403 with a message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 for an unknown user.
    pub fn unknown_user(user: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Sorry, we can't find CARTO user '{user}'. Please check that you have entered \
                 the correct domain."
            ),
        )
    }

    /// 404 for an unknown route.
    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Not found")
    }

    /// 429 with the timeout-limit body.
    pub fn timeout() -> Self {
        ApiError {
            context: Some("limit".into()),
            detail: Some("datasource".into()),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, TIMEOUT_MESSAGE)
        }
    }

    /// 429 with a `Retry-After`: every connection this request could use is busy (the user's
    /// share of PostgreSQL connections is taken by its own running queries).
    pub fn busy() -> Self {
        ApiError {
            context: Some("limit".into()),
            detail: Some("connections".into()),
            retry_after: Some(BUSY_RETRY_AFTER),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, BUSY_MESSAGE)
        }
    }

    /// 503 with a `Retry-After`: PostgreSQL cannot be reached (down, restarting, refusing
    /// connections); the cause is logged, never shown to the client.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        ApiError {
            retry_after: Some(UNAVAILABLE_RETRY_AFTER),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE)
        }
    }

    /// 500 `Unexpected error`; the cause is logged, never shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected error")
    }

    /// Maps a PostgreSQL error as the spec's status rules say: timeouts are 429, permission
    /// errors 403, anything the database refused 400 with its DETAIL and HINT; a lost or refused
    /// connection, or a database shutting down or starting, is a 503 (see [`is_unavailable`]);
    /// anything else is a 500.
    pub fn from_pg(error: &tokio_postgres::Error) -> Self {
        if is_unavailable(error) {
            return ApiError::unavailable(error);
        }
        let Some(db) = error.as_db_error() else {
            return ApiError::internal(error);
        };
        if *db.code() == SqlState::QUERY_CANCELED {
            return ApiError::timeout();
        }
        // The spec's rule, as upstream applies it: a database error whose message says
        // `permission denied` is a 403. Not SQLSTATE 42501 as such: that code also covers
        // `must be owner of table ...`, which the spec answers 400.
        let status = if db.message().contains("permission denied") {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError {
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
            where_: db.where_().map(str::to_string),
            ..ApiError::new(status, db.message())
        }
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        let body = ErrorBody {
            error: [&self.message],
            context: self.context.as_deref(),
            detail: self.detail.as_deref(),
            hint: self.hint.as_deref(),
            where_: self.where_.as_deref(),
        };
        serde_json::to_string(&body).unwrap_or_else(|_| r#"{"error":["Unexpected error"]}"#.into())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        ApiError::from_pg(&error)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match &error {
            PoolError::Backend(pg) if is_unavailable(pg) => ApiError::unavailable(&error),
            // A pool that timed out connecting or was closed has no database to offer.
            PoolError::Timeout(_) | PoolError::Closed => ApiError::unavailable(&error),
            // Failing to connect as the key's role otherwise is the server's fault, never the
            // client's.
            _ => ApiError::internal(error),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    /// A 503 when a cause says PostgreSQL cannot be reached (e.g. the metadata lookups of
    /// every request), as [`ApiError::from_pg`] answers; else a 500. The whole chain is logged.
    fn from(error: anyhow::Error) -> Self {
        let chain = format!("{error:#}");
        if says_unavailable(&error) {
            ApiError::unavailable(chain)
        } else {
            ApiError::internal(chain)
        }
    }
}

/// Whether a cause in `error`'s chain is a PostgreSQL or pool error that [`is_unavailable`] (or
/// a pool that timed out or was closed).
fn says_unavailable(error: &anyhow::Error) -> bool {
    use deadpool_postgres::PoolError;
    error.chain().any(|cause| {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return is_unavailable(pg);
        }
        match cause.downcast_ref::<PoolError>() {
            Some(PoolError::Backend(pg)) => is_unavailable(pg),
            Some(PoolError::Timeout(_) | PoolError::Closed) => true,
            _ => false,
        }
    })
}

/// Whether `error` says PostgreSQL cannot be reached right now, as opposed to refusing the
/// statement: the connection is closed or could not be opened (an I/O error), or the server is
/// shutting down, starting or otherwise refusing connections (SQLSTATE class 08, 57P0x).
pub fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || code.starts_with("57P0");
    }
    error.is_closed()
        || std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Handlers log what they know; the middleware adds the message to the request's line.
        response.extensions_mut().insert(self);
        response
    }
}
