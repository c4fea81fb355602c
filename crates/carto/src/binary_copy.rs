//! PostgreSQL's binary COPY format, written from columns of values (e.g. the arrays of a
//! DataFrame): no text round trip for numbers, and geometries go in as EWKB.
//!
//! Send the bytes with `COPY table (columns) FROM STDIN WITH (FORMAT binary)`. Each column's
//! encoding must match the table column's type exactly (binary COPY does not convert): an
//! 8-byte [`Column::Fixed`] goes into `bigint`, `double precision` or `timestamp`, a 4-byte
//! one into `integer`, `real` or `date`, and so on.
//!
//! ```
//! use carto::binary_copy::{self, Column};
//!
//! let ids: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_ne_bytes()).collect();
//! let names = [Some("a".as_bytes()), None];
//! let columns = [
//!     Column::Fixed { width: 8, values: &ids, nulls: None },
//!     Column::Variable { values: &names },
//! ];
//! let mut out = Vec::new();
//! binary_copy::write_header(&mut out);
//! binary_copy::write_rows(&columns, &mut out).unwrap();
//! binary_copy::write_trailer(&mut out);
//! assert!(out.starts_with(b"PGCOPY\n\xff\r\n\0"));
//! ```

use crate::{Error, Result};

/// The signature, flags and header extension length that open every binary COPY stream.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// `type | SRID flag` of an EWKB point.
const EWKB_POINT_WITH_SRID: u32 = 0x2000_0001;

/// One column of values, all columns the same length.
#[derive(Debug, Clone, Copy)]
pub enum Column<'a> {
    /// Fixed-width numbers in this machine's byte order, `width` bytes each (2, 4 or 8 for
    /// integers, 4 or 8 for floats, 1 for booleans): written in network byte order.
    Fixed {
        /// Bytes per value.
        width: usize,
        /// The values, back to back.
        values: &'a [u8],
        /// `true` where the row's value is NULL (same length as the column), if any.
        nulls: Option<&'a [bool]>,
    },
    /// Values of any length (UTF-8 text, `bytea`, EWKB geometries); `None` is NULL.
    Variable {
        /// One value per row.
        values: &'a [Option<&'a [u8]>],
    },
    /// Points built from two float columns, as EWKB with `srid`; a NaN coordinate is NULL.
    Point {
        /// Longitudes (or x), one per row.
        x: &'a [f64],
        /// Latitudes (or y), one per row.
        y: &'a [f64],
        /// The points' spatial reference system, e.g. 4326.
        srid: i32,
    },
}

impl Column<'_> {
    fn rows(&self) -> Result<usize> {
        Ok(match self {
            Column::Fixed { width, values, .. } => {
                if *width == 0 || values.len() % width != 0 {
                    return Err(Error::encode(format!(
                        "a fixed column of {width}-byte values has {} bytes",
                        values.len()
                    )));
                }
                values.len() / width
            }
            Column::Variable { values } => values.len(),
            Column::Point { x, y, .. } => {
                if x.len() != y.len() {
                    return Err(Error::encode(format!(
                        "a point column has {} x values and {} y values",
                        x.len(),
                        y.len()
                    )));
                }
                x.len()
            }
        })
    }
}

/// Appends the stream's header (once, before the first row).
pub fn write_header(out: &mut Vec<u8>) {
    out.extend_from_slice(HEADER);
}

/// Appends the end-of-data marker (once, after the last row).
pub fn write_trailer(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// Appends every row of `columns`, which must all have the same number of rows.
pub fn write_rows(columns: &[Column<'_>], out: &mut Vec<u8>) -> Result<()> {
    let field_count = i16::try_from(columns.len())
        .map_err(|_| Error::encode(format!("{} columns is too many", columns.len())))?;
    let mut rows = None;
    for column in columns {
        let n = column.rows()?;
        match rows {
            Some(m) if m != n => {
                return Err(Error::encode(format!(
                    "columns of different lengths ({m} and {n} rows)"
                )))
            }
            _ => rows = Some(n),
        }
    }
    for row in 0..rows.unwrap_or(0) {
        out.extend_from_slice(&field_count.to_be_bytes());
        for column in columns {
            write_field(column, row, out)?;
        }
    }
    Ok(())
}

fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn write_len(len: usize, out: &mut Vec<u8>) -> Result<()> {
    let len = i32::try_from(len)
        .map_err(|_| Error::encode(format!("a value of {len} bytes is too long for COPY")))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn write_field(column: &Column<'_>, row: usize, out: &mut Vec<u8>) -> Result<()> {
    match column {
        Column::Fixed {
            width,
            values,
            nulls,
        } => {
            if nulls.is_some_and(|nulls| nulls.get(row).copied().unwrap_or(false)) {
                write_null(out);
                return Ok(());
            }
            write_len(*width, out)?;
            let value = &values[row * width..(row + 1) * width];
            if cfg!(target_endian = "little") {
                out.extend(value.iter().rev());
            } else {
                out.extend_from_slice(value);
            }
        }
        Column::Variable { values } => match values[row] {
            Some(value) => {
                write_len(value.len(), out)?;
                out.extend_from_slice(value);
            }
            None => write_null(out),
        },
        Column::Point { x, y, srid } => {
            let (x, y) = (x[row], y[row]);
            if x.is_nan() || y.is_nan() {
                write_null(out);
                return Ok(());
            }
            write_len(25, out)?;
            // EWKB is self-describing: little endian whatever the machine.
            out.push(1);
            out.extend_from_slice(&EWKB_POINT_WITH_SRID.to_le_bytes());
            out.extend_from_slice(&srid.to_le_bytes());
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_of_each_kind_is_laid_out_as_postgresql_reads_it() {
        let ints: Vec<u8> = 258i32.to_ne_bytes().to_vec();
        let text = [Some(&b"hi"[..])];
        let mut out = Vec::new();
        write_rows(
            &[
                Column::Fixed {
                    width: 4,
                    values: &ints,
                    nulls: None,
                },
                Column::Variable { values: &text },
                Column::Point {
                    x: &[1.0],
                    y: &[f64::NAN],
                    srid: 4326,
                },
            ],
            &mut out,
        )
        .unwrap();
        let mut expected = vec![0, 3, 0, 0, 0, 4, 0, 0, 1, 2, 0, 0, 0, 2, b'h', b'i'];
        expected.extend_from_slice(&[0xff; 4]);
        assert_eq!(out, expected);
    }

    #[test]
    fn nulls_and_points() {
        let floats: Vec<u8> = [1.5f64, 2.5].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = Vec::new();
        write_rows(
            &[
                Column::Fixed {
                    width: 8,
                    values: &floats,
                    nulls: Some(&[true, false]),
                },
                Column::Point {
                    x: &[2.0, 3.0],
                    y: &[41.0, 42.0],
                    srid: 4326,
                },
            ],
            &mut out,
        )
        .unwrap();
        // Row 1: count, NULL, point (4 + 25 bytes).
        assert_eq!(&out[..6], &[0, 2, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&out[6..10], &25i32.to_be_bytes());
        assert_eq!(out[10], 1);
        assert_eq!(&out[11..15], &0x2000_0001u32.to_le_bytes());
        assert_eq!(&out[15..19], &4326i32.to_le_bytes());
        assert_eq!(&out[19..27], &2.0f64.to_le_bytes());
        // Row 2: the float in network order.
        let row2 = &out[6 + 4 + 25..];
        assert_eq!(&row2[2..6], &8i32.to_be_bytes());
        assert_eq!(&row2[6..14], &2.5f64.to_be_bytes());
    }

    #[test]
    fn columns_of_different_lengths_are_refused() {
        let error = write_rows(
            &[
                Column::Variable { values: &[None] },
                Column::Variable {
                    values: &[None, None],
                },
            ],
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("different lengths"), "{error}");
        let error = write_rows(
            &[Column::Fixed {
                width: 8,
                values: &[0; 7],
                nulls: None,
            }],
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("7 bytes"), "{error}");
    }
}
