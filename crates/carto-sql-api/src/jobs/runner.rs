//! The step runner: runs one claimed job's queries in order on a connection authenticated as
//! the key's role that created it, each behind its commit marker (see [`super::recovery`]),
//! saving every status change, and following fallbacks (spec §7).

use std::time::Duration;

use crate::error::Result;
use tokio_postgres::NoTls;

use super::dispatch::OwnedConnection;
use super::model::{fill_template, JobQuery, Kind, Query, Status};
use super::{Inner, JobRow, Jobs};
use crate::sql_text::refuses_transactions;

/// How often a running job's status is read back, so a cancel or a lost lock is noticed even
/// when the cancel request could not reach the backend.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The commit markers of batch steps, in every user database (created on first use, owned by
/// the superuser; job roles may only insert).
pub(super) const MARKERS_SQL: &str = "CREATE TABLE IF NOT EXISTS cartodb.cdb_batch_runs ( \
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

pub(super) async fn run_job(jobs: &Jobs, lock: &OwnedConnection, mut job: JobRow) -> Result<()> {
    let inner = &jobs.inner;
    // Only the role's name is stored with the job: its password is looked up now, so a key
    // deleted meanwhile cannot run anything.
    let row = lock
        .client
        .query_opt(
            "SELECT u.database, k.db_password, l.timeout_ms, u.host FROM users u \
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
    let host_admin = match inner.hosts.admin(row.get::<_, Option<&str>>(3)).await {
        Ok(admin) => admin,
        Err(error) => {
            let reason = format!("Could not find the user's database host: {error}");
            return fail_whole_job(lock, &mut job, &reason).await;
        }
    };
    let mut config = crate::db::role_address(&host_admin);
    config
        .user(&job.db_role)
        .password(&password)
        .dbname(&database)
        .application_name("carto-sql-api batch");
    // The marker table, and the role's right to write it.
    let mut admin_db = host_admin.clone();
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
    let conn = match OwnedConnection::open_as_role(&host_admin, &config).await {
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
    let outcome = match job.query.kind() {
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
    if let Some(first) = job
        .query
        .queries_mut()
        .iter_mut()
        .find(|q| q.status == Status::Pending)
    {
        first.status = Status::Failed;
        first.failed_reason = Some(reason.to_string());
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
                &job.query.to_text(),
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

/// The `i`th query of an array or fallback job (callers take `i` from the job's own queries).
fn query_mut(job: &mut JobRow, i: usize) -> Option<&mut Query> {
    job.query.queries_mut().get_mut(i)
}

/// The job-wide `onsuccess` or `onerror` of a fallback job.
fn job_fallback(job: &JobRow, on_success: bool) -> Option<String> {
    match &job.query {
        JobQuery::Fallback(fallback) if on_success => fallback.onsuccess.clone(),
        JobQuery::Fallback(fallback) => fallback.onerror.clone(),
        _ => None,
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
    let mut failure: Option<(usize, String)> = None;
    for (i, query) in job.query.queries_mut().iter_mut().enumerate() {
        let fallback_pending = query.fallback_status == Some(Status::Pending);
        match query.status {
            Status::Done if fallback_pending => match &query.onsuccess {
                Some(sql) => return Step::EntryFallback(i, fill_template(sql, "job_id", &id)),
                None => query.fallback_status = Some(Status::Skipped),
            },
            Status::Failed => {
                let reason = query.failed_reason.clone().unwrap_or_default();
                if fallback_pending {
                    match &query.onerror {
                        Some(sql) => {
                            let sql = fill_template(sql, "job_id", &id);
                            let sql = fill_template(&sql, "error_message", &reason);
                            return Step::EntryFallback(i, sql);
                        }
                        None => query.fallback_status = Some(Status::Skipped),
                    }
                }
                failure = Some((i, reason));
                break;
            }
            Status::Pending | Status::Running => return Step::Entry(i),
            _ => {}
        }
    }
    match failure {
        Some((failed, reason)) => {
            for query in job.query.queries_mut().iter_mut().skip(failed + 1) {
                if query.status == Status::Pending {
                    query.status = Status::Skipped;
                }
                if query.fallback_status == Some(Status::Pending) {
                    query.fallback_status = Some(Status::Skipped);
                }
            }
            if job.fallback_status == Some(Status::Pending) {
                match job_fallback(job, false) {
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
                match job_fallback(job, true) {
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
        // Never zero, which PostgreSQL reads as no timeout at all.
        let timeout = timeout.max(Duration::from_millis(1));
        if let Err(error) = crate::db::set_statement_timeout(&self.conn.client, timeout).await {
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
        let JobQuery::Simple(sql) = &job.query else {
            return Ok(());
        };
        let sql = sql.clone();
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
            let queries = job.query.queries_mut();
            let count = queries.len();
            let Some((i, query)) = queries
                .iter_mut()
                .enumerate()
                .find(|(_, q)| q.status == Status::Pending)
            else {
                job.status = Status::Done;
                return save_running(self.lock, job).await;
            };
            let sql = query.query.clone();
            query.status = Status::Running;
            save_running(self.lock, job).await?;
            match self
                .exec(&job.id, &query_step(i), &sql, self.user_timeout)
                .await?
            {
                Ok(()) => {
                    if let Some(query) = query_mut(job, i) {
                        query.status = Status::Done;
                    }
                    if i + 1 >= count {
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
                    if let Some(query) = query_mut(job, i) {
                        query.status = Status::Failed;
                        query.failed_reason = Some(reason.clone());
                    }
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
                    let Some(query) = query_mut(job, i) else {
                        return Ok(());
                    };
                    let sql = query.query.clone();
                    let timeout = match query.timeout.as_ref().and_then(|ms| ms.as_u64()) {
                        Some(ms) if ms > 0 => self.user_timeout.min(Duration::from_millis(ms)),
                        _ => self.user_timeout,
                    };
                    query.status = Status::Running;
                    query.started_at = Some(now_text());
                    save_running(self.lock, job).await?;
                    let outcome = self.exec(&job.id, &query_step(i), &sql, timeout).await?;
                    if let Some(query) = query_mut(job, i) {
                        query.ended_at = Some(now_text());
                        match &outcome {
                            Ok(()) => query.status = Status::Done,
                            Err(reason) => {
                                query.status = Status::Failed;
                                query.failed_reason = Some(reason.clone());
                            }
                        }
                    }
                    if let Err(reason) = outcome {
                        job.failed_reason = Some(reason);
                    }
                    save_running(self.lock, job).await?;
                }
                Step::EntryFallback(i, sql) => {
                    if let Some(query) = query_mut(job, i) {
                        query.fallback_status = Some(Status::Running);
                    }
                    save_running(self.lock, job).await?;
                    let outcome = self
                        .exec(&job.id, &fallback_step(i), &sql, self.user_timeout)
                        .await?;
                    let status = if outcome.is_ok() {
                        Status::Done
                    } else {
                        Status::Failed
                    };
                    if let Some(query) = query_mut(job, i) {
                        query.fallback_status = Some(status);
                    }
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
