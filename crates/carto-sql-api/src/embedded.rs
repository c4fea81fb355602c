//! The embedded PostgreSQL cluster: a private cluster created from the system's PostgreSQL
//! binaries under the server's data dir, reachable only through a Unix socket in a private
//! directory.
//!
//! PostgreSQL refuses to run as root. When this process is root, the cluster runs as an
//! unprivileged OS user (`postgres` by default, created by the distribution's package), and its
//! files live where that user can reach them: under the data dir when every parent directory is
//! searchable by it, else in a private directory under `/var/tmp` derived from the data dir's path.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{ApiError, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::process::Command;

/// The bootstrap superuser of the embedded cluster.
const SUPERUSER: &str = "postgres";

/// Unix socket paths are limited to 107 bytes on Linux; PostgreSQL appends `/.s.PGSQL.NNNNN`.
const MAX_SOCKET_DIR_LEN: usize = 90;

/// How to create and start an embedded cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The server's data dir; the cluster lives in `DIR/postgres` when reachable.
    pub data_dir: PathBuf,
    /// OS user that runs the cluster when this process is root.
    pub os_user: String,
    /// Turn off `fsync` (throwaway test clusters only).
    pub unsafe_fast: bool,
}

impl EmbeddedOptions {
    /// Options for a durable cluster under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            data_dir: data_dir.into(),
            os_user: std::env::var("CARTO_PG_OS_USER").unwrap_or_else(|_| "postgres".into()),
            unsafe_fast: false,
        }
    }
}

/// A running embedded cluster, shared by every process of this server on the same data dir
/// (e.g. `serve` and a `user add` run beside it). Each holds a shared lock on the data dir's
/// `cluster.lock` while it uses the cluster; [`EmbeddedCluster::stop`] stops the cluster only
/// when the caller is the last user, whichever process started it.
#[derive(Debug)]
pub struct EmbeddedCluster {
    bin_dir: PathBuf,
    root: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<nix::unistd::User>,
    /// The shared lock saying "in use"; `None` once stopped or handed to a watchdog.
    in_use: Option<Flock<std::fs::File>>,
    setup_lock: PathBuf,
}

impl EmbeddedCluster {
    /// Creates the cluster on first use, then starts it, or attaches to it when another process
    /// of this server (e.g. `serve` while `user add` runs) already started it.
    pub async fn start(options: &EmbeddedOptions) -> Result<Self> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("creating data dir {}", options.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&options.data_dir)?;
        // Two processes starting on one data dir at once (`serve &` then `user add`) must not
        // both run initdb, nor read a half-written cluster: set-up (and stopping) happen under
        // an exclusive `setup.lock`; a process then holds a shared `cluster.lock` for as long
        // as it uses the cluster.
        let setup = lock_blocking(data_dir.join("setup.lock"), FlockArg::LockExclusive).await?;
        let run_as = run_as_user(&options.os_user)?;
        let root = cluster_root(&data_dir, run_as.as_ref());
        let pgdata = root.join("data");
        let socket_dir = root.join("run");
        let mut cluster = EmbeddedCluster {
            bin_dir,
            root,
            pgdata,
            socket_dir,
            port: 0,
            password: String::new(),
            run_as,
            in_use: None,
            setup_lock: PathBuf::new(),
        };
        cluster.prepare_dirs()?;
        let password_file = data_dir.join("superuser-password");
        if !cluster.pgdata.join("PG_VERSION").exists() || !password_file.exists() {
            cluster.init(&password_file, options.unsafe_fast).await?;
        }
        cluster.password = std::fs::read_to_string(&password_file)
            .with_context(|| format!("reading {}", password_file.display()))?
            .trim()
            .to_string();

        if let Some(port) = cluster.running_port() {
            cluster.port = port;
        } else {
            cluster.port = rand::thread_rng().gen_range(20000..60000);
            cluster.pg_ctl_start().await?;
        }
        // Nobody holds `cluster.lock` exclusively without holding `setup.lock` too, so this
        // never waits.
        cluster.in_use =
            Some(lock_blocking(data_dir.join("cluster.lock"), FlockArg::LockShared).await?);
        cluster.setup_lock = data_dir.join("setup.lock");
        drop(setup);
        Ok(cluster)
    }

    /// The directory holding the cluster's files (data, socket, log) for `options`: where
    /// [`start`](Self::start) puts them.
    pub fn files_dir(options: &EmbeddedOptions) -> Result<PathBuf> {
        let data_dir = std::fs::canonicalize(&options.data_dir)?;
        Ok(cluster_root(
            &data_dir,
            run_as_user(&options.os_user)?.as_ref(),
        ))
    }

    /// Connection settings for the superuser (database `postgres`).
    pub fn superuser_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(SUPERUSER)
            .password(self.password.as_str())
            .dbname("postgres");
        config
    }

    /// The superuser's settings as a connection string (`key=value` form, reaching the Unix
    /// socket), e.g. to register this cluster as a database host of another server. It holds
    /// the password: never log it.
    pub fn superuser_url(&self) -> String {
        let quoted =
            |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={SUPERUSER} password={} dbname=postgres",
            quoted(&self.socket_dir.to_string_lossy()),
            self.port,
            quoted(&self.password)
        )
    }

    /// The directory holding the cluster's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port number in the socket's name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster (fast mode) unless another process still uses it.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(in_use) = self.in_use.take() else {
            return Ok(());
        };
        let _setup = lock_blocking(self.setup_lock.clone(), FlockArg::LockExclusive).await?;
        let file = in_use
            .unlock()
            .map_err(|(_, errno)| ApiError::Internal(format!("unlocking cluster.lock: {errno}")))?;
        // Only the last user gets the lock exclusively; the others leave the cluster running.
        let Ok(_last) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            return Ok(());
        };
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .await?;
        if !out.status.success() && self.running_port().is_some() {
            return Err(ApiError::Internal(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Starts the cluster again, on the same socket and port, if its postmaster is gone (killed,
    /// crashed); returns whether it did. Runs under the data dir's `setup.lock`, as starting
    /// and stopping do, so that it never races them.
    pub async fn ensure_running(&self) -> Result<bool> {
        if self.running_port().is_some() {
            return Ok(false);
        }
        let _setup = lock_blocking(self.setup_lock.clone(), FlockArg::LockExclusive).await?;
        if self.running_port().is_some() {
            return Ok(false);
        }
        self.pg_ctl_start().await?;
        Ok(true)
    }

    /// Starts a task that, every `interval`, restarts the cluster if it has died
    /// ([`ensure_running`](Self::ensure_running)), until the returned handle is aborted. Abort
    /// it before [`stop`](Self::stop), or it starts the cluster again.
    pub fn supervise(&self, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        // A copy without the "in use" lock, which stays with `self`.
        let cluster = EmbeddedCluster {
            bin_dir: self.bin_dir.clone(),
            root: self.root.clone(),
            pgdata: self.pgdata.clone(),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            password: self.password.clone(),
            run_as: self.run_as.clone(),
            in_use: None,
            setup_lock: self.setup_lock.clone(),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match cluster.ensure_running().await {
                    Ok(true) => {
                        tracing::warn!("the embedded PostgreSQL cluster had stopped: restarted it")
                    }
                    Ok(false) => {}
                    // Its backends may still be exiting; the next tick tries again.
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "restarting the embedded PostgreSQL cluster")
                    }
                }
            }
        })
    }

    /// Makes sure the cluster goes away once `pid` (normally this process) has exited, even if
    /// it never calls [`stop`](Self::stop): a detached watchdog stops the cluster and, when
    /// `remove_dirs` is set, deletes its files. Test harnesses have no global teardown, so their
    /// throwaway clusters rely on this.
    pub fn stop_after_exit_of(&mut self, pid: u32, remove_dirs: &[&Path]) -> Result<()> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let as_user = match &self.run_as {
            Some(user) => format!("runuser -u {} -- ", shell_quote(OsStr::new(&user.name))),
            None => String::new(),
        };
        let mut script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {as_user}{} -D {} -m immediate stop",
            shell_quote(pg_ctl.as_os_str()),
            shell_quote(self.pgdata.as_os_str())
        );
        for dir in remove_dirs.iter().copied().chain([self.root.as_path()]) {
            script.push_str(&format!("; rm -rf {}", shell_quote(dir.as_os_str())));
        }
        std::process::Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the cluster watchdog")?;
        // The watchdog now owns the shutdown; this process keeps its shared lock until it exits.
        if let Some(in_use) = self.in_use.take() {
            std::mem::forget(in_use);
        }
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<()> {
        for dir in [&self.root, &self.pgdata, &self.socket_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some(user) = &self.run_as {
                nix::unistd::chown(dir.as_path(), Some(user.uid), Some(user.gid))?;
            }
        }
        Ok(())
    }

    async fn init(&self, password_file: &Path, unsafe_fast: bool) -> Result<()> {
        let password: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        // A data directory without its password is what an interrupted first start leaves.
        if self.pgdata.join("PG_VERSION").exists() {
            return Err(ApiError::Internal(format!(
                "{} holds a cluster but its password file {} is missing: remove the cluster's \
                 directory {} to start afresh",
                self.pgdata.display(),
                password_file.display(),
                self.root.display()
            )));
        }
        // initdb reads the password from a file the cluster's OS user can read.
        let pwfile = self.root.join("initdb-pwfile");
        std::fs::write(&pwfile, &password)?;
        if let Some(user) = &self.run_as {
            nix::unistd::chown(pwfile.as_path(), Some(user.uid), Some(user.gid))?;
        }
        let out = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .await
            .context("running initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(ApiError::Internal(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut settings = format!(
            "\n# carto-sql-api: private cluster, Unix socket only\nlisten_addresses = ''\n\
             unix_socket_directories = '{}'\nmax_connections = 300\n",
            self.socket_dir.display()
        );
        if unsafe_fast {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf = self.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        write_private(password_file, &password)?;
        Ok(())
    }

    /// The port of a cluster already running on this data directory, from `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let mut lines = pid_file.lines();
        let pid: i32 = lines.next()?.trim().parse().ok()?;
        let port: u16 = lines.nth(2)?.trim().parse().ok()?;
        // A stale pid file survives a crash; the process must exist.
        Path::new(&format!("/proc/{pid}")).exists().then_some(port)
    }

    async fn pg_ctl_start(&self) -> Result<()> {
        let log = self.root.join("postgres.log");
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .output()
            .await
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            return Err(ApiError::Internal(format!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        Ok(())
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.stdin(Stdio::null()).current_dir(&self.root);
        if let Some(user) = &self.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            command.env("HOME", &user.dir).env("USER", &user.name);
        }
        command
    }
}

/// The OS user the cluster runs as: `os_user` when this process is root, else this process's.
fn run_as_user(os_user: &str) -> Result<Option<nix::unistd::User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(os_user)?.ok_or_else(|| {
        ApiError::Internal(format!(
            "running as root, PostgreSQL needs an unprivileged OS user to run as, and user \
             '{os_user}' does not exist (install the postgresql package, or set CARTO_PG_OS_USER)"
        ))
    })?;
    Ok(Some(user))
}

/// Finds the directory of `initdb`/`pg_ctl`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir).ok_or_else(|| {
        ApiError::Internal(
            "no PostgreSQL server binaries found (no initdb via pg_config --bindir or in \
             /usr/lib/postgresql/*/bin): install postgresql and postgis, or pass --database-url"
                .into(),
        )
    })
}

/// Where the cluster's files go: `DATA_DIR/postgres` if the cluster's OS user can reach it and
/// the socket path fits, else a private directory under `/var/tmp` named after the data dir.
fn cluster_root(data_dir: &Path, run_as: Option<&nix::unistd::User>) -> PathBuf {
    let preferred = data_dir.join("postgres");
    let reachable = match run_as {
        None => true,
        Some(user) => data_dir
            .ancestors()
            .all(|dir| searchable_by(dir, user.uid.as_raw())),
    };
    if reachable && preferred.join("run").as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        return preferred;
    }
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/var/tmp/carto-rs-{}", hex::encode(&digest[..8])))
}

fn searchable_by(dir: &Path, uid: u32) -> bool {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.uid() == uid => meta.mode() & 0o100 != 0,
        // Group membership is not checked: only "other" counts, which is what a fresh
        // unprivileged user has.
        Ok(meta) => meta.mode() & 0o001 != 0,
        Err(_) => false,
    }
}

/// Waits (off the async runtime) until this process holds a lock of kind `kind` on `path`
/// (created if absent); the lock goes when the returned value is dropped.
async fn lock_blocking(path: PathBuf, kind: FlockArg) -> Result<Flock<std::fs::File>> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Flock::lock(file, kind).map_err(|(_, errno)| {
            ApiError::Internal(format!("locking {}: {errno}", path.display()))
        })
    })
    .await?
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn shell_quote(value: &OsStr) -> String {
    format!("'{}'", value.to_string_lossy().replace('\'', r"'\''"))
}
