//! The row writer: values go in with `copy_from_rows` and come back identical.

use carto::Client;
use carto_sql_api::testing::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};

use crate::support::{create, path_client};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: i64,
    s: Option<String>,
    n: Option<f64>,
    b: bool,
}

/// Strings rich in what COPY text must escape, plus any Unicode (but NUL, which
/// PostgreSQL text cannot hold).
fn text() -> impl Strategy<Value = String> {
    let tricky = prop_oneof![
        Just('\t'),
        Just('\n'),
        Just('\r'),
        Just('\\'),
        Just('.'),
        Just('"'),
        Just('\''),
        Just(','),
        Just('N'),
        Just('é'),
        Just('🦀'),
        any::<char>().prop_filter("no NUL", |c| *c != '\0'),
    ];
    proptest::collection::vec(tricky, 0..24).prop_map(String::from_iter)
}

fn rows() -> impl Strategy<Value = Vec<(Option<String>, Option<f64>, bool)>> {
    proptest::collection::vec(
        (
            proptest::option::of(text()),
            proptest::option::of(-1e12f64..1e12),
            any::<bool>(),
        ),
        1..12,
    )
}

#[test]
fn values_round_trip_through_copy() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, client) = runtime.block_on(async {
        let server = TestServer::start().await;
        let user = server.create_user().await;
        let client = path_client(&server, &user);
        create(
            &client,
            "CREATE TABLE r (id bigint, s text, n float8, b boolean)",
        )
        .await;
        (server, client)
    });
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&rows(), |values| {
            let rows: Vec<Row> = values
                .into_iter()
                .enumerate()
                .map(|(i, (s, n, b))| Row {
                    id: i as i64,
                    s,
                    n,
                    b,
                })
                .collect();
            let back = runtime.block_on(round_trip(&client, &rows));
            prop_assert_eq!(back, rows);
            Ok(())
        })
        .unwrap();
    drop(server);
}

async fn round_trip(client: &Client, rows: &[Row]) -> Vec<Row> {
    client.sql().send("TRUNCATE r").await.unwrap();
    let outcome = client
        .copy()
        .copy_from_rows(
            "r",
            &["id", "s", "n", "b"],
            futures::stream::iter(rows.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(outcome.total_rows, rows.len() as u64);
    // Back through COPY TO as CSV, read with a CSV-aware split ...
    let mut csv = Vec::new();
    client
        .copy()
        .copy_to_writer(
            "COPY (SELECT s FROM r ORDER BY id) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)",
            &mut csv,
        )
        .await
        .unwrap();
    assert_eq!(
        parse_quoted_csv(&String::from_utf8(csv).unwrap()),
        rows.iter().map(|r| r.s.clone()).collect::<Vec<_>>()
    );
    // ... and through SQL as JSON.
    client
        .sql()
        .send_as::<Row>("SELECT id, s, n, b FROM r ORDER BY id")
        .await
        .unwrap()
        .rows
}

/// One column of CSV where every non-NULL value is quoted (`FORCE_QUOTE *`): an unquoted
/// empty field is NULL.
fn parse_quoted_csv(text: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        if chars.peek() == Some(&'\n') {
            chars.next();
            out.push(None);
            continue;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    value.push('"');
                }
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated quote"),
            }
        }
        assert_eq!(chars.next(), Some('\n'));
        out.push(Some(value));
    }
    out
}
