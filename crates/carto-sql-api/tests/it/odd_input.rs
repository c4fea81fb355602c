//! Malformed bytes at the HTTP edge get a clear 4xx JSON answer (never a 500, never a dropped
//! connection), and the server keeps answering; a gzip body that inflates past
//! `max_copy_decompressed` is refused with nothing committed.

use std::io::Read;

use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;
use serde_json::Value;

use crate::support::{copy_from, copy_to, count, error_of, http, sql};

/// GETs `url` (sent as written: escapes such as `%00` and `%FF` stay raw); status and JSON.
async fn get(url: &str) -> (u16, Value) {
    answer(http().get(url).send().await.expect("request")).await
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("answer");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

/// Each of `urls` is answered 400 with an error mentioning `problem`.
async fn all_refused(urls: &[String], problem: &str) {
    for url in urls {
        let (status, body) = get(url).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(error_of(&body).contains(problem), "{url}: {body}");
    }
}

/// `form`, POSTed to `/sql` as a urlencoded body, is answered 400 `message`.
async fn form_refused(api: &str, form: String, message: &str) {
    let response = http()
        .post(format!("{api}/sql"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body), message);
}

/// The server still runs statements for `user`.
async fn still_answers(server: &TestServer, user: &TestUser) {
    let body = sql(server, user, "SELECT 1 AS one").await;
    assert_eq!(body["rows"][0]["one"], 1);
}

#[tokio::test]
async fn nul_bytes_in_parameters_are_refused_before_the_database() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let api = server.api_url(&user);
    let key = &user.api_key;

    let urls = [
        format!("{api}/sql?q=select+1%00&api_key={key}"),
        format!("{api}/sql?q=select+1&format=json%00&api_key={key}"),
        format!("{api}/sql/copyto?q=COPY+(SELECT+1)+TO+STDOUT%00&api_key={key}"),
    ];
    all_refused(&urls, "NUL byte").await;

    // In a form body and in a JSON body (where `\u0000` is valid JSON).
    let form = format!("q=select+1%00&api_key={key}");
    form_refused(
        &api,
        form,
        "Invalid request: parameter 'q' contains a NUL byte",
    )
    .await;
    let json = http()
        .post(format!("{api}/sql"))
        .json(&serde_json::json!({ "q": "select 1\u{0}", "api_key": key }))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(json).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("NUL byte"), "{body}");

    // copyfrom takes `q` from the query string.
    let (status, body) = copy_from(
        &server,
        &user,
        "COPY t FROM STDIN\u{0}",
        "1\n".to_string(),
        false,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("NUL byte"), "{body}");

    still_answers(&server, &user).await;
}

#[tokio::test]
async fn impossible_user_names_are_unknown_users() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let base = format!("http://{}", server.addr);
    for (segment, shown) in [
        ("bob%00", "bob\u{0}"),
        ("Bob", "Bob"),
        ("%FF", "\u{FFFD}"),
        ("b%C3%A9", "bé"),
        (&"a".repeat(41), &"a".repeat(41)),
    ] {
        let (status, body) = get(&format!("{base}/user/{segment}/api/v2/sql?q=select+1")).await;
        assert_eq!(status, 404, "{segment}: {body}");
        assert_eq!(
            error_of(&body),
            format!(
                "Sorry, we can't find CARTO user '{shown}'. Please check that you have entered \
                 the correct domain."
            )
        );
    }

    // The same from the Host header.
    let response = http()
        .get(format!("{base}/api/v2/sql?q=select+1"))
        .header("host", "Not_A_User.localhost")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(status, 404, "{body}");
    assert!(error_of(&body).contains("'Not_A_User'"), "{body}");

    still_answers(&server, &user).await;
}

#[tokio::test]
async fn multi_byte_text_where_copy_is_expected() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (a text)").await;
    // Byte 4 falls inside `é`: the check used to slice there and panic.
    for q in ["abcé COPY t FROM STDIN", "abcé", "cop\u{e9}"] {
        let (status, body) = copy_from(&server, &user, q, "x\n".to_string(), false).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(error_of(&body), "SQL must start with COPY");
    }
    for q in ["abcé COPY t TO STDOUT", "abcé"] {
        let (status, _, body) = copy_to(&server, &user, q).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(error_of(&body), "SQL must start with COPY");
    }
    still_answers(&server, &user).await;
}

#[tokio::test]
async fn invalid_utf8_escapes_are_refused() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let api = server.api_url(&user);
    let key = &user.api_key;
    let urls = [
        format!("{api}/sql?q=select+%FF&api_key={key}"),
        format!("{api}/sql?q=select+1&api_key={key}&client=%C3"),
        format!("{api}/sql?q%FF=1&api_key={key}"),
        format!("{api}/sql/copyto?q=COPY+t+TO+STDOUT+%E9&api_key={key}"),
        format!("{api}/sql/copyfrom?q=COPY+t+FROM+STDIN+%E9&api_key={key}"),
        format!("{api}/sql/job/abc?api_key=%FF"),
    ];
    all_refused(&urls, "not valid UTF-8").await;
    let form = format!("q=select+%27%FF%27&api_key={key}");
    form_refused(
        &api,
        form,
        "Invalid request: parameter 'q' is not valid UTF-8",
    )
    .await;
    // Percent-escaped UTF-8 is still text like any other.
    let (status, body) = get(&format!(
        "{api}/sql?q=select+%27%C3%A9%27+AS+e&api_key={key}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["e"], "é");
    still_answers(&server, &user).await;
}

#[tokio::test]
async fn a_content_encoding_that_is_not_text_is_refused() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE t (a text)").await;
    let response = http()
        .post(format!("{}/sql/copyfrom", server.api_url(&user)))
        .query(&[("q", "COPY t FROM STDIN"), ("api_key", &user.api_key)])
        .header(
            "content-encoding",
            reqwest::header::HeaderValue::from_bytes(b"gz\xefp").unwrap(),
        )
        .body("x\n")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    // It used to count as no encoding, loading the body as it came.
    assert_eq!(status, 400, "{body}");
    assert!(
        error_of(&body).starts_with("Unsupported Content-Encoding"),
        "{body}"
    );
    assert_eq!(count(&server, &user, "t").await, 0);
}

/// `data` gzipped as tightly as zlib can, so a little body inflates to a lot.
fn gzip_best(data: &[u8]) -> Vec<u8> {
    let mut compressed = Vec::new();
    flate2::read::GzEncoder::new(data, flate2::Compression::best())
        .read_to_end(&mut compressed)
        .unwrap();
    compressed
}

#[tokio::test]
async fn gzip_past_the_decompressed_limit_commits_nothing() {
    let server = TestServer::with_config(Config {
        max_copy_decompressed: Some(100_000),
        ..Config::default()
    })
    .await;
    let user = server.create_user().await;
    sql(&server, &user, "CREATE TABLE bomb (a text)").await;
    let q = "COPY bomb (a) FROM STDIN";

    // 1 MB of rows compresses to a few kB, well under any POST size limit.
    let rows = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".repeat(25_000);
    let body = gzip_best(rows.as_bytes());
    assert!(body.len() < 10_000, "{}", body.len());
    let (status, answer) = copy_from(&server, &user, q, body, true).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        error_of(&answer),
        "COPY FROM maximum decompressed size of 100000 bytes exceeded"
    );
    assert_eq!(count(&server, &user, "bomb").await, 0);

    // Under the limit the same table loads.
    let small = "b\n".repeat(1000);
    let (status, answer) = copy_from(&server, &user, q, gzip_best(small.as_bytes()), true).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["total_rows"], 1000);
}

/// Batch job bodies, JSON or urlencoded, are held to the same rules: a NUL byte or text that
/// is not UTF-8 is a 400, and no job is queued.
#[tokio::test]
async fn job_bodies_with_odd_bytes_are_refused() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let url = format!("{}/sql/job?api_key={}", server.api_url(&user), user.api_key);
    let bodies: [(&str, Vec<u8>); 4] = [
        (
            "application/json",
            br#"{"query": "SELECT 1\u0000; SELECT 2"}"#.to_vec(),
        ),
        (
            "application/json",
            br#"{"query": {"query": [{"query": "SELECT 1", "onerror": "x\u0000"}]}}"#.to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"query=SELECT%201%00".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"query[]=SELECT%20%FF".to_vec(),
        ),
    ];
    for (content_type, body) in bodies {
        let response = http()
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = answer(response).await;
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(&body));
    }
    let (status, jobs) = get(&url.replace("/sql/job?", "/sql?q=SELECT%201&")).await;
    assert_eq!(status, 200, "{jobs}");
    let mut meta = carto_sql_api::testing::cluster();
    meta.dbname("carto_meta");
    let meta = carto_sql_api::db::connect(&meta).await.unwrap();
    let queued: i64 = meta
        .query_one(
            "SELECT count(*) FROM batch_jobs WHERE username = $1",
            &[&user.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
    still_answers(&server, &user).await;
}
