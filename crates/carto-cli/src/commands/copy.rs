//! `carto copy from` and `carto copy to`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::{client, literal};
use crate::args::{
    CopyCommand, CopyFromArgs, CopyToArgs, DataFormat, Global, TableOptions, Target,
};
use crate::output::{bytes, Output};
use crate::progress::transfer_bar;

pub async fn run(global: &Global, output: Output, command: CopyCommand) -> Result<()> {
    match command {
        CopyCommand::From(args) => copy_from(global, output, args).await,
        CopyCommand::To(args) => copy_to(global, output, args).await,
    }
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

async fn copy_from(global: &Global, output: Output, args: CopyFromArgs) -> Result<()> {
    let sql = statement(&args.target, &args.table, "FROM STDIN");
    let mut copy = client(global)?.copy();
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
    let outcome = if is_stdio(&args.file) {
        copy.copy_from_reader(&sql, tokio::io::stdin()).await
    } else {
        copy.copy_from_file(&sql, &args.file).await
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
    let started = std::time::Instant::now();
    let written = if to_stdout {
        let mut stdout = tokio::io::stdout();
        let written = copy.copy_to_writer(&sql, &mut stdout).await;
        tokio::io::AsyncWriteExt::flush(&mut stdout).await?;
        written
    } else {
        copy.copy_to_file(&sql, &args.file, args.append).await
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let written = written?;
    let seconds = started.elapsed().as_secs_f64();
    output.result(
        &format!(
            "wrote {} to {} in {seconds:.2} s",
            bytes(written),
            if to_stdout {
                "stdout".into()
            } else {
                args.file.display().to_string()
            }
        ),
        json!({ "bytes": written, "time": seconds, "file": args.file }),
        to_stdout,
    );
    Ok(())
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
