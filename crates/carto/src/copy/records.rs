//! Where a COPY file can be cut: record ends in CSV (a newline outside double quotes) and in
//! PostgreSQL's text format (a newline not escaped by a backslash), found by scanning the
//! bytes once. No CSV crate reports byte offsets of record ends for both formats while
//! streaming, so this small scanner is written here.

use std::io::BufRead;
use std::ops::Range;
use std::path::Path;

use super::parts::PartsFormat;
use crate::error::{Error, Result};

/// One part of the file: its bytes, and the records before it (the header counts as one,
/// as PostgreSQL counts lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) bytes: Range<u64>,
    pub(super) records_before: u64,
}

/// Finds where records end in the bytes of a file, one buffer at a time.
struct RecordEnds {
    format: PartsFormat,
    /// Inside a quoted CSV field, or after a backslash in text.
    pending: bool,
}

impl RecordEnds {
    /// Calls `end` with the offset just past each record's newline in `buffer`.
    fn scan(&mut self, buffer: &[u8], mut end: impl FnMut(usize) -> Result<()>) -> Result<()> {
        for (i, byte) in buffer.iter().enumerate() {
            match self.format {
                PartsFormat::Csv => match byte {
                    // A doubled quote inside a field toggles twice: still inside.
                    b'"' => self.pending = !self.pending,
                    b'\n' if !self.pending => end(i + 1)?,
                    _ => {}
                },
                PartsFormat::Text => {
                    if self.pending {
                        self.pending = false;
                    } else if *byte == b'\\' {
                        self.pending = true;
                    } else if *byte == b'\n' {
                        end(i + 1)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Cuts a file into parts of at most `part_size` bytes at the record ends it is told.
struct Splitter<'a> {
    path: &'a Path,
    format: PartsFormat,
    part_size: u64,
    parts: Vec<Part>,
    part_start: u64,
    records_at_part_start: u64,
    last_end: u64,
    records: u64,
}

impl Splitter<'_> {
    fn record_end(&mut self, end: u64) -> Result<()> {
        if end - self.part_start > self.part_size {
            if self.last_end == self.part_start || end - self.last_end > self.part_size {
                return Err(Error::config(format!(
                    "record {} of {} is longer than the part size ({} bytes): give a bigger \
                     part size{}",
                    self.records + 1,
                    self.path.display(),
                    self.part_size,
                    if self.format == PartsFormat::Csv {
                        ", or look for an unclosed quote"
                    } else {
                        ""
                    }
                )));
            }
            self.parts.push(Part {
                bytes: self.part_start..self.last_end,
                records_before: self.records_at_part_start,
            });
            self.part_start = self.last_end;
            self.records_at_part_start = self.records;
        }
        self.last_end = end;
        self.records += 1;
        Ok(())
    }

    /// The parts, once the file's `size` bytes were scanned.
    fn finish(mut self, size: u64) -> Result<Vec<Part>> {
        // A last record without a newline.
        if size > self.last_end {
            self.record_end(size)?;
        }
        if self.last_end > self.part_start {
            self.parts.push(Part {
                bytes: self.part_start..self.last_end,
                records_before: self.records_at_part_start,
            });
        }
        Ok(self.parts)
    }
}

/// Cuts the file into parts of at most `part_size` bytes at record boundaries.
pub(super) fn split(path: &Path, format: PartsFormat, part_size: u64) -> Result<Vec<Part>> {
    let file = std::fs::File::open(path)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut scanner = RecordEnds {
        format,
        pending: false,
    };
    let mut splitter = Splitter {
        path,
        format,
        part_size,
        parts: Vec::new(),
        part_start: 0,
        records_at_part_start: 0,
        last_end: 0,
        records: 0,
    };
    let mut offset = 0u64;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        let length = buffer.len();
        scanner.scan(buffer, |end| splitter.record_end(offset + end as u64))?;
        offset += length as u64;
        reader.consume(length);
    }
    splitter.finish(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(text: &str, format: PartsFormat, size: u64) -> Result<Vec<(String, u64)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, text).unwrap();
        Ok(split(&path, format, size)?
            .into_iter()
            .map(|p| {
                (
                    text[p.bytes.start as usize..p.bytes.end as usize].to_string(),
                    p.records_before,
                )
            })
            .collect())
    }

    #[test]
    fn csv_parts_end_at_records_outside_quotes() {
        let csv = "h1,h2\n1,\"a\nb\"\n2,\"x\"\"\ny\"\n3,z";
        let parts = parts_of(csv, PartsFormat::Csv, 12).unwrap();
        assert_eq!(
            parts,
            [
                ("h1,h2\n".to_string(), 0),
                ("1,\"a\nb\"\n".to_string(), 1),
                ("2,\"x\"\"\ny\"\n".to_string(), 2),
                ("3,z".to_string(), 3)
            ]
        );
        let whole = parts_of(csv, PartsFormat::Csv, 1 << 20).unwrap();
        assert_eq!(whole, [(csv.to_string(), 0)]);
        let refused = parts_of("1,\"unclosed\n2\n3\n", PartsFormat::Csv, 5).unwrap_err();
        assert!(refused.to_string().contains("record 1 of"), "{refused}");
        assert!(parts_of("", PartsFormat::Csv, 5).unwrap().is_empty());
    }

    #[test]
    fn text_parts_end_at_unescaped_newlines() {
        let text = "1\ta\\\nb\n2\tc\\\\\n3\td\n";
        let parts = parts_of(text, PartsFormat::Text, 8).unwrap();
        assert_eq!(
            parts,
            [
                ("1\ta\\\nb\n".to_string(), 0),
                ("2\tc\\\\\n".to_string(), 1),
                ("3\td\n".to_string(), 2)
            ]
        );
    }
}
