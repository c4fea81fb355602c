//! Shared helpers: a server, users, and the `carto` binary pointed at them.

use std::path::Path;

use carto_sql_api::testing::{TestServer, TestUser};

/// The `carto` binary with `user`'s credentials and a private config dir.
pub fn carto(server: &TestServer, user: &TestUser, config_dir: &Path) -> assert_cmd::Command {
    let mut command = bare(config_dir);
    command.args([
        "--base-url",
        &server.base_url(user),
        "--api-key",
        &user.api_key,
    ]);
    command
}

/// The `carto` binary as a plain process (to run in the background, or to signal), with
/// `user`'s credentials and a private config dir.
pub fn process(server: &TestServer, user: &TestUser, config_dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("carto"));
    command.env("CARTO_CONFIG_DIR", config_dir).args([
        "--base-url",
        &server.base_url(user),
        "--api-key",
        &user.api_key,
    ]);
    command
}

/// The `carto` binary with no credentials and a private config dir.
pub fn bare(config_dir: &Path) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::cargo_bin("carto").expect("the carto binary");
    command
        .env("CARTO_CONFIG_DIR", config_dir)
        .env_remove("CARTO_API_URL")
        .env_remove("CARTO_API_KEY");
    command
}

/// Runs SQL as `user` through the server's own API (not the CLI under test).
pub async fn sql(server: &TestServer, user: &TestUser, q: &str) -> serde_json::Value {
    let client = carto::Client::new(
        carto::Credentials::new(&server.base_url(user), user.api_key.clone()).unwrap(),
    )
    .unwrap();
    serde_json::to_value(
        client
            .sql()
            .send(q)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .rows,
    )
    .unwrap()
}

/// Output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
