//! The platform's Prometheus metrics (`rananeeti_<component>_<noun>_<unit>`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub region: String,
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct PlatformMetrics {
    pub forwards: Family<ForwardLabels, Counter>,
    pub submit_outcomes: Family<OutcomeLabels, Counter>,
    pub submit_duration: Histogram,
    pub store_up: Gauge,
    pub breaker_state: Gauge,
    pub queue_depth: Gauge,
    pub queue_corrupt_entries: Gauge,
    pub queue_oldest_age: Gauge<f64, AtomicU64>,
    pub queue_drained: Counter,
    pub queue_fsyncs: Counter,
    pub pool_rebuilds: Counter,
    pub queue_copy_failures: Counter,
    pub task_restarts: Family<crate::tasks::TaskLabels, Counter>,
}

impl PlatformMetrics {
    pub fn new(registry: &mut Registry) -> PlatformMetrics {
        let metrics = PlatformMetrics {
            forwards: Family::default(),
            submit_outcomes: Family::default(),
            submit_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            store_up: Gauge::default(),
            breaker_state: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_corrupt_entries: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_drained: Counter::default(),
            queue_fsyncs: Counter::default(),
            pool_rebuilds: Counter::default(),
            queue_copy_failures: Counter::default(),
            task_restarts: Family::default(),
        };
        let platform = registry.sub_registry_with_prefix("rananeeti");
        platform.register("submit_outcomes", "Submitted commands by outcome", metrics.submit_outcomes.clone());
        platform.register("submit_duration_seconds", "Time to answer a submit", metrics.submit_duration.clone());
        platform.register("store_up", "1 when the last store access succeeded", metrics.store_up.clone());
        platform.register(
            "store_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            metrics.breaker_state.clone(),
        );
        platform.register("queue_depth", "Entries in the fallback queue", metrics.queue_depth.clone());
        platform.register(
            "queue_corrupt_entries",
            "Fallback queue entries whose stored value fails its checksum: skipped, kept on disk for an operator",
            metrics.queue_corrupt_entries.clone(),
        );
        platform.register(
            "queue_oldest_age_seconds",
            "Age of the oldest fallback queue entry",
            metrics.queue_oldest_age.clone(),
        );
        platform.register("queue_drained", "Queue entries applied by the drainer", metrics.queue_drained.clone());
        platform.register("queue_fsyncs", "Fsyncs done by the queue writer", metrics.queue_fsyncs.clone());
        platform.register(
            "queue_copy_failures",
            "Queued commands whose copy to the peer node failed",
            metrics.queue_copy_failures.clone(),
        );
        platform.register(
            "forwards",
            "Owned writes sent to the region acting for their owner, by outcome",
            metrics.forwards.clone(),
        );
        platform.register(
            "task_restarts",
            "Background tasks (drainer, pullers, adopter, ownership) restarted after a panic",
            metrics.task_restarts.clone(),
        );
        platform.register("store_pool_rebuilds", "Store pools rebuilt after an outage", metrics.pool_rebuilds.clone());
        metrics
    }
}
