//! The command line as clap sees it. Converted once into ready objects by the commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Move data into and out of CARTO (or any CARTO-compatible SQL API) at PostgreSQL's speed.
///
/// Credentials come from --base-url and --api-key, else from --profile NAME, else from
/// CARTO_API_URL and CARTO_API_KEY, else from the profile named "default".
#[derive(Debug, Parser)]
#[command(name = "carto", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes, before or after its name.
#[derive(Debug, Args)]
pub struct Global {
    /// Account base URL: https://USER.carto.com/ or https://HOST/user/USER/.
    #[arg(long, global = true, value_name = "URL")]
    pub base_url: Option<String>,
    /// API key of the account (a master key for writes and batch jobs).
    #[arg(long, global = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Use the credentials of a saved profile (see `carto profile add`).
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print nothing but errors (no progress bars, no summaries).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print results as JSON, one object per line.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream data into a table (COPY FROM) or out of it (COPY TO).
    #[command(subcommand)]
    Copy(CopyCommand),
    /// Run SQL and print the answer.
    Sql(SqlArgs),
    /// Run SQL as a batch job (for statements that take long).
    Batch(BatchArgs),
    /// Copy a table or query from one account to another, with no temporary file.
    Transfer(TransferArgs),
    /// Import a CSV file into a new table: infer column types, create, load, cartodbfy.
    Import(ImportArgs),
    /// Manage saved credentials.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Run the CARTO-compatible server (carto-sql-api) with the given arguments.
    #[command(disable_help_flag = true)]
    Server {
        /// Arguments for carto-sql-api (try `carto server --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `carto copy ...`
#[derive(Debug, Subcommand)]
pub enum CopyCommand {
    /// Upload FILE (or - for stdin) with COPY ... FROM STDIN.
    From(CopyFromArgs),
    /// Download into FILE (or - for stdout) with COPY ... TO STDOUT.
    To(CopyToArgs),
}

/// What a COPY moves: a full statement, or a table the statement is built for.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The COPY statement to run, e.g. "COPY t FROM STDIN WITH (FORMAT csv, HEADER true)".
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
    /// Answer format, printed as the server sends it.
    #[arg(long, value_enum, default_value_t = SqlFormat::Json)]
    pub format: SqlFormat,
}

/// `/sql` answer formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqlFormat {
    /// `{"rows": [...], "fields": {...}, ...}`
    Json,
    /// CSV with a header line.
    Csv,
    /// A GeoJSON FeatureCollection (from the `the_geom` column).
    Geojson,
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
    /// The CSV file (with a header line).
    pub file: PathBuf,
    /// Name of the table: lower-case letters, digits and _ (default: the file's name, made
    /// into one, e.g. "More Cities.csv" -> more_cities).
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

/// `carto profile ...`
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Save the credentials given with --base-url and --api-key under NAME (in a file
    /// readable only by you).
    Add {
        /// Profile name.
        name: String,
    },
    /// List saved profiles (keys are not shown).
    List,
    /// Delete a saved profile.
    Remove {
        /// Profile name.
        name: String,
    },
}
