//! The client the gateway talks to nodes with (health checks, the console's samples, proxied
//! requests): keep-alive pools, a connect timeout, no Nagle.

use crate::config::GatewayConfig;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

pub fn upstream_client(config: &GatewayConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(config.upstream.connect_timeout_ms)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.upstream.idle_connections_per_node)
        .build(connector)
}
