//! The one identity path (spec §1–2, §8): the user resolved before the rate limit, the key from
//! Basic auth, the query string or a form body, the `Carto-User` headers on every answer to a
//! known user, and each job route in its rate-limit group and the spec's check order.

use carto_sql_api::limits::{Group, Rate, RateLimits};
use carto_sql_api::testing::{TestServer, TestUser};
use carto_sql_api::Config;
use serde_json::{json, Value};

use crate::support::{error_of, http};

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

fn jobs_url(server: &TestServer, user: &TestUser) -> String {
    format!("{}/sql/job", server.api_url(user))
}

/// Status, the identity headers (`Carto-User`, `Carto-User-Id`, `Vary`), the
/// `Carto-Rate-Limit-Limit` header and the body.
struct Answer {
    status: u16,
    user: Option<String>,
    user_id: Option<String>,
    vary: Option<String>,
    rate_limit: Option<String>,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (user, user_id, vary, rate_limit) = (
        header("carto-user"),
        header("carto-user-id"),
        header("vary"),
        header("carto-rate-limit-limit"),
    );
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer {
        status,
        user,
        user_id,
        vary,
        rate_limit,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// A job's master key may travel in a urlencoded form body, as browsers post it: it is read
/// (a wrong one is a 401), and without any key the public role is refused jobs.
#[tokio::test]
async fn a_job_key_may_come_in_a_form_body() {
    let server = TestServer::start().await;
    let user = server.create_user().await;
    let created = send(
        http()
            .post(jobs_url(&server, &user))
            .form(&[("query", "SELECT 1"), ("api_key", &user.api_key)]),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["query"], "SELECT 1");
    let wrong = send(
        http()
            .post(jobs_url(&server, &user))
            .form(&[("query", "SELECT 1"), ("api_key", "wrong")]),
    )
    .await;
    assert_eq!((wrong.status, error_of(&wrong.body)), (401, "Unauthorized"));
    let anonymous = send(
        http()
            .post(jobs_url(&server, &user))
            .form(&[("query", "SELECT 1")]),
    )
    .await;
    assert_eq!(
        (anonymous.status, error_of(&anonymous.body)),
        (403, "permission denied")
    );
    // The form's key reads the job too (DELETE and GET take the query string's).
    let id = created.body["job_id"].as_str().unwrap();
    let read = send(
        http()
            .get(format!("{}/{id}", jobs_url(&server, &user)))
            .query(&[("api_key", &user.api_key)]),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
}

/// Every answer to a known user names it, whoever refused the request: the rate limit, the
/// key check, the payload check or the handler; `Vary: Authorization` only once a key was
/// accepted. An unknown user is named by nobody.
#[tokio::test]
async fn identity_headers_are_on_errors_and_refusals() {
    let config = Config {
        rate_limits: RateLimits::none().with(Group::Query, rate("0/1/60")),
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let user = server.create_user().await;
    let sql = || {
        http()
            .get(format!("{}/sql", server.api_url(&user)))
            .query(&[("q", "SELECT 1"), ("api_key", &user.api_key)])
    };
    let ok = send(sql()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let id = ok.user_id.clone().expect("Carto-User-Id");
    assert!(id.parse::<i64>().is_ok(), "{id}");
    assert_eq!(
        (ok.user.as_deref(), ok.vary.as_deref()),
        (Some(user.name.as_str()), Some("Authorization"))
    );

    let limited = send(sql()).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(
        (limited.user.as_deref(), limited.user_id.as_deref()),
        (Some(user.name.as_str()), Some(id.as_str()))
    );
    assert_eq!(limited.vary, None, "no key was looked at");

    let bad_key = send(
        http()
            .post(format!("{}/sql/copyfrom", server.api_url(&user)))
            .query(&[("q", "COPY t FROM STDIN"), ("api_key", "wrong")])
            .body("1\n"),
    )
    .await;
    assert_eq!(bad_key.status, 401, "{}", bad_key.body);
    assert_eq!(bad_key.user.as_deref(), Some(user.name.as_str()));
    assert_eq!(bad_key.vary, None);

    // The public key is accepted, then refused jobs.
    let not_master = send(http().get(format!("{}/some-id", jobs_url(&server, &user)))).await;
    assert_eq!(
        (not_master.status, error_of(&not_master.body)),
        (403, "permission denied")
    );
    assert_eq!(not_master.user.as_deref(), Some(user.name.as_str()));
    assert_eq!(not_master.vary.as_deref(), Some("Authorization"));

    let too_large = send(
        http()
            .post(jobs_url(&server, &user))
            .json(&json!({"query": "a".repeat(17000), "api_key": user.api_key})),
    )
    .await;
    assert_eq!(too_large.status, 400, "{}", too_large.body);
    assert_eq!(too_large.user.as_deref(), Some(user.name.as_str()));
    assert_eq!(too_large.vary, None);

    let unknown = send(
        http()
            .get(format!("http://{}/user/nobody/api/v2/sql", server.addr))
            .query(&[("q", "SELECT 1")]),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!((unknown.user, unknown.user_id), (None, None));
}

/// `PUT /sql/job/{id}` is a submission: it shares `job_create` with `POST`, and checks the
/// payload size, then the limit, then the key. `DELETE` has `job_delete` of its own.
#[tokio::test]
async fn put_and_delete_jobs_have_their_groups_and_order() {
    let config = Config {
        rate_limits: RateLimits::none()
            .with(Group::JobCreate, rate("0/1/60"))
            .with(Group::JobDelete, rate("0/1/60")),
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let user = server.create_user().await;
    let job = |id: &str| format!("{}/{id}", jobs_url(&server, &user));
    let put = |body: Value| http().put(job("nope")).json(&body);

    let first = send(put(json!({"query": "SELECT 2", "api_key": user.api_key}))).await;
    assert_eq!(
        (first.status, error_of(&first.body)),
        (400, "Job with id nope not found")
    );
    assert_eq!(first.rate_limit.as_deref(), Some("1"));
    let too_large = send(put(json!({"query": "a".repeat(17000), "api_key": "wrong"}))).await;
    assert_eq!(too_large.status, 400, "size before the limit");
    assert!(error_of(&too_large.body).starts_with("Your payload is too large: 17"));
    let over = send(put(json!({"query": "SELECT 2", "api_key": "wrong"}))).await;
    assert_eq!(over.status, 429, "the limit before the key: {}", over.body);
    let create = send(
        http()
            .post(jobs_url(&server, &user))
            .json(&json!({"query": "SELECT 1", "api_key": user.api_key})),
    )
    .await;
    assert_eq!(create.status, 429, "PUT and POST share a group");

    let delete = || {
        http()
            .delete(job("nope"))
            .query(&[("api_key", &user.api_key)])
    };
    let first = send(delete()).await;
    assert_eq!(
        (first.status, first.rate_limit.as_deref()),
        (400, Some("1"))
    );
    assert_eq!(send(delete()).await.status, 429);
    // Reading is not limited here.
    let read = send(http().get(job("nope")).query(&[("api_key", &user.api_key)])).await;
    assert_eq!((read.status, read.rate_limit), (400, None));
}
