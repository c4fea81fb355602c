//! Connections to PostgreSQL: the superuser settings used for provisioning and metadata, and one
//! connection pool per (host, database, role) so that every statement runs on a connection
//! authenticated as the API key's own role, on the host holding its user's database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::accounts::{ApiKey, KeyKind};
use crate::error::ApiError;
use crate::hosts::Hosts;

/// How the pools connect, and how much of PostgreSQL each user may hold.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections of each master key's pool.
    pub master_connections: usize,
    /// Connections the public role and the regular keys of one user may hold together, busy or
    /// idle: what anonymous callers can take from PostgreSQL's `max_connections`.
    pub user_connections: usize,
    /// Longest a request waits for a connection before it is answered [`ApiError::busy`].
    pub wait_timeout: Duration,
    /// Pooled connections unused for this long are closed, giving their room back.
    pub idle_timeout: Duration,
    /// `statement_timeout` of the public role and regular keys, set when connecting so that
    /// no role or database default can change it; `None`: none.
    pub key_statement_timeout: Option<Duration>,
}

/// Pools of connections, one per (host, database, role), created on first use.
///
/// Whatever a key's role does to itself cannot change how later connections are made: a
/// connection refused for a wrong password gets the role's password reset from the metadata
/// and is retried once, and a new connection finding defaults set on its own role (`ALTER ROLE
/// CURRENT_USER SET ...`) has them removed and is reopened. Both repairs run as the superuser.
#[derive(Clone)]
pub(crate) struct Pools {
    /// The database hosts, and their superusers to repair roles with.
    hosts: Hosts,
    settings: Arc<PoolSettings>,
    pools: Arc<Mutex<HashMap<PoolKey, RolePool>>>,
    /// Per user database, the connections its public role and regular keys may still open.
    shared_room: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    notices: NoticeRoutes,
}

/// (host, database, role); host `None` is the default host.
type PoolKey = (Option<String>, String, String);

/// The pool of one (host, database, role).
#[derive(Clone)]
struct RolePool {
    pool: Pool,
    /// Whether its connections count against the user's shared room (all but master keys).
    shared: bool,
}

/// A role to connect as: its name and password, and the database.
#[derive(Debug, Clone)]
pub struct RoleLogin {
    /// Database host holding the database; `None`: the default host.
    pub host: Option<String>,
    /// Database name.
    pub database: String,
    /// PostgreSQL role name.
    pub role: String,
    /// The role's password.
    pub password: String,
}

impl Pools {
    /// Pools reaching the clusters of `hosts`. Within a Tokio runtime, a task closes idle
    /// connections as `settings.idle_timeout` says.
    pub fn new(hosts: Hosts, settings: PoolSettings) -> Self {
        let pools = Pools {
            hosts,
            settings: Arc::new(settings),
            pools: Arc::default(),
            shared_room: Arc::default(),
            notices: NoticeRoutes::default(),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(close_idle(
                Arc::downgrade(&pools.pools),
                pools.settings.idle_timeout,
            ));
        }
        pools
    }

    /// A pooled connection authenticated as `key`'s role on its database.
    ///
    /// Connections are recycled with `DISCARD`-style cleaning (`RESET ALL` and friends), so
    /// session settings such as a COPY's `statement_timeout` never leak into the next request.
    /// A request finding no connection within the wait timeout gets [`ApiError::busy`]; one
    /// finding PostgreSQL unreachable gets [`ApiError::unavailable`].
    pub async fn get(&self, key: &ApiKey) -> Result<Object, ApiError> {
        let shared = key.kind != KeyKind::Master;
        let pool = match self.existing_pool(&key.login) {
            Some(pool) => pool,
            None => {
                let admin = self.hosts.admin(key.login.host.as_deref()).await?;
                self.pool(&key.login, &admin, shared)
            }
        };
        let checkout = async {
            if shared {
                self.make_room(&key.login, &pool);
            }
            Ok(pool.get().await?)
        };
        tokio::time::timeout(self.settings.wait_timeout, checkout)
            .await
            .unwrap_or_else(|_| Err(ApiError::busy()))
    }

    /// The pool of `login`'s (host, database, role), if it was made already.
    fn existing_pool(&self, login: &RoleLogin) -> Option<Pool> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.get(&pool_key(login)).map(|entry| entry.pool.clone())
    }

    /// The pool of `login`'s (host, database, role), created on first use; `admin` is the
    /// superuser of the login's host.
    fn pool(&self, login: &RoleLogin, admin: &tokio_postgres::Config, shared: bool) -> Pool {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let key = pool_key(login);
        if let Some(existing) = pools.get(&key) {
            return existing.pool.clone();
        }
        let mut config = role_address(admin);
        config
            .application_name("carto-sql-api")
            .dbname(&login.database)
            .user(&login.role)
            .password(&login.password);
        let (room, max_size) = if shared {
            if let Some(timeout) = self.settings.key_statement_timeout {
                config.options(statement_timeout_option(timeout));
            }
            let room = self.shared_room(&login.database);
            (Some(room), self.settings.user_connections)
        } else {
            (None, self.settings.master_connections)
        };
        let manager = Manager::from_connect(
            config,
            RoleConnect {
                routes: self.notices.clone(),
                admin: admin.clone(),
                room,
            },
            ManagerConfig {
                recycling_method: RecyclingMethod::Clean,
            },
        );
        // Building a pool without a runtime hook cannot fail.
        let pool = Pool::builder(manager)
            .max_size(max_size.max(1))
            .build()
            .expect("pool without runtime hooks");
        pools.insert(
            key,
            RolePool {
                pool: pool.clone(),
                shared,
            },
        );
        pool
    }

    /// The room shared by the public role and the regular keys of the user of `database`.
    fn shared_room(&self, database: &str) -> Arc<Semaphore> {
        let mut rooms = self.shared_room.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .entry(database.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.user_connections.max(1))))
            .clone()
    }

    /// When the user's shared room is full and `pool` has no idle connection to offer, closes
    /// the idle connections of the user's other shared pools, so that a key used now is not
    /// kept waiting by connections another key no longer uses.
    fn make_room(&self, login: &RoleLogin, pool: &Pool) {
        if self.shared_room(&login.database).available_permits() > 0 || pool.status().available > 0
        {
            return;
        }
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, database, role), other) in pools.iter() {
            if other.shared && *database == login.database && *role != login.role {
                other.pool.retain(|_, _| false);
            }
        }
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

    /// The database host for the `X-Served-By-DB-Host` header: the TCP host name of the
    /// cluster holding `login`'s database, or `localhost` for a Unix socket.
    pub async fn host_label(&self, login: &RoleLogin) -> String {
        let admin = self.hosts.admin(login.host.as_deref()).await;
        match admin
            .as_ref()
            .ok()
            .and_then(|admin| admin.get_hosts().first())
        {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "localhost".into(),
        }
    }
}

fn pool_key(login: &RoleLogin) -> PoolKey {
    (
        login.host.clone(),
        login.database.clone(),
        login.role.clone(),
    )
}

/// How long opening a TCP connection may take before PostgreSQL counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes, every half `idle_timeout` (at least every second), the pooled connections unused
/// for `idle_timeout`, until the pools are gone.
async fn close_idle(pools: Weak<Mutex<HashMap<PoolKey, RolePool>>>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let pools: Vec<Pool> = {
            let pools = pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.values().map(|entry| entry.pool.clone()).collect()
        };
        for pool in pools {
            pool.retain(|_, metrics| metrics.last_used() < idle_timeout);
        }
    }
}

/// The startup `options` setting `statement_timeout` to `timeout`: such a setting outranks role
/// and database defaults.
fn statement_timeout_option(timeout: Duration) -> String {
    format!(
        "-c statement_timeout={}",
        crate::timeouts::postgres_millis(timeout)
    )
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
pub(crate) struct Notices {
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

/// Connects as a key's role like deadpool's default, but repairs what the role may have done to
/// itself (see [`Pools`]), holds a place in the user's shared room for as long as the
/// connection lives, and runs the connection's message loop itself so that notices reach the
/// request that raised them instead of being dropped.
struct RoleConnect {
    routes: NoticeRoutes,
    admin: tokio_postgres::Config,
    /// The user's shared room, for the public role and regular keys.
    room: Option<Arc<Semaphore>>,
}

type Connected = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

impl deadpool_postgres::Connect for RoleConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<Connected, tokio_postgres::Error>> {
        let config = config.clone();
        Box::pin(async move {
            let place = match &self.room {
                // The semaphore is never closed.
                Some(room) => room.clone().acquire_owned().await.ok(),
                None => None,
            };
            let place = Arc::new(place);
            let role = config.get_user().unwrap_or_default().to_string();
            let connected = match self.open(&config, &place).await {
                Err(error) if is_refused_login(&error) => {
                    let password = config.get_password().unwrap_or_default();
                    reset_password(&self.admin, &role, password).await?;
                    tracing::warn!(%role, "a role's password had changed: reset it");
                    self.open(&config, &place).await?
                }
                // The role's own `statement_timeout` (e.g. 1 ms) can cancel the connection's
                // first query on a busy machine, before its defaults could be looked at.
                Err(error) if error.code() == Some(&SqlState::QUERY_CANCELED) => {
                    reset_role_defaults(&self.admin, &role).await?;
                    tracing::warn!(%role, "a role's own statement timeout cancelled connecting: removed its defaults");
                    return self.open(&config, &place).await;
                }
                other => other?,
            };
            if !has_own_defaults(&connected.0).await {
                return Ok(connected);
            }
            drop(connected);
            reset_role_defaults(&self.admin, &role).await?;
            tracing::warn!(%role, "a role had set its own defaults: removed them");
            self.open(&config, &place).await
        })
    }
}

/// Where the cluster that `admin` reaches is (hosts, ports, connect timeout), without its user,
/// password, database or startup options: the start of every connection as a key's role.
pub(crate) fn role_address(admin: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    for host in admin.get_hosts() {
        match host {
            tokio_postgres::config::Host::Tcp(h) => config.host(h),
            tokio_postgres::config::Host::Unix(p) => config.host_path(p),
        };
    }
    for port in admin.get_ports() {
        config.port(*port);
    }
    config.connect_timeout(CONNECT_TIMEOUT);
    config
}

/// One connection as `config`'s role outside any pool (a batch job's), repaired like pooled
/// ones (see [`Pools`]): what the role did to its own password or defaults does not stop it.
/// The returned task owns the socket: aborting it closes the connection.
pub(crate) async fn connect_role(
    admin: &tokio_postgres::Config,
    config: &tokio_postgres::Config,
) -> Result<Connected, tokio_postgres::Error> {
    use deadpool_postgres::Connect;
    let connect = RoleConnect {
        routes: NoticeRoutes::default(),
        admin: admin.clone(),
        room: None,
    };
    connect.connect(config).await
}

impl RoleConnect {
    /// Opens one connection; its message loop keeps `place` until the connection closes.
    async fn open(
        &self,
        config: &tokio_postgres::Config,
        place: &Arc<Option<OwnedSemaphorePermit>>,
    ) -> Result<Connected, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let slot: Arc<NoticeSlot> = Arc::default();
        let task_slot = slot.clone();
        let place = place.clone();
        let task = tokio::spawn(async move {
            let _place = place;
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
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await?
            .get(0);
        self.routes.register(pid, &slot);
        Ok((client, task))
    }
}

/// Whether PostgreSQL refused the login itself (wrong password, or no such login).
fn is_refused_login(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

/// Whether the connected role has defaults of its own (`ALTER ROLE ... SET`, in any database);
/// also true when that cannot be told, since a role's own defaults can break the check itself.
/// It runs under the role's search_path, hence every name and operator schema-qualified.
async fn has_own_defaults(client: &tokio_postgres::Client) -> bool {
    let check = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_db_role_setting s \
             WHERE s.setrole OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r \
             WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER))",
            &[],
        )
        .await;
    match check {
        Ok(row) => row.get(0),
        Err(error) => {
            tracing::debug!(%error, "checking a role's own defaults");
            true
        }
    }
}

/// Sets `role`'s password back to `password` (the metadata's), as a SCRAM verifier computed
/// here so that the password itself is never in SQL text nor in PostgreSQL's log.
async fn reset_password(
    admin: &tokio_postgres::Config,
    role: &str,
    password: &[u8],
) -> Result<(), tokio_postgres::Error> {
    connect(admin)
        .await?
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(role),
            password_literal(password)
        ))
        .await
}

/// Removes every default `role` set on itself, in every database.
async fn reset_role_defaults(
    admin: &tokio_postgres::Config,
    role: &str,
) -> Result<(), tokio_postgres::Error> {
    let client = connect(admin).await?;
    let rows = client
        .query(
            "SELECT d.datname FROM pg_catalog.pg_db_role_setting s \
             JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.setrole \
             LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.setdatabase \
             WHERE r.rolname OPERATOR(pg_catalog.=) $1",
            &[&role],
        )
        .await?;
    for row in rows {
        let statement = match row.get::<_, Option<String>>(0) {
            Some(database) => format!(
                "ALTER ROLE {} IN DATABASE {} RESET ALL",
                quote_ident(role),
                quote_ident(&database)
            ),
            None => format!("ALTER ROLE {} RESET ALL", quote_ident(role)),
        };
        client.batch_execute(&statement).await?;
    }
    Ok(())
}

/// Takes a connection out of its pool and closes it: for a connection that was busy when its
/// request ended (client gone, COPY aborted), which must never serve another request.
pub(crate) fn discard(client: Object) {
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

/// Sets the session's `statement_timeout` to `timeout` (zero: none, as PostgreSQL reads 0).
/// Pooled connections are reset before they serve again.
pub(crate) async fn set_statement_timeout(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            crate::timeouts::postgres_millis(timeout)
        ))
        .await
}

pub(crate) use carto_quote::{ident as quote_ident, literal as quote_literal};

/// `password` as a SCRAM-SHA-256 verifier, quoted for `CREATE ROLE ... PASSWORD`: PostgreSQL
/// stores what it is given, so the plaintext never travels in SQL text, where a statement log
/// (ours at debug level, or the server's for a failed statement) could show it.
pub(crate) fn password_literal(password: &[u8]) -> String {
    quote_literal(&postgres_protocol::password::scram_sha_256(password))
}
