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

    let error = copy
        .copy_to("COPY (SELECT i, 1/(200000-i) FROM generate_series(1,300000) i) TO STDOUT")
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(error.to_string().contains("division by zero"), "{error}");
    drop(client);
    drop(server);
}
