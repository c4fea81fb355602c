//! `/sql/job` handlers and the body layer that keeps the spec's check order: user
//! ([`identify`](crate::auth::identify)), body and payload size ([`read_body_first`], create
//! and update), rate limit ([`limits::enforce`](crate::limits::enforce)), auth (the handler's
//! [`Caller`], master key only), then the job.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::model::{nested_form, payload_length};
use super::MAX_PAYLOAD;
use crate::auth::{decode_form, refuse_nul, BodyKey, Caller, CallerWith};
use crate::error::ApiError;
use crate::AppState;

/// Bodies past this are not read at all (the payload limit is far below it).
const MAX_BODY: usize = 1024 * 1024;

/// A job request's body (JSON, or a nested form as JSON), read and size-checked by
/// [`read_body_first`] before the rate limit.
#[derive(Debug, Clone)]
pub(crate) struct JobBody(Value);

impl BodyKey for JobBody {
    fn body_key(&self) -> Option<&str> {
        ["api_key", "map_key"]
            .into_iter()
            .filter_map(|k| self.0.get(k).and_then(Value::as_str))
            .find(|k| !k.is_empty())
    }
}

impl FromRequest<AppState> for JobBody {
    type Rejection = ApiError;

    async fn from_request(mut request: Request, _: &AppState) -> Result<Self, ApiError> {
        request
            .extensions_mut()
            .remove::<JobBody>()
            .ok_or_else(|| ApiError::internal("a job route with a body lacks `read_body_first`"))
    }
}

/// Layer of the job routes that take a body: reads it and refuses it past the 16 KiB payload
/// limit before the rate limit and the key are looked at, as the spec orders them; the
/// handler gets it as a [`JobBody`].
pub(crate) async fn read_body_first(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    match job_body(&parts.headers, body).await {
        Ok(body) => {
            parts.extensions.insert(body);
            next.run(Request::from_parts(parts, Body::empty())).await
        }
        Err(error) => error.into_response(),
    }
}

/// `POST /sql/job`.
pub(crate) async fn create(
    State(state): State<AppState>,
    CallerWith(caller, JobBody(body)): CallerWith<JobBody>,
) -> Response {
    let outcome = async {
        require_master(&caller)?;
        let job = state
            .jobs
            .create(&caller.user, &caller.key.login.role, body.get("query"))
            .await?;
        Ok::<_, ApiError>(json_answer(StatusCode::CREATED, &job))
    };
    caller.answer(outcome.await)
}

/// `GET /sql/job/{id}`.
pub(crate) async fn read(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    caller: Caller,
) -> Response {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    let outcome = async {
        require_master(&caller)?;
        let job = state.jobs.get(&caller.user, id).await?;
        Ok::<_, ApiError>(json_answer(StatusCode::OK, &job))
    };
    caller.answer(outcome.await)
}

/// `DELETE /sql/job/{id}`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    caller: Caller,
) -> Response {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    let outcome = async {
        require_master(&caller)?;
        let job = state.jobs.cancel(&caller.user, id).await?;
        Ok::<_, ApiError>(json_answer(StatusCode::OK, &job))
    };
    caller.answer(outcome.await)
}

/// `PUT /sql/job/{id}`: a new `query` for a pending job.
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    CallerWith(caller, JobBody(body)): CallerWith<JobBody>,
) -> Response {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    let outcome = async {
        require_master(&caller)?;
        let job = state
            .jobs
            .update(&caller.user, id, body.get("query"))
            .await?;
        Ok::<_, ApiError>(json_answer(StatusCode::OK, &job))
    };
    caller.answer(outcome.await)
}

/// Only the master key may use batch jobs (spec §2).
fn require_master(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_master() {
        Ok(())
    } else {
        Err(ApiError::forbidden("permission denied"))
    }
}

/// A job request's body, checked against the 16 KiB payload limit (which the spec checks
/// right after parsing, before the rate limit and the key).
async fn job_body(headers: &HeaderMap, body: Body) -> Result<JobBody, ApiError> {
    let body = read_body(headers, body).await?;
    let size = payload_length(&body);
    if size > MAX_PAYLOAD {
        return Err(ApiError::bad_request(format!(
            "Your payload is too large: {size} bytes. Max size allowed is {MAX_PAYLOAD} bytes \
             (16kb). Are you trying to import data?. Please, check out import api \
             http://docs.cartodb.com/cartodb-platform/import-api/"
        )));
    }
    Ok(JobBody(body))
}

/// The body as JSON: parsed if JSON, else decoded as a (nested) form.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::bad_request(format!(
            "Your payload is too large: more than {MAX_BODY} bytes. Max size allowed is \
             {MAX_PAYLOAD} bytes (16kb)."
        ))
    })?;
    if bytes.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    if content_type.starts_with("application/json") {
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
        refuse_nul_in(&body)?;
        return Ok(body);
    }
    Ok(nested_form(&decode_form(&bytes)?))
}

/// 400 when any text in `value` holds a NUL byte, which PostgreSQL refuses in text and which
/// would end a statement sent as a C string early.
fn refuse_nul_in(value: &Value) -> Result<(), ApiError> {
    match value {
        Value::String(text) => refuse_nul("query", text),
        Value::Array(items) => items.iter().try_for_each(refuse_nul_in),
        Value::Object(members) => members.iter().try_for_each(|(name, member)| {
            refuse_nul(name, "")?;
            refuse_nul_in(member)
        }),
        _ => Ok(()),
    }
}

fn json_answer(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
