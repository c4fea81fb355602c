//! Shared helpers for the integration tests.

use carto_sql_api::testing::{TestServer, TestUser};
use serde_json::Value;

/// An HTTP client that leaves compression to the test.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("http client")
}

/// Runs `q` through `/sql` as `user`'s master key, panicking on any error answer.
pub async fn sql(server: &TestServer, user: &TestUser, q: &str) -> Value {
    let response = http()
        .post(format!("{}/sql", server.api_url(user)))
        .form(&[("q", q), ("api_key", &user.api_key)])
        .send()
        .await
        .expect("sql request");
    let status = response.status();
    let body: Value = response.json().await.expect("json answer");
    assert_eq!(status, 200, "{q}: {body}");
    body
}

/// POSTs `body` to copyfrom with `q` as `user`; returns status and JSON.
pub async fn copy_from(
    server: &TestServer,
    user: &TestUser,
    q: &str,
    body: impl Into<reqwest::Body>,
    gzip: bool,
) -> (u16, Value) {
    let mut request = http()
        .post(format!("{}/sql/copyfrom", server.api_url(user)))
        .query(&[("q", q), ("api_key", &user.api_key)])
        .header("content-type", "application/octet-stream")
        .body(body);
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.send().await.expect("copyfrom request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("copyfrom answer");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

/// GETs copyto with `q` as `user`; returns status, headers and body bytes.
pub async fn copy_to(
    server: &TestServer,
    user: &TestUser,
    q: &str,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let response = http()
        .get(format!("{}/sql/copyto", server.api_url(user)))
        .query(&[("q", q), ("api_key", &user.api_key)])
        .send()
        .await
        .expect("copyto request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("copyto body");
    (status, headers, body)
}

/// Rows in `table` of `user`'s database, counted as superuser.
pub async fn count(server: &TestServer, user: &TestUser, table: &str) -> i64 {
    server
        .superuser_client(user)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// The error message of an error answer.
pub fn error_of(body: &Value) -> &str {
    body["error"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
}

/// Runs `q` through `/sql` with `api_key` (none: anonymous); returns status, headers and JSON.
pub async fn sql_as(
    server: &TestServer,
    user: &TestUser,
    api_key: Option<&str>,
    q: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut form = vec![("q", q)];
    if let Some(key) = api_key {
        form.push(("api_key", key));
    }
    let response = http()
        .post(format!("{}/sql", server.api_url(user)))
        .form(&form)
        .send()
        .await
        .expect("sql request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("sql answer");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, json)
}
