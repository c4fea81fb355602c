//! Connections to PostgreSQL: the superuser settings used for provisioning and metadata, and one
//! connection pool per (database, role) so that every statement runs on a connection
//! authenticated as the API key's own role.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error::ApiError;

/// Pools of connections, one per (database, role), created on first use.
#[derive(Clone)]
pub struct Pools {
    /// Host and port of the cluster (Unix socket dir or TCP host); user and database unset.
    base: tokio_postgres::Config,
    max_size: usize,
    pools: Arc<Mutex<HashMap<(String, String), Pool>>>,
    notices: NoticeRoutes,
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
            notices: NoticeRoutes::default(),
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
                    let manager = Manager::from_connect(
                        config,
                        NoticeRoutingConnect {
                            routes: self.notices.clone(),
                        },
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

    /// Routes the server messages (NOTICE, WARNING, ...) that `client`'s statements raise to the
    /// returned receiver, until it is dropped. At most `capacity` are kept; later ones are dropped.
    pub async fn notices(
        &self,
        client: &Object,
        capacity: usize,
    ) -> Result<Notices, tokio_postgres::Error> {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let slot = self.notices.slot(pid);
        if let Some(slot) = &slot {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        }
        Ok(Notices { rx, tx, slot })
    }

    /// The database host for the `X-Served-By-DB-Host` header: the TCP host name, or
    /// `localhost` for a Unix socket.
    pub fn host_label(&self) -> String {
        match self.base.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "localhost".into(),
        }
    }

    /// Forgets the pool of a (database, role), e.g. after the role's password changed.
    pub fn forget(&self, database: &str, role: &str) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.remove(&(database.to_string(), role.to_string()));
    }
}

/// Where each pooled connection's server messages go: by backend pid, the listener of the
/// request using the connection, if any. A connection's entry lives as long as its task.
#[derive(Clone, Default)]
struct NoticeRoutes(Arc<Mutex<HashMap<i32, Weak<NoticeSlot>>>>);

type NoticeSlot = Mutex<Option<mpsc::Sender<DbError>>>;

impl NoticeRoutes {
    fn register(&self, pid: i32, slot: &Arc<NoticeSlot>) {
        let mut routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|_, slot| slot.strong_count() > 0);
        routes.insert(pid, Arc::downgrade(slot));
    }

    fn slot(&self, pid: i32) -> Option<Arc<NoticeSlot>> {
        let routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        routes.get(&pid).and_then(Weak::upgrade)
    }
}

/// Server messages raised while a [`Notices`] is alive.
pub struct Notices {
    rx: mpsc::Receiver<DbError>,
    /// Our own sender, to recognise it in the slot.
    tx: mpsc::Sender<DbError>,
    slot: Option<Arc<NoticeSlot>>,
}

impl Notices {
    /// The messages received so far.
    pub fn drain(&mut self) -> Vec<DbError> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let mut listener = slot.lock().unwrap_or_else(|p| p.into_inner());
            // The connection may already serve another request that installed its own.
            if listener
                .as_ref()
                .is_some_and(|tx| tx.same_channel(&self.tx))
            {
                listener.take();
            }
        }
    }
}

/// Connects like deadpool's default, but runs the connection's message loop itself so that
/// notices reach the request that raised them instead of being dropped.
struct NoticeRoutingConnect {
    routes: NoticeRoutes,
}

impl deadpool_postgres::Connect for NoticeRoutingConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, mut connection) = config.connect(NoTls).await?;
            let slot: Arc<NoticeSlot> = Arc::default();
            let task_slot = slot.clone();
            let task = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notice(notice)) => {
                            let listener = task_slot.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(tx) = listener.as_ref() {
                                // Full: the request has enough messages; drop the rest.
                                let _ = tx.try_send(notice);
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(%error, "connection closed");
                            break;
                        }
                    }
                }
            });
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            self.routes.register(pid, &slot);
            Ok((client, task))
        })
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

/// What every privileged (superuser) session is started with: a `search_path` that no tenant
/// can write to. A user's database defaults to `search_path = public, cartodb`, and the tenant
/// owns `public`: there it can create an operator, aggregate or function whose argument types
/// match a call more exactly than pg_catalog's (`=(oid, regclass)`, `count(boolean)`) and so
/// run its own code as the superuser. Given at connect time, the setting outranks database and
/// role defaults; `pg_temp` is named last so that not even the session's own temporary schema
/// comes before pg_catalog.
const PRIVILEGED_SEARCH_PATH: &str = "-c search_path=pg_catalog,pg_temp";

/// The metadata and template databases keep their objects in `public`, which only the superuser
/// can reach (CONNECT on both is revoked from PUBLIC), so their sessions create objects there
/// and find them there (after pg_catalog, which an unlisted pg_catalog always comes first).
const PRIVATE_SEARCH_PATH: &str = "-c search_path=public";

/// The superuser settings `admin` made safe for privileged work in any database: every session
/// opened from them (or from a clone with another `dbname`) resolves unqualified names in
/// pg_catalog only. The operator's own startup options are kept; ours come last and win.
pub fn privileged(admin: &tokio_postgres::Config) -> tokio_postgres::Config {
    with_options(admin, PRIVILEGED_SEARCH_PATH)
}

/// The superuser settings for `database`, one that no tenant can reach (the metadata and template
/// databases), from [`privileged`] ones.
pub fn private_database(admin: &tokio_postgres::Config, database: &str) -> tokio_postgres::Config {
    let mut config = with_options(admin, PRIVATE_SEARCH_PATH);
    config.dbname(database);
    config
}

fn with_options(config: &tokio_postgres::Config, options: &str) -> tokio_postgres::Config {
    let mut config = config.clone();
    let joined = match config.get_options() {
        Some(existing) if existing.ends_with(options) => existing.to_string(),
        Some(existing) if !existing.is_empty() => format!("{existing} {options}"),
        _ => options.to_string(),
    };
    config.options(&joined);
    config
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

/// `password` as a SCRAM-SHA-256 verifier, quoted for `CREATE ROLE ... PASSWORD`: PostgreSQL
/// stores what it is given, so the plaintext never travels in SQL text, where a statement log
/// (ours at debug level, or the server's for a failed statement) could show it.
pub fn password_literal(password: &str) -> String {
    quote_literal(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
}

/// Quotes an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
