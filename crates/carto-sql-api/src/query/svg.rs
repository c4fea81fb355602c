//! `/sql?format=svg`: the result's geometries as one SVG document (spec §4.2).
//!
//! The statement is wrapped (see [`super::Options::plan`]) so that each row brings
//! `ST_AsSVG(the_geom, 0, dp)` (PostGIS already flips the y axis, which points down in SVG)
//! and then the geometry's `xmin, ymin, xmax, ymax`. The header's `viewBox` needs the extent
//! of every row, so the elements are spooled to a private file (capped by
//! [`Exports::max_size`]) while the extent is
//! accumulated, and the query runs once; the header and the spool are then sent. Points become
//! `<circle>`, lines and polygons `<path>`; a NULL geometry writes nothing.

use std::sync::{Arc, Mutex};

use axum::response::Response;
use bytes::Bytes;
use tokio_postgres::SimpleQueryRow;

use super::exec::Plan;
use super::export::{private_dir, send, spool, take_slot, Exports, Piece};
use super::format::{Column, Encoder, Summary};
use crate::error::ApiError;

/// A circle's radius: a percentage of the `viewBox` diagonal, so that points show whatever
/// the extent's units and size.
const POINT_RADIUS: &str = "0.5%";

/// `[xmin, ymin, xmax, ymax]` of the rows seen so far.
type Extent = Arc<Mutex<Option<[f64; 4]>>>;

/// Runs `plan` (already wrapped) and answers the SVG document.
pub(super) async fn answer(
    client: deadpool_postgres::Object,
    plan: Plan,
    exports: &Exports,
) -> Result<Response, ApiError> {
    let permit = take_slot(exports)?;
    let dir = private_dir(exports)?;
    let extent = Extent::default();
    let elements = dir.path().join("elements.svg");
    let encoder = Box::new(Elements {
        extent: extent.clone(),
    });
    spool(client, plan, encoder, &elements, exports.max_size).await?;
    let extent = *extent
        .lock()
        .map_err(|_| ApiError::internal("svg extent lock poisoned"))?;
    let pieces = vec![
        Piece::Text(Bytes::from(header(extent))),
        Piece::File(elements),
        Piece::Text(Bytes::from_static(b"</svg>\n")),
    ];
    send(pieces, dir, permit, exports.max_size).await
}

/// The XML declaration and the `<svg>` start tag; the `viewBox` is left out when no row had
/// a geometry.
fn header(extent: Option<[f64; 4]>) -> String {
    let view_box = extent
        .map(|[xmin, ymin, xmax, ymax]| {
            // Adding 0.0 turns -0 into 0.
            format!(
                " viewBox=\"{} {} {} {}\"",
                xmin + 0.0,
                -ymax + 0.0,
                xmax - xmin,
                ymax - ymin
            )
        })
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\"{view_box} \
         stroke=\"#000000\" stroke-width=\"0.1%\" fill=\"#cccccc\">\n"
    )
}

/// Writes each row's elements and widens the extent.
struct Elements {
    extent: Extent,
}

impl Encoder for Elements {
    fn head(&mut self, _out: &mut Vec<u8>) {}

    fn columns(&mut self, _columns: &[Column], _out: &mut Vec<u8>) {}

    fn row(&mut self, _columns: &[Column], row: &SimpleQueryRow, out: &mut Vec<u8>) {
        let Some(svg) = row.try_get(0).ok().flatten() else {
            return;
        };
        let bounds: Option<Vec<f64>> = (1..=4)
            .map(|i| row.try_get(i).ok().flatten()?.parse().ok())
            .collect();
        if let (Some(b), Ok(mut extent)) = (bounds, self.extent.lock()) {
            *extent = Some(match *extent {
                None => [b[0], b[1], b[2], b[3]],
                Some(e) => [
                    e[0].min(b[0]),
                    e[1].min(b[1]),
                    e[2].max(b[2]),
                    e[3].max(b[3]),
                ],
            });
        }
        write_elements(svg, out);
    }

    fn tail(&mut self, _summary: &Summary<'_>, error: Option<&str>, _out: &mut Vec<u8>) -> bool {
        error.is_none()
    }
}

/// `ST_AsSVG`'s text as elements: a collection's members are separated by `;`, a multipoint's
/// points by `,`; a point is `cx="x" cy="y"`, anything else path data.
fn write_elements(svg: &str, out: &mut Vec<u8>) {
    for member in svg.split(';').filter(|m| !m.is_empty()) {
        let points: Option<Vec<(&str, &str)>> = member.split(',').map(point).collect();
        match points {
            Some(points) => {
                for (cx, cy) in points {
                    for piece in ["<circle r=\"", POINT_RADIUS, "\" cx=\"", cx, "\" cy=\"", cy] {
                        out.extend_from_slice(piece.as_bytes());
                    }
                    out.extend_from_slice(b"\"/>\n");
                }
            }
            None => {
                out.extend_from_slice(b"<path d=\"");
                write_escaped(member, out);
                out.push(b'"');
                // An open path is a line: filling it would shade the area it bends around.
                if !member.trim_end().ends_with(['Z', 'z']) {
                    out.extend_from_slice(b" fill=\"none\"");
                }
                out.extend_from_slice(b"/>\n");
            }
        }
    }
}

/// `cx="x" cy="y"` read as its two numbers' text; `None` for anything else, so that only
/// numbers ever reach a circle's attributes.
fn point(text: &str) -> Option<(&str, &str)> {
    let (cx, cy) = text
        .strip_prefix("cx=\"")?
        .strip_suffix('"')?
        .split_once("\" cy=\"")?;
    let number = |t: &str| t.parse::<f64>().is_ok();
    (number(cx) && number(cy)).then_some((cx, cy))
}

/// Appends `text` with XML's special characters escaped, for an attribute value.
fn write_escaped(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match c {
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '&' => out.extend_from_slice(b"&amp;"),
            '"' => out.extend_from_slice(b"&quot;"),
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(svg: &str) -> String {
        let mut out = Vec::new();
        write_elements(svg, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn elements_by_kind() {
        assert_eq!(
            elements("cx=\"1\" cy=\"-2\",cx=\"3\" cy=\"-4\""),
            "<circle r=\"0.5%\" cx=\"1\" cy=\"-2\"/>\n<circle r=\"0.5%\" cx=\"3\" cy=\"-4\"/>\n"
        );
        assert_eq!(
            elements("M 0 0 L 1 -1;M 0 0 L 1 0 1 -1 Z"),
            "<path d=\"M 0 0 L 1 -1\" fill=\"none\"/>\n<path d=\"M 0 0 L 1 0 1 -1 Z\"/>\n"
        );
        assert_eq!(
            elements("cx=\"1\" onload=\"x\" cy=\"2\"<&"),
            "<path d=\"cx=&quot;1&quot; onload=&quot;x&quot; cy=&quot;2&quot;&lt;&amp;\" fill=\"none\"/>\n"
        );
    }

    #[test]
    fn view_box_flips_y() {
        assert!(header(Some([-1.0, 2.0, 3.0, 5.0])).contains("viewBox=\"-1 -5 4 3\""));
        assert!(header(Some([0.0, -3.0, 0.0, 0.0])).contains("viewBox=\"0 0 0 3\""));
        assert!(!header(None).contains("viewBox"));
    }
}
