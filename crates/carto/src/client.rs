//! The shared HTTP core: credentials, the reqwest client and the retry loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::BatchClient;
use crate::copy::CopyClient;
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::retry::{is_retryable, RetryPolicy};
use crate::sql::SqlClient;

/// Sent as the `client` parameter, as carto-python sends `cps-{version}`.
pub(crate) const CLIENT_ID: &str = concat!("carto-rs-", env!("CARGO_PKG_VERSION"));
const USER_AGENT: &str = concat!("carto-rs/", env!("CARGO_PKG_VERSION"));

/// Largest error answer read into memory; longer ones are cut (the message comes first).
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// A connection to one account: credentials, HTTP connection pool and retry policy.
///
/// Cheap to clone (the pool is shared); make one and hand out [`Client::sql`],
/// [`Client::copy`] and [`Client::batch`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    credentials: Credentials,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("credentials", &self.inner.credentials)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// Settings of a [`Client`]; from [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    credentials: Credentials,
    retry: RetryPolicy,
    connect_timeout: Duration,
    user_agent: String,
    resolve: Vec<(String, std::net::SocketAddr)>,
    http: Option<reqwest::Client>,
}

impl Client {
    /// A client with the default settings.
    pub fn new(credentials: Credentials) -> Result<Self> {
        Client::builder(credentials).build()
    }

    /// A client from `CARTO_API_URL` and `CARTO_API_KEY` ([`Credentials::from_env`]).
    pub fn from_env() -> Result<Self> {
        Client::new(Credentials::from_env()?)
    }

    /// Starts configuring a client.
    pub fn builder(credentials: Credentials) -> ClientBuilder {
        ClientBuilder {
            credentials,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            user_agent: USER_AGENT.to_string(),
            resolve: Vec::new(),
            http: None,
        }
    }

    /// The account's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// The `/sql` endpoint.
    pub fn sql(&self) -> SqlClient {
        SqlClient::new(self.clone())
    }

    /// The COPY endpoints, with the default compression and chunk size.
    pub fn copy(&self) -> CopyClient {
        CopyClient::new(self.clone())
    }

    /// The batch job endpoints.
    pub fn batch(&self) -> BatchClient {
        BatchClient::new(self.clone())
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The URL of `api/v2/{path}`.
    pub(crate) fn endpoint(&self, path: &str) -> Result<reqwest::Url> {
        self.inner.credentials.endpoint(path)
    }

    /// `api_key` and `client`, as carto-python adds them to every request.
    pub(crate) fn auth_params(&self) -> [(&'static str, &str); 2] {
        [
            ("api_key", self.inner.credentials.api_key()),
            ("client", CLIENT_ID),
        ]
    }

    /// Sends the request `make` builds, again while the answer is retryable and `retry`
    /// allows. Answers >= 400 become errors; the response returned has a success status.
    pub(crate) async fn send(
        &self,
        retry: &RetryPolicy,
        mut make: impl FnMut() -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let response = make()?.send().await.map_err(Error::http)?;
            let status = response.status().as_u16();
            if status < 400 {
                return Ok(response);
            }
            let headers = response.headers().clone();
            let retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = read_limited(response, MAX_ERROR_BODY).await;
            let error = Error::from_response(status, &headers, &body);
            let retryable = is_retryable(status, retry_after.is_some());
            match retry.next_wait(retries, started.elapsed(), retryable, retry_after) {
                Some(wait) => {
                    tracing::info!(
                        status,
                        wait_ms = wait.as_millis() as u64,
                        retry = retries + 1,
                        "retrying after a retryable answer"
                    );
                    tokio::time::sleep(wait).await;
                    retries += 1;
                }
                None => return Err(error),
            }
        }
    }
}

/// Whether the server gzipped `response`'s body (the SDK decodes bodies itself).
pub(crate) fn is_gzipped(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

/// At most `limit` bytes of an answer's body, decoded if gzipped; what could be read if it
/// breaks midway.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let gzipped = is_gzipped(&response);
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    if gzipped {
        use tokio::io::AsyncReadExt;
        let mut decoded = Vec::new();
        let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(&body[..]);
        // A broken stream still yields what decoded before the break.
        let _ = (&mut decoder)
            .take(limit as u64)
            .read_to_end(&mut decoded)
            .await;
        return decoded;
    }
    body
}

impl ClientBuilder {
    /// How requests are retried. Default [`RetryPolicy::default`] (3 retries within 60 s);
    /// [`RetryPolicy::never`] turns retrying off.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long connecting may take. Default 30 s. (There is no overall request timeout: a
    /// COPY may rightly take hours; the server bounds statements itself.)
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` header. Default `carto-rs/{version}`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Connects to `addr` for the host name `host` instead of resolving it (like curl's
    /// `--resolve`), e.g. to reach `alice.localhost` on a test server.
    pub fn resolve(mut self, host: impl Into<String>, addr: std::net::SocketAddr) -> Self {
        self.resolve.push((host.into(), addr));
        self
    }

    /// Uses this reqwest client as it is (its own timeouts, proxies, TLS settings) instead
    /// of building one; the other HTTP settings of this builder are then ignored. It should
    /// not decompress answers itself (build it with `.no_gzip()`): the SDK does that.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let http = match self.http {
            Some(http) => http,
            None => {
                // Decompression is the SDK's own job (copy_to decodes gzip as it streams and
                // counts wire bytes for progress), so reqwest must leave bodies alone.
                let mut builder = reqwest::Client::builder()
                    .no_gzip()
                    .user_agent(self.user_agent)
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true);
                for (host, addr) in &self.resolve {
                    builder = builder.resolve(host, *addr);
                }
                builder
                    .build()
                    .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))?
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                credentials: self.credentials,
                retry: self.retry,
            }),
        })
    }
}
