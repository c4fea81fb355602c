//! `carto transfer` between two users of one server.

use carto_sql_api::testing::TestServer;
use predicates::prelude::*;

use crate::support::{bare, carto, sql, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_moves_between_accounts_identically() {
    let server = TestServer::start().await;
    let alice = server.create_user().await;
    let bob = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(
        &server,
        &alice,
        "CREATE TABLE places (id int, name text, value numeric(10, 2), seen timestamptz, the_geom geometry(Point, 4326)); \
         INSERT INTO places SELECT i, E'place\\t' || i || ' \"q\" ü', i / 3.0, '2024-01-01'::timestamptz + i * interval '1 day', \
                ST_SetSRID(ST_MakePoint(i, i / 2.0), 4326) FROM generate_series(1, 5000) i; \
         INSERT INTO places (id) VALUES (0)",
    )
    .await;
    // Alice's account as a saved profile, Bob's as a URL and key.
    carto(&server, &alice, dir.path())
        .args(["profile", "add", "alice"])
        .assert()
        .success();
    let out = bare(dir.path())
        .args([
            "transfer",
            "--from",
            "alice",
            "--to",
            &server.base_url(&bob),
            "--to-api-key",
            &bob.api_key,
        ])
        .args(["--table", "places", "--as", "copied", "--create", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source_rows"], 5001);
    assert_eq!(report["copied_rows"], 5001);

    let dump = |columns: &str, table: &str| {
        format!("COPY (SELECT {columns} FROM {table} ORDER BY id) TO STDOUT")
    };
    let source = carto(&server, &alice, dir.path())
        .args([
            "copy",
            "to",
            "-",
            "--query",
            &dump("id, name, value, seen, the_geom", "places"),
        ])
        .output()
        .unwrap();
    let copied = carto(&server, &bob, dir.path())
        .args([
            "copy",
            "to",
            "-",
            "--query",
            &dump("id, name, value, seen, the_geom", "copied"),
        ])
        .output()
        .unwrap();
    assert!(source.status.success() && copied.status.success());
    assert_eq!(source.stdout.len(), copied.stdout.len());
    assert!(source.stdout == copied.stdout, "contents differ");

    // The destination kept the source's column types.
    let types = sql(
        &server,
        &bob,
        "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute \
         WHERE attrelid = 'copied'::regclass AND attname IN ('value', 'seen') ORDER BY attname",
    )
    .await;
    assert_eq!(
        types,
        serde_json::json!([{"t": "timestamp with time zone"}, {"t": "numeric(10,2)"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_commits_nothing_at_the_destination() {
    let server = TestServer::start().await;
    let alice = server.create_user().await;
    let bob = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(
        &server,
        &alice,
        "CREATE TABLE n (i int); INSERT INTO n SELECT generate_series(1, 300000)",
    )
    .await;
    sql(&server, &bob, "CREATE TABLE n (i int)").await;
    let out = bare(dir.path())
        .args([
            "transfer",
            "--from",
            &server.base_url(&alice),
            "--from-api-key",
            &alice.api_key,
        ])
        .args(["--to", &server.base_url(&bob), "--to-api-key", &bob.api_key])
        .args([
            "--table",
            "n",
            "--query",
            "SELECT 1 / (250000 - i) FROM n",
            "--format",
            "text",
        ])
        .assert()
        .failure()
        .get_output()
        .clone();
    assert!(
        text(&out.stderr).contains("division by zero"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        sql(&server, &bob, "SELECT count(*) AS c FROM n").await[0]["c"],
        0
    );

    bare(dir.path())
        .args([
            "transfer", "--from", "nobody", "--to", "nobody", "--table", "n",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no profile named 'nobody'"));
}
