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

/// WKB of `POINT(x y)`, little-endian.
fn point_wkb(x: f64, y: f64) -> Vec<u8> {
    let mut wkb = vec![1];
    wkb.extend(1u32.to_le_bytes());
    wkb.extend(x.to_le_bytes());
    wkb.extend(y.to_le_bytes());
    wkb
}

/// A GeoPackage geometry: the `GP` header (little-endian, or big-endian with an XY envelope),
/// then `wkb`.
fn gpkg_geometry(srs_id: i32, little: bool, empty: bool, wkb: &[u8]) -> Vec<u8> {
    let flags = if little { 1 } else { 0b10 } | if empty { 0b1_0000 } else { 0 };
    let mut blob = vec![b'G', b'P', 0, flags];
    if little {
        blob.extend(srs_id.to_le_bytes());
    } else {
        blob.extend(srs_id.to_be_bytes());
        // The envelope (min x, max x, min y, max y), which the import skips.
        blob.extend([0u8; 32]);
    }
    blob.extend(wkb);
    blob
}

/// A GeoPackage with two feature tables: `places` in 4326 (a point, a polygon, a NULL and an
/// empty geometry, a 3D point; attributes of every declared type), and `roads` in web
/// mercator under a srs_id of the file's own (100, EPSG 3857).
fn two_layer_gpkg(path: &std::path::Path) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "PRAGMA application_id = 1196444487;
         CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY,
           organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
           definition TEXT NOT NULL, description TEXT);
         INSERT INTO gpkg_spatial_ref_sys VALUES
           ('Undefined cartesian SRS', -1, 'NONE', -1, 'undefined', NULL),
           ('Undefined geographic SRS', 0, 'NONE', 0, 'undefined', NULL),
           ('WGS 84 geodetic', 4326, 'EPSG', 4326, 'GEOGCS[\"WGS 84\"]', NULL),
           ('Web mercator', 100, 'epsg', 3857, 'PROJCS[\"WGS 84 / Pseudo-Mercator\"]', NULL);
         CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY,
           data_type TEXT NOT NULL, identifier TEXT UNIQUE, description TEXT DEFAULT '',
           last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
           min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER);
         CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
           geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL,
           m TINYINT NOT NULL, CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name));
         INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id) VALUES
           ('places', 'features', 'places', 4326), ('roads', 'features', 'roads', 100);
         INSERT INTO gpkg_geometry_columns VALUES
           ('places', 'geom', 'GEOMETRY', 4326, 2, 0), ('roads', 'shape', 'POINT', 100, 0, 0);
         CREATE TABLE places (fid INTEGER PRIMARY KEY AUTOINCREMENT, geom GEOMETRY,
           \"Name\" TEXT, pop INTEGER, score DOUBLE, active BOOLEAN, born DATE,
           seen DATETIME, data BLOB, code TEXT(5));
         CREATE TABLE roads (fid INTEGER PRIMARY KEY AUTOINCREMENT, shape POINT, kind TEXT);",
    )
    .unwrap();
    let mut polygon = vec![1];
    polygon.extend(3u32.to_le_bytes());
    polygon.extend(1u32.to_le_bytes());
    polygon.extend(4u32.to_le_bytes());
    for (x, y) in [(0.0f64, 0.0f64), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)] {
        polygon.extend(x.to_le_bytes());
        polygon.extend(y.to_le_bytes());
    }
    // ISO WKB POINT Z (1 2 3), big-endian.
    let mut point_z = vec![0];
    point_z.extend(1001u32.to_be_bytes());
    for c in [1.0f64, 2.0, 3.0] {
        point_z.extend(c.to_be_bytes());
    }
    let places: [(Option<Vec<u8>>, &str); 5] = [
        (
            Some(gpkg_geometry(4326, false, false, &point_wkb(2.17, 41.38))),
            "Barcelona, \"BCN\"",
        ),
        (Some(gpkg_geometry(4326, true, false, &polygon)), "Triangle"),
        (None, "Nowhere"),
        (
            Some(gpkg_geometry(
                4326,
                true,
                true,
                &point_wkb(f64::NAN, f64::NAN),
            )),
            "Empty",
        ),
        (Some(gpkg_geometry(4326, true, false, &point_z)), "High"),
    ];
    for (i, (geometry, name)) in places.into_iter().enumerate() {
        db.execute(
            "INSERT INTO places (geom, \"Name\") VALUES (?1, ?2)",
            rusqlite::params![geometry, name],
        )
        .unwrap();
        if i == 0 {
            db.execute_batch(
                "UPDATE places SET pop = 1620343, score = 3.5, active = 1, born = '1990-01-02',
                 seen = '2024-01-01T10:00:00.000Z', data = x'00ff', code = '' WHERE fid = 1",
            )
            .unwrap();
        }
    }
    for (x, kind) in [(0.0, "origin"), (111_319.490_793_273_57, "east")] {
        db.execute(
            "INSERT INTO roads (shape, kind) VALUES (?1, ?2)",
            rusqlite::params![gpkg_geometry(100, true, false, &point_wkb(x, 0.0)), kind],
        )
        .unwrap();
    }
}

/// `carto import FILE ARGS...` as `user`, run.
fn import(
    server: &TestServer,
    user: &carto_sql_api::testing::TestUser,
    dir: &std::path::Path,
    file: &std::path::Path,
    args: &[&str],
) -> assert_cmd::assert::Assert {
    carto(server, user, dir)
        .arg("import")
        .arg(file)
        .args(args)
        .assert()
}

/// A GeoPackage's layers: typed attributes, geometries from its binary format (NULL and empty
/// as NULL), another SRID transformed to 4326; several layers need --layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geopackage_file() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("city.gpkg");
    two_layer_gpkg(&file);

    import(&server, &user, dir.path(), &file, &[])
        .failure()
        .stderr(predicate::str::contains(
            "has several layers: choose one with --layer (places, roads)",
        ));
    import(&server, &user, dir.path(), &file, &["--layer", "nope"])
        .failure()
        .stderr(predicate::str::contains(
            "has no layer \"nope\" (its layers: places, roads)",
        ));
    assert_eq!(tables(&server, &user).await, Vec::<String>::new());

    import(&server, &user, dir.path(), &file, &["--layer", "places"])
        .success()
        .stderr(predicate::str::contains(
            "table places (from the layer's name)",
        ))
        .stderr(predicate::str::contains(
            "columns: the_geom geometry, name text, pop bigint, score double precision, \
             active boolean, born date, seen timestamptz, data bytea, code text",
        ))
        .stderr(predicate::str::contains(
            "the layer may have Z or M coordinates: they are dropped (the_geom is 2D)",
        ))
        .stderr(predicate::str::contains("imported 5 rows"));
    let types = sql(
        &server,
        &user,
        "SELECT string_agg(column_name || ' ' || format_type(atttypid, atttypmod), ', ' \
         ORDER BY attnum) AS t FROM information_schema.columns c JOIN pg_attribute a \
         ON a.attrelid = 'places'::regclass AND a.attname = c.column_name \
         WHERE c.table_name = 'places' AND c.table_schema = current_schema",
    )
    .await;
    assert_eq!(
        types[0]["t"],
        "cartodb_id bigint, the_geom geometry(Geometry,4326), \
         the_geom_webmercator geometry(Geometry,3857), name text, pop bigint, \
         score double precision, active boolean, born date, seen timestamp with time zone, \
         data bytea, code text"
    );
    let rows = sql(
        &server,
        &user,
        "SELECT cartodb_id, name, pop, score, active, born::text AS born, \
         seen = '2024-01-01 10:00:00+00' AS seen_utc, encode(data, 'hex') AS data, code, \
         ST_AsText(the_geom) AS g, ST_SRID(the_geom) AS srid \
         FROM places ORDER BY cartodb_id",
    )
    .await;
    assert_eq!(
        rows,
        serde_json::json!([
            {"cartodb_id": 1, "name": "Barcelona, \"BCN\"", "pop": 1620343, "score": 3.5, "active": true, "born": "1990-01-02", "seen_utc": true, "data": "00ff", "code": "", "g": "POINT(2.17 41.38)", "srid": 4326},
            {"cartodb_id": 2, "name": "Triangle", "pop": null, "score": null, "active": null, "born": null, "seen_utc": null, "data": null, "code": null, "g": "POLYGON((0 0,1 0,1 1,0 0))", "srid": 4326},
            {"cartodb_id": 3, "name": "Nowhere", "pop": null, "score": null, "active": null, "born": null, "seen_utc": null, "data": null, "code": null, "g": null, "srid": null},
            {"cartodb_id": 4, "name": "Empty", "pop": null, "score": null, "active": null, "born": null, "seen_utc": null, "data": null, "code": null, "g": null, "srid": null},
            {"cartodb_id": 5, "name": "High", "pop": null, "score": null, "active": null, "born": null, "seen_utc": null, "data": null, "code": null, "g": "POINT(1 2)", "srid": 4326},
        ])
    );

    import(
        &server,
        &user,
        dir.path(),
        &file,
        &["--layer", "roads", "--table", "roads_4326"],
    )
    .success()
    .stderr(predicate::str::contains("imported 2 rows"));
    let roads = sql(
        &server,
        &user,
        "SELECT kind, ST_AsText(ST_SnapToGrid(the_geom, 0.000001)) AS g, ST_SRID(the_geom) AS srid \
         FROM roads_4326 ORDER BY cartodb_id",
    )
    .await;
    assert_eq!(
        roads,
        serde_json::json!([
            {"kind": "origin", "g": "POINT(0 0)", "srid": 4326},
            {"kind": "east", "g": "POINT(1 0)", "srid": 4326},
        ])
    );

    // Appended rows are transformed to 4326 and made 2D as they are inserted.
    import(
        &server,
        &user,
        dir.path(),
        &file,
        &[
            "--layer",
            "roads",
            "--table",
            "roads_4326",
            "--if-exists",
            "append",
        ],
    )
    .success()
    .stderr(predicate::str::contains("appended 2 rows"));
    import(
        &server,
        &user,
        dir.path(),
        &file,
        &["--layer", "places", "--if-exists", "append"],
    )
    .success()
    .stderr(predicate::str::contains("appended 5 rows"));
    let appended = sql(
        &server,
        &user,
        "SELECT (SELECT string_agg(cartodb_id || ' ' || ST_AsText(ST_SnapToGrid(the_geom, \
         0.000001)), ', ' ORDER BY cartodb_id) FROM roads_4326) AS roads, \
         (SELECT string_agg(cartodb_id || ' ' || coalesce(ST_AsText(the_geom), '-') || ' ' \
         || coalesce(code, '-'), ', ' ORDER BY cartodb_id) FROM places WHERE cartodb_id > 5) \
         AS places",
    )
    .await;
    assert_eq!(
        appended,
        serde_json::json!([{
            "roads": "1 POINT(0 0), 2 POINT(1 0), 3 POINT(0 0), 4 POINT(1 0)",
            "places": "6 POINT(2.17 41.38) , 7 POLYGON((0 0,1 0,1 1,0 0)) -, 8 - -, 9 - -, 10 POINT(1 2) -",
        }])
    );
}

/// A file named `.gpkg` that is not a GeoPackage, or one without a feature table: a clear
/// error and no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_geopackage() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.gpkg");
    std::fs::write(&fake, "name,pop\nA,1\n").unwrap();
    import(&server, &user, dir.path(), &fake, &[])
        .failure()
        .stderr(predicate::str::contains("fake.gpkg is not a GeoPackage"));
    let plain = dir.path().join("plain.gpkg");
    rusqlite::Connection::open(&plain)
        .unwrap()
        .execute_batch("CREATE TABLE t (a INTEGER)")
        .unwrap();
    import(&server, &user, dir.path(), &plain, &[])
        .failure()
        .stderr(predicate::str::contains("plain.gpkg is not a GeoPackage"));
    assert_eq!(tables(&server, &user).await, Vec::<String>::new());
}

/// `--dry-run` of a GeoPackage layer prints the statements with the declared types.
#[test]
fn geopackage_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("city.gpkg");
    two_layer_gpkg(&file);
    let out = crate::support::bare(dir.path())
        .arg("import")
        .arg(&file)
        .args([
            "--layer",
            "roads",
            "--type",
            "kind=varchar(10)",
            "--dry-run",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(
        text(&out.stdout),
        "DROP TABLE IF EXISTS \"carto_import_roads\"; \
         CREATE TABLE \"carto_import_roads\" (\"the_geom\" geometry, \"kind\" varchar(10));\n\
         COPY \"carto_import_roads\" (\"the_geom\", \"kind\") FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ',');\n\
         ALTER TABLE \"carto_import_roads\" RENAME TO \"roads\"; \
         SELECT CDB_CartodbfyTable(current_schema, 'roads');\n"
    );
}
