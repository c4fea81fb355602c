//! `/sql?format=topojson`: the result as one TopoJSON Topology (spec §4.2).
//!
//! The statement is wrapped as for GeoJSON (see [`super::Options::plan`]), so each row brings
//! `ST_AsGeoJSON(the_geom, dp)` as its last column. Rows are spooled as one JSON line each
//! (geometry and properties, typed as in the JSON format); a second pass turns each geometry
//! into TopoJSON, writing the geometry objects to one file and the arcs to another, and the
//! document is then sent as `objects` followed by `arcs`. Every spooled file is capped by
//! [`Exports::max_size`], so memory holds one row at a time.
//!
//! Each line and each polygon ring is an arc of its own: arcs are not shared between
//! geometries, and coordinates are not quantized (no `transform`), so positions are absolute.

use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufWriter};
use tokio_postgres::SimpleQueryRow;

use super::exec::Plan;
use super::export::{private_dir, send, spool, take_slot, too_large, Exports, Piece};
use super::format::{write_geometry_and_properties, Column, Encoder, Summary};
use super::values::write_string;
use crate::error::ApiError;

/// Runs `plan` (already wrapped) and answers the Topology, its one object named `layer`.
pub(super) async fn answer(
    client: deadpool_postgres::Object,
    plan: Plan,
    layer: &str,
    exports: &Exports,
) -> Result<Response, ApiError> {
    let permit = take_slot(exports)?;
    let dir = private_dir(exports)?;
    let features = dir.path().join("features.jsonl");
    let encoder = Box::new(FeatureLines { geometry: None });
    spool(client, plan, encoder, &features, exports.max_size).await?;
    let geometries = dir.path().join("geometries.json");
    let arcs = dir.path().join("arcs.json");
    split(&features, &geometries, &arcs, exports.max_size).await?;
    let mut head = b"{\"type\":\"Topology\",\"objects\":{".to_vec();
    write_string(layer, &mut head);
    head.extend_from_slice(b":{\"type\":\"GeometryCollection\",\"geometries\":[");
    let pieces = vec![
        Piece::Text(Bytes::from(head)),
        Piece::File(geometries),
        Piece::Text(Bytes::from_static(b"]}},\"arcs\":[")),
        Piece::File(arcs),
        Piece::Text(Bytes::from_static(b"]}")),
    ];
    send(pieces, dir, permit, exports.max_size).await
}

fn io_error(doing: &str) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{doing} the topojson spool: {e}"))
}

/// Reads the spooled lines and writes the comma-separated geometry objects and arcs.
async fn split(
    features: &std::path::Path,
    geometries: &std::path::Path,
    arcs: &std::path::Path,
    max_size: u64,
) -> Result<(), ApiError> {
    let input = tokio::fs::File::open(features)
        .await
        .map_err(io_error("reading"))?;
    let mut lines = tokio::io::BufReader::new(input).lines();
    let mut geometries_out = BufWriter::new(
        tokio::fs::File::create(geometries)
            .await
            .map_err(io_error("creating"))?,
    );
    let mut arcs_out = BufWriter::new(
        tokio::fs::File::create(arcs)
            .await
            .map_err(io_error("creating"))?,
    );
    let mut written = 0u64;
    let mut arc_count = 0usize;
    let mut first = true;
    while let Some(line) = lines.next_line().await.map_err(io_error("reading"))? {
        let feature: Value = serde_json::from_str(&line)
            .map_err(|e| ApiError::internal(format!("reading the topojson spool: {e}")))?;
        let mut new_arcs = Vec::new();
        let mut object = topology_geometry(&feature["g"], arc_count, &mut new_arcs);
        if let Some(object) = object.as_object_mut() {
            object.insert("properties".into(), feature["p"].clone());
        }
        let mut text = if first { "" } else { "," }.to_string();
        first = false;
        text.push_str(&object.to_string());
        written += text.len() as u64;
        geometries_out
            .write_all(text.as_bytes())
            .await
            .map_err(io_error("writing"))?;
        for arc in new_arcs {
            let separator = if arc_count == 0 { "" } else { "," };
            let text = format!("{separator}{arc}");
            written += text.len() as u64;
            arcs_out
                .write_all(text.as_bytes())
                .await
                .map_err(io_error("writing"))?;
            arc_count += 1;
        }
        if written > max_size {
            return Err(too_large(max_size));
        }
    }
    geometries_out.flush().await.map_err(io_error("writing"))?;
    arcs_out.flush().await.map_err(io_error("writing"))
}

/// The TopoJSON form of a GeoJSON geometry: points keep their coordinates; each line and ring
/// becomes an arc, numbered from `first_arc` and appended to `arcs`. Anything else (NULL)
/// is a geometry of type null, which keeps the row's properties.
fn topology_geometry(geometry: &Value, first_arc: usize, arcs: &mut Vec<Value>) -> Value {
    let kind = geometry["type"].as_str().unwrap_or_default();
    let coordinates = &geometry["coordinates"];
    let mut add = |line: &Value| {
        arcs.push(line.clone());
        first_arc + arcs.len() - 1
    };
    let mut object = Map::new();
    object.insert("type".into(), Value::from(kind));
    match kind {
        "Point" | "MultiPoint" => {
            object.insert("coordinates".into(), coordinates.clone());
        }
        "LineString" => {
            object.insert("arcs".into(), json!([add(coordinates)]));
        }
        "MultiLineString" | "Polygon" => {
            // Each line or ring is a list of arcs: here always one.
            let lines: Vec<[usize; 1]> = members(coordinates).map(|l| [add(l)]).collect();
            object.insert("arcs".into(), json!(lines));
        }
        "MultiPolygon" => {
            let polygons: Vec<Vec<[usize; 1]>> = members(coordinates)
                .map(|polygon| members(polygon).map(|ring| [add(ring)]).collect())
                .collect();
            object.insert("arcs".into(), json!(polygons));
        }
        "GeometryCollection" => {
            let mut next = first_arc;
            let mut members_out = Vec::new();
            for member in members(&geometry["geometries"]) {
                let mut member_arcs = Vec::new();
                members_out.push(topology_geometry(member, next, &mut member_arcs));
                next += member_arcs.len();
                arcs.extend(member_arcs);
            }
            object.insert("geometries".into(), Value::from(members_out));
        }
        _ => {
            object.insert("type".into(), Value::Null);
        }
    }
    Value::Object(object)
}

fn members(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// One line per row: `{"g":geometry,"p":{properties}}`; the geometry is the wrapper's last
/// column, and neither it nor the source geometry columns are properties.
struct FeatureLines {
    geometry: Option<usize>,
}

impl Encoder for FeatureLines {
    fn head(&mut self, _out: &mut Vec<u8>) {}

    fn columns(&mut self, columns: &[Column], _out: &mut Vec<u8>) {
        self.geometry = columns.len().checked_sub(1);
    }

    fn row(&mut self, columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>) {
        out.push(b'{');
        write_geometry_and_properties(columns, row, self.geometry, ["\"g\":", ",\"p\":"], out);
        out.extend_from_slice(b"}\n");
    }

    fn tail(&mut self, _summary: &Summary<'_>, error: Option<&str>, _out: &mut Vec<u8>) -> bool {
        error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_rings_become_arcs_numbered_after_earlier_rows() {
        let mut arcs = Vec::new();
        let polygon = json!({"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [1, 0], [1, 1], [0, 0]], [[0.2, 0.2], [0.2, 0.3], [0.3, 0.3], [0.2, 0.2]]],
            [[[5, 5], [6, 5], [6, 6], [5, 5]]]
        ]});
        assert_eq!(
            topology_geometry(&polygon, 7, &mut arcs),
            json!({"type": "MultiPolygon", "arcs": [[[7], [8]], [[9]]]})
        );
        assert_eq!(
            arcs[1],
            json!([[0.2, 0.2], [0.2, 0.3], [0.3, 0.3], [0.2, 0.2]])
        );

        let mut arcs = Vec::new();
        let collection = json!({"type": "GeometryCollection", "geometries": [
            {"type": "Point", "coordinates": [1, 2]},
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]}
        ]});
        assert_eq!(
            topology_geometry(&collection, 0, &mut arcs),
            json!({"type": "GeometryCollection", "geometries": [
                {"type": "Point", "coordinates": [1, 2]},
                {"type": "LineString", "arcs": [0]},
                {"type": "MultiLineString", "arcs": [[1], [2]]}
            ]})
        );
        assert_eq!(arcs.len(), 3);
        assert_eq!(
            topology_geometry(&Value::Null, 3, &mut arcs),
            json!({"type": null})
        );
        assert_eq!(arcs.len(), 3);
    }
}
