//! Retries of rate-limited answers against the server's real rate limiter (spec §8).

use std::time::{Duration, Instant};

use carto::{Client, Credentials, RetryPolicy};
use carto_sql_api::limits::{Group, Rate, RateLimits};
use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;

use crate::support::csv_rows;

/// One request per second per group, no burst.
async fn limited(groups: &[Group]) -> (TestServer, TestUser) {
    let rate: Rate = "0/1/1".parse().unwrap();
    let mut limits = RateLimits::none();
    for group in groups {
        limits = limits.with(*group, rate);
    }
    let server = TestServer::with_config(Config {
        rate_limits: limits,
        ..Config::default()
    })
    .await;
    let user = server.create_user().await;
    (server, user)
}

fn client(server: &TestServer, user: &TestUser, retry: RetryPolicy) -> Client {
    Client::builder(Credentials::new(&server.base_url(user), &user.api_key).unwrap())
        .retry(retry)
        .build()
        .unwrap()
}

#[tokio::test]
async fn rate_limited_errors_carry_the_headers() {
    let (server, user) = limited(&[Group::Query]).await;
    let client = client(&server, &user, RetryPolicy::never());
    client.sql().send("SELECT 1").await.unwrap();
    let error = client.sql().send("SELECT 1").await.unwrap_err();
    assert!(error.is_rate_limited(), "{error:?}");
    assert_eq!(error.status(), Some(429));
    assert_eq!(error.detail(), Some("rate-limit"));
    let limit = error.rate_limit().unwrap();
    assert_eq!(limit.limit, Some(1));
    assert_eq!(limit.remaining, Some(0));
    assert!(limit.reset.is_some());
    assert!(matches!(limit.retry_after, Some(1..=2)), "{limit:?}");
    assert!(error.retry_after().is_some());
}

#[tokio::test]
async fn queries_are_retried_after_retry_after() {
    let (server, user) = limited(&[Group::Query]).await;
    let client = client(&server, &user, RetryPolicy::default());
    let started = Instant::now();
    for _ in 0..3 {
        client.sql().send("SELECT 1").await.unwrap();
    }
    // Three requests at one a second: the last two waited for the server's Retry-After.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let (server, user) = limited(&[Group::Query]).await;
    let client = client(
        &server,
        &user,
        RetryPolicy::default().max_elapsed(Duration::from_millis(100)),
    );
    client.sql().send("SELECT 1").await.unwrap();
    let started = Instant::now();
    let error = client.sql().send("SELECT 1").await.unwrap_err();
    assert!(error.is_rate_limited());
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "gave up at once"
    );
}

#[tokio::test]
async fn copy_to_and_file_uploads_are_retried_streams_are_not() {
    let (server, user) = limited(&[Group::CopyFrom, Group::CopyTo]).await;
    let client = client(&server, &user, RetryPolicy::default());
    client
        .sql()
        .send("CREATE TABLE t (id int, name text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, csv_rows(100)).unwrap();
    let q = "COPY t FROM STDIN WITH (FORMAT csv, HEADER true)";
    let size = std::fs::metadata(&path).unwrap().len();
    for _ in 0..2 {
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = last.clone();
        let copy = client.copy().with_progress(carto::Progress::new(move |p| {
            if p.finished {
                *seen.lock().unwrap() = Some(p.bytes);
            }
        }));
        let outcome = copy.copy_from_file(q, &path).await.unwrap();
        assert_eq!(
            outcome.total_rows, 100,
            "the file is sent whole on the retry"
        );
        // A retry starts the counts again: progress never passes the file's size.
        assert_eq!(*last.lock().unwrap(), Some(size));
    }
    // A stream is consumed by the first attempt: a refusal comes back as it is.
    let error = client
        .copy()
        .copy_from_reader(q, std::io::Cursor::new(csv_rows(1).into_bytes()))
        .await
        .unwrap_err();
    assert!(error.is_rate_limited(), "{error:?}");

    for _ in 0..2 {
        let mut out = Vec::new();
        client
            .copy()
            .copy_to_writer("COPY (SELECT count(*) FROM t) TO STDOUT", &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"200\n");
    }
}
