//! The witness: a third voter for ownership when a deployment has two regions (a majority of two
//! is both, so without it neither region could act alone). It keeps the highest ownership table it
//! has seen in a file, answers exchanges like a region does, and reports when it last heard from
//! each region, which is what an automatic failover asks it. `rananeeti up` runs one in its own
//! process; `rananeeti witness` runs one on its own.

use crate::admin::{require_token, AdminToken};
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::ownership::Exchange;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use rananeeti_platform::ownership::WITNESS_VOTER;
use rananeeti_platform::{OwnerRow, Ownership, OwnershipConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Witness {
    view: Ownership,
    state_file: PathBuf,
    heard: Mutex<HashMap<String, Instant>>,
    /// Serializes writes of the state file.
    writing: tokio::sync::Mutex<()>,
}

impl Witness {
    /// Opens the witness with the table kept in `state_file` (created when missing).
    pub fn open(state_file: PathBuf) -> anyhow::Result<Arc<Witness>> {
        let view = Ownership::new(OwnershipConfig {
            primary_region: String::new(),
            regions: Vec::new(),
            witness: false,
            lease_ms: 0,
        });
        match std::fs::read(&state_file) {
            Ok(bytes) => {
                let rows: Vec<OwnerRow> = serde_json::from_slice(&bytes)
                    .map_err(|error| anyhow::anyhow!("witness state {}: {error}", state_file.display()))?;
                view.learn(&rows);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => anyhow::bail!("reading witness state {}: {error}", state_file.display()),
        }
        Ok(Arc::new(Witness {
            view,
            state_file,
            heard: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
        }))
    }

    async fn take(&self, theirs: Exchange) -> Result<Exchange, ApiError> {
        if !self.view.newer_of(&theirs.rows).is_empty() {
            let _writing = self.writing.lock().await;
            // What the table becomes, stored before the view takes it (and before it is ever
            // answered with): an answer means "I know this", after a restart too.
            let newer = self.view.newer_of(&theirs.rows);
            let mut rows: BTreeMap<String, OwnerRow> =
                self.view.table().into_iter().map(|row| (row.region.clone(), row)).collect();
            for row in &newer {
                rows.insert(row.region.clone(), row.clone());
            }
            let rows: Vec<OwnerRow> = rows.into_values().collect();
            let bytes = serde_json::to_vec_pretty(&rows).expect("rows always serialize");
            let path = self.state_file.clone();
            tokio::task::spawn_blocking(move || crate::server::write_atomically(&path, &bytes))
                .await
                .map_err(|error| ApiError::Internal(error.to_string()))?
                .map_err(|error| ApiError::Unavailable(format!("witness state not written: {error}")))?;
            self.view.learn(&newer);
        }
        let heard_ms_ago: BTreeMap<String, u64> = {
            let mut heard = self.heard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            heard.insert(theirs.voter, Instant::now());
            heard.iter().map(|(region, at)| (region.clone(), at.elapsed().as_millis() as u64)).collect()
        };
        Ok(Exchange { voter: WITNESS_VOTER.to_string(), rows: self.view.table(), heard_ms_ago })
    }
}

pub fn router(witness: Arc<Witness>, cluster_token: AdminToken) -> Router {
    Router::new()
        .route("/internal/ownership", post(exchange))
        .route_layer(axum::middleware::from_fn_with_state(cluster_token, require_token))
        .route("/healthz", axum::routing::get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .with_state(witness)
}

async fn exchange(
    State(witness): State<Arc<Witness>>,
    ApiJson(theirs): ApiJson<Exchange>,
) -> Result<Json<Exchange>, ApiError> {
    Ok(Json(witness.take(theirs).await?))
}

/// Serves the witness on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    cluster_token: AdminToken,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "witness listening");
    axum::serve(listener, router(witness, cluster_token)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
