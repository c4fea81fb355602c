//! The first `/sql` endpoint: enough to create, fill, query and drop tables.

use carto_sql_api::testing::TestServer;
use serde_json::{json, Value};

use crate::support::{error_of, http, sql};

#[tokio::test]
async fn create_query_and_drop_through_the_api() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let body = sql(
        &server,
        &user,
        "CREATE TABLE t (id int, name text, the_geom geometry(Point, 4326))",
    )
    .await;
    assert_eq!(body["rows"], json!([]));
    let body = sql(
        &server,
        &user,
        "INSERT INTO t VALUES (1, 'a', 'SRID=4326;POINT(0 0)'), (2, NULL, NULL)",
    )
    .await;
    assert_eq!(body["total_rows"], 2);

    let body = sql(
        &server,
        &user,
        "SELECT 1::int a, 'a'::text f, true g, 'POINT(0 0)'::geometry h, '2000-01-01T00:00:00Z'::timestamptz e, \
         '{\"k\": [1]}'::json j, 'NaN'::float8 n, 12345678901234::int8 big",
    )
    .await;
    assert_eq!(
        body["rows"],
        json!([{"a": 1, "f": "a", "g": true, "h": "010100000000000000000000000000000000000000",
                "e": "2000-01-01T00:00:00Z", "j": {"k": [1]}, "n": "NaN", "big": 12345678901234_i64}])
    );
    let fields = &body["fields"];
    assert_eq!(fields["a"], json!({"type": "number", "pgtype": "int4"}));
    assert_eq!(fields["f"]["type"], "string");
    assert_eq!(fields["g"]["type"], "boolean");
    assert_eq!(fields["h"]["type"], "geometry");
    assert_eq!(fields["e"]["type"], "date");
    // Row keys keep the column order.
    let keys: Vec<&String> = body["rows"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["a", "f", "g", "h", "e", "j", "n", "big"]);

    let body = sql(
        &server,
        &user,
        "SELECT id, name FROM t ORDER BY id; SELECT count(*) AS n FROM t",
    )
    .await;
    assert_eq!(
        body["rows"],
        json!([{"id": 1, "name": "a"}, {"id": 2, "name": null}, {"n": 2}])
    );
    assert_eq!(body["total_rows"], 1);
    sql(&server, &user, "DROP TABLE t").await;
}

#[tokio::test]
async fn errors_are_json() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let url = format!("{}/sql", server.api_url(&user));
    let response = http().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(response.headers()["content-disposition"], "inline");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"error": ["You must indicate a sql query"]}));

    let response = http()
        .post(&url)
        .json(&json!({"q": "SELECT * FROM nope", "api_key": user.api_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_of(&body), "relation \"nope\" does not exist");

    let response = http()
        .post(&url)
        .form(&[
            ("q", "COPY copy_test_table FROM stdin;"),
            ("api_key", &user.api_key),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        error_of(&body),
        "COPY from stdin failed: No source stream defined"
    );

    // A failing statement rolls back the whole request.
    let response = http()
        .post(&url)
        .form(&[
            ("q", "CREATE TABLE half (id int); SELECT 1/0"),
            ("api_key", &user.api_key),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = sql(
        &server,
        &user,
        "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'half'",
    )
    .await;
    assert_eq!(body["rows"][0]["n"], 0);
}

#[tokio::test]
async fn a_transaction_left_open_does_not_leak_into_the_next_request() {
    let server = TestServer::with_config(carto_sql_api::Config {
        pool_size: 1,
        ..Default::default()
    })
    .await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (id int)").await;
    sql(&server, &user, "BEGIN; INSERT INTO t VALUES (1)").await;
    let body = sql(&server, &user, "SELECT count(*) AS n FROM t").await;
    assert_eq!(body["rows"][0]["n"], 0);
    sql(&server, &user, "SET search_path = nowhere").await;
    let body = sql(&server, &user, "SELECT count(*) AS n FROM t").await;
    assert_eq!(body["rows"][0]["n"], 0);
}
