//! The gateway: one port in front of every region. A reverse proxy on hyper (keep-alive pools,
//! streamed responses, timeouts on every hop) that routes by policy to healthy regions, picks a
//! node by power of two choices, retries safely elsewhere, drains nodes for deploys, and refuses
//! abuse at the edge (body and header size, per-IP rate, slow clients, overload). It holds no
//! state that matters: run two and either works.

pub mod admin;
pub mod answer;
pub mod backends;
pub mod config;
pub mod console;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod upstream;

pub use config::GatewayConfig;
pub use gateway::Gateway;
