//! Backups and disaster recovery (seed 004): consistent, portable exports of every region's
//! database and queued commands, compressed with zstd and encrypted with age to one or more
//! recipients, stored through `object_store`, with a manifest of SHA-256s and per-table
//! checksums; verify, restore into SQLite or PostgreSQL, and retention.
//!
//! The CLI (`rananeeti backup ...`) lives in the binary crate; this crate knows stores only by
//! URL and pool.

pub mod db;
pub mod format;
pub mod keys;
pub mod read_ahead;
pub mod repo;
pub mod retention;
pub mod spool;
mod sql;
pub mod sqlite;
