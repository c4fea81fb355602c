//! `GET|POST /sql/copyto`.

use std::io::Read;

use carto_sql_api::testing::{TestServer, TestUser};
use futures::StreamExt;

use crate::support::{copy_to, error_of, http, sql};

async fn with_table(server: &TestServer) -> TestUser {
    let user = server.create_user().await;
    sql(
        server,
        &user,
        "CREATE TABLE copy_endpoints_test (id int, name text, age int DEFAULT 10); \
         INSERT INTO copy_endpoints_test (id, name) VALUES (11, 'Paul'), (14, NULL)",
    )
    .await;
    user
}

#[tokio::test]
async fn get_streams_the_table_with_spec_headers() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let response = http()
        .get(format!("{}/sql/copyto", server.api_url(&user)))
        .query(&[
            ("q", "COPY copy_endpoints_test TO STDOUT"),
            ("filename", "/tmp/output.dmp"),
            ("api_key", &user.api_key),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=%2Ftmp%2Foutput.dmp"
    );
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        response.text().await.unwrap(),
        "11\tPaul\t10\n14\t\\N\t10\n"
    );

    let (_, headers, _) = copy_to(&server, &user, "COPY copy_endpoints_test TO STDOUT").await;
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=carto-sql-copyto.dmp"
    );
}

#[tokio::test]
async fn post_form_body_works_and_wins() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let response = http()
        .post(format!("{}/sql/copyto?q=SELECT%201", server.api_url(&user)))
        .form(&[
            ("q", "COPY (SELECT name FROM copy_endpoints_test ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"),
            ("filename", "names (1).csv"),
            ("api_key", &user.api_key),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=names%20(1).csv"
    );
    assert_eq!(response.text().await.unwrap(), "name\nPaul\n\n");
}

#[tokio::test]
async fn statement_errors() {
    let server = TestServer::start().await;
    let user = with_table(&server).await;
    let response = http()
        .get(format!("{}/sql/copyto", server.api_url(&user)))
        .query(&[("api_key", &user.api_key)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_of(&body), "SQL is missing");

    for (q, message) in [
        ("SELECT 1", "SQL must start with COPY"),
        (
            "COPY copy_endpoints_test FROM STDIN",
            "This endpoint only accepts COPY ... TO STDOUT",
        ),
        (
            "COPY copy_endpoints_test TO '/tmp/x'",
            "COPY with a server-side file is not allowed: use COPY ... TO STDOUT",
        ),
        (
            "COPY (SELECT 1) TO STDOUT; SELECT 2",
            "Only one statement is allowed",
        ),
    ] {
        let (status, _, body) = copy_to(&server, &user, q).await;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, error_of(&body)), (400, message), "{q}");
    }
    let (status, _, body) = copy_to(&server, &user, "COPY nope TO STDOUT").await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, error_of(&body)),
        (400, "relation \"nope\" does not exist")
    );
}

#[tokio::test]
async fn an_error_after_streaming_began_is_appended() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let (status, _, body) = copy_to(
        &server,
        &user,
        "COPY (SELECT i, 1 / (200000 - i) FROM generate_series(1, 300000) i) TO STDOUT",
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("1\t0\n"), "{}", &text[..20]);
    assert!(
        text.ends_with("{\"error\":[\"division by zero\"]}"),
        "{}",
        &text[text.len() - 60..]
    );
}

#[tokio::test]
async fn gzip_when_the_client_accepts_it() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let q = "COPY (SELECT i, repeat('carto', 10) FROM generate_series(1, 20000) i) TO STDOUT";
    let (_, _, plain) = copy_to(&server, &user, q).await;
    let response = http()
        .get(format!("{}/sql/copyto", server.api_url(&user)))
        .query(&[("q", q), ("api_key", &user.api_key)])
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    assert!(compressed.len() < plain.len() / 2);
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert!(decoded == plain);
}

#[tokio::test]
async fn a_client_abort_cancels_the_backend() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let q = "COPY (SELECT i, pg_sleep(0.0005) FROM generate_series(1, 1000000) i) TO STDOUT";
    let response = http()
        .get(format!("{}/sql/copyto", server.api_url(&user)))
        .query(&[("q", q), ("api_key", &user.api_key)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    assert!(
        server.backends_gone(&user, "COPY").await,
        "the COPY is still running"
    );
}
