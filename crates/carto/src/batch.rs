//! Batch jobs (`/sql/job`): statements the server runs in the background.
//!
//! Only the master key may use them. A job is created with one statement, a list (run in
//! order, stopping at the first failure) or statements with fallbacks ([`BatchQuery`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::{Client, CLIENT_ID};
use crate::error::{Error, Result};

/// How often [`BatchClient::create_and_wait`] asks for the job's state by default, as
/// carto-python does.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The batch job endpoints. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BatchClient {
    client: Client,
    poll_interval: Duration,
}

/// A job's state (spec §7.3; the wire spelling `cancelled`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting in the user's queue.
    Pending,
    /// Running now.
    Running,
    /// Finished successfully.
    Done,
    /// A statement failed (see [`Job::failed_reason`]).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Lost track (never produced by the reference server).
    Unknown,
    /// Not run because an earlier statement failed (statements and fallbacks only).
    Skipped,
    /// A state this SDK does not know.
    #[serde(untagged)]
    Other(String),
}

impl JobStatus {
    /// True for the states a job ends in.
    pub fn is_final(&self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Unknown => "unknown",
            JobStatus::Skipped => "skipped",
            JobStatus::Other(s) => s,
        };
        f.write_str(text)
    }
}

/// A job as the server describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub job_id: String,
    /// Its owner.
    #[serde(default)]
    pub user: String,
    /// Its state.
    pub status: JobStatus,
    /// Its statements, as the server echoes them (a string, or a list of objects with
    /// their own `status`).
    #[serde(default)]
    pub query: Value,
    /// When it was created (ISO 8601, UTC).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it last changed.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub failed_reason: Option<String>,
    /// Any other member (e.g. `fallback_status`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Job {
    /// Why the job failed: its `failed_reason`, else the first failed statement's.
    pub fn failed_reason(&self) -> Option<&str> {
        self.failed_reason.as_deref().or_else(|| {
            self.query
                .get("query")
                .unwrap_or(&self.query)
                .as_array()
                .and_then(|queries| {
                    queries
                        .iter()
                        .find_map(|q| q.get("failed_reason").and_then(Value::as_str))
                })
        })
    }
}

/// The statements of a new job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BatchQuery {
    /// One statement (it may hold several, `;`-separated).
    One(String),
    /// Statements run in order; the first failure stops the job.
    Many(Vec<String>),
    /// Statements with fallbacks, as the spec's §7.1 object (`{"query":[...],
    /// "onsuccess":..., "onerror":...}`), written by the caller.
    Fallbacks(Value),
}

impl From<&str> for BatchQuery {
    fn from(sql: &str) -> Self {
        BatchQuery::One(sql.to_string())
    }
}

impl From<String> for BatchQuery {
    fn from(sql: String) -> Self {
        BatchQuery::One(sql)
    }
}

impl From<Vec<String>> for BatchQuery {
    fn from(sql: Vec<String>) -> Self {
        BatchQuery::Many(sql)
    }
}

impl From<Vec<&str>> for BatchQuery {
    fn from(sql: Vec<&str>) -> Self {
        BatchQuery::Many(sql.into_iter().map(str::to_string).collect())
    }
}

impl<const N: usize> From<[&str; N]> for BatchQuery {
    fn from(sql: [&str; N]) -> Self {
        BatchQuery::Many(sql.into_iter().map(str::to_string).collect())
    }
}

impl BatchClient {
    /// The batch endpoints of `client`'s account.
    pub fn new(client: Client) -> Self {
        BatchClient {
            client,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// How often [`create_and_wait`](Self::create_and_wait) polls. Default
    /// [`DEFAULT_POLL_INTERVAL`].
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Creates a job; the server answers at once with the job `pending`.
    ///
    /// The request carries the key in its JSON body, as carto-python does. Not retried when
    /// the answer is lost (a retry could create the job twice); retried on a rate-limited or
    /// unavailable answer, which the server gives before creating anything.
    pub async fn create(&self, query: impl Into<BatchQuery>) -> Result<Job> {
        let body = self.body(query.into());
        self.call(reqwest::Method::POST, "sql/job", Some(body))
            .await
    }

    /// The job `job_id` now.
    pub async fn read(&self, job_id: &str) -> Result<Job> {
        self.call(reqwest::Method::GET, &job_path(job_id)?, None)
            .await
    }

    /// Replaces the statements of a job still `pending` (`PUT`), as carto-python's `update`.
    /// CARTO's own server removed this route in 2016 and answers 404 (an error here);
    /// `carto-sql-api` keeps it for pending jobs.
    pub async fn update(&self, job_id: &str, query: impl Into<BatchQuery>) -> Result<Job> {
        let body = self.body(query.into());
        self.call(reqwest::Method::PUT, &job_path(job_id)?, Some(body))
            .await
    }

    /// Cancels a job and returns its state, `cancelled`. A job that already finished `done`
    /// is reported `done` (the server's "Cannot set status from done to cancelled"), as
    /// carto-python does; other refusals are errors.
    pub async fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        match self
            .call(reqwest::Method::DELETE, &job_path(job_id)?, None)
            .await
        {
            Ok(job) => Ok(job.status),
            Err(error) if error.messages() == ["Cannot set status from done to cancelled"] => {
                Ok(JobStatus::Done)
            }
            Err(error) => Err(error),
        }
    }

    /// Creates a job and polls it until it ends. `done` returns the job; `failed`,
    /// `cancelled` or `unknown` is an error whose [`job`](Error::job) is the job (its
    /// [`failed_reason`](Job::failed_reason) says why). Unlike carto-python, a cancelled
    /// job is an error too: the work was not done.
    pub async fn create_and_wait(&self, query: impl Into<BatchQuery>) -> Result<Job> {
        let job = self.create(query).await?;
        self.wait(&job.job_id).await
    }

    /// Polls the job `job_id` until it ends, as [`create_and_wait`](Self::create_and_wait).
    pub async fn wait(&self, job_id: &str) -> Result<Job> {
        loop {
            let job = self.read(job_id).await?;
            match job.status {
                JobStatus::Done => return Ok(job),
                ref status if status.is_final() => return Err(Error::job_failed(job)),
                _ => tokio::time::sleep(self.poll_interval).await,
            }
        }
    }

    fn body(&self, query: BatchQuery) -> Value {
        serde_json::json!({
            "query": query,
            "api_key": self.client.credentials().api_key(),
            "client": CLIENT_ID,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Job> {
        let client = &self.client;
        let url = client.endpoint(path)?;
        let response = client
            .send(client.retry_policy(), || {
                let request = client.http().request(method.clone(), url.clone());
                Ok(match &body {
                    Some(body) => request.query(&[("client", CLIENT_ID)]).json(body),
                    None => request.query(&client.auth_params()),
                })
            })
            .await?;
        let bytes = response.bytes().await.map_err(Error::http)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::decode(format!(
                "not a job: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
            .with_source(e)
        })
    }
}

/// `sql/job/{id}`, refusing ids that would change the path.
fn job_path(job_id: &str) -> Result<String> {
    if job_id.is_empty()
        || !job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::config(format!("'{job_id}' is not a job id")));
    }
    Ok(format!("sql/job/{job_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_json_reads() {
        let job: Job = serde_json::from_str(
            r#"{"job_id":"a-1","user":"alice","status":"failed","query":[{"query":"x","status":"failed","failed_reason":"boom"}],"created_at":"2015-12-15T07:36:25.123Z","updated_at":"t","fallback_status":"done"}"#,
        )
        .unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.failed_reason(), Some("boom"));
        assert_eq!(job.extra["fallback_status"], "done");
        let other: JobStatus = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(other, JobStatus::Other("paused".into()));
    }

    #[test]
    fn queries_serialize_as_the_spec_shapes() {
        assert_eq!(
            serde_json::to_value(BatchQuery::from("SELECT 1")).unwrap(),
            "SELECT 1"
        );
        assert_eq!(
            serde_json::to_value(BatchQuery::from(["a", "b"])).unwrap(),
            serde_json::json!(["a", "b"])
        );
    }

    #[test]
    fn job_ids_cannot_escape_the_path() {
        assert!(job_path("../sql").is_err());
        assert!(job_path("").is_err());
        assert!(job_path("de305d54-75b4-431b-adb2-eb6b9e546014").is_ok());
    }
}
