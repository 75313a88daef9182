//! The gateway's own endpoints: `/gateway/healthz`, `/readyz` (ready while any node is, no
//! detail), and behind the admin token `/metrics`, `GET /admin/topology`, `POST /admin/nodes` (register), `DELETE /admin/nodes/{node}`,
//! `POST /admin/nodes/{node}/drain` and `/undrain`. Other `/admin/...` paths go to the nodes.

use crate::answer::{json, plain, Body};
use crate::backends::ChangeError;
use crate::config::NodeConfig;
use crate::gateway::{authorized, Gateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json as value;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const ADMIN_BODY_BYTES_MAX: usize = 16 * 1024;

pub async fn handle(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if path == "/gateway/healthz" {
        return json(StatusCode::OK, &value!({ "status": "ok" }));
    }
    if path == "/readyz" {
        // The gateway's own readiness, with no detail of the nodes behind it (those are on the
        // nodes' ports and `/admin/topology`).
        let ready = gateway.backends.snapshot().iter().any(|region| region.healthy());
        return if ready {
            json(StatusCode::OK, &value!({ "status": "ready" }))
        } else {
            json(StatusCode::SERVICE_UNAVAILABLE, &value!({ "status": "unready", "reason": "no node is healthy" }))
        };
    }
    if !authorized(gateway, &request) {
        return plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if path == "/metrics" {
        return metrics(gateway, &request);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["admin", "topology"]) => json(StatusCode::OK, &topology(gateway)),
        (Method::POST, ["admin", "nodes"]) => register(gateway, request).await,
        (Method::DELETE, ["admin", "nodes", name]) => match gateway.backends.remove(name) {
            Ok(()) => json(StatusCode::OK, &value!({ "removed": name })),
            Err(error) => change_error(error),
        },
        (Method::POST, ["admin", "nodes", name, action @ ("drain" | "undrain")]) => {
            match gateway.backends.set_drained(name, *action == "drain") {
                Ok(node) => json(
                    StatusCode::OK,
                    &value!({
                        "node": node.name,
                        "drained": node.drained(),
                        "in_flight": node.in_flight.load(Ordering::Relaxed),
                    }),
                ),
                Err(error) => change_error(error),
            }
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Prometheus's text format, or OpenMetrics when the scraper asks for it (`rananeeti_exposition`).
fn metrics(gateway: &Gateway, request: &Request<Incoming>) -> Response<Body> {
    gateway.backends.refresh_metrics();
    let mut registries = vec![&gateway.registry];
    if let (Some(file), Some(backup)) = (&gateway.config.console.backup_status_file, &gateway.backup_registry) {
        if crate::console::status_files::refresh_backup_metrics(file, &gateway.metrics.backup) {
            registries.push(backup);
        }
    }
    let accept = request.headers().get(hyper::header::ACCEPT).and_then(|value| value.to_str().ok());
    let exposition = match rananeeti_exposition::encode(&registries, accept) {
        Ok(exposition) => exposition,
        Err(error) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("metrics: {error}")),
    };
    let mut response = Response::new(Full::new(Bytes::from(exposition.body)).map_err(|never| match never {}).boxed());
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(exposition.content_type));
    response
}

fn change_error(error: ChangeError) -> Response<Body> {
    match error {
        ChangeError::Exists(_) => plain(StatusCode::CONFLICT, &error.to_string()),
        ChangeError::Unknown(_) => plain(StatusCode::NOT_FOUND, &error.to_string()),
    }
}

fn topology(gateway: &Gateway) -> serde_json::Value {
    let regions: Vec<serde_json::Value> = gateway
        .backends
        .snapshot()
        .iter()
        .map(|region| {
            value!({
                "name": region.name,
                "healthy": region.healthy(),
                "nodes": region.nodes.iter().map(|node| value!({
                    "name": node.name,
                    "url": node.url,
                    "healthy": node.healthy(),
                    "drained": node.drained(),
                    "in_flight": node.in_flight.load(Ordering::Relaxed),
                    "latency_ewma_ms": node.ewma_us() as f64 / 1000.0,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    value!({ "regions": regions })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    region: String,
    name: String,
    url: String,
}

async fn register(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(request.into_body(), ADMIN_BODY_BYTES_MAX).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"),
    };
    let register: Register = match serde_json::from_slice(&body) {
        Ok(register) => register,
        Err(error) => return plain(StatusCode::BAD_REQUEST, &format!("expected {{region, name, url}}: {error}")),
    };
    if register.region.trim().is_empty() {
        return json(StatusCode::UNPROCESSABLE_ENTITY, &value!({ "field": "region", "error": "a region name" }));
    }
    if register.name.trim().is_empty() {
        return json(StatusCode::UNPROCESSABLE_ENTITY, &value!({ "field": "name", "error": "a node name" }));
    }
    if !register.url.starts_with("http://") || register.url.parse::<hyper::Uri>().is_err() {
        return json(StatusCode::UNPROCESSABLE_ENTITY, &value!({ "field": "url", "error": "an http:// URL" }));
    }
    let config = NodeConfig { name: register.name, url: register.url };
    match gateway.backends.add(&register.region, &config) {
        Ok(node) => json(StatusCode::CREATED, &value!({ "node": node.name, "region": node.region, "url": node.url })),
        Err(error) => change_error(error),
    }
}
