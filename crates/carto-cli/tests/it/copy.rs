//! `carto copy from` and `carto copy to`.

use carto_sql_api::testing::TestServer;
use predicates::prelude::*;

use crate::support::{carto, sql, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_file_and_back_with_and_without_gzip() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(
        &server,
        &user,
        "CREATE TABLE t (id int, name text, the_geom geometry(Point, 4326))",
    )
    .await;
    let csv = "id,name,the_geom\n1,\"a, b\",SRID=4326;POINT(1 2)\n2,,\n3,ünï \"q\",POINT(3 4)\n";
    std::fs::write(dir.path().join("t.csv"), csv).unwrap();

    carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(dir.path().join("t.csv"))
        .args(["--table", "t", "--header"])
        .assert()
        .success()
        .stderr(predicate::str::contains("copied 3 rows"));
    carto(&server, &user, dir.path())
        .args(["--json", "copy", "from"])
        .arg(dir.path().join("t.csv"))
        .args(["--table", "t", "--header", "--no-compress"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"total_rows\":3"));

    let out = dir.path().join("out.csv");
    carto(&server, &user, dir.path())
        .args(["copy", "to"])
        .arg(&out)
        .args(["--query", "COPY (SELECT id, name || E'\\n\"x\"' AS name, ST_AsEWKT(the_geom) AS the_geom FROM t ORDER BY id LIMIT 3) TO STDOUT WITH (FORMAT csv, HEADER true)"])
        .assert()
        .success()
        .stderr(predicate::str::contains("wrote 3 rows, "));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "id,name,the_geom\n1,\"a, b\n\"\"x\"\"\",SRID=4326;POINT(1 2)\n1,\"a, b\n\"\"x\"\"\",SRID=4326;POINT(1 2)\n2,,\n"
    );

    carto(&server, &user, dir.path())
        .args(["copy", "to"])
        .arg(&out)
        .args([
            "--table",
            "t",
            "--columns",
            "id",
            "--format",
            "text",
            "--append",
            "--no-compress",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("wrote 6 rows, "));
    let appended = std::fs::read_to_string(&out).unwrap();
    assert!(appended.ends_with("1\n2\n3\n1\n2\n3\n"), "{appended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_stdout_pipe() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE t (id int, name text)").await;
    carto(&server, &user, dir.path())
        .args([
            "--quiet",
            "copy",
            "from",
            "-",
            "--query",
            "COPY t FROM STDIN",
        ])
        .write_stdin("1\tone\n2\ttwo\n")
        .assert()
        .success()
        .stderr("");
    carto(&server, &user, dir.path())
        .args(["copy", "to", "-", "--query", "COPY t TO STDOUT"])
        .assert()
        .success()
        .stdout("1\tone\n2\ttwo\n")
        .stderr(predicate::str::contains("wrote 2 rows, 12 B to stdout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_leaves_no_file_behind() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tsv");
    let failing = "COPY (SELECT i, 1 / (200000 - i) FROM generate_series(1, 300000) i) TO STDOUT";
    carto(&server, &user, dir.path())
        .args(["copy", "to"])
        .arg(&out)
        .args(["--query", failing])
        .assert()
        .failure()
        .stderr(predicate::str::contains("division by zero"));
    assert!(
        !out.exists(),
        "a half-written file was left under the target name"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(names.is_empty(), "temporary files left behind: {names:?}");

    // An existing file is left as it was.
    std::fs::write(&out, "keep me\n").unwrap();
    carto(&server, &user, dir.path())
        .args(["copy", "to"])
        .arg(&out)
        .args(["--query", failing])
        .assert()
        .failure();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upload_fails_clearly_and_loads_nothing() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE t (id int, name text)").await;
    let file = dir.path().join("bad.csv");
    std::fs::write(&file, "id,name\n1,a\n2,b\nthree,c\n").unwrap();
    let out = carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(&file)
        .args(["--table", "t", "--header"])
        .assert()
        .failure()
        .code(1)
        .get_output()
        .clone();
    assert!(
        text(&out.stderr).contains("invalid input syntax for type integer: \"three\""),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM t").await[0]["n"],
        0
    );

    carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(dir.path().join("missing.csv"))
        .args(["--table", "t"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("missing.csv"));
}

/// A CARTO table starts with cartodb_id and the_geom: `--header` loads the file's columns by
/// the names in its header, in the file's order, from a file or from stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_names_the_columns_of_a_carto_table() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(
        &server,
        &user,
        "CREATE TABLE cities (name text, pop int, lat float8, lon float8); \
         SELECT CDB_CartodbfyTable(current_schema, 'cities')",
    )
    .await;
    let with_geom = dir.path().join("with-geom.csv");
    std::fs::write(
        &with_geom,
        "name,pop,the_geom\nAlicante,337482,SRID=4326;POINT(-0.48 38.35)\n",
    )
    .unwrap();
    carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(&with_geom)
        .args(["--table", "cities", "--header"])
        .assert()
        .success()
        .stderr(predicate::str::contains("copied 1 rows"))
        .stderr(predicate::str::contains("note").not());

    // Another order, another case; the coordinates do not make a geometry, and it says so.
    let coordinates = "Lon;Name;LAT;pop\n-3.7;Madrid;40.4;3300000\n";
    std::fs::write(dir.path().join("coords.csv"), coordinates).unwrap();
    carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(dir.path().join("coords.csv"))
        .args(["--table", "cities", "--header", "--delimiter", ";"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "cities.the_geom stays empty: the file's columns lon, lat do not fill it",
        ));
    carto(&server, &user, dir.path())
        .args(["copy", "from", "-", "--table", "cities", "--header"])
        .write_stdin("pop,name\n5,Stdin\n")
        .assert()
        .success()
        .stderr(predicate::str::contains("copied 1 rows"));
    assert_eq!(
        sql(
            &server,
            &user,
            "SELECT cartodb_id, name, pop, lat, lon, ST_AsText(the_geom) AS g FROM cities ORDER BY cartodb_id"
        )
        .await,
        serde_json::json!([
            {"cartodb_id": 1, "name": "Alicante", "pop": 337482, "lat": null, "lon": null, "g": "POINT(-0.48 38.35)"},
            {"cartodb_id": 2, "name": "Madrid", "pop": 3300000, "lat": 40.4, "lon": -3.7, "g": null},
            {"cartodb_id": 3, "name": "Stdin", "pop": 5, "lat": null, "lon": null, "g": null},
        ])
    );

    // A header naming a column the table lacks is refused before anything is sent.
    std::fs::write(dir.path().join("bad.csv"), "name,population\nX,1\n").unwrap();
    carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(dir.path().join("bad.csv"))
        .args(["--table", "cities", "--header"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "names columns cities does not have: population",
        ))
        .stderr(predicate::str::contains("--columns"));
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM cities").await[0]["n"],
        3
    );
}
