//! `carto sql`: run SQL, print the answer as the server sends it.

use anyhow::Result;
use futures::StreamExt;

use super::client;
use crate::args::{Global, SqlArgs, SqlFormat};
use crate::output::Output;

pub async fn run(global: &Global, output: Output, args: SqlArgs) -> Result<()> {
    let format = match args.format {
        SqlFormat::Json => carto::Format::Json,
        SqlFormat::Csv => carto::Format::Csv,
        SqlFormat::Geojson => carto::Format::GeoJson,
    };
    let mut body = client(global)?
        .sql()
        .request(&args.sql)
        .format(format)
        .bytes_stream()
        .await?;
    let mut last = b'\n';
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if let Some(byte) = chunk.last() {
            last = *byte;
        }
        output.data(&chunk)?;
    }
    if last != b'\n' {
        output.data(b"\n")?;
    }
    Ok(())
}
