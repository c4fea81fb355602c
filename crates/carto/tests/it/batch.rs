//! `BatchClient` against the server's `/sql/job` endpoints (spec §7).

use std::time::Duration;

use carto::{BatchClient, JobStatus};

use crate::support::{count, setup};

fn batch(client: &carto::Client) -> BatchClient {
    client
        .batch()
        .with_poll_interval(Duration::from_millis(100))
}

#[tokio::test]
async fn create_read_cancel() {
    let (_server, _user, client) = setup().await;
    let batch = batch(&client);
    let job = batch.create("SELECT pg_sleep(30)").await.unwrap();
    assert!(matches!(
        job.status,
        JobStatus::Pending | JobStatus::Running
    ));
    assert_eq!(job.query, "SELECT pg_sleep(30)");
    let read = batch.read(&job.job_id).await.unwrap();
    assert_eq!(read.job_id, job.job_id);
    assert_eq!(
        batch.cancel(&job.job_id).await.unwrap(),
        JobStatus::Cancelled
    );
    assert_eq!(
        batch.read(&job.job_id).await.unwrap().status,
        JobStatus::Cancelled
    );

    let error = batch
        .read("de305d54-75b4-431b-adb2-eb6b9e546014")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert!(error.messages()[0].contains("not found"), "{error}");
}

#[tokio::test]
async fn create_and_wait_runs_many_statements() {
    let (server, user, client) = setup().await;
    let job = batch(&client)
        .create_and_wait(["CREATE TABLE j (x int)", "INSERT INTO j VALUES (1), (2)"])
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Done);
    assert_eq!(count(&server, &user, "j").await, 2);
    // Cancelling a finished job reports it done, as carto-python does.
    assert_eq!(
        batch(&client).cancel(&job.job_id).await.unwrap(),
        JobStatus::Done
    );
}

#[tokio::test]
async fn a_failed_job_is_an_error_with_its_reason() {
    let (_server, _user, client) = setup().await;
    let error = batch(&client)
        .create_and_wait("SELECT * FROM nowhere")
        .await
        .unwrap_err();
    let job = error.job().expect("the job");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.failed_reason(),
        Some("relation \"nowhere\" does not exist")
    );
    assert!(error
        .to_string()
        .contains("relation \"nowhere\" does not exist"));
}

#[tokio::test]
async fn update_replaces_a_pending_jobs_query() {
    let (_server, _user, client) = setup().await;
    let batch = batch(&client);
    // One query runs per user: a long one first keeps the next one pending.
    let blocker = batch.create("SELECT pg_sleep(30)").await.unwrap();
    let job = batch.create("SELECT 1").await.unwrap();
    let updated = batch.update(&job.job_id, "SELECT 2").await.unwrap();
    assert_eq!(updated.job_id, job.job_id);
    assert_eq!(updated.query, "SELECT 2");
    assert_eq!(batch.read(&job.job_id).await.unwrap().query, "SELECT 2");
    for id in [&job.job_id, &blocker.job_id] {
        assert_eq!(batch.cancel(id).await.unwrap(), JobStatus::Cancelled);
    }
    // A finished job cannot change.
    let error = batch.update(&job.job_id, "SELECT 3").await.unwrap_err();
    assert_eq!(error.status(), Some(400), "{error:?}");
}
