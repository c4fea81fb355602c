//! Rows of COPY TO output, counted as it streams by, for the summary of `carto copy to` (the
//! server sends no count). PostgreSQL ends every row with a newline, and in text format a
//! newline inside a value is escaped, so text rows are newlines; in CSV a newline inside
//! quotes belongs to the value, so quotes are tracked too. Binary output is not counted.

/// The COPY output formats, as far as counting rows goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Text format.
    Text,
    /// CSV format.
    Csv,
    /// Binary, or not known: not counted.
    Uncounted,
}

/// The layout and header of a `COPY ... TO STDOUT` statement, from its options.
pub fn layout_of(sql: &str) -> (Layout, bool) {
    let upper = sql.to_ascii_uppercase();
    // The options follow the last STDOUT (the query before it may say anything).
    let options = upper.rsplit("STDOUT").next().unwrap_or("");
    let words: Vec<&str> = options
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    let layout = if words.contains(&"BINARY") {
        Layout::Uncounted
    } else if words.contains(&"CSV") {
        Layout::Csv
    } else {
        Layout::Text
    };
    let header = words
        .iter()
        .position(|w| *w == "HEADER")
        .is_some_and(|i| !matches!(words.get(i + 1), Some(&("FALSE" | "OFF" | "0"))));
    (layout, header && layout == Layout::Csv)
}

/// A running count of rows.
#[derive(Debug)]
pub struct RowCounter {
    layout: Layout,
    header: bool,
    newlines: u64,
    in_quotes: bool,
}

impl RowCounter {
    /// A counter for output of `layout`, whose first line is a header when `header`.
    pub fn new(layout: Layout, header: bool) -> Self {
        RowCounter {
            layout,
            header,
            newlines: 0,
            in_quotes: false,
        }
    }

    /// Counts the rows ending in `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self.layout {
            Layout::Text => self.newlines += memchr::memchr_iter(b'\n', chunk).count() as u64,
            Layout::Csv => {
                // A doubled quote inside a value toggles twice: no change, as it should be.
                for at in memchr::memchr2_iter(b'"', b'\n', chunk) {
                    if chunk[at] == b'"' {
                        self.in_quotes = !self.in_quotes;
                    } else if !self.in_quotes {
                        self.newlines += 1;
                    }
                }
            }
            Layout::Uncounted => {}
        }
    }

    /// The rows so far, when counted.
    pub fn rows(&self) -> Option<u64> {
        (self.layout != Layout::Uncounted)
            .then(|| self.newlines.saturating_sub(u64::from(self.header)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(layout: Layout, header: bool, chunks: &[&str]) -> Option<u64> {
        let mut counter = RowCounter::new(layout, header);
        for chunk in chunks {
            counter.feed(chunk.as_bytes());
        }
        counter.rows()
    }

    #[test]
    fn rows_across_chunks() {
        assert_eq!(
            count(Layout::Text, false, &["1\ta\\nb\n2\t", "c\n"]),
            Some(2)
        );
        assert_eq!(
            count(
                Layout::Csv,
                true,
                &["id,name\n1,\"a\nb\"\n2,\"x", "\"\"y\n\"\n3,z\n"]
            ),
            Some(3)
        );
        assert_eq!(count(Layout::Uncounted, false, &["\n\n"]), None);
    }

    #[test]
    fn layouts_from_statements() {
        assert_eq!(
            layout_of("COPY t TO STDOUT WITH (FORMAT csv, HEADER true)"),
            (Layout::Csv, true)
        );
        assert_eq!(
            layout_of("copy t to stdout with csv header"),
            (Layout::Csv, true)
        );
        assert_eq!(
            layout_of("COPY (SELECT 'CSV, HEADER' AS x) TO STDOUT"),
            (Layout::Text, false)
        );
        assert_eq!(
            layout_of("COPY t TO STDOUT (FORMAT csv, HEADER false)"),
            (Layout::Csv, false)
        );
        assert_eq!(
            layout_of("COPY t TO STDOUT (FORMAT binary)"),
            (Layout::Uncounted, false)
        );
    }
}
