//! The admin API (`/admin/...`, bearer token): faults and the fallback queue.

use crate::error::ApiError;
use crate::json::ApiJson;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use rananeeti_platform::{Command, DbFault, Partition, Platform};
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A bearer token (the admin token, or the cluster token between nodes). Never logged, never
/// echoed.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        assert!(!token.is_empty(), "the admin token is empty");
        AdminToken(Arc::from(token))
    }

    /// The token itself, to present it to a peer. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

pub async fn require_token(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            // The scheme name is case-insensitive (RFC 7235).
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    match presented {
        Some(presented) if token.matches(presented) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

pub fn router(platform: Arc<Platform>, token: AdminToken) -> Router {
    Router::new()
        .route("/admin/faults", get(get_faults).post(set_faults))
        .route("/admin/queue", get(get_queue))
        .route("/admin/queue/export", get(export_queue))
        .route("/admin/conflicts", get(get_conflicts))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token))
        .with_state(platform)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsRequest {
    db: Option<DbFaultRequest>,
    replication: Option<ReplicationFault>,
    /// `cut`: this node is cut off from the other regions and the witness, both ways;
    /// `{"cut": ["r2", "witness"]}`: from those voters only (ownership and forwarding); `ok`.
    partition: Option<PartitionRequest>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum PartitionRequest {
    Word(ReplicationFault),
    From { cut: Vec<String> },
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum DbFaultRequest {
    Word(DbWord),
    Flaky { flaky: f64 },
    Slow { slow_ms: u64 },
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum DbWord {
    Up,
    Down,
}

#[derive(serde::Deserialize, serde::Serialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ReplicationFault {
    Cut,
    Ok,
}

const SLOW_MS_MAX: u64 = 600_000;

fn db_fault_json(fault: DbFault) -> Value {
    match fault {
        DbFault::Up => json!("up"),
        DbFault::Down => json!("down"),
        DbFault::Flaky { flaky } => json!({ "flaky": flaky }),
        DbFault::Slow { slow_ms } => json!({ "slow_ms": slow_ms }),
    }
}

fn faults_json(platform: &Platform) -> Value {
    json!({
        "db": db_fault_json(platform.faults().db()),
        "replication": if platform.faults().replication_cut() { "cut" } else { "ok" },
        "partition": partition_json(platform),
        "node": platform.node(),
        "region": platform.region(),
    })
}

fn partition_json(platform: &Platform) -> Value {
    match platform.faults().partition() {
        Partition::None => json!("ok"),
        Partition::All => json!("cut"),
        Partition::From(cut) => json!({ "cut": cut }),
    }
}

async fn get_faults(State(platform): State<Arc<Platform>>) -> Json<Value> {
    Json(faults_json(&platform))
}

async fn set_faults(
    State(platform): State<Arc<Platform>>,
    ApiJson(request): ApiJson<FaultsRequest>,
) -> Result<Json<Value>, ApiError> {
    if request.db.is_none() && request.replication.is_none() && request.partition.is_none() {
        return Err(ApiError::invalid("db", "give one or more of \"db\", \"replication\", \"partition\""));
    }
    let db = match request.db {
        None => None,
        Some(DbFaultRequest::Word(DbWord::Up)) => Some(DbFault::Up),
        Some(DbFaultRequest::Word(DbWord::Down)) => Some(DbFault::Down),
        Some(DbFaultRequest::Flaky { flaky }) if (0.0..=1.0).contains(&flaky) => Some(DbFault::Flaky { flaky }),
        Some(DbFaultRequest::Flaky { .. }) => {
            return Err(ApiError::invalid("db.flaky", "a probability from 0 to 1"));
        }
        Some(DbFaultRequest::Slow { slow_ms }) if slow_ms <= SLOW_MS_MAX => Some(DbFault::Slow { slow_ms }),
        Some(DbFaultRequest::Slow { .. }) => {
            return Err(ApiError::invalid("db.slow_ms", format!("at most {SLOW_MS_MAX}")));
        }
    };
    if let Some(db) = db {
        platform.faults().set_db(db);
        tracing::warn!(fault = %db_fault_json(db), "store fault set");
    }
    if let Some(replication) = request.replication {
        platform.faults().set_replication_cut(matches!(replication, ReplicationFault::Cut));
        tracing::warn!(cut = matches!(replication, ReplicationFault::Cut), "replication fault set");
    }
    if let Some(partition) = request.partition {
        let partition = match partition {
            PartitionRequest::Word(ReplicationFault::Cut) => Partition::All,
            PartitionRequest::Word(ReplicationFault::Ok) => Partition::None,
            PartitionRequest::From { cut } if cut.is_empty() => Partition::None,
            PartitionRequest::From { cut } => Partition::From(cut.into_iter().collect()),
        };
        platform.faults().set_partition(partition);
        tracing::warn!(partition = %partition_json(&platform), "partition fault set");
    }
    Ok(Json(faults_json(&platform)))
}

const QUEUE_LISTED_MAX: usize = 20;
/// Queue entries read per piece of the export's stream: its memory, whatever the queue's length.
const QUEUE_EXPORT_PAGE: usize = 256;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// `ndjson`: one command per line; otherwise `{"node","region","commands":[...]}`.
    format: Option<String>,
}

/// Every command waiting in this node's queue, oldest first (for backups), streamed a page at a
/// time: a queue that an outage grew to a million entries is never held in memory whole.
async fn export_queue(
    State(platform): State<Arc<Platform>>,
    query: Result<axum::extract::Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|rejection| ApiError::BadRequest { field: None, message: rejection.body_text() })?;
    let lines = match query.format.as_deref() {
        None | Some("json") => false,
        Some("ndjson") => true,
        Some(_) => return Err(ApiError::invalid("format", "json or ndjson")),
    };
    let (open, separator, close, content_type) = if lines {
        (String::new(), "\n", "\n".to_string(), "application/x-ndjson")
    } else {
        let head = json!({ "node": platform.node(), "region": platform.region() }).to_string();
        (format!("{},\"commands\":[", &head[..head.len() - 1]), ",", "]}".to_string(), "application/json")
    };
    let pages = futures::stream::unfold((platform, Some(None), true), move |(platform, after, first)| async move {
        let after = after?;
        let page = match platform.queue().peek(after, QUEUE_EXPORT_PAGE) {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(%error, "queue export stopped: the queue could not be read");
                return Some((Err(std::io::Error::other(error.to_string())), (platform, None, first)));
            }
        };
        let last = page.last().map(|entry| entry.seq)?;
        let mut piece = Vec::new();
        let mut first = first;
        for entry in &page {
            // Stored as serde_json wrote it: one JSON value, no newline.
            if serde_json::from_slice::<serde::de::IgnoredAny>(&entry.body).is_err() {
                tracing::error!(seq = entry.seq, "queued entry does not decode; left out of the export");
                continue;
            }
            if !first {
                piece.extend_from_slice(separator.as_bytes());
            }
            first = false;
            piece.extend_from_slice(&entry.body);
        }
        Some((Ok(axum::body::Bytes::from(piece)), (platform, Some(Some(last)), first)))
    });
    let body = futures::stream::once(async move { Ok(axum::body::Bytes::from(open)) })
        .chain(pages)
        .chain(futures::stream::once(async move { Ok(axum::body::Bytes::from(close)) }));
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], axum::body::Body::from_stream(body)).into_response())
}

async fn get_queue(State(platform): State<Arc<Platform>>) -> Result<Json<Value>, ApiError> {
    let queue = platform.queue();
    let now_ms = rananeeti_platform::hlc::wall_clock_ms() as i64;
    let oldest_age_seconds =
        queue.oldest_enqueued_at_ms().map(|enqueued| (now_ms - enqueued).max(0) as f64 / 1000.0).unwrap_or(0.0);
    let entries = queue
        .list(QUEUE_LISTED_MAX)
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .into_iter()
        .map(|entry| {
            let kind = serde_json::from_slice::<Command>(&entry.body).map(|command| command.kind).unwrap_or_default();
            json!({
                "seq": entry.seq,
                "id": hex_id(&entry.id),
                "kind": kind,
                "age_seconds": (now_ms - entry.enqueued_at_ms).max(0) as f64 / 1000.0,
            })
        })
        .collect::<Vec<_>>();
    let corrupt: Vec<Value> =
        queue.corrupt_entries().into_iter().map(|(seq, reason)| json!({ "seq": seq, "reason": reason })).collect();
    Ok(Json(json!({
        "depth": queue.depth(),
        "corrupt": corrupt,
        "oldest_age_seconds": oldest_age_seconds,
        "fsyncs_total": queue.fsyncs_total(),
        "copies_held_for_peers": platform.copies_depth(),
        "breaker": format!("{:?}", platform.breaker_state()).to_lowercase(),
        "node": platform.node(),
        "region": platform.region(),
        "entries": entries,
    })))
}

fn hex_id(bytes: &[u8; 20]) -> String {
    rananeeti_platform::CommandId::from_bytes(*bytes).to_hex()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

const CONFLICTS_LISTED_MAX: usize = 1000;

/// The conflict log of this node's region: concurrent last-writer-wins writes that lost.
async fn get_conflicts(
    State(platform): State<Arc<Platform>>,
    query: Result<axum::extract::Query<ConflictsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|rejection| ApiError::BadRequest { field: None, message: rejection.body_text() })?;
    let limit = query.limit.unwrap_or(100).clamp(1, CONFLICTS_LISTED_MAX);
    let items = platform
        .conflicts(query.after.unwrap_or(0), limit)
        .await
        .map_err(|error| ApiError::Unavailable(error.to_string()))?;
    let next = (items.len() == limit).then(|| items.last().map(|conflict| conflict.seq)).flatten();
    Ok(Json(json!({ "region": platform.region(), "items": items, "next": next })))
}
