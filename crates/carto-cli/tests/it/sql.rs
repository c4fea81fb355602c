//! `carto sql` with several statements: the table shows the last statement's result (as
//! CARTO's csv and geojson formats do); piped JSON stays the server's answer.

use carto_sql_api::testing::TestServer;

use crate::support::{carto, text};

/// What `carto sql SQL --format table` prints.
fn table(
    server: &TestServer,
    user: &carto_sql_api::testing::TestUser,
    dir: &std::path::Path,
    sql: &str,
) -> String {
    let out = carto(server, user, dir)
        .args(["sql", sql, "--format", "table"])
        .assert()
        .success()
        .get_output()
        .clone();
    text(&out.stdout)
}

/// The header line of a table (the first line holding column names).
fn header(shown: &str) -> String {
    shown
        .lines()
        .find(|l| l.starts_with('│'))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_shows_the_last_statement() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();

    let shown = table(
        &server,
        &user,
        dir.path(),
        "SELECT 1 AS a; SELECT 2 AS b, 3 AS c",
    );
    assert!(
        header(&shown).contains(" b ") && header(&shown).contains(" c "),
        "{shown}"
    );
    assert!(!header(&shown).contains(" a "), "{shown}");
    assert!(shown.contains("│ 2 ┆ 3 │"), "{shown}");
    assert!(!shown.contains("│ 1"), "{shown}");
    assert!(shown.ends_with("(1 row)\n"), "{shown}");

    // The earlier statement returning more rows than the last one.
    let shown = table(
        &server,
        &user,
        dir.path(),
        "SELECT x AS a FROM generate_series(1, 5) x; SELECT 'z' AS b",
    );
    assert!(shown.contains("│ z │") && !shown.contains("│ 1"), "{shown}");
    assert!(shown.ends_with("(1 row)\n"), "{shown}");

    let shown = table(
        &server,
        &user,
        dir.path(),
        "CREATE TABLE m (id int, name text); \
         INSERT INTO m VALUES (1, 'one'), (2, 'two') RETURNING id, name",
    );
    assert!(
        header(&shown).contains(" id ") && header(&shown).contains(" name "),
        "{shown}"
    );
    assert!(
        shown.contains("│ 1  ┆ one  │") && shown.contains("│ 2  ┆ two  │"),
        "{shown}"
    );
    assert!(shown.ends_with("(2 rows)\n"), "{shown}");

    // A last statement without rows: its affected count, no columns of the statement before.
    let shown = table(
        &server,
        &user,
        dir.path(),
        "SELECT id FROM m; INSERT INTO m VALUES (3, 'three'), (4, 'four'), (5, 'five')",
    );
    assert_eq!(shown, "(3 rows)\n");

    // A last SELECT with no rows shows its columns and nothing else.
    let shown = table(
        &server,
        &user,
        dir.path(),
        "SELECT id FROM m; SELECT name AS only_name FROM m WHERE false",
    );
    assert!(header(&shown).contains(" only_name "), "{shown}");
    assert!(!shown.contains("one"), "{shown}");
    assert!(shown.ends_with("(0 rows)\n"), "{shown}");

    // Piped JSON is the server's answer as it is: the rows of both statements.
    let out = carto(&server, &user, dir.path())
        .args(["sql", "SELECT 1 AS a; SELECT 2 AS b, 3 AS c"])
        .assert()
        .success()
        .get_output()
        .clone();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["rows"],
        serde_json::json!([{"a": 1}, {"b": 2, "c": 3}])
    );
    assert_eq!(answer["total_rows"], 1);
}
