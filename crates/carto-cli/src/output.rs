//! What the commands print: human summaries on stderr, `--json` results on stdout (or on
//! stderr when stdout carries the data), nothing but errors with `--quiet`.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// How results are reported.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--quiet`
    pub quiet: bool,
    /// `--json`
    pub json: bool,
}

impl Output {
    /// Reports a result: `text` for people, `value` for `--json`. `stdout_is_data` when the
    /// command writes its data to stdout, so the report must not mix with it.
    ///
    /// Reports are written as `error` writes: a closed stdout or stderr loses the report,
    /// not the work already done.
    pub fn result(&self, text: &str, value: Value, stdout_is_data: bool) {
        if self.json {
            let line = value.to_string();
            if stdout_is_data {
                error(&line);
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        } else if !self.quiet {
            error(text);
        }
    }

    /// A progress note for people (never in `--json` or `--quiet` mode).
    pub fn note(&self, text: &str) {
        if !self.quiet && !self.json {
            error(text);
        }
    }

    /// True when progress bars may be drawn: a terminal on stderr, and no `--quiet`/`--json`.
    pub fn bars(&self) -> bool {
        !self.quiet && !self.json && std::io::stderr().is_terminal()
    }

    /// Writes raw bytes to stdout (answers of `carto sql`).
    pub fn data(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        stdout.flush()
    }
}

/// Writes a line on stderr. Never panics (as `eprintln!` does when stderr is gone, e.g. a
/// closed pipe, which made carto exit 101): there is nowhere left to report that.
pub fn error(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Human-readable bytes, in the decimal units the progress bars use (`1.50 MB`).
pub fn bytes(n: u64) -> String {
    indicatif::DecimalBytes(n).to_string()
}
