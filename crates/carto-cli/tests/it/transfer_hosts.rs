//! `carto transfer` between two users whose databases live on different PostgreSQL hosts of
//! one server: nothing changes for the client.

use carto_sql_api::testing::{start_extra_cluster, TestServer};

use crate::support::{bare, carto, sql};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_moves_between_users_on_different_hosts() {
    let server = TestServer::start().await;
    let (_host, url) = start_extra_cluster("transfer-host").await;
    server
        .server()
        .accounts()
        .hosts()
        .add("transfer-b", &url)
        .await
        .unwrap();
    let alice = server.create_user().await;
    let bob = server.create_user_on("transfer-b").await;
    // Bob's database is on the other cluster, Alice's on the default one.
    let accounts = server.server().accounts();
    let host_of = |name: String| async move { accounts.user(&name).await.unwrap().unwrap().host };
    assert_eq!(
        host_of(bob.name.clone()).await.as_deref(),
        Some("transfer-b")
    );
    assert_eq!(host_of(alice.name.clone()).await, None);
    let hosts = accounts.hosts().list().await.unwrap();
    let other = hosts.iter().find(|h| h.name == "transfer-b").unwrap();
    assert_eq!(other.users, 1);
    assert!(other.size_bytes.unwrap() > 0);

    sql(
        &server,
        &alice,
        "CREATE TABLE places (id int, name text, the_geom geometry(Point, 4326)); \
         INSERT INTO places SELECT i, 'place ' || i || ' ü', ST_SetSRID(ST_MakePoint(i, i / 2.0), 4326) \
         FROM generate_series(1, 3000) i",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = bare(dir.path())
        .args([
            "transfer",
            "--from",
            &server.base_url(&alice),
            "--from-api-key",
            &alice.api_key,
            "--to",
            &server.base_url(&bob),
            "--to-api-key",
            &bob.api_key,
        ])
        .args(["--table", "places", "--create", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["copied_rows"], 3000, "{report}");

    let dump = "COPY (SELECT id, name, the_geom FROM places ORDER BY id) TO STDOUT";
    let source = carto(&server, &alice, dir.path())
        .args(["copy", "to", "-", "--query", dump])
        .output()
        .unwrap();
    let copied = carto(&server, &bob, dir.path())
        .args(["copy", "to", "-", "--query", dump])
        .output()
        .unwrap();
    assert!(source.status.success() && copied.status.success());
    assert_eq!(source.stdout.len(), copied.stdout.len());
    assert!(source.stdout == copied.stdout, "contents differ");
}
