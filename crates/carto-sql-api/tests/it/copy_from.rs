//! `POST /sql/copyfrom`.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;
use futures::StreamExt;

use crate::support::{copy_from, count, error_of, http, sql};

const CSV_COPY: &str =
    "COPY copy_test (id, name) FROM STDIN WITH (FORMAT CSV, DELIMITER ',', HEADER true)";

async fn with_table(server: &TestServer) -> TestUser {
    let user = server.create_user().await;
    sql(
        server,
        &user,
        "CREATE TABLE copy_test (id int PRIMARY KEY, name text, age int DEFAULT 10)",
    )
    .await;
    user
}

fn csv_rows(n: usize) -> String {
    let mut csv = String::from("id,name\n");
    for i in 1..=n {
        csv.push_str(&format!("{i},\"name {i}, with \"\"quotes\"\"\"\n"));
    }
    csv
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn statement_checks_come_first() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let response = http()
        .post(format!("{}/sql/copyfrom", server.api_url(&user)))
        .query(&[("api_key", &user.api_key)])
        .body("id,name\n1,a\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": ["SQL is missing"]}));

    for (q, message) in [
        ("SELECT 1", "SQL must start with COPY"),
        (
            "COPY copy_test TO STDOUT",
            "This endpoint only accepts COPY ... FROM STDIN",
        ),
        (
            "COPY copy_test FROM '/etc/passwd'",
            "COPY with a server-side file is not allowed: use COPY ... FROM STDIN",
        ),
        (
            "COPY copy_test FROM PROGRAM 'touch /tmp/pwned'",
            "COPY with PROGRAM is not allowed: use COPY ... FROM STDIN",
        ),
        (
            "COPY copy_test FROM STDIN; DROP TABLE copy_test",
            "Only one statement is allowed",
        ),
    ] {
        let (status, body) = copy_from(&server, &user, q, "1,a\n", false).await;
        assert_eq!((status, error_of(&body)), (400, message), "{q}");
    }
    assert_eq!(count(&server, &user, "copy_test").await, 0);
}

#[tokio::test]
async fn csv_with_header_plain_and_gzip() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;

    let (status, body) = copy_from(&server, &user, CSV_COPY, "", false).await;
    assert_eq!((status, error_of(&body)), (400, "No rows copied"));

    let csv = csv_rows(2016);
    let (status, body) = copy_from(&server, &user, CSV_COPY, csv.clone(), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_rows"], 2016);
    assert!(body["time"].as_f64().unwrap() > 0.0);
    assert_eq!(count(&server, &user, "copy_test").await, 2016);

    sql(&server, &user, "TRUNCATE copy_test").await;
    let (status, body) = copy_from(&server, &user, CSV_COPY, gzip(csv.as_bytes()), true).await;
    assert_eq!(
        (status, body["total_rows"].as_u64()),
        (200, Some(2016)),
        "{body}"
    );
    let name: String = server
        .superuser_client(&user)
        .await
        .query_one("SELECT name FROM copy_test WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "name 7, with \"quotes\"");
}

#[tokio::test]
async fn concatenated_gzip_members_are_one_upload() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let mut body = gzip(b"id,name\n1,a\n");
    body.extend(gzip(b"2,b\n3,c\n"));
    let (status, body) = copy_from(&server, &user, CSV_COPY, body, true).await;
    assert_eq!(
        (status, body["total_rows"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
}

#[tokio::test]
async fn broken_gzip_commits_nothing() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let csv = csv_rows(50_000);

    let (status, body) = copy_from(&server, &user, CSV_COPY, csv.clone(), true).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Error while gunzipping: incorrect header check")
    );

    let compressed = gzip(csv.as_bytes());
    let truncated = compressed[..compressed.len() * 3 / 4].to_vec();
    let (status, body) = copy_from(&server, &user, CSV_COPY, truncated, true).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "Error while gunzipping: unexpected end of file")
    );
    assert_eq!(count(&server, &user, "copy_test").await, 0);
}

#[tokio::test]
async fn database_errors_pass_through() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let (status, body) = copy_from(
        &server,
        &user,
        "COPY unexisting_table (id, name) FROM STDIN WITH (FORMAT CSV, HEADER true)",
        "id,name\n1,a\n",
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        serde_json::json!({"error": ["relation \"unexisting_table\" does not exist"]})
    );

    let (status, body) = copy_from(
        &server,
        &user,
        CSV_COPY,
        "id,name\n1,a\nnot-a-number,b\n",
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("invalid input syntax for type integer"),
        "{body}"
    );
    // PostgreSQL's CONTEXT says which line of the upload was refused.
    assert_eq!(
        body["where"],
        "COPY copy_test, line 3, column id: \"not-a-number\""
    );
}

#[tokio::test]
async fn a_bad_row_deep_in_a_large_upload_commits_nothing() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let mut csv = csv_rows(300_000);
    csv.push_str("300001,missing,extra,columns\n");
    csv.push_str(&csv_rows(1000)[8..].replace('\n', "0\n"));
    let (status, body) = copy_from(&server, &user, CSV_COPY, gzip(csv.as_bytes()), true).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body), "extra data after last expected column");
    assert_eq!(count(&server, &user, "copy_test").await, 0);
}

#[tokio::test]
async fn post_size_limit_and_quota_abort_the_copy() {
    let server = TestServer::with_config(Config {
        max_post_size: 10,
        ..Config::default()
    })
    .await;
    let user = with_table(&server).await;
    let (status, body) = copy_from(&server, &user, CSV_COPY, csv_rows(1000), false).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "COPY FROM maximum POST size of 10 bytes exceeded")
    );
    // The limit counts bytes received, so a gzip body is limited before decoding.
    let (status, body) = copy_from(
        &server,
        &user,
        CSV_COPY,
        gzip(csv_rows(1000).as_bytes()),
        true,
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "COPY FROM maximum POST size of 10 bytes exceeded")
    );
    assert_eq!(count(&server, &user, "copy_test").await, 0);

    let server = TestServer::start().await;
    let user = with_table(&server).await;
    server
        .server()
        .accounts()
        .set_quota(&user.name, 1)
        .await
        .unwrap();
    let (status, body) = copy_from(&server, &user, CSV_COPY, csv_rows(1000), false).await;
    assert_eq!((status, error_of(&body)), (400, "DB Quota exceeded"));
    assert_eq!(count(&server, &user, "copy_test").await, 0);
}

#[tokio::test]
async fn statement_timeout_is_the_limit_answer() {
    let server = TestServer::with_config(Config {
        copy_timeout: std::time::Duration::from_millis(1),
        ..Config::default()
    })
    .await;
    let user = with_table(&server).await;
    sql(
        &server,
        &user,
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$; \
         CREATE TRIGGER slow BEFORE INSERT ON copy_test FOR EACH ROW EXECUTE FUNCTION slow()",
    )
    .await;
    let (status, body) = copy_from(&server, &user, CSV_COPY, csv_rows(100), false).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "error": [carto_sql_api::error::TIMEOUT_MESSAGE],
            "context": "limit",
            "detail": "datasource"
        })
    );
    assert_eq!(count(&server, &user, "copy_test").await, 0);
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_no_rows_and_no_backend() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    // Some rows, then the body fails as a dropped connection would.
    let first = Bytes::from(csv_rows(10_000));
    let chunks = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(first),
        Err(std::io::Error::other("client crashed")),
    ])
    .then(|item| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        item
    });
    let result = http()
        .post(format!("{}/sql/copyfrom", server.api_url(&user)))
        .query(&[("q", CSV_COPY), ("api_key", &user.api_key)])
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    assert!(result.is_err() || result.unwrap().status() != 200);
    assert!(
        server.backends_gone(&user, "COPY").await,
        "a backend is still in COPY"
    );
    assert_eq!(count(&server, &user, "copy_test").await, 0);

    // The server still serves that user normally.
    let (status, body) = copy_from(&server, &user, CSV_COPY, csv_rows(3), false).await;
    assert_eq!((status, body["total_rows"].as_u64()), (200, Some(3)));
}

#[tokio::test]
async fn a_100_mb_generated_upload_streams_through() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE big (id int, payload text)").await;
    let rows_per_chunk = 1000;
    let chunks = 1000;
    let payload = "x".repeat(96);
    // 1,000 chunks of 1,000 rows of ~104 bytes: ~104 MB, generated as it is sent.
    let stream = futures::stream::iter(0..chunks).map(move |c| {
        let mut chunk = String::with_capacity(rows_per_chunk * 110);
        for r in 0..rows_per_chunk {
            chunk.push_str(&format!("{}\t{payload}\n", c * rows_per_chunk + r));
        }
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    });
    let (status, body) = copy_from(
        &server,
        &user,
        "COPY big FROM STDIN",
        reqwest::Body::wrap_stream(stream),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_rows"], 1_000_000);
    assert_eq!(count(&server, &user, "big").await, 1_000_000);
}

#[tokio::test]
async fn concurrent_transfers_share_a_small_pool() {
    let server = TestServer::with_config(Config {
        pool_size: 2,
        ..Config::default()
    })
    .await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE c (id int, name text)").await;
    sql(
        &server,
        &user,
        "INSERT INTO c SELECT i, 'n' || i FROM generate_series(1, 5000) i",
    )
    .await;
    let uploads = (0..6).map(|i| {
        let (server, user) = (&server, &user);
        async move {
            let rows: String = (0..1000)
                .map(|r| format!("{}\tu{i}\n", 10_000 + i * 1000 + r))
                .collect();
            let (status, body) = copy_from(server, user, "COPY c FROM STDIN", rows, false).await;
            assert_eq!(
                (status, body["total_rows"].as_u64()),
                (200, Some(1000)),
                "{body}"
            );
        }
    });
    let downloads = (0..6).map(|_| {
        let (server, user) = (&server, &user);
        async move {
            let (status, _, body) = crate::support::copy_to(
                server,
                user,
                "COPY (SELECT * FROM c WHERE id <= 5000) TO STDOUT",
            )
            .await;
            assert_eq!(status, 200);
            assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 5000);
        }
    });
    futures::future::join(
        futures::future::join_all(uploads),
        futures::future::join_all(downloads),
    )
    .await;
    assert_eq!(count(&server, &user, "c").await, 11_000);
}

/// Every COPY format goes in and comes out byte for byte (CSV sent gzip-compressed, the other
/// formats plain, so both encodings are exercised).
#[tokio::test]
async fn text_csv_and_binary_round_trip_exactly() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(
        &server,
        &user,
        "CREATE TABLE src (id int, t text, n numeric, ts timestamptz, g geometry(Point, 4326), j jsonb, a int[]); \
         INSERT INTO src SELECT i, E'tab\\there, newline\\nthere, back\\\\slash, \"quote\", ünïcødé ' || i, \
                i / 7.0, '2020-01-01'::timestamptz + i * interval '1 hour', \
                ST_SetSRID(ST_MakePoint(i, -i), 4326), jsonb_build_object('k', i), ARRAY[i, NULL] \
         FROM generate_series(1, 500) i; \
         INSERT INTO src (id) VALUES (0); \
         CREATE TABLE dst (LIKE src)",
    )
    .await;
    for format in ["text", "csv", "binary"] {
        sql(&server, &user, "TRUNCATE dst").await;
        let out = format!("COPY (SELECT * FROM src ORDER BY id) TO STDOUT WITH (FORMAT {format})");
        let (status, _, original) = crate::support::copy_to(&server, &user, &out).await;
        assert_eq!(status, 200);
        let compress = format == "csv";
        let body = if compress {
            gzip(&original)
        } else {
            original.to_vec()
        };
        let into_dst = format!("COPY dst FROM STDIN WITH (FORMAT {format})");
        let (status, body) = copy_from(&server, &user, &into_dst, body, compress).await;
        assert_eq!(
            (status, body["total_rows"].as_u64()),
            (200, Some(501)),
            "{format}: {body}"
        );
        let back = format!("COPY (SELECT * FROM dst ORDER BY id) TO STDOUT WITH (FORMAT {format})");
        let (_, _, again) = crate::support::copy_to(&server, &user, &back).await;
        assert!(original == again, "{format} differs after a round trip");
    }
}
