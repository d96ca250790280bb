//! Quoting of identifiers and literals in replication commands.
//!
//! The replication grammar (`src/backend/replication/repl_gram.y`, `repl_scanner.l`) takes
//! double-quoted identifiers and single-quoted string literals with doubled quotes inside, like SQL
//! with standard_conforming_strings. A NUL cannot be sent at all, so it is rejected by callers.

/// `'value'`, with `'` doubled.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `"name"`, with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
