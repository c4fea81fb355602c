//! The `/sql` endpoint: run statements, get rows.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::download::{temp_path, Undo, UndoAction};
use crate::error::{ApiErrorBody, Error, Result};

/// Statements this long or longer go in a POST body, shorter ones in a GET query string,
/// as carto-python decides (proxies limit URL lengths).
pub const MAX_GET_QUERY_LEN: usize = 1024;

/// Runs SQL through the `/sql` endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqlClient {
    client: Client,
}

/// One column of a JSON answer's `fields`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Field {
    /// CARTO's type name: `number`, `string`, `boolean`, `date`, `geometry`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The PostgreSQL type name (absent for geometries).
    #[serde(default)]
    pub pgtype: Option<String>,
    /// Geometry type of a geometry column, e.g. `Point`.
    #[serde(default)]
    pub wkbtype: Option<String>,
    /// Coordinate dimensions of a geometry column.
    #[serde(default)]
    pub dims: Option<u32>,
    /// SRID of a geometry column.
    #[serde(default)]
    pub srid: Option<i32>,
}

/// A JSON answer: the rows and what describes them.
///
/// `T` is what one row becomes: by default a JSON object (column name → value); with
/// [`SqlClient::send_as`] any type serde can deserialize from such an object.
#[derive(Debug, Clone, Deserialize)]
pub struct SqlResponse<T = Map<String, Value>> {
    /// The rows of every result set, in order.
    pub rows: Vec<T>,
    /// Seconds the server spent.
    pub time: f64,
    /// The columns of the last result set.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Rows affected by the last statement, or rows returned.
    pub total_rows: u64,
    /// `NOTICE`s the statements raised.
    #[serde(default)]
    pub notices: Vec<String>,
    /// `WARNING`s the statements raised.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl<T> SqlResponse<T> {
    /// The description of column `name`, if the answer has it in the usual shape.
    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields
            .get(name)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// An output format of `/sql` other than the default JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The default JSON document ([`SqlResponse`]).
    Json,
    /// A GeoJSON `FeatureCollection` (the geometry column must be named `the_geom`).
    GeoJson,
    /// CSV with a header row.
    Csv,
    /// Any other format name the server knows (`kml`, `svg`, `shp`, ...).
    Other(String),
}

impl Format {
    fn as_str(&self) -> &str {
        match self {
            Format::Json => "json",
            Format::GeoJson => "geojson",
            Format::Csv => "csv",
            Format::Other(name) => name,
        }
    }
}

/// A `/sql` request being prepared: [`SqlClient::request`].
#[must_use]
#[derive(Debug, Clone)]
pub struct SqlRequest {
    client: Client,
    params: Vec<(String, String)>,
    sql_len: usize,
}

/// An answer's body as it arrives: a `Stream` of byte chunks.
pub struct ByteStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
}

impl std::fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteStream")
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl ByteStream {
    /// Collects the whole body.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let mut all = bytes::BytesMut::new();
        while let Some(chunk) = self.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all.freeze())
    }
}

impl SqlClient {
    /// The `/sql` endpoint of `client`'s account.
    pub fn new(client: Client) -> Self {
        SqlClient { client }
    }

    /// Runs `sql` (one or several `;`-separated statements) and returns its JSON answer.
    ///
    /// An error the server reports after it began sending rows (a 200 answer closed with
    /// `"error"`) is an error here too, unlike carto-python.
    pub async fn send(&self, sql: &str) -> Result<SqlResponse> {
        self.request(sql).send().await
    }

    /// Like [`send`](Self::send), with each row deserialized into `T` (e.g. a
    /// `#[derive(Deserialize)]` struct whose fields are the columns).
    pub async fn send_as<T: DeserializeOwned>(&self, sql: &str) -> Result<SqlResponse<T>> {
        self.request(sql).send_as().await
    }

    /// A request for `sql`, to add parameters or choose a format.
    pub fn request(&self, sql: &str) -> SqlRequest {
        SqlRequest {
            client: self.client.clone(),
            params: vec![("q".into(), sql.into())],
            sql_len: sql.len(),
        }
    }
}

impl SqlRequest {
    /// The output format (`format`). Default JSON.
    pub fn format(self, format: Format) -> Self {
        self.param("format", format.as_str())
    }

    /// Any other parameter of the endpoint, e.g. `skipfields`, `dp`, `filename`.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sends the request and parses its JSON answer.
    pub async fn send(self) -> Result<SqlResponse> {
        self.send_as().await
    }

    /// Sends the request and parses its JSON answer, each row into a `T`.
    pub async fn send_as<T: DeserializeOwned>(self) -> Result<SqlResponse<T>> {
        let body = self.bytes_stream().await?.bytes().await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::decode(format!("the answer is not JSON: {e}")))?;
        if value.get("error").is_some() {
            let body: ApiErrorBody = serde_json::from_value(value).unwrap_or_default();
            return Err(Error::mid_stream(body));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::decode(format!("cannot read the rows: {e}")).with_source(e))
    }

    /// Sends the request and writes the answer's body into `path` (e.g. `Format::Other("shp")`
    /// into `cities.zip`); the bytes written. The body goes into a hidden temporary file next
    /// to `path`, renamed over it once complete: an error answer, a failed transfer or a
    /// dropped future leaves `path` as it was.
    pub async fn to_file(self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        let mut body = self.bytes_stream().await?;
        let temp = temp_path(path);
        let mut undo = Undo(Some(UndoAction::Remove(temp.clone())));
        let mut file = tokio::fs::File::create(&temp).await?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, path).await?;
        undo.disarm();
        Ok(written)
    }

    /// Sends the request and returns the answer's body as it arrives, whatever its format
    /// (e.g. `Format::Csv` or `Format::GeoJson`).
    pub async fn bytes_stream(self) -> Result<ByteStream> {
        let client = self.client.clone();
        let url = client.endpoint("sql")?;
        let use_get = self.sql_len < MAX_GET_QUERY_LEN;
        let response = client
            .send(client.retry_policy(), || {
                let request = if use_get {
                    client
                        .http()
                        .get(url.clone())
                        .query(&self.params)
                        .query(&client.auth_params())
                } else {
                    client
                        .http()
                        .post(url.clone())
                        .query(&client.auth_params())
                        .form(&self.params)
                };
                Ok(request)
            })
            .await?;
        let stream = response.bytes_stream().map_err(Error::http);
        Ok(ByteStream {
            inner: Box::pin(stream),
        })
    }
}
