//! Streams a synthetic radar sweep (points with a reflectivity value) straight into a
//! table, then cartodbfies it if the server has `CDB_CartodbfyTable`.
//!
//! ```text
//! CARTO_API_URL=... CARTO_API_KEY=... cargo run -p carto --example radar -- [sweeps]
//! ```
//!
//! Rows are made as they are sent: no file, no buffer of the whole sweep.

use std::f64::consts::PI;

use carto::{Client, Point, Progress};
use futures::StreamExt;
use serde::Serialize;

/// One radar return: where, when in the sweep, how strong.
#[derive(Serialize)]
struct Echo {
    sweep: u32,
    azimuth: f64,
    range_km: f64,
    reflectivity_dbz: Option<f64>,
    the_geom: Point,
}

/// The radar's position (Madrid).
const SITE: (f64, f64) = (-3.7038, 40.4168);
const BINS: u32 = 250;
const RAYS: u32 = 360;

fn sweep(n: u32) -> impl Iterator<Item = Echo> {
    (0..RAYS).flat_map(move |ray| {
        (1..=BINS).map(move |bin| {
            let azimuth = f64::from(ray);
            let range_km = f64::from(bin) * 0.5;
            let theta = azimuth.to_radians();
            // Degrees per km: 1/111 north, 1/(111 cos lat) east.
            let lon = SITE.0 + range_km * theta.sin() / (111.32 * SITE.1.to_radians().cos());
            let lat = SITE.1 + range_km * theta.cos() / 111.32;
            // A storm cell drifting with each sweep; no echo below 5 dBZ.
            let cell =
                ((theta * 3.0 + f64::from(n) * 0.2).sin() * (range_km / 40.0 * PI).sin()).max(0.0);
            let dbz = 65.0 * cell;
            Echo {
                sweep: n,
                azimuth,
                range_km,
                reflectivity_dbz: (dbz >= 5.0).then_some((dbz * 10.0).round() / 10.0),
                the_geom: Point::new(lon, lat),
            }
        })
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sweeps: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let client = Client::from_env()?;
    let sql = client.sql();
    sql.send(
        "DROP TABLE IF EXISTS radar_sweep; \
         CREATE TABLE radar_sweep (sweep int, azimuth float8, range_km float8, \
                                   reflectivity_dbz float8, the_geom geometry(Point, 4326))",
    )
    .await?;

    let copy = client.copy().with_progress(Progress::new(|p| {
        if p.finished {
            eprintln!(
                "sent {} rows, {:.1} MB ({:.1} MB on the wire)",
                p.rows.unwrap_or(0),
                p.bytes as f64 / 1e6,
                p.wire_bytes as f64 / 1e6
            );
        }
    }));
    let echoes = futures::stream::iter((0..sweeps).flat_map(sweep));
    let outcome = copy
        .copy_from_rows(
            "radar_sweep",
            &[
                "sweep",
                "azimuth",
                "range_km",
                "reflectivity_dbz",
                "the_geom",
            ],
            echoes.boxed(),
        )
        .await?;
    println!(
        "loaded {} echoes in {:.2} s",
        outcome.total_rows, outcome.time
    );

    // Load first, index after (cheaper than maintaining indexes during the COPY).
    let has_cartodbfy = sql
        .send("SELECT count(*) AS n FROM pg_proc WHERE proname = 'cdb_cartodbfytable'")
        .await?
        .rows
        .first()
        .and_then(|r| r.get("n"))
        .and_then(|n| n.as_i64())
        .unwrap_or(0)
        > 0;
    if has_cartodbfy {
        let schema = sql.send("SELECT current_schema() AS s").await?.rows[0]["s"]
            .as_str()
            .unwrap_or("public")
            .to_string();
        match sql
            .send(&format!(
                "SELECT CDB_CartodbfyTable('{}', 'radar_sweep')",
                schema.replace('\'', "''")
            ))
            .await
        {
            Ok(_) => println!("cartodbfied radar_sweep (cartodb_id, the_geom_webmercator)"),
            Err(error) => println!("CDB_CartodbfyTable failed, table left plain: {error}"),
        }
    } else {
        sql.send("CREATE INDEX ON radar_sweep USING gist (the_geom)")
            .await?;
        println!("no CDB_CartodbfyTable on this server: plain table with a GiST index");
    }
    Ok(())
}
