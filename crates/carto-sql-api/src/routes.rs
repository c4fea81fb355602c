//! HTTP routes. Handlers are thin: parse, authenticate, check, hand over to the module that
//! owns the work (`copy`, `query`).

use std::any::Any;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::auth::{decode_form, refuse_nul, BodyKey, Caller, CallerWith};
use crate::copy::statement::{self, Direction};
use crate::copy::{self, BodyEncoding, Upload};
use crate::error::{Answer, ApiError};
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
    let copyto = get(copyto_endpoint).post(copyto_endpoint).layer(
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
    let body_first = || middleware::from_fn(jobs::http::read_body_first);
    // Layers added later run first: user, (job body,) rate limit, then the handler, whose
    // extractor authenticates.
    let api = Router::new()
        .merge(route(
            "/sql",
            get(sql).post(sql).route_layer(limited(Group::Query)),
        ))
        .merge(route(
            "/sql/copyfrom",
            post(copyfrom_endpoint).route_layer(limited(Group::CopyFrom)),
        ))
        .merge(route(
            "/sql/copyto",
            copyto.route_layer(limited(Group::CopyTo)),
        ))
        .merge(route(
            "/sql/job",
            post(jobs::http::create)
                .route_layer(limited(Group::JobCreate))
                .route_layer(body_first()),
        ))
        .merge(route(
            "/sql/job/{id}",
            get(jobs::http::read)
                .route_layer(limited(Group::JobGet))
                .merge(delete(jobs::http::cancel).route_layer(limited(Group::JobDelete)))
                // A new query is a submission: it counts with job creation.
                .merge(
                    put(jobs::http::update)
                        .route_layer(limited(Group::JobCreate))
                        .route_layer(body_first()),
                ),
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::identify,
        ))
        .merge(route("/version", get(version)))
        .merge(route("/health", get(health)));
    let routes = Router::new()
        .nest("/api/{version}", api.clone())
        .nest("/user/{user}/api/{version}", api)
        .fallback(|| async { ApiError::not_found() });
    edge(routes).with_state(state)
}

/// The layers every request passes first, outermost last: malformed input refused before
/// routing, a panic turned into a logged 500 (inside the log, so the log shows the 500), then
/// CORS/host headers and the request log. Generic over the state so tests can wrap their own
/// routes in exactly these layers.
pub(crate) fn edge<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .layer(middleware::from_fn(refuse_malformed_input))
        .layer(CatchPanicLayer::custom(panic_answer))
        .layer(middleware::from_fn(common_headers_and_log))
}

/// The answer to a handler's panic: a bug, never the client's fault, so the usual 500 JSON
/// with the cause in the log only.
fn panic_answer(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into());
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

/// Refuses, before any route, database lookup or rate limit: a path-style user name no user
/// can have (the unknown-user 404), and a query string that is not UTF-8 once decoded or holds
/// a NUL byte (400). Every parameter a handler later reads from the query string is then
/// plain text PostgreSQL accepts.
async fn refuse_malformed_input(request: Request, next: Next) -> Response {
    if let Some(user) = crate::auth::user_in_path(request.uri().path()) {
        if !crate::auth::could_be_username(&user) {
            return ApiError::unknown_user(&user).into_response();
        }
    }
    let query = request.uri().query().unwrap_or("");
    if let Err(error) = crate::auth::decode_form(query.as_bytes()) {
        return error.into_response();
    }
    next.run(request).await
}

/// A route at `path` and at `path/` (clients such as carto-python add the slash).
fn route(path: &str, handler: MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .route(path, handler.clone())
        .route(&format!("{path}/"), handler)
}

/// CORS and host headers on every answer, `OPTIONS` answered without auth, one log line per
/// request (the path only: keys travel in the query string and are never logged). The
/// identity headers are `auth::identify`'s.
async fn common_headers_and_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client = crate::auth::query_param(request.uri().query().unwrap_or(""), "client");
    let mut response = if method == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
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
        .get::<Answer>()
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

impl FromRequest<AppState> for Params {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        Params::read(&parts.headers, parts.uri.query(), body).await
    }
}

impl BodyKey for Params {
    /// `api_key`, then `map_key`.
    fn body_key(&self) -> Option<&str> {
        self.get("api_key")
            .filter(|k| !k.is_empty())
            .or_else(|| self.get("map_key"))
    }
}

impl Params {
    async fn read(headers: &HeaderMap, query: Option<&str>, body: Body) -> Result<Self, ApiError> {
        let mut pairs = decode_form(query.unwrap_or("").as_bytes())?;
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
                    let value = match v {
                        Value::String(s) => s,
                        Value::Null => continue,
                        other => other.to_string(),
                    };
                    // JSON may escape a NUL (`\u0000`); PostgreSQL must not see it.
                    refuse_nul(&k, &value)?;
                    pairs.push((k, value));
                }
            }
        } else if content_type.starts_with("application/x-www-form-urlencoded")
            || (content_type.is_empty() && !bytes.is_empty())
        {
            pairs.extend(decode_form(&bytes)?);
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
        Ok::<_, ApiError>(())
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
    uri: Uri,
    request: Result<CallerWith<Params>, ApiError>,
) -> Response {
    let callback = crate::auth::query_param(uri.query().unwrap_or(""), "callback")
        .as_deref()
        .and_then(query::jsonp_callback);
    let (caller, answer) = match request {
        Ok(CallerWith(caller, params)) => {
            let answer = async {
                let options = query::Options::parse(&params.0, callback.clone())?;
                query::answer(&state.pools, &caller, &options, &state.config).await
            }
            .await;
            (Some(caller), answer)
        }
        Err(error) => (None, Err(error)),
    };
    let response = match (answer, callback) {
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
            response.extensions_mut().insert(error.answer());
            response
        }
    };
    match caller {
        Some(caller) => caller.answer(response),
        None => response,
    }
}

/// `POST /sql/copyfrom`: stream the body into `COPY ... FROM STDIN`. The key comes from the
/// headers or query string only: the body is data.
async fn copyfrom_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let outcome = async {
        let q = crate::auth::query_param(parts.uri.query().unwrap_or(""), "q");
        statement::check(q.as_deref(), Direction::FromStdin)?;
        let upload = Upload {
            sql: q.unwrap_or_default(),
            body,
            encoding: BodyEncoding::of(&parts.headers)?,
        };
        let started = Instant::now();
        let rows = copy::copy_from(&state.pools, &caller, upload, &state.config).await?;
        let mut response = json_answer(&json!({
            "time": started.elapsed().as_secs_f64(),
            "total_rows": rows,
        }));
        response.extensions_mut().insert(Rows(rows));
        Ok::<_, ApiError>(response)
    };
    caller.answer(outcome.await)
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
async fn copyto_endpoint(
    State(state): State<AppState>,
    CallerWith(caller, params): CallerWith<Params>,
) -> Response {
    let outcome = async {
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
        let stream = copy::copy_to(
            &state.pools,
            &caller,
            q.unwrap_or_default(),
            state.config.copy_timeout,
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
        Ok::<_, ApiError>(response)
    };
    caller.answer(outcome.await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use proptest::prelude::*;

    use super::*;
    use crate::http_server::{serve, ConnectionLimits};

    async fn boom() -> &'static str {
        panic!("deliberate")
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_500_and_the_server_goes_on() {
        let routes: Router = edge(
            Router::new()
                .route("/boom", get(boom))
                .route("/ok", get(|| async { "fine" })),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            routes,
            ConnectionLimits::default(),
            std::future::pending(),
        ));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let response = client
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"error":["Unexpected error"]}"#
        );
        let response = client
            .get(format!("http://{addr}/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "fine");
        server.abort();
    }

    fn read_params(content_type: &str, body: Vec<u8>) -> Result<Params, ApiError> {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(content_type) {
            headers.insert(header::CONTENT_TYPE, value);
        }
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(Params::read(&headers, None, Body::from(body)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_body_gives_text_parameters_or_a_400(
            content_type in prop_oneof![
                Just("application/x-www-form-urlencoded"),
                Just("application/json"),
                Just(""),
            ],
            body in prop_oneof![
                any::<Vec<u8>>(),
                any::<String>().prop_map(|s| serde_json::json!({ "q": s }).to_string().into_bytes()),
                any::<String>().prop_map(|s| format!("q={s}").into_bytes()),
            ],
        ) {
            match read_params(content_type, body) {
                Ok(params) => {
                    for (name, value) in params.0 {
                        prop_assert!(!name.contains('\0') && !value.contains('\0'));
                    }
                }
                Err(error) => prop_assert_eq!(error.status(), StatusCode::BAD_REQUEST),
            }
        }
    }
}
