//! Copies a table from one account to another, streaming: `copy_to` of the source feeds
//! `copy_from` of the destination, nothing touches the disk.
//!
//! ```text
//! CARTO_API_URL=... CARTO_API_KEY=...            # source account
//! CARTO_DEST_API_URL=... CARTO_DEST_API_KEY=...  # destination (default: the same account)
//! cargo run -p carto --example transfer -- [source_table] [dest_table]
//! ```
//!
//! The destination table must exist with the same columns; with the default names the
//! example creates both (`transfer_source` with sample rows, `transfer_dest`).

use carto::{Client, Credentials};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source_table = args.next();
    let dest_table = args.next();
    let source = Client::from_env()?;
    let dest = match (
        std::env::var("CARTO_DEST_API_URL"),
        std::env::var("CARTO_DEST_API_KEY"),
    ) {
        (Ok(url), Ok(key)) => Client::new(Credentials::new(&url, key)?)?,
        _ => source.clone(),
    };

    let (source_table, dest_table) = match (source_table, dest_table) {
        (Some(s), Some(d)) => (s, d),
        _ => {
            source
                .sql()
                .send(
                    "DROP TABLE IF EXISTS transfer_source; \
                     CREATE TABLE transfer_source AS \
                     SELECT i AS id, md5(i::text) AS name FROM generate_series(1, 100000) i",
                )
                .await?;
            dest.sql()
                .send(
                    "DROP TABLE IF EXISTS transfer_dest; \
                     CREATE TABLE transfer_dest (id int, name text)",
                )
                .await?;
            ("transfer_source".to_string(), "transfer_dest".to_string())
        }
    };

    // The download's chunks go straight into the upload; back-pressure runs end to end.
    // A failure of the source (even after data began) ends the stream with an error, which
    // aborts the upload: the destination commits nothing.
    let rows = source
        .copy()
        .copy_to(&format!(
            "COPY {source_table} TO STDOUT WITH (FORMAT binary)"
        ))
        .await?;
    let outcome = dest
        .copy()
        .copy_from_stream(
            &format!("COPY {dest_table} FROM STDIN WITH (FORMAT binary)"),
            rows,
        )
        .await?;
    println!(
        "copied {} rows from {}:{source_table} to {}:{dest_table}",
        outcome.total_rows,
        source.credentials().username(),
        dest.credentials().username()
    );
    Ok(())
}
