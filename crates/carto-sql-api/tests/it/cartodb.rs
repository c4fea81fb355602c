//! CARTO table conventions: `CDB_CartodbfyTable` and the helpers of the user template, driven
//! through the API as the master key (the table owner), checked as superuser.

use carto_sql_api::testing::{TestServer, TestUser};
use serde_json::Value;

use crate::support::{copy_from, copy_to, count, error_of, http};

/// Runs `q` through `/sql` as `user`'s master key; status and JSON answer.
async fn sql_answer(server: &TestServer, user: &TestUser, q: &str) -> (u16, Value) {
    let response = http()
        .post(format!("{}/sql", server.api_url(user)))
        .form(&[("q", q), ("api_key", &user.api_key)])
        .send()
        .await
        .expect("sql request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json answer");
    (status, body)
}

/// Runs `q` as the master key, panicking on an error answer; the rows.
async fn rows(server: &TestServer, user: &TestUser, q: &str) -> Vec<Value> {
    let (status, body) = sql_answer(server, user, q).await;
    assert_eq!(status, 200, "{q}: {body}");
    body["rows"].as_array().expect("rows").clone()
}

/// `(name, type)` of the columns of `table`, in order.
async fn columns(server: &TestServer, user: &TestUser, table: &str) -> Vec<(String, String)> {
    server
        .superuser_client(user)
        .await
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&table],
        )
        .await
        .expect("columns")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Names of the indexes, then of the triggers, of `table`, sorted.
async fn indexes_and_triggers(
    server: &TestServer,
    user: &TestUser,
    table: &str,
) -> (Vec<String>, Vec<String>) {
    let client = server.superuser_client(user).await;
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect();
    let indexes = client
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index \
             WHERE indrelid = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .expect("indexes");
    let triggers = client
        .query(
            "SELECT tgname::text FROM pg_trigger \
             WHERE tgrelid = $1::text::regclass AND NOT tgisinternal ORDER BY 1",
            &[&table],
        )
        .await
        .expect("triggers");
    (names(indexes), names(triggers))
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const CARTO_TRIGGERS: [&str; 4] = [
    "sync_cartodb_id_seq",
    "test_quota",
    "track_updates",
    "update_the_geom_webmercator_trigger",
];

#[tokio::test]
async fn both_call_forms_make_a_carto_table() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    for (table, call) in [
        (
            "two_args",
            "SELECT CDB_CartodbfyTable(current_schema, 'two_args')",
        ),
        ("one_arg", "SELECT CDB_CartodbfyTable('one_arg')"),
        (
            "qualified",
            "SELECT cartodb.CDB_CartodbfyTable('public'::text, 'qualified'::regclass)",
        ),
    ] {
        rows(&server, &user, &format!("CREATE TABLE {table} (name text)")).await;
        let answer = rows(&server, &user, call).await;
        assert_eq!(answer[0]["cdb_cartodbfytable"], table, "{call}");
        assert_eq!(
            columns(&server, &user, table).await,
            pairs(&[
                ("cartodb_id", "bigint"),
                ("the_geom", "geometry(Geometry,4326)"),
                ("the_geom_webmercator", "geometry(Geometry,3857)"),
                ("name", "text"),
            ]),
            "{call}"
        );
        let (indexes, triggers) = indexes_and_triggers(&server, &user, table).await;
        assert_eq!(
            indexes,
            [
                format!("{table}_pkey"),
                format!("{table}_the_geom_idx"),
                format!("{table}_the_geom_webmercator_idx"),
            ]
        );
        assert_eq!(triggers, CARTO_TRIGGERS);
    }
    // The table stays the master role's, and new rows are numbered.
    let owner: String = server
        .superuser_client(&user)
        .await
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'one_arg'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, format!("carto_{}_master", user.name));
    let ids = rows(
        &server,
        &user,
        "INSERT INTO one_arg (name) VALUES ('a'), ('b') RETURNING cartodb_id",
    )
    .await;
    assert_eq!(
        ids,
        [
            serde_json::json!({"cartodb_id": 1}),
            serde_json::json!({"cartodb_id": 2})
        ]
    );

    let (status, body) = sql_answer(
        &server,
        &user,
        "SELECT CDB_CartodbfyTable('nowhere', 'one_arg')",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body), "Invalid schema name \"nowhere\"");
}

#[tokio::test]
async fn a_geometry_column_becomes_the_geom() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE places (name text, geom geometry(Point,4326), n int NOT NULL DEFAULT 7); \
         INSERT INTO places (name, geom) VALUES ('a', 'SRID=4326;POINT(1 2)'), ('b', NULL); \
         CREATE TABLE mercator (geom geometry(Point,3857), label text); \
         INSERT INTO mercator VALUES ('SRID=3857;POINT(111319.49079327357 222684.20850554405)', 'm'); \
         SELECT CDB_CartodbfyTable(current_schema, 'places'); \
         SELECT CDB_CartodbfyTable(current_schema, 'mercator')",
    )
    .await;
    // A 4326 column is renamed (keeping its type); defaults and NOT NULL of others are kept.
    assert_eq!(
        columns(&server, &user, "places").await,
        pairs(&[
            ("cartodb_id", "bigint"),
            ("the_geom", "geometry(Point,4326)"),
            ("the_geom_webmercator", "geometry(Geometry,3857)"),
            ("name", "text"),
            ("n", "integer"),
        ])
    );
    let got = rows(
        &server,
        &user,
        "INSERT INTO places (name) VALUES ('c'); \
         SELECT cartodb_id, ST_AsText(the_geom) g, ST_AsEWKT(ST_SnapToGrid(the_geom_webmercator, 0.01)) m, \
         name, n FROM places ORDER BY cartodb_id",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"cartodb_id": 1, "g": "POINT(1 2)",
                "m": "SRID=3857;POINT(111319.49 222684.21)", "name": "a", "n": 7}),
            serde_json::json!({"cartodb_id": 2, "g": null, "m": null, "name": "b", "n": 7}),
            serde_json::json!({"cartodb_id": 3, "g": null, "m": null, "name": "c", "n": 7}),
        ]
    );
    // Another SRID: kept as it is, the_geom computed from it.
    assert_eq!(
        columns(&server, &user, "mercator").await,
        pairs(&[
            ("cartodb_id", "bigint"),
            ("the_geom", "geometry(Geometry,4326)"),
            ("the_geom_webmercator", "geometry(Geometry,3857)"),
            ("geom", "geometry(Point,3857)"),
            ("label", "text"),
        ])
    );
    let got = rows(
        &server,
        &user,
        "SELECT ST_AsText(ST_SnapToGrid(the_geom, 0.000001)) g FROM mercator",
    )
    .await;
    assert_eq!(got[0]["g"], "POINT(1 2)");
}

#[tokio::test]
async fn a_text_the_geom_in_ewkt_is_converted() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE t (the_geom text, name text); \
         INSERT INTO t VALUES ('SRID=4326;POINT(10 20)', 'p'), ('POINT(-5 5)', 'q'), (NULL, 'r'), \
         ('SRID=3857;POINT(0 0)', 's'); \
         SELECT CDB_CartodbfyTable(current_schema, 't'); \
         CREATE TABLE words (the_geom text, name text); \
         INSERT INTO words VALUES ('not a geometry', 'w'); \
         SELECT CDB_CartodbfyTable(current_schema, 'words')",
    )
    .await;
    assert_eq!(
        columns(&server, &user, "t").await,
        pairs(&[
            ("cartodb_id", "bigint"),
            ("the_geom", "geometry(Geometry,4326)"),
            ("the_geom_webmercator", "geometry(Geometry,3857)"),
            ("name", "text"),
        ])
    );
    let got = rows(
        &server,
        &user,
        "SELECT name, ST_AsEWKT(ST_SnapToGrid(the_geom, 0.000001)) g, \
         ST_AsEWKT(ST_SnapToGrid(the_geom_webmercator, 0.01)) m FROM t ORDER BY cartodb_id",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"name": "p", "g": "SRID=4326;POINT(10 20)",
                "m": "SRID=3857;POINT(1113194.91 2273030.93)"}),
            // No SRID: taken as 4326.
            serde_json::json!({"name": "q", "g": "SRID=4326;POINT(-5 5)",
                "m": "SRID=3857;POINT(-556597.45 557305.26)"}),
            serde_json::json!({"name": "r", "g": null, "m": null}),
            // Another SRID: transformed.
            serde_json::json!({"name": "s", "g": "SRID=4326;POINT(0 0)",
                "m": "SRID=3857;POINT(0 0)"}),
        ]
    );
    // Text that is no geometry is kept under another name.
    assert_eq!(
        columns(&server, &user, "words").await,
        pairs(&[
            ("cartodb_id", "bigint"),
            ("the_geom", "geometry(Geometry,4326)"),
            ("the_geom_webmercator", "geometry(Geometry,3857)"),
            ("the_geom_str", "text"),
            ("name", "text"),
        ])
    );
}

#[tokio::test]
async fn a_table_without_geometry_gets_empty_geometry_columns() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE plain (name text, n numeric); \
         INSERT INTO plain VALUES ('a', 1.5), ('b', 2); \
         SELECT CDB_CartodbfyTable(current_schema, 'plain')",
    )
    .await;
    let got = rows(
        &server,
        &user,
        "SELECT cartodb_id, the_geom, the_geom_webmercator, name, n FROM plain ORDER BY 1",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"cartodb_id": 1, "the_geom": null, "the_geom_webmercator": null,
                "name": "a", "n": 1.5}),
            serde_json::json!({"cartodb_id": 2, "the_geom": null, "the_geom_webmercator": null,
                "name": "b", "n": 2}),
        ]
    );
}

#[tokio::test]
async fn an_integer_cartodb_id_is_reused() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE kept (cartodb_id int, label text); \
         INSERT INTO kept VALUES (10, 'ten'), (20, 'twenty'); \
         SELECT CDB_CartodbfyTable(current_schema, 'kept'); \
         CREATE TABLE pk (id serial PRIMARY KEY, label text); \
         INSERT INTO pk (id, label) VALUES (5, 'five'); \
         SELECT CDB_CartodbfyTable(current_schema, 'pk'); \
         CREATE TABLE dup (cartodb_id int, label text); \
         INSERT INTO dup VALUES (1, 'a'), (1, 'b'); \
         SELECT CDB_CartodbfyTable(current_schema, 'dup')",
    )
    .await;
    assert_eq!(
        columns(&server, &user, "kept").await[0],
        ("cartodb_id".to_string(), "integer".to_string())
    );
    let got = rows(
        &server,
        &user,
        "INSERT INTO kept (label) VALUES ('next'); \
         SELECT cartodb_id, label FROM kept ORDER BY cartodb_id",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"cartodb_id": 10, "label": "ten"}),
            serde_json::json!({"cartodb_id": 20, "label": "twenty"}),
            serde_json::json!({"cartodb_id": 21, "label": "next"}),
        ]
    );
    // A one-column integer primary key becomes cartodb_id.
    let got = rows(
        &server,
        &user,
        "INSERT INTO pk (label) VALUES ('six'); SELECT cartodb_id, label FROM pk ORDER BY 1",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"cartodb_id": 5, "label": "five"}),
            serde_json::json!({"cartodb_id": 6, "label": "six"}),
        ]
    );
    // Duplicates cannot be a key: moved aside, fresh ids given.
    let got = rows(
        &server,
        &user,
        "SELECT cartodb_id, cartodb_id_0, label FROM dup ORDER BY 1",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"cartodb_id": 1, "cartodb_id_0": 1, "label": "a"}),
            serde_json::json!({"cartodb_id": 2, "cartodb_id_0": 1, "label": "b"}),
        ]
    );
}

#[tokio::test]
async fn the_webmercator_column_follows_inserts_updates_and_copy() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE t (name text); SELECT CDB_CartodbfyTable(current_schema, 't')",
    )
    .await;
    let mercator = "SELECT name, ST_AsEWKT(ST_SnapToGrid(the_geom_webmercator, 0.01)) m \
                    FROM t ORDER BY cartodb_id";
    rows(
        &server,
        &user,
        "INSERT INTO t (name, the_geom) VALUES ('a', 'SRID=4326;POINT(1 2)'), ('b', NULL)",
    )
    .await;
    let (status, body) = copy_from(
        &server,
        &user,
        "COPY t (name, the_geom) FROM STDIN WITH (FORMAT csv)",
        "c,SRID=4326;POINT(-5 5)\nd,SRID=4326;MULTIPOINT(0 0)\n",
        false,
    )
    .await;
    assert_eq!(
        (status, &body["total_rows"]),
        (200, &serde_json::json!(2)),
        "{body}"
    );
    assert_eq!(
        rows(&server, &user, mercator).await,
        [
            serde_json::json!({"name": "a", "m": "SRID=3857;POINT(111319.49 222684.21)"}),
            serde_json::json!({"name": "b", "m": null}),
            serde_json::json!({"name": "c", "m": "SRID=3857;POINT(-556597.45 557305.26)"}),
            serde_json::json!({"name": "d", "m": "SRID=3857;MULTIPOINT(0 0)"}),
        ]
    );
    rows(
        &server,
        &user,
        "UPDATE t SET the_geom = 'SRID=4326;POINT(2 2)' WHERE name = 'a'; \
         UPDATE t SET the_geom = 'SRID=4326;POINT(0 0)' WHERE name = 'b'; \
         UPDATE t SET the_geom = NULL WHERE name = 'c'; \
         UPDATE t SET the_geom = 'SRID=4326;POINT(0 90)' WHERE name = 'd'",
    )
    .await;
    assert_eq!(
        rows(&server, &user, mercator).await,
        [
            serde_json::json!({"name": "a", "m": "SRID=3857;POINT(222638.98 222684.21)"}),
            serde_json::json!({"name": "b", "m": "SRID=3857;POINT(0 0)"}),
            serde_json::json!({"name": "c", "m": null}),
            // Outside what web mercator can show: nothing.
            serde_json::json!({"name": "d", "m": null}),
        ]
    );
    // Changes are tracked.
    let tracked = rows(
        &server,
        &user,
        "SELECT tabname::text FROM cartodb.CDB_TableMetadata",
    )
    .await;
    assert_eq!(tracked, [serde_json::json!({"tabname": "t"})]);
}

#[tokio::test]
async fn cartodbfy_is_idempotent() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE t (name text, geom geometry(Point,4326)); \
         INSERT INTO t VALUES ('a', 'SRID=4326;POINT(1 2)'); \
         SELECT CDB_CartodbfyTable(current_schema, 't')",
    )
    .await;
    let oid = "SELECT 't'::regclass::oid::int8 AS oid";
    let before = rows(&server, &user, oid).await;
    let shape = (
        columns(&server, &user, "t").await,
        indexes_and_triggers(&server, &user, "t").await,
    );
    for call in [
        "SELECT CDB_CartodbfyTable(current_schema, 't')",
        "SELECT CDB_CartodbfyTable('t')",
    ] {
        rows(&server, &user, call).await;
        assert_eq!(rows(&server, &user, oid).await, before, "not rewritten");
        let again = (
            columns(&server, &user, "t").await,
            indexes_and_triggers(&server, &user, "t").await,
        );
        assert_eq!(again, shape);
    }
    // A table that is already right is not even read. Counted as a difference within one
    // transaction: a backend's pending counters may still hold earlier transactions' reads.
    let reads = "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS reads \
                 FROM pg_stat_xact_user_tables WHERE relid = 't'::regclass";
    let got = rows(
        &server,
        &user,
        &format!("{reads}; SELECT CDB_CartodbfyTable('t'); {reads}"),
    )
    .await;
    assert_eq!(
        got.first().unwrap()["reads"],
        got.last().unwrap()["reads"],
        "{got:?}"
    );
    let got = rows(
        &server,
        &user,
        "INSERT INTO t (name) VALUES ('b'); \
         SELECT cartodb_id, name, ST_AsText(the_geom) g FROM t ORDER BY 1",
    )
    .await;
    assert_eq!(
        got,
        [
            serde_json::json!({"cartodb_id": 1, "name": "a", "g": "POINT(1 2)"}),
            serde_json::json!({"cartodb_id": 2, "name": "b", "g": null}),
        ]
    );
}

#[tokio::test]
async fn over_quota_writes_fail_and_insert_nothing() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE t (name text); SELECT CDB_CartodbfyTable(current_schema, 't'); \
         INSERT INTO t (name) VALUES ('before')",
    )
    .await;
    server
        .server()
        .accounts()
        .set_quota(&user.name, 1)
        .await
        .unwrap();
    let (status, body) = sql_answer(&server, &user, "INSERT INTO t (name) VALUES ('over')").await;
    assert_eq!(status, 400, "{body}");
    let message = error_of(&body);
    assert!(
        message.starts_with("Quota exceeded by ") && message.ends_with("KB"),
        "{message}"
    );
    let (status, body) =
        copy_from(&server, &user, "COPY t (name) FROM STDIN", "x\ny\n", false).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("uota exceeded"), "{body}");
    assert_eq!(count(&server, &user, "t").await, 1);

    // Checked before each statement: under the quota a statement may cross it; after that,
    // writes are refused until there is room again.
    let used = rows(&server, &user, "SELECT CDB_UserDataSize('public') AS used").await[0]["used"]
        .as_u64()
        .unwrap();
    server
        .server()
        .accounts()
        .set_quota(&user.name, used + 64 * 1024)
        .await
        .unwrap();
    rows(
        &server,
        &user,
        "INSERT INTO t (name) SELECT repeat('x', 100) FROM generate_series(1, 2000)",
    )
    .await;
    let (status, body) = sql_answer(&server, &user, "UPDATE t SET name = 'y'").await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).starts_with("Quota exceeded by "), "{body}");
    assert_eq!(count(&server, &user, "t WHERE name = 'y'").await, 0);
    server
        .server()
        .accounts()
        .set_quota(&user.name, 0)
        .await
        .unwrap();
    rows(&server, &user, "INSERT INTO t (name) VALUES ('fits')").await;
    assert_eq!(count(&server, &user, "t").await, 2002);
}

#[tokio::test]
async fn a_whole_table_copies_out_and_back_in() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        "CREATE TABLE src (name text, the_geom geometry(Geometry,4326)); \
         SELECT CDB_CartodbfyTable(current_schema, 'src'); \
         INSERT INTO src (name, the_geom) \
           SELECT 'n' || i, ST_SetSRID(ST_MakePoint(i, i / 2.0), 4326) FROM generate_series(1, 50) i; \
         DELETE FROM src WHERE cartodb_id % 7 = 0; \
         CREATE TABLE dst (name text); SELECT CDB_CartodbfyTable(current_schema, 'dst')",
    )
    .await;
    let (status, _, dump) = copy_to(&server, &user, "COPY src TO STDOUT").await;
    assert_eq!(status, 200);
    // All four columns, the web mercator one included, go back in as they are.
    assert_eq!(
        String::from_utf8_lossy(&dump)
            .lines()
            .next()
            .unwrap()
            .split('\t')
            .count(),
        4
    );
    let (status, body) =
        copy_from(&server, &user, "COPY dst FROM STDIN", dump.clone(), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_rows"], 43);
    let (_, _, again) = copy_to(&server, &user, "COPY dst TO STDOUT").await;
    assert_eq!(again, dump);
    // The sequence moved past the copied ids.
    let next = rows(
        &server,
        &user,
        "INSERT INTO dst (name) VALUES ('new') RETURNING cartodb_id",
    )
    .await;
    assert_eq!(next, [serde_json::json!({"cartodb_id": 51})]);
}

#[tokio::test]
async fn user_tables_are_listed() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        &format!(
            "CREATE TABLE b_private (x int); CREATE TABLE a_public (x int); \
             GRANT SELECT ON a_public TO carto_{}_public",
            user.name
        ),
    )
    .await;
    for (call, expected) in [
        ("SELECT CDB_UserTables()", vec!["a_public", "b_private"]),
        (
            "SELECT CDB_UserTables('all')",
            vec!["a_public", "b_private"],
        ),
        ("SELECT CDB_UserTables('public')", vec!["a_public"]),
        ("SELECT CDB_UserTables('private')", vec!["b_private"]),
    ] {
        let got: Vec<Value> = rows(&server, &user, call)
            .await
            .iter()
            .map(|row| row["cdb_usertables"].clone())
            .collect();
        assert_eq!(got, expected, "{call}");
    }
}

#[tokio::test]
async fn a_key_that_may_insert_but_not_read_can_insert() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        &format!(
            "CREATE TABLE inbox (msg text); SELECT CDB_CartodbfyTable(current_schema, 'inbox'); \
             GRANT INSERT ON inbox TO carto_{0}_public; \
             GRANT USAGE ON SEQUENCE inbox_cartodb_id_seq TO carto_{0}_public",
            user.name
        ),
    )
    .await;
    // No key: the default_public role, which may insert but neither read the table nor set
    // its sequence; the triggers must not get in its way.
    let response = http()
        .post(format!("{}/sql", server.api_url(&user)))
        .form(&[(
            "q",
            "INSERT INTO inbox (msg, the_geom) VALUES ('hi', 'SRID=4326;POINT(1 1)')",
        )])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, &body["total_rows"]),
        (200, &serde_json::json!(1)),
        "{body}"
    );
    let (status, body) = sql_answer(&server, &user, "SELECT 1").await;
    assert_eq!(status, 200, "{body}");
    let got = rows(
        &server,
        &user,
        "SELECT cartodb_id, msg, ST_SRID(the_geom_webmercator) srid FROM inbox",
    )
    .await;
    assert_eq!(
        got,
        [serde_json::json!({"cartodb_id": 1, "msg": "hi", "srid": 3857})]
    );
}

#[tokio::test]
async fn a_rewrite_keeps_grants_serials_and_the_owner() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    rows(
        &server,
        &user,
        &format!(
            "CREATE TABLE shared (n serial, name text); \
             INSERT INTO shared (name) VALUES ('a'); \
             GRANT SELECT ON shared TO carto_{}_public",
            user.name
        ),
    )
    .await;
    // Cartodbfied by the superuser (an operator), the table stays the user's.
    let admin = server.superuser_client(&user).await;
    admin
        .batch_execute("SELECT CDB_CartodbfyTable('shared')")
        .await
        .unwrap();
    let owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'shared'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, format!("carto_{}_master", user.name));
    // The serial column still counts on; the public role still reads.
    rows(&server, &user, "INSERT INTO shared (name) VALUES ('b')").await;
    let response = http()
        .get(format!("{}/sql", server.api_url(&user)))
        .query(&[("q", "SELECT cartodb_id, n, name FROM shared ORDER BY 1")])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rows"],
        serde_json::json!([
            {"cartodb_id": 1, "n": 1, "name": "a"},
            {"cartodb_id": 2, "n": 2, "name": "b"},
        ])
    );
}

#[tokio::test]
async fn transform_to_webmercator_edge_cases() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let cases = [
        // Already web mercator: as is.
        ("SRID=3857;POINT(10 20)", Some("SRID=3857;POINT(10 20)")),
        // No SRID: taken as 4326.
        ("POINT(1 2)", Some("SRID=3857;POINT(111319.49 222684.21)")),
        // Another SRID: through 4326.
        (
            "SRID=4258;POINT(1 2)",
            Some("SRID=3857;POINT(111319.49 222684.21)"),
        ),
        // Crossing the band's edge: clipped at 89°.
        (
            "SRID=4326;LINESTRING(0 0,0 90)",
            Some("SRID=3857;LINESTRING(0 0,0 30240971.96)"),
        ),
        // MULTI stays MULTI, also when one part is cut away.
        (
            "SRID=4326;MULTIPOINT((1 2),(0 90))",
            Some("SRID=3857;MULTIPOINT(111319.49 222684.21)"),
        ),
        ("SRID=4326;POINT(0 90)", None),
        ("SRID=4326;POINT EMPTY", None),
    ];
    for (input, expected) in cases {
        let got = rows(
            &server,
            &user,
            &format!(
                "SELECT ST_AsEWKT(ST_SnapToGrid(CDB_TransformToWebmercator('{input}'), 0.01)) m"
            ),
        )
        .await;
        assert_eq!(got[0]["m"], serde_json::json!(expected), "{input}");
    }
}

#[tokio::test]
async fn quoted_and_long_table_names_work() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let long = "a_table_name_that_is_as_long_as_postgresql_allows_them_01234567";
    assert_eq!(long.len(), 63);
    for (create, cartodbfy, table) in [
        (
            "CREATE TABLE \"Odd Name\" (\"Label\" text)".to_string(),
            "SELECT CDB_CartodbfyTable(current_schema, '\"Odd Name\"')".to_string(),
            "\"Odd Name\"".to_string(),
        ),
        (
            format!("CREATE TABLE {long} (\"Label\" text)"),
            format!("SELECT CDB_CartodbfyTable('{long}')"),
            long.to_string(),
        ),
    ] {
        rows(&server, &user, &create).await;
        rows(&server, &user, &cartodbfy).await;
        rows(&server, &user, &cartodbfy).await;
        let got = rows(
            &server,
            &user,
            &format!(
                "INSERT INTO {table} (\"Label\", the_geom) VALUES ('x', 'SRID=4326;POINT(1 1)'); \
                 SELECT cartodb_id, \"Label\", ST_SRID(the_geom_webmercator) srid FROM {table}"
            ),
        )
        .await;
        assert_eq!(
            got,
            [serde_json::json!({"cartodb_id": 1, "Label": "x", "srid": 3857})],
            "{table}"
        );
        let (indexes, triggers) = indexes_and_triggers(&server, &user, &table).await;
        assert_eq!(indexes.len(), 3, "{table}: {indexes:?}");
        assert_eq!(triggers, CARTO_TRIGGERS, "{table}");
    }
}

/// A CSV for `(ext_id, name, value, the_geom)` with what a CARTO load meets: points inside
/// the web-mercator band, NULL and EMPTY geometries, points and polygons beyond the band, multi
/// geometries, quoted names. `bad_line`: that line (the header is line 1) has a bad integer.
fn carto_csv(rows: usize, bad_line: Option<usize>) -> String {
    let mut csv = String::from("ext_id,name,value,the_geom\n");
    for i in 1..=rows {
        let geometry = match i % 100 {
            0 => String::new(),
            1 => "SRID=4326;POINT(10 89.5)".into(),
            2 => "SRID=4326;POLYGON((-10 80,10 80,10 89.9,-10 89.9,-10 80))".into(),
            3 => "SRID=4326;MULTIPOINT((1 2),(3 4))".into(),
            4 => "SRID=4326;POINT EMPTY".into(),
            5 => "SRID=4326;MULTIPOLYGON(((170 88,180 88,180 90,170 90,170 88)))".into(),
            _ => format!(
                "SRID=4326;POINT({:.6} {:.6})",
                -180.0 + (i as f64 * 0.013717) % 360.0,
                -85.0 + (i as f64 * 0.007103) % 170.0
            ),
        };
        let value = if bad_line == Some(i + 1) {
            "abc".to_string()
        } else {
            ((i * 7919) % 100_000).to_string()
        };
        csv.push_str(&format!(
            "{i},\"place {i}, \"\"{}\"\" street\",{value},{}\n",
            i % 97,
            // Quoted (geometries hold commas), except NULL: an empty unquoted field.
            if geometry.is_empty() {
                geometry
            } else {
                format!("\"{geometry}\"")
            }
        ));
    }
    csv
}

const CARTO_COPY: &str =
    "(ext_id, name, value, the_geom) FROM STDIN WITH (FORMAT csv, HEADER true)";

/// Creates and cartodbfies `(ext_id int, name text, value int, the_geom)` tables.
async fn carto_tables(server: &TestServer, user: &TestUser, tables: &[&str]) {
    for table in tables {
        rows(
            server,
            user,
            &format!(
                "CREATE TABLE {table} (ext_id int, name text, value int, \
                 the_geom geometry(Geometry, 4326)); \
                 SELECT CDB_CartodbfyTable(current_schema, '{table}')"
            ),
        )
        .await;
    }
}

/// `csv` into `table` by a COPY of the superuser's straight into it: the row-by-row way.
async fn copy_row_by_row(server: &TestServer, user: &TestUser, table: &str, csv: &str) {
    use futures::SinkExt;
    let client = server.superuser_client(user).await;
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} {CARTO_COPY}"))
        .await
        .expect("copy_in");
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from(csv.to_string()))
        .await
        .expect("send");
    sink.as_mut().finish().await.expect("finish");
}

/// Every stored value of `table` (geometries as EWKB), by `cartodb_id`; the state of its id
/// sequence; its index definitions and its triggers with their enabled state, the table's name
/// replaced by `T`.
async fn carto_table_state(
    server: &TestServer,
    user: &TestUser,
    table: &str,
) -> (Vec<String>, (i64, bool), Vec<String>) {
    let client = server.superuser_client(user).await;
    let values = client
        .query(
            &format!(
                "SELECT concat_ws('|', cartodb_id, ext_id, name, value, \
                        encode(ST_AsEWKB(the_geom), 'hex'), \
                        encode(ST_AsEWKB(the_geom_webmercator), 'hex')) \
                 FROM {table} ORDER BY cartodb_id"
            ),
            &[],
        )
        .await
        .expect("values")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let sequence = client
        .query_one(
            &format!("SELECT last_value, is_called FROM {table}_cartodb_id_seq"),
            &[],
        )
        .await
        .expect("sequence");
    let schema = client
        .query(
            "SELECT replace(pg_get_indexdef(indexrelid), $1, 'T') FROM pg_index \
             WHERE indrelid = $1::text::regclass \
             UNION ALL \
             SELECT replace(pg_get_triggerdef(oid), $1, 'T') || ' ' || tgenabled::text FROM pg_trigger \
             WHERE tgrelid = $1::text::regclass AND NOT tgisinternal ORDER BY 1",
            &[&table],
        )
        .await
        .expect("indexes and triggers")
        .iter()
        .map(|row| row.get(0))
        .collect();
    (values, (sequence.get(0), sequence.get(1)), schema)
}

/// The oids of the GiST indexes of `table`: new ones mean they were built again.
async fn gist_oids(server: &TestServer, user: &TestUser, table: &str) -> Vec<u32> {
    server
        .superuser_client(user)
        .await
        .query(
            "SELECT i.indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_am am ON am.oid = c.relam \
             WHERE i.indrelid = $1::text::regclass AND am.amname = 'gist' \
             ORDER BY c.relname",
            &[&table],
        )
        .await
        .expect("gist oids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn copy_into_an_empty_carto_table_leaves_what_a_row_by_row_copy_leaves() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    carto_tables(&server, &user, &["slow", "fast"]).await;
    let csv = carto_csv(3000, None);
    let before = gist_oids(&server, &user, "fast").await;

    copy_row_by_row(&server, &user, "slow", &csv).await;
    let (status, body) = copy_from(
        &server,
        &user,
        &format!("COPY fast {CARTO_COPY}"),
        csv.clone(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_rows"], 3000);
    // Loaded in bulk: the GiST indexes were built after the rows went in.
    let after = gist_oids(&server, &user, "fast").await;
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|oid| !before.contains(oid)),
        "{before:?} {after:?}"
    );
    let slow = carto_table_state(&server, &user, "slow").await;
    assert_eq!(slow.0.len(), 3000);
    assert_eq!(carto_table_state(&server, &user, "fast").await, slow);
    // Far from the band the web-mercator copy is clipped or NULL, as the trigger makes it.
    let clipped = rows(
        &server,
        &user,
        "SELECT count(*) FILTER (WHERE the_geom IS NOT NULL AND the_geom_webmercator IS NULL) \
         AS dropped, count(*) FILTER (WHERE the_geom_webmercator IS NOT NULL) AS kept FROM fast",
    )
    .await;
    assert!(clipped[0]["dropped"].as_i64().unwrap() > 0, "{clipped:?}");

    // Into a table that is no longer empty, rows go in one by one, ids going on.
    copy_row_by_row(&server, &user, "slow", &csv).await;
    let (status, body) = copy_from(
        &server,
        &user,
        &format!("COPY fast {CARTO_COPY}"),
        csv,
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gist_oids(&server, &user, "fast").await, after);
    let slow = carto_table_state(&server, &user, "slow").await;
    assert_eq!(slow.0.len(), 6000);
    assert_eq!(carto_table_state(&server, &user, "fast").await, slow);
}

#[tokio::test]
async fn a_bad_row_deep_in_a_bulk_copy_names_its_line_and_loads_nothing() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    carto_tables(&server, &user, &["points"]).await;
    let before = carto_table_state(&server, &user, "points").await;
    let oids = gist_oids(&server, &user, "points").await;

    let (status, body) = copy_from(
        &server,
        &user,
        &format!("COPY points {CARTO_COPY}"),
        carto_csv(20_000, Some(15_001)),
        false,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_of(&body),
        "invalid input syntax for type integer: \"abc\""
    );
    assert_eq!(
        body["where"], "COPY points, line 15001, column value: \"abc\"",
        "{body}"
    );
    assert_eq!(count(&server, &user, "points").await, 0);
    // Indexes and triggers are as they were (ids taken from the sequence stay taken, as with
    // any failed COPY).
    let after = carto_table_state(&server, &user, "points").await;
    assert_eq!((after.0, after.2), (before.0, before.2));
    assert_eq!(gist_oids(&server, &user, "points").await, oids);

    // And the table takes the good rows afterwards.
    let (status, body) = copy_from(
        &server,
        &user,
        &format!("COPY points {CARTO_COPY}"),
        carto_csv(100, None),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&server, &user, "points").await, 100);
}

#[tokio::test]
async fn a_carto_table_whose_triggers_the_user_changed_gets_their_effect() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    carto_tables(
        &server,
        &user,
        &["slow_own", "fast_own", "slow_off", "fast_off"],
    )
    .await;
    for table in ["slow_own", "fast_own"] {
        rows(
            &server,
            &user,
            &format!(
                "CREATE FUNCTION {table}_shout() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN NEW.name := upper(NEW.name); \
                 NEW.the_geom := ST_Translate(NEW.the_geom, 1, 0); RETURN NEW; END $$; \
                 CREATE TRIGGER a_shout BEFORE INSERT ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION {table}_shout()"
            ),
        )
        .await;
    }
    for table in ["slow_off", "fast_off"] {
        rows(
            &server,
            &user,
            &format!("ALTER TABLE {table} DISABLE TRIGGER update_the_geom_webmercator_trigger"),
        )
        .await;
    }
    let csv = carto_csv(500, None);
    for (slow, fast) in [("slow_own", "fast_own"), ("slow_off", "fast_off")] {
        copy_row_by_row(&server, &user, slow, &csv).await;
        let (status, body) = copy_from(
            &server,
            &user,
            &format!("COPY {fast} {CARTO_COPY}"),
            csv.clone(),
            false,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let expected = carto_table_state(&server, &user, slow).await;
        assert_eq!(carto_table_state(&server, &user, fast).await, expected);
    }
    let shouted = rows(
        &server,
        &user,
        "SELECT name FROM fast_own WHERE cartodb_id = 7",
    )
    .await;
    assert_eq!(shouted[0]["name"], "PLACE 7, \"7\" STREET");
    let unset = rows(
        &server,
        &user,
        "SELECT count(the_geom_webmercator) AS n FROM fast_off",
    )
    .await;
    assert_eq!(unset[0]["n"], 0);
}

#[tokio::test]
async fn a_bulk_copy_neither_waits_for_nor_blocks_a_reader_of_the_table() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    carto_tables(&server, &user, &["watched"]).await;
    let oids = gist_oids(&server, &user, "watched").await;
    // A reader in the middle of a transaction holds a share lock on the table until it ends.
    let reader = server.superuser_client(&user).await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM watched")
        .await
        .expect("reader");

    let statement = format!("COPY watched {CARTO_COPY}");
    let load = copy_from(&server, &user, &statement, carto_csv(300, None), false);
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(120), load)
        .await
        .expect("the load waited for the reader");
    assert_eq!(status, 200, "{body}");
    // Loaded with the indexes in place, since they could not be dropped under the reader.
    assert_eq!(gist_oids(&server, &user, "watched").await, oids);
    reader.batch_execute("COMMIT").await.expect("reader ends");
    assert_eq!(count(&server, &user, "watched").await, 300);
    let merc = rows(
        &server,
        &user,
        "SELECT count(*) AS n FROM watched \
         WHERE the_geom_webmercator IS DISTINCT FROM cartodb._CDB_WebmercatorOf(the_geom)",
    )
    .await;
    assert_eq!(merc[0]["n"], 0);
}

#[tokio::test]
async fn a_bulk_copy_does_not_wait_for_another_one_still_streaming() {
    use futures::StreamExt;
    let server = TestServer::start().await;
    let user = server.create_user().await;
    carto_tables(&server, &user, &["shared"]).await;
    let statement = format!("COPY shared {CARTO_COPY}");
    // The first upload sends half its rows, then stalls until told to go on: its staging
    // holds a share lock on the table all that time.
    let csv = carto_csv(4000, None);
    let half = csv.len() / 2;
    let (go_on, stalled) = tokio::sync::oneshot::channel::<()>();
    let parts = vec![
        bytes::Bytes::from(csv[..half].to_string()),
        bytes::Bytes::from(csv[half..].to_string()),
    ];
    let mut stalled = Some(stalled);
    let body = futures::stream::iter(parts.into_iter().enumerate()).then(move |(i, part)| {
        let wait = if i == 1 { stalled.take() } else { None };
        async move {
            if let Some(wait) = wait {
                let _ = wait.await;
            }
            Ok::<_, std::io::Error>(part)
        }
    });
    let first = tokio::spawn({
        let (server_url, key) = (server.api_url(&user), user.api_key.clone());
        let statement = statement.clone();
        async move {
            let response = http()
                .post(format!("{server_url}/sql/copyfrom"))
                .query(&[("q", statement.as_str()), ("api_key", key.as_str())])
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .expect("first upload");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    for _ in 0..600 {
        if server.running_statements(&user, "COPY").await > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let second = copy_from(&server, &user, &statement, carto_csv(4000, None), false);
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(120), second)
        .await
        .expect("the second upload waited for the first");
    assert_eq!(status, 200, "{body}");
    go_on.send(()).expect("the first upload is still running");
    let (status, body) = first.await.expect("first upload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&server, &user, "shared").await, 8000);
    let merc = rows(
        &server,
        &user,
        "SELECT count(*) AS n, count(DISTINCT cartodb_id) AS ids FROM shared \
         WHERE the_geom_webmercator IS NOT DISTINCT FROM cartodb._CDB_WebmercatorOf(the_geom)",
    )
    .await;
    assert_eq!(
        (merc[0]["n"].as_i64(), merc[0]["ids"].as_i64()),
        (Some(8000), Some(8000))
    );
}
