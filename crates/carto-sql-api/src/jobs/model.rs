//! What a job is: the three shapes of `query` (spec §7.1), their JSON with statuses (§7.2),
//! the state machine (§7.3), fallback templates, and the nested form decoding clients use to
//! send them urlencoded.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// Status of a job, a query of an array or fallback job, or a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting in its user's queue.
    Pending,
    /// Running now.
    Running,
    /// Finished successfully.
    Done,
    /// Finished with an error.
    Failed,
    /// Cancelled by its user.
    Cancelled,
    /// Not run because an earlier query failed (queries and fallbacks only).
    Skipped,
    /// Never produced (kept for the wire's sake); also what an unknown spelling reads as.
    #[serde(other)]
    Unknown,
}

impl Status {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Unknown => "unknown",
            Status::Skipped => "skipped",
        }
    }

    /// Parses the wire spelling; anything else is `unknown`.
    pub fn parse(text: &str) -> Status {
        match text {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "done" => Status::Done,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "skipped" => Status::Skipped,
            _ => Status::Unknown,
        }
    }

    /// Whether §7.3 allows going from `self` to `to`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Running | Cancelled | Unknown | Skipped)
                | (Running, Done | Failed | Cancelled | Pending | Unknown)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shape of a job's `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One SQL string.
    Simple,
    /// An array of SQL strings, run in order.
    Array,
    /// `{"query": [{"query", "onsuccess", "onerror", "timeout"}...], "onsuccess", "onerror"}`.
    Fallback,
}

impl Kind {
    /// Name stored in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Simple => "simple",
            Kind::Array => "array",
            Kind::Fallback => "fallback",
        }
    }
}

/// A job's `query` member in one of the three shapes of §7.1, with the statuses the job JSON
/// shows (§7.2). It is stored as that JSON, so what clients read is what the runner wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobQuery {
    /// One SQL string.
    Simple(String),
    /// Queries run in order.
    Array(Vec<Query>),
    /// Queries with fallbacks of their own, and fallbacks of the whole job.
    Fallback(FallbackJob),
}

/// One query of an array or fallback job, as the job JSON shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The SQL.
    pub query: String,
    /// SQL to run after it succeeds (fallback jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onsuccess: Option<String>,
    /// SQL to run after it fails (fallback jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onerror: Option<String>,
    /// Its own timeout in milliseconds (fallback jobs), as the client gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Number>,
    /// Where it is.
    pub status: Status,
    /// Where its fallback is, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_status: Option<Status>,
    /// When it started, ISO 8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended, ISO 8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// PostgreSQL's message when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_reason: Option<String>,
    /// Members a client added: kept and shown as they came, as upstream does.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `query` member of a fallback job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FallbackJob {
    /// The queries, in order.
    pub query: Vec<Query>,
    /// SQL to run once every query succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onsuccess: Option<String>,
    /// SQL to run once a query failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onerror: Option<String>,
}

impl JobQuery {
    /// The shape.
    pub fn kind(&self) -> Kind {
        match self {
            JobQuery::Simple(_) => Kind::Simple,
            JobQuery::Array(_) => Kind::Array,
            JobQuery::Fallback(_) => Kind::Fallback,
        }
    }

    /// The queries of an array or fallback job, to update their statuses.
    pub fn queries_mut(&mut self) -> &mut [Query] {
        match self {
            JobQuery::Simple(_) => &mut [],
            JobQuery::Array(queries) => queries,
            JobQuery::Fallback(job) => &mut job.query,
        }
    }

    /// The stored text (the job JSON's `query`).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored text; a text that is not a job's JSON is a simple job's SQL.
    pub fn from_text(text: &str) -> JobQuery {
        serde_json::from_str(text).unwrap_or_else(|_| JobQuery::Simple(text.to_string()))
    }
}

impl Query {
    /// A pending query with nothing else set.
    fn pending(sql: String) -> Query {
        Query {
            query: sql,
            onsuccess: None,
            onerror: None,
            timeout: None,
            status: Status::Pending,
            fallback_status: None,
            started_at: None,
            ended_at: None,
            failed_reason: None,
            extra: Map::new(),
        }
    }
}

/// Checks a request's `query` member and returns the job's `query` as the job JSON shows it,
/// every query and fallback `pending`, and the job's own `fallback_status`.
pub fn initial_query(query: Option<&Value>) -> Result<(JobQuery, Option<Status>), ApiError> {
    let no_class = || ApiError::bad_request("there is no job class for the provided query");
    let no_sql = || ApiError::bad_request("You must indicate a valid SQL");
    let text = |value: Option<&Value>| match value {
        None => Ok(None),
        Some(Value::String(sql)) => Ok(Some(sql.clone())),
        Some(_) => Err(no_class()),
    };
    match query {
        None | Some(Value::Null) => Err(no_sql()),
        Some(Value::String(sql)) if sql.trim().is_empty() => Err(no_sql()),
        Some(Value::String(sql)) => Ok((JobQuery::Simple(sql.clone()), None)),
        Some(Value::Array(list)) if list.is_empty() => Err(no_sql()),
        Some(Value::Array(list)) => {
            let queries = list
                .iter()
                .map(|q| match q {
                    Value::String(sql) => Ok(Query::pending(sql.clone())),
                    _ => Err(no_class()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((JobQuery::Array(queries), None))
        }
        Some(Value::Object(job)) => {
            let Some(Value::Array(list)) = job.get("query") else {
                return Err(no_class());
            };
            if list.is_empty() {
                return Err(no_sql());
            }
            let onsuccess = text(job.get("onsuccess"))?;
            let onerror = text(job.get("onerror"))?;
            let mut queries = Vec::new();
            for entry in list {
                let Value::Object(entry) = entry else {
                    return Err(no_class());
                };
                let mut extra = entry.clone();
                let Some(Value::String(sql)) = extra.remove("query") else {
                    return Err(no_class());
                };
                let mut query = Query::pending(sql);
                query.onsuccess = text(extra.remove("onsuccess").as_ref())?;
                query.onerror = text(extra.remove("onerror").as_ref())?;
                query.timeout = match extra.remove("timeout") {
                    None => None,
                    Some(Value::Number(ms)) => Some(ms),
                    // Urlencoded bodies carry numbers as text.
                    Some(Value::String(text)) => {
                        Some(text.trim().parse::<u64>().map_err(|_| no_class())?.into())
                    }
                    Some(_) => return Err(no_class()),
                };
                // Statuses are the server's to say, whatever the client sent.
                for key in [
                    "status",
                    "fallback_status",
                    "started_at",
                    "ended_at",
                    "failed_reason",
                ] {
                    extra.remove(key);
                }
                if query.onsuccess.is_some() || query.onerror.is_some() {
                    query.fallback_status = Some(Status::Pending);
                }
                query.extra = extra;
                queries.push(query);
            }
            let fallback = (onsuccess.is_some() || onerror.is_some()).then_some(Status::Pending);
            Ok((
                JobQuery::Fallback(FallbackJob {
                    query: queries,
                    onsuccess,
                    onerror,
                }),
                fallback,
            ))
        }
        Some(_) => Err(no_class()),
    }
}

/// Replaces `<%= name %>` (blanks allowed inside) with `value`, textually: the spec asks for no
/// SQL escaping.
pub fn fill_template(sql: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some((before, after)) = rest.split_once("<%=") {
        out.push_str(before);
        match after.split_once("%>") {
            Some((inner, tail)) if inner.trim() == name => {
                out.push_str(value);
                rest = tail;
            }
            _ => {
                out.push_str("<%=");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length JavaScript's `JSON.stringify(body).length` gives (UTF-16 units), which the 16 KiB
/// payload limit counts.
pub fn payload_length(body: &Value) -> usize {
    body.to_string().encode_utf16().count()
}

/// Decodes urlencoded pairs with nested keys as Node's `qs` does for the SDKs and forms:
/// `query[0][query]=...`, `query[]=a&query[]=b`, `query[onerror]=...`. Objects whose keys are
/// all indices become arrays.
pub fn nested_form(pairs: &[(String, String)]) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let path = key_path(key);
        insert(&mut root, &path, value.clone());
    }
    arrays_from_indices(root)
}

/// Nesting deeper than this keeps the rest of the key as one name (as `qs` does past its depth),
/// so a hostile key cannot recurse the server's stack away.
const MAX_DEPTH: usize = 8;

fn key_path(key: &str) -> Vec<String> {
    let Some((name, mut rest)) = key.split_once('[') else {
        return vec![key.to_string()];
    };
    let mut path = vec![name.to_string()];
    loop {
        if path.len() > MAX_DEPTH {
            path.push(format!("[{rest}"));
            return path;
        }
        let Some((name, tail)) = rest.split_once(']') else {
            // Not a nesting after all: keep the text as part of the last name.
            if let Some(last) = path.last_mut() {
                last.push('[');
                last.push_str(rest);
            }
            return path;
        };
        path.push(name.to_string());
        match tail.strip_prefix('[') {
            Some(next) => rest = next,
            None => return path,
        }
    }
}

fn insert(node: &mut Value, path: &[String], value: String) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !node.is_object() {
        // A scalar given twice, or a name used both plain and nested: nesting wins.
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else {
        return;
    };
    let key = if first.is_empty() {
        map.len().to_string()
    } else {
        first.clone()
    };
    if rest.is_empty() {
        map.insert(key, Value::String(value));
    } else {
        let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        insert(child, rest, value);
    }
}

fn arrays_from_indices(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let all_indices = !map.is_empty() && map.keys().all(|k| k.parse::<usize>().is_ok());
            let converted: Vec<(String, Value)> = map
                .into_iter()
                .map(|(k, v)| (k, arrays_from_indices(v)))
                .collect();
            if all_indices {
                let mut items: Vec<(usize, Value)> = converted
                    .into_iter()
                    .filter_map(|(k, v)| k.parse().ok().map(|i| (i, v)))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(converted.into_iter().collect())
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let shown = |query: &JobQuery| serde_json::to_value(query).unwrap();
        let (query, fallback) = initial_query(Some(&json!("SELECT 1"))).unwrap();
        assert_eq!(
            (query.kind(), shown(&query), fallback),
            (Kind::Simple, json!("SELECT 1"), None)
        );
        let (query, _) = initial_query(Some(&json!(["a", "b"]))).unwrap();
        assert_eq!(query.kind(), Kind::Array);
        assert_eq!(
            shown(&query),
            json!([{"query": "a", "status": "pending"}, {"query": "b", "status": "pending"}])
        );
        let (query, fallback) = initial_query(Some(&json!({
            "query": [{"query": "a", "onerror": "e", "timeout": "50", "tag": 7}, {"query": "b"}],
            "onsuccess": "s"
        })))
        .unwrap();
        assert_eq!(
            (query.kind(), fallback),
            (Kind::Fallback, Some(Status::Pending))
        );
        let expected = json!({"query": [
            {"query": "a", "onerror": "e", "timeout": 50, "status": "pending",
             "fallback_status": "pending", "tag": 7},
            {"query": "b", "status": "pending"}
        ], "onsuccess": "s"});
        assert_eq!(shown(&query), expected);
        // What is stored reads back as the same job.
        assert_eq!(JobQuery::from_text(&query.to_text()), query);
        assert_eq!(
            JobQuery::from_text("SELECT 'not json'"),
            JobQuery::Simple("SELECT 'not json'".into())
        );
        for (bad, message) in [
            (None, "You must indicate a valid SQL"),
            (Some(json!("")), "You must indicate a valid SQL"),
            (Some(json!([])), "You must indicate a valid SQL"),
            (
                Some(json!(1)),
                "there is no job class for the provided query",
            ),
            (
                Some(json!(["a", 1])),
                "there is no job class for the provided query",
            ),
            (
                Some(json!({"query": "a"})),
                "there is no job class for the provided query",
            ),
            (
                Some(json!({"query": [{"q": "a"}]})),
                "there is no job class for the provided query",
            ),
            (
                Some(json!({"query": [{"query": "a", "timeout": "x"}]})),
                "there is no job class for the provided query",
            ),
        ] {
            assert_eq!(initial_query(bad.as_ref()).unwrap_err().message(), message);
        }
    }

    #[test]
    fn transitions() {
        assert!(Status::Pending.can_become(Status::Cancelled));
        assert!(Status::Running.can_become(Status::Pending));
        assert!(!Status::Done.can_become(Status::Cancelled));
        assert!(!Status::Cancelled.can_become(Status::Cancelled));
        assert!(!Status::Pending.can_become(Status::Done));
    }

    #[test]
    fn templates() {
        assert_eq!(
            fill_template(
                "SELECT '<%= job_id %>', '<%=job_id%>' <%= other %>",
                "job_id",
                "J"
            ),
            "SELECT 'J', 'J' <%= other %>"
        );
        assert_eq!(fill_template("<%= a", "a", "x"), "<%= a");
        assert_eq!(fill_template("é<%= a %>ü<%=é%>", "a", "x"), "éxü<%=é%>");
    }

    #[test]
    fn nested_forms() {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            nested_form(&pairs(&[("query", "SELECT 1"), ("api_key", "k")])),
            json!({"query": "SELECT 1", "api_key": "k"})
        );
        assert_eq!(
            nested_form(&pairs(&[("query[]", "a"), ("query[]", "b")])),
            json!({"query": ["a", "b"]})
        );
        assert_eq!(
            nested_form(&pairs(&[
                ("query[query][0][query]", "q1"),
                ("query[query][0][onerror]", "e"),
                ("query[query][1][query]", "q2"),
                ("query[onerror]", "E"),
            ])),
            json!({"query": {"query": [{"query": "q1", "onerror": "e"}, {"query": "q2"}], "onerror": "E"}})
        );
        assert_eq!(nested_form(&pairs(&[("a[b", "1")])), json!({"a[b": "1"}));
        let deep = format!("a{}", "[x]".repeat(100_000));
        let value = nested_form(&pairs(&[(deep.as_str(), "1")]));
        assert!(value.to_string().len() < 400_000);
    }

    #[test]
    fn payload_counts_utf16_units() {
        assert_eq!(payload_length(&json!({"query": "a"})), 13);
        assert_eq!(payload_length(&json!({"query": "é"})), 13);
    }
}
