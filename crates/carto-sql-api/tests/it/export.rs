//! `/sql` file formats: those written by `ogr2ogr` (shp, kml, gpkg, spatialite) and by the
//! server itself (svg, topojson). Each answer is read back with an independent reader (GDAL's
//! `ogrinfo` and `ogr2ogr -f CSV`, Python's XML parser) and compared row by row.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;
use reqwest::Response;
use serde_json::Value;

use crate::cli::{carto_sql_api, first_answer, terminate};
use crate::support::{error_of, http};

/// Integers, reals, text with CSV-special characters, dates, points, a polygon and a NULL
/// geometry; `skip_me` is dropped by `skipfields`.
const MIXED: &str = "SELECT * FROM (VALUES \
     (1, 1.5::float8, 'a, \"quoted\"'::text, '2020-01-02'::date, 'SRID=4326;POINT(1 2)'::geometry, 0), \
     (2, -0.25, NULL, NULL, NULL, 0), \
     (3, 3, 'poly', '2021-03-04', 'SRID=4326;POLYGON((0 0,1 0,1 1,0 0))', 0) \
   ) AS t(id, x, label, day, the_geom, skip_me) ORDER BY id";

/// The same rows with points only: a shapefile holds one geometry type.
const POINTS: &str = "SELECT * FROM (VALUES \
     (1, 1.5::float8, 'a, \"quoted\"'::text, '2020-01-02'::date, 'SRID=4326;POINT(1 2)'::geometry, 0), \
     (2, -0.25, NULL, NULL, NULL, 0), \
     (3, 3, 'poly', '2021-03-04', 'SRID=4326;POINT(-3.5 40.25)', 0) \
   ) AS t(id, x, label, day, the_geom, skip_me) ORDER BY id";

async fn export(server: &TestServer, user: &TestUser, params: &[(&str, &str)]) -> Response {
    let mut query = vec![("api_key", user.api_key.as_str())];
    query.extend_from_slice(params);
    http()
        .get(format!("{}/sql", server.api_url(user)))
        .query(&query)
        .send()
        .await
        .expect("sql request")
}

async fn json_error(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The rows of `source` as GDAL reads them: column → text, with the geometry as `WKT`.
fn read_rows(source: &str) -> Vec<BTreeMap<String, String>> {
    let text = run(
        "ogr2ogr",
        &[
            "-f",
            "CSV",
            "/vsistdout/",
            source,
            "-lco",
            "GEOMETRY=AS_WKT",
        ],
    );
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().expect("header").clone();
    reader
        .records()
        .map(|record| {
            let record = record.expect("csv record");
            headers
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// `field` → GDAL type name, from `ogrinfo -so`.
fn read_types(source: &str) -> (BTreeMap<String, String>, String) {
    let summary = run("ogrinfo", &["-al", "-so", source]);
    let types = summary
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(": ")?;
            let kind = rest.split_whitespace().next()?;
            ["Integer", "Integer64", "Real", "String", "Date", "DateTime"]
                .contains(&kind)
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect();
    (types, summary)
}

async fn save(response: Response, path: &Path) {
    let bytes = response.bytes().await.expect("export body");
    std::fs::write(path, &bytes).expect("saving the export");
}

#[tokio::test]
async fn every_format_reads_back_with_its_rows_types_geometries_and_srs() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    for (format, q, extension, content_type) in [
        (
            "gpkg",
            MIXED,
            "gpkg",
            "application/x-sqlite3; charset=utf-8",
        ),
        (
            "spatialite",
            MIXED,
            "sqlite",
            "application/x-sqlite3; charset=utf-8",
        ),
        ("kml", MIXED, "kml", "application/kml; charset=utf-8"),
        ("shp", POINTS, "zip", "application/zip; charset=utf-8"),
    ] {
        let response = export(
            &server,
            &user,
            &[
                ("q", q),
                ("format", format),
                ("filename", "/tmp/my trips.csv"),
                ("skipfields", "skip_me"),
            ],
        )
        .await;
        assert_eq!(response.status(), 200, "{format}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{format}");
        let disposition = headers["content-disposition"].to_str().unwrap();
        assert!(
            disposition.starts_with(&format!("attachment; filename=my_trips.{extension};")),
            "{format}: {disposition}"
        );
        let path = dir.path().join(format!("answer.{extension}"));
        save(response, &path).await;
        let source = if format == "shp" {
            let members = run("unzip", &["-Z1", path.to_str().unwrap()]);
            let mut members: Vec<&str> = members.lines().collect();
            members.sort();
            assert_eq!(
                members,
                [
                    "my_trips.dbf",
                    "my_trips.prj",
                    "my_trips.shp",
                    "my_trips.shx"
                ]
            );
            format!("/vsizip/{}", path.display())
        } else {
            path.display().to_string()
        };

        let rows = read_rows(&source);
        assert_eq!(rows.len(), 3, "{format}: {rows:?}");
        let geometries: Vec<&str> = rows.iter().map(|r| r["WKT"].as_str()).collect();
        let expected: &[&str] = if q == MIXED {
            &["POINT (1 2)", "", "POLYGON ((0 0,1 0,1 1,0 0))"]
        } else {
            &["POINT (1 2)", "", "POINT (-3.5 40.25)"]
        };
        assert_eq!(geometries, expected, "{format}");
        let column = |name: &str| -> Vec<&str> {
            rows.iter()
                .map(|r| r.get(name).map_or("<missing>", String::as_str))
                .collect()
        };
        assert_eq!(column("id"), ["1", "2", "3"], "{format}");
        // A shapefile pads reals to its field width: compare the numbers.
        let reals: Vec<f64> = column("x").iter().map(|x| x.parse().unwrap()).collect();
        assert_eq!(reals, [1.5, -0.25, 3.0], "{format}");
        assert_eq!(column("label"), ["a, \"quoted\"", "", "poly"], "{format}");
        assert!(
            column("skip_me").iter().all(|v| *v == "<missing>"),
            "{format}: skipfields"
        );

        let (types, summary) = read_types(&source);
        assert!(summary.contains("ID[\"EPSG\",4326]"), "{format}: {summary}");
        if format == "kml" {
            // KML's schema has no dates; its values still read back.
            assert_eq!(column("day")[0].replace('/', "-"), "2020-01-02");
        } else {
            assert_eq!(column("day"), ["2020/01/02", "", "2021/03/04"], "{format}");
            assert_eq!(types["id"], "Integer", "{format}: {summary}");
            assert_eq!(types["x"], "Real", "{format}: {summary}");
            assert_eq!(types["label"], "String", "{format}: {summary}");
            assert_eq!(types["day"], "Date", "{format}: {summary}");
        }
    }
}

#[tokio::test]
async fn without_a_filename_the_download_and_layer_are_cartodb_query() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let response = export(
        &server,
        &user,
        &[
            ("q", "SELECT 'POINT(1 2)'::geometry AS the_geom"),
            ("format", "shp"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=cartodb-query.zip;"),
        "{disposition}"
    );
    let path = dir.path().join("answer.zip");
    save(response, &path).await;
    let members = run("unzip", &["-Z1", path.to_str().unwrap()]);
    assert!(
        members.lines().any(|m| m == "cartodb-query.shp"),
        "{members}"
    );
    // A single column: GDAL before 3.7 cannot read such a CSV spool without help.
    let rows = read_rows(&format!("/vsizip/{}", path.display()));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["WKT"], "POINT (1 2)");
}

#[tokio::test]
async fn integers_beyond_32_bits_booleans_and_timestamps_keep_their_types() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let response = export(
        &server,
        &user,
        &[
            (
                "q",
                "SELECT 12345678901234::int8 AS big, true AS flag, \
                 '2020-01-02 03:04:05'::timestamp AS at, 'POINT(1 2)'::geometry AS geom",
            ),
            ("format", "gpkg"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let path = dir.path().join("answer.gpkg");
    save(response, &path).await;
    let source = path.display().to_string();
    let rows = read_rows(&source);
    assert_eq!(rows[0]["big"], "12345678901234");
    assert_eq!(rows[0]["flag"], "1");
    assert_eq!(rows[0]["at"], "2020/01/02 03:04:05");
    // Without `the_geom` the first geometry column is the geometry.
    assert_eq!(rows[0]["WKT"], "POINT (1 2)");
    let (types, summary) = read_types(&source);
    assert_eq!(types["big"], "Integer64", "{summary}");
    assert_eq!(types["at"], "DateTime", "{summary}");
    assert!(summary.contains("flag: Integer(Boolean)"), "{summary}");
}

#[tokio::test]
async fn a_query_error_is_the_usual_json_error() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    for format in ["shp", "svg", "topojson"] {
        let (status, body) = json_error(
            export(
                &server,
                &user,
                &[("q", "SELECT * FROM no_such_table"), ("format", format)],
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{format}");
        assert_eq!(
            error_of(&body),
            "relation \"no_such_table\" does not exist",
            "{format}"
        );
    }
}

#[tokio::test]
async fn a_shapefile_of_mixed_geometries_is_a_clear_400() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let (status, body) =
        json_error(export(&server, &user, &[("q", MIXED), ("format", "shp")]).await).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_of(&body).starts_with("ogr2ogr could not write this result as zip: ERROR"),
        "{body}"
    );
}

/// A server whose exports spool into a directory the test owns.
async fn server_with_exports(
    temp: &Path,
    change: impl FnOnce(&mut carto_sql_api::Exports),
) -> TestServer {
    let mut config = Config::default();
    config.exports.temp_dir = Some(temp.to_path_buf());
    change(&mut config.exports);
    TestServer::with_config(config).await
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test]
async fn an_export_over_the_size_limit_is_413_and_leaves_no_file() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_exports(temp.path(), |e| e.max_size = 50_000).await;
    let user = server.create_user().await;
    let q = "SELECT n, 'POINT(1 2)'::geometry AS the_geom FROM generate_series(1, 100000) AS n";
    let (status, body) =
        json_error(export(&server, &user, &[("q", q), ("format", "gpkg")]).await).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        error_of(&body).contains("larger than this server's limit of 50000 bytes"),
        "{body}"
    );
    assert!(is_empty(temp.path()));
    assert!(server.backends_gone(&user, "SELECT n").await);

    // A small export under the same limit works and leaves nothing behind either.
    let response = export(
        &server,
        &user,
        &[
            ("q", "SELECT 1 AS n, 'POINT(1 2)'::geometry AS the_geom"),
            ("format", "kml"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("<coordinates>1,2</coordinates>"));
    assert!(is_empty(temp.path()));
}

#[tokio::test]
async fn without_ogr2ogr_an_export_is_a_clear_501() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_exports(temp.path(), |e| {
        e.ogr2ogr = "/nonexistent/ogr2ogr".into();
    })
    .await;
    let user = server.create_user().await;
    let (status, body) =
        json_error(export(&server, &user, &[("q", "SELECT 1"), ("format", "kml")]).await).await;
    assert_eq!(status, 501);
    assert_eq!(
        error_of(&body),
        "Format kml needs GDAL's ogr2ogr, which this server does not have"
    );
    // The other formats are unaffected.
    let response = export(&server, &user, &[("q", "SELECT 1"), ("format", "csv")]).await;
    assert_eq!(response.status(), 200);
}

/// Waits up to 15 s for `done`.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..150 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sends an export request in the background, as `user`.
fn spawn_export(
    server: &TestServer,
    user: &TestUser,
    q: &'static str,
) -> tokio::task::JoinHandle<Option<u16>> {
    let url = format!("{}/sql", server.api_url(user));
    let key = user.api_key.clone();
    tokio::spawn(async move {
        let response = http()
            .get(url)
            .query(&[("q", q), ("format", "gpkg"), ("api_key", &key)])
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    })
}

#[tokio::test]
async fn exports_beyond_the_cap_are_429_with_retry_after() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_exports(temp.path(), |e| e.max_concurrent = 1).await;
    let user = server.create_user().await;
    let slow = spawn_export(&server, &user, "SELECT pg_sleep(3) AS slept");
    // The slot is taken before the query starts, so once it runs the cap is reached.
    let mut running = false;
    for _ in 0..150 {
        if server.running_statements(&user, "SELECT pg_sleep(3)").await > 0 {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "the slow export never started");
    let response = export(&server, &user, &[("q", "SELECT 1"), ("format", "kml")]).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    let (_, body) = json_error(response).await;
    assert!(
        error_of(&body).starts_with("Too many file exports at once"),
        "{body}"
    );
    assert_eq!(slow.await.unwrap(), Some(200));
    // The slot is free again.
    let response = export(&server, &user, &[("q", "SELECT 1"), ("format", "kml")]).await;
    assert_eq!(response.status(), 200);
}

/// Whether process `pid` has ended (a zombie waiting to be reaped counts as ended).
fn ended(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_or(true, |status| status.contains("State:\tZ"))
}

#[tokio::test]
async fn a_client_that_disconnects_stops_ogr2ogr_and_leaves_no_file() {
    let temp = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let pid_file = scripts.path().join("pid");
    // An ogr2ogr that never finishes converting, so that the client is gone while it runs.
    let fake = scripts.path().join("ogr2ogr");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\necho $$ > {}\nexec sleep 60\n",
            pid_file.display()
        ),
    )
    .unwrap();
    run("chmod", &["+x", fake.to_str().unwrap()]);
    let server = server_with_exports(temp.path(), |e| e.ogr2ogr = fake.clone()).await;
    let user = server.create_user().await;
    let url = format!("{}/sql", server.api_url(&user));
    let key = user.api_key.clone();
    let request = tokio::spawn(async move {
        let _ = http()
            .get(url)
            .query(&[("q", "SELECT 1 AS n"), ("format", "shp"), ("api_key", &key)])
            .send()
            .await;
    });
    assert!(eventually(|| pid_file.exists() && !is_empty(temp.path())).await);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    request.abort();
    let _ = request.await;
    assert!(eventually(|| ended(pid)).await, "ogr2ogr {pid} still runs");
    assert!(
        eventually(|| is_empty(temp.path())).await,
        "temporary files left"
    );
}

#[tokio::test]
async fn the_binary_warns_at_startup_when_ogr2ogr_is_missing() {
    // A data dir of its own: the real binary starts its own embedded cluster.
    let dir = tempfile::Builder::new()
        .prefix("carto-export-test")
        .tempdir()
        .unwrap();
    let log_path = dir.path().join("serve.log");
    let listen = crate::support::free_local_addr();
    let mut serve = carto_sql_api(
        &dir.path().join("data"),
        &[
            "serve",
            "--listen",
            &listen,
            "--ogr2ogr",
            "/nonexistent/ogr2ogr",
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log_path).unwrap())
    .spawn()
    .unwrap();
    first_answer(&format!("http://{listen}/api/v1/version")).await;
    terminate(&mut serve);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(
            "GDAL's ogr2ogr is missing: /sql formats shp, kml, gpkg and spatialite will be refused"
        ),
        "{log}"
    );
}

/// Every kind of geometry, a NULL one, and typed attributes; coordinates with more decimals
/// than `dp=2` keeps.
const SHAPES: &str = "SELECT * FROM (VALUES \
     (1, 10, 1.5::float8, 'a \"quoted\" <text> & more'::text, '2020-01-02'::date, \
      'SRID=4326;POINT(1.2345 2.3456)'::geometry), \
     (2, 20, -0.25, 'multipoint', '2020-02-03', 'SRID=4326;MULTIPOINT((-3 4),(5.5 -6))'), \
     (3, 30, 3, 'line', '2020-03-04', 'SRID=4326;LINESTRING(0 0,1.111 1,2 -1)'), \
     (4, 40, 4, 'hole', '2020-04-05', \
      'SRID=4326;POLYGON((0 0,10 0,10 10,0 10,0 0),(2 2,2 3,3 3,2 2))'), \
     (5, 50, 5, 'multipolygon', NULL, \
      'SRID=4326;MULTIPOLYGON(((20 20,21 20,21 21,20 20)),((30 30,31 30,31 31,30 30)))'), \
     (6, NULL, NULL, 'no geometry', '2020-06-07', NULL) \
   ) AS t(id, n, x, label, day, the_geom) ORDER BY id";

/// Prints an SVG file's root `viewBox` and its children as JSON, read by Python's own parser.
const READ_SVG: &str = "import sys, json, xml.etree.ElementTree as ET\n\
root = ET.parse(sys.argv[1]).getroot()\n\
print(json.dumps({'root': root.tag, 'viewBox': root.get('viewBox'), \
'elements': [dict(e.attrib, tag=e.tag) for e in root]}))";

/// Starts a server and a user, and downloads [`SHAPES`] with `dp=2` as `format` into a
/// temporary directory, checking the status and headers.
async fn download_shapes(
    format: &str,
    content_type: &str,
) -> (TestServer, TestUser, tempfile::TempDir, std::path::PathBuf) {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let response = export(
        &server,
        &user,
        &[
            ("q", SHAPES),
            ("format", format),
            ("dp", "2"),
            ("filename", "shapes.csv"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200, "{format}");
    assert_eq!(response.headers()["content-type"], content_type);
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with(&format!("attachment; filename=shapes.{format};")),
        "{disposition}"
    );
    let path = dir.path().join(format!("answer.{format}"));
    save(response, &path).await;
    (server, user, dir, path)
}

#[tokio::test]
async fn svg_draws_each_geometry_as_st_assvg_writes_it_inside_the_extent() {
    let (server, user, _dir, path) = download_shapes("svg", "image/svg+xml; charset=utf-8").await;
    let parsed: Value =
        serde_json::from_str(&run("python3", &["-c", READ_SVG, path.to_str().unwrap()])).unwrap();
    assert_eq!(parsed["root"], "{http://www.w3.org/2000/svg}svg");

    // Each point (a multipoint's too) is a circle, anything else one path, in row order.
    let db = server.superuser_client(&user).await;
    let expected: Vec<String> = db
        .query(
            &format!(
                "SELECT ST_AsSVG(g, 0, 2) FROM ( \
                   SELECT id, p.path, p.geom AS g FROM ({SHAPES}) q, ST_Dump(q.the_geom) p \
                   WHERE ST_Dimension(q.the_geom) = 0 \
                   UNION ALL SELECT id, '{{}}', the_geom FROM ({SHAPES}) q \
                   WHERE ST_Dimension(the_geom) > 0) e ORDER BY id, path"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let svg_ns = "{http://www.w3.org/2000/svg}";
    let elements: Vec<String> = parsed["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let tag = e["tag"].as_str().unwrap();
            if tag == format!("{svg_ns}circle") {
                format!(
                    "cx=\"{}\" cy=\"{}\"",
                    e["cx"].as_str().unwrap(),
                    e["cy"].as_str().unwrap()
                )
            } else {
                assert_eq!(tag, format!("{svg_ns}path"));
                e["d"].as_str().unwrap().to_string()
            }
        })
        .collect();
    assert_eq!(elements, expected);
    assert_eq!(
        expected.len(),
        6,
        "3 circles, a line, a polygon, a multipolygon"
    );

    let extent = db
        .query_one(
            &format!(
                "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) \
                 FROM (SELECT ST_Extent(the_geom) AS e FROM ({SHAPES}) q) x"
            ),
            &[],
        )
        .await
        .unwrap();
    let [xmin, ymin, xmax, ymax]: [f64; 4] = [0, 1, 2, 3].map(|i| extent.get(i));
    let view_box: Vec<f64> = parsed["viewBox"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(view_box, [xmin, -ymax, xmax - xmin, ymax - ymin]);
}

#[tokio::test]
async fn topojson_reads_back_with_gdal_row_by_row() {
    let (_server, _user, _dir, path) =
        download_shapes("topojson", "application/json; charset=utf-8").await;
    let document: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(document["type"], "Topology");
    assert!(document["objects"]["shapes"].is_object(), "{document}");

    // TopoJSON gives a NULL geometry the type null; GDAL 3.6's reader skips such objects, so
    // that row is checked in the document itself.
    let null_geometry = &document["objects"]["shapes"]["geometries"][5];
    assert_eq!(
        null_geometry,
        &serde_json::json!({"type": null, "properties": {
            "id": 6, "n": null, "x": null, "label": "no geometry", "day": "2020-06-07T00:00:00Z"
        }})
    );

    let rows = read_rows(path.to_str().unwrap());
    let column = |name: &str| -> Vec<&str> {
        rows.iter()
            .map(|r| r.get(name).map_or("<missing>", String::as_str))
            .collect()
    };
    assert_eq!(
        column("WKT"),
        [
            "POINT (1.23 2.35)",
            "MULTIPOINT ((-3 4),(5.5 -6))",
            "LINESTRING (0 0,1.11 1.0,2 -1)",
            "POLYGON ((0 0,10 0,10 10,0 10,0 0),(2 2,2 3,3 3,2 2))",
            "MULTIPOLYGON (((20 20,21 20,21 21,20 20)),((30 30,31 30,31 31,30 30)))",
        ]
    );
    assert_eq!(column("id"), ["1", "2", "3", "4", "5"]);
    assert_eq!(column("n"), ["10", "20", "30", "40", "50"]);
    assert_eq!(column("x"), ["1.5", "-0.25", "3", "4", "5"]);
    assert_eq!(
        column("label"),
        [
            "a \"quoted\" <text> & more",
            "multipoint",
            "line",
            "hole",
            "multipolygon",
        ]
    );
    // Dates are written as the JSON format writes them, midnight UTC.
    assert_eq!(
        column("day"),
        [
            "2020/01/02 00:00:00+00",
            "2020/02/03 00:00:00+00",
            "2020/03/04 00:00:00+00",
            "2020/04/05 00:00:00+00",
            ""
        ]
    );
    assert_eq!(
        column("the_geom"),
        ["<missing>"; 5],
        "the geometry is no property"
    );
}

#[tokio::test]
async fn svg_and_topojson_over_the_size_limit_are_413_and_leave_no_file() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_exports(temp.path(), |e| e.max_size = 50_000).await;
    let user = server.create_user().await;
    let q = "SELECT n, 'POINT(1 2)'::geometry AS the_geom FROM generate_series(1, 100000) AS n";
    // The statements as the wrappers start them.
    for (format, wrapped) in [
        ("svg", "SELECT ST_AsSVG"),
        ("topojson", "SELECT *, ST_AsGeoJSON"),
    ] {
        let (status, body) =
            json_error(export(&server, &user, &[("q", q), ("format", format)]).await).await;
        assert_eq!(status, 413, "{format}: {body}");
        assert!(
            error_of(&body).contains("larger than this server's limit of 50000 bytes"),
            "{format}: {body}"
        );
        assert!(is_empty(temp.path()), "{format}");
        assert!(server.backends_gone(&user, wrapped).await, "{format}");
    }
}

#[tokio::test]
async fn a_client_that_disconnects_from_an_svg_export_stops_its_query() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_exports(temp.path(), |_| {}).await;
    let user = server.create_user().await;
    let url = format!("{}/sql", server.api_url(&user));
    let key = user.api_key.clone();
    let q = "SELECT pg_sleep(60) AS slept, 'POINT(1 2)'::geometry AS the_geom";
    let request = tokio::spawn(async move {
        let _ = http()
            .get(url)
            .query(&[("q", q), ("format", "svg"), ("api_key", &key)])
            .send()
            .await;
    });
    let mut running = false;
    for _ in 0..150 {
        if server.running_statements(&user, "SELECT ST_AsSVG").await > 0 {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "the export never started");
    request.abort();
    let _ = request.await;
    assert!(server.backends_gone(&user, "SELECT ST_AsSVG").await);
    assert!(
        eventually(|| is_empty(temp.path())).await,
        "temporary files left"
    );
}
