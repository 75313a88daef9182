//! Regions: `rananeeti up` with 2 regions x 2 nodes replicates every write to the other region,
//! keeps taking writes in both while replication is cut, and converges once it is restored, with
//! nothing lost and nothing doubled (checked in each region's database directly).

use crate::support::{eventually, post_many, reservation};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti::postgres::free_loopback_port;
use rananeeti::topology::Topology;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(90);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITES_PER_REGION_PER_PHASE: usize = 60;
const PORT_ATTEMPTS_MAX: usize = 5;

pub(crate) struct Up {
    pub(crate) child: Child,
    pub(crate) topology: Topology,
    pub(crate) token: String,
    pub(crate) _dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

pub(crate) async fn start_up(regions: u32, nodes: u32, store: &str) -> Up {
    start_up_with(regions, nodes, store, &[]).await
}

/// `start_up` with environment variables for `up` and its nodes (`RANANEETI_<SECTION>__<FIELD>`).
pub(crate) async fn start_up_with(regions: u32, nodes: u32, store: &str, environment: &[(&str, &str)]) -> Up {
    start_up_full(regions, nodes, store, environment, &[], None).await
}

/// `start_up` with more flags for `up` (which may name files outside its data directory).
pub(crate) async fn start_up_with_args(regions: u32, nodes: u32, store: &str, extra_args: &[String]) -> Up {
    start_up_full(regions, nodes, store, &[], extra_args, None).await
}

/// `start_up` with a configuration file of this TOML for every node.
pub(crate) async fn start_up_with_config(regions: u32, nodes: u32, store: &str, config: Option<&str>) -> Up {
    start_up_full(regions, nodes, store, &[], &[], config).await
}

async fn start_up_full(
    regions: u32,
    nodes: u32,
    store: &str,
    environment: &[(&str, &str)],
    extra_args: &[String],
    config: Option<&str>,
) -> Up {
    start_up_nodes(regions, &nodes.to_string(), nodes, nodes, store, environment, extra_args, config).await
}

/// `start_up` with `--nodes-per-region NODES` as given (`1..3`): `min` nodes per region run at
/// first, `max` slots per region take ports.
pub(crate) async fn start_up_scaled(regions: u32, nodes: &str, min: u32, max: u32, extra_args: &[String]) -> Up {
    start_up_nodes(regions, nodes, min, max, "sqlite", &[], extra_args, None).await
}

#[allow(clippy::too_many_arguments)]
async fn start_up_nodes(
    regions: u32,
    nodes_arg: &str,
    nodes: u32,
    slots: u32,
    store: &str,
    environment: &[(&str, &str)],
    extra_args: &[String],
    config: Option<&str>,
) -> Up {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_file = config.map(|config| {
        let path = dir.path().join("rananeeti.toml");
        std::fs::write(&path, config).unwrap();
        path
    });
    let expected_nodes = (regions * nodes) as usize;
    // The nodes take the deployment's port and the ones after it; another test may take one of
    // those meanwhile, which `up` refuses clearly. Then try other ports.
    for _attempt in 0..PORT_ATTEMPTS_MAX {
        let port = free_loopback_port().unwrap();
        if u32::from(port) + regions * slots + 2 > u32::from(u16::MAX) {
            continue;
        }
        let log_path = dir.path().join("up.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rananeeti"));
        if let Some(config) = &config_file {
            command.arg("up").arg("--config").arg(config);
        } else {
            command.arg("up");
        }
        let mut child = command
            .args(["--store", store, "--regions"])
            .arg(regions.to_string())
            .arg("--nodes-per-region")
            .arg(nodes_arg)
            .arg("--port")
            .arg(port.to_string())
            .arg("--data")
            .arg(&data)
            .args(extra_args)
            .envs(environment.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let topology_path = data.join("topology.json");
        let started = std::time::Instant::now();
        loop {
            if let Ok(topology) = Topology::read(&topology_path) {
                let running =
                    topology.regions.iter().flat_map(|region| &region.nodes).filter(|node| node.pid.is_some());
                if running.count() == expected_nodes {
                    let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_string();
                    return Up { child, topology, token, _dir: dir };
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                assert!(log.contains("is not available"), "up exited with {status}:\n{log}");
                break;
            }
            assert!(started.elapsed() < START_TIMEOUT, "up did not start every node within {START_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("no free run of {expected_nodes} ports after {PORT_ATTEMPTS_MAX} attempts");
}

/// The pid of `region`'s first node as `topology.json` says now (a restarted node has a new one).
pub(crate) fn node_pid(data: &std::path::Path, region: usize) -> u32 {
    let topology = Topology::read(&data.join("topology.json")).unwrap();
    topology.regions[region].nodes[0].pid.expect("the node runs")
}

impl Up {
    /// The deployment's directory (`--data`).
    pub(crate) fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    /// Everything `up` and its nodes have written so far (stdout and stderr).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("up.log")).unwrap_or_default()
    }

    pub(crate) fn region_urls(&self, region: usize) -> Vec<String> {
        self.topology.regions[region].nodes.iter().map(|node| node.url.clone()).collect()
    }

    pub(crate) async fn set_replication(&self, state: &str) {
        let client = reqwest::Client::new();
        for node in self.topology.regions.iter().flat_map(|region| &region.nodes) {
            let response = client
                .post(format!("{}/admin/faults", node.url))
                .bearer_auth(&self.token)
                .json(&json!({ "replication": state }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "setting replication {state} on {}", node.name);
        }
    }

    /// Reservation ids in one region's database, with how many rows each has.
    async fn ids_in_region(&self, region: usize) -> (HashMap<String, usize>, HashMap<String, usize>) {
        let mut connection =
            sqlx::AnyConnection::connect(&self.topology.regions[region].database.connect_url().unwrap()).await.unwrap();
        let count = |rows: Vec<sqlx::any::AnyRow>| {
            let mut counts = HashMap::new();
            for row in rows {
                *counts.entry(row.get::<String, _>("id")).or_insert(0) += 1;
            }
            counts
        };
        let reservations = sqlx::query("SELECT id FROM cafe_reservations").fetch_all(&mut connection).await.unwrap();
        let reservations = count(reservations);
        let commands = sqlx::query("SELECT id FROM rn_commands WHERE status = 'committed'")
            .fetch_all(&mut connection)
            .await
            .unwrap();
        (reservations, count(commands))
    }
}

impl Up {
    /// Waits until `region`'s database holds every acknowledged id, then asserts each is there
    /// exactly once (reservation row and command record). Returns the reservation rows in all.
    pub(crate) async fn assert_each_once(&self, region: usize, acknowledged: &BTreeSet<String>) -> usize {
        eventually(&format!("region {} to hold every acknowledged write", region + 1), CONVERGE_TIMEOUT, || async {
            let (reservations, _) = self.ids_in_region(region).await;
            acknowledged.iter().all(|id| reservations.contains_key(id)).then_some(())
        })
        .await;
        let (reservations, commands) = self.ids_in_region(region).await;
        for id in acknowledged {
            assert_eq!(reservations.get(id), Some(&1), "region {}: reservation {id} exactly once", region + 1);
            assert_eq!(commands.get(id), Some(&1), "region {}: command {id} recorded once", region + 1);
        }
        reservations.len()
    }
}

/// Posts `count` reservations spread over the region's nodes; returns the acknowledged ids.
async fn write_to_region(urls: &[String], tag: &str, first: usize, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let per_node = count.div_ceil(urls.len());
    let mut writers = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let start = first + index * per_node;
        let bodies: Vec<Value> = (start..(start + per_node).min(first + count)).map(|i| reservation(tag, i)).collect();
        writers.push(post_many(reqwest::Client::new(), url.clone(), bodies, 8, Arc::new(AtomicUsize::new(0))));
    }
    for answers in futures::future::join_all(writers).await {
        for (body, answer) in answers {
            let answer = answer.unwrap_or_else(|error| panic!("writing {body}: {error}"));
            // Committed, or pending when a busy machine (the whole suite runs at once) made the
            // store miss the budget: acknowledged either way, and it must converge the same.
            assert!(answer.acknowledged(), "acknowledged in its own region: {} {}", answer.status, answer.body);
            ids.insert(answer.id());
        }
    }
    ids
}

async fn regions_converge_after_replication_is_cut_and_restored(store: &str) {
    let up = start_up(2, 2, store).await;
    let (r1, r2) = (up.region_urls(0), up.region_urls(1));
    let n = WRITES_PER_REGION_PER_PHASE;

    // Both regions take writes at once, and replicate.
    let (a, b) = tokio::join!(write_to_region(&r1, "r1", 0, n), write_to_region(&r2, "r2", 10_000, n));
    let mut acknowledged: BTreeSet<String> = a.union(&b).cloned().collect();

    // Cut: both regions keep taking writes, and stop seeing each other's.
    up.set_replication("cut").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b) = tokio::join!(write_to_region(&r1, "r1-cut", 20_000, n), write_to_region(&r2, "r2-cut", 30_000, n));
    let (r1_rows, _) = up.ids_in_region(0).await;
    assert!(b.iter().all(|id| !r1_rows.contains_key(id)), "while cut, r2's new writes do not reach r1");
    acknowledged.extend(a);
    acknowledged.extend(b);

    // Restored: they converge, each id exactly once in each region.
    up.set_replication("ok").await;
    for region in 0..2 {
        let reservations = up.assert_each_once(region, &acknowledged).await;
        assert_eq!(reservations, acknowledged.len(), "region {}: nothing that was not acknowledged", region + 1);
    }

    // Lag is exported per peer.
    let metrics = reqwest::get(format!("{}/metrics", r1[0])).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rananeeti_replication_lag_seconds{peer=\"r2\"}"), "{metrics}");
    assert!(metrics.contains("rananeeti_replication_applied_total{peer=\"r2\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_converge_after_replication_is_cut_and_restored_sqlite() {
    regions_converge_after_replication_is_cut_and_restored("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_converge_after_replication_is_cut_and_restored_postgres() {
    regions_converge_after_replication_is_cut_and_restored("postgres").await;
}

const CHAOS_DURATION: Duration = Duration::from_secs(20);
const KILL_INTERVAL: Duration = Duration::from_millis(1500);

/// Writers in both regions while random nodes are killed with SIGKILL (and restarted by `up`):
/// afterwards every acknowledged write is in both regions' databases exactly once.
async fn random_kills_during_replication_lose_and_double_nothing(store: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = start_up(2, 2, store).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for (region, first) in [(0usize, 40_000usize), (1, 50_000)] {
        let urls = up.region_urls(region);
        let stop = Arc::clone(&stop);
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut i = first;
            while !stop.load(Ordering::SeqCst) {
                let url = &urls[i % urls.len()];
                let body = reservation("chaos", i);
                if let Ok(answer) = crate::support::post_reservation(&client, url, &body, false).await {
                    if answer.acknowledged() {
                        acknowledged.lock().unwrap().insert(answer.id());
                    }
                }
                i += 1;
            }
        }));
    }
    let topology_path = up._dir.path().join("data").join("topology.json");
    let chaos_started = std::time::Instant::now();
    let mut kills = 0;
    let mut seed = std::process::id() as usize;
    while chaos_started.elapsed() < CHAOS_DURATION {
        tokio::time::sleep(KILL_INTERVAL).await;
        let Ok(topology) = Topology::read(&topology_path) else { continue };
        let nodes: Vec<u32> =
            topology.regions.iter().flat_map(|region| &region.nodes).filter_map(|node| node.pid).collect();
        if nodes.is_empty() {
            continue;
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let victim = nodes[(seed >> 33) % nodes.len()];
        if kill(Pid::from_raw(victim as i32), Signal::SIGKILL).is_ok() {
            kills += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(kills >= 5, "the chaos killed {kills} nodes");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "writes went through between the kills: {}", acknowledged.len());
    for region in 0..2 {
        up.assert_each_once(region, &acknowledged).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_during_replication_lose_and_double_nothing_sqlite() {
    random_kills_during_replication_lose_and_double_nothing("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_during_replication_lose_and_double_nothing_postgres() {
    random_kills_during_replication_lose_and_double_nothing("postgres").await;
}

async fn set_special(token: &str, url: &str, day: &str, dish: &str) -> Value {
    let response = reqwest::Client::new()
        .put(format!("{url}/api/cafe/specials/{day}"))
        .bearer_auth(token)
        .json(&json!({ "dish": dish, "price_cents": 950 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "set in its own region");
    response.json().await.unwrap()
}

async fn special(url: &str, day: &str) -> Option<Value> {
    let response = reqwest::get(format!("{url}/api/cafe/specials/{day}")).await.ok()?;
    (response.status() == 200).then_some(response.json().await.ok()?)
}

async fn conflicts(up: &Up, url: &str) -> Vec<Value> {
    let body: Value = reqwest::Client::new()
        .get(format!("{url}/admin/conflicts"))
        .bearer_auth(&up.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["items"].as_array().unwrap().clone()
}

/// Two regions set the same day's special while cut off from each other: both end with the same
/// value (last writer wins on the HLC) and both conflict logs hold the loser. A later update that
/// saw the winner is not a conflict.
async fn concurrent_writes_resolve_by_last_writer_wins_with_the_loser_logged(store: &str) {
    let up = start_up(2, 1, store).await;
    let (r1, r2) = (up.region_urls(0)[0].clone(), up.region_urls(1)[0].clone());
    let day = format!("{}-06-01", crate::support::booking_year());
    up.set_replication("cut").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = set_special(&up.token, &r1, &day, "Lentil soup").await;
    let second = set_special(&up.token, &r2, &day, "Mushroom risotto").await;
    up.set_replication("ok").await;

    let (winner_r1, winner_r2) = eventually("both regions to agree on the special", CONVERGE_TIMEOUT, || async {
        let (a, b) = (special(&r1, &day).await?, special(&r2, &day).await?);
        (a["id"] == b["id"]).then_some((a, b))
    })
    .await;
    assert_eq!(winner_r1["dish"], winner_r2["dish"]);
    let winner_id = winner_r1["id"].as_str().unwrap().to_string();
    assert!(winner_id == first["id"] || winner_id == second["id"]);
    let loser_id = if winner_id == first["id"] { second["id"].clone() } else { first["id"].clone() };
    for url in [&r1, &r2] {
        let logged = eventually("the conflict log to hold the loser", CONVERGE_TIMEOUT, || async {
            let items = conflicts(&up, url).await;
            items.iter().any(|item| item["loser"]["id"] == loser_id && item["entity"] == day.as_str()).then_some(items)
        })
        .await;
        assert_eq!(logged.len(), 1, "one conflict, logged once in each region: {logged:?}");
    }

    // The same write made in both regions under different clocks, and edited in one of them
    // between: both regions still end with one value.
    let other_day = format!("{}-06-02", crate::support::booking_year());
    up.set_replication("cut").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_special(&up.token, &r1, &other_day, "Soup").await;
    set_special(&up.token, &r1, &other_day, "Pasta").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    set_special(&up.token, &r2, &other_day, "Soup").await;
    up.set_replication("ok").await;
    let agreed = eventually("both regions to agree on the twice-made special", CONVERGE_TIMEOUT, || async {
        let (a, b) = (special(&r1, &other_day).await?, special(&r2, &other_day).await?);
        (a["id"] == b["id"] && a["hlc"] == b["hlc"]).then_some(a)
    })
    .await;
    assert_eq!(agreed["dish"], "Soup", "the latest write (r2's Soup) wins everywhere: {agreed}");
    for url in [&r1, &r2] {
        // A region that already held the winner logs the loser when the loser arrives.
        let logged = eventually("the conflict log to hold Pasta", CONVERGE_TIMEOUT, || async {
            let logged = conflicts(&up, url).await;
            logged.iter().any(|item| item["entity"] == other_day.as_str()).then_some(logged)
        })
        .await;
        let for_day: Vec<_> = logged.iter().filter(|item| item["entity"] == other_day.as_str()).collect();
        assert_eq!(for_day.len(), 1, "Pasta lost to a concurrent write, logged once: {logged:?}");
        assert!(for_day[0]["loser"]["payload"].as_str().unwrap_or("").contains("Pasta"), "{logged:?}");
    }

    // An update made after seeing the winner overwrites it without a conflict.
    let update = set_special(&up.token, &r1, &day, "Pea and mint soup").await;
    eventually("both regions to show the update", CONVERGE_TIMEOUT, || async {
        let (a, b) = (special(&r1, &day).await?, special(&r2, &day).await?);
        (a["id"] == update["id"] && b["id"] == update["id"]).then_some(())
    })
    .await;
    for url in [&r1, &r2] {
        assert_eq!(conflicts(&up, url).await.len(), 2, "a sequential update is not a conflict");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_resolve_by_last_writer_wins_with_the_loser_logged_sqlite() {
    concurrent_writes_resolve_by_last_writer_wins_with_the_loser_logged("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_resolve_by_last_writer_wins_with_the_loser_logged_postgres() {
    concurrent_writes_resolve_by_last_writer_wins_with_the_loser_logged("postgres").await;
}

/// The same booking committed in one region and rejected in the other (its slot was full there
/// while the regions were cut off): once they reconnect, committed wins in both.
async fn committed_in_one_region_wins_over_rejected_in_the_other(store: &str) {
    let up = start_up(2, 1, store).await;
    let (r1, r2) = (up.region_urls(0)[0].clone(), up.region_urls(1)[0].clone());
    let slot = format!("{}-09-09T19:00", crate::support::booking_year());
    up.set_replication("cut").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let booking = json!({ "name": "Ada", "party_size": 2, "time": slot, "notes": "" });
    let committed = crate::support::post_reservation(&client, &r1, &booking, false).await.unwrap();
    assert_eq!(committed.status, 201, "{}", committed.body);
    let fill: Vec<Value> =
        (0..3).map(|i| json!({ "name": format!("Party {i}"), "party_size": 20, "time": slot, "notes": "" })).collect();
    for body in &fill {
        let answer = crate::support::post_reservation(&client, &r2, body, false).await.unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let rejected = crate::support::post_reservation(&client, &r2, &booking, false).await.unwrap();
    assert_eq!(rejected.status, 409, "the slot is full in r2: {}", rejected.body);
    assert_eq!(rejected.id(), committed.id(), "the same booking");
    up.set_replication("ok").await;
    let id = committed.id();
    for url in [&r1, &r2] {
        eventually("the booking to be committed in both regions", CONVERGE_TIMEOUT, || async {
            let answer: Value =
                reqwest::get(format!("{url}/api/cafe/reservations/{id}")).await.ok()?.json().await.ok()?;
            (answer["status"] == "committed").then_some(())
        })
        .await;
    }
    for region in 0..2 {
        let (reservations, commands) = up.ids_in_region(region).await;
        assert_eq!(reservations.get(&id), Some(&1), "region {}: the booking once", region + 1);
        assert_eq!(commands.get(&id), Some(&1), "region {}: recorded committed once", region + 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_in_one_region_wins_over_rejected_in_the_other_sqlite() {
    committed_in_one_region_wins_over_rejected_in_the_other("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_in_one_region_wins_over_rejected_in_the_other_postgres() {
    committed_in_one_region_wins_over_rejected_in_the_other("postgres").await;
}
