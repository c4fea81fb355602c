//! The COPY streams behind `/sql/copyfrom` and `/sql/copyto`.

mod from;
pub mod statement;
mod to;

use axum::body::Body;

pub use from::UploadLimits;
pub use to::CopyToBody;

use crate::auth::Caller;
use crate::db::{discard, set_statement_timeout, Pools};
use crate::error::ApiError;

/// Runs a checked `COPY ... FROM STDIN` for `caller`, fed from `body`; returns the row count.
pub async fn copy_from(
    pools: &Pools,
    caller: &Caller,
    sql: &str,
    body: Body,
    gzip: bool,
    mut limits: UploadLimits,
    statement_timeout: &str,
) -> Result<u64, ApiError> {
    let client = pools.get(&caller.key).await?;
    let prepared = async {
        set_statement_timeout(&client, statement_timeout).await?;
        // Read as the caller's role, as upstream does; 0 means unlimited.
        let row = client
            .query_one(
                "SELECT cartodb._CDB_UserQuotaInBytes(), \
                        cartodb.CDB_UserDataSize(current_schema())",
                &[],
            )
            .await?;
        let (quota, used): (i64, i64) = (row.get(0), row.get(1));
        Ok::<_, tokio_postgres::Error>(
            (quota > 0).then(|| quota.saturating_sub(used).max(0) as u64),
        )
    }
    .await;
    match prepared {
        Ok(remaining) => limits.quota_remaining = remaining,
        Err(error) => {
            discard(client);
            return Err(ApiError::from_pg(&error));
        }
    }
    match from::stream_body(&client, sql, body, gzip, &limits).await {
        Ok(0) => Err(ApiError::bad_request("No rows copied")),
        Ok(rows) => Ok(rows),
        Err(error) => {
            discard(client);
            Err(error)
        }
    }
}

/// Starts a checked `COPY ... TO STDOUT` for `caller`; the returned body streams its output.
pub async fn copy_to(
    pools: &Pools,
    caller: &Caller,
    sql: &str,
    statement_timeout: &str,
) -> Result<CopyToBody, ApiError> {
    let client = pools.get(&caller.key).await?;
    if let Err(error) = set_statement_timeout(&client, statement_timeout).await {
        discard(client);
        return Err(ApiError::from_pg(&error));
    }
    to::start(client, sql).await
}
