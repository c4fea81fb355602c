//! The `/sql` endpoint's statement execution and its JSON rendering.
//!
//! Statements run with the simple query protocol (text values, several statements per `q`),
//! each prepared first so the answer can describe its columns with their PostgreSQL types.
//! Several statements without their own transaction control run in one transaction, as
//! PostgreSQL runs a multi-statement simple query.

use serde_json::{Map, Number, Value};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

use crate::auth::Caller;
use crate::db::{discard, Pools};
use crate::error::ApiError;
use crate::sql_text::{split_statements, tokenize, Token};

/// The outcome of a `/sql` request.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// Rows of every result set, in order.
    pub rows: Vec<Map<String, Value>>,
    /// Columns of the last result set: name, type.
    pub fields: Vec<(String, Type)>,
    /// Count of the last command tag, else the rows returned.
    pub total_rows: u64,
}

/// Runs `q` as `caller`.
pub async fn run(pools: &Pools, caller: &Caller, q: &str) -> Result<QueryResult, ApiError> {
    let statements = split_statements(q).map_err(ApiError::bad_request)?;
    if statements.is_empty() {
        return Err(ApiError::bad_request("You must indicate a sql query"));
    }
    if statements.iter().any(|s| is_copy_from_stdin(s)) {
        return Err(ApiError::bad_request(
            "COPY from stdin failed: No source stream defined",
        ));
    }
    let controls_transactions = statements.iter().any(|s| is_transaction_control(s));
    let wrap = statements.len() > 1 && !controls_transactions;

    let client = pools.get(&caller.key.login).await?;
    let outcome = async {
        if wrap {
            client.batch_execute("BEGIN").await?;
        }
        let mut result = QueryResult::default();
        for statement in &statements {
            run_one(&client, statement, &mut result).await?;
        }
        if wrap {
            client.batch_execute("COMMIT").await?;
        }
        Ok::<_, tokio_postgres::Error>(result)
    }
    .await;
    match outcome {
        Ok(result) if !controls_transactions => Ok(result),
        Ok(result) => {
            // The statements may have left a transaction open: never pool that connection.
            discard(client);
            Ok(result)
        }
        Err(error) => {
            discard(client);
            Err(ApiError::from_pg(&error))
        }
    }
}

async fn run_one(
    client: &tokio_postgres::Client,
    statement: &str,
    result: &mut QueryResult,
) -> Result<(), tokio_postgres::Error> {
    let columns: Vec<(String, Type)> = client
        .prepare(statement)
        .await?
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    let mut rows_here = 0u64;
    let mut tag_count = None;
    for message in client.simple_query(statement).await? {
        match message {
            SimpleQueryMessage::Row(row) => {
                let mut object = Map::new();
                for (i, (name, ty)) in columns.iter().enumerate() {
                    object.insert(name.clone(), to_json(ty, row.get(i)));
                }
                result.rows.push(object);
                rows_here += 1;
            }
            SimpleQueryMessage::CommandComplete(n) => tag_count = Some(n),
            _ => {}
        }
    }
    result.fields = columns;
    result.total_rows = match tag_count {
        Some(n) if n > 0 || rows_here == 0 => n,
        _ => rows_here,
    };
    Ok(())
}

fn is_copy_from_stdin(statement: &str) -> bool {
    let tokens: Vec<Token> = match tokenize(statement) {
        Ok(t) => t.into_iter().map(|(_, t)| t).collect(),
        Err(_) => return false,
    };
    tokens.first().is_some_and(|t| t.is_word("copy"))
        && tokens
            .windows(2)
            .any(|w| w[0].is_word("from") && w[1].is_word("stdin"))
}

fn is_transaction_control(statement: &str) -> bool {
    let first = tokenize(statement)
        .ok()
        .and_then(|t| t.into_iter().next().map(|(_, t)| t));
    first.is_some_and(|t| {
        [
            "begin",
            "start",
            "commit",
            "end",
            "rollback",
            "abort",
            "savepoint",
            "release",
            "prepare",
        ]
        .iter()
        .any(|w| t.is_word(w))
    })
}

/// CARTO's type name for a column (spec §4.1): first matching substring rule.
pub fn carto_type(ty: &Type) -> String {
    let name = ty.name();
    let base = name.trim_start_matches('_');
    let array = matches!(ty.kind(), tokio_postgres::types::Kind::Array(_));
    let carto = if ["geometry", "geography", "raster"].contains(&base) {
        base.to_string()
    } else if base.contains("bool") {
        "boolean".into()
    } else if base.contains("int") || base.contains("float") || base.contains("numeric") {
        "number".into()
    } else if base.contains("text") || base.contains("char") || base.contains("unknown") {
        "string".into()
    } else if base.contains("date") || base.contains("time") {
        "date".into()
    } else {
        base.to_string()
    };
    if array {
        format!("{carto}[]")
    } else {
        carto
    }
}

/// The JSON value of one text-format column value.
fn to_json(ty: &Type, text: Option<&str>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    match *ty {
        Type::BOOL => Value::Bool(text == "t"),
        Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::OID
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::NUMERIC => number(text),
        Type::JSON | Type::JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()))
        }
        Type::TIMESTAMPTZ => Value::String(iso_timestamp(text)),
        _ => Value::String(text.to_string()),
    }
}

fn number(text: &str) -> Value {
    match text {
        "NaN" | "Infinity" | "-Infinity" => Value::String(text.into()),
        _ => text
            .parse::<Number>()
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(text.into())),
    }
}

/// `2000-01-01 00:00:00.5+01` → `2000-01-01T00:00:00+0100` (offset `Z` at 0), as upstream.
fn iso_timestamp(text: &str) -> String {
    let (datetime, offset) = match text.rfind(['+', '-']) {
        Some(pos) if pos > 10 => (&text[..pos], &text[pos..]),
        _ => return text.to_string(),
    };
    let datetime = datetime
        .split('.')
        .next()
        .unwrap_or(datetime)
        .replacen(' ', "T", 1);
    let sign = &offset[..1];
    let mut parts = offset[1..].split(':');
    let hours = parts.next().unwrap_or("00");
    let minutes = parts.next().unwrap_or("00");
    if hours.trim_start_matches('0').is_empty() && minutes.trim_start_matches('0').is_empty() {
        format!("{datetime}Z")
    } else {
        format!("{datetime}{sign}{hours:0>2}{minutes:0>2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_upstream() {
        assert_eq!(
            iso_timestamp("2000-01-01 00:00:00+01"),
            "2000-01-01T00:00:00+0100"
        );
        assert_eq!(
            iso_timestamp("2000-01-01 00:00:00.25+00"),
            "2000-01-01T00:00:00Z"
        );
        assert_eq!(
            iso_timestamp("2000-01-01 10:00:00-05:30"),
            "2000-01-01T10:00:00-0530"
        );
    }

    #[test]
    fn carto_type_names() {
        assert_eq!(carto_type(&Type::INT4), "number");
        assert_eq!(carto_type(&Type::TEXT), "string");
        assert_eq!(carto_type(&Type::BOOL), "boolean");
        assert_eq!(carto_type(&Type::TIMESTAMPTZ), "date");
        assert_eq!(carto_type(&Type::INT4_ARRAY), "number[]");
        assert_eq!(carto_type(&Type::UUID), "uuid");
    }

    #[test]
    fn values() {
        assert_eq!(to_json(&Type::INT8, Some("12")), serde_json::json!(12));
        assert_eq!(
            to_json(&Type::FLOAT8, Some("NaN")),
            serde_json::json!("NaN")
        );
        assert_eq!(to_json(&Type::BOOL, Some("f")), serde_json::json!(false));
        assert_eq!(to_json(&Type::TEXT, None), Value::Null);
        assert!(is_copy_from_stdin("copy t from stdin"));
        assert!(!is_copy_from_stdin("copy t to stdout"));
    }
}
