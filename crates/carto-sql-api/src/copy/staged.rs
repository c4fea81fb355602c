//! COPY FROM into an empty CARTO table, through a staging table.
//!
//! Row by row, a COPY into a cartodbfied table costs about ten times one into a bare table:
//! most of it descends the two GiST indexes once a row, much of the rest is the web-mercator
//! row trigger (docs/bench/tuning.md has the breakdown). When the target is empty, the
//! template's `cartodb._CDB_BulkLoadStage` creates a temporary twin of it (same name, column
//! types, defaults and checks); the client's statement is pointed at that twin, so a bad row
//! fails with the same message and line; then `cartodb._CDB_BulkLoadFinish` inserts the rows in
//! one statement, computing the web-mercator column set-based, and builds the GiST indexes
//! after it, which PostgreSQL does by sorting. All of it is one transaction: a failure anywhere
//! commits nothing. The rules for which tables qualify live with those functions in
//! `sql/template.sql`; anything else takes the plain COPY.

use std::ops::Range;

use super::from::{stream_body, UploadLimits};
use super::Upload;
use crate::error::ApiError;

/// What became of an upload offered to the staged path.
pub(super) enum Staged {
    /// Loaded through a staging table and committed: the row count.
    Loaded(u64),
    /// The target does not qualify: nothing was read from the body, and no transaction is open.
    NotTaken(Upload),
}

/// Loads `upload`, whose statement names its table at `target` (a byte range of the
/// statement), through a staging table when the target qualifies.
///
/// On an error the caller discards the connection: a transaction may be open.
pub(super) async fn copy_from(
    client: &tokio_postgres::Client,
    upload: Upload,
    target: Range<usize>,
    limits: &UploadLimits,
) -> Result<Staged, ApiError> {
    let pg = |error: tokio_postgres::Error| ApiError::from_pg(&error);
    let sql = upload.sql.as_str();
    let (Some(before), Some(name), Some(after)) = (
        sql.get(..target.start),
        sql.get(target.clone()),
        sql.get(target.end..),
    ) else {
        return Ok(Staged::NotTaken(upload));
    };
    let (before, name, after) = (before.to_string(), name.to_string(), after.to_string());
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let staged = client
        .query_one(
            "SELECT t::oid, cartodb._CDB_BulkLoadStage(t) \
             FROM pg_catalog.to_regclass($1) AS t",
            &[&name],
        )
        .await;
    let (table, staging) = match staged {
        Ok(row) => match (
            row.get::<_, Option<u32>>(0),
            row.get::<_, Option<String>>(1),
        ) {
            (Some(table), Some(staging)) => (table, staging),
            _ => {
                client.batch_execute("ROLLBACK").await.map_err(pg)?;
                return Ok(Staged::NotTaken(upload));
            }
        },
        // A name `to_regclass` cannot read: the plain COPY gives the client its own error.
        Err(_) => {
            client.batch_execute("ROLLBACK").await.map_err(pg)?;
            return Ok(Staged::NotTaken(upload));
        }
    };
    let sql = format!("{before}{staging}{after}");
    let rows = stream_body(client, Upload { sql, ..upload }, limits).await?;
    client
        .query_one(
            "SELECT cartodb._CDB_BulkLoadFinish($1::pg_catalog.oid::pg_catalog.regclass, \
             $2::pg_catalog.text::pg_catalog.regclass)",
            &[&table, &staging],
        )
        .await
        .map_err(pg)?;
    client.batch_execute("COMMIT").await.map_err(pg)?;
    Ok(Staged::Loaded(rows))
}
