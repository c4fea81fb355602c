//! `carto sql`: run SQL; print a table for people at a terminal, else the answer as the
//! server sends it.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::client;
use crate::args::{Global, SqlArgs, SqlFormat};
use crate::ewkb::hex_to_wkt;
use crate::output::{bytes, Output};

/// A column CARTO tables carry beside the_geom, only useful to map renderers.
const WEBMERCATOR: &str = "the_geom_webmercator";

pub async fn run(global: &Global, output: Output, args: SqlArgs) -> Result<()> {
    let to_terminal = args.output.is_none() && std::io::stdout().is_terminal();
    let format = args.format.unwrap_or(if to_terminal {
        SqlFormat::Table
    } else {
        SqlFormat::Json
    });
    if format == SqlFormat::Table {
        if args.output.is_some() {
            bail!(
                "--output writes the server's answer: give --format json, csv, geojson, \
                 topojson, svg, kml, shp, gpkg or spatialite (a table is for the terminal)"
            );
        }
        return table(global, output, &args).await;
    }
    if format.is_binary() && to_terminal {
        bail!(
            "{} is a binary file: write it with -o FILE (or redirect standard output)",
            format.name()
        );
    }
    let request = client(global)?
        .sql()
        .request(&args.sql)
        .format(match format {
            SqlFormat::Json => carto::Format::Json,
            SqlFormat::Csv => carto::Format::Csv,
            SqlFormat::Geojson => carto::Format::GeoJson,
            other => carto::Format::Other(other.name().into()),
        });
    if let Some(path) = &args.output {
        crate::interrupt::on_interrupt(format!("nothing written to {}", path.display()), None);
        let written = request
            .to_file(path)
            .await
            .with_context(|| format!("writing {} (nothing written)", path.display()))?;
        output.result(
            &format!("wrote {} to {}", bytes(written), path.display()),
            json!({ "file": path, "bytes": written, "format": format.name() }),
            false,
        );
        return Ok(());
    }
    let mut body = request.bytes_stream().await?;
    let mut last = b'\n';
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if let Some(byte) = chunk.last() {
            last = *byte;
        }
        output.data(&chunk)?;
    }
    // Text answers end their last line; a binary file is written as it came.
    if last != b'\n' && !format.is_binary() {
        output.data(b"\n")?;
    }
    Ok(())
}

/// The answer as a table: the last statement's result (as CARTO's csv and geojson show),
/// its columns from the answer's `fields`, geometries as WKT.
async fn table(global: &Global, output: Output, args: &SqlArgs) -> Result<()> {
    let answer = client(global)?.sql().send(&args.sql).await?;
    let rows = last_statement_rows(&answer);
    let columns: Vec<&String> = answer
        .fields
        .keys()
        .filter(|name| args.all_columns || name.as_str() != WEBMERCATOR)
        .collect();
    let is_geometry = |name: &str| {
        answer
            .field(name)
            .is_some_and(|field| field.kind == "geometry")
    };
    let geometry: Vec<bool> = columns.iter().map(|c| is_geometry(c)).collect();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(columns.iter().map(|c| c.as_str()));
    for row in rows {
        table.add_row(
            columns
                .iter()
                .zip(&geometry)
                .map(|(column, geometry)| cell(row, column, *geometry)),
        );
    }
    // A last statement without rows (INSERT, UPDATE, CREATE ...) reports what it affected.
    let rows = if answer.fields.is_empty() {
        answer.total_rows
    } else {
        rows.len() as u64
    };
    let mut text = if columns.is_empty() {
        String::new()
    } else {
        format!("{table}\n")
    };
    text.push_str(&format!(
        "({rows} row{})\n",
        if rows == 1 { "" } else { "s" }
    ));
    output.data(text.as_bytes())?;
    Ok(())
}

/// The rows of the answer's last statement. The JSON answer holds the rows of every
/// statement but `fields` and `total_rows` of the last only; the last statement's command tag
/// counts the rows it returned, so they are the final `total_rows` rows. Without `fields` the
/// last statement returned none.
fn last_statement_rows(answer: &carto::SqlResponse) -> &[Map<String, Value>] {
    if answer.fields.is_empty() {
        return &[];
    }
    let count = usize::try_from(answer.total_rows).unwrap_or(usize::MAX);
    &answer.rows[answer.rows.len().saturating_sub(count)..]
}

/// One value as a table shows it: NULL empty, text as it is, geometries as WKT.
fn cell(row: &Map<String, Value>, column: &str, geometry: bool) -> String {
    match row.get(column) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) if geometry => hex_to_wkt(text).unwrap_or_else(|| text.clone()),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}
