//! Uploads: every `copy_from*` method, both URL styles, compression on and off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use carto::{Client, CopyClient, Progress};
use futures::StreamExt;

use crate::support::{count, create, csv_rows, host_client, setup};

const CSV_Q: &str = "COPY t (id, name) FROM STDIN WITH (FORMAT csv, HEADER true)";

async fn with_table(client: &Client) {
    create(client, "CREATE TABLE t (id int, name text)").await;
}

fn variants(client: &Client) -> [(&'static str, CopyClient); 3] {
    [
        ("gzip 1", client.copy()),
        ("gzip 6", client.copy().with_gzip_level(6)),
        ("plain", client.copy().without_compression()),
    ]
}

#[tokio::test]
async fn file_upload_with_and_without_compression() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, csv_rows(2016)).unwrap();
    for (name, copy) in variants(&client) {
        let outcome = copy.copy_from_file(CSV_Q, &path).await.unwrap();
        assert_eq!(outcome.total_rows, 2016, "{name}");
        assert!(outcome.time >= 0.0);
    }
    assert_eq!(count(&server, &user, "t").await, 3 * 2016);
}

#[tokio::test]
async fn host_style_upload() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    let outcome = host_client(&server, &user)
        .copy()
        .copy_from_reader(CSV_Q, std::io::Cursor::new(csv_rows(10).into_bytes()))
        .await
        .unwrap();
    assert_eq!(outcome.total_rows, 10);
}

#[tokio::test]
async fn stream_and_reader_uploads() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    for (name, copy) in variants(&client) {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"id,name\n1,a")),
            Ok(Bytes::from_static(b"b\n2,")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"cd\n")),
        ];
        let outcome = copy
            .copy_from_stream(CSV_Q, futures::stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(outcome.total_rows, 2, "{name}");
        let reader = tokio::io::BufReader::new(std::io::Cursor::new(b"id,name\n3,e\n".to_vec()));
        let outcome = copy.copy_from_reader(CSV_Q, reader).await.unwrap();
        assert_eq!(outcome.total_rows, 1, "{name}");
    }
    let names: Vec<String> = server
        .superuser_client(&user)
        .await
        .query("SELECT DISTINCT name FROM t ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["ab", "cd", "e"]);
}

#[tokio::test]
async fn sink_finish_commits_and_reports() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    for (name, copy) in variants(&client) {
        let mut sink = copy.copy_from(CSV_Q).await.unwrap();
        sink.send(&b"id,name\n"[..]).await.unwrap();
        for i in 0..1000 {
            sink.send(format!("{i},n{i}\n")).await.unwrap();
        }
        let outcome = sink.finish().await.unwrap();
        assert_eq!(outcome.total_rows, 1000, "{name}");
    }
    assert_eq!(count(&server, &user, "t").await, 3000);
}

#[tokio::test]
async fn sink_works_with_forward() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    let mut sink = client.copy().copy_from(CSV_Q).await.unwrap();
    let data = futures::stream::iter(
        ["id,name\n", "1,x\n", "2,y\n"].map(|s| Ok::<_, carto::Error>(Bytes::from(s))),
    );
    // `forward` closes the sink at the end of the stream: that ends the data.
    data.forward(&mut sink).await.unwrap();
    assert_eq!(sink.finish().await.unwrap().total_rows, 2);
    assert_eq!(count(&server, &user, "t").await, 2);
}

#[tokio::test]
async fn dropping_an_unfinished_sink_commits_nothing() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    for abort_explicitly in [false, true] {
        let mut sink = client.copy().copy_from(CSV_Q).await.unwrap();
        sink.send(Bytes::from(csv_rows(5000))).await.unwrap();
        // Let the rows reach the server before breaking off.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if abort_explicitly {
            sink.abort().await;
        } else {
            drop(sink);
        }
        assert!(server.backends_gone(&user, "COPY t").await);
        assert_eq!(count(&server, &user, "t").await, 0);
    }
    // The connection pool is still usable afterwards.
    let outcome = client
        .copy()
        .copy_from_reader(CSV_Q, std::io::Cursor::new(csv_rows(3).into_bytes()))
        .await
        .unwrap();
    assert_eq!(outcome.total_rows, 3);
}

#[tokio::test]
async fn a_failing_stream_aborts_the_upload() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(csv_rows(100))),
        Err(std::io::Error::other("disk on fire")),
    ];
    let error = client
        .copy()
        .copy_from_stream(CSV_Q, futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert!(error.is_io(), "{error:?}");
    let cause = std::error::Error::source(&error).map(|s| s.to_string());
    assert_eq!(cause.as_deref(), Some("disk on fire"));
    assert!(server.backends_gone(&user, "COPY t").await);
    assert_eq!(count(&server, &user, "t").await, 0);
}

#[tokio::test]
async fn rows_upload_with_geometries() {
    #[derive(serde::Serialize)]
    struct Place {
        id: i32,
        name: Option<String>,
        the_geom: carto::Point,
    }
    let (server, user, client) = setup().await;
    create(
        &client,
        "CREATE TABLE places (id int, name text, the_geom geometry(Point, 4326))",
    )
    .await;
    let places = (0..500).map(|i| Place {
        id: i,
        name: (i % 2 == 0).then(|| format!("place\t{i}")),
        the_geom: carto::Point::new(f64::from(i) / 10.0, -40.125),
    });
    let outcome = client
        .copy()
        .with_chunk_size(1024)
        .copy_from_rows(
            "places",
            &["id", "name", "the_geom"],
            futures::stream::iter(places),
        )
        .await
        .unwrap();
    assert_eq!(outcome.total_rows, 500);
    let row = server
        .superuser_client(&user)
        .await
        .query_one(
            "SELECT name, ST_X(the_geom), ST_Y(the_geom), ST_SRID(the_geom) FROM places WHERE id = 12",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("place\t12")
    );
    assert_eq!(row.get::<_, f64>(1), 1.2);
    assert_eq!(row.get::<_, f64>(2), -40.125);
    assert_eq!(row.get::<_, i32>(3), 4326);
}

#[tokio::test]
async fn progress_reports_bytes_and_rows() {
    let (_server, _user, client) = setup().await;
    with_table(&client).await;
    let data = csv_rows(20_000);
    let bytes = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let rows = Arc::new(AtomicU64::new(0));
    let (b, w, r) = (bytes.clone(), wire.clone(), rows.clone());
    let copy = client.copy().with_progress(Progress::new(move |p| {
        b.store(p.bytes, Ordering::SeqCst);
        w.store(p.wire_bytes, Ordering::SeqCst);
        if p.finished {
            r.store(p.rows.unwrap_or(0), Ordering::SeqCst);
        }
    }));
    copy.copy_from_reader(CSV_Q, std::io::Cursor::new(data.clone().into_bytes()))
        .await
        .unwrap();
    assert_eq!(bytes.load(Ordering::SeqCst), data.len() as u64);
    let compressed = wire.load(Ordering::SeqCst);
    assert!(
        compressed > 0 && compressed < data.len() as u64 / 2,
        "{compressed}"
    );
    assert_eq!(rows.load(Ordering::SeqCst), 20_000);
}

#[tokio::test]
async fn a_row_that_cannot_be_encoded_aborts_the_upload() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    let rows = (0..20_000).map(|i| {
        (
            i,
            if i == 19_999 {
                "nul\0".to_string()
            } else {
                format!("r{i}")
            },
        )
    });
    let error = client
        .copy()
        .with_chunk_size(1024)
        .copy_from_rows("t", &["id", "name"], futures::stream::iter(rows))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("NUL"), "{error}");
    assert!(server.backends_gone(&user, "COPY t").await);
    assert_eq!(count(&server, &user, "t").await, 0);
}

#[tokio::test]
async fn small_sends_are_merged_into_chunks() {
    let (server, user, client) = setup().await;
    with_table(&client).await;
    let reports = Arc::new(AtomicU64::new(0));
    let r = reports.clone();
    let copy = client
        .copy()
        .without_compression()
        .with_chunk_size(16 * 1024)
        .with_progress(Progress::new(move |p| {
            if !p.finished {
                r.fetch_add(1, Ordering::SeqCst);
            }
        }));
    let mut sink = copy.copy_from("COPY t FROM STDIN").await.unwrap();
    let mut total = 0;
    for i in 0..10_000 {
        let row = format!("{i}\tname {i}\n");
        total += row.len();
        sink.send(row).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap().total_rows, 10_000);
    assert_eq!(count(&server, &user, "t").await, 10_000);
    // One progress report per body chunk: ~total / 16 KiB of them, not one per send.
    let chunks = reports.load(Ordering::SeqCst);
    assert!(
        chunks <= (total / (16 * 1024) + 2) as u64,
        "{chunks} chunks for {total} bytes"
    );
}

#[tokio::test]
async fn geometries_of_every_kind_arrive_intact() {
    let (server, user, client) = setup().await;
    create(&client, "CREATE TABLE shapes (id int, g geometry)").await;
    let shapes = vec![
        (
            1,
            carto::Geometry::from(carto::Point::new(-3.7038, 40.4168)),
        ),
        (
            2,
            carto::Geometry::from(carto::Point::new(500000.5, 4000000.25).with_srid(3857)),
        ),
        (
            3,
            carto::Geometry::line_string(&[(0.0, 0.0), (1.5, 2.25), (3.0, -1.0)], 4326),
        ),
        (
            4,
            carto::Geometry::polygon(
                &[
                    vec![(0., 0.), (10., 0.), (10., 10.), (0., 10.), (0., 0.)],
                    vec![(2., 2.), (3., 2.), (3., 3.), (2., 2.)],
                ],
                4326,
            ),
        ),
        (
            5,
            carto::Geometry::from_ewkt("SRID=4326;MULTIPOINT(1 2,3 4)"),
        ),
    ];
    let expected: Vec<String> = shapes.iter().map(|(_, g)| g.to_ewkt()).collect();
    client
        .copy()
        .copy_from_rows("shapes", &["id", "g"], futures::stream::iter(shapes))
        .await
        .unwrap();
    let back: Vec<String> = server
        .superuser_client(&user)
        .await
        .query("SELECT ST_AsEWKT(g) FROM shapes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(back, expected);
}

#[tokio::test]
async fn floats_and_bytes_arrive_exactly() {
    struct Blob(Vec<u8>);
    impl serde::Serialize for Blob {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    let (server, user, client) = setup().await;
    create(&client, "CREATE TABLE fb (id int, f float8, b bytea)").await;
    let rows = vec![
        (1, f64::NAN, Blob(vec![0, 0xab, 0xff, b'\\', b'\t'])),
        (2, f64::NEG_INFINITY, Blob(Vec::new())),
        (3, 0.1 + 0.2, Blob(b"plain".to_vec())),
    ];
    client
        .copy()
        .copy_from_rows("fb", &["id", "f", "b"], futures::stream::iter(rows))
        .await
        .unwrap();
    let checks: Vec<bool> = server
        .superuser_client(&user)
        .await
        .query(
            "SELECT (id = 1 AND f = 'NaN'::float8 AND b = '\\x00abff5c09'::bytea) \
                 OR (id = 2 AND f = '-Infinity'::float8 AND b = ''::bytea) \
                 OR (id = 3 AND f = 0.30000000000000004::float8 AND b = 'plain'::bytea) \
             FROM fb ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(checks, [true, true, true]);
}
