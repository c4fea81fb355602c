//! The system-table guard (spec §2): statements of non-master keys may not read tables named
//! like `\bpg_`. The tables a statement reads are the relations of its plan, as
//! `EXPLAIN (FORMAT JSON)` lists them, so views (`information_schema.tables`) are seen through
//! and string constants (`SELECT 'pg_'`) or aliases never count.

use serde_json::Value;

use crate::error::ApiError;

/// The error of a statement that reads a system table.
pub fn forbidden() -> ApiError {
    ApiError::forbidden("system tables are forbidden")
}

/// The `EXPLAIN` that lists what `statement` reads.
pub fn explain_sql(statement: &str) -> String {
    format!("EXPLAIN (FORMAT JSON) {statement}")
}

/// True when the EXPLAIN output `plan` reads a table named like `\bpg_`.
pub fn reads_system_table(plan: &str) -> bool {
    let Ok(plan) = serde_json::from_str::<Value>(plan) else {
        // EXPLAIN always answers JSON; something else is not a plan we can vouch for.
        return true;
    };
    let mut names = Vec::new();
    relation_names(&plan, &mut names);
    names.iter().any(|name| is_system_name(name))
}

fn relation_names<'a>(value: &'a Value, names: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("Relation Name", Value::String(name)) => names.push(name),
                    _ => relation_names(value, names),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| relation_names(v, names)),
        _ => {}
    }
}

/// `\bpg_`: `pg_` at the start or after a character that is not a word character.
fn is_system_name(name: &str) -> bool {
    name.match_indices("pg_").any(|(i, _)| {
        // `i` is where the ASCII `pg_` starts, so a boundary; `get` rather than a panic.
        name.get(..i).map_or(true, |before| {
            before
                .chars()
                .next_back()
                .map_or(true, |c| !(c.is_alphanumeric() || c == '_'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_names() {
        assert!(is_system_name("pg_class"));
        assert!(is_system_name("x.pg_class"));
        assert!(is_system_name("my-pg_x"));
        assert!(!is_system_name("mypg_x"));
        assert!(!is_system_name("my_pg_x"));
        assert!(!is_system_name("untitle_table_4"));
    }

    #[test]
    fn plans() {
        let plan = r#"[{"Plan": {"Node Type": "Hash Join", "Plans": [
            {"Node Type": "Seq Scan", "Relation Name": "pg_class", "Alias": "c"},
            {"Node Type": "Seq Scan", "Relation Name": "t", "Alias": "pg_x"}]}}]"#;
        assert!(reads_system_table(plan));
        let plan =
            r#"[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", "Alias": "pg_x"}}]"#;
        assert!(!reads_system_table(plan));
        assert!(!reads_system_table(
            r#"[{"Plan": {"Node Type": "Result"}}]"#
        ));
    }
}
