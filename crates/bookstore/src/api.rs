//! The bookstore's JSON API (docs/design.md "External contract"), documented in `openapi.json`.

use crate::auth::{self, Session, SessionKey};
use crate::catalog::{self, book_from_row, Book, BOOK_COLUMNS};
use crate::commands::*;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rananeeti_node::caller::Admin;
use rananeeti_node::error::submitted_response;
use rananeeti_node::security::{ClientAddress, Security};
use rananeeti_node::session::Claims;
use rananeeti_node::{ApiError, ApiJson};
use rananeeti_platform::sqlx::{self, AnyPool, Row};
use rananeeti_platform::{CommandId, CommandState, NewCommand, Outcome, Platform, SubmitOptions, Submitted};
use serde_json::{json, Value};
use std::sync::Arc;

pub const PAGE_ITEMS_DEFAULT: usize = 24;
pub const PAGE_ITEMS_MAX: usize = 100;
pub const BESTSELLERS: usize = 20;
pub const RECOMMENDATIONS: usize = 5;
pub const QUANTITY_MAX: i64 = 99;
const QUERY_CHARS_MAX: usize = 100;
const OPENAPI: &str = include_str!("openapi.json");

/// What every handler needs.
#[derive(Clone)]
pub struct Shop {
    pub platform: Arc<Platform>,
    pub key: SessionKey,
    /// The admin token (admin routes take it as their bearer), admin page sessions, the sign-in
    /// throttle, TLS.
    pub security: Security,
}

pub fn router(shop: Shop) -> Router {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/books", get(list_books))
        .route("/api/books/{id}", get(show_book))
        .route("/api/bestsellers", get(bestsellers))
        .route("/api/categories", get(list_categories))
        .route("/api/recommendations/{book_id}", get(recommendations))
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/signin", post(signin))
        .route("/api/auth/signout", post(signout))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/cart", get(show_cart).post(add_to_cart).put(set_in_cart).delete(remove_from_cart))
        .route("/api/orders", get(list_orders).post(place_order))
        .route("/api/orders/{id}", get(show_order))
        .route("/api/blog", get(list_posts).post(create_post))
        .route("/api/blog/{slug}", get(show_post))
        .route("/api/admin/books", post(create_book))
        .route("/api/admin/books/{id}", put(update_book).delete(delete_book))
        .route("/api/admin/bestsellers/rebuild", post(rebuild))
        .with_state(shop)
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(error.to_string())
}

/// Runs a catalog read on this region's store, or, when it is failing, on another region's
/// (replicated: it may lag). Answers the value and, when it came from another region, that
/// region's name. A failure of the local store also counts toward opening its breaker.
macro_rules! read_with_fallback {
    ($shop:expr, |$pool:ident| $read:expr) => {{
        let chosen = $shop.platform.read_pool().await.map_err(unavailable)?;
        let first = {
            let $pool = &chosen.pool;
            $read.await
        };
        match first {
            Ok(value) => (value, chosen.stale_from),
            Err(error) if chosen.stale_from.is_none() => {
                $shop.platform.read_failed(&error);
                match $shop.platform.store().fallback_readers().into_iter().next() {
                    Some((region, fallback)) => {
                        let $pool = &fallback;
                        ($read.await.map_err(unavailable)?, Some(region))
                    }
                    None => return Err(unavailable(error)),
                }
            }
            Err(error) => return Err(unavailable(error)),
        }
    }};
}

/// A read answer, marked when it came from another region's database.
fn stale_marked(mut body: Value, stale: Option<String>) -> Response {
    match stale {
        None => Json(body).into_response(),
        Some(region) => {
            if let Some(object) = body.as_object_mut() {
                object.insert("stale".into(), json!({ "from_region": region }));
            }
            let mut response = Json(body).into_response();
            if let Ok(value) = axum::http::HeaderValue::from_str(&region) {
                response.headers_mut().insert("x-rananeeti-stale", value);
            }
            response
        }
    }
}

pub(crate) async fn reader(shop: &Shop) -> Result<AnyPool, ApiError> {
    shop.platform.reader().await.map_err(unavailable)
}

/// The signed-in shopper (a bearer token whose session is alive), or 401 before anything else of
/// the request is read. Handlers take it before their body.
pub struct Shopper(pub Session, pub Claims);

impl axum::extract::FromRequestParts<Shop> for Shopper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, shop: &Shop) -> Result<Shopper, ApiError> {
        let token = rananeeti_node::admin::bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let (session, claims) = shop.key.check(&shop.platform, token).await.ok_or(ApiError::Unauthorized)?;
        Ok(Shopper(session, claims))
    }
}

/// Recognises shoppers' bearer tokens for the node's own routes (and 403 on admin routes).
pub struct ShopperAuthenticator {
    pub(crate) shop: Shop,
}

impl rananeeti_node::caller::Authenticator for ShopperAuthenticator {
    fn user<'a>(&'a self, headers: &'a HeaderMap) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let token = rananeeti_node::admin::bearer_token(headers)?;
            self.shop.key.check(&self.shop.platform, token).await.map(|(session, _)| session.user_id)
        })
    }
}

async fn submit(shop: &Shop, kind: &'static str, id: CommandId, payload: Value) -> Result<Submitted, ApiError> {
    submit_with(shop, kind, id, payload, SubmitOptions::default()).await
}

pub(crate) async fn submit_with(
    shop: &Shop,
    kind: &'static str,
    id: CommandId,
    payload: Value,
    options: SubmitOptions,
) -> Result<Submitted, ApiError> {
    shop.platform.submit(NewCommand { kind, id, payload }, options).await.map_err(ApiError::from)
}

// ---- catalog ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BooksQuery {
    q: Option<String>,
    category: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None | Some("") => Ok(PAGE_ITEMS_DEFAULT),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=PAGE_ITEMS_MAX).contains(limit))
            .ok_or_else(|| ApiError::invalid("limit", format!("a whole number from 1 to {PAGE_ITEMS_MAX}"))),
    }
}

/// `%` and `_` in a search are literal.
fn like_pattern(text: &str) -> String {
    let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

/// One page of books matching a search (title, author or category) and a category, by id.
pub async fn search_books(
    pool: &AnyPool,
    q: &str,
    category: &str,
    after: &str,
    limit: usize,
) -> Result<(Vec<Book>, Option<String>), sqlx::Error> {
    // With a search, the matches are found first (PostgreSQL: through the trigram index) and
    // then ordered; otherwise a planner may walk every book in id order testing each one.
    let sql = if q.is_empty() {
        format!(
            "SELECT {BOOK_COLUMNS} FROM bs_books WHERE deleted = 0 AND ($1 = '' OR $2 = '') \
             AND ($3 = '' OR category = $3) AND id > $4 ORDER BY id LIMIT $5"
        )
    } else if pool.connect_options().database_url.scheme() == "sqlite" {
        // SQLite has no index for `LIKE '%q%'`: the scan goes over `bs_books_search` (search,
        // deleted, category, id), a quarter of the table's size, and only matches are looked up.
        // `+id` keeps the planner from walking the primary key instead (200 ms at 100,000 books).
        format!(
            "WITH matches AS MATERIALIZED (SELECT id FROM bs_books \
             WHERE search LIKE $2 ESCAPE '\\' AND deleted = 0 AND $1 <> '' AND ($3 = '' OR category = $3) AND +id > $4) \
             SELECT {BOOK_COLUMNS} FROM bs_books WHERE id IN (SELECT id FROM matches) ORDER BY id LIMIT $5"
        )
    } else {
        format!(
            "WITH matches AS MATERIALIZED (SELECT {BOOK_COLUMNS} FROM bs_books \
             WHERE search LIKE $2 ESCAPE '\\' AND deleted = 0 AND $1 <> '') \
             SELECT {BOOK_COLUMNS} FROM matches WHERE ($3 = '' OR category = $3) AND id > $4 ORDER BY id LIMIT $5"
        )
    };
    let rows = sqlx::query(&sql)
        .bind(q)
        .bind(like_pattern(q))
        .bind(category)
        .bind(after)
        .bind((limit + 1) as i64)
        .fetch_all(pool)
        .await?;
    let mut books = rows.iter().map(book_from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if books.len() > limit {
        books.truncate(limit);
        books.last().map(|book| book.id.clone())
    } else {
        None
    };
    Ok((books, next))
}

async fn list_books(
    State(shop): State<Shop>,
    query: Result<Query<BooksQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadRequest { field: None, message: rejection.body_text() })?;
    let q = query.q.unwrap_or_default().trim().to_string();
    if q.chars().count() > QUERY_CHARS_MAX {
        return Err(ApiError::invalid("q", format!("at most {QUERY_CHARS_MAX} characters")));
    }
    let limit = parse_limit(query.limit.as_deref())?;
    let category = query.category.unwrap_or_default();
    let after = query.after.unwrap_or_default();
    let ((items, next), stale) =
        read_with_fallback!(shop, |pool| search_books(pool, &q, category.trim(), &after, limit));
    Ok(stale_marked(json!({ "items": items, "next": next }), stale))
}

pub async fn get_book(pool: &AnyPool, id: &str) -> Result<Option<Book>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {BOOK_COLUMNS} FROM bs_books WHERE id = $1 AND deleted = 0"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(book_from_row).transpose()
}

async fn show_book(State(shop): State<Shop>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (book, stale) = read_with_fallback!(shop, |pool| get_book(pool, &id));
    let book = book.ok_or(ApiError::NotFound)?;
    Ok(stale_marked(serde_json::to_value(book).expect("a book serializes"), stale))
}

/// `BOOK_COLUMNS` qualified with the `b` alias, for joins.
fn qualified_book_columns() -> String {
    BOOK_COLUMNS.split(", ").map(|column| format!("b.{column}")).collect::<Vec<_>>().join(", ")
}

pub async fn top_sellers(pool: &AnyPool, limit: usize) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {}, s.sold FROM bs_bestsellers s JOIN bs_books b ON b.id = s.book_id WHERE b.deleted = 0 \
         ORDER BY s.sold DESC, s.book_id LIMIT $1",
        qualified_book_columns()
    ))
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let book = book_from_row(row)?;
            Ok(json!({ "book": book, "sold": row.try_get::<i64, _>("sold")? }))
        })
        .collect()
}

async fn bestsellers(State(shop): State<Shop>) -> Result<Response, ApiError> {
    let (items, stale) = read_with_fallback!(shop, |pool| top_sellers(pool, BESTSELLERS));
    Ok(stale_marked(json!({ "items": items, "next": null }), stale))
}

/// Every category with books, and how many (derived: `bs_categories`), by name.
pub async fn categories(pool: &AnyPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT category, books FROM bs_categories WHERE books > 0 ORDER BY category")
        .fetch_all(pool)
        .await?;
    rows.iter().map(|row| Ok((row.try_get("category")?, row.try_get("books")?))).collect()
}

async fn list_categories(State(shop): State<Shop>) -> Result<Response, ApiError> {
    let (categories, stale) = read_with_fallback!(shop, |pool| categories(pool));
    let items: Vec<Value> =
        categories.into_iter().map(|(category, books)| json!({ "category": category, "books": books })).collect();
    Ok(stale_marked(json!({ "items": items, "next": null }), stale))
}

/// Orders of a book that "also bought" looks at: a bound, so a page's cost does not grow with a
/// best seller's sales.
const ALSO_BOUGHT_ORDERS: i64 = 1_000;

/// "Customers who bought this also bought": books most often in the same orders, counted over
/// up to `ALSO_BOUGHT_ORDERS` of the book's orders. Each step is an index lookup: the book's
/// order lines by book, those orders' lines by order (the primary key), the books by id.
pub async fn also_bought(pool: &AnyPool, book_id: &str, limit: usize) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "WITH orders AS MATERIALIZED (SELECT order_id FROM bs_order_lines WHERE book_id = $1 LIMIT $3), \
         together AS MATERIALIZED (SELECT l.book_id, COUNT(*) AS together FROM orders o \
           JOIN bs_order_lines l ON l.order_id = o.order_id WHERE l.book_id <> $1 GROUP BY l.book_id) \
         SELECT {}, t.together FROM together t JOIN bs_books b ON b.id = t.book_id \
         WHERE b.deleted = 0 ORDER BY t.together DESC, b.id LIMIT $2",
        qualified_book_columns(),
    ))
    .bind(book_id)
    .bind(limit as i64)
    .bind(ALSO_BOUGHT_ORDERS)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok(json!({ "book": book_from_row(row)?, "orders_together": row.try_get::<i64, _>("together")? })))
        .collect()
}

async fn recommendations(State(shop): State<Shop>, Path(book_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let pool = reader(&shop).await?;
    if get_book(&pool, &book_id).await.map_err(unavailable)?.is_none() {
        return Err(ApiError::NotFound);
    }
    let items = also_bought(&pool, &book_id, RECOMMENDATIONS).await.map_err(unavailable)?;
    Ok(Json(json!({ "items": items, "next": null })))
}

// ---- accounts ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

/// Creates an account homed in this node's region. The same email twice is one account.
pub async fn create_account(shop: &Shop, email: &str, password: &str) -> Result<(String, Submitted), ApiError> {
    let email = auth::parse_email(email).map_err(|message| ApiError::invalid("email", message))?;
    auth::check_password(password, &email).map_err(|message| ApiError::invalid("password", message))?;
    let user_id = auth::user_id(&email);
    let payload = SignupPayload {
        user_id: user_id.clone(),
        email: email.clone(),
        password_hash: auth::hash_password_async(password).await.map_err(hashing_busy)?,
        home_region: shop.platform.region().to_string(),
    };
    let id = CommandId::digest(KIND_SIGNUP, email.as_bytes());
    let submitted = submit(shop, KIND_SIGNUP, id, serde_json::to_value(&payload).expect("serializes")).await?;
    Ok((user_id, submitted))
}

/// The hashing queue is full: answered at once, 429 with `Retry-After` (not a 5xx, which would
/// make the gateway eject a node that is only busy hashing).
pub(crate) fn hashing_busy(error: auth::HashingBusy) -> ApiError {
    ApiError::TooManyRequests { retry_after_seconds: 1, message: error.to_string() }
}

/// Sign-up says when an email already has an account (409): the accepted risk of account
/// enumeration, written down in ARCHITECTURE.md's security model. Each such answer counts
/// against the caller's address in the sign-in throttle, and each costs the caller an argon2
/// hash on the bounded queue, so a list of addresses cannot be checked quickly.
async fn signup(
    State(shop): State<Shop>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    throttled(&shop, "", address)?;
    let (user_id, outcome) = create_account(&shop, &body.email, &body.password).await?;
    if matches!(outcome.outcome, Outcome::Duplicate { first: CommandState::Committed }) {
        shop.security.sign_ins.probed(address);
        return Ok((
            StatusCode::CONFLICT,
            Json(json!({ "error": { "field": "email", "message": "an account with this email already exists" } })),
        )
            .into_response());
    }
    Ok(submitted_response(outcome, json!({ "user_id": user_id })))
}

/// 429 while the account or the address is locked out by failed sign-ins.
pub(crate) fn throttled(shop: &Shop, account: &str, address: Option<std::net::IpAddr>) -> Result<(), ApiError> {
    shop.security.sign_ins.check(account, address).map_err(|locked| ApiError::TooManyRequests {
        retry_after_seconds: locked.retry_after_seconds,
        message: "too many failed sign-ins; wait before trying again".to_string(),
    })
}

/// Why a sign-in did not give a session.
pub enum SignInRefused {
    /// Wrong email or password (said alike).
    Wrong,
    /// Throttled, hashing queue full, store down: the error says which.
    Error(ApiError),
}

impl From<ApiError> for SignInRefused {
    fn from(error: ApiError) -> Self {
        SignInRefused::Error(error)
    }
}

/// Checks credentials against the account as this region knows it, through the sign-in
/// throttle (every sign-in, API and pages, comes here).
pub async fn sign_in(
    shop: &Shop,
    email: &str,
    password: &str,
    address: Option<std::net::IpAddr>,
) -> Result<(Session, Claims, String), SignInRefused> {
    let account = auth::parse_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    throttled(shop, &account, address)?;
    let verified = check_credentials(shop, email, password).await?;
    match verified {
        Some(session) => {
            shop.security.sign_ins.succeeded(&account);
            let (claims, token) = shop.key.issue(&session);
            Ok((session, claims, token))
        }
        None => {
            shop.security.sign_ins.failed(&account, address);
            tracing::info!(address = ?address, "sign-in refused: wrong email or password");
            Err(SignInRefused::Wrong)
        }
    }
}

async fn check_credentials(shop: &Shop, email: &str, password: &str) -> Result<Option<Session>, ApiError> {
    let Ok(email) = auth::parse_email(email) else { return Ok(None) };
    let pool = reader(shop).await?;
    let row = sqlx::query("SELECT id, password_hash, home_region FROM bs_users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&pool)
        .await
        .map_err(unavailable)?;
    let Some(row) = row else {
        // The same work as a real check, so timing does not tell which emails exist.
        let _ = auth::password_matches_async(
            password,
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2FSQ7Ub4mSFV2Rj2WGsNHtI2r5TOtHZlS3oWHGBmoOA",
        )
        .await
        .map_err(hashing_busy)?;
        return Ok(None);
    };
    let hash: String = row.try_get("password_hash").map_err(unavailable)?;
    if !auth::password_matches_async(password, &hash).await.map_err(hashing_busy)? {
        return Ok(None);
    }
    Ok(Some(Session {
        user_id: row.try_get("id").map_err(unavailable)?,
        home_region: row.try_get("home_region").map_err(unavailable)?,
    }))
}

fn token_answer(shop: &Shop, session: &Session, token: &str) -> Response {
    Json(json!({
        "token": token,
        "user_id": session.user_id,
        "home_region": session.home_region,
        "expires_in_seconds": shop.key.lifetime().idle_ms / 1000,
    }))
    .into_response()
}

async fn signin(
    State(shop): State<Shop>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    match sign_in(&shop, &body.email, &body.password, address).await {
        Ok((session, _, token)) => Ok(token_answer(&shop, &session, &token)),
        Err(SignInRefused::Wrong) => {
            Ok((StatusCode::UNAUTHORIZED, Json(json!({ "error": { "message": "wrong email or password" } })))
                .into_response())
        }
        Err(SignInRefused::Error(error)) => Err(error),
    }
}

/// Ends the session everywhere: its id is revoked (replicated like any write), so the token is
/// refused by every node of every region from now on.
async fn signout(State(shop): State<Shop>, Shopper(_, claims): Shopper) -> Result<Json<Value>, ApiError> {
    shop.key.revoke(&shop.platform, &claims).await.map_err(ApiError::from)?;
    Ok(Json(json!({ "signed_out": true })))
}

/// A renewed token for the same session (its idle timeout starts again; its absolute end stays).
async fn refresh(State(shop): State<Shop>, Shopper(session, claims): Shopper) -> Result<Response, ApiError> {
    Ok(token_answer(&shop, &session, &shop.key.renew(&claims)))
}

// ---- cart ----

#[derive(Clone, Debug, serde::Serialize)]
pub struct CartLine {
    pub book_id: String,
    pub title: String,
    pub cover: String,
    pub quantity: i64,
    pub price_cents: i64,
    pub subtotal_cents: i64,
    #[serde(skip)]
    pub hlc: u64,
}

pub async fn cart_of(pool: &AnyPool, user_id: &str) -> Result<Vec<CartLine>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.book_id, b.title, b.cover, l.quantity, l.price_cents, l.hlc FROM bs_cart_lines l \
         JOIN bs_books b ON b.id = l.book_id WHERE l.user_id = $1 ORDER BY b.title",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let quantity: i64 = row.try_get("quantity")?;
            let price: i64 = row.try_get("price_cents")?;
            Ok(CartLine {
                book_id: row.try_get("book_id")?,
                title: row.try_get("title")?,
                cover: row.try_get("cover")?,
                quantity,
                price_cents: price,
                subtotal_cents: quantity * price,
                hlc: row.try_get::<i64, _>("hlc")? as u64,
            })
        })
        .collect()
}

async fn show_cart(State(shop): State<Shop>, Shopper(session, _): Shopper) -> Result<Json<Value>, ApiError> {
    let pool = reader(&shop).await?;
    let lines = cart_of(&pool, &session.user_id).await.map_err(unavailable)?;
    let total: i64 = lines.iter().map(|line| line.subtotal_cents).sum();
    let count: i64 = lines.iter().map(|line| line.quantity).sum();
    Ok(Json(json!({ "items": lines, "total_cents": total, "count": count, "next": null })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CartRequest {
    book_id: String,
    #[serde(default)]
    quantity: Option<i64>,
}

/// What a cart change does to one book's line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CartChange {
    /// Adds this many copies to what the line holds.
    Add(i64),
    /// Sets the line to this many copies (0 removes it).
    Set(i64),
}

/// How few copies a quantity field may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantityFloor {
    /// Adding: at least one copy.
    One,
    /// Setting: 0 removes the line.
    ZeroRemoves,
}

impl QuantityFloor {
    pub fn low(self) -> i64 {
        match self {
            QuantityFloor::One => 1,
            QuantityFloor::ZeroRemoves => 0,
        }
    }
}

/// Changes one book's line in the user's cart.
pub async fn change_cart(
    shop: &Shop,
    session: &Session,
    book_id: &str,
    change: CartChange,
) -> Result<Submitted, ApiError> {
    let pool = reader(shop).await?;
    let asked = match change {
        CartChange::Add(quantity) | CartChange::Set(quantity) => quantity,
    };
    if asked > 0 && get_book(&pool, book_id).await.map_err(unavailable)?.is_none() {
        return Err(ApiError::invalid("book_id", format!("no book {book_id}")));
    }
    let current =
        cart_of(&pool, &session.user_id).await.map_err(unavailable)?.into_iter().find(|line| line.book_id == book_id);
    let quantity = match change {
        CartChange::Add(quantity) => quantity + current.as_ref().map(|line| line.quantity).unwrap_or(0),
        CartChange::Set(quantity) => quantity,
    };
    if quantity > QUANTITY_MAX {
        return Err(ApiError::invalid("quantity", format!("at most {QUANTITY_MAX} of one book")));
    }
    let replaces_hlc = current.map(|line| line.hlc).unwrap_or(0);
    submit_cart_set(shop, session, book_id, quantity, replaces_hlc, SubmitOptions::default()).await
}

/// Submits one cart line's new quantity, replacing the line as the user saw it (`replaces_hlc`).
pub async fn submit_cart_set(
    shop: &Shop,
    session: &Session,
    book_id: &str,
    quantity: i64,
    replaces_hlc: u64,
    options: SubmitOptions,
) -> Result<Submitted, ApiError> {
    // A line that does not exist (yet, or any more) is versioned by the user's newest order:
    // adding a book again after a checkout emptied the cart is a new write, not a duplicate of
    // the add before that checkout.
    let replaces_hlc = if replaces_hlc == 0 { newest_order_hlc(shop, &session.user_id).await } else { replaces_hlc };
    shop.platform.observe(rananeeti_platform::Hlc(replaces_hlc));
    let payload = CartSetPayload {
        user_id: session.user_id.clone(),
        home_region: session.home_region.clone(),
        book_id: book_id.to_string(),
        quantity,
        replaces_hlc,
    };
    let id = CommandId::digest(
        KIND_CART_SET,
        format!("{}\u{1f}{book_id}\u{1f}{quantity}\u{1f}{replaces_hlc}", session.user_id).as_bytes(),
    );
    submit_with(shop, KIND_CART_SET, id, serde_json::to_value(&payload).expect("serializes"), options).await
}

/// The HLC of the user's newest placed order, 0 when none or when the store cannot say.
async fn newest_order_hlc(shop: &Shop, user_id: &str) -> u64 {
    let Ok(pool) = shop.platform.reader().await else { return 0 };
    sqlx::query("SELECT COALESCE(MAX(placed_hlc), 0) AS newest FROM bs_orders WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&pool)
        .await
        .ok()
        .and_then(|row| row.try_get::<i64, _>("newest").ok())
        .unwrap_or(0) as u64
}

fn parse_quantity(quantity: Option<i64>, floor: QuantityFloor) -> Result<i64, ApiError> {
    let quantity = quantity.ok_or_else(|| ApiError::invalid("quantity", "how many copies"))?;
    let low = floor.low();
    if !(low..=QUANTITY_MAX).contains(&quantity) {
        return Err(ApiError::invalid("quantity", format!("from {low} to {QUANTITY_MAX}")));
    }
    Ok(quantity)
}

async fn add_to_cart(
    State(shop): State<Shop>,
    Shopper(session, _): Shopper,
    ApiJson(body): ApiJson<CartRequest>,
) -> Result<Response, ApiError> {
    let quantity = parse_quantity(body.quantity.or(Some(1)), QuantityFloor::One)?;
    Ok(submitted_response(change_cart(&shop, &session, &body.book_id, CartChange::Add(quantity)).await?, json!({})))
}

async fn set_in_cart(
    State(shop): State<Shop>,
    Shopper(session, _): Shopper,
    ApiJson(body): ApiJson<CartRequest>,
) -> Result<Response, ApiError> {
    let quantity = parse_quantity(body.quantity, QuantityFloor::ZeroRemoves)?;
    Ok(submitted_response(change_cart(&shop, &session, &body.book_id, CartChange::Set(quantity)).await?, json!({})))
}

async fn remove_from_cart(
    State(shop): State<Shop>,
    Shopper(session, _): Shopper,
    ApiJson(body): ApiJson<CartRequest>,
) -> Result<Response, ApiError> {
    if body.quantity.is_some() {
        return Err(ApiError::invalid("quantity", "DELETE takes only book_id"));
    }
    Ok(submitted_response(change_cart(&shop, &session, &body.book_id, CartChange::Set(0)).await?, json!({})))
}

// ---- orders ----

/// Turns the user's cart into an order (one command). The same cart checked out twice is one
/// order; a checkout queued during an outage may still be rejected for stock, and says so.
pub async fn checkout(shop: &Shop, session: &Session) -> Result<Submitted, ApiError> {
    let pool = reader(shop).await?;
    let lines = cart_of(&pool, &session.user_id).await.map_err(unavailable)?;
    if lines.is_empty() {
        return Err(ApiError::invalid("cart", "the cart is empty"));
    }
    let cart_version = lines.iter().map(|line| line.hlc).max().unwrap_or(0);
    submit_checkout(shop, session, cart_version, SubmitOptions::default()).await
}

/// Submits a checkout of the cart whose newest line has `cart_version` as its HLC: the same
/// cart checked out twice has one id, so it is one order.
pub async fn submit_checkout(
    shop: &Shop,
    session: &Session,
    cart_version: u64,
    options: SubmitOptions,
) -> Result<Submitted, ApiError> {
    let payload =
        CheckoutPayload { user_id: session.user_id.clone(), home_region: session.home_region.clone(), cart_version };
    let id = CommandId::digest(KIND_CHECKOUT, format!("{}\u{1f}{cart_version}", session.user_id).as_bytes());
    submit_with(shop, KIND_CHECKOUT, id, serde_json::to_value(&payload).expect("serializes"), options).await
}

async fn place_order(State(shop): State<Shop>, Shopper(session, _): Shopper) -> Result<Response, ApiError> {
    Ok(submitted_response(checkout(&shop, &session).await?, json!({})))
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Order {
    pub id: String,
    /// committed, pending or rejected
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub total_cents: i64,
    pub placed_at_ms: u64,
    pub lines: Vec<Value>,
}

async fn order_lines(pool: &AnyPool, order_id: &str) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.book_id, b.title, l.quantity, l.price_cents FROM bs_order_lines l JOIN bs_books b ON b.id = l.book_id \
         WHERE l.order_id = $1 ORDER BY b.title",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(json!({
                "book_id": row.try_get::<String, _>("book_id")?,
                "title": row.try_get::<String, _>("title")?,
                "quantity": row.try_get::<i64, _>("quantity")?,
                "price_cents": row.try_get::<i64, _>("price_cents")?,
            }))
        })
        .collect()
}

/// One of the user's orders: placed (committed), or a checkout still pending or rejected.
pub async fn order_of(shop: &Shop, session: &Session, id: &str) -> Result<Option<Order>, ApiError> {
    let pool = reader(shop).await?;
    let row = sqlx::query("SELECT id, total_cents, placed_hlc FROM bs_orders WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(&session.user_id)
        .fetch_optional(&pool)
        .await
        .map_err(unavailable)?;
    if let Some(row) = row {
        return Ok(Some(Order {
            id: id.to_string(),
            status: "committed".into(),
            reason: None,
            total_cents: row.try_get("total_cents").map_err(unavailable)?,
            placed_at_ms: (row.try_get::<i64, _>("placed_hlc").map_err(unavailable)? as u64) >> 16,
            lines: order_lines(&pool, id).await.map_err(unavailable)?,
        }));
    }
    let Ok(command_id) = CommandId::parse_hex(id) else { return Ok(None) };
    let Some(status) = shop.platform.status(&command_id).await.map_err(unavailable)? else { return Ok(None) };
    let owner = status.payload.get("user_id").and_then(Value::as_str);
    if status.kind != KIND_CHECKOUT || owner != Some(session.user_id.as_str()) {
        // Someone else's order is not found, never shown.
        return Ok(None);
    }
    let (status_name, reason) = match &status.state {
        CommandState::Rejected { reason } => ("rejected", Some(reason.clone())),
        CommandState::Pending => ("pending", None),
        // Committed in its region but not yet here: still on its way.
        CommandState::Committed => ("pending", None),
    };
    Ok(Some(Order {
        id: id.to_string(),
        status: status_name.into(),
        reason,
        total_cents: 0,
        placed_at_ms: status.hlc >> 16,
        lines: Vec::new(),
    }))
}

async fn show_order(
    State(shop): State<Shop>,
    Shopper(session, _): Shopper,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    order_of(&shop, &session, &id).await?.map(Json).ok_or(ApiError::NotFound)
}

/// The user's orders, newest first: placed ones, then checkouts waiting in this node's queue.
pub async fn orders_of(shop: &Shop, session: &Session) -> Result<Vec<Order>, ApiError> {
    let pool = reader(shop).await?;
    let rows = sqlx::query(
        "SELECT id, total_cents, placed_hlc FROM bs_orders WHERE user_id = $1 ORDER BY placed_hlc DESC LIMIT 100",
    )
    .bind(&session.user_id)
    .fetch_all(&pool)
    .await
    .map_err(unavailable)?;
    let mut orders = Vec::new();
    for row in rows {
        let id: String = row.try_get("id").map_err(unavailable)?;
        orders.push(Order {
            lines: order_lines(&pool, &id).await.map_err(unavailable)?,
            status: "committed".into(),
            reason: None,
            total_cents: row.try_get("total_cents").map_err(unavailable)?,
            placed_at_ms: (row.try_get::<i64, _>("placed_hlc").map_err(unavailable)? as u64) >> 16,
            id,
        });
    }
    let pending = shop.platform.pending(KIND_CHECKOUT, 100).map_err(unavailable)?;
    for status in pending.into_iter().rev() {
        if status.payload.get("user_id").and_then(Value::as_str) == Some(session.user_id.as_str()) {
            orders.insert(
                0,
                Order {
                    id: status.id.to_hex(),
                    status: "pending".into(),
                    reason: None,
                    total_cents: 0,
                    placed_at_ms: status.hlc >> 16,
                    lines: Vec::new(),
                },
            );
        }
    }
    Ok(orders)
}

async fn list_orders(State(shop): State<Shop>, Shopper(session, _): Shopper) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "items": orders_of(&shop, &session).await?, "next": null })))
}

// ---- blog ----

pub fn render_markdown(markdown: &str) -> String {
    let parser = pulldown_cmark::Parser::new_ext(markdown, pulldown_cmark::Options::ENABLE_TABLES);
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser);
    // Whatever the Markdown holds (raw HTML, javascript: links), only safe HTML leaves.
    ammonia::clean(&html)
}

pub async fn posts(pool: &AnyPool, limit: usize) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query("SELECT slug, title, author, published_hlc FROM bs_blog_posts WHERE deleted = 0 ORDER BY published_hlc DESC LIMIT $1")
        .bind(limit as i64)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(json!({
                "slug": row.try_get::<String, _>("slug")?,
                "title": row.try_get::<String, _>("title")?,
                "author": row.try_get::<String, _>("author")?,
                "published_at_ms": (row.try_get::<i64, _>("published_hlc")? as u64) >> 16,
            }))
        })
        .collect()
}

pub async fn post_by_slug(pool: &AnyPool, slug: &str) -> Result<Option<Value>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT slug, title, author, body_md, published_hlc FROM bs_blog_posts WHERE slug = $1 AND deleted = 0",
    )
    .bind(slug)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        let body: String = row.try_get("body_md")?;
        Ok(json!({
            "slug": row.try_get::<String, _>("slug")?,
            "title": row.try_get::<String, _>("title")?,
            "author": row.try_get::<String, _>("author")?,
            "body_markdown": body,
            "body_html": render_markdown(&body),
            "published_at_ms": (row.try_get::<i64, _>("published_hlc")? as u64) >> 16,
        }))
    })
    .transpose()
}

async fn list_posts(State(shop): State<Shop>) -> Result<Response, ApiError> {
    let (items, stale) = read_with_fallback!(shop, |pool| posts(pool, 100));
    Ok(stale_marked(json!({ "items": items, "next": null }), stale))
}

async fn show_post(State(shop): State<Shop>, Path(slug): Path<String>) -> Result<Response, ApiError> {
    let (post, stale) = read_with_fallback!(shop, |pool| post_by_slug(pool, &slug));
    Ok(stale_marked(post.ok_or(ApiError::NotFound)?, stale))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPost {
    title: String,
    body_markdown: String,
    #[serde(default)]
    author: Option<String>,
}

fn text_field(field: &'static str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 {
        return Err(ApiError::invalid(field, "cannot be empty"));
    }
    if chars > max {
        return Err(ApiError::invalid(field, format!("at most {max} characters (this one has {chars})")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t') {
        return Err(ApiError::invalid(field, "no control characters"));
    }
    Ok(value.to_string())
}

async fn create_post(
    State(shop): State<Shop>,
    _admin: Admin,
    ApiJson(body): ApiJson<NewPost>,
) -> Result<Response, ApiError> {
    let payload = parse_post(&body.title, &body.body_markdown, body.author.as_deref())?;
    let slug = payload.slug.clone();
    Ok(submitted_response(submit_post(&shop, payload).await?, json!({ "slug": slug })))
}

/// A new post as the admin wrote it, checked field by field.
pub(crate) fn parse_post(title: &str, body_markdown: &str, author: Option<&str>) -> Result<BlogPostPayload, ApiError> {
    let title = text_field("title", title, 120)?;
    let body_md = text_field("body_markdown", body_markdown, 20_000)?;
    let author = text_field("author", author.unwrap_or("The bookstore"), 60)?;
    let slug = catalog::slug(&title);
    if slug.is_empty() {
        return Err(ApiError::invalid("title", "needs letters or digits"));
    }
    Ok(BlogPostPayload { slug, title, body_md, author })
}

pub(crate) async fn submit_post(shop: &Shop, payload: BlogPostPayload) -> Result<Submitted, ApiError> {
    let id = CommandId::digest(KIND_BLOG_POST, payload.slug.as_bytes());
    submit(shop, KIND_BLOG_POST, id, serde_json::to_value(&payload).expect("serializes")).await
}

// ---- admin: books ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BookRequest {
    pub(crate) title: String,
    pub(crate) author: String,
    pub(crate) category: String,
    pub(crate) price_cents: i64,
    #[serde(default)]
    pub(crate) rating: Option<i64>,
    pub(crate) stock: i64,
    #[serde(default)]
    pub(crate) description: String,
}

pub(crate) fn parse_book(id: Option<String>, body: BookRequest) -> Result<Book, ApiError> {
    let title = text_field("title", &body.title, 200)?;
    let author = text_field("author", &body.author, 120)?;
    let category = text_field("category", &body.category, 40)?;
    if !(0..=1_000_000).contains(&body.price_cents) {
        return Err(ApiError::invalid("price_cents", "from 0 to 1000000 cents"));
    }
    let rating = body.rating.unwrap_or(0);
    if !(0..=50).contains(&rating) {
        return Err(ApiError::invalid("rating", "tenths of a star, from 0 to 50"));
    }
    if !(0..=1_000_000).contains(&body.stock) {
        return Err(ApiError::invalid("stock", "from 0 to 1000000"));
    }
    let description = if body.description.trim().is_empty() {
        String::new()
    } else {
        text_field("description", &body.description, 4000)?
    };
    let id = id.unwrap_or_else(|| catalog::slug(&title));
    if id.is_empty() {
        return Err(ApiError::invalid("title", "needs letters or digits"));
    }
    Ok(Book {
        cover: format!("/bookstore/covers/{id}.svg"),
        id,
        title,
        author,
        category,
        price_cents: body.price_cents,
        rating,
        stock: body.stock,
        description,
    })
}

async fn put_book(shop: &Shop, book: Book) -> Result<Response, ApiError> {
    let book_id = book.id.clone();
    Ok(submitted_response(submit_book_put(shop, book).await?, json!({ "book_id": book_id })))
}

pub(crate) async fn submit_book_put(shop: &Shop, book: Book) -> Result<Submitted, ApiError> {
    let payload = BookPutPayload { book };
    let value = serde_json::to_value(&payload).expect("serializes");
    let id = CommandId::digest(
        KIND_BOOK_PUT,
        format!("{value}\u{1f}{}", rananeeti_platform::hlc::wall_clock_ms()).as_bytes(),
    );
    submit(shop, KIND_BOOK_PUT, id, value).await
}

async fn create_book(
    State(shop): State<Shop>,
    _admin: Admin,
    ApiJson(body): ApiJson<BookRequest>,
) -> Result<Response, ApiError> {
    let book = parse_book(None, body)?;
    let pool = reader(&shop).await?;
    if get_book(&pool, &book.id).await.map_err(unavailable)?.is_some() {
        return Err(ApiError::invalid(
            "title",
            format!("a book with id {} exists; PUT /api/admin/books/{} changes it", book.id, book.id),
        ));
    }
    put_book(&shop, book).await
}

async fn update_book(
    State(shop): State<Shop>,
    _admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BookRequest>,
) -> Result<Response, ApiError> {
    let pool = reader(&shop).await?;
    if get_book(&pool, &id).await.map_err(unavailable)?.is_none() {
        return Err(ApiError::NotFound);
    }
    put_book(&shop, parse_book(Some(id), body)?).await
}

async fn delete_book(State(shop): State<Shop>, _admin: Admin, Path(id): Path<String>) -> Result<Response, ApiError> {
    let pool = reader(&shop).await?;
    if get_book(&pool, &id).await.map_err(unavailable)?.is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(submitted_response(submit_book_delete(&shop, &id).await?, json!({ "book_id": id })))
}

pub(crate) async fn submit_book_delete(shop: &Shop, id: &str) -> Result<Submitted, ApiError> {
    let payload = BookDeletePayload { book_id: id.to_string() };
    let command_id = CommandId::digest(
        KIND_BOOK_DELETE,
        format!("{id}\u{1f}{}", rananeeti_platform::hlc::wall_clock_ms()).as_bytes(),
    );
    submit(shop, KIND_BOOK_DELETE, command_id, serde_json::to_value(&payload).expect("serializes")).await
}

/// Recounts best sellers from the orders, and the books per category, in this region's store (admin).
async fn rebuild(State(shop): State<Shop>, _admin: Admin) -> Result<Response, ApiError> {
    let pool = shop.platform.store().writer();
    let mut tx = pool.begin().await.map_err(unavailable)?;
    rebuild_bestsellers(&mut tx).await.map_err(unavailable)?;
    rebuild_categories(&mut tx).await.map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(Json(json!({ "rebuilt": true })).into_response())
}
