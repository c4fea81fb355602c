//! The `/sql` endpoint (spec §4): statements, formats, streaming, and the test vectors of §14.

use carto_sql_api::testing::{TestServer, TestUser};
use futures::StreamExt;
use reqwest::Response;
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

// ---------------------------------------------------------------------------------------------
// Spec §4 and the test vectors of §14.

/// A user with CARTO's `untitle_table_4` (cartodb_id 1..6, points, readable by the public role).
async fn user_with_public_table(server: &TestServer) -> TestUser {
    let user = server.create_user().await;
    sql(
        server,
        &user,
        &format!(
            "CREATE TABLE untitle_table_4 (cartodb_id int PRIMARY KEY, name text, \
               the_geom geometry(Point, 4326), the_geom_webmercator geometry(Point, 3857)); \
             INSERT INTO untitle_table_4 \
               SELECT i, 'n' || i, ST_SetSRID(ST_MakePoint(i + 0.123456789, i), 4326), \
                      ST_Transform(ST_SetSRID(ST_MakePoint(i, i), 4326), 3857) \
               FROM generate_series(1, 6) i; \
             GRANT SELECT ON untitle_table_4 TO carto_{}_public",
            user.name
        ),
    )
    .await;
    user
}

/// `/sql` with `params`, no key unless `params` has one; returns the raw response.
async fn get_sql(server: &TestServer, user: &TestUser, params: &[(&str, &str)]) -> Response {
    http()
        .get(format!("{}/sql", server.api_url(user)))
        .query(params)
        .send()
        .await
        .expect("sql request")
}

async fn json_of(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

#[tokio::test]
async fn vector_1_and_2_missing_query_and_unknown_format() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let url = format!("http://{}/user/{}/api/v1/sql", server.addr, user.name);
    let response = http().get(&url).send().await.unwrap();
    assert_eq!(response.headers()["content-disposition"], "inline");
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": ["You must indicate a sql query"]}))
    );

    let response = http()
        .get(&url)
        .query(&[("q", "SELECT 1"), ("format", "unknown")])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": ["Invalid format: unknown"]}))
    );
    // Upper case is lowered; formats CARTO has but this server does not write say so.
    let (status, body) =
        json_of(get_sql(&server, &user, &[("q", "SELECT 1"), ("format", "XLS")]).await).await;
    assert_eq!((status, error_of(&body)), (400, "Invalid format: xls"));
    let (status, body) = json_of(
        get_sql(
            &server,
            &user,
            &[("q", "SELECT 1"), ("format", "arraybuffer")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("arraybuffer is not supported"),
        "{body}"
    );
}

#[tokio::test]
async fn vector_5_and_6_public_role_cannot_write_and_jsonp_errors() {
    let server = TestServer::start().await;
    let user = user_with_public_table(&server).await;
    let (status, body) = json_of(
        get_sql(
            &server,
            &user,
            &[("q", "INSERT INTO untitle_table_4 (name) VALUES ('x')")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        error_of(&body),
        "permission denied for table untitle_table_4"
    );

    let (status, body) =
        json_of(get_sql(&server, &user, &[("q", "DROP TABLE untitle_table_4")]).await).await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body), "must be owner of table untitle_table_4");

    let response = get_sql(
        &server,
        &user,
        &[("q", "DROP TABLE untitle_table_4"), ("callback", "cb")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        response.text().await.unwrap(),
        "/**/ typeof cb === 'function' && cb({\"error\":[\"must be owner of table untitle_table_4\"]});"
    );
    // A callback cannot smuggle script in.
    let response = get_sql(
        &server,
        &user,
        &[("q", "SELECT 1 AS a"), ("callback", "cb);alert(1)//")],
    )
    .await;
    let text = response.text().await.unwrap();
    assert!(text.starts_with("cbalert1("), "{text}");
}

#[tokio::test]
async fn jsonp_success_wraps_the_document() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let response = get_sql(
        &server,
        &user,
        &[
            ("q", "SELECT 1 AS a"),
            ("callback", "cb"),
            ("api_key", &user.api_key),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let inner = text
        .strip_prefix("cb(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not JSONP: {text}"));
    let body: Value = serde_json::from_str(inner).unwrap();
    assert_eq!(body["rows"], json!([{"a": 1}]));
}

#[tokio::test]
async fn vector_8_system_tables_are_forbidden_to_non_master_keys() {
    let server = TestServer::start().await;
    let user = user_with_public_table(&server).await;
    let url = format!("{}/sql", server.api_url(&user));
    let as_public = |q: &'static str| {
        http()
            .post(&url)
            .basic_auth(&user.name, Some("default_public"))
            .json(&json!({ "q": q }))
            .send()
    };
    let (status, body) = json_of(
        as_public("select * from information_schema.tables")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body),
        (403, json!({"error": ["system tables are forbidden"]}))
    );
    let (status, _) = json_of(as_public("SELECT * FROM pg_class AS c").await.unwrap()).await;
    assert_eq!(status, 403);
    // Through a CTE, in a later statement.
    let (status, _) = json_of(
        as_public("SET search_path = public; WITH x AS (SELECT relname FROM pg_catalog.pg_class) SELECT * FROM x")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    // Text and aliases that look like system tables are fine.
    let (status, body) = json_of(as_public("SELECT 'pg_' AS pg_x").await.unwrap()).await;
    assert_eq!((status, &body["rows"]), (200, &json!([{"pg_x": "pg_"}])));
    let (status, body) = json_of(
        as_public("SELECT count(*) AS n FROM untitle_table_4 pg_alias")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["rows"]), (200, &json!([{"n": 6}])));
    // The master key may read the catalogs.
    let body = sql(&server, &user, "SELECT count(*) > 0 AS any FROM pg_class").await;
    assert_eq!(body["rows"], json!([{"any": true}]));
}

#[tokio::test]
async fn vector_9_fields_of_an_empty_result() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let body = sql(
        &server,
        &user,
        "SELECT 1::int a, 'a'::text f, 1::bool g, 'POINT(0 0)'::geometry h, now() e LIMIT 0",
    )
    .await;
    assert_eq!(body["rows"], json!([]));
    assert_eq!(body["total_rows"], 0);
    assert_eq!(
        body["fields"],
        json!({
            "a": {"type": "number", "pgtype": "int4"},
            "f": {"type": "string", "pgtype": "text"},
            "g": {"type": "boolean", "pgtype": "bool"},
            "h": {"type": "geometry"},
            "e": {"type": "date", "pgtype": "timestamptz"},
        })
    );
    // Key order of the document as upstream.
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["rows", "time", "fields", "total_rows"]);
    assert!(body["time"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn spatial_fields_come_from_the_column_type() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(
        &server,
        &user,
        "CREATE TABLE shapes (p geometry(PointZ, 4326), g geography(MultiPolygon), \
                              any_geom geometry, arr int[])",
    )
    .await;
    let body = sql(&server, &user, "SELECT p, g, any_geom, arr FROM shapes").await;
    assert_eq!(
        body["fields"],
        json!({
            "p": {"type": "geometry", "wkbtype": "Point", "dims": 3, "srid": 4326},
            "g": {"type": "geography", "wkbtype": "MultiPolygon", "dims": 2, "srid": 4326},
            "any_geom": {"type": "geometry"},
            "arr": {"type": "number[]", "pgtype": "_int4"},
        })
    );
}

#[tokio::test]
async fn values_follow_the_spec() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let body = sql(
        &server,
        &user,
        "SELECT ARRAY[1,2,NULL]::int[] ints, ARRAY['a b','c\"d',NULL]::text[] texts, \
                '{{1.5,2},{3,4}}'::float8[] matrix, '[1,{\"k\":null}]'::jsonb jb, \
                '12:30:00'::time t, '\\x0102ff'::bytea b, '-Infinity'::float8 ninf, \
                'Infinity'::numeric pinf, 1.25::numeric num, '1 day'::interval i, \
                'SRID=4326;POINT(1 2)'::geometry geom, \
                '2000-01-02'::date d, '2000-01-02 03:04:05.678'::timestamp ts, \
                '2000-01-02 03:04:05+02'::timestamptz tz, NULL::text nothing",
    )
    .await;
    // The server's zone is the machine's; format the expected local times the same way.
    let local = |utc: &str| {
        let instant: chrono::DateTime<chrono::Utc> = utc.parse().unwrap();
        let local = instant.with_timezone(&chrono::Local);
        let text = local.format("%Y-%m-%dT%H:%M:%S%z").to_string();
        text.strip_suffix("+0000")
            .map(|t| format!("{t}Z"))
            .unwrap_or(text)
    };
    let naive_local = |naive: &str| {
        use chrono::TimeZone;
        let naive = chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S").unwrap();
        let local = chrono::Local
            .from_local_datetime(&naive)
            .earliest()
            .unwrap();
        let text = local.format("%Y-%m-%dT%H:%M:%S%z").to_string();
        text.strip_suffix("+0000")
            .map(|t| format!("{t}Z"))
            .unwrap_or(text)
    };
    assert_eq!(
        body["rows"][0],
        json!({
            "ints": [1, 2, null], "texts": ["a b", "c\"d", null], "matrix": [[1.5, 2], [3, 4]],
            "jb": [1, {"k": null}], "t": "12:30:00", "b": "\\x0102ff", "ninf": "-Infinity",
            "pinf": "Infinity", "num": 1.25, "i": "1 day",
            "geom": "0101000020E6100000000000000000F03F0000000000000040",
            "d": naive_local("2000-01-02 00:00:00"),
            "ts": naive_local("2000-01-02 03:04:05"),
            "tz": local("2000-01-02T01:04:05Z"),
            "nothing": null,
        })
    );
}

#[tokio::test]
async fn vector_10_error_after_rows_closes_the_document() {
    let server = TestServer::start().await;
    let user = user_with_public_table(&server).await;
    // No ORDER BY: a sort would compute every row (and fail) before sending the first.
    let q = "SELECT the_geom, 100/(cartodb_id-3) r FROM untitle_table_4";
    let (status, body) = json_of(get_sql(&server, &user, &[("q", q)]).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["rows"].as_array().unwrap().len(), 2);
    assert_eq!(body["rows"][0]["r"], -50);
    assert_eq!(body["error"], json!(["division by zero"]));
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["rows", "time", "fields", "total_rows", "error"]);

    let (status, body) =
        json_of(get_sql(&server, &user, &[("q", q), ("format", "geojson")]).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "FeatureCollection");
    assert_eq!(body["features"].as_array().unwrap().len(), 2);
    assert_eq!(body["error"], json!(["division by zero"]));

    // The same error before any row is an ordinary error answer.
    let (status, body) = json_of(
        get_sql(
            &server,
            &user,
            &[("q", "SELECT 1/0 AS r FROM untitle_table_4")],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (400, json!({"error": ["division by zero"]}))
    );
}

#[tokio::test]
async fn vector_11_timeouts_are_429_or_close_the_stream() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    // The user database's statement_timeout applies to the master key (role defaults do not
    // last: the server removes them, see role_self_changes.rs).
    server
        .superuser_client(&user)
        .await
        .batch_execute(&format!(
            "ALTER DATABASE carto_user_{} SET statement_timeout = '300ms'",
            user.name
        ))
        .await
        .unwrap();
    let response = http()
        .post(format!("{}/sql", server.api_url(&user)))
        .form(&[("q", "select pg_sleep(1)"), ("api_key", &user.api_key)])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, body),
        (
            429,
            json!({"error": [carto_sql_api::error::TIMEOUT_MESSAGE], "context": "limit", "detail": "datasource"})
        )
    );

    // Config::query_timeout, hit after two rows: 200 and the timeout text alone.
    let server = TestServer::with_config(carto_sql_api::Config {
        query_timeout: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let user = server.create_user().await;
    let q = "SELECT i, pg_sleep(CASE WHEN i > 2 THEN 1 ELSE 0 END) AS s \
             FROM generate_series(1, 5) i";
    let (status, body) =
        json_of(get_sql(&server, &user, &[("q", q), ("api_key", &user.api_key)]).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["rows"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["error"],
        json!([carto_sql_api::error::TIMEOUT_MESSAGE])
    );
    assert!(body.get("context").is_none());
    // The setting does not outlive the request's statements.
    let body = sql(&server, &user, "SELECT 1 AS one").await;
    assert_eq!(body["rows"], json!([{"one": 1}]));
}

#[tokio::test]
async fn geojson_features() {
    let server = TestServer::start().await;
    let user = user_with_public_table(&server).await;
    let response = get_sql(
        &server,
        &user,
        &[
            (
                "q",
                "SELECT * FROM untitle_table_4 WHERE cartodb_id <= 2 ORDER BY cartodb_id",
            ),
            ("format", "GeoJSON"),
            ("dp", "2"),
        ],
    )
    .await;
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=cartodb-query.geojson; modification-date=\""),
        "{disposition}"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.starts_with("{\"type\": \"FeatureCollection\", \"features\": ["),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["features"][0],
        json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [1.12, 1]},
            "properties": {"cartodb_id": 1, "name": "n1"},
        })
    );
    assert_eq!(body["features"].as_array().unwrap().len(), 2);
    // A NULL geometry, and a query without the_geom.
    let body = sql_with(
        &server,
        &user,
        &[
            ("q", "SELECT NULL::geometry the_geom, 1 a"),
            ("format", "geojson"),
        ],
    )
    .await;
    assert_eq!(body["features"][0]["geometry"], Value::Null);
    let (status, body) = json_of(
        get_sql(
            &server,
            &user,
            &[("q", "SELECT 1 a"), ("format", "geojson")],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "column \"the_geom\" does not exist")
    );
}

/// `/sql` with `params` and the master key; asserts 200 and returns the JSON.
async fn sql_with(server: &TestServer, user: &TestUser, params: &[(&str, &str)]) -> Value {
    let mut params = params.to_vec();
    params.push(("api_key", &user.api_key));
    let (status, body) = json_of(get_sql(server, user, &params).await).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn csv_with_header_crlf_and_the_geom_first() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let response = get_sql(
        &server,
        &user,
        &[
            (
                "q",
                "SELECT 1 AS id, 'a,b' AS name, 'say \"hi\"' AS quote, true AS ok, NULL::text AS nothing, \
                 'SRID=4326;POINT(1 2)'::geometry AS the_geom",
            ),
            ("format", "csv"),
            ("filename", "/tmp/My Export (1).txt"),
            ("api_key", &user.api_key),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8; header=present"
    );
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=My_Export__1_.csv; modification-date="),
        "{disposition}"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "the_geom,id,name,quote,ok,nothing\r\n\
         0101000020E6100000000000000000F03F0000000000000040,1,\"a,b\",\"say \"\"hi\"\"\",true,\r\n"
    );
}

#[tokio::test]
async fn paging_ordering_and_skipfields() {
    let server = TestServer::start().await;
    let user = user_with_public_table(&server).await;
    let body = sql_with(
        &server,
        &user,
        &[
            (
                "q",
                "SELECT cartodb_id, name FROM untitle_table_4 -- a trailing comment",
            ),
            ("rows_per_page", "2"),
            ("page", "1"),
            ("order_by", "cartodb_id"),
            ("sort_order", "DESC"),
            ("skipfields", "name"),
        ],
    )
    .await;
    assert_eq!(body["rows"], json!([{"cartodb_id": 4}, {"cartodb_id": 3}]));
    assert_eq!(
        body["fields"],
        json!({"cartodb_id": {"type": "number", "pgtype": "int4"}})
    );
    // Repeated and comma-separated skipfields; unknown names are ignored.
    let body = sql_with(
        &server,
        &user,
        &[
            ("q", "SELECT 1 a, 2 b, 3 c, 4 d"),
            ("skipfields", "a,b"),
            ("skipfields", "c,zz"),
        ],
    )
    .await;
    assert_eq!(body["rows"], json!([{"d": 4}]));
    // Only a SELECT is paged.
    let body = sql_with(
        &server,
        &user,
        &[
            ("q", "VALUES (1), (2), (3)"),
            ("rows_per_page", "1"),
            ("page", "0"),
        ],
    )
    .await;
    assert_eq!(body["total_rows"], 3);
}

#[tokio::test]
async fn headers_name_the_user_and_caching() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let response = get_sql(
        &server,
        &user,
        &[("q", "SELECT 1 a"), ("api_key", &user.api_key)],
    )
    .await;
    let headers = response.headers();
    assert_eq!(headers["carto-user"], user.name.as_str());
    assert!(headers["carto-user-id"]
        .to_str()
        .unwrap()
        .parse::<i64>()
        .is_ok());
    assert_eq!(headers["vary"], "Authorization");
    assert_eq!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("inline")
    );
    let cache = headers["cache-control"].to_str().unwrap();
    assert!(
        cache.starts_with("no-cache,max-age=") && cache.ends_with(",must-revalidate,public"),
        "{cache}"
    );

    let response = get_sql(
        &server,
        &user,
        &[
            ("q", "SELECT 1 a"),
            ("cache_policy", "persist"),
            ("api_key", &user.api_key),
        ],
    )
    .await;
    assert_eq!(
        response.headers()["cache-control"],
        "public,max-age=31536000"
    );
    let response = get_sql(
        &server,
        &user,
        &[("q", "CREATE TABLE x (id int)"), ("api_key", &user.api_key)],
    )
    .await;
    assert_eq!(
        response.headers()["cache-control"],
        "no-cache,max-age=0,must-revalidate,public"
    );
    // A rejected key: the user is named, but nothing was authenticated.
    let response = get_sql(&server, &user, &[("q", "SELECT 1"), ("api_key", "nope")]).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["carto-user"], user.name.as_str());
    assert!(response.headers().get("vary").is_none());
}

#[tokio::test]
async fn a_large_result_arrives_whole_in_many_chunks() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let response = get_sql(
        &server,
        &user,
        &[
            (
                "q",
                "SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 20000) i",
            ),
            ("api_key", &user.api_key),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut chunks = 0;
    let mut bytes = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
        chunks += 1;
    }
    assert!(chunks > 1, "{chunks} chunk(s)");
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["total_rows"], 20000);
    assert_eq!(body["rows"].as_array().unwrap().len(), 20000);
    assert_eq!(body["rows"][19999]["i"], 20000);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_query() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    // Rows wider than PostgreSQL's 8 KiB send buffer go out one by one while the query runs.
    let q = "SELECT i, repeat('x', 10000) AS pad, pg_sleep(0.01) FROM generate_series(1, 100000) i";
    let response = get_sql(&server, &user, &[("q", q), ("api_key", &user.api_key)]).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"{\"rows\":["));
    drop(stream);
    assert!(server.backends_gone(&user, "SELECT i, repeat").await);
}

#[tokio::test]
async fn a_client_leaving_before_the_first_row_cancels_the_query() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    let result = client
        .get(format!("{}/sql", server.api_url(&user)))
        .query(&[
            ("q", "SELECT pg_sleep(60) AS waited"),
            ("api_key", &user.api_key),
        ])
        .send()
        .await;
    assert!(result.is_err(), "answered before the sleep ended");
    assert!(server.backends_gone(&user, "SELECT pg_sleep(60)").await);
}

#[tokio::test]
async fn csv_cannot_carry_a_late_error_so_the_response_is_cut_short() {
    let server = TestServer::start().await;
    let user = user_with_public_table(&server).await;
    let sent = http()
        .get(format!("{}/sql", server.api_url(&user)))
        .query(&[
            (
                "q",
                "SELECT cartodb_id, 100/(cartodb_id-3) r FROM untitle_table_4",
            ),
            ("format", "csv"),
        ])
        .send()
        .await;
    // A complete-looking CSV would hide the failure; the transfer fails instead (while the
    // body arrives, or already at the head when it was not sent before the failure).
    let outcome = match sent {
        Err(error) => Err(error),
        Ok(response) => response.text().await,
    };
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn server_messages_are_grouped_by_severity() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let body = sql(
        &server,
        &user,
        "DO $$ BEGIN RAISE NOTICE 'hello'; RAISE WARNING 'careful'; RAISE NOTICE 'again'; END $$; \
         SELECT 1 AS a",
    )
    .await;
    assert_eq!(body["notices"], json!(["hello", "again"]));
    assert_eq!(body["warnings"], json!(["careful"]));
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "rows",
            "time",
            "fields",
            "total_rows",
            "notices",
            "warnings"
        ]
    );
    // Messages belong to their request only: the connection's next user sees none.
    let body = sql(&server, &user, "SELECT 2 AS b").await;
    assert!(body.get("notices").is_none(), "{body}");
    // After a late error, the error comes first.
    let (status, body) = json_of(
        get_sql(
            &server,
            &user,
            &[
                (
                    "q",
                    "DO $$ BEGIN RAISE NOTICE 'n'; END $$; \
                     SELECT 100 / (3 - i) AS r FROM generate_series(1, 5) i",
                ),
                ("api_key", &user.api_key),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["rows", "time", "fields", "total_rows", "error", "notices"]
    );
}
