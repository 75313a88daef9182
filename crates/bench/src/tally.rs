//! What one benchmark cell counted: answers by kind, errors, latencies, and how long it ran.

use std::collections::BTreeMap;
use std::time::Duration;

/// Latency samples kept per cell; beyond it answers are still counted, latencies no longer kept.
const LATENCY_SAMPLES_MAX: usize = 4_000_000;

/// The answers of one cell. `ok` counts the answer the cell is about (201 on the committed path,
/// 202 on the pending path, a successful insert or append for the baselines).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// Other successful answers, by label (e.g. "202" on the committed path).
    pub other: BTreeMap<String, u64>,
    /// Non-2xx answers, transport failures, failed inserts or appends.
    pub errors: u64,
    /// The first error seen, for the progress log.
    pub first_error: Option<String>,
    latencies_us: Vec<u32>,
    pub elapsed: Duration,
}

impl Tally {
    pub fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        self.record_latency(latency);
    }

    pub fn record_other(&mut self, label: String, latency: Duration) {
        *self.other.entry(label).or_insert(0) += 1;
        self.record_latency(latency);
    }

    pub fn record_error(&mut self, error: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    fn record_latency(&mut self, latency: Duration) {
        if self.latencies_us.len() < LATENCY_SAMPLES_MAX {
            self.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// Folds the tally of another worker of the same cell into this one.
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (label, count) in other.other {
            *self.other.entry(label).or_insert(0) += count;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.truncate(LATENCY_SAMPLES_MAX);
    }

    /// `ok` answers per second of the cell's wall-clock time.
    pub fn ok_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }

    /// The `percent` percentile of the recorded latencies, in milliseconds (nearest rank).
    pub fn latency_percentile_ms(&mut self, percent: f64) -> Option<f64> {
        assert!((0.0..=100.0).contains(&percent), "a percentile is 0 to 100, not {percent}");
        if self.latencies_us.is_empty() {
            return None;
        }
        self.latencies_us.sort_unstable();
        let rank = ((percent / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        Some(self.latencies_us[index] as f64 / 1000.0)
    }

    /// The figures the report prints, computed once the cell is over.
    pub fn summary(mut self) -> Summary {
        Summary {
            ok: self.ok,
            ok_per_second: self.ok_per_second(),
            p50_ms: self.latency_percentile_ms(50.0),
            p99_ms: self.latency_percentile_ms(99.0),
            errors: self.errors,
            other: self.other_summary(),
            first_error: self.first_error,
        }
    }

    /// The other successful answers as "202: 3, 200: 1", or "0".
    pub fn other_summary(&self) -> String {
        if self.other.is_empty() {
            return "0".to_string();
        }
        self.other.iter().map(|(label, count)| format!("{label}: {count}")).collect::<Vec<_>>().join(", ")
    }
}

/// One cell as reported.
#[derive(Clone, Debug)]
pub struct Summary {
    pub ok: u64,
    pub ok_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    pub other: String,
    pub first_error: Option<String>,
}

/// Waits for every worker of a cell and merges their tallies; a worker that panicked counts as
/// an error. `elapsed` runs from `started` to the last worker's end.
pub async fn gather(workers: Vec<tokio::task::JoinHandle<Tally>>, started: std::time::Instant) -> Tally {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut tally = Tally::default();
        for ms in 1..=100 {
            tally.record_ok(Duration::from_millis(ms));
        }
        assert_eq!(tally.latency_percentile_ms(50.0), Some(50.0));
        assert_eq!(tally.latency_percentile_ms(99.0), Some(99.0));
        assert_eq!(tally.latency_percentile_ms(100.0), Some(100.0));
        assert_eq!(Tally::default().latency_percentile_ms(50.0), None);
    }
}
