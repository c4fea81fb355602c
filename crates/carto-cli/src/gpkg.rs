//! GeoPackage for `carto import`: one feature table of the file (a SQLite database) written
//! out, row by row, as the CSV the import loads. Its geometry column becomes `the_geom` as hex
//! EWKB carrying the EPSG code of its spatial reference system (so that cartodbfying the
//! table transforms it to 4326), its other columns keep the types their declarations give.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::infer::ColumnType;

/// True for a file named `*.gpkg`.
pub fn is_gpkg(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gpkg"))
}

/// One column of a layer as the import sees it.
pub struct Column {
    /// The name in the file (`the_geom` for the geometry column).
    pub name: String,
    /// The kind of its values (`Text` for what no other kind describes).
    pub kind: ColumnType,
    /// Its SQL type.
    pub sql_type: String,
}

/// A feature table of an open GeoPackage.
pub struct Layer {
    connection: Connection,
    /// The table's name in the file.
    pub name: String,
    /// The geometry column first, as `the_geom`, then the attributes.
    pub columns: Vec<Column>,
    /// Its geometries may have Z or M coordinates (`gpkg_geometry_columns` does not prohibit
    /// them).
    pub z_or_m: bool,
    /// The geometry column's name in the file.
    geometry: String,
    /// The attributes' names in the file.
    attributes: Vec<String>,
    /// The integer primary key (the feature id), which orders the rows and is not imported:
    /// the table numbers its rows in `cartodb_id`.
    key: Option<String>,
    /// PostGIS SRIDs of the file's spatial reference systems, by `srs_id` (an error message
    /// for those that have none).
    srids: HashMap<i64, std::result::Result<i32, String>>,
}

/// Opens the GeoPackage at `path` (read only) and the feature table `wanted`, or its only
/// one.
pub fn open(path: &Path, wanted: Option<&str>) -> Result<Layer> {
    let not_gpkg = || format!("{} is not a GeoPackage", path.display());
    // SQLite's own word for a missing file would be "unable to open database file".
    std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(not_gpkg)?;
    let layers: Vec<String> = connection
        .prepare(
            "SELECT c.table_name FROM gpkg_contents c JOIN gpkg_geometry_columns g \
             ON g.table_name = c.table_name WHERE c.data_type = 'features' ORDER BY 1",
        )
        .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
        .map_err(|e| anyhow!("{} ({e})", not_gpkg()))?;
    let name = match (wanted, layers.as_slice()) {
        (_, []) => bail!("{} has no feature table", path.display()),
        (Some(wanted), _) => layers
            .iter()
            .find(|l| *l == wanted)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no layer {wanted:?} (its layers: {})",
                    path.display(),
                    layers.join(", ")
                )
            })?
            .clone(),
        (None, [only]) => only.clone(),
        (None, _) => bail!(
            "{} has several layers: choose one with --layer ({})",
            path.display(),
            layers.join(", ")
        ),
    };
    let (geometry, z_or_m): (String, bool) = connection
        .query_row(
            "SELECT column_name, z <> 0 OR m <> 0 FROM gpkg_geometry_columns \
             WHERE table_name = ?1",
            [&name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .with_context(|| format!("reading the geometry column of {name}"))?;
    let srids = spatial_references(&connection).with_context(|| {
        format!(
            "reading the spatial reference systems of {}",
            path.display()
        )
    })?;

    let mut columns = vec![Column {
        name: "the_geom".into(),
        kind: ColumnType::Geometry,
        sql_type: "geometry".into(),
    }];
    let mut attributes = Vec::new();
    let mut key = None;
    let mut info = connection.prepare(&format!("PRAGMA table_info({})", quote(&name)))?;
    let mut rows = info.query([])?;
    while let Some(row) = rows.next()? {
        let column: String = row.get("name")?;
        let declared: String = row.get("type")?;
        let primary: i64 = row.get("pk")?;
        if column == geometry {
            continue;
        }
        if primary == 1 && declared.eq_ignore_ascii_case("INTEGER") && key.is_none() {
            key = Some(column);
            continue;
        }
        let (kind, sql_type) = sql_type(&declared);
        columns.push(Column {
            name: column.clone(),
            kind,
            sql_type: sql_type.into(),
        });
        attributes.push(column);
    }
    drop(rows);
    drop(info);
    Ok(Layer {
        connection,
        name,
        columns,
        z_or_m,
        geometry,
        attributes,
        key,
        srids,
    })
}

/// PostGIS SRIDs by GeoPackage `srs_id`: the EPSG code of those an EPSG code defines; 0
/// ("undefined geographic", by the spec) is taken as 4326, as PostGIS takes an undeclared SRID.
fn spatial_references(
    connection: &Connection,
) -> rusqlite::Result<HashMap<i64, std::result::Result<i32, String>>> {
    let mut statement = connection.prepare(
        "SELECT srs_id, organization, organization_coordsys_id FROM gpkg_spatial_ref_sys",
    )?;
    let rows = statement.query_map([], |row| {
        let srs_id: i64 = row.get(0)?;
        let organization: String = row.get(1)?;
        let code: i64 = row.get(2)?;
        let srid = match (srs_id, organization.to_ascii_uppercase().as_str()) {
            (0, _) => Ok(4326),
            (_, "EPSG") => i32::try_from(code).map_err(|_| format!("EPSG code {code}")),
            _ => Err(format!(
                "srs_id {srs_id} ({organization} {code}) is not an EPSG coordinate system, \
                 which PostGIS could transform to 4326"
            )),
        };
        Ok((srs_id, srid))
    })?;
    rows.collect()
}

/// The column kind and SQL type of a GeoPackage column declaration (GeoPackage 1.3, table 1
/// "GeoPackage Data Types"; `TEXT(n)` and `BLOB(n)` as their base type). What it does not
/// name is imported as text, which holds any value.
fn sql_type(declared: &str) -> (ColumnType, &'static str) {
    let base = declared
        .split('(')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_uppercase();
    match base.as_str() {
        "BOOLEAN" => (ColumnType::Boolean, "boolean"),
        "TINYINT" | "SMALLINT" => (ColumnType::Integer, "smallint"),
        "MEDIUMINT" => (ColumnType::Integer, "integer"),
        // 64-bit in a GeoPackage.
        "INT" | "INTEGER" => (ColumnType::BigInt, "bigint"),
        "FLOAT" | "DOUBLE" | "REAL" => (ColumnType::Numeric, "double precision"),
        "DATE" => (ColumnType::Date, "date"),
        // UTC by the spec (`YYYY-MM-DDTHH:MM:SS.SSSZ`).
        "DATETIME" => (ColumnType::TimestampTz, "timestamptz"),
        "BLOB" => (ColumnType::Text, "bytea"),
        _ => (ColumnType::Text, "text"),
    }
}

/// `name` as an SQLite identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Layer {
    /// Writes the layer's rows as CSV (with a header line) to a temporary file, one row at a
    /// time.
    pub fn to_csv(&self) -> Result<tempfile::NamedTempFile> {
        let csv = tempfile::Builder::new()
            .prefix("carto-import-")
            .suffix(".csv")
            .tempfile()
            .context("creating a temporary file for the GeoPackage's rows")?;
        let mut out = std::io::BufWriter::new(csv.as_file());
        let header: Vec<Option<&[u8]>> = self
            .columns
            .iter()
            .map(|c| Some(c.name.as_bytes()))
            .collect();
        write_record(&mut out, &header)?;

        let selected: Vec<String> = std::iter::once(&self.geometry)
            .chain(&self.attributes)
            .map(|c| quote(c))
            .collect();
        let mut query = format!("SELECT {} FROM {}", selected.join(", "), quote(&self.name));
        if let Some(key) = &self.key {
            query.push_str(&format!(" ORDER BY {}", quote(key)));
        }
        let mut statement = self.connection.prepare(&query)?;
        let mut rows = statement.query([])?;
        let mut feature = 0u64;
        let mut cells: Vec<Option<Vec<u8>>> = Vec::with_capacity(self.columns.len());
        while let Some(row) = rows
            .next()
            .with_context(|| format!("reading the rows of {}", self.name))?
        {
            feature += 1;
            cells.clear();
            let geometry = match row.get_ref(0)? {
                ValueRef::Null => None,
                ValueRef::Blob(blob) => self
                    .ewkb(blob)
                    .with_context(|| format!("feature {feature} of {}", self.name))?,
                _ => bail!(
                    "feature {feature} of {}: its geometry is not a GeoPackage geometry blob",
                    self.name
                ),
            };
            cells.push(geometry.map(|g| hex(&g).into_bytes()));
            for i in 0..self.attributes.len() {
                cells.push(match row.get_ref(i + 1)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(n) => Some(n.to_string().into_bytes()),
                    ValueRef::Real(x) => Some(x.to_string().into_bytes()),
                    ValueRef::Text(text) => Some(text.to_vec()),
                    // bytea's hex input form.
                    ValueRef::Blob(blob) => Some(format!("\\x{}", hex(blob)).into_bytes()),
                });
            }
            let record: Vec<Option<&[u8]>> = cells.iter().map(|c| c.as_deref()).collect();
            write_record(&mut out, &record)?;
        }
        out.flush().context("writing the GeoPackage's rows")?;
        drop(out);
        Ok(csv)
    }

    /// The EWKB of a GeoPackage geometry blob, with the PostGIS SRID of its `srs_id`; `None`
    /// for an empty geometry.
    fn ewkb(&self, blob: &[u8]) -> Result<Option<Vec<u8>>> {
        let parsed = parse(blob)?;
        if parsed.empty {
            return Ok(None);
        }
        let srid = match self.srids.get(&i64::from(parsed.srs_id)) {
            Some(Ok(srid)) => *srid,
            Some(Err(why)) => bail!("{why}"),
            None if parsed.srs_id == -1 => bail!(
                "srs_id -1 (undefined Cartesian coordinates), which cannot be placed on the map"
            ),
            None => bail!("srs_id {} is not in gpkg_spatial_ref_sys", parsed.srs_id),
        };
        with_srid(parsed.wkb, srid).map(Some)
    }
}

/// A GeoPackage geometry blob taken apart.
#[derive(Debug, PartialEq)]
struct Parsed<'a> {
    srs_id: i32,
    empty: bool,
    /// The (ISO) WKB after the header.
    wkb: &'a [u8],
}

/// Splits a GeoPackage geometry blob into its header's `srs_id` and empty flag, and its WKB.
/// Read by hand because the header is a few bytes with a fixed layout (OGC GeoPackage
/// Encoding Standard 1.3, section 2.1.3.1.1 "GeoPackageBinary"): `GP`, a version byte, a flags
/// byte (bit 0: little-endian header; bits 1-3: envelope of 0, 32, 48, 48 or 64 bytes; bit 4:
/// empty geometry; bit 5: extended type), the `srs_id` (int32), the envelope, then WKB.
fn parse(blob: &[u8]) -> Result<Parsed<'_>> {
    let [b'G', b'P', version, flags, ..] = *blob else {
        bail!("not a GeoPackage geometry (no \"GP\" header)");
    };
    if version != 0 {
        bail!("GeoPackage geometry version {version}, expected 0 (version 1)");
    }
    let envelope = match (flags >> 1) & 0b111 {
        0 => 0,
        1 => 32,
        2 | 3 => 48,
        4 => 64,
        other => bail!("GeoPackage geometry with an invalid envelope code {other}"),
    };
    let srs_id: [u8; 4] = blob
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("GeoPackage geometry cut short in its header"))?;
    let srs_id = if flags & 1 == 1 {
        i32::from_le_bytes(srs_id)
    } else {
        i32::from_be_bytes(srs_id)
    };
    let wkb = blob
        .get(8 + envelope..)
        .ok_or_else(|| anyhow!("GeoPackage geometry cut short in its envelope"))?;
    Ok(Parsed {
        srs_id,
        empty: flags & 0b1_0000 != 0,
        wkb,
    })
}

/// EWKB's flag of a geometry followed by its SRID (PostGIS).
const EWKB_SRID: u32 = 0x2000_0000;

/// `wkb` (ISO or extended) as EWKB with `srid`: the SRID flag added to its type and the SRID
/// after it, in the WKB's byte order. PostGIS reads ISO type codes (Z, M as 1000s) alongside
/// the flag.
fn with_srid(wkb: &[u8], srid: i32) -> Result<Vec<u8>> {
    let (&order, rest) = wkb
        .split_first()
        .filter(|(order, rest)| **order <= 1 && rest.len() >= 4)
        .ok_or_else(|| anyhow!("not a WKB geometry after the GeoPackage header"))?;
    let little = order == 1;
    let raw: [u8; 4] = rest[..4].try_into().expect("4 bytes");
    let kind = if little {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    } | EWKB_SRID;
    let mut ewkb = Vec::with_capacity(wkb.len() + 4);
    ewkb.push(order);
    if little {
        ewkb.extend(kind.to_le_bytes());
        ewkb.extend(srid.to_le_bytes());
    } else {
        ewkb.extend(kind.to_be_bytes());
        ewkb.extend(srid.to_be_bytes());
    }
    ewkb.extend(&rest[4..]);
    Ok(ewkb)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One CSV line for COPY: NULL as an empty field, every value quoted, so that an empty text
/// stays an empty text. Written here because the csv crate writes both as an empty field.
fn write_record(out: &mut impl Write, cells: &[Option<&[u8]>]) -> Result<()> {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        if let Some(value) = cell {
            out.write_all(b"\"")?;
            for part in value.split_inclusive(|b| *b == b'"') {
                out.write_all(part)?;
                if part.ends_with(b"\"") {
                    out.write_all(b"\"")?;
                }
            }
            out.write_all(b"\"")?;
        }
    }
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POINT(1 2), little-endian WKB.
    const POINT: &[u8] = &[
        1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0, 0, 0x40,
    ];

    fn blob(flags: u8, srs_id: [u8; 4], envelope: usize, wkb: &[u8]) -> Vec<u8> {
        let mut blob = vec![b'G', b'P', 0, flags];
        blob.extend(srs_id);
        blob.extend(std::iter::repeat(0xAA).take(envelope));
        blob.extend(wkb);
        blob
    }

    #[test]
    fn every_envelope_size_is_skipped() {
        for (code, size) in [(0u8, 0), (1, 32), (2, 48), (3, 48), (4, 64)] {
            let little = blob(1 | code << 1, 4326i32.to_le_bytes(), size, POINT);
            assert_eq!(
                parse(&little).unwrap(),
                Parsed {
                    srs_id: 4326,
                    empty: false,
                    wkb: POINT
                },
                "envelope code {code}"
            );
        }
        assert!(parse(&blob(5 << 1, [0; 4], 0, POINT)).is_err());
        // An envelope longer than the blob.
        assert!(parse(&blob(4 << 1, [0; 4], 10, &[])).is_err());
    }

    #[test]
    fn byte_order_and_empty_flag() {
        let big = blob(0b0000_0010, 3857i32.to_be_bytes(), 32, POINT);
        assert_eq!(parse(&big).unwrap().srs_id, 3857);
        let little = blob(0b0000_0011, 3857i32.to_le_bytes(), 32, POINT);
        assert_eq!(parse(&little).unwrap().srs_id, 3857);
        let empty = blob(0b0001_0001, (-1i32).to_le_bytes(), 0, POINT);
        assert_eq!(
            parse(&empty).unwrap(),
            Parsed {
                srs_id: -1,
                empty: true,
                wkb: POINT
            }
        );
        assert!(parse(b"GP").is_err());
        assert!(parse(b"XY\0\x01\0\0\0\0").is_err());
        assert!(parse(b"GP\x01\x01\0\0\0\0").is_err());
    }

    #[test]
    fn wkb_gets_the_srid() {
        let ewkb = with_srid(POINT, 4326).unwrap();
        assert_eq!(
            hex(&ewkb),
            "0101000020e6100000000000000000f03f0000000000000040"
        );
        // Big-endian ISO POINT Z: type 1001 with the flag, SRID in the same order.
        let mut big = vec![0, 0, 0, 0x03, 0xe9];
        big.extend([0; 24]);
        let ewkb = with_srid(&big, 25830).unwrap();
        assert_eq!(&ewkb[..9], &[0, 0x20, 0, 0x03, 0xe9, 0, 0, 0x64, 0xe6]);
        assert!(with_srid(&[7, 1, 0, 0, 0], 4326).is_err());
    }

    #[test]
    fn csv_records_keep_empty_text_apart_from_null() {
        let mut out = Vec::new();
        write_record(&mut out, &[None, Some(b""), Some(b"a \"b\", c")]).unwrap();
        assert_eq!(out, b",\"\",\"a \"\"b\"\", c\"\n");
    }

    #[test]
    fn spatial_reference_systems_map_to_epsg_codes() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE gpkg_spatial_ref_sys (srs_id INTEGER PRIMARY KEY, organization TEXT,
               organization_coordsys_id INTEGER);
             INSERT INTO gpkg_spatial_ref_sys VALUES
               (-1, 'NONE', -1), (0, 'NONE', 0), (4326, 'EPSG', 4326), (100, 'epsg', 25830),
               (200, 'ESRI', 54009);",
        )
        .unwrap();
        let srids = spatial_references(&db).unwrap();
        assert_eq!(srids[&0], Ok(4326));
        assert_eq!(srids[&4326], Ok(4326));
        assert_eq!(srids[&100], Ok(25830));
        assert!(srids[&-1].is_err());
        let esri = srids[&200].clone().unwrap_err();
        assert!(esri.contains("(ESRI 54009) is not an EPSG"), "{esri}");
    }

    #[test]
    fn declared_types() {
        assert_eq!(sql_type("INTEGER").1, "bigint");
        assert_eq!(sql_type("TEXT(20)").1, "text");
        assert_eq!(sql_type("DATETIME").1, "timestamptz");
        assert_eq!(sql_type("blob").1, "bytea");
        assert_eq!(sql_type("VARCHAR").1, "text");
    }
}
