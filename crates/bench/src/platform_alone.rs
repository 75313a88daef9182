//! The node's write path without HTTP: a platform built in this process as `rananeeti node`
//! builds it (default configuration, the cafe's handler and migrations), driven through the same
//! `cafe::service::place` the API handler calls. It tells the cost of HTTP from that of the SQL.

use crate::tally::Tally;
use anyhow::Context;
use rananeeti_cafe::domain::ReservationRequest;
use rananeeti_cafe::reserve::ReserveHandler;
use rananeeti_platform::{Outcome, Platform, PlatformMetrics, Registry, Store, StoreConfig};
use rananeeti_queue::{Queue, QueueConfig};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::Reservations;

/// Seats per slot, as the benchmark's node is configured.
const SEATS_PER_SLOT: i64 = crate::node::SEATS_PER_SLOT;

/// The store configuration the node uses by default, pointed at `url`.
pub fn store_config(url: &str) -> StoreConfig {
    let store = rananeeti::config::Config::default().store;
    StoreConfig {
        password: None,
        writer_url: url.to_string(),
        reader_url: None,
        connections_max: store.connections_max,
        busy_timeout_ms: store.busy_timeout_ms,
        statement_timeout_ms: store.statement_timeout_ms,
        acquire_timeout_ms: store.acquire_timeout_ms,
    }
}

/// A platform on the store at `url` with its queue in `queue_dir`, migrated and ready.
pub async fn start(url: &str, queue_dir: &Path) -> anyhow::Result<Arc<Platform>> {
    let config = rananeeti::config::Config::default();
    let queue = Queue::open(QueueConfig {
        dir: queue_dir.to_path_buf(),
        group_commit_entries_max: config.queue.group_commit_entries_max,
        waiting_entries_max: config.queue.waiting_entries_max,
        entries_max: config.queue.entries_max,
    })
    .with_context(|| format!("opening a queue in {}", queue_dir.display()))?;
    // The node's own schema: the reserve handler reads other cafe tables (closures) too.
    let migrations = rananeeti::node_cmd::all_migrations();
    let mut registry = Registry::default();
    registry.register(Arc::new(ReserveHandler { seats_per_slot: SEATS_PER_SLOT }));
    let store = Store::open(store_config(url), migrations).context("opening the in-process platform's store")?;
    store.ensure_migrated().await.context("migrating the in-process platform's store")?;
    let metrics = PlatformMetrics::new(&mut prometheus_client::registry::Registry::default());
    Ok(Platform::start(config.platform_config(), store, queue, registry, metrics))
}

/// `concurrency` tasks placing distinct reservations back to back for `duration`; a committed
/// outcome counts as ok.
pub async fn run(
    platform: &Arc<Platform>,
    concurrency: usize,
    duration: Duration,
    reservations: &Arc<Reservations>,
) -> Tally {
    assert!(concurrency > 0, "a cell needs at least one worker");
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let platform = Arc::clone(platform);
        let reservations = Arc::clone(reservations);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < duration {
                let request = match request_of(&reservations.next_body()) {
                    Ok(request) => request,
                    Err(error) => {
                        tally.record_error(error);
                        continue;
                    }
                };
                let sent = Instant::now();
                match rananeeti_cafe::service::place(&platform, &request, rananeeti_platform::Delivery::Store).await {
                    Ok(submitted) if submitted.outcome == Outcome::Committed => tally.record_ok(sent.elapsed()),
                    Ok(submitted) => tally.record_other(submitted.outcome.as_str().to_string(), sent.elapsed()),
                    Err(error) => tally.record_error(format!("submit failed: {error}")),
                }
            }
            tally
        }));
    }
    crate::tally::gather(workers, started).await
}

/// Parses a load-generator body as the API handler does.
fn request_of(body: &Value) -> Result<ReservationRequest, String> {
    let text = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or_default();
    ReservationRequest::parse(
        text("name"),
        body.get("party_size").and_then(Value::as_i64).unwrap_or_default(),
        text("time"),
        Some(text("notes")),
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|error| format!("invalid reservation: {error}"))
}
