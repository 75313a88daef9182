//! The portable export: one object per region, JSON lines (zstd-compressed, then age-encrypted).
//!
//! ```text
//! {"table":"rn_commands","columns":["id","kind",...]}      a table starts
//! ["8d62...","cafe.reserve",...]                            its rows: integers, strings, nulls
//! {"queue":[{...command...}, ...]}                          commands queued on nodes (pending)
//! {"end":{"tables":N,"rows":M}}                             the export is whole
//! ```
//!
//! Values are only integers, text and NULL (every rananeeti column is BIGINT or TEXT), so an
//! export restores into SQLite or PostgreSQL whatever it came from. A table's checksum is
//! independent of row order (the sum of each row's SHA-256 prefix), because the two stores
//! order text differently.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const FORMAT_VERSION: u32 = 1;

/// A line that is not a row (rows are JSON arrays).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Table { table: String, columns: Vec<String> },
    Queue { queue: Vec<serde_json::Value> },
    End { end: EndMark },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndMark {
    pub tables: u64,
    pub rows: u64,
}

/// Rows and an order-independent checksum of one table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableSum {
    pub rows: u64,
    pub checksum: String,
}

/// Accumulates a table's checksum.
#[derive(Default)]
pub struct TableHasher {
    rows: u64,
    sum: u128,
}

impl TableHasher {
    /// Adds one row, as its canonical JSON (without the newline).
    pub fn add(&mut self, row_json: &[u8]) {
        let digest = Sha256::digest(row_json);
        let prefix = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        self.sum = self.sum.wrapping_add(prefix);
        self.rows += 1;
    }

    pub fn finish(&self) -> TableSum {
        TableSum { rows: self.rows, checksum: format!("{:032x}", self.sum) }
    }
}

/// What a region's object holds, as recorded in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionEntry {
    pub name: String,
    /// The object's name inside the backup.
    pub object: String,
    /// SHA-256 of the object as stored (compressed and encrypted).
    pub sha256: String,
    pub bytes: u64,
    /// Size of the export before compression.
    pub plain_bytes: u64,
    pub tables: BTreeMap<String, TableSum>,
    /// Commands that were queued (pending) on the region's nodes.
    pub queued: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_at_ms: u64,
    pub tool_version: String,
    /// sqlite or postgres: what the backup came from (a restore may go to either).
    pub store: String,
    pub compression: String,
    pub encryption: String,
    pub recipients: Vec<String>,
    pub regions: Vec<RegionEntry>,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.regions.iter().map(|region| region.bytes).sum()
    }

    pub fn plain_bytes(&self) -> u64 {
        self.regions.iter().map(|region| region.plain_bytes).sum()
    }
}

/// A row's canonical JSON (an array of its values).
pub fn row_json(values: &[serde_json::Value]) -> String {
    serde_json::to_string(values).expect("JSON values serialize")
}

/// Writes a row's canonical JSON value by value, with no `serde_json::Value` in between: the
/// same bytes as [`row_json`] (strings are escaped by serde_json itself, integers by itoa), so
/// checksums do not depend on which reader made the row.
pub struct RowWriter<'a> {
    out: &'a mut Vec<u8>,
    values: usize,
}

impl<'a> RowWriter<'a> {
    pub fn start(out: &'a mut Vec<u8>) -> RowWriter<'a> {
        out.push(b'[');
        RowWriter { out, values: 0 }
    }

    fn separate(&mut self) {
        if self.values > 0 {
            self.out.push(b',');
        }
        self.values += 1;
    }

    pub fn integer(&mut self, value: i64) {
        self.separate();
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub fn text(&mut self, value: &str) {
        self.separate();
        serde_json::to_writer(&mut *self.out, value).expect("writing to a Vec does not fail");
    }

    pub fn null(&mut self) {
        self.separate();
        self.out.extend_from_slice(b"null");
    }

    pub fn finish(self) {
        self.out.push(b']');
    }
}

/// One value of a row as read back from an export: borrowed from the line unless it had escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    Integer(i64),
    Text(std::borrow::Cow<'a, str>),
    Null,
}

impl<'de> Deserialize<'de> for Cell<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CellVisitor;
        impl<'de> serde::de::Visitor<'de> for CellVisitor {
            type Value = Cell<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an integer, a string or null")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Cell<'de>, E> {
                Ok(Cell::Integer(value))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Cell<'de>, E> {
                i64::try_from(value).map(Cell::Integer).map_err(|_| E::custom("an integer beyond 64 bits"))
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, value: &'de str) -> Result<Cell<'de>, E> {
                Ok(Cell::Text(std::borrow::Cow::Borrowed(value)))
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Cell<'de>, E> {
                Ok(Cell::Text(std::borrow::Cow::Owned(value.to_string())))
            }

            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Cell<'de>, E> {
                Ok(Cell::Text(std::borrow::Cow::Owned(value)))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Cell<'de>, E> {
                Ok(Cell::Null)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Cell<'de>, E> {
                Ok(Cell::Null)
            }
        }
        deserializer.deserialize_any(CellVisitor)
    }
}

/// Parses a row line of an export.
pub fn parse_row(line: &[u8]) -> Result<Vec<Cell<'_>>, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_ignore_row_order_but_not_content() {
        let (mut a, mut b, mut c) = (TableHasher::default(), TableHasher::default(), TableHasher::default());
        for row in ["[1,\"x\"]", "[2,\"y\"]"] {
            a.add(row.as_bytes());
        }
        for row in ["[2,\"y\"]", "[1,\"x\"]"] {
            b.add(row.as_bytes());
        }
        for row in ["[1,\"x\"]", "[2,\"z\"]"] {
            c.add(row.as_bytes());
        }
        assert_eq!(a.finish(), b.finish());
        assert_ne!(a.finish(), c.finish());
        assert_eq!(a.finish().rows, 2);
    }

    #[test]
    fn lines_round_trip() {
        let line = Line::Table { table: "t".into(), columns: vec!["a".into()] };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(text, r#"{"table":"t","columns":["a"]}"#);
        let end: Line = serde_json::from_str(r#"{"end":{"tables":1,"rows":2}}"#).unwrap();
        assert!(matches!(end, Line::End { end: EndMark { tables: 1, rows: 2 } }));
        let back: Line = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Line::Table { .. }));
    }

    /// The fast writer must give serde_json's bytes exactly: version-1 manifests hold checksums
    /// of serde_json's output.
    #[test]
    fn row_writer_matches_serde_json_byte_for_byte() {
        let texts = [
            "",
            "plain",
            "quote \" and \\ backslash",
            "tab\tnew\nline\r",
            "\u{1}\u{1f}\u{7f}",
            "é ü 日本 🎉",
            "</script>",
        ];
        for text in texts {
            for integer in [0i64, -1, 42, i64::MIN, i64::MAX] {
                let values =
                    vec![serde_json::Value::from(integer), serde_json::Value::from(text), serde_json::Value::Null];
                let mut out = Vec::new();
                let mut row = RowWriter::start(&mut out);
                row.integer(integer);
                row.text(text);
                row.null();
                row.finish();
                assert_eq!(String::from_utf8(out.clone()).unwrap(), row_json(&values));
                let cells = parse_row(&out).unwrap();
                assert_eq!(cells, vec![Cell::Integer(integer), Cell::Text(text.into()), Cell::Null]);
            }
        }
        let mut empty = Vec::new();
        RowWriter::start(&mut empty).finish();
        assert_eq!(empty, b"[]");
        assert!(parse_row(b"[1.5]").is_err(), "only integers, text and null");
        assert!(parse_row(b"[18446744073709551615]").is_err(), "integers fit 64 bits");
    }
}
