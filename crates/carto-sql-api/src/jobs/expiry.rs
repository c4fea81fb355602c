//! Expiry: finished jobs are forgotten once older than the TTL.

use std::time::Duration;

use crate::error::Result;

use super::Inner;

/// How often finished jobs are looked at for expiry.
pub(super) const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Forgets finished jobs older than the TTL.
pub(super) async fn expire(inner: &Inner) -> Result<()> {
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
