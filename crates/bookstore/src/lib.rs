//! The bookstore (seeds 001 and 002) on the platform: a catalog of public-domain books, accounts,
//! carts and orders homed in the user's region, checkout as one command, best sellers derived
//! from the orders, "also bought" recommendations, a blog; a JSON API described at
//! `/api/openapi.json`.
//!
//! `catalog` holds the books and the tables, `commands` the applies and their write patterns,
//! `auth` passwords and tokens; only `api` (JSON) and `pages` (HTML) know HTTP.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod commands;
pub mod pages;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rananeeti_platform::{CommandHandler, Platform};
use std::sync::Arc;

pub struct BookstoreApp {
    pub key: auth::SessionKey,
    pub security: rananeeti_node::security::Security,
}

/// None of the bookstore's POSTs is safe to send twice: a cart add reads the line's current
/// quantity before it makes its command, and a sign-up's second try answers "exists". Keyed
/// requests (`Idempotency-Key`) are retried whatever their path.
pub const DIGEST_POST_PREFIXES: &[&str] = &[];

impl rananeeti_node::App for BookstoreApp {
    fn name(&self) -> &'static str {
        "bookstore"
    }

    fn handlers(&self) -> Vec<Arc<dyn CommandHandler>> {
        vec![
            Arc::new(commands::SignupHandler),
            Arc::new(commands::CartSetHandler),
            Arc::new(commands::CheckoutHandler),
            Arc::new(commands::BookPutHandler),
            Arc::new(commands::BookDeleteHandler),
            Arc::new(commands::BlogPostHandler),
        ]
    }

    fn router(&self, platform: Arc<Platform>) -> Router {
        let shop = api::Shop { platform, key: self.key.clone(), security: self.security.clone() };
        api::router(shop.clone()).merge(pages::router(shop)).route("/bookstore/covers/{file}", get(cover))
    }

    fn authenticator(&self, platform: Arc<Platform>) -> Option<Arc<dyn rananeeti_node::caller::Authenticator>> {
        let shop = api::Shop { platform, key: self.key.clone(), security: self.security.clone() };
        Some(Arc::new(api::ShopperAuthenticator { shop }))
    }
}

/// A cover drawn from the book's id: a colour of its own and its initials (no image files to
/// ship, and no third-party image host in the page).
async fn cover(Path(file): Path<String>) -> Response {
    let Some(id) = file.strip_suffix(".svg") else {
        return rananeeti_node::ApiError::NotFound.into_response();
    };
    let hue = id.bytes().fold(7u32, |hash, byte| hash.wrapping_mul(31).wrapping_add(byte as u32)) % 360;
    let initials: String = id
        .split('-')
        .filter(|word| !word.is_empty())
        .take(3)
        .filter_map(|word| word.chars().next())
        .collect::<String>()
        .to_uppercase();
    let initials: String = initials.chars().filter(char::is_ascii_alphanumeric).collect();
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"200\" height=\"300\" viewBox=\"0 0 200 300\">\
         <rect width=\"200\" height=\"300\" fill=\"hsl({hue},45%,32%)\"/>\
         <rect x=\"12\" y=\"12\" width=\"176\" height=\"276\" fill=\"none\" stroke=\"hsl({hue},60%,80%)\" stroke-width=\"2\"/>\
         <text x=\"100\" y=\"165\" font-family=\"Georgia,serif\" font-size=\"56\" text-anchor=\"middle\" fill=\"hsl({hue},70%,92%)\">{initials}</text></svg>"
    );
    (
        [
            (axum::http::header::CONTENT_TYPE, "image/svg+xml"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        svg,
    )
        .into_response()
}
