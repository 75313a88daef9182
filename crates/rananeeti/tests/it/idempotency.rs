//! `Idempotency-Key` on every write, on a real `rananeeti up` of two regions: the same key from
//! the same caller gets the first request's answer and is applied once, on any node of any region
//! (the gateway's retry of a POST that may have reached a node sends it again elsewhere); another
//! body with the same key is 422; a page's form sent twice with its key is one write.
//!
//! Regression tests for the first defect of issue 11: the gateway retried keyed POSTs, but no
//! node honoured the key, so a retried cart add (quantity = current + 1) was applied twice and a
//! retried admin book create answered "exists" for a write that was applied.

use crate::regions::{start_up, Up};
use crate::support::eventually;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::BTreeMap;
use std::time::Duration;

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";

struct Answer {
    status: u16,
    body: Value,
    replayed: bool,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let text = response.text().await.unwrap();
    Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)), replayed }
}

/// A keyed JSON write.
async fn keyed(method: reqwest::Method, url: &str, token: &str, key: &str, body: &Value) -> Answer {
    send(client().request(method, url).bearer_auth(token).header("Idempotency-Key", key).json(body)).await
}

/// Signs a shopper up in `base`'s region and answers their token once they can sign in.
async fn shopper(base: &str, email: &str) -> String {
    let signup =
        send(client().post(format!("{base}/api/auth/signup")).json(&json!({ "email": email, "password": PASSWORD })))
            .await;
    assert!(signup.status == 201 || signup.status == 202, "signup: {} {}", signup.status, signup.body);
    eventually("the account to be usable", SETTLE_TIMEOUT, || async {
        let signin = send(
            client().post(format!("{base}/api/auth/signin")).json(&json!({ "email": email, "password": PASSWORD })),
        )
        .await;
        (signin.status == 200).then(|| signin.body["token"].as_str().unwrap().to_string())
    })
    .await
}

async fn a_book(base: &str) -> String {
    let books = send(client().get(format!("{base}/api/books?limit=1"))).await;
    books.body["items"][0]["id"].as_str().unwrap().to_string()
}

async fn quantity_in_cart(base: &str, token: &str, book: &str) -> i64 {
    let cart = send(client().get(format!("{base}/api/cart")).bearer_auth(token)).await;
    assert_eq!(cart.status, 200, "{}", cart.body);
    cart.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["book_id"] == book)
        .map(|line| line["quantity"].as_i64().unwrap())
        .unwrap_or(0)
}

/// Deletes every recorded answer in `region`'s database: what a node that stopped between
/// applying a request and recording its answer leaves behind.
async fn forget_recorded_answers(up: &Up, region: usize) {
    let mut connection = sqlx::AnyConnection::connect(&up.topology.regions[region].database.url).await.unwrap();
    sqlx::query("DELETE FROM rn_request_answers").execute(&mut connection).await.unwrap();
}

async fn a_cart_add_retried_on_another_node_and_region_is_applied_once(store: &str) {
    let up = start_up(2, 2, store).await;
    let (r1, r2) = (up.region_urls(0), up.region_urls(1));
    let token = shopper(&r1[0], "retry@example.com").await;
    let book = a_book(&r1[0]).await;
    let add = json!({ "book_id": book, "quantity": 1 });
    let cart = |base: &str| format!("{base}/api/cart");

    let first = keyed(reqwest::Method::POST, &cart(&r1[0]), &token, "add-1", &add).await;
    assert!(first.status == 201, "first add: {} {}", first.status, first.body);
    // The gateway's retry of a request that may have been applied goes to another node; a
    // client's own retry may reach the other region.
    for (node, base) in [("another node of r1", &r1[1]), ("a node of r2", &r2[0])] {
        let again = keyed(reqwest::Method::POST, &cart(base), &token, "add-1", &add).await;
        assert_eq!(
            (again.status, &again.body),
            (first.status, &first.body),
            "the retry on {node} gets the first answer"
        );
    }
    assert_eq!(quantity_in_cart(&r1[0], &token, &book).await, 1, "applied once");

    // The same key for another request is refused, and changes nothing.
    let other =
        keyed(reqwest::Method::POST, &cart(&r1[0]), &token, "add-1", &json!({ "book_id": book, "quantity": 2 })).await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["error"]["field"], "Idempotency-Key");
    // Another caller's same key is their own request.
    let someone_else = shopper(&r1[0], "someone@example.com").await;
    let theirs = keyed(reqwest::Method::POST, &cart(&r1[1]), &someone_else, "add-1", &add).await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);
    assert_eq!(quantity_in_cart(&r1[0], &someone_else, &book).await, 1);

    // The node that applied a request stopped before it recorded the answer: the retry reaches
    // the app again, reads a cart that already holds the book, and must still apply nothing.
    let second = keyed(reqwest::Method::POST, &cart(&r1[0]), &token, "add-2", &add).await;
    assert_eq!(second.status, 201, "{}", second.body);
    forget_recorded_answers(&up, 0).await;
    let retried = keyed(reqwest::Method::POST, &cart(&r1[1]), &token, "add-2", &add).await;
    assert_eq!((retried.status, &retried.body["id"]), (201, &second.body["id"]), "{}", retried.body);
    assert_eq!(quantity_in_cart(&r1[0], &token, &book).await, 2, "the second add applied once");
    // Both regions end with one add of each.
    eventually("r2 to hold the cart", SETTLE_TIMEOUT, || async {
        (quantity_in_cart(&r2[0], &token, &book).await == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cart_add_retried_on_another_node_and_region_is_applied_once_sqlite() {
    a_cart_add_retried_on_another_node_and_region_is_applied_once("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cart_add_retried_on_another_node_and_region_is_applied_once_postgres() {
    a_cart_add_retried_on_another_node_and_region_is_applied_once("postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_admin_book_create_gets_its_first_answer_not_exists() {
    let up = start_up(2, 1, "sqlite").await;
    let (r1, r2) = (up.region_urls(0), up.region_urls(1));
    let books = |base: &str| format!("{base}/api/admin/books");
    let book = json!({ "title": "Retried Tales", "author": "A. Gateway", "category": "Fiction", "price_cents": 999, "stock": 3 });

    let first = keyed(reqwest::Method::POST, &books(&r1[0]), &up.token, "book-1", &book).await;
    assert_eq!(first.status, 201, "{}", first.body);
    // The recorded answer replicates like any write; once r2 has it, r2 replays it.
    eventually("r2 to hold the recorded answer", SETTLE_TIMEOUT, || async {
        let mut connection = sqlx::AnyConnection::connect(&up.topology.regions[1].database.url).await.ok()?;
        let rows: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM rn_request_answers").fetch_one(&mut connection).await.ok()?.get("n");
        (rows == 1).then_some(())
    })
    .await;
    let again = keyed(reqwest::Method::POST, &books(&r2[0]), &up.token, "book-1", &book).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body), "replayed in the other region");
    assert!(again.replayed);

    // Its answer lost with the node that applied it: the retry says where the book's command
    // stands, not "a book with this id exists".
    forget_recorded_answers(&up, 0).await;
    forget_recorded_answers(&up, 1).await;
    let retried = keyed(reqwest::Method::POST, &books(&r1[0]), &up.token, "book-1", &book).await;
    assert_eq!(
        (retried.status, &retried.body["id"], &retried.body["status"]),
        (201, &first.body["id"], &json!("committed")),
        "{}",
        retried.body
    );

    let mut connection = sqlx::AnyConnection::connect(&up.topology.regions[0].database.url).await.unwrap();
    let copies: i64 = sqlx::query("SELECT COUNT(*) AS n FROM rn_commands WHERE kind = 'bookstore.book_put'")
        .fetch_one(&mut connection)
        .await
        .unwrap()
        .get("n");
    assert_eq!(copies, 1, "one create applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_write_answered_pending_is_replayed_as_pending_after_it_drains() {
    let up = start_up(1, 2, "sqlite").await;
    let nodes = up.region_urls(0);
    let faults = |state: &'static str| {
        let up = &up;
        async move {
            for node in &up.region_urls(0) {
                let answer = send(
                    client().post(format!("{node}/admin/faults")).bearer_auth(&up.token).json(&json!({ "db": state })),
                )
                .await;
                assert_eq!(answer.status, 200);
            }
        }
    };
    faults("down").await;
    let booking =
        json!({ "name": "Keyed", "party_size": 2, "time": format!("{}-06-01T19:30", crate::support::booking_year()) });
    let url = |base: &str| format!("{base}/api/cafe/reservations");
    let first = send(client().post(url(&nodes[0])).header("Idempotency-Key", "booking-1").json(&booking)).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let elsewhere = send(client().post(url(&nodes[1])).header("Idempotency-Key", "booking-1").json(&booking)).await;
    assert_eq!((elsewhere.status, &elsewhere.body), (202, &first.body), "the other node, its store down too");
    faults("up").await;
    for node in &nodes {
        eventually("the queue to drain", SETTLE_TIMEOUT, || async {
            let queue = send(client().get(format!("{node}/admin/queue")).bearer_auth(&up.token)).await;
            (queue.body["depth"] == 0).then_some(())
        })
        .await;
    }
    // Long after, the same request is still answered as it was the first time.
    let later = send(client().post(url(&nodes[1])).header("Idempotency-Key", "booking-1").json(&booking)).await;
    assert_eq!((later.status, &later.body), (202, &first.body));
    assert!(later.replayed);
}

/// A tiny cookie jar: the pages' session and CSRF cookies.
#[derive(Default)]
struct Cookies(BTreeMap<String, String>);

impl Cookies {
    fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.insert(name.trim().to_string(), value.trim().to_string());
        }
    }

    fn header(&self) -> String {
        self.0.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("; ")
    }
}

/// The value of a hidden field of a page's form.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap_or_else(|| panic!("no {name} field in the page")) + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_form_sent_twice_with_its_key_adds_to_the_cart_once() {
    let up = start_up(1, 2, "sqlite").await;
    let nodes = up.region_urls(0);
    let token = shopper(&nodes[0], "form@example.com").await;
    let book = a_book(&nodes[0]).await;
    let mut cookies = Cookies::default();

    let signin_page = client().get(format!("{}/bookstore/signin", nodes[0])).send().await.unwrap();
    cookies.take(&signin_page);
    let page = signin_page.text().await.unwrap();
    let form = [
        ("csrf", hidden(&page, "csrf")),
        ("next", "/bookstore".into()),
        ("email", "form@example.com".into()),
        ("password", PASSWORD.into()),
    ];
    let signed_in = client()
        .post(format!("{}/bookstore/signin", nodes[0]))
        .header("cookie", cookies.header())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "signed in");
    cookies.take(&signed_in);

    let book_page = client()
        .get(format!("{}/bookstore/books/{book}", nodes[0]))
        .header("cookie", cookies.header())
        .send()
        .await
        .unwrap();
    let page = book_page.text().await.unwrap();
    let form = [
        ("csrf", hidden(&page, "csrf")),
        ("idempotency_key", hidden(&page, "idempotency_key")),
        ("book_id", book.clone()),
        ("quantity", "1".to_string()),
    ];
    // Sent twice: a double click past the script, or a resend after the answer was lost; the
    // second time through another node.
    for base in [&nodes[0], &nodes[1]] {
        let sent = client()
            .post(format!("{base}/bookstore/cart"))
            .header("cookie", cookies.header())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 303, "the form is answered with the book's page");
    }
    assert_eq!(quantity_in_cart(&nodes[0], &token, &book).await, 1, "one form, one add");
}
