//! Replication lag seen from outside: a watcher polls the receiving side's database for the rows
//! the sending side acknowledged, by primary key, and records when each first became visible.

use sqlx::{AnyPool, Row};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watcher polls. Visibility is known to within one interval (plus the query's own
/// time): a lag is measured to the start of the first query that saw the row.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Ids looked up per poll, the oldest acknowledged first. Above the node's replication batch
/// (256 entries, applied in one transaction), so a whole batch is seen by the same poll.
const IDS_PER_POLL_MAX: usize = 512;

/// One acknowledged write the watcher waits for.
struct Expected {
    id: String,
    acknowledged: Instant,
    /// Its lag counts (a 201, or a committed insert); otherwise only its arrival is checked
    /// (a 202: the write was queued, not committed, when it was answered).
    timed: bool,
}

#[derive(Default)]
struct Shared {
    inbox: Vec<Expected>,
    /// Set when no more writes will be expected: the watcher stops once all arrived, or then.
    finish_by: Option<Instant>,
}

/// What a watcher saw, once finished.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Lag of every timed write that arrived, in microseconds.
    pub lags_us: Vec<u64>,
    /// Untimed writes (202s) that arrived.
    pub untimed_arrived: u64,
    /// Writes still not visible when the watcher gave up.
    pub missing: Vec<String>,
    pub polls: u64,
    pub poll_errors: u64,
    pub first_poll_error: Option<String>,
    /// The most writes waited for at once: how far the receiving side fell behind.
    pub waiting_max: usize,
}

impl Arrivals {
    /// The `percent` percentile of the lags in milliseconds (nearest rank).
    pub fn lag_percentile_ms(&mut self, percent: f64) -> Option<f64> {
        assert!((0.0..=100.0).contains(&percent), "a percentile is 0 to 100, not {percent}");
        if self.lags_us.is_empty() {
            return None;
        }
        self.lags_us.sort_unstable();
        let rank = ((percent / 100.0) * self.lags_us.len() as f64).ceil() as usize;
        Some(self.lags_us[rank.clamp(1, self.lags_us.len()) - 1] as f64 / 1000.0)
    }

    pub fn merge(&mut self, other: Arrivals) {
        self.lags_us.extend(other.lags_us);
        self.untimed_arrived += other.untimed_arrived;
        self.missing.extend(other.missing);
        self.polls += other.polls;
        self.poll_errors += other.poll_errors;
        if self.first_poll_error.is_none() {
            self.first_poll_error = other.first_poll_error;
        }
        self.waiting_max = self.waiting_max.max(other.waiting_max);
    }
}

/// Polls `table` (with a TEXT primary key `id`) through `pool` until told to finish.
pub struct Watcher {
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<Arrivals>,
}

impl Watcher {
    pub fn start(pool: AnyPool, table: &'static str) -> Watcher {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(watch(pool, table, Arc::clone(&shared)));
        Watcher { shared, task }
    }

    /// A handle the writers use to say what to wait for.
    pub fn expectations(&self) -> Expectations {
        Expectations { shared: Arc::clone(&self.shared) }
    }

    /// No more writes will be expected: waits until every expected one arrived, or `timeout`.
    pub async fn finish(self, timeout: Duration) -> Arrivals {
        lock(&self.shared).finish_by = Some(Instant::now() + timeout);
        self.task.await.expect("a lag watcher panicked")
    }
}

#[derive(Clone)]
pub struct Expectations {
    shared: Arc<Mutex<Shared>>,
}

impl Expectations {
    /// The write `id` was acknowledged at `acknowledged`; `timed`: see `Expected::timed`.
    pub fn expect(&self, id: String, acknowledged: Instant, timed: bool) {
        // The lookup pads its unused places with '': an empty id would match them.
        assert!(!id.is_empty(), "a watched id is not empty");
        lock(&self.shared).inbox.push(Expected { id, acknowledged, timed });
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `SELECT id FROM table WHERE id IN ($1, ..., $IDS_PER_POLL_MAX)`: always the same statement, so
/// it is prepared once per connection; unused places are bound to '' (no id is empty).
fn membership_sql(table: &str) -> String {
    let places: Vec<String> = (1..=IDS_PER_POLL_MAX).map(|place| format!("${place}")).collect();
    format!("SELECT id FROM {table} WHERE id IN ({})", places.join(", "))
}

async fn watch(pool: AnyPool, table: &'static str, shared: Arc<Mutex<Shared>>) -> Arrivals {
    let sql = membership_sql(table);
    let mut arrivals = Arrivals::default();
    let mut waiting: VecDeque<Expected> = VecDeque::new();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let finish_by = {
            let mut shared = lock(&shared);
            waiting.extend(shared.inbox.drain(..));
            shared.finish_by
        };
        arrivals.waiting_max = arrivals.waiting_max.max(waiting.len());
        match finish_by {
            Some(_) if waiting.is_empty() => break,
            Some(deadline) if Instant::now() >= deadline => break,
            _ if waiting.is_empty() => continue,
            _ => {}
        }
        let looked_up = waiting.len().min(IDS_PER_POLL_MAX);
        let polled_at = Instant::now();
        let mut query = sqlx::query(&sql);
        for expected in waiting.iter().take(looked_up) {
            query = query.bind(expected.id.clone());
        }
        for _ in looked_up..IDS_PER_POLL_MAX {
            query = query.bind(String::new());
        }
        arrivals.polls += 1;
        let found: HashSet<String> = match query.fetch_all(&pool).await {
            Ok(rows) => rows.iter().filter_map(|row| row.try_get::<String, _>("id").ok()).collect(),
            Err(error) => {
                arrivals.poll_errors += 1;
                if arrivals.first_poll_error.is_none() {
                    arrivals.first_poll_error = Some(error.to_string());
                }
                continue;
            }
        };
        let head: Vec<Expected> = waiting.drain(..looked_up).collect();
        let mut still_waiting = Vec::with_capacity(head.len());
        for expected in head {
            if !found.contains(&expected.id) {
                still_waiting.push(expected);
            } else if expected.timed {
                // The row was visible when this query's snapshot was taken, at `polled_at` or
                // just after; it was acknowledged before the query was built.
                let lag = polled_at.saturating_duration_since(expected.acknowledged);
                arrivals.lags_us.push(lag.as_micros() as u64);
            } else {
                arrivals.untimed_arrived += 1;
            }
        }
        for expected in still_waiting.into_iter().rev() {
            waiting.push_front(expected);
        }
    }
    // Whatever came in after the last poll was never looked for: it is missing too.
    waiting.extend(lock(&shared).inbox.drain(..));
    arrivals.missing = waiting.into_iter().map(|expected| expected.id).collect();
    arrivals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_percentiles_use_the_nearest_rank() {
        let mut arrivals = Arrivals { lags_us: (1..=100).rev().map(|ms| ms * 1000).collect(), ..Arrivals::default() };
        assert_eq!(arrivals.lag_percentile_ms(50.0), Some(50.0));
        assert_eq!(arrivals.lag_percentile_ms(99.0), Some(99.0));
        assert_eq!(Arrivals::default().lag_percentile_ms(99.0), None);
    }
}
