//! The bookstore's commands and their write patterns (ARCHITECTURE.md lists them):
//!
//! | kind | pattern | |
//! |---|---|---|
//! | `bookstore.signup` | `global` | an email is taken once, decided by one region |
//! | `bookstore.cart_set` | `home` | the user's home region orders their cart |
//! | `bookstore.checkout` | `home` | the cart becomes an order atomically; stock checked at apply |
//! | `bookstore.book_put`, `bookstore.book_delete` | `global` | the catalog (admin) |
//! | `bookstore.blog_post` | `global` | blog posts (admin) |
//!
//! Best sellers are derived from orders in the same transaction as each checkout (and can be
//! rebuilt from the orders at any time: `rebuild_bestsellers`).

use crate::catalog::search_text;
use futures::future::BoxFuture;
use rananeeti_platform::sqlx::{self, AnyConnection, Row};
use rananeeti_platform::{ApplyError, Command, CommandHandler, StatusAudience, WritePattern};

pub const KIND_SIGNUP: &str = "bookstore.signup";
pub const KIND_CART_SET: &str = "bookstore.cart_set";
pub const KIND_CHECKOUT: &str = "bookstore.checkout";
pub const KIND_BOOK_PUT: &str = "bookstore.book_put";
pub const KIND_BOOK_DELETE: &str = "bookstore.book_delete";
pub const KIND_BLOG_POST: &str = "bookstore.blog_post";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SignupPayload {
    pub user_id: String,
    pub email: String,
    /// argon2id, PHC string; computed at the edge (apply is deterministic).
    pub password_hash: String,
    pub home_region: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CartSetPayload {
    pub user_id: String,
    pub home_region: String,
    pub book_id: String,
    /// 0 removes the line.
    pub quantity: i64,
    /// The HLC of the line this replaces as the user saw it (0: none), so setting 2, then 3,
    /// then 2 again are three writes.
    pub replaces_hlc: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckoutPayload {
    pub user_id: String,
    pub home_region: String,
    /// The newest cart line's HLC when "place order" was pressed: a double click is one order.
    pub cart_version: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BookPutPayload {
    pub book: crate::catalog::Book,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BookDeletePayload {
    pub book_id: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BlogPostPayload {
    pub slug: String,
    pub title: String,
    pub body_md: String,
    pub author: String,
}

fn decode<T: serde::de::DeserializeOwned>(command: &Command) -> Result<T, ApplyError> {
    serde_json::from_value(command.payload.clone())
        .map_err(|error| ApplyError::Rejected(format!("not a {} command: {error}", command.kind)))
}

fn decode_replicated<T: serde::de::DeserializeOwned>(command: &Command) -> Result<T, sqlx::Error> {
    serde_json::from_value(command.payload.clone()).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// A handler from two functions: the apply (may reject) and the replicated apply.
macro_rules! handler {
    ($name:ident, $kind:expr, $pattern:expr, $home:expr, $audience:expr, $apply:ident, $replicated:ident) => {
        pub struct $name;

        impl CommandHandler for $name {
            fn kind(&self) -> &'static str {
                $kind
            }

            fn write_pattern(&self) -> WritePattern {
                $pattern
            }

            fn home_region(&self, command: &Command) -> Option<String> {
                let home: fn(&Command) -> Option<String> = $home;
                home(command)
            }

            fn status_audience(&self, payload: &serde_json::Value) -> StatusAudience {
                let audience: fn(&serde_json::Value) -> StatusAudience = $audience;
                audience(payload)
            }

            fn redact(&self, payload: &mut serde_json::Value) {
                // A password hash is in a sign-up's payload (the apply stores it), and in no
                // answer to anyone.
                if let Some(object) = payload.as_object_mut() {
                    object.remove("password_hash");
                }
            }

            fn apply<'a>(
                &'a self,
                command: &'a Command,
                connection: &'a mut AnyConnection,
            ) -> BoxFuture<'a, Result<(), ApplyError>> {
                Box::pin($apply(command, connection))
            }

            fn apply_replicated<'a>(
                &'a self,
                command: &'a Command,
                connection: &'a mut AnyConnection,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin($replicated(command, connection))
            }
        }
    };
}

fn payload_home(command: &Command) -> Option<String> {
    command.payload.get("home_region").and_then(|home| home.as_str()).map(str::to_string)
}

fn no_home(_: &Command) -> Option<String> {
    None
}

/// The user the payload names reads its status (their account, cart line, order).
fn its_user(payload: &serde_json::Value) -> StatusAudience {
    match payload.get("user_id").and_then(|user| user.as_str()) {
        Some(user) => StatusAudience::User(user.to_string()),
        None => StatusAudience::Admin,
    }
}

/// The catalog and the blog are the admin's.
fn admin_only(_: &serde_json::Value) -> StatusAudience {
    StatusAudience::Admin
}

handler!(SignupHandler, KIND_SIGNUP, WritePattern::Global, no_home, its_user, signup, signup_replicated);
handler!(CartSetHandler, KIND_CART_SET, WritePattern::Home, payload_home, its_user, cart_set, cart_set_replicated);
handler!(CheckoutHandler, KIND_CHECKOUT, WritePattern::Home, payload_home, its_user, checkout, checkout_replicated);
handler!(BookPutHandler, KIND_BOOK_PUT, WritePattern::Global, no_home, admin_only, book_put, book_put_replicated);
handler!(
    BookDeleteHandler,
    KIND_BOOK_DELETE,
    WritePattern::Global,
    no_home,
    admin_only,
    book_delete,
    book_delete_replicated
);
handler!(BlogPostHandler, KIND_BLOG_POST, WritePattern::Global, no_home, admin_only, blog_post, blog_post_replicated);

async fn signup(command: &Command, connection: &mut AnyConnection) -> Result<(), ApplyError> {
    let payload: SignupPayload = decode(command)?;
    let taken = sqlx::query("SELECT 1 AS taken FROM bs_users WHERE email = $1")
        .bind(&payload.email)
        .fetch_optional(&mut *connection)
        .await?;
    if taken.is_some() {
        return Err(ApplyError::Rejected("an account with this email already exists".into()));
    }
    insert_user(command, &payload, connection).await?;
    Ok(())
}

async fn signup_replicated(command: &Command, connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let payload: SignupPayload = decode_replicated(command)?;
    insert_user(command, &payload, connection).await
}

async fn insert_user(
    command: &Command,
    payload: &SignupPayload,
    connection: &mut AnyConnection,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bs_users (id, email, password_hash, home_region, created_hlc) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&payload.user_id)
    .bind(&payload.email)
    .bind(&payload.password_hash)
    .bind(&payload.home_region)
    .bind(command.hlc.0 as i64)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn cart_set(command: &Command, connection: &mut AnyConnection) -> Result<(), ApplyError> {
    let payload: CartSetPayload = decode(command)?;
    if payload.quantity > 0 {
        let book = sqlx::query("SELECT price_cents FROM bs_books WHERE id = $1 AND deleted = 0")
            .bind(&payload.book_id)
            .fetch_optional(&mut *connection)
            .await?;
        if book.is_none() {
            return Err(ApplyError::Rejected(format!("no book {}", payload.book_id)));
        }
    }
    write_cart_line(command, &payload, connection).await?;
    Ok(())
}

async fn cart_set_replicated(command: &Command, connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let payload: CartSetPayload = decode_replicated(command)?;
    write_cart_line(command, &payload, connection).await
}

/// Sets a line's quantity; the price is captured when the line is first added.
async fn write_cart_line(
    command: &Command,
    payload: &CartSetPayload,
    connection: &mut AnyConnection,
) -> Result<(), sqlx::Error> {
    if payload.quantity <= 0 {
        sqlx::query("DELETE FROM bs_cart_lines WHERE user_id = $1 AND book_id = $2")
            .bind(&payload.user_id)
            .bind(&payload.book_id)
            .execute(&mut *connection)
            .await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO bs_cart_lines (user_id, book_id, quantity, price_cents, hlc) \
         SELECT $1, $2, $3, price_cents, $4 FROM bs_books WHERE id = $2 \
         ON CONFLICT (user_id, book_id) DO UPDATE SET quantity = excluded.quantity, hlc = excluded.hlc",
    )
    .bind(&payload.user_id)
    .bind(&payload.book_id)
    .bind(payload.quantity)
    .bind(command.hlc.0 as i64)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// The cart's lines with each book's title and stock.
async fn cart_lines(
    connection: &mut AnyConnection,
    user_id: &str,
) -> Result<Vec<(String, String, i64, i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.book_id, b.title, l.quantity, l.price_cents, b.stock FROM bs_cart_lines l \
         JOIN bs_books b ON b.id = l.book_id WHERE l.user_id = $1 ORDER BY l.book_id",
    )
    .bind(user_id)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("book_id")?,
                row.try_get("title")?,
                row.try_get("quantity")?,
                row.try_get("price_cents")?,
                row.try_get("stock")?,
            ))
        })
        .collect()
}

async fn checkout(command: &Command, connection: &mut AnyConnection) -> Result<(), ApplyError> {
    let payload: CheckoutPayload = decode(command)?;
    let lines = cart_lines(connection, &payload.user_id).await?;
    if lines.is_empty() {
        return Err(ApplyError::Rejected("the cart is empty".into()));
    }
    for (_, title, quantity, _, stock) in &lines {
        if quantity > stock {
            return Err(ApplyError::Rejected(format!(
                "not enough stock for {title}: {stock} left, {quantity} ordered"
            )));
        }
    }
    place_order(command, &payload, &lines, connection).await?;
    Ok(())
}

/// The home region already checked stock: here the order is recorded as it was decided (stock
/// may go below zero in a region that sold the same copies while cut off; it shows as oversold).
async fn checkout_replicated(command: &Command, connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let payload: CheckoutPayload = decode_replicated(command)?;
    let lines = cart_lines(connection, &payload.user_id).await?;
    place_order(command, &payload, &lines, connection).await
}

async fn place_order(
    command: &Command,
    payload: &CheckoutPayload,
    lines: &[(String, String, i64, i64, i64)],
    connection: &mut AnyConnection,
) -> Result<(), sqlx::Error> {
    let order_id = command.id.to_hex();
    let total: i64 = lines.iter().map(|(_, _, quantity, price, _)| quantity * price).sum();
    sqlx::query("INSERT INTO bs_orders (id, user_id, total_cents, placed_hlc, region) VALUES ($1, $2, $3, $4, $5)")
        .bind(&order_id)
        .bind(&payload.user_id)
        .bind(total)
        .bind(command.hlc.0 as i64)
        .bind(&payload.home_region)
        .execute(&mut *connection)
        .await?;
    for (book_id, _, quantity, price, _) in lines {
        sqlx::query("INSERT INTO bs_order_lines (order_id, book_id, quantity, price_cents) VALUES ($1, $2, $3, $4)")
            .bind(&order_id)
            .bind(book_id)
            .bind(quantity)
            .bind(price)
            .execute(&mut *connection)
            .await?;
        sqlx::query("UPDATE bs_books SET stock = stock - $1 WHERE id = $2")
            .bind(quantity)
            .bind(book_id)
            .execute(&mut *connection)
            .await?;
        sqlx::query(
            "INSERT INTO bs_bestsellers (book_id, sold) VALUES ($1, $2) \
             ON CONFLICT (book_id) DO UPDATE SET sold = bs_bestsellers.sold + excluded.sold",
        )
        .bind(book_id)
        .bind(quantity)
        .execute(&mut *connection)
        .await?;
    }
    sqlx::query("DELETE FROM bs_cart_lines WHERE user_id = $1")
        .bind(&payload.user_id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Recounts best sellers from the orders (the seed's Redis sorted set could not be rebuilt).
pub async fn rebuild_bestsellers(connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM bs_bestsellers").execute(&mut *connection).await?;
    sqlx::query(
        "INSERT INTO bs_bestsellers (book_id, sold) \
         SELECT book_id, CAST(SUM(quantity) AS BIGINT) FROM bs_order_lines GROUP BY book_id",
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Recounts the books of every category from `bs_books` (admin rebuild, bulk loads).
pub async fn rebuild_categories(connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM bs_categories").execute(&mut *connection).await?;
    sqlx::query(
        "INSERT INTO bs_categories (category, books) \
         SELECT category, COUNT(*) FROM bs_books WHERE deleted = 0 GROUP BY category",
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Recounts one category's books (through the `(category, title)` index): after a book command,
/// for the category the book left and the one it is in.
async fn recount_category(connection: &mut AnyConnection, category: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM bs_categories WHERE category = $1").bind(category).execute(&mut *connection).await?;
    sqlx::query(
        "INSERT INTO bs_categories (category, books) \
         SELECT category, COUNT(*) FROM bs_books WHERE category = $1 AND deleted = 0 GROUP BY category",
    )
    .bind(category)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn category_of(connection: &mut AnyConnection, book_id: &str) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT category FROM bs_books WHERE id = $1")
        .bind(book_id)
        .fetch_optional(&mut *connection)
        .await?;
    row.map(|row| row.try_get("category")).transpose()
}

async fn book_put(command: &Command, connection: &mut AnyConnection) -> Result<(), ApplyError> {
    Ok(book_put_replicated(command, connection).await?)
}

/// Upserts by last-writer-wins on the HLC (one owner orders them; a write from an old owner
/// that arrives late does not undo a newer one).
async fn book_put_replicated(command: &Command, connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let BookPutPayload { book } = decode_replicated(command)?;
    let before = category_of(connection, &book.id).await?;
    sqlx::query(
        "INSERT INTO bs_books (id, title, author, category, price_cents, rating, cover, stock, description, search, hlc, deleted) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0) \
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, author = excluded.author, category = excluded.category, \
         price_cents = excluded.price_cents, rating = excluded.rating, cover = excluded.cover, stock = excluded.stock, \
         description = excluded.description, search = excluded.search, hlc = excluded.hlc, deleted = 0 \
         WHERE excluded.hlc > bs_books.hlc",
    )
    .bind(&book.id)
    .bind(&book.title)
    .bind(&book.author)
    .bind(&book.category)
    .bind(book.price_cents)
    .bind(book.rating)
    .bind(&book.cover)
    .bind(book.stock)
    .bind(&book.description)
    .bind(search_text(&book.title, &book.author, &book.category))
    .bind(command.hlc.0 as i64)
    .execute(&mut *connection)
    .await?;
    if let Some(before) = before.filter(|before| *before != book.category) {
        recount_category(connection, &before).await?;
    }
    recount_category(connection, &book.category).await?;
    Ok(())
}

async fn book_delete(command: &Command, connection: &mut AnyConnection) -> Result<(), ApplyError> {
    Ok(book_delete_replicated(command, connection).await?)
}

/// Marks the book deleted (orders keep referring to it) and takes it out of every cart.
async fn book_delete_replicated(command: &Command, connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let BookDeletePayload { book_id } = decode_replicated(command)?;
    sqlx::query("UPDATE bs_books SET deleted = 1, hlc = $1 WHERE id = $2 AND hlc < $1")
        .bind(command.hlc.0 as i64)
        .bind(&book_id)
        .execute(&mut *connection)
        .await?;
    if let Some(category) = category_of(connection, &book_id).await? {
        recount_category(connection, &category).await?;
    }
    sqlx::query("DELETE FROM bs_cart_lines WHERE book_id = $1").bind(&book_id).execute(&mut *connection).await?;
    Ok(())
}

async fn blog_post(command: &Command, connection: &mut AnyConnection) -> Result<(), ApplyError> {
    let payload: BlogPostPayload = decode(command)?;
    let taken = sqlx::query("SELECT 1 AS taken FROM bs_blog_posts WHERE slug = $1")
        .bind(&payload.slug)
        .fetch_optional(&mut *connection)
        .await?;
    if taken.is_some() {
        return Err(ApplyError::Rejected(format!("a post at /blog/{} already exists", payload.slug)));
    }
    Ok(blog_post_replicated(command, connection).await?)
}

async fn blog_post_replicated(command: &Command, connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let payload: BlogPostPayload = decode_replicated(command)?;
    sqlx::query(
        "INSERT INTO bs_blog_posts (slug, title, body_md, author, published_hlc, deleted) VALUES ($1, $2, $3, $4, $5, 0) \
         ON CONFLICT (slug) DO NOTHING",
    )
    .bind(&payload.slug)
    .bind(&payload.title)
    .bind(&payload.body_md)
    .bind(&payload.author)
    .bind(command.hlc.0 as i64)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
