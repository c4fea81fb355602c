//! `carto import FILE.csv --table T`: infer the columns from the header and a sample, create
//! the table, COPY the file, derive `the_geom` from longitude/latitude columns when there are
//! any, then cartodbfy (load first, index after: the measured fast order). A failed load
//! drops the table it created, so nothing is left half-imported.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::{client, ident, literal};
use crate::args::{Global, ImportArgs};
use crate::infer::{column_names, infer, lon_lat, ColumnType};
use crate::output::{bytes, Output};
use crate::progress::transfer_bar;

/// The statements of an import.
struct Plan {
    create: String,
    copy: String,
    geometry_from_lon_lat: Option<String>,
    cartodbfy: String,
}

pub async fn run(global: &Global, output: Output, args: ImportArgs) -> Result<()> {
    let delimiter = u8::try_from(args.delimiter)
        .map_err(|_| anyhow!("--delimiter must be a single ASCII character"))?;
    let plan = plan(&args, delimiter)?;
    if args.dry_run {
        for statement in [
            Some(&plan.create),
            Some(&plan.copy),
            plan.geometry_from_lon_lat.as_ref(),
            Some(&plan.cartodbfy),
        ]
        .into_iter()
        .flatten()
        {
            println!("{statement};");
        }
        return Ok(());
    }

    let client = client(global)?;
    let sql = client.sql();
    sql.send(&plan.create).await.context("creating the table")?;
    output.note(&format!("created {}", args.table));

    let size = std::fs::metadata(&args.file)?.len();
    let (bar, progress) = transfer_bar(output.bars(), Some(size));
    let mut copy = client.copy();
    if let Some(progress) = progress {
        copy = copy.with_progress(progress);
    }
    let loaded = copy.copy_from_file(&plan.copy, &args.file).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let outcome = match loaded {
        Ok(outcome) => outcome,
        Err(error) => {
            // The table was made for this import: leave nothing half-imported behind.
            let _ = sql.send(&format!("DROP TABLE {}", args.table)).await;
            return Err(anyhow::Error::new(error).context(format!(
                "loading {} (nothing was imported)",
                args.file.display()
            )));
        }
    };

    let finish = async {
        if let Some(update) = &plan.geometry_from_lon_lat {
            sql.send(update)
                .await
                .context("setting the_geom from longitude/latitude")?;
        }
        sql.send(&plan.cartodbfy)
            .await
            .context("cartodbfying the table")?;
        anyhow::Ok(())
    };
    if let Err(error) = finish.await {
        let _ = sql.send(&format!("DROP TABLE {}", args.table)).await;
        return Err(error.context("nothing was imported"));
    }
    output.result(
        &format!(
            "imported {} rows ({}) into {} in {:.2} s",
            outcome.total_rows,
            bytes(size),
            args.table,
            outcome.time
        ),
        json!({ "table": args.table, "total_rows": outcome.total_rows, "bytes": size }),
        false,
    );
    Ok(())
}

fn plan(args: &ImportArgs, delimiter: u8) -> Result<Plan> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_path(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("reading the header of {}", args.file.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    if header.is_empty() {
        bail!("{} has no header line", args.file.display());
    }
    let mut sample = Vec::new();
    for (i, record) in reader.records().take(args.sample).enumerate() {
        // Line numbers count the header as line 1.
        let record =
            record.with_context(|| format!("reading line {} of {}", i + 2, args.file.display()))?;
        sample.push(record.iter().map(str::to_string).collect::<Vec<_>>());
    }
    let names = column_names(&header);
    let types = infer(names.len(), &sample);

    let mut definitions: Vec<String> = names
        .iter()
        .zip(&types)
        .map(|(name, ty)| format!("{} {}", ident(name), ty.sql()))
        .collect();
    let has_geometry =
        types.contains(&ColumnType::Geometry) || names.iter().any(|n| n == "the_geom");
    let geometry_from_lon_lat = match lon_lat(&names, &types) {
        Some((lon, lat)) if !has_geometry => {
            definitions.push("the_geom geometry(Point, 4326)".into());
            Some(format!(
                "UPDATE {} SET the_geom = ST_SetSRID(ST_MakePoint({}, {}), 4326)",
                args.table,
                ident(&names[lon]),
                ident(&names[lat])
            ))
        }
        _ => None,
    };
    let columns = names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Plan {
        create: format!("CREATE TABLE {} ({})", args.table, definitions.join(", ")),
        copy: format!(
            "COPY {} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER {})",
            args.table,
            literal(&args.delimiter.to_string())
        ),
        geometry_from_lon_lat,
        cartodbfy: format!(
            "SELECT CDB_CartodbfyTable(current_schema, {})",
            literal(&args.table)
        ),
    })
}
