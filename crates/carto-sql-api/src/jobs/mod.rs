//! Batch SQL jobs (spec §7): a per-user FIFO queue in the metadata database and workers inside
//! every server that run it.
//!
//! Jobs are rows of `batch_jobs`; any number of servers on one metadata database share them.
//! A worker takes a user by holding a session advisory lock on a metadata connection of its
//! own (so one query runs per user across all servers), claims that user's oldest pending job
//! with `FOR UPDATE SKIP LOCKED`, and runs its queries on a connection authenticated as the
//! role of the key that created the job. A running job whose user lock nobody holds was left by
//! a server that died: any server re-queues it (`docs/batch.md` says why re-queue, not fail).
//!
//! `model` is what a job is, `http` its endpoints, `dispatch` the per-server loop that hands
//! users to workers, `runner` one job's steps, `recovery` the re-queueing of orphans and
//! `expiry` the forgetting of old jobs.

mod dispatch;
mod expiry;
pub(crate) mod http;
pub(crate) mod model;
mod recovery;
mod runner;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{invalid, Result};
use axum::http::StatusCode;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::accounts::User;
use crate::db::connect;
use crate::error::ApiError;
use model::{initial_query, JobQuery, Kind, Status};

/// Batch settings.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Jobs a user may have waiting; more are refused. Default 64 (`batch_max_queued_jobs`).
    pub max_queued_jobs: usize,
    /// Longest a batch query may run unless the user has a limit of their own. Default 12 h.
    pub query_timeout: Duration,
    /// Users whose jobs one server runs at once. Default 4, as upstream per database host.
    pub workers: usize,
    /// How often a server looks for jobs queued through other servers and for jobs left
    /// running by dead ones. Jobs queued through this server start at once. Default 1 s.
    pub poll_interval: Duration,
    /// Finished jobs are forgotten this long after they end. Default 2 h.
    pub job_ttl: Duration,
    /// A job re-queued this many times because the server running it died is failed instead
    /// (it may be what kills the server). Default 3.
    pub max_restarts: i32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queued_jobs: 64,
            query_timeout: Duration::from_secs(12 * 3600),
            workers: 4,
            poll_interval: Duration::from_secs(1),
            job_ttl: Duration::from_secs(2 * 3600),
            max_restarts: 3,
        }
    }
}

/// Largest job request body: `JSON.stringify(body).length` as upstream counts it.
pub const MAX_PAYLOAD: usize = 16384;

/// Whether [`SCHEMA`] was applied.
pub(crate) const SCHEMA_PRESENT: &str = "SELECT to_regclass('public.batch_limits') IS NOT NULL";

/// The jobs' metadata; created if missing whenever a server opens.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id          text PRIMARY KEY,
    username        text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    db_role         text NOT NULL,
    kind            text NOT NULL,
    query           text NOT NULL,
    status          text NOT NULL,
    failed_reason   text,
    fallback_status text,
    restarts        int4 NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS batch_jobs_queue ON batch_jobs (username, created_at)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS batch_jobs_finished ON batch_jobs (updated_at)
    WHERE status NOT IN ('pending', 'running');
CREATE TABLE IF NOT EXISTS batch_limits (
    username   text PRIMARY KEY REFERENCES users (username) ON DELETE CASCADE,
    timeout_ms int8 NOT NULL
);
"#;

/// Columns read into a [`JobRow`], in its order.
const COLUMNS: &str = "job_id, username, db_role, query, status, failed_reason, \
    fallback_status, restarts, \
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// True for a job none of whose queries has started (an array job is `pending` again between
/// its queries: its worker holds its state, so it must not change under it).
const UNSTARTED: &str =
    "NOT jsonb_path_exists(query::jsonb, 'lax $.** ? (@.status != \"pending\")')";

/// Advisory-lock namespaces (first key of the two-int form): a worker's hold on a user, and
/// the short lock serialising a user's job creations for the queue limit.
const USER_LOCK: i32 = 0x6a6f_6273; // "jobs"
const QUEUE_LOCK: i32 = 0x7175_6575; // "queu"

/// A job as stored.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub id: String,
    pub username: String,
    pub db_role: String,
    pub query: JobQuery,
    pub status: Status,
    pub failed_reason: Option<String>,
    pub fallback_status: Option<Status>,
    pub restarts: i32,
    pub created_at: String,
    pub updated_at: String,
}

impl JobRow {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        JobRow {
            id: row.get(0),
            username: row.get(1),
            db_role: row.get(2),
            query: JobQuery::from_text(row.get(3)),
            status: Status::parse(row.get(4)),
            failed_reason: row.get(5),
            fallback_status: row.get::<_, Option<&str>>(6).map(Status::parse),
            restarts: row.get(7),
            created_at: row.get(8),
            updated_at: row.get(9),
        }
    }

    /// The job JSON of §7.2 (never the role or anything about credentials).
    pub fn to_json(&self) -> Value {
        let mut job = Map::new();
        job.insert("job_id".into(), self.id.clone().into());
        job.insert("user".into(), self.username.clone().into());
        job.insert(
            "query".into(),
            serde_json::to_value(&self.query).unwrap_or(Value::Null),
        );
        job.insert("status".into(), self.status.as_str().into());
        if let Some(reason) = &self.failed_reason {
            job.insert("failed_reason".into(), reason.clone().into());
        }
        if let Some(status) = self.fallback_status {
            job.insert("fallback_status".into(), status.as_str().into());
        }
        job.insert("created_at".into(), self.created_at.clone().into());
        job.insert("updated_at".into(), self.updated_at.clone().into());
        Value::Object(job)
    }

    /// Resets what was running to pending, for a job that goes back to its queue.
    pub fn requeue(&mut self) {
        self.recover(&HashSet::new());
    }

    /// Puts a job whose server stopped back in the queue: each step that was running is done
    /// if its commit marker (`steps`, the job's `cdb_batch_runs` rows) says it committed, else
    /// pending again.
    pub fn recover(&mut self, steps: &HashSet<String>) {
        if self.query.kind() == Kind::Simple {
            self.status = if steps.contains(runner::SIMPLE_STEP) {
                Status::Done
            } else {
                Status::Pending
            };
            return;
        }
        self.status = Status::Pending;
        let committed = |step: String| steps.contains(&step);
        if self.fallback_status == Some(Status::Running) {
            self.fallback_status = Some(if committed(runner::JOB_FALLBACK_STEP.into()) {
                Status::Done
            } else {
                Status::Pending
            });
        }
        for (i, query) in self.query.queries_mut().iter_mut().enumerate() {
            if query.status == Status::Running {
                if committed(runner::query_step(i)) {
                    query.status = Status::Done;
                } else {
                    query.status = Status::Pending;
                    query.started_at = None;
                }
            }
            if query.fallback_status == Some(Status::Running) {
                query.fallback_status = Some(if committed(runner::fallback_step(i)) {
                    Status::Done
                } else {
                    Status::Pending
                });
            }
        }
    }
}

/// The batch queue of a server: creating, reading, cancelling and updating jobs, and the
/// workers running them. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    meta: deadpool_postgres::Pool,
    /// Where each user's database is, and its superuser (to prepare, recover and cancel).
    hosts: crate::hosts::Hosts,
    config: BatchConfig,
    /// Wakes this server's dispatcher when a job is queued here.
    wake: Notify,
    shutdown: CancellationToken,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("Job with id {id} not found"),
    )
}

impl Jobs {
    pub(crate) fn new(
        meta: deadpool_postgres::Pool,
        hosts: crate::hosts::Hosts,
        config: BatchConfig,
    ) -> Self {
        Jobs {
            inner: Arc::new(Inner {
                meta,
                hosts,
                config,
                wake: Notify::new(),
                shutdown: CancellationToken::new(),
                dispatcher: Mutex::new(None),
            }),
        }
    }

    /// Starts this server's workers (once; later calls do nothing). Servers that only manage
    /// accounts never call it.
    pub fn start_workers(&self) {
        let mut dispatcher = self
            .inner
            .dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if dispatcher.is_none() && self.inner.config.workers > 0 {
            *dispatcher = Some(tokio::spawn(dispatch::dispatch(self.clone())));
        }
    }

    /// Stops the workers gracefully: running queries are cancelled and their jobs go back to
    /// the front of their users' queues, for this or another server to run again.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        if let Some(handle) = self.take_dispatcher() {
            let _ = handle.await;
        }
    }

    /// Stops the workers at once, as if the process died: their connections close, so their
    /// user locks are released and another server re-queues what they were running.
    pub fn abort_workers(&self) {
        if let Some(handle) = self.take_dispatcher() {
            handle.abort();
        }
    }

    /// The dispatcher's task, if it runs; afterwards none is recorded.
    fn take_dispatcher(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner
            .dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Queues a job for `user`, to run as `db_role`; returns its JSON.
    pub async fn create(
        &self,
        user: &User,
        db_role: &str,
        query: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let (query, fallback_status) = initial_query(query)?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut client = self.inner.meta.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&QUEUE_LOCK, &lock_id(user)],
        )
        .await?;
        let queued: i64 = tx
            .query_one(
                "SELECT count(*) FROM batch_jobs WHERE username = $1 AND status = 'pending'",
                &[&user.username],
            )
            .await?
            .get(0);
        let max = self.inner.config.max_queued_jobs;
        if queued >= max as i64 {
            return Err(ApiError::bad_request(format!(
                "Failed to create job. Max number of jobs ({max}) queued reached"
            )));
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO batch_jobs (job_id, username, db_role, kind, query, status, \
                     fallback_status) VALUES ($1, $2, $3, $4, $5, 'pending', $6) \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id,
                    &user.username,
                    &db_role,
                    &query.kind().as_str(),
                    &query.to_text(),
                    &fallback_status.map(Status::as_str),
                ],
            )
            .await?;
        tx.commit().await?;
        self.inner.wake.notify_one();
        Ok(JobRow::from_row(&row).to_json())
    }

    /// `user`'s job `id` (other users' jobs are not found).
    pub async fn get(&self, user: &User, id: &str) -> Result<Value, ApiError> {
        let client = self.inner.meta.get().await?;
        client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM batch_jobs WHERE job_id = $1 AND username = $2"),
                &[&id, &user.username],
            )
            .await?
            .map(|row| JobRow::from_row(&row).to_json())
            .ok_or_else(|| not_found(id))
    }

    /// Cancels `user`'s job `id`: a pending one leaves the queue, a running one has its query
    /// cancelled (found by the `/* {id} */` prefix in `pg_stat_activity`).
    pub async fn cancel(&self, user: &User, id: &str) -> Result<Value, ApiError> {
        let mut client = self.inner.meta.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM batch_jobs WHERE job_id = $1 AND username = $2 \
                     FOR UPDATE"
                ),
                &[&id, &user.username],
            )
            .await?
            .ok_or_else(|| not_found(id))?;
        let mut job = JobRow::from_row(&row);
        let was = job.status;
        if !was.can_become(Status::Cancelled) {
            return Err(ApiError::bad_request(match job.query.kind() {
                Kind::Fallback => "Cannot set status to cancelled".to_string(),
                _ => format!("Cannot set status from {was} to cancelled"),
            }));
        }
        mark_cancelled(&mut job);
        let row = tx
            .query_one(
                &format!(
                    "UPDATE batch_jobs SET status = $2, query = $3, fallback_status = $4, \
                     updated_at = clock_timestamp() WHERE job_id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &job.id,
                    &job.status.as_str(),
                    &job.query.to_text(),
                    &job.fallback_status.map(Status::as_str),
                ],
            )
            .await?;
        tx.commit().await?;
        if was == Status::Running {
            // The worker also notices within its poll interval; this makes it immediate.
            let cancelled = async {
                let admin = self.inner.hosts.admin(user.host.as_deref()).await?;
                cancel_backend(&admin, &user.database, id).await
            };
            if let Err(error) = cancelled.await {
                tracing::warn!(%error, job = id, "cancelling a running batch query");
            }
        }
        Ok(JobRow::from_row(&row).to_json())
    }

    /// Replaces the query of `user`'s pending job `id` (issue 3 keeps `PUT`, which upstream
    /// removed). Jobs that started cannot change.
    pub async fn update(
        &self,
        user: &User,
        id: &str,
        query: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let (query, fallback_status) = initial_query(query)?;
        let client = self.inner.meta.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE batch_jobs SET kind = $3, query = $4, fallback_status = $5, \
                     updated_at = clock_timestamp() \
                     WHERE job_id = $1 AND username = $2 AND status = 'pending' AND {UNSTARTED} \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id,
                    &user.username,
                    &query.kind().as_str(),
                    &query.to_text(),
                    &fallback_status.map(Status::as_str),
                ],
            )
            .await?;
        if let Some(row) = row {
            return Ok(JobRow::from_row(&row).to_json());
        }
        let found: Option<(String, bool)> = client
            .query_opt(
                &format!(
                    "SELECT status, {UNSTARTED} FROM batch_jobs WHERE job_id = $1 AND username = $2"
                ),
                &[&id, &user.username],
            )
            .await?
            .map(|row| (row.get(0), row.get(1)));
        match found {
            None => Err(not_found(id)),
            Some((status, unstarted)) if status != "pending" || unstarted => {
                Err(ApiError::bad_request(format!(
                    "Cannot update job {id}: its status is {status}, only pending jobs can be \
                     updated"
                )))
            }
            Some(_) => Err(ApiError::bad_request(format!(
                "Cannot update job {id}: some of its queries already ran"
            ))),
        }
    }

    /// Sets (`Some`) or removes (`None`) `username`'s own batch query timeout, which then
    /// replaces [`BatchConfig::query_timeout`].
    pub async fn set_user_timeout(&self, username: &str, timeout: Option<Duration>) -> Result<()> {
        let client = self.inner.meta.get().await?;
        if client
            .query_opt("SELECT 1 FROM users WHERE username = $1", &[&username])
            .await?
            .is_none()
        {
            invalid!("user '{username}' does not exist");
        }
        match timeout {
            Some(timeout) => {
                let ms = timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
                client
                    .execute(
                        "INSERT INTO batch_limits (username, timeout_ms) VALUES ($1, $2) \
                         ON CONFLICT (username) DO UPDATE SET timeout_ms = EXCLUDED.timeout_ms",
                        &[&username, &ms],
                    )
                    .await?;
            }
            None => {
                client
                    .execute("DELETE FROM batch_limits WHERE username = $1", &[&username])
                    .await?;
            }
        }
        Ok(())
    }

    /// `username`'s own batch query timeout, if set.
    pub async fn user_timeout(&self, username: &str) -> Result<Option<Duration>> {
        let client = self.inner.meta.get().await?;
        Ok(client
            .query_opt(
                "SELECT timeout_ms FROM batch_limits WHERE username = $1",
                &[&username],
            )
            .await?
            .map(|row| Duration::from_millis(row.get::<_, i64>(0).max(0) as u64)))
    }
}

/// A user's key in the advisory-lock namespaces.
fn lock_id(user: &User) -> i32 {
    (user.id % i32::MAX as i64) as i32
}

/// The state of a job cancelled by its user: the running (or next) query cancelled, what would
/// have followed skipped (fallback jobs) or left pending (array jobs, as after a failure).
fn mark_cancelled(job: &mut JobRow) {
    job.status = Status::Cancelled;
    let kind = job.query.kind();
    let mut cancelled_one = false;
    for query in job.query.queries_mut() {
        match query.status {
            Status::Running | Status::Pending if !cancelled_one => {
                query.status = Status::Cancelled;
                cancelled_one = true;
            }
            Status::Pending if kind == Kind::Fallback => query.status = Status::Skipped,
            _ => {}
        }
        if matches!(
            query.fallback_status,
            Some(Status::Pending) | Some(Status::Running)
        ) {
            query.fallback_status = Some(Status::Skipped);
        }
    }
    if matches!(
        job.fallback_status,
        Some(Status::Pending) | Some(Status::Running)
    ) {
        job.fallback_status = Some(Status::Skipped);
    }
}

/// Cancels the backend running job `id`'s query in `database`; false if none was found.
async fn cancel_backend(admin: &tokio_postgres::Config, database: &str, id: &str) -> Result<bool> {
    let client = connect(admin).await?;
    let rows = client
        .query(
            "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE datname OPERATOR(pg_catalog.=) $1 AND query OPERATOR(pg_catalog.~~) $2",
            &[&database, &format!("/* {id} */%")],
        )
        .await?;
    Ok(rows.iter().any(|row| row.get::<_, bool>(0)))
}
