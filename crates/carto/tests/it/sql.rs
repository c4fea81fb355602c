//! `SqlClient` against `/sql`.

use carto::{Client, Credentials, Format};
use futures::StreamExt;
use serde::Deserialize;

use crate::support::{create, host_client, setup};

#[tokio::test]
async fn send_returns_typed_json() {
    let (_server, _user, client) = setup().await;
    let answer = client
        .sql()
        .send("SELECT 1::int AS a, 'x'::text AS f, true AS g")
        .await
        .unwrap();
    assert_eq!(answer.total_rows, 1);
    assert_eq!(answer.rows[0]["a"], 1);
    assert_eq!(answer.rows[0]["f"], "x");
    assert!(answer.time >= 0.0);
    let a = answer.field("a").unwrap();
    assert_eq!(a.kind, "number");
    assert_eq!(a.pgtype.as_deref(), Some("int4"));
    assert_eq!(answer.field("g").unwrap().kind, "boolean");
}

#[tokio::test]
async fn rows_deserialize_into_user_types() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct City {
        id: i64,
        name: Option<String>,
    }
    let (_server, _user, client) = setup().await;
    create(&client, "CREATE TABLE cities (id int, name text)").await;
    create(
        &client,
        "INSERT INTO cities VALUES (1, 'Madrid'), (2, NULL)",
    )
    .await;
    let answer = client
        .sql()
        .send_as::<City>("SELECT id, name FROM cities ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        answer.rows,
        [
            City {
                id: 1,
                name: Some("Madrid".into())
            },
            City { id: 2, name: None }
        ]
    );
}

#[tokio::test]
async fn long_statements_are_posted() {
    let (_server, _user, client) = setup().await;
    // Longer than the GET threshold: the server only sees it if it was POSTed whole.
    let padding = "x".repeat(5000);
    let sql = format!("SELECT length('{padding}') AS n");
    assert!(sql.len() > carto::sql::MAX_GET_QUERY_LEN);
    let answer = client.sql().send(&sql).await.unwrap();
    assert_eq!(answer.rows[0]["n"], 5000);
}

#[tokio::test]
async fn host_style_urls_work() {
    let (server, user, _client) = setup().await;
    let answer = host_client(&server, &user)
        .sql()
        .send("SELECT current_user AS me")
        .await
        .unwrap();
    assert_eq!(answer.total_rows, 1);
}

#[tokio::test]
async fn server_errors_carry_status_and_messages() {
    let (server, user, client) = setup().await;
    let error = client
        .sql()
        .send("SELECT * FROM nowhere")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert_eq!(error.messages(), ["relation \"nowhere\" does not exist"]);

    let bad_key =
        Client::new(Credentials::new(&server.base_url(&user), "not-the-key").unwrap()).unwrap();
    let error = bad_key.sql().send("SELECT 1").await.unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert!(error.is_access_denied());
    assert_eq!(error.messages(), ["Unauthorized"]);
    // The key never shows in what a caller would print or log.
    for shown in [
        error.to_string(),
        format!("{error:?}"),
        format!("{bad_key:?}"),
    ] {
        assert!(!shown.contains("not-the-key"), "{shown}");
    }
}

#[tokio::test]
async fn transport_errors_hide_the_key() {
    // Nothing listens on port 9 of localhost: the request itself fails.
    let client =
        Client::new(Credentials::new("http://127.0.0.1:9/user/x/", "hidden-key").unwrap()).unwrap();
    let error = client.sql().send("SELECT 1").await.unwrap_err();
    assert!(error.is_http(), "{error:?}");
    let mut chain = format!("{error} {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        chain.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(!chain.contains("hidden-key"), "{chain}");
}

#[tokio::test]
async fn csv_streams_with_extra_params() {
    let (_server, _user, client) = setup().await;
    let mut stream = client
        .sql()
        .request("SELECT 1 AS a, 'b' AS b, 3 AS c")
        .format(Format::Csv)
        .param("skipfields", "c")
        .bytes_stream()
        .await
        .unwrap();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(body).unwrap(), "a,b\r\n1,b\r\n");
}

#[tokio::test]
async fn an_error_after_rows_began_is_an_error() {
    let (_server, _user, client) = setup().await;
    let error = client
        .sql()
        .send("SELECT i, 1/(200000-i) AS r FROM generate_series(1,300000) i")
        .await
        .unwrap_err();
    assert_eq!(error.messages(), ["division by zero"], "{error:?}");
    // Streamed: the answer began with status 200 and ended with the error.
    assert!(error.is_mid_stream(), "{error:?}");
}

#[tokio::test]
async fn geojson_streams() {
    let (_server, _user, client) = setup().await;
    let body = client
        .sql()
        .request("SELECT 1 AS id, ST_SetSRID(ST_MakePoint(1, 2), 4326) AS the_geom")
        .format(Format::GeoJson)
        .bytes_stream()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["type"], "FeatureCollection");
    assert_eq!(
        doc["features"][0]["geometry"]["coordinates"],
        serde_json::json!([1, 2])
    );
    assert_eq!(doc["features"][0]["properties"]["id"], 1);
}
