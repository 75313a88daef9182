//! The cafe JSON API from the outside: duplicates, input refused naming the field, and listing.

use crate::support::{booking_year, eventually, reservation, slot_time, Deployment, Node, StoreKind};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a queued write may take to be applied once the store is up.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

async fn wait_until_committed(node: &Node, id: &str) {
    eventually(&format!("reservation {id} to be committed by the drainer"), APPLY_TIMEOUT, || async {
        let (status, body) = node.reservation(id).await;
        (status == 200 && body["status"] == "committed").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resubmitting_gives_duplicate_when_first_is_pending_and_when_committed() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;
    let mut ids = BTreeSet::new();

    // Pending first: the store is down.
    node.set_faults(json!({ "db": "down" })).await;
    let body = reservation("dup", 0);
    let first = node.reserve(&body).await.unwrap();
    assert_eq!((first.status, &first.body["status"]), (202, &json!("pending")), "{}", first.body);
    let id = first.id();
    let again = node.reserve(&body).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, json!({ "id": id, "status": "duplicate", "current": "pending" }));
    let (status, shown) = node.reservation(&id).await;
    assert_eq!((status, &shown["status"], &shown["stored_in"]), (200, &json!("pending"), &json!("queue")), "{shown}");
    assert_eq!(node.queue_depth().await, 1, "the duplicate is not queued a second time");

    // Committed once the store is back.
    node.set_faults(json!({ "db": "up" })).await;
    node.wait_until_drained().await;
    let after_drain = node.reserve(&body).await.unwrap();
    assert_eq!(after_drain.status, 200, "{}", after_drain.body);
    assert_eq!(after_drain.body, json!({ "id": id, "status": "duplicate", "current": "committed" }));
    let (status, shown) = node.reservation(&id).await;
    assert_eq!((status, &shown["status"], &shown["stored_in"]), (200, &json!("committed"), &json!("store")), "{shown}");
    ids.insert(id);

    // The seed's checkbox: this one request sees a failed database, and the drainer applies it.
    let body = reservation("dup", 1);
    let simulated = node.reserve_with_simulated_failure(&body).await.unwrap();
    assert_eq!((simulated.status, &simulated.body["status"]), (202, &json!("pending")), "{}", simulated.body);
    let id = simulated.id();
    wait_until_committed(node, &id).await;
    let again = node.reserve(&body).await.unwrap();
    assert_eq!(again.body, json!({ "id": id, "status": "duplicate", "current": "committed" }));
    ids.insert(id);

    // Committed at once, then the same content again (spacing aside) is a duplicate of it.
    let body = reservation("dup", 2);
    let committed = node.reserve(&body).await.unwrap();
    assert_eq!((committed.status, &committed.body["status"]), (201, &json!("committed")), "{}", committed.body);
    let id = committed.id();
    let mut respaced = body.clone();
    respaced["name"] = json!(format!("  {}  ", body["name"].as_str().unwrap()));
    let again = node.reserve(&respaced).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, json!({ "id": id, "status": "duplicate", "current": "committed" }));
    ids.insert(id);

    deployment.store.assert_each_committed_once(&ids).await;
    assert_eq!(deployment.store.reservation_rows().await.len(), ids.len());
}

/// Posts `body` raw with `content_type` (none when `None`).
async fn post_raw(node: &Node, content_type: Option<&str>, body: String) -> (u16, Value) {
    let mut request = node.client.post(node.url("/api/cafe/reservations")).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("answer {status} is not JSON ({error}): {text}")),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_4xx_naming_the_field() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;
    let year = booking_year();
    let good = reservation("bad-input", 0);
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body.to_string()
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body.to_string()
    };
    let json_type = Some("application/json");
    // (what, content type, body, the field the answer must name; None where no field is to blame)
    let cases: Vec<(&str, Option<&str>, String, Option<&str>)> = vec![
        ("empty name", json_type, with("name", json!("")), Some("name")),
        ("blank name", json_type, with("name", json!("   ")), Some("name")),
        ("41-character name", json_type, with("name", json!("n".repeat(41))), Some("name")),
        ("name with a control character", json_type, with("name", json!("Ann\u{7}")), Some("name")),
        ("name as a number", json_type, with("name", json!(7)), Some("name")),
        ("party of 0", json_type, with("party_size", json!(0)), Some("party_size")),
        ("party of 21", json_type, with("party_size", json!(21)), Some("party_size")),
        ("party of -1", json_type, with("party_size", json!(-1)), Some("party_size")),
        ("party size as a string", json_type, with("party_size", json!("x")), Some("party_size")),
        ("fractional party size", json_type, with("party_size", json!(1.5)), Some("party_size")),
        ("30 February", json_type, with("time", json!(format!("{year}-02-30T10:00"))), Some("time")),
        ("time with a space", json_type, with("time", json!(format!("{year}-01-01 10:00"))), Some("time")),
        ("time with seconds", json_type, with("time", json!(format!("{year}-06-01T10:00:00"))), Some("time")),
        ("time in the past", json_type, with("time", json!("2000-01-01T10:00")), Some("time")),
        ("time years ahead", json_type, with("time", json!(format!("{}-06-01T10:00", year + 4))), Some("time")),
        ("time as a number", json_type, with("time", json!(20300101)), Some("time")),
        ("201-character notes", json_type, with("notes", json!("n".repeat(201))), Some("notes")),
        ("unknown field", json_type, with("color", json!("red")), Some("color")),
        ("missing name", json_type, without("name"), Some("name")),
        ("missing party_size", json_type, without("party_size"), Some("party_size")),
        ("missing time", json_type, without("time"), Some("time")),
        ("malformed JSON", json_type, r#"{"name": "Ann", "party_size": 2,"#.to_string(), None),
        ("empty body", json_type, String::new(), None),
        ("JSON array", json_type, format!("[{good}]"), None),
        ("text/plain content type", Some("text/plain"), good.to_string(), None),
        ("form content type", Some("application/x-www-form-urlencoded"), "name=Ann".to_string(), None),
        ("no content type", None, good.to_string(), None),
        ("body over the limit", json_type, with("notes", json!("n".repeat(128 * 1024))), None),
    ];
    let mut wrong = Vec::new();
    for (what, content_type, body, field) in &cases {
        let (status, answer) = post_raw(node, *content_type, body.clone()).await;
        let named = answer["error"]["field"].as_str();
        let message = answer["error"]["message"].as_str().unwrap_or("");
        if !(400..500).contains(&status) || message.is_empty() || (field.is_some() && named != *field) {
            wrong.push(format!("{what}: {status} {answer} (expected 4xx naming {field:?})"));
        }
    }
    assert!(wrong.is_empty(), "bad input not refused as it should be:\n{}", wrong.join("\n"));
    assert!(deployment.store.reservation_rows().await.is_empty(), "refused input must not be stored");

    // The limits themselves are accepted.
    let edge = json!({
        "name": "é".repeat(40),
        "party_size": 20,
        "time": slot_time(1),
        "notes": "n".repeat(200),
    });
    let answer = node.reserve(&edge).await.unwrap();
    assert_eq!(answer.status, 201, "a request at every limit is accepted: {}", answer.body);
    let without_notes = json!({ "name": "Ann", "party_size": 1, "time": slot_time(2) });
    let answer = node.reserve(&without_notes).await.unwrap();
    assert_eq!(answer.status, 201, "notes are optional: {}", answer.body);

    // Ids in the path.
    let (status, answer) = node.reservation("not-an-id").await;
    assert_eq!((status, answer["error"]["field"].as_str()), (422, Some("id")), "{answer}");
    let (status, answer) = node.reservation(&"0".repeat(40)).await;
    assert_eq!(status, 404, "an unknown id: {answer}");
}

async fn list(node: &Node, query: &str) -> (u16, Value) {
    // The list is the staff's: the admin token.
    let response = node.admin_get(&format!("/api/cafe/reservations{query}")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn item_ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_newest_first_and_refuses_a_bad_limit_naming_it() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;
    let mut placed = Vec::new();
    for i in 0..5 {
        let answer = node.reserve(&reservation("list", i)).await.unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body);
        placed.push(answer.id());
    }
    let newest_first: Vec<String> = placed.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    for page_number in 1..=3 {
        let (status, page) = list(node, &query).await;
        assert_eq!(status, 200, "{page}");
        let ids = item_ids(&page);
        assert_eq!(ids.len(), if page_number < 3 { 2 } else { 1 }, "page {page_number}: {page}");
        seen.extend(ids);
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => assert_eq!(page_number, 3, "only the last page has no next: {page}"),
        }
        assert_eq!(page["store_available"], true, "{page}");
    }
    assert_eq!(seen, newest_first, "pages hold every reservation once, newest first");
    let (_, page) = list(node, "").await;
    assert_eq!(item_ids(&page), newest_first, "without a limit, one page of up to 20");
    assert!(page["items"].as_array().unwrap().iter().all(|item| item["status"] == "committed"), "{page}");

    // A queued reservation shows on the first page, as pending.
    node.set_faults(json!({ "db": "down" })).await;
    let queued = node.reserve(&reservation("list", 5)).await.unwrap();
    assert_eq!(queued.status, 202, "{}", queued.body);
    let (status, page) = list(node, "?limit=2").await;
    assert_eq!(status, 200, "listing works while the store is down: {page}");
    let first = &page["items"][0];
    assert_eq!((&first["id"], &first["status"]), (&json!(queued.id()), &json!("pending")), "{page}");
    node.set_faults(json!({ "db": "up" })).await;

    for (query, field) in
        [("?limit=0", "limit"), ("?limit=101", "limit"), ("?after=yesterday", "after"), ("?limit=2&after=-1", "after")]
    {
        let (status, answer) = list(node, query).await;
        assert_eq!((status, answer["error"]["field"].as_str()), (422, Some(field)), "{query}: {answer}");
    }
}

/// `?limit=abc` fails to parse as a number before the handler sees it; the answer must still
/// name the field, like every other bad input.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_numeric_limit_is_refused_naming_the_field() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;
    for query in ["?limit=abc", "?limit=-1", "?limit=1.5"] {
        let (status, answer) = list(node, query).await;
        assert!((400..500).contains(&status), "{query}: {status} {answer}");
        assert_eq!(answer["error"]["field"].as_str(), Some("limit"), "{query}: {status} {answer}");
    }
}
