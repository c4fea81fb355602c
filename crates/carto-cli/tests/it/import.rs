//! `carto import`.

use carto_sql_api::testing::TestServer;
use predicates::prelude::*;

use crate::support::{carto, process, sql, text};

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
        "DROP TABLE IF EXISTS \"carto_import_people\"; \
         CREATE TABLE \"carto_import_people\" (\"id\" integer, \"name\" text, \"score\" numeric, \
         \"active\" boolean, \"born\" date, \"seen\" timestamptz, \"wkt\" geometry);\n\
         COPY \"carto_import_people\" (\"id\", \"name\", \"score\", \"active\", \"born\", \"seen\", \"wkt\") FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ',');\n\
         ALTER TABLE \"carto_import_people\" RENAME TO \"people\"; \
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

/// `--if-exists fail|replace|append`, and a table named after the file by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_table_fails_is_replaced_or_appended_to() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("More Cities.csv");
    std::fs::write(&file, "name,pop,lat,lon\nA,1,41.38,2.17\nB,2,40.4,-3.7\n").unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&file)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "table more_cities (from the file's name)",
        ))
        .stderr(predicate::str::contains("imported 2 rows"));

    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&file)
        .args(["--table", "more_cities"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the table more_cities already exists: use --if-exists replace",
        ));
    let names = "SELECT string_agg(name || ':' || pop || ':' || ST_AsText(the_geom), ',' ORDER BY cartodb_id) AS s FROM more_cities";
    assert_eq!(
        sql(&server, &user, names).await[0]["s"],
        "A:1:POINT(2.17 41.38),B:2:POINT(-3.7 40.4)"
    );

    std::fs::write(&file, "name,pop,lat,lon\nC,3,1,2\n").unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&file)
        .args(["--if-exists", "replace"])
        .assert()
        .success()
        .stderr(predicate::str::contains("imported 1 rows"));
    assert_eq!(sql(&server, &user, names).await[0]["s"], "C:3:POINT(2 1)");

    // Appended rows get the table's next cartodb_id and a geometry from their lon/lat.
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "lon,lat,name\n5,6,D\n").unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&other)
        .args(["--table", "more_cities", "--if-exists", "append"])
        .assert()
        .success()
        .stderr(predicate::str::contains("appended 1 rows"));
    let rows = "SELECT string_agg(cartodb_id || ':' || name || ':' || coalesce(pop, 0) || ':' || ST_AsText(the_geom), ',' ORDER BY cartodb_id) AS s FROM more_cities";
    assert_eq!(
        sql(&server, &user, rows).await[0]["s"],
        "1:C:3:POINT(2 1),2:D:0:POINT(5 6)"
    );
    // A column the table lacks is refused before anything is loaded.
    std::fs::write(&other, "name,height\nE,7\n").unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&other)
        .args(["--table", "more_cities", "--if-exists", "append"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "has columns more_cities does not have: height",
        ));
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM more_cities").await[0]["n"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_that_would_change_are_refused_with_the_name_to_use() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.csv");
    std::fs::write(&file, "name\nA\n").unwrap();
    for (given, suggested) in [("My Cities", "my_cities"), ("MyCities", "mycities")] {
        carto(&server, &user, dir.path())
            .arg("import")
            .arg(&file)
            .args(["--table", given])
            .assert()
            .failure()
            .code(1)
            .stderr(predicate::str::contains(format!("try --table {suggested}")));
    }
    assert_eq!(tables(&server, &user).await, Vec::<String>::new());
}

/// Killed while loading, an import leaves no table under its name, and the next run works
/// (dropping what the killed one staged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_import_leaves_no_table_and_the_next_one_works() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let mut import = big_import(&server, &user, dir.path()).await;
    import.kill().unwrap();
    import.wait().unwrap();
    assert_eq!(tables(&server, &user).await, ["carto_import_big"]);

    carto(&server, &user, dir.path())
        .arg("import")
        .arg(dir.path().join("big.csv"))
        .assert()
        .success()
        .stderr(predicate::str::contains("imported 1000000 rows"));
    assert_eq!(tables(&server, &user).await, ["big"]);
}

/// `id,name` rows.
fn big_csv(rows: usize) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},name {i}\n"));
    }
    csv
}

/// `carto import` of a file of a million rows, running in the background, once it is loading
/// (its staging table exists).
pub async fn big_import(
    server: &TestServer,
    user: &carto_sql_api::testing::TestUser,
    dir: &std::path::Path,
) -> std::process::Child {
    let file = dir.join("big.csv");
    std::fs::write(&file, big_csv(1_000_000)).unwrap();
    let mut import = process(server, user, dir)
        .arg("import")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_staging(server, user, &mut import).await;
    import
}

/// Waits until the import has created its staging table, i.e. it is loading.
async fn wait_for_staging(
    server: &TestServer,
    user: &carto_sql_api::testing::TestUser,
    import: &mut std::process::Child,
) {
    loop {
        if let Some(status) = import.try_wait().unwrap() {
            panic!("the import ended ({status}) before it could be interrupted");
        }
        if tables(server, user)
            .await
            .iter()
            .any(|t| t.starts_with("carto_import_"))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The user's tables, by name.
pub async fn tables(server: &TestServer, user: &carto_sql_api::testing::TestUser) -> Vec<String> {
    let rows = sql(
        server,
        user,
        "SELECT tablename AS t FROM pg_tables WHERE schemaname = current_schema \
         AND tablename <> 'spatial_ref_sys' ORDER BY 1",
    )
    .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["t"].as_str().unwrap().to_string())
        .collect()
}

/// `;`, tab and `|` files without `--delimiter`; `--delimiter tab`; codes keep their zeros;
/// `--type` overrides; the chosen types and renamed columns are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delimiters_are_detected_and_types_are_shown_and_overridable() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ["Name", "Postal Code", "population", "lat", "lon"],
        ["Abc", "08001", "1620343", "41.38", "2.17"],
        ["abcdé;x", "007", "5", "40.4", "-3.7"],
    ];
    for (i, (delimiter, shown)) in [(";", "';'"), ("\t", "tab"), ("|", "'|'")]
        .into_iter()
        .enumerate()
    {
        let table = format!("t{i}");
        let file = dir.path().join(format!("{table}.csv"));
        let text: String = rows.iter().map(|r| r.join(delimiter) + "\n").collect();
        std::fs::write(&file, text.replace("abcdé;x", "\"abcdé;x\"")).unwrap();
        carto(&server, &user, dir.path())
            .arg("import")
            .arg(&file)
            .args(["--type", "population=bigint"])
            .assert()
            .success()
            .stderr(predicate::str::contains(format!(
                "delimiter {shown} (detected)"
            )))
            .stderr(predicate::str::contains(
                "columns: name text, postal_code text, population bigint, lat numeric, lon numeric",
            ))
            .stderr(predicate::str::contains(
                "renamed: \"Name\" -> name, \"Postal Code\" -> postal_code",
            ));
        let answer = sql(
            &server,
            &user,
            &format!(
                "SELECT name, postal_code, population, ST_AsText(the_geom) AS g, \
                 pg_typeof(population)::text AS pop_type FROM {table} ORDER BY name"
            ),
        )
        .await;
        assert_eq!(
            answer,
            serde_json::json!([
                {"name": "Abc", "postal_code": "08001", "population": 1620343, "g": "POINT(2.17 41.38)", "pop_type": "bigint"},
                {"name": "abcdé;x", "postal_code": "007", "population": 5, "g": "POINT(-3.7 40.4)", "pop_type": "bigint"},
            ]),
            "{delimiter:?}"
        );
    }

    // Given by name, tab is tab.
    let tsv = dir.path().join("named.tsv");
    std::fs::write(&tsv, "a\tb\n1\t2\n").unwrap();
    for given in ["tab", "\\t"] {
        carto(&server, &user, dir.path())
            .arg("import")
            .arg(&tsv)
            .args(["--delimiter", given, "--if-exists", "replace"])
            .assert()
            .success()
            .stderr(predicate::str::contains("columns: a integer, b integer"));
    }
    // A ;-file read with a given , is refused, not loaded as one column.
    let semicolons = dir.path().join("semi.csv");
    std::fs::write(&semicolons, "name;population\nA;1\n").unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&semicolons)
        .args(["--delimiter", ","])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "is one column, \"name;population\", read with the delimiter ','",
        ))
        .stderr(predicate::str::contains("--delimiter ';'"));
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&semicolons)
        .args(["--type", "nope=text"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("the file has no column \"nope\""));
    assert!(!tables(&server, &user).await.contains(&"semi".to_string()));
}

/// A GeoJSON FeatureCollection: properties become typed columns, geometries the_geom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geojson_file() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("places.geojson");
    std::fs::write(
        &file,
        r#"{"type": "FeatureCollection", "features": [
          {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.17, 41.38]},
           "properties": {"name": "Barcelona, \"BCN\"", "pop": 1620343, "code": "08001", "tags": ["a", "b"]}},
          {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
           "properties": {"name": "Triangle", "pop": 3.5, "extra": true}},
          {"type": "Feature", "geometry": null, "properties": {"name": "Nowhere"}}
        ]}"#,
    )
    .unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&file)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "columns: the_geom text, name text, pop numeric, code text, tags text, extra boolean",
        ))
        .stderr(predicate::str::contains("imported 3 rows"));
    let rows = sql(
        &server,
        &user,
        "SELECT name, pop, code, tags, extra, ST_AsText(the_geom) AS g, ST_SRID(the_geom) AS srid, \
         cartodb_id FROM places ORDER BY cartodb_id",
    )
    .await;
    assert_eq!(
        rows,
        serde_json::json!([
            {"name": "Barcelona, \"BCN\"", "pop": 1620343, "code": "08001", "tags": "[\"a\",\"b\"]", "extra": null, "g": "POINT(2.17 41.38)", "srid": 4326, "cartodb_id": 1},
            {"name": "Triangle", "pop": 3.5, "code": null, "tags": null, "extra": true, "g": "POLYGON((0 0,1 0,1 1,0 0))", "srid": 4326, "cartodb_id": 2},
            {"name": "Nowhere", "pop": null, "code": null, "tags": null, "extra": null, "g": null, "srid": null, "cartodb_id": 3},
        ])
    );
    std::fs::write(
        dir.path().join("bad.geojson"),
        r#"{"type": "Point", "coordinates": [1, 2]}"#,
    )
    .unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(dir.path().join("bad.geojson"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "expected a GeoJSON FeatureCollection or Feature, found type \"Point\"",
        ));
}
