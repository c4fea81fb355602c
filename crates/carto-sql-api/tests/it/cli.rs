//! The `carto-sql-api` binary on its embedded default: `user add`, `serve`, `user add` while
//! serving, and shutdown on SIGTERM stopping the cluster.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use carto_sql_api::embedded::{EmbeddedCluster, EmbeddedOptions};

pub(crate) fn carto_sql_api(data_dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_carto-sql-api"));
    command.arg("--data-dir").arg(data_dir).args(args);
    command
}

/// Starts `serve` on a free port of 127.0.0.1; returns the process and its address.
pub(crate) fn spawn_serve(data_dir: &std::path::Path) -> (std::process::Child, String) {
    let listen = crate::support::free_local_addr();
    let serve = carto_sql_api(data_dir, &["serve", "--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (serve, listen)
}

/// The body of the first answer to `url` once the server listens (15 s at most).
pub(crate) async fn first_answer(url: &str) -> String {
    for _ in 0..150 {
        if let Ok(response) = reqwest::get(url).await {
            return response.text().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never answered {url}");
}

/// Stops a `serve` with SIGTERM; it must exit successfully.
pub(crate) fn terminate(serve: &mut std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(serve.wait().unwrap().success());
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn user_add_serve_and_shutdown_on_the_embedded_default() {
    // A data dir of its own: this test starts its own cluster, as a user would.
    let dir = tempfile::Builder::new()
        .prefix("carto-cli-test")
        .tempdir()
        .unwrap();
    let files = EmbeddedCluster::files_dir(&EmbeddedOptions::new(dir.path())).unwrap();

    let out = carto_sql_api(dir.path(), &["user", "add", "alice", "--api-key", "secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["username"], "alice");
    assert_eq!(printed["api_key"], "secret");
    assert!(printed["base_url"]
        .as_str()
        .unwrap()
        .ends_with("/user/alice"));

    let again = carto_sql_api(dir.path(), &["user", "add", "alice"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("user 'alice' already exists"),
        "{}",
        stderr(&again)
    );

    let (mut serve, listen) = spawn_serve(dir.path());
    let url = format!("http://{listen}/user/alice/api/v2/sql?api_key=secret&q=SELECT%201%20AS%20x");
    let answer = first_answer(&url).await;
    assert!(answer.contains("\"rows\":[{\"x\":1}]"), "{answer}");

    let while_serving = carto_sql_api(dir.path(), &["user", "add", "bob"])
        .output()
        .unwrap();
    assert!(while_serving.status.success(), "{}", stderr(&while_serving));
    let bob: serde_json::Value = serde_json::from_slice(&while_serving.stdout).unwrap();
    let url = format!(
        "http://{listen}/user/bob/api/v2/sql?api_key={}&q=SELECT%202%20AS%20y",
        bob["api_key"].as_str().unwrap()
    );
    let answer = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(answer.contains("\"rows\":[{\"y\":2}]"), "{answer}");

    terminate(&mut serve);
    assert!(
        !files.join("data/postmaster.pid").exists(),
        "the cluster is still running after the server stopped"
    );
    let _ = std::fs::remove_dir_all(&files);
}

#[tokio::test]
async fn user_add_right_after_serve_waits_for_the_first_start() {
    // `serve &` then `user add` at once, as the README's quick start does: the second process
    // must wait for the first to create the cluster, then attach to it.
    let dir = tempfile::Builder::new()
        .prefix("carto-cli-race")
        .tempdir()
        .unwrap();
    let files = EmbeddedCluster::files_dir(&EmbeddedOptions::new(dir.path())).unwrap();
    let (mut serve, listen) = spawn_serve(dir.path());
    let out = carto_sql_api(dir.path(), &["user", "add", "carol", "--api-key", "k"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let url = format!("http://{listen}/user/carol/api/v2/sql?api_key=k&q=SELECT%203%20AS%20z");
    assert!(first_answer(&url).await.contains("\"z\":3"));
    terminate(&mut serve);
    let _ = std::fs::remove_dir_all(&files);
}

/// A timeout flag that is not a duration stops `serve` before anything starts, naming the flag
/// and the value, instead of failing every request that would use it.
#[test]
fn a_bad_timeout_flag_is_refused_at_start() {
    let dir = tempfile::Builder::new()
        .prefix("carto-cli-test")
        .tempdir()
        .unwrap();
    for flag in [
        "--key-statement-timeout",
        "--copy-timeout",
        "--query-timeout",
    ] {
        let out = carto_sql_api(dir.path(), &["serve", flag, "soon"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let message = stderr(&out);
        assert!(
            message.contains(flag) && message.contains("invalid timeout 'soon'"),
            "{flag}: {message}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was created in the data dir"
    );
}
