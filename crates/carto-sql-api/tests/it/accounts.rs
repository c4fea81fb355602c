//! Users, keys, both URL styles, and isolation between users.

use carto_sql_api::testing::TestServer;
use serde_json::Value;

use crate::support::{copy_from, error_of, http, sql};

async fn get_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn host_style_and_path_style_reach_the_same_user() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t AS SELECT 42 AS answer").await;
    let q = [
        ("q", "SELECT answer FROM t"),
        ("api_key", user.api_key.as_str()),
    ];

    let path_style = format!("http://{}/user/{}/api/v1/sql", server.addr, user.name);
    let (status, body) = get_json(http().get(path_style).query(&q)).await;
    assert_eq!(
        (status, &body["rows"][0]["answer"]),
        (200, &Value::from(42))
    );

    let host_style = format!("http://{}/api/v2/sql/", server.addr);
    let (status, body) = get_json(
        http()
            .get(host_style)
            .header(
                "host",
                format!("{}.localhost:{}", user.name, server.addr.port()),
            )
            .query(&q),
    )
    .await;
    assert_eq!(
        (status, &body["rows"][0]["answer"]),
        (200, &Value::from(42))
    );
}

#[tokio::test]
async fn unknown_users_and_hosts() {
    let server = TestServer::start().await;
    let (status, body) = get_json(
        http()
            .get(format!("http://{}/api/v1/sql", server.addr))
            .header("host", "vizzualinot.example.com")
            .query(&[("q", "SELECT 1")]),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_of(&body),
        "Sorry, we can't find CARTO user 'vizzualinot'. Please check that you have entered the correct domain."
    );
    let (status, body) = get_json(
        http()
            .get(format!("http://{}/api/v1/sql", server.addr))
            .header("host", "localhost")
            .query(&[("q", "SELECT 1")]),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "No username found in hostname 'localhost'")
    );

    let (status, body) = get_json(http().get(format!("http://{}/nothing/here", server.addr))).await;
    assert_eq!((status, error_of(&body)), (404, "Not found"));
}

#[tokio::test]
async fn keys_map_to_roles() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(
        &server,
        &user,
        "CREATE TABLE public_table (id int); CREATE TABLE private_table (id int); \
         INSERT INTO public_table VALUES (1); GRANT SELECT ON public_table TO PUBLIC",
    )
    .await;
    let url = format!("{}/sql", server.api_url(&user));

    let (status, body) = get_json(
        http()
            .get(&url)
            .query(&[("q", "SELECT 1"), ("api_key", "THIS_API_KEY_NOT_EXIST")]),
    )
    .await;
    assert_eq!((status, error_of(&body)), (401, "Unauthorized"));

    // No key: the public role reads what is granted to it and nothing else.
    let (status, body) = get_json(
        http()
            .get(&url)
            .query(&[("q", "SELECT * FROM public_table")]),
    )
    .await;
    assert_eq!((status, body["total_rows"].as_u64()), (200, Some(1)));
    let (status, body) = get_json(http().get(&url).query(&[
        ("q", "SELECT * FROM private_table"),
        ("api_key", "default_public"),
    ]))
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (403, "permission denied for table private_table")
    );
    let (status, body) = get_json(
        http()
            .get(&url)
            .query(&[("q", "INSERT INTO public_table VALUES (2)")]),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (403, "permission denied for table public_table")
    );
    let (status, body) =
        get_json(http().get(&url).query(&[("q", "DROP TABLE public_table")])).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "must be owner of table public_table")
    );

    // The public role cannot COPY into the user's tables either.
    let response = http()
        .post(format!("{}/sql/copyfrom", server.api_url(&user)))
        .query(&[("q", "COPY public_table FROM STDIN")])
        .body("5\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Basic auth: the password is the key, the name must be the user's.
    let (status, body) = get_json(
        http()
            .get(&url)
            .basic_auth(&user.name, Some(&user.api_key))
            .query(&[("q", "SELECT count(*) AS n FROM private_table")]),
    )
    .await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &Value::from(0)));
    let (status, body) = get_json(
        http()
            .get(&url)
            .basic_auth("wadus", Some(&user.api_key))
            .query(&[("q", "SELECT 1")]),
    )
    .await;
    assert_eq!((status, error_of(&body)), (403, "permission denied"));

    // Roles are never superusers and cannot read server files.
    let (status, body) =
        copy_from(&server, &user, "COPY public_table FROM STDIN", "1\n", false).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_json(http().get(&url).query(&[
        (
            "q",
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        ),
        ("api_key", user.api_key.as_str()),
    ]))
    .await;
    assert_eq!(
        (status, &body["rows"][0]["rolsuper"]),
        (200, &Value::Bool(false))
    );
    let (status, body) = get_json(http().get(&url).query(&[
        ("q", "SELECT pg_read_file('/etc/passwd')"),
        ("api_key", user.api_key.as_str()),
    ]))
    .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn one_users_key_never_reaches_another_users_data() {
    let server = TestServer::start().await;
    let alice = server.create_user().await;
    let bob = server.create_user().await;
    sql(
        &server,
        &alice,
        "CREATE TABLE secrets AS SELECT 'alice only' AS s",
    )
    .await;

    // Bob's key on Alice's URL is not a key of Alice's.
    let (status, body) = get_json(
        http()
            .get(format!("{}/sql", server.api_url(&alice)))
            .query(&[
                ("q", "SELECT * FROM secrets"),
                ("api_key", bob.api_key.as_str()),
            ]),
    )
    .await;
    assert_eq!((status, error_of(&body)), (401, "Unauthorized"));

    // Bob's own role cannot connect to Alice's database or see her table from his.
    let (status, body) = get_json(http().get(format!("{}/sql", server.api_url(&bob))).query(&[
        ("q", "SELECT * FROM secrets"),
        ("api_key", bob.api_key.as_str()),
    ]))
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "relation \"secrets\" does not exist")
    );
    let admin = server.superuser_client(&alice).await;
    for role in ["master", "public"] {
        let can_connect: bool = admin
            .query_one(
                "SELECT has_database_privilege($1, current_database(), 'CONNECT')",
                &[&format!("carto_{}_{role}", bob.name)],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            !can_connect,
            "bob's {role} role may connect to alice's database"
        );
    }
}
