//! The COPY streams behind `/sql/copyfrom` and `/sql/copyto`.

mod from;
mod staged;
pub mod statement;
mod to;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};

use from::UploadLimits;
pub use to::CopyToBody;

use crate::auth::Caller;
use crate::db::{discard, set_statement_timeout, Pools};
use crate::error::ApiError;
use crate::Config;

/// How an upload's body is encoded (its `Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// As it is.
    Plain,
    /// gzip, one member or several concatenated.
    Gzip,
}

impl BodyEncoding {
    /// Reads `Content-Encoding`: none or `identity`, else `gzip` (or `x-gzip`); any other
    /// coding is a 400.
    pub fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        match headers
            .get(header::CONTENT_ENCODING)
            // Not visible ASCII is not a coding this server knows: refused below, not ignored.
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("identity") => Ok(BodyEncoding::Plain),
            Some("gzip") | Some("x-gzip") => Ok(BodyEncoding::Gzip),
            Some(other) => Err(ApiError::bad_request(format!(
                "Unsupported Content-Encoding '{other}': send gzip or no encoding"
            ))),
        }
    }
}

/// A checked `COPY ... FROM STDIN` and the body that feeds it.
#[derive(Debug)]
pub struct Upload {
    /// The statement, already checked by [`statement::check`].
    pub sql: String,
    /// The data.
    pub body: Body,
    /// How the data is encoded.
    pub encoding: BodyEncoding,
}

/// Runs `upload` for `caller` under the server's limits (`config`); returns the row count.
pub async fn copy_from(
    pools: &Pools,
    caller: &Caller,
    upload: Upload,
    config: &Config,
) -> Result<u64, ApiError> {
    let mut limits = UploadLimits {
        max_post_size: config.max_post_size,
        quota_remaining: None,
        max_decompressed: config.max_copy_decompressed,
    };
    let statement_timeout = config.copy_timeout;
    let client = pools.get(&caller.key).await?;
    let prepared = async {
        set_statement_timeout(&client, statement_timeout).await?;
        // Read as the caller's role, as upstream does; 0 means unlimited. Databases made from
        // an older template have no staged path.
        let row = client
            .query_one(
                "SELECT cartodb._CDB_UserQuotaInBytes(), \
                        cartodb.CDB_UserDataSize(current_schema()), \
                        pg_catalog.to_regprocedure('cartodb._cdb_bulkloadstage(regclass)') \
                            IS NOT NULL",
                &[],
            )
            .await?;
        let (quota, used, staged_path): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
        Ok::<_, tokio_postgres::Error>((
            (quota > 0).then(|| quota.saturating_sub(used).max(0) as u64),
            staged_path,
        ))
    }
    .await;
    let staged_path = match prepared {
        Ok((remaining, staged_path)) => {
            limits.quota_remaining = remaining;
            staged_path
        }
        Err(error) => {
            discard(client);
            return Err(ApiError::from_pg(&error));
        }
    };
    let target = staged_path
        .then(|| statement::copy_from_target(&upload.sql))
        .flatten();
    let loaded = match target {
        Some(target) => match staged::copy_from(&client, upload, target, &limits).await {
            Ok(staged::Staged::Loaded(rows)) => Ok(rows),
            Ok(staged::Staged::NotTaken(upload)) => {
                from::stream_body(&client, upload, &limits).await
            }
            Err(error) => Err(error),
        },
        None => from::stream_body(&client, upload, &limits).await,
    };
    match loaded {
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
    statement_timeout: Duration,
) -> Result<CopyToBody, ApiError> {
    let client = pools.get(&caller.key).await?;
    if let Err(error) = set_statement_timeout(&client, statement_timeout).await {
        discard(client);
        return Err(ApiError::from_pg(&error));
    }
    to::start(client, sql).await
}
