//! PostgreSQL dying: requests are answered 503 with `Retry-After` (never 500) and `/health`
//! says the database is unreachable while it is down; `serve` restarts its embedded cluster
//! itself, and the pools reconnect, without restarting the server.

use std::path::Path;
use std::time::{Duration, Instant};

use carto_sql_api::embedded::{EmbeddedCluster, EmbeddedOptions};
use carto_sql_api::{Config, Server};

use crate::cli::{carto_sql_api, first_answer, spawn_serve, stderr, terminate};

/// The postmaster's pid, from the first line of `postmaster.pid` under the cluster's files.
fn postmaster_pid(files: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(files.join("data/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Kills the postmaster with SIGKILL, as a crash or the OOM killer would; returns its pid.
fn kill_postmaster(files: &Path) -> i32 {
    let pid = postmaster_pid(files).expect("a running cluster");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    pid
}

/// An answer: status, whether it has `Retry-After`, and the body as JSON.
struct Answer {
    status: u16,
    retry_after: bool,
    body: serde_json::Value,
}

async fn answer(url: &str) -> Answer {
    let response = reqwest::get(url).await.expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    Answer {
        status,
        retry_after,
        body,
    }
}

/// Checks that an answer given while PostgreSQL may be down is either data or the clean 503.
fn assert_data_or_unavailable(answer: &Answer) {
    match answer.status {
        200 => {}
        503 => {
            assert!(
                answer.retry_after,
                "503 without Retry-After: {}",
                answer.body
            );
            assert!(
                answer.body["error"][0]
                    .as_str()
                    .unwrap()
                    .contains("temporarily unavailable"),
                "{}",
                answer.body
            );
        }
        other => panic!("answered {other} during the outage: {}", answer.body),
    }
}

/// Polls `url` until it answers `status` (30 s at most), checking every answer on the way.
async fn until_status(url: &str, status: u16) -> Answer {
    let started = Instant::now();
    loop {
        let answer = answer(url).await;
        if answer.status == status {
            return answer;
        }
        assert_data_or_unavailable(&answer);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url} never answered {status}; last: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// On a cluster nobody restarts, the outage is certain: every request gets the 503, and so does
/// `/health`; once the cluster is back on the same socket, the same server works again.
#[tokio::test]
async fn requests_and_health_answer_503_while_postgresql_is_down() {
    let dir = tempfile::Builder::new()
        .prefix("carto-outage")
        .tempdir()
        .unwrap()
        .keep();
    let mut options = EmbeddedOptions::new(&dir);
    options.unsafe_fast = true;
    let mut cluster = EmbeddedCluster::start(&options).await.unwrap();
    let files = EmbeddedCluster::files_dir(&options).unwrap();
    // Stopped and removed once this test process has exited, whatever happens here.
    cluster
        .stop_after_exit_of(std::process::id(), &[dir.as_path()])
        .unwrap();
    let server = Server::open(cluster.superuser_config(), Config::default())
        .await
        .unwrap();
    let key = server.accounts().create_user("outage", None).await.unwrap();
    server.jobs().start_workers();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let api = format!("http://{addr}/user/outage/api/v2");
    let master = format!("{api}/sql?api_key={key}&q=SELECT%201%20AS%20n");
    let anonymous = format!("{api}/sql?q=SELECT%202%20AS%20n");
    let health = format!("{api}/health");
    assert_eq!(answer(&master).await.body["rows"][0]["n"], 1);
    assert_eq!(answer(&anonymous).await.body["rows"][0]["n"], 2);
    assert_eq!(answer(&health).await.status, 200);

    let killed = kill_postmaster(&files);
    // Backends still alive may answer a moment longer; then nothing can.
    until_status(&master, 503).await;
    let gone = Instant::now();
    while Path::new(&format!("/proc/{killed}")).exists() {
        assert!(gone.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for url in [&master, &anonymous] {
        let down = until_status(url, 503).await;
        assert_data_or_unavailable(&down);
    }
    let down = until_status(&health, 503).await;
    assert!(down.retry_after);
    assert_eq!(down.body["ok"], false, "{}", down.body);
    assert_eq!(down.body["database"], "unreachable", "{}", down.body);

    // Back on the same socket (its old backends may need a moment to let go of it).
    let restarting = Instant::now();
    while cluster.ensure_running().await.is_err() {
        assert!(restarting.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(until_status(&master, 200).await.body["rows"][0]["n"], 1);
    assert_eq!(until_status(&anonymous, 200).await.body["rows"][0]["n"], 2);
    assert_eq!(until_status(&health, 200).await.body["ok"], true);

    // The batch workers too: a job queued now runs.
    let response = reqwest::Client::new()
        .post(format!("{api}/sql/job"))
        .json(&serde_json::json!({
            "query": "CREATE TABLE after_outage AS SELECT 1 AS n",
            "api_key": key,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let job: serde_json::Value = response.json().await.unwrap();
    let job_url = format!(
        "{api}/sql/job/{}?api_key={key}",
        job["job_id"].as_str().unwrap()
    );
    let queued = Instant::now();
    loop {
        let job = answer(&job_url).await.body;
        if job["status"] == "done" {
            break;
        }
        assert!(
            queued.elapsed() < Duration::from_secs(30)
                && !["failed", "cancelled"].contains(&job["status"].as_str().unwrap()),
            "the job did not run after the outage: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The real binary on its embedded default: its cluster killed, it restarts it and answers
/// again within 30 s, never with a 500 meanwhile.
#[tokio::test]
async fn serve_restarts_its_killed_embedded_cluster() {
    let dir = tempfile::Builder::new()
        .prefix("carto-cli-outage")
        .tempdir()
        .unwrap();
    let files = EmbeddedCluster::files_dir(&EmbeddedOptions::new(dir.path())).unwrap();
    let out = carto_sql_api(dir.path(), &["user", "add", "dora", "--api-key", "k"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (mut serve, listen) = spawn_serve(dir.path());
    let url = format!("http://{listen}/user/dora/api/v2/sql?api_key=k&q=SELECT%204%20AS%20n");
    let health = format!("http://{listen}/api/v2/health");
    assert!(first_answer(&url).await.contains("\"n\":4"));

    let killed = kill_postmaster(&files);
    let started = Instant::now();
    loop {
        // The restart may be quicker than these requests: data and 503 are both right.
        let answer = answer(&url).await;
        assert_data_or_unavailable(&answer);
        let health = self::answer(&health).await;
        assert!(
            [200, 503].contains(&health.status),
            "health: {}",
            health.status
        );
        let restarted = postmaster_pid(&files).is_some_and(|pid| pid != killed);
        if restarted && answer.status == 200 && health.status == 200 {
            assert_eq!(answer.body["rows"][0]["n"], 4);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not back after 30 s: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    terminate(&mut serve);
    assert!(
        !files.join("data/postmaster.pid").exists(),
        "the cluster is still running after the server stopped"
    );
    let _ = std::fs::remove_dir_all(&files);
}
