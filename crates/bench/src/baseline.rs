//! The baselines the node is measured against: the same reservation insert done directly with
//! sqlx (no HTTP, no platform), and one fsync per queued write (`FsyncPerWrite`, no group commit).

use crate::tally::Tally;
use anyhow::Context;
use rananeeti_platform::Store;
use rananeeti_queue::FsyncPerWrite;
use serde_json::json;
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The table of the direct-insert baseline: the shape of the cafe's `cafe_reservations`.
const TABLE_DDL: [&str; 2] = [
    "CREATE TABLE bench_reservations (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        party_size BIGINT NOT NULL,
        slot TEXT NOT NULL,
        notes TEXT NOT NULL,
        hlc BIGINT NOT NULL
    )",
    "CREATE INDEX bench_reservations_slot ON bench_reservations (slot)",
];

/// The node's writer pool for `url`, built by the platform's own `Store` with the node's default
/// configuration: same connection limit, timeouts, and SQLite pragmas (WAL, synchronous=FULL).
pub fn pool(url: &str) -> anyhow::Result<AnyPool> {
    let store = Store::open(crate::platform_alone::store_config(url), Vec::new()).context("opening a baseline pool")?;
    Ok(store.writer())
}

/// Creates the baseline's table.
pub async fn create_table(pool: &AnyPool) -> anyhow::Result<()> {
    for statement in TABLE_DDL {
        pool.execute(statement).await.context("creating the baseline table")?;
    }
    Ok(())
}

/// Rows of the node's reservation table, to check that nothing acknowledged was lost.
pub async fn count_reservations(pool: &AnyPool) -> anyhow::Result<i64> {
    let row: (i64,) = sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM cafe_reservations")
        .fetch_one(pool)
        .await
        .context("counting cafe_reservations")?;
    Ok(row.0)
}

/// `concurrency` tasks, each inserting one reservation row per transaction
/// (BEGIN; INSERT; COMMIT) back to back, for `duration`.
pub async fn run_inserts(pool: &AnyPool, concurrency: usize, duration: Duration, sequence: &Arc<AtomicU64>) -> Tally {
    assert!(concurrency > 0, "a cell needs at least one worker");
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let pool = pool.clone();
        let sequence = Arc::clone(sequence);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < duration {
                let sequence = sequence.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match insert_one(&pool, sequence).await {
                    Ok(()) => tally.record_ok(sent.elapsed()),
                    Err(error) => tally.record_error(format!("insert failed: {error}")),
                }
            }
            tally
        }));
    }
    crate::tally::gather(workers, started).await
}

/// A time slot for the `sequence`th row: one minute after another, as the load generator's are.
fn slot_of(sequence: u64) -> String {
    let first = time::macros::datetime!(2030-01-01 00:00);
    let slot = first + time::Duration::minutes((sequence % crate::load::SLOTS) as i64);
    slot.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]")).expect("a slot formats")
}

/// The id of the `sequence`th row: 40 hex digits, like a command id.
pub fn id_of(sequence: u64) -> String {
    format!("{sequence:040x}")
}

/// One reservation row in its own transaction (BEGIN; INSERT; COMMIT); its id is `sequence` as
/// 40 hex digits (`id_of`).
pub async fn insert_one(pool: &AnyPool, sequence: u64) -> Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "INSERT INTO bench_reservations (id, name, party_size, slot, notes, hlc) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id_of(sequence))
    .bind(format!("bench baseline {sequence}"))
    .bind(1 + (sequence % 4) as i64)
    .bind(slot_of(sequence))
    .bind(format!("load generator request {sequence}, table by the window if free"))
    .bind(sequence as i64)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await
}

/// How the fsync-per-write baseline spreads concurrent writers over files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileLayout {
    /// One log behind a mutex, like the node's one queue: writers wait for each other's fsync.
    SharedFile,
    /// One log per writer: the filesystem may merge concurrent fsyncs in one journal commit.
    FilePerWorker,
}

/// `concurrency` threads appending queue-entry-sized records through `FsyncPerWrite`, one fsync
/// per record, for `duration`. Files go in `dir`.
pub fn run_fsync_per_write(
    dir: &Path,
    layout: FileLayout,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Tally> {
    assert!(concurrency > 0, "a cell needs at least one worker");
    let writers: Vec<Arc<Mutex<FsyncPerWrite>>> = match layout {
        FileLayout::SharedFile => {
            let path = dir.join("fsync-per-write.log");
            vec![Arc::new(Mutex::new(
                FsyncPerWrite::create(&path).with_context(|| format!("creating {}", path.display()))?,
            ))]
        }
        FileLayout::FilePerWorker => (0..concurrency)
            .map(|worker| {
                let path = dir.join(format!("fsync-per-write-{worker}.log"));
                FsyncPerWrite::create(&path)
                    .map(|writer| Arc::new(Mutex::new(writer)))
                    .with_context(|| format!("creating {}", path.display()))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let sequence = AtomicU64::new(0);
    let started = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|worker| {
                let writer = Arc::clone(&writers[worker % writers.len()]);
                let sequence = &sequence;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    while started.elapsed() < duration {
                        let body = queue_entry_body(sequence.fetch_add(1, Ordering::Relaxed));
                        let sent = Instant::now();
                        let appended = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).append(&body);
                        match appended {
                            Ok(()) => tally.record_ok(sent.elapsed()),
                            Err(error) => tally.record_error(format!("append failed: {error}")),
                        }
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a baseline writer panicked")).collect()
    });
    let mut tally = Tally::default();
    for worker_tally in tallies {
        tally.merge(worker_tally);
    }
    tally.elapsed = started.elapsed();
    Ok(tally)
}

/// A record the size and shape of what the node queues: a serialized reservation command.
pub fn queue_entry_body(sequence: u64) -> Vec<u8> {
    let command = json!({
        "kind": "cafe.reserve",
        "id": format!("{sequence:040x}"),
        "payload": {
            "name": format!("bench baseline {sequence}"),
            "party_size": 1 + sequence % 4,
            "time": "2030-06-01T19:30",
            "notes": format!("load generator request {sequence}, table by the window if free"),
        },
        "origin_region": "r1",
        "origin_node": "r1-n1",
        "hlc": sequence,
    });
    serde_json::to_vec(&command).expect("a JSON value serializes")
}
