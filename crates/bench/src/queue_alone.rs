//! The node's fallback queue driven directly, without HTTP or the platform: what group commit
//! does on its own, to tell the queue's cost from the rest of the pending path.

use crate::baseline::queue_entry_body;
use crate::tally::Tally;
use anyhow::Context;
use rananeeti_queue::{Queue, QueueConfig};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one cell measured: the tally and the fsyncs the queue did for it.
pub struct QueueAloneCell {
    pub tally: Tally,
    pub fsyncs: u64,
}

/// `concurrency` tasks enqueueing distinct entries back to back, for `warmup` and then for the
/// measured `duration`, into a fresh queue in `dir` with the node's default limits.
pub async fn run(
    dir: &Path,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<QueueAloneCell> {
    assert!(concurrency > 0, "a cell needs at least one worker");
    let limits = rananeeti::config::Config::default().queue;
    let queue = Queue::open(QueueConfig {
        dir: dir.to_path_buf(),
        group_commit_entries_max: limits.group_commit_entries_max,
        waiting_entries_max: limits.waiting_entries_max,
        entries_max: limits.entries_max,
    })
    .with_context(|| format!("opening a queue in {}", dir.display()))?;
    let queue = Arc::new(queue);
    let sequence = Arc::new(AtomicU64::new(0));
    enqueue_for(&queue, concurrency, warmup, &sequence).await;
    let fsyncs_before = queue.fsyncs_total();
    let tally = enqueue_for(&queue, concurrency, duration, &sequence).await;
    let fsyncs = queue.fsyncs_total() - fsyncs_before;
    Ok(QueueAloneCell { tally, fsyncs })
}

async fn enqueue_for(queue: &Arc<Queue>, concurrency: usize, duration: Duration, sequence: &Arc<AtomicU64>) -> Tally {
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let queue = Arc::clone(queue);
        let sequence = Arc::clone(sequence);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < duration {
                let sequence = sequence.fetch_add(1, Ordering::Relaxed);
                let mut id = [0u8; 20];
                id[..8].copy_from_slice(&sequence.to_be_bytes());
                let sent = Instant::now();
                match queue.enqueue(id, 0, queue_entry_body(sequence)).await {
                    Ok(_) => tally.record_ok(sent.elapsed()),
                    Err(error) => tally.record_error(format!("enqueue failed: {error}")),
                }
            }
            tally
        }));
    }
    crate::tally::gather(workers, started).await
}
