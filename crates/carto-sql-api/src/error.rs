//! The server's one error type, [`ApiError`], and its rendering as the SQL API's
//! `{"error": [...]}` JSON.

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

/// The message of a write refused because the user's database is being moved to another host
/// (SQLSTATE 25006, `read_only_sql_transaction`: the database is read-only meanwhile).
pub const MOVING_MESSAGE: &str =
    "The account is being moved: it is read-only for now. Try again shortly.";

/// `Retry-After` of a write refused during a move, in seconds.
const MOVING_RETRY_AFTER: u32 = 10;

/// `Retry-After` of [`ApiError::busy`], in seconds.
const BUSY_RETRY_AFTER: u32 = 1;

/// `Retry-After` of an unavailable database, in seconds: the embedded cluster is restarted
/// within a few seconds.
const UNAVAILABLE_RETRY_AFTER: u32 = 5;

/// `Result` with the server's error.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The server's one error type: every fallible function of this crate returns it, and it
/// renders itself as the SQL API's JSON error ([`IntoResponse`]). What the client is answered
/// is its [`Answer`]: decided where the error was made for [`ApiError::Answer`], else from the
/// error itself (a PostgreSQL error's SQLSTATE, a pool's state). Causes of 5xx answers are
/// logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal whose answer was decided where it was made (bad input, unknown user, limits).
    #[error("{} {}", .0.status.as_u16(), .0.message)]
    Answer(Box<Answer>),
    /// An error of a statement run for the client: its SQLSTATE chooses the status (see
    /// [`ApiError::from_pg`]).
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from a pool.
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    /// Input refused: a name, grant, rate or setting given to an account command or a flag.
    /// A 400 with the message, should a client ever reach one.
    #[error("{0}")]
    Invalid(String),
    /// A file or a process of the server.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server's own work (metadata, provisioning, the cluster) failed while doing
    /// `context`. Database errors inside are never the client's: 503 if PostgreSQL cannot be
    /// reached, else 500.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<ApiError>,
    },
    /// A state the server should never be in: 500.
    #[error("{0}")]
    Internal(String),
}

/// What a client is answered for an error: a status, the message shown in `error[0]`, and
/// PostgreSQL's `detail`/`hint` or a limit's `context` when there are any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
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

impl Answer {
    /// An answer with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Answer {
            status,
            message: message.into(),
            context: None,
            detail: None,
            hint: None,
            where_: None,
            retry_after: None,
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

    fn unavailable() -> Self {
        Answer {
            retry_after: Some(UNAVAILABLE_RETRY_AFTER),
            ..Answer::new(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE)
        }
    }

    fn internal() -> Self {
        Answer::new(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected error")
    }

    /// The spec's status rules for a PostgreSQL error of a client's statement: timeouts
    /// (SQLSTATE 57014) are 429, permission errors 403, anything else the database refused
    /// 400 with its DETAIL and HINT; a lost or refused connection, or a database shutting down
    /// or starting, is a 503 (see [`is_unavailable`]); anything else is a 500.
    fn of_pg(error: &tokio_postgres::Error) -> Self {
        if is_unavailable(error) {
            return Answer::unavailable();
        }
        let Some(db) = error.as_db_error() else {
            return Answer::internal();
        };
        if *db.code() == SqlState::QUERY_CANCELED {
            return Answer {
                context: Some("limit".into()),
                detail: Some("datasource".into()),
                ..Answer::new(StatusCode::TOO_MANY_REQUESTS, TIMEOUT_MESSAGE)
            };
        }
        // A user's database is read-only only while it is moved to another host; a tenant
        // making its own transaction read-only gets the same answer, and retrying is right
        // for it too once it stops doing so.
        if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION {
            return Answer {
                retry_after: Some(MOVING_RETRY_AFTER),
                ..Answer::new(StatusCode::SERVICE_UNAVAILABLE, MOVING_MESSAGE)
            };
        }
        // The spec's rule, as upstream applies it: a database error whose message says
        // `permission denied` is a 403. Not SQLSTATE 42501 as such: that code also covers
        // `must be owner of table ...`, which the spec answers 400.
        let status = if db.message().contains("permission denied") {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        Answer {
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
            where_: db.where_().map(str::to_string),
            ..Answer::new(status, db.message())
        }
    }

    /// A pool's failure: 503 when it has no database to offer (it timed out connecting, was
    /// closed, or PostgreSQL is unreachable); else 500, since failing to connect as the key's
    /// role is the server's fault, never the client's.
    fn of_pool(error: &deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match error {
            PoolError::Backend(pg) if is_unavailable(pg) => Answer::unavailable(),
            PoolError::Timeout(_) | PoolError::Closed => Answer::unavailable(),
            _ => Answer::internal(),
        }
    }
}

impl From<Answer> for ApiError {
    fn from(answer: Answer) -> Self {
        ApiError::Answer(Box::new(answer))
    }
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Answer::new(status, message).into()
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
        Answer {
            context: Some("limit".into()),
            detail: Some("datasource".into()),
            ..Answer::new(StatusCode::TOO_MANY_REQUESTS, TIMEOUT_MESSAGE)
        }
        .into()
    }

    /// 429 with a `Retry-After`: every connection this request could use is busy (the user's
    /// share of PostgreSQL connections is taken by its own running queries).
    pub fn busy() -> Self {
        Answer {
            context: Some("limit".into()),
            detail: Some("connections".into()),
            retry_after: Some(BUSY_RETRY_AFTER),
            ..Answer::new(StatusCode::TOO_MANY_REQUESTS, BUSY_MESSAGE)
        }
        .into()
    }

    /// 500 `Unexpected error`; the cause is logged when answered, never shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    /// `error` of a client's statement, answered by the spec's status rules (see
    /// [`ApiError::Postgres`]); for callers that keep the error itself.
    pub fn from_pg(error: &tokio_postgres::Error) -> Self {
        let answer = Answer::of_pg(error);
        if answer.status.is_server_error() {
            log(&answer, error);
        }
        answer.into()
    }

    /// `self` as the server's own work failing while doing `context` (see
    /// [`ApiError::Context`]).
    pub fn context(self, context: impl Into<String>) -> Self {
        ApiError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// What the client is answered.
    pub fn answer(&self) -> Answer {
        match self {
            ApiError::Answer(answer) => (**answer).clone(),
            ApiError::Postgres(error) => Answer::of_pg(error),
            ApiError::Pool(error) => Answer::of_pool(error),
            ApiError::Invalid(message) => Answer::new(StatusCode::BAD_REQUEST, message.clone()),
            ApiError::Io(_) | ApiError::Internal(_) => Answer::internal(),
            ApiError::Context { source, .. } => source.server_answer(),
        }
    }

    /// The answer when `self` came from the server's own work: database errors are 503 or 500,
    /// never the client's 4xx.
    fn server_answer(&self) -> Answer {
        match self {
            ApiError::Postgres(error) if is_unavailable(error) => Answer::unavailable(),
            ApiError::Postgres(_) => Answer::internal(),
            ApiError::Context { source, .. } => source.server_answer(),
            other => other.answer(),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.answer().status
    }

    /// The message of the answer, `error[0]` in its body.
    pub fn message(&self) -> String {
        self.answer().message
    }

    /// The answer's body as JSON text, logging the cause of a 5xx: for errors that end a
    /// stream already under way (the body then carries them) rather than a response.
    pub fn to_json(&self) -> String {
        let answer = self.answer();
        if answer.status.is_server_error() {
            log(&answer, self);
        }
        answer.to_json()
    }
}

/// `error` and each of its causes once, `: `-separated: what the log shows. `Display` shows
/// one layer only, so that reports walking `source()` (as `anyhow`'s `{:#}`) repeat nothing.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut next = error.source();
    while let Some(inner) = next {
        chain.push_str(": ");
        chain.push_str(&inner.to_string());
        next = inner.source();
    }
    chain
}

/// Logs the cause of a 5xx answer, with its whole chain of causes.
fn log(answer: &Answer, cause: &dyn std::error::Error) {
    let chain = chain(cause);
    if answer.status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(error = %chain, "database unavailable");
    } else {
        tracing::error!(error = %chain, "internal error");
    }
}

/// Adds the context of the server's own work to errors on their way up (see
/// [`ApiError::Context`]).
pub trait Context<T> {
    /// Wraps the error, if any, as failing while doing `context`.
    fn context(self, context: impl Into<String>) -> Result<T, ApiError>;
    /// [`context`](Context::context), with the text made only on failure.
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, ApiError>;
}

impl<T, E: Into<ApiError>> Context<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, ApiError> {
        self.map_err(|error| error.into().context(context))
    }

    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, ApiError> {
        self.map_err(|error| error.into().context(context()))
    }
}

/// Turns a missing value or a failed parse of operator input into [`ApiError::Invalid`].
pub(crate) trait OrInvalid<T> {
    /// The value, or `Invalid` with the message `message` makes.
    fn or_invalid(self, message: impl FnOnce() -> String) -> Result<T>;
}

impl<T> OrInvalid<T> for Option<T> {
    fn or_invalid(self, message: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| ApiError::Invalid(message()))
    }
}

impl<T, E> OrInvalid<T> for std::result::Result<T, E> {
    fn or_invalid(self, message: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|_| ApiError::Invalid(message()))
    }
}

impl From<nix::errno::Errno> for ApiError {
    fn from(errno: nix::errno::Errno) -> Self {
        ApiError::Io(errno.into())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    /// A blocking task that panicked or was cancelled.
    fn from(error: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("background task: {error}"))
    }
}

/// Returns early with [`ApiError::Invalid`] made from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::error::ApiError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;

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
        let answer = self.answer();
        if answer.status.is_server_error() {
            log(&answer, &self);
        }
        answer.into_response()
    }
}

impl IntoResponse for Answer {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_kind() {
        let invalid = ApiError::Invalid("user 'x' does not exist".into());
        assert_eq!(
            (invalid.status(), invalid.message()),
            (StatusCode::BAD_REQUEST, "user 'x' does not exist".into())
        );
        for server_side in [
            ApiError::internal("a bug"),
            ApiError::Io(std::io::Error::other("disk")),
            ApiError::from(nix::errno::Errno::EACCES),
        ] {
            assert_eq!(server_side.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(server_side.to_json(), r#"{"error":["Unexpected error"]}"#);
        }
        let busy = ApiError::busy().context("getting a connection");
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(busy.answer().retry_after, Some(BUSY_RETRY_AFTER));
    }

    /// The operator's view (`{:#}` in `main`) is the context, then each cause once.
    #[test]
    fn context_shows_the_chain_once() {
        let error = Err::<(), _>(std::io::Error::other("no space left"))
            .context("writing the password file")
            .unwrap_err()
            .context("starting the cluster");
        assert_eq!(error.to_string(), "starting the cluster");
        assert_eq!(
            chain(&error),
            "starting the cluster: writing the password file: no space left"
        );
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn operator_input_is_invalid_with_its_message() {
        let error = None::<u8>
            .or_invalid(|| "unknown group 'x'".into())
            .unwrap_err();
        assert!(matches!(&error, ApiError::Invalid(m) if m == "unknown group 'x'"));
        let error = "x"
            .parse::<u32>()
            .or_invalid(|| "not a number".into())
            .unwrap_err();
        assert_eq!(error.to_string(), "not a number");
    }
}
