//! The baselines the node is measured against: the same reservation insert done directly with
//! sqlx (no HTTP, no platform), and one fsync per queued write (`FsyncPerWrite`, no group commit).

use crate::tally::Tally;
use anyhow::Context;
use rananeeti_queue::FsyncPerWrite;
use serde_json::json;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
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

static INSTALL_DRIVERS: Once = Once::new();

/// Which store a pool talks to; SQLite gets the node's pragmas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// A pool set up as the node sets up its writer pool: same connection limit, same SQLite
/// durability pragmas (WAL, synchronous=FULL, busy_timeout), sqlx's `Any` driver.
pub async fn pool(kind: StoreKind, url: &str) -> anyhow::Result<AnyPool> {
    INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
    let defaults = rananeeti::config::Config::default().store;
    let busy_timeout_ms = defaults.busy_timeout_ms;
    AnyPoolOptions::new()
        .max_connections(defaults.connections_max)
        .acquire_timeout(Duration::from_millis(defaults.acquire_timeout_ms))
        .after_connect(move |connection, _meta| {
            Box::pin(async move {
                if kind == StoreKind::Sqlite {
                    connection.execute("PRAGMA journal_mode = WAL").await?;
                    connection.execute("PRAGMA synchronous = FULL").await?;
                    connection.execute(format!("PRAGMA busy_timeout = {busy_timeout_ms}").as_str()).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .context("connecting the baseline pool")
}

/// The node's two tables under other names, for `run_node_transactions`: the DDL is the node's
/// own migrations, renamed, so the shapes cannot drift apart.
const NODE_TABLES_RENAMED: [(&str, &str); 2] =
    [("rn_commands", "bench_node_commands"), ("cafe_reservations", "bench_node_reservations")];

/// Creates the baseline's table and the renamed copies of the node's tables.
pub async fn create_tables(pool: &AnyPool, kind: StoreKind) -> anyhow::Result<()> {
    for statement in TABLE_DDL {
        pool.execute(statement).await.context("creating the baseline table")?;
    }
    let migrations = rananeeti_platform::schema::MIGRATIONS.iter().chain(rananeeti_cafe::reserve::MIGRATIONS);
    for migration in migrations {
        let mut sql = match kind {
            StoreKind::Sqlite => migration.sqlite,
            StoreKind::Postgres => migration.postgres,
        }
        .to_string();
        for (table, renamed) in NODE_TABLES_RENAMED {
            sql = sql.replace(table, renamed);
        }
        for statement in sql.split(';').map(str::trim).filter(|statement| !statement.is_empty()) {
            pool.execute(statement)
                .await
                .with_context(|| format!("creating a copy of the node's tables: {statement}"))?;
        }
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
    let mut tally = Tally::default();
    for worker in workers {
        match worker.await {
            Ok(worker_tally) => tally.merge(worker_tally),
            Err(error) => tally.record_error(format!("worker panicked: {error}")),
        }
    }
    tally.elapsed = started.elapsed();
    tally
}

/// The node's whole apply transaction done directly, for telling the cost of its SQL from the
/// cost of HTTP and the platform: dedup record, seat check, reservation row, in one transaction.
/// The SQL is that of `rananeeti_platform`'s `insert_record` and `rananeeti_cafe::reserve`; keep
/// it in step with them.
pub async fn run_node_transactions(
    pool: &AnyPool,
    concurrency: usize,
    duration: Duration,
    sequence: &Arc<AtomicU64>,
) -> Tally {
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
                match node_transaction(&pool, sequence).await {
                    Ok(()) => tally.record_ok(sent.elapsed()),
                    Err(error) => tally.record_error(format!("transaction failed: {error}")),
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for worker in workers {
        match worker.await {
            Ok(worker_tally) => tally.merge(worker_tally),
            Err(error) => tally.record_error(format!("worker panicked: {error}")),
        }
    }
    tally.elapsed = started.elapsed();
    tally
}

async fn node_transaction(pool: &AnyPool, sequence: u64) -> Result<(), sqlx::Error> {
    let id = format!("{sequence:040x}");
    let name = format!("bench node transaction {sequence}");
    let party_size = 1 + (sequence % 4) as i64;
    let slot = slot_of(sequence);
    let notes = format!("load generator request {sequence}, table by the window if free");
    let payload = json!({ "name": name, "party_size": party_size, "time": slot, "notes": notes }).to_string();
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "INSERT INTO bench_node_commands (id, kind, status, reason, origin_region, origin_node, applied_region, \
         applied_node, hlc, payload, via_queue, applied_at_ms) \
         VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind("cafe.reserve")
    .bind("committed")
    .bind("r1")
    .bind("r1-n1")
    .bind("r1")
    .bind("r1-n1")
    .bind(sequence as i64)
    .bind(payload)
    .bind(0i64)
    .bind(sequence as i64)
    .execute(&mut *transaction)
    .await?;
    let _booked: (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(party_size), 0) AS BIGINT) AS seats FROM bench_node_reservations WHERE slot = $1",
    )
    .bind(&slot)
    .fetch_one(&mut *transaction)
    .await?;
    sqlx::query(
        "INSERT INTO bench_node_reservations (id, name, party_size, slot, notes, hlc) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&name)
    .bind(party_size)
    .bind(&slot)
    .bind(&notes)
    .bind(sequence as i64)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await
}

/// A time slot for the `sequence`th row: one minute after another, as the load generator's are.
fn slot_of(sequence: u64) -> String {
    let first = time::macros::datetime!(2030-01-01 00:00);
    let slot = first + time::Duration::minutes((sequence % crate::load::SLOTS) as i64);
    slot.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]")).expect("a slot formats")
}

async fn insert_one(pool: &AnyPool, sequence: u64) -> Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "INSERT INTO bench_reservations (id, name, party_size, slot, notes, hlc) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    // 40 hex digits, like a command id.
    .bind(format!("{sequence:040x}"))
    .bind(format!("bench baseline {sequence}"))
    .bind(1 + (sequence % 4) as i64)
    .bind(format!("2030-{:02}-{:02}T{:02}:{:02}", 1 + sequence % 12, 1 + sequence % 28, sequence % 24, sequence % 60))
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
