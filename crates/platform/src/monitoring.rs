//! What the platform tells an operator about itself: the metrics refreshed at each scrape, a
//! probe of the store while nothing else reaches it (so `rananeeti_store_up` and the breaker say
//! how the store is on an idle node too), and the replication lag per peer region that the
//! node's pullers report.

use crate::hlc::wall_clock_ms;
use crate::metrics::RegionLabels;
use crate::platform::Platform;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// With nothing queued and no store access for this long, the drainer probes the store.
pub const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe that takes longer than this counts as a failure.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How far this region is behind one peer region, as its puller last measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PeerLag {
    /// Seconds since this region last had everything the peer had (0 while caught up).
    pub lag_seconds: f64,
    /// Peer outbox entries not yet applied here, at the last pull.
    pub lag_entries: u64,
}

#[derive(Default)]
pub(crate) struct Monitoring {
    /// Wall-clock milliseconds of the last store access whose outcome was recorded.
    last_store_contact_ms: AtomicU64,
    replication_lags: Mutex<BTreeMap<String, PeerLag>>,
    /// The lease as last reported, to log when it is lost or held again.
    lease_held: Mutex<Option<bool>>,
    probing: AtomicBool,
}

impl Monitoring {
    pub(crate) fn store_contacted(&self) {
        self.last_store_contact_ms.store(wall_clock_ms(), Ordering::Relaxed);
    }
}

impl Platform {
    /// Sets the gauges that are read rather than counted (call before encoding `/metrics`).
    pub fn refresh_metrics(&self) {
        self.metrics.queue_depth.set(self.queue.depth() as i64);
        self.metrics.queue_corrupt_entries.set(self.queue.corrupt_entries().len() as i64);
        let oldest_age = self
            .queue
            .oldest_enqueued_at_ms()
            .map(|enqueued| (wall_clock_ms() as i64 - enqueued).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.metrics.queue_oldest_age.set(oldest_age);
        self.metrics.breaker_state.set(self.breaker_state().as_gauge());
        let fsyncs = self.queue.fsyncs_total();
        let seen = self.queue_fsyncs_seen.swap(fsyncs, Ordering::Relaxed);
        self.metrics.queue_fsyncs.inc_by(fsyncs.saturating_sub(seen));
        self.metrics.queue_capacity.set(self.queue.entries_max().min(i64::MAX as u64) as i64);
        match self.queue.disk_space() {
            Ok(space) => {
                let gauge = |bytes: u64| bytes.min(i64::MAX as u64) as i64;
                self.metrics.queue_disk_usage.set(gauge(space.used_bytes));
                self.metrics.queue_filesystem_avail.set(gauge(space.filesystem_avail_bytes));
                self.metrics.queue_filesystem_size.set(gauge(space.filesystem_size_bytes));
            }
            Err(error) => tracing::warn!(%error, "cannot measure the fallback queue's disk space"),
        }
        self.metrics.lease_held.set(self.lease_held() as i64);
        let own = self.region();
        let table = self.ownership.table();
        self.metrics.acting_regions.set(table.iter().filter(|row| row.acting == own).count() as i64);
        for row in &table {
            self.metrics
                .owner_epochs
                .get_or_create(&RegionLabels { region: row.region.clone() })
                .set(row.epoch.min(i64::MAX as u64) as i64);
        }
    }

    /// Whether this node holds the ownership lease now; logs when that changes.
    pub fn lease_held(&self) -> bool {
        let held = self.ownership.lease_held(self.region());
        let mut last = self.monitoring.lease_held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match (*last, held) {
            (Some(true), false) => tracing::warn!(
                event = "lease_lost",
                region = self.region(),
                "ownership lease lost: owned writes are queued until a majority of the voters answers"
            ),
            (Some(false), true) => {
                tracing::info!(event = "lease_held", region = self.region(), "ownership lease held again")
            }
            _ => {}
        }
        *last = Some(held);
        held
    }

    /// 1 when the last store access succeeded (`rananeeti_store_up`).
    pub fn store_up(&self) -> bool {
        self.metrics.store_up.get() == 1
    }

    /// Seconds since the last store access whose outcome was recorded; `None` before the first.
    pub fn store_contact_age_seconds(&self) -> Option<f64> {
        let last = self.monitoring.last_store_contact_ms.load(Ordering::Relaxed);
        (last > 0).then(|| wall_clock_ms().saturating_sub(last) as f64 / 1000.0)
    }

    /// The node's puller for `peer` measured this (see `node::replication`).
    pub fn record_replication_lag(&self, peer: &str, update: impl FnOnce(&mut PeerLag)) {
        let mut lags = self.monitoring.replication_lags.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        update(lags.entry(peer.to_string()).or_default());
    }

    /// The replication lag on each peer region, as last measured.
    pub fn replication_lags(&self) -> BTreeMap<String, PeerLag> {
        self.monitoring.replication_lags.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Probes the store when nothing has reached it for `STORE_PROBE_INTERVAL` and the breaker
    /// lets an attempt through: a `SELECT 1` through the same door as a write (injected faults,
    /// migrations), whose outcome feeds the breaker and `rananeeti_store_up`.
    pub(crate) async fn probe_store_when_idle(&self) {
        let last = self.monitoring.last_store_contact_ms.load(Ordering::Relaxed);
        if wall_clock_ms().saturating_sub(last) < STORE_PROBE_INTERVAL.as_millis() as u64 {
            return;
        }
        if self.monitoring.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.breaker_allows() {
            let probe = async {
                self.reader().await.map_err(|error| error.to_string())?;
                sqlx::query("SELECT 1").execute(&self.store.writer()).await.map_err(|error| error.to_string())?;
                Ok::<(), String>(())
            };
            match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => self.store_succeeded(),
                Ok(Err(reason)) => {
                    tracing::debug!(reason, "store probe failed");
                    self.store_failed();
                }
                Err(_) => {
                    tracing::debug!(timeout_ms = STORE_PROBE_TIMEOUT.as_millis() as u64, "store probe timed out");
                    self.store_failed();
                }
            }
        }
        self.monitoring.probing.store(false, Ordering::Release);
    }
}
