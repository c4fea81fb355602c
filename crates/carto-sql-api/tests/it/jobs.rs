//! Batch SQL jobs (spec §7, vectors §14.20–24): the HTTP contract, the state machine, and the
//! queue shared by several servers.
//!
//! Every test server on the test cluster runs workers, and they all share one metadata
//! database, so any of them may run any test's jobs. Tests that need jobs to stay `pending`
//! therefore first give their user a long-running job: one query runs per user, wherever.

use std::time::{Duration, Instant};

use carto_sql_api::jobs::BatchConfig;
use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;
use serde_json::{json, Value};

use crate::support::{error_of, http, sql};

fn jobs_url(server: &TestServer, user: &TestUser) -> String {
    format!("{}/sql/job", server.api_url(user))
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// Creates a job from a JSON body, as the SDK does; returns status and answer.
async fn create(server: &TestServer, user: &TestUser, query: Value) -> (u16, Value) {
    answer(
        http()
            .post(format!("{}/", jobs_url(server, user)))
            .json(&json!({ "query": query, "api_key": user.api_key })),
    )
    .await
}

pub(crate) async fn created(server: &TestServer, user: &TestUser, query: Value) -> String {
    let (status, job) = create(server, user, query).await;
    assert_eq!(status, 201, "{job}");
    job["job_id"].as_str().unwrap().to_string()
}

pub(crate) async fn job(server: &TestServer, user: &TestUser, id: &str) -> Value {
    let (status, job) = answer(
        http()
            .get(format!("{}/{id}", jobs_url(server, user)))
            .query(&[("api_key", &user.api_key)]),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    job
}

pub(crate) async fn cancel(server: &TestServer, user: &TestUser, id: &str) -> (u16, Value) {
    answer(
        http()
            .delete(format!("{}/{id}", jobs_url(server, user)))
            .query(&[("api_key", &user.api_key)]),
    )
    .await
}

/// Polls until the job's status is one of `statuses`; panics after `limit`.
pub(crate) async fn wait_for(
    server: &TestServer,
    user: &TestUser,
    id: &str,
    statuses: &[&str],
    limit: Duration,
) -> Value {
    let start = Instant::now();
    loop {
        let job = job(server, user, id).await;
        if statuses.contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(
            start.elapsed() < limit,
            "job still {} after {limit:?}: {job}",
            job["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn finished(server: &TestServer, user: &TestUser, id: &str) -> Value {
    wait_for(
        server,
        user,
        id,
        &["done", "failed", "cancelled"],
        Duration::from_secs(30),
    )
    .await
}

/// Gives `user` a running job so that their later jobs stay pending.
async fn occupy(server: &TestServer, user: &TestUser) -> String {
    let id = created(server, user, json!("SELECT pg_sleep(60)")).await;
    wait_for(server, user, &id, &["running"], Duration::from_secs(20)).await;
    id
}

#[tokio::test]
async fn vector_14_20_create() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(
        &server,
        &user,
        "CREATE TABLE untitle_table_4 (cartodb_id int)",
    )
    .await;
    server
        .server()
        .accounts()
        .create_key(&user.name, Some("regular1"), Some("regular1"), &[])
        .await
        .unwrap();
    let url = jobs_url(&server, &user);

    let (status, job) = answer(
        http()
            .post(&url)
            .query(&[("api_key", &user.api_key)])
            .form(&[("query", "SELECT * FROM untitle_table_4")]),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["user"], user.name.as_str());
    assert_eq!(job["status"], "pending");
    assert_eq!(job["query"], "SELECT * FROM untitle_table_4");
    let id = job["job_id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    for stamp in ["created_at", "updated_at"] {
        let text = job[stamp].as_str().unwrap();
        assert_eq!(text.len(), 24, "{text}");
        assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    }
    assert!(!job.to_string().contains("carto_"), "role leaked: {job}");

    let (status, body) = answer(
        http()
            .post(&url)
            .query(&[("api_key", &user.api_key)])
            .form(&[("q", "SELECT * FROM untitle_table_4")]),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "You must indicate a valid SQL")
    );

    for key in [Some("regular1"), Some("default_public"), None] {
        let mut request = http()
            .post(&url)
            .form(&[("query", "SELECT * FROM untitle_table_4")]);
        if let Some(key) = key {
            request = request.query(&[("api_key", key)]);
        }
        let (status, body) = answer(request).await;
        assert_eq!(status, 403, "{key:?}: {body}");
        assert_eq!(body, json!({"error": ["permission denied"]}));
    }
    let (status, body) = answer(
        http()
            .post(&url)
            .query(&[("api_key", "THIS_API_KEY_NOT_EXIST")])
            .form(&[("query", "SELECT 1")]),
    )
    .await;
    assert_eq!((status, error_of(&body)), (401, "Unauthorized"));

    // Host-style URL, key in the JSON body, other shapes.
    let (status, job) = answer(
        http()
            .post(format!("http://{}/api/v1/sql/job", server.addr))
            .header("host", format!("{}.localhost", user.name))
            .json(&json!({"query": ["SELECT 1", "SELECT 2"], "api_key": user.api_key})),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        job["query"],
        json!([{"query": "SELECT 1", "status": "pending"}, {"query": "SELECT 2", "status": "pending"}])
    );
    for (query, message) in [
        (json!(42), "there is no job class for the provided query"),
        (
            json!({"query": "x"}),
            "there is no job class for the provided query",
        ),
        (json!(""), "You must indicate a valid SQL"),
    ] {
        let (status, body) = create(&server, &user, query).await;
        assert_eq!((status, error_of(&body)), (400, message));
    }
    // A fallback job sent as a nested form, as browsers and `qs` write it.
    let (status, job) = answer(
        http()
            .post(&url)
            .query(&[("api_key", &user.api_key)])
            .form(&[
                ("query[query][0][query]", "SELECT 1"),
                ("query[query][0][onerror]", "SELECT 2"),
                ("query[onsuccess]", "SELECT 3"),
            ]),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["fallback_status"], "pending");
    assert_eq!(job["query"]["query"][0]["fallback_status"], "pending");
    finished(&server, &user, job["job_id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn vector_14_21_payload_and_queue_limits() {
    let config = Config {
        batch: BatchConfig {
            max_queued_jobs: 1,
            ..BatchConfig::default()
        },
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let user = server.create_user().await;
    let blocker = occupy(&server, &user).await;
    let url = format!("{}?api_key={}", jobs_url(&server, &user), user.api_key);
    // {"query":"aaa…"} is 12 characters plus the a's.
    let body = |n: usize| format!("{{\"query\":\"{}\"}}", "a".repeat(n - 12));
    let (status, answer_) = answer(
        http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body(16385)),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&answer_),
        "Your payload is too large: 16385 bytes. Max size allowed is 16384 bytes (16kb). Are you \
         trying to import data?. Please, check out import api \
         http://docs.cartodb.com/cartodb-platform/import-api/"
    );
    let (status, job) = answer(
        http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body(16384)),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    // One job waits now: the queue of 1 is full.
    let (status, body) = create(&server, &user, json!("SELECT 1")).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            "Failed to create job. Max number of jobs (1) queued reached"
        )
    );
    cancel(&server, &user, &blocker).await;
}

#[tokio::test]
async fn vector_14_22_read_and_cancel() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let other = server.create_user().await;
    let (status, body) = answer(
        http()
            .get(format!("{}/irrelevantJob", jobs_url(&server, &user)))
            .query(&[("api_key", &user.api_key)]),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Job with id irrelevantJob not found")
    );

    let done = created(&server, &user, json!("SELECT 1")).await;
    assert_eq!(finished(&server, &user, &done).await["status"], "done");
    let (status, body) = cancel(&server, &user, &done).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Cannot set status from done to cancelled")
    );

    let blocker = occupy(&server, &user).await;
    let pending = created(&server, &user, json!(["SELECT 1", "SELECT 2"])).await;
    // Another user's job is not found, even with a valid key of theirs.
    let (status, body) = answer(
        http()
            .get(format!("{}/{pending}", jobs_url(&server, &other)))
            .query(&[("api_key", &other.api_key)]),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, format!("Job with id {pending} not found").as_str())
    );
    let (status, job) = cancel(&server, &user, &pending).await;
    assert_eq!((status, &job["status"]), (200, &json!("cancelled")));
    assert_eq!(
        job["query"],
        json!([{"query": "SELECT 1", "status": "cancelled"}, {"query": "SELECT 2", "status": "pending"}])
    );
    let (status, body) = cancel(&server, &user, &pending).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Cannot set status from cancelled to cancelled")
    );
    // A pending fallback job: the next query cancelled, what would follow skipped.
    let fallback = created(
        &server,
        &user,
        json!({"query": [{"query": "SELECT 1", "onerror": "SELECT 2"}, {"query": "SELECT 3"}],
               "onsuccess": "SELECT 4"}),
    )
    .await;
    let (status, job) = cancel(&server, &user, &fallback).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        (&job["status"], &job["fallback_status"]),
        (&json!("cancelled"), &json!("skipped"))
    );
    assert_eq!(
        job["query"]["query"],
        json!([
            {"query": "SELECT 1", "onerror": "SELECT 2", "status": "cancelled", "fallback_status": "skipped"},
            {"query": "SELECT 3", "status": "skipped"}
        ])
    );
    cancel(&server, &user, &blocker).await;
}

/// Cancelling a running job cancels its backend at once; the job ends `cancelled`.
#[tokio::test]
async fn cancel_a_running_job() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let id = created(&server, &user, json!("SELECT pg_sleep(30)")).await;
    wait_for(&server, &user, &id, &["running"], Duration::from_secs(20)).await;
    let prefix = format!("/* {id} */");
    // `running` comes as the job is claimed; its query starts a moment later.
    let start = Instant::now();
    while server.running_statements(&user, &prefix).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the job's query never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let (status, job) = cancel(&server, &user, &id).await;
    assert_eq!(
        (status, &job["status"]),
        (200, &json!("cancelled")),
        "{job}"
    );
    assert!(server.backends_gone(&user, &prefix).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(job_status(&server, &user, &id).await, "cancelled");
}

async fn job_status(server: &TestServer, user: &TestUser, id: &str) -> String {
    job(server, user, id).await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn simple_and_array_jobs_run_as_the_key_role() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let id = created(
        &server,
        &user,
        json!([
            "CREATE TABLE a (x int, who text)",
            "INSERT INTO a VALUES (1, current_user)",
            "INSERT INTO nope VALUES (1)",
            "INSERT INTO a VALUES (2, current_user)"
        ]),
    )
    .await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["failed_reason"], "relation \"nope\" does not exist");
    let statuses: Vec<&str> = job["query"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["done", "done", "failed", "pending"]);
    assert_eq!(
        job["query"][2]["failed_reason"],
        "relation \"nope\" does not exist"
    );
    let rows = server
        .superuser_client(&user)
        .await
        .query("SELECT x, who FROM a", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].get::<_, String>(1),
        format!("carto_{}_master", user.name)
    );

    // Statements PostgreSQL runs only on their own (no commit marker can ride along).
    for query in ["VACUUM a", "CREATE INDEX CONCURRENTLY a_x ON a (x)"] {
        let id = created(&server, &user, json!(query)).await;
        let job = finished(&server, &user, &id).await;
        assert_eq!(job["status"], "done", "{query}: {job}");
    }

    let id = created(&server, &user, json!("SELECT 1/0")).await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(
        (&job["status"], &job["failed_reason"]),
        (&json!("failed"), &json!("division by zero"))
    );
}

#[tokio::test]
async fn vector_14_23_fallbacks() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE log (job text, message text)").await;

    let id = created(
        &server,
        &user,
        json!({"query": [{"query": "SELECT * FROM nonexistent_table", "onerror": "SELECT 1"}]}),
    )
    .await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let entry = &job["query"]["query"][0];
    assert_eq!(
        (
            &entry["status"],
            &entry["fallback_status"],
            &entry["failed_reason"]
        ),
        (
            &json!("failed"),
            &json!("done"),
            &json!("relation \"nonexistent_table\" does not exist")
        )
    );
    for stamp in ["started_at", "ended_at"] {
        assert!(entry[stamp].as_str().unwrap().ends_with('Z'), "{entry}");
    }
    // Fallback jobs word an invalid transition without the current status.
    let (status, body) = cancel(&server, &user, &id).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Cannot set status to cancelled")
    );

    let id = created(
        &server,
        &user,
        json!({"query": [
            {"query": "SELECT 1", "onsuccess": "SELECT * FROM nope"},
            {"query": "SELECT 2", "onsuccess": "INSERT INTO log VALUES ('<%= job_id %>', 'ok')"}
        ]}),
    )
    .await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    let fallbacks: Vec<&Value> = job["query"]["query"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| &q["fallback_status"])
        .collect();
    assert_eq!(fallbacks, [&json!("failed"), &json!("done")]);

    let id = created(
        &server,
        &user,
        json!({
            "query": [
                {"query": "SELECT * FROM nope", "onerror": "INSERT INTO log VALUES ('<%= job_id %>', '<%=error_message%>')"},
                {"query": "SELECT 2", "onerror": "SELECT 3"}
            ],
            "onerror": "INSERT INTO log VALUES ('job', '<%= error_message %>')",
            "onsuccess": "SELECT 4"
        }),
    )
    .await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(
        (&job["status"], &job["fallback_status"]),
        (&json!("failed"), &json!("done")),
        "{job}"
    );
    let second = &job["query"]["query"][1];
    assert_eq!(
        (&second["status"], &second["fallback_status"]),
        (&json!("skipped"), &json!("skipped"))
    );
    // The stored text keeps the template; the fallback ran with it filled in.
    assert_eq!(
        job["query"]["query"][0]["onerror"],
        "INSERT INTO log VALUES ('<%= job_id %>', '<%=error_message%>')"
    );
    let logged: Vec<(String, String)> = server
        .superuser_client(&user)
        .await
        .query("SELECT job, message FROM log ORDER BY job", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing = "relation \"nope\" does not exist".to_string();
    assert!(
        logged.contains(&(id.clone(), missing.clone())),
        "{logged:?}"
    );
    assert!(logged.contains(&("job".into(), missing)), "{logged:?}");
    assert_eq!(logged.len(), 3, "{logged:?}");
}

#[tokio::test]
async fn vector_14_24_timeouts() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let jobs = server.server().jobs();
    jobs.set_user_timeout(&user.name, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    let id = created(&server, &user, json!("select pg_sleep(10)")).await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(
        job["failed_reason"],
        "canceling statement due to statement timeout"
    );
    jobs.set_user_timeout(&user.name, None).await.unwrap();

    let id = created(
        &server,
        &user,
        json!({"query": [{"query": "select pg_sleep(0.1)", "timeout": 50}]}),
    )
    .await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["failed_reason"]
        .as_str()
        .unwrap()
        .contains("statement timeout"));
    let id = created(
        &server,
        &user,
        json!({"query": [{"query": "select pg_sleep(0.1)", "timeout": 2000}]}),
    )
    .await;
    assert_eq!(finished(&server, &user, &id).await["status"], "done");
}

#[tokio::test]
async fn put_updates_pending_jobs_only() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let blocker = occupy(&server, &user).await;
    let id = created(&server, &user, json!("SELECT 1")).await;
    let url = format!("{}/{id}", jobs_url(&server, &user));
    let (status, job) = answer(
        http()
            .put(&url)
            .json(&json!({"query": ["SELECT 2", "SELECT 3"], "api_key": user.api_key})),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        job["query"][1],
        json!({"query": "SELECT 3", "status": "pending"})
    );
    assert_eq!(job["status"], "pending");

    // Pending again between two queries of an array: its worker owns it, it cannot change.
    let mut meta = carto_sql_api::testing::cluster();
    meta.dbname("carto_meta");
    carto_sql_api::db::connect(&meta)
        .await
        .unwrap()
        .execute(
            "UPDATE batch_jobs SET query = jsonb_set(query::jsonb, '{0,status}', '\"done\"')::text \
             WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (status, body) = answer(
        http()
            .put(&url)
            .json(&json!({"query": "SELECT 4", "api_key": user.api_key})),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            format!("Cannot update job {id}: some of its queries already ran").as_str()
        )
    );
    let gone = created(&server, &user, json!("SELECT 1")).await;
    cancel(&server, &user, &gone).await;
    let (status, body) = answer(
        http()
            .put(format!("{}/{gone}", jobs_url(&server, &user)))
            .json(&json!({"query": "SELECT 2", "api_key": user.api_key})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        format!(
            "Cannot update job {gone}: its status is cancelled, only pending jobs can be updated"
        )
    );
    let (status, body) = answer(
        http()
            .put(format!("{}/nope", jobs_url(&server, &user)))
            .json(&json!({"query": "SELECT 2", "api_key": user.api_key})),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Job with id nope not found")
    );
    cancel(&server, &user, &blocker).await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
}

/// Two servers on one metadata database: 20 jobs, each run once, never two of one user at a
/// time (each job counts the user's other batch queries running alongside it).
#[tokio::test]
async fn two_servers_share_the_queue() {
    let one = TestServer::start().await;
    let two = TestServer::start().await;
    let user = one.create_user().await;
    sql(&one, &user, "CREATE TABLE runs (alongside int8)").await;
    let query = "INSERT INTO runs SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND state = 'active' AND query LIKE '/* %'; SELECT pg_sleep(0.05)";
    let mut ids = Vec::new();
    for i in 0..20 {
        let server = if i % 2 == 0 { &one } else { &two };
        ids.push(created(server, &user, json!(query)).await);
    }
    for id in &ids {
        let job = finished(&one, &user, id).await;
        assert_eq!(job["status"], "done", "{job}");
    }
    let rows = one
        .superuser_client(&user)
        .await
        .query("SELECT alongside FROM runs", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 20);
    assert!(
        rows.iter().all(|r| r.get::<_, i64>(0) == 0),
        "two ran at once"
    );
}

/// Different users' jobs run at the same time.
#[tokio::test]
async fn users_run_in_parallel() {
    let server = TestServer::start().await;
    let alice = server.create_user().await;
    let bob = server.create_user().await;
    let a = created(&server, &alice, json!("SELECT pg_sleep(60)")).await;
    let b = created(&server, &bob, json!("SELECT pg_sleep(60)")).await;
    let start = Instant::now();
    loop {
        let both = (
            job_status(&server, &alice, &a).await,
            job_status(&server, &bob, &b).await,
        );
        if both == ("running".into(), "running".into()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{both:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel(&server, &alice, &a).await;
    cancel(&server, &bob, &b).await;
}

/// Job endpoints have their rate-limit groups; creation checks the payload size first, then
/// the limit, then the key.
#[tokio::test]
async fn job_endpoints_are_rate_limited() {
    let rate = |text: &str| text.parse().unwrap();
    let config = Config {
        rate_limits: carto_sql_api::limits::RateLimits::none()
            .with(carto_sql_api::limits::Group::JobCreate, rate("0/1/60"))
            .with(carto_sql_api::limits::Group::JobGet, rate("5/1/60")),
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let user = server.create_user().await;
    let response = http()
        .post(jobs_url(&server, &user))
        .json(&json!({"query": "SELECT 1", "api_key": user.api_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["carto-rate-limit-limit"], "1");
    let id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Too large beats over the limit.
    let (status, body) = answer(
        http()
            .post(jobs_url(&server, &user))
            .json(&json!({"query": "a".repeat(17000), "api_key": user.api_key})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).starts_with("Your payload is too large: 17"));
    // Over the limit beats a bad key.
    let response = http()
        .post(jobs_url(&server, &user))
        .json(&json!({"query": "SELECT 1", "api_key": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // Reading is another group, with its own headers.
    let response = http()
        .get(format!("{}/{id}", jobs_url(&server, &user)))
        .query(&[("api_key", &user.api_key)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["carto-rate-limit-limit"], "6");
    assert_eq!(response.headers()["carto-rate-limit-remaining"], "5");
}

/// Finished jobs are forgotten 2 h after they end: a server starting up expires them.
#[tokio::test]
async fn finished_jobs_expire() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let id = created(&server, &user, json!("SELECT 1")).await;
    finished(&server, &user, &id).await;
    let mut meta = carto_sql_api::testing::cluster();
    meta.dbname("carto_meta");
    let client = carto_sql_api::db::connect(&meta).await.unwrap();
    client
        .execute(
            "UPDATE batch_jobs SET updated_at = updated_at - interval '119 minutes'              WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let _second = TestServer::start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    job(&server, &user, &id).await;
    client
        .execute(
            "UPDATE batch_jobs SET updated_at = updated_at - interval '2 minutes'              WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let _third = TestServer::start().await;
    let start = Instant::now();
    loop {
        let (status, body) = answer(
            http()
                .get(format!("{}/{id}", jobs_url(&server, &user)))
                .query(&[("api_key", &user.api_key)]),
        )
        .await;
        if status == 400 {
            assert_eq!(error_of(&body), format!("Job with id {id} not found"));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server that dies mid-job leaves it to the next: re-queued, run again, done.
#[tokio::test]
async fn a_job_left_by_a_dead_server_is_run_again() {
    let first = TestServer::start().await;
    let user = first.create_user().await;
    sql(&first, &user, "CREATE TABLE t (x int)").await;
    let id = created(
        &first,
        &user,
        json!("INSERT INTO t VALUES (1); SELECT pg_sleep(2)"),
    )
    .await;
    wait_for(&first, &user, &id, &["running"], Duration::from_secs(20)).await;
    drop(first);
    let second = TestServer::start().await;
    let job = finished(&second, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    // The interrupted run was rolled back: one row, from the second run.
    assert_eq!(crate::support::count(&second, &user, "t").await, 1);
}

/// A graceful shutdown cancels the running query and puts its job back in the queue.
#[tokio::test]
async fn shutdown_requeues_running_jobs() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let id = created(&server, &user, json!(["SELECT 1", "SELECT pg_sleep(60)"])).await;
    wait_for(&server, &user, &id, &["running"], Duration::from_secs(20)).await;
    // Wait for the second query to be the running one.
    let start = Instant::now();
    while job(&server, &user, &id).await["query"][1]["status"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.server().jobs().shutdown().await;
    let job = job(&server, &user, &id).await;
    // Back in the queue, unless another test's server already took it over.
    assert!(
        ["pending", "running"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    assert_eq!(job["query"][0]["status"], "done");
    if job["status"] == "pending" {
        assert_eq!(job["query"][1]["status"], "pending", "{job}");
    }
    cancel(&server, &user, &id).await;
}

/// A server that died after a query committed but before it saved the job: the commit marker
/// tells the next server the query ran, so it is not run again; without the marker it is.
#[tokio::test]
async fn committed_queries_of_a_dead_server_are_not_run_again() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (x int)").await;
    let id = created(
        &server,
        &user,
        json!(["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"]),
    )
    .await;
    assert_eq!(finished(&server, &user, &id).await["status"], "done");
    let mut meta = carto_sql_api::testing::cluster();
    meta.dbname("carto_meta");
    let meta = carto_sql_api::db::connect(&meta).await.unwrap();
    // As the dead server left it: the second query running, the job running, no lock held.
    let rewind_sql = "UPDATE batch_jobs SET status = 'running', \
         query = jsonb_set(query::jsonb, '{1,status}', '\"running\"')::text WHERE job_id = $1";
    meta.execute(rewind_sql, &[&id]).await.unwrap();
    let second = TestServer::start().await;
    let job = finished(&second, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["query"][1]["status"], "done", "{job}");
    assert_eq!(crate::support::count(&second, &user, "t").await, 2);

    // Without its marker the step counts as not committed and runs again.
    server
        .superuser_client(&user)
        .await
        .execute(
            "DELETE FROM cartodb.cdb_batch_runs WHERE job_id = $1 AND step = 'q1'",
            &[&id],
        )
        .await
        .unwrap();
    meta.execute(rewind_sql, &[&id]).await.unwrap();
    let _third = TestServer::start().await;
    let job = finished(&second, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(crate::support::count(&second, &user, "t").await, 3);
}
