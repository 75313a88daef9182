//! The node's HTTP edge: the server, `/healthz`, `/readyz`, `/metrics`, the admin API, the one
//! error type, and the interface apps implement to mount their pages and API.
//!
//! Only this crate and the apps' HTTP edges (their `api` and `pages` modules) know HTTP; the
//! platform never sees axum types.

pub mod admin;
pub mod app;
pub mod caller;
pub mod csrf;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod ownership;
pub mod pages;
pub mod queue_copies;
pub mod replication;
pub mod security;
pub mod server;
pub mod session;
pub mod status;
pub mod telemetry;
pub mod throttle;
pub mod witness;

pub use app::App;
pub use error::ApiError;
pub use json::ApiJson;
pub use server::{serve, NodeHttpConfig};
