//! `carto import FILE.csv [--table T]`: infer the columns from the header and a sample (or take
//! a GeoPackage layer's declared ones; GeoJSON and GeoPackage files are first written out as
//! CSV), load the file into a staging table, then in one transaction make it the table (create or
//! replace: rename, derive `the_geom` from longitude/latitude columns, cartodbfy) or append
//! its rows. Until that transaction commits nothing under the table's name changes, so a
//! failed, interrupted or killed import leaves the table as it was; a killed one leaves only
//! its staging table, which the next import of that table drops first.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::{client, ident, literal, missing_columns, table_columns};
use crate::args::{Global, IfExists, ImportArgs};
use crate::infer::{column_names, infer, lon_lat, ColumnType};
use crate::output::Output;

mod load;

/// PostgreSQL's longest identifier, in bytes.
const MAX_NAME: usize = 63;

/// The statements of an import.
struct Plan {
    table: String,
    staging: String,
    /// Drops what a killed import of this table left, creates the staging table.
    prepare: String,
    /// Loads the file into the staging table.
    copy: String,
    /// One transaction: the staging table becomes the table, or its rows are appended.
    finish: String,
    /// `copy` then `finish` as a load in parts, for a file bigger than `--part-size`.
    parts: carto::Parts,
    appends: bool,
}

impl Plan {
    /// The statements that load `file` into `staging` (made with the column `definitions`)
    /// and then run `finish`, in one COPY or, for a big file, in parts published in the
    /// transaction that runs `finish`.
    fn new(
        table: &str,
        staging: String,
        definitions: &[String],
        file: &FileColumns,
        finish: String,
        appends: bool,
    ) -> Plan {
        let parts = carto::Parts::new(ident(&staging))
            .columns(file.names.iter().map(|n| ident(n)))
            .csv(true, Some(file.delimiter as char))
            .then(finish.clone());
        Plan {
            table: table.into(),
            prepare: prepare_statement(&staging, definitions),
            copy: copy_statement(&staging, file),
            parts,
            finish,
            staging,
            appends,
        }
    }
}

/// What the file holds: its columns as the header names them and as SQL will, their inferred
/// types, and the SQL types they get (`--type` overrides the inferred ones).
struct FileColumns {
    header: Vec<String>,
    names: Vec<String>,
    types: Vec<ColumnType>,
    sql_types: Vec<String>,
    delimiter: u8,
    /// What the file is, and so what the CSV loaded holds.
    format: Format,
}

/// The kinds of file `carto import` reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    /// Loaded as CSV with `the_geom` as GeoJSON text.
    GeoJson,
    /// Loaded as CSV with `the_geom` as hex EWKB in the file's SRID, which cartodbfying
    /// transforms to 4326.
    GeoPackage {
        /// Geometries may have Z or M coordinates, which CARTO's 2D `the_geom` cannot hold.
        z_or_m: bool,
    },
}

#[derive(Deserialize)]
struct Exists {
    exists: bool,
}

pub async fn run(global: &Global, output: Output, args: ImportArgs) -> Result<()> {
    let layer = if crate::gpkg::is_gpkg(&args.file) {
        Some(crate::gpkg::open(&args.file, args.layer.as_deref())?)
    } else if args.layer.is_some() {
        bail!(
            "--layer picks a table of a GeoPackage (*.gpkg), and {} is not one",
            args.file.display()
        );
    } else {
        None
    };
    let (default_name, named_after) = match &layer {
        Some(layer) => (layer.name.clone(), "the layer's name"),
        None => (
            args.file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            "the file's name",
        ),
    };
    let table = table_name(args.table.as_deref(), &default_name)?;
    if args.table.is_none() {
        output.note(&format!("table {table} (from {named_after})"));
    }
    let mut converted = if crate::geojson::is_geojson(&args.file) {
        Some(crate::geojson::to_csv(&args.file)?)
    } else {
        None
    };
    let file = match &layer {
        Some(layer) => layer_columns(&args, layer)?,
        None => {
            let source = converted
                .as_ref()
                .map_or(args.file.as_path(), |csv| csv.path());
            let delimiter = match args.delimiter {
                _ if converted.is_some() => b',',
                // The argument parser takes only ASCII.
                Some(c) => c as u8,
                None => {
                    let found = detect_delimiter(source)?;
                    if found != b',' {
                        output.note(&format!("delimiter {} (detected)", describe(found)));
                    }
                    found
                }
            };
            let mut file = read_columns(&args, source, delimiter)?;
            if converted.is_some() {
                file.format = Format::GeoJson;
            }
            file
        }
    };
    report_columns(output, &file);
    if file.format == (Format::GeoPackage { z_or_m: true }) {
        output.note("the layer may have Z or M coordinates: they are dropped (the_geom is 2D)");
    }

    // A dry run of a create needs no server; an append must see the table's columns.
    let needs_server = !args.dry_run || args.if_exists == IfExists::Append;
    let client = if needs_server {
        Some(client(global)?)
    } else {
        None
    };
    let existing = match &client {
        Some(client) if exists(client, &table).await? => Some(
            table_columns(client, &table)
                .await
                .with_context(|| format!("reading the columns of {table}"))?,
        ),
        _ => None,
    };
    let plan = match (&existing, args.if_exists) {
        (Some(_), IfExists::Fail) if !args.dry_run => bail!(
            "the table {table} already exists: use --if-exists replace to replace it or \
             --if-exists append to add the file's rows to it (nothing was imported)"
        ),
        (Some(columns), IfExists::Append) => plan_append(&table, &file, columns, &args)?,
        _ => plan_create(&table, &file, args.if_exists == IfExists::Replace),
    };
    if args.dry_run {
        for statement in [&plan.prepare, &plan.copy, &plan.finish] {
            output.data(format!("{statement};\n").as_bytes())?;
        }
        return Ok(());
    }
    let client = client.expect("a client for a run that is not dry");
    if let Some(layer) = &layer {
        converted = Some(layer.to_csv()?);
    }
    let source = converted
        .as_ref()
        .map_or(args.file.as_path(), |csv| csv.path());
    load::import(
        &client,
        output,
        &plan,
        &load::Source {
            path: source,
            file: &args.file,
            part_size: args.part_size,
            resume: args.resume,
        },
    )
    .await
}

async fn exists(client: &carto::Client, table: &str) -> Result<bool> {
    let answer = client
        .sql()
        .send_as::<Exists>(&format!(
            "SELECT to_regclass({}) IS NOT NULL AS exists",
            literal(&ident(table))
        ))
        .await
        .with_context(|| format!("looking for the table {table}"))?;
    Ok(answer.rows.first().is_some_and(|row| row.exists))
}

/// The table's name: `--table` when it is a plain lower-case SQL name (anything else would be
/// folded or need quoting everywhere, so it is refused with the name to use), else `default`
/// (the file's name without its extension, or a layer's name) made into one.
fn table_name(given: Option<&str>, default: &str) -> Result<String> {
    match given {
        Some(name) => {
            let plain = sql_name(name);
            if plain != name {
                bail!(
                    "--table {name:?}: table names are lower-case letters, digits and _ \
                     (at most {MAX_NAME}, not starting with a digit); try --table {plain}"
                );
            }
            Ok(plain)
        }
        None => Ok(sql_name(default)),
    }
}

/// `text` made into a plain SQL name: ASCII lower case, `_` for anything else, not starting
/// with a digit, at most 63 bytes.
fn sql_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Runs of separators read as one.
    while name.contains("__") {
        name = name.replace("__", "_");
    }
    let mut name = name.trim_matches('_').to_string();
    if name.is_empty() {
        name = "imported".into();
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.truncate(MAX_NAME);
    name
}

/// The staging table of an import into `table`: one name per table, so that the next import
/// of it finds what a killed one left.
fn staging_name(table: &str) -> String {
    let mut name = format!("carto_import_{table}");
    name.truncate(MAX_NAME);
    name
}

/// Delimiters a CSV file is likely to use, in order of preference.
const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

/// Lines read to detect the delimiter.
const DETECT_LINES: usize = 50;

/// The delimiter of `path`: of `,` `;` tab `|`, the one that splits the header into the most
/// fields with every following line (of the first few) splitting into as many; `,` when
/// none splits the header.
fn detect_delimiter(path: &Path) -> Result<u8> {
    let mut best = (b',', 1);
    for delimiter in DELIMITERS {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(false)
            .from_path(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut widths = reader
            .records()
            .take(DETECT_LINES)
            .map(|record| record.map(|r| r.len()));
        let Some(Ok(fields)) = widths.next() else {
            continue;
        };
        if fields > best.1 && widths.all(|width| width.is_ok_and(|w| w == fields)) {
            best = (delimiter, fields);
        }
    }
    Ok(best.0)
}

/// A delimiter as people write it.
fn describe(delimiter: u8) -> String {
    match delimiter {
        b'\t' => "tab".into(),
        other => format!("'{}'", other as char),
    }
}

/// Reads the header and a sample of rows of `source` (the file, or the CSV made of it), infers
/// the columns, applies `--type`.
fn read_columns(args: &ImportArgs, source: &Path, delimiter: u8) -> Result<FileColumns> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_path(source)
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
    // One column whose name holds another delimiter is a file read with the wrong one.
    if let [only] = header.as_slice() {
        if let Some(other) = DELIMITERS
            .iter()
            .find(|d| **d != delimiter && only.contains(**d as char))
        {
            bail!(
                "the header of {} is one column, {only:?}, read with the delimiter {}: \
                 give the file's delimiter, e.g. --delimiter {}",
                args.file.display(),
                describe(delimiter),
                if *other == b'\t' {
                    "tab".into()
                } else {
                    describe(*other)
                }
            );
        }
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
    let mut sql_types: Vec<String> = types.iter().map(|t| t.sql().to_string()).collect();
    apply_types(args, &header, &names, &mut sql_types)?;
    Ok(FileColumns {
        header,
        names,
        types,
        sql_types,
        delimiter,
        format: Format::Csv,
    })
}

/// The columns of a GeoPackage layer, typed as the file declares them.
fn layer_columns(args: &ImportArgs, layer: &crate::gpkg::Layer) -> Result<FileColumns> {
    let header: Vec<String> = layer.columns.iter().map(|c| c.name.clone()).collect();
    let names = column_names(&header);
    let mut sql_types: Vec<String> = layer.columns.iter().map(|c| c.sql_type.clone()).collect();
    apply_types(args, &header, &names, &mut sql_types)?;
    Ok(FileColumns {
        header,
        names,
        types: layer.columns.iter().map(|c| c.kind).collect(),
        sql_types,
        delimiter: b',',
        format: Format::GeoPackage {
            z_or_m: layer.z_or_m,
        },
    })
}

/// `--type COLUMN=TYPE` over the types of the file's columns.
fn apply_types(
    args: &ImportArgs,
    header: &[String],
    names: &[String],
    sql_types: &mut [String],
) -> Result<()> {
    for given in &args.types {
        let (column, ty) = given
            .split_once('=')
            .filter(|(c, t)| !c.is_empty() && !t.trim().is_empty())
            .ok_or_else(|| anyhow!("--type {given:?}: expected COLUMN=TYPE, e.g. code=text"))?;
        let index = names
            .iter()
            .position(|n| n == column)
            .or_else(|| header.iter().position(|h| h == column))
            .ok_or_else(|| {
                anyhow!(
                    "--type {given:?}: the file has no column {column:?} (its columns: {})",
                    names.join(", ")
                )
            })?;
        sql_types[index] = ty.trim().to_string();
    }
    Ok(())
}

/// Tells which type each column gets, and which header names were changed to be SQL names.
fn report_columns(output: Output, file: &FileColumns) {
    let columns: Vec<String> = file
        .names
        .iter()
        .zip(&file.sql_types)
        .map(|(name, ty)| format!("{name} {ty}"))
        .collect();
    output.note(&format!("columns: {}", columns.join(", ")));
    let renamed: Vec<String> = file
        .header
        .iter()
        .zip(&file.names)
        .filter(|(raw, name)| raw != name)
        .map(|(raw, name)| format!("{raw:?} -> {name}"))
        .collect();
    if !renamed.is_empty() {
        output.note(&format!("renamed: {}", renamed.join(", ")));
    }
}

/// Drops what a killed import left under the staging name, and creates the staging table.
fn prepare_statement(staging: &str, definitions: &[String]) -> String {
    format!(
        "DROP TABLE IF EXISTS {0}; CREATE TABLE {0} ({1})",
        ident(staging),
        definitions.join(", ")
    )
}

/// The COPY of the file into the staging table.
fn copy_statement(staging: &str, file: &FileColumns) -> String {
    let columns = file
        .names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "COPY {} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER {})",
        ident(staging),
        literal(&(file.delimiter as char).to_string())
    )
}

/// A new table (replacing the old one in the same transaction with `replace`).
fn plan_create(table: &str, file: &FileColumns, replace: bool) -> Plan {
    let staging = staging_name(table);
    let mut definitions: Vec<String> = file
        .names
        .iter()
        .zip(&file.sql_types)
        .map(|(name, ty)| format!("{} {ty}", ident(name)))
        .collect();
    let has_geometry =
        file.types.contains(&ColumnType::Geometry) || file.names.iter().any(|n| n == "the_geom");
    let mut finish = Vec::new();
    if replace {
        finish.push(format!("DROP TABLE IF EXISTS {}", ident(table)));
    }
    finish.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        ident(&staging),
        ident(table)
    ));
    if file.format == Format::GeoJson {
        finish.push(format!(
            "ALTER TABLE {} ALTER COLUMN the_geom TYPE geometry(Geometry, 4326) \
             USING ST_SetSRID(ST_GeomFromGeoJSON(the_geom), 4326)",
            ident(table)
        ));
    }
    if file.format == (Format::GeoPackage { z_or_m: true }) {
        // Cartodbfying makes the_geom geometry(Geometry, 4326), which is 2D.
        finish.push(format!(
            "UPDATE {} SET the_geom = ST_Force2D(the_geom) WHERE ST_NDims(the_geom) > 2",
            ident(table)
        ));
    }
    if let Some((lon, lat)) = lon_lat(&file.names, &file.types).filter(|_| !has_geometry) {
        definitions.push("the_geom geometry(Point, 4326)".into());
        finish.push(format!(
            "UPDATE {} SET the_geom = ST_SetSRID(ST_MakePoint({}, {}), 4326)",
            ident(table),
            ident(&file.names[lon]),
            ident(&file.names[lat])
        ));
    }
    finish.push(format!(
        "SELECT CDB_CartodbfyTable(current_schema, {})",
        literal(table)
    ));
    Plan::new(table, staging, &definitions, file, finish.join("; "), false)
}

/// Rows added to an existing table: staged with the table's own column types, so that what
/// the table would refuse is refused while loading, with its line.
fn plan_append(
    table: &str,
    file: &FileColumns,
    columns: &[super::Column],
    args: &ImportArgs,
) -> Result<Plan> {
    let type_of = |name: &str| columns.iter().find(|c| c.name == name).map(|c| &c.ty);
    if !args.types.is_empty() {
        bail!("--type sets the types of a new table; rows appended to {table} take its own");
    }
    if let Some((unknown, all)) = missing_columns(&file.names, columns) {
        bail!(
            "{} has columns {table} does not have: {unknown} (its columns: {all}); nothing \
             was imported",
            args.file.display(),
        );
    }
    let staging = staging_name(table);
    // A GeoPackage's geometries are staged as they come (in the file's SRID, maybe with Z or
    // M), GeoJSON's as the text of its geometry objects; both are made what a CARTO table's
    // the_geom holds as they are inserted.
    let staged_geometry = match file.format {
        Format::GeoPackage { .. } => Some(("geometry", "ST_Transform(ST_Force2D(the_geom), 4326)")),
        Format::GeoJson => Some(("text", "ST_SetSRID(ST_GeomFromGeoJSON(the_geom), 4326)")),
        Format::Csv => None,
    };
    let (definitions, mut values): (Vec<String>, Vec<String>) = file
        .names
        .iter()
        .map(|n| {
            if let Some((staged, inserted)) = staged_geometry.filter(|_| n == "the_geom") {
                (format!("the_geom {staged}"), inserted.to_string())
            } else {
                let ty = type_of(n).expect("checked above");
                (format!("{} {ty}", ident(n)), ident(n))
            }
        })
        .unzip();
    let mut targets: Vec<String> = file.names.iter().map(|n| ident(n)).collect();
    let fills_geometry =
        type_of("the_geom").is_some() && !file.names.iter().any(|n| n == "the_geom");
    if let Some((lon, lat)) = lon_lat(&file.names, &file.types).filter(|_| fills_geometry) {
        targets.push("the_geom".into());
        values.push(format!(
            "ST_SetSRID(ST_MakePoint({}, {}), 4326)",
            ident(&file.names[lon]),
            ident(&file.names[lat])
        ));
    }
    let finish = format!(
        "INSERT INTO {} ({}) SELECT {} FROM {}; DROP TABLE {}",
        ident(table),
        targets.join(", "),
        values.join(", "),
        ident(&staging),
        ident(&staging)
    );
    Ok(Plan::new(table, staging, &definitions, file, finish, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(sql_name("More Cities"), "more_cities");
        assert_eq!(sql_name("MyCities"), "mycities");
        assert_eq!(sql_name("2024 - données"), "_2024_donn_es");
        assert_eq!(sql_name("__"), "imported");
        assert_eq!(sql_name(&"x".repeat(100)).len(), MAX_NAME);
        assert_eq!(table_name(None, "More Cities").unwrap(), "more_cities");
        assert_eq!(table_name(Some("cities_2"), "x").unwrap(), "cities_2");
        let refused = table_name(Some("My Cities"), "x").unwrap_err();
        assert!(
            refused.to_string().contains("try --table my_cities"),
            "{refused}"
        );
        assert!(table_name(Some("MyCities"), "x").is_err());
    }
}
