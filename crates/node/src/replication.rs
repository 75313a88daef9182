//! Replication between regions, transport side: the outbox endpoint peers pull from (long-poll,
//! cluster token), and one puller per peer region that applies what it pulls through the platform.

use crate::admin::{require_token, AdminToken};
use crate::error::ApiError;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rananeeti_platform::hlc::wall_clock_ms;
use rananeeti_platform::{OutboxPage, Platform};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer region and the URLs of its nodes (any of them serves its region's outbox).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRegion {
    pub region: String,
    pub urls: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub peers: Vec<PeerRegion>,
    /// Entries pulled per request.
    pub batch_entries_max: usize,
    /// How long a pull waits for new entries before answering empty.
    pub long_poll_ms: u64,
    /// Pause after a failed pull (or while replication is cut).
    pub retry_ms: u64,
}

const LONG_POLL_MS_MAX: u64 = 10_000;
const OUTBOX_POLL_INTERVAL: Duration = Duration::from_millis(25);
const PULL_ENTRIES_MAX: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone)]
pub struct ReplicationMetrics {
    lag_seconds: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    lag_entries: Family<PeerLabels, Gauge>,
    applied: Family<PeerLabels, Counter>,
    errors: Family<PeerLabels, Counter>,
    delay: Family<PeerLabels, Histogram>,
}

impl ReplicationMetrics {
    pub fn new(registry: &mut Registry) -> ReplicationMetrics {
        let metrics = ReplicationMetrics {
            lag_seconds: Family::default(),
            lag_entries: Family::default(),
            applied: Family::default(),
            errors: Family::default(),
            delay: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
        };
        let registry = registry.sub_registry_with_prefix("rananeeti_replication");
        registry.register(
            "lag_seconds",
            "How far behind this region is on a peer's writes",
            metrics.lag_seconds.clone(),
        );
        registry.register("lag_entries", "Peer outbox entries not yet applied here", metrics.lag_entries.clone());
        registry.register("applied", "Peer commands applied here", metrics.applied.clone());
        registry.register("errors", "Failed pulls or applies", metrics.errors.clone());
        registry.register(
            "delay_seconds",
            "From a command's commit in its region to its apply here",
            metrics.delay.clone(),
        );
        metrics
    }
}

/// The outbox endpoint, behind the cluster token.
pub fn router(platform: Arc<Platform>, cluster_token: AdminToken) -> Router {
    Router::new()
        .route("/internal/replication/outbox", get(outbox))
        .route_layer(axum::middleware::from_fn_with_state(cluster_token, require_token))
        .with_state(platform)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    after: u64,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

async fn outbox(
    State(platform): State<Arc<Platform>>,
    Query(query): Query<OutboxQuery>,
) -> Result<Json<OutboxPage>, ApiError> {
    if platform.faults().replication_cut() {
        return Err(ApiError::Unavailable("replication is cut (injected fault)".into()));
    }
    let limit = query.limit.unwrap_or(256).clamp(1, PULL_ENTRIES_MAX);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(LONG_POLL_MS_MAX));
    let started = Instant::now();
    let mut commits = platform.outbox_commits();
    loop {
        commits.borrow_and_update();
        let page = platform
            .outbox_after(query.after, limit)
            .await
            .map_err(|error| ApiError::Unavailable(error.to_string()))?;
        if platform.faults().replication_cut() {
            // Cut while reading: nothing read in the meantime leaves.
            return Err(ApiError::Unavailable("replication is cut (injected fault)".into()));
        }
        if !page.entries.is_empty() || started.elapsed() >= wait {
            return Ok(Json(page));
        }
        // Woken by a commit on this node, or polled for the other nodes' commits.
        let _ = tokio::time::timeout(OUTBOX_POLL_INTERVAL, commits.changed()).await;
    }
}

/// Starts one puller per peer region; they run for the life of the process.
pub fn start(
    platform: Arc<Platform>,
    config: ReplicationConfig,
    cluster_token: AdminToken,
    metrics: ReplicationMetrics,
) {
    let client = reqwest::Client::builder()
        .no_proxy() // the cluster token must not go through a proxy
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(config.long_poll_ms.min(LONG_POLL_MS_MAX) + 2000))
        .build()
        .expect("an HTTP client without TLS builds");
    for peer in config.peers.clone() {
        assert!(!peer.urls.is_empty(), "peer region {} has no node URLs", peer.region);
        assert!(peer.region != platform.region(), "a region does not pull from itself");
        let puller = Arc::new(Puller {
            platform: Arc::clone(&platform),
            client: client.clone(),
            config: config.clone(),
            token: cluster_token.clone(),
            labels: PeerLabels { peer: peer.region.clone() },
            metrics: metrics.clone(),
            peer,
        });
        let name = format!("replication puller from {}", puller.peer.region);
        platform.tasks().supervise(name, move || {
            let puller = Arc::clone(&puller);
            async move { puller.run().await }
        });
    }
}

struct Puller {
    platform: Arc<Platform>,
    client: reqwest::Client,
    config: ReplicationConfig,
    token: AdminToken,
    peer: PeerRegion,
    labels: PeerLabels,
    metrics: ReplicationMetrics,
}

impl Puller {
    async fn run(&self) {
        let retry = Duration::from_millis(self.config.retry_ms);
        let mut url_index = 0usize;
        // When this region last had everything the peer had. Lag is measured from it whenever
        // this region is behind, also while the peer cannot be reached or replication is cut.
        let mut caught_up_at_ms = wall_clock_ms();
        loop {
            if self.platform.faults().replication_cut() {
                self.set_lag_since(caught_up_at_ms);
                tokio::time::sleep(retry).await;
                continue;
            }
            let base = &self.peer.urls[url_index % self.peer.urls.len()];
            let pulled = self.pull_once(base).await;
            if let Ok(Some(0)) = pulled {
                caught_up_at_ms = wall_clock_ms();
            }
            self.set_lag_since(caught_up_at_ms);
            match pulled {
                Ok(_) => {}
                Err(reason) => {
                    self.metrics.errors.get_or_create(&self.labels).inc();
                    tracing::warn!(peer = self.peer.region, reason, "replication pull failed");
                    url_index = url_index.wrapping_add(1);
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    fn set_lag_since(&self, caught_up_at_ms: u64) {
        let lag_ms = wall_clock_ms().saturating_sub(caught_up_at_ms);
        self.metrics.lag_seconds.get_or_create(&self.labels).set(lag_ms as f64 / 1000.0);
    }

    /// One pull and apply. Answers how many of the peer's entries are still not applied here, or
    /// `None` when replication was cut meanwhile and nothing was applied.
    async fn pull_once(&self, base: &str) -> Result<Option<u64>, String> {
        let checkpoint = self.platform.checkpoint(&self.peer.region).await.map_err(|error| error.to_string())?;
        let response = self
            .client
            .get(format!("{base}/internal/replication/outbox"))
            .query(&[
                ("after", checkpoint.to_string()),
                ("limit", self.config.batch_entries_max.to_string()),
                ("wait_ms", self.config.long_poll_ms.to_string()),
            ])
            .header("authorization", format!("Bearer {}", self.token.expose()))
            .send()
            .await
            .map_err(|error| format!("no answer from the peer: {}", error.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("peer answered {}", response.status()));
        }
        let page: OutboxPage = response.json().await.map_err(|error| format!("bad page: {}", error.without_url()))?;
        if self.platform.faults().replication_cut() {
            return Ok(None);
        }
        let applied = self
            .platform
            .apply_replicated(&self.peer.region, &page.entries)
            .await
            .map_err(|error| error.to_string())?;
        let now_ms = wall_clock_ms();
        for entry in &page.entries {
            let delay_ms = now_ms.saturating_sub(entry.command.hlc.physical_ms());
            self.metrics.delay.get_or_create(&self.labels).observe(delay_ms as f64 / 1000.0);
        }
        self.metrics.applied.get_or_create(&self.labels).inc_by(applied.applied as u64);
        let behind = page.last_seq.saturating_sub(applied.checkpoint);
        self.metrics.lag_entries.get_or_create(&self.labels).set(behind as i64);
        Ok(Some(behind))
    }
}
