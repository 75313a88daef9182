//! The rananeeti binary's library half: configuration, the `up` supervisor and local PostgreSQL
//! clusters, kept here so integration tests can drive them.

/// `rananeeti --version`: the crate's version and the commit it was built from (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RANANEETI_COMMIT"), ")");

pub mod apps;
pub mod backup_cmd;
pub mod config;
pub mod deploy_cmd;
pub mod drill_cmd;
pub mod export_lb;
pub mod files;
pub mod gateway_cmd;
pub mod node_cmd;
pub mod postgres;
pub mod prometheus_config;
pub mod topology;
pub mod up;
pub mod witness_cmd;
