//! The cafe reservation app (seed 000) on the platform: book a table, even while the database is
//! down; follow a queued booking until it is confirmed.
//!
//! `domain` parses input (no I/O), `reserve` is the command's apply, `service` is what the pages
//! and the API share; only `api` and `pages` know HTTP.

pub mod api;
pub mod closure;
pub mod domain;
pub mod pages;
pub mod reserve;
pub mod service;
pub mod special;

use axum::Router;
use rananeeti_platform::{CommandHandler, Migration, Platform};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct CafeConfig {
    /// Seats the cafe has for one time slot; a booking past it is rejected.
    pub seats_per_slot: i64,
}

impl Default for CafeConfig {
    fn default() -> Self {
        CafeConfig { seats_per_slot: reserve::SEATS_PER_SLOT_DEFAULT }
    }
}

pub struct CafeApp {
    pub config: CafeConfig,
}

// The admin token, the demo switch and the admin's page sessions reach the cafe's handlers
// through the node (`rananeeti_node::security::Security`, in every request's extensions).

/// The cafe's tables.
pub fn migrations() -> Vec<Migration> {
    reserve::MIGRATIONS.iter().chain(special::MIGRATIONS).chain(closure::MIGRATIONS).copied().collect()
}

/// The cafe's POSTs whose command id digests the reservation's content (a retry is a
/// duplicate): the gateway and an exported load balancer may send them again to another node.
pub const DIGEST_POST_PREFIXES: &[&str] = &["/api/cafe/reservations", "/cafe/reservations"];

impl rananeeti_node::App for CafeApp {
    fn name(&self) -> &'static str {
        "cafe"
    }

    fn handlers(&self) -> Vec<Arc<dyn CommandHandler>> {
        vec![
            Arc::new(reserve::ReserveHandler { seats_per_slot: self.config.seats_per_slot }),
            Arc::new(special::SetSpecialHandler),
            Arc::new(closure::SetClosureHandler),
        ]
    }

    fn router(&self, platform: Arc<Platform>) -> Router {
        api::router(Arc::clone(&platform)).merge(pages::router(platform))
    }
}
