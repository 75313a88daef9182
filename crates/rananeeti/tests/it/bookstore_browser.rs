//! The bookstore's pages in a real browser (headless Chromium through ChromeDriver) on a real
//! `rananeeti up` (one region, two nodes, through the gateway): sign up, search, a book's page,
//! a cart of two books, a quantity changed, a checkout sent twice that orders once; then the
//! database down on both nodes, a book added and ordered (*pending*), and the same order page
//! turning *confirmed* by itself once the database is back. Every kind of page is audited for
//! WCAG AA's checkable rules (labels, alt text, names, Tab reachability, contrast).

use crate::browser::{
    audit, fits_width, look, mark_page, open_browser, screenshot, tab_walk, wait_for, ChromeDriver,
    CONFIRM_ON_PAGE_TIMEOUT, NO_NAVIGATION_MARKER, PAGE_LOAD_TIMEOUT,
};
use crate::regions::{start_up, Up};
use fantoccini::{Client, Locator};
use futures::FutureExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use tempfile::TempDir;

const PASSWORD: &str = "a long enough password";

/// Integer cents as the pages must show them.
fn dollars(cents: i64) -> String {
    let whole: Vec<char> = (cents / 100).to_string().chars().collect();
    let groups: Vec<String> = whole.rchunks(3).rev().map(|group| group.iter().collect()).collect();
    format!("${}.{:02}", groups.join(","), cents % 100)
}

/// Runs `condition` (a script body answering null until the page is as wanted) once a page has
/// loaded; with `new_page`, only on a page other than the one marked by [`mark_page`].
async fn wait_page(client: &Client, what: &str, new_page: bool, condition: &str) -> Value {
    let script = format!(
        r##"if (document.readyState !== "complete") return null;
           if (arguments[1] && window[arguments[0]] === true) return null;
           return (function () {{ {condition} }})();"##
    );
    wait_for(client, what, PAGE_LOAD_TIMEOUT, &script, vec![json!(NO_NAVIGATION_MARKER), json!(new_page)]).await
}

/// What every bookstore page shows: where it is, the flash, the cart badge, the notices.
const PAGE_STATE: &str = r##"
    const flash = document.getElementById("flash");
    const badge = document.getElementById("cart-badge");
    return {
        path: location.pathname,
        flash: flash && flash.getAttribute("data-flash"),
        badge: badge ? Number(badge.getAttribute("data-count")) : null,
        signed_in: document.getElementById("signout") !== null,
        catalog_notice: document.getElementById("catalog-notice") !== null,
        cart_notice: document.getElementById("cart-notice") !== null,
        text: document.body.innerText,
    };
"##;

async fn page_state(client: &Client) -> Value {
    wait_page(client, "a bookstore page", false, PAGE_STATE).await
}

async fn goto(client: &Client, url: &str, what: &str, ready_selector: &str) -> Value {
    client.goto(url).await.unwrap();
    let condition = format!("if (!document.querySelector({ready_selector:?})) return null; {PAGE_STATE}");
    wait_page(client, what, false, &condition).await
}

/// Clicks `selector` (a submit button or a link) and waits for the next page to show
/// `ready_selector`; answers that page's state.
async fn click_to_next_page(client: &Client, selector: &str, what: &str, ready_selector: &str) -> Value {
    mark_page(client).await;
    client.find(Locator::Css(selector)).await.unwrap().click().await.unwrap();
    let condition = format!("if (!document.querySelector({ready_selector:?})) return null; {PAGE_STATE}");
    wait_page(client, what, true, &condition).await
}

async fn type_into(client: &Client, selector: &str, text: &str) {
    let input = client.find(Locator::Css(selector)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

/// A book's page as the test reads it.
#[derive(Debug, Clone)]
struct BookOnPage {
    id: String,
    title: String,
    price_cents: i64,
    price_text: String,
    cover_loaded: bool,
}

async fn read_book_page(client: &Client) -> BookOnPage {
    let book = wait_page(
        client,
        "a book's page",
        false,
        r##"const book = document.getElementById("book");
           if (!book) return null;
           const price = document.getElementById("price");
           const cover = book.querySelector(".book__cover img");
           if (!cover.complete) return null;
           return {
               id: book.getAttribute("data-book-id"),
               title: document.getElementById("page-title").textContent.trim(),
               price_cents: Number(price.getAttribute("data-price-cents")),
               price_text: price.textContent.trim(),
               cover_loaded: cover.naturalWidth > 0,
           };"##,
    )
    .await;
    BookOnPage {
        id: book["id"].as_str().unwrap().to_string(),
        title: book["title"].as_str().unwrap().to_string(),
        price_cents: book["price_cents"].as_i64().unwrap(),
        price_text: book["price_text"].as_str().unwrap().to_string(),
        cover_loaded: book["cover_loaded"] == true,
    }
}

/// Adds `quantity` copies from the book page that is showing; answers the page after.
async fn add_to_cart(client: &Client, quantity: u32) -> Value {
    type_into(client, "#quantity", &quantity.to_string()).await;
    click_to_next_page(client, "#add-to-cart button[type=submit]", "the book page after adding to the cart", "#book")
        .await
}

/// The cart page's lines as book id → (quantity, price, subtotal), and the total.
async fn read_cart(client: &Client) -> (BTreeMap<String, (i64, i64, i64)>, i64, String, Vec<String>) {
    let cart = wait_page(
        client,
        "the cart",
        false,
        r##"const table = document.getElementById("cart");
           if (!table) return null;
           return {
               lines: Array.from(table.querySelectorAll("tbody tr")).map(row => [
                   row.getAttribute("data-book-id"),
                   Number(row.getAttribute("data-quantity")),
                   Number(row.getAttribute("data-price-cents")),
                   Number(row.getAttribute("data-subtotal-cents")),
                   row.getAttribute("data-waiting") === "true",
               ]),
               total_cents: Number(document.getElementById("cart-total").getAttribute("data-total-cents")),
               total_text: document.getElementById("cart-total").textContent.trim(),
           };"##,
    )
    .await;
    let mut lines = BTreeMap::new();
    let mut waiting = Vec::new();
    for line in cart["lines"].as_array().unwrap() {
        let id = line[0].as_str().unwrap().to_string();
        if line[4] == true {
            waiting.push(id.clone());
        }
        lines.insert(id, (line[1].as_i64().unwrap(), line[2].as_i64().unwrap(), line[3].as_i64().unwrap()));
    }
    (lines, cart["total_cents"].as_i64().unwrap(), cart["total_text"].as_str().unwrap().to_string(), waiting)
}

/// An order's page as the test reads it.
#[derive(Debug)]
struct OrderOnPage {
    path: String,
    id: String,
    status: String,
    flash: Option<String>,
    polls: bool,
    pending_note: bool,
    lines: BTreeMap<String, i64>,
    total_cents: Option<i64>,
    total_text: Option<String>,
    not_navigated: bool,
}

const ORDER_PAGE: &str = r##"
    const order = document.getElementById("order");
    if (document.readyState !== "complete" || !order) return null;
    const flash = document.getElementById("flash");
    const total = document.getElementById("order-total");
    return {
        path: location.pathname,
        id: order.getAttribute("data-order-id"),
        status: order.getAttribute("data-status"),
        badge: order.querySelector(".badge").getAttribute("data-status"),
        flash: flash && flash.getAttribute("data-flash"),
        polls: order.hasAttribute("data-poll-url"),
        pending_note: document.getElementById("pending-note") !== null,
        lines: Array.from(order.querySelectorAll("#order-lines tbody tr")).map(row =>
            [row.getAttribute("data-book-id"), Number(row.getAttribute("data-quantity"))]),
        total_cents: total && Number(total.getAttribute("data-total-cents")),
        total_text: total && total.textContent.trim(),
        not_navigated: window[arguments[0]] === true,
    };
"##;

impl OrderOnPage {
    fn from_json(value: &Value) -> OrderOnPage {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        assert_eq!(value["status"], value["badge"], "the order's badge says its status: {value}");
        OrderOnPage {
            path: text("path").unwrap_or_default(),
            id: text("id").expect("the order page names its order"),
            status: text("status").expect("the order page has a status"),
            flash: text("flash"),
            polls: value["polls"] == true,
            pending_note: value["pending_note"] == true,
            lines: value["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|line| (line[0].as_str().unwrap().to_string(), line[1].as_i64().unwrap()))
                .collect(),
            total_cents: value["total_cents"].as_i64(),
            total_text: text("total_text"),
            not_navigated: value["not_navigated"] == true,
        }
    }
}

async fn read_order_page(client: &Client, what: &str, new_page: bool) -> OrderOnPage {
    let script = format!(
        "if (arguments[1] && window[arguments[0]] === true) return null; return (function () {{ {ORDER_PAGE} }}).apply(null, arguments);"
    );
    let value =
        wait_for(client, what, PAGE_LOAD_TIMEOUT, &script, vec![json!(NO_NAVIGATION_MARKER), json!(new_page)]).await;
    OrderOnPage::from_json(&value)
}

/// The orders page's rows, newest first, as (order id, status).
async fn listed_orders(client: &Client, gateway: &str) -> Vec<(String, String)> {
    client.goto(&format!("{gateway}/bookstore/orders")).await.unwrap();
    let rows = wait_page(
        client,
        "the list of orders",
        false,
        r##"const list = document.getElementById("orders");
           if (!list) return null;
           return Array.from(list.querySelectorAll("[data-order-id]")).map(row =>
               [row.getAttribute("data-order-id"), row.getAttribute("data-status")]);"##,
    )
    .await;
    serde_json::from_value(rows).unwrap()
}

async fn set_db_fault(up: &Up, state: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for url in up.region_urls(0) {
        let response = client
            .post(format!("{url}/admin/faults"))
            .bearer_auth(&up.token)
            .json(&json!({ "db": state }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "setting db {state} on {url}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bookstore_in_a_browser_takes_orders_through_a_database_outage() {
    let up = start_up(1, 2, "sqlite").await;
    let gateway = up.topology.gateway_url.clone().expect("up runs a gateway");
    let browser_dir = TempDir::new().unwrap();
    let driver = ChromeDriver::start(browser_dir.path()).await;
    let profile_dir = browser_dir.path().join("profile");
    std::fs::create_dir_all(&profile_dir).unwrap();
    let client = open_browser(&driver, &profile_dir).await;

    let outcome = AssertUnwindSafe(shopping_scenario(&client, &up, &gateway)).catch_unwind().await;
    if outcome.is_err() {
        eprintln!("{}", driver.log_tail());
    }
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn shopping_scenario(client: &Client, up: &Up, gateway: &str) {
    // 1. The shop front, signed out: covers, prices, categories, no cart badge.
    let home = goto(client, &format!("{gateway}/bookstore"), "the shop front", "#top-rated .book-card").await;
    audit(client, "the shop front").await;
    assert_eq!(home["badge"], Value::Null, "no cart badge before signing in: {home}");
    assert!(!home["signed_in"].as_bool().unwrap());
    let shelf = client
        .execute(
            r##"const cards = Array.from(document.querySelectorAll("#top-rated .book-card"));
               const first = cards[0].querySelector("img");
               return {
                   cards: cards.length,
                   prices: cards.map(card => card.querySelector(".book-card__price").textContent.trim()),
                   categories: document.querySelectorAll("#categories .chip").length,
                   skip_link: document.querySelector("a.skip-link").getAttribute("href"),
                   first_cover: first.complete && first.naturalWidth > 0,
               };"##,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shelf["cards"], 12, "{shelf}");
    for price in shelf["prices"].as_array().unwrap() {
        let price = price.as_str().unwrap();
        assert!(price.starts_with('$') && price.split_once('.').is_some_and(|(_, cents)| cents.len() == 2), "{price}");
    }
    assert!(shelf["categories"].as_u64().unwrap() >= 5, "{shelf}");
    assert_eq!(shelf["skip_link"], "#main");

    // 2. Sign up: signed in at once, with the session and home-region cookies.
    client.goto(&format!("{gateway}/bookstore/signup")).await.unwrap();
    wait_page(client, "the sign-up form", false, r##"return document.getElementById("signup-form") ? true : null;"##)
        .await;
    audit(client, "the sign-up form").await;
    let email = format!("reader-{}@example.com", std::process::id());
    type_into(client, "#email", &email).await;
    type_into(client, "#password", PASSWORD).await;
    let welcome =
        click_to_next_page(client, "#signup-form button[type=submit]", "the shop after signing up", "#main").await;
    assert_eq!(welcome["flash"], "welcome", "{welcome}");
    assert_eq!((welcome["path"].as_str(), welcome["signed_in"].as_bool()), (Some("/bookstore"), Some(true)));
    assert_eq!(welcome["badge"], 0, "an empty cart's badge: {welcome}");
    let session = client.get_named_cookie("bs_session").await.expect("a session cookie");
    assert_eq!(session.http_only(), Some(true), "the session cookie is HttpOnly");
    assert_eq!(format!("{:?}", session.same_site()), "Some(Lax)");
    assert_eq!(session.path(), Some("/"));
    let home_region = client.get_named_cookie("rananeeti_home").await.expect("a home-region cookie");
    assert_eq!(home_region.value(), "r1");

    // 3. Search from the header.
    type_into(client, "#site-search-q", "sherlock").await;
    let results = click_to_next_page(client, ".site-search button", "the search results", "#results").await;
    audit(client, "the search results").await;
    assert_eq!(results["path"], "/bookstore/books");
    let titles = client
        .execute(
            r##"return Array.from(document.querySelectorAll("#results .book-card__title")).map(t => t.textContent.trim());"##,
            vec![],
        )
        .await
        .unwrap();
    let titles: Vec<String> = serde_json::from_value(titles).unwrap();
    assert!(titles.len() >= 3 && titles.iter().all(|title| title.contains("Sherlock")), "{titles:?}");

    // 4. The first result's page: cover, price, stock; one copy into the cart.
    click_to_next_page(client, "#results .book-card__title a", "the first result's page", "#book").await;
    let first = read_book_page(client).await;
    audit(client, "a book's page").await;
    tab_walk(client, "a book's page", "#add-to-cart button[type=submit]", 60).await;
    assert!(first.title.contains("Sherlock"), "{first:?}");
    assert!(first.cover_loaded, "the cover is shown: {first:?}");
    assert_eq!(first.price_text, dollars(first.price_cents), "{first:?}");
    let added = add_to_cart(client, 1).await;
    assert_eq!((added["flash"].as_str(), added["badge"].as_i64()), (Some("added"), Some(1)), "{added}");

    // 5. A second book, two copies.
    type_into(client, "#site-search-q", "austen").await;
    click_to_next_page(client, ".site-search button", "the search for Austen", "#results").await;
    click_to_next_page(client, "#results [data-book-id=\"emma\"] .book-card__title a", "Emma's page", "#book").await;
    let second = read_book_page(client).await;
    assert_eq!((second.id.as_str(), second.title.as_str()), ("emma", "Emma"));
    let added = add_to_cart(client, 2).await;
    assert_eq!((added["flash"].as_str(), added["badge"].as_i64()), (Some("added"), Some(3)), "{added}");

    // 6. The cart: both lines at the prices shown; one quantity changed.
    click_to_next_page(client, "#cart-link", "the cart", "#cart").await;
    let (lines, total, _, waiting) = read_cart(client).await;
    let expected = BTreeMap::from([
        (first.id.clone(), (1, first.price_cents, first.price_cents)),
        (second.id.clone(), (2, second.price_cents, 2 * second.price_cents)),
    ]);
    assert_eq!(lines, expected, "the cart's lines");
    assert_eq!(total, first.price_cents + 2 * second.price_cents);
    assert!(waiting.is_empty(), "nothing waits while the database is up: {waiting:?}");
    type_into(client, &format!("#quantity-{}", first.id), "3").await;
    let updated = click_to_next_page(
        client,
        &format!("tr[data-book-id=\"{}\"] .quantity-form button", first.id),
        "the cart after changing a quantity",
        "#cart",
    )
    .await;
    assert_eq!((updated["flash"].as_str(), updated["badge"].as_i64()), (Some("cart-updated"), Some(5)), "{updated}");
    let (lines, total, total_text, _) = read_cart(client).await;
    let expected_total = 3 * first.price_cents + 2 * second.price_cents;
    assert_eq!(lines[&first.id], (3, first.price_cents, 3 * first.price_cents));
    assert_eq!((total, total_text), (expected_total, dollars(expected_total)));
    screenshot(client, "bookstore-cart.png").await;
    audit(client, "the cart").await;
    let stops = tab_walk(client, "the cart", "#place-order", 60).await;
    assert!(stops[0].contains("Skip to content"), "the first Tab stop is the skip link: {stops:?}");

    // 7. "Place order" sent twice at once (as a double click without the page's script would),
    //    then pressed again: one order, and every answer leads to it.
    let answers = client
        .execute(
            r##"const form = document.getElementById("checkout-form");
               const send = () => fetch(form.action, {
                   method: "POST",
                   body: new URLSearchParams(new FormData(form)),
                   credentials: "same-origin",
               }).then(response => [response.status, new URL(response.url).pathname]);
               return Promise.all([send(), send()]);"##,
            vec![],
        )
        .await
        .unwrap();
    let answers: Vec<(u16, String)> = serde_json::from_value(answers).unwrap();
    assert!(
        answers.iter().all(|(status, path)| *status == 200 && path.starts_with("/bookstore/orders/")),
        "{answers:?}"
    );
    assert_eq!(answers[0].1, answers[1].1, "both checkouts lead to the same order: {answers:?}");
    mark_page(client).await;
    client.find(Locator::Css("#place-order")).await.unwrap().click().await.unwrap();
    let order = read_order_page(client, "the order page after a third press", true).await;
    assert_eq!(order.path, answers[0].1, "{order:?}");
    // The same form (its idempotency key) sent a third time gets the first answer again: the
    // order's page, without the first answer's one-time message.
    assert_eq!(order.flash, None, "{order:?}");
    assert_eq!(order.status, "committed", "{order:?}");
    assert_eq!(order.lines, BTreeMap::from([(first.id.clone(), 3), (second.id.clone(), 2)]), "{order:?}");
    assert_eq!(order.total_cents, Some(expected_total));
    assert_eq!(order.total_text.as_deref(), Some(dollars(expected_total).as_str()));
    assert!(!order.polls && !order.pending_note, "a confirmed order has nothing to wait for: {order:?}");
    let state = page_state(client).await;
    assert_eq!(state["badge"], 0, "the cart is empty after the order: {state}");
    screenshot(client, "bookstore-order.png").await;
    audit(client, "an order").await;
    let listed = listed_orders(client, gateway).await;
    assert_eq!(listed, vec![(order.id.clone(), "committed".to_string())], "one order for three presses");

    // 8. The book page recommends what was bought with it; the shop front shows best sellers.
    goto(client, &format!("{gateway}/bookstore/books/{}", first.id), "the first book again", "#book").await;
    let also = look(
        client,
        r##"return Array.from(document.querySelectorAll("#also-bought [data-book-id]")).map(card => card.getAttribute("data-book-id"));"##,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(also, json!([second.id]), "customers who bought this also bought");
    screenshot(client, "bookstore-book.png").await;
    goto(client, &format!("{gateway}/bookstore"), "the shop front", "#best-sellers .book-card").await;
    let best = look(
        client,
        r##"return Array.from(document.querySelectorAll("#best-sellers [data-book-id]")).map(card => card.getAttribute("data-book-id"));"##,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(best, json!([first.id, second.id]), "best sellers, most sold first");
    screenshot(client, "bookstore-home.png").await;
    audit(client, "the shop front with best sellers").await;

    // 9. The database goes down on both nodes: the catalogue is still shown, a book goes into
    //    the cart, and the order is taken, pending.
    set_db_fault(up, "down").await;
    type_into(client, "#site-search-q", "dracula").await;
    let results =
        click_to_next_page(client, ".site-search button", "a search while the database is down", "#results").await;
    assert_eq!(results["catalog_notice"], true, "the page says the catalogue may be out of date: {results}");
    click_to_next_page(client, "#results [data-book-id=\"dracula\"] .book-card__title a", "Dracula's page", "#book")
        .await;
    let third = read_book_page(client).await;
    assert_eq!(third.id, "dracula");
    let added = add_to_cart(client, 1).await;
    assert_eq!((added["flash"].as_str(), added["badge"].as_i64()), (Some("added-queued"), Some(1)), "{added}");
    let cart = click_to_next_page(client, "#cart-link", "the cart while the database is down", "#cart").await;
    assert_eq!(cart["cart_notice"], true, "{cart}");
    let (lines, _, _, waiting) = read_cart(client).await;
    assert_eq!(lines, BTreeMap::from([(third.id.clone(), (1, third.price_cents, third.price_cents))]));
    assert_eq!(waiting, vec![third.id.clone()], "the line is marked as waiting for the database");
    mark_page(client).await;
    client.find(Locator::Css("#place-order")).await.unwrap().click().await.unwrap();
    let pending = read_order_page(client, "the order placed while the database is down", true).await;
    assert_eq!(pending.status, "pending", "{pending:?}");
    assert_eq!(pending.flash.as_deref(), Some("order-queued"), "{pending:?}");
    assert!(pending.polls && pending.pending_note, "a pending order's page follows it: {pending:?}");
    assert_ne!(pending.id, order.id);
    screenshot(client, "bookstore-order-pending.png").await;
    audit(client, "a pending order").await;

    // 10. The database is back: the same page turns confirmed by itself, with the book and total.
    mark_page(client).await;
    set_db_fault(up, "up").await;
    let script = format!(
        "const page = (function () {{ {ORDER_PAGE} }}).apply(null, arguments); \
         return page && page.status === \"committed\" && page.lines.length > 0 ? page : null;"
    );
    let settled = wait_for(
        client,
        "the pending order's page to show it confirmed by itself",
        CONFIRM_ON_PAGE_TIMEOUT,
        &script,
        vec![json!(NO_NAVIGATION_MARKER)],
    )
    .await;
    let settled = OrderOnPage::from_json(&settled);
    assert!(settled.not_navigated, "the page was reloaded or left instead of updating itself: {settled:?}");
    assert_eq!((settled.id.as_str(), settled.path.as_str()), (pending.id.as_str(), pending.path.as_str()));
    assert_eq!(settled.lines, BTreeMap::from([(third.id.clone(), 1)]), "{settled:?}");
    assert_eq!(settled.total_cents, Some(third.price_cents));
    assert!(!settled.pending_note && !settled.polls, "{settled:?}");
    let listed = listed_orders(client, gateway).await;
    assert_eq!(
        listed,
        vec![(pending.id.clone(), "committed".to_string()), (order.id.clone(), "committed".to_string())],
        "both orders, newest first"
    );

    // 11. Error pages, and a form from elsewhere is refused.
    let missing =
        goto(client, &format!("{gateway}/bookstore/no-such-page"), "the 404 page", "[data-error-status]").await;
    assert!(missing["text"].as_str().unwrap().contains("We couldn't find that page"), "{missing}");
    audit(client, "the 404 page").await;
    let forged = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{gateway}/bookstore/checkout"))
        .header("cookie", format!("bs_session={}", session.value()))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "a checkout without the page's CSRF token");

    // 12. A phone's width: every page fits without scrolling sideways.
    narrow_pages_fit(client, gateway, &order.id).await;

    admin_scenario(client, up, gateway).await;
}

/// At 375 px wide (a small phone) the shop front, a search, a book, the cart (with the book added
/// from its page at that width), the orders and an order fit the width: nothing makes the page
/// scroll sideways, and each passes the accessibility audit. The window is put back after.
async fn narrow_pages_fit(client: &Client, gateway: &str, order_id: &str) {
    let (width, height) = client.get_window_size().await.unwrap();
    client.set_window_size(375, 812).await.unwrap();
    for (path, ready) in [
        ("/bookstore".to_string(), "#top-rated .book-card"),
        ("/bookstore/books?q=austen".to_string(), "#results"),
        ("/bookstore/books/emma".to_string(), "#book"),
        ("/bookstore/cart".to_string(), "#cart"),
        ("/bookstore/orders".to_string(), "#main"),
        (format!("/bookstore/orders/{order_id}"), "#main"),
    ] {
        goto(client, &format!("{gateway}{path}"), &path, ready).await;
        fits_width(client, &format!("{path} at 375 px")).await;
        audit(client, &format!("{path} at 375 px")).await;
        if path.starts_with("/bookstore/orders/") {
            screenshot(client, "bookstore-order-phone.png").await;
        }
        if path == "/bookstore/books/emma" {
            // The cart below then has a line to lay out.
            add_to_cart(client, 1).await;
        }
    }
    client.set_window_size(width as u32, height as u32).await.unwrap();
}

/// The admin: signs in with the deployment's token, adds a book, changes its price, publishes a
/// blog post (Markdown rendered safely), deletes the book.
async fn admin_scenario(client: &Client, up: &Up, gateway: &str) {
    goto(client, &format!("{gateway}/bookstore/admin"), "the admin sign-in form", "#admin-signin-form").await;
    type_into(client, "#token", "not the token").await;
    let refused =
        click_to_next_page(client, "#admin-signin-form button", "the refused admin sign-in", "#admin-signin-form")
            .await;
    assert!(refused["text"].as_str().unwrap().contains("not this deployment's admin token"), "{refused}");
    type_into(client, "#token", &up.token).await;
    let admin = click_to_next_page(client, "#admin-signin-form button", "the admin's book list", "#admin-books").await;
    audit(client, "the admin's book list").await;
    assert_eq!(admin["flash"], "admin-signed-in", "{admin}");

    // A book with a price that is not one: the form says which field, and keeps what was typed.
    click_to_next_page(client, "#add-book", "the new-book form", "#book-form").await;
    for (field, value) in [
        ("#title", "The Rananeeti Reader"),
        ("#author", "Ada Writer"),
        ("#category", "Poetry"),
        ("#price", "cheap"),
        ("#rating", "4.5"),
        ("#stock", "3"),
        ("#description", "Poems written while a database was down."),
    ] {
        type_into(client, field, value).await;
    }
    click_to_next_page(client, "#book-form button[type=submit]", "the book form shown back", "#error-summary").await;
    screenshot(client, "bookstore-admin-book-form.png").await;
    audit(client, "the admin book form with errors").await;
    let shown_back = look(
        client,
        r##"return [document.querySelector("#error-summary a").getAttribute("href"),
                   document.getElementById("price").getAttribute("aria-invalid"),
                   document.getElementById("title").value];"##,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(shown_back, json!(["#price", "true", "The Rananeeti Reader"]));
    type_into(client, "#price", "9.50").await;
    let saved =
        click_to_next_page(client, "#book-form button[type=submit]", "the list after adding", "#admin-books").await;
    assert_eq!(saved["flash"], "book-saved", "{saved}");
    goto(client, &format!("{gateway}/bookstore/books/the-rananeeti-reader"), "the new book's page", "#book").await;
    let added = read_book_page(client).await;
    assert_eq!((added.title.as_str(), added.price_text.as_str()), ("The Rananeeti Reader", "$9.50"));

    // A new price.
    goto(client, &format!("{gateway}/bookstore/admin/books/the-rananeeti-reader/edit"), "the edit form", "#book-form")
        .await;
    type_into(client, "#price", "11").await;
    let saved =
        click_to_next_page(client, "#book-form button[type=submit]", "the list after editing", "#admin-books").await;
    assert_eq!(saved["flash"], "book-saved", "{saved}");
    goto(client, &format!("{gateway}/bookstore/books/the-rananeeti-reader"), "the edited book's page", "#book").await;
    assert_eq!(read_book_page(client).await.price_text, "$11.00");

    // A blog post: Markdown rendered, scripts and javascript: links removed.
    goto(client, &format!("{gateway}/bookstore/admin/posts/new"), "the new-post form", "#post-form").await;
    type_into(client, "#title", "Summer reading").await;
    type_into(
        client,
        "#body_markdown",
        "Our **favourite** books.\n\n<script>window.pwned = true</script>\n\n[click](javascript:window.pwned=true)",
    )
    .await;
    let post = click_to_next_page(client, "#post-form button[type=submit]", "the published post", "#post").await;
    audit(client, "a blog post").await;
    assert_eq!(
        (post["flash"].as_str(), post["path"].as_str()),
        (Some("post-published"), Some("/bookstore/blog/summer-reading"))
    );
    let body = look(
        client,
        r##"const body = document.getElementById("post-body");
           return [body.querySelector("strong") && body.querySelector("strong").textContent,
                   body.querySelectorAll("script").length,
                   Array.from(body.querySelectorAll("a")).filter(a => (a.getAttribute("href") || "").startsWith("javascript")).length,
                   window.pwned === true];"##,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(body, json!(["favourite", 0, 0, false]), "the post is rendered safely");

    // Delete the book (the page asks first).
    goto(client, &format!("{gateway}/bookstore/admin?q=rananeeti+reader"), "the admin's search", "#admin-books").await;
    mark_page(client).await;
    client
        .find(Locator::Css("tr[data-book-id=\"the-rananeeti-reader\"] form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client.accept_alert().await.expect("the page asks before deleting");
    let deleted = wait_page(
        client,
        "the list after deleting",
        true,
        &format!("if (!document.getElementById(\"admin-books\")) return null; {PAGE_STATE}"),
    )
    .await;
    assert_eq!(deleted["flash"], "book-deleted", "{deleted}");
    let gone =
        goto(client, &format!("{gateway}/bookstore/books/the-rananeeti-reader"), "a deleted book", "#main").await;
    assert!(gone["text"].as_str().unwrap().contains("We couldn't find that page"), "{gone}");

    // Signing out from an admin page's header: the shopper is signed out, the badge is gone.
    goto(client, &format!("{gateway}/bookstore/admin"), "the admin's book list", "#admin-books").await;
    let signed_out = click_to_next_page(client, "#signout", "the shop after signing out", "#main").await;
    assert_eq!(
        (signed_out["flash"].as_str(), signed_out["badge"].as_i64()),
        (Some("signed-out"), None),
        "{signed_out}"
    );
    assert_eq!(signed_out["signed_in"], false);
    assert!(client.get_named_cookie("bs_session").await.is_err(), "the session cookie is cleared");
}
