//! The results as one markdown document: machine, tables, targets, notes.

use crate::machine::Machine;
use crate::node::MemoryReport;
use crate::tally::Summary;
use std::fmt::Write;

/// The pending path must beat one-fsync-per-write by this factor at the highest concurrency.
pub const PENDING_RATIO_TARGET: f64 = 5.0;
/// The node's peak resident memory must stay under this many bytes (100 MB).
pub const NODE_RSS_BYTES_MAX: u64 = 100_000_000;

/// How the numbers were made, printed with them so a saved report stands alone.
const METHOD: [&str; 9] = [
    "One `rananeeti node` process over loopback, default configuration except `[cafe] seats_per_slot = 1000000`; \
     it logs JSON at info level to a file. The node, PostgreSQL and the load generator share the machine's cores.",
    "A cell: N workers (tokio tasks, one reqwest client) each post reservations back to back for the cell's time \
     after a warm-up; every body is distinct (name, notes, and the slot, one minute apart), so none is a duplicate. \
     Rates count only the expected answer (201 on the committed path, 202 on the pending path); other 2xx are \
     listed; errors are non-2xx answers and failed requests. Latency is per request at the client, nearest rank.",
    "Committed baseline: the same N workers, through a writer pool built by the platform's `Store` with the \
     node's defaults (8 connections; SQLite WAL, synchronous=FULL), each doing BEGIN; INSERT of one row into a \
     table shaped like cafe_reservations; COMMIT. Run right after the node's cell, on the same store.",
    "The platform alone: the node's write path built in the benchmark's process as `rananeeti node` builds it \
     (default configuration, the cafe's handler), driven through `cafe::service::place` as the API handler is, \
     on a database of its own on the same store; it splits the gap into HTTP and the platform's own work.",
    "Pending baseline: FsyncPerWrite (crates/queue/src/baseline.rs), one file behind a mutex shared by N threads: \
     a single log like the node's one queue, without group commit. Records are the size of a queued command. \
     One file per worker is shown at the highest concurrency: there the filesystem merges concurrent fsyncs.",
    "The queue alone: `Queue::enqueue` from N tasks on a fresh queue with the node's limits, no HTTP, no platform.",
    "Entries per fsync: 202 answers divided by the queue's group commits (`fsyncs_total` of GET /admin/queue).",
    "Drain: with {\"db\":\"down\"}, a fixed number of reservations is queued at the highest concurrency; then \
     {\"db\":\"up\"} and GET /admin/queue every 10 ms until depth 0. The time includes the breaker's open \
     interval (1 s) before the drainer tries the store again; afterwards the store's rows are counted against \
     what the node acknowledged (201, or 202 and drained).",
    "Memory: VmRSS of the node from /proc/PID/status every 100 ms from start to stop; VmHWM is the kernel's peak.",
];

pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub started_at: String,
    /// `git describe` of the sources the benchmark was built from, when known.
    pub code_version: Option<String>,
    pub took_seconds: f64,
    /// Median latency of one append + fsync, at the start and at the end of the run.
    pub fsync_probe_ms: [Option<f64>; 2],
    /// How busy the CPUs were (0 to 1) over a second just before and just after the run, with
    /// nothing of the benchmark running: other work on the machine.
    pub busy_outside_run: [Option<f64>; 2],
    pub stores: Vec<StoreResults>,
    pub notes: Vec<String>,
}

pub struct StoreResults {
    pub store: &'static str,
    pub committed: Vec<CommittedCell>,
    pub pending: Vec<PendingCell>,
    pub drain: Drain,
    pub memory: MemoryReport,
    /// Entries left in the node's queue when it was stopped (the pending path's, never drained).
    pub queue_depth_at_stop: u64,
}

/// CPU used during a cell, in cores (CPU seconds per second of the cell).
#[derive(Clone, Copy, Debug)]
pub struct CpuUse {
    pub node_cores: Option<f64>,
    pub load_generator_cores: Option<f64>,
}

impl CpuUse {
    fn describe(&self) -> String {
        let cores = |value: Option<f64>| value.map(|cores| format!("{cores:.2}")).unwrap_or_else(|| "?".to_string());
        format!("{} / {}", cores(self.node_cores), cores(self.load_generator_cores))
    }
}

pub struct CommittedCell {
    pub concurrency: usize,
    pub node: Summary,
    pub cpu: CpuUse,
    pub baseline: Summary,
    /// The node's write path in this process, without HTTP (`cafe::service::place`).
    pub platform_alone: Option<Summary>,
}

pub struct PendingCell {
    pub concurrency: usize,
    pub node: Summary,
    pub cpu: CpuUse,
    /// Queue fsyncs the node did during the cell (from GET /admin/queue).
    pub queue_fsyncs: u64,
    /// FsyncPerWrite at the same concurrency, one file behind a mutex: the baseline.
    pub shared_file: Summary,
    /// FsyncPerWrite at the same concurrency, one file per worker (measured at the highest
    /// concurrency only).
    pub file_per_worker: Option<Summary>,
    /// The node's queue at the same concurrency, without HTTP or the platform.
    pub queue_alone: Option<QueueAlone>,
}

/// The queue measured alone, and the fsyncs it did meanwhile.
pub struct QueueAlone {
    pub summary: Summary,
    pub fsyncs: u64,
}

pub struct Drain {
    pub entries: u64,
    pub seconds: f64,
    /// When the depth was first seen to drop, from clearing the fault (the breaker's open time
    /// and the drainer's idle pause come first).
    pub started_after_seconds: Option<f64>,
    /// Entries still queued when the drain timed out; 0 when it finished.
    pub remaining: u64,
    /// Rows in the store's reservation table after the drain, and how many were acknowledged
    /// (201, or 202 and since drained) by then.
    pub rows: i64,
    pub rows_expected: u64,
}

impl Drain {
    /// Entries drained per second, from clearing the fault.
    pub fn entries_per_second(&self) -> f64 {
        per_second(self.entries - self.remaining, self.seconds)
    }

    /// Entries drained per second once the first one left the queue.
    pub fn entries_per_second_draining(&self) -> f64 {
        per_second(self.entries - self.remaining, self.seconds - self.started_after_seconds.unwrap_or(0.0))
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn entries_per_fsync(entries: u64, fsyncs: u64) -> String {
    if fsyncs > 0 {
        format!("{:.1}", entries as f64 / fsyncs as f64)
    } else {
        "-".to_string()
    }
}

fn ratio(ours: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}x", ours / baseline)
    } else {
        "n/a".to_string()
    }
}

pub(crate) fn ms(value: Option<f64>) -> String {
    match value {
        Some(value) if value < 10.0 => format!("{value:.2}"),
        Some(value) => format!("{value:.1}"),
        None => "-".to_string(),
    }
}

pub(crate) fn rate(value: f64) -> String {
    format!("{value:.0}")
}

fn megabytes(kib: u64) -> String {
    format!("{:.1} MB", (kib * 1024) as f64 / 1e6)
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        crate::machine::RunHeader {
            title: "rananeeti benchmark",
            machine: &self.machine,
            files: Some("queue, SQLite, PostgreSQL, baselines"),
            busy_outside_run: self.busy_outside_run,
            code: self.code_version.clone().unwrap_or_else(|| "unknown".into()),
            command: &self.command,
            mode: Some(&self.mode),
            started: Some((&self.started_at, self.took_seconds)),
        }
        .write(&mut out);
        let _ = writeln!(
            out,
            "- Disk: one small append + fsync takes {} ms (median) at the start of the run, {} ms at the end\n",
            ms(self.fsync_probe_ms[0]),
            ms(self.fsync_probe_ms[1])
        );

        let _ = writeln!(out, "## Committed path: reservations/s answered 201 (store up)\n");
        let _ = writeln!(
            out,
            "| store | concurrency | node, HTTP /s | p50 ms | p99 ms | errors node / baselines | other 2xx | CPU cores node / load gen. | baseline, sqlx insert /s | baseline p50 ms | baseline p99 ms | ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.committed {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.node.ok_per_second),
                    ms(cell.node.p50_ms),
                    ms(cell.node.p99_ms),
                    format_args!(
                        "{} / {}",
                        cell.node.errors,
                        cell.baseline.errors + cell.platform_alone.as_ref().map(|summary| summary.errors).unwrap_or(0)
                    ),
                    cell.node.other,
                    cell.cpu.describe(),
                    rate(cell.baseline.ok_per_second),
                    ms(cell.baseline.p50_ms),
                    ms(cell.baseline.p99_ms),
                    ratio(cell.node.ok_per_second, cell.baseline.ok_per_second),
                );
            }
        }

        let _ = writeln!(out, "\n### Where the committed path's time goes\n");
        let _ = writeln!(
            out,
            "| store | concurrency | node, HTTP /s (p50 ms) | platform alone, no HTTP /s (p50 ms) | one-row insert, direct sqlx /s (p50 ms) | HTTP's share: node / platform alone | the platform's share: platform alone / insert |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.committed {
                let Some(platform) = &cell.platform_alone else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.node.ok_per_second),
                    ms(cell.node.p50_ms),
                    rate(platform.ok_per_second),
                    ms(platform.p50_ms),
                    rate(cell.baseline.ok_per_second),
                    ms(cell.baseline.p50_ms),
                    ratio(cell.node.ok_per_second, platform.ok_per_second),
                    ratio(platform.ok_per_second, cell.baseline.ok_per_second),
                );
            }
        }

        let _ = writeln!(out, "\n## Pending path: reservations/s answered 202 (store down)\n");
        let _ = writeln!(
            out,
            "| store | concurrency | node, HTTP /s | p50 ms | p99 ms | errors | other 2xx | CPU cores node / load gen. | entries per queue fsync | baseline, FsyncPerWrite one file + mutex /s | ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.pending {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.node.ok_per_second),
                    ms(cell.node.p50_ms),
                    ms(cell.node.p99_ms),
                    cell.node.errors,
                    cell.node.other,
                    cell.cpu.describe(),
                    entries_per_fsync(cell.node.ok, cell.queue_fsyncs),
                    rate(cell.shared_file.ok_per_second),
                    ratio(cell.node.ok_per_second, cell.shared_file.ok_per_second),
                );
            }
        }

        let _ = writeln!(out, "\n### The queue alone, and the baselines in detail\n");
        let _ = writeln!(
            out,
            "| store run | concurrency | queue alone (no HTTP) /s | p50 ms | p99 ms | entries per fsync | FsyncPerWrite one file + mutex /s | p50 ms | p99 ms | FsyncPerWrite one file per worker /s | errors |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.pending {
                let errors = cell.queue_alone.as_ref().map(|queue| queue.summary.errors).unwrap_or(0)
                    + cell.shared_file.errors
                    + cell.file_per_worker.as_ref().map(|summary| summary.errors).unwrap_or(0);
                let queue = |value: fn(&QueueAlone) -> String| {
                    cell.queue_alone.as_ref().map(value).unwrap_or_else(|| "-".to_string())
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    store.store,
                    cell.concurrency,
                    queue(|queue| rate(queue.summary.ok_per_second)),
                    queue(|queue| ms(queue.summary.p50_ms)),
                    queue(|queue| ms(queue.summary.p99_ms)),
                    queue(|queue| entries_per_fsync(queue.summary.ok, queue.fsyncs)),
                    rate(cell.shared_file.ok_per_second),
                    ms(cell.shared_file.p50_ms),
                    ms(cell.shared_file.p99_ms),
                    cell.file_per_worker
                        .as_ref()
                        .map(|summary| rate(summary.ok_per_second))
                        .unwrap_or_else(|| "-".to_string()),
                    errors,
                );
            }
        }

        let _ = writeln!(out, "\n## Drain after the outage\n");
        let _ =
            writeln!(out, "| store | queued entries | seconds to depth 0 | entries/s | depth first fell after s | entries/s from then | rows in store / acknowledged |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
        for store in &self.stores {
            let drain = &store.drain;
            let seconds = if drain.remaining == 0 {
                format!("{:.2}", drain.seconds)
            } else {
                format!("gave up after {:.0} ({} left)", drain.seconds, drain.remaining)
            };
            let rows = if drain.rows as u64 == drain.rows_expected {
                format!("{} / {} (all there)", drain.rows, drain.rows_expected)
            } else {
                format!("{} / {} (MISMATCH)", drain.rows, drain.rows_expected)
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                store.store,
                drain.entries,
                seconds,
                rate(drain.entries_per_second()),
                drain.started_after_seconds.map(|seconds| format!("{seconds:.2}")).unwrap_or_else(|| "-".to_string()),
                rate(drain.entries_per_second_draining()),
                rows
            );
        }

        let _ = writeln!(out, "\n## Node memory over the whole run\n");
        let _ = writeln!(out, "| store | peak VmRSS (sampled every 100 ms) | VmHWM (kernel's peak) | samples | entries in the queue at the end |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for store in &self.stores {
            let memory = &store.memory;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                store.store,
                megabytes(memory.peak_rss_kib),
                megabytes(memory.high_water_kib),
                memory.samples,
                store.queue_depth_at_stop
            );
        }

        let _ = writeln!(out, "\n## Targets\n");
        for store in &self.stores {
            if let Some(cell) = store.pending.iter().max_by_key(|cell| cell.concurrency) {
                let baseline = cell.shared_file.ok_per_second;
                let factor = if baseline > 0.0 { cell.node.ok_per_second / baseline } else { 0.0 };
                let _ = writeln!(
                    out,
                    "- {}: pending path at concurrency {} is {:.2}x FsyncPerWrite, one file + mutex (target {:.0}x): {}",
                    store.store,
                    cell.concurrency,
                    factor,
                    PENDING_RATIO_TARGET,
                    if factor >= PENDING_RATIO_TARGET { "met" } else { "NOT met" }
                );
                if let Some(queue) = &cell.queue_alone {
                    let _ = writeln!(
                        out,
                        "  (the queue alone, without HTTP: {} at the same concurrency, {} entries per fsync)",
                        ratio(queue.summary.ok_per_second, baseline),
                        entries_per_fsync(queue.summary.ok, queue.fsyncs)
                    );
                }
            }
            let peak_bytes = store.memory.peak_rss_kib.max(store.memory.high_water_kib) * 1024;
            let _ = writeln!(
                out,
                "- {}: node peak memory {} (target under 100 MB): {}",
                store.store,
                megabytes(peak_bytes / 1024),
                if peak_bytes < NODE_RSS_BYTES_MAX { "met" } else { "NOT met" }
            );
        }

        bullets(&mut out, "## Method", &METHOD);
        bullets(&mut out, "## Notes from this run", &self.notes);
        out
    }
}

/// A heading and one bullet per line, as every report ends (nothing when there are no lines).
pub fn bullets<Line: std::fmt::Display>(out: &mut String, heading: &str, lines: &[Line]) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{heading}\n");
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
}
