//! Owned writes between regions (`global` kinds: the cafe's closures), on a real `rananeeti up`
//! with 2 regions x 1 node and its witness: writes made outside the owner region are forwarded to
//! it, or queued for it while it is frozen and delivered when it returns; when the owner stays
//! frozen, the other region and the witness fail it over; the old owner, thawed, applies nothing
//! it lost, and an explicit failover hands ownership back. Every check reads the databases.

use crate::regions::{start_up, Up};
use crate::support::{booking_year, eventually};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Per closure command id in one region's database: the region that applied it, and how many
/// records it has.
async fn closures_in(up: &Up, region: usize) -> HashMap<String, (String, usize)> {
    let mut connection = sqlx::AnyConnection::connect(&up.topology.regions[region].database.url).await.unwrap();
    let rows = sqlx::query("SELECT id, applied_region FROM rn_commands WHERE kind = 'cafe.set_closure'")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    let mut records = HashMap::new();
    for row in rows {
        let entry = records.entry(row.get::<String, _>("id")).or_insert_with(|| (row.get("applied_region"), 0));
        entry.1 += 1;
    }
    records
}

/// Waits until both regions hold `id`, applied once, by `applier`.
async fn assert_applied_by(up: &Up, id: &str, applier: &str) {
    for region in 0..2 {
        assert_applied_in(up, region, id, applier).await;
    }
}

async fn assert_applied_in(up: &Up, region: usize, id: &str, applier: &str) {
    let record = eventually(&format!("closure {id} to reach region {}", region + 1), SETTLE_TIMEOUT, || async {
        closures_in(up, region).await.get(id).cloned()
    })
    .await;
    assert_eq!(record, (applier.to_string(), 1), "region {}: closure {id} applied once, by {applier}", region + 1);
}

async fn close_day(url: &str, day: &str, reason: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("{url}/api/cafe/closures/{day}"))
        .json(&json!({ "closed": true, "reason": reason }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn regions_view(up: &Up, url: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/admin/regions"))
        .bearer_auth(&up.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn acting_for_r1(view: &Value) -> (String, u64) {
    let row = view["owners"].as_array().unwrap().iter().find(|row| row["region"] == "r1").unwrap().clone();
    (row["acting"].as_str().unwrap().to_string(), row["epoch"].as_u64().unwrap())
}

fn signal_node(up: &Up, region: usize, signal: Signal) {
    let pid = up.topology.regions[region].nodes[0].pid.unwrap();
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

fn day(n: u32) -> String {
    format!("{}-07-{n:02}", booking_year())
}

/// A global write made in r2 is applied by r1 (the primary); made while r1 is frozen, it is
/// queued in r2 (*pending*) and delivered to r1 when r1 is back. The closure then rules
/// reservations in both regions.
async fn global_writes_go_to_the_owner_or_wait_for_it(store: &str) {
    let up = start_up(2, 1, store).await;
    let (r1, r2) = (up.region_urls(0)[0].clone(), up.region_urls(1)[0].clone());

    let (status, body) = close_day(&r2, &day(1), "Staff party").await;
    assert_eq!(status, 201, "forwarded to r1 and committed there: {body}");
    let forwarded = body["id"].as_str().unwrap().to_string();
    assert_applied_by(&up, &forwarded, "r1").await;

    // The closure rules bookings: a booking for that day is refused in either region.
    let booking = json!({ "name": "Ada", "party_size": 2, "time": format!("{}T19:00", day(1)) });
    for url in [&r1, &r2] {
        let response =
            reqwest::Client::new().post(format!("{url}/api/cafe/reservations")).json(&booking).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 409, "{body}");
        assert!(body["reason"].as_str().unwrap().contains("Staff party"), "{body}");
    }

    // r1 frozen (for less than the failover time): r2 queues the write for it.
    signal_node(&up, 0, Signal::SIGSTOP);
    let (status, body) = close_day(&r2, &day(2), "Plumbing").await;
    let queued = body["id"].as_str().unwrap().to_string();
    signal_node(&up, 0, Signal::SIGCONT);
    assert_eq!(status, 202, "queued for the frozen owner: {body}");
    assert_applied_by(&up, &queued, "r1").await;
    assert_eq!(acting_for_r1(&regions_view(&up, &r2).await), ("r1".to_string(), 0), "no failover happened");
}

#[tokio::test(flavor = "multi_thread")]
async fn global_writes_go_to_the_owner_or_wait_for_it_sqlite() {
    global_writes_go_to_the_owner_or_wait_for_it("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn global_writes_go_to_the_owner_or_wait_for_it_postgres() {
    global_writes_go_to_the_owner_or_wait_for_it("postgres").await;
}

async fn set_partition(up: &Up, url: &str, state: &str) {
    let response = reqwest::Client::new()
        .post(format!("{url}/admin/faults"))
        .bearer_auth(&up.token)
        .json(&json!({ "partition": state }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "setting partition {state}");
}

/// r1 (the primary) cut off from r2 and the witness, while clients still reach it: r2 and the
/// witness agree r1 is gone and r2 takes over with epoch 1. r1 still believes it owns the
/// closures, but its lease has run out: it applies none of the writes it takes, and queues them.
/// Once the partition heals it learns epoch 1 and forwards them to r2. Then an explicit failover
/// gives r1 its ownership back, with epoch 2.
async fn the_old_owner_applies_nothing_it_lost(store: &str) {
    let up = start_up(2, 1, store).await;
    let (r1, r2) = (up.region_urls(0)[0].clone(), up.region_urls(1)[0].clone());
    let (status, _) = close_day(&r2, &day(3), "Inventory").await;
    assert_eq!(status, 201);

    set_partition(&up, &r1, "cut").await;
    let cut_at = Instant::now();
    let (acting, epoch) = eventually("r2 to take over r1's writes", SETTLE_TIMEOUT, || async {
        let owner = acting_for_r1(&regions_view(&up, &r2).await);
        (owner.0 == "r2").then_some(owner)
    })
    .await;
    println!("automatic failover: r2 acting for r1 (epoch {epoch}) {:?} after r1 was cut off", cut_at.elapsed());
    assert_eq!((acting.as_str(), epoch), ("r2", 1));

    // Cut off, r1 still thinks it owns r1's writes, but holds no lease: it queues them.
    let view = regions_view(&up, &r1).await;
    assert_eq!(acting_for_r1(&view), ("r1".to_string(), 0), "r1 has not heard of the failover: {view}");
    assert_eq!(view["lease_held"], false, "{view}");
    let mut taken_by_old_owner = Vec::new();
    for n in 5..10 {
        let (status, body) = close_day(&r1, &day(n), "Holiday").await;
        assert_eq!(status, 202, "queued by the old owner, not applied: {body}");
        taken_by_old_owner.push(body["id"].as_str().unwrap().to_string());
    }
    // Meanwhile r2 applies r1's writes (once the change is in effect).
    let (status, body) = close_day(&r2, &day(4), "Deep clean").await;
    assert!(status == 201 || status == 202, "{status} {body}");
    let taken_by_new_owner = body["id"].as_str().unwrap().to_string();
    assert_applied_in(&up, 1, &taken_by_new_owner, "r2").await;
    assert!(closures_in(&up, 0).await.keys().all(|id| !taken_by_old_owner.contains(id)));

    // Healed: r1 learns epoch 1 and forwards what it queued to r2, which applies it.
    set_partition(&up, &r1, "ok").await;
    assert_applied_by(&up, &taken_by_new_owner, "r2").await;
    for id in &taken_by_old_owner {
        assert_applied_by(&up, id, "r2").await;
    }
    let view = regions_view(&up, &r1).await;
    assert_eq!(acting_for_r1(&view), ("r2".to_string(), 1), "r1 learned it lost its writes: {view}");

    // Explicit failover back to r1, asked of r1.
    let response = reqwest::Client::new()
        .post(format!("{r1}/admin/regions/r1/failover"))
        .bearer_auth(&up.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await.unwrap();
    assert_eq!((changed["acting"].as_str(), changed["epoch"].as_u64()), (Some("r1"), Some(2)), "{changed}");
    eventually("r2 to learn epoch 2", SETTLE_TIMEOUT, || async {
        (acting_for_r1(&regions_view(&up, &r2).await) == ("r1".to_string(), 2)).then_some(())
    })
    .await;
    let (status, body) = close_day(&r2, &day(10), "Back to normal").await;
    assert!(status == 201 || status == 202, "{status} {body}");
    assert_applied_by(&up, body["id"].as_str().unwrap(), "r1").await;

    // Bad input to the failover endpoint names the field; no token, no failover.
    let client = reqwest::Client::new();
    let unknown = client.post(format!("{r1}/admin/regions/r9/failover")).bearer_auth(&up.token).send().await.unwrap();
    assert_eq!(unknown.status(), 422);
    let unknown_to = client
        .post(format!("{r1}/admin/regions/r1/failover"))
        .bearer_auth(&up.token)
        .json(&json!({ "to": "r7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_to.status(), 422);
    assert!(unknown_to.text().await.unwrap().contains("\"to\""));
    let anonymous = client.post(format!("{r1}/admin/regions/r1/failover")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_owner_applies_nothing_it_lost_sqlite() {
    the_old_owner_applies_nothing_it_lost("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_owner_applies_nothing_it_lost_postgres() {
    the_old_owner_applies_nothing_it_lost("postgres").await;
}

async fn partition_region(up: &Up, region: usize, partition: Value) {
    let url = &up.topology.regions[region].nodes[0].url;
    let response = reqwest::Client::new()
        .post(format!("{url}/admin/faults"))
        .bearer_auth(&up.token)
        .json(&json!({ "partition": partition }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "setting {partition} on region {}", region + 1);
}

/// Regression (issue 11, defect 5): r1 and r2 cut from each other; an explicit failover of r1 to
/// r2 whose push to the witness fails; later r2 reaches the witness just as r1 loses it. The
/// witness had renewed r1's lease without knowing the new epoch, so r1 could apply for up to a
/// lease while r2, whose change was long in effect, applied at once: two owners. Now r2 applies
/// only a lease after a majority (itself and the witness) answered knowing its epoch, and no
/// write r1 committed is sent after the first one r2 committed was answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_pushed_late_to_the_witness_never_lets_two_regions_apply() {
    // No automatic failover: the test makes the only change.
    let up = crate::regions::start_up_with(2, 1, "sqlite", &[("RANANEETI_OWNERSHIP__FAILOVER_AFTER_MS", "0")]).await;
    let (r1, r2) = (up.topology.regions[0].nodes[0].url.clone(), up.topology.regions[1].nodes[0].url.clone());
    let year = booking_year();
    eventually("r1 to hold its lease", SETTLE_TIMEOUT, || async {
        (regions_view(&up, &r1).await["lease_held"] == true).then_some(())
    })
    .await;

    partition_region(&up, 0, json!({ "cut": ["r2"] })).await;
    partition_region(&up, 1, json!({ "cut": ["r1", "witness"] })).await;
    let failover = reqwest::Client::new()
        .post(format!("{r2}/admin/regions/r1/failover"))
        .bearer_auth(&up.token)
        .json(&json!({ "to": "r2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(failover.status(), 200);
    let failover: Value = failover.json().await.unwrap();
    assert_eq!(failover["acknowledged_by"], json!([]), "nobody heard of it: {failover}");
    // Long enough for the change to be in effect everywhere it is known.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // r1 loses the witness (its last lease from it runs on), r2 reaches it.
    partition_region(&up, 0, json!({ "cut": ["r2", "witness"] })).await;
    partition_region(&up, 1, json!({ "cut": ["r1"] })).await;

    // Closures for distinct days to both regions for a while; each region answers 201 only for
    // what it applied itself.
    let started = Instant::now();
    let mut committed: Vec<(&str, Instant, Instant)> = Vec::new();
    let mut day = 0;
    while started.elapsed() < Duration::from_secs(6) {
        for (region, url) in [("r1", &r1), ("r2", &r2)] {
            day += 1;
            let date = format!("{year}-{:02}-{:02}", 1 + (day / 28) % 12, 1 + day % 28);
            let sent = Instant::now();
            let (status, body) = close_day(url, &date, &format!("fence {day}")).await;
            let answered = Instant::now();
            assert!(status == 201 || status == 202, "{region}: {status} {body}");
            if status == 201 {
                committed.push((region, sent, answered));
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let first_r2_answered =
        committed.iter().filter(|(region, ..)| *region == "r2").map(|(_, _, answered)| *answered).min();
    let last_r1_sent = committed.iter().filter(|(region, ..)| *region == "r1").map(|(_, sent, _)| *sent).max();
    let first_r2_answered = first_r2_answered.expect("r2 applies once fenced");
    if let Some(last_r1_sent) = last_r1_sent {
        assert!(
            last_r1_sent < first_r2_answered,
            "r1 was still committing {:?} after r2 had committed",
            last_r1_sent - first_r2_answered
        );
    }
    partition_region(&up, 0, json!("ok")).await;
    partition_region(&up, 1, json!("ok")).await;
}
