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
pub struct RegionLabels {
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub region: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone)]
pub struct PlatformMetrics {
    pub region_sync_wait: Family<PeerLabels, Histogram>,
    pub region_sync_unconfirmed: Counter,
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
    pub queue_capacity: Gauge,
    pub queue_disk_usage: Gauge,
    pub queue_filesystem_avail: Gauge,
    pub queue_filesystem_size: Gauge,
    pub lease_held: Gauge,
    pub acting_regions: Gauge,
    pub owner_epochs: Family<RegionLabels, Gauge>,
    pub task_restarts: Family<crate::tasks::TaskLabels, Counter>,
}

impl PlatformMetrics {
    pub fn new(registry: &mut Registry) -> PlatformMetrics {
        let metrics = PlatformMetrics {
            region_sync_wait: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
            region_sync_unconfirmed: Counter::default(),
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
            queue_capacity: Gauge::default(),
            queue_disk_usage: Gauge::default(),
            queue_filesystem_avail: Gauge::default(),
            queue_filesystem_size: Gauge::default(),
            lease_held: Gauge::default(),
            acting_regions: Gauge::default(),
            owner_epochs: Family::default(),
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
        platform.register(
            "region_sync_wait_seconds",
            "How long a region-sync write waited for a peer region to hold it, by the peer that did first",
            metrics.region_sync_wait.clone(),
        );
        platform.register(
            "region_sync_unconfirmed",
            "Region-sync writes no peer region confirmed within the budget: answered pending",
            metrics.region_sync_unconfirmed.clone(),
        );
        platform.register("store_pool_rebuilds", "Store pools rebuilt after an outage", metrics.pool_rebuilds.clone());
        platform.register(
            "queue_capacity_entries",
            "Most entries the fallback queue holds (queue.entries_max); past it writes are refused",
            metrics.queue_capacity.clone(),
        );
        platform.register(
            "queue_disk_usage_bytes",
            "Bytes the fallback queue's files take on disk",
            metrics.queue_disk_usage.clone(),
        );
        platform.register(
            "queue_filesystem_avail_bytes",
            "Bytes still free for the node on the filesystem holding the fallback queue",
            metrics.queue_filesystem_avail.clone(),
        );
        platform.register(
            "queue_filesystem_size_bytes",
            "Size of the filesystem holding the fallback queue",
            metrics.queue_filesystem_size.clone(),
        );
        platform.register(
            "ownership_lease_held",
            "1 while this node holds the ownership lease (a majority of the voters answered within lease_ms)",
            metrics.lease_held.clone(),
        );
        platform.register(
            "ownership_acting_regions",
            "Regions whose global and home writes this node's region applies, in this node's view",
            metrics.acting_regions.clone(),
        );
        platform.register(
            "ownership_epoch",
            "Epoch of each region's ownership row in this node's view (it grows at each failover)",
            metrics.owner_epochs.clone(),
        );
        metrics
    }
}
