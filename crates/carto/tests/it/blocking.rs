//! The blocking facade: the same round trip without an async runtime in the caller.

use std::io::{Read, Write};

use carto::blocking::Client;
use carto::Credentials;
use carto_sql_api::testing::TestServer;

use crate::support::csv_rows;

#[test]
fn blocking_round_trip() {
    // The server runs on a runtime of its own; the test thread stays synchronous.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, user) = runtime.block_on(async {
        let server = TestServer::start().await;
        let user = server.create_user().await;
        (server, user)
    });
    let client =
        Client::new(Credentials::new(&server.base_url(&user), &user.api_key).unwrap()).unwrap();
    client
        .sql()
        .send("CREATE TABLE t (id int, name text)")
        .unwrap();
    let copy = client.copy();

    let mut upload = copy
        .copy_from("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)")
        .unwrap();
    upload.write_all(csv_rows(1000).as_bytes()).unwrap();
    assert_eq!(upload.finish().unwrap().total_rows, 1000);

    // Dropped unfinished: nothing lands.
    let mut upload = copy
        .copy_from("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)")
        .unwrap();
    upload.write_all(csv_rows(1000).as_bytes()).unwrap();
    upload.flush().unwrap();
    upload.abort();

    let outcome = copy
        .copy_from_rows(
            "t",
            &["id", "name"],
            (0..10).map(|i| (1000 + i, format!("r{i}"))),
        )
        .unwrap();
    assert_eq!(outcome.total_rows, 10);
    assert_eq!(
        client
            .sql()
            .send("SELECT count(*) AS n FROM t")
            .unwrap()
            .rows[0]["n"],
        1010
    );

    let mut text = String::new();
    copy.copy_to("COPY (SELECT id FROM t WHERE id < 3 ORDER BY id) TO STDOUT")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "0\n1\n2\n");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tsv");
    copy.copy_to_file("COPY t TO STDOUT", &path, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().lines().count(),
        1010
    );
    let file = std::fs::File::open(&path).unwrap();
    let outcome = copy
        .copy_from_reader("COPY t FROM STDIN", &mut std::io::BufReader::new(file))
        .unwrap();
    assert_eq!(outcome.total_rows, 1010);

    let job = client
        .batch()
        .with_poll_interval(std::time::Duration::from_millis(100))
        .create_and_wait("INSERT INTO t VALUES (5000, 'from a job')")
        .unwrap();
    assert_eq!(job.status, carto::JobStatus::Done);
    assert_eq!(
        client
            .sql()
            .send("SELECT count(*) AS n FROM t")
            .unwrap()
            .rows[0]["n"],
        1010 * 2 + 1
    );

    let error = copy
        .copy_to("COPY (SELECT i, 1/(200000-i) FROM generate_series(1,300000) i) TO STDOUT")
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(error.to_string().contains("division by zero"), "{error}");
    drop(client);
    drop(server);
}

#[test]
fn blocking_rate_limits_and_retries() {
    use carto_sql_api::limits::{Group, RateLimits};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, user) = runtime.block_on(async {
        let server = TestServer::with_config(carto_sql_api::Config {
            rate_limits: RateLimits::none().with(Group::Query, "0/1/1".parse().unwrap()),
            ..Default::default()
        })
        .await;
        let user = server.create_user().await;
        (server, user)
    });
    let credentials = Credentials::new(&server.base_url(&user), &user.api_key).unwrap();
    let impatient = Client::from_async(
        carto::Client::builder(credentials.clone())
            .retry(carto::RetryPolicy::never())
            .build()
            .unwrap(),
    )
    .unwrap();
    impatient.sql().send("SELECT 1").unwrap();
    let error = impatient.sql().send("SELECT 1").unwrap_err();
    assert!(error.is_rate_limited(), "{error:?}");
    assert!(error.retry_after().is_some());

    // The default policy waits as told and gets through.
    let patient = Client::new(credentials).unwrap();
    patient.sql().send("SELECT 1").unwrap();
    drop((impatient, patient));
    drop(server);
}
