//! Credentials, profiles, `carto sql`, `carto server`, help.

use std::os::unix::fs::PermissionsExt;

use carto_sql_api::testing::TestServer;
use predicates::prelude::*;

use crate::support::{bare, carto, process, sql, text};

#[test]
fn missing_credentials_name_all_three_ways() {
    let dir = tempfile::tempdir().unwrap();
    bare(dir.path())
        .args(["sql", "SELECT 1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--base-url and --api-key"))
        .stderr(predicate::str::contains("CARTO_API_URL and CARTO_API_KEY"))
        .stderr(predicate::str::contains("--profile NAME"));
    bare(dir.path())
        .args([
            "--base-url",
            "https://wrongurl",
            "--api-key",
            "k",
            "sql",
            "SELECT 1",
        ])
        .assert()
        .failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_environment_and_flags() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    carto(&server, &user, dir.path())
        .args(["profile", "add", "work"])
        .assert()
        .success();
    let file = dir.path().join("profiles.toml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // --profile before or after the subcommand.
    for args in [
        ["--profile", "work", "sql", "SELECT 7 AS n"],
        ["sql", "SELECT 7 AS n", "--profile", "work"],
    ] {
        bare(dir.path())
            .args(args)
            .assert()
            .success()
            .stdout(predicate::str::contains("\"n\":7"));
    }
    bare(dir.path())
        .args(["profile", "list"])
        .assert()
        .success()
        .stderr(predicate::str::contains("work"))
        .stderr(predicate::str::contains(user.api_key.as_str()).not());
    // The environment.
    bare(dir.path())
        .env("CARTO_API_URL", server.base_url(&user))
        .env("CARTO_API_KEY", &user.api_key)
        .args(["sql", "SELECT 8 AS n"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"n\":8"));
    bare(dir.path())
        .args(["profile", "remove", "work"])
        .assert()
        .success();
    bare(dir.path())
        .args(["--profile", "work", "sql", "SELECT 1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no profile named 'work'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_formats_and_errors() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE p (name text, the_geom geometry(Point, 4326)); INSERT INTO p VALUES ('a', 'SRID=4326;POINT(1 2)')").await;
    carto(&server, &user, dir.path())
        .args(["sql", "SELECT name FROM p", "--format", "csv"])
        .assert()
        .success()
        .stdout("name\r\na\r\n");
    carto(&server, &user, dir.path())
        .args(["sql", "SELECT * FROM p", "--format", "geojson"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"coordinates\":[1,2]"));
    carto(&server, &user, dir.path())
        .args(["sql", "SELECT * FROM nope"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("relation \"nope\" does not exist"));
    carto(&server, &user, dir.path())
        .args(["--api-key", "wrong", "sql", "SELECT 1"])
        .assert()
        .failure();
}

#[test]
fn server_without_carto_sql_api_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("carto");
    std::fs::copy(assert_cmd::cargo::cargo_bin("carto"), &lonely).unwrap();
    assert_cmd::Command::new(&lonely)
        .env("PATH", "")
        .args(["server", "serve"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "cargo build --release -p carto-sql-api",
        ));
}

/// Every command's help has examples and lists the global options apart; the examples go
/// the command's way; options a command does not take are not shown.
#[test]
fn help_reads_well() {
    let dir = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let out = bare(dir.path()).args(args).arg("--help").assert().success();
        text(&out.get_output().stdout)
    };
    for args in [
        &[][..],
        &["copy"],
        &["copy", "from"],
        &["copy", "to"],
        &["sql"],
        &["batch"],
        &["transfer"],
        &["import"],
        &["profile"],
        &["profile", "add"],
        &["profile", "list"],
        &["profile", "remove"],
        &["completions"],
        &["man"],
    ] {
        let shown = help(args);
        assert!(shown.contains("Usage: carto"), "{args:?}: {shown}");
        assert!(shown.contains("\nExamples:\n  carto "), "{args:?}: {shown}");
        assert!(
            shown.contains("\nGlobal options (before or after the subcommand):\n"),
            "{args:?}: {shown}"
        );
    }
    let copy_to = help(&["copy", "to"]);
    assert!(copy_to.contains("TO STDOUT"), "{copy_to}");
    assert!(!copy_to.contains("FROM STDIN"), "{copy_to}");
    let copy_from = help(&["copy", "from"]);
    assert!(!copy_from.contains("TO STDOUT"), "{copy_from}");
    // Options after the global heading only.
    let sql = help(&["sql"]);
    let global_part = sql.split("Global options").nth(1).unwrap();
    assert!(global_part.contains("--base-url"), "{sql}");
    assert!(!sql
        .split("Global options")
        .next()
        .unwrap()
        .contains("--base-url"));
    for args in [
        &["transfer"][..],
        &["profile", "list"],
        &["profile", "remove"],
        &["completions"],
        &["man"],
    ] {
        let shown = help(args);
        for hidden in ["--base-url", "--api-key", "--profile"] {
            assert!(!shown.contains(hidden), "{args:?} shows {hidden}: {shown}");
        }
    }
    bare(dir.path())
        .args(["transfer", "--from", "a", "--to", "b", "--table", "t"])
        .args(["--base-url", "http://h/user/u/", "--api-key", "k"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "transfer names its accounts with --from and --to",
        ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_jobs_run_and_failures_carry_their_reason() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let out = carto(&server, &user, dir.path())
        .args([
            "--json",
            "batch",
            "CREATE TABLE b (i int)",
            "INSERT INTO b SELECT generate_series(1, 10)",
        ])
        .args(["--wait", "--poll-interval", "0.2"])
        .assert()
        .success()
        .get_output()
        .clone();
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["status"], "done");
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM b").await[0]["n"],
        10
    );

    carto(&server, &user, dir.path())
        .args([
            "batch",
            "SELECT * FROM nonexistent_table",
            "--wait",
            "--poll-interval",
            "0.2",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "relation \"nonexistent_table\" does not exist",
        ));
    // Without --wait the job is created and left to run, and said so once.
    let created = carto(&server, &user, dir.path())
        .args(["batch", "SELECT 1"])
        .assert()
        .success()
        .get_output()
        .clone();
    let said = String::from_utf8_lossy(&created.stderr).into_owned();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        ["pending", "running", "done"]
            .iter()
            .any(|status| said.ends_with(&format!(" {status}\n"))),
        "{said}"
    );
}

/// A bar on a terminal (run under `script`, which gives the command a pseudo-terminal), and
/// nothing but the summary when stderr is a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_only_on_a_terminal() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE big (id int, payload text)").await;
    let file = dir.path().join("big.tsv");
    let payload = "x".repeat(200);
    let rows: String = (0..200_000).map(|i| format!("{i}\t{payload}\n")).collect();
    std::fs::write(&file, rows).unwrap();
    let copy_args = |carto: &str| {
        format!(
            "{carto} --base-url {} --api-key {} copy from {} --table big --format text",
            server.base_url(&user),
            user.api_key,
            file.display()
        )
    };

    let piped = carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(&file)
        .args(["--table", "big", "--format", "text"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr).lines().count(),
        1,
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );

    let carto_bin = assert_cmd::cargo::cargo_bin("carto");
    let on_terminal = std::process::Command::new("script")
        .args([
            "-qfec",
            &copy_args(&carto_bin.display().to_string()),
            "/dev/null",
        ])
        .env("CARTO_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{shown}");
    assert!(shown.contains("ETA"), "no progress bar drawn: {shown}");
    // One unit: the bar's and the summary's are both decimal.
    assert!(shown.contains(" MB/s"), "{shown}");
    assert!(!shown.contains("iB"), "binary units: {shown}");
    assert!(shown.contains("copied 200000 rows"), "{shown}");
    let size = std::fs::metadata(&file).unwrap().len() as f64 / 1e6;
    assert!(shown.contains(&format!("({size:.2} MB)")), "{shown}");
}

/// With stderr closed (`carto ... 2>&1 | head` once head is gone), the work is done and the
/// exit status is the command's, not a panic's 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_changes_nothing_but_the_report() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(&server, &user, "CREATE TABLE t (id int)").await;
    std::fs::write(dir.path().join("t.csv"), "1\n2\n").unwrap();
    let run = |args: &[&str]| {
        let mut child = process(&server, &user, dir.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reading end goes away before carto has anything to say.
        drop(child.stderr.take());
        child.wait().unwrap().code()
    };
    let file = dir.path().join("t.csv").display().to_string();
    assert_eq!(run(&["copy", "from", &file, "--table", "t"]), Some(0));
    assert_eq!(run(&["sql", "SELECT * FROM nope"]), Some(1));
    assert_eq!(
        sql(&server, &user, "SELECT count(*) AS n FROM t").await[0]["n"],
        2
    );
}

/// Errors say where: the server that does not answer, the file that cannot be written, the
/// account URL to use instead of an API URL; and a key alone goes to the configured URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_server_the_file_and_the_right_url() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    bare(dir.path())
        .args([
            "--base-url",
            &format!("http://127.0.0.1:{closed_port}/user/a/"),
        ])
        .args(["--api-key", "k", "sql", "SELECT 1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!(
            "nothing answers at http://127.0.0.1:{closed_port}: is carto-sql-api running there?"
        )));

    let missing = dir.path().join("no-such-dir").join("out.csv");
    carto(&server, &user, dir.path())
        .args(["copy", "to"])
        .arg(&missing)
        .args(["--query", "COPY (SELECT 1) TO STDOUT"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!(
            "writing {}",
            missing.display()
        )));

    let api_url = format!("{}api/v2", server.base_url(&user));
    bare(dir.path())
        .args(["--base-url", &api_url, "--api-key", &user.api_key])
        .args(["sql", "SELECT 1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!(
            "points at the API: give the account's URL, without /api/v2 (try {})",
            server.base_url(&user)
        )));

    bare(dir.path())
        .env("CARTO_API_URL", server.base_url(&user))
        .args(["--api-key", &user.api_key, "sql", "SELECT 9 AS n"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"n\":9"));
}

/// At a terminal `carto sql` prints a table with geometries as WKT (as PostGIS's ST_AsText
/// writes them) and without the_geom_webmercator; on a pipe, JSON as the server sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prints_a_table_at_a_terminal() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let dir = tempfile::tempdir().unwrap();
    sql(
        &server,
        &user,
        "CREATE TABLE g (cartodb_id serial, name text, the_geom geometry, \
         the_geom_webmercator geometry); \
         INSERT INTO g (name, the_geom) VALUES \
         ('point', 'SRID=4326;POINT(2.17 41.38)'), ('line', 'LINESTRING(0 0,1.5 -2)'), \
         ('holed', 'POLYGON((0 0,10 0,10 10,0 10,0 0),(1 1,2 1,2 2,1 1))'), \
         ('multi', 'MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))'), \
         ('points', 'MULTIPOINT(1 2,3 4)'), ('z', 'POINT Z (1 2 3)'), \
         ('mixed', 'GEOMETRYCOLLECTION(POINT(1 2),LINESTRING(0 0,1 1))'), \
         ('empty', 'POLYGON EMPTY'), ('none', NULL); \
         UPDATE g SET the_geom_webmercator = the_geom",
    )
    .await;
    let expected = sql(
        &server,
        &user,
        "SELECT name, coalesce(ST_AsText(the_geom), '') AS wkt FROM g ORDER BY cartodb_id",
    )
    .await;
    let out = carto(&server, &user, dir.path())
        .args([
            "sql",
            "SELECT name, the_geom, the_geom_webmercator FROM g ORDER BY cartodb_id",
            "--format",
            "table",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let shown = text(&out.stdout);
    assert!(!shown.contains("the_geom_webmercator"), "{shown}");
    assert!(!shown.contains("0101000020"), "{shown}");
    assert!(shown.ends_with("(9 rows)\n"), "{shown}");
    for row in expected.as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        let wkt = row["wkt"].as_str().unwrap();
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&format!("│ {name} ")) && l.contains(&format!("┆ {wkt} "))),
            "{wkt} not shown: {shown}"
        );
    }
    carto(&server, &user, dir.path())
        .args(["sql", "SELECT the_geom_webmercator FROM g LIMIT 1"])
        .args(["--format", "table", "--all-columns"])
        .assert()
        .success()
        .stdout(predicate::str::contains("the_geom_webmercator"));

    // The default: a table at a terminal (under `script`), JSON on a pipe.
    let on_terminal = std::process::Command::new("script")
        .args([
            "-qfec",
            &format!(
                "{} --base-url {} --api-key {} sql 'SELECT 7 AS n'",
                assert_cmd::cargo::cargo_bin("carto").display(),
                server.base_url(&user),
                user.api_key
            ),
            "/dev/null",
        ])
        .env("CARTO_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    let shown = text(&on_terminal.stdout);
    assert!(
        shown.contains("│ 7 │") && shown.contains("(1 row)"),
        "{shown}"
    );
    carto(&server, &user, dir.path())
        .args(["sql", "SELECT 7 AS n"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"rows\":[{\"n\":7}]"));
}

/// Completions and the man page come from the same definition as the parser.
#[test]
fn completions_and_a_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let script = bare(dir.path())
        .args(["completions", "bash"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let script_file = dir.path().join("carto.bash");
    std::fs::write(&script_file, script).unwrap();
    // What bash offers after `carto imp<TAB>` and `carto import --if-exists <TAB>`.
    let completed = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; \
             COMP_WORDS=(carto imp); COMP_CWORD=1; _carto carto imp carto; echo \"${{COMPREPLY[*]}}\"; \
             COMP_WORDS=(carto import --if-exists ''); COMP_CWORD=3; _carto carto '' --if-exists; \
             echo \"${{COMPREPLY[*]}}\"",
            script_file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        text(&completed.stdout),
        "import\nfail replace append\n",
        "{}",
        text(&completed.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        bare(dir.path())
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains("import"));
    }
    bare(dir.path())
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::starts_with(".ie"))
        .stdout(predicate::str::contains(".TH carto 1"))
        .stdout(predicate::str::contains("carto\\-import(1)"));
}
