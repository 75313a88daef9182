//! An open-loop load generator: starts operations at a fixed rate whether or not the earlier
//! ones have answered (so a slow answer does not slow the offered load), up to a bound on
//! operations in flight; an operation due while the bound is reached is shed and counted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How often the generator wakes to start the operations that have come due (tokio's timer
/// resolution); at 2,500/s that is 2 or 3 operations per tick.
const TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug)]
pub struct OpenLoopPlan {
    pub rate_per_second: f64,
    pub duration: Duration,
    /// Operations in flight at most; beyond it, due operations are shed.
    pub in_flight_max: usize,
}

/// What the generator offered, and how long until the last operation finished.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offered {
    /// Operations that came due (`rate × duration`).
    pub offered: u64,
    /// Due operations not started because `in_flight_max` were in flight.
    pub shed: u64,
    /// From the first operation to the last one's end.
    pub elapsed: Duration,
}

/// Runs `operation(n)` for n = 0, 1, 2, ... at `plan.rate_per_second` for `plan.duration`, each
/// as its own task; returns what was offered and every started operation's result.
pub async fn run<T, F, Fut>(plan: OpenLoopPlan, mut operation: F) -> (Offered, Vec<T>)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    assert!(plan.rate_per_second > 0.0, "an open loop needs a positive rate");
    assert!(plan.in_flight_max > 0, "an open loop needs room for one operation in flight");
    let in_flight = Arc::new(Semaphore::new(plan.in_flight_max));
    let mut tasks = JoinSet::new();
    let mut results = Vec::with_capacity((plan.rate_per_second * plan.duration.as_secs_f64()) as usize + 1);
    let mut offered = Offered::default();
    let mut ticker = tokio::time::interval(TICK);
    // After a stall, catch up at once: the schedule is the rate, not the ticks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed().min(plan.duration);
        let due = (elapsed.as_secs_f64() * plan.rate_per_second) as u64;
        while offered.offered < due {
            match Arc::clone(&in_flight).try_acquire_owned() {
                Ok(permit) => {
                    let future = operation(offered.offered);
                    tasks.spawn(async move {
                        let result = future.await;
                        drop(permit);
                        result
                    });
                }
                Err(_) => offered.shed += 1,
            }
            offered.offered += 1;
        }
        while let Some(finished) = tasks.try_join_next() {
            results.push(finished.expect("an open-loop operation panicked"));
        }
        if elapsed >= plan.duration {
            break;
        }
    }
    while let Some(finished) = tasks.join_next().await {
        results.push(finished.expect("an open-loop operation panicked"));
    }
    offered.elapsed = started.elapsed();
    (offered, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offers_rate_times_duration_and_sheds_beyond_the_bound() {
        let plan = OpenLoopPlan { rate_per_second: 1000.0, duration: Duration::from_millis(100), in_flight_max: 1 };
        // The first operation holds the only place for the whole run: every later one is shed.
        let (offered, results) = run(plan, |n| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            n
        })
        .await;
        assert_eq!(offered.offered, 100);
        assert_eq!(offered.shed, 99);
        assert_eq!(results, vec![0]);
    }
}
