//! Request telemetry: a latency histogram per method, route and status, and JSON logs carrying
//! the request id.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub request_duration: Family<RequestLabels, Histogram>,
}

impl HttpMetrics {
    pub fn new(registry: &mut Registry) -> HttpMetrics {
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.sub_registry_with_prefix("rananeeti").register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            request_duration.clone(),
        );
        HttpMetrics { request_duration }
    }
}

/// Records every request's latency, labelled by its route pattern (not its path, which would
/// make one series per reservation id).
pub async fn record_request(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    let labels = RequestLabels { method, route, status: response.status().as_u16() };
    metrics.request_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

/// JSON logs to stdout, filtered by `RUST_LOG` (default info).
pub fn init_json_logs() {
    let filter = tracing_subscriber_filter();
    let _ = tracing_subscriber::fmt().json().with_current_span(true).with_env_filter(filter).try_init();
}

fn tracing_subscriber_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,fjall=warn,lsm_tree=warn"))
}
