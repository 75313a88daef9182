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
    /// FsyncPerWrite with one shared file, by concurrency.
    pub fsync_shared: Vec<(usize, Summary)>,
    /// FsyncPerWrite with one file per worker, by concurrency.
    pub fsync_per_worker: Vec<(usize, Summary)>,
    pub stores: Vec<StoreResults>,
    pub notes: Vec<String>,
}

pub struct StoreResults {
    pub store: &'static str,
    pub committed: Vec<CommittedCell>,
    pub pending: Vec<PendingCell>,
    pub drain: Drain,
    pub memory: MemoryReport,
}

pub struct CommittedCell {
    pub concurrency: usize,
    pub node: Summary,
    pub baseline: Summary,
}

pub struct PendingCell {
    pub concurrency: usize,
    pub node: Summary,
    /// Queue fsyncs the node did during the cell (from GET /admin/queue).
    pub queue_fsyncs: u64,
}

pub struct Drain {
    pub entries: u64,
    pub seconds: f64,
    /// Entries still queued when the drain timed out; 0 when it finished.
    pub remaining: u64,
    /// Rows in the store's reservation table after the drain, and how many were acknowledged
    /// (201, or 202 and since drained) by then.
    pub rows: i64,
    pub rows_expected: u64,
}

impl Drain {
    pub fn entries_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.entries - self.remaining) as f64 / self.seconds
        } else {
            0.0
        }
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

fn find(cells: &[(usize, Summary)], concurrency: usize) -> Option<&Summary> {
    cells.iter().find(|(cell_concurrency, _)| *cell_concurrency == concurrency).map(|(_, summary)| summary)
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let _ = writeln!(out, "# rananeeti benchmark\n");
        let _ = writeln!(out, "- Machine: {} cores, {}, {}", machine.cores, machine.cpu_model, machine.kernel);
        let _ = writeln!(out, "- Files (queue, SQLite, PostgreSQL, baselines): {}", machine.filesystem);
        let _ = writeln!(out, "- Command: `{}`", self.command);
        let _ = writeln!(out, "- Mode: {}", self.mode);
        let _ = writeln!(out, "- Started {} UTC, took {:.0} s\n", self.started_at, self.took_seconds);

        let _ = writeln!(out, "## Committed path: reservations/s answered 201 (store up)\n");
        let _ = writeln!(
            out,
            "| store | concurrency | node, HTTP /s | p50 ms | p99 ms | errors | other 2xx | baseline, sqlx insert /s | baseline p50 ms | baseline p99 ms | ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.committed {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.node.ok_per_second),
                    ms(cell.node.p50_ms),
                    ms(cell.node.p99_ms),
                    cell.node.errors + cell.baseline.errors,
                    cell.node.other,
                    rate(cell.baseline.ok_per_second),
                    ms(cell.baseline.p50_ms),
                    ms(cell.baseline.p99_ms),
                    ratio(cell.node.ok_per_second, cell.baseline.ok_per_second),
                );
            }
        }

        let _ = writeln!(out, "\n## Pending path: reservations/s answered 202 (store down)\n");
        let _ = writeln!(
            out,
            "| store | concurrency | node, HTTP /s | p50 ms | p99 ms | errors | other 2xx | entries per queue fsync | baseline, FsyncPerWrite one file + mutex /s | ratio | FsyncPerWrite one file per worker /s | ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        for store in &self.stores {
            for cell in &store.pending {
                let shared = find(&self.fsync_shared, cell.concurrency);
                let per_worker = find(&self.fsync_per_worker, cell.concurrency);
                let shared_rate = shared.map(|summary| summary.ok_per_second).unwrap_or(0.0);
                let per_worker_rate = per_worker.map(|summary| summary.ok_per_second).unwrap_or(0.0);
                let entries_per_fsync = if cell.queue_fsyncs > 0 {
                    format!("{:.1}", cell.node.ok as f64 / cell.queue_fsyncs as f64)
                } else {
                    "-".to_string()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    store.store,
                    cell.concurrency,
                    rate(cell.node.ok_per_second),
                    ms(cell.node.p50_ms),
                    ms(cell.node.p99_ms),
                    cell.node.errors + shared.map(|summary| summary.errors).unwrap_or(0),
                    cell.node.other,
                    entries_per_fsync,
                    rate(shared_rate),
                    ratio(cell.node.ok_per_second, shared_rate),
                    rate(per_worker_rate),
                    ratio(cell.node.ok_per_second, per_worker_rate),
                );
            }
        }
        let _ = writeln!(out, "\nFsyncPerWrite latency, one file + mutex (p50 / p99 ms):");
        for (concurrency, summary) in &self.fsync_shared {
            let _ = write!(out, " c={concurrency}: {} / {};", ms(summary.p50_ms), ms(summary.p99_ms));
        }
        let _ = writeln!(out);

        let _ = writeln!(out, "\n## Drain after the outage\n");
        let _ =
            writeln!(out, "| store | queued entries | seconds to depth 0 | entries/s | rows in store / acknowledged |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|");
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
                "| {} | {} | {} | {} | {} |",
                store.store,
                drain.entries,
                seconds,
                rate(drain.entries_per_second()),
                rows
            );
        }

        let _ = writeln!(out, "\n## Node memory over the whole run\n");
        let _ = writeln!(out, "| store | peak VmRSS (sampled every 100 ms) | VmHWM (kernel's peak) | samples |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for store in &self.stores {
            let memory = &store.memory;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                store.store,
                megabytes(memory.peak_rss_kib),
                megabytes(memory.high_water_kib),
                memory.samples
            );
        }

        let _ = writeln!(out, "\n## Targets\n");
        for store in &self.stores {
            if let Some(cell) = store.pending.iter().max_by_key(|cell| cell.concurrency) {
                let baseline =
                    find(&self.fsync_shared, cell.concurrency).map(|summary| summary.ok_per_second).unwrap_or(0.0);
                let factor = if baseline > 0.0 { cell.node.ok_per_second / baseline } else { 0.0 };
                let _ = writeln!(
                    out,
                    "- {}: pending path at concurrency {} is {:.2}x FsyncPerWrite (target {:.0}x): {}",
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
