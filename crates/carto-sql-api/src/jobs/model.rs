//! What a job is: the three shapes of `query` (spec §7.1), their JSON with statuses (§7.2),
//! the state machine (§7.3), fallback templates, and the nested form decoding clients use to
//! send them urlencoded.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Status of a job, a query of an array or fallback job, or a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Never produced (kept for the wire's sake).
    Unknown,
    /// Not run because an earlier query failed (queries and fallbacks only).
    Skipped,
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

    /// Parses a stored name.
    pub fn parse(text: &str) -> Kind {
        match text {
            "array" => Kind::Array,
            "fallback" => Kind::Fallback,
            _ => Kind::Simple,
        }
    }
}

/// Checks a request's `query` member and returns the job's shape and its `query` as the job
/// JSON shows it, every query and fallback `pending`; plus the job's own `fallback_status`.
pub fn initial_query(query: Option<&Value>) -> Result<(Kind, Value, Option<Status>), ApiError> {
    let no_class = || ApiError::bad_request("there is no job class for the provided query");
    let no_sql = || ApiError::bad_request("You must indicate a valid SQL");
    match query {
        None | Some(Value::Null) => Err(no_sql()),
        Some(Value::String(sql)) if sql.trim().is_empty() => Err(no_sql()),
        Some(Value::String(sql)) => Ok((Kind::Simple, Value::String(sql.clone()), None)),
        Some(Value::Array(list)) if list.is_empty() => Err(no_sql()),
        Some(Value::Array(list)) => {
            let entries = list
                .iter()
                .map(|q| match q {
                    Value::String(sql) => {
                        let mut entry = Map::new();
                        entry.insert("query".into(), Value::String(sql.clone()));
                        entry.insert("status".into(), Status::Pending.as_str().into());
                        Ok(Value::Object(entry))
                    }
                    _ => Err(no_class()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((Kind::Array, Value::Array(entries), None))
        }
        Some(Value::Object(job)) => {
            let Some(Value::Array(list)) = job.get("query") else {
                return Err(no_class());
            };
            if list.is_empty() {
                return Err(no_sql());
            }
            for key in ["onsuccess", "onerror"] {
                if !matches!(job.get(key), None | Some(Value::String(_))) {
                    return Err(no_class());
                }
            }
            let mut entries = Vec::new();
            for entry in list {
                let Value::Object(entry) = entry else {
                    return Err(no_class());
                };
                let mut entry = entry.clone();
                if !matches!(entry.get("query"), Some(Value::String(_))) {
                    return Err(no_class());
                }
                for key in ["onsuccess", "onerror"] {
                    if !matches!(entry.get(key), None | Some(Value::String(_))) {
                        return Err(no_class());
                    }
                }
                match entry.get("timeout") {
                    None | Some(Value::Number(_)) => {}
                    // Urlencoded bodies carry numbers as text.
                    Some(Value::String(text)) => {
                        let ms: u64 = text.trim().parse().map_err(|_| no_class())?;
                        entry.insert("timeout".into(), ms.into());
                    }
                    Some(_) => return Err(no_class()),
                }
                entry.insert("status".into(), Status::Pending.as_str().into());
                if entry.contains_key("onsuccess") || entry.contains_key("onerror") {
                    entry.insert("fallback_status".into(), Status::Pending.as_str().into());
                }
                entries.push(Value::Object(entry));
            }
            let mut query = Map::new();
            query.insert("query".into(), Value::Array(entries));
            for key in ["onsuccess", "onerror"] {
                if let Some(value) = job.get(key) {
                    query.insert(key.into(), value.clone());
                }
            }
            let fallback = (job.contains_key("onsuccess") || job.contains_key("onerror"))
                .then_some(Status::Pending);
            Ok((Kind::Fallback, Value::Object(query), fallback))
        }
        Some(_) => Err(no_class()),
    }
}

/// The entries (queries with statuses) of an array or fallback job's `query`.
pub fn entries_mut(kind: Kind, query: &mut Value) -> Option<&mut Vec<Value>> {
    match kind {
        Kind::Simple => None,
        Kind::Array => query.as_array_mut(),
        Kind::Fallback => query.get_mut("query").and_then(Value::as_array_mut),
    }
}

/// The status recorded in an entry (or an entry's `fallback_status` with `key`).
pub fn status_of(entry: &Value, key: &str) -> Option<Status> {
    entry.get(key).and_then(Value::as_str).map(Status::parse)
}

/// Sets `key` of an entry object.
pub fn set(entry: &mut Value, key: &str, value: impl Into<Value>) {
    if let Value::Object(map) = entry {
        map.insert(key.to_string(), value.into());
    }
}

/// Replaces `<%= name %>` (blanks allowed inside) with `value`, textually: the spec asks for no
/// SQL escaping.
pub fn fill_template(sql: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("<%=") {
        let after = &rest[start + 3..];
        let matched = after
            .find("%>")
            .and_then(|end| (after[..end].trim() == name).then_some(start + 3 + end + 2));
        match matched {
            Some(end) => {
                out.push_str(&rest[..start]);
                out.push_str(value);
                rest = &rest[end..];
            }
            None => {
                out.push_str(&rest[..start + 3]);
                rest = &rest[start + 3..];
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
    let Some(open) = key.find('[') else {
        return vec![key.to_string()];
    };
    let mut path = vec![key[..open].to_string()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        if path.len() > MAX_DEPTH {
            path.push(rest.to_string());
            return path;
        }
        match stripped.find(']') {
            Some(close) => {
                path.push(stripped[..close].to_string());
                rest = &stripped[close + 1..];
            }
            None => {
                // Not a nesting after all: keep the text as part of the last name.
                if let Some(last) = path.last_mut() {
                    last.push_str(rest);
                }
                return path;
            }
        }
    }
    path
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
        let (kind, query, fallback) = initial_query(Some(&json!("SELECT 1"))).unwrap();
        assert_eq!(
            (kind, query, fallback),
            (Kind::Simple, json!("SELECT 1"), None)
        );
        let (kind, query, _) = initial_query(Some(&json!(["a", "b"]))).unwrap();
        assert_eq!(kind, Kind::Array);
        assert_eq!(
            query,
            json!([{"query": "a", "status": "pending"}, {"query": "b", "status": "pending"}])
        );
        let (kind, query, fallback) = initial_query(Some(&json!({
            "query": [{"query": "a", "onerror": "e", "timeout": "50"}, {"query": "b"}],
            "onsuccess": "s"
        })))
        .unwrap();
        assert_eq!((kind, fallback), (Kind::Fallback, Some(Status::Pending)));
        assert_eq!(
            query,
            json!({"query": [
                {"query": "a", "onerror": "e", "timeout": 50, "status": "pending", "fallback_status": "pending"},
                {"query": "b", "status": "pending"}
            ], "onsuccess": "s"})
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
            assert_eq!(initial_query(bad.as_ref()).unwrap_err().message, message);
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
