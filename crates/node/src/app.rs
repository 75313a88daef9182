//! What an app gives the node: its command handlers and its routes. Its migrations and the POST
//! prefixes the gateway may retry are declared beside it, in the binary's registry of apps
//! (`rananeeti::apps`), so that a restore and the gateway know them without building the app.

use axum::Router;
use rananeeti_platform::{CommandHandler, Platform};
use std::sync::Arc;

pub trait App: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn handlers(&self) -> Vec<Arc<dyn CommandHandler>>;
    /// Routes mounted at the root of the node; they talk to the store only through `platform`.
    fn router(&self, platform: Arc<Platform>) -> Router;
    /// How the app's signed-in users are recognised from a request's bearer token, for the
    /// node's own routes (`/api/commands/{id}`) and for refusing them on admin routes (403).
    fn authenticator(&self, _platform: Arc<Platform>) -> Option<Arc<dyn crate::caller::Authenticator>> {
        None
    }
}
