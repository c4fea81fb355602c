//! A small SQL tokenizer: just enough of PostgreSQL's lexical rules (quoted identifiers, string
//! constants in all their forms, dollar quoting, nested comments) to recognize statement
//! boundaries and the shape of a COPY statement without being fooled by quoted text.
//!
//! Written by hand because general SQL parsers reject valid PostgreSQL COPY options (old-style
//! `WITH CSV HEADER`, `FORCE_NOT_NULL`, ...) and the server only needs tokens, not a grammar.
//!
//! Every question the server asks of a statement's text is answered here, from its tokens
//! (`/sql`'s paging and transactions, the system-table guard, batch commit markers); the COPY
//! endpoints' shape check is `copy::statement`, over the same tokens.

/// One lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted word: keyword or identifier, as written.
    Word(&'a str),
    /// A double-quoted identifier (quotes included).
    QuotedIdent(&'a str),
    /// A string constant in any form (`'..'`, `E'..'`, `$tag$..$tag$`), quotes included.
    String(&'a str),
    /// A number.
    Number(&'a str),
    /// `;`
    Semicolon,
    /// Any other punctuation character.
    Punct(char),
}

impl Token<'_> {
    /// True when the token is the unquoted word `word` (case-insensitive).
    pub fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word))
    }
}

/// A token and the byte offset where it starts.
pub type Located<'a> = (usize, Token<'a>);

/// Splits `sql` into tokens, skipping white space and comments. An unterminated quote or
/// comment is an error, since the database would read the rest of the text differently.
pub fn tokenize(sql: &str) -> Result<Vec<Located<'_>>, String> {
    let bytes = sql.as_bytes();
    // Every token starts and ends at an ASCII byte (or the end), so on a character boundary;
    // `get` turns a mistake in that reasoning into an error instead of a panic.
    let text = |from: usize, to: usize| {
        sql.get(from..to)
            .ok_or_else(|| format!("cannot read the statement at byte {from}"))
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                loop {
                    if i + 1 >= bytes.len() {
                        return Err("unterminated /* comment".into());
                    }
                    if bytes[i] == b'/' && bytes[i + 1] == b'*' {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = end_of_string(bytes, i + 1, false)?;
                tokens.push((start, Token::String(text(start, i)?)));
            }
            b'e' | b'E' if bytes.get(i + 1) == Some(&b'\'') => {
                i = end_of_string(bytes, i + 2, true)?;
                tokens.push((start, Token::String(text(start, i)?)));
            }
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err("unterminated quoted identifier".into()),
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                tokens.push((start, Token::QuotedIdent(text(start, i)?)));
            }
            b'$' if dollar_tag_len(&bytes[i..]).is_some() => {
                let tag_len = dollar_tag_len(&bytes[i..]).unwrap_or(0);
                let tag = text(i, i + tag_len)?;
                let body_start = i + tag_len;
                let end = text(body_start, sql.len())?
                    .find(tag)
                    .ok_or_else(|| "unterminated dollar-quoted string".to_string())?;
                i = body_start + end + tag_len;
                tokens.push((start, Token::String(text(start, i)?)));
            }
            b'0'..=b'9' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                tokens.push((start, Token::Number(text(start, i)?)));
            }
            b';' => {
                i += 1;
                tokens.push((start, Token::Semicolon));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || bytes[i] == b'_'
                        || bytes[i] == b'$'
                        || bytes[i] >= 0x80)
                {
                    i += 1;
                }
                tokens.push((start, Token::Word(text(start, i)?)));
            }
            _ => {
                let ch = text(i, sql.len())?.chars().next().unwrap_or('?');
                i += ch.len_utf8();
                tokens.push((start, Token::Punct(ch)));
            }
        }
    }
    Ok(tokens)
}

/// Splits `sql` into its statements (text between top-level semicolons), dropping empty ones.
pub fn split_statements(sql: &str) -> Result<Vec<&str>, String> {
    let tokens = tokenize(sql)?;
    let mut statements = Vec::new();
    let mut start = 0;
    // Semicolons are ASCII, so the cuts fall on character boundaries.
    let cut = |from: usize, to: usize| {
        sql.get(from..to)
            .map(str::trim)
            .ok_or_else(|| format!("cannot split the statements at byte {to}"))
    };
    for (offset, token) in &tokens {
        if *token == Token::Semicolon {
            statements.push(cut(start, *offset)?);
            start = offset + 1;
        }
    }
    statements.push(cut(start, sql.len())?);
    statements.retain(|s| !s.is_empty() && tokenize(s).map(|t| !t.is_empty()).unwrap_or(true));
    Ok(statements)
}

/// Index just past the closing quote of a string constant whose body starts at `i`.
fn end_of_string(bytes: &[u8], mut i: usize, backslash_escapes: bool) -> Result<usize, String> {
    loop {
        match bytes.get(i) {
            None => return Err("unterminated quoted string".into()),
            Some(b'\\') if backslash_escapes => i += 2,
            Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => return Ok(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// Length of a dollar-quote tag (`$$` or `$name$`) at the start of `bytes`.
fn dollar_tag_len(bytes: &[u8]) -> Option<usize> {
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'$' => return Some(i + 1),
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80.. => i += 1,
            b'0'..=b'9' if i > 1 => i += 1,
            _ => return None,
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// What the server needs to know of a statement, each answered from its tokens.
// ---------------------------------------------------------------------------------------------

/// A statement the paging wrapper applies to: it starts with `SELECT` and does not end with
/// `INTO name` (which would make it a `SELECT INTO` creating a table).
pub(crate) fn is_plain_select(statement: &str) -> bool {
    let Ok(tokens) = tokenize(statement) else {
        return false;
    };
    let tokens: Vec<&Token> = tokens.iter().map(|(_, t)| t).collect();
    let starts = tokens.first().is_some_and(|t| t.is_word("select"));
    let into = tokens.len() >= 2
        && tokens[tokens.len() - 2].is_word("into")
        && matches!(
            tokens[tokens.len() - 1],
            Token::Word(_) | Token::QuotedIdent(_)
        );
    starts && !into
}

pub(crate) fn is_copy_from_stdin(statement: &str) -> bool {
    let tokens: Vec<Token> = match tokenize(statement) {
        Ok(t) => t.into_iter().map(|(_, t)| t).collect(),
        Err(_) => return false,
    };
    tokens.first().is_some_and(|t| t.is_word("copy"))
        && tokens
            .windows(2)
            .any(|w| w[0].is_word("from") && w[1].is_word("stdin"))
}

pub(crate) fn is_transaction_control(statement: &str) -> bool {
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

/// True when PostgreSQL can EXPLAIN `statement` (queries and DML, `CREATE TABLE ... AS`);
/// other statements read no table through a plan.
pub(crate) fn explainable(statement: &str) -> bool {
    let Ok(tokens) = tokenize(statement) else {
        return false;
    };
    let mut words = tokens.iter().map(|(_, t)| t);
    let Some(first) = words.next() else {
        return false;
    };
    if [
        "select", "with", "values", "table", "insert", "update", "delete", "merge", "execute",
        "declare",
    ]
    .iter()
    .any(|w| first.is_word(w))
    {
        return true;
    }
    // CREATE [TEMP|UNLOGGED...] TABLE|MATERIALIZED VIEW ... AS query
    first.is_word("create")
        && tokens
            .iter()
            .take(4)
            .any(|(_, t)| t.is_word("table") || t.is_word("materialized"))
        && tokens.iter().any(|(_, t)| t.is_word("as"))
}

/// Whether PostgreSQL refuses `sql` inside a transaction block or a multi-statement string, so
/// that it cannot carry a commit marker.
pub(crate) fn refuses_transactions(sql: &str) -> bool {
    let Ok(tokens) = crate::sql_text::tokenize(sql) else {
        return true;
    };
    let words: Vec<_> = tokens.iter().map(|(_, t)| t).collect();
    let first = |w: &str| words.first().is_some_and(|t| t.is_word(w));
    let second = |w: &str| words.get(1).is_some_and(|t| t.is_word(w));
    first("vacuum")
        || first("cluster")
        || first("reindex")
        || (first("alter") && second("system"))
        || ((first("create") || first("drop")) && (second("database") || second("tablespace")))
        || words.iter().any(|t| t.is_word("concurrently"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_comments_hide_semicolons() {
        let sql = "SELECT 'a;b', \"x;y\", $$c;d$$, $t$e;$t$ -- f;\n /* g; /* h; */ */ FROM t";
        assert_eq!(split_statements(sql).unwrap(), vec![sql]);
    }

    #[test]
    fn splits_top_level_statements() {
        assert_eq!(
            split_statements("SELECT 1; SELECT E'\\';'; ;").unwrap(),
            vec!["SELECT 1", "SELECT E'\\';'"]
        );
    }

    #[test]
    fn unterminated_text_is_an_error() {
        assert!(tokenize("SELECT 'abc").is_err());
        assert!(tokenize("SELECT \"abc").is_err());
        assert!(tokenize("SELECT $$abc").is_err());
        assert!(tokenize("SELECT /* abc").is_err());
    }

    #[test]
    fn words_and_punctuation() {
        let tokens: Vec<Token> = tokenize("COPY s.\"T\"(a) FROM stdin")
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            tokens,
            vec![
                Token::Word("COPY"),
                Token::Word("s"),
                Token::Punct('.'),
                Token::QuotedIdent("\"T\""),
                Token::Punct('('),
                Token::Word("a"),
                Token::Punct(')'),
                Token::Word("FROM"),
                Token::Word("stdin"),
            ]
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// What opens, closes or separates something for the tokenizer.
        const MARKS: &[&str] = &[
            "'", "\"", "$", "$t$", ";", "--", "/*", "*/", "\\", "E'", "\n", " ",
        ];

        /// Text made mostly of the characters the tokenizer cares about, plus any character.
        fn sqlish() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(MARKS).prop_map(String::from),
                    "[a-z0-9_]{1,4}",
                    any::<char>().prop_map(String::from),
                ],
                0..24,
            )
            .prop_map(|parts| parts.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn tokens_are_pieces_of_the_text(sql in prop_oneof![sqlish(), any::<String>()]) {
                if let Ok(tokens) = tokenize(&sql) {
                    for (offset, token) in tokens {
                        prop_assert!(sql.is_char_boundary(offset));
                        let rest = sql.get(offset..).unwrap_or_default();
                        match token {
                            Token::Word(t) | Token::QuotedIdent(t) | Token::String(t)
                            | Token::Number(t) => prop_assert!(rest.starts_with(t)),
                            Token::Semicolon => prop_assert!(rest.starts_with(';')),
                            Token::Punct(c) => prop_assert!(rest.starts_with(c)),
                        }
                    }
                }
            }

            #[test]
            fn statements_are_pieces_of_the_text(sql in prop_oneof![sqlish(), any::<String>()]) {
                if let Ok(statements) = split_statements(&sql) {
                    for statement in statements {
                        prop_assert!(!statement.is_empty());
                        prop_assert!(sql.contains(statement));
                    }
                }
            }
        }
    }

    #[test]
    fn statement_shapes() {
        assert!(is_copy_from_stdin("copy t from stdin"));
        assert!(!is_copy_from_stdin("copy t to stdout"));
        assert!(is_plain_select("SELECT * FROM t"));
        assert!(!is_plain_select("select * from t into x"));
        assert!(!is_plain_select("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(is_transaction_control("begin"));
    }

    #[test]
    fn what_can_be_explained() {
        assert!(explainable("SELECT 1"));
        assert!(explainable("with x as (select 1) select * from x"));
        assert!(explainable("INSERT INTO t VALUES (1)"));
        assert!(explainable("create temp table x as select 1"));
        assert!(!explainable("CREATE TABLE t (id int)"));
        assert!(!explainable("DROP TABLE t"));
        assert!(!explainable("SET statement_timeout = 0"));
    }

    #[test]
    fn statements_that_refuse_a_transaction() {
        for sql in [
            "VACUUM t",
            "vacuum (analyze) t",
            "CREATE INDEX CONCURRENTLY i ON t (x)",
            "reindex table t",
            "DROP DATABASE x",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "SELECT 'unterminated",
        ] {
            assert!(refuses_transactions(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES ('vacuum concurrently')",
            "CREATE TABLE concurrently_t (x int)",
            "UPDATE t SET x = 1; DELETE FROM t",
        ] {
            assert!(!refuses_transactions(sql), "{sql}");
        }
    }
}
