//! Losing a whole region, on real `rananeeti up` deployments (issue 20):
//! - with `replication.durability = "region-sync"`, every write r1 answered *committed* is in
//!   r2's database after r1's processes are killed with -9 and its data directory (its database
//!   included) deleted under steady writes; on SQLite and on PostgreSQL;
//! - with three regions, a region exports what it applied from the others too (relay): r1 cut
//!   from r3 only, r3 still gets every write r1 made through r2 after r1 is destroyed;
//! - random kill -9 of nodes in a 3x2 deployment under writes to every region: every region
//!   ends with every acknowledged id exactly once.

use crate::regions::{start_up_with, Up};
use crate::support::{eventually, post_reservation, reservation};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::{Connection, Row};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Reservation ids in `region`'s database, with how many rows each has.
async fn reservations_in(up: &Up, region: usize) -> HashMap<String, usize> {
    let mut connection =
        sqlx::AnyConnection::connect(&up.topology.regions[region].database.connect_url().unwrap()).await.unwrap();
    let mut counts = HashMap::new();
    for row in sqlx::query("SELECT id FROM cafe_reservations").fetch_all(&mut connection).await.unwrap() {
        *counts.entry(row.get::<String, _>("id")).or_insert(0) += 1;
    }
    counts
}

/// Destroys `region`: its supervisor paused (so nothing restarts), every node and its own
/// PostgreSQL killed with -9, its data directory deleted. Answers the pids to resume (the
/// supervisor) when the test ends.
fn destroy_region(up: &Up, region: usize) -> Resume {
    let supervisor = up.child.id();
    kill(Pid::from_raw(supervisor as i32), Signal::SIGSTOP).unwrap();
    let topology = rananeeti::topology::Topology::read(&up.data_dir().join("topology.json")).unwrap();
    let doomed = &topology.regions[region];
    for pid in doomed.nodes.iter().filter_map(|node| node.pid).chain(doomed.database.pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    std::fs::remove_dir_all(up.data_dir().join(&doomed.name)).unwrap();
    Resume(vec![supervisor])
}

/// SIGCONT for what a test paused, also when it fails.
struct Resume(Vec<u32>);

impl Drop for Resume {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
        }
    }
}

/// Writes reservations to `urls` (round robin) until `stop`; answers each id with its answer's
/// status (only answers that came back: a refused connection is not acknowledged).
async fn write_until(
    urls: Vec<String>,
    tag: &'static str,
    writers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<(String, u16)> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (client, urls, stop) = (client.clone(), urls.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = writer;
            while !stop.load(Ordering::Acquire) {
                let url = &urls[i % urls.len()];
                if let Ok(answer) = post_reservation(&client, url, &reservation(tag, i), false).await {
                    if let Some(id) = answer.body["id"].as_str() {
                        answers.push((id.to_string(), answer.status));
                    }
                }
                i += writers;
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

async fn region_sync_keeps_every_committed_write_through_the_loss_of_a_region(store: &str) {
    let up = start_up_with(2, 2, store, &[("RANANEETI_REPLICATION__DURABILITY", "region-sync")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(write_until(up.region_urls(0), "sync", 8, Arc::clone(&stop)));
    // Steady writes for a while (a busy machine commits fewer), then r1 is gone at once.
    let loaded = Instant::now();
    while loaded.elapsed() < Duration::from_secs(15) && reservations_in(&up, 1).await.len() < 100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _resume = destroy_region(&up, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let answers = writes.await.unwrap();

    let committed: BTreeSet<String> =
        answers.iter().filter(|(_, status)| *status == 201).map(|(id, _)| id.clone()).collect();
    let pending: BTreeSet<String> =
        answers.iter().filter(|(_, status)| *status == 202).map(|(id, _)| id.clone()).collect();
    assert!(committed.len() >= 20, "the load ran: {} committed", committed.len());
    let survivor = reservations_in(&up, 1).await;
    let missing: Vec<&String> = committed.iter().filter(|id| !survivor.contains_key(*id)).collect();
    let pending_kept = pending.iter().filter(|id| survivor.contains_key(*id)).count();
    println!(
        "{store}: {} committed, all in r2 but {}; {} pending, {pending_kept} of them in r2",
        committed.len(),
        missing.len(),
        pending.len()
    );
    assert!(missing.is_empty(), "{} writes answered committed were lost with r1: {missing:?}", missing.len());
    assert!(committed.iter().all(|id| survivor.get(id) == Some(&1)), "each once");
}

#[tokio::test(flavor = "multi_thread")]
async fn region_sync_keeps_every_committed_write_through_the_loss_of_a_region_sqlite() {
    region_sync_keeps_every_committed_write_through_the_loss_of_a_region("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn region_sync_keeps_every_committed_write_through_the_loss_of_a_region_postgres() {
    region_sync_keeps_every_committed_write_through_the_loss_of_a_region("postgres").await;
}

async fn set_fault(up: &Up, region: usize, fault: serde_json::Value) {
    let client = reqwest::Client::new();
    for url in up.region_urls(region) {
        let response =
            client.post(format!("{url}/admin/faults")).bearer_auth(&up.token).json(&fault).send().await.unwrap();
        assert_eq!(response.status(), 200, "{fault} on {url}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_three_regions_a_write_reaches_the_third_through_the_second_after_its_region_is_lost() {
    const WRITES: usize = 60;
    let up = start_up_with(3, 1, "sqlite", &[]).await;
    assert!(up.topology.witness_url.is_none(), "three regions are a majority by themselves");
    set_fault(&up, 0, json!({ "replication": { "cut": ["r3"] } })).await;
    set_fault(&up, 2, json!({ "replication": { "cut": ["r1"] } })).await;

    let client = reqwest::Client::new();
    let mut ids = BTreeSet::new();
    for i in 0..WRITES {
        let answer = post_reservation(&client, &up.region_urls(0)[0], &reservation("relay", i), false).await.unwrap();
        assert!(answer.acknowledged(), "{} {}", answer.status, answer.body);
        ids.insert(answer.id());
    }
    eventually("r2 to hold r1's writes", CONVERGE_TIMEOUT, || async {
        let r2 = reservations_in(&up, 1).await;
        ids.iter().all(|id| r2.contains_key(id)).then_some(())
    })
    .await;
    let _resume = destroy_region(&up, 0);
    set_fault(&up, 2, json!({ "replication": "ok" })).await;
    eventually("r3 to get every write of the lost r1 through r2", CONVERGE_TIMEOUT, || async {
        let r3 = reservations_in(&up, 2).await;
        ids.iter().all(|id| r3.get(id) == Some(&1)).then_some(())
    })
    .await;
    // Recorded as r1 decided them, though r2 relayed them.
    let mut connection =
        sqlx::AnyConnection::connect(&up.topology.regions[2].database.connect_url().unwrap()).await.unwrap();
    for id in &ids {
        let row = sqlx::query("SELECT applied_region FROM rn_commands WHERE id = $1")
            .bind(id)
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("applied_region"), "r1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_in_three_regions_end_with_every_acknowledged_write_once_everywhere() {
    const KILLING: Duration = Duration::from_secs(60);
    let up = start_up_with(3, 2, "sqlite", &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (region, tag) in ["kill-r1", "kill-r2", "kill-r3"].into_iter().enumerate() {
        writers.push(tokio::spawn(write_until(up.region_urls(region), tag, 2, Arc::clone(&stop))));
    }
    let started = Instant::now();
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    while started.elapsed() < KILLING {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let topology = rananeeti::topology::Topology::read(&up.data_dir().join("topology.json")).unwrap();
        let nodes: Vec<u32> =
            topology.regions.iter().flat_map(|region| &region.nodes).filter_map(|node| node.pid).collect();
        if let Some(pid) = nodes.get((rng_state % nodes.len().max(1) as u64) as usize) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            kills += 1;
        }
    }
    stop.store(true, Ordering::Release);
    let mut acknowledged = BTreeSet::new();
    for writer in writers {
        for (id, status) in writer.await.unwrap() {
            if status == 201 || status == 202 {
                acknowledged.insert(id);
            }
        }
    }
    println!("{kills} nodes killed; {} writes acknowledged", acknowledged.len());
    assert!(acknowledged.len() > 100, "the load ran");
    for region in 0..3 {
        eventually(&format!("region {} to hold every acknowledged write", region + 1), CONVERGE_TIMEOUT, || async {
            let rows = reservations_in(&up, region).await;
            acknowledged.iter().all(|id| rows.contains_key(id)).then_some(())
        })
        .await;
        let rows = reservations_in(&up, region).await;
        let twice: Vec<_> = rows.iter().filter(|(_, count)| **count > 1).collect();
        assert!(twice.is_empty(), "region {}: applied twice: {twice:?}", region + 1);
    }
}
