//! The on-disk form of keys and values; only this module knows it.
//!
//! Every stored value starts with a CRC-32 over its key and the rest of the value, so a value that
//! was damaged, or that landed under the wrong key, is caught when it is read back.

use crate::{Entry, QueueError};

/// Bytes of the checksum that starts every stored value.
const CHECKSUM_BYTES: usize = 4;
/// Bytes of an entry value before its body: checksum, command id, enqueue time.
const ENTRY_HEADER_BYTES: usize = CHECKSUM_BYTES + 20 + 8;
/// Bytes of an index value (id -> seq) and of the next-seq record: checksum and a u64.
const SEQ_VALUE_BYTES: usize = CHECKSUM_BYTES + 8;

/// Key of the record in the `meta` partition that holds the next sequence number to hand out.
pub(crate) const NEXT_SEQ_KEY: &[u8] = b"next_seq";

/// Entries are keyed by big-endian seq so that key order is seq order.
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn seq_from_key(key: &[u8]) -> Result<u64, QueueError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| QueueError::CorruptKey { key_bytes: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

fn checksum(key: &[u8], rest: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(rest);
    hasher.finalize()
}

pub(crate) fn encode_entry(seq: u64, id: &[u8; 20], enqueued_at_ms: i64, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(ENTRY_HEADER_BYTES + body.len());
    value.extend_from_slice(&[0; CHECKSUM_BYTES]);
    value.extend_from_slice(id);
    value.extend_from_slice(&enqueued_at_ms.to_be_bytes());
    value.extend_from_slice(body);
    let sum = checksum(&seq_key(seq), &value[CHECKSUM_BYTES..]);
    value[..CHECKSUM_BYTES].copy_from_slice(&sum.to_be_bytes());
    value
}

pub(crate) fn decode_entry(seq: u64, value: &[u8]) -> Result<Entry, QueueError> {
    let corrupt = |reason: String| QueueError::Corrupt { seq, reason };
    if value.len() < ENTRY_HEADER_BYTES {
        return Err(corrupt(format!(
            "value is {} bytes, shorter than the {ENTRY_HEADER_BYTES}-byte header",
            value.len()
        )));
    }
    let (stored, rest) = value.split_at(CHECKSUM_BYTES);
    let stored = u32::from_be_bytes(stored.try_into().expect("split at CHECKSUM_BYTES"));
    let computed = checksum(&seq_key(seq), rest);
    if stored != computed {
        return Err(corrupt(format!("checksum mismatch: stored {stored:08x}, computed {computed:08x}")));
    }
    let id: [u8; 20] = rest[..20].try_into().expect("header length checked");
    let enqueued_at_ms = i64::from_be_bytes(rest[20..28].try_into().expect("header length checked"));
    Ok(Entry { seq, id, enqueued_at_ms, body: rest[28..].to_vec() })
}

/// A u64 under `key`, with its checksum: the id index (id -> seq) and the next-seq record.
pub(crate) fn encode_seq_value(key: &[u8], seq: u64) -> [u8; SEQ_VALUE_BYTES] {
    let mut value = [0; SEQ_VALUE_BYTES];
    value[CHECKSUM_BYTES..].copy_from_slice(&seq.to_be_bytes());
    let sum = checksum(key, &value[CHECKSUM_BYTES..]);
    value[..CHECKSUM_BYTES].copy_from_slice(&sum.to_be_bytes());
    value
}

/// Reads back what `encode_seq_value` wrote; the error says what is wrong, the caller says where.
pub(crate) fn decode_seq_value(key: &[u8], value: &[u8]) -> Result<u64, String> {
    if value.len() != SEQ_VALUE_BYTES {
        return Err(format!("value is {} bytes, expected {SEQ_VALUE_BYTES}", value.len()));
    }
    let (stored, rest) = value.split_at(CHECKSUM_BYTES);
    let stored = u32::from_be_bytes(stored.try_into().expect("split at CHECKSUM_BYTES"));
    let computed = checksum(key, rest);
    if stored != computed {
        return Err(format!("checksum mismatch: stored {stored:08x}, computed {computed:08x}"));
    }
    Ok(u64::from_be_bytes(rest.try_into().expect("length checked")))
}

/// Lower-case hex of a command id, for error messages.
pub(crate) fn id_hex(id: &[u8]) -> String {
    id.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_a_flipped_bit_is_caught() {
        let id = [7; 20];
        let mut value = encode_entry(42, &id, -5, b"body");
        let entry = decode_entry(42, &value).expect("fresh value decodes");
        assert_eq!(entry.seq, 42);
        assert_eq!(entry.id, id);
        assert_eq!(entry.enqueued_at_ms, -5);
        assert_eq!(entry.body, b"body");

        // The same bytes under another seq are not this entry.
        assert!(decode_entry(43, &value).is_err());

        let last = value.len() - 1;
        value[last] ^= 1;
        assert!(matches!(decode_entry(42, &value), Err(QueueError::Corrupt { seq: 42, .. })));
        assert!(decode_entry(42, &value[..ENTRY_HEADER_BYTES - 1]).is_err());
    }

    #[test]
    fn seq_value_round_trips_and_checks_its_key() {
        let value = encode_seq_value(b"key", 9);
        assert_eq!(decode_seq_value(b"key", &value), Ok(9));
        assert!(decode_seq_value(b"other", &value).is_err());
        assert!(decode_seq_value(b"key", &value[1..]).is_err());
    }
}
