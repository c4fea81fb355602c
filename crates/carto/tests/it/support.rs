//! Shared helpers.

use carto::{Client, Credentials};
use carto_sql_api::testing::{TestServer, TestUser};

/// A server, a fresh user and an SDK client for it (path-style URL).
pub async fn setup() -> (TestServer, TestUser, Client) {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let client = path_client(&server, &user);
    (server, user, client)
}

/// A client on `http://127.0.0.1:PORT/user/NAME/`.
pub fn path_client(server: &TestServer, user: &TestUser) -> Client {
    Client::new(Credentials::new(&server.base_url(user), &user.api_key).expect("credentials"))
        .expect("client")
}

/// A client on the host-style `http://NAME.localhost:PORT/`, the name mapped to the server.
pub fn host_client(server: &TestServer, user: &TestUser) -> Client {
    let host = format!("{}.localhost", user.name);
    let url = format!("http://{host}:{}/", server.addr.port());
    let credentials = Credentials::new(&url, &user.api_key).expect("credentials");
    assert_eq!(credentials.username(), user.name);
    Client::builder(credentials)
        .resolve(host, server.addr)
        .build()
        .expect("client")
}

/// Rows in `table`, counted as superuser.
pub async fn count(server: &TestServer, user: &TestUser, table: &str) -> i64 {
    server
        .superuser_client(user)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// Creates `table` through the API as the user (so the user owns it).
pub async fn create(client: &Client, ddl: &str) {
    client
        .sql()
        .send(ddl)
        .await
        .unwrap_or_else(|e| panic!("{ddl}: {e}"));
}

/// `n` rows of `id,name` CSV with a header.
pub fn csv_rows(n: usize) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..n {
        csv.push_str(&format!("{i},name {i}\n"));
    }
    csv
}

/// Waits until no backend of `user`'s database runs a statement starting with `prefix`.
pub async fn backends_gone(server: &TestServer, user: &TestUser, prefix: &str) -> bool {
    let client = server.superuser_client(user).await;
    for _ in 0..150 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND query ILIKE $1 || '%' AND state <> 'idle'",
                &[&prefix],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
