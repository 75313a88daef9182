//! Turns at SQLite's write lock, for the nodes that share one database file.
//!
//! SQLite lets one writer in at a time; a writer that finds the file locked sleeps in SQLite's
//! busy handler, whose naps grow to 100 ms, and under steady writes from another process it keeps
//! waking to a lock taken again (the other node's next write starts microseconds after its last
//! commit). Checkouts through two nodes on one file had a p99 of 330 ms that way. Here the
//! writers of a process queue on a mutex (in order), and the processes on a `flock` of a file
//! beside the database, which the kernel hands over the moment it is released. Both are only a
//! queue in front of SQLite's own lock, which still decides: a turn that cannot be had within the
//! wait limit (a frozen node holding it) goes on without one, to SQLite's busy handler as before.
//!
//! Written here because it is forty lines over `std::fs::File::lock` and a tokio mutex; the crates
//! for file locks add a dependency for the same two calls.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct WriteGate {
    /// None for PostgreSQL (concurrent writers are its business) and in-memory SQLite.
    sqlite: Option<SqliteGate>,
}

struct SqliteGate {
    local: Arc<tokio::sync::Mutex<()>>,
    file: Arc<File>,
    wait_max: Duration,
    /// A blocking thread is waiting for the file lock for a turn that stopped waiting: no second
    /// one is started, so a frozen holder costs at most one thread.
    waiter_pending: Arc<AtomicBool>,
}

/// A write turn: held until the transaction ends.
pub struct WriteTurn {
    // Fields drop in order: the file lock goes before the next writer of this process may start.
    _file: Option<FileTurn>,
    _local: Option<tokio::sync::OwnedMutexGuard<()>>,
}

struct FileTurn(Arc<File>);

impl Drop for FileTurn {
    fn drop(&mut self) {
        if let Err(error) = self.0.unlock() {
            tracing::warn!(%error, "write gate: releasing the file lock failed");
        }
    }
}

impl WriteGate {
    pub(crate) fn none() -> WriteGate {
        WriteGate { sqlite: None }
    }

    /// A gate for the SQLite database at `database`: its lock file is `DATABASE-writer`. When the
    /// lock file cannot be opened, the gate is only the in-process queue (and says why).
    pub(crate) fn sqlite(database: &Path, wait_max: Duration) -> WriteGate {
        let mut name = database.as_os_str().to_owned();
        name.push("-writer");
        let lock_path = PathBuf::from(name);
        match OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path) {
            Ok(file) => WriteGate {
                sqlite: Some(SqliteGate {
                    local: Arc::new(tokio::sync::Mutex::new(())),
                    file: Arc::new(file),
                    wait_max,
                    waiter_pending: Arc::new(AtomicBool::new(false)),
                }),
            },
            Err(error) => {
                tracing::warn!(%error, path = %lock_path.display(), "write gate: no lock file; writers queue in SQLite");
                WriteGate::none()
            }
        }
    }

    /// Waits for this process's turn, then for the file's.
    pub(crate) async fn turn(&self) -> WriteTurn {
        let Some(gate) = &self.sqlite else { return WriteTurn { _file: None, _local: None } };
        let local = gate.local.clone().lock_owned().await;
        WriteTurn { _file: gate.file_turn().await, _local: Some(local) }
    }
}

impl SqliteGate {
    async fn file_turn(&self) -> Option<FileTurn> {
        match self.file.try_lock() {
            Ok(()) => return Some(FileTurn(self.file.clone())),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(error)) => {
                tracing::warn!(%error, "write gate: the file lock failed; writing without a turn");
                return None;
            }
        }
        if self.waiter_pending.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let file = self.file.clone();
        let pending = self.waiter_pending.clone();
        tokio::task::spawn_blocking(move || {
            let locked = file.lock();
            pending.store(false, Ordering::Release);
            if locked.is_ok() {
                // Dropped (and so released) when nobody waits for it any more.
                let _ = sender.send(FileTurn(file));
            }
        });
        match tokio::time::timeout(self.wait_max, receiver).await {
            Ok(Ok(turn)) => Some(turn),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_process_waits_for_the_turn_and_gets_it_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("store.db");
        // Two gates on one file stand for two processes: flock locks belong to open files.
        let first = WriteGate::sqlite(&database, Duration::from_secs(5));
        let second = WriteGate::sqlite(&database, Duration::from_secs(5));
        let held = first.turn().await;
        assert!(held._file.is_some());
        let waiting = tokio::spawn(async move {
            let turn = second.turn().await;
            turn._file.is_some()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the second waits while the first holds the turn");
        drop(held);
        assert!(tokio::time::timeout(Duration::from_secs(2), waiting).await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_turn_not_had_in_time_goes_on_without_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("store.db");
        let first = WriteGate::sqlite(&database, Duration::from_secs(5));
        let second = WriteGate::sqlite(&database, Duration::from_millis(50));
        let _held = first.turn().await;
        let turn = second.turn().await;
        assert!(turn._file.is_none() && turn._local.is_some());
        drop(turn);
        // Still held elsewhere: the next turn does not start a second waiting thread.
        assert!(second.turn().await._file.is_none());
    }
}
