//! Command ids: a 20-byte BLAKE2b digest of a command's content (seed 000's order digest).

use blake2::digest::consts::U20;
use blake2::{Blake2b, Digest};
use std::fmt;

type Blake2b160 = Blake2b<U20>;

/// The identity of a command. The same content always gives the same id, which is what makes a
/// resubmission a *duplicate* instead of a second write.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId([u8; 20]);

#[derive(Debug, thiserror::Error)]
#[error("a command id is 40 hexadecimal characters")]
pub struct InvalidCommandId;

impl CommandId {
    /// The digest of `kind` and the command's canonical content bytes.
    pub fn digest(kind: &str, canonical_content: &[u8]) -> CommandId {
        let mut hasher = Blake2b160::new();
        hasher.update((kind.len() as u64).to_be_bytes());
        hasher.update(kind.as_bytes());
        hasher.update(canonical_content);
        CommandId(hasher.finalize().into())
    }

    /// An id from a client's idempotency key: the same key for the same kind is the same command.
    pub fn from_idempotency_key(kind: &str, key: &str) -> CommandId {
        let mut content = b"idempotency-key:".to_vec();
        content.extend_from_slice(key.as_bytes());
        CommandId::digest(kind, &content)
    }

    pub fn from_bytes(bytes: [u8; 20]) -> CommandId {
        CommandId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse_hex(text: &str) -> Result<CommandId, InvalidCommandId> {
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidCommandId)?;
        Ok(CommandId(bytes))
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({})", self.to_hex())
    }
}

impl serde::Serialize for CommandId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for CommandId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        CommandId::parse_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_id_other_content_other_id() {
        let a = CommandId::digest("cafe.reserve", b"ann|2|2030-01-01T19:00|");
        let b = CommandId::digest("cafe.reserve", b"ann|2|2030-01-01T19:00|");
        let c = CommandId::digest("cafe.reserve", b"ann|3|2030-01-01T19:00|");
        let d = CommandId::digest("cafe.other", b"ann|2|2030-01-01T19:00|");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = CommandId::digest("k", b"x");
        assert_eq!(CommandId::parse_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(id.to_hex().len(), 40);
        assert!(CommandId::parse_hex("zz").is_err());
        assert!(CommandId::parse_hex(&"a".repeat(42)).is_err());
    }
}
