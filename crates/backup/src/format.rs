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
    pub fn add(&mut self, row_json: &str) {
        let digest = Sha256::digest(row_json.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_ignore_row_order_but_not_content() {
        let (mut a, mut b, mut c) = (TableHasher::default(), TableHasher::default(), TableHasher::default());
        for row in ["[1,\"x\"]", "[2,\"y\"]"] {
            a.add(row);
        }
        for row in ["[2,\"y\"]", "[1,\"x\"]"] {
            b.add(row);
        }
        for row in ["[1,\"x\"]", "[2,\"z\"]"] {
            c.add(row);
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
}
