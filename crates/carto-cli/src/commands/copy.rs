//! `carto copy from` and `carto copy to`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::{client, ident, literal, missing_columns, naming_file, table_columns};
use crate::args::{
    CopyCommand, CopyFromArgs, CopyToArgs, DataFormat, Global, TableOptions, Target,
};
use crate::infer::{column_names, LATITUDE_NAMES, LONGITUDE_NAMES};
use crate::output::{bytes, Output};
use crate::progress::transfer_bar;
use crate::rows::{self, RowCounter};

pub async fn run(global: &Global, output: Output, command: CopyCommand) -> Result<()> {
    match command {
        CopyCommand::From(args) => copy_from(global, output, args).await,
        CopyCommand::To(args) => copy_to(global, output, args).await,
    }
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

async fn copy_from(global: &Global, output: Output, mut args: CopyFromArgs) -> Result<()> {
    let client = client(global)?;
    // A header line names the file's columns: load by name, as a CARTO table starts with
    // cartodb_id and the_geom, which a file rarely has in that order (or at all).
    let header_names = args.target.table.is_some()
        && args.table.header
        && args.table.columns.is_empty()
        && args.table.format == DataFormat::Csv;
    let mut stdin = None;
    if header_names {
        let delimiter = csv_delimiter(args.table.delimiter);
        let header = if is_stdio(&args.file) {
            let (rest, header) = read_stdin_header(delimiter).await?;
            stdin = Some(rest);
            header
        } else {
            read_file_header(&args.file, delimiter)?
        };
        let table = args.target.table.as_deref().unwrap_or_default();
        let names = match_header(&client, table, &header, &args.file, output).await?;
        args.table.columns = names.iter().map(|n| ident(n)).collect();
    }
    let mut copy = client.copy();
    if args.no_compress {
        copy = copy.without_compression();
    } else if let Some(level) = args.level {
        copy = copy.with_gzip_level(level);
    }
    let size = if is_stdio(&args.file) {
        None
    } else {
        Some(
            std::fs::metadata(&args.file)
                .with_context(|| format!("reading {}", args.file.display()))?
                .len(),
        )
    };
    let (bar, progress) = transfer_bar(output.bars(), size);
    if let Some(progress) = progress {
        copy = copy.with_progress(progress);
    }
    if let Some(parts) = in_parts(&args, size, output) {
        let loaded = copy_in_parts(&copy, &args.file, &parts).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        return report_parts(output, loaded?, size);
    }
    let sql = statement(&args.target, &args.table, "FROM STDIN");
    let outcome = if is_stdio(&args.file) {
        match stdin {
            Some(stdin) => copy.copy_from_reader(&sql, stdin).await,
            None => copy.copy_from_reader(&sql, tokio::io::stdin()).await,
        }
        .map_err(anyhow::Error::from)
    } else {
        copy.copy_from_file(&sql, &args.file)
            .await
            .map_err(|e| naming_file(e, "reading", &args.file))
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let outcome = outcome?;
    output.result(
        &format!(
            "copied {} rows in {:.2} s{}",
            outcome.total_rows,
            outcome.time,
            size.map(|s| format!(" ({})", bytes(s))).unwrap_or_default()
        ),
        json!({ "total_rows": outcome.total_rows, "time": outcome.time, "bytes": size }),
        false,
    );
    Ok(())
}

/// How to load the file in parts, when it must be: a file (not stdin) of more than
/// `--part-size` bytes into a `--table`, as CSV or text. Says why not when that is a choice.
fn in_parts(args: &CopyFromArgs, size: Option<u64>, output: Output) -> Option<carto::Parts> {
    let big = size.is_some_and(|size| size > args.part_size);
    let table = args.target.table.as_deref();
    let format = args.table.format;
    match (big, table) {
        (false, _) => {
            if args.resume {
                output.note(&format!(
                    "note: {} is not bigger than --part-size: it is sent in one COPY, with \
                     nothing to resume",
                    args.file.display()
                ));
            }
            None
        }
        (true, None) => {
            output.note(
                "note: with --query the file is sent in one COPY; give --table to load a \
                 file bigger than --part-size in parts",
            );
            None
        }
        (true, Some(_)) if format == DataFormat::Binary => {
            output.note(
                "note: binary COPY data cannot be cut into parts: it is sent in one COPY \
                 (the server's POST limit may refuse it; CSV or text can be loaded in parts)",
            );
            None
        }
        (true, Some(table)) => {
            let parts = carto::Parts::new(table)
                .columns(args.table.columns.iter().cloned())
                .part_size(args.part_size)
                .resume(args.resume);
            Some(match format {
                DataFormat::Text => parts.text(args.table.delimiter),
                _ => parts.csv(args.table.header, args.table.delimiter),
            })
        }
    }
}

/// Loads the file in parts; an interruption or a failure of the connection keeps the parts
/// loaded, for `--resume`.
async fn copy_in_parts(
    copy: &carto::CopyClient,
    file: &Path,
    parts: &carto::Parts,
) -> Result<carto::PartsOutcome> {
    const KEPT: &str = "the parts loaded so far are kept: run the same command with --resume \
                        to send only the missing ones";
    crate::interrupt::on_interrupt(format!("nothing committed; {KEPT}"), None);
    copy.copy_from_file_in_parts(file, parts)
        .await
        .map_err(|error| {
            if carto::copy::is_resumable(&error) {
                naming_file(error, "reading", file).context(format!("nothing committed; {KEPT}"))
            } else {
                naming_file(error, "reading", file).context("nothing committed")
            }
        })
}

/// Prints what a load in parts did.
fn report_parts(output: Output, outcome: carto::PartsOutcome, size: Option<u64>) -> Result<()> {
    let resumed = if outcome.parts_resumed > 0 {
        format!(
            ", {} of {} parts already loaded",
            outcome.parts_resumed, outcome.parts
        )
    } else {
        String::new()
    };
    output.result(
        &format!(
            "copied {} rows in {:.2} s{} in {} parts{resumed}",
            outcome.total_rows,
            outcome.time,
            size.map(|s| format!(" ({})", bytes(s))).unwrap_or_default(),
            outcome.parts,
        ),
        json!({
            "total_rows": outcome.total_rows,
            "time": outcome.time,
            "bytes": size,
            "parts": outcome.parts,
            "parts_resumed": outcome.parts_resumed,
        }),
        false,
    );
    Ok(())
}

async fn copy_to(global: &Global, output: Output, args: CopyToArgs) -> Result<()> {
    let sql = statement(&args.target, &args.table, "TO STDOUT");
    let client = client(global)?;
    let on_loopback = is_loopback(client.credentials().base_url());
    let mut copy = client.copy();
    if args.no_compress || (on_loopback && !args.compress) {
        copy = copy.without_compression();
    }
    let to_stdout = is_stdio(&args.file);
    let (bar, progress) = transfer_bar(output.bars() && !to_stdout, None);
    if let Some(progress) = progress {
        copy = copy.with_progress(progress);
    }
    let (layout, header) = rows::layout_of(&sql);
    let mut counter = RowCounter::new(layout, header);
    let started = std::time::Instant::now();
    let written = if to_stdout {
        write_stdout(&copy, &sql, &mut counter).await
    } else {
        copy.copy_to_file_inspecting(&sql, &args.file, args.append, |chunk| counter.feed(chunk))
            .await
            .map_err(|e| naming_file(e, "writing", &args.file))
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let written = written?;
    let seconds = started.elapsed().as_secs_f64();
    let rows = counter.rows();
    output.result(
        &format!(
            "wrote {}{} to {} in {seconds:.2} s",
            rows.map(|n| format!("{n} rows, ")).unwrap_or_default(),
            bytes(written),
            if to_stdout {
                "stdout".into()
            } else {
                args.file.display().to_string()
            }
        ),
        json!({ "rows": rows, "bytes": written, "time": seconds, "file": args.file }),
        to_stdout,
    );
    Ok(())
}

/// Streams the output of `sql` to stdout, counting its rows; the bytes written.
async fn write_stdout(
    copy: &carto::CopyClient,
    sql: &str,
    counter: &mut RowCounter,
) -> Result<u64> {
    let mut stream = copy.copy_to(sql).await?;
    let mut stdout = tokio::io::stdout();
    let mut written = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        counter.feed(&chunk);
        stdout.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    stdout.flush().await?;
    Ok(written)
}

/// The delimiter of a CSV file as the csv crate takes it.
fn csv_delimiter(delimiter: Option<char>) -> u8 {
    // The argument parser takes only ASCII.
    delimiter.map_or(b',', |c| c as u8)
}

/// The header of a CSV file.
fn read_file_header(path: &Path, delimiter: u8) -> Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut record = csv::StringRecord::new();
    if !reader
        .read_record(&mut record)
        .with_context(|| format!("reading the header of {}", path.display()))?
    {
        bail!(
            "{} is empty: --header expects a header line",
            path.display()
        );
    }
    Ok(record.iter().map(str::to_string).collect())
}

/// Stdin, whose first line is read to name the columns, is sent from its start.
type Stdin = tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::io::BufReader<tokio::io::Stdin>>;

/// The header on the first line of stdin, and stdin from its start.
async fn read_stdin_header(delimiter: u8) -> Result<(Stdin, Vec<String>)> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    stdin
        .read_until(b'\n', &mut line)
        .await
        .context("reading the header line from stdin")?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .from_reader(line.as_slice());
    let mut record = csv::StringRecord::new();
    if !reader
        .read_record(&mut record)
        .context("reading the header line from stdin")?
    {
        bail!("stdin is empty: --header expects a header line");
    }
    let header = record.iter().map(str::to_string).collect();
    Ok((std::io::Cursor::new(line).chain(stdin), header))
}

/// The table's column names for a file's header (normalized as `carto import` names
/// columns), refusing names the table lacks before anything is sent, and noting when
/// `the_geom` will stay empty although the file has coordinates.
async fn match_header(
    client: &carto::Client,
    table: &str,
    header: &[String],
    file: &Path,
    output: Output,
) -> Result<Vec<String>> {
    let names = column_names(header);
    let columns = table_columns(client, table)
        .await
        .with_context(|| format!("reading the columns of {table}"))?;
    let has = |name: &str| columns.iter().any(|c| c.name == name);
    if let Some((unknown, all)) = missing_columns(&names, &columns) {
        bail!(
            "the header of {} names columns {table} does not have: {unknown} (its columns: \
             {all}). Give the table's columns in the file's order with --columns A,B,...",
            file.display(),
        );
    }
    if has("the_geom") && !names.iter().any(|n| n == "the_geom") {
        if let Some(coordinates) = coordinate_columns(&names) {
            output.note(&format!(
                "note: {table}.the_geom stays empty: the file's {coordinates} do not fill it \
                 (name a column of WKT or EWKT the_geom, or load longitude/latitude with \
                 `carto import {} --table {table} --if-exists append`)",
                file.display()
            ));
        }
    }
    Ok(names)
}

/// Columns that look like coordinates or geometries by their names, when a file has them.
fn coordinate_columns(names: &[String]) -> Option<String> {
    let looks_like = |n: &str| {
        LONGITUDE_NAMES.contains(&n)
            || LATITUDE_NAMES.contains(&n)
            || ["geom", "geometry", "wkt", "the_geom_webmercator"].contains(&n)
    };
    let found: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| looks_like(n))
        .collect();
    (!found.is_empty()).then(|| format!("columns {}", found.join(", ")))
}

/// True for a server on this machine. Measured (docs/bench/tuning.md): asking it for gzip
/// makes a 2 M-row COPY TO 0.70 x psql instead of 1.2 x, for bandwidth loopback does not need.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost" || name.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The COPY statement: `--query` as given, or one built for `--table` and its options.
pub fn statement(target: &Target, options: &TableOptions, direction: &str) -> String {
    if let Some(query) = &target.query {
        return query.clone();
    }
    let table = target.table.as_deref().unwrap_or_default();
    let columns = if options.columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", options.columns.join(", "))
    };
    let mut with = vec![format!(
        "FORMAT {}",
        match options.format {
            DataFormat::Csv => "csv",
            DataFormat::Text => "text",
            DataFormat::Binary => "binary",
        }
    )];
    if options.header {
        with.push("HEADER true".into());
    }
    if let Some(delimiter) = options.delimiter {
        with.push(format!("DELIMITER {}", literal(&delimiter.to_string())));
    }
    format!(
        "COPY {table}{columns} {direction} WITH ({})",
        with.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(
        columns: &[&str],
        format: DataFormat,
        header: bool,
        delimiter: Option<char>,
    ) -> TableOptions {
        TableOptions {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            format,
            header,
            delimiter,
        }
    }

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:8080/user/a/",
            "http://localhost/user/a/",
            "http://alice.localhost:1/",
            "http://[::1]/user/a/",
        ] {
            assert!(is_loopback(&url::Url::parse(url).unwrap()), "{url}");
        }
        for url in ["https://alice.carto.com/", "http://10.0.0.1/user/a/"] {
            assert!(!is_loopback(&url::Url::parse(url).unwrap()), "{url}");
        }
    }

    #[test]
    fn statements_for_tables() {
        let table = Target {
            query: None,
            table: Some("public.t".into()),
        };
        assert_eq!(
            statement(
                &table,
                &options(&[], DataFormat::Csv, true, None),
                "FROM STDIN"
            ),
            "COPY public.t FROM STDIN WITH (FORMAT csv, HEADER true)"
        );
        assert_eq!(
            statement(
                &table,
                &options(&["a", "b"], DataFormat::Text, false, Some('\'')),
                "TO STDOUT"
            ),
            "COPY public.t (a, b) TO STDOUT WITH (FORMAT text, DELIMITER '''')"
        );
        let query = Target {
            query: Some("COPY x FROM STDIN".into()),
            table: None,
        };
        assert_eq!(
            statement(
                &query,
                &options(&[], DataFormat::Binary, false, None),
                "FROM STDIN"
            ),
            "COPY x FROM STDIN"
        );
    }
}
