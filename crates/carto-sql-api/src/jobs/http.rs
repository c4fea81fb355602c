//! `/sql/job` handlers, in the spec's check order: user, body, payload size (create), rate
//! limit, auth (master key only), then the job.

use std::collections::HashMap;
use std::future::Future;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::model::{nested_form, payload_length};
use super::MAX_PAYLOAD;
use crate::auth::{decode_form, refuse_nul, Addressed, Caller};
use crate::error::ApiError;
use crate::limits::Group;
use crate::AppState;

/// Bodies past this are not read at all (the payload limit is far below it).
const MAX_BODY: usize = 1024 * 1024;

/// `POST /sql/job`.
pub(crate) async fn create(
    State(state): State<AppState>,
    addressed: Addressed,
    request: Request,
) -> Response {
    let body = match job_body(request).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let username = addressed.user.username.clone();
    limited(&state, &username, Group::JobCreate, async {
        let caller = master(&state, addressed, Some(&body)).await?;
        let job = state
            .jobs
            .create(&caller.user, &caller.key.login.role, body.get("query"))
            .await?;
        Ok(json_answer(StatusCode::CREATED, &job))
    })
    .await
}

/// `GET /sql/job/{id}`.
pub(crate) async fn read(
    State(state): State<AppState>,
    addressed: Addressed,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let id = params.get("id").cloned().unwrap_or_default();
    let username = addressed.user.username.clone();
    limited(&state, &username, Group::JobGet, async {
        let caller = master(&state, addressed, None).await?;
        let job = state.jobs.get(&caller.user, &id).await?;
        Ok(json_answer(StatusCode::OK, &job))
    })
    .await
}

/// `DELETE /sql/job/{id}`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    addressed: Addressed,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let id = params.get("id").cloned().unwrap_or_default();
    let username = addressed.user.username.clone();
    limited(&state, &username, Group::JobDelete, async {
        let caller = master(&state, addressed, None).await?;
        let job = state.jobs.cancel(&caller.user, &id).await?;
        Ok(json_answer(StatusCode::OK, &job))
    })
    .await
}

/// `PUT /sql/job/{id}`: a new `query` for a pending job.
pub(crate) async fn update(
    State(state): State<AppState>,
    addressed: Addressed,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Response {
    let id = params.get("id").cloned().unwrap_or_default();
    let body = match job_body(request).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let username = addressed.user.username.clone();
    limited(&state, &username, Group::JobCreate, async {
        let caller = master(&state, addressed, Some(&body)).await?;
        let job = state
            .jobs
            .update(&caller.user, &id, body.get("query"))
            .await?;
        Ok(json_answer(StatusCode::OK, &job))
    })
    .await
}

/// Runs `work` if `group`'s limit allows, adding the rate-limit headers to whatever it answers.
async fn limited(
    state: &AppState,
    username: &str,
    group: Group,
    work: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let decision = match state.limiter.check(username, group).await {
        Ok(decision) => decision,
        Err(error) => return ApiError::from(error.context("rate limit")).into_response(),
    };
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        return decision.refusal();
    }
    let mut response = work.await.unwrap_or_else(IntoResponse::into_response);
    if let Some(decision) = decision {
        decision.add_headers(response.headers_mut());
    }
    response
}

/// Authenticates with the key of the headers, query string or body; only the master key may
/// use batch jobs.
async fn master(
    state: &AppState,
    addressed: Addressed,
    body: Option<&Value>,
) -> Result<Caller, ApiError> {
    let body_key = body.and_then(|b| {
        ["api_key", "map_key"]
            .into_iter()
            .filter_map(|k| b.get(k).and_then(Value::as_str))
            .find(|k| !k.is_empty())
    });
    let caller = addressed.authenticate(state, body_key).await?;
    if !caller.is_master() {
        return Err(ApiError::forbidden("permission denied"));
    }
    Ok(caller)
}

/// A job request's body, checked against the 16 KiB payload limit (which the spec checks
/// right after parsing, before the rate limit and the key).
async fn job_body(request: Request) -> Result<Value, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body).await?;
    let size = payload_length(&body);
    if size > MAX_PAYLOAD {
        return Err(ApiError::bad_request(format!(
            "Your payload is too large: {size} bytes. Max size allowed is {MAX_PAYLOAD} bytes \
             (16kb). Are you trying to import data?. Please, check out import api \
             http://docs.cartodb.com/cartodb-platform/import-api/"
        )));
    }
    Ok(body)
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
