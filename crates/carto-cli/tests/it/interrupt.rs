//! Ctrl-C (SIGINT) in the middle of a command: exit 130, say what was left, leave nothing
//! half-done.

use std::io::Write;
use std::process::{Child, Stdio};

use carto_sql_api::testing::TestServer;

use crate::import::{big_import, tables};
use crate::support::{process, sql, text};

/// Sends SIGINT, as Ctrl-C at a terminal does, and checks that the process ends with 130 and
/// `carto: interrupted — {note}`.
fn interrupt(child: Child, note: &str) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("carto: interrupted — {note}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_leaves_nothing() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let import = big_import(&server, &user, dir.path()).await;
    interrupt(import, "nothing imported into big");
    // Not even the staging table.
    assert_eq!(tables(&server, &user).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_export_leaves_no_file() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // Far more than can be written before the interruption, streamed from the first row (a
    // single generate_series of that size would be materialized before the first row).
    let endless = "COPY (SELECT a, b, c, repeat('x', 100) FROM generate_series(1, 1000) a, \
                   generate_series(1, 1000) b, generate_series(1, 1000) c) TO STDOUT";
    let export = process(&server, &user, dir.path())
        .args(["copy", "to"])
        .arg(out_dir.join("out.tsv"))
        .args(["--query", endless])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the temporary file has data in it.
    while !std::fs::read_dir(&out_dir).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().ends_with(".part")
            && e.metadata().is_ok_and(|m| m.len() > 0)
    }) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    interrupt(export, "nothing written to");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_commits_nothing() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE t (id int)").await;
    let mut upload = process(&server, &user, dir.path())
        .args(["copy", "from", "-", "--table", "t", "--no-compress"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Rows sent, stdin left open: the COPY is running on the server.
    let mut stdin = upload.stdin.take().unwrap();
    let rows: String = (0..100_000).map(|i| format!("{i}\n")).collect();
    stdin.write_all(rows.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let running =
        "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'COPY t FROM STDIN%'";
    while sql(&server, &user, running).await[0]["n"] == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    interrupt(upload, "nothing committed (the upload was aborted)");
    drop(stdin);
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM t").await[0]["n"],
        0
    );
}

/// At a terminal (under `script`), an interrupted upload erases its progress bar before it
/// says what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_bar_is_erased() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE t (id int)").await;
    // A FIFO that is never closed keeps the upload going until it is interrupted.
    let fifo = dir.path().join("rows");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let command = format!(
        "exec {} --base-url {} --api-key {} copy from - --table t --format text < {}",
        assert_cmd::cargo::cargo_bin("carto").display(),
        server.base_url(&user),
        user.api_key,
        fifo.display()
    );
    let terminal = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("CARTO_CONFIG_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let rows: String = (0..100_000).map(|i| format!("{i}\n")).collect();
    writer.write_all(rows.as_bytes()).unwrap();
    let running =
        "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'COPY t FROM STDIN%'";
    while sql(&server, &user, running).await[0]["n"] == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // carto runs in the terminal's session: signal it, as Ctrl-C there would.
    // (Its command line starts with the binary; script's, which holds the same words,
    // with "script".)
    let carto = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!(
                "^{} --base-url {} ",
                assert_cmd::cargo::cargo_bin("carto").display(),
                server.base_url(&user)
            ),
        ])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&carto.stdout).trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "not one carto process: {pid:?}");
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = terminal.wait_with_output().unwrap();
    drop(writer);
    let shown = text(&out.stdout);
    let (before, after) = shown
        .rsplit_once("carto: interrupted — nothing committed")
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(before.contains("B/s"), "no bar was drawn: {shown:?}");
    // The last thing before the message erases the bar's line.
    let last_bar = before.rfind("B/s").unwrap();
    assert!(
        before[last_bar..].contains("\u{1b}[2K"),
        "the bar was left on screen: {shown:?}"
    );
    assert!(!after.contains("B/s"), "{shown:?}");
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM t").await[0]["n"],
        0
    );
}
