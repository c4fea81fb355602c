//! `carto copy from` of a file bigger than the server's POST limit: loaded in parts,
//! published in one transaction, resumable with `--resume`.

use std::time::Duration;

use carto_sql_api::testing::{TestServer, TestUser};
use predicates::prelude::*;

use crate::support::{carto, process, text};

/// The server's POST limit in these tests; the files are several times bigger.
const LIMIT: u64 = 16 * 1024;

/// A server with a POST limit of [`LIMIT`], a user, and a table `t (id, name)`.
async fn setup() -> (TestServer, TestUser) {
    let server = TestServer::with_config(carto_sql_api::Config {
        max_post_size: LIMIT,
        ..Default::default()
    })
    .await;
    let user = server.create_user().await;
    crate::support::sql(&server, &user, "CREATE TABLE t (id int, name text)").await;
    (server, user)
}

/// A CSV with a header and `n` rows, some quoted with commas, quotes and newlines inside.
fn tricky_csv(n: usize) -> String {
    let mut csv = String::from("name,id\n");
    for i in 0..n {
        let name = match i % 3 {
            0 => format!("plain {i}"),
            1 => format!("comma, \"{i}\""),
            _ => format!("two\nlines {i}"),
        };
        csv.push_str(&format!("\"{}\",{i}\n", name.replace('"', "\"\"")));
    }
    csv
}

/// A CSV `id,name` of 5000 integer ids but one, `x`, in the third part of [`LIMIT`]; and
/// the line of that one.
fn csv_with_a_bad_row_in_part_3() -> (String, usize) {
    let mut csv = String::from("id,name\n");
    let mut bad_line = 0;
    for i in 0..5000 {
        if csv.len() as u64 > 2 * LIMIT + LIMIT / 2 && bad_line == 0 {
            bad_line = i + 2;
            csv.push_str("x,bad\n");
        } else {
            csv.push_str(&format!("{i},row {i}\n"));
        }
    }
    (csv, bad_line)
}

/// What `sql` answers, first column of the first row, as superuser.
async fn one(server: &TestServer, user: &TestUser, sql: &str) -> String {
    server
        .superuser_client(user)
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The contents of `table` in insertion order, as a checksum with the row count.
async fn checksum(server: &TestServer, user: &TestUser, table: &str) -> String {
    let sql = format!(
        "SELECT count(*) || ' ' || coalesce(md5(string_agg(id || ':' || name, E'\\n' \
         ORDER BY ctid)), '') FROM {table}"
    );
    one(server, user, &sql).await
}

/// Staging tables of loads in parts left in the user's database, comma-separated.
async fn staging_tables(server: &TestServer, user: &TestUser) -> String {
    let sql = "SELECT coalesce(string_agg(relname, ','), '') FROM pg_class \
               WHERE relname LIKE 'carto\\_part\\_%' AND relkind = 'r'";
    one(server, user, sql).await
}

/// `carto copy from FILE --table t --header --part-size 15KiB`, and `extra` arguments.
fn copy_from(
    server: &TestServer,
    user: &TestUser,
    dir: &std::path::Path,
    file: &std::path::Path,
    extra: &[&str],
) -> assert_cmd::assert::Assert {
    carto(server, user, dir)
        .args(["copy", "from"])
        .arg(file)
        .args(["--table", "t", "--header", "--part-size", "15KiB"])
        .args(extra)
        .assert()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_several_times_the_limit_loads_as_one_copy_would() {
    let (server, user) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.csv");
    let csv = tricky_csv(5000);
    assert!(csv.len() as u64 > 5 * LIMIT);
    std::fs::write(&file, &csv).unwrap();

    // What one COPY of the file loads, straight into PostgreSQL.
    let superuser = server.superuser_client(&user).await;
    superuser
        .batch_execute("CREATE TABLE single (id int, name text)")
        .await
        .unwrap();
    let sink = superuser
        .copy_in::<_, bytes::Bytes>(
            "COPY single (name, id) FROM STDIN WITH (FORMAT csv, HEADER true)",
        )
        .await
        .unwrap();
    futures::pin_mut!(sink);
    futures::SinkExt::send(&mut sink, bytes::Bytes::from(csv.clone()))
        .await
        .unwrap();
    sink.as_mut().finish().await.unwrap();

    // Uncompressed, each part must itself be under the limit.
    copy_from(&server, &user, dir.path(), &file, &["--no-compress"])
        .success()
        .stderr(predicate::str::is_match("copied 5000 rows in .* in [5-9] parts\n").unwrap());
    assert_eq!(
        checksum(&server, &user, "t").await,
        checksum(&server, &user, "single").await
    );
    assert_eq!(staging_tables(&server, &user).await, "");

    // With the default part size (1 GiB) the file goes in one COPY, which the limit refuses.
    carto(&server, &user, dir.path())
        .args(["copy", "from"])
        .arg(&file)
        .args(["--table", "t", "--header", "--no-compress"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("maximum POST size"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_in_the_third_part_names_the_line_of_the_file() {
    let (server, user) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    let (csv, bad_line) = csv_with_a_bad_row_in_part_3();
    std::fs::write(&file, &csv).unwrap();
    let out = copy_from(&server, &user, dir.path(), &file, &[])
        .failure()
        .get_output()
        .clone();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("COPY t, line {bad_line}, column id: \"x\"")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing committed"), "{stderr}");
    assert!(!stderr.contains("--resume"), "{stderr}");
    assert_eq!(checksum(&server, &user, "t").await, "0 ");
    assert_eq!(staging_tables(&server, &user).await, "");
}

/// Makes part 3 of any load in parts wait (its CREATE TABLE sleeps while `stall` has a
/// row), and logs each part table created in `part_log`, committed only with it.
const STALL_PART_3: &str = include_str!("../../../carto/tests/it/stall_part_3.sql");

/// Polls `sql` (a count, as superuser) every 100 ms until it is `expected`.
async fn wait_for(server: &TestServer, user: &TestUser, sql: &str, expected: i64) {
    let superuser = server.superuser_client(user).await;
    for _ in 0..600 {
        let n: i64 = superuser.query_one(sql, &[]).await.unwrap().get(0);
        if n == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql} never reached {expected}");
}

/// Installs [`STALL_PART_3`], runs `load` (a load in parts), kills it once parts 1 and 2 are
/// loaded and part 3 stalls, then lets part 3's stalled statement go (cancelled).
async fn kill_while_part_3_stalls(
    server: &TestServer,
    user: &TestUser,
    mut load: std::process::Command,
) {
    server
        .superuser_client(user)
        .await
        .batch_execute(STALL_PART_3)
        .await
        .unwrap();
    let mut load = load.stderr(std::process::Stdio::null()).spawn().unwrap();
    let marked = "SELECT count(*) FROM pg_class c WHERE c.relname LIKE 'carto\\_part\\_%' \
                  AND obj_description(c.oid, 'pg_class') IS NOT NULL";
    wait_for(server, user, marked, 2).await;
    let stalled = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                   AND datname = current_database()";
    wait_for(server, user, stalled, 1).await;
    load.kill().unwrap();
    load.wait().unwrap();
    let superuser = server.superuser_client(user).await;
    superuser.batch_execute("DELETE FROM stall").await.unwrap();
    let cancel = "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity \
                  WHERE wait_event = 'PgSleep' AND datname = current_database()";
    wait_for(server, user, cancel, 0).await;
}

/// Each part's staging table was created exactly once, in order (the log [`STALL_PART_3`]
/// keeps; other tables made with CREATE TABLE AS, e.g. by cartodbfying, are not parts).
async fn assert_each_part_created_once(server: &TestServer, user: &TestUser) {
    let created = one(
        server,
        user,
        "SELECT string_agg(name, ',') FROM part_log WHERE name ~ '^[0-9]+$'",
    )
    .await;
    let parts = created.split(',').count();
    let all: Vec<String> = (1..=parts).map(|n| n.to_string()).collect();
    assert_eq!(created, all.join(","));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_load_resumes_with_the_missing_parts_only() {
    let (server, user) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.csv");
    std::fs::write(&file, tricky_csv(5000)).unwrap();

    let mut load = process(&server, &user, dir.path());
    load.args(["copy", "from"]).arg(&file).args([
        "--table",
        "t",
        "--header",
        "--part-size",
        "15KiB",
    ]);
    kill_while_part_3_stalls(&server, &user, load).await;
    assert_eq!(checksum(&server, &user, "t").await, "0 ");

    copy_from(&server, &user, dir.path(), &file, &["--resume"])
        .success()
        .stderr(
            predicate::str::is_match("copied 5000 rows .*, 2 of [5-9] parts already loaded\n")
                .unwrap(),
        );
    // Server-side: each part's table was created once, parts 1 and 2 by the killed load.
    assert_each_part_created_once(&server, &user).await;
    assert_eq!(
        checksum(&server, &user, "t").await.split(' ').next(),
        Some("5000")
    );
    assert_eq!(staging_tables(&server, &user).await, "");
}

/// A CSV of places, `name,lon,lat`, names quoted with commas and newlines inside.
fn places_csv(n: usize) -> String {
    let mut csv = String::from("name,lon,lat\n");
    for i in 0..n {
        let name = if i % 2 == 0 {
            format!("place {i}")
        } else {
            format!("\"two\nlines, {i}\"")
        };
        csv.push_str(&format!(
            "{name},{}.5,{}.25\n",
            (i % 359) as i64 - 179,
            (i % 169) as i64 - 84
        ));
    }
    csv
}

/// `carto import FILE --table places --part-size 15KiB`, and `extra` arguments.
fn import(
    server: &TestServer,
    user: &TestUser,
    dir: &std::path::Path,
    file: &std::path::Path,
    extra: &[&str],
) -> assert_cmd::assert::Assert {
    carto(server, user, dir)
        .arg("import")
        .arg(file)
        .args(["--table", "places", "--part-size", "15KiB"])
        .args(extra)
        .assert()
}

/// Tables an import left: the table itself and its staging table, comma-separated.
async fn import_tables(server: &TestServer, user: &TestUser) -> String {
    let sql = "SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_class \
               WHERE relname IN ('places', 'carto_import_places')";
    one(server, user, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_bigger_than_the_limit_goes_in_parts_into_a_carto_table() {
    let (server, user) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("places.csv");
    let csv = places_csv(3000);
    assert!(csv.len() as u64 > 4 * LIMIT);
    std::fs::write(&file, &csv).unwrap();

    // In one COPY the server's limit refuses it, and nothing is left.
    carto(&server, &user, dir.path())
        .arg("import")
        .arg(&file)
        .args(["--table", "places"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("maximum POST size"));
    assert_eq!(import_tables(&server, &user).await, "");

    import(&server, &user, dir.path(), &file, &[])
        .success()
        .stderr(predicate::str::contains("imported 3000 rows"));
    // Every row, in file order, cartodbfied, with the_geom made of lon/lat.
    let superuser = server.superuser_client(&user).await;
    let expected: Vec<String> = (0..3000)
        .map(|i| {
            if i % 2 == 0 {
                format!("place {i}")
            } else {
                format!("two\nlines, {i}")
            }
        })
        .collect();
    let row = superuser
        .query_one(
            "SELECT count(*), count(DISTINCT cartodb_id), max(cartodb_id), \
                    count(*) FILTER (WHERE the_geom_webmercator IS NOT NULL), \
                    md5(string_agg(name, E'\\n' ORDER BY cartodb_id)) = md5($1), \
                    bool_and(ST_X(the_geom) = lon AND ST_Y(the_geom) = lat) \
             FROM places",
            &[&expected.join("\n")],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3000);
    assert_eq!(row.get::<_, i64>(1), 3000);
    assert_eq!(row.get::<_, i64>(2), 3000);
    let without_mercator = one(
        &server,
        &user,
        "SELECT coalesce(string_agg(format('%s (%s %s) %s', cartodb_id, lon, lat, \
         ST_AsText(the_geom)), '; '), '') FROM places WHERE the_geom_webmercator IS NULL",
    )
    .await;
    assert_eq!(row.get::<_, i64>(3), 3000, "{without_mercator}");
    assert!(row.get::<_, bool>(4), "names not in file order");
    assert!(row.get::<_, bool>(5), "the_geom is not lon/lat");
    assert_eq!(import_tables(&server, &user).await, "places");
    assert_eq!(staging_tables(&server, &user).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_in_a_later_part_of_an_import_leaves_no_table() {
    let (server, user) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    let (csv, bad_line) = csv_with_a_bad_row_in_part_3();
    assert!(bad_line > 1001, "the bad row must be past the sample");
    std::fs::write(&file, &csv).unwrap();
    let out = import(&server, &user, dir.path(), &file, &[])
        .failure()
        .get_output()
        .clone();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("line {bad_line}, column id: \"x\"")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(!stderr.contains("--resume"), "{stderr}");
    assert_eq!(import_tables(&server, &user).await, "");
    assert_eq!(staging_tables(&server, &user).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_import_in_parts_resumes_with_the_missing_parts_only() {
    let (server, user) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("places.csv");
    std::fs::write(&file, places_csv(3000)).unwrap();

    let mut load = process(&server, &user, dir.path());
    load.arg("import")
        .arg(&file)
        .args(["--table", "places", "--part-size", "15KiB"]);
    kill_while_part_3_stalls(&server, &user, load).await;
    // Nothing published: only the staging table the killed import made.
    assert_eq!(import_tables(&server, &user).await, "carto_import_places");

    import(&server, &user, dir.path(), &file, &["--resume"])
        .success()
        .stderr(predicate::str::is_match("2 of [4-9] parts already loaded\n").unwrap())
        .stderr(predicate::str::contains("imported 3000 rows"));
    // Each part's table was created once, parts 1 and 2 by the killed import.
    assert_each_part_created_once(&server, &user).await;
    let count = one(&server, &user, "SELECT count(*)::text FROM places").await;
    assert_eq!(count, "3000");
    assert_eq!(import_tables(&server, &user).await, "places");
    assert_eq!(staging_tables(&server, &user).await, "");
}
