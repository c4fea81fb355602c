//! The check every COPY statement passes before it reaches the database: copyfrom takes only
//! `COPY ... FROM STDIN`, copyto only `COPY ... TO STDOUT`, one statement, no files, no programs.
//! Roles are never superusers, so the database would refuse server files anyway; this check
//! gives the client a clear 400 instead and keeps other statements off the COPY endpoints.

use crate::error::ApiError;
use crate::sql_text::{tokenize, Token};

/// Which way a COPY goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `COPY ... FROM STDIN` (the copyfrom endpoint).
    FromStdin,
    /// `COPY ... TO STDOUT` (the copyto endpoint).
    ToStdout,
}

/// Checks `q` for the endpoint going `direction`, with the spec's messages for a missing
/// statement and one that does not start with `COPY`.
pub fn check(q: Option<&str>, direction: Direction) -> Result<(), ApiError> {
    let sql = match q {
        Some(sql) if !sql.is_empty() => sql,
        _ => return Err(ApiError::bad_request("SQL is missing")),
    };
    // Bytes, not `str` slices: byte 4 may fall inside a multi-byte character.
    let starts_with_copy = sql
        .as_bytes()
        .split_first_chunk::<4>()
        .is_some_and(|(word, rest)| {
            word.eq_ignore_ascii_case(b"copy") && rest.first().is_some_and(u8::is_ascii_whitespace)
        });
    if !starts_with_copy {
        return Err(ApiError::bad_request("SQL must start with COPY"));
    }
    check_shape(sql, direction).map_err(ApiError::bad_request)
}

fn check_shape(sql: &str, direction: Direction) -> Result<(), String> {
    let (expected, keyword, stream) = match direction {
        Direction::FromStdin => ("COPY ... FROM STDIN", "from", "stdin"),
        Direction::ToStdout => ("COPY ... TO STDOUT", "to", "stdout"),
    };
    let only = || format!("This endpoint only accepts {expected}");
    let tokens: Vec<Token> = tokenize(sql)?.into_iter().map(|(_, t)| t).collect();
    let mut rest = &tokens[1..];

    // The source or target: `( query )` (COPY TO only) or a qualified name with columns.
    match rest.first() {
        Some(Token::Punct('(')) => {
            if direction == Direction::FromStdin {
                return Err(only());
            }
            rest = skip_parenthesised(rest).ok_or("Unbalanced parentheses in COPY statement")?;
        }
        Some(Token::Word(_) | Token::QuotedIdent(_)) => {
            rest = &rest[1..];
            while let [Token::Punct('.'), Token::Word(_) | Token::QuotedIdent(_), tail @ ..] = rest
            {
                rest = tail;
            }
            if let Some(Token::Punct('(')) = rest.first() {
                rest =
                    skip_parenthesised(rest).ok_or("Unbalanced parentheses in COPY statement")?;
            }
        }
        _ => return Err("COPY must name a table or a query".into()),
    }

    match rest.first() {
        Some(t) if t.is_word(keyword) => rest = &rest[1..],
        _ => return Err(only()),
    }
    match rest.first() {
        Some(t) if t.is_word(stream) => rest = &rest[1..],
        Some(Token::String(_)) => {
            return Err(format!(
                "COPY with a server-side file is not allowed: use {expected}"
            ))
        }
        Some(t) if t.is_word("program") => {
            return Err(format!("COPY with PROGRAM is not allowed: use {expected}"))
        }
        _ => return Err(only()),
    }

    // Options may follow; a second statement may not.
    if let Some(pos) = rest.iter().position(|t| *t == Token::Semicolon) {
        if rest[pos..].iter().any(|t| *t != Token::Semicolon) {
            return Err("Only one statement is allowed".into());
        }
    }
    Ok(())
}

/// Where a `COPY ... FROM STDIN` (already passed by [`check`]) names its table: the byte range
/// of the name in `sql`, so that the same statement can be pointed at a staging table. `None`
/// when the statement has something a staging table would answer differently: a `WHERE` clause
/// (it may name any column of the table) or `FREEZE` (which needs a table created in the same
/// transaction, as a staging table is and the target is not).
pub(crate) fn copy_from_target(sql: &str) -> Option<std::ops::Range<usize>> {
    let tokens = tokenize(sql).ok()?;
    if tokens
        .iter()
        .any(|(_, t)| t.is_word("where") || t.is_word("freeze"))
    {
        return None;
    }
    let end_of = |(start, token): &(usize, Token)| {
        start
            + match token {
                Token::Word(text) | Token::QuotedIdent(text) => text.len(),
                _ => 1,
            }
    };
    let mut name = tokens.get(1..)?.iter();
    let first = name.next()?;
    if !matches!(first.1, Token::Word(_) | Token::QuotedIdent(_)) {
        return None;
    }
    let mut last = first;
    let mut rest = name.as_slice();
    while let [(_, Token::Punct('.')), part @ (_, Token::Word(_) | Token::QuotedIdent(_)), tail @ ..] =
        rest
    {
        last = part;
        rest = tail;
    }
    Some(first.0..end_of(last))
}

/// Skips a balanced `( ... )` group at the start of `tokens`.
fn skip_parenthesised<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<&'t [Token<'a>]> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(&tokens[i + 1..]);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(sql: &str) -> Result<(), String> {
        check(Some(sql), Direction::FromStdin).map_err(|e| e.message())
    }

    fn to(sql: &str) -> Result<(), String> {
        check(Some(sql), Direction::ToStdout).map_err(|e| e.message())
    }

    #[test]
    fn accepts_the_statements_clients_send() {
        from("COPY t (the_geom,name,age) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap();
        from("copy \"My Table\" from stdin").unwrap();
        from("COPY public.t FROM STDIN WITH CSV HEADER DELIMITER ','").unwrap();
        from("COPY t FROM STDIN (FORMAT binary);").unwrap();
        from("COPY t FROM STDIN WITH (FORMAT csv) WHERE id > 1").unwrap();
        to("COPY t TO STDOUT").unwrap();
        to("COPY (SELECT ';' AS x, (1+2) FROM t) TO STDOUT WITH (FORMAT csv, HEADER)").unwrap();
        to("COPY s.t (a, b) TO stdout (FORMAT binary)").unwrap();
    }

    #[test]
    fn missing_or_not_copy() {
        assert_eq!(
            check(None, Direction::FromStdin).unwrap_err().message(),
            "SQL is missing"
        );
        assert_eq!(from("").unwrap_err(), "SQL is missing");
        assert_eq!(from("SELECT 1").unwrap_err(), "SQL must start with COPY");
        assert_eq!(
            from(" COPY t FROM STDIN").unwrap_err(),
            "SQL must start with COPY"
        );
        assert_eq!(
            from("COPYt FROM STDIN").unwrap_err(),
            "SQL must start with COPY"
        );
        // Byte 4 inside `é`: this used to panic.
        assert_eq!(
            from("abcé COPY t FROM STDIN").unwrap_err(),
            "SQL must start with COPY"
        );
        assert_eq!(to("copé").unwrap_err(), "SQL must start with COPY");
    }

    #[test]
    fn refuses_the_wrong_direction() {
        assert!(from("COPY t TO STDOUT").is_err());
        assert!(to("COPY t FROM STDIN").is_err());
        assert!(from("COPY (SELECT 1) FROM STDIN").is_err());
        assert!(to("COPY t TO STDIN").is_err());
    }

    #[test]
    fn refuses_files_programs_and_extra_statements() {
        assert!(from("COPY t FROM '/etc/passwd'")
            .unwrap_err()
            .contains("server-side file"));
        assert!(from("COPY t FROM PROGRAM 'id'")
            .unwrap_err()
            .contains("PROGRAM"));
        assert!(to("COPY t TO '/tmp/x'")
            .unwrap_err()
            .contains("server-side file"));
        assert!(to("COPY t TO PROGRAM 'id'")
            .unwrap_err()
            .contains("PROGRAM"));
        assert_eq!(
            from("COPY t FROM STDIN; DROP TABLE t").unwrap_err(),
            "Only one statement is allowed"
        );
        assert!(to("COPY (SELECT 1) TO STDOUT; SELECT pg_sleep(1)").is_err());
        assert!(to("COPY (SELECT 1 TO STDOUT").is_err());
        assert!(from("COPY t FROM STDIN WITH (FORMAT csv, DELIMITER ';')").is_ok());
    }

    #[test]
    fn finds_the_table_a_copy_from_names() {
        let target = |sql: &str| copy_from_target(sql).map(|range| sql[range].to_string());
        assert_eq!(target("COPY t FROM STDIN").as_deref(), Some("t"));
        assert_eq!(
            target("copy public.\"My \"\"T\"\"\" (a, b) from stdin with csv").as_deref(),
            Some("public.\"My \"\"T\"\"\"")
        );
        assert_eq!(
            target("COPY  s . t(a) FROM STDIN (FORMAT binary)").as_deref(),
            Some("s . t")
        );
        assert_eq!(
            target("COPY t FROM STDIN WITH (FORMAT csv) WHERE a > 1"),
            None
        );
        assert_eq!(target("COPY t FROM STDIN (FREEZE true)"), None);
        assert_eq!(
            target("COPY t (\"where\") FROM STDIN").as_deref(),
            Some("t")
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A table name as clients write it: plain, quoted (with doubled quotes), qualified.
        fn table() -> impl Strategy<Value = String> {
            let part = prop_oneof![
                "[a-zA-Z_][a-zA-Z0-9_$]{0,8}",
                "[^\"\\x00]{1,8}".prop_map(|s| format!("\"{}\"", s.replace('"', "\"\""))),
            ];
            proptest::collection::vec(part, 1..3).prop_map(|parts| parts.join("."))
        }

        /// A well-formed `COPY ... FROM STDIN` or `COPY ... TO STDOUT` with random case,
        /// blanks, columns and options.
        fn well_formed(direction: Direction) -> impl Strategy<Value = String> {
            let (keyword, stream) = match direction {
                Direction::FromStdin => ("from", "stdin"),
                Direction::ToStdout => ("to", "stdout"),
            };
            (
                table(),
                proptest::option::of(proptest::collection::vec("[a-z_][a-z0-9_]{0,6}", 1..4)),
                prop_oneof![
                    Just(""),
                    Just(" WITH (FORMAT csv, HEADER true)"),
                    Just(" (FORMAT binary)"),
                    Just(" WITH CSV HEADER DELIMITER ';'"),
                    Just(" WITH (FORMAT csv, NULL '', QUOTE '\"')"),
                ],
                "[ \t\n]{1,3}",
                any::<bool>(),
                any::<[bool; 3]>(),
            )
                .prop_map(move |(table, columns, options, blank, semicolon, upper)| {
                    let case = |word: &str, up: bool| {
                        if up {
                            word.to_uppercase()
                        } else {
                            word.to_string()
                        }
                    };
                    let columns = columns
                        .map(|c| format!(" ({})", c.join(", ")))
                        .unwrap_or_default();
                    format!(
                        "{}{blank}{table}{columns}{blank}{}{blank}{}{options}{}",
                        case("copy", upper[0]),
                        case(keyword, upper[1]),
                        case(stream, upper[2]),
                        if semicolon { ";" } else { "" },
                    )
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn never_panics(sql in any::<String>(), to in any::<bool>()) {
                let direction = if to { Direction::ToStdout } else { Direction::FromStdin };
                let _ = check(Some(&sql), direction);
                let copy = format!("COPY {sql}");
                let _ = check(Some(&copy), direction);
            }

            #[test]
            fn accepts_every_well_formed_copy_from(sql in well_formed(Direction::FromStdin)) {
                prop_assert!(check(Some(&sql), Direction::FromStdin).is_ok(), "{}", sql);
                prop_assert!(check(Some(&sql), Direction::ToStdout).is_err(), "{}", sql);
            }

            #[test]
            fn accepts_every_well_formed_copy_to(sql in well_formed(Direction::ToStdout)) {
                prop_assert!(check(Some(&sql), Direction::ToStdout).is_ok(), "{}", sql);
                prop_assert!(check(Some(&sql), Direction::FromStdin).is_err(), "{}", sql);
            }

            #[test]
            fn refuses_a_second_statement(
                sql in well_formed(Direction::FromStdin),
                second in "[a-zA-Z]{1,8}( [a-z0-9_]{1,6}){0,3}",
                blank in "[ \n]{0,2}",
            ) {
                let sql = format!("{}{blank};{blank}{second}", sql.trim_end_matches(';'));
                prop_assert!(check(Some(&sql), Direction::FromStdin).is_err(), "{}", sql);
            }
        }
    }
}
