//! `carto sql --format shp|gpkg|kml|... [-o FILE]`: the server's file formats, written into a
//! file only when complete, read back with GDAL.

use std::path::Path;
use std::process::Command;

use carto_sql_api::testing::{TestServer, TestUser};
use predicates::prelude::*;

use crate::support::{carto, text};

/// Two rows with an integer, a text and a point.
const QUERY: &str = "SELECT 1 AS id, 'Alicante' AS name, \
                     ST_SetSRID(ST_MakePoint(-0.48, 38.35), 4326) AS the_geom \
                     UNION ALL SELECT 2, 'Bilbao', ST_SetSRID(ST_MakePoint(-2.93, 43.26), 4326)";

/// What GDAL reads from `source` (a file or `/vsizip/...`), as CSV with WKT geometries.
fn read_back(source: &str) -> String {
    let out = Command::new("ogr2ogr")
        .args([
            "-f",
            "CSV",
            "/vsistdout/",
            source,
            "-lco",
            "GEOMETRY=AS_WKT",
        ])
        .output()
        .expect("ogr2ogr (GDAL) is installed by scripts/install-deps.sh");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn setup() -> (TestServer, TestUser) {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    (server, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shapefile_goes_into_the_file_named_and_reads_back() {
    let (server, user) = setup().await;
    let config = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("cities.zip");
    carto(&server, &user, config.path())
        .args(["sql", QUERY, "--format", "shp", "-o"])
        .arg(&zip)
        .assert()
        .success()
        .stderr(predicate::str::contains("wrote").and(predicate::str::contains("cities.zip")));
    let members = Command::new("unzip").arg("-Z1").arg(&zip).output().unwrap();
    let members = text(&members.stdout);
    for ext in ["shp", "shx", "dbf", "prj"] {
        assert!(members.contains(&format!(".{ext}")), "{members}");
    }
    let rows = read_back(&format!("/vsizip/{}", zip.display()));
    assert!(rows.contains("POINT (-0.48 38.35)"), "{rows}");
    assert!(rows.contains("Bilbao"), "{rows}");
    assert_eq!(rows.lines().count(), 3, "{rows}");
    assert_eq!(listing(dir.path()), ["cities.zip"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_formats_read_back_and_a_pipe_gets_the_bytes() {
    let (server, user) = setup().await;
    let config = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (format, name) in [
        ("gpkg", "c.gpkg"),
        ("kml", "c.kml"),
        ("spatialite", "c.sqlite"),
    ] {
        let path = dir.path().join(name);
        carto(&server, &user, config.path())
            .args(["sql", QUERY, "--format", format, "-o"])
            .arg(&path)
            .assert()
            .success();
        let rows = read_back(&path.display().to_string());
        assert!(rows.contains("Alicante"), "{format}: {rows}");
        assert!(rows.contains("-2.93 43.26"), "{format}: {rows}");
    }
    // On a pipe a binary answer is written as it came, with nothing added.
    let out = carto(&server, &user, config.path())
        .args(["sql", QUERY, "--format", "gpkg"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.starts_with(b"SQLite format 3\0"));
    // A SQLite file is whole pages: no newline was added at its end.
    assert_eq!(out.stdout.len() % 1024, 0, "{} bytes", out.stdout.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_leaves_no_file() {
    let (server, user) = setup().await;
    let config = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("out.zip");
    carto(&server, &user, config.path())
        .args([
            "sql",
            "SELECT * FROM no_such_table",
            "--format",
            "shp",
            "-o",
        ])
        .arg(&zip)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("no_such_table")
                .and(predicate::str::contains("nothing written")),
        );
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    // A table is for the terminal, not a file.
    carto(&server, &user, config.path())
        .args(["sql", QUERY, "--format", "table", "-o"])
        .arg(&zip)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "--output writes the server's answer",
        ));
    assert!(listing(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_format_is_not_written_to_a_terminal() {
    let (server, user) = setup().await;
    let config = tempfile::tempdir().unwrap();
    // `script` runs the command on a pseudo-terminal, as a person would.
    let command = format!(
        "{} --base-url {} --api-key {} sql 'SELECT 1 AS one' --format shp",
        assert_cmd::cargo::cargo_bin("carto").display(),
        server.base_url(&user),
        user.api_key
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("CARTO_CONFIG_DIR", config.path())
        .output()
        .expect("script (util-linux)");
    let shown = text(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("shp is a binary file: write it with -o FILE"),
        "{shown}"
    );
}
