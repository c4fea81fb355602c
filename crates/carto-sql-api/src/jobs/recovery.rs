//! Re-queue, not fail, after a crash, without running anything twice.
//!
//! A server can die between a query's commit and the save of its status, and PostgreSQL may
//! even commit a query whose client is gone (it notices only when it next reads or writes the
//! socket). So each query starts with a commit marker in its own transaction (see
//! [`super::runner`]): `/* {job_id} */ INSERT INTO cartodb.cdb_batch_runs VALUES ('{job_id}',
//! '{step}'); {query}`, which commits if and only if (the first transaction of) the query does.
//! Re-queueing a job first terminates any backend still running it, then marks each
//! interrupted step done if its marker exists and pending otherwise, and the job carries on
//! from there: what the user asked for, and what upstream does on shutdown. Statements that
//! refuse to run inside a transaction block or a multi-statement string (`VACUUM`,
//! `... CONCURRENTLY`, ...) cannot carry a marker; they run bare and may run again after a
//! crash (they are idempotent maintenance anyway). A job re-queued
//! [`BatchConfig::max_restarts`](super::BatchConfig::max_restarts) times is failed instead, in
//! case it is what kills servers.
//!
//! The sweep works in the user's database as the superuser, over sessions whose `search_path`
//! is pinned to pg_catalog (docs/security.md), and names everything schema-qualified.

use std::time::{Duration, Instant};

use crate::error::Result;

use super::model::Status;
use super::{Inner, JobRow, COLUMNS, USER_LOCK};

/// Re-queues running jobs whose user nobody holds: their server died. Taking the user's lock
/// (for the transaction only) proves no worker anywhere has it; backends still running the job
/// are terminated before its commit markers are read.
pub(super) async fn sweep(inner: &Inner) -> Result<()> {
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
        let mut admin_db = inner.hosts.admin_of_user(&username).await?;
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
                    &job.query.to_text(),
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
