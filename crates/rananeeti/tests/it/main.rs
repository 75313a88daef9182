//! The integration tests of the `rananeeti` binary crate, built into one test binary.

mod postgres;

mod admin;
mod backup;
mod bookstore_api;
mod bookstore_browser;
mod browser;
mod cafe_api;
mod crash;
mod drill;
mod gateway;
mod health;
mod node_loss;
mod outage;
mod owners;
mod regions;
mod seats;
mod support;
mod up;
