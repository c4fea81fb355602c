//! `carto transfer`: `copy_to` at the source piped into `copy_from` at the destination, chunk
//! by chunk, with no temporary file. A failure on either side aborts the upload, so the
//! destination commits nothing.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;

use super::{client_for, ident, literal, table_columns};
use crate::args::{Global, TransferArgs, TransferFormat};
use crate::output::Output;
use crate::profiles::account;

#[derive(Deserialize)]
struct Count {
    n: u64,
}

pub async fn run(global: &Global, output: Output, args: TransferArgs) -> Result<()> {
    if global.base_url.is_some() || global.api_key.is_some() || global.profile.is_some() {
        bail!(
            "transfer names its accounts with --from and --to (a profile, or a URL with \
             --from-api-key/--to-api-key), not --base-url, --api-key or --profile"
        );
    }
    let source = client_for(account(&args.from, args.from_api_key.as_deref())?)?;
    let destination = client_for(account(&args.to, args.to_api_key.as_deref())?)?;
    let target = args.as_name.clone().unwrap_or_else(|| args.table.clone());
    let format = match args.format {
        TransferFormat::Binary => "binary",
        TransferFormat::Text => "text",
    };

    if args.create {
        let columns = table_columns(&source, &args.table)
            .await
            .context("reading the source table's columns")?;
        let definition = columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.ty))
            .collect::<Vec<_>>()
            .join(", ");
        let create = format!("CREATE TABLE {target} ({definition})");
        output.note(&format!("creating {target} at the destination"));
        destination
            .sql()
            .send(&create)
            .await
            .context("creating the destination table")?;
        crate::interrupt::on_interrupt(
            format!("nothing committed ({target} was dropped at the destination)"),
            Some(crate::interrupt::run_sql(
                destination.clone(),
                format!("DROP TABLE {target}"),
            )),
        );
    }

    let source_sql = match &args.query {
        Some(query) => format!("COPY ({query}) TO STDOUT WITH (FORMAT {format})"),
        None => format!("COPY {} TO STDOUT WITH (FORMAT {format})", args.table),
    };
    let destination_sql = format!("COPY {target} FROM STDIN WITH (FORMAT {format})");
    let started = std::time::Instant::now();
    let stream = source
        .copy()
        .copy_to(&source_sql)
        .await
        .context("reading the source")?;
    let outcome = destination
        .copy()
        .copy_from_stream(&destination_sql, stream)
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            if args.create {
                // Leave nothing behind: the table was made for this transfer.
                let _ = destination
                    .sql()
                    .send(&format!("DROP TABLE {target}"))
                    .await;
            }
            return Err(error).context("copying into the destination");
        }
    };

    crate::interrupt::on_interrupt(
        format!(
            "{} rows were copied into {target}{}",
            outcome.total_rows,
            if args.create {
                ", which may not be cartodbfied"
            } else {
                ""
            }
        ),
        None,
    );
    if args.create {
        output.note(&format!("cartodbfying {target}"));
        let cartodbfy = format!(
            "SELECT CDB_CartodbfyTable(current_schema, {})",
            literal(&target)
        );
        if let Err(error) = destination.sql().send(&cartodbfy).await {
            output.note(&format!("warning: {target} was not cartodbfied: {error}"));
        }
    }

    let counted = match &args.query {
        Some(query) => format!("SELECT count(*) AS n FROM ({query}) AS q"),
        None => format!("SELECT count(*) AS n FROM {}", args.table),
    };
    let source_rows = source
        .sql()
        .send_as::<Count>(&counted)
        .await
        .context("counting the source rows")?
        .rows
        .first()
        .map(|c| c.n)
        .unwrap_or(0);
    let seconds = started.elapsed().as_secs_f64();
    output.result(
        &format!(
            "transferred {} rows into {target} in {seconds:.2} s (source has {source_rows})",
            outcome.total_rows
        ),
        json!({
            "table": target,
            "source_rows": source_rows,
            "copied_rows": outcome.total_rows,
            "time": seconds,
        }),
        false,
    );
    if source_rows != outcome.total_rows {
        bail!(
            "row counts differ: the source has {source_rows} rows, {} were copied",
            outcome.total_rows
        );
    }
    Ok(())
}
