//! `GET /admin/status` (admin token): one node's state for an operator, in one answer: version,
//! store and breaker, queue and its disk, replication lag per peer, the ownership lease and
//! table, injected faults, and the region's newest conflicts. The gateway's console reads it.

use crate::admin::{require_token, AdminToken};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use rananeeti_platform::{BreakerState, Platform};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Conflicts listed, newest first.
const RECENT_CONFLICTS_MAX: usize = 5;
/// The conflicts are read from the store; a store that does not answer within this long is
/// reported as such instead of holding the whole answer back.
const CONFLICTS_READ_TIMEOUT: Duration = Duration::from_millis(500);

struct Status {
    platform: Arc<Platform>,
    version: String,
    started: Instant,
}

pub fn router(platform: Arc<Platform>, admin_token: AdminToken, version: String) -> Router {
    let status = Arc::new(Status { platform, version, started: Instant::now() });
    Router::new()
        .route("/admin/status", get(status_of_node))
        .route_layer(axum::middleware::from_fn_with_state(admin_token, require_token))
        .with_state(status)
}

/// What `/admin/status` calls the breaker's states (also `/admin/queue`'s `breaker`).
pub fn breaker_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "halfopen",
        BreakerState::Open => "open",
    }
}

async fn status_of_node(State(status): State<Arc<Status>>) -> Json<Value> {
    let platform = &status.platform;
    let queue = platform.queue();
    let now_ms = rananeeti_platform::hlc::wall_clock_ms() as i64;
    let oldest_age_seconds =
        queue.oldest_enqueued_at_ms().map(|enqueued| (now_ms - enqueued).max(0) as f64 / 1000.0).unwrap_or(0.0);
    let disk = queue.disk_space().ok();
    let breaker = platform.breaker_state();
    let conflicts = if breaker == BreakerState::Open {
        json!({ "recent": [], "error": "the store breaker is open" })
    } else {
        match tokio::time::timeout(CONFLICTS_READ_TIMEOUT, platform.recent_conflicts(RECENT_CONFLICTS_MAX)).await {
            Ok(Ok(recent)) => json!({ "recent": recent, "error": null }),
            Ok(Err(error)) => json!({ "recent": [], "error": error.to_string() }),
            Err(_) => json!({ "recent": [], "error": "the store did not answer in time" }),
        }
    };
    Json(json!({
        "node": platform.node(),
        "region": platform.region(),
        "version": status.version,
        "uptime_seconds": status.started.elapsed().as_secs_f64(),
        "store": {
            "up": platform.store_up(),
            "breaker": breaker_name(breaker),
            "last_contact_seconds_ago": platform.store_contact_age_seconds(),
        },
        "queue": {
            "depth": queue.depth(),
            "oldest_age_seconds": oldest_age_seconds,
            "capacity_entries": queue.entries_max(),
            "corrupt_entries": queue.corrupt_entries().len(),
            "copies_held_for_peers": platform.copies_depth(),
            "disk_usage_bytes": disk.map(|disk| disk.used_bytes),
            "filesystem_avail_bytes": disk.map(|disk| disk.filesystem_avail_bytes),
            "filesystem_size_bytes": disk.map(|disk| disk.filesystem_size_bytes),
        },
        "replication": platform.replication_lags(),
        "ownership": {
            "primary_region": platform.ownership().config().primary_region,
            "lease_held": platform.lease_held(),
            "owners": platform.ownership().table(),
        },
        "faults": crate::admin::faults_json(platform),
        "conflicts": conflicts,
    }))
}
