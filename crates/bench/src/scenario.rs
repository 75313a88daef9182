//! One store's run: start the store and a node, then the committed path beside the sqlx
//! baseline (and the platform alone), an outage and its drain, and the pending path beside
//! FsyncPerWrite (and the queue alone); stop everything.

use crate::baseline::{self, FileLayout};
use crate::load::{self, Reservations, Stop};
use crate::node::{cpu_seconds, NodeProcess};
use crate::report::{CommittedCell, CpuUse, Drain, PendingCell, QueueAlone, StoreResults};
use crate::tally::{Summary, Tally};
use crate::{platform_alone, queue_alone};
use anyhow::{bail, Context};
use rananeeti::postgres::{free_loopback_port, PgCluster};
use rananeeti_platform::StoreKind;
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The concurrencies every path is measured at.
pub const CONCURRENCIES: [usize; 3] = [1, 8, 32];
/// Timeout of one HTTP request of the load generator (the node answers within its 2 s budget).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the load generator's client keeps per host: one per worker at most.
const CLIENT_IDLE_CONNECTIONS_MAX: usize = 64;
/// How long the drain may take before the benchmark reports it unfinished.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the drain's progress is logged.
const DRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the queue depth is read while draining.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The PostgreSQL database of the in-process platform.
const PLATFORM_ALONE_DATABASE: &str = "bench_platform_alone";

/// How long each cell runs, and how big the outage is.
#[derive(Clone, Debug)]
pub struct Plan {
    pub cell: Duration,
    pub warmup: Duration,
    /// Reservations queued during the outage whose drain is timed.
    pub drain_entries: u64,
    /// RUST_LOG for the node; `None` runs it with its default filter (info, JSON to stdout).
    pub node_rust_log: Option<String>,
}

/// Where the node, the baseline and the in-process platform keep their data for one store kind.
struct StoreUnderTest {
    /// Without a password: the node reads it from `password_file`.
    node_url: String,
    password_file: Option<std::path::PathBuf>,
    /// With its password (in this process only).
    baseline_url: String,
    /// A database of its own, so the node's rows can be counted after the drain.
    platform_alone_url: String,
    /// Stopped when dropped.
    cluster: Option<PgCluster>,
}

async fn start_store(kind: StoreKind, dir: &Path) -> anyhow::Result<StoreUnderTest> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match kind {
        StoreKind::Sqlite => Ok(StoreUnderTest {
            node_url: format!("sqlite://{}?mode=rwc", dir.join("node.db").display()),
            password_file: None,
            baseline_url: format!("sqlite://{}?mode=rwc", dir.join("baseline.db").display()),
            platform_alone_url: format!("sqlite://{}?mode=rwc", dir.join("platform-alone.db").display()),
            cluster: None,
        }),
        StoreKind::Postgres => {
            let cluster_dir = dir.join("cluster");
            let cluster = tokio::task::spawn_blocking(move || {
                let port = free_loopback_port().context("finding a free loopback port")?;
                PgCluster::init_and_start(&cluster_dir, port)
            })
            .await??;
            // Same database, own table: the baseline pays for the same server and WAL.
            let platform_alone = cluster.add_database(PLATFORM_ALONE_DATABASE)?;
            Ok(StoreUnderTest {
                node_url: cluster.url(),
                password_file: Some(cluster.password_file()),
                baseline_url: cluster.connect_url()?,
                platform_alone_url: rananeeti::postgres::connect_url(&platform_alone, Some(&cluster.password_file()))?,
                cluster: Some(cluster),
            })
        }
    }
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

fn describe(label: &str, concurrency: usize, summary: &Summary) {
    progress(format!(
        "{label} c={concurrency}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}, other {}",
        summary.ok_per_second,
        summary.p50_ms.unwrap_or(0.0),
        summary.p99_ms.unwrap_or(0.0),
        summary.errors,
        summary.other
    ));
    if let Some(error) = &summary.first_error {
        progress(format!("  first error: {error}"));
    }
}

fn describe_cpu(cpu: &CpuUse) {
    progress(format!(
        "  CPU: node {} cores, load generator {} cores",
        cores(cpu.node_cores),
        cores(cpu.load_generator_cores)
    ));
}

fn cores(value: Option<f64>) -> String {
    value.map(|cores| format!("{cores:.2}")).unwrap_or_else(|| "?".to_string())
}

/// What the node acknowledged, so the store can be checked after the drain.
#[derive(Default)]
struct Acknowledged {
    committed: u64,
    pending: u64,
}

impl Acknowledged {
    /// Counts a cell whose `ok` answers were `ok_status`; the other one may be among `other`.
    fn add(&mut self, tally: &Tally, ok_status: StatusCode) {
        let other = |code: &str| tally.other.get(code).copied().unwrap_or(0);
        let ok_is_committed = ok_status == StatusCode::CREATED;
        self.committed += other("201") + if ok_is_committed { tally.ok } else { 0 };
        self.pending += other("202") + if ok_is_committed { 0 } else { tally.ok };
    }
}

/// Runs one measured HTTP cell and the CPU the node and this process used meanwhile.
async fn measured_cell(
    node: &NodeProcess,
    client: &reqwest::Client,
    concurrency: usize,
    duration: Duration,
    expected: StatusCode,
    reservations: &Arc<Reservations>,
) -> (Tally, CpuUse) {
    let node_entry = node.pid().to_string();
    let before = (cpu_seconds(&node_entry), cpu_seconds("self"));
    let tally =
        load::run(client, &node.reservations_url(), concurrency, Stop::After(duration), expected, reservations).await;
    let after = (cpu_seconds(&node_entry), cpu_seconds("self"));
    let seconds = tally.elapsed.as_secs_f64().max(f64::EPSILON);
    let cores = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / seconds);
    (tally, CpuUse { node_cores: cores(before.0, after.0), load_generator_cores: cores(before.1, after.1) })
}

pub async fn run(
    kind: StoreKind,
    plan: &Plan,
    node_binary: &Path,
    dir: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<StoreResults> {
    let store = start_store(kind, &dir.join("store")).await?;
    let result = run_with_store(kind, plan, node_binary, dir, &store, notes).await;
    if let Some(cluster) = store.cluster {
        // pg_ctl stop blocks; keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
    }
    result
}

async fn run_with_store(
    kind: StoreKind,
    plan: &Plan,
    node_binary: &Path,
    dir: &Path,
    store: &StoreUnderTest,
    notes: &mut Vec<String>,
) -> anyhow::Result<StoreResults> {
    let name = kind.as_str();
    let password_args: Vec<String> = match &store.password_file {
        Some(file) => vec!["--store-password-file".to_string(), file.display().to_string()],
        None => Vec::new(),
    };
    let node = NodeProcess::start_with(
        node_binary,
        &dir.join("node"),
        &store.node_url,
        plan.node_rust_log.as_deref(),
        "127.0.0.1:0",
        &password_args,
    )
    .await?;
    progress(format!("{name}: node {} up at {}", node.pid(), node.reservations_url()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENT_IDLE_CONNECTIONS_MAX)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let url = node.reservations_url();
    let reservations = Arc::new(Reservations::new());
    let mut acknowledged = Acknowledged::default();

    // The committed path, each cell followed at once by the same insert done directly, so both
    // see the same disk and the same neighbours (fsync latency on a shared VM disk drifts).
    let concurrency_max = *CONCURRENCIES.last().expect("concurrencies are listed");
    let pool = baseline::pool(&store.baseline_url)?;
    baseline::create_table(&pool).await?;
    let platform = platform_alone::start(&store.platform_alone_url, &dir.join("platform-alone-queue")).await?;
    let sequence = Arc::new(AtomicU64::new(0));
    let mut committed = Vec::new();
    for concurrency in CONCURRENCIES {
        let warmup =
            load::run(&client, &url, concurrency, Stop::After(plan.warmup), StatusCode::CREATED, &reservations).await;
        acknowledged.add(&warmup, StatusCode::CREATED);
        let (tally, cpu) =
            measured_cell(&node, &client, concurrency, plan.cell, StatusCode::CREATED, &reservations).await;
        acknowledged.add(&tally, StatusCode::CREATED);
        let node_summary = tally.summary();
        describe(&format!("{name} committed"), concurrency, &node_summary);
        describe_cpu(&cpu);

        baseline::run_inserts(&pool, concurrency, plan.warmup, &sequence).await;
        let baseline_summary = baseline::run_inserts(&pool, concurrency, plan.cell, &sequence).await.summary();
        describe(&format!("{name} sqlx baseline"), concurrency, &baseline_summary);
        // The node's write path without HTTP: at the ends only, to keep the run short.
        let platform_alone = if concurrency == CONCURRENCIES[0] || concurrency == concurrency_max {
            platform_alone::run(&platform, concurrency, plan.warmup, &reservations).await;
            let summary = platform_alone::run(&platform, concurrency, plan.cell, &reservations).await.summary();
            describe(&format!("{name} platform alone"), concurrency, &summary);
            Some(summary)
        } else {
            None
        };
        committed.push(CommittedCell {
            concurrency,
            node: node_summary,
            cpu,
            baseline: baseline_summary,
            platform_alone,
        });
    }
    pool.close().await;
    drop(platform);

    // An outage of a fixed size, then its drain.
    node.set_db("down").await?;
    let fill =
        load::run(&client, &url, concurrency_max, Stop::Count(plan.drain_entries), StatusCode::ACCEPTED, &reservations)
            .await;
    acknowledged.add(&fill, StatusCode::ACCEPTED);
    if fill.errors > 0 {
        notes.push(format!(
            "{name}: {} errors while queueing the outage's reservations; first: {}",
            fill.errors,
            fill.first_error.as_deref().unwrap_or("-")
        ));
    }
    let queued = node.queue().await?.depth;
    progress(format!("{name}: {queued} reservations queued during the outage; store back up"));
    let cleared = Instant::now();
    node.set_db("up").await?;
    let mut remaining = queued;
    let mut started_after = None;
    let mut next_report = DRAIN_REPORT_INTERVAL;
    while remaining > 0 && cleared.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
        remaining = node.queue().await?.depth;
        if remaining < queued && started_after.is_none() {
            started_after = Some(cleared.elapsed());
        }
        if cleared.elapsed() >= next_report {
            progress(format!("{name}: draining, {remaining} left after {:.1} s", cleared.elapsed().as_secs_f64()));
            next_report += DRAIN_REPORT_INTERVAL;
        }
    }
    let drain_seconds = cleared.elapsed().as_secs_f64();
    let rows = {
        let pool = baseline::pool(&store.baseline_url)?;
        let rows = baseline::count_reservations(&pool).await?;
        pool.close().await;
        rows
    };
    let drain = Drain {
        entries: queued,
        seconds: drain_seconds,
        started_after_seconds: started_after.map(|elapsed| elapsed.as_secs_f64()),
        remaining,
        rows,
        rows_expected: acknowledged.committed + acknowledged.pending,
    };
    progress(format!(
        "{name}: drained {} entries in {:.2} s ({:.0}/s), depth first fell after {:.2} s; {} rows in the store, {} acknowledged",
        queued - remaining,
        drain_seconds,
        drain.entries_per_second(),
        drain.started_after_seconds.unwrap_or(0.0),
        rows,
        drain.rows_expected
    ));
    if remaining > 0 {
        notes.push(format!("{name}: the drain did not finish within {} s", DRAIN_TIMEOUT.as_secs()));
    } else if rows as u64 != drain.rows_expected {
        notes.push(format!(
            "{name}: after the drain the store holds {rows} reservations but {} were acknowledged",
            drain.rows_expected
        ));
    }

    // The pending path: the store down, every reservation queued; each cell followed at once by
    // FsyncPerWrite at the same concurrency, on the same disk.
    node.set_db("down").await?;
    let fsync_dir = dir.join("fsync-per-write");
    let mut pending = Vec::new();
    for concurrency in CONCURRENCIES {
        load::run(&client, &url, concurrency, Stop::After(plan.warmup), StatusCode::ACCEPTED, &reservations).await;
        let fsyncs_before = node.queue().await?.fsyncs_total;
        let (tally, cpu) =
            measured_cell(&node, &client, concurrency, plan.cell, StatusCode::ACCEPTED, &reservations).await;
        let fsyncs_after = node.queue().await?.fsyncs_total;
        let summary = tally.summary();
        describe(&format!("{name} pending"), concurrency, &summary);
        describe_cpu(&cpu);

        let shared_file = fsync_per_write(&fsync_dir, FileLayout::SharedFile, concurrency, plan).await?;
        describe(&format!("{name} FsyncPerWrite, one file + mutex"), concurrency, &shared_file);
        // Above concurrency 1 only: there is nothing to group at 1, and the run stays short.
        let queue_alone = if concurrency > 1 {
            let queue_dir = dir.join(format!("queue-alone-{concurrency}"));
            let cell = queue_alone::run(&queue_dir, concurrency, plan.warmup, plan.cell).await?;
            let summary = cell.tally.summary();
            describe(&format!("{name} queue alone"), concurrency, &summary);
            Some(QueueAlone { summary, fsyncs: cell.fsyncs })
        } else {
            None
        };
        // Only at the highest concurrency: it shows what the filesystem merges by itself.
        let file_per_worker = if concurrency == concurrency_max {
            let summary = fsync_per_write(&fsync_dir, FileLayout::FilePerWorker, concurrency, plan).await?;
            describe(&format!("{name} FsyncPerWrite, file per worker"), concurrency, &summary);
            Some(summary)
        } else {
            None
        };
        pending.push(PendingCell {
            concurrency,
            node: summary,
            cpu,
            queue_fsyncs: fsyncs_after.saturating_sub(fsyncs_before),
            shared_file,
            file_per_worker,
            queue_alone,
        });
    }

    let queue_depth_at_stop = node.queue().await?.depth;
    let memory = node.stop()?;
    progress(format!("{name}: node stopped; peak VmRSS {} KiB over {} samples", memory.peak_rss_kib, memory.samples));
    if memory.samples == 0 {
        bail!("{name}: no memory sample of the node was taken");
    }
    Ok(StoreResults { store: name, committed, pending, drain, memory, queue_depth_at_stop })
}

/// One FsyncPerWrite cell after its warm-up, in fresh files under `dir`, off the runtime.
async fn fsync_per_write(dir: &Path, layout: FileLayout, concurrency: usize, plan: &Plan) -> anyhow::Result<Summary> {
    let cell_dir = dir.join(format!("{layout:?}-{concurrency}"));
    let (warmup, cell) = (plan.warmup, plan.cell);
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&cell_dir).with_context(|| format!("creating {}", cell_dir.display()))?;
        baseline::run_fsync_per_write(&cell_dir, layout, concurrency, warmup)?;
        Ok(baseline::run_fsync_per_write(&cell_dir, layout, concurrency, cell)?.summary())
    })
    .await?
}

/// The node binary: `--node-bin`, else `rananeeti` next to this executable.
pub fn node_binary_path(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--node-bin {}: no such file", path.display());
        }
        return Ok(path);
    }
    let path = std::env::current_exe().context("locating this executable")?.with_file_name("rananeeti");
    if !path.is_file() {
        bail!(
            "the node binary {} is missing: build it with `cargo build --release -p rananeeti` \
             (or pass --node-bin PATH)",
            path.display()
        );
    }
    Ok(path)
}
