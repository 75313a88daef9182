//! Queue copies, transport side: the copier that sends each newly queued command to the peer
//! node, the endpoints a peer serves (take a copy, forget copies, which ids do you still hold),
//! and the adopter that applies copies whose origin no longer holds them (restarted with its disk
//! lost) or has been unreachable for `adopt_after_ms` (dead).

use crate::admin::{require_token, AdminToken};
use crate::error::ApiError;
use crate::json::ApiJson;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::future::BoxFuture;
use rananeeti_platform::{Adoption, Command, CommandId, HeldCopy, Platform, QueueCopier};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const COPY_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const HOLDS_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const ADOPT_BATCH_MAX: usize = 1000;
const IDS_PER_REQUEST_MAX: usize = 1000;

/// How this node treats the copies it holds for its peers.
#[derive(Clone, Debug)]
pub struct QueueCopiesConfig {
    /// How long an origin must be unreachable before its copies are adopted.
    pub adopt_after_ms: u64,
    /// How often held copies are checked against their origins.
    pub adopt_check_ms: u64,
}

/// Sends copies over HTTP with the cluster token.
pub struct HttpCopier {
    client: reqwest::Client,
    /// The peer's URLs: one, or the two a peer node moves between when it is redeployed
    /// (`rananeeti deploy`). Copies go to the one that answered last, then the others.
    peer_urls: Vec<String>,
    /// Index in `peer_urls` of the one that answered last.
    answering: AtomicUsize,
    token: AdminToken,
    origin_node: String,
    /// Set once the node knows the address it listens on.
    origin_url: Arc<OnceLock<String>>,
}

impl HttpCopier {
    /// `peer_url` is one URL, or several separated by commas.
    pub fn new(peer_url: String, token: AdminToken, origin_node: String, origin_url: Arc<OnceLock<String>>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy() // the cluster token must not go through a proxy
            .connect_timeout(Duration::from_millis(500))
            .timeout(COPY_REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client without TLS builds");
        let peer_urls: Vec<String> =
            peer_url.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_string).collect();
        assert!(!peer_urls.is_empty(), "a queue peer needs a URL");
        HttpCopier { client, peer_urls, answering: AtomicUsize::new(0), token, origin_node, origin_url }
    }

    fn answering_url(&self) -> &str {
        &self.peer_urls[self.answering.load(Ordering::Relaxed) % self.peer_urls.len()]
    }
}

impl QueueCopier for HttpCopier {
    fn copy<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let origin_url = self.origin_url.get().cloned().unwrap_or_default();
            let copy = HeldCopy { origin_node: self.origin_node.clone(), origin_url, command: command.clone() };
            let first = self.answering.load(Ordering::Relaxed);
            let mut unreachable = String::new();
            // Only an unreachable URL sends the copy to the next one: a peer that answered
            // (even with an error) is the peer.
            for offset in 0..self.peer_urls.len() {
                let index = (first + offset) % self.peer_urls.len();
                let sent = self
                    .client
                    .post(format!("{}/internal/queue/copies", self.peer_urls[index]))
                    .bearer_auth(self.token.expose())
                    .json(&copy)
                    .send()
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(error) => {
                        unreachable = format!("peer unreachable: {}", error.without_url());
                        continue;
                    }
                };
                self.answering.store(index, Ordering::Relaxed);
                return if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("peer answered {}", response.status()))
                };
            }
            Err(unreachable)
        })
    }

    fn forget(&self, ids: Vec<CommandId>) -> BoxFuture<'static, ()> {
        let requests: Vec<_> = ids
            .chunks(IDS_PER_REQUEST_MAX)
            .map(|chunk| {
                self.client
                    .post(format!("{}/internal/queue/copies/forget", self.answering_url()))
                    .bearer_auth(self.token.expose())
                    .json(&json!({ "ids": chunk }))
            })
            .collect();
        Box::pin(async move {
            for request in requests {
                if let Err(error) = request.send().await {
                    // The copies stay and are adopted later as duplicates: harmless.
                    tracing::debug!(error = %error.without_url(), "could not tell the peer to forget copies");
                }
            }
        })
    }
}

/// The endpoints a peer serves, behind the cluster token.
pub fn router(platform: Arc<Platform>, cluster_token: AdminToken) -> Router {
    Router::new()
        .route("/internal/queue/copies", post(take_copy))
        .route("/internal/queue/copies/forget", post(forget))
        .route("/internal/queue/holds", post(holds))
        .route_layer(axum::middleware::from_fn_with_state(cluster_token, require_token))
        .with_state(platform)
}

async fn take_copy(
    State(platform): State<Arc<Platform>>,
    ApiJson(copy): ApiJson<HeldCopy>,
) -> Result<Json<Value>, ApiError> {
    platform.accept_copy(copy).await.map_err(|error| ApiError::Unavailable(error.to_string()))?;
    Ok(Json(json!({ "held": true })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<CommandId>,
}

async fn forget(State(platform): State<Arc<Platform>>, ApiJson(body): ApiJson<Ids>) -> Result<Json<Value>, ApiError> {
    if body.ids.len() > IDS_PER_REQUEST_MAX {
        return Err(ApiError::invalid("ids", format!("at most {IDS_PER_REQUEST_MAX}")));
    }
    let forgotten = platform.forget_copies(&body.ids).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(json!({ "forgotten": forgotten })))
}

async fn holds(State(platform): State<Arc<Platform>>, ApiJson(body): ApiJson<Ids>) -> Result<Json<Value>, ApiError> {
    if body.ids.len() > IDS_PER_REQUEST_MAX {
        return Err(ApiError::invalid("ids", format!("at most {IDS_PER_REQUEST_MAX}")));
    }
    let held = platform.holds(&body.ids).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(json!({ "held": held })))
}

/// Checks held copies against their origins and adopts the ones the origin no longer holds.
pub fn start_adopter(platform: Arc<Platform>, config: QueueCopiesConfig, token: AdminToken) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(300))
        .timeout(HOLDS_REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client without TLS builds");
    let tasks = Arc::clone(platform.tasks());
    tasks.supervise("queue copy adopter", move || {
        let (platform, client, token, config) = (Arc::clone(&platform), client.clone(), token.clone(), config.clone());
        async move {
            let mut adopter = Adopter { unreachable_since: HashMap::new(), after: None };
            loop {
                tokio::time::sleep(Duration::from_millis(config.adopt_check_ms)).await;
                if platform.copies_depth() == 0 {
                    adopter = Adopter { unreachable_since: HashMap::new(), after: None };
                    continue;
                }
                adopter.round(&platform, &client, &token, &config).await;
            }
        }
    });
}

/// The adopter's state between rounds: like the drainer, it walks the copies a page per round
/// and goes on where it stopped, so copies that cannot be adopted yet (their origin still holds
/// them, or their owner cannot be reached) never starve the ones behind them.
struct Adopter {
    /// Per origin, since when it has not answered.
    unreachable_since: HashMap<String, Instant>,
    /// The last seq of the copies looked at; `None`: start at the oldest.
    after: Option<u64>,
}

impl Adopter {
    async fn round(
        &mut self,
        platform: &Platform,
        client: &reqwest::Client,
        token: &AdminToken,
        config: &QueueCopiesConfig,
    ) {
        let copies = match platform.held_copies(self.after, ADOPT_BATCH_MAX) {
            Ok(copies) => copies,
            Err(error) => {
                tracing::error!(%error, "could not read held copies");
                return;
            }
        };
        // The next round looks at the next page, or starts again at the oldest.
        self.after = if copies.len() < ADOPT_BATCH_MAX { None } else { copies.last().map(|(entry, _)| entry.seq) };
        let mut by_origin: HashMap<String, Vec<_>> = HashMap::new();
        for (entry, copy) in copies {
            by_origin.entry(copy.origin_url.clone()).or_default().push((entry, copy));
        }
        // Owners that cannot take a write this round (their later copies wait, in order), and
        // whether this region's store can take local applies.
        let mut held: HashSet<String> = HashSet::new();
        let mut store_available = true;
        for (origin_url, copies) in by_origin {
            let ids: Vec<CommandId> = copies.iter().map(|(_, copy)| copy.command.id).collect();
            let still_held = ask_holds(client, token, &origin_url, &ids).await;
            let mut adopt: Vec<_> = match still_held {
                Some(still_held) => {
                    self.unreachable_since.remove(&origin_url);
                    copies.into_iter().filter(|(_, copy)| !still_held.contains(&copy.command.id)).collect()
                }
                None => {
                    let since = *self.unreachable_since.entry(origin_url.clone()).or_insert_with(Instant::now);
                    if since.elapsed() < Duration::from_millis(config.adopt_after_ms) {
                        continue;
                    }
                    copies
                }
            };
            // In the origin's order (its clock), not the order the copies arrived in.
            adopt.sort_by_key(|(_, copy)| copy.command.hlc);
            for (entry, copy) in adopt {
                let owner = platform.owner_of(&copy.command);
                if owner.as_ref().is_some_and(|owner| held.contains(owner)) || (owner.is_none() && !store_available) {
                    continue;
                }
                match platform.adopt_copy(&entry, &copy).await {
                    Ok(Adoption::Adopted | Adoption::Stuck) => {}
                    Ok(Adoption::OwnerUnavailable(region)) => {
                        held.insert(region);
                    }
                    Ok(Adoption::StoreUnavailable) => store_available = false,
                    Err(error) => {
                        tracing::error!(%error, "could not drop an adopted copy");
                        return;
                    }
                }
            }
        }
    }
}

/// The ids the origin still holds, or `None` when it cannot be asked.
async fn ask_holds(
    client: &reqwest::Client,
    token: &AdminToken,
    origin_url: &str,
    ids: &[CommandId],
) -> Option<Vec<CommandId>> {
    if origin_url.is_empty() {
        return None;
    }
    let response = client
        .post(format!("{origin_url}/internal/queue/holds"))
        .bearer_auth(token.expose())
        .json(&json!({ "ids": ids }))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    serde_json::from_value(body.get("held")?.clone()).ok()
}
