//! Files larger than a server's POST limit (CARTO's is 2 GB), loaded in parts.
//!
//! The file is cut at record boundaries into parts of at most [`Parts::part_size`] bytes
//! (uncompressed, so whatever gzip does each part is under a limit that size or more). Each
//! part goes into a staging table of its own with one `/sql/copyfrom` request (one COPY, one
//! transaction), and a comment on that table marks it done. When every part is done, one
//! `/sql` request inserts the parts into the target in file order and drops them: the target
//! gets all the rows or none.
//!
//! Staging tables are named after a fingerprint of the file (size, modification time, the
//! first MiB) and of the load (target, columns, format, part size), so a later run of the
//! same load finds the parts already done and sends only the others
//! ([`Parts::resume`]). Sending a part again drops and recreates its table first, so a
//! retry never doubles rows.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use super::records::{split, Part};
use super::CopyClient;
use crate::error::{Error, Result};
use crate::progress::{Direction, Progress, Tracker};

/// Default largest part, in uncompressed bytes: 1 GiB, half of CARTO's 2 GB POST limit.
pub const DEFAULT_PART_SIZE: u64 = 1 << 30;

/// Bytes of the file's start that go into its fingerprint.
const FINGERPRINT_PREFIX: u64 = 1 << 20;

/// Times a part is sent again after a transport failure (a dropped connection) before the
/// load gives up, leaving its done parts for a resume.
const PART_RETRIES: u32 = 3;

/// The comment that marks a part's staging table loaded, followed by its row count.
const DONE_MARK: &str = "carto-rs part loaded, rows ";

/// The data format of a file loaded in parts. PostgreSQL's binary COPY format has no record
/// boundaries a reader can find without decoding it, so it cannot be cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartsFormat {
    /// `FORMAT csv`: a record ends at a newline outside double quotes.
    Csv,
    /// `FORMAT text`: a record ends at a newline not escaped by a backslash.
    Text,
}

/// What a file loaded in parts goes into, and how: the argument of
/// [`CopyClient::copy_from_file_in_parts`].
///
/// ```no_run
/// # async fn demo(copy: carto::CopyClient) -> carto::Result<()> {
/// let parts = carto::Parts::new("cities").csv(true, None).resume(true);
/// let outcome = copy.copy_from_file_in_parts("cities.csv", &parts).await?;
/// println!("{} rows in {} parts", outcome.total_rows, outcome.parts);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Parts {
    table: String,
    columns: Vec<String>,
    format: PartsFormat,
    header: bool,
    delimiter: Option<char>,
    part_size: u64,
    resume: bool,
    then: Option<String>,
}

impl Parts {
    /// Into `table` (SQL: `public.t`, `"My Table"`), all its columns in table order, CSV
    /// without a header, parts of [`DEFAULT_PART_SIZE`], not resuming.
    pub fn new(table: impl Into<String>) -> Self {
        Parts {
            table: table.into(),
            columns: Vec::new(),
            format: PartsFormat::Csv,
            header: false,
            delimiter: None,
            part_size: DEFAULT_PART_SIZE,
            resume: false,
            then: None,
        }
    }

    /// The table's columns the file's fields go into, in the file's order, as SQL (quote
    /// names that need it, e.g. with [`crate::quote_ident`]).
    pub fn columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.columns = columns.into_iter().map(Into::into).collect();
        self
    }

    /// CSV, its first line a header when `header`, fields separated by `delimiter`
    /// (default `,`).
    pub fn csv(mut self, header: bool, delimiter: Option<char>) -> Self {
        self.format = PartsFormat::Csv;
        self.header = header;
        self.delimiter = delimiter;
        self
    }

    /// PostgreSQL's text format, fields separated by `delimiter` (default tab).
    pub fn text(mut self, delimiter: Option<char>) -> Self {
        self.format = PartsFormat::Text;
        self.header = false;
        self.delimiter = delimiter;
        self
    }

    /// The largest part in bytes of the file (uncompressed). Default [`DEFAULT_PART_SIZE`];
    /// keep it under the server's POST limit. At least 1 KiB.
    pub fn part_size(mut self, bytes: u64) -> Self {
        self.part_size = bytes.max(1024);
        self
    }

    /// Keeps the parts an earlier, interrupted load of the same file into the same table
    /// left done, and sends only the others. Without it a load starts from nothing,
    /// dropping what an earlier one left. With it, a load that finds no part of an earlier
    /// one fails rather than load the file whole: that earlier load may have finished.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// SQL run in the same transaction as the insert of the parts, after it (e.g. to turn
    /// a staging table into the real one).
    pub fn then(mut self, sql: impl Into<String>) -> Self {
        self.then = Some(sql.into());
        self
    }

    /// The COPY options of one part; the header is only in the first.
    fn options(&self, first: bool) -> String {
        let mut with = vec![match self.format {
            PartsFormat::Csv => "FORMAT csv".to_string(),
            PartsFormat::Text => "FORMAT text".to_string(),
        }];
        if self.header && first {
            with.push("HEADER true".into());
        }
        if let Some(delimiter) = self.delimiter {
            with.push(format!(
                "DELIMITER {}",
                carto_quote::literal(&delimiter.to_string())
            ));
        }
        with.join(", ")
    }

    /// The column list of the target as SQL, `*` for all.
    fn select_list(&self) -> String {
        if self.columns.is_empty() {
            "*".into()
        } else {
            self.columns.join(", ")
        }
    }

    fn column_list(&self) -> String {
        if self.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.columns.join(", "))
        }
    }
}

/// The outcome of [`CopyClient::copy_from_file_in_parts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartsOutcome {
    /// Rows inserted into the target.
    pub total_rows: u64,
    /// Seconds the whole load took (this client's clock).
    pub time: f64,
    /// Parts the file was cut into.
    pub parts: usize,
    /// Parts an earlier load had left done, not sent again.
    pub parts_resumed: usize,
}

/// True when a failed [`CopyClient::copy_from_file_in_parts`] kept its done parts for
/// [`Parts::resume`]: the failure was the connection, the server's availability or a local
/// read, not the data. After any other failure the parts are dropped.
pub fn is_resumable(error: &Error) -> bool {
    error.is_http()
        || error.is_io()
        || error.is_rate_limited()
        || error.status().is_some_and(|status| status >= 500)
}

/// FNV-1a, 64 bits: a stable hash (unlike std's, which may change between Rust releases)
/// for names that must be the same in a later process.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The prefix of the staging tables of loading `path` as `parts` says: the same for the
/// same file (size, modification time, first MiB) loaded the same way.
fn staging_prefix(path: &Path, parts: &Parts) -> Result<String> {
    let metadata = std::fs::metadata(path)?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut hash = 0xcbf2_9ce4_8422_2325;
    hash = fnv1a(hash, &metadata.len().to_le_bytes());
    hash = fnv1a(hash, &modified.as_nanos().to_le_bytes());
    let mut start = Vec::new();
    std::fs::File::open(path)?
        .take(FINGERPRINT_PREFIX)
        .read_to_end(&mut start)?;
    hash = fnv1a(hash, &start);
    let load = format!(
        "{}\0{}\0{}\0{}",
        parts.table,
        parts.select_list(),
        parts.options(true),
        parts.part_size
    );
    hash = fnv1a(hash, load.as_bytes());
    Ok(format!("carto_part_{hash:016x}_"))
}

#[derive(Deserialize)]
struct StagedPart {
    name: String,
    note: Option<String>,
}

/// The loaded parts an earlier load left: part number → rows.
async fn done_parts(copy: &CopyClient, prefix: &str) -> Result<BTreeMap<usize, u64>> {
    let answer = copy
        .client
        .sql()
        .send_as::<StagedPart>(&format!(
            "SELECT c.relname::text AS name, pg_catalog.obj_description(c.oid, 'pg_class') AS note \
             FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = pg_catalog.current_schema()::regnamespace \
             AND c.relkind = 'r' AND pg_catalog.starts_with(c.relname::text, {})",
            carto_quote::literal(prefix)
        ))
        .await?;
    Ok(answer
        .rows
        .into_iter()
        .filter_map(|part| {
            let number = part.name.strip_prefix(prefix)?.parse().ok()?;
            let rows = part.note?.strip_prefix(DONE_MARK)?.parse().ok()?;
            Some((number, rows))
        })
        .collect())
}

/// The parts of `done` that still hold their rows. Staging tables are unlogged (their
/// rows are written once to the write-ahead log, when published, instead of twice), and
/// PostgreSQL empties unlogged tables when it recovers from a crash: such a part is loaded
/// again.
async fn still_loaded(
    copy: &CopyClient,
    prefix: &str,
    done: BTreeMap<usize, u64>,
) -> Result<BTreeMap<usize, u64>> {
    let probes: Vec<String> = done
        .iter()
        .filter(|(_, rows)| **rows > 0)
        .map(|(number, _)| {
            format!(
                "(SELECT {number} AS number FROM {} LIMIT 1)",
                carto_quote::ident(&part_name(prefix, *number))
            )
        })
        .collect();
    if probes.is_empty() {
        return Ok(done);
    }
    #[derive(Deserialize)]
    struct Number {
        number: usize,
    }
    let filled: Vec<usize> = copy
        .client
        .sql()
        .send_as::<Number>(&probes.join(" UNION ALL "))
        .await?
        .rows
        .into_iter()
        .map(|n| n.number)
        .collect();
    Ok(done
        .into_iter()
        .filter(|(number, rows)| *rows == 0 || filled.contains(number))
        .collect())
}

/// Drops the staging tables of every part.
async fn drop_parts(copy: &CopyClient, prefix: &str) -> Result<()> {
    copy.client
        .sql()
        .send(&format!(
            "DO $carto$ DECLARE part text; BEGIN \
             FOR part IN SELECT c.relname FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = pg_catalog.current_schema()::regnamespace \
             AND c.relkind = 'r' AND pg_catalog.starts_with(c.relname::text, {}) LOOP \
             EXECUTE pg_catalog.format('DROP TABLE %I', part); END LOOP; END $carto$",
            carto_quote::literal(prefix)
        ))
        .await?;
    Ok(())
}

/// The name of part `number` (from 1).
fn part_name(prefix: &str, number: usize) -> String {
    format!("{prefix}{number}")
}

/// Loads one part into its staging table (made anew, so a retry never doubles rows) and
/// marks it done; its rows.
async fn load_part(
    copy: &CopyClient,
    path: &Path,
    parts: &Parts,
    name: &str,
    part: &Part,
    first: bool,
) -> Result<u64> {
    let table = carto_quote::ident(name);
    copy.client
        .sql()
        .send(&format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE UNLOGGED TABLE {table} AS SELECT {} FROM {} WITH NO DATA",
            parts.select_list(),
            parts.table
        ))
        .await?;
    let sql = format!(
        "COPY {table}{} FROM STDIN WITH ({})",
        parts.column_list(),
        parts.options(first)
    );
    let outcome = super::from::upload_file_range(copy, &sql, path, part.bytes.clone()).await?;
    copy.client
        .sql()
        .send(&format!(
            "COMMENT ON TABLE {table} IS {}",
            carto_quote::literal(&format!("{DONE_MARK}{}", outcome.total_rows))
        ))
        .await?;
    Ok(outcome.total_rows)
}

/// PostgreSQL's `COPY part, line N` made `COPY target, line M`, M counted in the whole
/// file, so that the error names the line of the file as one COPY of it would.
fn in_file_terms(error: Error, name: &str, table: &str, records_before: u64) -> Error {
    let Some(place) = error.where_() else {
        return error;
    };
    let place = place.replacen(name, table, 1);
    let place = match place.split_once(", line ") {
        Some((before, after)) => {
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            match after.get(..digits).and_then(|d| d.parse::<u64>().ok()) {
                Some(line) => format!(
                    "{before}, line {}{}",
                    line + records_before,
                    after.get(digits..).unwrap_or_default()
                ),
                None => place,
            }
        }
        None => place,
    };
    let body = serde_json::json!({
        "error": error.messages(),
        "context": error.context(),
        "detail": error.detail(),
        "hint": error.hint(),
        "where": place,
    });
    Error::from_response(
        error.status().unwrap_or(400),
        &Default::default(),
        body.to_string().as_bytes(),
    )
}

/// A progress callback for one part that reports it to `whole` as progress of the whole
/// load, `done` bytes (`wire_done` on the wire) already behind it.
fn part_progress(whole: Arc<Tracker>, done: u64, wire_done: u64, wire: Arc<AtomicU64>) -> Progress {
    Progress::new(move |update| {
        wire.store(update.wire_bytes, Ordering::Relaxed);
        // The part's counts start again when it is sent again: set, not add.
        whole.restart();
        whole.add_bytes((done + update.bytes) as usize);
        whole.add_wire_bytes((wire_done + update.wire_bytes) as usize);
        whole.tick();
    })
}

pub(super) async fn upload(copy: &CopyClient, path: &Path, parts: &Parts) -> Result<PartsOutcome> {
    let started = Instant::now();
    let prefix = staging_prefix(path, parts)?;
    let pieces = {
        let path = path.to_path_buf();
        let (format, size) = (parts.format, parts.part_size);
        tokio::task::spawn_blocking(move || split(&path, format, size))
            .await
            .map_err(|e| Error::io(std::io::Error::other(e)))??
    };
    let done = if parts.resume {
        let done = still_loaded(copy, &prefix, done_parts(copy, &prefix).await?).await?;
        if done.is_empty() {
            return Err(Error::config(format!(
                "nothing to resume: no part of an earlier load of {} into {} is left (it \
                 finished, or failed on its data); load it without resuming",
                path.display(),
                parts.table
            )));
        }
        done
    } else {
        drop_parts(copy, &prefix).await?;
        Default::default()
    };
    let whole = Tracker::new(Direction::Upload, copy.progress.clone());
    let mut rows = Vec::with_capacity(pieces.len());
    let (mut bytes_done, mut wire_done) = (0u64, 0u64);
    for (index, part) in pieces.iter().enumerate() {
        let number = index + 1;
        let name = part_name(&prefix, number);
        if let Some(loaded) = done.get(&number) {
            rows.push(*loaded);
            bytes_done += part.bytes.end - part.bytes.start;
            continue;
        }
        let mut part_copy = copy.clone();
        let wire_bytes = Arc::new(AtomicU64::new(0));
        part_copy.progress = Some(part_progress(
            whole.clone(),
            bytes_done,
            wire_done,
            wire_bytes.clone(),
        ));
        let mut retries = 0;
        let loaded = loop {
            match load_part(&part_copy, path, parts, &name, part, index == 0).await {
                Err(error) if is_resumable(&error) && retries < PART_RETRIES => {
                    retries += 1;
                    tracing::info!(part = number, retry = retries, %error, "sending a part again");
                    tokio::time::sleep(std::time::Duration::from_secs(1 << retries)).await;
                }
                other => break other,
            }
        };
        match loaded {
            Ok(loaded) => rows.push(loaded),
            Err(error) if is_resumable(&error) => return Err(error),
            Err(error) => {
                let _ = drop_parts(copy, &prefix).await;
                return Err(in_file_terms(
                    error,
                    &name,
                    &parts.table,
                    part.records_before,
                ));
            }
        }
        bytes_done += part.bytes.end - part.bytes.start;
        wire_done += wire_bytes.load(Ordering::Relaxed);
    }
    publish(copy, parts, &prefix, pieces.len()).await?;
    let total_rows = rows.iter().sum();
    whole.finish(Some(total_rows));
    Ok(PartsOutcome {
        total_rows,
        time: started.elapsed().as_secs_f64(),
        parts: pieces.len(),
        parts_resumed: done.len(),
    })
}

/// One transaction: the parts inserted into the target in file order, then dropped (and
/// the caller's `then`); as a batch job if /sql times out. After a transport failure, the
/// parts tell whether it committed: it drops them.
async fn publish(copy: &CopyClient, parts: &Parts, prefix: &str, count: usize) -> Result<()> {
    let mut statements: Vec<String> = (1..=count)
        .map(|number| {
            format!(
                "INSERT INTO {}{} SELECT {} FROM {}",
                parts.table,
                parts.column_list(),
                parts.select_list(),
                carto_quote::ident(&part_name(prefix, number))
            )
        })
        .collect();
    if count > 0 {
        statements.push(format!(
            "DROP TABLE {}",
            (1..=count)
                .map(|number| carto_quote::ident(&part_name(prefix, number)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    statements.extend(parts.then.clone());
    if statements.is_empty() {
        return Ok(());
    }
    let sql = format!("BEGIN; {}; COMMIT", statements.join("; "));
    let mut published = copy.client.sql().send(&sql).await.map(drop);
    if published.as_ref().is_err_and(Error::is_timeout) {
        // Inserting gigabytes can outlast the statement timeout of /sql (CARTO's is short);
        // the transaction rolled back, and a batch job runs the same one with hours to go.
        tracing::info!("publishing the parts timed out on /sql: publishing as a batch job");
        published = copy.client.batch().create_and_wait(sql).await.map(drop);
    }
    match published {
        Ok(()) => Ok(()),
        Err(error) if is_resumable(&error) => match done_parts(copy, prefix).await {
            Ok(left) if left.is_empty() && count > 0 => Ok(()),
            _ => Err(error),
        },
        Err(error) => {
            let _ = drop_parts(copy, prefix).await;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line_of_the_file() {
        let error = Error::from_response(
            400,
            &Default::default(),
            br#"{"error":["invalid input syntax for type integer: \"x\""],"where":"COPY carto_part_ab_3, line 7, column id: \"x\""}"#,
        );
        let error = in_file_terms(error, "carto_part_ab_3", "t", 100);
        assert_eq!(error.where_(), Some("COPY t, line 107, column id: \"x\""));
        assert_eq!(error.status(), Some(400));
        assert_eq!(
            error.messages(),
            ["invalid input syntax for type integer: \"x\""]
        );
    }
}
