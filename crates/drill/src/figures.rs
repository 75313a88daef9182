//! Figures from the recorded requests: RTO, the longest run of failures, latency percentiles by
//! phase, answers by status, and the timeline the chart draws. Pure functions, no I/O.

use crate::workload::Sample;
use serde::Serialize;
use std::collections::BTreeMap;

/// The success rate the workload must be back above, and for how long, for the RTO.
pub(crate) const RECOVERED_SUCCESS_RATE: f64 = 0.99;
pub(crate) const RECOVERED_FOR_MS: u32 = 2000;
/// Step of the search for the recovery moment.
const RTO_STEP_MS: u32 = 50;
/// Width of one bar of the timeline.
pub(crate) const TIMELINE_BUCKET_MS: u32 = 500;

/// From the fault to the first moment after which the workload is back for good: every 2 s
/// window from then until the load ends holds 99% or more successful requests (so a dip that
/// starts late, or a second one at the heal, counts). Windows are the requests sent in them,
/// searched in 50 ms steps. `None`: the load ended before that.
pub(crate) fn rto_ms(samples: &[Sample], fault_ms: u32, load_end_ms: u32) -> Option<u32> {
    debug_assert!(samples.windows(2).all(|pair| pair[0].start_ms <= pair[1].start_ms), "samples sorted by start");
    let good = |at: u32| {
        let from = samples.partition_point(|sample| sample.start_ms < at);
        let to = samples.partition_point(|sample| sample.start_ms < at + RECOVERED_FOR_MS);
        let window = &samples[from..to];
        let succeeded = window.iter().filter(|sample| sample.answer.succeeded()).count();
        succeeded as f64 >= RECOVERED_SUCCESS_RATE * window.len() as f64
    };
    let last_start = load_end_ms.checked_sub(RECOVERED_FOR_MS)?;
    if last_start < fault_ms {
        return None;
    }
    // Walk back from the last window: the recovery is the step after the last bad window.
    let steps = (last_start - fault_ms) / RTO_STEP_MS;
    let mut recovered = None;
    for step in (0..=steps).rev() {
        let at = fault_ms + step * RTO_STEP_MS;
        if !good(at) {
            break;
        }
        recovered = Some(at - fault_ms);
    }
    recovered
}

/// The longest run of consecutive failed requests (in the order they were sent).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FailedRun {
    pub requests: usize,
    /// From the first one's start to the last one's answer (or giving up).
    pub seconds: f64,
    /// When the first one was sent, since the load started.
    pub from_seconds: Option<f64>,
}

pub(crate) fn longest_failed_run(samples: &[Sample]) -> FailedRun {
    let mut best = FailedRun::default();
    let mut run_start: Option<usize> = None;
    for (index, sample) in samples.iter().enumerate() {
        if sample.answer.succeeded() {
            run_start = None;
            continue;
        }
        let start = *run_start.get_or_insert(index);
        let requests = index - start + 1;
        if requests > best.requests {
            let first = samples[start].start_ms;
            let last_end = samples[start..=index].iter().map(Sample::end_ms).max().unwrap_or(first);
            best = FailedRun {
                requests,
                seconds: f64::from(last_end - first) / 1000.0,
                from_seconds: Some(f64::from(first) / 1000.0),
            };
        }
    }
    best
}

/// Latency percentiles of one phase, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: Option<u32>,
    pub p99_ms: Option<u32>,
    pub p999_ms: Option<u32>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], fraction: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub(crate) fn latency<'a>(samples: impl Iterator<Item = &'a Sample>) -> Latency {
    let mut values: Vec<u32> = samples.map(|sample| sample.latency_ms).collect();
    values.sort_unstable();
    Latency {
        requests: values.len(),
        p50_ms: percentile(&values, 0.50),
        p99_ms: percentile(&values, 0.99),
        p999_ms: percentile(&values, 0.999),
    }
}

/// Before the fault, while it is held, after it is healed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Phases<T> {
    pub before: T,
    pub during: T,
    pub after: T,
}

pub(crate) fn latency_by_phase(samples: &[Sample], fault_ms: u32, heal_ms: u32) -> Phases<Latency> {
    Phases {
        before: latency(samples.iter().filter(|sample| sample.start_ms < fault_ms)),
        during: latency(samples.iter().filter(|sample| (fault_ms..heal_ms).contains(&sample.start_ms))),
        after: latency(samples.iter().filter(|sample| sample.start_ms >= heal_ms)),
    }
}

/// How many requests got each answer ("201", "503", "timeout", "connection").
pub(crate) fn answers(samples: &[Sample]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for sample in samples {
        *counts.entry(sample.answer.label()).or_insert(0) += 1;
    }
    counts
}

/// The same, per kind of request (`reserve`, `checkout`, `read_books`, ...).
pub(crate) fn answers_by_request(samples: &[Sample]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for sample in samples {
        *counts.entry(sample.op.name().to_string()).or_default().entry(sample.answer.label()).or_insert(0) += 1;
    }
    counts
}

/// Latency per kind of request, over the whole load.
pub(crate) fn latency_by_request(samples: &[Sample]) -> BTreeMap<String, Latency> {
    let mut names: Vec<&'static str> = samples.iter().map(|sample| sample.op.name()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| (name.to_string(), latency(samples.iter().filter(|sample| sample.op.name() == name))))
        .collect()
}

/// Writes without one of the promised answers within `budget_ms` (docs/design.md promise 2:
/// committed, duplicate, pending, or refused with a reason): answered late, answered with a
/// server error, 408 or 429, or not answered at all.
pub(crate) fn writes_unanswered_within_budget(samples: &[Sample], budget_ms: u32) -> u64 {
    samples
        .iter()
        .filter(|sample| sample.op.is_write())
        .filter(|sample| sample.latency_ms > budget_ms || !sample.answer.succeeded())
        .count() as u64
}

/// One bar of the timeline: the requests sent in it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    pub from_seconds: f64,
    pub succeeded: u32,
    pub failed: u32,
    pub p50_ms: Option<u32>,
    pub p99_ms: Option<u32>,
    /// Commands waiting in every node's queue at the end of the bar (last seen).
    pub queue_depth: Option<u64>,
}

pub(crate) fn timeline(samples: &[Sample], load_end_ms: u32, queue: &[(u32, u64)]) -> Vec<Bucket> {
    let buckets = load_end_ms.div_ceil(TIMELINE_BUCKET_MS).max(1);
    (0..buckets)
        .map(|index| {
            let from = index * TIMELINE_BUCKET_MS;
            let to = from + TIMELINE_BUCKET_MS;
            let first = samples.partition_point(|sample| sample.start_ms < from);
            let last = samples.partition_point(|sample| sample.start_ms < to);
            let slice = &samples[first..last];
            let succeeded = slice.iter().filter(|sample| sample.answer.succeeded()).count() as u32;
            let latency = latency(slice.iter());
            let queue_depth = queue.iter().take_while(|(at, _)| *at < to).last().map(|(_, depth)| *depth);
            Bucket {
                from_seconds: f64::from(from) / 1000.0,
                succeeded,
                failed: slice.len() as u32 - succeeded,
                p50_ms: latency.p50_ms,
                p99_ms: latency.p99_ms,
                queue_depth,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Answer, Op};

    fn sample(start_ms: u32, ok: bool) -> Sample {
        Sample {
            start_ms,
            latency_ms: 10,
            op: Op::Reserve,
            answer: if ok { Answer::Status(201) } else { Answer::Status(503) },
        }
    }

    /// One request every 10 ms from 0 to `end_ms`, failing in `[fail_from, fail_to)`.
    fn load(end_ms: u32, fail_from: u32, fail_to: u32) -> Vec<Sample> {
        (0..end_ms / 10).map(|i| i * 10).map(|at| sample(at, !(fail_from..fail_to).contains(&at))).collect()
    }

    #[test]
    fn rto_is_zero_when_nothing_failed_and_the_end_of_the_failures_otherwise() {
        assert_eq!(rto_ms(&load(10_000, 0, 0), 3000, 10_000), Some(0));
        // Failures from 3.2 s to 4.1 s: the first 2 s window at 99% starts at 4.1 s (a window
        // may hold one failure in a hundred: 4.1 s - 20 ms is not enough at 50 ms steps).
        assert_eq!(rto_ms(&load(10_000, 3200, 4100), 3000, 10_000), Some(1100));
    }

    #[test]
    fn rto_counts_a_dip_that_starts_late_and_one_at_the_heal() {
        // Failures begin 5 s after the fault: not recovered before they end.
        assert_eq!(rto_ms(&load(20_000, 8000, 9000), 3000, 20_000), Some(6000));
        // A short blip right after the fault, and a longer dip later: the later one decides.
        let mut samples = load(20_000, 3000, 3050);
        for sample in samples.iter_mut().filter(|sample| (12_000..12_500).contains(&sample.start_ms)) {
            sample.answer = Answer::Status(503);
        }
        assert_eq!(rto_ms(&samples, 3000, 20_000), Some(9500));
    }

    #[test]
    fn rto_is_none_when_the_load_ends_before_recovery() {
        assert_eq!(rto_ms(&load(10_000, 3000, 10_000), 3000, 10_000), None);
    }

    #[test]
    fn longest_failed_run_counts_consecutive_failures() {
        let run = longest_failed_run(&load(1000, 200, 300));
        assert_eq!(run.requests, 10);
        assert_eq!(run.from_seconds, Some(0.2));
        assert!((run.seconds - 0.1).abs() < 1e-9, "{run:?}");
        assert_eq!(longest_failed_run(&load(1000, 0, 0)).requests, 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.5), Some(500));
        assert_eq!(percentile(&values, 0.99), Some(990));
        assert_eq!(percentile(&values, 0.999), Some(999));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.999), Some(7));
    }

    #[test]
    fn timeline_buckets_count_by_outcome() {
        let buckets = timeline(&load(1000, 500, 600), 1000, &[(100, 3), (700, 0)]);
        assert_eq!(buckets.len(), 2);
        assert_eq!((buckets[0].succeeded, buckets[0].failed), (50, 0));
        assert_eq!((buckets[1].succeeded, buckets[1].failed), (40, 10));
        assert_eq!(buckets[0].queue_depth, Some(3));
        assert_eq!(buckets[1].queue_depth, Some(0));
    }
}
