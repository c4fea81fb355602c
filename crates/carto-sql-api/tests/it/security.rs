//! Tenants are hostile: a master key plants objects that shadow what privileged code might call
//! (operators, aggregates, functions) and that make its own role superuser if they ever run as
//! one; then every path where the server works with more privilege inside the user's database
//! runs — the admin CLI, cartodbfy, quotas, batch jobs and the recovery of jobs a dead server
//! left running. The tenant's roles must still not be superusers, and nothing planted may have
//! run as a superuser.

use std::time::{Duration, Instant};

use carto_sql_api::testing::{TestServer, TestUser};
use serde_json::json;

use sha2::Digest;

use crate::jobs::{cancel, created, finished, wait_for};
use crate::support::{cli, copy_from, database_url, http, sql};

/// The objects a tenant plants: each calls `public.escalate`, which, when it runs as a
/// superuser, records where it ran and makes the tenant's master role a superuser.
fn trap_sql(master_role: &str) -> String {
    format!(
        r#"
CREATE TABLE public.pwned (who text, via text);
CREATE FUNCTION public.escalate(via text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
        INSERT INTO public.pwned VALUES (current_user, via);
        EXECUTE 'ALTER ROLE {master_role} SUPERUSER';
    END IF;
END $f$;

-- key add's sequence lookup compared `oid = regclass`: an exact match beats pg_catalog's.
CREATE FUNCTION public.trap_eq(a oid, b regclass) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('=(oid,regclass)'); RETURN a OPERATOR(pg_catalog.=) b::oid; END $f$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.trap_eq);
CREATE FUNCTION public.trap_eq_name(a name, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('=(name,text)'); RETURN a::text OPERATOR(pg_catalog.=) b; END $f$;
CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.trap_eq_name);
CREATE FUNCTION public.trap_like(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('~~(text,text)'); RETURN a OPERATOR(pg_catalog.~~) b; END $f$;
CREATE OPERATOR public.~~ (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_like);

-- The recovery sweep counted `count(pg_terminate_backend(pid))`: count(boolean) beats count("any").
CREATE FUNCTION public.trap_count(n bigint, x boolean) RETURNS bigint LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('count(boolean)'); RETURN n + 1; END $f$;
CREATE AGGREGATE public.count(boolean) (SFUNC = public.trap_count, STYPE = bigint, INITCOND = '0');

-- Functions and function-style casts with more specific argument types than pg_catalog's.
CREATE FUNCTION public.pg_terminate_backend(pid integer) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('pg_terminate_backend(integer)'); RETURN false; END $f$;
CREATE FUNCTION public.pg_cancel_backend(pid bigint) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('pg_cancel_backend(bigint)'); RETURN false; END $f$;
CREATE FUNCTION public.text(r regclass) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('text(regclass)'); RETURN r::oid::text; END $f$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('now()'); RETURN pg_catalog.now(); END $f$;
CREATE FUNCTION public.to_regclass(name text) RETURNS regclass LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('to_regclass(text)'); RETURN pg_catalog.to_regclass(name); END $f$;
CREATE FUNCTION public.pg_backend_pid() RETURNS integer LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('pg_backend_pid()'); RETURN pg_catalog.pg_backend_pid(); END $f$;
CREATE FUNCTION public.format(fmt text, a text, b text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate('format(text,text,text)'); RETURN pg_catalog.format(fmt, a, b); END $f$;

-- Plain tables where privileged code might look for its own.
CREATE TABLE public.cdb_batch_runs (job_id text, step text, committed_at timestamptz);
CREATE TABLE public.pg_stat_activity (pid int, query text, state text, datname name);
"#
    )
}

/// What `who` (a superuser connection to the user's database) finds: the tenant's roles that
/// are superusers, and where planted code ran as a superuser.
async fn escalations(server: &TestServer, user: &TestUser) -> (Vec<String>, Vec<String>) {
    let db = server.superuser_client(user).await;
    let roles = db
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles \
             WHERE rolsuper AND rolname::text LIKE $1",
            &[&format!("carto\\_{}\\_%", user.name)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pwned = db
        .query(
            "SELECT DISTINCT who || ' via ' || via FROM public.pwned",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (roles, pwned)
}

/// Every privileged path, run after the tenant planted its traps, leaves the tenant where it was.
#[tokio::test]
async fn shadowing_objects_never_run_as_superuser() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let name = user.name.as_str();
    let master_role = format!("carto_{name}_master");
    sql(&server, &user, &trap_sql(&master_role)).await;
    sql(
        &server,
        &user,
        "CREATE TABLE cities (cartodb_id serial, name text); \
         SELECT CDB_CartodbfyTable(current_schema, 'cities')",
    )
    .await;

    // The admin CLI on the user: keys (grants with a sequence lookup), limits, a new user.
    let (ok, _, stderr) = cli(&["key", "add", name, "--grant", "cities:select,insert"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&[
        "key",
        "add",
        name,
        "--name",
        "gone",
        "--grant",
        "cities:select",
    ]);
    assert!(ok, "{stderr}");
    let (ok, keys, stderr) = cli(&["key", "list", name]);
    assert!(
        ok && keys.as_array().is_some_and(|k| k.len() == 4),
        "{stderr} {keys}"
    );
    let (ok, _, stderr) = cli(&["key", "delete", name, "gone"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["user", "limits", name, "--batch-timeout", "60000"]);
    assert!(ok, "{stderr}");
    let other = format!("{name}x");
    let (ok, _, stderr) = cli(&["user", "add", &other, "--quota", "100000000"]);
    assert!(ok, "{stderr}");

    // Loads through COPY (quota checks) and CARTO's helpers.
    let (status, body) = copy_from(
        &server,
        &user,
        "COPY cities (name) FROM STDIN WITH (FORMAT csv)",
        "Madrid\nBarcelona\n",
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    sql(
        &server,
        &user,
        "SELECT CDB_CartodbfyTable(current_schema, 'cities'); \
         SELECT cartodb.CDB_TableMetadataTouch('cities'); SELECT cartodb._CDB_TableMetadataPurge()",
    )
    .await;

    // A batch job (the worker prepares the database as superuser) ...
    let id = created(
        &server,
        &user,
        json!(["INSERT INTO cities (name) VALUES ('Bilbao')"]),
    )
    .await;
    let job = finished(&server, &user, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    // ... and one left running by a server that dies: the next server recovers it.
    let id = created(&server, &user, json!("SELECT pg_sleep(30)")).await;
    wait_for(&server, &user, &id, &["running"], Duration::from_secs(60)).await;
    drop(server);
    let server = TestServer::start().await;
    let mut meta = carto_sql_api::testing::cluster();
    meta.dbname("carto_meta");
    let meta = carto_sql_api::db::connect(&meta).await.unwrap();
    let start = Instant::now();
    // Recovered: the sweep ended the dead server's backend and counted a restart.
    while meta
        .query_one("SELECT restarts FROM batch_jobs WHERE job_id = $1", &[&id])
        .await
        .unwrap()
        .get::<_, i32>(0)
        == 0
    {
        assert!(start.elapsed() < Duration::from_secs(60), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel(&server, &user, &id).await;

    let (superusers, pwned) = escalations(&server, &user).await;
    assert!(
        superusers.is_empty() && pwned.is_empty(),
        "tenant roles that became superuser: {superusers:?}; planted code that ran as \
         superuser: {pwned:?}"
    );
}

/// How `user`'s roles log in: role name and password, from the metadata.
async fn role_logins(user: &TestUser) -> Vec<(String, String)> {
    let mut meta = carto_sql_api::testing::cluster();
    meta.dbname("carto_meta");
    let meta = carto_sql_api::db::connect(&meta).await.unwrap();
    meta.query(
        "SELECT db_role, db_password FROM api_keys WHERE username = $1",
        &[&user.name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A key's role, even with its password in hand, reaches no database but its own user's: not
/// the metadata (key hashes, role passwords), the template, the maintenance database or
/// another user's.
#[tokio::test]
async fn key_roles_reach_only_their_own_database() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let other = server.create_user().await;
    let logins = role_logins(&user).await;
    assert_eq!(logins.len(), 2);
    for (role, password) in logins {
        let mut config = carto_sql_api::testing::cluster();
        config.user(&role).password(password.as_str());
        config.dbname(format!("carto_user_{}", user.name));
        assert!(
            carto_sql_api::db::connect(&config).await.is_ok(),
            "{role} cannot reach its own database"
        );
        let foreign = format!("carto_user_{}", other.name);
        for database in ["carto_meta", "carto_template", "postgres", foreign.as_str()] {
            config.dbname(database);
            let error = carto_sql_api::db::connect(&config)
                .await
                .err()
                .unwrap_or_else(|| panic!("{role} connected to {database}"));
            let message = error.as_db_error().map(|e| e.message().to_string());
            assert!(
                message
                    .as_deref()
                    .is_some_and(|m| m.contains("permission denied for database")),
                "{role} on {database}: {error:?}"
            );
        }
    }
}

/// The admin CLI on the test cluster with every log level on: success, stdout, stderr.
fn traced_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carto-sql-api"))
        .env("RUST_LOG", "trace")
        .arg("--database-url")
        .arg(database_url())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// At `RUST_LOG=trace`, neither the admin commands nor the server log a key, a key's hash, a
/// role's password or the superuser's.
#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let name = "logsecrets";
    let master_key = "master-key-7f3a9c1e55d2";
    let regular_key = "regular-key-0b8e4d6a91c3";
    let mut logs = String::new();
    let mut admin = |args: &[&str]| {
        let (ok, _, stderr) = traced_cli(args);
        assert!(ok, "{args:?}: {stderr}");
        logs.push_str(&stderr);
    };
    admin(&["user", "add", name, "--api-key", master_key]);
    admin(&["key", "add", name, "--name", "k1", "--api-key", regular_key]);
    admin(&["key", "list", name]);
    admin(&["user", "limits", name, "--batch-timeout", "60000"]);

    let listen = crate::support::free_local_addr();
    let log_file = tempfile::NamedTempFile::new().unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_carto-sql-api"))
        .env("RUST_LOG", "trace")
        .arg("--database-url")
        .arg(database_url())
        .args(["serve", "--listen", &listen, "--batch-workers", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(log_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let api = format!("http://{listen}/user/{name}/api/v2");
    let started = Instant::now();
    while reqwest::get(format!("{api}/version")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The keys travel every way a client sends them.
    let sql_url = format!("{api}/sql");
    let answers = [
        http()
            .get(&sql_url)
            .query(&[("q", "CREATE TABLE t (x int)"), ("api_key", master_key)])
            .send()
            .await,
        http()
            .post(&sql_url)
            .form(&[("q", "SELECT 1"), ("api_key", master_key)])
            .send()
            .await,
        http()
            .post(&sql_url)
            .basic_auth(name, Some(regular_key))
            .json(&json!({ "q": "SELECT 1" }))
            .send()
            .await,
        http()
            .post(format!("{api}/sql/copyfrom"))
            .query(&[("q", "COPY t FROM STDIN"), ("api_key", master_key)])
            .body("1\n2\n")
            .send()
            .await,
        http()
            .get(format!("{api}/sql/copyto"))
            .query(&[("q", "COPY t TO STDOUT"), ("api_key", master_key)])
            .send()
            .await,
        http()
            .post(format!("{api}/sql/job"))
            .query(&[("api_key", master_key)])
            .json(&json!({ "query": "SELECT 1" }))
            .send()
            .await,
    ];
    for answer in answers {
        let answer = answer.unwrap();
        let status = answer.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            answer.text().await.unwrap()
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    serve.wait().unwrap();
    logs.push_str(&std::fs::read_to_string(log_file.path()).unwrap());

    let hash = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let mut secrets = vec![
        master_key.to_string(),
        regular_key.to_string(),
        hash(master_key),
        hash(regular_key),
        String::from_utf8_lossy(carto_sql_api::testing::cluster().get_password().unwrap())
            .into_owned(),
    ];
    let user = TestUser {
        name: name.into(),
        api_key: master_key.into(),
    };
    let logins = role_logins(&user).await;
    assert_eq!(logins.len(), 3);
    secrets.extend(logins.into_iter().map(|(_, password)| password));
    // The logs are real: they show the requests (and at trace level, much more).
    assert!(
        logs.contains("/user/logsecrets/api/v2/sql/copyfrom"),
        "{logs}"
    );
    for secret in secrets {
        let line = logs.lines().find(|line| line.contains(&secret));
        assert!(
            line.is_none(),
            "a secret in the logs: {}",
            line.unwrap_or("")
        );
    }
}

/// Every SQL or PL/pgSQL function of a user database that runs as its owner (the superuser)
/// fixes its own `search_path`, so a caller's path cannot redirect the names it uses. (C
/// functions resolve no SQL names: PostGIS's `ST_EstimatedExtent`, a definer function so that
/// it may read the planner's statistics, is one.)
#[tokio::test]
async fn security_definer_functions_pin_search_path() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let rows = server
        .superuser_client(&user)
        .await
        .query(
            "SELECT p.oid::regprocedure::text, \
                    coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             JOIN pg_language l ON l.oid = p.prolang \
             WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND l.lanname NOT IN ('c', 'internal')",
            &[],
        )
        .await
        .unwrap();
    assert!(
        rows.len() >= 3,
        "the cartodb schema's definer functions are gone"
    );
    let loose: Vec<String> = rows
        .iter()
        .filter(|row| !row.get::<_, bool>(1))
        .map(|row| row.get(0))
        .collect();
    assert!(
        loose.is_empty(),
        "SECURITY DEFINER without a pinned search_path: {loose:?}"
    );
}
