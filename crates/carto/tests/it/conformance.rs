//! One suite, two clients: every test here runs against the async [`carto::Client`] and the
//! [`carto::blocking::Client`] that wraps it, through [`Sdk`], so that the two cannot drift
//! apart. The blocking calls run on a thread of their own, outside any async runtime, as a
//! blocking caller's would.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use carto::{Client, Credentials, RetryPolicy};
use carto_sql_api::limits::{Group, Rate, RateLimits};
use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;
use futures::SinkExt;

use crate::support::{count, csv_rows};

/// Which client a test drives.
#[derive(Debug, Clone, Copy)]
enum Flavor {
    Async,
    Blocking,
}

const FLAVORS: [Flavor; 2] = [Flavor::Async, Flavor::Blocking];

/// The SDK operations the suite needs, each answered by the flavor's own client.
struct Sdk {
    flavor: Flavor,
    client: Client,
    blocking: Option<carto::blocking::Client>,
}

impl Drop for Sdk {
    /// A blocking client may not be dropped inside a runtime (its own runtime stops then).
    fn drop(&mut self) {
        if let Some(blocking) = self.blocking.take() {
            std::thread::spawn(move || drop(blocking));
        }
    }
}

/// Runs `work` on a plain thread (no runtime context) and waits for it without blocking the
/// test's runtime.
async fn on_plain_thread<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.await.expect("the blocking call's thread")
}

impl Sdk {
    fn new(flavor: Flavor, server: &TestServer, user: &TestUser, retry: RetryPolicy) -> Sdk {
        let credentials = Credentials::new(&server.base_url(user), &user.api_key).unwrap();
        let client = Client::builder(credentials).retry(retry).build().unwrap();
        // Building the blocking client starts its runtime: allowed inside a runtime, unlike
        // using or dropping it, which only ever happens on plain threads below.
        let blocking = carto::blocking::Client::from_async(client.clone()).unwrap();
        Sdk {
            flavor,
            client,
            blocking: Some(blocking),
        }
    }

    async fn sql(&self, q: &str) -> carto::Result<carto::SqlResponse> {
        match self.flavor {
            Flavor::Async => self.client.sql().send(q).await,
            Flavor::Blocking => {
                let (client, q) = (self.blocking(), q.to_string());
                on_plain_thread(move || client.sql().send(&q)).await
            }
        }
    }

    async fn copy_from_rows(&self, table: &str, rows: Vec<(i64, String)>) -> carto::Result<u64> {
        let outcome = match self.flavor {
            Flavor::Async => {
                let rows = futures::stream::iter(rows);
                self.client
                    .copy()
                    .copy_from_rows(table, &["id", "name"], rows)
                    .await
            }
            Flavor::Blocking => {
                let (client, table) = (self.blocking(), table.to_string());
                on_plain_thread(move || client.copy().copy_from_rows(&table, &["id", "name"], rows))
                    .await
            }
        };
        outcome.map(|o| o.total_rows)
    }

    /// Sends `data` into `sql`, then gives up before finishing.
    async fn copy_from_then_abort(&self, sql: &str, data: String) {
        match self.flavor {
            Flavor::Async => {
                let mut sink = self.client.copy().copy_from(sql).await.unwrap();
                sink.send(bytes::Bytes::from(data)).await.unwrap();
                sink.flush().await.unwrap();
                sink.abort().await;
            }
            Flavor::Blocking => {
                let (client, sql) = (self.blocking(), sql.to_string());
                on_plain_thread(move || {
                    let mut writer = client.copy().copy_from(&sql).unwrap();
                    writer.write_all(data.as_bytes()).unwrap();
                    writer.flush().unwrap();
                    writer.abort();
                })
                .await
            }
        }
    }

    async fn copy_from_file(&self, sql: &str, path: PathBuf) -> carto::Result<u64> {
        let outcome = match self.flavor {
            Flavor::Async => self.client.copy().copy_from_file(sql, &path).await,
            Flavor::Blocking => {
                let (client, sql) = (self.blocking(), sql.to_string());
                on_plain_thread(move || client.copy().copy_from_file(&sql, &path)).await
            }
        };
        outcome.map(|o| o.total_rows)
    }

    async fn copy_to_writer(&self, sql: &str) -> carto::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.flavor {
            Flavor::Async => self.client.copy().copy_to_writer(sql, &mut out).await?,
            Flavor::Blocking => {
                let (client, sql) = (self.blocking(), sql.to_string());
                let (written, bytes) = on_plain_thread(move || {
                    let written = client.copy().copy_to_writer(&sql, &mut out);
                    (written, out)
                })
                .await;
                out = bytes;
                written?
            }
        };
        Ok(out)
    }

    async fn copy_to_file(&self, sql: &str, path: PathBuf) -> carto::Result<u64> {
        match self.flavor {
            Flavor::Async => self.client.copy().copy_to_file(sql, &path, false).await,
            Flavor::Blocking => {
                let (client, sql) = (self.blocking(), sql.to_string());
                on_plain_thread(move || client.copy().copy_to_file(&sql, &path, false)).await
            }
        }
    }

    fn blocking(&self) -> carto::blocking::Client {
        self.blocking
            .clone()
            .expect("a blocking client until dropped")
    }
}

#[tokio::test]
async fn round_trip() {
    for flavor in FLAVORS {
        let server = TestServer::start().await;
        let user = server.create_user().await;
        let sdk = Sdk::new(flavor, &server, &user, RetryPolicy::default());
        sdk.sql("CREATE TABLE t (id int, name text)").await.unwrap();

        let rows: Vec<(i64, String)> = (0..1000).map(|i| (i, format!("name {i}"))).collect();
        assert_eq!(
            sdk.copy_from_rows("t", rows).await.unwrap(),
            1000,
            "{flavor:?}"
        );
        let text = sdk
            .copy_to_writer("COPY (SELECT * FROM t ORDER BY id) TO STDOUT WITH (FORMAT csv)")
            .await
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 1000, "{flavor:?}");
        assert_eq!(text.lines().nth(7), Some("7,name 7"), "{flavor:?}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let written = sdk
            .copy_to_file("COPY t TO STDOUT WITH (FORMAT csv)", path.clone())
            .await
            .unwrap();
        assert_eq!(
            written,
            std::fs::metadata(&path).unwrap().len(),
            "{flavor:?}"
        );
        let loaded = sdk
            .copy_from_file("COPY t FROM STDIN WITH (FORMAT csv)", path)
            .await
            .unwrap();
        assert_eq!(loaded, 1000, "{flavor:?}");
        assert_eq!(count(&server, &user, "t").await, 2000, "{flavor:?}");
    }
}

#[tokio::test]
async fn an_abandoned_upload_commits_nothing() {
    for flavor in FLAVORS {
        let server = TestServer::start().await;
        let user = server.create_user().await;
        let sdk = Sdk::new(flavor, &server, &user, RetryPolicy::default());
        sdk.sql("CREATE TABLE t (id int, name text)").await.unwrap();
        sdk.copy_from_then_abort(
            "COPY t FROM STDIN WITH (FORMAT csv, HEADER true)",
            csv_rows(5000),
        )
        .await;
        // The server rolls back when it sees the request end; give it the time to.
        assert!(
            server.backends_gone(&user, "COPY").await,
            "{flavor:?}: COPY still running"
        );
        assert_eq!(count(&server, &user, "t").await, 0, "{flavor:?}");
    }
}

#[tokio::test]
async fn a_refused_row_is_an_error_that_names_its_line_and_loads_nothing() {
    for flavor in FLAVORS {
        let server = TestServer::start().await;
        let user = server.create_user().await;
        let sdk = Sdk::new(flavor, &server, &user, RetryPolicy::default());
        sdk.sql("CREATE TABLE t (id int, name text)").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "1,a\n2,b\nthree,c\n4,d\n").unwrap();
        let error = sdk
            .copy_from_file("COPY t FROM STDIN WITH (FORMAT csv)", path)
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(400), "{flavor:?}: {error:?}");
        let place = error.where_().unwrap_or_default();
        assert!(place.contains("line 3"), "{flavor:?}: {error:?}");
        assert_eq!(count(&server, &user, "t").await, 0, "{flavor:?}");
    }
}

#[tokio::test]
async fn rate_limited_requests_wait_and_succeed() {
    for flavor in FLAVORS {
        let rate: Rate = "0/1/1".parse().unwrap();
        let server = TestServer::with_config(Config {
            rate_limits: RateLimits::none().with(Group::Query, rate),
            ..Config::default()
        })
        .await;
        let user = server.create_user().await;
        let sdk = Sdk::new(flavor, &server, &user, RetryPolicy::default());
        let started = Instant::now();
        for _ in 0..3 {
            sdk.sql("SELECT 1").await.unwrap();
        }
        // One a second: the last two waited for the server's Retry-After.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{flavor:?}"
        );

        let sdk = Sdk::new(flavor, &server, &user, RetryPolicy::never());
        sdk.sql("SELECT 1").await.ok();
        let error = sdk.sql("SELECT 1").await.unwrap_err();
        assert!(error.is_rate_limited(), "{flavor:?}: {error:?}");
    }
}
