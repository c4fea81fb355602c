//! Shared helpers for the integration tests.

use std::process::Command;

use carto_sql_api::testing::{cluster, TestServer, TestUser};
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

/// `--database-url` for the test cluster, in key=value form (it is reached by Unix socket).
pub fn database_url() -> String {
    let config = cluster();
    let mut parts = Vec::new();
    for host in config.get_hosts() {
        if let tokio_postgres::config::Host::Unix(path) = host {
            parts.push(format!("host={}", path.display()));
        }
    }
    for port in config.get_ports() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", String::from_utf8_lossy(password)));
    }
    parts.push("dbname=postgres".into());
    parts.join(" ")
}

/// Runs the admin CLI (`carto-sql-api ARGS`) on the test cluster: success, stdout as JSON, stderr.
pub fn cli(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_carto-sql-api"))
        .arg("--database-url")
        .arg(database_url())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `127.0.0.1:PORT` with a port free at the time of asking, for a `serve --listen`.
pub fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    format!("127.0.0.1:{port}")
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
