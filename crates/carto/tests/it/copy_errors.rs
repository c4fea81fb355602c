//! How each server error of the COPY endpoints reaches the caller.

use std::time::Duration;

use bytes::Bytes;
use carto::{Client, Credentials};
use carto_sql_api::testing::TestServer;
use futures::StreamExt;

use crate::support::{create, csv_rows, path_client, setup};

#[tokio::test]
async fn statement_errors() {
    let (_server, _user, client) = setup().await;
    let copy = client.copy();
    let cases = [
        ("", "SQL is missing"),
        ("SELECT 1", "SQL must start with COPY"),
        (
            "COPY unexisting_table FROM STDIN",
            "relation \"unexisting_table\" does not exist",
        ),
    ];
    for (q, message) in cases {
        let error = copy
            .copy_from_reader(q, std::io::Cursor::new(b"1\n".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(400), "{q}");
        assert_eq!(error.messages(), [message], "{q}");
    }
    let error = copy.copy_to("SELECT 1").await.unwrap_err();
    assert_eq!(error.messages(), ["SQL must start with COPY"]);
    let error = copy
        .copy_to("COPY unexisting_table TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    // The sink reports the refusal too, at the latest on finish.
    create(&client, "CREATE TABLE t (id int)").await;
    let mut sink = copy.copy_from("COPY t FROM STDIN").await.unwrap();
    let sent = sink.send(Bytes::from_static(b"not a number\n")).await;
    let error = match sent {
        Ok(()) => sink.finish().await.unwrap_err(),
        Err(error) => error,
    };
    assert_eq!(error.status(), Some(400));
    assert!(
        error.messages()[0].contains("invalid input syntax"),
        "{error}"
    );
    // carto-sql-api also says where: PostgreSQL's CONTEXT names the line.
    let place = error.where_().expect("the server's 'where'");
    assert!(place.contains("line 1"), "{place}");
    assert!(error.to_string().contains("line 1"), "{error}");
}

#[tokio::test]
async fn local_errors_are_io_errors() {
    let (_server, _user, client) = setup().await;
    let error = client
        .copy()
        .copy_from_file("COPY t FROM STDIN", "/nonexistent/t.csv")
        .await
        .unwrap_err();
    assert!(error.is_io(), "{error:?}");
    let error = client
        .copy()
        .copy_to_file(
            "COPY (SELECT 1) TO STDOUT",
            "/nonexistent/dir/out.tsv",
            false,
        )
        .await
        .unwrap_err();
    assert!(error.is_io(), "{error:?}");
}

#[tokio::test]
async fn access_errors() {
    let (server, user, client) = setup().await;
    let stranger =
        Client::new(Credentials::new(&server.base_url(&user), "wrong").unwrap()).unwrap();
    let error = stranger
        .copy()
        .copy_from_reader("COPY t FROM STDIN", std::io::Cursor::new(b"1\n".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert_eq!(error.messages(), ["Unauthorized"]);
    let error = stranger
        .copy()
        .copy_to("COPY (SELECT 1) TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(401));

    let error = client
        .copy()
        .copy_to("COPY pg_authid TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.is_access_denied());
    assert!(error.messages()[0].contains("permission denied"));

    let error = client
        .copy()
        .copy_from_reader(
            "COPY pg_class FROM STDIN",
            std::io::Cursor::new(b"1\n".to_vec()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.messages()[0].contains("permission denied"));
}

#[tokio::test]
async fn timeout_is_a_429_that_is_not_retried() {
    let server = TestServer::with_config(carto_sql_api::Config {
        copy_timeout: std::time::Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let user = server.create_user().await;
    let client = path_client(&server, &user);
    let started = std::time::Instant::now();
    // The server may have begun the answer when the timeout strikes: then the error comes
    // at the end of the stream instead of as a 429. Either way it is a timeout.
    let error = match client
        .copy()
        .copy_to("COPY (SELECT pg_sleep(0.5)) TO STDOUT")
        .await
    {
        Err(error) => {
            assert_eq!(error.status(), Some(429));
            error
        }
        Ok(stream) => {
            let items: Vec<_> = stream.collect().await;
            let error = items.into_iter().find_map(Result::err).expect("an error");
            assert!(error.is_mid_stream());
            error
        }
    };
    assert!(error.is_timeout(), "{error}");
    assert!(!error.is_rate_limited());
    assert_eq!(error.context(), Some("limit"));
    assert_eq!(error.detail(), Some("datasource"));
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");

    create(&client, "CREATE TABLE t (id int)").await;
    let slow = futures::stream::unfold(0, |n| async move {
        if n == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("{n}\n"))),
            n + 1,
        ))
    });
    let error = client
        .copy()
        .copy_from_stream("COPY t FROM STDIN", slow)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(429), "{error}");
    assert!(error.is_timeout());
}

#[tokio::test]
async fn max_post_size() {
    let server = TestServer::with_config(carto_sql_api::Config {
        max_post_size: 1000,
        ..Default::default()
    })
    .await;
    let user = server.create_user().await;
    let client = path_client(&server, &user);
    create(&client, "CREATE TABLE t (id int, name text)").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, csv_rows(5000)).unwrap();
    let error = client
        .copy()
        .without_compression()
        .copy_from_file("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)", &path)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert_eq!(
        error.messages(),
        ["COPY FROM maximum POST size of 1000 bytes exceeded"]
    );
}
