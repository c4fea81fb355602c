//! HTTP routes. Handlers are thin: parse, authenticate, check, hand over to the module that
//! owns the work (`copy`, `query`).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::auth::{form_urlencoded_pairs, Addressed, Identified};
use crate::copy::statement::{self, Direction};
use crate::copy::{self as copy_streams, UploadLimits};
use crate::error::ApiError;
use crate::jobs;
use crate::limits::{self, Group};
use crate::query;
use crate::AppState;

/// Largest form or JSON body accepted by `/sql` and copyto (the statement and parameters).
const MAX_PARAMS_BODY: usize = 16 * 1024 * 1024;

/// Rows a request affected, for the request log.
#[derive(Clone, Copy)]
struct Rows(u64);

/// Builds the application.
pub fn router(state: AppState) -> Router {
    let copyto = get(copy_to).post(copy_to).layer(
        // The spec lets a server gzip COPY TO itself when the client accepts it; level 1
        // keeps the CPU cost far below PostgreSQL's.
        CompressionLayer::new()
            .gzip(true)
            .no_br()
            .no_deflate()
            .no_zstd()
            .quality(CompressionLevel::Fastest),
    );
    let limited = |group| middleware::from_fn_with_state((state.clone(), group), limits::enforce);
    let api = Router::new()
        .merge(route("/sql", get(sql).post(sql)).route_layer(limited(Group::Query)))
        .merge(route("/sql/copyfrom", post(copy_from)).route_layer(limited(Group::CopyFrom)))
        .merge(route("/sql/copyto", copyto).route_layer(limited(Group::CopyTo)))
        .merge(route("/sql/job", post(jobs::http::create)))
        .merge(route(
            "/sql/job/{id}",
            get(jobs::http::read)
                .delete(jobs::http::cancel)
                .put(jobs::http::update),
        ))
        .merge(route("/version", get(version)))
        .merge(route("/health", get(health)));
    Router::new()
        .nest("/api/{version}", api.clone())
        .nest("/user/{user}/api/{version}", api)
        .fallback(|| async { ApiError::not_found() })
        .layer(middleware::from_fn(common_headers_and_log))
        .with_state(state)
}

/// A route at `path` and at `path/` (clients such as carto-python add the slash).
fn route(path: &str, handler: MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .route(path, handler.clone())
        .route(&format!("{path}/"), handler)
}

/// CORS and host headers on every answer, `OPTIONS` answered without auth, one log line per
/// request (the path only: keys travel in the query string and are never logged).
async fn common_headers_and_log(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let identified = Identified::default();
    request.extensions_mut().insert(identified.clone());
    let client = crate::auth::query_param(request.uri().query().unwrap_or(""), "client");
    let mut response = if method == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if let Some(identity) = identified.get() {
        if let Ok(user) = HeaderValue::from_str(&identity.username) {
            headers.insert("carto-user", user);
        }
        headers.insert("carto-user-id", HeaderValue::from(identity.id));
        if identity.authenticated {
            headers.append(header::VARY, HeaderValue::from_static("Authorization"));
        }
    }
    for name in [
        "access-control-allow-origin",
        "access-control-allow-headers",
        "access-control-expose-headers",
    ] {
        headers.insert(name, HeaderValue::from_static("*"));
    }
    if let Ok(host) = HeaderValue::from_str(hostname()) {
        headers.insert("x-served-by-host", host);
    }
    if let Some(Ok(client)) = client.as_deref().map(HeaderValue::from_str) {
        headers.insert("carto-client", client);
    }
    let rows = response.extensions().get::<Rows>().map(|r| r.0);
    let error = response
        .extensions()
        .get::<ApiError>()
        .map(|e| e.message.clone());
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        rows,
        error,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// This machine's name, for `X-Served-By-Host`; looked up once, not per request.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    })
}

/// Request parameters: the query string, then the body's (form or JSON), later ones winning.
struct Params(Vec<(String, String)>);

impl Params {
    async fn read(headers: &HeaderMap, query: Option<&str>, body: Body) -> Result<Self, ApiError> {
        let mut pairs = form_urlencoded_pairs(query.unwrap_or(""));
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let bytes = axum::body::to_bytes(body, MAX_PARAMS_BODY)
            .await
            .map_err(|_| ApiError::bad_request("Request body too large or unreadable"))?;
        if content_type.starts_with("application/json") && !bytes.is_empty() {
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
            if let Value::Object(map) = value {
                for (k, v) in map {
                    match v {
                        Value::String(s) => pairs.push((k, s)),
                        Value::Null => {}
                        other => pairs.push((k, other.to_string())),
                    }
                }
            }
        } else if content_type.starts_with("application/x-www-form-urlencoded")
            || (content_type.is_empty() && !bytes.is_empty())
        {
            pairs.extend(form_urlencoded_pairs(&String::from_utf8_lossy(&bytes)));
        }
        Ok(Params(pairs))
    }

    /// The last value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The key sent in the parameters (`api_key`, then `map_key`).
    fn key(&self) -> Option<&str> {
        self.get("api_key")
            .filter(|k| !k.is_empty())
            .or_else(|| self.get("map_key"))
    }
}

/// A JSON answer with the SQL API's content type.
fn json_answer(value: &Value) -> Response {
    let mut response = (StatusCode::OK, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

async fn version() -> Response {
    json_answer(&json!({ "cartodb_sql_api": env!("CARGO_PKG_VERSION") }))
}

/// `GET /health`: 200 when the metadata database answers, else 503 saying the database is
/// unreachable (with `Retry-After`), so that a load balancer stops sending requests here.
async fn health(State(state): State<AppState>) -> Response {
    let probe = async {
        let client = state.accounts.meta().get().await?;
        client.simple_query("SELECT 1").await?;
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
        Ok(Ok(())) => json_answer(&json!({ "enabled": false, "ok": true })),
        outcome => {
            let cause = match outcome {
                Ok(Err(error)) => format!("{error:#}"),
                _ => "no answer in time".into(),
            };
            tracing::warn!(%cause, "health check: database unreachable");
            let mut response =
                json_answer(&json!({ "enabled": false, "ok": false, "database": "unreachable" }));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(5));
            response
        }
    }
}

/// Longest the health check waits for the database.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET|POST /sql`: run `q`, stream the result in the requested format. With a JSONP
/// `callback` in the query string, errors too are answered 200 as script (spec §3).
async fn sql(
    State(state): State<AppState>,
    addressed: Addressed,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let callback = crate::auth::query_param(query, "callback")
        .as_deref()
        .and_then(query::jsonp_callback);
    let answer = async {
        let params = Params::read(&headers, Some(query), body).await?;
        let caller = addressed.authenticate(&state, params.key()).await?;
        let options = query::Options::parse(&params.0, callback.clone())?;
        query::answer(
            &state.pools,
            &caller,
            &options,
            state.config.query_timeout.as_deref(),
        )
        .await
    }
    .await;
    match (answer, callback) {
        (Ok(response), _) => response,
        (Err(error), None) => error.into_response(),
        (Err(error), Some(callback)) => {
            let body = format!(
                "/**/ typeof {callback} === 'function' && {callback}({});",
                error.to_json()
            );
            let mut response = (StatusCode::OK, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            );
            response.extensions_mut().insert(error);
            response
        }
    }
}

/// `POST /sql/copyfrom`: stream the body into `COPY ... FROM STDIN`.
async fn copy_from(
    State(state): State<AppState>,
    addressed: Addressed,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = addressed.authenticate(&state, None).await?;
    let q = crate::auth::query_param(parts.uri.query().unwrap_or(""), "q");
    statement::check(q.as_deref(), Direction::FromStdin)?;
    let sql = q.unwrap_or_default();
    let gzip = match parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Unsupported Content-Encoding '{other}': send gzip or no encoding"
            )))
        }
    };
    let limits = UploadLimits {
        max_post_size: state.config.max_post_size,
        max_post_size_label: state.config.max_post_size_label.clone(),
        quota_remaining: None,
    };
    let started = Instant::now();
    let rows = copy_streams::copy_from(
        &state.pools,
        &caller,
        &sql,
        body,
        gzip,
        limits,
        &state.config.copy_timeout,
    )
    .await?;
    let mut response = json_answer(&json!({
        "time": started.elapsed().as_secs_f64(),
        "total_rows": rows,
    }));
    response.extensions_mut().insert(Rows(rows));
    Ok(response)
}

/// Characters JavaScript's `encodeURIComponent` escapes: all but `A-Za-z0-9-_.!~*'()`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// `GET|POST /sql/copyto`: stream `COPY ... TO STDOUT`.
async fn copy_to(
    State(state): State<AppState>,
    addressed: Addressed,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let params = Params::read(&headers, parts.uri.query(), body).await?;
    let caller = addressed.authenticate(&state, params.key()).await?;
    let q = params.get("q");
    statement::check(q, Direction::ToStdout)?;
    let filename = params
        .get("filename")
        .filter(|f| !f.is_empty())
        .unwrap_or("carto-sql-copyto.dmp");
    let disposition = format!(
        "attachment; filename={}",
        utf8_percent_encode(filename, URI_COMPONENT)
    );
    let stream = copy_streams::copy_to(
        &state.pools,
        &caller,
        q.unwrap_or_default(),
        &state.config.copy_timeout,
    )
    .await?;
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(ApiError::internal)?,
    );
    Ok(response)
}
