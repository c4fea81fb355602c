//! Users, API keys and their PostgreSQL roles, and the provisioning that creates them.
//!
//! Tenancy follows CARTO: one database per user, one login role per API key. The master key's
//! role owns the user's database and its `public` schema; the `default_public` key's role may
//! only read what is granted to it. Metadata (users, SHA-256 hashes of keys, the roles'
//! passwords) lives in the `carto_meta` database of the default host, so several server
//! processes can share it; each user's database and roles live on one database host (see
//! [`crate::hosts`]).

use crate::error::{invalid, ApiError, Context, Result};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::{self, connect, password_literal, quote_ident, RoleLogin};
use crate::hosts::Hosts;

mod keys;
mod moving;
pub use keys::{Grant, KeyInfo, NewKey, TABLE_PRIVILEGES};
pub(crate) use keys::{SCHEMA as KEYS_SCHEMA, SCHEMA_PRESENT as KEYS_SCHEMA_PRESENT};
pub use moving::{MoveReport, HEAL_INTERVAL};

/// Name of the metadata database.
pub const META_DB: &str = "carto_meta";
/// Template every user database is created from (PostGIS and CARTO helpers installed once).
pub const TEMPLATE_DB: &str = "carto_template";
/// The token of every user's public key.
pub const DEFAULT_PUBLIC: &str = "default_public";

/// Advisory lock key serialising metadata set-up and provisioning across processes.
const PROVISION_LOCK: i64 = 0x0063_6172_746f_7273; // "cartors"

/// What kind of key a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The user's master key: owner of the user's database.
    Master,
    /// A regular key with explicit grants.
    Regular,
    /// `default_public` or no key: the public role.
    Default,
}

impl KeyKind {
    /// Reads the metadata's spelling.
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "master" => KeyKind::Master,
            "regular" => KeyKind::Regular,
            _ => KeyKind::Default,
        }
    }
}

/// A user of the server.
#[derive(Debug, Clone)]
pub struct User {
    /// Numeric id (the `Carto-User-Id` header).
    pub id: i64,
    /// User name.
    pub username: String,
    /// The user's database.
    pub database: String,
    /// The database host holding it; `None`: the default host.
    pub host: Option<String>,
}

/// An API key resolved to the role it runs as.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Kind of key.
    pub kind: KeyKind,
    /// Whether the key may use the SQL API at all.
    pub grants_sql: bool,
    /// How to connect as the key's role.
    pub login: RoleLogin,
}

/// What `user add` prints.
#[derive(Debug, Clone, Serialize)]
pub struct NewUser {
    /// User name.
    pub username: String,
    /// The master API key.
    pub api_key: String,
    /// Base URL of the user's API on this server.
    pub base_url: String,
}

/// Access to users and keys, and provisioning.
#[derive(Clone)]
pub struct Accounts {
    admin: tokio_postgres::Config,
    meta: deadpool_postgres::Pool,
    hosts: Hosts,
}

impl Accounts {
    /// Connects with the superuser settings `admin`, creating the metadata database and the
    /// user template on first use.
    pub async fn open(admin: tokio_postgres::Config) -> Result<Self> {
        let admin = db::privileged(&admin);
        bootstrap(&admin).await?;
        let manager = deadpool_postgres::Manager::new(
            db::private_database(&admin, META_DB),
            tokio_postgres::NoTls,
        );
        let meta = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(|e| ApiError::internal(format!("metadata pool: {e}")))?;
        let hosts = Hosts::new(admin.clone(), meta.clone());
        Ok(Accounts { admin, meta, hosts })
    }

    /// The database hosts.
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// The privileged superuser settings of the host holding `user`'s database, for its
    /// database (`dbname` set).
    pub(crate) async fn user_admin(&self, user: &User) -> Result<tokio_postgres::Config> {
        let mut config = self.hosts.admin(user.host.as_deref()).await?;
        config.dbname(&user.database);
        Ok(config)
    }

    /// The metadata database's pool (for the modules that keep their own tables there).
    pub(crate) fn meta(&self) -> &deadpool_postgres::Pool {
        &self.meta
    }

    /// Looks a user up by name.
    pub async fn user(&self, username: &str) -> Result<Option<User>> {
        let client = self.meta.get().await.context("looking up a user")?;
        let row = client
            .query_opt(
                "SELECT id, username, database, host FROM users WHERE username = $1",
                &[&username],
            )
            .await
            .context("looking up a user")?;
        Ok(row.map(|row| User {
            id: row.get(0),
            username: row.get(1),
            database: row.get(2),
            host: row.get(3),
        }))
    }

    /// Resolves `token` for `user`; `None` when the user has no such key.
    pub async fn key(&self, user: &User, token: &str) -> Result<Option<ApiKey>> {
        let client = self.meta.get().await.context("looking up a key")?;
        let row = client
            .query_opt(
                "SELECT kind, grants_sql, db_role, db_password FROM api_keys \
                 WHERE username = $1 AND token_sha256 = $2",
                &[&user.username, &token_hash(token)],
            )
            .await
            .context("looking up a key")?;
        Ok(row.map(|row| ApiKey {
            kind: KeyKind::parse(row.get(0)),
            grants_sql: row.get(1),
            login: RoleLogin {
                host: user.host.clone(),
                database: user.database.clone(),
                role: row.get(2),
                password: row.get(3),
            },
        }))
    }

    /// Creates a user on the host with the fewest users (see [`Accounts::create_user_on`]).
    pub async fn create_user(&self, username: &str, api_key: Option<&str>) -> Result<String> {
        self.create_user_on(username, api_key, None).await
    }

    /// Creates a user on database host `host` (`None`: the one with the fewest users): two
    /// roles, a database from the template owned by the master role, and the metadata rows.
    /// Fails clearly if the name is taken or invalid, or the host unknown.
    pub async fn create_user_on(
        &self,
        username: &str,
        api_key: Option<&str>,
        host: Option<&str>,
    ) -> Result<String> {
        validate_name("user", username)?;
        let master_key = match api_key {
            Some(key) if key.is_empty() || key == DEFAULT_PUBLIC => {
                invalid!("the API key must be a non-empty string other than '{DEFAULT_PUBLIC}'")
            }
            Some(key) => key.to_string(),
            None => random_token(32),
        };
        // The lock is taken on the metadata's cluster: it serialises provisioning on every host.
        let lock = connect(&self.admin).await?;
        lock.execute("SELECT pg_advisory_lock($1)", &[&PROVISION_LOCK])
            .await?;
        let result = async {
            let host = match host {
                Some(name) => self.hosts.resolve_name(name).await?,
                None => self.hosts.least_used().await?,
            };
            let host_admin = self.hosts.admin(host.as_deref()).await?;
            let admin = connect(&host_admin)
                .await
                .with_context(|| format!("connecting to the database host of '{username}'"))?;
            self.provision(&admin, &host_admin, host.as_deref(), username, &master_key)
                .await
        }
        .await;
        lock.execute("SELECT pg_advisory_unlock($1)", &[&PROVISION_LOCK])
            .await?;
        result.map(|()| master_key)
    }

    /// Creates the user's roles and database with `admin`, a superuser session on the user's
    /// host (`host`, reached with `host_admin`), then its metadata.
    async fn provision(
        &self,
        admin: &tokio_postgres::Client,
        host_admin: &tokio_postgres::Config,
        host: Option<&str>,
        username: &str,
        master_key: &str,
    ) -> Result<()> {
        if self.user(username).await?.is_some() {
            invalid!("user '{username}' already exists");
        }
        let database = format!("carto_user_{username}");
        let master_role = format!("carto_{username}_master");
        let public_role = format!("carto_{username}_public");
        let master_password = random_token(32);
        let public_password = random_token(32);

        // Leftovers of an earlier, interrupted provisioning of the same name.
        drop_user_objects(admin, &database, &[&master_role, &public_role]).await?;

        let role_sql = |role: &str, password: &str| {
            format!(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 PASSWORD {}",
                quote_ident(role),
                password_literal(password.as_bytes())
            )
        };
        let steps = async {
            admin
                .batch_execute(&role_sql(&master_role, &master_password))
                .await?;
            admin
                .batch_execute(&role_sql(&public_role, &public_password))
                .await?;
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {} OWNER {} TEMPLATE {}",
                    quote_ident(&database),
                    quote_ident(&master_role),
                    quote_ident(TEMPLATE_DB),
                ))
                .await?;
            admin
                .batch_execute(&format!(
                    "REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
                     GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {public}",
                    db = quote_ident(&database),
                    public = quote_ident(&public_role),
                ))
                .await?;
            let mut user_db = host_admin.clone();
            user_db.dbname(&database);
            let user_admin = connect(&user_db).await?;
            user_admin
                .batch_execute(&format!(
                    "ALTER SCHEMA public OWNER TO {master}; \
                     REVOKE ALL ON SCHEMA public FROM PUBLIC; \
                     GRANT USAGE ON SCHEMA public TO {public}; \
                     ALTER DATABASE {db} SET search_path = public, cartodb",
                    db = quote_ident(&database),
                    master = quote_ident(&master_role),
                    public = quote_ident(&public_role),
                ))
                .await?;
            let meta = self.meta.get().await?;
            meta.execute(
                "INSERT INTO users (username, database, host) VALUES ($1, $2, $3)",
                &[&username, &database, &host],
            )
            .await?;
            for (token, kind, role, password) in [
                (master_key, "master", &master_role, &master_password),
                (DEFAULT_PUBLIC, "default", &public_role, &public_password),
            ] {
                meta.execute(
                    "INSERT INTO api_keys (username, token_sha256, kind, db_role, db_password) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&username, &token_hash(token), &kind, role, password],
                )
                .await?;
            }
            Ok::<_, crate::error::ApiError>(())
        };
        if let Err(error) = steps.await {
            let _ = drop_user_objects(admin, &database, &[&master_role, &public_role]).await;
            if let Ok(meta) = self.meta.get().await {
                let _ = meta
                    .execute("DELETE FROM users WHERE username = $1", &[&username])
                    .await;
            }
            return Err(error.context(format!("creating user '{username}'")));
        }
        Ok(())
    }

    /// Sets the user's database quota in bytes (0 = unlimited), read by COPY FROM as
    /// `cartodb._CDB_UserQuotaInBytes()`.
    pub async fn set_quota(&self, username: &str, bytes: u64) -> Result<()> {
        let Some(user) = self.user(username).await? else {
            invalid!("user '{username}' does not exist");
        };
        let client = connect(&self.user_admin(&user).await?).await?;
        client
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION cartodb._CDB_UserQuotaInBytes() RETURNS int8 \
                 LANGUAGE sql IMMUTABLE AS 'SELECT {bytes}::int8'"
            ))
            .await?;
        Ok(())
    }
}

/// Creates the metadata database and the template database on first use.
async fn bootstrap(admin: &tokio_postgres::Config) -> Result<()> {
    let client = connect(admin)
        .await
        .context("connecting to PostgreSQL as superuser")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&PROVISION_LOCK])
        .await?;
    let result = async {
        crate::hosts::create_once(&client, admin, META_DB, META_SCHEMA).await?;
        // A role of ours may connect to its own user's database and nothing else: not the
        // metadata (key hashes, role passwords, host URLs), not the template, not the
        // maintenance database. Every start says so again, in case an operator's tool granted
        // it back.
        client
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                quote_ident(META_DB),
            ))
            .await
            .context("revoking CONNECT on the server's own databases")?;
        crate::hosts::prepare(admin).await?;
        Ok::<_, crate::error::ApiError>(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&PROVISION_LOCK])
        .await?;
    result
}

async fn drop_user_objects(
    admin: &tokio_postgres::Client,
    database: &str,
    roles: &[&str],
) -> Result<()> {
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(database)
        ))
        .await?;
    for role in roles {
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)))
            .await?;
    }
    Ok(())
}

const META_SCHEMA: &str = r#"
CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    username    text NOT NULL UNIQUE,
    database    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE api_keys (
    username     text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    token_sha256 text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('master', 'regular', 'default')),
    name         text,
    db_role      text NOT NULL,
    db_password  text NOT NULL,
    grants_sql   boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (username, token_sha256)
);
"#;

/// What every user database starts with: PostGIS and the `cartodb` schema of CARTO helpers.
pub(crate) const TEMPLATE_SCHEMA: &str = include_str!("../sql/template.sql");

/// SHA-256 of a token, hex-encoded. Tokens are random and long, so a fast hash is enough to
/// keep them out of the metadata; a slow password hash would only slow every request.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect::<String>()
        .to_lowercase()
}

/// User names become host labels and part of database and role names; host names are held to
/// the same rules. `kind` says which one `name` is, for the message.
pub(crate) fn validate_name(kind: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        invalid!(
            "invalid {kind} name '{name}': use 1 to 40 lowercase letters, digits, '-' or '_', \
             starting with a letter or digit"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["alice", "a", "team-1", "x_y"] {
            validate_name("user", ok).unwrap();
        }
        for bad in ["", "Alice", "-a", "a.b", "a b", "a\"b", &"a".repeat(41)] {
            assert!(validate_name("user", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_hashed() {
        assert_eq!(token_hash("1234").len(), 64);
        assert_ne!(token_hash("1234"), token_hash("1235"));
    }
}
