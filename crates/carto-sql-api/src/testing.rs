//! Test helpers: one throwaway embedded cluster per test process, and in-process servers on
//! random ports bound to it. Used by this crate's tests and by the SDK's and CLI's.
//!
//! The cluster is started once (the first test to ask starts it), with `fsync` off, in a fresh
//! directory under the system's temp dir; a watchdog stops it and removes its files once the
//! test process has exited, since test harnesses have no global teardown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::embedded::{EmbeddedCluster, EmbeddedOptions};
use crate::{Config, Server};

static CLUSTER: OnceLock<Result<tokio_postgres::Config, String>> = OnceLock::new();
static NEXT_USER: AtomicUsize = AtomicUsize::new(0);

/// The superuser settings of this process's test cluster, starting it on first use.
///
/// # Panics
/// If the cluster cannot be started: tests cannot run without it.
pub fn cluster() -> tokio_postgres::Config {
    CLUSTER
        .get_or_init(|| {
            // Started on a runtime of its own: the caller may be inside any test's runtime.
            std::thread::spawn(start_cluster)
                .join()
                .unwrap_or_else(|_| Err("cluster start panicked".into()))
        })
        .clone()
        .unwrap_or_else(|error| panic!("test cluster: {error}"))
}

fn start_cluster() -> Result<tokio_postgres::Config, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async { Ok(throwaway_cluster("test").await?.superuser_config()) })
}

/// A cluster with `fsync` off in a fresh temp directory named after `name`, stopped and removed
/// once this process has exited.
async fn throwaway_cluster(name: &str) -> Result<EmbeddedCluster, String> {
    let dir = std::env::temp_dir().join(format!("carto-rs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = EmbeddedOptions::new(&dir);
    options.unsafe_fast = true;
    let mut cluster = EmbeddedCluster::start(&options)
        .await
        .map_err(|e| format!("{e:#}"))?;
    cluster
        .stop_after_exit_of(std::process::id(), &[dir.as_path()])
        .map_err(|e| format!("{e:#}"))?;
    Ok(cluster)
}

/// Starts another throwaway cluster (for a second database host), stopped and removed once
/// the test process has exited; returns it and its superuser URL.
///
/// # Panics
/// If the cluster cannot be started.
pub async fn start_extra_cluster(name: &str) -> (EmbeddedCluster, String) {
    let cluster = throwaway_cluster(name)
        .await
        .unwrap_or_else(|e| panic!("starting cluster {name}: {e}"));
    let url = cluster.superuser_url();
    (cluster, url)
}

/// A server running in this process on `127.0.0.1`, on a port of its own.
pub struct TestServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    server: Server,
    task: tokio::task::JoinHandle<()>,
}

/// A user created for one test.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// User name.
    pub name: String,
    /// Master API key.
    pub api_key: String,
}

impl TestServer {
    /// Starts a server with the default settings.
    pub async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    /// Starts a server with `config`.
    pub async fn with_config(mut config: Config) -> Self {
        // Every test's server ends like a crashed one when its test ends, and all of them share
        // this process's job queue, so a job can lose several servers in a row under load. The
        // cap protects production from a job that kills its server; here it would only turn
        // other tests' endings into failed jobs.
        if config.batch.max_restarts == crate::jobs::BatchConfig::default().max_restarts {
            config.batch.max_restarts = 1000;
        }
        let limits = config.connections.clone();
        let server = Server::open(cluster(), config)
            .await
            .expect("opening the test server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a port");
        let addr = listener.local_addr().expect("local address");
        server.jobs().start_workers();
        let router = server.router();
        let task = tokio::spawn(async move {
            let _ =
                crate::http_server::serve(listener, router, limits, std::future::pending()).await;
        });
        TestServer { addr, server, task }
    }

    /// The server's users and keys.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Creates a user with a fresh name and a random master key, on the default host (a test
    /// registering another host must not draw other tests' users there).
    pub async fn create_user(&self) -> TestUser {
        self.create_user_on(crate::hosts::DEFAULT_HOST).await
    }

    /// Creates a user with a fresh name and a random master key on database host `host`.
    pub async fn create_user_on(&self, host: &str) -> TestUser {
        let name = format!("u{}", NEXT_USER.fetch_add(1, Ordering::SeqCst));
        let api_key = self
            .server
            .accounts()
            .create_user_on(&name, None, Some(host))
            .await
            .expect("creating a test user");
        TestUser { name, api_key }
    }

    /// `http://127.0.0.1:PORT/user/{user}/api/v2` (path style).
    pub fn api_url(&self, user: &TestUser) -> String {
        format!("http://{}/user/{}/api/v2", self.addr, user.name)
    }

    /// `http://127.0.0.1:PORT/user/{user}/` (a base URL as the SDK takes it).
    pub fn base_url(&self, user: &TestUser) -> String {
        format!("http://{}/user/{}/", self.addr, user.name)
    }

    /// A superuser connection to `user`'s database, to check what the API did.
    pub async fn superuser_client(&self, user: &TestUser) -> tokio_postgres::Client {
        let mut config = cluster();
        config.dbname(format!("carto_user_{}", user.name));
        crate::db::connect(&config)
            .await
            .expect("superuser connection")
    }
}

impl TestServer {
    /// Backends of `user`'s database, other than the asking one, running a statement that
    /// starts with `prefix` (case-insensitive).
    pub async fn running_statements(&self, user: &TestUser, prefix: &str) -> i64 {
        self.superuser_client(user)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND query ILIKE $1 || '%' AND state <> 'idle'",
                &[&prefix],
            )
            .await
            .expect("pg_stat_activity")
            .get(0)
    }

    /// Waits until no backend of `user`'s database runs a statement starting with `prefix`;
    /// false if one is still there after 15 s.
    pub async fn backends_gone(&self, user: &TestUser, prefix: &str) -> bool {
        for _ in 0..150 {
            if self.running_statements(user, prefix).await == 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for TestServer {
    /// Stops serving at once and aborts the batch workers, as if the process died.
    fn drop(&mut self) {
        self.task.abort();
        self.server.jobs().abort_workers();
    }
}
