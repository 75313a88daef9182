//! The gateway's Prometheus metrics (`rananeeti_gateway_*`), per region and node.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

#[derive(Clone)]
pub struct GatewayMetrics {
    pub responses: Family<ResponseLabels, Counter>,
    pub duration: Family<NodeLabels, Histogram>,
    pub retries: Family<ReasonLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub ejections: Family<NodeLabels, Counter>,
    pub health_changes: Family<NodeLabels, Counter>,
    pub node_healthy: Family<NodeLabels, Gauge>,
    pub in_flight: Gauge,
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
            in_flight: Gauge::default(),
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
        metrics
    }
}
