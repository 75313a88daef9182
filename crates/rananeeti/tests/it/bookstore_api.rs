//! The bookstore's JSON API on a real `rananeeti up` (through the gateway): every endpoint's
//! happy path, validation naming each field, auth failures, other users' carts and orders never
//! leaked, admin routes refused to shoppers; and best sellers equal to a fresh recount of the
//! orders after a mixed workload in two regions (compared in each region's database).

use crate::regions::{start_up, Up};
use crate::support::eventually;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::BTreeMap;
use std::time::Duration;

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Api {
        Api { base: base.to_string(), client: reqwest::Client::builder().no_proxy().build().unwrap() }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    /// Signs up and in; returns the token.
    async fn shopper(&self, email: &str) -> String {
        let (status, body) =
            self.post("/api/auth/signup", None, json!({ "email": email, "password": "correct horse" })).await;
        assert!(status == 201 || status == 202, "signup {email}: {status} {body}");
        let (status, body) = eventually("the account to be usable", SETTLE_TIMEOUT, || async {
            let answer =
                self.post("/api/auth/signin", None, json!({ "email": email, "password": "correct horse" })).await;
            (answer.0 == 200).then_some(answer)
        })
        .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    }
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn bookstore_api_end_to_end_sqlite() {
    bookstore_api_end_to_end("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bookstore_api_end_to_end_postgres() {
    bookstore_api_end_to_end("postgres").await;
}

async fn bookstore_api_end_to_end(store: &str) {
    let up = start_up(1, 1, store).await;
    let api = Api::new(up.topology.gateway_url.as_deref().unwrap());
    let admin = up.token.clone();

    // Catalog: search, category, paging, one book, 404, bad limit.
    let (status, page) = api.get("/api/books?q=sherlock", None).await;
    assert_eq!(status, 200);
    let titles: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|book| book["title"].as_str().unwrap()).collect();
    assert!(titles.len() >= 3 && titles.iter().all(|title| title.contains("Sherlock")), "{titles:?}");
    let (_, by_author) = api.get("/api/books?q=jane%20austen", None).await;
    assert_eq!(by_author["items"].as_array().unwrap().len(), 6, "six Austen novels");
    let (_, horror) = api.get("/api/books?category=Horror&limit=5", None).await;
    assert_eq!(horror["items"].as_array().unwrap().len(), 5);
    assert!(horror["items"].as_array().unwrap().iter().all(|book| book["category"] == "Horror"));
    let next = horror["next"].as_str().unwrap();
    let (_, second) = api.get(&format!("/api/books?category=Horror&limit=5&after={next}"), None).await;
    assert!(second["items"][0]["id"].as_str().unwrap() > next, "the next page starts after the cursor");
    let (_, all) = api.get("/api/books?limit=100", None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 100);
    assert_eq!(api.get("/api/books?limit=0", None).await.0, 422);
    assert_eq!(field(&api.get("/api/books?limit=500", None).await.1), "limit");
    assert_eq!(field(&api.get(&format!("/api/books?q={}", "x".repeat(101)), None).await.1), "q");
    let (status, _) = api.get("/api/books?q=%25", None).await;
    assert_eq!(status, 200, "a % in a search is literal");
    let (status, emma) = api.get("/api/books/emma", None).await;
    assert_eq!((status, emma["author"].as_str()), (200, Some("Jane Austen")));
    assert_eq!(api.get("/api/books/no-such-book", None).await.0, 404);
    let cover = api.client.get(format!("{}/bookstore/covers/emma.svg", api.base)).send().await.unwrap();
    assert_eq!(cover.headers()["content-type"], "image/svg+xml");

    // Accounts: validation per field, duplicate email, wrong password, bad tokens.
    let signup = |body: Value| api.post("/api/auth/signup", None, body);
    assert_eq!(field(&signup(json!({ "email": "nope", "password": "correct horse" })).await.1), "email");
    assert_eq!(field(&signup(json!({ "email": "a@example.com", "password": "short" })).await.1), "password");
    assert_eq!(field(&signup(json!({ "email": "a@example.com" })).await.1), "password");
    assert_eq!(
        field(&signup(json!({ "email": "a@example.com", "password": "correct horse", "admin": true })).await.1),
        "admin"
    );
    let ann = api.shopper("ann@example.com").await;
    let (status, taken) = signup(json!({ "email": "ANN@example.com", "password": "another long passphrase" })).await;
    assert_eq!((status, field(&taken)), (409, "email"), "{taken}");
    let (status, _) =
        api.post("/api/auth/signin", None, json!({ "email": "ann@example.com", "password": "wrong horse" })).await;
    assert_eq!(status, 401);
    let (status, _) =
        api.post("/api/auth/signin", None, json!({ "email": "nobody@example.com", "password": "correct horse" })).await;
    assert_eq!(status, 401);
    assert_eq!(api.get("/api/cart", None).await.0, 401);
    assert_eq!(api.get("/api/cart", Some("v1.forged.r1.99999999999999.00")).await.0, 401);
    let tampered = ann.replacen("bs2.", "bs2.x", 1);
    assert_eq!(api.get("/api/cart", Some(&tampered)).await.0, 401);
    // Signing out ends the session: the token is refused from then on; a new sign-in works.
    assert_eq!(api.post("/api/auth/signout", Some(&ann), json!({})).await.0, 200);
    assert_eq!(api.get("/api/cart", Some(&ann)).await.0, 401, "a signed-out token");
    let (status, again) =
        api.post("/api/auth/signin", None, json!({ "email": "ann@example.com", "password": "correct horse" })).await;
    assert_eq!(status, 200, "{again}");
    let ann = again["token"].as_str().unwrap().to_string();

    // Cart: add, add again, set, remove, validation per field.
    let cart = |method: reqwest::Method, body: Value| api.call(method, "/api/cart", Some(&ann), Some(body));
    assert_eq!(cart(reqwest::Method::POST, json!({ "book_id": "emma", "quantity": 2 })).await.0, 201);
    assert_eq!(cart(reqwest::Method::POST, json!({ "book_id": "emma" })).await.0, 201);
    assert_eq!(cart(reqwest::Method::POST, json!({ "book_id": "dracula", "quantity": 1 })).await.0, 201);
    assert_eq!(cart(reqwest::Method::POST, json!({ "book_id": "walden", "quantity": 1 })).await.0, 201);
    assert_eq!(cart(reqwest::Method::PUT, json!({ "book_id": "dracula", "quantity": 4 })).await.0, 201);
    assert_eq!(cart(reqwest::Method::DELETE, json!({ "book_id": "walden" })).await.0, 201);
    assert_eq!(
        field(&cart(reqwest::Method::POST, json!({ "book_id": "no-such-book", "quantity": 1 })).await.1),
        "book_id"
    );
    assert_eq!(field(&cart(reqwest::Method::POST, json!({ "book_id": "emma", "quantity": 0 })).await.1), "quantity");
    assert_eq!(field(&cart(reqwest::Method::PUT, json!({ "book_id": "emma", "quantity": 100 })).await.1), "quantity");
    assert_eq!(field(&cart(reqwest::Method::PUT, json!({ "book_id": "emma" })).await.1), "quantity");
    assert_eq!(
        field(&cart(reqwest::Method::POST, json!({ "book_id": "emma", "quantity": "two" })).await.1),
        "quantity"
    );
    assert_eq!(field(&cart(reqwest::Method::POST, json!({ "quantity": 1 })).await.1), "book_id");
    let (_, ann_cart) = api.get("/api/cart", Some(&ann)).await;
    let lines: BTreeMap<&str, i64> = ann_cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| (line["book_id"].as_str().unwrap(), line["quantity"].as_i64().unwrap()))
        .collect();
    assert_eq!(lines, BTreeMap::from([("dracula", 4), ("emma", 3)]), "{ann_cart}");
    assert_eq!(ann_cart["total_cents"], emma["price_cents"].as_i64().unwrap() * 3 + 4 * dracula_price(&api).await);

    // Another shopper sees an empty cart of their own and none of ann's orders.
    let bob = api.shopper("bob@example.com").await;
    let (_, bob_cart) = api.get("/api/cart", Some(&bob)).await;
    assert_eq!(bob_cart["items"].as_array().unwrap().len(), 0);
    assert_eq!(field(&api.post("/api/orders", Some(&bob), json!({})).await.1), "cart", "an empty cart is not an order");

    // Checkout: one command; the same cart twice is one order; then the cart is empty.
    let (status, placed) = api.post("/api/orders", Some(&ann), json!({})).await;
    assert_eq!(status, 201, "{placed}");
    let order_id = placed["id"].as_str().unwrap().to_string();
    let (_, order) = api.get(&format!("/api/orders/{order_id}"), Some(&ann)).await;
    assert_eq!(order["status"], "committed");
    assert_eq!(order["total_cents"], ann_cart["total_cents"]);
    assert_eq!(order["lines"].as_array().unwrap().len(), 2);
    assert_eq!(api.get("/api/cart", Some(&ann)).await.1["items"].as_array().unwrap().len(), 0, "the cart was emptied");
    // The same book in the same quantity as before the checkout is a new line, not a duplicate.
    assert_eq!(cart(reqwest::Method::POST, json!({ "book_id": "emma", "quantity": 2 })).await.0, 201);
    assert_eq!(api.get("/api/cart", Some(&ann)).await.1["items"][0]["quantity"], 2);
    assert_eq!(cart(reqwest::Method::DELETE, json!({ "book_id": "emma" })).await.0, 201);
    let (_, orders) = api.get("/api/orders", Some(&ann)).await;
    assert_eq!(orders["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.get(&format!("/api/orders/{order_id}"), Some(&bob)).await.0,
        404,
        "another user's order is not found"
    );
    assert_eq!(api.get(&format!("/api/orders/{order_id}"), None).await.0, 401);
    assert_eq!(api.get("/api/orders", Some(&bob)).await.1["items"].as_array().unwrap().len(), 0);
    assert_eq!(api.get("/api/orders/not-an-id", Some(&ann)).await.0, 404);

    // Stock is checked when the checkout is applied.
    let (_, little) = api.get("/api/books/the-odyssey", None).await;
    let stock = little["stock"].as_i64().unwrap();
    let admin_put =
        json!({ "title": "The Odyssey", "author": "Homer", "category": "Poetry", "price_cents": 999, "stock": 1 });
    let (status, _) =
        api.call(reqwest::Method::PUT, "/api/admin/books/the-odyssey", Some(&admin), Some(admin_put)).await;
    assert_eq!(status, 201);
    assert!(stock > 1);
    assert_eq!(cart_add(&api, &bob, "the-odyssey", 2).await, 201);
    let (status, refused) = api.post("/api/orders", Some(&bob), json!({})).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("not enough stock for The Odyssey"), "{refused}");

    // Best sellers and recommendations.
    let (_, best) = api.get("/api/bestsellers", None).await;
    let best_ids: Vec<&str> =
        best["items"].as_array().unwrap().iter().map(|item| item["book"]["id"].as_str().unwrap()).collect();
    assert_eq!(best_ids, vec!["dracula", "emma"], "{best}");
    let (_, also) = api.get("/api/recommendations/emma", None).await;
    assert_eq!(also["items"][0]["book"]["id"], "dracula");
    assert_eq!(api.get("/api/recommendations/no-such-book", None).await.0, 404);

    // Admin: refused to shoppers (403) and to nobody (401); fields named; create, change, delete.
    let new_book = json!({ "title": "The Rananeeti Handbook", "author": "Operators", "category": "Science", "price_cents": 1250, "stock": 5 });
    assert_eq!(api.post("/api/admin/books", Some(&ann), new_book.clone()).await.0, 403);
    assert_eq!(api.post("/api/admin/books", None, new_book.clone()).await.0, 401);
    assert_eq!(api.post("/api/blog", Some(&ann), json!({ "title": "x", "body_markdown": "y" })).await.0, 403);
    for (name, bad) in [
        ("title", json!("")),
        ("author", json!("")),
        ("category", json!("")),
        ("price_cents", json!(-1)),
        ("stock", json!(-5)),
        ("rating", json!(51)),
    ] {
        let mut body = new_book.clone();
        body[name] = bad;
        assert_eq!(field(&api.post("/api/admin/books", Some(&admin), body).await.1), name);
    }
    let science_before = category_count(&api, "Science").await;
    assert!(science_before > 0, "the seed has science books");
    let mut handbook = new_book.clone();
    handbook["category"] = json!("Operations");
    let (status, created) = api.post("/api/admin/books", Some(&admin), handbook.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(api.get("/api/books/the-rananeeti-handbook", None).await.0, 200);
    assert_eq!(category_count(&api, "Operations").await, 1, "a new category is counted");
    assert_eq!(field(&api.post("/api/admin/books", Some(&admin), new_book.clone()).await.1), "title", "it exists");
    // Moving the book recounts both categories; an emptied category is no longer listed.
    let (status, _) = api
        .call(reqwest::Method::PUT, "/api/admin/books/the-rananeeti-handbook", Some(&admin), Some(new_book.clone()))
        .await;
    assert_eq!(status, 201);
    assert_eq!(category_count(&api, "Operations").await, 0);
    assert_eq!(category_count(&api, "Science").await, science_before + 1);
    let (status, _) =
        api.call(reqwest::Method::DELETE, "/api/admin/books/the-rananeeti-handbook", Some(&admin), None).await;
    assert_eq!(status, 201);
    assert_eq!(api.get("/api/books/the-rananeeti-handbook", None).await.0, 404);
    assert_eq!(category_count(&api, "Science").await, science_before, "a deleted book is no longer counted");
    // The kept counts equal a recount from the catalog.
    let (_, kept) = api.get("/api/categories", None).await;
    assert_eq!(api.post("/api/admin/bestsellers/rebuild", Some(&admin), json!({})).await.0, 200);
    assert_eq!(api.get("/api/categories", None).await.1, kept);
    assert_eq!(api.call(reqwest::Method::DELETE, "/api/admin/books/no-such-book", Some(&admin), None).await.0, 404);

    // Blog: Markdown rendered safely.
    let post = json!({ "title": "Summer reading", "body_markdown": "# Hello\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) and **bold** <img src=x onerror=alert(1)>" });
    let (status, published) = api.post("/api/blog", Some(&admin), post).await;
    assert_eq!(status, 201, "{published}");
    assert_eq!(
        field(&api.post("/api/blog", Some(&admin), json!({ "title": "", "body_markdown": "y" })).await.1),
        "title"
    );
    let (_, shown) = api.get("/api/blog/summer-reading", None).await;
    let html = shown["body_html"].as_str().unwrap();
    assert!(html.contains("<strong>bold</strong>") && html.contains("<h1>"), "{html}");
    assert!(!html.contains("<script") && !html.contains("href=\"javascript") && !html.contains("onerror"), "{html}");
    assert_eq!(api.get("/api/blog", None).await.1["items"][0]["slug"], "summer-reading");
    assert_eq!(api.get("/api/blog/nothing-here", None).await.0, 404);

    // The OpenAPI document lists every path.
    let (status, openapi) = api.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in ["/api/books", "/api/cart", "/api/orders", "/api/auth/signin", "/api/admin/books/{id}", "/api/blog"] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }
}

/// Books in a category as `/api/categories` counts them; 0 when it is not listed.
async fn category_count(api: &Api, category: &str) -> i64 {
    let (status, body) = api.get("/api/categories", None).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    items.iter().find(|item| item["category"] == category).map_or(0, |item| item["books"].as_i64().expect("books"))
}

async fn dracula_price(api: &Api) -> i64 {
    api.get("/api/books/dracula", None).await.1["price_cents"].as_i64().unwrap()
}

async fn cart_add(api: &Api, token: &str, book: &str, quantity: i64) -> u16 {
    api.post("/api/cart", Some(token), json!({ "book_id": book, "quantity": quantity })).await.0
}

/// Sold copies per book, as stored and as recounted from the orders, in one region's database.
async fn bestsellers_and_recount(up: &Up, region: usize) -> (BTreeMap<String, i64>, BTreeMap<String, i64>, usize) {
    let mut connection =
        sqlx::AnyConnection::connect(&up.topology.regions[region].database.connect_url().unwrap()).await.unwrap();
    // One read transaction (a SQLite snapshot): replication may commit between two reads.
    let mut connection = connection.begin().await.unwrap();
    let read = |rows: Vec<sqlx::any::AnyRow>| {
        rows.iter().map(|row| (row.get::<String, _>("book_id"), row.get::<i64, _>("sold"))).collect::<BTreeMap<_, _>>()
    };
    let stored = read(
        sqlx::query("SELECT book_id, sold FROM bs_bestsellers WHERE sold > 0")
            .fetch_all(&mut *connection)
            .await
            .unwrap(),
    );
    let recount = read(
        sqlx::query("SELECT book_id, CAST(SUM(quantity) AS BIGINT) AS sold FROM bs_order_lines GROUP BY book_id")
            .fetch_all(&mut *connection)
            .await
            .unwrap(),
    );
    let orders: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM bs_orders").fetch_one(&mut *connection).await.unwrap().get("n");
    connection.commit().await.unwrap();
    (stored, recount, orders as usize)
}

/// Shoppers homed in both regions buy a mix of books through their own region's node; once
/// replication settles, each region's best sellers equal a recount of its orders, and both
/// regions hold every order.
#[tokio::test(flavor = "multi_thread")]
async fn bestsellers_equal_a_recount_after_a_mixed_workload_in_two_regions() {
    let up = start_up(2, 1, "sqlite").await;
    let books = ["emma", "dracula", "walden", "the-time-machine", "moby-dick", "kim", "hamlet", "candide"];
    let mut placed = 0;
    let mut shoppers = Vec::new();
    for region in 0..2 {
        let api = Api::new(&up.region_urls(region)[0]);
        for shopper in 0..3 {
            let token = api.shopper(&format!("shopper{shopper}@r{}.example.com", region + 1)).await;
            shoppers.push((region, token));
        }
    }
    for (round, (region, token)) in shoppers.iter().enumerate() {
        let api = Api::new(&up.region_urls(*region)[0]);
        for order in 0..3 {
            for (offset, book) in
                books.iter().enumerate().filter(|(offset, _)| (offset + order + round).is_multiple_of(3))
            {
                assert_eq!(cart_add(&api, token, book, 1 + (offset % 2) as i64).await, 201);
            }
            let (status, body) = api.post("/api/orders", Some(token), json!({})).await;
            assert_eq!(status, 201, "{body}");
            placed += 1;
        }
    }
    for region in 0..2 {
        let (stored, recount, orders) = eventually("every order in both regions", SETTLE_TIMEOUT, || async {
            let counted = bestsellers_and_recount(&up, region).await;
            (counted.2 == placed).then_some(counted)
        })
        .await;
        assert_eq!(orders, placed);
        assert_eq!(stored, recount, "region {}: best sellers equal a recount from the orders", region + 1);
        assert!(stored.values().sum::<i64>() > placed as i64);
    }
    // The API's top list is the same in both regions.
    let top = |region: usize| {
        let api = Api::new(&up.region_urls(region)[0]);
        async move { api.get("/api/bestsellers", None).await.1["items"].clone() }
    };
    assert_eq!(top(0).await, top(1).await);

    // r1's database down: r1 still answers catalog reads, from r2's database, marked stale.
    let r1 = Api::new(&up.region_urls(0)[0]);
    let down = r1
        .client
        .post(format!("{}/admin/faults", r1.base))
        .bearer_auth(&up.token)
        .json(&json!({ "db": "down" }))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    let (status, stale) = r1.get("/api/bestsellers", None).await;
    assert_eq!(status, 200, "{stale}");
    assert_eq!(stale["stale"]["from_region"], "r2", "{stale}");
    assert_eq!(stale["items"], top(1).await);
    let book = r1.client.get(format!("{}/api/books/emma", r1.base)).send().await.unwrap();
    assert_eq!(book.headers()["x-rananeeti-stale"], "r2");
    let (status, search) = r1.get("/api/books?q=austen", None).await;
    assert_eq!((status, search["items"].as_array().unwrap().len()), (200, 6));
}
