//! Regular API keys: one login role per key holding exactly the table privileges it was given.
//!
//! The role can connect to its user's database and use the schemas of its tables, nothing
//! more; every statement sent with the key runs as that role, so PostgreSQL itself refuses
//! what was not granted (`permission denied for table ...`, a 403 on the wire).

use std::fmt;
use std::str::FromStr;

use crate::error::{invalid, Context, OrInvalid, Result};
use serde::Serialize;

use super::{random_token, token_hash, Accounts, KeyKind, DEFAULT_PUBLIC};
use crate::db::{connect, password_literal, quote_ident};

/// Table privileges a key may be given.
pub const TABLE_PRIVILEGES: [&str; 7] = [
    "select",
    "insert",
    "update",
    "delete",
    "truncate",
    "references",
    "trigger",
];

/// Privileges on one table, written `TABLE:priv,priv` (e.g. `public.cities:select,insert`).
/// The table may be schema-qualified; unquoted names fold to lower case as in SQL, double-quoted
/// ones are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Schema-qualified table name, `schema.table` (schema `public` unless given).
    pub table: String,
    /// Privileges, lower case, from [`TABLE_PRIVILEGES`], without repeats.
    pub privileges: Vec<String>,
    #[serde(skip)]
    schema_name: String,
    #[serde(skip)]
    table_name: String,
}

impl Grant {
    /// The table, quoted for SQL.
    fn quoted_table(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema_name),
            quote_ident(&self.table_name)
        )
    }
}

impl FromStr for Grant {
    type Err = crate::error::ApiError;

    fn from_str(text: &str) -> Result<Self> {
        let (table, privileges) = text
            .rsplit_once(':')
            .or_invalid(|| format!("a grant is TABLE:PRIVILEGE[,PRIVILEGE...], not '{text}'"))?;
        let parts = parse_qualified_name(table.trim())?;
        let (schema_name, table_name) = match parts.as_slice() {
            [table] => ("public".to_string(), table.clone()),
            [schema, table] => (schema.clone(), table.clone()),
            _ => invalid!("'{table}' is not a table name: use TABLE or SCHEMA.TABLE"),
        };
        let mut list = Vec::new();
        for privilege in privileges.split(',') {
            let privilege = privilege.trim().to_ascii_lowercase();
            if !TABLE_PRIVILEGES.contains(&privilege.as_str()) {
                invalid!(
                    "unknown privilege '{privilege}' on {table}: use {}",
                    TABLE_PRIVILEGES.join(", ")
                );
            }
            if !list.contains(&privilege) {
                list.push(privilege);
            }
        }
        Ok(Grant {
            table: format!("{schema_name}.{table_name}"),
            privileges: list,
            schema_name,
            table_name,
        })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.table, self.privileges.join(","))
    }
}

/// Splits `a.b` / `"A.x".b` into identifiers, folding unquoted ones to lower case.
fn parse_qualified_name(text: &str) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => invalid!("unterminated quoted name in '{text}'"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            invalid!("empty name in '{text}'");
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {}
            Some(c) => invalid!("unexpected '{c}' after a quoted name in '{text}'"),
        }
    }
}

/// What `key add` prints: the new key, once (only its hash is kept).
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    /// The user.
    pub username: String,
    /// The key's token.
    pub api_key: String,
    /// The key's name (unique per user).
    pub name: String,
    /// What it may do.
    pub grants: Vec<Grant>,
}

/// A key as `key list` shows it (never the token).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Name (`master` and `default_public` for the built-in keys unless named).
    pub name: String,
    /// `master`, `regular` or `default`.
    #[serde(rename = "type")]
    pub kind: KeyKind,
    /// The PostgreSQL role the key runs as.
    pub role: String,
    /// For regular keys, the grants they were created with.
    pub grants: Vec<String>,
}

/// Metadata added with regular keys; created if missing whenever a server opens.
pub(crate) const SCHEMA: &str = "ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS grants text[];";
/// Whether [`SCHEMA`] was applied.
pub(crate) const SCHEMA_PRESENT: &str = "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
     WHERE table_schema = 'public' AND table_name = 'api_keys' AND column_name = 'grants')";

impl Accounts {
    /// Creates a regular key for `username` holding exactly `grants` (none is allowed: such a
    /// key can connect but read nothing). `name` defaults to the role's suffix, `token` to a
    /// random one. The tables must exist.
    pub async fn create_key(
        &self,
        username: &str,
        name: Option<&str>,
        token: Option<&str>,
        grants: &[Grant],
    ) -> Result<NewKey> {
        let Some(user) = self.user(username).await? else {
            invalid!("user '{username}' does not exist");
        };
        let token = match token {
            Some(t) if t.is_empty() || t == DEFAULT_PUBLIC => {
                invalid!("the API key must be a non-empty string other than '{DEFAULT_PUBLIC}'")
            }
            Some(t) => t.to_string(),
            None => random_token(32),
        };
        let suffix = random_token(8);
        let role = format!("carto_{username}_key_{suffix}");
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| format!("key_{suffix}"));
        if name.is_empty() {
            invalid!("a key name cannot be empty");
        }
        let meta = self.meta.get().await?;
        let taken = meta
            .query_opt(
                "SELECT 1 FROM api_keys WHERE username = $1 AND (name = $2 OR token_sha256 = $3)",
                &[&username, &name, &token_hash(&token)],
            )
            .await?
            .is_some();
        if taken {
            invalid!("user '{username}' already has a key with that name or token");
        }

        let user_db_admin = self.user_admin(&user).await?;
        let admin = connect(&user_db_admin).await?;
        let password = random_token(32);
        let steps = async {
            admin
                .batch_execute(&format!(
                    "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                     NOINHERIT PASSWORD {password}; GRANT CONNECT ON DATABASE {db} TO {role}",
                    role = quote_ident(&role),
                    password = password_literal(password.as_bytes()),
                    db = quote_ident(&user.database),
                ))
                .await?;
            let mut user_db = connect(&user_db_admin).await?;
            // One transaction: a missing table leaves no half-granted role behind.
            let tx = user_db.transaction().await?;
            tx.batch_execute(&format!(
                "GRANT USAGE ON SCHEMA public TO {}",
                quote_ident(&role)
            ))
            .await?;
            for grant in grants {
                tx.batch_execute(&format!(
                    "GRANT USAGE ON SCHEMA {schema} TO {role}",
                    schema = quote_ident(&grant.schema_name),
                    role = quote_ident(&role)
                ))
                .await
                .with_context(|| format!("schema of {}", grant.table))?;
                if grant.privileges.is_empty() {
                    continue;
                }
                tx.batch_execute(&format!(
                    "GRANT {} ON TABLE {} TO {}",
                    grant.privileges.join(", ").to_uppercase(),
                    grant.quoted_table(),
                    quote_ident(&role)
                ))
                .await
                .with_context(|| format!("granting on {}", grant.table))?;
                if grant.privileges.iter().any(|p| p == "insert") {
                    // Inserting into a serial (e.g. cartodb_id) column draws from its sequence.
                    let sequences = tx
                        .query(
                            "SELECT d.objid::pg_catalog.regclass::pg_catalog.text \
                             FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s \
                               ON s.oid OPERATOR(pg_catalog.=) d.objid \
                              AND s.relkind OPERATOR(pg_catalog.=) 'S' \
                             WHERE d.refobjid OPERATOR(pg_catalog.=) \
                                   $1::pg_catalog.text::pg_catalog.regclass::pg_catalog.oid \
                               AND d.deptype OPERATOR(pg_catalog.=) ANY ('{a,i}')",
                            &[&grant.quoted_table()],
                        )
                        .await?;
                    for sequence in sequences {
                        let sequence: String = sequence.get(0);
                        tx.batch_execute(&format!(
                            "GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {}",
                            quote_ident(&role)
                        ))
                        .await?;
                    }
                }
            }
            tx.commit().await?;
            let grant_texts: Vec<String> = grants.iter().map(Grant::to_string).collect();
            meta.execute(
                "INSERT INTO api_keys (username, token_sha256, kind, name, db_role, db_password, \
                 grants) VALUES ($1, $2, 'regular', $3, $4, $5, $6)",
                &[
                    &username,
                    &token_hash(&token),
                    &name,
                    &role,
                    &password,
                    &grant_texts,
                ],
            )
            .await?;
            Ok::<_, crate::error::ApiError>(())
        };
        if let Err(error) = steps.await {
            let _ = drop_key_role(&user_db_admin, &role).await;
            return Err(error.context(format!("creating a key for '{username}'")));
        }
        Ok(NewKey {
            username: username.to_string(),
            api_key: token,
            name,
            grants: grants.to_vec(),
        })
    }

    /// `username`'s keys, master first.
    pub async fn keys(&self, username: &str) -> Result<Vec<KeyInfo>> {
        if self.user(username).await?.is_none() {
            invalid!("user '{username}' does not exist");
        }
        let meta = self.meta.get().await?;
        let rows = meta
            .query(
                "SELECT coalesce(name, CASE kind WHEN 'master' THEN 'master' \
                 WHEN 'default' THEN 'default_public' ELSE '' END), kind, db_role, \
                 coalesce(grants, '{}') FROM api_keys WHERE username = $1 \
                 ORDER BY kind <> 'master', kind <> 'default', created_at, name",
                &[&username],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| KeyInfo {
                name: row.get(0),
                kind: KeyKind::parse(row.get(1)),
                role: row.get(2),
                grants: row.get(3),
            })
            .collect())
    }

    /// Deletes `username`'s regular key named `key` (or whose token is `key`): its role loses
    /// its privileges and sessions and is dropped, so the token stops working at once.
    pub async fn delete_key(&self, username: &str, key: &str) -> Result<()> {
        let Some(user) = self.user(username).await? else {
            invalid!("user '{username}' does not exist");
        };
        let meta = self.meta.get().await?;
        let row = meta
            .query_opt(
                "DELETE FROM api_keys WHERE username = $1 AND kind = 'regular' \
                 AND (name = $2 OR token_sha256 = $3) RETURNING db_role",
                &[&username, &key, &token_hash(key)],
            )
            .await?
            .or_invalid(|| format!("user '{username}' has no regular key '{key}'"))?;
        let role: String = row.get(0);
        drop_key_role(&self.user_admin(&user).await?, &role).await
    }
}

/// Drops `role` and what it owns; `user_db_admin` reaches its user's database as the superuser.
async fn drop_key_role(user_db_admin: &tokio_postgres::Config, role: &str) -> Result<()> {
    let user_db = connect(user_db_admin).await?;
    let exists = user_db
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
            &[&role],
        )
        .await?
        .is_some();
    if !exists {
        return Ok(());
    }
    user_db
        .batch_execute(&format!("DROP OWNED BY {}", quote_ident(role)))
        .await?;
    user_db
        .execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE usename OPERATOR(pg_catalog.=) $1",
            &[&role],
        )
        .await?;
    user_db
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {} FROM {role}; DROP ROLE {role}",
            quote_ident(user_db_admin.get_dbname().unwrap_or_default()),
            role = quote_ident(role)
        ))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse() {
        let g: Grant = "Cities:SELECT, insert,select".parse().unwrap();
        assert_eq!(g.table, "public.cities");
        assert_eq!(g.privileges, ["select", "insert"]);
        assert_eq!(g.quoted_table(), "\"public\".\"cities\"");
        assert_eq!(g.to_string(), "public.cities:select,insert");
        let g: Grant = "\"My.Schema\".\"T \"\"x\"\"\":delete".parse().unwrap();
        assert_eq!(g.quoted_table(), "\"My.Schema\".\"T \"\"x\"\"\"");
        let g: Grant = "other.t:update".parse().unwrap();
        assert_eq!(g.table, "other.t");
        for bad in [
            "t",
            "t:",
            "t:all",
            "t:select;drop",
            ":select",
            "a.b.c:select",
            "\"x:select",
            "\"x\"y:select",
            "a..b:select",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
    }
}
