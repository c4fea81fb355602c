//! `carto-sql-api`: run the server, or manage its users.
// Slicing client text at a byte offset panics inside a multi-byte character: use `get(..)`
// or char-aware code. Tests may slice text they wrote themselves.
#![cfg_attr(not(test), deny(clippy::string_slice))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use carto_sql_api::accounts::{Grant, HEAL_INTERVAL};
use carto_sql_api::embedded::{EmbeddedCluster, EmbeddedOptions};
use carto_sql_api::http_server::{serve, ConnectionLimits};
use carto_sql_api::jobs::BatchConfig;
use carto_sql_api::limits::{Group, GroupRate};
use carto_sql_api::{timeouts, Config, Exports, Server};
use clap::{Parser, Subcommand};

/// A CARTO-compatible SQL API server (COPY FROM/TO and SQL) on PostgreSQL + PostGIS.
///
/// Without --database-url it runs its own private PostgreSQL cluster under --data-dir.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Where the embedded PostgreSQL cluster and its secrets live.
    #[arg(
        long,
        global = true,
        default_value = "./.carto-data",
        env = "CARTO_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// Use this existing PostgreSQL instead of the embedded one (a superuser URL, used for
    /// provisioning and metadata only), e.g. postgres://postgres:secret@localhost/postgres.
    #[arg(long, global = true, env = "CARTO_DATABASE_URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the SQL API over HTTP until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Largest COPY FROM body, in bytes received.
        #[arg(long, default_value_t = Config::default().max_post_size)]
        max_post_size: u64,
        /// statement_timeout of COPY statements (e.g. 5h, 30min, 30s, or milliseconds; 0 for
        /// none).
        #[arg(long, default_value = "5h", value_parser = timeouts::parse)]
        copy_timeout: Duration,
        /// Connections of each master key's pool.
        #[arg(long, default_value_t = Config::default().pool_size)]
        pool_size: usize,
        #[command(flatten)]
        connections: ConnectionFlags,
        /// statement_timeout of /sql statements (e.g. 15s, or milliseconds; 0 for none);
        /// default: --key-statement-timeout, or for master keys the user database's setting.
        #[arg(long, value_parser = timeouts::parse)]
        query_timeout: Option<Duration>,
        /// Base URL printed for users (default: from --listen).
        #[arg(long)]
        public_url: Option<String>,
        /// Rate limit of an endpoint group for every user without their own, as
        /// GROUP=BURST/COUNT/PERIOD (groups: query, copy_from, copy_to, job_create, job_get,
        /// job_delete; period in seconds or with ms/s/m/h). Repeatable. Default: no limits.
        #[arg(long = "rate-limit", value_name = "GROUP=BURST/COUNT/PERIOD")]
        rate_limits: Vec<GroupRate>,
        /// Batch jobs a user may have waiting.
        #[arg(long, default_value_t = BatchConfig::default().max_queued_jobs)]
        batch_max_queued_jobs: usize,
        /// Longest a batch query may run, in milliseconds, for users without their own limit.
        #[arg(long, default_value_t = BatchConfig::default().query_timeout.as_millis() as u64)]
        batch_query_timeout_ms: u64,
        /// Users whose batch jobs this server runs at once (0: run none, only queue them).
        #[arg(long, default_value_t = BatchConfig::default().workers)]
        batch_workers: usize,
        #[command(flatten)]
        edge: EdgeArgs,
        #[command(flatten)]
        exports: ExportArgs,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage a user's regular API keys (one PostgreSQL role each, holding exactly its grants).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage the PostgreSQL hosts that hold user databases (the metadata's own cluster is the
    /// `default` host).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Register a PostgreSQL host for user databases (PostGIS required; the user template is
    /// installed there). Its URL is kept in the metadata database only, and never printed.
    Add {
        /// Host name: lowercase letters, digits, '-' or '_' (not `default`).
        name: String,
        /// A superuser URL of the host, e.g. postgres://postgres:secret@db2:5432/postgres
        /// (`--database-url` names the metadata's cluster). Prefer the environment variable:
        /// a command line is visible to every local user.
        #[arg(long, env = "CARTO_HOST_URL", hide_env_values = true)]
        url: String,
    },
    /// List the hosts as JSON with their user counts and sizes.
    List,
}

/// `serve`'s limits at the HTTP edge: slow and idle clients, decompression.
#[derive(clap::Args)]
struct EdgeArgs {
    /// Seconds a client may take to send a request's whole header.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = ConnectionLimits::default().header_read_timeout.as_secs()
    )]
    header_read_timeout: u64,
    /// Seconds a connection may stay open with no request in progress and no bytes moving
    /// (0: no limit of its own; HTTP/1 still waits at most --header-read-timeout for a next
    /// request).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = ConnectionLimits::default().idle_timeout.map_or(0, |t| t.as_secs())
    )]
    idle_timeout: u64,
    /// Connections open at once; more wait in the listen backlog until one closes.
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Largest COPY FROM body once gunzipped, in bytes (default: no limit of its own).
    #[arg(long, value_name = "BYTES")]
    max_copy_decompressed: Option<u64>,
}

/// `serve` flags of the /sql formats written by ogr2ogr (shp, kml, gpkg, spatialite).
#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Largest shp/kml/gpkg/spatialite export, in bytes, both the spooled rows and the file;
    /// larger ones are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = Exports::default().max_size)]
    max_export_size: u64,
    /// Exports converted at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = Exports::default().max_concurrent)]
    max_concurrent_exports: usize,
    /// Directory for the exports' private temporary directories (default: the system's).
    #[arg(long, value_name = "DIR")]
    export_temp_dir: Option<PathBuf>,
    /// The GDAL ogr2ogr program.
    #[arg(long, value_name = "PATH", default_value = "ogr2ogr")]
    ogr2ogr: PathBuf,
}

impl ExportArgs {
    fn settings(&self) -> Exports {
        let mut exports = Exports::default();
        exports.max_size = self.max_export_size;
        exports.max_concurrent = self.max_concurrent_exports;
        exports.temp_dir = self.export_temp_dir.clone();
        exports.ogr2ogr = self.ogr2ogr.clone();
        exports
    }
}

impl EdgeArgs {
    fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
            max_connections: self.max_connections,
        }
    }
}

/// How much of PostgreSQL each user may hold, and for how long.
#[derive(clap::Args)]
struct ConnectionFlags {
    /// PostgreSQL connections the public role and the regular keys of one user may hold
    /// together; master keys have their own --pool-size.
    #[arg(long, default_value_t = Config::default().user_connections)]
    user_connections: usize,
    /// Milliseconds a request waits for a connection before it is answered 429 with
    /// Retry-After.
    #[arg(long, default_value_t = Config::default().pool_wait_timeout.as_millis() as u64)]
    pool_wait_timeout_ms: u64,
    /// Seconds after which an unused pooled connection is closed.
    #[arg(long, default_value_t = Config::default().pool_idle_timeout.as_secs())]
    pool_idle_timeout_s: u64,
    /// statement_timeout of the public role and regular keys (e.g. 5min, 30s, or
    /// milliseconds), which no role or database default can change; 0 for none.
    #[arg(long, default_value = "5min", value_parser = timeouts::parse)]
    key_statement_timeout: Duration,
}

impl ConnectionFlags {
    /// Sets these flags' fields of `config`.
    fn apply(self, config: &mut Config) {
        config.user_connections = self.user_connections;
        config.pool_wait_timeout = Duration::from_millis(self.pool_wait_timeout_ms);
        config.pool_idle_timeout = Duration::from_secs(self.pool_idle_timeout_s);
        config.key_statement_timeout =
            (!self.key_statement_timeout.is_zero()).then_some(self.key_statement_timeout);
    }
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a regular key and print it as JSON (the token is shown only this once).
    Add {
        /// The user.
        user: String,
        /// Privileges on a table, TABLE:PRIV[,PRIV...] with TABLE or SCHEMA.TABLE and PRIV in
        /// select, insert, update, delete, truncate, references, trigger. Repeatable; none
        /// gives a key that can connect but read nothing.
        #[arg(long = "grant", value_name = "TABLE:PRIVILEGES")]
        grants: Vec<Grant>,
        /// The key's name (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// The token (default: a random one).
        #[arg(long)]
        api_key: Option<String>,
    },
    /// List a user's keys as JSON (names, roles, grants; never tokens).
    List {
        /// The user.
        user: String,
    },
    /// Delete a regular key, by name or token; it stops working at once.
    Delete {
        /// The user.
        user: String,
        /// The key's name or token.
        key: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (database, roles, PostGIS) and print its credentials as JSON.
    Add {
        /// User name: lowercase letters, digits, '-' or '_'.
        name: String,
        /// The master API key (default: a random one).
        #[arg(long)]
        api_key: Option<String>,
        /// Database quota in bytes (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        quota: u64,
        /// Base URL of the server, for the printed `base_url`.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server_url: String,
        /// Database host for the user's database and roles (default: the host with the fewest
        /// users; `default` is the metadata's cluster).
        #[arg(long)]
        host: Option<String>,
    },
    /// Move a user's database, roles and grants to another database host; prints what was
    /// copied as JSON. The user's database is read-only meanwhile (writes get 503 with
    /// `Retry-After`); the old copy is dropped only after the switch.
    Move {
        /// User name.
        name: String,
        /// The host to move to (`default` is the metadata's cluster).
        #[arg(long, required_unless_present = "abort", conflicts_with = "abort")]
        to: Option<String>,
        /// Make the user's database writable again after a move that was killed (the partial
        /// copy is dropped by the next move).
        #[arg(long)]
        abort: bool,
    },
    /// Show or change a user's own limits (they win over the server's defaults); prints them
    /// as JSON.
    Limits {
        /// User name.
        name: String,
        /// Set the user's rate limit of a group, GROUP=BURST/COUNT/PERIOD. Repeatable.
        #[arg(long = "rate-limit", value_name = "GROUP=BURST/COUNT/PERIOD")]
        rate_limits: Vec<GroupRate>,
        /// Remove the user's own rate limit of a group (the server's default applies again).
        #[arg(long = "clear-rate-limit", value_name = "GROUP")]
        clear: Vec<Group>,
        /// Set the user's batch query timeout, in milliseconds.
        #[arg(long, value_name = "MS")]
        batch_timeout: Option<u64>,
        /// Remove the user's own batch query timeout (the server's applies again).
        #[arg(long)]
        clear_batch_timeout: bool,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("carto-sql-api: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("carto-sql-api: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`) — except that the database driver
/// never logs below `info`, whatever `RUST_LOG` says: at debug level it writes every statement
/// with its parameters, which carry key hashes and role passwords.
fn init_logging() {
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::prelude::*;

    const DRIVER_TARGETS: [&str; 3] = ["tokio_postgres", "postgres_protocol", "deadpool"];
    let no_driver_statements = filter_fn(|metadata| {
        *metadata.level() <= tracing::Level::INFO
            || !DRIVER_TARGETS
                .iter()
                .any(|target| metadata.target().starts_with(target))
    });
    let from_env = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(from_env)
                .with_filter(no_driver_statements),
        )
        .init();
}

async fn run(cli: Cli) -> Result<()> {
    let mut cluster = None;
    let admin = match &cli.database_url {
        Some(url) => tokio_postgres::Config::from_str(url).context("parsing --database-url")?,
        None => {
            let started = EmbeddedCluster::start(&EmbeddedOptions::new(&cli.data_dir))
                .await
                .context("starting the embedded PostgreSQL cluster")?;
            let config = started.superuser_config();
            cluster = Some(started);
            config
        }
    };
    let result = run_command(cli.command, admin, cluster.as_ref()).await;
    if let Some(mut cluster) = cluster {
        if let Err(error) = cluster.stop().await {
            tracing::warn!(%error, "stopping the embedded cluster");
        }
    }
    result
}

/// Runs `command`; `cluster` is the embedded cluster, if the server runs on it.
async fn run_command(
    command: Command,
    admin: tokio_postgres::Config,
    cluster: Option<&EmbeddedCluster>,
) -> Result<()> {
    match command {
        Command::Serve {
            listen,
            max_post_size,
            copy_timeout,
            pool_size,
            connections,
            query_timeout,
            public_url,
            rate_limits,
            batch_max_queued_jobs,
            batch_query_timeout_ms,
            batch_workers,
            edge,
            exports,
        } => {
            let mut config = Config {
                max_post_size,
                copy_timeout,
                pool_size,
                query_timeout,
                rate_limits: rate_limits.into_iter().collect(),
                batch: BatchConfig {
                    max_queued_jobs: batch_max_queued_jobs,
                    query_timeout: Duration::from_millis(batch_query_timeout_ms),
                    workers: batch_workers,
                    ..BatchConfig::default()
                },
                connections: edge.connection_limits(),
                max_copy_decompressed: edge.max_copy_decompressed,
                exports: exports.settings(),
                ..Config::default()
            };
            // Says once, at startup, when the ogr2ogr formats cannot work.
            config.exports.ogr2ogr_available().await;
            connections.apply(&mut config);
            let limits = config.connections.clone();
            let server = Server::open(admin, config).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let url = public_url.unwrap_or_else(|| format!("http://{listen}"));
            tracing::info!(%url, "carto-sql-api listening");
            server.jobs().start_workers();
            // PostgreSQL dying must not take the server with it: the embedded cluster is
            // restarted in place, and the pools reconnect (with --database-url, they reconnect
            // once the operator has the database back).
            let supervisor = cluster.map(|cluster| cluster.supervise(SUPERVISE_INTERVAL));
            // A `user move` killed before its switch leaves the user's database read-only:
            // made writable again here, by whichever server looks first.
            let healer = tokio::spawn({
                let server = server.clone();
                async move {
                    let mut every = tokio::time::interval(HEAL_INTERVAL);
                    loop {
                        every.tick().await;
                        match server.accounts().heal_dead_moves().await {
                            Ok(healed) if !healed.is_empty() => tracing::warn!(
                                users = ?healed,
                                "made writable again after a move that was killed"
                            ),
                            Ok(_) => {}
                            Err(error) => tracing::debug!(%error, "looking for killed moves"),
                        }
                    }
                }
            });
            let served = serve(listener, server.router(), limits, shutdown_signal()).await;
            tracing::info!("shutting down");
            // Running batch queries are cancelled and their jobs re-queued for another server.
            server.jobs().shutdown().await;
            healer.abort();
            if let Some(supervisor) = supervisor {
                supervisor.abort();
            }
            served?;
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Add {
                    name,
                    api_key,
                    quota,
                    server_url,
                    host,
                },
        } => {
            let server = Server::open(admin, Config::default()).await?;
            let key = server
                .accounts()
                .create_user_on(&name, api_key.as_deref(), host.as_deref())
                .await?;
            if quota > 0 {
                server.accounts().set_quota(&name, quota).await?;
            }
            let new_user = carto_sql_api::accounts::NewUser {
                base_url: format!("{}/user/{name}", server_url.trim_end_matches('/')),
                username: name,
                api_key: key,
            };
            println!("{}", serde_json::to_string(&new_user)?);
            Ok(())
        }
        Command::User {
            command: UserCommand::Move { name, to, abort },
        } => {
            let server = Server::open(admin, Config::default()).await?;
            match to {
                Some(to) if !abort => {
                    let report = server.accounts().move_user(&name, &to).await?;
                    println!("{}", serde_json::to_string(&report)?);
                }
                _ => {
                    server.accounts().abort_move(&name).await?;
                    println!(
                        "{}",
                        serde_json::json!({ "username": name, "aborted": true })
                    );
                }
            }
            Ok(())
        }
        Command::Key { command } => run_key_command(command, admin).await,
        Command::Host { command } => {
            let server = Server::open(admin, Config::default()).await?;
            let hosts = server.accounts().hosts();
            match command {
                HostCommand::Add { name, url } => {
                    hosts.add(&name, &url).await?;
                    println!("{}", serde_json::json!({ "host": name, "added": true }));
                }
                HostCommand::List => {
                    println!("{}", serde_json::to_string(&hosts.list().await?)?);
                }
            }
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Limits {
                    name,
                    rate_limits,
                    clear,
                    batch_timeout,
                    clear_batch_timeout,
                },
        } => {
            let server = Server::open(admin, Config::default()).await?;
            if server.accounts().user(&name).await?.is_none() {
                anyhow::bail!("user '{name}' does not exist");
            }
            let limits = server.limits();
            for group in clear {
                limits.set_user_rate(&name, group, None).await?;
            }
            for GroupRate { group, rate } in rate_limits {
                limits.set_user_rate(&name, group, Some(rate)).await?;
            }
            if clear_batch_timeout {
                server.jobs().set_user_timeout(&name, None).await?;
            }
            if let Some(ms) = batch_timeout {
                server
                    .jobs()
                    .set_user_timeout(&name, Some(Duration::from_millis(ms)))
                    .await?;
            }
            let batch_timeout_ms = server
                .jobs()
                .user_timeout(&name)
                .await?
                .map(|t| t.as_millis() as u64);
            let rates: serde_json::Map<String, serde_json::Value> = limits
                .user_rates(&name)
                .await?
                .into_iter()
                .map(|g| (g.group.to_string(), g.rate.to_string().into()))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "username": name,
                    "rate_limits": rates,
                    "batch_timeout_ms": batch_timeout_ms,
                })
            );
            Ok(())
        }
    }
}

async fn run_key_command(command: KeyCommand, admin: tokio_postgres::Config) -> Result<()> {
    let server = Server::open(admin, Config::default()).await?;
    let accounts = server.accounts();
    match command {
        KeyCommand::Add {
            user,
            grants,
            name,
            api_key,
        } => {
            let key = accounts
                .create_key(&user, name.as_deref(), api_key.as_deref(), &grants)
                .await?;
            println!("{}", serde_json::to_string(&key)?);
        }
        KeyCommand::List { user } => {
            println!("{}", serde_json::to_string(&accounts.keys(&user).await?)?);
        }
        KeyCommand::Delete { user, key } => {
            accounts.delete_key(&user, &key).await?;
            println!(
                "{}",
                serde_json::json!({ "username": user, "deleted": key })
            );
        }
    }
    Ok(())
}

/// How often the embedded cluster is checked, and restarted if it died.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge_args(args: &[&str]) -> EdgeArgs {
        let cli = Cli::try_parse_from(["carto-sql-api", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve { edge, .. } => edge,
            _ => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn edge_flags_and_their_defaults() {
        let defaults = edge_args(&[]);
        assert_eq!(defaults.connection_limits(), ConnectionLimits::default());
        assert_eq!(defaults.max_copy_decompressed, None);

        let set = edge_args(&[
            "--header-read-timeout",
            "5",
            "--idle-timeout",
            "0",
            "--max-connections",
            "7",
            "--max-copy-decompressed",
            "1000",
        ]);
        assert_eq!(
            set.connection_limits(),
            ConnectionLimits {
                header_read_timeout: Duration::from_secs(5),
                idle_timeout: None,
                max_connections: 7,
            }
        );
        assert_eq!(set.max_copy_decompressed, Some(1000));
    }
}
