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
