//! Moving a user's database to another host (`user move NAME --to HOST`).
//!
//! The source database is made read-only (a database default, so reads keep working and writes
//! get SQLSTATE 25006, answered 503 with `Retry-After`), its sessions are ended so that none
//! stays writable, then the target gets the user's roles (same names, same passwords), the
//! database's schema, grants and settings (`pg_dump --create --schema-only` into `psql`), and
//! every table's rows by binary COPY streamed table by table. Sequences are set to the source's
//! values, row counts compared, and only then does the user's placement change, in one metadata
//! update. The source copy is dropped after that. Any failure before the switch drops the
//! partial copy and makes the source writable again; a mover killed before the switch leaves
//! the user on the source, read-only until `user move NAME --abort` (or the next move).

use std::process::{Command, Stdio};

use futures::{SinkExt, StreamExt};
use tokio_postgres::config::Host;

use super::{Accounts, User};
use crate::db::{connect, password_literal, quote_ident};
use crate::error::{invalid, ApiError, Context, Result};
use crate::hosts::DEFAULT_HOST;

/// What `user move` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MoveReport {
    /// User name.
    pub username: String,
    /// The host the database was on.
    pub from: String,
    /// The host it is on now.
    pub to: String,
    /// Tables copied.
    pub tables: usize,
    /// Rows copied, over all tables.
    pub rows: i64,
}

/// A table to copy: its quoted name, its quoted, writable columns and its quoted owner.
struct Table {
    name: String,
    columns: String,
    owner: String,
}

impl Accounts {
    /// Moves `username`'s database, roles and grants to host `to` (see the module doc).
    pub async fn move_user(&self, username: &str, to: &str) -> Result<MoveReport> {
        let user = self.existing(username).await?;
        let target = self.hosts.resolve_name(to).await?;
        if target == user.host {
            invalid!("user '{username}' is already on host '{to}'");
        }
        // Held for the whole move, on the metadata's cluster, so two movers never race; a
        // killed mover's session ends and the lock with it.
        let lock = connect(&self.admin).await?;
        let locked: bool = lock
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1, $2::int4)",
                &[&MOVE_LOCK, &(user.id as i32)],
            )
            .await?
            .get(0);
        if !locked {
            invalid!("user '{username}' is being moved already");
        }
        // Another mover may have finished between the look-up and the lock.
        let user = self.existing(username).await?;
        if target == user.host {
            invalid!("user '{username}' is already on host '{to}'");
        }
        let source_admin = self.hosts.admin(user.host.as_deref()).await?;
        let target_admin = self.hosts.admin(target.as_deref()).await?;
        let source = connect(&source_admin).await?;
        let target_client = connect(&target_admin)
            .await
            .with_context(|| format!("connecting to host '{to}'"))?;
        set_read_only(&source, &user.database, true).await?;
        // Read once the database is read-only: a key added from now on fails (its grants are
        // writes), so none is left behind on the source.
        let roles = match self.roles_of(&user).await {
            Ok(roles) => roles,
            Err(error) => {
                let _ = set_read_only(&source, &user.database, false).await;
                return Err(error);
            }
        };
        let copied = async {
            // Leftovers of an earlier, interrupted move: the user is not on the target, so
            // whatever of theirs is there is a partial copy.
            drop_copy(&target_client, &user.database, &roles).await?;
            create_roles(&source, &target_client, &roles).await?;
            restore_schema(&source_admin, &target_admin, &user.database).await?;
            set_read_only(&target_client, &user.database, false).await?;
            copy_data(&source_admin, &target_admin, &user.database).await
        }
        .await;
        let (tables, rows) = match copied {
            Ok(counts) => counts,
            Err(error) => {
                undo(&source, &target_client, &user.database, &roles).await;
                return Err(error.context(format!("moving user '{username}' to host '{to}'")));
            }
        };
        let meta = self.meta.get().await?;
        let switched = meta
            .execute(
                "UPDATE users SET host = $2 WHERE username = $1 AND host IS NOT DISTINCT FROM $3",
                &[&username, &target, &user.host],
            )
            .await
            // Failing here, whether the update took is unknown: both copies stay, the source
            // read-only, for the operator (`--abort`, or `user move` again).
            .context("switching the user's placement")?;
        if switched != 1 {
            // Not switched (the user was deleted or placed elsewhere meanwhile): the source
            // stays the truth and the copy goes.
            undo(&source, &target_client, &user.database, &roles).await;
            invalid!("user '{username}' changed during the move: not moved");
        }
        // Switched: the source copy is only a leftover now; failing to drop it loses nothing.
        if let Err(error) = drop_copy(&source, &user.database, &roles).await {
            tracing::warn!(%username, %error, "dropping the moved user's old database");
        }
        let _ = lock
            .query_one(
                "SELECT pg_catalog.pg_advisory_unlock($1, $2::int4)",
                &[&MOVE_LOCK, &(user.id as i32)],
            )
            .await;
        Ok(MoveReport {
            username: username.to_string(),
            from: user.host.unwrap_or_else(|| DEFAULT_HOST.into()),
            to: to.to_string(),
            tables,
            rows,
        })
    }

    /// Makes `username`'s database writable again after a move that was killed; its partial
    /// copy on the target is dropped by the next move.
    pub async fn abort_move(&self, username: &str) -> Result<()> {
        let user = self.existing(username).await?;
        let lock = connect(&self.admin).await?;
        let running: bool = !lock
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1, $2::int4)",
                &[&MOVE_LOCK, &(user.id as i32)],
            )
            .await?
            .get::<_, bool>(0);
        if running {
            invalid!("a move of user '{username}' is running: stop it first");
        }
        let source = connect(&self.hosts.admin(user.host.as_deref()).await?).await?;
        set_read_only(&source, &user.database, false).await
    }

    /// Makes writable again every database a killed move left read-only: one whose owner's
    /// move lock no mover holds, still placed on the host where it is read-only by default.
    /// `serve` runs this every [`HEAL_INTERVAL`], so a killed `user move` heals by itself;
    /// the names of the users healed.
    pub async fn heal_dead_moves(&self) -> Result<Vec<String>> {
        let meta = self.meta.get().await?;
        let hosts: Vec<Option<String>> = meta
            .query("SELECT DISTINCT host FROM users", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut healed = Vec::new();
        for host in hosts {
            let admin = connect(&self.hosts.admin(host.as_deref()).await?).await?;
            let read_only: Vec<String> = admin
                .query(
                    "SELECT d.datname::text FROM pg_catalog.pg_db_role_setting s \
                     JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.setdatabase \
                     WHERE s.setrole OPERATOR(pg_catalog.=) 0 \
                       AND 'default_transaction_read_only=on' OPERATOR(pg_catalog.=) \
                           ANY (s.setconfig)",
                    &[],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for database in read_only {
                // A partial copy on a move's target is not where its user is placed.
                let Some(row) = meta
                    .query_opt(
                        "SELECT username FROM users \
                         WHERE database = $1 AND host IS NOT DISTINCT FROM $2",
                        &[&database, &host],
                    )
                    .await?
                else {
                    continue;
                };
                let username: String = row.get(0);
                // Refused while a mover holds the user's lock: that move is alive.
                if self.abort_move(&username).await.is_ok() {
                    healed.push(username);
                }
            }
        }
        Ok(healed)
    }

    async fn existing(&self, username: &str) -> Result<User> {
        match self.user(username).await? {
            Some(user) => Ok(user),
            None => invalid!("user '{username}' does not exist"),
        }
    }

    /// The user's roles (one per key) and their passwords, from the metadata.
    async fn roles_of(&self, user: &User) -> Result<Vec<(String, String)>> {
        let meta = self.meta.get().await?;
        let rows = meta
            .query(
                "SELECT db_role, db_password FROM api_keys WHERE username = $1 \
                 ORDER BY kind = 'master' DESC",
                &[&user.username],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}

/// How often `serve` looks for databases a killed move left read-only.
pub const HEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Advisory lock class of a move; the second key is the user's id.
const MOVE_LOCK: i32 = 0x6d6f_7665; // "move"

/// Makes `database` read-only (or writable again) by default, and ends its sessions: a session
/// keeps the default it started with, and the pools open new ones on the next request. Reads
/// keep working throughout.
async fn set_read_only(
    admin: &tokio_postgres::Client,
    database: &str,
    read_only: bool,
) -> Result<()> {
    let setting = if read_only {
        "SET default_transaction_read_only = on"
    } else {
        "RESET default_transaction_read_only"
    };
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} {setting}",
            quote_ident(database)
        ))
        .await?;
    admin
        .query(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                 WHERE datname OPERATOR(pg_catalog.=) $1 \
                 AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()",
            &[&database],
        )
        .await?;
    Ok(())
}

/// Gives a move up before the switch: drops the target's copy, makes the source writable.
async fn undo(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    database: &str,
    roles: &[(String, String)],
) {
    let _ = drop_copy(target, database, roles).await;
    let _ = set_read_only(source, database, false).await;
}

/// Drops `database` and `roles` where `admin` is connected.
async fn drop_copy(
    admin: &tokio_postgres::Client,
    database: &str,
    roles: &[(String, String)],
) -> Result<()> {
    let roles: Vec<&str> = roles.iter().map(|(role, _)| role.as_str()).collect();
    super::drop_user_objects(admin, database, &roles).await
}

/// Creates `roles` on the target with their passwords and the source's attributes.
async fn create_roles(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    roles: &[(String, String)],
) -> Result<()> {
    for (role, password) in roles {
        let inherit: bool = source
            .query_opt(
                "SELECT rolinherit FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
                &[role],
            )
            .await?
            .map(|row| row.get(0))
            .unwrap_or(true);
        target
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION {} \
                 PASSWORD {}",
                quote_ident(role),
                if inherit { "INHERIT" } else { "NOINHERIT" },
                password_literal(password.as_bytes())
            ))
            .await?;
    }
    Ok(())
}

/// `pg_dump --create --schema-only` of `database` on the source into `psql` on the target: the
/// database with its owner, settings, grants, extensions, schemas, functions, tables,
/// triggers, sequences and their grants. Connection settings go through the environment, never
/// the command line (which `ps` shows).
async fn restore_schema(
    source: &tokio_postgres::Config,
    target: &tokio_postgres::Config,
    database: &str,
) -> Result<()> {
    let mut source = source.clone();
    source.dbname(database);
    let mut target = target.clone();
    target.dbname("postgres");
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut dump = libpq_env(Command::new("pg_dump"), &source)
            .args(["--create", "--schema-only", "--no-password"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running pg_dump")?;
        let dump_out = dump.stdout.take().expect("piped stdout");
        // The dump makes the copy read-only like the source; the restore's own sessions
        // (including the one `\connect` opens) must still write.
        let restore = libpq_env(Command::new("psql"), &target)
            .env("PGOPTIONS", "-c default_transaction_read_only=off")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"])
            .stdin(Stdio::from(dump_out))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        let restored = restore.wait_with_output().context("running psql")?;
        let dumped = dump.wait_with_output().context("running pg_dump")?;
        if !dumped.status.success() {
            return Err(ApiError::internal(format!(
                "pg_dump failed: {}",
                String::from_utf8_lossy(&dumped.stderr).trim()
            )));
        }
        if !restored.status.success() {
            return Err(ApiError::internal(format!(
                "restoring the schema failed: {}",
                String::from_utf8_lossy(&restored.stderr).trim()
            )));
        }
        Ok(())
    })
    .await
    .map_err(|e| ApiError::internal(format!("schema copy: {e}")))?
}

/// `command` with libpq's environment set to reach `config`'s cluster and database.
fn libpq_env(mut command: Command, config: &tokio_postgres::Config) -> Command {
    command.env_remove("PGSERVICE").env_remove("PGOPTIONS");
    if let Some(host) = config.get_hosts().first() {
        match host {
            Host::Tcp(name) => command.env("PGHOST", name),
            Host::Unix(path) => command.env("PGHOST", path),
        };
    }
    if let Some(port) = config.get_ports().first() {
        command.env("PGPORT", port.to_string());
    }
    if let Some(user) = config.get_user() {
        command.env("PGUSER", user);
    }
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
    }
    if let Some(database) = config.get_dbname() {
        command.env("PGDATABASE", database);
    }
    command
}

/// Copies every table's rows by binary COPY, with the target's triggers (CARTO's, foreign
/// keys') off since the rows are already what they computed; then sets every sequence to the
/// source's value and compares row counts. Returns the tables and rows copied.
async fn copy_data(
    source: &tokio_postgres::Config,
    target: &tokio_postgres::Config,
    database: &str,
) -> Result<(usize, i64)> {
    let mut source = source.clone();
    source.dbname(database);
    let mut target = target.clone();
    target.dbname(database);
    let source = connect(&source).await?;
    let target = connect(&target).await?;
    // One snapshot for every table and sequence.
    source
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    target
        .batch_execute("SET session_replication_role = replica; BEGIN")
        .await?;
    let tables = user_tables(&source).await?;
    let mut rows = 0;
    for table in &tables {
        let out = source
            .copy_out(&format!(
                "COPY {} ({}) TO STDOUT (FORMAT binary)",
                table.name, table.columns
            ))
            .await?;
        // Loading evaluates the table's own code (generated columns, constraints, index
        // expressions), which the tenant wrote: it runs as the tenant, never as the superuser.
        target
            .batch_execute(&format!("SET ROLE {}", table.owner))
            .await?;
        let sink = target
            .copy_in(&format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                table.name, table.columns
            ))
            .await?;
        futures::pin_mut!(out);
        futures::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            sink.send(chunk?).await?;
        }
        let copied = sink.finish().await? as i64;
        let count = format!("SELECT pg_catalog.count(*) FROM {}", table.name);
        let at_source: i64 = source.query_one(&count, &[]).await?.get(0);
        let at_target: i64 = target.query_one(&count, &[]).await?.get(0);
        if at_source != copied || at_target != copied {
            return Err(ApiError::internal(format!(
                "table {}: {at_source} rows at the source, {at_target} copied",
                table.name
            )));
        }
        target.batch_execute("RESET ROLE").await?;
        rows += copied;
    }
    for row in source
        .query(
            // NULL: never used, as on the fresh target.
            "SELECT pg_catalog.format('%I.%I', schemaname, sequencename), last_value \
             FROM pg_catalog.pg_sequences WHERE last_value IS NOT NULL",
            &[],
        )
        .await?
    {
        let (name, value): (String, i64) = (row.get(0), row.get(1));
        target
            .execute(
                "SELECT pg_catalog.setval($1::text::pg_catalog.regclass, $2)",
                &[&name, &value],
            )
            .await?;
    }
    target.batch_execute("COMMIT").await?;
    source.batch_execute("COMMIT").await?;
    // A tenant can turn the read-only default off in its own session: counted again outside
    // the copy's snapshot, a row it added or removed meanwhile fails the move rather than
    // being lost with the old copy.
    for table in &tables {
        let count = format!("SELECT pg_catalog.count(*) FROM {}", table.name);
        let now: i64 = source.query_one(&count, &[]).await?.get(0);
        let copied: i64 = target.query_one(&count, &[]).await?.get(0);
        if now != copied {
            return Err(ApiError::internal(format!(
                "table {} changed during the move ({copied} rows copied, {now} now): \
                 the user stays where it was; try again",
                table.name
            )));
        }
    }
    Ok((tables.len(), rows))
}

/// The user's tables with their writable columns: every ordinary table but the system's and
/// those an extension owns (PostGIS's, filled by the extension itself).
async fn user_tables(source: &tokio_postgres::Client) -> Result<Vec<Table>> {
    let rows = source
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), \
                    pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' \
                        ORDER BY a.attnum), \
                    pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(c.relowner)) \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
                 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                 AND a.attgenerated OPERATOR(pg_catalog.=) '' \
             WHERE c.relkind OPERATOR(pg_catalog.=) 'r' \
               AND n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema', 'pg_toast']) \
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                   WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                   AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e') \
             GROUP BY 1, 3 ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Table {
            name: row.get(0),
            columns: row.get(1),
            owner: row.get(2),
        })
        .collect())
}
