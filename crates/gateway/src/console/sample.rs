//! The console's samples: every `sample_interval_ms`, what the gateway knows of each node
//! (health, drain, in flight, latency) and what the node says of itself (`GET /admin/status`),
//! plus the gateway's response counters. The last `history_samples_max` are kept for the charts;
//! a new gateway starts with none (nothing here matters beyond the page).

use crate::backends::Backends;
use crate::config::ConsoleConfig;
use crate::metrics::{GatewayMetrics, ReasonLabels};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// A node's status answer is read up to this size.
const STATUS_BODY_BYTES_MAX: usize = 256 * 1024;

/// One look at the whole deployment.
#[derive(Debug)]
pub struct Sample {
    pub at: SystemTime,
    pub nodes: Vec<NodeSample>,
    /// Responses the gateway passed on, and of them those it counts as errors (5xx, and its own
    /// "no node could serve" and "at capacity" refusals), since it started.
    pub responses_total: u64,
    pub errors_total: u64,
}

#[derive(Debug)]
pub struct NodeSample {
    pub region: String,
    pub name: String,
    pub url: String,
    /// The gateway's view: passes its checks, drained, requests in flight, latency.
    pub healthy: bool,
    pub drained: bool,
    pub in_flight: usize,
    pub latency_ewma_ms: f64,
    /// The node's own `/admin/status`, or why there was none.
    pub status: Result<serde_json::Value, String>,
}

impl NodeSample {
    /// A number from the node's status, by JSON pointer (`/queue/depth`).
    pub fn number(&self, pointer: &str) -> Option<f64> {
        self.status.as_ref().ok()?.pointer(pointer)?.as_f64()
    }

    pub fn text(&self, pointer: &str) -> Option<&str> {
        self.status.as_ref().ok()?.pointer(pointer)?.as_str()
    }

    pub fn flag(&self, pointer: &str) -> Option<bool> {
        self.status.as_ref().ok()?.pointer(pointer)?.as_bool()
    }
}

/// The samples kept, oldest first.
pub struct History {
    samples: Mutex<VecDeque<Arc<Sample>>>,
    samples_max: usize,
}

impl History {
    pub fn new(samples_max: usize) -> History {
        assert!(samples_max > 0, "the console keeps at least one sample");
        History { samples: Mutex::new(VecDeque::with_capacity(samples_max)), samples_max }
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() == self.samples_max {
            samples.pop_front();
        }
        samples.push_back(Arc::new(sample));
        assert!(samples.len() <= self.samples_max, "the history is bounded");
    }

    pub fn samples(&self) -> Vec<Arc<Sample>> {
        self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }
}

/// What the sampler needs of the gateway (not the gateway itself, which owns the history).
pub struct Sampler {
    pub backends: Arc<Backends>,
    pub metrics: GatewayMetrics,
    pub client: UpstreamClient,
    pub admin_token: String,
    pub config: ConsoleConfig,
}

impl Sampler {
    /// Samples until `history` is dropped (with its gateway).
    pub fn start(self, history: Weak<History>) {
        tokio::spawn(async move {
            let interval = Duration::from_millis(self.config.sample_interval_ms);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let sample = self.sample().await;
                let Some(history) = history.upgrade() else { return };
                history.push(sample);
            }
        });
    }

    async fn sample(&self) -> Sample {
        let regions = self.backends.snapshot();
        let nodes = regions.iter().flat_map(|region| region.nodes.iter().cloned());
        let statuses = futures::future::join_all(nodes.map(|node| async move {
            let status = self.node_status(&node.url).await;
            NodeSample {
                region: node.region.clone(),
                name: node.name.clone(),
                url: node.url.clone(),
                healthy: node.healthy(),
                drained: node.drained(),
                in_flight: node.in_flight.load(Ordering::Relaxed),
                latency_ewma_ms: node.ewma_us() as f64 / 1000.0,
                status,
            }
        }))
        .await;
        let mut responses_total = 0;
        let mut errors_total = 0;
        for node in regions.iter().flat_map(|region| &region.nodes) {
            responses_total += node.metrics.responses.iter().map(|counter| counter.get()).sum::<u64>();
            errors_total += node.metrics.responses[4].get();
        }
        for reason in ["no_node", "overloaded"] {
            let refused = self.metrics.refused.get_or_create(&ReasonLabels { reason }).get();
            responses_total += refused;
            errors_total += refused;
        }
        Sample { at: SystemTime::now(), nodes: statuses, responses_total, errors_total }
    }

    async fn node_status(&self, base: &str) -> Result<serde_json::Value, String> {
        let request = hyper::Request::get(format!("{base}/admin/status"))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.admin_token))
            .body(Full::new(Bytes::new()))
            .map_err(|error| format!("bad status URL: {error}"))?;
        let timeout = Duration::from_millis(self.config.sample_timeout_ms);
        let read = async {
            let response = self.client.request(request).await.map_err(|error| format!("no answer: {error}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), STATUS_BODY_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| format!("answer cut short: {error}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            serde_json::from_slice(&body).map_err(|error| format!("not a status: {error}"))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }
}
