//! GeoJSON for `carto import`: a FeatureCollection (or one Feature) written out as the CSV
//! the import loads, one row per feature: its geometry as GeoJSON text in a first column,
//! `the_geom`, which PostGIS's ST_GeomFromGeoJSON turns into a geometry when the table is
//! made, then its properties (the union of every feature's, in the order first seen).

use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// True for a file named `*.geojson` or `*.json`.
pub fn is_geojson(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("geojson") || e.eq_ignore_ascii_case("json"))
}

/// The CSV of the features of the GeoJSON file at `path`, in a temporary file.
pub fn to_csv(path: &Path) -> Result<tempfile::NamedTempFile> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let document: Value = serde_json::from_reader(BufReader::new(file))
        .with_context(|| format!("reading {} as GeoJSON", path.display()))?;
    let features = match document.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => match document.get("features") {
            Some(Value::Array(features)) => features.iter().collect::<Vec<_>>(),
            _ => bail!(
                "{}: a FeatureCollection without a features list",
                path.display()
            ),
        },
        Some("Feature") => vec![&document],
        other => bail!(
            "{}: expected a GeoJSON FeatureCollection or Feature, found {}",
            path.display(),
            other.map_or("no \"type\"".to_string(), |t| format!("type {t:?}"))
        ),
    };
    let mut names: Vec<String> = Vec::new();
    for feature in &features {
        for name in properties(feature).into_iter().flat_map(Map::keys) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }

    let csv = tempfile::Builder::new()
        .prefix("carto-import-")
        .suffix(".csv")
        .tempfile()
        .context("creating a temporary file for the GeoJSON's rows")?;
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(csv.as_file()));
    let header = std::iter::once("the_geom").chain(names.iter().map(String::as_str));
    writer.write_record(header)?;
    for feature in &features {
        let geometry = match feature.get("geometry") {
            None | Some(Value::Null) => String::new(),
            Some(geometry) => geometry.to_string(),
        };
        let values = names
            .iter()
            .map(|name| cell(properties(feature).and_then(|p| p.get(name))));
        writer.write_record(std::iter::once(geometry).chain(values))?;
    }
    writer.flush().context("writing the GeoJSON's rows")?;
    drop(writer);
    Ok(csv)
}

/// The properties of a feature, when it has any.
fn properties(feature: &Value) -> Option<&Map<String, Value>> {
    feature.get("properties").and_then(Value::as_object)
}

/// A property as CSV: text as it is, numbers and booleans as written, objects and lists as
/// JSON, null empty (a NULL).
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}
