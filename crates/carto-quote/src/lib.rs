//! Quoting of SQL identifiers and string literals for PostgreSQL, the one implementation that
//! carto-rs's server, SDK and CLI share (the server does not depend on the SDK, hence a crate
//! of its own).
//!
//! Both assume `standard_conforming_strings = on` (PostgreSQL's default since 9.1), under which
//! a backslash in a quoted literal is an ordinary character.
//!
//! ```
//! assert_eq!(carto_quote::ident("My \"Table\""), r#""My ""Table""""#);
//! assert_eq!(carto_quote::literal("it's"), "'it''s'");
//! ```
#![deny(missing_docs)]

/// `name` as an SQL identifier: in double quotes, inner double quotes doubled. Case is kept,
/// as quoting does in SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal: in single quotes, inner single quotes doubled.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(ident("plain"), "\"plain\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident(""), "\"\"");
        assert_eq!(literal("a'b"), "'a''b'");
        assert_eq!(literal("back\\slash"), "'back\\slash'");
        assert_eq!(literal("é'ü"), "'é''ü'");
    }
}
