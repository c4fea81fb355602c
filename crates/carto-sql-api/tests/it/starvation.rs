//! One user's anonymous callers cannot starve anyone: they hold at most the user's share of
//! connections, a request finding none free is answered 429 with `Retry-After` instead of
//! hanging, and the user's master key and other users keep working.

use std::time::{Duration, Instant};

use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;

use crate::support::{http, sql_as};

/// The share of connections of one user's anonymous callers and regular keys in this test.
const SHARE: i64 = 4;

/// `/sql` with `api_key` (none: anonymous): status, `Retry-After`, body.
async fn ask(
    server: &TestServer,
    user: &TestUser,
    api_key: Option<&str>,
    q: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let (status, headers, body) = sql_as(server, user, api_key, q).await;
    let retry_after = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, body)
}

/// Connections the role `role` has open (busy or idle), counted as superuser.
async fn connections_of(server: &TestServer, user: &TestUser, role: &str) -> i64 {
    server
        .superuser_client(user)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn anonymous_sleepers_starve_nobody() {
    let server = TestServer::with_config(Config {
        user_connections: SHARE as usize,
        pool_wait_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let user = server.create_user().await;
    let other = server.create_user().await;
    let key = server
        .server()
        .accounts()
        .create_key(&user.name, Some("sleepy"), None, &[])
        .await
        .unwrap();

    let sleepers: Vec<_> = (0..40)
        .map(|_| {
            let url = format!("{}/sql", server.api_url(&user));
            tokio::spawn(async move {
                http()
                    .post(url)
                    .form(&[("q", "SELECT pg_sleep(40)")])
                    .send()
                    .await
            })
        })
        .collect();
    let started = Instant::now();
    while server
        .running_statements(&user, "SELECT pg_sleep(40)")
        .await
        < SHARE
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sleepers never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The master key has room of its own.
    let asked = Instant::now();
    let (status, _, body) = ask(&server, &user, Some(&user.api_key), "SELECT 1 AS n").await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &1.into()), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "master waited {:?}",
        asked.elapsed()
    );

    // Another anonymous caller, and a regular key of the same user (same share), are told to
    // come back instead of hanging.
    for api_key in [None, Some(key.api_key.as_str())] {
        let asked = Instant::now();
        let (status, retry_after, body) = ask(&server, &user, api_key, "SELECT 1 AS n").await;
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "waited {:?}",
            asked.elapsed()
        );
        assert_eq!(status, 429, "{body}");
        assert!(retry_after.is_some(), "no Retry-After: {body}");
        assert!(
            body["error"][0]
                .as_str()
                .unwrap()
                .contains("too many queries"),
            "{body}"
        );
    }

    // Another user is not affected at all.
    let (status, _, body) = ask(&server, &other, None, "SELECT 1 AS n").await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &1.into()), "{body}");

    // The user never held more than its share, however many callers asked.
    let public_role = format!("carto_{}_public", user.name);
    assert!(connections_of(&server, &user, &public_role).await <= SHARE);

    // The sleepers' callers give up: their queries end with them.
    for sleeper in sleepers {
        sleeper.abort();
    }
    assert!(server.backends_gone(&user, "SELECT pg_sleep").await);
}

/// Once the anonymous callers are gone, a regular key of the same user gets the room back
/// without waiting for the idle connections to time out.
#[tokio::test]
async fn idle_connections_make_room_for_another_key() {
    let server = TestServer::with_config(Config {
        user_connections: 2,
        pool_wait_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let user = server.create_user().await;
    let key = server
        .server()
        .accounts()
        .create_key(&user.name, Some("later"), None, &[])
        .await
        .unwrap();
    // Two at once, so that the public role's pool keeps two idle connections.
    let (a, b) = tokio::join!(
        ask(&server, &user, None, "SELECT pg_sleep(0.5)"),
        ask(&server, &user, None, "SELECT pg_sleep(0.5)")
    );
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.2, b.2);
    let (status, _, body) = ask(&server, &user, Some(&key.api_key), "SELECT 1 AS n").await;
    assert_eq!(status, 200, "{body}");
}
