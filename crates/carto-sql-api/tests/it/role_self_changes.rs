//! Whatever a key's role does to itself (its password, its own defaults) must not change how
//! the server connects as that role later: anonymous callers, regular keys and master keys.
//! Each change is made through `/sql`, then a fresh server on the same cluster (whose pools
//! must open new connections) is asked for data as the same key.

use carto_sql_api::testing::{TestServer, TestUser};
use serde_json::Value;

use crate::support;

/// `/sql` with `api_key` (none: anonymous): status and JSON.
async fn sql_as(
    server: &TestServer,
    user: &TestUser,
    api_key: Option<&str>,
    q: &str,
) -> (u16, Value) {
    let (status, _, body) = support::sql_as(server, user, api_key, q).await;
    (status, body)
}

/// What a role may do to itself, for `user`'s database: its own defaults first, its password
/// last (a role that cannot log in would hide whether the defaults were dealt with).
fn self_changes(user: &TestUser) -> Vec<String> {
    let database = format!("carto_user_{}", user.name);
    vec![
        "ALTER ROLE CURRENT_USER SET statement_timeout = '1ms'".into(),
        "ALTER ROLE CURRENT_USER SET search_path = nowhere".into(),
        format!("ALTER ROLE CURRENT_USER IN DATABASE {database} SET statement_timeout = '1ms'"),
        format!("ALTER ROLE CURRENT_USER IN DATABASE {database} SET search_path = nowhere"),
        "ALTER ROLE CURRENT_USER PASSWORD 'x'".into(),
        "DO $$ BEGIN ALTER ROLE CURRENT_USER PASSWORD 'y'; END $$".into(),
        // Both at once: the password must be repaired before the defaults can be seen.
        "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on; \
         ALTER ROLE CURRENT_USER PASSWORD 'z'"
            .into(),
    ]
}

/// For each change: make it as `api_key`, then check that a new server still answers that
/// key with data, under the server's own settings rather than the role's. Every change is
/// tried, and all that broke something are reported.
async fn survives_its_own_changes(api_key: Option<&str>, user: &TestUser, server: &TestServer) {
    let mut broken = Vec::new();
    for change in self_changes(user) {
        let (status, body) = sql_as(server, user, api_key, &change).await;
        assert_eq!(status, 200, "{change}: {body}");

        // New pools, so new connections as the role.
        let fresh = TestServer::start().await;
        let (status, body) = sql_as(
            &fresh,
            user,
            api_key,
            "SELECT pg_sleep(0.05), 1 AS n, current_setting('search_path') AS path, \
                    current_setting('statement_timeout') AS timeout, \
                    current_setting('default_transaction_read_only') AS read_only",
        )
        .await;
        let row = &body["rows"][0];
        let unaffected = status == 200
            && row["n"] == 1
            && row["path"].as_str().is_some_and(|p| p.contains("public"))
            && row["timeout"] != "1ms"
            && row["read_only"] == "off";
        if !unaffected {
            broken.push(format!("after {change}: {status} {body}"));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[tokio::test]
async fn anonymous_callers_cannot_break_their_role() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    survives_its_own_changes(None, &user, &server).await;
}

#[tokio::test]
async fn regular_keys_cannot_break_their_role() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let key = server
        .server()
        .accounts()
        .create_key(&user.name, Some("self-changer"), None, &[])
        .await
        .unwrap();
    survives_its_own_changes(Some(&key.api_key), &user, &server).await;
}

#[tokio::test]
async fn master_keys_cannot_break_their_role() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    survives_its_own_changes(Some(&user.api_key), &user, &server).await;
}

/// The server-wide statement timeout of anonymous callers holds whatever their role sets, and
/// does not apply to the master key.
#[tokio::test]
async fn the_key_statement_timeout_is_the_servers() {
    let server = TestServer::with_config(carto_sql_api::Config {
        key_statement_timeout: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let user = server.create_user().await;
    let (status, body) = sql_as(
        &server,
        &user,
        None,
        "ALTER ROLE CURRENT_USER SET statement_timeout = 0",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let fresh = TestServer::with_config(carto_sql_api::Config {
        key_statement_timeout: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let (status, body) = sql_as(&fresh, &user, None, "SELECT pg_sleep(3)").await;
    assert_eq!(status, 429, "{body}");
    let (status, body) = sql_as(&fresh, &user, Some(&user.api_key), "SELECT pg_sleep(1)").await;
    assert_eq!(status, 200, "{body}");
}

/// Batch jobs connect as the role that created them on a connection of their own: that one
/// is repaired too, so a key that changed its password and defaults still runs its jobs.
#[tokio::test]
async fn batch_jobs_run_after_their_role_changed_itself() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    for change in [
        "ALTER ROLE CURRENT_USER PASSWORD 'x'",
        "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on",
    ] {
        let (status, body) = sql_as(&server, &user, Some(&user.api_key), change).await;
        assert_eq!(status, 200, "{change}: {body}");
    }
    let id = crate::jobs::created(
        &server,
        &user,
        serde_json::json!("CREATE TABLE made_by_a_job (x int)"),
    )
    .await;
    let job = crate::jobs::finished(&server, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
}
