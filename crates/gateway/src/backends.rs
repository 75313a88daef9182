//! The nodes behind the gateway and what it knows of each: health (active checks and passive
//! ejection), drain, requests in flight, latency. Nodes can be added and removed at run time.

use crate::config::{HealthConfig, NodeConfig};
use crate::metrics::{GatewayMetrics, NodeLabels, RegionLabels};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http_body_util::Full;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A node's metric handles, made once (labels are not rebuilt per request).
pub struct NodeMetrics {
    /// By status class: 1xx .. 5xx.
    pub responses: [prometheus_client::metrics::counter::Counter; 5],
    pub duration: prometheus_client::metrics::histogram::Histogram,
}

/// One node as the gateway sees it.
pub struct Node {
    pub name: String,
    pub region: String,
    pub url: String,
    /// `url`'s scheme and authority, parsed once.
    pub scheme: hyper::http::uri::Scheme,
    pub authority: hyper::http::uri::Authority,
    pub metrics: NodeMetrics,
    healthy: AtomicBool,
    drained: AtomicBool,
    removed: AtomicBool,
    pub in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Peak-EWMA of response-head latency, in microseconds.
    ewma_us: AtomicU64,
    /// Bumped each time the node goes down, so attempts waiting on it give up at once.
    down: watch::Sender<u64>,
}

impl Node {
    fn new(region: &str, config: &NodeConfig, metrics: &GatewayMetrics) -> Node {
        let url = config.url.trim_end_matches('/').to_string();
        let parsed: hyper::Uri = url.parse().unwrap_or_else(|_| hyper::Uri::from_static("http://invalid.invalid"));
        let labels = NodeLabels { region: region.to_string(), node: config.name.clone() };
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            metrics
                .responses
                .get_or_create(&crate::metrics::ResponseLabels {
                    region: region.to_string(),
                    node: config.name.clone(),
                    class,
                })
                .clone()
        });
        Node {
            name: config.name.clone(),
            region: region.to_string(),
            scheme: parsed.scheme().cloned().unwrap_or(hyper::http::uri::Scheme::HTTP),
            authority: parsed
                .authority()
                .cloned()
                .unwrap_or_else(|| hyper::http::uri::Authority::from_static("invalid.invalid")),
            metrics: NodeMetrics { responses: classes, duration: metrics.duration.get_or_create(&labels).clone() },
            url,
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            down: watch::channel(0).0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Takes new requests: healthy, not drained, not removed.
    pub fn available(&self) -> bool {
        self.healthy() && !self.drained() && !self.removed()
    }

    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Resolves when the node goes down after this call.
    pub fn down_watch(&self) -> watch::Receiver<u64> {
        self.down.subscribe()
    }

    /// Records a response head after `elapsed`: peak-EWMA (a slower sample takes over at once,
    /// a faster one decays in).
    pub fn observe_latency(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let _ = self.ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            Some(if sample > current || current == 0 { sample } else { current - (current - sample) / 8 })
        });
    }

    fn labels(&self) -> NodeLabels {
        NodeLabels { region: self.region.clone(), node: self.name.clone() }
    }

    #[cfg(test)]
    pub(crate) fn set_health_for_test(&self, healthy: bool, metrics: &GatewayMetrics) {
        let event = if healthy { "node_up" } else { "node_down" };
        self.set_health(healthy, event, "test", metrics);
    }

    /// `event` names the change in the log (docs/logs.md): `node_up`, `node_down`, `node_ejected`.
    fn set_health(&self, healthy: bool, event: &str, why: &str, metrics: &GatewayMetrics) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            metrics.node_healthy.get_or_create(&self.labels()).set(healthy as i64);
            metrics.health_changes.get_or_create(&self.labels()).inc();
            if healthy {
                tracing::info!(event, node = self.name, region = self.region, why, "node healthy");
            } else {
                self.down.send_modify(|generation| *generation += 1);
                tracing::warn!(event, node = self.name, region = self.region, why, "node down");
            }
        }
    }

    /// A request to the node failed to connect or got a 5xx: after `eject_after` in a row the
    /// node is out until its checks pass `rise` times.
    pub fn record_failure(&self, eject_after: u32, metrics: &GatewayMetrics) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= eject_after && self.healthy() {
            metrics.ejections.get_or_create(&self.labels()).inc();
            self.set_health(false, "node_ejected", "ejected after consecutive failed requests", metrics);
        }
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
    }
}

pub struct Region {
    pub name: String,
    pub nodes: Vec<Arc<Node>>,
}

impl Region {
    /// A region is healthy while any of its nodes is.
    pub fn healthy(&self) -> bool {
        self.nodes.iter().any(|node| node.healthy() && !node.removed())
    }
}

/// Every region and node, replaced whole when a node is added or removed.
pub struct Backends {
    regions: RwLock<Arc<Vec<Region>>>,
    health: HealthConfig,
    metrics: GatewayMetrics,
    client: UpstreamClient,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("a node named {0} already exists")]
    Exists(String),
    #[error("no node named {0}")]
    Unknown(String),
}

impl Backends {
    pub fn new(
        regions: &[crate::config::RegionConfig],
        health: HealthConfig,
        metrics: GatewayMetrics,
        client: UpstreamClient,
    ) -> Arc<Backends> {
        let built = regions
            .iter()
            .map(|region| Region {
                name: region.name.clone(),
                nodes: region.nodes.iter().map(|node| Arc::new(Node::new(&region.name, node, &metrics))).collect(),
            })
            .collect::<Vec<_>>();
        let backends = Arc::new(Backends { regions: RwLock::new(Arc::new(Vec::new())), health, metrics, client });
        for node in built.iter().flat_map(|region| &region.nodes) {
            backends.metrics.node_healthy.get_or_create(&node.labels()).set(1);
            backends.start_checks(Arc::clone(node));
        }
        *backends.regions.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(built);
        backends
    }

    pub fn snapshot(&self) -> Arc<Vec<Region>> {
        Arc::clone(&self.regions.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn find(&self, name: &str) -> Option<Arc<Node>> {
        self.snapshot().iter().flat_map(|region| &region.nodes).find(|node| node.name == name).cloned()
    }

    pub fn add(&self, region: &str, config: &NodeConfig) -> Result<Arc<Node>, ChangeError> {
        let mut regions = self.regions.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if regions.iter().flat_map(|region| &region.nodes).any(|node| node.name == config.name) {
            return Err(ChangeError::Exists(config.name.clone()));
        }
        let node = Arc::new(Node::new(region, config, &self.metrics));
        let mut next: Vec<Region> = regions
            .iter()
            .map(|existing| Region { name: existing.name.clone(), nodes: existing.nodes.clone() })
            .collect();
        match next.iter_mut().find(|existing| existing.name == region) {
            Some(existing) => existing.nodes.push(Arc::clone(&node)),
            None => next.push(Region { name: region.to_string(), nodes: vec![Arc::clone(&node)] }),
        }
        *regions = Arc::new(next);
        drop(regions);
        self.metrics.node_healthy.get_or_create(&node.labels()).set(1);
        self.start_checks(Arc::clone(&node));
        tracing::info!(event = "node_added", node = node.name, region, url = node.url, "node added");
        Ok(node)
    }

    pub fn remove(&self, name: &str) -> Result<(), ChangeError> {
        let mut regions = self.regions.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let node = regions
            .iter()
            .flat_map(|region| &region.nodes)
            .find(|node| node.name == name)
            .cloned()
            .ok_or_else(|| ChangeError::Unknown(name.to_string()))?;
        node.removed.store(true, Ordering::Release);
        let next: Vec<Region> = regions
            .iter()
            .map(|region| Region {
                name: region.name.clone(),
                nodes: region.nodes.iter().filter(|candidate| candidate.name != name).cloned().collect(),
            })
            .collect();
        *regions = Arc::new(next);
        self.metrics.node_healthy.remove(&node.labels());
        self.metrics.node_drained.remove(&node.labels());
        tracing::info!(event = "node_removed", node = name, "node removed");
        Ok(())
    }

    pub fn set_drained(&self, name: &str, drained: bool) -> Result<Arc<Node>, ChangeError> {
        let node = self.find(name).ok_or_else(|| ChangeError::Unknown(name.to_string()))?;
        node.drained.store(drained, Ordering::Release);
        tracing::info!(
            event = "drain_changed",
            node = name,
            drained,
            in_flight = node.in_flight.load(Ordering::Relaxed),
            "drain changed"
        );
        Ok(node)
    }

    /// Sets the metrics that are read rather than counted: per region, the nodes that take new
    /// requests, and per node whether it is drained.
    pub fn refresh_metrics(&self) {
        for region in self.snapshot().iter() {
            let ready = region.nodes.iter().filter(|node| node.available()).count();
            self.metrics
                .region_ready_nodes
                .get_or_create(&RegionLabels { region: region.name.clone() })
                .set(ready as i64);
            for node in &region.nodes {
                let labels = NodeLabels { region: region.name.clone(), node: node.name.clone() };
                self.metrics.node_drained.get_or_create(&labels).set(node.drained() as i64);
            }
        }
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    pub fn eject_after(&self) -> u32 {
        self.health.eject_after_failures
    }

    /// Active checks: `GET path` every interval; `fall` failures in a row take the node out,
    /// `rise` passes bring it back. Stops when the node is removed.
    fn start_checks(&self, node: Arc<Node>) {
        let health = self.health.clone();
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let interval = Duration::from_millis(health.interval_ms);
            let timeout = Duration::from_millis(health.timeout_ms);
            let (mut passes, mut failures) = (0u32, 0u32);
            let uri: hyper::Uri = match format!("{}{}", node.url, health.path).parse() {
                Ok(uri) => uri,
                Err(error) => {
                    tracing::error!(node = node.name, %error, "health check URL does not parse; node left as is");
                    return;
                }
            };
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut downs_seen = *node.down.borrow();
            while !node.removed() {
                ticker.tick().await;
                // Taken out meanwhile (ejected): coming back takes `rise` passes from now on.
                let downs = *node.down.borrow();
                if downs != downs_seen {
                    downs_seen = downs;
                    passes = 0;
                }
                let started = Instant::now();
                let request = hyper::Request::get(uri.clone())
                    .body(Full::new(Bytes::new()))
                    .expect("a GET with a parsed URI builds");
                let passed = matches!(
                    tokio::time::timeout(timeout, client.request(request)).await,
                    Ok(Ok(response)) if response.status().is_success()
                );
                if passed {
                    node.observe_latency(started.elapsed());
                    passes += 1;
                    failures = 0;
                    if !node.healthy() && passes >= health.rise {
                        node.record_success();
                        node.set_health(true, "node_up", "health checks pass", &metrics);
                    }
                } else {
                    failures += 1;
                    passes = 0;
                    if node.healthy() && failures >= health.fall {
                        node.set_health(false, "node_down", "health checks fail", &metrics);
                    }
                }
            }
        });
    }
}
