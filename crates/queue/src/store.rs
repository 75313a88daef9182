//! The fjall keyspace behind the queue: the `entries`, `ids` and `meta` partitions and reads of them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle};

use crate::codec;
use crate::{Entry, QueueError};

/// Partition of entries, keyed by big-endian seq.
const ENTRIES_PARTITION: &str = "entries";
/// Partition of the id index: command id -> seq.
const IDS_PARTITION: &str = "ids";
/// Partition of bookkeeping records (the next seq).
const META_PARTITION: &str = "meta";

pub(crate) struct Store {
    pub(crate) path: PathBuf,
    pub(crate) keyspace: Keyspace,
    pub(crate) entries: PartitionHandle,
    pub(crate) ids: PartitionHandle,
    pub(crate) meta: PartitionHandle,
    /// Entries in the queue; the writer adds, `remove` subtracts.
    pub(crate) depth: AtomicU64,
    /// Group commits the writer made durable, each one fsync.
    pub(crate) fsyncs_total: AtomicU64,
    pub(crate) entries_max: u64,
    /// Makes "is it there? then remove it" one step between concurrent removers, so depth is
    /// subtracted once per entry however often it is removed.
    remove_lock: Mutex<()>,
    /// Entries whose stored value failed its checksum, by seq: skipped by every read, kept on
    /// disk for an operator, reported once each.
    corrupt: Mutex<BTreeMap<u64, String>>,
}

/// Corrupt entries remembered (and reported) at most; past it they are still skipped.
const CORRUPT_REPORTED_MAX: usize = 10_000;

impl Store {
    pub(crate) fn open(path: PathBuf, keyspace: Keyspace, entries_max: u64) -> Result<Store, QueueError> {
        let storage = |source| QueueError::Storage { path: path.clone(), source };
        let entries = keyspace.open_partition(ENTRIES_PARTITION, PartitionCreateOptions::default()).map_err(storage)?;
        let ids = keyspace.open_partition(IDS_PARTITION, PartitionCreateOptions::default()).map_err(storage)?;
        let meta = keyspace.open_partition(META_PARTITION, PartitionCreateOptions::default()).map_err(storage)?;
        Ok(Store {
            path,
            keyspace,
            entries,
            ids,
            meta,
            depth: AtomicU64::new(0),
            fsyncs_total: AtomicU64::new(0),
            entries_max,
            remove_lock: Mutex::new(()),
            corrupt: Mutex::new(BTreeMap::new()),
        })
    }

    fn storage(&self, source: fjall::Error) -> QueueError {
        QueueError::Storage { path: self.path.clone(), source }
    }

    /// Counts the entries (once, when opening) and sets `depth` from it.
    pub(crate) fn count_entries(&self) -> Result<u64, QueueError> {
        let count = self.entries.len().map_err(|error| self.storage(error))? as u64;
        self.depth.store(count, Ordering::Release);
        Ok(count)
    }

    /// The seq to hand out next: past the last entry and past every seq ever handed out.
    pub(crate) fn next_seq(&self) -> Result<u64, QueueError> {
        let after_last_entry = match self.entries.last_key_value().map_err(|error| self.storage(error))? {
            Some((key, _)) => codec::seq_from_key(&key)? + 1,
            None => 1,
        };
        let recorded = match self.meta.get(codec::NEXT_SEQ_KEY).map_err(|error| self.storage(error))? {
            Some(value) => codec::decode_seq_value(codec::NEXT_SEQ_KEY, &value)
                .map_err(|reason| QueueError::CorruptMeta { reason })?,
            None => 1,
        };
        Ok(after_last_entry.max(recorded))
    }

    /// The seq an id is queued under, if it is.
    pub(crate) fn seq_of(&self, id: &[u8; 20]) -> Result<Option<u64>, QueueError> {
        let Some(value) = self.ids.get(id).map_err(|error| self.storage(error))? else {
            return Ok(None);
        };
        codec::decode_seq_value(id, &value)
            .map(Some)
            .map_err(|reason| QueueError::CorruptIndex { id: codec::id_hex(id), reason })
    }

    /// The entry at `seq`; `None` when there is none, or when its value is corrupt (reported).
    pub(crate) fn entry_at(&self, seq: u64) -> Result<Option<Entry>, QueueError> {
        let value = self.entries.get(codec::seq_key(seq)).map_err(|error| self.storage(error))?;
        Ok(value.and_then(|value| self.decoded(seq, &value)))
    }

    /// A stored value decoded, or `None` (reported once) when it fails its checksum.
    fn decoded(&self, seq: u64, value: &[u8]) -> Option<Entry> {
        match codec::decode_entry(seq, value) {
            Ok(entry) => Some(entry),
            Err(error) => {
                let mut corrupt = self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if corrupt.len() < CORRUPT_REPORTED_MAX && !corrupt.contains_key(&seq) {
                    tracing::error!(seq, %error, path = %self.path.display(), "queue entry is corrupt: skipped, kept on disk");
                    corrupt.insert(seq, error.to_string());
                }
                None
            }
        }
    }

    /// Entries found corrupt so far (seq and why), oldest first.
    pub(crate) fn corrupt_entries(&self) -> Vec<(u64, String)> {
        let corrupt = self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        corrupt.iter().map(|(seq, reason)| (*seq, reason.clone())).collect()
    }

    pub(crate) fn get(&self, id: &[u8; 20]) -> Result<Option<Entry>, QueueError> {
        let Some(seq) = self.seq_of(id)? else {
            return Ok(None);
        };
        match self.entry_at(seq)? {
            Some(entry) if entry.id == *id => Ok(Some(entry)),
            Some(entry) => Err(QueueError::Corrupt {
                seq,
                reason: format!(
                    "the index names it for id {}, but it holds id {}",
                    codec::id_hex(id),
                    codec::id_hex(&entry.id)
                ),
            }),
            // `remove` took the entry between the two reads.
            None => Ok(None),
        }
    }

    pub(crate) fn peek(&self, after: Option<u64>, limit: usize) -> Result<Vec<Entry>, QueueError> {
        let start = match after {
            Some(seq) => Bound::Excluded(codec::seq_key(seq)),
            None => Bound::Unbounded,
        };
        let mut entries = Vec::with_capacity(limit.min(1024));
        for item in self.entries.range::<[u8; 8], _>((start, Bound::Unbounded)) {
            if entries.len() == limit {
                break;
            }
            let (key, value) = item.map_err(|error| self.storage(error))?;
            let seq = codec::seq_from_key(&key)?;
            // A corrupt entry is skipped: one bad value must not stop the queue behind it.
            entries.extend(self.decoded(seq, &value));
        }
        Ok(entries)
    }

    /// When the oldest readable entry was enqueued.
    pub(crate) fn oldest_enqueued_at_ms(&self) -> Result<Option<i64>, QueueError> {
        Ok(self.peek(None, 1)?.first().map(|entry| entry.enqueued_at_ms))
    }

    /// Removes the entries that are still there, with their index records, in one batch. An entry
    /// already gone, or whose seq now holds another id, is left alone.
    pub(crate) fn remove(&self, entries: &[Entry]) -> Result<u64, QueueError> {
        let _guard = self.remove_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut batch = self.keyspace.batch();
        let mut removed: u64 = 0;
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for entry in entries {
            if !seen.insert(entry.seq) {
                continue;
            }
            let stored = self.entries.get(codec::seq_key(entry.seq)).map_err(|error| self.storage(error))?;
            let Some(stored) = stored else { continue };
            // Damaged since it was read: left for an operator, like any corrupt entry.
            let Some(stored) = self.decoded(entry.seq, &stored) else { continue };
            if stored.id != entry.id {
                tracing::warn!(
                    seq = entry.seq,
                    id = %codec::id_hex(&entry.id),
                    stored_id = %codec::id_hex(&stored.id),
                    "not removing a queue entry: its seq holds another id"
                );
                continue;
            }
            batch.remove(&self.entries, codec::seq_key(entry.seq));
            if self.seq_of(&entry.id)? == Some(entry.seq) {
                batch.remove(&self.ids, entry.id);
            }
            removed += 1;
        }
        if removed == 0 {
            return Ok(0);
        }
        batch.commit().map_err(|error| self.storage(error))?;
        let before = self.depth.fetch_sub(removed, Ordering::AcqRel);
        assert!(before >= removed, "depth {before} below {removed} removed");
        Ok(removed)
    }
}
