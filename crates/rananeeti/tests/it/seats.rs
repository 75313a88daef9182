//! The seat rule holds under concurrency on both stores, for direct and for queued bookings.

use crate::support::{booking_year, post_many, Deployment, StoreKind};
use serde_json::{json, Value};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

const SEATS_PER_SLOT: usize = 60;
const BOOKINGS: usize = 40;
const PARTY: usize = 2;

fn same_slot_bookings(tag: &str, slot: &str) -> Vec<Value> {
    (0..BOOKINGS)
        .map(|i| json!({ "name": format!("{tag} {i}"), "party_size": PARTY, "time": slot, "notes": "" }))
        .collect()
}

async fn seats_booked(deployment: &Deployment, slot: &str) -> i64 {
    use sqlx::Row;
    let mut connection = deployment.store.connect().await;
    sqlx::query("SELECT CAST(COALESCE(SUM(party_size), 0) AS BIGINT) AS seats FROM cafe_reservations WHERE slot = $1")
        .bind(slot)
        .fetch_one(&mut connection)
        .await
        .unwrap()
        .get::<i64, _>("seats")
}

async fn concurrent_bookings_of_one_slot_never_overbook(kind: StoreKind) {
    let deployment = Deployment::start(kind).await;
    let node = &deployment.node;
    let slot = format!("{}-07-04T19:00", booking_year());
    let answers = post_many(
        reqwest::Client::new(),
        node.url(""),
        same_slot_bookings("Direct", &slot),
        BOOKINGS,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(_, answer)| answer.as_ref().unwrap().status).collect();
    let committed = statuses.iter().filter(|status| **status == 201).count();
    let rejected = statuses.iter().filter(|status| **status == 409).count();
    assert_eq!(committed, SEATS_PER_SLOT / PARTY, "answers: {statuses:?}");
    assert_eq!(rejected, BOOKINGS - SEATS_PER_SLOT / PARTY, "answers: {statuses:?}");
    assert_eq!(seats_booked(&deployment, &slot).await, SEATS_PER_SLOT as i64);
}

async fn queued_bookings_past_the_seats_end_rejected_with_the_reason(kind: StoreKind) {
    let deployment = Deployment::start(kind).await;
    let node = &deployment.node;
    let slot = format!("{}-07-05T20:00", booking_year());
    node.set_faults(json!({ "db": "down" })).await;
    let answers = post_many(
        reqwest::Client::new(),
        node.url(""),
        same_slot_bookings("Queued", &slot),
        BOOKINGS,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    let ids: Vec<String> = answers
        .iter()
        .map(|(_, answer)| {
            let answer = answer.as_ref().unwrap();
            assert_eq!(answer.status, 202, "queued while the store is down: {}", answer.body);
            answer.id()
        })
        .collect();
    node.set_faults(json!({ "db": "up" })).await;
    node.wait_until_drained().await;
    let mut committed = 0;
    let mut rejected = 0;
    for id in &ids {
        let (status, reservation) = node.reservation(id).await;
        assert_eq!(status, 200, "{reservation}");
        match reservation["status"].as_str() {
            Some("committed") => committed += 1,
            Some("rejected") => {
                rejected += 1;
                let reason = reservation["reason"].as_str().unwrap_or("");
                assert!(reason.contains("fully booked"), "the reason is given: {reservation}");
            }
            other => panic!("queued booking ended {other:?}: {reservation}"),
        }
    }
    assert_eq!(committed, SEATS_PER_SLOT / PARTY);
    assert_eq!(rejected, BOOKINGS - SEATS_PER_SLOT / PARTY);
    assert_eq!(seats_booked(&deployment, &slot).await, SEATS_PER_SLOT as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_bookings_of_one_slot_never_overbook_sqlite() {
    concurrent_bookings_of_one_slot_never_overbook(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_bookings_of_one_slot_never_overbook_postgres() {
    concurrent_bookings_of_one_slot_never_overbook(StoreKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_bookings_past_the_seats_end_rejected_with_the_reason_sqlite() {
    queued_bookings_past_the_seats_end_rejected_with_the_reason(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_bookings_past_the_seats_end_rejected_with_the_reason_postgres() {
    queued_bookings_past_the_seats_end_rejected_with_the_reason(StoreKind::Postgres).await;
}
