//! Ownership between regions, transport side: forwarding owned writes to the region acting for
//! their owner (`POST /internal/commands`), the exchange of ownership tables that also renews the
//! lease (`POST /internal/ownership`, served by every node and by the witness), the explicit
//! failover (`POST /admin/regions/{region}/failover`), and the automatic one.

use crate::admin::{require_token, AdminToken};
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::replication::PeerRegion;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use rananeeti_platform::ownership::WITNESS_VOTER;
use rananeeti_platform::{Command, ForwardError, Forwarded, Forwarder, OwnerRow, Platform, SubmitError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct OwnershipTransportConfig {
    pub peers: Vec<PeerRegion>,
    /// The witness's URL, when one votes.
    pub witness_url: Option<String>,
    /// How often tables are exchanged (and the lease renewed).
    pub renew_ms: u64,
    /// An acting owner no voter has heard from for this long is failed over; 0: never by itself.
    pub failover_after_ms: u64,
}

/// One side of an exchange: who sends (a region, or the witness), its table, and how long ago it
/// last heard from each region.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub voter: String,
    pub rows: Vec<OwnerRow>,
    #[serde(default)]
    pub heard_ms_ago: BTreeMap<String, u64>,
}

/// The node's side of ownership: the HTTP client, who it heard from, and the loop.
pub struct OwnershipService {
    platform: Arc<Platform>,
    config: OwnershipTransportConfig,
    token: AdminToken,
    client: reqwest::Client,
    /// Per region (and the witness), when it last answered an exchange or sent one here.
    heard: Mutex<HashMap<String, Instant>>,
    /// What each voter last said about the regions it hears from.
    reports: Mutex<HashMap<String, BTreeMap<String, u64>>>,
    started: Instant,
}

impl OwnershipService {
    pub fn new(platform: Arc<Platform>, config: OwnershipTransportConfig, token: AdminToken) -> Arc<OwnershipService> {
        let client = reqwest::Client::builder()
            .no_proxy() // the cluster token must not go through a proxy
            .connect_timeout(Duration::from_millis(300))
            .build()
            .expect("an HTTP client without TLS builds");
        Arc::new(OwnershipService {
            platform,
            config,
            token,
            client,
            heard: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            started: Instant::now(),
        })
    }

    /// Runs the exchange loop for the life of the process.
    pub fn start(self: &Arc<Self>) {
        self.platform.set_forwarder(Arc::new(HttpForwarder { service: Arc::clone(self) }));
        let service = Arc::clone(self);
        let tasks = Arc::clone(self.platform.tasks());
        tasks.supervise("ownership exchange", move || {
            let service = Arc::clone(&service);
            async move {
                let period = Duration::from_millis(service.config.renew_ms.max(10));
                loop {
                    service.exchange_round().await;
                    if let Err(reason) = service.maybe_fail_over().await {
                        tracing::warn!(reason, "automatic failover not done");
                    }
                    tokio::time::sleep(period).await;
                }
            }
        });
    }

    fn urls_of(&self, region: &str) -> Option<&[String]> {
        self.config.peers.iter().find(|peer| peer.region == region).map(|peer| peer.urls.as_slice())
    }

    fn heard_ms_ago(&self) -> BTreeMap<String, u64> {
        let heard = self.heard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        heard.iter().map(|(region, at)| (region.clone(), at.elapsed().as_millis() as u64)).collect()
    }

    fn mark_heard(&self, voter: &str) {
        self.heard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(voter.to_string(), Instant::now());
    }

    /// Sends this node's table to every peer region and the witness, takes theirs, and renews
    /// the lease with each that answered.
    pub async fn exchange_round(&self) -> Vec<String> {
        let faults = self.platform.faults();
        if let Err(error) = self.platform.sync_owners().await {
            tracing::debug!(%error, "ownership table not read from the store; exchanging the view");
        }
        let mut targets: Vec<(String, Vec<String>)> =
            self.config.peers.iter().map(|peer| (peer.region.clone(), peer.urls.clone())).collect();
        if let Some(witness) = &self.config.witness_url {
            targets.push((WITNESS_VOTER.to_string(), vec![witness.clone()]));
        }
        targets.retain(|(voter, _)| !faults.cut_from(voter));
        let exchanges = targets.into_iter().map(|(voter, urls)| async move {
            let sent_at = Instant::now();
            for url in &urls {
                if let Ok(answer) = self.exchange_with(url).await {
                    // No lease from an answer whose epochs this node could not store: it would
                    // not know what it was granted under.
                    if let Err(error) = self.platform.learn_owners(&answer.rows).await {
                        tracing::warn!(%error, voter = answer.voter, "could not store a newer ownership table; no renewal");
                        continue;
                    }
                    let own = self.platform.region().to_string();
                    self.platform.ownership().renewed_by(&answer.voter, sent_at, &answer.rows, &own);
                    self.mark_heard(&answer.voter);
                    self.reports
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(answer.voter.clone(), answer.heard_ms_ago);
                    return Some(voter);
                }
            }
            None
        });
        futures::future::join_all(exchanges).await.into_iter().flatten().collect()
    }

    async fn exchange_with(&self, base: &str) -> Result<Exchange, String> {
        let mine = Exchange {
            voter: self.platform.region().to_string(),
            rows: self.platform.ownership().table(),
            heard_ms_ago: self.heard_ms_ago(),
        };
        let response = self
            .client
            .post(format!("{base}/internal/ownership"))
            .bearer_auth(self.token.expose())
            .timeout(EXCHANGE_TIMEOUT)
            .json(&mine)
            .send()
            .await
            .map_err(|error| format!("no answer: {}", error.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        response.json().await.map_err(|error| format!("bad answer: {}", error.without_url()))
    }

    /// Fails over, to this region, every region whose acting owner no voter has heard from for
    /// `failover_after_ms`, when a majority of the voters agree and this region is the first
    /// (by name) of the regions that can still be heard: one proposer, not a race.
    async fn maybe_fail_over(&self) -> Result<(), String> {
        let after = self.config.failover_after_ms;
        if after == 0 || self.started.elapsed() < Duration::from_millis(after) {
            return Ok(());
        }
        let own = self.platform.region().to_string();
        let ownership = self.platform.ownership();
        let heard = self.heard_ms_ago();
        let silent_here = |region: &str| heard.get(region).is_none_or(|ago| *ago >= after);
        let reports = self.reports.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        for row in ownership.table() {
            let acting = row.acting.clone();
            if acting == own || !silent_here(&acting) {
                continue;
            }
            let voters = ownership.voters();
            // Voters that cannot hear the acting owner either: this region, and each voter that
            // answered lately and says so.
            let agreeing = voters
                .iter()
                .filter(|voter| **voter != acting)
                .filter(|voter| {
                    **voter == own
                        || (!silent_here(voter)
                            && reports
                                .get(*voter)
                                .is_some_and(|report| report.get(&acting).is_none_or(|ago| *ago >= after)))
                })
                .count();
            if agreeing * 2 <= voters.len() {
                continue;
            }
            let proposer = self
                .platform
                .ownership()
                .config()
                .regions
                .iter()
                .filter(|region| **region != acting && (**region == own || !silent_here(region)))
                .min()
                .cloned();
            if proposer.as_deref() != Some(own.as_str()) {
                continue;
            }
            let changed = self.platform.fail_over(&row.region, &own).await.map_err(|error| error.to_string())?;
            tracing::warn!(
                region = changed.region,
                from = acting,
                to = own,
                epoch = changed.epoch,
                agreeing,
                voters = voters.len(),
                "automatic failover: the acting owner has not been heard from"
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for OwnershipService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnershipService").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Forwards an owned write to any node of the region acting for its owner.
struct HttpForwarder {
    service: Arc<OwnershipService>,
}

impl Forwarder for HttpForwarder {
    fn forward<'a>(&'a self, region: &'a str, command: &'a Command) -> BoxFuture<'a, Result<Forwarded, ForwardError>> {
        Box::pin(async move {
            let service = &self.service;
            if service.platform.faults().cut_from(region) {
                return Err(ForwardError::Unreachable(
                    "this node is cut off from the other regions (injected partition)".to_string(),
                ));
            }
            let urls = service
                .urls_of(region)
                .ok_or_else(|| ForwardError::Unreachable(format!("region {region} is not a configured peer")))?;
            let mut last_error = ForwardError::Unreachable(String::from("no node"));
            for url in urls {
                let sent = service
                    .client
                    .post(format!("{url}/internal/commands"))
                    .bearer_auth(service.token.expose())
                    .json(command)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        return response.json::<Forwarded>().await.map_err(|error| {
                            ForwardError::Unreachable(format!("bad answer: {}", error.without_url()))
                        });
                    }
                    Ok(response) => {
                        let status = response.status();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        last_error = classify_refusal(status, &body);
                        // A refusal of the command itself is the same from every node of the region.
                        if !matches!(last_error, ForwardError::Unreachable(_)) {
                            return Err(last_error);
                        }
                    }
                    Err(error) => last_error = ForwardError::Unreachable(format!("no answer: {}", error.without_url())),
                }
            }
            Err(last_error)
        })
    }
}

/// What an owner's non-2xx answer to a forwarded command means. Only an answer about the command
/// itself is final: 400 (it does not parse), 413 (too large), 422 (a field refused; a `kind` the
/// owner does not know is held for it instead). Anything else may change: the owner overloaded,
/// starting, shutting down, cut off, or configured with another token.
fn classify_refusal(status: reqwest::StatusCode, body: &Value) -> ForwardError {
    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
    let detail = format!("answered {status}: {message}");
    match status.as_u16() {
        422 if body["error"]["field"] == "kind" => ForwardError::UnknownKind(detail),
        400 | 413 | 422 => ForwardError::Refused(detail),
        _ => ForwardError::Unreachable(detail),
    }
}

/// The internal endpoints (cluster token) and the admin ones (admin token).
pub fn router(service: Arc<OwnershipService>, cluster_token: AdminToken, admin_token: AdminToken) -> Router {
    let internal = Router::new()
        .route("/internal/commands", post(take_forwarded))
        .route("/internal/ownership", post(exchange))
        .route_layer(axum::middleware::from_fn_with_state(cluster_token, require_token));
    let admin = Router::new()
        .route("/admin/regions", get(regions))
        .route("/admin/regions/{region}/failover", post(fail_over))
        .route_layer(axum::middleware::from_fn_with_state(admin_token, require_token));
    internal.merge(admin).with_state(service)
}

async fn take_forwarded(
    State(service): State<Arc<OwnershipService>>,
    ApiJson(command): ApiJson<Command>,
) -> Result<Json<Forwarded>, ApiError> {
    if service.platform.faults().cut_from(&command.origin_region) {
        return Err(ApiError::Unavailable("cut off from the other regions (injected partition)".into()));
    }
    match service.platform.submit_forwarded(command).await {
        Ok(submitted) => Ok(Json(Forwarded { outcome: submitted.outcome, id: Some(submitted.id) })),
        Err(SubmitError::UnknownKind(kind)) => Err(ApiError::invalid("kind", format!("no handler for kind {kind}"))),
        // The store refused the command itself (its data, or the SQL it makes): final.
        Err(SubmitError::Store(error)) => {
            Err(ApiError::invalid("command", format!("the owner's store refused it: {error}")))
        }
        Err(error) => Err(ApiError::Unavailable(error.to_string())),
    }
}

async fn exchange(
    State(service): State<Arc<OwnershipService>>,
    ApiJson(theirs): ApiJson<Exchange>,
) -> Result<Json<Exchange>, ApiError> {
    if service.platform.faults().cut_from(&theirs.voter) {
        return Err(ApiError::Unavailable("cut off from the other regions (injected partition)".into()));
    }
    // Only a view this node could store counts as a vote: an answer must mean "I know this".
    let rows =
        service.platform.learn_owners(&theirs.rows).await.map_err(|error| ApiError::Unavailable(error.to_string()))?;
    service.mark_heard(&theirs.voter);
    Ok(Json(Exchange { voter: service.platform.region().to_string(), rows, heard_ms_ago: service.heard_ms_ago() }))
}

async fn regions(State(service): State<Arc<OwnershipService>>) -> Json<Value> {
    let ownership = service.platform.ownership();
    let own = service.platform.region();
    Json(json!({
        "region": own,
        "node": service.platform.node(),
        "primary_region": ownership.config().primary_region,
        "lease_held": ownership.lease_held(own),
        "voters": ownership.renewal_ages_ms(),
        "heard_ms_ago": service.heard_ms_ago(),
        "owners": ownership.table(),
    }))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FailoverRequest {
    /// The region that takes over; this node's region when absent.
    to: Option<String>,
}

async fn fail_over(
    State(service): State<Arc<OwnershipService>>,
    Path(region): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: FailoverRequest = if body.iter().all(u8::is_ascii_whitespace) {
        FailoverRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| ApiError::BadRequest {
            field: None,
            message: format!("not a failover request: {error}"),
        })?
    };
    let regions = &service.platform.ownership().config().regions;
    if !regions.contains(&region) {
        return Err(ApiError::invalid("region", format!("no region {region}; regions are {}", regions.join(", "))));
    }
    let to = request.to.unwrap_or_else(|| service.platform.region().to_string());
    if !regions.contains(&to) {
        return Err(ApiError::invalid("to", format!("no region {to}; regions are {}", regions.join(", "))));
    }
    let row =
        service.platform.fail_over(&region, &to).await.map_err(|error| ApiError::Unavailable(error.to_string()))?;
    // Carry it to every voter that answers now; the loop keeps carrying it to the others.
    let acknowledged = service.exchange_round().await;
    Ok(Json(json!({
        "region": row.region,
        "acting": row.acting,
        "epoch": row.epoch,
        "effective_in_ms": row.effective_at_ms.saturating_sub(rananeeti_platform::hlc::wall_clock_ms()),
        "acknowledged_by": acknowledged,
    })))
}
