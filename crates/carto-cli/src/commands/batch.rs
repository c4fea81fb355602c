//! `carto batch`: create a batch job, and with `--wait` follow it to its end.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use super::client;
use crate::args::{BatchArgs, Global};
use crate::output::Output;

pub async fn run(global: &Global, output: Output, args: BatchArgs) -> Result<()> {
    if !(args.poll_interval.is_finite() && args.poll_interval > 0.0) {
        bail!("--poll-interval must be a positive number of seconds");
    }
    let batch = client(global)?
        .batch()
        .with_poll_interval(Duration::from_secs_f64(args.poll_interval));
    let query: carto::BatchQuery = if args.sql.len() == 1 {
        args.sql[0].clone().into()
    } else {
        args.sql.clone().into()
    };
    let job = batch.create(query).await?;
    let job = if args.wait {
        // The job's id now, for a wait that may be long; its end in the result.
        output.note(&format!("job {} {}", job.job_id, job.status));
        batch.wait(&job.job_id).await?
    } else {
        job
    };
    output.result(
        &format!("job {} {}", job.job_id, job.status),
        json!({ "job_id": job.job_id, "status": job.status.to_string(), "query": job.query }),
        false,
    );
    Ok(())
}
