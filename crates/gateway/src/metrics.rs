//! The gateway's Prometheus metrics (`rananeeti_gateway_*`), per region and node.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub region: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub region: String,
    pub node: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: String,
}

#[derive(Clone)]
pub struct GatewayMetrics {
    pub responses: Family<ResponseLabels, Counter>,
    pub duration: Family<NodeLabels, Histogram>,
    pub retries: Family<ReasonLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub ejections: Family<NodeLabels, Counter>,
    pub health_changes: Family<NodeLabels, Counter>,
    pub node_healthy: Family<NodeLabels, Gauge>,
    pub node_drained: Family<NodeLabels, Gauge>,
    pub region_ready_nodes: Family<RegionLabels, Gauge>,
    pub in_flight: Gauge,
    pub backup: BackupMetrics,
}

/// `rananeeti_backup_*`, read from the backup schedule's status file at each scrape (the
/// gateway runs in `up`'s process, next to the schedule), in a registry of their own: exported
/// only while the file says a schedule runs.
#[derive(Clone, Default)]
pub struct BackupMetrics {
    pub interval: Gauge<f64, AtomicU64>,
    pub schedule_start: Gauge<f64, AtomicU64>,
    pub last_success: Gauge<f64, AtomicU64>,
    pub last_attempt: Gauge<f64, AtomicU64>,
    pub last_attempt_success: Gauge,
    pub last_verify: Gauge<f64, AtomicU64>,
    pub last_verify_success: Gauge,
}

impl GatewayMetrics {
    pub fn new(registry: &mut Registry) -> GatewayMetrics {
        let metrics = GatewayMetrics {
            responses: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))),
            retries: Family::default(),
            refused: Family::default(),
            ejections: Family::default(),
            health_changes: Family::default(),
            node_healthy: Family::default(),
            node_drained: Family::default(),
            region_ready_nodes: Family::default(),
            in_flight: Gauge::default(),
            backup: BackupMetrics::default(),
        };
        let registry = registry.sub_registry_with_prefix("rananeeti_gateway");
        registry.register("responses", "Responses by region, node and status class", metrics.responses.clone());
        registry.register(
            "request_duration_seconds",
            "From the request to the response head, by the node that answered",
            metrics.duration.clone(),
        );
        registry.register("retries", "Attempts retried on another node, by reason", metrics.retries.clone());
        registry.register("refused", "Requests refused at the edge, by reason", metrics.refused.clone());
        registry.register("ejections", "Nodes taken out after consecutive failed requests", metrics.ejections.clone());
        registry.register("health_changes", "Times a node went up or down", metrics.health_changes.clone());
        registry.register("node_healthy", "1 while the node passes its checks", metrics.node_healthy.clone());
        registry.register("in_flight", "Requests being served", metrics.in_flight.clone());
        registry.register(
            "node_drained",
            "1 while the node is drained (takes no new requests)",
            metrics.node_drained.clone(),
        );
        registry.register(
            "region_ready_nodes",
            "Nodes of the region that take new requests: healthy and not drained",
            metrics.region_ready_nodes.clone(),
        );
        metrics
    }

    /// Registers `rananeeti_backup_*` in `registry` (their own: see [`BackupMetrics`]).
    pub fn register_backup(&self, registry: &mut Registry) {
        let backup = registry.sub_registry_with_prefix("rananeeti_backup");
        backup.register("interval_seconds", "Seconds between two scheduled backups", self.backup.interval.clone());
        backup.register(
            "schedule_start_timestamp_seconds",
            "Unix time when the backup schedule started (its first backup is due one interval later)",
            self.backup.schedule_start.clone(),
        );
        backup.register(
            "last_attempt_timestamp_seconds",
            "Unix time of the last scheduled backup attempt (0: none yet)",
            self.backup.last_attempt.clone(),
        );
        backup.register(
            "last_success_timestamp_seconds",
            "Unix time of the last scheduled backup that was taken (0: none yet)",
            self.backup.last_success.clone(),
        );
        backup.register(
            "last_attempt_success",
            "1 when the last scheduled backup attempt was taken, 0 when it failed or none was made yet",
            self.backup.last_attempt_success.clone(),
        );
        backup.register(
            "last_verify_timestamp_seconds",
            "Unix time of the last verification of a scheduled backup (0: none yet)",
            self.backup.last_verify.clone(),
        );
        backup.register(
            "last_verify_success",
            "1 when the last verification restored the backup and it matched its manifest, 0 when it failed or none was made yet",
            self.backup.last_verify_success.clone(),
        );
    }
}
