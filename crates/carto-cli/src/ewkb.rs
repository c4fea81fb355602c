//! Hex EWKB, as CARTO's SQL API sends geometries in JSON, turned into WKT for people to read
//! (`ST_AsText`'s form, without the SRID). Hand-written: the format is small and stable, and
//! the crates that read it bring a geometry model this only needs to print.

use std::fmt::Write;

/// EWKB type flags (PostGIS); ISO WKB adds 1000, 2000 or 3000 to the type for Z, M or ZM.
const EWKB_Z: u32 = 0x8000_0000;
const EWKB_M: u32 = 0x4000_0000;
const EWKB_SRID: u32 = 0x2000_0000;

/// The WKT of hex EWKB or WKB, or `None` when `hex` is not one.
pub fn hex_to_wkt(hex: &str) -> Option<String> {
    let bytes = decode_hex(hex)?;
    let mut reader = Reader {
        bytes: &bytes,
        at: 0,
    };
    let mut wkt = String::new();
    reader.geometry(&mut wkt, true)?;
    (reader.at == bytes.len()).then_some(wkt)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.len() < 10 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.bytes.get(self.at..self.at + N)?;
        self.at += N;
        slice.try_into().ok()
    }

    fn u32(&mut self, little: bool) -> Option<u32> {
        let b = self.take::<4>()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn f64(&mut self, little: bool) -> Option<f64> {
        let b = self.take::<8>()?;
        Some(if little {
            f64::from_le_bytes(b)
        } else {
            f64::from_be_bytes(b)
        })
    }

    /// One geometry, written with its type name when `named` (members of a MULTIPOINT etc.
    /// are written without).
    fn geometry(&mut self, out: &mut String, named: bool) -> Option<()> {
        let little = match self.take::<1>()?[0] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let raw = self.u32(little)?;
        if raw & EWKB_SRID != 0 {
            self.u32(little)?;
        }
        let iso = raw & 0x0fff_ffff;
        let (base, iso_z, iso_m) = (iso % 1000, matches!(iso / 1000, 1 | 3), iso / 1000 >= 2);
        let dims =
            2 + usize::from(raw & EWKB_Z != 0 || iso_z) + usize::from(raw & EWKB_M != 0 || iso_m);
        let name = match base {
            1 => "POINT",
            2 => "LINESTRING",
            3 => "POLYGON",
            4 => "MULTIPOINT",
            5 => "MULTILINESTRING",
            6 => "MULTIPOLYGON",
            7 => "GEOMETRYCOLLECTION",
            _ => return None,
        };
        let z = raw & EWKB_Z != 0 || iso_z;
        let m = raw & EWKB_M != 0 || iso_m;
        let mut body = String::new();
        match base {
            1 => {
                let mut coordinates = Vec::with_capacity(dims);
                for _ in 0..dims {
                    coordinates.push(self.f64(little)?);
                }
                if coordinates.iter().all(|c| c.is_nan()) {
                    body.push_str("EMPTY");
                } else {
                    body.push('(');
                    push_coordinates(&mut body, &coordinates);
                    body.push(')');
                }
            }
            2 => self.points(&mut body, little, dims)?,
            3 => self.list(&mut body, little, |r, out| r.points(out, little, dims))?,
            4..=6 => self.list(&mut body, little, |r, out| r.geometry(out, false))?,
            _ => self.list(&mut body, little, |r, out| r.geometry(out, true))?,
        }
        if named {
            // As ST_AsText: POINT(1 2), POINT Z (1 2 3), POINT EMPTY.
            out.push_str(name);
            let suffix = match (z, m) {
                (true, true) => " ZM",
                (true, false) => " Z",
                (false, true) => " M",
                (false, false) => "",
            };
            out.push_str(suffix);
            if !suffix.is_empty() || body == "EMPTY" {
                out.push(' ');
            }
        }
        out.push_str(&body);
        Some(())
    }

    /// `(x y,x y,...)` or `EMPTY`.
    fn points(&mut self, out: &mut String, little: bool, dims: usize) -> Option<()> {
        self.list(out, little, |reader, out| {
            let mut coordinates = Vec::with_capacity(dims);
            for _ in 0..dims {
                coordinates.push(reader.f64(little)?);
            }
            push_coordinates(out, &coordinates);
            Some(())
        })
    }

    /// `(item,item,...)` or `EMPTY`, for a count then that many items.
    fn list(
        &mut self,
        out: &mut String,
        little: bool,
        mut item: impl FnMut(&mut Self, &mut String) -> Option<()>,
    ) -> Option<()> {
        let count = self.u32(little)?;
        if count == 0 {
            out.push_str("EMPTY");
            return Some(());
        }
        out.push('(');
        for i in 0..count {
            if i > 0 {
                out.push(',');
            }
            item(self, out)?;
        }
        out.push(')');
        Some(())
    }
}

/// `x y[ z[ m]]`, numbers in their shortest form, as ST_AsText prints them.
fn push_coordinates(out: &mut String, coordinates: &[f64]) {
    for (i, c) in coordinates.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{c}");
    }
}

#[cfg(test)]
mod tests {
    use super::hex_to_wkt;

    #[test]
    fn what_postgis_sends() {
        // SRID=4326;POINT(1 2) as PostGIS sends it
        assert_eq!(
            hex_to_wkt("0101000020E6100000000000000000F03F0000000000000040").as_deref(),
            Some("POINT(1 2)")
        );
        // LINESTRING(0 0,1.5 -2), little-endian WKB
        assert_eq!(
            hex_to_wkt("01020000000200000000000000000000000000000000000000000000000000F83F00000000000000C0")
                .as_deref(),
            Some("LINESTRING(0 0,1.5 -2)")
        );
        // MULTIPOINT(1 2,3 4), little-endian WKB
        assert_eq!(
            hex_to_wkt("0104000000020000000101000000000000000000F03F0000000000000040010100000000000000000008400000000000001040")
                .as_deref(),
            Some("MULTIPOINT((1 2),(3 4))")
        );
        // POINT Z (1 2 3), EWKB's Z flag
        assert_eq!(
            hex_to_wkt("0101000080000000000000F03F00000000000000400000000000000840").as_deref(),
            Some("POINT Z (1 2 3)")
        );
        // POLYGON EMPTY
        assert_eq!(
            hex_to_wkt("010300000000000000").as_deref(),
            Some("POLYGON EMPTY")
        );
        assert_eq!(hex_to_wkt("hello"), None);
        assert_eq!(hex_to_wkt("0101000020E6100000"), None);
    }
}
