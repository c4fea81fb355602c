//! `user move NAME --to HOST`: a user's database, roles, grants, sequences and CARTO metadata
//! carried to another host by the real binary, with reads served and writes answered 503 with
//! `Retry-After` meanwhile, and a mover killed mid-way leaving the user whole on the old host.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use carto_sql_api::embedded::{EmbeddedCluster, EmbeddedOptions};
use carto_sql_api::testing::start_extra_cluster;
use serde_json::Value;

use crate::cli::{carto_sql_api, first_answer, stderr, terminate};
use crate::hosts::{has_database, run_ok, serve, sql};

/// A superuser session on the cluster of `url`.
async fn superuser(url: &str) -> tokio_postgres::Client {
    let config: tokio_postgres::Config = url.parse().unwrap();
    carto_sql_api::db::connect(&config).await.unwrap()
}

/// Waits until a session on the cluster `watcher` is connected to waits for a lock: the mover,
/// stalled by a role another session is creating in an open transaction. (`watcher` must be
/// outside any transaction: activity is read once per transaction.)
async fn wait_for_stalled_mover(watcher: &tokio_postgres::Client, mover: &mut Child) {
    for _ in 0..300 {
        if mover.try_wait().unwrap().is_some() {
            break;
        }
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'CREATE ROLE%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = mover.kill();
    let mut message = String::new();
    let _ = mover.stderr.take().unwrap().read_to_string(&mut message);
    panic!("the move never stalled on the target's roles: {message}");
}

/// A digest of everything the user's tables hold, as the user sees it.
async fn digest(listen: &str) -> Value {
    let (status, body) = sql(
        listen,
        "alice",
        "ka",
        "SELECT (SELECT md5(string_agg(p::text, ',' ORDER BY cartodb_id)) FROM places p) AS places, \
                (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM plain t) AS plain, \
                (SELECT count(*) FROM cartodb.cdb_tablemetadata) AS metadata",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["rows"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moves_between_hosts_and_a_killed_move_leaves_it_whole() {
    let dir = tempfile::Builder::new()
        .prefix("carto-move")
        .tempdir()
        .unwrap();
    let files = EmbeddedCluster::files_dir(&EmbeddedOptions::new(dir.path())).unwrap();
    let (_host_a, url_a) = start_extra_cluster("move-a").await;
    let (_host_b, url_b) = start_extra_cluster("move-b").await;
    run_ok(dir.path(), &["host", "add", "a", "--url", &url_a]);
    run_ok(dir.path(), &["host", "add", "b", "--url", &url_b]);
    run_ok(
        dir.path(),
        &["user", "add", "alice", "--api-key", "ka", "--host", "a"],
    );
    let (mut server, listen) = serve(dir.path(), &dir.path().join("serve.log"), &[]);
    first_answer(&format!("http://{listen}/health")).await;

    // A cartodbfied table with geometries, a plain table whose sequence has advanced, and a
    // regular key granted on it.
    for statement in [
        "CREATE TABLE places (name text, the_geom geometry(Point, 4326))",
        "SELECT CDB_CartodbfyTable('places')",
        "INSERT INTO places (name, the_geom) \
         SELECT 'p' || n, ST_SetSRID(ST_MakePoint(n, n / 2.0), 4326) FROM generate_series(1, 500) n",
        "CREATE TABLE plain (id serial PRIMARY KEY, v text)",
        "INSERT INTO plain (v) SELECT 'v' || n FROM generate_series(1, 7) n",
        "DELETE FROM plain WHERE id = 7",
    ] {
        let (status, body) = sql(&listen, "alice", "ka", statement).await;
        assert_eq!(status, 200, "{statement}: {body}");
    }
    let key = run_ok(
        dir.path(),
        &["key", "add", "alice", "--grant", "plain:select,insert"],
    );
    let regular = key["api_key"].as_str().unwrap().to_string();
    let before = digest(&listen).await;

    // Moving to the host the user is on, or an unknown one, is refused.
    let out = carto_sql_api(dir.path(), &["user", "move", "alice", "--to", "a"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("already on host 'a'"),
        "{}",
        stderr(&out)
    );
    let out = carto_sql_api(dir.path(), &["user", "move", "alice", "--to", "zz"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("'zz' does not exist"),
        "{}",
        stderr(&out)
    );

    // A move stalled on the target (a transaction there creating the user's master role) and
    // killed: meanwhile reads are served and writes refused with 503 and Retry-After.
    let blocker = superuser(&url_b).await;
    blocker
        .batch_execute("BEGIN; CREATE ROLE carto_alice_master")
        .await
        .unwrap();
    let mut mover = carto_sql_api(dir.path(), &["user", "move", "alice", "--to", "b"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_stalled_mover(&superuser(&url_b).await, &mut mover).await;
    let (status, body) = sql(&listen, "alice", "ka", "SELECT count(*) AS n FROM places").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"], 500);
    let (status, body) = sql(&listen, "alice", "ka", "INSERT INTO plain (v) VALUES ('x')").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["retry_after_header"], true, "{body}");
    assert!(
        body["error"][0].as_str().unwrap().contains("being moved"),
        "{body}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mover.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    mover.wait().unwrap();
    blocker.batch_execute("ROLLBACK").await.unwrap();

    // The user is still on a, with all its data, and writable again without an operator:
    // the server heals a move whose mover is gone (every few seconds).
    let list = run_ok(dir.path(), &["host", "list"]);
    assert_eq!(list[1]["name"], "a");
    assert_eq!(list[1]["users"], 1, "{list}");
    assert!(has_database(&url_a, "carto_user_alice").await);
    assert_eq!(digest(&listen).await, before);
    let mut healed = None;
    for _ in 0..120 {
        let (status, body) =
            sql(&listen, "alice", "ka", "INSERT INTO plain (v) VALUES ('x')").await;
        if status == 200 {
            healed = Some(body);
            break;
        }
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        healed.is_some(),
        "writes were still refused a minute after the kill"
    );
    // `--abort` does the same by hand (here: nothing left to do).
    run_ok(dir.path(), &["user", "move", "alice", "--abort"]);
    let (status, body) = sql(&listen, "alice", "ka", "DELETE FROM plain WHERE v = 'x'").await;
    assert_eq!(status, 200, "{body}");
    let before = digest(&listen).await;

    // A move failing on the target (a table owned by a role that only host a has, which the
    // restore cannot give to its owner) drops its partial copy and leaves the user writable on
    // a, without `--abort`.
    let mut on_a: tokio_postgres::Config = url_a.parse().unwrap();
    on_a.dbname("carto_user_alice");
    let alice_on_a = carto_sql_api::db::connect(&on_a).await.unwrap();
    alice_on_a
        .batch_execute(
            "CREATE ROLE stranger; CREATE TABLE stranger_t (n int); \
             ALTER TABLE stranger_t OWNER TO stranger",
        )
        .await
        .unwrap();
    let out = carto_sql_api(dir.path(), &["user", "move", "alice", "--to", "b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("restoring the schema failed"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(&url_b), "{}", stderr(&out));
    assert!(!has_database(&url_b, "carto_user_alice").await);
    let (status, body) = sql(&listen, "alice", "ka", "INSERT INTO plain (v) VALUES ('y')").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sql(&listen, "alice", "ka", "DELETE FROM plain WHERE v = 'y'").await;
    assert_eq!(status, 200, "{body}");
    // The move ended the sessions of the user's database, this one's too.
    carto_sql_api::db::connect(&on_a)
        .await
        .unwrap()
        .batch_execute("DROP TABLE stranger_t; DROP ROLE stranger")
        .await
        .unwrap();
    assert_eq!(digest(&listen).await, before);

    // A second move completes: placement switched, the old copy gone, everything carried.
    let moved = run_ok(dir.path(), &["user", "move", "alice", "--to", "b"]);
    assert_eq!(moved["from"], "a", "{moved}");
    assert_eq!(moved["to"], "b", "{moved}");
    assert!(moved["rows"].as_i64().unwrap() >= 506, "{moved}");
    let list = run_ok(dir.path(), &["host", "list"]);
    assert_eq!(list[1]["users"], 0, "{list}");
    assert_eq!(list[2]["name"], "b");
    assert_eq!(list[2]["users"], 1, "{list}");
    assert!(has_database(&url_b, "carto_user_alice").await);
    assert!(!has_database(&url_a, "carto_user_alice").await);
    assert_eq!(digest(&listen).await, before);

    // Sequences continue where they were; the regular key keeps its grants; CARTO's triggers
    // still fill the web mercator geometry.
    let (status, body) = sql(
        &listen,
        "alice",
        &regular,
        "INSERT INTO plain (v) VALUES ('after') RETURNING id",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["id"], 10, "{body}");
    let (status, body) = sql(
        &listen,
        "alice",
        &regular,
        "SELECT count(*) AS n FROM places",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = sql(
        &listen,
        "alice",
        "ka",
        "INSERT INTO places (name, the_geom) VALUES ('new', ST_SetSRID(ST_MakePoint(1, 1), 4326)) \
         RETURNING cartodb_id, the_geom_webmercator IS NOT NULL AS mercator",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["cartodb_id"], 501, "{body}");
    assert_eq!(body["rows"][0]["mercator"], true, "{body}");

    terminate(&mut server);
    let _ = std::fs::remove_dir_all(&files);
}
