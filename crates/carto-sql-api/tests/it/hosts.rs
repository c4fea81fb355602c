//! Users on several PostgreSQL hosts, served by several `serve` processes sharing one metadata
//! database: `host add`/`host list`, placement, requests and batch jobs reaching the user's
//! host through any server, and a host going down affecting only its own users.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use carto_sql_api::embedded::{EmbeddedCluster, EmbeddedOptions};
use carto_sql_api::testing::start_extra_cluster;
use serde_json::Value;

use crate::cli::{carto_sql_api, first_answer, stderr, terminate};

/// Runs `carto-sql-api --data-dir DIR ARGS`, which must succeed; its stdout as JSON.
pub(crate) fn run_ok(dir: &Path, args: &[&str]) -> Value {
    let out = carto_sql_api(dir, args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `carto-sql-api --data-dir DIR ARGS`, which must fail; its stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let out = carto_sql_api(dir, args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    stderr(&out)
}

/// Starts `serve` on DIR with `extra` flags; its log goes to `log`.
pub(crate) fn serve(dir: &Path, log: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let listen = crate::support::free_local_addr();
    let serve = carto_sql_api(dir, &["serve", "--listen", &listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (serve, listen)
}

/// `/sql` as `user` with `key` on the server at `listen`: status and JSON body.
pub(crate) async fn sql(listen: &str, user: &str, key: &str, q: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{listen}/user/{user}/api/v2/sql"))
        .form(&[("q", q), ("api_key", key)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let mut body: Value = response.json().await.unwrap();
    body["retry_after_header"] = retry_after.into();
    (status, body)
}

/// Whether the cluster reached with `url` has a database named `name`.
pub(crate) async fn has_database(url: &str, name: &str) -> bool {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let client = carto_sql_api::db::connect(&config).await.unwrap();
    client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_serve_users_on_two_hosts_and_a_host_down_affects_only_its_users() {
    let dir = tempfile::Builder::new()
        .prefix("carto-hosts")
        .tempdir()
        .unwrap();
    let files = EmbeddedCluster::files_dir(&EmbeddedOptions::new(dir.path())).unwrap();
    let (host_b, url_b) = start_extra_cluster("host-b").await;

    // Registering: a bad URL, the reserved name and a taken name are refused, with a message
    // that never echoes the URL.
    let bad_url = "postgres://x:s3cr3t@db:notaport/postgres";
    let message = refused(dir.path(), &["host", "add", "b", "--url", bad_url]);
    assert!(
        message.contains("not a valid PostgreSQL connection string"),
        "{message}"
    );
    assert!(!message.contains("s3cr3t"), "{message}");
    let message = refused(dir.path(), &["host", "add", "default", "--url", &url_b]);
    assert!(message.contains("metadata's own cluster"), "{message}");
    // The URL may come from the environment, out of every local user's `ps`.
    let out = carto_sql_api(dir.path(), &["host", "add", "b"])
        .env("CARTO_HOST_URL", &url_b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&url_b));
    let message = refused(dir.path(), &["host", "add", "b", "--url", &url_b]);
    assert!(message.contains("already exists"), "{message}");
    assert!(!message.contains(&url_b), "{message}");

    // Placement: explicit, then the host with the fewest users.
    for (user, key, host) in [
        ("alice", "ka", "default"),
        ("bob", "kb", "b"),
        ("carol", "kc", "b"),
    ] {
        run_ok(
            dir.path(),
            &["user", "add", user, "--api-key", key, "--host", host],
        );
    }
    run_ok(dir.path(), &["user", "add", "dave", "--api-key", "kd"]);
    let message = refused(dir.path(), &["user", "add", "erin", "--host", "nowhere"]);
    assert!(
        message.contains("database host 'nowhere' does not exist"),
        "{message}"
    );
    let list = run_ok(dir.path(), &["host", "list"]);
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["users"], 2, "{list}");
    assert_eq!(list[1]["name"], "b");
    assert_eq!(list[1]["users"], 2, "{list}");
    assert!(list[1]["size_bytes"].as_i64().unwrap() > 0, "{list}");
    assert!(!list.to_string().contains(&url_b));
    assert!(has_database(&url_b, "carto_user_bob").await);
    assert!(!has_database(&url_b, "carto_user_alice").await);
    assert!(!has_database(&url_b, "carto_user_dave").await);

    // Two servers on one metadata database; only the second runs batch jobs.
    let (mut one, listen_one) = serve(
        dir.path(),
        &dir.path().join("one.log"),
        &["--batch-workers", "0"],
    );
    let (mut two, listen_two) = serve(dir.path(), &dir.path().join("two.log"), &[]);
    first_answer(&format!("http://{listen_one}/health")).await;
    first_answer(&format!("http://{listen_two}/health")).await;

    // Each server serves each user, on the user's own host.
    for listen in [&listen_one, &listen_two] {
        for (user, key) in [("alice", "ka"), ("bob", "kb")] {
            let (status, body) = sql(listen, user, key, "SELECT current_database() AS db").await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["rows"][0]["db"], format!("carto_user_{user}"));
        }
    }
    let (status, body) = sql(
        &listen_one,
        "bob",
        "kb",
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = sql(&listen_two, "bob", "kb", "SELECT count(*) AS n FROM t").await;
    assert_eq!(body["rows"][0]["n"], 2, "{body}");
    // The tenant on host b cannot reach that host's template or maintenance database.
    let (_, body) = sql(
        &listen_one,
        "bob",
        "kb",
        "SELECT has_database_privilege('carto_template', 'CONNECT') AS t, \
                has_database_privilege('postgres', 'CONNECT') AS p",
    )
    .await;
    assert_eq!(body["rows"][0]["t"], false, "{body}");
    assert_eq!(body["rows"][0]["p"], false, "{body}");
    // Regular keys too are created on the user's host.
    let key = run_ok(dir.path(), &["key", "add", "bob", "--grant", "t:select"]);
    let (status, body) = sql(
        &listen_two,
        "bob",
        key["api_key"].as_str().unwrap(),
        "SELECT sum(n) AS s FROM t",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["s"], 3);

    // A job queued through the first server runs on the second, in bob's database on host b.
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!(
            "http://{listen_one}/user/bob/api/v2/sql/job?api_key=kb"
        ))
        .json(&serde_json::json!({ "query": "INSERT INTO t VALUES (10)" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    let mut status = Value::Null;
    for _ in 0..300 {
        let job: Value = http
            .get(format!(
                "http://{listen_one}/user/bob/api/v2/sql/job/{id}?api_key=kb"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = job["status"].clone();
        if status == "done" || status == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "done");
    let (_, body) = sql(&listen_one, "bob", "kb", "SELECT sum(n) AS s FROM t").await;
    assert_eq!(body["rows"][0]["s"], 13, "{body}");

    // Host b goes down (its postmaster killed): its users get 503 with Retry-After, others are
    // served as before, by both servers.
    drop(host_b);
    let b_files = std::env::temp_dir().join(format!("carto-rs-host-b-{}", std::process::id()));
    let b_root = EmbeddedCluster::files_dir(&EmbeddedOptions::new(&b_files)).unwrap();
    let pid: i32 = std::fs::read_to_string(b_root.join("data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for listen in [&listen_one, &listen_two] {
        // A pooled connection may outlive its postmaster for a moment.
        let (mut status, mut body) = sql(listen, "bob", "kb", "SELECT 1 AS x").await;
        for _ in 0..100 {
            if status != 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            (status, body) = sql(listen, "bob", "kb", "SELECT 1 AS x").await;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["retry_after_header"], true, "{body}");
        let (status, body) = sql(listen, "alice", "ka", "SELECT 1 AS x").await;
        assert_eq!(status, 200, "{body}");
    }
    // The listing still answers, without that host's size.
    let list = run_ok(dir.path(), &["host", "list"]);
    assert_eq!(list[1]["size_bytes"], Value::Null, "{list}");
    assert_eq!(list[0]["users"], 2);

    terminate(&mut one);
    terminate(&mut two);
    let _ = std::fs::remove_dir_all(&files);
}
