//! A CARTO-compatible SQL API server on PostgreSQL + PostGIS.
//!
//! It answers CARTO's `/api/v2/sql/copyfrom` and `/api/v2/sql/copyto` streaming endpoints and
//! the `/api/v2/sql` query endpoint, batch jobs (`/api/v2/sql/job`, see [`jobs`]) and per-user
//! rate limits ([`limits`]) for users addressed as `http://{user}.{host}/api/...` or
//! `http://{host}/user/{user}/api/...`. Every statement runs on a connection authenticated as
//! the API key's own, non-superuser PostgreSQL role.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use carto_sql_api::{embedded::{EmbeddedCluster, EmbeddedOptions}, Config, Server};
//!
//! let cluster = EmbeddedCluster::start(&EmbeddedOptions::new("./.carto-data")).await?;
//! let server = Server::open(cluster.superuser_config(), Config::default()).await?;
//! let key = server.accounts().create_user("alice", None).await?;
//! server.jobs().start_workers();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let limits = carto_sql_api::http_server::ConnectionLimits::default();
//! carto_sql_api::http_server::serve(listener, server.router(), limits, std::future::pending())
//!     .await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
// Slicing client text at a byte offset panics inside a multi-byte character: use `get(..)`
// or char-aware code. Tests may slice text they wrote themselves.
#![cfg_attr(not(test), deny(clippy::string_slice))]

pub mod accounts;
pub(crate) mod auth;
pub(crate) mod copy;
pub mod db;
pub mod embedded;
pub mod error;
pub mod hosts;
pub mod http_server;
pub mod jobs;
pub mod limits;
pub(crate) mod query;
pub use query::export::Exports;
mod routes;
pub(crate) mod sql_text;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timeouts;

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;

use crate::accounts::Accounts;
use crate::db::{PoolSettings, Pools};

/// The default largest COPY FROM body: 2 GiB, as upstream's.
pub const DEFAULT_MAX_POST_SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest COPY FROM body accepted, in bytes received (compressed if gzip). Default 2 GiB,
    /// named `2 GB` in its error message as upstream names it; other sizes in bytes.
    pub max_post_size: u64,
    /// `statement_timeout` for COPY statements (zero: none). Default 5 h.
    pub copy_timeout: Duration,
    /// Connections of each master key's pool. Default 16.
    pub pool_size: usize,
    /// PostgreSQL connections the public role and the regular keys of one user may hold
    /// together (busy or idle), so that anonymous callers of one account cannot take the
    /// connections of the others, nor those of its master key. Default 8.
    pub user_connections: usize,
    /// Longest a request waits for a connection; then it is answered 429 with `Retry-After`.
    /// Default 5 s.
    pub pool_wait_timeout: Duration,
    /// Pooled connections unused for this long are closed. Default 60 s.
    pub pool_idle_timeout: Duration,
    /// `statement_timeout` of the public role and regular keys, set when connecting so that no
    /// role or database default overrides it (`query_timeout` and `copy_timeout` still apply
    /// per request). `None`: none. Default 5 min. Master keys get their database's default
    /// instead.
    pub key_statement_timeout: Option<Duration>,
    /// `statement_timeout` set for `/sql` statements. Default `None`: `key_statement_timeout`,
    /// or for master keys the user database's default.
    pub query_timeout: Option<Duration>,
    /// Server-wide rate limits per endpoint group (users may have their own). Default: none.
    pub rate_limits: limits::RateLimits,
    /// Batch jobs: queue limit, timeouts, workers.
    pub batch: jobs::BatchConfig,
    /// HTTP connections: header read timeout, idle timeout, connection cap (see
    /// [`http_server`]).
    pub connections: http_server::ConnectionLimits,
    /// Largest COPY FROM body once gunzipped, in bytes: past it the COPY is aborted (400).
    /// Default `None`: no limit of its own (a user's quota and `copy_timeout` still apply, and
    /// memory stays bounded whatever the ratio, since bodies are streamed).
    pub max_copy_decompressed: Option<u64>,
    /// `/sql` file formats written by `ogr2ogr` (shp, kml, gpkg, spatialite): size cap,
    /// concurrent exports, temporary directory, program.
    pub exports: query::export::Exports,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_post_size: DEFAULT_MAX_POST_SIZE,
            copy_timeout: Duration::from_secs(5 * 3600),
            pool_size: 16,
            user_connections: 8,
            pool_wait_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            key_statement_timeout: Some(Duration::from_secs(5 * 60)),
            query_timeout: None,
            rate_limits: limits::RateLimits::none(),
            batch: jobs::BatchConfig::default(),
            connections: http_server::ConnectionLimits::default(),
            max_copy_decompressed: None,
            exports: query::export::Exports::default(),
        }
    }
}

/// What every handler shares: accounts, connection pools and settings. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    accounts: Accounts,
    pools: Pools,
    config: Arc<Config>,
    limiter: limits::RateLimiter,
    jobs: jobs::Jobs,
}

/// A server bound to a PostgreSQL cluster, ready to hand out its router.
#[derive(Clone)]
pub struct Server {
    state: AppState,
}

impl Server {
    /// Opens the server on the cluster reached with the superuser settings `admin` (used for
    /// metadata and provisioning only), creating its metadata on first use.
    pub async fn open(admin: tokio_postgres::Config, config: Config) -> Result<Self> {
        let accounts = Accounts::open(db::privileged(&admin)).await?;
        let pools = Pools::new(
            accounts.hosts().clone(),
            PoolSettings {
                master_connections: config.pool_size,
                user_connections: config.user_connections,
                wait_timeout: config.pool_wait_timeout,
                idle_timeout: config.pool_idle_timeout,
                key_statement_timeout: config.key_statement_timeout,
            },
        );
        migrate(
            accounts.meta(),
            &[
                (accounts::KEYS_SCHEMA_PRESENT, accounts::KEYS_SCHEMA),
                (limits::SCHEMA_PRESENT, limits::SCHEMA),
                (jobs::SCHEMA_PRESENT, jobs::SCHEMA),
                (hosts::SCHEMA_PRESENT, hosts::SCHEMA),
            ],
        )
        .await?;
        let limiter = limits::RateLimiter::new(accounts.meta().clone(), config.rate_limits.clone());
        let jobs = jobs::Jobs::new(
            accounts.meta().clone(),
            accounts.hosts().clone(),
            config.batch.clone(),
        );
        Ok(Server {
            state: AppState {
                accounts,
                pools,
                config: Arc::new(config),
                limiter,
                jobs,
            },
        })
    }

    /// Batch jobs. A server runs them only after [`Jobs::start_workers`](jobs::Jobs::start_workers)
    /// (`serve` does; account commands do not).
    pub fn jobs(&self) -> &jobs::Jobs {
        &self.state.jobs
    }

    /// Rate limits: per-user overrides and checks.
    pub fn limits(&self) -> &limits::RateLimiter {
        &self.state.limiter
    }

    /// Users and keys.
    pub fn accounts(&self) -> &Accounts {
        &self.state.accounts
    }

    /// The HTTP application.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }
}

/// Creates the metadata that later features added, in one transaction under an advisory lock
/// so that servers starting together do not race. Each `(probe, schema)` runs `schema` only if
/// the `probe` query says false: DDL on existing tables would lock them at every start.
async fn migrate(meta: &deadpool_postgres::Pool, schemas: &[(&str, &str)]) -> Result<()> {
    let mut client = meta.get().await?;
    let tx = client.transaction().await?;
    const MIGRATION_LOCK: i64 = 0x6361_7274_6f6d_6967; // "cartomig"
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    for (probe, schema) in schemas {
        let present: bool = tx.query_one(*probe, &[]).await?.get(0);
        if !present {
            tx.batch_execute(schema).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
