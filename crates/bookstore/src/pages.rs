//! The bookstore's web pages: the shop front, search, a book's page, accounts, the cart, checkout,
//! orders that follow themselves from *pending* to confirmed, the blog, and the admin's catalog
//! and blog forms. Server-rendered and complete without JavaScript; the script only keeps a form
//! from being sent twice and updates a pending order in place.
//!
//! Sessions are the API's signed tokens, in an HttpOnly cookie. Every form carries a CSRF token:
//! an HMAC of the visitor's cookies ([`Visit::csrf_token`]), checked on every POST. While the
//! database is down, the catalog is read from another region's database or, failing that, from
//! the seed compiled into the binary, and the cart shows the changes still waiting in a queue
//! ([`CartView`]); a shopper's cart commands then join the queue behind their waiting ones, so
//! they are applied in the order they were made.

use crate::api::{self, Order, Shop};
use crate::auth::{self, Session};
use crate::catalog::{self, book_from_row, Book, BOOK_COLUMNS};
use crate::commands::{KIND_CART_SET, KIND_CHECKOUT};
use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use rananeeti_node::pages::{asset_response, assets_digest, page_headers, Asset};
use rananeeti_node::session::Claims;
use rananeeti_node::ApiError;
use rananeeti_platform::hlc::wall_clock_ms;
use rananeeti_platform::sqlx::{self, AnyPool};
use rananeeti_platform::{CommandId, CommandState, Delivery, Outcome, SubmitOptions, Submitted};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use time::macros::format_description;
use time::OffsetDateTime;

pub fn router(shop: Shop) -> Router {
    let pages = Pages::new(shop);
    Router::new()
        .route("/bookstore", get(home))
        .route("/bookstore/", get(|| async { axum::response::Redirect::permanent("/bookstore") }))
        .route("/bookstore/books", get(books))
        .route("/bookstore/books/{id}", get(book))
        .route("/bookstore/signup", get(signup_page).post(signup))
        .route("/bookstore/signin", get(signin_page).post(signin))
        .route("/bookstore/signout", post(signout))
        .route("/bookstore/cart", get(cart_page).post(add_to_cart))
        .route("/bookstore/cart/lines", post(change_line))
        .route("/bookstore/checkout", post(checkout))
        .route("/bookstore/orders", get(orders_page))
        .route("/bookstore/orders/{id}", get(order_page))
        .route("/bookstore/orders/{id}/status", get(order_status))
        .route("/bookstore/blog", get(blog_page))
        .route("/bookstore/blog/{slug}", get(post_page))
        .route("/bookstore/admin", get(admin_home))
        .route("/bookstore/admin/signin", post(admin_signin))
        .route("/bookstore/admin/signout", post(admin_signout))
        .route("/bookstore/admin/books/new", get(admin_new_book).post(admin_create_book))
        .route("/bookstore/admin/books/{id}/edit", get(admin_edit_book).post(admin_update_book))
        .route("/bookstore/admin/books/{id}/delete", post(admin_delete_book))
        .route("/bookstore/admin/posts/new", get(admin_new_post).post(admin_create_post))
        .route("/bookstore/{*rest}", get(not_found))
        .route("/static/bookstore/bookstore.css", get(|| async { asset_response(&CSS) }))
        .route("/static/bookstore/bookstore.js", get(|| async { asset_response(&JS) }))
        .route("/static/bookstore/logo.svg", get(|| async { asset_response(&LOGO) }))
        .route("/static/bookstore/{*rest}", get(not_found))
        .with_state(pages)
}

// ---------------------------------------------------------------------------------------------
// Limits and names.

const SESSION_COOKIE: &str = "bs_session";
/// Read by the gateway's `home` policy to send a shopper to their home region.
const HOME_COOKIE: &str = "rananeeti_home";
const CSRF_COOKIE: &str = "bs_csrf";
const FLASH_COOKIE: &str = "bs_flash";
/// The admin's page session (shared by every app's pages; never the admin token itself).
const ADMIN_COOKIE: &str = rananeeti_node::security::ADMIN_COOKIE;
const ADMIN_PATH: &str = "/bookstore/admin";
const CSRF_COOKIE_MAX_AGE_SECONDS: u64 = 7 * 24 * 60 * 60;
const FLASH_COOKIE_MAX_AGE_SECONDS: u64 = 60;
/// Bytes of randomness in a visitor's CSRF cookie.
const CSRF_COOKIE_BYTES: usize = 32;
/// Queue entries looked through for a shopper's waiting cart commands (own queue and copies).
const QUEUE_SCAN_ENTRIES_MAX: usize = 1000;
/// Waiting cart commands of one shopper taken into account.
const CART_EVENTS_MAX: usize = 200;
/// A second "Place order" on an empty cart within this time is taken as a double click.
const RECENT_ORDER_MS: u64 = 10 * 60 * 1000;
/// Books on each of the home page's shelves: full rows of 6, 4, 3 or 2 cards.
const HOME_BOOKS: usize = 12;
const HOME_BEST_SELLERS: usize = 6;
const HOME_POSTS: usize = 3;
const ALSO_BOUGHT: usize = 5;
const ADMIN_PAGE_BOOKS: usize = 50;
const BLOG_POSTS_MAX: usize = 100;
const QUERY_CHARS_MAX: usize = 100;
const NEXT_PATH_CHARS_MAX: usize = 300;

static SEED: LazyLock<Vec<Book>> = LazyLock::new(catalog::seed_books);

// ---------------------------------------------------------------------------------------------
// Static files, compiled into the binary.

const CSS: Asset = Asset { body: include_bytes!("../static/bookstore.css"), content_type: "text/css; charset=utf-8" };
const JS: Asset =
    Asset { body: include_bytes!("../static/bookstore.js"), content_type: "text/javascript; charset=utf-8" };
const LOGO: Asset = Asset { body: include_bytes!("../static/logo.svg"), content_type: "image/svg+xml" };
const ASSETS_DIGEST: u64 = assets_digest(&[&CSS, &JS, &LOGO]);

/// The `?v=` the templates append to static URLs.
pub(crate) fn asset_version() -> String {
    rananeeti_node::pages::asset_version(ASSETS_DIGEST)
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/// Integer cents as dollars: 129900 is "$1,299.00".
pub fn dollars(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let whole: Vec<char> = (cents / 100).to_string().chars().collect();
    let groups: Vec<String> = whole.rchunks(3).rev().map(|group| group.iter().collect()).collect();
    format!("{sign}${}.{:02}", groups.join(","), cents % 100)
}

/// A price as typed ("12.99", "$12.9", "12") in cents.
pub fn parse_dollars(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    let raw = raw.strip_prefix('$').unwrap_or(raw).trim();
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |text: &str| !text.is_empty() && text.len() <= 9 && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(whole) || (!fraction.is_empty() && (!digits(fraction) || fraction.len() > 2)) {
        return None;
    }
    let fraction_cents = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().ok()? * 10,
        _ => fraction.parse::<i64>().ok()?,
    };
    Some(whole.parse::<i64>().ok()? * 100 + fraction_cents)
}

/// A rating as typed in stars ("4.5", "4") in tenths of a star; empty is none.
pub fn parse_stars(raw: &str) -> Result<Option<i64>, &'static str> {
    const SHAPE: &str = "Stars from 0 to 5, like 4.5";
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, "0"));
    let digit = |text: &str| match text.as_bytes() {
        [byte] if byte.is_ascii_digit() => Ok(i64::from(byte - b'0')),
        _ => Err(SHAPE),
    };
    Ok(Some(digit(whole)? * 10 + digit(fraction)?))
}

/// Tenths of a star as "4.3".
pub fn stars_text(rating: i64) -> String {
    format!("{}.{}", rating / 10, rating % 10)
}

/// The CSS step (0, 5, …, 50) that draws a rating to the nearest half star.
pub fn stars_step(rating: i64) -> i64 {
    ((rating.clamp(0, 50) + 2) / 5) * 5
}

/// Milliseconds since the epoch as "2 Dec 2026, 04:53 UTC".
pub fn format_time(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|at| {
            at.format(format_description!("[day padding:none] [month repr:short] [year], [hour]:[minute] UTC")).ok()
        })
        .unwrap_or_default()
}

/// Milliseconds since the epoch as RFC 3339, for `<time datetime>`.
fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Percent-encodes a query parameter's value.
fn query_escape(text: &str) -> String {
    let mut escaped = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

fn first_upper(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn plural(count: i64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

/// Where to go after signing in: a bookstore page of ours, never another site.
pub fn safe_next(raw: Option<&str>) -> String {
    match raw.map(str::trim) {
        Some(next)
            if next.starts_with("/bookstore")
                && next.len() <= NEXT_PATH_CHARS_MAX
                && !next.contains("//")
                && !next.contains('\\')
                && !next.chars().any(char::is_control) =>
        {
            next.to_string()
        }
        _ => "/bookstore".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Flash messages: a code in a short-lived cookie, read (and cleared) by the next page shown.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flash {
    Welcome,
    AccountQueued,
    SignedIn,
    SignedOut,
    SignInNeeded,
    Added,
    AddedQueued,
    CartUpdated,
    CartUpdatedQueued,
    Removed,
    BadQuantity,
    CartEmpty,
    CartUnreadable,
    OrderPlaced,
    OrderQueued,
    AlreadyPlaced,
    OrderRejected,
    AdminSignedIn,
    AdminSignedOut,
    AdminNeeded,
    BookSaved,
    BookSavedQueued,
    BookDeleted,
    BookDeletedQueued,
    PostPublished,
    PostQueued,
}

const FLASH_CODES: [(Flash, &str); 26] = [
    (Flash::Welcome, "welcome"),
    (Flash::AccountQueued, "account-queued"),
    (Flash::SignedIn, "signed-in"),
    (Flash::SignedOut, "signed-out"),
    (Flash::SignInNeeded, "sign-in-needed"),
    (Flash::Added, "added"),
    (Flash::AddedQueued, "added-queued"),
    (Flash::CartUpdated, "cart-updated"),
    (Flash::CartUpdatedQueued, "cart-updated-queued"),
    (Flash::Removed, "removed"),
    (Flash::BadQuantity, "bad-quantity"),
    (Flash::CartEmpty, "cart-empty"),
    (Flash::CartUnreadable, "cart-unreadable"),
    (Flash::OrderPlaced, "order-placed"),
    (Flash::OrderQueued, "order-queued"),
    (Flash::AlreadyPlaced, "already-placed"),
    (Flash::OrderRejected, "order-rejected"),
    (Flash::AdminSignedIn, "admin-signed-in"),
    (Flash::AdminSignedOut, "admin-signed-out"),
    (Flash::AdminNeeded, "admin-needed"),
    (Flash::BookSaved, "book-saved"),
    (Flash::BookSavedQueued, "book-saved-queued"),
    (Flash::BookDeleted, "book-deleted"),
    (Flash::BookDeletedQueued, "book-deleted-queued"),
    (Flash::PostPublished, "post-published"),
    (Flash::PostQueued, "post-queued"),
];

/// A flash as the page shows it.
pub struct FlashView {
    pub code: &'static str,
    /// ok, info, waiting or problem: the colour.
    pub tone: &'static str,
    pub heading: &'static str,
    pub text: &'static str,
}

impl Flash {
    pub fn code(self) -> &'static str {
        FLASH_CODES.iter().find(|(flash, _)| *flash == self).map(|(_, code)| *code).expect("every flash has a code")
    }

    pub fn from_code(code: &str) -> Option<Flash> {
        FLASH_CODES.iter().find(|(_, known)| *known == code).map(|(flash, _)| *flash)
    }

    pub fn view(self) -> FlashView {
        let (tone, heading, text) = match self {
            Flash::Welcome => ("ok", "Welcome to Rananeeti Books", "Your account is ready and you are signed in."),
            Flash::AccountQueued => (
                "waiting",
                "Your account is on its way",
                "Our database is unavailable, so your sign-up is queued safely. Sign in in a minute, once it is confirmed.",
            ),
            Flash::SignedIn => ("ok", "Signed in", "Welcome back."),
            Flash::SignedOut => ("info", "Signed out", "See you soon."),
            Flash::SignInNeeded => ("info", "Please sign in", "Sign in or create an account to fill a cart and order."),
            Flash::Added => ("ok", "Added to your cart", "Keep browsing, or go to your cart to order."),
            Flash::AddedQueued => (
                "waiting",
                "Added to your cart — saved while our database is unavailable",
                "Your cart change is queued safely and applied as soon as the database is back. You can still order.",
            ),
            Flash::CartUpdated => ("ok", "Cart updated", ""),
            Flash::CartUpdatedQueued => (
                "waiting",
                "Cart updated — saved while our database is unavailable",
                "The change is queued safely and applied as soon as the database is back.",
            ),
            Flash::Removed => ("ok", "Removed from your cart", ""),
            Flash::BadQuantity => ("problem", "That quantity doesn't work", "Choose from 1 to 99 copies."),
            Flash::CartEmpty => ("info", "Your cart is empty", "Add a book or two before placing an order."),
            Flash::CartUnreadable => (
                "problem",
                "We can't read your cart right now",
                "Our database is unavailable. Nothing was ordered; please try again in a minute.",
            ),
            Flash::OrderPlaced => ("ok", "Thank you! Your order is placed", "We'll get your books on their way."),
            Flash::OrderQueued => (
                "waiting",
                "Received — your order is queued while our database is unavailable",
                "It is safe with us and confirmed as soon as the database is back. This page updates by itself.",
            ),
            Flash::AlreadyPlaced => (
                "info",
                "Already placed — this is the order you just sent",
                "Pressing “Place order” twice orders once.",
            ),
            Flash::OrderRejected => ("problem", "Sorry, we could not place this order", "The reason is below."),
            Flash::AdminSignedIn => ("ok", "Signed in as admin", ""),
            Flash::AdminSignedOut => ("info", "Signed out of admin", ""),
            Flash::AdminNeeded => ("problem", "Admins only", "Sign in with the deployment's admin token."),
            Flash::BookSaved => ("ok", "Book saved", ""),
            Flash::BookSavedQueued => (
                "waiting",
                "Book saved — queued while the database is unavailable",
                "The change is applied as soon as the database is back.",
            ),
            Flash::BookDeleted => ("ok", "Book deleted", ""),
            Flash::BookDeletedQueued => (
                "waiting",
                "Book deleted — queued while the database is unavailable",
                "The change is applied as soon as the database is back.",
            ),
            Flash::PostPublished => ("ok", "Post published", ""),
            Flash::PostQueued => (
                "waiting",
                "Post queued while the database is unavailable",
                "It appears on the blog as soon as the database is back.",
            ),
        };
        FlashView { code: self.code(), tone, heading, text }
    }
}

// ---------------------------------------------------------------------------------------------
// Cookies.

fn cookies(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect()
}

/// The first cookie of that name: the browser sends the one with the longest path first.
fn cookie<'a>(cookies: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    cookies.iter().find(|(found, _)| *found == name).map(|(_, value)| *value).filter(|value| !value.is_empty())
}

struct CookieSpec<'a> {
    name: &'a str,
    value: &'a str,
    path: &'a str,
    /// `None`: until the browser closes.
    max_age_seconds: Option<u64>,
    http_only: bool,
    same_site: &'a str,
}

fn set_cookie(spec: CookieSpec<'_>, secure: bool) -> HeaderValue {
    let mut text = format!("{}={}; Path={}; SameSite={}", spec.name, spec.value, spec.path, spec.same_site);
    if let Some(max_age) = spec.max_age_seconds {
        text.push_str(&format!("; Max-Age={max_age}"));
    }
    if spec.http_only {
        text.push_str("; HttpOnly");
    }
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).expect("cookie names and values are header-safe")
}

fn clear_cookie(name: &str, path: &str, secure: bool) -> HeaderValue {
    set_cookie(
        CookieSpec { name, value: "", path, max_age_seconds: Some(0), http_only: true, same_site: "Lax" },
        secure,
    )
}

/// A session token holds only `[0-9a-zA-Z._-]`; anything else did not come from us.
fn cookie_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------------------------
// The visitor: who they are (session, admin), their CSRF cookie, their flash.

#[derive(Clone)]
struct Pages {
    shop: Shop,
    /// Keys the CSRF tokens; derived from the deployment's admin token, the secret every node of
    /// the deployment shares (the session key is kept inside `auth`).
    csrf_key: Arc<[u8; 32]>,
}

impl Pages {
    fn new(shop: Shop) -> Pages {
        let csrf_key = Arc::new(shop.security.derived_key(b"rananeeti bookstore csrf key v1"));
        Pages { shop, csrf_key }
    }
}

pub struct Visit {
    session: Option<Session>,
    /// The session cookie as sent (also when it no longer verifies).
    session_cookie: Option<String>,
    /// The shopper's session, when the cookie verified (to renew or end it).
    session_claims: Option<Claims>,
    /// A renewed session cookie to send back (the session was used a while after its last one).
    renewed_session: Option<String>,
    admin: bool,
    /// The admin's page session, when the admin cookie verified.
    admin_claims: Option<Claims>,
    renewed_admin: Option<String>,
    /// The client's address (for the sign-in throttle).
    address: Option<std::net::IpAddr>,
    csrf_cookie: String,
    csrf_cookie_is_new: bool,
    csrf_key: Arc<[u8; 32]>,
    flash: Option<Flash>,
    flash_cookie_sent: bool,
    /// Cookies get `Secure` when the request came over HTTPS (through a TLS-terminating proxy).
    secure: bool,
    /// The browser says the request comes from another site (`Sec-Fetch-Site: cross-site`).
    cross_site: bool,
    request_id: String,
    path: String,
}

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const FETCH_SITE_HEADER: HeaderName = HeaderName::from_static("sec-fetch-site");

impl FromRequestParts<Pages> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, pages: &Pages) -> Result<Visit, Self::Rejection> {
        let peer = rananeeti_node::security::peer_of(&parts.extensions);
        let path = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/bookstore").to_string();
        Ok(Visit::new(pages, &parts.headers, peer, &path).await)
    }
}

impl Visit {
    async fn new(pages: &Pages, headers: &HeaderMap, peer: Option<std::net::IpAddr>, path: &str) -> Visit {
        let cookies = cookies(headers);
        let session_cookie = cookie(&cookies, SESSION_COOKIE).filter(|value| cookie_safe(value)).map(str::to_string);
        let checked = match session_cookie.as_deref() {
            Some(token) => pages.shop.key.check(&pages.shop.platform, token).await,
            None => None,
        };
        let renewed_session = checked
            .as_ref()
            .filter(|(_, claims)| claims.due_for_renewal())
            .map(|(_, claims)| pages.shop.key.renew(claims));
        let (session, session_claims) =
            checked.map(|(session, claims)| (Some(session), Some(claims))).unwrap_or_default();
        let admin_claims = match cookie(&cookies, ADMIN_COOKIE).filter(|value| cookie_safe(value)) {
            Some(value) => pages.shop.security.admin_session(&pages.shop.platform, value).await,
            None => None,
        };
        let renewed_admin = admin_claims
            .as_ref()
            .filter(|claims| claims.due_for_renewal())
            .map(|claims| pages.shop.security.renew_admin_session(claims));
        let admin = admin_claims.is_some();
        let existing_csrf = cookie(&cookies, CSRF_COOKIE)
            .filter(|value| value.len() == CSRF_COOKIE_BYTES * 2 && value.bytes().all(|byte| byte.is_ascii_hexdigit()));
        let (csrf_cookie, csrf_cookie_is_new) = match existing_csrf {
            Some(value) => (value.to_string(), false),
            None => (hex::encode(rand::random::<[u8; CSRF_COOKIE_BYTES]>()), true),
        };
        let flash_value = cookie(&cookies, FLASH_COOKIE);
        let header_text = |name: &HeaderName| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
        Visit {
            session,
            session_cookie,
            session_claims,
            renewed_session,
            admin,
            admin_claims,
            renewed_admin,
            address: pages.shop.security.client_address(headers, peer),
            csrf_cookie,
            csrf_cookie_is_new,
            csrf_key: Arc::clone(&pages.csrf_key),
            flash: flash_value.and_then(Flash::from_code),
            flash_cookie_sent: flash_value.is_some(),
            secure: pages.shop.security.is_https(headers, peer),
            cross_site: header_text(&FETCH_SITE_HEADER).eq_ignore_ascii_case("cross-site"),
            request_id: match header_text(&REQUEST_ID_HEADER) {
                "" => "-".to_string(),
                id => id.to_string(),
            },
            path: path.to_string(),
        }
    }

    /// The token every form carries: an HMAC of this visitor's random CSRF cookie and their
    /// session cookie, so it is bound to the signed-in session and a page from before signing in
    /// or out no longer posts. (Not of the admin cookie: that one is sent only under
    /// `/bookstore/admin`, and an admin page's header posts to `/bookstore/signout`.)
    pub fn csrf_token(&self) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.csrf_key.as_slice()).expect("HMAC takes any key length");
        for part in [self.csrf_cookie.as_str(), self.session_cookie.as_deref().unwrap_or("")] {
            mac.update(part.as_bytes());
            mac.update(b"\x1f");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn check_csrf(&self, token: &str) -> Result<(), PageError> {
        let expected = self.csrf_token();
        let matches = bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), token.trim().as_bytes()));
        if self.csrf_cookie_is_new || self.cross_site || !matches {
            tracing::info!(
                request_id = self.request_id,
                cross_site = self.cross_site,
                "form refused: CSRF check failed"
            );
            return Err(PageError::Forbidden);
        }
        Ok(())
    }

    /// The signed-in shopper, or off to sign in and back to `next` (this page when `None`).
    fn signed_in(&self, next: Option<&str>) -> Result<&Session, PageError> {
        self.session.as_ref().ok_or_else(|| PageError::SignIn { next: next.unwrap_or(&self.path).to_string() })
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering, redirects and error pages.

/// A rendered page with the headers every page carries; the flash it showed is cleared.
/// Carts, orders and accounts are personal, so pages are never stored by caches.
fn render(visit: &Visit, status: StatusCode, template: &impl Template) -> Response {
    let mut response = match template.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(error) => {
            tracing::error!(%error, request_id = visit.request_id, "page template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal error: the page could not be rendered.").into_response()
        }
    };
    page_headers(&mut response);
    if visit.flash_cookie_sent {
        response.headers_mut().append(header::SET_COOKIE, clear_cookie(FLASH_COOKIE, "/bookstore", visit.secure));
    }
    response
}

/// 303 to `to`, with a flash for the page there.
fn redirect(visit: &Visit, to: &str, flash: Option<Flash>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    page_headers(&mut response);
    if let Some(flash) = flash {
        let cookie = set_cookie(
            CookieSpec {
                name: FLASH_COOKIE,
                value: flash.code(),
                path: "/bookstore",
                max_age_seconds: Some(FLASH_COOKIE_MAX_AGE_SECONDS),
                http_only: true,
                same_site: "Lax",
            },
            visit.secure,
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// What went wrong, as the shopper is told; details go to the log.
#[derive(Debug)]
enum PageError {
    NotFound,
    BadRequest(String),
    /// The form's CSRF token did not match (or came from another site).
    Forbidden,
    /// The page needs a signed-in shopper: off to the sign-in form, and back here after.
    SignIn {
        next: String,
    },
    /// The store cannot be read and nothing else holds what was asked for.
    Unavailable,
    /// A limit for this visitor (sign-in lock-out, the password hashing queue full).
    TooMany {
        retry_after_seconds: u64,
    },
    Internal,
}

impl PageError {
    fn from_api(error: ApiError, request_id: &str) -> PageError {
        match error {
            ApiError::NotFound => PageError::NotFound,
            ApiError::Unavailable(detail) => {
                tracing::warn!(detail, request_id, "bookstore page: store unavailable");
                PageError::Unavailable
            }
            ApiError::Invalid { message, .. } | ApiError::BadRequest { message, .. } => {
                PageError::BadRequest(first_upper(&message))
            }
            ApiError::TooManyRequests { retry_after_seconds, .. } => PageError::TooMany { retry_after_seconds },
            other => {
                tracing::error!(error = %other, request_id, "bookstore page failed");
                PageError::Internal
            }
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    title: &'static str,
    heading: &'static str,
    message: String,
    request_id: Option<String>,
}

/// Turns a handler's result into the response, with the visitor's new CSRF cookie if they had none.
fn finish(visit: &Visit, result: Result<Response, PageError>) -> Response {
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error_page(visit, error),
    };
    // A renewed session, unless the handler set or cleared the cookie itself (sign-in, sign-out).
    let sets = |name: &str| {
        response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|value| value.to_str().is_ok_and(|value| value.starts_with(&format!("{name}="))))
    };
    let renewals = [
        (SESSION_COOKIE, visit.renewed_session.as_deref(), "Lax", session_cookie_max_age()),
        (ADMIN_COOKIE, visit.renewed_admin.as_deref(), "Strict", admin_cookie_max_age()),
    ];
    let renewals: Vec<_> = renewals.into_iter().filter(|(name, value, _, _)| value.is_some() && !sets(name)).collect();
    for (name, value, same_site, max_age) in renewals {
        let cookie = set_cookie(
            CookieSpec {
                name,
                value: value.expect("filtered"),
                path: "/",
                max_age_seconds: Some(max_age),
                http_only: true,
                same_site,
            },
            visit.secure,
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if visit.csrf_cookie_is_new {
        let cookie = set_cookie(
            CookieSpec {
                name: CSRF_COOKIE,
                value: &visit.csrf_cookie,
                path: "/bookstore",
                max_age_seconds: Some(CSRF_COOKIE_MAX_AGE_SECONDS),
                http_only: true,
                same_site: "Lax",
            },
            visit.secure,
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn error_page(visit: &Visit, error: PageError) -> Response {
    let request_id = Some(visit.request_id.clone());
    let (status, title, heading, message, request_id) = match error {
        PageError::SignIn { next } => {
            return redirect(
                visit,
                &format!("/bookstore/signin?next={}", query_escape(&safe_next(Some(&next)))),
                Some(Flash::SignInNeeded),
            );
        }
        PageError::NotFound => (
            StatusCode::NOT_FOUND,
            "Not found",
            "We couldn't find that page",
            "The link may be mistyped, or the book may have left our shelves. Try a search, or browse the shop."
                .to_string(),
            None,
        ),
        PageError::BadRequest(message) => {
            (StatusCode::BAD_REQUEST, "Bad request", "That didn't look right", message, None)
        }
        PageError::Forbidden => (
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form has expired",
            "For your safety we only take forms from pages of this shop opened since you last signed in or out. \
             Go back, reload the page and send it again. (Cookies must be on.)"
                .to_string(),
            None,
        ),
        PageError::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "Our shelves are out of reach for a moment",
            "We can't read this right now because our database is unavailable. Orders and cart changes you have made \
             are safe: they are confirmed as soon as it is back. Please try again in a minute."
                .to_string(),
            request_id,
        ),
        PageError::TooMany { retry_after_seconds } => {
            let page = ErrorPage {
                layout: Layout::new(visit, Nav::None, None),
                status: 429,
                title: "Please wait",
                heading: "One moment, please",
                message: format!(
                    "We are taking a lot of sign-ins right now, or this account had too many failed ones. Please try \
                     again in {retry_after_seconds} seconds."
                ),
                request_id: None,
            };
            let mut response = render(visit, StatusCode::TOO_MANY_REQUESTS, &page);
            response.headers_mut().insert(header::RETRY_AFTER, retry_after_seconds.into());
            return response;
        }
        PageError::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Something went wrong on our side",
            "Sorry, we could not finish that. Please try again; if it keeps happening, tell us the reference below."
                .to_string(),
            request_id,
        ),
    };
    let page = ErrorPage {
        layout: Layout::new(visit, Nav::None, None),
        status: status.as_u16(),
        title,
        heading,
        message,
        request_id,
    };
    let mut response = render(visit, status, &page);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

async fn not_found(visit: Visit) -> Response {
    finish(&visit, Err(PageError::NotFound))
}

// ---------------------------------------------------------------------------------------------
// The layout every page shares.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    None,
    Home,
    Books,
    Blog,
    Orders,
    Cart,
    Account,
    Admin,
}

/// A banner under the header: what the page shows may be out of date.
pub struct Notice {
    pub id: &'static str,
    pub text: String,
}

pub struct Layout {
    pub csrf: String,
    /// This rendering's key for its write forms (each form appends its own name).
    pub form_key: String,
    pub signed_in: bool,
    pub admin: bool,
    /// Books in the cart; `None` hides the badge.
    pub cart_count: Option<i64>,
    pub flash: Option<FlashView>,
    pub notices: Vec<Notice>,
    pub query: String,
    pub nav: Nav,
    /// This page, to come back to after signing in.
    pub here: String,
}

impl Layout {
    fn new(visit: &Visit, nav: Nav, cart_count: Option<i64>) -> Layout {
        Layout {
            csrf: visit.csrf_token(),
            form_key: rananeeti_node::pages::form_key(),
            signed_in: visit.session.is_some(),
            admin: visit.admin,
            cart_count,
            flash: visit.flash.map(Flash::view),
            notices: Vec::new(),
            query: String::new(),
            nav,
            here: query_escape(&safe_next(Some(&visit.path))),
        }
    }

    pub fn current(&self, nav: Nav) -> bool {
        self.nav == nav
    }

    pub fn cart_label(&self) -> String {
        match self.cart_count {
            Some(count) => format!("Cart, {}", plural(count, "book", "books")),
            None => "Cart".to_string(),
        }
    }

    fn notice(&mut self, source: &Source) {
        let text = match source {
            Source::Live => return,
            Source::Replica(region) => format!(
                "Our database here is unavailable: you are seeing the catalogue as region {region} has it, which may \
                 lag a little. Orders you place are saved and confirmed when it is back."
            ),
            Source::Printed => "Our database is unavailable: you are seeing our printed catalogue, so a price or \
                                the stock may have changed. Orders you place are saved and confirmed when it is back."
                .to_string(),
        };
        if !self.notices.iter().any(|notice| notice.id == "catalog-notice") {
            self.notices.push(Notice { id: "catalog-notice", text });
        }
    }
}

impl Pages {
    /// The layout, with the cart's badge for a signed-in shopper.
    async fn layout(&self, visit: &Visit, nav: Nav) -> Layout {
        let count = match &visit.session {
            Some(session) => Some(self.cart_view(session).await.count),
            None => None,
        };
        Layout::new(visit, nav, count)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the catalog: this region's database, another region's, or the printed catalogue.

/// Where the books on a page were read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Live,
    /// Another region's database (the local one is down): replicated, may lag.
    Replica(String),
    /// The seed compiled into the binary: no database answered.
    Printed,
}

/// A book as cards and lists show it.
pub struct BookCard {
    pub id: String,
    pub url: String,
    pub title: String,
    pub author: String,
    pub category: String,
    pub cover: String,
    pub price: String,
    pub price_cents: i64,
    pub rating: String,
    pub stars_step: i64,
    pub stock: i64,
    /// Copies sold, on best-seller cards.
    pub sold: Option<i64>,
}

impl From<&Book> for BookCard {
    fn from(book: &Book) -> BookCard {
        BookCard {
            url: format!("/bookstore/books/{}", book.id),
            id: book.id.clone(),
            title: book.title.clone(),
            author: book.author.clone(),
            category: book.category.clone(),
            cover: book.cover.clone(),
            price: dollars(book.price_cents),
            price_cents: book.price_cents,
            rating: stars_text(book.rating),
            stars_step: stars_step(book.rating),
            stock: book.stock,
            sold: None,
        }
    }
}

pub struct CategoryLink {
    pub name: String,
    pub url: String,
    pub books: i64,
    pub current: bool,
}

fn category_url(name: &str) -> String {
    format!("/bookstore/books?category={}", query_escape(name))
}

fn seed_categories() -> Vec<(String, i64)> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for book in SEED.iter() {
        *counts.entry(book.category.clone()).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// The seed's books matching a search, as `api::search_books` would page them.
fn seed_search(q: &str, category: &str, after: &str, limit: usize) -> (Vec<Book>, Option<String>) {
    let q = q.to_lowercase();
    let mut books: Vec<Book> = SEED
        .iter()
        .filter(|book| {
            (q.is_empty() || catalog::search_text(&book.title, &book.author, &book.category).contains(&q))
                && (category.is_empty() || book.category == category)
                && book.id.as_str() > after
        })
        .cloned()
        .collect();
    books.sort_by(|a, b| a.id.cmp(&b.id));
    let next = if books.len() > limit {
        books.truncate(limit);
        books.last().map(|book| book.id.clone())
    } else {
        None
    };
    (books, next)
}

impl Pages {
    /// A pool to read the catalog from, and where it is.
    async fn catalog_pool(&self) -> Option<(AnyPool, Source)> {
        match self.shop.platform.read_pool().await {
            Ok(read) => {
                let source = read.stale_from.map(Source::Replica).unwrap_or(Source::Live);
                Some((read.pool, source))
            }
            Err(error) => {
                tracing::debug!(%error, "catalog: no database to read from; the printed catalogue is shown");
                None
            }
        }
    }

    /// A read failed on the pool `catalog_pool` gave: counts toward the breaker when it was ours.
    fn read_failed(&self, source: &Source, error: &sqlx::Error) {
        tracing::warn!(%error, ?source, "catalog read failed; the printed catalogue is shown");
        if *source == Source::Live {
            self.shop.platform.read_failed(error);
        }
    }

    async fn find_book(&self, id: &str) -> (Option<Book>, Source) {
        if let Some((pool, source)) = self.catalog_pool().await {
            match api::get_book(&pool, id).await {
                Ok(book) => return (book, source),
                Err(error) => self.read_failed(&source, &error),
            }
        }
        (SEED.iter().find(|book| book.id == id).cloned(), Source::Printed)
    }

    async fn search(&self, q: &str, category: &str, after: &str, limit: usize) -> (Vec<Book>, Option<String>, Source) {
        if let Some((pool, source)) = self.catalog_pool().await {
            match api::search_books(&pool, q, category, after, limit).await {
                Ok((books, next)) => return (books, next, source),
                Err(error) => self.read_failed(&source, &error),
            }
        }
        let (books, next) = seed_search(q, category, after, limit);
        (books, next, Source::Printed)
    }

    async fn categories(&self) -> (Vec<(String, i64)>, Source) {
        if let Some((pool, source)) = self.catalog_pool().await {
            match api::categories(&pool).await {
                Ok(categories) => return (categories, source),
                Err(error) => self.read_failed(&source, &error),
            }
        }
        (seed_categories(), Source::Printed)
    }

    async fn top_rated(&self, limit: usize) -> (Vec<Book>, Source) {
        if let Some((pool, source)) = self.catalog_pool().await {
            let rows = sqlx::query(&format!(
                "SELECT {BOOK_COLUMNS} FROM bs_books WHERE deleted = 0 ORDER BY rating DESC, id LIMIT $1"
            ))
            .bind(limit as i64)
            .fetch_all(&pool)
            .await
            .and_then(|rows| rows.iter().map(book_from_row).collect::<Result<Vec<_>, _>>());
            match rows {
                Ok(books) => return (books, source),
                Err(error) => self.read_failed(&source, &error),
            }
        }
        let mut books: Vec<Book> = SEED.clone();
        books.sort_by(|a, b| b.rating.cmp(&a.rating).then_with(|| a.id.cmp(&b.id)));
        books.truncate(limit);
        (books, Source::Printed)
    }

    /// Best sellers with copies sold; none when no database answers (sales are not in the seed).
    async fn best_sellers(&self, limit: usize) -> (Vec<BookCard>, Source) {
        if let Some((pool, source)) = self.catalog_pool().await {
            match api::top_sellers(&pool, limit).await {
                Ok(items) => {
                    let cards = items
                        .iter()
                        .filter_map(|item| {
                            let book: Book = serde_json::from_value(item["book"].clone()).ok()?;
                            let mut card = BookCard::from(&book);
                            card.sold = item["sold"].as_i64();
                            Some(card)
                        })
                        .collect();
                    return (cards, source);
                }
                Err(error) => self.read_failed(&source, &error),
            }
        }
        (Vec::new(), Source::Printed)
    }
}

fn category_links(categories: &[(String, i64)], current: &str) -> Vec<CategoryLink> {
    categories
        .iter()
        .map(|(name, books)| CategoryLink {
            url: category_url(name),
            name: name.clone(),
            books: *books,
            current: name == current,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cart as the shopper should see it: the saved cart, with the changes still waiting in a
// queue (this node's, or copies of its peer's) applied on top, in the order they were made.

/// One of the shopper's cart commands that is not in the store yet.
#[derive(Clone, Debug, PartialEq)]
pub struct CartEvent {
    pub id: CommandId,
    /// When the shopper made it (the command's HLC).
    pub hlc: u64,
    pub change: CartChange,
    /// In this node's own queue (else a copy of one queued on the peer node).
    pub queued_here: bool,
    pub payload: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CartChange {
    Set { book_id: String, quantity: i64 },
    Checkout,
}

impl CartEvent {
    fn parse(
        kind: &str,
        id: CommandId,
        hlc: u64,
        payload: &Value,
        user_id: &str,
        queued_here: bool,
    ) -> Option<CartEvent> {
        if payload.get("user_id").and_then(Value::as_str) != Some(user_id) {
            return None;
        }
        let change = match kind {
            KIND_CART_SET => CartChange::Set {
                book_id: payload.get("book_id")?.as_str()?.to_string(),
                quantity: payload.get("quantity")?.as_i64()?,
            },
            KIND_CHECKOUT => CartChange::Checkout,
            _ => return None,
        };
        Some(CartEvent { id, hlc, change, queued_here, payload: payload.clone() })
    }

    fn kind(&self) -> &'static str {
        match self.change {
            CartChange::Set { .. } => KIND_CART_SET,
            CartChange::Checkout => KIND_CHECKOUT,
        }
    }
}

/// One line of the cart page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartRow {
    pub book_id: String,
    pub url: String,
    pub title: String,
    pub cover: String,
    pub quantity: i64,
    pub price_cents: i64,
    pub price: String,
    pub subtotal_cents: i64,
    pub subtotal: String,
    pub hlc: u64,
    /// Changed by a command still waiting in a queue.
    pub waiting: bool,
}

impl CartRow {
    fn new(
        book_id: &str,
        title: &str,
        cover: &str,
        quantity: i64,
        price_cents: i64,
        hlc: u64,
        waiting: bool,
    ) -> CartRow {
        CartRow {
            url: format!("/bookstore/books/{book_id}"),
            book_id: book_id.to_string(),
            title: title.to_string(),
            cover: cover.to_string(),
            quantity,
            price_cents,
            price: dollars(price_cents),
            subtotal_cents: quantity * price_cents,
            subtotal: dollars(quantity * price_cents),
            hlc,
            waiting,
        }
    }
}

/// The saved lines with the waiting changes applied in order, sorted by title. A line a waiting
/// change adds takes the book's current price, as the apply would; a book nobody knows is left
/// out (its change will be rejected).
pub fn overlay(saved: Vec<api::CartLine>, events: &[CartEvent], books: &HashMap<String, Book>) -> Vec<CartRow> {
    let mut lines: BTreeMap<String, CartRow> = saved
        .into_iter()
        .map(|line| {
            let row =
                CartRow::new(&line.book_id, &line.title, &line.cover, line.quantity, line.price_cents, line.hlc, false);
            (line.book_id, row)
        })
        .collect();
    for event in events {
        match &event.change {
            CartChange::Checkout => lines.clear(),
            CartChange::Set { book_id, quantity } if *quantity <= 0 => {
                lines.remove(book_id);
            }
            CartChange::Set { book_id, quantity } => {
                let row = match (lines.get(book_id), books.get(book_id)) {
                    (Some(line), _) => {
                        CartRow::new(book_id, &line.title, &line.cover, *quantity, line.price_cents, event.hlc, true)
                    }
                    (None, Some(book)) => {
                        CartRow::new(book_id, &book.title, &book.cover, *quantity, book.price_cents, event.hlc, true)
                    }
                    (None, None) => continue,
                };
                lines.insert(book_id.clone(), row);
            }
        }
    }
    let mut rows: Vec<CartRow> = lines.into_values().collect();
    rows.sort_by(|a, b| a.title.cmp(&b.title).then_with(|| a.book_id.cmp(&b.book_id)));
    rows
}

pub struct CartView {
    pub lines: Vec<CartRow>,
    pub count: i64,
    pub total_cents: i64,
    pub total: String,
    /// The saved cart could not be read: only the changes waiting in a queue are shown.
    pub saved_unknown: bool,
    /// The saved cart was read from another region's database.
    pub stale_from: Option<String>,
    /// The newest line's HLC: the checkout's cart version.
    pub version: u64,
    /// The shopper's commands still waiting in a queue, oldest first.
    pub events: Vec<CartEvent>,
}

impl CartView {
    pub fn any_waiting(&self) -> bool {
        self.lines.iter().any(|line| line.waiting)
    }
}

impl Pages {
    /// The shopper's cart commands not yet in the store. When this region's store can be read,
    /// a copy whose command it already recorded (drained, the copy not yet forgotten) is left out.
    async fn waiting_cart_events(&self, user_id: &str, store_readable: bool) -> Vec<CartEvent> {
        let platform = &self.shop.platform;
        let mut events: Vec<CartEvent> = Vec::new();
        for kind in [KIND_CART_SET, KIND_CHECKOUT] {
            match platform.pending(kind, QUEUE_SCAN_ENTRIES_MAX) {
                Ok(statuses) => events.extend(statuses.iter().filter_map(|status| {
                    CartEvent::parse(kind, status.id, status.hlc, &status.payload, user_id, true)
                })),
                Err(error) => tracing::warn!(%error, "the queue could not be listed for a cart"),
            }
        }
        match platform.held_copies(None, QUEUE_SCAN_ENTRIES_MAX) {
            Ok(copies) => {
                for (_, copy) in copies {
                    let command = copy.command;
                    let Some(event) =
                        CartEvent::parse(&command.kind, command.id, command.hlc.0, &command.payload, user_id, false)
                    else {
                        continue;
                    };
                    match events.iter_mut().find(|known| known.id == event.id) {
                        // Re-queued here from the copy: ordered by when the shopper made it.
                        Some(known) => known.hlc = known.hlc.min(event.hlc),
                        None => events.push(event),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "queue copies could not be listed for a cart"),
        }
        if store_readable && !events.is_empty() {
            let mut kept = Vec::with_capacity(events.len());
            for event in events {
                match platform.status(&event.id).await {
                    Ok(Some(status)) if status.stored_in == "store" => {}
                    _ => kept.push(event),
                }
            }
            events = kept;
        }
        events.sort_by_key(|event| event.hlc);
        if events.len() > CART_EVENTS_MAX {
            tracing::warn!(user_id, events = events.len(), "more waiting cart commands than are shown");
            events.drain(..events.len() - CART_EVENTS_MAX);
        }
        events
    }

    async fn cart_view(&self, session: &Session) -> CartView {
        let mut stale_from = None;
        let mut saved = None;
        match self.shop.platform.read_pool().await {
            Ok(read) => match api::cart_of(&read.pool, &session.user_id).await {
                Ok(lines) => {
                    saved = Some(lines);
                    stale_from = read.stale_from;
                }
                Err(error) => {
                    tracing::warn!(%error, "the cart could not be read");
                    if read.stale_from.is_none() {
                        self.shop.platform.read_failed(&error);
                    }
                }
            },
            Err(error) => tracing::debug!(%error, "no database to read the cart from"),
        }
        let store_readable = saved.is_some() && stale_from.is_none();
        let events = self.waiting_cart_events(&session.user_id, store_readable).await;
        let mut books = HashMap::new();
        for event in &events {
            if let CartChange::Set { book_id, quantity } = &event.change {
                if *quantity > 0 && !books.contains_key(book_id) {
                    if let (Some(book), _) = self.find_book(book_id).await {
                        books.insert(book_id.clone(), book);
                    }
                }
            }
        }
        let saved_unknown = saved.is_none();
        let lines = overlay(saved.unwrap_or_default(), &events, &books);
        let count = lines.iter().map(|line| line.quantity).sum();
        let total_cents = lines.iter().map(|line| line.subtotal_cents).sum();
        CartView {
            version: lines.iter().map(|line| line.hlc).max().unwrap_or(0),
            count,
            total_cents,
            total: dollars(total_cents),
            lines,
            saved_unknown,
            stale_from,
            events,
        }
    }

    /// A new cart command of a shopper whose earlier ones still wait in a queue joins this
    /// node's queue behind them (copies of the peer's are queued here first, the same ids, so
    /// whichever node applies one first, the other's is a duplicate): the drain then applies
    /// them in the order they were made, whichever node each was sent to.
    async fn queue_behind_waiting(&self, visit: &Visit, events: &[CartEvent]) -> Result<SubmitOptions, PageError> {
        if events.is_empty() {
            return Ok(SubmitOptions::default());
        }
        let queued = SubmitOptions::delivered(Delivery::BehindWaiting);
        for event in events.iter().filter(|event| !event.queued_here) {
            api::submit_with(&self.shop, event.kind(), event.id, event.payload.clone(), queued)
                .await
                .map_err(|error| PageError::from_api(error, &visit.request_id))?;
        }
        Ok(queued)
    }
}

// ---------------------------------------------------------------------------------------------
// Home, search, a book.

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    layout: Layout,
    best_sellers: Vec<BookCard>,
    top_rated: Vec<BookCard>,
    categories: Vec<CategoryLink>,
    posts: Vec<PostTeaser>,
}

async fn home(State(pages): State<Pages>, visit: Visit) -> Response {
    let mut layout = pages.layout(&visit, Nav::Home).await;
    let (best_sellers, best_source) = pages.best_sellers(HOME_BEST_SELLERS).await;
    let (top_rated, rated_source) = pages.top_rated(HOME_BOOKS).await;
    let (categories, category_source) = pages.categories().await;
    for source in [&best_source, &rated_source, &category_source] {
        layout.notice(source);
    }
    let posts = match pages.catalog_pool().await {
        Some((pool, _)) => api::posts(&pool, HOME_POSTS).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let page = HomePage {
        layout,
        best_sellers,
        top_rated: top_rated.iter().map(BookCard::from).collect(),
        categories: category_links(&categories, ""),
        posts: posts.iter().map(PostTeaser::from_json).collect(),
    };
    finish(&visit, Ok(render(&visit, StatusCode::OK, &page)))
}

#[derive(serde::Deserialize)]
struct BooksQuery {
    q: Option<String>,
    category: Option<String>,
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "books.html")]
struct BooksPage {
    layout: Layout,
    heading: String,
    q: String,
    category: String,
    categories: Vec<CategoryLink>,
    books: Vec<BookCard>,
    next_url: Option<String>,
    first_url: Option<String>,
}

fn books_url(q: &str, category: &str, after: Option<&str>) -> String {
    let mut params = Vec::new();
    if !q.is_empty() {
        params.push(format!("q={}", query_escape(q)));
    }
    if !category.is_empty() {
        params.push(format!("category={}", query_escape(category)));
    }
    if let Some(after) = after {
        params.push(format!("after={}", query_escape(after)));
    }
    if params.is_empty() {
        "/bookstore/books".to_string()
    } else {
        format!("/bookstore/books?{}", params.join("&"))
    }
}

async fn books(State(pages): State<Pages>, visit: Visit, query: Result<Query<BooksQuery>, QueryRejection>) -> Response {
    let Ok(Query(query)) = query else {
        return finish(&visit, Err(PageError::BadRequest("That search link is not one of ours.".into())));
    };
    let q: String = query.q.unwrap_or_default().trim().chars().take(QUERY_CHARS_MAX).collect();
    let category = query.category.unwrap_or_default().trim().to_string();
    let after = query.after.unwrap_or_default();
    let (found, next, source) = pages.search(&q, &category, &after, api::PAGE_ITEMS_DEFAULT).await;
    let (categories, category_source) = pages.categories().await;
    let mut layout = pages.layout(&visit, Nav::Books).await;
    layout.notice(&source);
    layout.notice(&category_source);
    layout.query = q.clone();
    let heading = match (q.is_empty(), category.is_empty()) {
        (true, true) => "All books".to_string(),
        (true, false) => category.clone(),
        (false, true) => format!("Results for “{q}”"),
        (false, false) => format!("Results for “{q}” in {category}"),
    };
    let page = BooksPage {
        layout,
        heading,
        next_url: next.as_deref().map(|next| books_url(&q, &category, Some(next))),
        first_url: (!after.is_empty()).then(|| books_url(&q, &category, None)),
        categories: category_links(&categories, &category),
        books: found.iter().map(BookCard::from).collect(),
        q,
        category,
    };
    finish(&visit, Ok(render(&visit, StatusCode::OK, &page)))
}

#[derive(Template)]
#[template(path = "book.html")]
struct BookPage {
    layout: Layout,
    book: BookCard,
    description: String,
    stock_label: String,
    in_cart: i64,
    also: Vec<BookCard>,
    also_heading: String,
    quantity_max: i64,
}

fn stock_label(stock: i64) -> String {
    match stock {
        stock if stock <= 0 => "Out of stock".to_string(),
        stock if stock <= 5 => format!("Only {stock} left"),
        stock => format!("In stock ({stock} available)"),
    }
}

async fn book(State(pages): State<Pages>, visit: Visit, Path(id): Path<String>) -> Response {
    let (found, source) = pages.find_book(&id).await;
    let Some(found) = found else {
        return finish(&visit, Err(PageError::NotFound));
    };
    let mut also_heading = "Customers who bought this also bought".to_string();
    let mut also: Vec<BookCard> = match pages.catalog_pool().await {
        Some((pool, _)) => api::also_bought(&pool, &found.id, ALSO_BOUGHT)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|item| serde_json::from_value::<Book>(item["book"].clone()).ok())
            .map(|book| BookCard::from(&book))
            .collect(),
        None => Vec::new(),
    };
    if also.is_empty() {
        also_heading = format!("More in {}", found.category);
        let (same_category, _, _) = pages.search("", &found.category, "", ALSO_BOUGHT + 1).await;
        also = same_category.iter().filter(|book| book.id != found.id).take(ALSO_BOUGHT).map(BookCard::from).collect();
    }
    let (mut layout, in_cart) = match &visit.session {
        Some(session) => {
            let cart = pages.cart_view(session).await;
            let in_cart =
                cart.lines.iter().find(|line| line.book_id == found.id).map(|line| line.quantity).unwrap_or(0);
            (Layout::new(&visit, Nav::Books, Some(cart.count)), in_cart)
        }
        None => (Layout::new(&visit, Nav::Books, None), 0),
    };
    layout.notice(&source);
    let page = BookPage {
        layout,
        stock_label: stock_label(found.stock),
        description: found.description.clone(),
        book: BookCard::from(&found),
        in_cart,
        also,
        also_heading,
        quantity_max: api::QUANTITY_MAX,
    };
    finish(&visit, Ok(render(&visit, StatusCode::OK, &page)))
}

// ---------------------------------------------------------------------------------------------
// Accounts.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    /// "signup" or "signin"
    mode: &'static str,
    email: String,
    next: String,
    errors: Vec<FieldError>,
    form_error: Option<String>,
    password_chars_min: usize,
}

impl AccountPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|error| error.field == field).map(|error| error.message.as_str())
    }

    fn has_problems(&self) -> bool {
        !self.errors.is_empty() || self.form_error.is_some()
    }
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

#[derive(serde::Deserialize)]
struct AccountForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

fn account_page(visit: &Visit, mode: &'static str, next: &str) -> AccountPage {
    AccountPage {
        layout: Layout::new(visit, Nav::Account, None),
        mode,
        email: String::new(),
        next: next.to_string(),
        errors: Vec::new(),
        form_error: None,
        password_chars_min: auth::PASSWORD_CHARS_MIN,
    }
}

async fn signup_page(visit: Visit, query: Result<Query<NextQuery>, QueryRejection>) -> Response {
    let next = safe_next(query.as_ref().ok().and_then(|Query(query)| query.next.as_deref()));
    finish(&visit, Ok(render(&visit, StatusCode::OK, &account_page(&visit, "signup", &next))))
}

async fn signin_page(visit: Visit, query: Result<Query<NextQuery>, QueryRejection>) -> Response {
    let next = safe_next(query.as_ref().ok().and_then(|Query(query)| query.next.as_deref()));
    finish(&visit, Ok(render(&visit, StatusCode::OK, &account_page(&visit, "signin", &next))))
}

fn read_form<T>(visit: &Visit, form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(form)| form).map_err(|rejection| {
        tracing::info!(rejection = %rejection.body_text(), request_id = visit.request_id, "form could not be read");
        PageError::BadRequest("We could not read that form. Please go back, reload the page and try again.".into())
    })
}

/// Sets the session cookie (the API's signed token) and the home-region cookie the gateway's
/// `home` policy reads. CSRF tokens include the session cookie, so forms rendered before signing
/// in no longer post.
/// The cookie lasts as long as the session can (its idle timeout is in the token).
fn session_cookie_max_age() -> u64 {
    rananeeti_node::session::ABSOLUTE_LIFETIME_MS / 1000
}

fn admin_cookie_max_age() -> u64 {
    rananeeti_node::security::ADMIN_SESSION_LIFETIME.absolute_ms / 1000
}

fn sign_in_cookies(visit: &Visit, response: &mut Response, session: &Session, token: &str) {
    let max_age = Some(session_cookie_max_age());
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(
            CookieSpec {
                name: SESSION_COOKIE,
                value: token,
                path: "/",
                max_age_seconds: max_age,
                http_only: true,
                same_site: "Lax",
            },
            visit.secure,
        ),
    );
    if cookie_safe(&session.home_region) {
        headers.append(
            header::SET_COOKIE,
            set_cookie(
                CookieSpec {
                    name: HOME_COOKIE,
                    value: &session.home_region,
                    path: "/",
                    max_age_seconds: max_age,
                    http_only: true,
                    same_site: "Lax",
                },
                visit.secure,
            ),
        );
    }
}

async fn signup(State(pages): State<Pages>, visit: Visit, form: Result<Form<AccountForm>, FormRejection>) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let next = safe_next(form.next.as_deref());
        let shown_back = |errors: Vec<FieldError>, form_error: Option<String>| AccountPage {
            email: form.email.trim().to_string(),
            errors,
            form_error,
            ..account_page(&visit, "signup", &next)
        };
        let (user_id, submitted) = match api::create_account(&pages.shop, &form.email, &form.password).await {
            Ok(created) => created,
            Err(ApiError::Invalid { field, message }) => {
                let page = shown_back(vec![FieldError { field, message: first_upper(&message) }], None);
                return Ok(render(&visit, StatusCode::UNPROCESSABLE_ENTITY, &page));
            }
            Err(error) => return Err(PageError::from_api(error, &visit.request_id)),
        };
        let session = Session { user_id, home_region: pages.shop.platform.region().to_string() };
        match submitted.outcome {
            // Created now with this password: signed in.
            Outcome::Committed => {
                let (_, token) = pages.shop.key.issue(&session);
                let mut response = redirect(&visit, &next, Some(Flash::Welcome));
                sign_in_cookies(&visit, &mut response, &session, &token);
                Ok(response)
            }
            // No session for an account that is not created yet: the email may turn out taken.
            Outcome::Pending | Outcome::Duplicate { first: CommandState::Pending } => Ok(redirect(
                &visit,
                &format!("/bookstore/signin?next={}", query_escape(&next)),
                Some(Flash::AccountQueued),
            )),
            // A double click on "Create account", or an account that exists: the password decides.
            Outcome::Duplicate { first: CommandState::Committed } => {
                match api::sign_in(&pages.shop, &form.email, &form.password, visit.address).await {
                    Ok((session, _, token)) => {
                        let mut response = redirect(&visit, &next, Some(Flash::SignedIn));
                        sign_in_cookies(&visit, &mut response, &session, &token);
                        Ok(response)
                    }
                    Err(api::SignInRefused::Wrong) => {
                        pages.shop.security.sign_ins.probed(visit.address);
                        let message = "An account with this email already exists. Sign in instead.".to_string();
                        let page = shown_back(vec![FieldError { field: "email".into(), message }], None);
                        Ok(render(&visit, StatusCode::CONFLICT, &page))
                    }
                    Err(api::SignInRefused::Error(error)) => Err(PageError::from_api(error, &visit.request_id)),
                }
            }
            Outcome::Rejected { reason } | Outcome::Duplicate { first: CommandState::Rejected { reason } } => {
                let page = shown_back(vec![FieldError { field: "email".into(), message: first_upper(&reason) }], None);
                Ok(render(&visit, StatusCode::CONFLICT, &page))
            }
        }
    }
    .await;
    finish(&visit, result)
}

async fn signin(State(pages): State<Pages>, visit: Visit, form: Result<Form<AccountForm>, FormRejection>) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let next = safe_next(form.next.as_deref());
        let shown_back = |form_error: String| AccountPage {
            email: form.email.trim().to_string(),
            form_error: Some(form_error),
            ..account_page(&visit, "signin", &next)
        };
        match api::sign_in(&pages.shop, &form.email, &form.password, visit.address).await {
            Ok((session, _, token)) => {
                let mut response = redirect(&visit, &next, Some(Flash::SignedIn));
                sign_in_cookies(&visit, &mut response, &session, &token);
                Ok(response)
            }
            Err(api::SignInRefused::Wrong) => Ok(render(
                &visit,
                StatusCode::UNAUTHORIZED,
                &shown_back("That email and password don't match an account. Check them, or create an account.".into()),
            )),
            Err(api::SignInRefused::Error(ApiError::TooManyRequests { retry_after_seconds, .. })) => {
                let mut response = render(
                    &visit,
                    StatusCode::TOO_MANY_REQUESTS,
                    &shown_back(format!(
                        "Too many failed sign-ins. For your account's safety, wait {retry_after_seconds} seconds \
                         before trying again."
                    )),
                );
                response.headers_mut().insert(header::RETRY_AFTER, retry_after_seconds.into());
                Ok(response)
            }
            Err(api::SignInRefused::Error(ApiError::Unavailable(detail))) => {
                tracing::warn!(detail, request_id = visit.request_id, "sign-in: store unavailable");
                let mut response = render(
                    &visit,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &shown_back(
                        "We can't check passwords right now: our database is unavailable. If you are already signed \
                         in elsewhere, your cart and orders still work. Please try again in a minute."
                            .into(),
                    ),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                Ok(response)
            }
            Err(api::SignInRefused::Error(error)) => Err(PageError::from_api(error, &visit.request_id)),
        }
    }
    .await;
    finish(&visit, result)
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Signing out ends the session everywhere (its id is revoked) and clears the cookies.
async fn signout(State(pages): State<Pages>, visit: Visit, form: Result<Form<CsrfForm>, FormRejection>) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        if let Some(claims) = &visit.session_claims {
            if let Err(error) = pages.shop.key.revoke(&pages.shop.platform, claims).await {
                tracing::warn!(%error, request_id = visit.request_id, "sign-out not recorded; the session ends by its timeouts");
            }
        }
        let mut response = redirect(&visit, "/bookstore", Some(Flash::SignedOut));
        for name in [SESSION_COOKIE, HOME_COOKIE] {
            response.headers_mut().append(header::SET_COOKIE, clear_cookie(name, "/", visit.secure));
        }
        Ok(response)
    }
    .await;
    finish(&visit, result)
}

// ---------------------------------------------------------------------------------------------
// The cart.

#[derive(Template)]
#[template(path = "cart.html")]
struct CartPage {
    layout: Layout,
    cart: CartView,
    quantity_max: i64,
}

async fn cart_page(State(pages): State<Pages>, visit: Visit) -> Response {
    let result = async {
        let session = visit.signed_in(None)?;
        let cart = pages.cart_view(session).await;
        let mut layout = Layout::new(&visit, Nav::Cart, Some(cart.count));
        if cart.saved_unknown {
            layout.notices.push(Notice {
                id: "cart-notice",
                text: "Our database is unavailable: only the changes you made since are shown here. They are saved, \
                       and your whole cart is back as soon as the database is. You can still place your order."
                    .to_string(),
            });
        } else if let Some(region) = &cart.stale_from {
            layout.notices.push(Notice {
                id: "cart-notice",
                text: format!("Our database here is unavailable: your cart is shown as region {region} has it."),
            });
        }
        Ok(render(&visit, StatusCode::OK, &CartPage { layout, cart, quantity_max: api::QUANTITY_MAX }))
    }
    .await;
    finish(&visit, result)
}

#[derive(serde::Deserialize)]
struct CartForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    book_id: String,
    #[serde(default)]
    quantity: String,
}

fn parse_quantity(raw: &str, floor: api::QuantityFloor) -> Option<i64> {
    let low = floor.low();
    raw.trim().parse::<i64>().ok().filter(|quantity| (low..=api::QUANTITY_MAX).contains(quantity))
}

fn cart_flash(submitted: &Submitted, done: Flash, queued: Flash) -> Flash {
    match submitted.outcome {
        Outcome::Pending | Outcome::Duplicate { first: CommandState::Pending } => queued,
        _ => done,
    }
}

impl Pages {
    /// Sets one line of the shopper's cart to `quantity`, replacing it as they see it.
    async fn set_line(
        &self,
        visit: &Visit,
        session: &Session,
        cart: &CartView,
        book_id: &str,
        quantity: i64,
    ) -> Result<Submitted, PageError> {
        let replaces_hlc = cart.lines.iter().find(|line| line.book_id == book_id).map(|line| line.hlc).unwrap_or(0);
        let options = self.queue_behind_waiting(visit, &cart.events).await?;
        api::submit_cart_set(&self.shop, session, book_id, quantity, replaces_hlc, options)
            .await
            .map_err(|error| PageError::from_api(error, &visit.request_id))
    }
}

/// "Add to cart" on a book's page: adds to what the cart holds, then back to the book.
async fn add_to_cart(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<CartForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let back = format!("/bookstore/books/{}", form.book_id);
        let Some(session) = visit.session.as_ref() else {
            return Err(PageError::SignIn { next: back });
        };
        let (book, _) = pages.find_book(&form.book_id).await;
        let Some(book) = book else { return Err(PageError::NotFound) };
        let back = format!("/bookstore/books/{}", book.id);
        let Some(quantity) = parse_quantity(&form.quantity, api::QuantityFloor::One) else {
            return Ok(redirect(&visit, &back, Some(Flash::BadQuantity)));
        };
        let cart = pages.cart_view(session).await;
        let current = cart.lines.iter().find(|line| line.book_id == book.id).map(|line| line.quantity).unwrap_or(0);
        if current + quantity > api::QUANTITY_MAX {
            return Ok(redirect(&visit, &back, Some(Flash::BadQuantity)));
        }
        let submitted = pages.set_line(&visit, session, &cart, &book.id, current + quantity).await?;
        Ok(redirect(&visit, &back, Some(cart_flash(&submitted, Flash::Added, Flash::AddedQueued))))
    }
    .await;
    finish(&visit, result)
}

/// The cart page's "Update" (a new quantity) and "Remove" (quantity 0).
async fn change_line(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<CartForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let session = visit.signed_in(Some("/bookstore/cart"))?;
        let Some(quantity) = parse_quantity(&form.quantity, api::QuantityFloor::ZeroRemoves) else {
            return Ok(redirect(&visit, "/bookstore/cart", Some(Flash::BadQuantity)));
        };
        let cart = pages.cart_view(session).await;
        let current = cart.lines.iter().find(|line| line.book_id == form.book_id).map(|line| line.quantity);
        let flash = if quantity == 0 { Flash::Removed } else { Flash::CartUpdated };
        if current.unwrap_or(0) == quantity {
            return Ok(redirect(&visit, "/bookstore/cart", Some(flash)));
        }
        let submitted = pages.set_line(&visit, session, &cart, &form.book_id, quantity).await?;
        Ok(redirect(&visit, "/bookstore/cart", Some(cart_flash(&submitted, flash, Flash::CartUpdatedQueued))))
    }
    .await;
    finish(&visit, result)
}

// ---------------------------------------------------------------------------------------------
// Checkout and orders.

#[derive(serde::Deserialize)]
struct CheckoutForm {
    #[serde(default)]
    csrf: String,
    /// The cart version the page showed: used when the saved cart cannot be read.
    #[serde(default)]
    cart_version: String,
}

impl Pages {
    /// The shopper's order placed in the last few minutes, waiting or recorded.
    async fn recent_order(&self, session: &Session, cart: &CartView) -> Option<String> {
        let now = wall_clock_ms();
        let recent = |placed_at_ms: u64| now.saturating_sub(placed_at_ms) <= RECENT_ORDER_MS;
        if let Some(event) = cart.events.iter().rev().find(|event| event.change == CartChange::Checkout) {
            if recent(event.hlc >> 16) {
                return Some(event.id.to_hex());
            }
        }
        let orders = api::orders_of(&self.shop, session).await.ok()?;
        orders.into_iter().find(|order| order.status != "rejected" && recent(order.placed_at_ms)).map(|order| order.id)
    }
}

async fn checkout(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<CheckoutForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let session = visit.signed_in(Some("/bookstore/cart"))?;
        let cart = pages.cart_view(session).await;
        let shown_version = form.cart_version.trim().parse::<u64>().unwrap_or(0);
        let submitted = if cart.lines.is_empty() {
            // A second click of "Place order" lands here once the first emptied the cart.
            if let Some(order_id) = pages.recent_order(session, &cart).await {
                return Ok(redirect(&visit, &format!("/bookstore/orders/{order_id}"), Some(Flash::AlreadyPlaced)));
            }
            if !cart.saved_unknown {
                return Ok(redirect(&visit, "/bookstore/cart", Some(Flash::CartEmpty)));
            }
            if shown_version == 0 {
                return Ok(redirect(&visit, "/bookstore/cart", Some(Flash::CartUnreadable)));
            }
            // The saved cart cannot be read: order it as the page showed it.
            api::submit_checkout(&pages.shop, session, shown_version, SubmitOptions::default()).await
        } else if cart.events.is_empty() && cart.stale_from.is_none() {
            api::checkout(&pages.shop, session).await
        } else {
            let options = pages.queue_behind_waiting(&visit, &cart.events).await?;
            let version = if cart.saved_unknown { cart.version.max(shown_version) } else { cart.version };
            api::submit_checkout(&pages.shop, session, version, options).await
        };
        let submitted = match submitted {
            Ok(submitted) => submitted,
            // Emptied between the look above and the checkout: by the other click, most likely.
            Err(ApiError::Invalid { field, .. }) if field == "cart" => {
                return Ok(match pages.recent_order(session, &cart).await {
                    Some(order_id) => {
                        redirect(&visit, &format!("/bookstore/orders/{order_id}"), Some(Flash::AlreadyPlaced))
                    }
                    None => redirect(&visit, "/bookstore/cart", Some(Flash::CartEmpty)),
                });
            }
            Err(error) => return Err(PageError::from_api(error, &visit.request_id)),
        };
        let flash = match submitted.outcome {
            Outcome::Committed => Flash::OrderPlaced,
            Outcome::Pending => Flash::OrderQueued,
            Outcome::Duplicate { .. } => Flash::AlreadyPlaced,
            Outcome::Rejected { .. } => Flash::OrderRejected,
        };
        Ok(redirect(&visit, &format!("/bookstore/orders/{}", submitted.id.to_hex()), Some(flash)))
    }
    .await;
    finish(&visit, result)
}

/// An order's line as the pages show it.
pub struct OrderLine {
    pub book_id: String,
    pub url: String,
    pub title: String,
    pub cover: String,
    pub quantity: i64,
    pub price: String,
    pub subtotal_cents: i64,
    pub subtotal: String,
}

pub struct OrderView {
    pub id: String,
    pub short_id: String,
    pub url: String,
    /// committed, pending or rejected
    pub status: String,
    pub status_label: String,
    pub reason: Option<String>,
    pub lines: Vec<OrderLine>,
    pub books: i64,
    pub total_cents: i64,
    pub total: String,
    pub placed_at: String,
    pub placed_at_human: String,
}

pub fn status_label(status: &str) -> &'static str {
    match status {
        "committed" => "Confirmed",
        "pending" => "Pending — queued",
        "rejected" => "Not placed",
        _ => "Unknown",
    }
}

impl From<Order> for OrderView {
    fn from(order: Order) -> OrderView {
        let lines: Vec<OrderLine> = order
            .lines
            .iter()
            .map(|line| {
                let book_id = line["book_id"].as_str().unwrap_or_default().to_string();
                let quantity = line["quantity"].as_i64().unwrap_or(0);
                let price = line["price_cents"].as_i64().unwrap_or(0);
                OrderLine {
                    url: format!("/bookstore/books/{book_id}"),
                    cover: format!("/bookstore/covers/{book_id}.svg"),
                    title: line["title"].as_str().unwrap_or_default().to_string(),
                    book_id,
                    quantity,
                    price: dollars(price),
                    subtotal_cents: quantity * price,
                    subtotal: dollars(quantity * price),
                }
            })
            .collect();
        OrderView {
            short_id: order.id.chars().take(8).collect(),
            url: format!("/bookstore/orders/{}", order.id),
            status_label: status_label(&order.status).to_string(),
            books: lines.iter().map(|line| line.quantity).sum(),
            lines,
            total: dollars(order.total_cents),
            total_cents: order.total_cents,
            placed_at: rfc3339(order.placed_at_ms),
            placed_at_human: format_time(order.placed_at_ms),
            reason: order.reason.map(|reason| first_upper(&reason)),
            status: order.status,
            id: order.id,
        }
    }
}

impl Pages {
    /// One of the shopper's orders. While the store cannot be read, a checkout still waiting in
    /// this node's queue or its copies is found there (*pending*).
    async fn find_order(&self, visit: &Visit, session: &Session, id: &str) -> Result<Option<Order>, PageError> {
        match api::order_of(&self.shop, session, id).await {
            Ok(order) => Ok(order),
            Err(ApiError::Unavailable(detail)) => {
                tracing::debug!(detail, "order: store unavailable; looking in the queue");
                let Ok(command_id) = CommandId::parse_hex(id) else { return Ok(None) };
                let status = match self.shop.platform.status(&command_id).await {
                    Ok(status) => status,
                    Err(error) => {
                        tracing::warn!(%error, request_id = visit.request_id, "order status unavailable");
                        return Err(PageError::Unavailable);
                    }
                };
                let Some(status) = status else { return Ok(None) };
                let owner = status.payload.get("user_id").and_then(Value::as_str);
                if status.kind != KIND_CHECKOUT || owner != Some(session.user_id.as_str()) {
                    return Ok(None);
                }
                let (status_name, reason) = match status.state {
                    CommandState::Rejected { reason } => ("rejected", Some(reason)),
                    CommandState::Pending | CommandState::Committed => ("pending", None),
                };
                Ok(Some(Order {
                    id: id.to_string(),
                    status: status_name.to_string(),
                    reason,
                    total_cents: 0,
                    placed_at_ms: status.hlc >> 16,
                    lines: Vec::new(),
                }))
            }
            Err(error) => Err(PageError::from_api(error, &visit.request_id)),
        }
    }
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage {
    layout: Layout,
    order: OrderView,
    poll_url: String,
}

impl OrderPage {
    fn is_pending(&self) -> bool {
        self.order.status == "pending"
    }
}

async fn order_page(State(pages): State<Pages>, visit: Visit, Path(id): Path<String>) -> Response {
    let result = async {
        let session = visit.signed_in(None)?;
        let Some(order) = pages.find_order(&visit, session, &id).await? else { return Err(PageError::NotFound) };
        let layout = pages.layout(&visit, Nav::Orders).await;
        let poll_url = format!("/bookstore/orders/{}/status", order.id);
        Ok(render(&visit, StatusCode::OK, &OrderPage { layout, order: order.into(), poll_url }))
    }
    .await;
    finish(&visit, result)
}

/// What the order page's script polls: the order's status, with the session cookie.
async fn order_status(State(pages): State<Pages>, visit: Visit, Path(id): Path<String>) -> Response {
    let json_error = |status: StatusCode, message: &str| {
        (status, [(header::CACHE_CONTROL, "no-store")], Json(json!({ "error": { "message": message } })))
            .into_response()
    };
    let Some(session) = visit.session.as_ref() else {
        return json_error(StatusCode::UNAUTHORIZED, "sign in");
    };
    match pages.find_order(&visit, session, &id).await {
        Ok(Some(order)) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "id": order.id, "status": order.status, "reason": order.reason })),
        )
            .into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not found"),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

#[derive(Template)]
#[template(path = "orders.html")]
struct OrdersPage {
    layout: Layout,
    orders: Vec<OrderView>,
    any_pending: bool,
}

async fn orders_page(State(pages): State<Pages>, visit: Visit) -> Response {
    let result = async {
        let session = visit.signed_in(None)?;
        let cart = pages.cart_view(session).await;
        let mut layout = Layout::new(&visit, Nav::Orders, Some(cart.count));
        let mut orders = match api::orders_of(&pages.shop, session).await {
            Ok(orders) => orders,
            Err(ApiError::Unavailable(_)) => {
                layout.notices.push(Notice {
                    id: "orders-notice",
                    text: "Our database is unavailable: only orders still waiting to be confirmed are shown. Your \
                           past orders are back as soon as it is."
                        .to_string(),
                });
                Vec::new()
            }
            Err(error) => return Err(PageError::from_api(error, &visit.request_id)),
        };
        // Checkouts waiting in the peer node's queue (this node holds their copies).
        for event in cart.events.iter().filter(|event| event.change == CartChange::Checkout) {
            let id = event.id.to_hex();
            if !orders.iter().any(|order| order.id == id) {
                orders.push(Order {
                    id,
                    status: "pending".into(),
                    reason: None,
                    total_cents: 0,
                    placed_at_ms: event.hlc >> 16,
                    lines: Vec::new(),
                });
            }
        }
        // A checkout just drained can be in the store and, for a moment, still in the queue.
        let recorded: Vec<String> =
            orders.iter().filter(|order| order.status != "pending").map(|order| order.id.clone()).collect();
        orders.retain(|order| order.status != "pending" || !recorded.contains(&order.id));
        orders.sort_by_key(|order| std::cmp::Reverse(order.placed_at_ms));
        let orders: Vec<OrderView> = orders.into_iter().map(OrderView::from).collect();
        let any_pending = orders.iter().any(|order| order.status == "pending");
        Ok(render(&visit, StatusCode::OK, &OrdersPage { layout, orders, any_pending }))
    }
    .await;
    finish(&visit, result)
}

// ---------------------------------------------------------------------------------------------
// The blog.

pub struct PostTeaser {
    pub url: String,
    pub title: String,
    pub author: String,
    pub published_at: String,
    pub published_at_human: String,
}

impl PostTeaser {
    fn from_json(post: &Value) -> PostTeaser {
        let published = post["published_at_ms"].as_u64().unwrap_or(0);
        PostTeaser {
            url: format!("/bookstore/blog/{}", post["slug"].as_str().unwrap_or_default()),
            title: post["title"].as_str().unwrap_or_default().to_string(),
            author: post["author"].as_str().unwrap_or_default().to_string(),
            published_at: rfc3339(published),
            published_at_human: format_time(published),
        }
    }
}

#[derive(Template)]
#[template(path = "blog.html")]
struct BlogPage {
    layout: Layout,
    posts: Vec<PostTeaser>,
    /// The posts could be read.
    available: bool,
}

/// Like the orders list, the blog list degrades rather than fails: while no database can be
/// read it says so, with no posts.
async fn blog_page(State(pages): State<Pages>, visit: Visit) -> Response {
    let mut layout = pages.layout(&visit, Nav::Blog).await;
    let posts = match pages.catalog_pool().await {
        Some((pool, source)) => match api::posts(&pool, BLOG_POSTS_MAX).await {
            Ok(posts) => {
                layout.notice(&source);
                Some(posts)
            }
            Err(error) => {
                pages.read_failed(&source, &error);
                None
            }
        },
        None => None,
    };
    let available = posts.is_some();
    if !available {
        layout.notices.push(Notice {
            id: "blog-notice",
            text: "Our database is unavailable, so the blog is out of reach for a moment. The shop is open: \
                   orders you place are saved and confirmed when it is back."
                .to_string(),
        });
    }
    let posts = posts.unwrap_or_default().iter().map(PostTeaser::from_json).collect();
    finish(&visit, Ok(render(&visit, StatusCode::OK, &BlogPage { layout, posts, available })))
}

#[derive(Template)]
#[template(path = "post.html")]
struct PostPage {
    layout: Layout,
    post: PostTeaser,
    /// Rendered from Markdown and cleaned by `api::render_markdown`: safe to include as is.
    body_html: String,
}

async fn post_page(State(pages): State<Pages>, visit: Visit, Path(slug): Path<String>) -> Response {
    let result = async {
        let Some((pool, source)) = pages.catalog_pool().await else { return Err(PageError::Unavailable) };
        let post = api::post_by_slug(&pool, &slug).await.map_err(|error| {
            pages.read_failed(&source, &error);
            PageError::Unavailable
        })?;
        let Some(post) = post else { return Err(PageError::NotFound) };
        let mut layout = pages.layout(&visit, Nav::Blog).await;
        layout.notice(&source);
        let body_html = api::render_markdown(post["body_markdown"].as_str().unwrap_or_default());
        Ok(render(&visit, StatusCode::OK, &PostPage { layout, post: PostTeaser::from_json(&post), body_html }))
    }
    .await;
    finish(&visit, result)
}

// ---------------------------------------------------------------------------------------------
// Admin: sign in with the deployment's admin token; books and blog posts.

#[derive(Template)]
#[template(path = "admin_signin.html")]
struct AdminSignInPage {
    layout: Layout,
    error: Option<String>,
}

pub struct AdminBookRow {
    pub id: String,
    pub url: String,
    pub edit_url: String,
    pub delete_url: String,
    pub title: String,
    pub author: String,
    pub category: String,
    pub cover: String,
    pub price: String,
    pub stock: i64,
}

#[derive(Template)]
#[template(path = "admin_books.html")]
struct AdminBooksPage {
    layout: Layout,
    q: String,
    books: Vec<AdminBookRow>,
    next_url: Option<String>,
    first_url: Option<String>,
}

#[derive(serde::Deserialize)]
struct AdminQuery {
    q: Option<String>,
    after: Option<String>,
}

fn admin_books_url(q: &str, after: Option<&str>) -> String {
    let mut url = format!("{ADMIN_PATH}?q={}", query_escape(q));
    if let Some(after) = after {
        url.push_str(&format!("&after={}", query_escape(after)));
    }
    url
}

async fn admin_home(
    State(pages): State<Pages>,
    visit: Visit,
    query: Result<Query<AdminQuery>, QueryRejection>,
) -> Response {
    let result = async {
        if !visit.admin {
            let page = AdminSignInPage { layout: Layout::new(&visit, Nav::Admin, None), error: None };
            return Ok(render(&visit, StatusCode::OK, &page));
        }
        let (q, after) = match query {
            Ok(Query(query)) => (
                query.q.unwrap_or_default().trim().chars().take(QUERY_CHARS_MAX).collect::<String>(),
                query.after.unwrap_or_default(),
            ),
            Err(_) => (String::new(), String::new()),
        };
        let (found, next, source) = pages.search(&q, "", &after, ADMIN_PAGE_BOOKS).await;
        let mut layout = Layout::new(&visit, Nav::Admin, None);
        layout.notice(&source);
        let books = found
            .iter()
            .map(|book| AdminBookRow {
                url: format!("/bookstore/books/{}", book.id),
                edit_url: format!("{ADMIN_PATH}/books/{}/edit", book.id),
                delete_url: format!("{ADMIN_PATH}/books/{}/delete", book.id),
                id: book.id.clone(),
                title: book.title.clone(),
                author: book.author.clone(),
                category: book.category.clone(),
                cover: book.cover.clone(),
                price: dollars(book.price_cents),
                stock: book.stock,
            })
            .collect();
        let page = AdminBooksPage {
            layout,
            next_url: next.as_deref().map(|next| admin_books_url(&q, Some(next))),
            first_url: (!after.is_empty()).then(|| admin_books_url(&q, None)),
            q,
            books,
        };
        Ok(render(&visit, StatusCode::OK, &page))
    }
    .await;
    finish(&visit, result)
}

#[derive(serde::Deserialize)]
struct AdminSignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn admin_signin(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<AdminSignInForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let refused = |status: StatusCode, message: String| {
            let page = AdminSignInPage { layout: Layout::new(&visit, Nav::Admin, None), error: Some(message) };
            render(&visit, status, &page)
        };
        let security = &pages.shop.security;
        if let Err(locked) = security.sign_ins.check("admin", visit.address) {
            let mut response = refused(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed sign-ins. Wait {} seconds before trying again.", locked.retry_after_seconds),
            );
            response.headers_mut().insert(header::RETRY_AFTER, locked.retry_after_seconds.into());
            return Ok(response);
        }
        if !security.is_admin_token(&form.token) {
            security.sign_ins.failed("admin", visit.address);
            tracing::info!(request_id = visit.request_id, "admin sign-in refused");
            return Ok(refused(StatusCode::UNAUTHORIZED, "That is not this deployment's admin token.".into()));
        }
        security.sign_ins.succeeded("admin");
        let (_, value) = security.issue_admin_session();
        let mut response = redirect(&visit, ADMIN_PATH, Some(Flash::AdminSignedIn));
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                CookieSpec {
                    name: ADMIN_COOKIE,
                    value: &value,
                    path: "/",
                    max_age_seconds: Some(admin_cookie_max_age()),
                    http_only: true,
                    same_site: "Strict",
                },
                visit.secure,
            ),
        );
        Ok(response)
    }
    .await;
    finish(&visit, result)
}

async fn admin_signout(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        if let Some(claims) = &visit.admin_claims {
            pages.shop.security.end_admin_session(&pages.shop.platform, claims).await;
        }
        let mut response = redirect(&visit, ADMIN_PATH, Some(Flash::AdminSignedOut));
        response.headers_mut().append(header::SET_COOKIE, clear_cookie(ADMIN_COOKIE, "/", visit.secure));
        Ok(response)
    }
    .await;
    finish(&visit, result)
}

/// `None` for the admin; for anyone else, the way to the admin sign-in form.
fn refuse_non_admin(visit: &Visit) -> Option<Response> {
    (!visit.admin).then(|| redirect(visit, ADMIN_PATH, Some(Flash::AdminNeeded)))
}

/// The book form as typed: every field a string, so it can be shown back with its messages.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct BookForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub price: String,
    #[serde(default)]
    pub rating: String,
    #[serde(default)]
    pub stock: String,
    #[serde(default)]
    pub description: String,
}

impl BookForm {
    fn from_book(book: &Book) -> BookForm {
        BookForm {
            csrf: String::new(),
            title: book.title.clone(),
            author: book.author.clone(),
            category: book.category.clone(),
            price: format!("{}.{:02}", book.price_cents / 100, book.price_cents % 100),
            rating: stars_text(book.rating),
            stock: book.stock.to_string(),
            description: book.description.clone(),
        }
    }

    /// The API's checks, named as the form names its fields.
    pub fn parse(&self, id: Option<String>) -> Result<Book, Vec<FieldError>> {
        let mut errors = Vec::new();
        let price_cents = parse_dollars(&self.price);
        if price_cents.is_none() {
            errors.push(FieldError { field: "price".into(), message: "A price in dollars, like 12.99".into() });
        }
        let rating = parse_stars(&self.rating);
        if let Err(message) = rating {
            errors.push(FieldError { field: "rating".into(), message: message.into() });
        }
        let stock = self.stock.trim().parse::<i64>().ok();
        if stock.is_none() {
            errors.push(FieldError { field: "stock".into(), message: "A whole number of copies".into() });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let request = api::BookRequest {
            title: self.title.clone(),
            author: self.author.clone(),
            category: self.category.clone(),
            price_cents: price_cents.unwrap_or(0),
            rating: rating.unwrap_or(None),
            stock: stock.unwrap_or(0),
            description: self.description.clone(),
        };
        api::parse_book(id, request).map_err(|error| match error {
            ApiError::Invalid { field, message } => {
                let field = match field.as_str() {
                    "price_cents" => "price".to_string(),
                    _ => field,
                };
                let message = match field.as_str() {
                    "price" => "From $0.00 to $10,000.00".to_string(),
                    "rating" => "Stars from 0 to 5".to_string(),
                    _ => first_upper(&message),
                };
                vec![FieldError { field, message }]
            }
            other => vec![FieldError { field: "title".into(), message: other.to_string() }],
        })
    }
}

#[derive(Template)]
#[template(path = "admin_book.html")]
struct AdminBookPage {
    layout: Layout,
    /// The id of the book being edited; `None` for a new one.
    editing: Option<String>,
    action: String,
    form: BookForm,
    errors: Vec<FieldError>,
}

/// One input of the book form.
pub struct BookField {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub kind: &'static str,
    pub hint: &'static str,
    pub required: bool,
    pub error: Option<String>,
    pub described_by: String,
}

impl AdminBookPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|error| error.field == field).map(|error| error.message.as_str())
    }

    fn fields(&self) -> Vec<BookField> {
        let form = &self.form;
        [
            ("title", "Title", &form.title, "text", "", true),
            ("author", "Author", &form.author, "text", "", true),
            ("category", "Category", &form.category, "text", "For example Mystery, Poetry, Science Fiction.", true),
            ("price", "Price in dollars", &form.price, "text", "For example 12.99", true),
            ("rating", "Rating in stars", &form.rating, "text", "0 to 5, one decimal: 4.5 (optional)", false),
            ("stock", "Copies in stock", &form.stock, "number", "", true),
        ]
        .into_iter()
        .map(|(name, label, value, kind, hint, required)| {
            let error = self.error_for(name).map(str::to_string);
            let mut described_by = Vec::new();
            if !hint.is_empty() {
                described_by.push(format!("{name}-hint"));
            }
            if error.is_some() {
                described_by.push(format!("{name}-error"));
            }
            BookField {
                name,
                label,
                value: value.clone(),
                kind,
                hint,
                required,
                error,
                described_by: described_by.join(" "),
            }
        })
        .collect()
    }
}

async fn admin_new_book(visit: Visit) -> Response {
    let result = match refuse_non_admin(&visit) {
        Some(refused) => Ok(refused),
        None => {
            let page = AdminBookPage {
                layout: Layout::new(&visit, Nav::Admin, None),
                editing: None,
                action: format!("{ADMIN_PATH}/books/new"),
                form: BookForm { rating: "4.0".into(), stock: "20".into(), ..BookForm::default() },
                errors: Vec::new(),
            };
            Ok(render(&visit, StatusCode::OK, &page))
        }
    };
    finish(&visit, result)
}

async fn admin_edit_book(State(pages): State<Pages>, visit: Visit, Path(id): Path<String>) -> Response {
    let result = async {
        if let Some(refused) = refuse_non_admin(&visit) {
            return Ok(refused);
        }
        let (book, source) = pages.find_book(&id).await;
        let Some(book) = book else { return Err(PageError::NotFound) };
        let mut layout = Layout::new(&visit, Nav::Admin, None);
        layout.notice(&source);
        let page = AdminBookPage {
            layout,
            action: format!("{ADMIN_PATH}/books/{}/edit", book.id),
            form: BookForm::from_book(&book),
            editing: Some(book.id),
            errors: Vec::new(),
        };
        Ok(render(&visit, StatusCode::OK, &page))
    }
    .await;
    finish(&visit, result)
}

impl Pages {
    async fn save_book(
        &self,
        visit: &Visit,
        editing: Option<String>,
        form: Result<Form<BookForm>, FormRejection>,
    ) -> Result<Response, PageError> {
        // Who is calling, before anything of the form is looked at.
        if let Some(refused) = refuse_non_admin(visit) {
            return Ok(refused);
        }
        let form = read_form(visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let action = match &editing {
            Some(id) => format!("{ADMIN_PATH}/books/{id}/edit"),
            None => format!("{ADMIN_PATH}/books/new"),
        };
        let shown_back = |errors: Vec<FieldError>| AdminBookPage {
            layout: Layout::new(visit, Nav::Admin, None),
            editing: editing.clone(),
            action: action.clone(),
            form: form.clone(),
            errors,
        };
        let book = match form.parse(editing.clone()) {
            Ok(book) => book,
            Err(errors) => return Ok(render(visit, StatusCode::UNPROCESSABLE_ENTITY, &shown_back(errors))),
        };
        let pool = api::reader(&self.shop).await.map_err(|error| PageError::from_api(error, &visit.request_id))?;
        let existing = api::get_book(&pool, &book.id).await.map_err(|error| {
            self.shop.platform.read_failed(&error);
            PageError::Unavailable
        })?;
        match (&editing, existing) {
            (None, Some(existing)) => {
                let message =
                    format!("A book with this title is already on our shelves (“{}”): edit it instead", existing.title);
                return Ok(render(
                    visit,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &shown_back(vec![FieldError { field: "title".into(), message }]),
                ));
            }
            (Some(_), None) => return Err(PageError::NotFound),
            _ => {}
        }
        let submitted = api::submit_book_put(&self.shop, book)
            .await
            .map_err(|error| PageError::from_api(error, &visit.request_id))?;
        let flash = match submitted.outcome {
            Outcome::Pending | Outcome::Duplicate { first: CommandState::Pending } => Flash::BookSavedQueued,
            _ => Flash::BookSaved,
        };
        Ok(redirect(visit, ADMIN_PATH, Some(flash)))
    }
}

async fn admin_create_book(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<BookForm>, FormRejection>,
) -> Response {
    let result = pages.save_book(&visit, None, form).await;
    finish(&visit, result)
}

async fn admin_update_book(
    State(pages): State<Pages>,
    visit: Visit,
    Path(id): Path<String>,
    form: Result<Form<BookForm>, FormRejection>,
) -> Response {
    let result = pages.save_book(&visit, Some(id), form).await;
    finish(&visit, result)
}

async fn admin_delete_book(
    State(pages): State<Pages>,
    visit: Visit,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let result = async {
        // Who is calling, before anything of the form is looked at.
        if let Some(refused) = refuse_non_admin(&visit) {
            return Ok(refused);
        }
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let pool = api::reader(&pages.shop).await.map_err(|error| PageError::from_api(error, &visit.request_id))?;
        let exists = api::get_book(&pool, &id).await.map_err(|error| {
            pages.shop.platform.read_failed(&error);
            PageError::Unavailable
        })?;
        if exists.is_none() {
            return Err(PageError::NotFound);
        }
        let submitted = api::submit_book_delete(&pages.shop, &id)
            .await
            .map_err(|error| PageError::from_api(error, &visit.request_id))?;
        let flash = match submitted.outcome {
            Outcome::Pending | Outcome::Duplicate { first: CommandState::Pending } => Flash::BookDeletedQueued,
            _ => Flash::BookDeleted,
        };
        Ok(redirect(&visit, ADMIN_PATH, Some(flash)))
    }
    .await;
    finish(&visit, result)
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct PostForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub body_markdown: String,
}

#[derive(Template)]
#[template(path = "admin_post.html")]
struct AdminPostPage {
    layout: Layout,
    form: PostForm,
    errors: Vec<FieldError>,
}

impl AdminPostPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|error| error.field == field).map(|error| error.message.as_str())
    }
}

async fn admin_new_post(visit: Visit) -> Response {
    let result = match refuse_non_admin(&visit) {
        Some(refused) => Ok(refused),
        None => {
            let page = AdminPostPage {
                layout: Layout::new(&visit, Nav::Admin, None),
                form: PostForm::default(),
                errors: Vec::new(),
            };
            Ok(render(&visit, StatusCode::OK, &page))
        }
    };
    finish(&visit, result)
}

async fn admin_create_post(
    State(pages): State<Pages>,
    visit: Visit,
    form: Result<Form<PostForm>, FormRejection>,
) -> Response {
    let result = async {
        // Who is calling, before anything of the form is looked at.
        if let Some(refused) = refuse_non_admin(&visit) {
            return Ok(refused);
        }
        let form = read_form(&visit, form)?;
        visit.check_csrf(&form.csrf)?;
        let shown_back = |field: &str, message: String| AdminPostPage {
            layout: Layout::new(&visit, Nav::Admin, None),
            form: form.clone(),
            errors: vec![FieldError { field: field.to_string(), message }],
        };
        let author = Some(form.author.trim()).filter(|author| !author.is_empty());
        let payload = match api::parse_post(&form.title, &form.body_markdown, author) {
            Ok(payload) => payload,
            Err(ApiError::Invalid { field, message }) => {
                let page = shown_back(&field, first_upper(&message));
                return Ok(render(&visit, StatusCode::UNPROCESSABLE_ENTITY, &page));
            }
            Err(error) => return Err(PageError::from_api(error, &visit.request_id)),
        };
        let slug = payload.slug.clone();
        let submitted = api::submit_post(&pages.shop, payload)
            .await
            .map_err(|error| PageError::from_api(error, &visit.request_id))?;
        match submitted.outcome {
            Outcome::Committed => Ok(redirect(&visit, &format!("/bookstore/blog/{slug}"), Some(Flash::PostPublished))),
            Outcome::Pending | Outcome::Duplicate { first: CommandState::Pending } => {
                Ok(redirect(&visit, ADMIN_PATH, Some(Flash::PostQueued)))
            }
            Outcome::Duplicate { .. } | Outcome::Rejected { .. } => {
                let page = shown_back("title", "A post with this title already exists: choose another title".into());
                Ok(render(&visit, StatusCode::CONFLICT, &page))
            }
        }
    }
    .await;
    finish(&visit, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(session_cookie: Option<&str>, csrf_cookie_is_new: bool) -> Visit {
        Visit {
            session: session_cookie.map(|_| Session { user_id: "u1".into(), home_region: "r1".into() }),
            session_cookie: session_cookie.map(str::to_string),
            session_claims: None,
            renewed_session: None,
            admin: false,
            admin_claims: None,
            renewed_admin: None,
            address: None,
            csrf_cookie: "ab".repeat(CSRF_COOKIE_BYTES),
            csrf_cookie_is_new,
            csrf_key: Arc::new([7; 32]),
            flash: None,
            flash_cookie_sent: false,
            secure: false,
            cross_site: false,
            request_id: "req-1".into(),
            path: "/bookstore/cart".into(),
        }
    }

    #[test]
    fn prices_are_dollars_with_cents() {
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(5), "$0.05");
        assert_eq!(dollars(1299), "$12.99");
        assert_eq!(dollars(129_900), "$1,299.00");
        assert_eq!(dollars(123_456_789), "$1,234,567.89");
        assert_eq!(dollars(-150), "-$1.50");
        assert_eq!(parse_dollars("12.99"), Some(1299));
        assert_eq!(parse_dollars(" $12.9 "), Some(1290));
        assert_eq!(parse_dollars("12"), Some(1200));
        assert_eq!(parse_dollars("0.05"), Some(5));
        for bad in ["", "12.999", "abc", "-1", "1,000", ".5", "1e3"] {
            assert_eq!(parse_dollars(bad), None, "{bad}");
        }
    }

    #[test]
    fn ratings_are_stars_in_tenths() {
        assert_eq!(parse_stars(""), Ok(None));
        assert_eq!(parse_stars("4.5"), Ok(Some(45)));
        assert_eq!(parse_stars("5"), Ok(Some(50)));
        assert!(parse_stars("10").is_err() && parse_stars("4.55").is_err() && parse_stars("four").is_err());
        assert_eq!(stars_text(43), "4.3");
        assert_eq!(
            [stars_step(0), stars_step(42), stars_step(43), stars_step(48), stars_step(50)],
            [0, 40, 45, 50, 50]
        );
    }

    #[test]
    fn after_signing_in_only_our_own_pages() {
        assert_eq!(safe_next(Some("/bookstore/cart")), "/bookstore/cart");
        assert_eq!(safe_next(Some("/bookstore/books?q=a&category=B")), "/bookstore/books?q=a&category=B");
        for bad in [None, Some("//evil.example"), Some("https://evil.example/bookstore"), Some("/bookstore//evil")] {
            assert_eq!(safe_next(bad), "/bookstore", "{bad:?}");
        }
        assert_eq!(safe_next(Some("/bookstore\\evil")), "/bookstore");
        assert_eq!(safe_next(Some("/cafe")), "/bookstore");
        assert_eq!(query_escape("Science Fiction & more"), "Science%20Fiction%20%26%20more");
    }

    #[test]
    fn flashes_round_trip_through_their_codes() {
        for (flash, code) in FLASH_CODES {
            assert_eq!(flash.code(), code);
            assert_eq!(Flash::from_code(code), Some(flash));
            assert!(!flash.view().heading.is_empty());
        }
        assert_eq!(Flash::from_code("<script>"), None);
    }

    #[test]
    fn cookies_are_read_and_written_as_browsers_expect() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; bs_session=v1.u.r1.9.sig ; bs_flash="));
        let cookies = cookies(&headers);
        assert_eq!(cookie(&cookies, SESSION_COOKIE), Some("v1.u.r1.9.sig"));
        assert_eq!(cookie(&cookies, FLASH_COOKIE), None, "an empty cookie is no cookie");
        let spec = CookieSpec {
            name: SESSION_COOKIE,
            value: "t",
            path: "/",
            max_age_seconds: Some(60),
            http_only: true,
            same_site: "Lax",
        };
        assert_eq!(set_cookie(spec, false), "bs_session=t; Path=/; SameSite=Lax; Max-Age=60; HttpOnly");
        assert_eq!(
            clear_cookie(HOME_COOKIE, "/", true),
            "rananeeti_home=; Path=/; SameSite=Lax; Max-Age=0; HttpOnly; Secure"
        );
        assert!(cookie_safe("v1.abc-DEF_1") && !cookie_safe("a;b") && !cookie_safe(""));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_visitors_cookies() {
        let anonymous = visit(None, false);
        let token = anonymous.csrf_token();
        assert_eq!(token.len(), 64);
        assert!(anonymous.check_csrf(&token).is_ok());
        assert!(matches!(anonymous.check_csrf("forged"), Err(PageError::Forbidden)));
        assert!(matches!(anonymous.check_csrf(""), Err(PageError::Forbidden)));
        let signed_in = visit(Some("v1.u1.r1.9.sig"), false);
        assert_ne!(signed_in.csrf_token(), token, "signing in changes the token");
        assert!(matches!(signed_in.check_csrf(&token), Err(PageError::Forbidden)), "a form from before signing in");
        let no_cookie = visit(None, true);
        assert!(
            matches!(no_cookie.check_csrf(&no_cookie.csrf_token()), Err(PageError::Forbidden)),
            "no CSRF cookie sent"
        );
        let cross_site = Visit { cross_site: true, ..visit(None, false) };
        assert!(matches!(cross_site.check_csrf(&token), Err(PageError::Forbidden)), "Sec-Fetch-Site: cross-site");
    }

    fn book(id: &str, title: &str, price_cents: i64) -> Book {
        Book {
            id: id.into(),
            title: title.into(),
            author: "A".into(),
            category: "Fiction".into(),
            price_cents,
            rating: 40,
            cover: format!("/bookstore/covers/{id}.svg"),
            stock: 10,
            description: String::new(),
        }
    }

    fn saved(book_id: &str, title: &str, quantity: i64, price_cents: i64, hlc: u64) -> api::CartLine {
        api::CartLine {
            book_id: book_id.into(),
            title: title.into(),
            cover: String::new(),
            quantity,
            price_cents,
            subtotal_cents: quantity * price_cents,
            hlc,
        }
    }

    fn event(n: u8, hlc: u64, change: CartChange) -> CartEvent {
        CartEvent { id: CommandId::digest("test", &[n]), hlc, change, queued_here: true, payload: Value::Null }
    }

    fn set(book_id: &str, quantity: i64) -> CartChange {
        CartChange::Set { book_id: book_id.into(), quantity }
    }

    #[test]
    fn waiting_cart_changes_apply_on_top_of_the_saved_cart_in_order() {
        let books = HashMap::from([
            ("dracula".to_string(), book("dracula", "Dracula", 999)),
            ("emma".to_string(), book("emma", "Emma", 1599)),
        ]);
        let base = vec![saved("emma", "Emma", 2, 1499, 10), saved("ulysses", "Ulysses", 1, 2099, 11)];
        let events = [
            event(1, 20, set("dracula", 1)),
            event(2, 21, set("emma", 3)),
            event(3, 22, set("ulysses", 0)),
            event(4, 23, set("unknown-book", 1)),
        ];
        let rows = overlay(base.clone(), &events, &books);
        let shown: Vec<(&str, i64, i64, bool)> =
            rows.iter().map(|row| (row.book_id.as_str(), row.quantity, row.subtotal_cents, row.waiting)).collect();
        assert_eq!(shown, [("dracula", 1, 999, true), ("emma", 3, 3 * 1499, true)], "sorted by title");
        assert_eq!(rows[1].price_cents, 1499, "a line already in the cart keeps its price");
        assert_eq!(rows[1].hlc, 21);

        // A waiting checkout empties what came before it; what was added after stays.
        let events =
            [event(1, 20, set("dracula", 2)), event(5, 30, CartChange::Checkout), event(6, 31, set("emma", 1))];
        let rows = overlay(base.clone(), &events, &books);
        assert_eq!(rows.iter().map(|row| (row.book_id.as_str(), row.quantity)).collect::<Vec<_>>(), [("emma", 1)]);
        assert_eq!(rows[0].price_cents, 1599, "a line added again takes the book's price now, as the apply does");

        let unchanged = overlay(base, &[], &books);
        assert!(unchanged.iter().all(|row| !row.waiting) && unchanged.len() == 2);
    }

    #[test]
    fn the_book_form_reports_fields_as_the_form_names_them() {
        let form = BookForm {
            title: "A New Book".into(),
            author: "Ann Author".into(),
            category: "Poetry".into(),
            price: "12.50".into(),
            rating: "4.5".into(),
            stock: "7".into(),
            ..BookForm::default()
        };
        let parsed = form.parse(None).unwrap();
        assert_eq!((parsed.id.as_str(), parsed.price_cents, parsed.rating, parsed.stock), ("a-new-book", 1250, 45, 7));
        let fields = |form: BookForm| -> Vec<String> {
            form.parse(None).unwrap_err().into_iter().map(|error| error.field).collect()
        };
        assert_eq!(
            fields(BookForm { price: "cheap".into(), rating: "9.9.9".into(), stock: "".into(), ..form.clone() }),
            ["price", "rating", "stock"]
        );
        assert_eq!(fields(BookForm { title: " ".into(), ..form.clone() }), ["title"]);
        assert_eq!(fields(BookForm { price: "20000".into(), ..form.clone() }), ["price"]);
        assert_eq!(fields(BookForm { rating: "6".into(), ..form.clone() }), ["rating"]);
    }

    fn order(status: &str, lines: Vec<Value>) -> Order {
        Order {
            id: "a6129e5c96440d04d1be4b81c25e580e0d348934".into(),
            status: status.into(),
            reason: (status == "rejected").then(|| "not enough stock for Emma: 1 left, 2 ordered".to_string()),
            total_cents: 2998,
            placed_at_ms: 1_796_000_000_000,
            lines,
        }
    }

    fn order_page(order: Order) -> String {
        let visit = visit(Some("v1.u1.r1.9.sig"), false);
        let poll_url = format!("/bookstore/orders/{}/status", order.id);
        OrderPage { layout: Layout::new(&visit, Nav::Orders, Some(0)), order: order.into(), poll_url }.render().unwrap()
    }

    #[test]
    fn a_pending_order_page_follows_itself_and_a_settled_one_does_not() {
        let pending = order_page(order("pending", Vec::new()));
        assert!(pending.contains(r#"data-status="pending""#));
        assert!(
            pending.contains(r#"data-poll-url="/bookstore/orders/a6129e5c96440d04d1be4b81c25e580e0d348934/status""#)
        );
        assert!(pending.contains(r#"<noscript><meta http-equiv="refresh" content="3"></noscript>"#));
        assert!(pending.contains(r#"id="pending-note""#));

        let line = json!({ "book_id": "emma", "title": "Emma <i>", "quantity": 2, "price_cents": 1499 });
        let committed = order_page(order("committed", vec![line]));
        assert!(!committed.contains("data-poll-url") && !committed.contains("http-equiv"));
        assert!(committed.contains(r#"data-book-id="emma" data-quantity="2" data-subtotal-cents="2998""#));
        assert!(
            committed.contains(">$29.98<") && committed.contains("Emma &#60;i&#62;"),
            "prices shown, titles escaped"
        );

        let rejected = order_page(order("rejected", Vec::new()));
        assert!(rejected.contains("Not enough stock for Emma: 1 left, 2 ordered"));
    }

    #[test]
    fn every_form_carries_the_csrf_token_and_the_badge_counts_the_cart() {
        let visit = visit(Some("v1.u1.r1.9.sig"), false);
        let token = visit.csrf_token();
        let card = BookCard::from(&book("emma", "Emma", 1499));
        let page = BookPage {
            layout: Layout::new(&visit, Nav::Books, Some(3)),
            book: card,
            description: "<script>alert(1)</script>".into(),
            stock_label: stock_label(10),
            in_cart: 1,
            also: Vec::new(),
            also_heading: String::new(),
            quantity_max: api::QUANTITY_MAX,
        }
        .render()
        .unwrap();
        assert_eq!(page.matches(r#"method="post""#).count(), 2, "sign out and add to cart");
        assert_eq!(page.matches(&format!(r#"name="csrf" value="{token}""#)).count(), 2);
        assert!(page.contains(r#"<span class="cart-badge" id="cart-badge" data-count="3">3</span>"#));
        assert!(page.contains(r#"aria-label="Cart, 3 books""#));
        assert!(page.contains(r##"<a class="skip-link" href="#main">"##) && page.contains(r#"<main id="main""#));
        assert!(!page.contains("<script>alert(1)"), "what admins typed is escaped");
        assert!(page.contains(r#"<label for="quantity">Quantity</label>"#));
    }
}
