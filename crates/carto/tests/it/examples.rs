//! The examples, run as their own processes against a test server.
//!
//! `cargo test` builds the examples with the tests; a filtered run (`--test it`) may not, and
//! then these tests say so and check nothing.

use std::path::PathBuf;

use carto_sql_api::testing::{TestServer, TestUser};

use crate::support::{count, setup};

fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "{} not built (run the whole `cargo test -p carto`)",
            path.display()
        );
        None
    }
}

async fn run(
    name: &str,
    server: &TestServer,
    user: &TestUser,
    env: &[(&str, String)],
    args: &[&str],
) -> Option<String> {
    let path = example(name)?;
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(path)
        .args(args)
        .current_dir(dir.path())
        .env("CARTO_API_URL", server.base_url(user))
        .env("CARTO_API_KEY", &user.api_key)
        .envs(env.iter().map(|(k, v)| (*k, v.clone())))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(stdout)
}

#[tokio::test]
async fn csv_import_export_runs() {
    let (server, user, _client) = setup().await;
    let Some(out) = run("csv_import_export", &server, &user, &[], &[]).await else {
        return;
    };
    assert!(out.contains("imported 10000 rows"), "{out}");
    assert!(out.contains("exported"), "{out}");
    assert_eq!(count(&server, &user, "csv_example").await, 10000);
}

#[tokio::test]
async fn transfer_runs_between_accounts() {
    let (server, user, _client) = setup().await;
    let other = server.create_user().await;
    let env = [
        ("CARTO_DEST_API_URL", server.base_url(&other)),
        ("CARTO_DEST_API_KEY", other.api_key.clone()),
    ];
    let Some(out) = run("transfer", &server, &user, &env, &[]).await else {
        return;
    };
    assert!(out.contains("copied 100000 rows"), "{out}");
    assert_eq!(count(&server, &other, "transfer_dest").await, 100000);
}

#[tokio::test]
async fn radar_runs_and_cartodbfies() {
    let (server, user, _client) = setup().await;
    let Some(out) = run("radar", &server, &user, &[], &["1"]).await else {
        return;
    };
    assert!(out.contains("loaded 90000 echoes"), "{out}");
    assert!(out.contains("cartodbfied"), "{out}");
    let with_mercator: i64 = server
        .superuser_client(&user)
        .await
        .query_one(
            "SELECT count(*) FROM radar_sweep WHERE cartodb_id IS NOT NULL AND the_geom_webmercator IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(with_mercator, 90000);
}
