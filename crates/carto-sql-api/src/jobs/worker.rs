//! The workers: a dispatcher per server picks users with pending jobs, a worker per user runs
//! one job, a sweeper re-queues jobs whose server died.
//!
//! **Re-queue, not fail, after a crash**, without running anything twice. A server can die
//! between a query's commit and the save of its status, and PostgreSQL may even commit a query
//! whose client is gone (it notices only when it next reads or writes the socket). So each query
//! starts with a commit marker in its own transaction:
//! `/* {job_id} */ INSERT INTO cartodb.cdb_batch_runs VALUES ('{job_id}', '{step}'); {query}`,
//! which commits if and only if (the first transaction of) the query does. Re-queueing a job
//! first terminates any backend still running it, then marks each interrupted step done if its
//! marker exists and pending otherwise, and the job carries on from there: what the user asked
//! for, and what upstream does on shutdown. Statements that refuse to run inside a transaction
//! block or a multi-statement string (`VACUUM`, `... CONCURRENTLY`, ...) cannot carry a marker;
//! they run bare and may run again after a crash (they are idempotent maintenance anyway). A job
//! re-queued [`BatchConfig::max_restarts`](super::BatchConfig::max_restarts) times is failed
//! instead, in case it is what kills servers.
//!
//! Who runs a user is decided by a session advisory lock held on the worker's own metadata
//! connection for as long as it runs that user's job: across all servers one query per user,
//! and if the server dies the lock goes with its connection, which is how the sweeper tells an
//! orphan from a job that is merely long.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

use super::model::{entries_mut, fill_template, set, status_of, Kind, Status};
use super::{Inner, JobRow, Jobs, COLUMNS, USER_LOCK};
use crate::accounts::META_DB;

/// How often a running job's status is read back, so a cancel or a lost lock is noticed even
/// when the cancel request could not reach the backend.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How often finished jobs are looked at for expiry.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// The commit markers of batch steps, in every user database (created on first use, owned by
/// the superuser; job roles may only insert).
const MARKERS_SQL: &str = "CREATE TABLE IF NOT EXISTS cartodb.cdb_batch_runs ( \
        job_id text NOT NULL, step text NOT NULL, \
        committed_at timestamptz NOT NULL DEFAULT pg_catalog.now(), PRIMARY KEY (job_id, step)); \
    REVOKE ALL ON cartodb.cdb_batch_runs FROM PUBLIC; \
    DELETE FROM cartodb.cdb_batch_runs WHERE committed_at OPERATOR(pg_catalog.<) \
        (pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days')";

/// Step name of a simple job's query.
pub(super) const SIMPLE_STEP: &str = "s";
/// Step name of a fallback job's own `onsuccess`/`onerror`.
pub(super) const JOB_FALLBACK_STEP: &str = "j";
/// Step name of the `i`th query of an array or fallback job.
pub(super) fn query_step(i: usize) -> String {
    format!("q{i}")
}
/// Step name of the fallback of the `i`th query of a fallback job.
pub(super) fn fallback_step(i: usize) -> String {
    format!("f{i}")
}

/// Whether PostgreSQL refuses `sql` inside a transaction block or a multi-statement string, so
/// that it cannot carry a commit marker.
fn refuses_transactions(sql: &str) -> bool {
    let Ok(tokens) = crate::sql_text::tokenize(sql) else {
        return true;
    };
    let words: Vec<_> = tokens.iter().map(|(_, t)| t).collect();
    let first = |w: &str| words.first().is_some_and(|t| t.is_word(w));
    let second = |w: &str| words.get(1).is_some_and(|t| t.is_word(w));
    first("vacuum")
        || first("cluster")
        || first("reindex")
        || (first("alter") && second("system"))
        || ((first("create") || first("drop")) && (second("database") || second("tablespace")))
        || words.iter().any(|t| t.is_word("concurrently"))
}

/// Users with pending jobs and no running one, oldest waiting first.
const CANDIDATES: &str = "SELECT p.username, (u.id % 2147483647)::int4 \
    FROM batch_jobs p JOIN users u ON u.username = p.username \
    WHERE p.status = 'pending' AND NOT EXISTS \
        (SELECT 1 FROM batch_jobs r WHERE r.username = p.username AND r.status = 'running') \
    GROUP BY p.username, u.id ORDER BY min(p.created_at) LIMIT 100";

/// A connection whose socket closes when it is dropped, even mid-query (a plain client would
/// keep its connection task alive until the query ends).
struct OwnedConnection {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl OwnedConnection {
    async fn open(config: &tokio_postgres::Config) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(OwnedConnection { client, task })
    }
}

impl Drop for OwnedConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn meta_config(inner: &Inner) -> tokio_postgres::Config {
    let mut config = crate::db::private_database(&inner.admin, META_DB);
    config.application_name("carto-sql-api batch");
    config
}

/// The dispatcher: fills free worker slots, wakes on new local jobs, finished workers and a
/// timer (jobs queued through other servers, orphans, expiry); on shutdown waits for the
/// workers to re-queue their jobs.
pub(super) async fn dispatch(jobs: Jobs) {
    let inner = &jobs.inner;
    let mut workers: JoinSet<()> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut executed: HashMap<String, u64> = HashMap::new();
    let mut last_expiry: Option<Instant> = None;
    let mut tick = tokio::time::interval(inner.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = true;
    loop {
        if housekeeping {
            housekeeping = false;
            if let Err(error) = sweep(inner).await {
                tracing::warn!(error = format!("{error:#}"), "batch: re-queueing orphans");
            }
            if last_expiry.map_or(true, |t| t.elapsed() >= EXPIRY_INTERVAL) {
                last_expiry = Some(Instant::now());
                if let Err(error) = expire(inner).await {
                    tracing::warn!(error = format!("{error:#}"), "batch: expiring jobs");
                }
            }
        }
        if busy.len() < inner.config.workers {
            if let Err(error) = fill(&jobs, &mut workers, &mut busy, &executed).await {
                tracing::warn!(error = format!("{error:#}"), "batch: starting workers");
            }
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            _ = inner.wake.notified() => {}
            Some(done) = workers.join_next_with_id(), if !workers.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(error) => error.id(),
                };
                if let Some(user) = busy.remove(&id) {
                    *executed.entry(user).or_default() += 1;
                }
            }
            _ = tick.tick() => housekeeping = true,
        }
    }
    while workers.join_next().await.is_some() {}
}

/// Starts workers for candidate users, fewest jobs run here first, then oldest waiting.
async fn fill(
    jobs: &Jobs,
    workers: &mut JoinSet<()>,
    busy: &mut HashMap<tokio::task::Id, String>,
    executed: &HashMap<String, u64>,
) -> Result<()> {
    let inner = &jobs.inner;
    let rows = inner.meta.get().await?.query(CANDIDATES, &[]).await?;
    let mut candidates: Vec<(usize, String, i32)> = rows
        .iter()
        .enumerate()
        .map(|(order, row)| (order, row.get(0), row.get(1)))
        .collect();
    candidates.sort_by_key(|(order, user, _)| (executed.get(user).copied().unwrap_or(0), *order));
    for (_, user, lock_id) in candidates {
        if busy.len() >= inner.config.workers {
            break;
        }
        if busy.values().any(|u| *u == user) {
            continue;
        }
        let lock = OwnedConnection::open(&meta_config(inner)).await?;
        let held: bool = lock
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&USER_LOCK, &lock_id],
            )
            .await?
            .get(0);
        if held {
            let handle = workers.spawn(run_user(jobs.clone(), user.clone(), lock));
            busy.insert(handle.id(), user);
        }
    }
    Ok(())
}

/// Claims and runs `user`'s oldest pending job. Dropping `lock` at the end releases the user.
async fn run_user(jobs: Jobs, user: String, lock: OwnedConnection) {
    let claimed = lock
        .client
        .query_opt(
            &format!(
                "UPDATE batch_jobs SET status = 'running', updated_at = clock_timestamp() \
                 WHERE job_id = (SELECT job_id FROM batch_jobs \
                     WHERE username = $1 AND status = 'pending' \
                     ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            ),
            &[&user],
        )
        .await;
    match claimed {
        Ok(Some(row)) => {
            let job = JobRow::from_row(&row);
            let id = job.id.clone();
            if let Err(error) = run_job(&jobs, &lock, job).await {
                tracing::warn!(error = format!("{error:#}"), job = id, "batch job");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, user, "batch: claiming a job"),
    }
}

/// Why a query stopped without a result of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// The job is no longer `running` (cancelled by its user); that change is already saved.
    Cancelled,
    /// The server is shutting down: the job goes back to the queue.
    Shutdown,
    /// The worker's metadata connection (and with it the user lock) is gone: another server
    /// may take the job over, so this worker must write nothing more.
    LockLost,
}

struct Run<'a> {
    inner: &'a Inner,
    lock: &'a OwnedConnection,
    conn: OwnedConnection,
    user_timeout: Duration,
}

async fn run_job(jobs: &Jobs, lock: &OwnedConnection, mut job: JobRow) -> Result<()> {
    let inner = &jobs.inner;
    // Only the role's name is stored with the job: its password is looked up now, so a key
    // deleted meanwhile cannot run anything.
    let row = lock
        .client
        .query_opt(
            "SELECT u.database, k.db_password, l.timeout_ms FROM users u \
             LEFT JOIN api_keys k ON k.username = u.username AND k.db_role = $2 \
             LEFT JOIN batch_limits l ON l.username = u.username WHERE u.username = $1",
            &[&job.username, &job.db_role],
        )
        .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let database: String = row.get(0);
    let password: Option<String> = row.get(1);
    let user_timeout = row
        .get::<_, Option<i64>>(2)
        .map(|ms| Duration::from_millis(ms.max(1) as u64))
        .unwrap_or(inner.config.query_timeout);
    let Some(password) = password else {
        return fail_whole_job(
            lock,
            &mut job,
            "The API key that created this job no longer exists",
        )
        .await;
    };
    let mut config = tokio_postgres::Config::new();
    for host in inner.admin.get_hosts() {
        match host {
            tokio_postgres::config::Host::Tcp(h) => config.host(h),
            tokio_postgres::config::Host::Unix(p) => config.host_path(p),
        };
    }
    for port in inner.admin.get_ports() {
        config.port(*port);
    }
    config
        .user(&job.db_role)
        .password(&password)
        .dbname(&database)
        .application_name("carto-sql-api batch");
    // The marker table, and the role's right to write it.
    let mut admin_db = inner.admin.clone();
    admin_db.dbname(&database);
    let prepared = async {
        let admin = crate::db::connect(&admin_db).await?;
        admin
            .batch_execute(&format!(
                "{MARKERS_SQL}; GRANT INSERT ON cartodb.cdb_batch_runs TO {}",
                crate::db::quote_ident(&job.db_role)
            ))
            .await
    }
    .await;
    if let Err(error) = prepared {
        let reason = format!("Could not prepare the database: {}", message(&error));
        return fail_whole_job(lock, &mut job, &reason).await;
    }
    let conn = match OwnedConnection::open(&config).await {
        Ok(conn) => conn,
        Err(error) => {
            let reason = format!("Could not connect to the database: {}", message(&error));
            return fail_whole_job(lock, &mut job, &reason).await;
        }
    };
    // Should this server die mid-query, the backend notices its client is gone within a second
    // (PostgreSQL 14+; older servers refuse the setting, which only makes that slower).
    let _ = conn
        .client
        .batch_execute("SET client_connection_check_interval = '1s'")
        .await;
    let run = Run {
        inner,
        lock,
        conn,
        user_timeout,
    };
    let outcome = match job.kind {
        Kind::Simple => run.simple(&mut job).await,
        Kind::Array => run.array(&mut job).await,
        Kind::Fallback => run.fallback(&mut job).await,
    };
    if let Err(why) = outcome {
        if why == Interrupt::Shutdown {
            job.requeue();
            let _ = save(lock, &job).await;
        }
    }
    Ok(())
}

/// A job that cannot start (its key is gone, its database unreachable) fails as a whole.
async fn fail_whole_job(lock: &OwnedConnection, job: &mut JobRow, reason: &str) -> Result<()> {
    job.status = Status::Failed;
    job.failed_reason = Some(reason.to_string());
    if let Some(entries) = entries_mut(job.kind, &mut job.query) {
        if let Some(first) = entries
            .iter_mut()
            .find(|e| status_of(e, "status") == Some(Status::Pending))
        {
            set(first, "status", Status::Failed.as_str());
            set(first, "failed_reason", reason);
        }
    }
    let _ = save(lock, job).await;
    Ok(())
}

/// Saves the job if it is still `running` here; `Ok(false)` if it is not (cancelled).
async fn save(lock: &OwnedConnection, job: &JobRow) -> Result<bool, Interrupt> {
    lock.client
        .execute(
            "UPDATE batch_jobs SET status = $2, query = $3, failed_reason = $4, \
             fallback_status = $5, updated_at = clock_timestamp() \
             WHERE job_id = $1 AND status = 'running'",
            &[
                &job.id,
                &job.status.as_str(),
                &job.query.to_string(),
                &job.failed_reason,
                &job.fallback_status.map(Status::as_str),
            ],
        )
        .await
        .map(|n| n == 1)
        .map_err(|_| Interrupt::LockLost)
}

/// `save`, turning "no longer running" into [`Interrupt::Cancelled`].
async fn save_running(lock: &OwnedConnection, job: &JobRow) -> Result<(), Interrupt> {
    if save(lock, job).await? {
        Ok(())
    } else {
        Err(Interrupt::Cancelled)
    }
}

fn message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_string(),
        None => error.to_string(),
    }
}

fn now_text() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn entry_text(job: &JobRow, i: usize, key: &str) -> Option<String> {
    let query = match job.kind {
        Kind::Simple => return None,
        Kind::Array => &job.query,
        Kind::Fallback => job.query.get("query")?,
    };
    query.get(i)?.get(key)?.as_str().map(str::to_string)
}

fn job_text(job: &JobRow, key: &str) -> Option<String> {
    job.query.get(key)?.as_str().map(str::to_string)
}

fn with_entry(job: &mut JobRow, i: usize, f: impl FnOnce(&mut Value)) {
    if let Some(entry) = entries_mut(job.kind, &mut job.query).and_then(|e| e.get_mut(i)) {
        f(entry);
    }
}

/// What a fallback job does next.
enum Step {
    Entry(usize),
    EntryFallback(usize, String),
    JobFallback(String),
    Finish(Status),
}

/// Reads the next step from a fallback job's state (so a re-queued job resumes where it
/// stopped), marking what a failure leaves unrun as `skipped` on the way.
fn next_step(job: &mut JobRow) -> Step {
    let id = job.id.clone();
    let entries: Vec<Value> = entries_mut(job.kind, &mut job.query)
        .map(|e| e.clone())
        .unwrap_or_default();
    let mut failure: Option<(usize, String)> = None;
    for (i, entry) in entries.iter().enumerate() {
        let fallback = status_of(entry, "fallback_status");
        match status_of(entry, "status") {
            Some(Status::Done) if fallback == Some(Status::Pending) => {
                match entry_text(job, i, "onsuccess") {
                    Some(sql) => return Step::EntryFallback(i, fill_template(&sql, "job_id", &id)),
                    None => with_entry(job, i, |e| {
                        set(e, "fallback_status", Status::Skipped.as_str())
                    }),
                }
            }
            Some(Status::Failed) => {
                let reason = entry_text(job, i, "failed_reason").unwrap_or_default();
                if fallback == Some(Status::Pending) {
                    match entry_text(job, i, "onerror") {
                        Some(sql) => {
                            let sql = fill_template(&sql, "job_id", &id);
                            let sql = fill_template(&sql, "error_message", &reason);
                            return Step::EntryFallback(i, sql);
                        }
                        None => with_entry(job, i, |e| {
                            set(e, "fallback_status", Status::Skipped.as_str())
                        }),
                    }
                }
                failure = Some((i, reason));
                break;
            }
            Some(Status::Pending) | Some(Status::Running) => return Step::Entry(i),
            _ => {}
        }
    }
    match failure {
        Some((failed, reason)) => {
            for i in failed + 1..entries.len() {
                with_entry(job, i, |e| {
                    if status_of(e, "status") == Some(Status::Pending) {
                        set(e, "status", Status::Skipped.as_str());
                    }
                    if status_of(e, "fallback_status") == Some(Status::Pending) {
                        set(e, "fallback_status", Status::Skipped.as_str());
                    }
                });
            }
            if job.fallback_status == Some(Status::Pending) {
                match job_text(job, "onerror") {
                    Some(sql) => {
                        let sql = fill_template(&sql, "job_id", &id);
                        return Step::JobFallback(fill_template(&sql, "error_message", &reason));
                    }
                    None => job.fallback_status = Some(Status::Skipped),
                }
            }
            Step::Finish(Status::Failed)
        }
        None => {
            if job.fallback_status == Some(Status::Pending) {
                match job_text(job, "onsuccess") {
                    Some(sql) => return Step::JobFallback(fill_template(&sql, "job_id", &id)),
                    None => job.fallback_status = Some(Status::Skipped),
                }
            }
            Step::Finish(Status::Done)
        }
    }
}

impl Run<'_> {
    /// Runs one query of `job` (prefixed `/* {job_id} */` so a cancel can find its backend)
    /// under `timeout`, watching for cancellation and shutdown meanwhile.
    async fn exec(
        &self,
        job_id: &str,
        step: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<Result<(), String>, Interrupt> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Interrupt::Shutdown);
        }
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
        if let Err(error) = self
            .conn
            .client
            .batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
        {
            return Ok(Err(message(&error)));
        }
        // Job ids are UUIDs and steps our own names: nothing to escape.
        let text = if refuses_transactions(sql) {
            format!("/* {job_id} */ {sql}")
        } else {
            format!(
                "/* {job_id} */ INSERT INTO cartodb.cdb_batch_runs (job_id, step) \
                 VALUES ('{job_id}', '{step}'); {sql}"
            )
        };
        let query = self.conn.client.batch_execute(&text);
        tokio::pin!(query);
        let watch = self.watch(job_id);
        tokio::pin!(watch);
        tokio::select! {
            result = &mut query => Ok(result.map_err(|e| message(&e))),
            why = &mut watch => {
                let _ = self.conn.client.cancel_token().cancel_query(NoTls).await;
                // The query may have finished before the cancel reached it: then it counts.
                match query.await {
                    Ok(()) if why == Interrupt::Shutdown => Ok(Ok(())),
                    _ => Err(why),
                }
            }
        }
    }

    async fn watch(&self, job_id: &str) -> Interrupt {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return Interrupt::Shutdown,
                _ = tick.tick() => {}
            }
            match self
                .lock
                .client
                .query_opt(
                    "SELECT status FROM batch_jobs WHERE job_id = $1",
                    &[&job_id],
                )
                .await
            {
                Ok(Some(row)) if row.get::<_, &str>(0) == "running" => {}
                Ok(_) => return Interrupt::Cancelled,
                Err(_) => return Interrupt::LockLost,
            }
        }
    }

    async fn simple(&self, job: &mut JobRow) -> Result<(), Interrupt> {
        let sql = job.query.as_str().unwrap_or_default().to_string();
        match self
            .exec(&job.id, SIMPLE_STEP, &sql, self.user_timeout)
            .await?
        {
            Ok(()) => job.status = Status::Done,
            Err(reason) => {
                job.status = Status::Failed;
                job.failed_reason = Some(reason);
            }
        }
        save_running(self.lock, job).await
    }

    /// Queries in order; between two the job is `pending` again and re-claimed at once, as
    /// upstream re-queues it at the front (and a cancel may land there).
    async fn array(&self, job: &mut JobRow) -> Result<(), Interrupt> {
        loop {
            let entries = entries_mut(job.kind, &mut job.query)
                .cloned()
                .unwrap_or_default();
            let Some(i) = entries
                .iter()
                .position(|e| status_of(e, "status") == Some(Status::Pending))
            else {
                job.status = Status::Done;
                return save_running(self.lock, job).await;
            };
            let sql = entry_text(job, i, "query").unwrap_or_default();
            with_entry(job, i, |e| set(e, "status", Status::Running.as_str()));
            save_running(self.lock, job).await?;
            match self
                .exec(&job.id, &query_step(i), &sql, self.user_timeout)
                .await?
            {
                Ok(()) => {
                    with_entry(job, i, |e| set(e, "status", Status::Done.as_str()));
                    if i + 1 >= entries.len() {
                        job.status = Status::Done;
                        return save_running(self.lock, job).await;
                    }
                    job.status = Status::Pending;
                    save_running(self.lock, job).await?;
                    let reclaimed = self
                        .lock
                        .client
                        .execute(
                            "UPDATE batch_jobs SET status = 'running', \
                             updated_at = clock_timestamp() \
                             WHERE job_id = $1 AND status = 'pending'",
                            &[&job.id],
                        )
                        .await
                        .map_err(|_| Interrupt::LockLost)?;
                    if reclaimed != 1 {
                        return Err(Interrupt::Cancelled);
                    }
                    job.status = Status::Running;
                }
                Err(reason) => {
                    with_entry(job, i, |e| {
                        set(e, "status", Status::Failed.as_str());
                        set(e, "failed_reason", reason.clone());
                    });
                    job.status = Status::Failed;
                    job.failed_reason = Some(reason);
                    return save_running(self.lock, job).await;
                }
            }
        }
    }

    async fn fallback(&self, job: &mut JobRow) -> Result<(), Interrupt> {
        loop {
            match next_step(job) {
                Step::Entry(i) => {
                    let sql = entry_text(job, i, "query").unwrap_or_default();
                    let timeout = match job
                        .query
                        .get("query")
                        .and_then(|q| q.get(i))
                        .and_then(|e| e.get("timeout"))
                        .and_then(Value::as_u64)
                    {
                        Some(ms) if ms > 0 => self.user_timeout.min(Duration::from_millis(ms)),
                        _ => self.user_timeout,
                    };
                    with_entry(job, i, |e| {
                        set(e, "status", Status::Running.as_str());
                        set(e, "started_at", now_text());
                    });
                    save_running(self.lock, job).await?;
                    let outcome = self.exec(&job.id, &query_step(i), &sql, timeout).await?;
                    with_entry(job, i, |e| {
                        set(e, "ended_at", now_text());
                        match &outcome {
                            Ok(()) => set(e, "status", Status::Done.as_str()),
                            Err(reason) => {
                                set(e, "status", Status::Failed.as_str());
                                set(e, "failed_reason", reason.clone());
                            }
                        }
                    });
                    if let Err(reason) = outcome {
                        job.failed_reason = Some(reason);
                    }
                    save_running(self.lock, job).await?;
                }
                Step::EntryFallback(i, sql) => {
                    with_entry(job, i, |e| {
                        set(e, "fallback_status", Status::Running.as_str())
                    });
                    save_running(self.lock, job).await?;
                    let outcome = self
                        .exec(&job.id, &fallback_step(i), &sql, self.user_timeout)
                        .await?;
                    let status = if outcome.is_ok() {
                        Status::Done
                    } else {
                        Status::Failed
                    };
                    with_entry(job, i, |e| set(e, "fallback_status", status.as_str()));
                    save_running(self.lock, job).await?;
                }
                Step::JobFallback(sql) => {
                    job.fallback_status = Some(Status::Running);
                    save_running(self.lock, job).await?;
                    let outcome = self
                        .exec(&job.id, JOB_FALLBACK_STEP, &sql, self.user_timeout)
                        .await?;
                    job.fallback_status = Some(if outcome.is_ok() {
                        Status::Done
                    } else {
                        Status::Failed
                    });
                    save_running(self.lock, job).await?;
                }
                Step::Finish(status) => {
                    job.status = status;
                    return save_running(self.lock, job).await;
                }
            }
        }
    }
}

/// Re-queues running jobs whose user nobody holds: their server died. Taking the user's lock
/// (for the transaction only) proves no worker anywhere has it; backends still running the job
/// are terminated before its commit markers are read.
async fn sweep(inner: &Inner) -> Result<()> {
    let users = inner
        .meta
        .get()
        .await?
        .query(
            "SELECT DISTINCT j.username, (u.id % 2147483647)::int4, u.database \
             FROM batch_jobs j JOIN users u ON u.username = j.username \
             WHERE j.status = 'running'",
            &[],
        )
        .await?;
    for user in users {
        let (username, lock_id, database): (String, i32, String) =
            (user.get(0), user.get(1), user.get(2));
        let mut client = inner.meta.get().await?;
        let tx = client.transaction().await?;
        let free: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, $2)",
                &[&USER_LOCK, &lock_id],
            )
            .await?
            .get(0);
        if !free {
            continue;
        }
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM batch_jobs WHERE username = $1 AND status = 'running' \
                     FOR UPDATE"
                ),
                &[&username],
            )
            .await?;
        let mut admin_db = inner.admin.clone();
        admin_db.dbname(&database);
        let user_db = crate::db::connect(&admin_db).await?;
        for row in rows {
            let mut job = JobRow::from_row(&row);
            let Some(steps) = committed_steps(&user_db, &job.id).await? else {
                // Its backend is still going: try again at the next sweep.
                continue;
            };
            job.recover(&steps);
            let restarts = job.restarts + 1;
            if restarts > inner.config.max_restarts && !is_final(job.status) {
                job.status = Status::Failed;
                job.failed_reason = Some(format!(
                    "The server running this job stopped {restarts} times; not trying again"
                ));
            }
            tx.execute(
                "UPDATE batch_jobs SET status = $2, query = $3, failed_reason = $4, \
                 fallback_status = $5, restarts = $6, updated_at = clock_timestamp() \
                 WHERE job_id = $1",
                &[
                    &job.id,
                    &job.status.as_str(),
                    &job.query.to_string(),
                    &job.failed_reason,
                    &job.fallback_status.map(Status::as_str),
                    &restarts,
                ],
            )
            .await?;
            tracing::warn!(
                job = job.id,
                status = %job.status,
                "batch: job left running by a server that stopped"
            );
        }
        tx.commit().await?;
    }
    Ok(())
}

fn is_final(status: Status) -> bool {
    matches!(
        status,
        Status::Done | Status::Failed | Status::Cancelled | Status::Unknown
    )
}

/// Terminates what still runs job `id` in the user's database and reads the steps whose
/// markers committed; `None` if a backend would not go away within 5 s.
async fn committed_steps(
    user_db: &tokio_postgres::Client,
    id: &str,
) -> Result<Option<std::collections::HashSet<String>>> {
    let prefix = format!("/* {id} */%");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: i64 = user_db
            .query_one(
                "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(pid)) \
                 FROM pg_catalog.pg_stat_activity \
                 WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
                   AND query OPERATOR(pg_catalog.~~) $1 \
                   AND state OPERATOR(pg_catalog.<>) 'idle' \
                   AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()",
                &[&prefix],
            )
            .await?
            .get(0);
        if alive == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exists: bool = user_db
        .query_one(
            "SELECT pg_catalog.to_regclass('cartodb.cdb_batch_runs') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Some(Default::default()));
    }
    let rows = user_db
        .query(
            "SELECT step FROM cartodb.cdb_batch_runs WHERE job_id OPERATOR(pg_catalog.=) $1",
            &[&id],
        )
        .await?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// Forgets finished jobs older than the TTL.
async fn expire(inner: &Inner) -> Result<()> {
    let ttl_ms = inner.config.job_ttl.as_millis() as f64;
    inner
        .meta
        .get()
        .await?
        .execute(
            "DELETE FROM batch_jobs WHERE status NOT IN ('pending', 'running') \
             AND updated_at < clock_timestamp() - $1::float8 * interval '1 millisecond'",
            &[&ttl_ms],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_refuse_a_transaction() {
        for sql in [
            "VACUUM t",
            "vacuum (analyze) t",
            "CREATE INDEX CONCURRENTLY i ON t (x)",
            "reindex table t",
            "DROP DATABASE x",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "SELECT 'unterminated",
        ] {
            assert!(refuses_transactions(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES ('vacuum concurrently')",
            "CREATE TABLE concurrently_t (x int)",
            "UPDATE t SET x = 1; DELETE FROM t",
        ] {
            assert!(!refuses_transactions(sql), "{sql}");
        }
    }
}
