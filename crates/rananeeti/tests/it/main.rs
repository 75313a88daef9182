//! The integration tests of the `rananeeti` binary crate, built into one test binary.

mod postgres;

mod admin;
mod api_contract;
mod backup;
mod bookstore_api;
mod bookstore_browser;
mod browser;
mod cafe_api;
mod crash;
mod drill;
mod gateway;
mod health;
mod idempotency;
mod image;
mod kubernetes;
mod load_balancers;
mod node_loss;
mod outage;
mod owners;
mod queue_backup;
mod queue_delivery;
mod regions;
mod seats;
mod secrets;
mod support;
mod up;
