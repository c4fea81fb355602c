//! The command line as clap sees it. Converted once into ready objects by the commands.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Move data into and out of CARTO (or any CARTO-compatible SQL API) at PostgreSQL's speed.
///
/// Credentials come from --base-url and --api-key, else from --profile NAME, else from
/// CARTO_API_URL and CARTO_API_KEY, else from the profile named "default".
#[derive(Debug, Parser)]
#[command(
    name = "carto",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Examples:
  carto profile add alice --base-url http://127.0.0.1:8080/user/alice/ --api-key secret
  carto --profile alice import cities.csv
  carto --profile alice sql \"SELECT name, ST_AsText(the_geom) FROM cities LIMIT 3\"
  carto --profile alice copy to cities.csv --table cities --header

Each command's --help has more examples."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the options every subcommand takes.
const GLOBAL: &str = "Global options (before or after the subcommand)";

/// Options every subcommand takes, before or after its name.
#[derive(Debug, Args)]
pub struct Global {
    /// Account base URL: https://USER.carto.com/ or https://HOST/user/USER/.
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL)]
    pub base_url: Option<String>,
    /// API key of the account (a master key for writes and batch jobs).
    #[arg(long, global = true, value_name = "KEY", help_heading = GLOBAL)]
    pub api_key: Option<String>,
    /// Use the credentials of a saved profile (see `carto profile add`).
    #[arg(long, global = true, value_name = "NAME", help_heading = GLOBAL)]
    pub profile: Option<String>,
    /// Print nothing but errors (no progress bars, no summaries).
    #[arg(long, short, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// Print results as JSON, one object per line.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream data into a table (COPY FROM) or out of it (COPY TO).
    #[command(
        subcommand,
        after_help = "Examples:
  carto copy from cities.csv --table cities --header
  carto copy to cities.csv --table cities --header"
    )]
    Copy(CopyCommand),
    /// Run SQL and print the answer.
    #[command(after_help = SQL_EXAMPLES)]
    Sql(SqlArgs),
    /// Run SQL as a batch job (for statements that take long).
    #[command(after_help = BATCH_EXAMPLES)]
    Batch(BatchArgs),
    /// Copy a table or query from one account to another, with no temporary file.
    #[command(after_help = TRANSFER_EXAMPLES)]
    Transfer(TransferArgs),
    /// Import a CSV, GeoJSON or GeoPackage file into a table: infer column types, create,
    /// load, cartodbfy.
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// Manage saved credentials.
    #[command(subcommand, after_help = PROFILE_ADD_EXAMPLES)]
    Profile(ProfileCommand),
    /// Print a completion script for SHELL, to source or install.
    #[command(after_help = "Examples:
  carto completions bash > /etc/bash_completion.d/carto
  source <(carto completions bash)                    # this shell only
  carto completions zsh > \"${fpath[1]}/_carto\"
  carto completions fish > ~/.config/fish/completions/carto.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print carto's man page (roff), to read with `man -l` or install in a man directory.
    #[command(after_help = "Examples:
  carto man | man -l -
  carto man > /usr/local/share/man/man1/carto.1")]
    Man,
    /// Run the CARTO-compatible server (carto-sql-api) with the given arguments.
    #[command(disable_help_flag = true)]
    Server {
        /// Arguments for carto-sql-api (try `carto server --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

const COPY_FROM_EXAMPLES: &str = "Examples:
  carto copy from cities.csv --table cities --header         # columns named by the header
  carto copy from points.tsv --table points --format text    # tab-separated, in table order
  gunzip -c big.csv.gz | carto copy from - --table big --header
  carto copy from t.csv --query \"COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)\"";

const COPY_TO_EXAMPLES: &str = "Examples:
  carto copy to cities.csv --table cities --header           # written whole, or not at all
  carto copy to - --table cities --format text | head
  carto copy to near.csv --query \"COPY (SELECT name, ST_AsText(the_geom) FROM cities \\
      WHERE pop > 1000000) TO STDOUT WITH (FORMAT csv, HEADER true)\"";

const SQL_EXAMPLES: &str = "Examples:
  carto sql \"SELECT name, pop FROM cities ORDER BY pop DESC LIMIT 5\"   # a table on a terminal
  carto sql \"SELECT * FROM cities\" --format json | jq .rows
  carto sql \"SELECT * FROM cities\" --format geojson > cities.geojson
  carto sql \"SELECT count(*) FROM cities\" --format csv";

const BATCH_EXAMPLES: &str = "Examples:
  carto batch \"UPDATE cities SET pop = pop * 1.01\" --wait
  carto batch \"CREATE TABLE big_cities AS SELECT * FROM cities WHERE pop > 1000000\" \\
      \"SELECT CDB_CartodbfyTable(current_schema, 'big_cities')\" --wait";

const TRANSFER_EXAMPLES: &str = "Examples:
  carto transfer --from alice --to prod --table cities --create
  carto transfer --from alice --to prod --table cities --query \"SELECT * FROM cities WHERE pop > 1000000\"
  carto transfer --from https://alice.carto.com/ --from-api-key KEY --to prod --table t --as t_copy --create";

const IMPORT_EXAMPLES: &str = "Examples:
  carto import cities.csv                                    # table 'cities': types inferred
  carto import \"More Cities.csv\" --table cities --if-exists append
  carto import codes.csv --delimiter ';' --type code=text --dry-run
  carto import parks.geojson --if-exists replace             # properties and geometries
  carto import city.gpkg --layer roads --table city_roads    # one layer of a GeoPackage";

const PROFILE_ADD_EXAMPLES: &str = "Examples:
  carto profile add prod --base-url https://alice.carto.com/ --api-key \"$KEY\"
  carto profile add local --base-url http://127.0.0.1:8080/user/alice/ --api-key secret
  carto --profile prod sql \"SELECT 1\"";

/// Parses the command line.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The command line's definition, as `parse` uses it (and completions and the man page
/// describe it). Options global to `carto` that a subcommand does not use are hidden from
/// its help: `transfer` names its accounts with --from and --to, and listing or removing
/// profiles, completions and the man page need no account.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    // Global options are copied into every subcommand when the command is built, except where
    // the subcommand has its own of that name: a hidden copy there hides it.
    let hidden: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| ["base_url", "api_key", "profile"].contains(&arg.get_id().as_str()))
        .map(|arg| arg.clone().hide(true))
        .collect();
    for path in [
        &["transfer"][..],
        &["profile", "list"][..],
        &["profile", "remove"][..],
        &["completions"][..],
        &["man"][..],
    ] {
        if let Some(sub) = find(&mut command, path) {
            *sub = std::mem::take(sub).args(hidden.iter().cloned());
        }
    }
    command
}

/// The subcommand at `path` (`["profile", "list"]`).
fn find<'a>(command: &'a mut clap::Command, path: &[&str]) -> Option<&'a mut clap::Command> {
    path.iter()
        .try_fold(command, |command, name| command.find_subcommand_mut(name))
}

/// `carto copy ...`
#[derive(Debug, Subcommand)]
pub enum CopyCommand {
    /// Upload FILE (or - for stdin) with COPY ... FROM STDIN.
    #[command(after_help = COPY_FROM_EXAMPLES)]
    From(CopyFromArgs),
    /// Download into FILE (or - for stdout) with COPY ... TO STDOUT.
    #[command(after_help = COPY_TO_EXAMPLES)]
    To(CopyToArgs),
}

/// What a COPY moves: a full statement, or a table the statement is built for.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The whole COPY statement to run (see the examples below).
    #[arg(long, value_name = "SQL")]
    pub query: Option<String>,
    /// The table to copy (the statement is built from it and the options below).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
}

/// How a COPY statement built from `--table` reads or writes its data.
#[derive(Debug, Args)]
pub struct TableOptions {
    /// Columns to copy, comma-separated (default: all, in table order).
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub columns: Vec<String>,
    /// Data format.
    #[arg(long, value_enum, default_value_t = DataFormat::Csv)]
    pub format: DataFormat,
    /// The data has (or gets) a header line (CSV only).
    #[arg(long)]
    pub header: bool,
    /// Field delimiter (CSV and text): one ASCII character, or tab.
    #[arg(long, value_name = "CHAR", value_parser = delimiter)]
    pub delimiter: Option<char>,
}

/// COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    /// Comma-separated values.
    Csv,
    /// PostgreSQL's text format (tab-separated, \N for NULL).
    Text,
    /// PostgreSQL's binary format.
    Binary,
}

/// `carto copy from`
#[derive(Debug, Args)]
pub struct CopyFromArgs {
    /// File to upload; - reads stdin.
    pub file: PathBuf,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub table: TableOptions,
    /// Send the data uncompressed (gzip level 1 is the default).
    #[arg(long)]
    pub no_compress: bool,
    /// gzip level, 1 (fastest) to 9 (smallest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9), conflicts_with = "no_compress")]
    pub level: Option<u32>,
    /// A file (with --table, CSV or text) bigger than this is loaded in parts of at most this
    /// size, under the server's POST limit (CARTO's is 2 GB), and published in one
    /// transaction at the end: bytes, or with a unit (kB, MB, GB, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", value_parser = byte_size, default_value = "1GiB")]
    pub part_size: u64,
    /// Send only the parts an earlier, interrupted load of the same file into the same table
    /// did not finish.
    #[arg(long)]
    pub resume: bool,
}

/// `carto copy to`
#[derive(Debug, Args)]
pub struct CopyToArgs {
    /// File to write; - writes stdout. Written to a temporary file and renamed when complete,
    /// so a failed export leaves nothing under this name.
    pub file: PathBuf,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub table: TableOptions,
    /// Append to FILE instead of replacing it (on failure it is cut back to its old length).
    #[arg(long)]
    pub append: bool,
    /// Ask for an uncompressed download.
    #[arg(long, conflicts_with = "compress")]
    pub no_compress: bool,
    /// Ask for a gzip-compressed download even from a server on this machine (by default only
    /// remote servers are asked to compress: on loopback it only costs CPU on both sides).
    #[arg(long)]
    pub compress: bool,
}

/// `carto sql`
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL to run (several statements allowed).
    pub sql: String,
    /// Answer format: a table for people (the default when stdout is a terminal), or JSON,
    /// CSV or GeoJSON as the server sends it (JSON is the default on a pipe or in a file).
    #[arg(long, value_enum)]
    pub format: Option<SqlFormat>,
    /// In a table, show every column, the_geom_webmercator too (a copy of the_geom in another
    /// projection, hidden by default).
    #[arg(long)]
    pub all_columns: bool,
    /// Write the answer into FILE (through a temporary file renamed when complete, so a
    /// failure leaves nothing under this name) instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `/sql` answer formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqlFormat {
    /// A table, geometries as WKT.
    Table,
    /// `{"rows": [...], "fields": {...}, ...}`
    Json,
    /// CSV with a header line.
    Csv,
    /// A GeoJSON FeatureCollection (from the `the_geom` column).
    Geojson,
    /// A TopoJSON topology.
    Topojson,
    /// An SVG image of the geometries.
    Svg,
    /// KML, for Google Earth.
    Kml,
    /// An ESRI Shapefile set (.shp, .shx, .dbf, .prj) in a zip file.
    Shp,
    /// A GeoPackage (SQLite) file.
    Gpkg,
    /// A SpatiaLite (SQLite) file.
    Spatialite,
}

impl SqlFormat {
    /// The server's name for the format.
    pub fn name(self) -> &'static str {
        match self {
            SqlFormat::Table => "table",
            SqlFormat::Json => "json",
            SqlFormat::Csv => "csv",
            SqlFormat::Geojson => "geojson",
            SqlFormat::Topojson => "topojson",
            SqlFormat::Svg => "svg",
            SqlFormat::Kml => "kml",
            SqlFormat::Shp => "shp",
            SqlFormat::Gpkg => "gpkg",
            SqlFormat::Spatialite => "spatialite",
        }
    }

    /// Whether the answer is a binary file, which would garble a terminal.
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            SqlFormat::Shp | SqlFormat::Gpkg | SqlFormat::Spatialite
        )
    }
}

/// `carto batch`
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Statements, run one after the other as one job.
    #[arg(required = true)]
    pub sql: Vec<String>,
    /// Wait until the job ends; fail if it does not end `done`.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between status checks while waiting.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub poll_interval: f64,
}

/// `carto transfer`
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Source account: a profile name or a base URL (key from --from-api-key).
    #[arg(long, value_name = "PROFILE|URL")]
    pub from: String,
    /// Key for a --from given as a URL.
    #[arg(
        long,
        value_name = "KEY",
        env = "CARTO_FROM_API_KEY",
        hide_env_values = true
    )]
    pub from_api_key: Option<String>,
    /// Destination account: a profile name or a base URL (key from --to-api-key).
    #[arg(long, value_name = "PROFILE|URL")]
    pub to: String,
    /// Key for a --to given as a URL.
    #[arg(
        long,
        value_name = "KEY",
        env = "CARTO_TO_API_KEY",
        hide_env_values = true
    )]
    pub to_api_key: Option<String>,
    /// The source table.
    #[arg(long)]
    pub table: String,
    /// Name of the destination table (default: the source's).
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Create the destination table with the source's columns, then cartodbfy it.
    #[arg(long)]
    pub create: bool,
    /// Copy the rows of this query instead of the whole table (its columns must match).
    #[arg(long, value_name = "SQL")]
    pub query: Option<String>,
    /// Wire format: binary (fastest; both sides PostgreSQL) or text.
    #[arg(long, value_enum, default_value_t = TransferFormat::Binary)]
    pub format: TransferFormat,
}

/// Formats a transfer can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransferFormat {
    /// PostgreSQL's binary COPY format.
    Binary,
    /// PostgreSQL's text COPY format.
    Text,
}

/// `carto import`
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file: CSV with a header line, GeoJSON (*.geojson, *.json: a FeatureCollection
    /// or a Feature, read into memory whole) or GeoPackage (*.gpkg).
    pub file: PathBuf,
    /// The feature table of a GeoPackage to import (default: its only one).
    #[arg(long, value_name = "NAME")]
    pub layer: Option<String>,
    /// Name of the table: lower-case letters, digits and _ (default: the file's name, or a
    /// GeoPackage's layer name, made into one, e.g. "More Cities.csv" -> more_cities).
    #[arg(long)]
    pub table: Option<String>,
    /// What to do when the table exists: fail, replace it, or append the file's rows to it.
    #[arg(long, value_enum, default_value_t = IfExists::Fail)]
    pub if_exists: IfExists,
    /// Print the statements instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Field delimiter: one ASCII character, or tab (default: whichever of , ; tab | splits
    /// the first lines into the same number of fields).
    #[arg(long, value_name = "CHAR", value_parser = delimiter)]
    pub delimiter: Option<char>,
    /// The SQL type of a column instead of the inferred one, e.g. --type code=text (COLUMN
    /// as in the header or as renamed). Repeatable.
    #[arg(long = "type", value_name = "COLUMN=TYPE")]
    pub types: Vec<String>,
    /// Rows read to infer column types.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub sample: usize,
    /// A file bigger than this is loaded in parts of at most this size, under the server's
    /// POST limit (CARTO's is 2 GB), and the table made in one transaction at the end: bytes,
    /// or with a unit (kB, MB, GB, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", value_parser = byte_size, default_value = "1GiB")]
    pub part_size: u64,
    /// Send only the parts an earlier, interrupted import of the same file into the same
    /// table did not finish (a CSV file; GeoJSON and GeoPackage files are converted anew
    /// each run, so their parts are not found again).
    #[arg(long)]
    pub resume: bool,
}

/// What `carto import` does with a table that exists (ogr2ogr's `-overwrite`, `-append`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IfExists {
    /// Stop before loading anything.
    Fail,
    /// Replace the table with the file's rows, in one transaction.
    Replace,
    /// Add the file's rows to the table (its columns must take them).
    Append,
}

/// A field delimiter: one ASCII character (not a quote or a line break), or `tab`/`\t`.
fn delimiter(text: &str) -> Result<char, String> {
    match text {
        "tab" | "\\t" | "\t" => Ok('\t'),
        _ => {
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii() && !matches!(c, '"' | '\n' | '\r') => Ok(c),
                _ => Err("one ASCII character (not a quote or a line break), or tab".into()),
            }
        }
    }
}

/// A size in bytes: a number, optionally followed by a decimal (kB, MB, GB) or binary (KiB,
/// MiB, GiB) unit.
fn byte_size(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = text.get(digits.len()..).unwrap_or_default();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: use kB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    let number: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1GiB, 500MB, 1048576)"))?;
    number
        .checked_mul(scale)
        .filter(|bytes| *bytes >= 1024)
        .ok_or_else(|| "a size from 1 KiB up".to_string())
}

/// `carto profile ...`
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Save the credentials given with --base-url and --api-key under NAME (in a file
    /// readable only by you).
    #[command(after_help = PROFILE_ADD_EXAMPLES)]
    Add {
        /// Profile name.
        name: String,
    },
    /// List saved profiles (keys are not shown).
    #[command(after_help = "Examples:\n  carto profile list")]
    List,
    /// Delete a saved profile.
    #[command(after_help = "Examples:\n  carto profile remove prod")]
    Remove {
        /// Profile name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(byte_size("500MB"), Ok(500_000_000));
        assert_eq!(byte_size("64kib"), Ok(64 << 10));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("12").is_err());
        assert!(byte_size("1TB").unwrap_err().contains("unknown unit"));
        assert!(byte_size("lots").is_err());
        assert!(byte_size("99999999999GB").is_err());
    }
}
