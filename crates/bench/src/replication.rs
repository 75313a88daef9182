//! The replication scenario: two regions of one `rananeeti node` each, replicating to each other,
//! reservations posted at a fixed rate split evenly over both, and the lag from each 201 to the
//! row being visible in the other region's database; beside it, PostgreSQL streaming replication
//! between two local clusters at the same rates (`streaming`).

use crate::baseline;
use crate::lag::{Arrivals, Expectations, Watcher};
use crate::load::Reservations;
use crate::machine;
use crate::machine::Machine;
use crate::node::{cpu_seconds, process_and_children_cpu_seconds, NodeProcess};
use crate::open_loop::{self, Offered, OpenLoopPlan};
use crate::report::{ms, rate};
use crate::streaming::{StreamingCell, StreamingPair};
use crate::tally::Tally;
use anyhow::Context;
use rananeeti::postgres::{free_loopback_port, PgCluster};
use rananeeti_platform::StoreKind;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::AnyPool;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes per second offered, in all, across both regions.
pub const RATES_PER_SECOND: [u32; 2] = [1_000, 5_000];
/// The target: lag p99 under this at the first rate.
pub const LAG_P99_TARGET_MS: f64 = 100.0;
/// The rate the target is stated at.
pub const LAG_TARGET_RATE_PER_SECOND: u32 = 1_000;
const REGIONS: [&str; 2] = ["r1", "r2"];
/// Requests in flight to one region at most (the baseline's primary gets twice as many): beyond
/// it the load generator sheds, and says how many.
const IN_FLIGHT_PER_REGION_MAX: usize = 128;
/// How long after the load stops the watchers still wait for writes to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one reservation request (the node answers within its 2 s budget).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The reservation table of the cafe, in each region's store.
const RESERVATIONS_TABLE: &str = "cafe_reservations";
/// The node's histogram of commit-to-apply delay (crates/node/src/replication.rs).
const DELAY_HISTOGRAM: &str = "rananeeti_replication_delay_seconds";
/// The node's counter of failed pulls or applies.
const PULL_ERRORS: &str = "rananeeti_replication_errors_total";

#[derive(Clone, Debug)]
pub struct ReplicationPlan {
    pub warmup: Duration,
    pub cell: Duration,
    pub stores: Vec<StoreKind>,
    pub node_rust_log: Option<String>,
}

/// One rate on one store: both regions' writes and where they arrived.
pub struct RegionsCell {
    pub rate_per_second: u32,
    /// Per region: what its load generator offered, and the answers.
    pub offered: [Offered; 2],
    pub answers: [Tally; 2],
    /// The writes of all regions as seen arriving in the other region.
    pub arrivals: Arrivals,
    /// The nodes' own delay histogram over the cell (commit HLC to apply), both directions.
    pub node_delay: Histogram,
    pub pull_errors: u64,
    /// CPU cores used while the load ran: both nodes, both PostgreSQL servers (none on SQLite:
    /// it runs inside the nodes), and this process (load + watchers).
    pub nodes_cores: Option<f64>,
    pub servers_cores: Option<f64>,
    pub bench_cores: Option<f64>,
    /// How busy the machine's CPUs were meanwhile, 0 to 1, whoever used them.
    pub machine_busy: Option<f64>,
}

/// Clients writing back to back to region r1 in the durability comparison.
pub const DURABILITY_CLIENTS: [usize; 3] = [1, 8, 32];
/// The durabilities compared (`replication.durability`).
pub const DURABILITIES: [&str; 2] = ["async", "region-sync"];

/// One durability at one number of clients: closed-loop writes to r1 for the cell's time.
pub struct DurabilityCell {
    pub durability: &'static str,
    pub clients: usize,
    /// 201 (committed: under region-sync, held by r2 too) as ok; 202 (pending) as other.
    pub answers: Tally,
}

pub struct StoreRun {
    pub store: &'static str,
    pub cells: Vec<RegionsCell>,
    /// Committed writes/s and latency under `async` and `region-sync`, closed loop.
    pub durability: Vec<DurabilityCell>,
    /// Reservations in each region's store at the end, and how many were acknowledged in all
    /// (201 or 202, warm-ups included): each region must hold every one.
    pub rows: [i64; 2],
    pub acknowledged: u64,
}

pub struct BaselineCell {
    pub rate_per_second: u32,
    pub cell: StreamingCell,
}

pub struct ReplicationReport {
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub started_at: String,
    pub code_version: Option<String>,
    pub took_seconds: f64,
    pub busy_outside_run: [Option<f64>; 2],
    pub stores: Vec<StoreRun>,
    pub baseline: Vec<BaselineCell>,
    pub notes: Vec<String>,
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

/// Every store of the plan, then the streaming baseline, in `dir`.
pub async fn run(
    plan: &ReplicationPlan,
    node_binary: &Path,
    dir: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Vec<StoreRun>, Vec<BaselineCell>)> {
    let mut stores = Vec::new();
    for kind in &plan.stores {
        let run = run_store(*kind, plan, node_binary, &dir.join(kind.as_str()), notes)
            .await
            .with_context(|| format!("two regions on {}", kind.as_str()))?;
        stores.push(run);
    }
    let baseline = run_baseline(plan, &dir.join("streaming"), notes).await.context("the streaming baseline")?;
    Ok((stores, baseline))
}

async fn run_baseline(
    plan: &ReplicationPlan,
    dir: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<BaselineCell>> {
    let pair = StreamingPair::start(dir).await?;
    progress("streaming baseline: primary and hot standby up");
    let in_flight_max = IN_FLIGHT_PER_REGION_MAX * REGIONS.len();
    let mut cells = Vec::new();
    for rate_per_second in RATES_PER_SECOND {
        let rate = f64::from(rate_per_second);
        let warmup = pair.run_cell(rate, plan.warmup, in_flight_max, ARRIVAL_TIMEOUT).await;
        note_missing(notes, &format!("streaming baseline warm-up at {rate_per_second}/s"), &warmup.arrivals);
        let mut cell = pair.run_cell(rate, plan.cell, in_flight_max, ARRIVAL_TIMEOUT).await;
        progress(format!(
            "streaming baseline {rate_per_second}/s: {:.0} commits/s, {} shed, {} errors; lag p50 {} ms, p99 {} ms, max {} ms, {} never arrived",
            cell.inserts.ok_per_second(),
            cell.offered.shed,
            cell.inserts.errors,
            ms(cell.arrivals.lag_percentile_ms(50.0)),
            ms(cell.arrivals.lag_percentile_ms(99.0)),
            ms(cell.arrivals.lag_percentile_ms(100.0)),
            cell.arrivals.missing.len()
        ));
        note_missing(notes, &format!("streaming baseline at {rate_per_second}/s"), &cell.arrivals);
        note_write_errors(notes, &format!("streaming baseline at {rate_per_second}/s"), &cell.inserts);
        note_poll_errors(notes, &format!("streaming baseline at {rate_per_second}/s"), &cell.arrivals);
        cells.push(BaselineCell { rate_per_second, cell });
    }
    pair.stop().await?;
    Ok(cells)
}

fn note_missing(notes: &mut Vec<String>, label: &str, arrivals: &Arrivals) {
    if !arrivals.missing.is_empty() {
        notes.push(format!(
            "{label}: {} acknowledged writes never became visible on the other side within {} s (first: {})",
            arrivals.missing.len(),
            ARRIVAL_TIMEOUT.as_secs(),
            arrivals.missing[0]
        ));
    }
}

fn note_write_errors(notes: &mut Vec<String>, label: &str, writes: &Tally) {
    if let Some(error) = &writes.first_error {
        notes.push(format!("{label}: {} failed writes; first: {error}", writes.errors));
    }
}

fn note_poll_errors(notes: &mut Vec<String>, label: &str, arrivals: &Arrivals) {
    if let Some(error) = &arrivals.first_poll_error {
        notes.push(format!("{label}: {} failed polls of the receiving database; first: {error}", arrivals.poll_errors));
    }
}

/// A region's node, its store, and a pool on that store for the watcher.
struct Region {
    node: NodeProcess,
    store_pool: AnyPool,
}

async fn run_store(
    kind: StoreKind,
    plan: &ReplicationPlan,
    node_binary: &Path,
    dir: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<StoreRun> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut clusters = Vec::new();
    let mut store_urls = Vec::new();
    // Per region, for PostgreSQL: the URL a node gets (no password) and its password file.
    let mut password_files: Vec<Option<(String, std::path::PathBuf)>> = Vec::new();
    for region in REGIONS {
        match kind {
            StoreKind::Sqlite => {
                store_urls.push(format!("sqlite://{}?mode=rwc", dir.join(region).join("store.db").display()));
                password_files.push(None);
            }
            StoreKind::Postgres => {
                let cluster_dir = dir.join(region).join("pg");
                let cluster = tokio::task::spawn_blocking(move || {
                    PgCluster::init_and_start(
                        &cluster_dir,
                        free_loopback_port().context("finding a free loopback port")?,
                    )
                })
                .await?
                .with_context(|| format!("starting PostgreSQL for region {region}"))?;
                // With its password, in this process; the node reads it from the file.
                store_urls.push(cluster.connect_url()?);
                password_files.push(Some((cluster.url(), cluster.password_file())));
                clusters.push(cluster);
            }
        }
    }
    let servers: Vec<u32> = clusters.iter().filter_map(PgCluster::pid).collect();
    let stores: Vec<RegionStore> =
        store_urls.into_iter().zip(password_files).map(|(url, for_node)| RegionStore { url, for_node }).collect();
    let mut result = run_regions(kind, plan, node_binary, dir, &stores, &servers, notes).await;
    if let Ok(run) = &mut result {
        match durability_cells(kind, plan, node_binary, dir, &stores, notes).await {
            Ok(cells) => run.durability = cells,
            Err(error) => result = Err(error.context("the durability comparison")),
        }
    }
    if !clusters.is_empty() {
        // pg_ctl stop blocks; keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || drop(clusters)).await?;
    }
    result
}

/// A region's store: the URL this process connects with (its password in it, for PostgreSQL) and,
/// for PostgreSQL, the URL its node gets and the password file it reads.
struct RegionStore {
    url: String,
    for_node: Option<(String, std::path::PathBuf)>,
}

/// Starts both regions' nodes over `stores` (in `dir`), with `more_config` in each node's
/// configuration file.
async fn start_regions(
    kind: StoreKind,
    plan: &ReplicationPlan,
    node_binary: &Path,
    dir: &Path,
    stores: &[RegionStore],
    more_config: &str,
) -> anyhow::Result<[Region; 2]> {
    let name = kind.as_str();
    let cluster_token_file = dir.join("cluster-token");
    std::fs::write(&cluster_token_file, format!("{:032x}", rand::random::<u128>()))
        .with_context(|| format!("writing {}", cluster_token_file.display()))?;
    // Each region's peer must know its address before it starts, as under `rananeeti up`.
    let ports = [free_loopback_port()?, free_loopback_port()?];
    let urls = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let mut regions = Vec::new();
    for (index, region) in REGIONS.into_iter().enumerate() {
        let other = 1 - index;
        let extra_args = vec![
            "--region".to_string(),
            region.to_string(),
            "--name".to_string(),
            format!("{region}-n1"),
            "--cluster-token-file".to_string(),
            cluster_token_file.display().to_string(),
            "--peer".to_string(),
            format!("{}={}", REGIONS[other], urls[other]),
            // As `up` wires a region of one node: its queue's copies go to the other region.
            "--queue-peer".to_string(),
            urls[other].clone(),
        ];
        let mut extra_args = extra_args;
        let node_url = match &stores[index].for_node {
            Some((url, file)) => {
                extra_args.extend(["--store-password-file".to_string(), file.display().to_string()]);
                url.clone()
            }
            None => stores[index].url.clone(),
        };
        let node = NodeProcess::start_configured(
            node_binary,
            &dir.join(region).join("node"),
            &node_url,
            plan.node_rust_log.as_deref(),
            &format!("127.0.0.1:{}", ports[index]),
            &extra_args,
            more_config,
        )
        .await
        .with_context(|| format!("starting the node of region {region}"))?;
        progress(format!("{name}: region {region} node {} up at {}", node.pid(), node.base_url()));
        let store_pool = baseline::pool(&stores[index].url)?;
        regions.push(Region { node, store_pool });
    }
    let regions: [Region; 2] = regions.try_into().map_err(|_| anyhow::anyhow!("two regions were started"))?;
    Ok(regions)
}

async fn run_regions(
    kind: StoreKind,
    plan: &ReplicationPlan,
    node_binary: &Path,
    dir: &Path,
    stores: &[RegionStore],
    servers: &[u32],
    notes: &mut Vec<String>,
) -> anyhow::Result<StoreRun> {
    let name = kind.as_str();
    let regions = start_regions(kind, plan, node_binary, dir, stores, "").await?;
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT_PER_REGION_MAX).timeout(REQUEST_TIMEOUT).build()?;
    let reservations = Arc::new(Reservations::new());
    let mut acknowledged = 0;
    let mut cells = Vec::new();
    for rate_per_second in RATES_PER_SECOND {
        let warmup = regions_cell(&regions, servers, &client, &reservations, rate_per_second, plan.warmup).await?;
        acknowledged += warmup.acknowledged();
        note_missing(notes, &format!("{name} warm-up at {rate_per_second}/s"), &warmup.arrivals);
        let mut cell = regions_cell(&regions, servers, &client, &reservations, rate_per_second, plan.cell).await?;
        acknowledged += cell.acknowledged();
        progress(format!(
            "{name} {rate_per_second}/s: 201/s {} + {}, {} shed, {} errors; lag p50 {} ms, p99 {} ms, max {} ms, {} never arrived",
            rate(cell.answers[0].ok_per_second()),
            rate(cell.answers[1].ok_per_second()),
            cell.offered[0].shed + cell.offered[1].shed,
            cell.answers[0].errors + cell.answers[1].errors,
            ms(cell.arrivals.lag_percentile_ms(50.0)),
            ms(cell.arrivals.lag_percentile_ms(99.0)),
            ms(cell.arrivals.lag_percentile_ms(100.0)),
            cell.arrivals.missing.len()
        ));
        note_missing(notes, &format!("{name} at {rate_per_second}/s"), &cell.arrivals);
        for (index, region) in REGIONS.into_iter().enumerate() {
            note_write_errors(notes, &format!("{name} at {rate_per_second}/s, region {region}"), &cell.answers[index]);
        }
        note_poll_errors(notes, &format!("{name} at {rate_per_second}/s"), &cell.arrivals);
        cells.push(cell);
    }
    let mut rows = [0; 2];
    for (index, region) in regions.iter().enumerate() {
        rows[index] = baseline::count_reservations(&region.store_pool).await?;
    }
    if rows.iter().any(|&count| count as u64 != acknowledged) {
        notes.push(format!(
            "{name}: at the end region r1 holds {} reservations and r2 {}, but {acknowledged} were acknowledged",
            rows[0], rows[1]
        ));
    }
    for (region, Region { node, store_pool }) in REGIONS.into_iter().zip(regions) {
        store_pool.close().await;
        node.stop().with_context(|| format!("stopping the node of region {region}"))?;
    }
    Ok(StoreRun { store: name, cells, durability: Vec::new(), rows, acknowledged })
}

impl RegionsCell {
    /// Writes the regions acknowledged (201 or 202).
    fn acknowledged(&self) -> u64 {
        self.answers.iter().map(|answers| answers.ok + answers.other.get("202").copied().unwrap_or(0)).sum()
    }
}

/// How one reservation request ended.
enum Answer {
    /// 201 or 202, whose id the other region's watcher now waits for.
    Acknowledged {
        status: StatusCode,
        latency: Duration,
    },
    Other {
        status: StatusCode,
        latency: Duration,
    },
    Failed(String),
}

/// `async` beside `region-sync` on the same stores: for each, a fresh pair of nodes and
/// closed-loop writers to r1 (each sends its next reservation when the last is answered), so the
/// figures are what a caller waits for a committed write, and how many a region commits.
async fn durability_cells(
    kind: StoreKind,
    plan: &ReplicationPlan,
    node_binary: &Path,
    dir: &Path,
    stores: &[RegionStore],
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<DurabilityCell>> {
    let name = kind.as_str();
    let mut cells = Vec::new();
    for durability in DURABILITIES {
        let pair_dir = dir.join(format!("durability-{durability}"));
        std::fs::create_dir_all(&pair_dir).with_context(|| format!("creating {}", pair_dir.display()))?;
        let config = format!("[replication]\ndurability = \"{durability}\"\n");
        let regions = start_regions(kind, plan, node_binary, &pair_dir, stores, &config).await?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(IN_FLIGHT_PER_REGION_MAX)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let reservations = Arc::new(Reservations::new());
        let url = regions[0].node.reservations_url();
        for clients in DURABILITY_CLIENTS {
            let warm = crate::load::Stop::After(plan.warmup);
            let _ = crate::load::run(&client, &url, clients, warm, StatusCode::CREATED, &reservations).await;
            let stop = crate::load::Stop::After(plan.cell);
            let mut answers = crate::load::run(&client, &url, clients, stop, StatusCode::CREATED, &reservations).await;
            let (p50, p99) = (answers.latency_percentile_ms(50.0), answers.latency_percentile_ms(99.0));
            progress(format!(
                "{name} {durability}, {clients} clients: {} committed/s, {} pending, {} errors; p50 {} ms, p99 {} ms",
                rate(answers.ok_per_second()),
                answers.other.values().sum::<u64>(),
                answers.errors,
                ms(p50),
                ms(p99),
            ));
            note_write_errors(notes, &format!("{name} {durability} with {clients} clients"), &answers);
            cells.push(DurabilityCell { durability, clients, answers });
        }
        for (region, Region { node, store_pool }) in REGIONS.into_iter().zip(regions) {
            store_pool.close().await;
            node.stop().with_context(|| format!("stopping the {durability} node of region {region}"))?;
        }
    }
    Ok(cells)
}

/// `rate_per_second` in all for `duration`, half to each region; each acknowledged write is
/// watched for in the other region's store.
async fn regions_cell(
    regions: &[Region; 2],
    servers: &[u32],
    client: &reqwest::Client,
    reservations: &Arc<Reservations>,
    rate_per_second: u32,
    duration: Duration,
) -> anyhow::Result<RegionsCell> {
    // Watcher i looks in the other region's store for region i's writes.
    let watchers = [0, 1].map(|index| Watcher::start(regions[1 - index].store_pool.clone(), RESERVATIONS_TABLE));
    let delay_before = node_delay(regions).await?;
    let pull_errors_before = pull_errors(regions).await?;
    let cpu_before = (nodes_cpu_seconds(regions), servers_cpu_seconds(servers), cpu_seconds("self"));
    let jiffies_before = machine::cpu_jiffies();
    let load = |index: usize| {
        let url = format!("{}/api/cafe/reservations", regions[index].node.base_url());
        let expectations = watchers[index].expectations();
        let plan = OpenLoopPlan {
            rate_per_second: f64::from(rate_per_second) / REGIONS.len() as f64,
            duration,
            in_flight_max: IN_FLIGHT_PER_REGION_MAX,
        };
        open_loop::run(plan, move |_| {
            reserve(client.clone(), url.clone(), reservations.next_body(), expectations.clone())
        })
    };
    let ((offered_r1, answers_r1), (offered_r2, answers_r2)) = tokio::join!(load(0), load(1));
    let cpu_after = (nodes_cpu_seconds(regions), servers_cpu_seconds(servers), cpu_seconds("self"));
    let machine_busy =
        jiffies_before.zip(machine::cpu_jiffies()).and_then(|(before, after)| machine::busy_fraction(before, after));
    let seconds = offered_r1.elapsed.max(offered_r2.elapsed).as_secs_f64().max(f64::EPSILON);
    let [watcher_r1, watcher_r2] = watchers;
    let (mut arrivals, arrivals_r2) =
        tokio::join!(watcher_r1.finish(ARRIVAL_TIMEOUT), watcher_r2.finish(ARRIVAL_TIMEOUT));
    arrivals.merge(arrivals_r2);
    let node_delay = node_delay(regions).await?.minus(&delay_before);
    let pull_errors = pull_errors(regions).await?.saturating_sub(pull_errors_before);
    let tally = |offered: Offered, results: Vec<Answer>| {
        let mut tally = Tally::default();
        for answer in results {
            match answer {
                Answer::Acknowledged { status, latency } if status == StatusCode::CREATED => tally.record_ok(latency),
                Answer::Acknowledged { status, latency } | Answer::Other { status, latency } => {
                    tally.record_other(status.as_u16().to_string(), latency)
                }
                Answer::Failed(error) => tally.record_error(error),
            }
        }
        tally.elapsed = offered.elapsed;
        tally
    };
    let cores = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / seconds);
    Ok(RegionsCell {
        rate_per_second,
        offered: [offered_r1, offered_r2],
        answers: [tally(offered_r1, answers_r1), tally(offered_r2, answers_r2)],
        arrivals,
        node_delay,
        pull_errors,
        nodes_cores: cores(cpu_before.0, cpu_after.0),
        servers_cores: cores(cpu_before.1, cpu_after.1),
        bench_cores: cores(cpu_before.2, cpu_after.2),
        machine_busy,
    })
}

/// CPU seconds used so far by both regions' nodes together.
fn nodes_cpu_seconds(regions: &[Region; 2]) -> Option<f64> {
    regions.iter().map(|region| cpu_seconds(&region.node.pid().to_string())).sum()
}

/// CPU seconds used so far by the regions' PostgreSQL servers; `None` when there are none.
fn servers_cpu_seconds(servers: &[u32]) -> Option<f64> {
    if servers.is_empty() {
        return None;
    }
    servers.iter().map(|&postmaster| process_and_children_cpu_seconds(postmaster)).sum()
}

/// Posts one reservation; an acknowledged one (201, or 202: queued) is handed to the watcher of
/// the other region, timed from the moment its answer was read.
async fn reserve(client: reqwest::Client, url: String, body: Value, expectations: Expectations) -> Answer {
    let sent = Instant::now();
    let response = match client.post(&url).json(&body).send().await {
        Ok(response) => response,
        Err(error) => return Answer::Failed(format!("request failed: {error}")),
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => return Answer::Failed(format!("reading a {status} answer failed: {error}")),
    };
    let answered = Instant::now();
    let latency = answered - sent;
    match status {
        StatusCode::CREATED | StatusCode::ACCEPTED => {
            let id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|answer| answer.get("id").and_then(Value::as_str).map(str::to_string));
            match id {
                Some(id) if !id.is_empty() => {
                    expectations.expect(id, answered, status == StatusCode::CREATED);
                    Answer::Acknowledged { status, latency }
                }
                _ => Answer::Failed(format!("a {status} answer without an id: {text}")),
            }
        }
        status if status.is_success() => Answer::Other { status, latency },
        status => Answer::Failed(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>())),
    }
}

/// A cumulative histogram: (upper bound in seconds, observations at or below it), by bound.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// The `_bucket` lines of `name` in Prometheus text, summed over every label but `le`.
    fn parse(text: &str, name: &str) -> Histogram {
        let prefix = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        for line in text.lines().filter(|line| line.starts_with(&prefix)) {
            let Some(bound) = line.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap_or(f64::NAN) };
            let Some(count) = line.rsplit(' ').next().and_then(|count| count.parse::<f64>().ok()) else { continue };
            if bound.is_nan() {
                continue;
            }
            match buckets.iter_mut().find(|(known, _)| *known == bound) {
                Some((_, total)) => *total += count as u64,
                None => buckets.push((bound, count as u64)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets }
    }

    fn add(&mut self, other: &Histogram) {
        for &(bound, count) in &other.buckets {
            match self.buckets.iter_mut().find(|(known, _)| *known == bound) {
                Some((_, total)) => *total += count,
                None => self.buckets.push((bound, count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// What was observed after `earlier` was read (same buckets).
    fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(bound, count)| {
                let before =
                    earlier.buckets.iter().find(|(known, _)| *known == bound).map(|(_, count)| *count).unwrap_or(0);
                (bound, count.saturating_sub(before))
            })
            .collect();
        Histogram { buckets }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map(|(_, count)| *count).unwrap_or(0)
    }

    /// The upper bound, in milliseconds, of the bucket holding the `percent` percentile.
    pub fn percentile_bound_ms(&self, percent: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((percent / 100.0) * count as f64).ceil().max(1.0) as u64;
        self.buckets.iter().find(|(_, cumulative)| *cumulative >= rank).map(|(bound, _)| bound * 1000.0)
    }
}

/// Both nodes' delay histograms, summed.
async fn node_delay(regions: &[Region; 2]) -> anyhow::Result<Histogram> {
    let mut histogram = Histogram::default();
    for region in regions {
        histogram.add(&Histogram::parse(&region.node.metrics_text().await?, DELAY_HISTOGRAM));
    }
    Ok(histogram)
}

/// Both nodes' failed pulls or applies so far.
async fn pull_errors(regions: &[Region; 2]) -> anyhow::Result<u64> {
    let mut total = 0;
    for region in regions {
        let text = region.node.metrics_text().await?;
        total += text
            .lines()
            .filter(|line| line.starts_with(PULL_ERRORS))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Ok(total)
}

/// How the numbers were made, printed with them so a saved report stands alone.
const METHOD: [&str; 7] = [
    "Two regions, r1 and r2, of one `rananeeti node` each, wired as `rananeeti up` wires them: `--region`, \
     `--peer` naming the other region's URL, one shared `--cluster-token-file`, `--queue-peer` the other node; \
     each region its own store (its own SQLite file, or its own local PostgreSQL cluster). Default configuration \
     except `[cafe] seats_per_slot = 1000000`; replication pulls the other region's outbox with a 1 s long-poll, \
     256 entries per pull.",
    "Load: one open-loop generator per region at half the offered rate, started on a fixed schedule whatever \
     the answers (1 ms ticks), at most 128 requests in flight per region; a request due beyond that is shed and \
     counted. Each request posts a distinct reservation (unique name and time slot) to \
     `POST /api/cafe/reservations`. Each cell runs after a warm-up at the same rate whose writes are waited for.",
    "Our lag: per region a watcher in the benchmark polls the *other* region's database directly every 5 ms \
     with `SELECT id FROM cafe_reservations WHERE id IN (...)` over the oldest 512 ids it still waits for; lag \
     = start of the first query that saw the row - the moment the 201 answer was read by the client (one \
     process, one monotonic clock). A lag is therefore an upper bound, late by up to one poll interval plus one \
     query. 202 answers (queued, not committed) are waited for too, but not timed. A write not visible 60 s after \
     the load stopped counts as never arrived.",
    "Throughput: 201 answers per second of the cell, per region; offered is what the schedule asked for.",
    "The node's own figure: `rananeeti_replication_delay_seconds` from both nodes' /metrics, read before and \
     after the cell; it measures the command's commit HLC (wall clock at its region) to its apply here, in \
     powers-of-two buckets from 1 ms, so it is given as the upper bound of the bucket holding p50 or p99.",
    "Baseline: PostgreSQL streaming replication between a primary (PgCluster: fsync, synchronous_commit on, \
     wal_level replica) and a hot standby made with `pg_basebackup -R -X stream`, both on loopback, asynchronous \
     (no synchronous_standby_names). All of the offered rate goes to the primary, one open-loop generator, at \
     most 256 in flight, each write BEGIN; INSERT of one reservation-shaped row; COMMIT through a pool with the \
     node's defaults (8 connections); lag = first poll of the standby that sees the row - the commit's return, \
     watched exactly as above.",
    "Durability: for `async` and then `region-sync` (`[replication] durability`), a fresh pair of nodes over \
     the same two stores; closed-loop writers to r1 only, 1, 8 and then 32 of them, each posting its next \
     reservation when its last is answered, one warm-up and one cell each (the cell and warm-up lengths above). \
     Committed/s counts 201 answers; a region-sync write no peer confirmed within the budget is answered 202 \
     (pending) and counted apart. The two durabilities run one after the other, not interleaved: compare them \
     only with the machine's busyness, printed above, in mind.",
];

impl ReplicationReport {
    pub fn into_markdown(mut self) -> String {
        let mut out = String::new();
        crate::machine::RunHeader {
            title: "rananeeti replication benchmark",
            machine: &self.machine,
            files: Some("SQLite, PostgreSQL clusters, node queues"),
            busy_outside_run: self.busy_outside_run,
            code: self.code_version.clone().unwrap_or_else(|| "unknown".into()),
            command: &self.command,
            mode: Some(&self.mode),
            started: Some((&self.started_at, self.took_seconds)),
        }
        .write(&mut out);
        out.push('\n');

        let _ = writeln!(out, "## Replication lag, two regions, beside PostgreSQL streaming replication\n");
        let _ = writeln!(
            out,
            "| offered writes/s (both regions) | store | our lag p50 ms | p99 ms | max ms | one region's writes: r1 201/s (offered) | baseline lag p50 ms | baseline p99 ms | p99 ratio ours / baseline |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for rate_per_second in RATES_PER_SECOND {
            let baseline = self.baseline.iter_mut().find(|cell| cell.rate_per_second == rate_per_second);
            let (baseline_p50, baseline_p99) = match baseline {
                Some(cell) => (cell.cell.arrivals.lag_percentile_ms(50.0), cell.cell.arrivals.lag_percentile_ms(99.0)),
                None => (None, None),
            };
            for store in &mut self.stores {
                let Some(cell) = store.cells.iter_mut().find(|cell| cell.rate_per_second == rate_per_second) else {
                    continue;
                };
                let p99 = cell.arrivals.lag_percentile_ms(99.0);
                let _ = writeln!(
                    out,
                    "| {rate_per_second} | {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
                    store.store,
                    ms(cell.arrivals.lag_percentile_ms(50.0)),
                    ms(p99),
                    ms(cell.arrivals.lag_percentile_ms(100.0)),
                    rate(cell.answers[0].ok_per_second()),
                    rate(f64::from(rate_per_second) / REGIONS.len() as f64),
                    ms(baseline_p50),
                    ms(baseline_p99),
                    match (p99, baseline_p99) {
                        (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.1}x", ours / theirs),
                        _ => "n/a".to_string(),
                    }
                );
            }
        }

        let _ = writeln!(out, "\n### Durability: region-sync beside async (closed loop, writes to r1)\n");
        let _ = writeln!(
            out,
            "| store | clients | async committed/s | p50 / p99 ms | region-sync committed/s | 202 pending | p50 / p99 ms | committed/s ratio region-sync / async | p99 ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for store in &mut self.stores {
            for clients in DURABILITY_CLIENTS {
                let mut figures = Vec::new();
                for durability in DURABILITIES {
                    let Some(cell) = store
                        .durability
                        .iter_mut()
                        .find(|cell| cell.durability == durability && cell.clients == clients)
                    else {
                        continue;
                    };
                    let (p50, p99) =
                        (cell.answers.latency_percentile_ms(50.0), cell.answers.latency_percentile_ms(99.0));
                    let pending: u64 = cell.answers.other.values().sum();
                    figures.push((cell.answers.ok_per_second(), pending, p50, p99));
                }
                let [(async_rate, _, async_p50, async_p99), (sync_rate, sync_pending, sync_p50, sync_p99)] =
                    figures[..]
                else {
                    continue;
                };
                let ratio = |ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
                    (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}x", ours / theirs),
                    _ => "n/a".to_string(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {clients} | {} | {} / {} | {} | {sync_pending} | {} / {} | {} | {} |",
                    store.store,
                    rate(async_rate),
                    ms(async_p50),
                    ms(async_p99),
                    rate(sync_rate),
                    ms(sync_p50),
                    ms(sync_p99),
                    ratio(Some(sync_rate), Some(async_rate)),
                    ratio(sync_p99, async_p99),
                );
            }
        }

        let _ = writeln!(out, "\n### Our regions in detail\n");
        let _ = writeln!(
            out,
            "| offered/s | store | 201/s r1 + r2 | 202 | shed | errors | request p50 / p99 ms (r1) | writes timed | never arrived | most awaited at once | node's delay histogram p50 / p99 ms | pull errors | CPU cores: nodes / PostgreSQL / bench | machine busy |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for store in &mut self.stores {
            for cell in &mut store.cells {
                let r1_latency =
                    (cell.answers[0].latency_percentile_ms(50.0), cell.answers[0].latency_percentile_ms(99.0));
                let pending: u64 =
                    cell.answers.iter().map(|answers| answers.other.get("202").copied().unwrap_or(0)).sum();
                let cores = |value: Option<f64>| value.map(|cores| format!("{cores:.2}")).unwrap_or("?".to_string());
                let bound = |value: Option<f64>| value.map(|bound| format!("≤ {bound:.0}")).unwrap_or("-".to_string());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} + {} | {pending} | {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} / {} / {} | {} |",
                    cell.rate_per_second,
                    store.store,
                    rate(cell.answers[0].ok_per_second()),
                    rate(cell.answers[1].ok_per_second()),
                    cell.offered[0].shed + cell.offered[1].shed,
                    cell.answers[0].errors + cell.answers[1].errors,
                    ms(r1_latency.0),
                    ms(r1_latency.1),
                    cell.arrivals.lags_us.len(),
                    cell.arrivals.missing.len(),
                    cell.arrivals.waiting_max,
                    bound(cell.node_delay.percentile_bound_ms(50.0)),
                    bound(cell.node_delay.percentile_bound_ms(99.0)),
                    cell.pull_errors,
                    cores(cell.nodes_cores),
                    cell.servers_cores.map(|cores| format!("{cores:.2}")).unwrap_or("-".to_string()),
                    cores(cell.bench_cores),
                    cell.machine_busy.map(|busy| format!("{:.0}%", busy * 100.0)).unwrap_or("?".to_string()),
                );
            }
        }
        let _ = writeln!(
            out,
            "\n| store | reservations in r1 / r2 at the end | acknowledged (201 + 202, warm-ups included) |"
        );
        let _ = writeln!(out, "|---|---:|---:|");
        for store in &self.stores {
            let verdict = if store.rows.iter().all(|&rows| rows as u64 == store.acknowledged) {
                "all there in both"
            } else {
                "MISMATCH"
            };
            let _ = writeln!(
                out,
                "| {} | {} / {} | {} ({verdict}) |",
                store.store, store.rows[0], store.rows[1], store.acknowledged
            );
        }

        let _ = writeln!(out, "\n### The streaming baseline in detail\n");
        let _ = writeln!(
            out,
            "| offered/s | commits/s | shed | errors | insert p50 / p99 ms | writes timed | never arrived | lag max ms | most awaited at once | CPU cores: PostgreSQL | machine busy |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for baseline in &mut self.baseline {
            let cell = &mut baseline.cell;
            let insert_latency = (cell.inserts.latency_percentile_ms(50.0), cell.inserts.latency_percentile_ms(99.0));
            let lag_max = cell.arrivals.lag_percentile_ms(100.0);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                baseline.rate_per_second,
                rate(cell.inserts.ok_per_second()),
                cell.offered.shed,
                cell.inserts.errors,
                ms(insert_latency.0),
                ms(insert_latency.1),
                cell.arrivals.lags_us.len(),
                cell.arrivals.missing.len(),
                ms(lag_max),
                cell.arrivals.waiting_max,
                cell.servers_cores.map(|cores| format!("{cores:.2}")).unwrap_or("?".to_string()),
                cell.machine_busy.map(|busy| format!("{:.0}%", busy * 100.0)).unwrap_or("?".to_string()),
            );
        }

        let _ = writeln!(out, "\n### Target\n");
        for store in &mut self.stores {
            let cell = store.cells.iter_mut().find(|cell| cell.rate_per_second == LAG_TARGET_RATE_PER_SECOND);
            match cell
                .and_then(|cell| cell.arrivals.lag_percentile_ms(99.0).map(|p99| (p99, cell.arrivals.missing.len())))
            {
                Some((p99, missing)) => {
                    let met = p99 < LAG_P99_TARGET_MS && missing == 0;
                    let _ = writeln!(
                        out,
                        "- {}: lag p99 at {LAG_TARGET_RATE_PER_SECOND} writes/s is {} ms (target under {LAG_P99_TARGET_MS:.0} ms, none lost): {}",
                        store.store,
                        ms(Some(p99)),
                        if met { "met" } else { "NOT met" }
                    );
                }
                None => {
                    let _ =
                        writeln!(out, "- {}: no lag measured at {LAG_TARGET_RATE_PER_SECOND} writes/s", store.store);
                }
            }
        }

        crate::report::bullets(&mut out, "### Method", &METHOD);
        crate::report::bullets(&mut out, "### Notes", &self.notes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE rananeeti_replication_delay_seconds histogram
rananeeti_replication_delay_seconds_sum{peer=\"r2\"} 0.5
rananeeti_replication_delay_seconds_count{peer=\"r2\"} 10
rananeeti_replication_delay_seconds_bucket{le=\"0.001\",peer=\"r2\"} 1
rananeeti_replication_delay_seconds_bucket{le=\"0.002\",peer=\"r2\"} 5
rananeeti_replication_delay_seconds_bucket{le=\"+Inf\",peer=\"r2\"} 10
rananeeti_replication_lag_entries{peer=\"r2\"} 0
";

    #[test]
    fn histogram_quantiles_are_bucket_bounds_of_the_difference() {
        let before = Histogram::parse(METRICS, DELAY_HISTOGRAM);
        assert_eq!(before.count(), 10);
        assert_eq!(before.percentile_bound_ms(50.0), Some(2.0));
        assert_eq!(before.percentile_bound_ms(99.0), Some(f64::INFINITY));
        let mut after = before.clone();
        after.add(&before);
        let during = after.minus(&before);
        assert_eq!(during.count(), 10);
        assert_eq!(during.percentile_bound_ms(10.0), Some(1.0));
        assert_eq!(Histogram::default().percentile_bound_ms(50.0), None);
    }
}
