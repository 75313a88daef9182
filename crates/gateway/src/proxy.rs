//! The reverse proxy: edge limits, then attempts on nodes chosen by the route's policy, retried
//! on another node (never the same one twice) when that is safe and the retry budget allows.

use crate::answer::{plain, Body};
use crate::backends::Node;
use crate::gateway::Gateway;
use crate::metrics::{GatewayMetrics, ReasonLabels};
use crate::routing;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const REQUEST_ID: &str = "x-request-id";
const REQUEST_ID_CHARS_MAX: usize = 128;
/// Connection-level headers a proxy must not forward (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why an attempt did not produce a response to pass on.
#[derive(Debug)]
enum AttemptFailure {
    /// The request never reached the node: always safe to retry.
    Connect(String),
    /// It may have reached the node: retried only when the request is idempotent.
    Sent(String),
}

impl Gateway {
    /// Serves one request; never fails (errors are responses).
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|id| !id.is_empty() && id.len() <= REQUEST_ID_CHARS_MAX && id.chars().all(|c| c.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| self.next_request_id());
        let mut response = self.handle_inner(request, peer, &request_id).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response
    }

    async fn handle_inner(
        self: &Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
    ) -> Response<Body> {
        let path = request.uri().path();
        // What the nodes say to each other is not for the public port.
        if path == "/internal" || path.starts_with("/internal/") {
            return plain(StatusCode::NOT_FOUND, "not found");
        }
        if crate::console::owns(path) {
            return crate::console::handle(self, request).await;
        }
        if path == "/metrics"
            || path == "/readyz"
            || path.starts_with("/admin/nodes")
            || path == "/admin/topology"
            || path == "/gateway/healthz"
        {
            return crate::admin::handle(self, request).await;
        }
        let client = self.client_of(request.headers(), peer);
        if self.limiter.check_key(&client.address).is_err() {
            self.metrics.refused.get_or_create(&ReasonLabels { reason: "rate_limited" }).inc();
            let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests from this address; slow down");
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        let in_flight = self.metrics.in_flight.inc() + 1;
        let _in_flight = scopeguard(&self.metrics);
        if in_flight as usize > self.config.limits.in_flight_max {
            self.metrics.refused.get_or_create(&ReasonLabels { reason: "overloaded" }).inc();
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "the gateway is at capacity; retry shortly");
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        let (parts, body) = request.into_parts();
        let body_max = self.config.limits.body_bytes_max;
        let declared = parts.headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > body_max as u64) {
            self.metrics.refused.get_or_create(&ReasonLabels { reason: "body_too_large" }).inc();
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large");
        }
        // Bodies are read whole (bounded) so that a retry can send them again.
        if hyper::body::Body::is_end_stream(&body) {
            return self.forward(parts, Bytes::new(), peer, request_id).await;
        }
        let read = tokio::time::timeout(
            Duration::from_millis(self.config.limits.body_read_timeout_ms),
            Limited::new(body, body_max).collect(),
        )
        .await;
        let body = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                self.metrics.refused.get_or_create(&ReasonLabels { reason: "body_too_large" }).inc();
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large");
            }
            Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "the request body could not be read"),
            Err(_) => {
                self.metrics.refused.get_or_create(&ReasonLabels { reason: "slow_body" }).inc();
                return plain(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time");
            }
        };
        self.forward(parts, body, peer, request_id).await
    }

    /// Who the client is: the connection's peer, or, when that peer is a trusted proxy, the
    /// client it forwards for (the last `X-Forwarded-For` entry) and the scheme it was reached by.
    fn client_of(&self, headers: &HeaderMap, peer: SocketAddr) -> EdgeClient {
        let trusted = self.trusted_proxies.iter().any(|network| network.contains(&peer.ip()));
        if !trusted {
            return EdgeClient { address: peer.ip(), https: false };
        }
        let address = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .next_back()
            .unwrap_or(peer.ip());
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        EdgeClient { address, https }
    }

    fn retryable_when_sent(&self, parts: &hyper::http::request::Parts, body: &Bytes) -> bool {
        match parts.method {
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE => true,
            Method::POST => {
                parts.headers.contains_key(IDEMPOTENCY_KEY)
                    || form_carries_key(&parts.headers, body)
                    || self
                        .config
                        .digest_post_prefixes
                        .iter()
                        .any(|prefix| parts.uri.path().starts_with(prefix.as_str()))
            }
            _ => false,
        }
    }

    async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
        peer: SocketAddr,
        request_id: &str,
    ) -> Response<Body> {
        let started = Instant::now();
        self.retry_budget.deposit();
        let regions = self.backends.snapshot();
        let route = routing::route_for(&self.config.routes, parts.uri.path(), &self.default_route);
        let order = routing::region_order(route, &regions, &parts.headers);
        let idempotent = self.retryable_when_sent(&parts, &body);
        let path_and_query =
            parts.uri.path_and_query().cloned().unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        let mut parts = parts;
        let client = self.client_of(&parts.headers, peer);
        let headers = upstream_headers(std::mem::take(&mut parts.headers), peer, &client, request_id);
        let mut tried = HashSet::new();
        let mut last_failure = String::from("no node is available");
        // The last node's own 502/503/504, kept while another node is tried: when none does
        // better, the client gets the node's answer (its page, its reason), not ours.
        let mut last_answer: Option<(Arc<Node>, Response<Incoming>)> = None;
        for attempt in 1..=self.config.retries.attempts_max {
            let Some(node) = routing::pick(&order, &tried) else { break };
            // A node picked while down is a last resort (every node is down): it is tried anyway.
            let picked_healthy = node.healthy();
            tried.insert(node.name.clone());
            if attempt > 1 && !self.retry_budget.withdraw() {
                self.metrics.refused.get_or_create(&ReasonLabels { reason: "retry_budget" }).inc();
                break;
            }
            let uri = hyper::Uri::builder()
                .scheme(node.scheme.clone())
                .authority(node.authority.clone())
                .path_and_query(path_and_query.clone())
                .build();
            let mut request = match uri.and_then(|uri| {
                Request::builder()
                    .method(parts.method.clone())
                    .uri(uri)
                    .version(hyper::Version::HTTP_11)
                    .body(Full::new(body.clone()))
            }) {
                Ok(request) => request,
                Err(error) => return plain(StatusCode::BAD_REQUEST, &format!("bad request target: {error}")),
            };
            *request.headers_mut() = headers.clone();
            match self.attempt(&node, picked_healthy, request, idempotent).await {
                Ok(response) => {
                    let status = response.status();
                    let retry_status = matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                    );
                    if status.is_server_error() {
                        node.record_failure(self.backends.eject_after(), &self.metrics);
                    } else {
                        node.record_success();
                    }
                    if retry_status && idempotent && attempt < self.config.retries.attempts_max {
                        self.metrics.retries.get_or_create(&ReasonLabels { reason: "status" }).inc();
                        last_failure = format!("node {} answered {status}", node.name);
                        last_answer = Some((Arc::clone(&node), response));
                        continue;
                    }
                    return self.respond(&node, response, started);
                }
                Err(AttemptFailure::Connect(reason)) => {
                    node.record_failure(self.backends.eject_after(), &self.metrics);
                    self.metrics.retries.get_or_create(&ReasonLabels { reason: "connect" }).inc();
                    last_failure = format!("node {}: {reason}", node.name);
                }
                Err(AttemptFailure::Sent(reason)) => {
                    node.record_failure(self.backends.eject_after(), &self.metrics);
                    last_failure = format!("node {}: {reason}", node.name);
                    if !idempotent {
                        tracing::warn!(
                            request_id,
                            node = node.name,
                            reason,
                            "request failed after it was sent; not retried (not idempotent)"
                        );
                        return plain(
                            StatusCode::BAD_GATEWAY,
                            "the node failed while handling the request; it may or may not have been applied",
                        );
                    }
                    self.metrics.retries.get_or_create(&ReasonLabels { reason: "sent" }).inc();
                }
            }
        }
        if let Some((node, response)) = last_answer {
            return self.respond(&node, response, started);
        }
        tracing::warn!(request_id, reason = last_failure, tried = tried.len(), "no node served the request");
        self.metrics.refused.get_or_create(&ReasonLabels { reason: "no_node" }).inc();
        let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "no node could serve the request; retry shortly");
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }

    /// One attempt: the response head within the attempt timeout. A request that may be retried
    /// elsewhere is given up at once if the node goes down meanwhile (its checks fail or it is
    /// ejected); any other waits for its answer: a node that is only slow may still apply it, and
    /// the client should hear what happened.
    async fn attempt(
        &self,
        node: &Arc<Node>,
        picked_healthy: bool,
        request: Request<Full<Bytes>>,
        abandon_when_down: bool,
    ) -> Result<Response<Incoming>, AttemptFailure> {
        let mut down = node.down_watch();
        down.borrow_and_update();
        // Down between its pick and this subscription: the watch's bump was before it and will
        // not wake this attempt, which would wait out its whole timeout on a frozen node. Not
        // sent, so another node takes it whatever its method. A node picked while down (the last
        // resort when every node is down) is sent the request all the same.
        if picked_healthy && !node.healthy() {
            return Err(AttemptFailure::Connect("the node went down before the request was sent".to_string()));
        }
        node.in_flight.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.upstream.attempt_timeout_ms);
        let result = tokio::select! {
            sent = tokio::time::timeout(timeout, self.client.request(request)) => match sent {
                Ok(Ok(response)) => {
                    node.observe_latency(started.elapsed());
                    Ok(response)
                }
                Ok(Err(error)) if error.is_connect() => Err(AttemptFailure::Connect(error.to_string())),
                Ok(Err(error)) => Err(AttemptFailure::Sent(error.to_string())),
                Err(_) => Err(AttemptFailure::Sent(format!("no response head within {timeout:?}"))),
            },
            _ = down.changed(), if abandon_when_down => {
                Err(AttemptFailure::Sent("the node went down during the request".to_string()))
            }
        };
        node.in_flight.fetch_sub(1, Ordering::AcqRel);
        result
    }

    fn respond(&self, node: &Node, response: Response<Incoming>, started: Instant) -> Response<Body> {
        node.metrics.duration.observe(started.elapsed().as_secs_f64());
        let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        node.metrics.responses[class].inc();
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let (Ok(region), Ok(name)) = (HeaderValue::from_str(&node.region), HeaderValue::from_str(&node.name)) {
            parts.headers.insert(HeaderName::from_static("x-served-by-region"), region);
            parts.headers.insert(HeaderName::from_static("x-served-by-node"), name);
        }
        // Streamed through: the body is not buffered.
        Response::from_parts(parts, body.boxed())
    }
}

/// Decrements the in-flight gauge when the request is done.
struct InFlight<'a>(&'a GatewayMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn scopeguard(metrics: &GatewayMetrics) -> InFlight<'_> {
    InFlight(metrics)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A page form that carries its idempotency key as the hidden field `idempotency_key`: the
/// nodes apply it once however often it is sent (the same rule as the `Idempotency-Key` header).
fn form_carries_key(headers: &hyper::HeaderMap, body: &Bytes) -> bool {
    let form = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    form && body.split(|byte| *byte == b'&').any(|pair| pair.starts_with(b"idempotency_key=") && pair.len() > 16)
}

/// The client as the gateway decided it (`Gateway::client_of`).
pub(crate) struct EdgeClient {
    address: IpAddr,
    https: bool,
}

fn upstream_headers(incoming: HeaderMap, peer: SocketAddr, client: &EdgeClient, request_id: &str) -> HeaderMap {
    let mut headers = incoming;
    strip_hop_by_hop(&mut headers);
    headers.remove(hyper::header::HOST);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|value| value.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    // Ours, never the client's: the nodes believe these from the gateway.
    headers.insert("x-forwarded-proto", HeaderValue::from_static(if client.https { "https" } else { "http" }));
    if let Ok(value) = HeaderValue::from_str(&client.address.to_string()) {
        headers.insert("x-rananeeti-client", value);
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert("x-rananeeti-client", HeaderValue::from_static("203.0.113.1"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let client = EdgeClient { address: "127.0.0.9".parse().unwrap(), https: false };
        let out = upstream_headers(headers, "127.0.0.9:5000".parse().unwrap(), &client, "abc");
        assert_eq!(out["x-rananeeti-client"], "127.0.0.9", "a client's own claim is replaced");
        assert_eq!(out["x-forwarded-proto"], "http", "an untrusted peer's proto is replaced");
        assert!(
            !out.contains_key("x-secret-hop") && !out.contains_key("keep-alive") && !out.contains_key("connection")
        );
        assert_eq!(out["x-kept"], "1");
        assert_eq!(out["x-forwarded-for"], "127.0.0.9");
        assert_eq!(out["x-request-id"], "abc");
    }

    /// Regression: a node marked down after it was picked but before the attempt subscribed to
    /// its down watch was sent the request anyway, and the attempt waited its whole timeout on
    /// the frozen node (a 5 s request in a region-freeze test) instead of moving on.
    #[tokio::test]
    async fn a_node_down_before_the_attempt_subscribes_is_not_sent_the_request() {
        // A node that accepts connections and never answers: a frozen process.
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", frozen.local_addr().unwrap());
        let config = GatewayConfig {
            regions: vec![crate::config::RegionConfig {
                name: "r1".into(),
                nodes: vec![crate::config::NodeConfig { name: "n1".into(), url: url.clone() }],
            }],
            ..GatewayConfig::default()
        };
        let gateway = Gateway::new(config, None);
        let node = gateway.backends.find("n1").expect("the node");
        node.set_health_for_test(false, &gateway.metrics);
        let request = Request::builder().uri(format!("{url}/x")).body(Full::new(Bytes::new())).unwrap();
        let result = gateway.attempt(&node, true, request, true).await;
        assert!(matches!(result, Err(AttemptFailure::Connect(_))), "not sent: {:?}", result.as_ref().err());
    }

    /// Regression: the rule above also refused a node picked while down, the last resort when
    /// every node is down (a gateway that has not yet seen its only node pass a check), so a
    /// deployment's first requests were 503 without reaching the node.
    #[tokio::test]
    async fn a_node_picked_while_down_as_the_last_resort_is_sent_the_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        });
        let config = GatewayConfig {
            regions: vec![crate::config::RegionConfig {
                name: "r1".into(),
                nodes: vec![crate::config::NodeConfig { name: "n1".into(), url: url.clone() }],
            }],
            ..GatewayConfig::default()
        };
        let gateway = Gateway::new(config, None);
        let node = gateway.backends.find("n1").expect("the node");
        node.set_health_for_test(false, &gateway.metrics);
        let request = Request::builder().uri(format!("{url}/x")).body(Full::new(Bytes::new())).unwrap();
        let result = gateway.attempt(&node, node.healthy(), request, true).await;
        assert_eq!(result.map(|response| response.status()).ok(), Some(StatusCode::OK));
    }
}
