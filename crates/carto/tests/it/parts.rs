//! Files bigger than the server's POST limit, loaded in parts (`copy_from_file_in_parts`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use carto::{Parts, Progress};
use carto_sql_api::testing::{TestServer, TestUser};

use crate::support::path_client;

/// The server's POST limit in these tests; the files are several times bigger.
const LIMIT: u64 = 16 * 1024;

/// A server with a POST limit of [`LIMIT`], a user, a client, and a table `t (id, name)`.
async fn setup() -> (TestServer, TestUser, carto::Client) {
    setup_with(carto_sql_api::Config::default()).await
}

/// [`setup`] with `config`, its POST limit made [`LIMIT`].
async fn setup_with(config: carto_sql_api::Config) -> (TestServer, TestUser, carto::Client) {
    let server = TestServer::with_config(carto_sql_api::Config {
        max_post_size: LIMIT,
        ..config
    })
    .await;
    let user = server.create_user().await;
    let client = path_client(&server, &user);
    client
        .sql()
        .send("CREATE TABLE t (id int, name text)")
        .await
        .unwrap();
    (server, user, client)
}

/// A CSV with a header and `n` rows, some fields quoted with commas, quotes and newlines
/// inside; the rows as `id:name` in file order.
fn tricky_csv(n: usize) -> (String, Vec<String>) {
    let mut csv = String::from("id,name\n");
    let mut rows = Vec::new();
    for i in 0..n {
        let name = match i % 4 {
            0 => format!("plain {i}"),
            1 => format!("comma, {i}"),
            2 => format!("two\nlines {i}"),
            _ => format!("quote \"{i}\"\n"),
        };
        csv.push_str(&format!("{i},\"{}\"\n", name.replace('"', "\"\"")));
        rows.push(format!("{i}:{name}"));
    }
    (csv, rows)
}

/// The rows of `table` as `id:name` in the order they were inserted.
async fn rows_in_order(server: &TestServer, user: &TestUser, table: &str) -> Vec<String> {
    let sql = format!("SELECT id || ':' || name FROM {table} ORDER BY ctid");
    strings(server, user, &sql).await
}

/// The first column of what `sql` answers, as superuser.
async fn strings(server: &TestServer, user: &TestUser, sql: &str) -> Vec<String> {
    server
        .superuser_client(user)
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Staging tables of loads in parts left in the user's database.
async fn staging_tables(server: &TestServer, user: &TestUser) -> Vec<String> {
    strings(
        server,
        user,
        "SELECT relname::text FROM pg_class WHERE relname LIKE 'carto\\_part\\_%' \
         AND relkind = 'r' ORDER BY relname",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_several_times_the_post_limit_loads_whole_and_in_order() {
    let (server, user, client) = setup().await;
    let (csv, expected) = tricky_csv(6000);
    assert!(csv.len() as u64 > 5 * LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, &csv).unwrap();

    // One COPY of it is refused by the limit (uncompressed, so the wire carries it all).
    let copy = client.copy().without_compression();
    let refused = copy
        .copy_from_file("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)", &path)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("maximum POST size"),
        "{refused}"
    );

    let updates = Arc::new(Mutex::new(Vec::new()));
    let seen = updates.clone();
    let copy = copy.with_progress(Progress::new(move |update| {
        seen.lock().unwrap().push(*update);
    }));
    let parts = Parts::new("t").csv(true, None).part_size(LIMIT - 1024);
    let outcome = copy.copy_from_file_in_parts(&path, &parts).await.unwrap();
    assert_eq!(outcome.total_rows, 6000);
    assert!(outcome.parts >= 5, "{outcome:?}");
    assert_eq!(outcome.parts_resumed, 0);
    assert_eq!(rows_in_order(&server, &user, "t").await, expected);
    assert_eq!(staging_tables(&server, &user).await, Vec::<String>::new());

    // One progress across the parts: bytes never go back, the last report is the file.
    let updates = updates.lock().unwrap().clone();
    assert!(updates.windows(2).all(|w| w[0].bytes <= w[1].bytes));
    assert_eq!(updates.iter().filter(|u| u.finished).count(), 1);
    let last = updates.last().unwrap();
    assert!(last.finished);
    assert_eq!(last.bytes, csv.len() as u64);
    assert_eq!(last.rows, Some(6000));

    // Gzip on, and the blocking client: the same.
    client.sql().send("TRUNCATE t").await.unwrap();
    let blocking_path = path.clone();
    let base_url = server.base_url(&user);
    let key = user.api_key.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let client =
            carto::blocking::Client::new(carto::Credentials::new(&base_url, key).unwrap()).unwrap();
        client
            .copy()
            .copy_from_file_in_parts(&blocking_path, &parts)
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(outcome.total_rows, 6000);
    assert_eq!(rows_in_order(&server, &user, "t").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_in_the_third_part_names_its_line_and_loads_nothing() {
    let (server, user, client) = setup().await;
    let mut csv = String::from("id,name\n");
    let mut bad_line = 0;
    for i in 0..6000 {
        if csv.len() as u64 > 2 * LIMIT + LIMIT / 2 && bad_line == 0 {
            // Line numbers count the header as line 1.
            bad_line = i + 2;
            csv.push_str("oops,bad\n");
        } else {
            csv.push_str(&format!("{i},row {i}\n"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, &csv).unwrap();
    let parts = Parts::new("t").csv(true, None).part_size(LIMIT);
    let error = client
        .copy()
        .copy_from_file_in_parts(&path, &parts)
        .await
        .unwrap_err();
    assert!(!carto::copy::is_resumable(&error));
    let place = error.where_().unwrap_or_default().to_string();
    assert!(
        place.starts_with(&format!("COPY t, line {bad_line}, column id")),
        "{place}: {error}"
    );
    assert_eq!(crate::support::count(&server, &user, "t").await, 0);
    assert_eq!(staging_tables(&server, &user).await, Vec::<String>::new());
}

/// Makes part 3 of any load in parts wait (its CREATE TABLE sleeps while a row is in
/// `stall`), and logs each part table created in `part_log`, committed only with it.
const STALL_PART_3: &str = include_str!("stall_part_3.sql");

/// Sets up [`STALL_PART_3`] in `user`'s database.
async fn stall_part_3(server: &TestServer, user: &TestUser) {
    server
        .superuser_client(user)
        .await
        .batch_execute(STALL_PART_3)
        .await
        .unwrap();
}

/// Waits until two parts are marked loaded and part 3 is stalled.
async fn until_part_3_stalls(server: &TestServer, user: &TestUser) {
    let superuser = server.superuser_client(user).await;
    for _ in 0..600 {
        let marked: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_class c WHERE c.relname LIKE 'carto\\_part\\_%' \
                 AND obj_description(c.oid, 'pg_class') IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let stalled: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                 AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if marked == 2 && stalled > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("part 3 never stalled");
}

/// Lets part 3 go: no more stalling, and the stalled statement cancelled.
async fn release_part_3(server: &TestServer, user: &TestUser) {
    let superuser = server.superuser_client(user).await;
    superuser.batch_execute("DELETE FROM stall").await.unwrap();
    for _ in 0..600 {
        let stalled: i64 = superuser
            .query_one(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity \
                 WHERE wait_event = 'PgSleep' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if stalled == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("part 3 stays stalled");
}

/// A file of 3000 rows of [`tricky_csv`] in a temporary directory; its rows.
fn file_of_3000_rows() -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let (csv, expected) = tricky_csv(3000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, csv).unwrap();
    (dir, path, expected)
}

/// The part numbers whose tables were created, in order.
async fn parts_created(server: &TestServer, user: &TestUser) -> Vec<String> {
    strings(server, user, "SELECT name FROM part_log").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_load_resumes_with_the_missing_parts_only() {
    let (server, user, client) = setup().await;
    stall_part_3(&server, &user).await;
    let (_dir, path, expected) = file_of_3000_rows();
    let parts = Parts::new("t").csv(true, None).part_size(LIMIT);

    let copy = client.copy();
    let (task_path, task_parts) = (path.clone(), parts.clone());
    let load =
        tokio::spawn(async move { copy.copy_from_file_in_parts(&task_path, &task_parts).await });
    until_part_3_stalls(&server, &user).await;
    load.abort();
    let _ = load.await;
    release_part_3(&server, &user).await;
    assert_eq!(parts_created(&server, &user).await, ["1", "2"]);
    assert_eq!(crate::support::count(&server, &user, "t").await, 0);
    // Part 2 emptied, as PostgreSQL's crash recovery empties unlogged tables: its comment
    // says loaded, its rows are gone, so it is sent again.
    let part_2 = staging_tables(&server, &user)
        .await
        .into_iter()
        .find(|name| name.ends_with("_2"))
        .unwrap();
    server
        .superuser_client(&user)
        .await
        .batch_execute(&format!("TRUNCATE {part_2}"))
        .await
        .unwrap();

    let outcome = client
        .copy()
        .copy_from_file_in_parts(&path, &parts.clone().resume(true))
        .await
        .unwrap();
    assert_eq!(outcome.parts_resumed, 1);
    assert_eq!(outcome.total_rows, 3000);
    let created = parts_created(&server, &user).await;
    let mut again: Vec<String> = vec!["1".into(), "2".into()];
    again.extend((2..=outcome.parts).map(|n| n.to_string()));
    assert_eq!(created, again, "part 1 was not created again");
    assert_eq!(rows_in_order(&server, &user, "t").await, expected);
    assert_eq!(staging_tables(&server, &user).await, Vec::<String>::new());

    // Nothing is left to resume: refused, rather than loading the file twice.
    let error = client
        .copy()
        .copy_from_file_in_parts(&path, &parts.resume(true))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nothing to resume"), "{error}");
    assert_eq!(crate::support::count(&server, &user, "t").await, 3000);
}

/// A TCP proxy to the server whose open connections the test can cut, as a network failure
/// would.
struct Proxy {
    addr: std::net::SocketAddr,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let opened = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                opened.lock().unwrap().push(forward.abort_handle());
            }
        });
        Proxy { addr, connections }
    }

    /// Drops every connection open now.
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_sends_only_the_missing_parts_again() {
    let (server, user, _) = setup().await;
    stall_part_3(&server, &user).await;
    let proxy = Proxy::start(server.addr).await;
    let url = format!("http://{}/user/{}/", proxy.addr, user.name);
    let client =
        carto::Client::new(carto::Credentials::new(&url, user.api_key.clone()).unwrap()).unwrap();
    let (_dir, path, expected) = file_of_3000_rows();
    let parts = Parts::new("t").csv(true, None).part_size(LIMIT);

    let copy = client.copy();
    let load = tokio::spawn(async move { copy.copy_from_file_in_parts(&path, &parts).await });
    until_part_3_stalls(&server, &user).await;
    // The connection drops while part 3 is being made; the load goes on by itself.
    proxy.cut();
    release_part_3(&server, &user).await;
    let outcome = load.await.unwrap().unwrap();
    assert_eq!(outcome.total_rows, 3000);
    assert_eq!(outcome.parts_resumed, 0);
    let all: Vec<String> = (1..=outcome.parts).map(|n| n.to_string()).collect();
    assert_eq!(
        parts_created(&server, &user).await,
        all,
        "parts 1 and 2 were not sent again"
    );
    assert_eq!(rows_in_order(&server, &user, "t").await, expected);
    assert_eq!(staging_tables(&server, &user).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_longer_than_the_sql_timeout_runs_as_a_batch_job() {
    let (server, user, client) = setup_with(carto_sql_api::Config {
        query_timeout: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    // Each insert into t takes 2 s: publishing 3 or more parts outlasts /sql's 1 s.
    client
        .sql()
        .send(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$; \
             CREATE TRIGGER slow AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION slow()",
        )
        .await
        .unwrap();
    let (_dir, path, expected) = file_of_3000_rows();
    let parts = Parts::new("t").csv(true, None).part_size(LIMIT);
    let outcome = client
        .copy()
        .copy_from_file_in_parts(&path, &parts)
        .await
        .unwrap();
    assert!(outcome.parts >= 3, "{outcome:?}");
    assert_eq!(rows_in_order(&server, &user, "t").await, expected);
    assert_eq!(staging_tables(&server, &user).await, Vec::<String>::new());
}

/// What loading in parts costs against one COPY (the parts are written twice: into the
/// staging tables, then into the target). Prints the times; asserts nothing about them.
/// `cargo test -p carto --release --test it parts_cost_measurement -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn parts_cost_measurement() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let client = path_client(&server, &user);
    let (csv, _) = tricky_csv(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, &csv).unwrap();
    let copy = client.copy();
    for round in 0..3 {
        client
            .sql()
            .send("DROP TABLE IF EXISTS t; CREATE TABLE t (id int, name text)")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        copy.copy_from_file("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)", &path)
            .await
            .unwrap();
        let single = started.elapsed().as_secs_f64();
        let scan = std::time::Instant::now();
        let parts = Parts::new("t")
            .csv(true, None)
            .part_size(csv.len() as u64 / 8);
        client.sql().send("TRUNCATE t").await.unwrap();
        let started = std::time::Instant::now();
        let outcome = copy.copy_from_file_in_parts(&path, &parts).await.unwrap();
        let in_parts = started.elapsed().as_secs_f64();
        // What publishing alone costs: the same rows inserted from one table into another.
        let started = std::time::Instant::now();
        client
            .sql()
            .send(
                "DROP TABLE IF EXISTS again; CREATE TABLE again (id int, name text); \
                 INSERT INTO again SELECT * FROM t",
            )
            .await
            .unwrap();
        let insert = started.elapsed().as_secs_f64();
        println!(
            "round {round}: {} MB, one COPY {single:.2} s, in {} parts {in_parts:.2} s ({:.2} x); \
             since the scan began {:.2} s; INSERT ... SELECT of the rows {insert:.2} s",
            csv.len() / 1_000_000,
            outcome.parts,
            in_parts / single,
            scan.elapsed().as_secs_f64()
        );
    }
}
