//! `carto import`.

use carto_sql_api::testing::TestServer;
use predicates::prelude::*;

use crate::support::{carto, sql, text};

const MIXED: &str = "id,Name,score,active,born,seen,wkt\n\
1,\"Smith, Anna\",3.5,true,1990-01-02,2024-01-01 10:00:00+01,SRID=4326;POINT(2.17 41.38)\n\
2,Bob,4,false,1985-12-31,2024-01-02T11:30:00Z,POINT(-3.7 40.4)\n\
3,,,,,,\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_with_mixed_types_and_geometry() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("people.csv");
    std::fs::write(&file, MIXED).unwrap();

    carto(&server, &user, dir.path())
        .args(["import"])
        .arg(&file)
        .args(["--table", "people"])
        .assert()
        .success()
        .stderr(predicate::str::contains("imported 3 rows"));

    let out = carto(&server, &user, dir.path())
        .args(["sql", "SELECT id, name, score, active, born, seen, wkt, cartodb_id, the_geom FROM people ORDER BY id"])
        .assert()
        .success()
        .get_output()
        .clone();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fields = &answer["fields"];
    assert_eq!(fields["id"]["pgtype"], "int4");
    assert_eq!(fields["name"]["type"], "string");
    assert_eq!(fields["score"]["pgtype"], "numeric");
    assert_eq!(fields["active"]["type"], "boolean");
    assert_eq!(fields["born"]["pgtype"], "date");
    assert_eq!(fields["seen"]["pgtype"], "timestamptz");
    assert_eq!(fields["wkt"]["type"], "geometry");
    assert_eq!(fields["the_geom"]["type"], "geometry");
    assert_eq!(answer["rows"][0]["name"], "Smith, Anna");
    assert_eq!(answer["rows"][2]["name"], serde_json::Value::Null);
    assert_eq!(answer["total_rows"], 3);
    let geom = sql(
        &server,
        &user,
        "SELECT ST_AsText(the_geom) AS g, ST_SRID(the_geom) AS s FROM people WHERE id = 2",
    )
    .await;
    assert_eq!(
        geom,
        serde_json::json!([{"g": "POINT(-3.7 40.4)", "s": 4326}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longitude_and_latitude_columns_become_the_geom() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stations.csv");
    std::fs::write(&file, "station;lat;lon\nA;41.38;2.17\nB;40.4;-3.7\n").unwrap();
    carto(&server, &user, dir.path())
        .args(["import"])
        .arg(&file)
        .args(["--table", "stations", "--delimiter", ";"])
        .assert()
        .success();
    let rows = sql(
        &server,
        &user,
        "SELECT station, ST_X(the_geom) AS x, ST_Y(the_geom) AS y FROM stations ORDER BY station",
    )
    .await;
    assert_eq!(
        rows,
        serde_json::json!([{"station": "A", "x": 2.17, "y": 41.38}, {"station": "B", "x": -3.7, "y": 40.4}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_names_its_line_and_nothing_is_imported() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    let mut csv = String::from("id,value\n");
    for i in 1..=50 {
        csv.push_str(&format!("{i},{i}\n"));
    }
    csv.push_str("51,not a number\n");
    std::fs::write(&file, csv).unwrap();
    // The sample sees only integers; the bad value is past it.
    let out = carto(&server, &user, dir.path())
        .args(["import"])
        .arg(&file)
        .args(["--table", "bad", "--sample", "10"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid input syntax for type integer: \"not a number\""),
        "{stderr}"
    );
    assert!(stderr.contains("line 52"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    let left = sql(
        &server,
        &user,
        "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'bad'",
    )
    .await;
    assert_eq!(left[0]["n"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_statements_and_runs_none() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("people.csv");
    std::fs::write(&file, MIXED).unwrap();
    let out = carto(&server, &user, dir.path())
        .args(["import"])
        .arg(&file)
        .args(["--table", "people", "--dry-run"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(
        text(&out.stdout),
        "CREATE TABLE people (\"id\" integer, \"name\" text, \"score\" numeric, \"active\" boolean, \
         \"born\" date, \"seen\" timestamptz, \"wkt\" geometry);\n\
         COPY people (\"id\", \"name\", \"score\", \"active\", \"born\", \"seen\", \"wkt\") FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ',');\n\
         SELECT CDB_CartodbfyTable(current_schema, 'people');\n"
    );
    let left = sql(
        &server,
        &user,
        "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'people'",
    )
    .await;
    assert_eq!(left[0]["n"], 0);
}
