//! Connections to PostgreSQL: the superuser settings used for provisioning and metadata, and one
//! connection pool per (database, role) so that every statement runs on a connection
//! authenticated as the API key's own role.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::error::ApiError;

/// Pools of connections, one per (database, role), created on first use.
#[derive(Clone)]
pub struct Pools {
    /// Host and port of the cluster (Unix socket dir or TCP host); user and database unset.
    base: tokio_postgres::Config,
    max_size: usize,
    pools: Arc<Mutex<HashMap<(String, String), Pool>>>,
}

/// A role to connect as: its name and password, and the database.
#[derive(Debug, Clone)]
pub struct RoleLogin {
    /// Database name.
    pub database: String,
    /// PostgreSQL role name.
    pub role: String,
    /// The role's password.
    pub password: String,
}

impl Pools {
    /// Pools reaching the cluster that `cluster` points at, each holding up to `max_size`
    /// connections.
    pub fn new(cluster: &tokio_postgres::Config, max_size: usize) -> Self {
        let mut base = tokio_postgres::Config::new();
        for host in cluster.get_hosts() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => base.host(h),
                tokio_postgres::config::Host::Unix(p) => base.host_path(p),
            };
        }
        for port in cluster.get_ports() {
            base.port(*port);
        }
        base.application_name("carto-sql-api");
        Pools {
            base,
            max_size,
            pools: Arc::default(),
        }
    }

    /// A pooled connection authenticated as `login.role` on `login.database`.
    ///
    /// Connections are recycled with `DISCARD`-style cleaning (`RESET ALL` and friends), so
    /// session settings such as a COPY's `statement_timeout` never leak into the next request.
    pub async fn get(&self, login: &RoleLogin) -> Result<Object, ApiError> {
        let pool = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools
                .entry((login.database.clone(), login.role.clone()))
                .or_insert_with(|| {
                    let mut config = self.base.clone();
                    config
                        .dbname(&login.database)
                        .user(&login.role)
                        .password(&login.password);
                    let manager = Manager::from_config(
                        config,
                        NoTls,
                        ManagerConfig {
                            recycling_method: RecyclingMethod::Clean,
                        },
                    );
                    // Building a pool without a runtime hook cannot fail.
                    Pool::builder(manager)
                        .max_size(self.max_size)
                        .build()
                        .expect("pool without runtime hooks")
                })
                .clone()
        };
        Ok(pool.get().await?)
    }

    /// Forgets the pool of a (database, role), e.g. after the role's password changed.
    pub fn forget(&self, database: &str, role: &str) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.remove(&(database.to_string(), role.to_string()));
    }
}

/// Takes a connection out of its pool and closes it: for a connection that was busy when its
/// request ended (client gone, COPY aborted), which must never serve another request.
pub fn discard(client: Object) {
    let client = Object::take(client);
    // Ask the backend to stop whatever it is doing; closing the socket then ends it.
    let token = client.cancel_token();
    tokio::spawn(async move {
        let _ = token.cancel_query(NoTls).await;
    });
    drop(client);
}

/// Connects once, outside any pool (provisioning and metadata set-up).
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed");
        }
    });
    Ok(client)
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
