//! The integration tests of the `rananeeti` binary crate, built into one test binary.

mod postgres;

mod admin;
mod api_contract;
mod autoscale;
mod backup;
mod bookstore_api;
mod bookstore_browser;
mod browser;
mod cafe_api;
mod console;
mod crash;
mod deploy;
mod drill;
mod gateway;
mod health;
mod idempotency;
mod image;
mod kubernetes;
mod load_balancers;
mod logs;
mod monitoring;
mod node_loss;
mod outage;
mod owners;
mod queue_backup;
mod queue_delivery;
mod region_loss;
mod regions;
mod seats;
mod secrets;
mod security;
mod support;
mod up;
