//! Database hosts: the PostgreSQL clusters that hold user databases.
//!
//! The cluster holding the metadata (`carto_meta`) is the `default` host. More hosts are
//! registered with a superuser URL ([`Hosts::add`]); each user's database and roles live on one
//! host (`users.host`, NULL for the default), and every connection made for the user, whether
//! a request's, a batch job's or a superuser repair, goes there. The URLs hold superuser
//! credentials: they live in the metadata database only, which no tenant role can connect to,
//! and are never logged nor printed.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::accounts::{META_DB, TEMPLATE_DB};
use crate::db::{self, connect, quote_ident};
use crate::error::{invalid, ApiError, Context, OrInvalid, Result};

/// The name of the host holding the metadata database.
pub const DEFAULT_HOST: &str = "default";

/// Metadata added with database hosts; created if missing whenever a server opens.
pub(crate) const SCHEMA: &str = "
CREATE TABLE hosts (
    name         text PRIMARY KEY,
    database_url text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE users ADD COLUMN host text REFERENCES hosts (name);
";
/// Whether [`SCHEMA`] was applied.
pub(crate) const SCHEMA_PRESENT: &str = "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
     WHERE table_schema = 'public' AND table_name = 'hosts')";

/// What `host list` shows of one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// Host name (`default` for the metadata's cluster).
    pub name: String,
    /// Users whose database lives there.
    pub users: i64,
    /// Total size of those databases in bytes; `None` when the host could not be reached.
    pub size_bytes: Option<i64>,
}

/// The registered hosts, and the superuser settings that reach each. Cheap to clone.
#[derive(Clone)]
pub struct Hosts {
    /// Privileged superuser settings of the default host.
    default: tokio_postgres::Config,
    meta: deadpool_postgres::Pool,
    /// Privileged superuser settings per registered host: a host's URL never changes once
    /// registered, so what was read once stays true.
    known: Arc<Mutex<HashMap<String, tokio_postgres::Config>>>,
}

impl Hosts {
    /// Hosts registered in the metadata `meta`, besides the default one reached with the
    /// (privileged) superuser settings `default`.
    pub(crate) fn new(default: tokio_postgres::Config, meta: deadpool_postgres::Pool) -> Self {
        Hosts {
            default,
            meta,
            known: Arc::default(),
        }
    }

    /// The privileged superuser settings of the default host (the metadata's cluster).
    pub(crate) fn default_admin(&self) -> &tokio_postgres::Config {
        &self.default
    }

    /// The privileged superuser settings of `host` (`None`: the default host).
    pub(crate) async fn admin(&self, host: Option<&str>) -> Result<tokio_postgres::Config> {
        let Some(host) = host else {
            return Ok(self.default.clone());
        };
        if let Some(known) = self.lock().get(host) {
            return Ok(known.clone());
        }
        let client = self.meta.get().await.context("looking up a host")?;
        let row = client
            .query_opt("SELECT database_url FROM hosts WHERE name = $1", &[&host])
            .await
            .context("looking up a host")?
            .or_invalid(|| format!("database host '{host}' does not exist"))?;
        let config = parse_url(row.get(0))?;
        self.lock().insert(host.to_string(), config.clone());
        Ok(config)
    }

    /// The privileged superuser settings of the host holding `username`'s database.
    pub(crate) async fn admin_of_user(&self, username: &str) -> Result<tokio_postgres::Config> {
        let client = self.meta.get().await.context("looking up a user's host")?;
        let row = client
            .query_opt("SELECT host FROM users WHERE username = $1", &[&username])
            .await
            .context("looking up a user's host")?
            .or_invalid(|| format!("user '{username}' does not exist"))?;
        self.admin(row.get::<_, Option<&str>>(0)).await
    }

    /// Registers a PostgreSQL cluster reached with the superuser URL `url` as host `name`,
    /// after checking that it is a superuser's and that PostGIS is available there, and
    /// preparing it (the user template, CONNECT revoked on its own databases).
    pub async fn add(&self, name: &str, url: &str) -> Result<()> {
        crate::accounts::validate_name("host", name)?;
        if name == DEFAULT_HOST {
            invalid!("'{DEFAULT_HOST}' names the metadata's own cluster: choose another name");
        }
        let admin = parse_url(url)?;
        let client = connect(&admin)
            .await
            .with_context(|| format!("connecting to host '{name}'"))?;
        let superuser: bool = client
            .query_one(
                "SELECT rolsuper FROM pg_catalog.pg_roles \
                 WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER",
                &[],
            )
            .await?
            .get(0);
        if !superuser {
            invalid!(
                "host '{name}': the URL must be a superuser's, to create user databases and roles"
            );
        }
        let postgis = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_available_extensions \
                 WHERE name OPERATOR(pg_catalog.=) 'postgis'",
                &[],
            )
            .await?
            .is_some();
        if !postgis {
            invalid!("host '{name}': PostGIS is not installed there");
        }
        let meta = self.meta.get().await?;
        let same_name = meta
            .query_opt("SELECT 1 FROM hosts WHERE name = $1", &[&name])
            .await?
            .is_some();
        if same_name {
            invalid!("database host '{name}' already exists");
        }
        if holds_metadata(&client).await? {
            invalid!(
                "host '{name}' is the metadata's own cluster, already the '{DEFAULT_HOST}' host"
            );
        }
        prepare(&admin).await?;
        meta.execute(
            "INSERT INTO hosts (name, database_url) VALUES ($1, $2)",
            &[&name, &url],
        )
        .await?;
        Ok(())
    }

    /// Every host, the default first, with its users and their databases' size.
    pub async fn list(&self) -> Result<Vec<HostInfo>> {
        let meta = self.meta.get().await?;
        let rows = meta
            .query(
                "SELECT h.name, count(u.id), array_remove(array_agg(u.database), NULL) \
                 FROM (SELECT NULL::text AS name UNION ALL SELECT name FROM hosts) h \
                 LEFT JOIN users u ON u.host IS NOT DISTINCT FROM h.name \
                 GROUP BY h.name ORDER BY h.name NULLS FIRST",
                &[],
            )
            .await?;
        let mut hosts = Vec::new();
        for row in rows {
            let name: Option<String> = row.get(0);
            let databases: Vec<String> = row.get(2);
            let size_bytes = match self.size(name.as_deref(), &databases).await {
                Ok(size) => Some(size),
                Err(error) => {
                    tracing::warn!(host = name.as_deref().unwrap_or(DEFAULT_HOST), %error, "measuring a host");
                    None
                }
            };
            hosts.push(HostInfo {
                name: name.unwrap_or_else(|| DEFAULT_HOST.into()),
                users: row.get(1),
                size_bytes,
            });
        }
        Ok(hosts)
    }

    /// The host with the fewest users (the default on a tie): where a new user goes unless
    /// told otherwise. `None` is the default host.
    pub(crate) async fn least_used(&self) -> Result<Option<String>> {
        let meta = self.meta.get().await?;
        let row = meta
            .query_one(
                "SELECT h.name FROM (SELECT NULL::text AS name UNION ALL SELECT name FROM hosts) h \
                 LEFT JOIN users u ON u.host IS NOT DISTINCT FROM h.name \
                 GROUP BY h.name ORDER BY count(u.id), h.name NULLS FIRST LIMIT 1",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Checks that `name` is a registered host; `default` means the metadata's cluster.
    pub(crate) async fn resolve_name(&self, name: &str) -> Result<Option<String>> {
        if name == DEFAULT_HOST {
            return Ok(None);
        }
        self.admin(Some(name)).await?;
        Ok(Some(name.to_string()))
    }

    async fn size(&self, host: Option<&str>, databases: &[String]) -> Result<i64> {
        if databases.is_empty() {
            return Ok(0);
        }
        let client = connect(&self.admin(host).await?).await?;
        let row = client
            .query_one(
                "SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_database_size(datname)), 0)::int8 \
                 FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) ANY ($1)",
                &[&databases],
            )
            .await?;
        Ok(row.get(0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio_postgres::Config>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A host URL's privileged settings. The error never repeats the URL: it holds a password.
fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    let config = tokio_postgres::Config::from_str(url).map_err(|_| {
        ApiError::Invalid(
            "the database URL is not a valid PostgreSQL connection string \
             (postgres://USER:PASSWORD@HOST:PORT/DB or key=value settings)"
                .into(),
        )
    })?;
    Ok(db::privileged(&config))
}

/// Whether the cluster `client` is connected to holds a metadata database.
async fn holds_metadata(client: &tokio_postgres::Client) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1",
            &[&META_DB],
        )
        .await?
        .is_some())
}

/// Creates `database` with `schema` in it (as the superuser, `client` being one of `admin`'s
/// sessions) unless it exists. A database whose set-up failed is dropped again: it would be
/// taken for a ready one next time.
pub(crate) async fn create_once(
    client: &tokio_postgres::Client,
    admin: &tokio_postgres::Config,
    database: &str,
    schema: &str,
) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1",
            &[&database],
        )
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await?;
    let setup = async {
        connect(&db::private_database(admin, database))
            .await?
            .batch_execute(schema)
            .await
    };
    if let Err(error) = setup.await {
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}",
                quote_ident(database)
            ))
            .await;
        return Err(ApiError::from(error).context(format!("setting up database {database}")));
    }
    Ok(())
}

/// Makes the cluster of the privileged superuser settings `admin` ready for user databases:
/// creates the template on first use, and revokes from PUBLIC the right to connect to the
/// template and maintenance databases (again at every call, in case a tool granted it back).
pub(crate) async fn prepare(admin: &tokio_postgres::Config) -> Result<()> {
    let client = connect(admin)
        .await
        .context("connecting to PostgreSQL as superuser")?;
    create_once(
        &client,
        admin,
        TEMPLATE_DB,
        crate::accounts::TEMPLATE_SCHEMA,
    )
    .await?;
    client
        .batch_execute(&format!(
            "REVOKE CONNECT, TEMPORARY ON DATABASE {}, postgres FROM PUBLIC",
            quote_ident(TEMPLATE_DB)
        ))
        .await
        .context("revoking CONNECT on the server's own databases")?;
    Ok(())
}
