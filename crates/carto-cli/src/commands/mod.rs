//! One module per subcommand; `run` dispatches.

mod batch;
mod copy;
mod import;
mod profile;
mod server;
mod sql;
mod transfer;

use std::sync::Mutex;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::args::{Cli, Command};
use crate::output::Output;
// SQL quoting for the statements the commands build, shared with the SDK and server.
use carto::{quote_ident as ident, quote_literal as literal};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let output = Output {
        quiet: cli.global.quiet,
        json: cli.global.json,
    };
    if let Some(note) = interrupted_note(&cli.command) {
        crate::interrupt::on_interrupt(note, None);
    }
    match cli.command {
        Command::Copy(command) => copy::run(&cli.global, output, command).await,
        Command::Sql(args) => sql::run(&cli.global, output, args).await,
        Command::Batch(args) => batch::run(&cli.global, output, args).await,
        Command::Transfer(args) => transfer::run(&cli.global, output, args).await,
        Command::Import(args) => import::run(&cli.global, output, args).await,
        Command::Profile(command) => profile::run(&cli.global, output, command),
        Command::Server { args } => server::run(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut crate::args::command(), "carto", &mut script);
            Ok(output.data(&script)?)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(crate::args::command()).render(&mut page)?;
            Ok(output.data(&page)?)
        }
    }
}

/// What an interruption of `command` leaves, as far as it is known before it starts (the
/// commands that stage work say more as they go).
fn interrupted_note(command: &Command) -> Option<String> {
    match command {
        Command::Copy(crate::args::CopyCommand::From(_)) => {
            Some("nothing committed (the upload was aborted)".into())
        }
        Command::Copy(crate::args::CopyCommand::To(args)) if args.file.as_os_str() != "-" => {
            Some(format!("nothing written to {}", args.file.display()))
        }
        Command::Copy(crate::args::CopyCommand::To(_)) => Some("the output is incomplete".into()),
        Command::Import(_) | Command::Transfer(_) => Some("nothing committed".into()),
        _ => None,
    }
}

/// A client for the credentials of this run.
fn client(global: &crate::args::Global) -> Result<carto::Client> {
    client_for(crate::profiles::resolve(global)?)
}

/// Servers this run talks to (`scheme://host:port`), to name them when one cannot be reached.
static SERVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A client for `credentials`, its server remembered for [`hint`].
fn client_for(credentials: carto::Credentials) -> Result<carto::Client> {
    let origin = credentials.base_url().origin().ascii_serialization();
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    if !servers.contains(&origin) {
        servers.push(origin);
    }
    Ok(carto::Client::new(credentials)?)
}

/// A line that helps with `error` when the message alone does not: for a refused
/// connection, which server was tried and what usually is the matter.
pub fn hint(error: &anyhow::Error) -> Option<String> {
    let refused = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    if !refused {
        return None;
    }
    let servers = SERVERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .join(" or ");
    Some(format!(
        "nothing answers at {servers}: is carto-sql-api running there? (start it with \
         `carto-sql-api serve`; the URL comes from --base-url, --profile or CARTO_API_URL)"
    ))
}

/// An SDK error, naming `path` when reading or writing it is what failed.
fn naming_file(error: carto::Error, doing: &str, path: &std::path::Path) -> anyhow::Error {
    if error.is_io() {
        anyhow::Error::new(error).context(format!("{doing} {}", path.display()))
    } else {
        error.into()
    }
}

/// A column of a table, with its full type (`geometry(Point,4326)`, `numeric(10,2)`).
#[derive(Debug, Deserialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// The columns of `table` (as SQL names it, `t` or `schema.t`), in table order.
async fn table_columns(client: &carto::Client, table: &str) -> Result<Vec<Column>> {
    let sql = format!(
        "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type \
         FROM pg_attribute a WHERE a.attrelid = {}::regclass AND a.attnum > 0 \
         AND NOT a.attisdropped ORDER BY a.attnum",
        literal(table)
    );
    let columns = client.sql().send_as::<Column>(&sql).await?.rows;
    if columns.is_empty() {
        bail!("the table {table} has no columns");
    }
    Ok(columns)
}

/// When `names` has columns that `columns` lacks: those names, and the table's columns, each
/// as a comma-separated list for an error message.
fn missing_columns(names: &[String], columns: &[Column]) -> Option<(String, String)> {
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| !columns.iter().any(|c| &c.name == *n))
        .map(String::as_str)
        .collect();
    (!unknown.is_empty()).then(|| {
        let all: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        (unknown.join(", "), all.join(", "))
    })
}
