//! `carto import FILE.geojson --if-exists append`: features appended to an existing table,
//! their properties matched to its columns by name, their geometries made SRID 4326.

use carto_sql_api::testing::TestServer;
use predicates::prelude::*;

use crate::support::{carto, sql};

/// A FeatureCollection of `features` (each a JSON Feature).
fn collection(features: &[&str]) -> String {
    format!(
        r#"{{"type": "FeatureCollection", "features": [{}]}}"#,
        features.join(", ")
    )
}

/// `carto import FILE --table places --if-exists append`.
fn append(
    server: &TestServer,
    user: &carto_sql_api::testing::TestUser,
    dir: &std::path::Path,
    file: &std::path::Path,
) -> assert_cmd::assert::Assert {
    carto(server, user, dir)
        .arg("import")
        .arg(file)
        .args(["--table", "places", "--if-exists", "append"])
        .assert()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geojson_appends_to_an_existing_table() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("places.geojson");
    std::fs::write(
        &first,
        collection(&[
            r#"{"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.17, 41.38]},
                "properties": {"name": "Barcelona", "pop": 1620343}}"#,
        ]),
    )
    .unwrap();
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&first)
        .assert()
        .success()
        .stderr(predicate::str::contains("imported 1 rows"));

    // Properties in another order, one missing, a polygon and a feature without geometry.
    let more = dir.path().join("more.geojson");
    std::fs::write(
        &more,
        collection(&[
            r#"{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
                "properties": {"pop": 7, "name": "Triangle"}}"#,
            r#"{"type": "Feature", "geometry": null, "properties": {"name": "Nowhere"}}"#,
        ]),
    )
    .unwrap();
    append(&server, &user, dir.path(), &more)
        .success()
        .stderr(predicate::str::contains("appended 2 rows"));
    let all = "SELECT cartodb_id, name, pop, ST_AsText(the_geom) AS g, ST_SRID(the_geom) AS srid, \
               the_geom_webmercator IS NOT NULL AS mercator FROM places ORDER BY cartodb_id";
    let expected = serde_json::json!([
        {"cartodb_id": 1, "name": "Barcelona", "pop": 1620343, "g": "POINT(2.17 41.38)", "srid": 4326, "mercator": true},
        {"cartodb_id": 2, "name": "Triangle", "pop": 7, "g": "POLYGON((0 0,1 0,1 1,0 0))", "srid": 4326, "mercator": true},
        {"cartodb_id": 3, "name": "Nowhere", "pop": null, "g": null, "srid": null, "mercator": false},
    ]);
    assert_eq!(sql(&server, &user, all).await, expected);

    // A property the table lacks is refused before anything is loaded.
    let extra = dir.path().join("extra.geojson");
    std::fs::write(
        &extra,
        collection(&[
            r#"{"type": "Feature", "geometry": null, "properties": {"name": "X", "height": 3}}"#,
        ]),
    )
    .unwrap();
    append(&server, &user, dir.path(), &extra)
        .failure()
        .stderr(predicate::str::contains(
            "has columns places does not have: height",
        ));

    // A value the table's column refuses fails with its line; nothing is appended.
    let bad = dir.path().join("bad.geojson");
    std::fs::write(
        &bad,
        collection(&[
            r#"{"type": "Feature", "geometry": null, "properties": {"name": "Y", "pop": 1}}"#,
            r#"{"type": "Feature", "geometry": null, "properties": {"name": "Z", "pop": "many"}}"#,
        ]),
    )
    .unwrap();
    append(&server, &user, dir.path(), &bad)
        .failure()
        .stderr(predicate::str::contains("line 3"))
        .stderr(predicate::str::contains("nothing was imported"));
    // A geometry PostGIS cannot read fails as a whole; nothing is appended.
    let broken = dir.path().join("broken.geojson");
    std::fs::write(
        &broken,
        collection(&[
            r#"{"type": "Feature", "geometry": {"type": "Point", "coordinates": "x"}, "properties": {"name": "W"}}"#,
        ]),
    )
    .unwrap();
    append(&server, &user, dir.path(), &broken).failure();
    assert_eq!(sql(&server, &user, all).await, expected);
    let staging = sql(
        &server,
        &user,
        "SELECT count(*) AS n FROM pg_tables WHERE tablename LIKE 'carto_import%'",
    )
    .await;
    assert_eq!(staging[0]["n"], 0);
}
