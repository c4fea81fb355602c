//! The server side of `carto import`: the staging table, the COPY of the file into it (in
//! parts when the file is bigger than `--part-size`), and the transaction that makes it the
//! table or appends its rows.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::{ident, Plan};
use crate::output::{bytes, Output};
use crate::progress::transfer_bar;

/// What is loaded: the file sent (the user's, or the CSV made of a GeoJSON or GeoPackage
/// file), the user's file for messages, and how a big one is cut.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub file: &'a Path,
    pub part_size: u64,
    pub resume: bool,
}

impl Source<'_> {
    /// Whether the file goes in parts, noting a `--resume` that has nothing to resume.
    fn in_parts(&self, size: u64, output: Output) -> bool {
        let big = size > self.part_size;
        if self.resume && !big {
            output.note(&format!(
                "note: {} is not bigger than --part-size: it is sent in one COPY, with nothing \
                 to resume",
                self.file.display()
            ));
        }
        big
    }
}

/// The parts of an interrupted or disconnected load stay on the server for `--resume`.
const PARTS_KEPT: &str = "the parts loaded so far are kept: run the same command with --resume \
                          to send only the missing ones";

/// Loads the file through the staging table; on any failure drops the staging table.
pub(super) async fn import(
    client: &carto::Client,
    output: Output,
    plan: &Plan,
    source: &Source<'_>,
) -> Result<()> {
    let size = std::fs::metadata(source.path)
        .with_context(|| format!("reading {}", source.file.display()))?
        .len();
    let in_parts = source.in_parts(size, output);
    let sql = client.sql();
    let drop_staging = format!("DROP TABLE IF EXISTS {}", ident(&plan.staging));
    let nothing = format!("nothing imported into {}", plan.table);
    crate::interrupt::on_interrupt(
        if in_parts {
            format!("{nothing}; {PARTS_KEPT}")
        } else {
            nothing
        },
        Some(crate::interrupt::run_sql(
            client.clone(),
            drop_staging.clone(),
        )),
    );
    sql.send(&plan.prepare)
        .await
        .context("creating the staging table")?;
    let loaded = load(client, output, plan, source, size, in_parts).await;
    let (rows, time) = match loaded {
        Ok(done) => done,
        Err(error) => {
            drop_staging_table(&sql, &drop_staging).await;
            let kept = error
                .downcast_ref::<carto::Error>()
                .is_some_and(|e| in_parts && carto::copy::is_resumable(e));
            return Err(error.context(format!(
                "importing {} (nothing was imported{})",
                source.file.display(),
                if kept {
                    format!("; {PARTS_KEPT}")
                } else {
                    String::new()
                }
            )));
        }
    };
    output.result(
        &format!(
            "{} {rows} rows ({}) {} {} in {time:.2} s",
            if plan.appends { "appended" } else { "imported" },
            bytes(size),
            if plan.appends { "to" } else { "into" },
            plan.table,
        ),
        json!({ "table": plan.table, "total_rows": rows, "bytes": size, "appended": plan.appends }),
        false,
    );
    Ok(())
}

/// Drops the staging table after a failed load. Tried a few times: after refusing an upload
/// the server may close the connection the HTTP client would reuse for this request, and a
/// table left behind would contradict the "nothing was imported" the user is told.
async fn drop_staging_table(sql: &carto::SqlClient, drop_staging: &str) {
    for attempt in 0..3 {
        if sql.send(drop_staging).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
    }
}

/// COPY of the source into the staging table, then the finishing transaction (which a load
/// in parts runs in the transaction that publishes the parts); the rows and seconds.
async fn load(
    client: &carto::Client,
    output: Output,
    plan: &Plan,
    source: &Source<'_>,
    size: u64,
    in_parts: bool,
) -> Result<(u64, f64)> {
    let (bar, progress) = transfer_bar(output.bars(), Some(size));
    let mut copy = client.copy();
    if let Some(progress) = progress {
        copy = copy.with_progress(progress);
    }
    let started = std::time::Instant::now();
    if in_parts {
        let parts = plan
            .parts
            .clone()
            .part_size(source.part_size)
            .resume(source.resume);
        let loaded = copy.copy_from_file_in_parts(source.path, &parts).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let outcome =
            loaded.with_context(|| format!("loading {} in parts", source.file.display()))?;
        if outcome.parts_resumed > 0 {
            output.note(&format!(
                "{} of {} parts already loaded",
                outcome.parts_resumed, outcome.parts
            ));
        }
        return Ok((outcome.total_rows, started.elapsed().as_secs_f64()));
    }
    let loaded = copy.copy_from_file(&plan.copy, source.path).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let outcome = loaded.with_context(|| format!("loading {}", source.file.display()))?;
    client.sql().send(&plan.finish).await.with_context(|| {
        if plan.appends {
            format!("appending the rows to {}", plan.table)
        } else {
            format!("creating {} and cartodbfying it", plan.table)
        }
    })?;
    Ok((outcome.total_rows, started.elapsed().as_secs_f64()))
}
