//! The dispatcher: one per server, it picks users with pending jobs and starts a worker per
//! user, which claims and runs that user's oldest job (see [`super::runner`]); from time to
//! time it has orphans re-queued ([`super::recovery`]) and old jobs forgotten
//! ([`super::expiry`]).
//!
//! Who runs a user is decided by a session advisory lock held on the worker's own metadata
//! connection for as long as it runs that user's job: across all servers one query per user,
//! and if the server dies the lock goes with its connection, which is how the sweeper tells an
//! orphan from a job that is merely long.

use std::collections::HashMap;
use std::time::Instant;

use crate::error::Result;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

use super::expiry::{expire, EXPIRY_INTERVAL};
use super::recovery::sweep;
use super::runner::run_job;
use super::{Inner, JobRow, Jobs, COLUMNS, USER_LOCK};
use crate::accounts::META_DB;

/// Users with pending jobs and no running one, oldest waiting first.
const CANDIDATES: &str = "SELECT p.username, (u.id % 2147483647)::int4 \
    FROM batch_jobs p JOIN users u ON u.username = p.username \
    WHERE p.status = 'pending' AND NOT EXISTS \
        (SELECT 1 FROM batch_jobs r WHERE r.username = p.username AND r.status = 'running') \
    GROUP BY p.username, u.id ORDER BY min(p.created_at) LIMIT 100";

/// A connection whose socket closes when it is dropped, even mid-query (a plain client would
/// keep its connection task alive until the query ends).
pub(super) struct OwnedConnection {
    pub(super) client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl OwnedConnection {
    pub(super) async fn open(
        config: &tokio_postgres::Config,
    ) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(OwnedConnection { client, task })
    }
}

impl OwnedConnection {
    /// Connects as a key's role with `config`, repairing what the role did to itself (see
    /// [`crate::db::connect_role`]).
    pub(super) async fn open_as_role(
        admin: &tokio_postgres::Config,
        config: &tokio_postgres::Config,
    ) -> Result<Self, tokio_postgres::Error> {
        let (client, task) = crate::db::connect_role(admin, config).await?;
        Ok(OwnedConnection { client, task })
    }
}

impl Drop for OwnedConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn meta_config(inner: &Inner) -> tokio_postgres::Config {
    let mut config = crate::db::private_database(inner.hosts.default_admin(), META_DB);
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
