//! The fallback queue: a crash-safe local queue that takes a command when the store cannot.
//!
//! Invariants:
//! - `enqueue` answers `Added` only once the entry is written and fsynced; many concurrent
//!   enqueues share one fsync (group commit) made by one writer thread.
//! - An id is queued at most once: the same id again answers `AlreadyQueued` with the first seq.
//! - Seqs only grow, also across reopens, so seq order is arrival order.
//! - Every stored value carries a checksum, checked on every read; a value that fails it is
//!   skipped by every read and reported (`corrupt_entries`), never fatal to the rest.
//! - `peek` and `get` never see an entry that is not yet durable.

mod baseline;
mod codec;
mod journal;
mod store;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

pub use baseline::FsyncPerWrite;

use store::Store;
use writer::Request;

/// Largest body one entry may carry.
pub const ENTRY_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Where and how the queue keeps its entries.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Directory of the fjall keyspace.
    pub dir: PathBuf,
    /// Most enqueue requests written together under one fsync (group commit).
    pub group_commit_entries_max: usize,
    /// Most enqueue requests waiting for the writer; further callers wait for a place.
    pub waiting_entries_max: usize,
    /// Most entries the queue holds; an enqueue beyond it fails with `QueueError::Full`.
    pub entries_max: u64,
}

impl QueueConfig {
    /// A queue in `dir` with the default limits.
    pub fn new(dir: impl Into<PathBuf>) -> QueueConfig {
        QueueConfig {
            dir: dir.into(),
            group_commit_entries_max: 1024,
            waiting_entries_max: 4096,
            entries_max: 1_000_000,
        }
    }

    fn check(&self) -> Result<(), QueueError> {
        let invalid = |field, reason: &str| Err(QueueError::InvalidConfig { field, reason: reason.to_string() });
        if self.group_commit_entries_max == 0 {
            return invalid("group_commit_entries_max", "must be at least 1");
        }
        if self.waiting_entries_max == 0 {
            return invalid("waiting_entries_max", "must be at least 1");
        }
        if self.entries_max == 0 {
            return invalid("entries_max", "must be at least 1");
        }
        Ok(())
    }
}

/// One queued entry: its sequence number (order of arrival), the command id, and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub id: [u8; 20],
    pub enqueued_at_ms: i64,
    pub body: Vec<u8>,
}

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Written and fsynced under this sequence number.
    Added { seq: u64 },
    /// An entry with the same id was already queued (under this sequence number); nothing written.
    AlreadyQueued { seq: u64 },
}

impl Enqueued {
    /// The seq the id is queued under, whether this call added it or found it.
    pub fn seq(self) -> u64 {
        match self {
            Enqueued::Added { seq } | Enqueued::AlreadyQueued { seq } => seq,
        }
    }
}

/// What opening the queue found on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Entries found.
    pub entries: u64,
    /// Bytes of a torn journal tail that were dropped when opening (0 when none).
    pub torn_bytes_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue at {path}: {source}")]
    Storage { path: PathBuf, source: fjall::Error },
    #[error("queue at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("queue at {path}: write failed, nothing of this group is queued: {reason}")]
    WriteFailed { path: PathBuf, reason: String },
    #[error("queue config {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("queue is full ({entries_max} entries)")]
    Full { entries_max: u64 },
    #[error("queue entry body of {body_bytes} bytes is over the {body_bytes_max}-byte limit")]
    BodyTooLarge { body_bytes: usize, body_bytes_max: usize },
    #[error("queue writer has stopped")]
    Closed,
    #[error("queue entry {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("queue index record for id {id} is corrupt: {reason}")]
    CorruptIndex { id: String, reason: String },
    #[error("queue next-seq record is corrupt: {reason}")]
    CorruptMeta { reason: String },
    #[error("queue entry key of {key_bytes} bytes is corrupt (expected 8)")]
    CorruptKey { key_bytes: usize },
}

/// The fallback queue. Cheap to clone; the writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    /// `None` only while dropping, so that the writer sees the channel close.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    recovery: Recovery,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.requests.take());
        // The writer finishes the group in hand (at most one fsync) and returns.
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(path = %self.store.path.display(), "queue writer panicked");
            }
        }
    }
}

impl Queue {
    /// Opens (creating if needed) the queue in `config.dir` and starts the group-commit writer
    /// thread. A torn journal tail that recovery dropped is logged and reported in `recovery()`.
    #[tracing::instrument(skip_all, fields(path = %config.dir.display()))]
    pub fn open(config: QueueConfig) -> Result<Queue, QueueError> {
        config.check()?;
        let path = config.dir.clone();
        let io = |source| QueueError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&path).map_err(io)?;
        let journals = path.join(journal::JOURNALS_FOLDER);
        let written_ends = journal::written_ends(&journals).map_err(io)?;

        let keyspace = fjall::Config::new(&path)
            .flush_workers(1)
            .compaction_workers(1)
            .open()
            .map_err(|source| QueueError::Storage { path: path.clone(), source })?;
        let torn_bytes_dropped = journal::bytes_dropped(&written_ends).map_err(io)?;

        let store = Arc::new(Store::open(path.clone(), keyspace, config.entries_max)?);
        let entries = store.count_entries()?;
        let next_seq = store.next_seq()?;
        let recovery = Recovery { entries, torn_bytes_dropped };
        if torn_bytes_dropped > 0 {
            tracing::warn!(
                torn_bytes_dropped,
                path = %journals.display(),
                "queue journal had a torn tail; recovery dropped it (an enqueue that was never answered)"
            );
        }
        tracing::info!(entries, next_seq, "queue opened");

        let (requests, receiver) = mpsc::channel(config.waiting_entries_max);
        let writer_store = Arc::clone(&store);
        let group_commit_entries_max = config.group_commit_entries_max;
        let writer = std::thread::Builder::new()
            .name("rananeeti-queue-writer".to_string())
            .spawn(move || writer::run(writer_store, receiver, next_seq, group_commit_entries_max))
            .map_err(io)?;
        Ok(Queue { inner: Arc::new(Inner { store, requests: Some(requests), writer: Some(writer), recovery }) })
    }

    pub fn recovery(&self) -> Recovery {
        self.inner.recovery
    }

    /// Durable when it returns `Ok`: written and fsynced. Concurrent callers share one fsync.
    /// The same id twice (also twice within one group) gives `AlreadyQueued`, never two entries.
    /// Waits (without blocking the runtime) while `waiting_entries_max` requests are waiting.
    /// If the future is dropped after the request was handed over, the entry may still be written.
    pub async fn enqueue(&self, id: [u8; 20], enqueued_at_ms: i64, body: Vec<u8>) -> Result<Enqueued, QueueError> {
        if body.len() > ENTRY_BODY_BYTES_MAX {
            return Err(QueueError::BodyTooLarge { body_bytes: body.len(), body_bytes_max: ENTRY_BODY_BYTES_MAX });
        }
        let requests = self.inner.requests.as_ref().expect("requests is only taken when dropping");
        let (reply, answer) = oneshot::channel();
        let request = Request { id, enqueued_at_ms, body, reply };
        requests.send(request).await.map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// False once the writer thread has stopped (after a failed commit): enqueues then fail with
    /// `Closed`, and the node should be taken out of service.
    pub fn writer_alive(&self) -> bool {
        self.inner.requests.as_ref().is_some_and(|requests| !requests.is_closed())
    }

    pub fn get(&self, id: &[u8; 20]) -> Result<Option<Entry>, QueueError> {
        self.inner.store.get(id)
    }

    /// Up to `limit` entries with seq > `after` (or from the start when `None`), in seq order.
    /// Entries whose value fails its checksum are skipped (see `corrupt_entries`).
    pub fn peek(&self, after: Option<u64>, limit: usize) -> Result<Vec<Entry>, QueueError> {
        self.inner.store.peek(after, limit)
    }

    /// Removes entries (by seq and id) once applied; entries already gone are skipped. Not
    /// fsynced: an entry that reappears after a crash is applied again and deduplicated by the
    /// platform.
    pub fn remove(&self, entries: &[Entry]) -> Result<(), QueueError> {
        self.inner.store.remove(entries).map(|_| ())
    }

    /// Entries found corrupt (their value fails its checksum), by seq with the reason: every read
    /// skips them, and they stay on disk for an operator. Counted in `depth`.
    pub fn corrupt_entries(&self) -> Vec<(u64, String)> {
        self.inner.store.corrupt_entries()
    }

    /// Entries in the queue.
    pub fn depth(&self) -> u64 {
        self.inner.store.depth.load(Ordering::Acquire)
    }

    /// When the first readable entry in seq order was enqueued; `None` when there is none (or
    /// the queue cannot be read, which is logged).
    pub fn oldest_enqueued_at_ms(&self) -> Option<i64> {
        match self.inner.store.oldest_enqueued_at_ms() {
            Ok(oldest) => oldest,
            Err(error) => {
                tracing::warn!(%error, "cannot read the oldest queue entry");
                None
            }
        }
    }

    /// Persists the writer made (one per group commit), for metrics and benchmarks.
    pub fn fsyncs_total(&self) -> u64 {
        self.inner.store.fsyncs_total.load(Ordering::Relaxed)
    }

    /// Up to `limit` entries from the start, in seq order, for status listings.
    pub fn list(&self, limit: usize) -> Result<Vec<Entry>, QueueError> {
        self.inner.store.peek(None, limit)
    }
}
