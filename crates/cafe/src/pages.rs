//! The cafe's pages. (Being written.)

use axum::Router;
use rananeeti_platform::Platform;
use std::sync::Arc;

pub fn router(_platform: Arc<Platform>) -> Router {
    Router::new()
}
