//! Downloads: every `copy_to*` method, compression on and off, the appended error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use carto::{Client, Progress};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use crate::support::{create, host_client, setup};

/// Fails with division by zero at row 200000, after ~2.6 MB of output.
const FAILS_MIDWAY: &str =
    "COPY (SELECT i, 1/(200000-i) FROM generate_series(1,300000) i) TO STDOUT";

async fn with_table(client: &Client) {
    create(client, "CREATE TABLE t (id int, name text)").await;
    create(
        client,
        "INSERT INTO t SELECT i, 'name ' || i FROM generate_series(1, 50000) i",
    )
    .await;
}

fn expected(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\tname {i}\n")).collect()
}

async fn collect(stream: carto::CopyToStream) -> (Vec<u8>, Option<carto::Error>) {
    let mut data = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(error) => {
                assert!(stream.next().await.is_none(), "the error is the last item");
                return (data, Some(error));
            }
        }
    }
    (data, None)
}

#[tokio::test]
async fn stream_reader_writer_with_and_without_compression() {
    let (_server, _user, client) = setup().await;
    with_table(&client).await;
    let q = "COPY (SELECT * FROM t ORDER BY id) TO STDOUT";
    for copy in [client.copy(), client.copy().without_compression()] {
        let (data, error) = collect(copy.copy_to(q).await.unwrap()).await;
        assert!(error.is_none());
        assert_eq!(String::from_utf8(data).unwrap(), expected(50000));

        let mut reader = copy.copy_to_reader(q).await.unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, expected(50000));

        let mut out = Vec::new();
        let n = copy.copy_to_writer(q, &mut out).await.unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out, expected(50000).into_bytes());
    }
}

#[tokio::test]
async fn gzip_is_used_on_the_wire_when_on() {
    let (_server, _user, client) = setup().await;
    with_table(&client).await;
    let q = "COPY (SELECT * FROM t ORDER BY id) TO STDOUT";
    let mut figures = Vec::new();
    for copy in [client.copy(), client.copy().without_compression()] {
        let seen = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let s = seen.clone();
        let copy = copy.with_progress(Progress::new(move |p| {
            s.0.store(p.bytes, Ordering::SeqCst);
            s.1.store(p.wire_bytes, Ordering::SeqCst);
        }));
        let (data, _) = collect(copy.copy_to(q).await.unwrap()).await;
        assert_eq!(seen.0.load(Ordering::SeqCst), data.len() as u64);
        figures.push(seen.1.load(Ordering::SeqCst));
    }
    let total = expected(50000).len() as u64;
    assert!(
        figures[0] < total / 2,
        "gzip wire bytes {figures:?} of {total}"
    );
    assert_eq!(figures[1], total, "identity wire bytes");
}

#[tokio::test]
async fn host_style_download_and_long_statement() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    // Over the GET threshold: sent as a form body.
    let q = format!(
        "COPY (SELECT id FROM t WHERE id <= 3 AND '{}' <> '' ORDER BY id) TO STDOUT",
        "p".repeat(2000)
    );
    let (data, error) = collect(
        host_client(&server, &user)
            .copy()
            .copy_to(&q)
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none());
    assert_eq!(data, b"1\n2\n3\n");
}

#[tokio::test]
async fn files_are_written_whole_or_not_at_all() {
    let (_server, _user, client) = setup().await;
    with_table(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.tsv");
    let q = "COPY (SELECT * FROM t ORDER BY id) TO STDOUT";
    let copy = client.copy();
    copy.copy_to_file(q, &path, false).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected(50000));
    // Overwrite.
    copy.copy_to_file("COPY (SELECT 1) TO STDOUT", &path, false)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
    // Append.
    copy.copy_to_file("COPY (SELECT 2) TO STDOUT", &path, true)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
    // A failing append leaves the file as it was.
    let error = copy
        .copy_to_file(FAILS_MIDWAY, &path, true)
        .await
        .unwrap_err();
    assert!(error.is_mid_stream());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "no temporary file is left behind");
}

#[tokio::test]
async fn an_error_at_the_end_is_an_error_not_data() {
    let (_server, _user, client) = setup().await;
    for copy in [client.copy(), client.copy().without_compression()] {
        let (data, error) = collect(copy.copy_to(FAILS_MIDWAY).await.unwrap()).await;
        let error = error.expect("the COPY failed");
        assert!(error.is_mid_stream());
        assert_eq!(error.status(), Some(200));
        assert_eq!(error.messages(), ["division by zero"]);
        let text = String::from_utf8(data).unwrap();
        assert!(!text.contains("error"), "the error object is not data");
        assert!(text.ends_with('\n'));
        // PostgreSQL computes ahead of what it sends, but what came are whole rows in order.
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 100_000, "{} rows came first", lines.len());
        assert_eq!(lines[0], "1\t0");
    }

    // Not written into a file: the target never appears.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.tsv");
    let error = client
        .copy()
        .copy_to_file(FAILS_MIDWAY, &path, false)
        .await
        .unwrap_err();
    assert_eq!(error.messages(), ["division by zero"]);
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Through a reader: an io::Error carrying the same error.
    let mut reader = client.copy().copy_to_reader(FAILS_MIDWAY).await.unwrap();
    let mut sink = Vec::new();
    let io_error = reader.read_to_end(&mut sink).await.unwrap_err();
    let inner = io_error
        .get_ref()
        .and_then(|e| e.downcast_ref::<carto::Error>())
        .expect("a carto::Error inside");
    assert!(inner.is_mid_stream());
}

#[tokio::test]
async fn data_that_looks_like_an_error_is_kept() {
    let (_server, _user, client) = setup().await;
    // A row holding an error-like JSON object: COPY ends it with a newline, so it is data.
    let q = r#"COPY (SELECT '{"error":["x"]}') TO STDOUT"#;
    let (data, error) = collect(client.copy().copy_to(q).await.unwrap()).await;
    assert!(error.is_none());
    assert_eq!(data, Bytes::from_static(b"{\"error\":[\"x\"]}\n"));
}

#[tokio::test]
async fn piping_copy_to_into_copy_from() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    create(&client, "CREATE TABLE dest (id int, name text)").await;
    let other = server.create_user().await;
    let other_client = crate::support::path_client(&server, &other);
    create(&other_client, "CREATE TABLE dest (id int, name text)").await;

    // Account to account, binary format, no disk.
    let rows = client
        .copy()
        .copy_to("COPY t TO STDOUT WITH (FORMAT binary)")
        .await
        .unwrap();
    let outcome = other_client
        .copy()
        .copy_from_stream("COPY dest FROM STDIN WITH (FORMAT binary)", rows)
        .await
        .unwrap();
    assert_eq!(outcome.total_rows, 50000);
    assert_eq!(crate::support::count(&server, &other, "dest").await, 50000);

    // A source failing midway aborts the destination: nothing lands, and the error says why.
    let rows = client.copy().copy_to(FAILS_MIDWAY).await.unwrap();
    let error = client
        .copy()
        .copy_from_stream("COPY dest (id, name) FROM STDIN", rows)
        .await
        .unwrap_err();
    assert!(error.is_mid_stream(), "{error:?}");
    assert_eq!(error.messages(), ["division by zero"]);
    assert!(server.backends_gone(&user, "COPY dest").await);
    assert_eq!(crate::support::count(&server, &user, "dest").await, 0);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_query() {
    let (server, user, client) = setup().await;
    // Wide rows, uncompressed: the first chunk (held back behind the 64 KiB tail window)
    // arrives after a few dozen rows.
    let mut stream = client
        .copy()
        .without_compression()
        .copy_to(
            "COPY (SELECT i, repeat('x', 1000), pg_sleep(0.0001) \
                   FROM generate_series(1, 10000000) i) TO STDOUT",
        )
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    assert!(server.backends_gone(&user, "COPY (SELECT i, repeat").await);
}
