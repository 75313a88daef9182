//! The results as one markdown document: machine, tables, targets, notes.

use crate::machine::Machine;
use crate::node::MemoryReport;
use crate::tally::Summary;
use std::fmt::Write;

/// The pending path must beat one-fsync-per-write by this factor at the highest concurrency.
pub const PENDING_RATIO_TARGET: f64 = 5.0;
/// The node's peak resident memory must stay under this many bytes (100 MB).
pub const NODE_RSS_BYTES_MAX: u64 = 100_000_000;

pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub started_at: String,
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
    /// The node's whole transaction (dedup record, seat check, row) done directly with sqlx.
    pub node_transaction: Option<Summary>,
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
    pub queue_alone: Summary,
    pub queue_alone_fsyncs: u64,
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

fn ms(value: Option<f64>) -> String {
    match value {
        Some(value) if value < 10.0 => format!("{value:.2}"),
        Some(value) => format!("{value:.1}"),
        None => "-".to_string(),
    }
}

fn rate(value: f64) -> String {
    format!("{value:.0}")
}

fn megabytes(kib: u64) -> String {
    format!("{:.1} MB", (kib * 1024) as f64 / 1e6)
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let _ = writeln!(out, "# rananeeti benchmark\n");
        let _ = writeln!(out, "- Machine: {} cores, {}, {}", machine.cores, machine.cpu_model, machine.kernel);
        let _ = writeln!(out, "- Files (queue, SQLite, PostgreSQL, baselines): {}", machine.filesystem);
        let _ = writeln!(
            out,
            "- Disk: one small append + fsync takes {} ms (median) at the start of the run, {} ms at the end",
            ms(self.fsync_probe_ms[0]),
            ms(self.fsync_probe_ms[1])
        );
        let busy = |value: Option<f64>| value.map(|busy| format!("{:.0}%", busy * 100.0)).unwrap_or_else(|| "?".to_string());
        let _ = writeln!(
            out,
            "- Other work on the machine: CPUs {} busy in the second before the run, {} in the second after",
            busy(self.busy_outside_run[0]),
            busy(self.busy_outside_run[1])
        );
        let _ = writeln!(out, "- Command: `{}`", self.command);
        let _ = writeln!(out, "- Mode: {}", self.mode);
        let _ = writeln!(out, "- Started {} UTC, took {:.0} s\n", self.started_at, self.took_seconds);

        let _ = writeln!(out, "## Committed path: reservations/s answered 201 (store up)\n");
        let _ = writeln!(
            out,
            "| store | concurrency | node, HTTP /s | p50 ms | p99 ms | errors | other 2xx | CPU cores node / load gen. | baseline, sqlx insert /s | baseline p50 ms | baseline p99 ms | ratio |"
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
                    cell.node.errors
                        + cell.baseline.errors
                        + cell.node_transaction.as_ref().map(|summary| summary.errors).unwrap_or(0),
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
            "| store | concurrency | node, HTTP /s (p50 ms) | node's transaction, direct sqlx /s (p50 ms) | one-row insert, direct sqlx /s (p50 ms) | HTTP + platform: node / transaction | the node's SQL: transaction / insert |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.committed {
                let Some(transaction) = &cell.node_transaction else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.node.ok_per_second),
                    ms(cell.node.p50_ms),
                    rate(transaction.ok_per_second),
                    ms(transaction.p50_ms),
                    rate(cell.baseline.ok_per_second),
                    ms(cell.baseline.p50_ms),
                    ratio(cell.node.ok_per_second, transaction.ok_per_second),
                    ratio(transaction.ok_per_second, cell.baseline.ok_per_second),
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
                let errors = cell.queue_alone.errors
                    + cell.shared_file.errors
                    + cell.file_per_worker.as_ref().map(|summary| summary.errors).unwrap_or(0);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.queue_alone.ok_per_second),
                    ms(cell.queue_alone.p50_ms),
                    ms(cell.queue_alone.p99_ms),
                    entries_per_fsync(cell.queue_alone.ok, cell.queue_alone_fsyncs),
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

        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes from this run\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}
