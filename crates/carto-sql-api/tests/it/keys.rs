//! Regular API keys: a role per key with exactly its grants (vector §14.7), the CLI that
//! manages them, and per-user limits from the CLI.

use std::process::Command;

use carto_sql_api::accounts::{Grant, KeyKind};
use carto_sql_api::testing::TestServer;
use serde_json::{json, Value};

use crate::support::{cli, database_url, error_of, http, sql};

fn grants(list: &[&str]) -> Vec<Grant> {
    list.iter().map(|g| g.parse().unwrap()).collect()
}

async fn post_sql(request: reqwest::RequestBuilder, q: &str) -> (u16, Value) {
    let response = request.json(&json!({ "q": q })).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn vector_14_7_scoped_keys() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(
        &server,
        &user,
        "CREATE TABLE scoped_table_1 AS SELECT 1 AS id",
    )
    .await;
    let accounts = server.server().accounts();
    accounts
        .create_key(
            &user.name,
            Some("regular1"),
            Some("regular1"),
            &grants(&["scoped_table_1:select"]),
        )
        .await
        .unwrap();
    accounts
        .create_key(&user.name, Some("regular2"), Some("regular2"), &[])
        .await
        .unwrap();
    let url = format!("{}/sql", server.api_url(&user));
    let q = "select * from scoped_table_1";

    let (status, body) = post_sql(http().post(&url).basic_auth("wadus", Some("regular2")), q).await;
    assert_eq!(
        (status, body),
        (403, json!({"error": ["permission denied"]}))
    );
    let (status, body) = post_sql(
        http().post(&url).basic_auth(&user.name, Some("regular2")),
        q,
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (403, "permission denied for table scoped_table_1")
    );
    let (status, body) = post_sql(
        http().post(&url).basic_auth(&user.name, Some("regular1")),
        q,
    )
    .await;
    assert_eq!((status, &body["rows"]), (200, &json!([{"id": 1}])));
}

#[tokio::test]
async fn writes_outside_the_grants_are_refused_by_the_database() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(
        &server,
        &user,
        "CREATE TABLE t (cartodb_id serial PRIMARY KEY, name text); CREATE TABLE other (x int); \
         CREATE SCHEMA s; CREATE TABLE s.inner_t AS SELECT 7 AS v",
    )
    .await;
    let key = server
        .server()
        .accounts()
        .create_key(
            &user.name,
            None,
            None,
            &grants(&["t:select,insert", "s.inner_t:select"]),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&key).unwrap()["grants"],
        json!([
            {"table": "public.t", "privileges": ["select", "insert"]},
            {"table": "s.inner_t", "privileges": ["select"]}
        ])
    );
    let url = format!("{}/sql", server.api_url(&user));
    let run = |q: &'static str| {
        let request = http()
            .post(&url)
            .form(&[("q", q), ("api_key", key.api_key.as_str())]);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    // INSERT draws from the serial's sequence: granted with the table.
    let (status, body) = run("INSERT INTO t (name) VALUES ('a')").await;
    assert_eq!((status, &body["total_rows"]), (200, &json!(1)), "{body}");
    let (status, body) = run("SELECT v FROM s.inner_t").await;
    assert_eq!((status, &body["rows"]), (200, &json!([{"v": 7}])));
    for (q, message) in [
        ("UPDATE t SET name = 'b'", "permission denied for table t"),
        ("DELETE FROM t", "permission denied for table t"),
        (
            "INSERT INTO other VALUES (1)",
            "permission denied for table other",
        ),
        ("SELECT * FROM other", "permission denied for table other"),
        (
            "CREATE TABLE mine (x int)",
            "permission denied for schema public",
        ),
    ] {
        let (status, body) = run(q).await;
        assert_eq!((status, error_of(&body)), (403, message), "{q}");
    }
    let (status, body) = run("DROP TABLE t").await;
    assert_eq!((status, error_of(&body)), (400, "must be owner of table t"));
    // COPY FROM with the key: allowed where INSERT is.
    let response = http()
        .post(format!("{}/sql/copyfrom", server.api_url(&user)))
        .query(&[
            ("q", "COPY t (name) FROM STDIN"),
            ("api_key", key.api_key.as_str()),
        ])
        .body("b\nc\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(crate::support::count(&server, &user, "t").await, 3);
}

#[tokio::test]
async fn bad_grants_leave_nothing_behind() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (x int)").await;
    let accounts = server.server().accounts();
    let roles = |client: tokio_postgres::Client, name: String| async move {
        client
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
                &[&format!("carto_{name}_key_%")],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let error = accounts
        .create_key(
            &user.name,
            None,
            None,
            &grants(&["t:select", "\"t; DROP TABLE t\":select"]),
        )
        .await
        .unwrap_err();
    let chain = carto_sql_api::error::chain(&error);
    assert!(chain.contains("does not exist"), "{chain}");
    assert_eq!(crate::support::count(&server, &user, "t").await, 0);
    assert_eq!(
        roles(server.superuser_client(&user).await, user.name.clone()).await,
        0
    );
    assert!("t:all".parse::<Grant>().is_err());
    let keys = accounts.keys(&user.name).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.kind).collect::<Vec<_>>(),
        [KeyKind::Master, KeyKind::Default]
    );
}

#[tokio::test]
async fn list_and_delete_keys() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (x int)").await;
    let accounts = server.server().accounts();
    let key = accounts
        .create_key(&user.name, Some("reader"), None, &grants(&["t:select"]))
        .await
        .unwrap();
    let dup = accounts
        .create_key(&user.name, Some("reader"), None, &[])
        .await;
    assert!(dup.is_err());
    let listed = serde_json::to_value(accounts.keys(&user.name).await.unwrap()).unwrap();
    assert_eq!(listed[2]["name"], "reader");
    assert_eq!(listed[2]["type"], "regular");
    assert_eq!(listed[2]["grants"], json!(["public.t:select"]));
    assert!(!listed.to_string().contains(&key.api_key));

    let url = format!("{}/sql", server.api_url(&user));
    let status = |key: String| {
        let request = http()
            .get(&url)
            .query(&[("q", "SELECT * FROM t"), ("api_key", key.as_str())]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(key.api_key.clone()).await, 200);
    accounts.delete_key(&user.name, "reader").await.unwrap();
    assert_eq!(status(key.api_key.clone()).await, 401);
    assert!(accounts.delete_key(&user.name, "reader").await.is_err());
    // Built-in keys are not deletable this way.
    assert!(accounts
        .delete_key(&user.name, &user.api_key)
        .await
        .is_err());
}

#[tokio::test]
async fn cli_manages_keys_and_limits() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (x int)").await;
    let name = user.name.as_str();

    let (ok, key, stderr) = cli(&[
        "key",
        "add",
        name,
        "--grant",
        "t:select,insert",
        "--name",
        "etl",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(key["username"], name);
    assert_eq!(key["name"], "etl");
    assert_eq!(
        key["grants"],
        json!([{"table": "public.t", "privileges": ["select", "insert"]}])
    );
    let token = key["api_key"].as_str().unwrap().to_string();
    let response = http()
        .get(format!("{}/sql", server.api_url(&user)))
        .query(&[
            ("q", "INSERT INTO t VALUES (1)"),
            ("api_key", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let (ok, _, stderr) = cli(&["key", "add", name, "--grant", "t:drop"]);
    assert!(!ok);
    assert!(stderr.contains("unknown privilege 'drop'"), "{stderr}");

    let (ok, list, _) = cli(&["key", "list", name]);
    assert!(ok);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let (ok, _, stderr) = cli(&["key", "delete", name, "etl"]);
    assert!(ok, "{stderr}");
    let (_, list, _) = cli(&["key", "list", name]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    let (ok, limits, stderr) = cli(&["user", "limits", name, "--rate-limit", "query=1/2/3"]);
    assert!(ok, "{stderr}");
    assert_eq!(limits["rate_limits"], json!({"query": "1/2/3s"}));
    assert_eq!(limits["batch_timeout_ms"], Value::Null);
    let (ok, limits, _) = cli(&[
        "user",
        "limits",
        name,
        "--clear-rate-limit",
        "query",
        "--batch-timeout",
        "100",
    ]);
    assert!(ok);
    assert_eq!(limits["rate_limits"], json!({}));
    assert_eq!(limits["batch_timeout_ms"], 100);
    assert_eq!(
        server.server().jobs().user_timeout(name).await.unwrap(),
        Some(std::time::Duration::from_millis(100))
    );
    let (_, limits, _) = cli(&["user", "limits", name, "--clear-batch-timeout"]);
    assert_eq!(limits["batch_timeout_ms"], Value::Null);
    let (ok, _, stderr) = cli(&["user", "limits", "nobody-here"]);
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// `serve --rate-limit` reaches the limiter: the binary on the test cluster refuses the second
/// request of a 0/1/60 limit.
#[tokio::test]
async fn serve_takes_rate_limit_flags() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let listen = crate::support::free_local_addr();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_carto-sql-api"))
        .arg("--database-url")
        .arg(database_url())
        .args([
            "serve",
            "--listen",
            &listen,
            "--rate-limit",
            "query=0/1/60",
            "--batch-workers",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!(
        "http://{listen}/user/{}/api/v2/sql?q=SELECT%201&api_key={}",
        user.name, user.api_key
    );
    let mut first = None;
    for _ in 0..150 {
        if let Ok(response) = reqwest::get(&url).await {
            first = Some(response.status().as_u16());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let second = reqwest::get(&url).await.unwrap();
    let second_status = second.status().as_u16();
    let limit = second.headers()["carto-rate-limit-limit"].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = serve.wait().unwrap();
    assert_eq!((first, second_status), (Some(200), 429));
    assert_eq!(limit, "1");
    assert!(exit.success());
}
