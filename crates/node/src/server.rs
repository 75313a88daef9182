//! The node's HTTP server: apps' routes plus health, metrics and admin, behind request ids,
//! tracing, latency metrics, a body limit and a request timeout.

use crate::admin::{self, AdminToken};
use crate::app::App;
use crate::error::ApiError;
use crate::telemetry::{record_request, HttpMetrics};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use rananeeti_platform::{BreakerState, CommandId, Platform};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

#[derive(Clone, Debug)]
pub struct NodeHttpConfig {
    pub listen: String,
    /// Written with the bound address once listening (for port 0 and for supervisors).
    pub addr_file: Option<PathBuf>,
    /// Set to this node's URL once listening (for peers to call it back).
    pub advertised_url: Option<Arc<std::sync::OnceLock<String>>>,
    pub admin_token: AdminToken,
    /// The token peers present to pull this region's outbox; no outbox endpoint without it.
    pub cluster_token: Option<AdminToken>,
    pub body_bytes_max: usize,
    pub request_timeout_ms: u64,
    /// Ownership exchange, forwarding and failover endpoints (with the cluster token).
    pub ownership: Option<Arc<crate::ownership::OwnershipService>>,
}

pub struct Health {
    platform: Arc<Platform>,
    registry: Registry,
    shutting_down: AtomicBool,
}

/// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests.
pub async fn serve(
    config: NodeHttpConfig,
    platform: Arc<Platform>,
    apps: &[Box<dyn App>],
    mut registry: Registry,
) -> anyhow::Result<()> {
    let http_metrics = HttpMetrics::new(&mut registry);
    let health = Arc::new(Health { platform: Arc::clone(&platform), registry, shutting_down: AtomicBool::new(false) });
    let router = build_router(&config, Arc::clone(&platform), apps, Arc::clone(&health), http_metrics);

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
    let address = listener.local_addr()?;
    if let Some(path) = &config.addr_file {
        write_atomically(path, address.to_string().as_bytes())?;
    }
    if let Some(url) = &config.advertised_url {
        // Peers call back on it: an unspecified bind address (0.0.0.0) is reached on loopback.
        let host = if address.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { address.ip() };
        let _ = url.set(format!("http://{}", std::net::SocketAddr::new(host, address.port())));
    }
    tracing::info!(%address, node = platform.node(), region = platform.region(), "listening");

    let shutdown_health = Arc::clone(&health);
    axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            shutdown_health.shutting_down.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await?;
    Ok(())
}

pub fn build_router(
    config: &NodeHttpConfig,
    platform: Arc<Platform>,
    apps: &[Box<dyn App>],
    health: Arc<Health>,
    http_metrics: HttpMetrics,
) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
        .merge(Router::new().route("/api/commands/{id}", get(command_status)).with_state(Arc::clone(&platform)))
        .route("/api/platform/openapi.json", get(platform_openapi))
        .merge(admin::router(Arc::clone(&platform), config.admin_token.clone()));
    if let Some(cluster_token) = &config.cluster_token {
        // What nodes send each other wraps what clients sent (a command around a request's
        // content, a copy around a queued command): the limit fits every one the public limit
        // and the queue let in.
        let internal_limit = DefaultBodyLimit::max(internal_body_bytes_max(config.body_bytes_max));
        let mut internal = crate::replication::router(Arc::clone(&platform), cluster_token.clone())
            .merge(crate::queue_copies::router(Arc::clone(&platform), cluster_token.clone()));
        if let Some(ownership) = &config.ownership {
            internal = internal.merge(crate::ownership::router(
                Arc::clone(ownership),
                cluster_token.clone(),
                config.admin_token.clone(),
            ));
        }
        router = router.merge(internal.layer(internal_limit));
    }
    for app in apps {
        router = router.merge(app.router(Arc::clone(&platform)));
    }
    let x_request_id = HeaderName::from_static("x-request-id");
    let idempotency = crate::idempotency::Idempotency { platform, body_bytes_max: config.body_bytes_max };
    router
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(idempotency, crate::idempotency::honour_keys))
        .layer(axum::middleware::from_fn_with_state(http_metrics, record_request))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(x_request_id.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request<Body>| {
                            let request_id = request
                                .headers()
                                .get("x-request-id")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!(
                                "request",
                                method = %request.method(),
                                path = %request.uri().path(),
                                request_id = %request_id,
                            )
                        })
                        .on_request(())
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(x_request_id))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_millis(config.request_timeout_ms),
                ))
                .layer(DefaultBodyLimit::max(config.body_bytes_max)),
        )
}

/// The body limit of the routes between nodes: a queued command at its largest, or a public body
/// wrapped as a command (with room for every character escaped once more), whichever is larger.
pub fn internal_body_bytes_max(public_body_bytes_max: usize) -> usize {
    const ENVELOPE_BYTES_MAX: usize = 64 * 1024;
    rananeeti_platform::queue_entry_bytes_max().max(public_body_bytes_max.saturating_mul(2)) + ENVELOPE_BYTES_MAX
}

/// The OpenAPI 3 document of what every node serves besides its apps (health, command status, admin).
const PLATFORM_OPENAPI: &str = include_str!("openapi.json");

async fn platform_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], PLATFORM_OPENAPI).into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

/// Ready while the node can take requests: a store outage does not make it unready, because
/// writes then go to the fallback queue; shutting down, or a queue that can take nothing, does.
async fn readyz(State(health): State<Arc<Health>>) -> Response {
    let platform = &health.platform;
    let breaker = platform.breaker_state();
    let body = json!({
        "node": platform.node(),
        "region": platform.region(),
        "store": match breaker { BreakerState::Closed => "up", BreakerState::HalfOpen => "recovering", BreakerState::Open => "down" },
        "queue_depth": platform.queue().depth(),
    });
    let unready = if health.shutting_down.load(Ordering::SeqCst) {
        Some("shutting down".to_string())
    } else if !platform.queue().writer_alive() {
        Some("the fallback queue's writer has stopped; writes cannot be queued".to_string())
    } else {
        platform.tasks().failing().map(|task| format!("the background task \"{task}\" keeps failing (see the log)"))
    };
    if let Some(reason) = unready {
        let mut body = body;
        body["reason"] = json!(reason);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    (StatusCode::OK, Json(body)).into_response()
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    health.platform.refresh_metrics();
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &health.registry) {
        return ApiError::Internal(error.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// Any command's status by id: committed, pending or rejected, and where it is held.
async fn command_status(
    State(platform): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> Result<Json<rananeeti_platform::CommandStatus>, ApiError> {
    let id = CommandId::parse_hex(&id).map_err(|error| ApiError::invalid("id", error.to_string()))?;
    match platform.status(&id).await {
        Ok(Some(status)) => Ok(Json(status)),
        Ok(None) => Err(ApiError::NotFound),
        Err(error) => Err(ApiError::Unavailable(error.to_string())),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

pub(crate) fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
