//! The rananeeti binary's library half: configuration, the `up` supervisor and local PostgreSQL
//! clusters, kept here so integration tests can drive them.

pub mod backup_cmd;
pub mod config;
pub mod drill_cmd;
pub mod export_lb;
pub mod gateway_cmd;
pub mod node_cmd;
pub mod postgres;
pub mod topology;
pub mod up;
pub mod witness_cmd;
