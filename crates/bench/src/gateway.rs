//! The gateway scenario: one node, reached directly, through `rananeeti gateway` and through nginx,
//! under the same GET load at a fixed rate and at full speed; the latency each proxy adds, its
//! CPU per request and its memory, and the gateway beside nginx.

use crate::fixed_connections::{self, CellAnswers, Connections, Pace};
use crate::load::Reservations;
use crate::machine::busy;
use crate::machine::{self, Machine};
use crate::node::{cpu_seconds, NodeProcess};
use crate::proxies::{ProxyKind, ProxyProcess, NGINX_UPSTREAM_KEEPALIVE};
use crate::report::rate;
use anyhow::{bail, Context};
use reqwest::StatusCode;
use std::collections::HashSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The fixed rate of the open-loop cells, requests per second in all.
pub const FIXED_RATE_PER_SECOND: u32 = 2_000;
/// Kept-alive connections of the load generator, to every target.
pub const CONNECTIONS: usize = 32;
/// Worker threads of the gateway (`--workers`) and worker processes of nginx.
pub const PROXY_WORKERS: usize = 2;
/// Reservations posted before the cells, so a page of the list holds `LIST_LIMIT` of them.
const SEEDED_RESERVATIONS: u64 = 100;
/// Items per page of the list request.
const LIST_LIMIT: usize = 10;
/// Targets: the latency the gateway adds over going direct, at the fixed rate.
pub const ADDED_P50_TARGET_US: f64 = 60.0;
pub const ADDED_P99_TARGET_US: f64 = 150.0;
/// Target: the gateway's peak resident memory (VmHWM) under this many bytes (50 MB).
pub const GATEWAY_RSS_BYTES_MAX: u64 = 50_000_000;
/// Share of a fixed-rate cell's sends that may be late before the report says the rate slipped.
const LATE_SENDS_NOTE_FRACTION: f64 = 0.01;
/// Characters of a log line quoted in the notes.
const LOG_LINE_CHARS_MAX: usize = 300;

#[derive(Clone, Debug)]
pub struct GatewayPlan {
    /// Each target's warm-up, before the turns of a request and pace.
    pub warmup: Duration,
    /// One target's turn: the targets take turns until each has had its rounds.
    pub turn: Duration,
    /// Turns per target for GET /healthz.
    pub healthz_rounds: usize,
    /// Turns per target for the reservation list (fewer, to keep the run near two minutes).
    pub list_rounds: usize,
    pub node_rust_log: Option<String>,
    pub nginx_binary: PathBuf,
}

/// Where the load goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Direct,
    Proxy(ProxyKind),
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Direct, Target::Proxy(ProxyKind::Gateway), Target::Proxy(ProxyKind::Nginx)];

    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Proxy(ProxyKind::Gateway) => "our gateway",
            Target::Proxy(ProxyKind::Nginx) => "nginx",
        }
    }
}

/// What is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /healthz`: the node answers at once, so the proxy's own cost shows.
    Healthz,
    /// `GET /api/cafe/reservations?limit=10`: a read from the store, about 2 KB of JSON.
    List,
}

impl Request {
    pub const ALL: [Request; 2] = [Request::Healthz, Request::List];

    pub fn path(self) -> String {
        match self {
            Request::Healthz => "/healthz".to_string(),
            Request::List => format!("/api/cafe/reservations?limit={LIST_LIMIT}"),
        }
    }
}

/// The two ways of loading a target.
pub const PACES: [Pace; 2] = [Pace::RatePerSecond(FIXED_RATE_PER_SECOND), Pace::FullSpeed];

fn pace_label(pace: Pace) -> String {
    match pace {
        Pace::FullSpeed => "full speed".to_string(),
        Pace::RatePerSecond(rate) => format!("{rate}/s fixed"),
    }
}

/// One target under one request and pace: the sum of its turns.
pub struct TargetCell {
    pub request: Request,
    pub pace: Pace,
    pub target: Target,
    pub answers: CellAnswers,
    /// p50, p99 and p99.9 of the answers' latency, in microseconds, once all turns are in.
    pub percentiles_us: [Option<f64>; 3],
    /// CPU seconds used during the turns by the proxy (nginx: master and workers), the node and
    /// this process (the load generator).
    pub proxy_cpu_seconds: Option<f64>,
    pub node_cpu_seconds: Option<f64>,
    pub bench_cpu_seconds: Option<f64>,
    /// Jiffies the machine's CPUs were busy, and in all, during the turns, whoever used them.
    pub jiffies: Option<(u64, u64)>,
    /// Most TCP connections seen open to the node at the end of a turn from the proxy's
    /// processes (direct: from the load generator).
    pub node_connections_max: Option<usize>,
}

/// What one turn of one target measured.
struct Turn {
    answers: CellAnswers,
    proxy_cpu_seconds: Option<f64>,
    node_cpu_seconds: Option<f64>,
    bench_cpu_seconds: Option<f64>,
    jiffies: Option<(u64, u64)>,
    node_connections: Option<usize>,
}

const PERCENTILES: [f64; 3] = [50.0, 99.0, 99.9];

impl TargetCell {
    fn new(request: Request, pace: Pace, target: Target) -> TargetCell {
        TargetCell {
            request,
            pace,
            target,
            answers: CellAnswers::default(),
            percentiles_us: [None; 3],
            proxy_cpu_seconds: Some(0.0),
            node_cpu_seconds: Some(0.0),
            bench_cpu_seconds: Some(0.0),
            jiffies: Some((0, 0)),
            node_connections_max: None,
        }
    }

    /// Adds a turn; a figure missing from any turn is missing from the cell.
    fn add_turn(&mut self, turn: Turn) {
        let add = |sum: Option<f64>, value: Option<f64>| Some(sum? + value?);
        self.answers.merge(turn.answers);
        self.proxy_cpu_seconds = add(self.proxy_cpu_seconds, turn.proxy_cpu_seconds);
        self.node_cpu_seconds = add(self.node_cpu_seconds, turn.node_cpu_seconds);
        self.bench_cpu_seconds = add(self.bench_cpu_seconds, turn.bench_cpu_seconds);
        self.jiffies = self.jiffies.zip(turn.jiffies).map(|(sum, value)| (sum.0 + value.0, sum.1 + value.1));
        self.node_connections_max = self.node_connections_max.max(turn.node_connections);
    }

    fn requests_per_second(&self) -> f64 {
        self.answers.tally.ok_per_second()
    }

    /// CPU microseconds per request sent.
    fn per_request_us(&self, seconds: Option<f64>) -> Option<f64> {
        (self.answers.requests > 0).then_some(seconds? * 1e6 / self.answers.requests as f64)
    }

    /// How busy the machine was during the turns, 0 to 1.
    fn machine_busy(&self) -> Option<f64> {
        self.jiffies.and_then(|(busy, total)| (total > 0).then(|| busy as f64 / total as f64))
    }
}

/// A proxy's memory at the end of the run, summed over its processes.
pub struct ProxyMemory {
    pub kind: ProxyKind,
    pub processes: usize,
    /// VmHWM: the kernel's peak resident set, per process, summed.
    pub peak_kib: Option<u64>,
    pub rss_at_end_kib: Option<u64>,
}

pub struct GatewayReport {
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub nginx_version: String,
    pub started_at: String,
    pub code_version: Option<String>,
    pub took_seconds: f64,
    pub busy_outside_run: [Option<f64>; 2],
    pub cells: Vec<TargetCell>,
    pub memory: Vec<ProxyMemory>,
    /// The gateway's own counters at the end (refusals, retries, ejections, non-2xx responses).
    pub gateway_counters: Vec<String>,
    pub notes: Vec<String>,
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

/// `nginx -v`, e.g. "nginx/1.22.1" (it prints to stderr).
pub fn nginx_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stderr).trim().trim_start_matches("nginx version: ").to_string())
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Starts the node, the gateway and nginx in `dir`, runs every cell, stops them all.
pub async fn run(
    plan: &GatewayPlan,
    node_binary: &Path,
    dir: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Vec<TargetCell>, Vec<ProxyMemory>, Vec<String>)> {
    let node_dir = dir.join("node");
    let store_url = format!("sqlite://{}?mode=rwc", node_dir.join("store.db").display());
    let node_args = ["--region", "r1", "--name", "r1-n1"].map(str::to_string);
    let node = NodeProcess::start_with(
        node_binary,
        &node_dir,
        &store_url,
        plan.node_rust_log.as_deref(),
        "127.0.0.1:0",
        &node_args,
    )
    .await
    .context("starting the node")?;
    progress(format!("node {} up at {}", node.pid(), node.base_url()));
    let node_port = node
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse::<u16>().ok())
        .context("the node's URL ends with its port")?;
    seed_reservations(&node).await?;
    let gateway = ProxyProcess::start_gateway(node_binary, &dir.join("gateway"), node.base_url(), PROXY_WORKERS)
        .await
        .context("starting the gateway")?;
    progress(format!("gateway up at {}", gateway.base_url()));
    let nginx = ProxyProcess::start_nginx(&plan.nginx_binary, &dir.join("nginx"), node.base_url(), PROXY_WORKERS)
        .await
        .context("starting nginx")?;
    progress(format!("nginx up at {} ({} processes)", nginx.base_url(), nginx.process_count()));

    let proxy = |target: Target| match target {
        Target::Direct => None,
        Target::Proxy(ProxyKind::Gateway) => Some(&gateway),
        Target::Proxy(ProxyKind::Nginx) => Some(&nginx),
    };
    let base_url = |target: Target| proxy(target).map(ProxyProcess::base_url).unwrap_or(node.base_url()).to_string();
    // The processes whose connections to the node count: the proxy's, or this one's when direct.
    let clients_of_node = |target: Target| proxy(target).map(ProxyProcess::pids).unwrap_or(vec![std::process::id()]);
    let connections = Target::ALL.map(|_| Connections::new(CONNECTIONS));
    let connections = connections.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let mut cells = Vec::new();
    for request in Request::ALL {
        let rounds = match request {
            Request::Healthz => plan.healthz_rounds,
            Request::List => plan.list_rounds,
        };
        for pace in PACES {
            let mut turns = Target::ALL.map(|target| TargetCell::new(request, pace, target));
            for (target, connections) in Target::ALL.into_iter().zip(&connections) {
                let url = format!("{}{}", base_url(target), request.path());
                let warmup = fixed_connections::run(connections, &url, pace, plan.warmup).await;
                note_errors(notes, &format!("{} warm-up", describe(request, pace, target)), &warmup);
            }
            // The targets take turns, each round starting with the next one, so that other work
            // on the machine, which comes and goes within seconds, falls on all three alike.
            for round in 0..rounds {
                for turn in 0..Target::ALL.len() {
                    let index = (round + turn) % Target::ALL.len();
                    let target = Target::ALL[index];
                    let url = format!("{}{}", base_url(target), request.path());
                    let cpu_before = (
                        proxy(target).and_then(ProxyProcess::cpu_seconds),
                        cpu_seconds(&node.pid().to_string()),
                        cpu_seconds("self"),
                    );
                    let jiffies_before = machine::cpu_jiffies();
                    let answers = fixed_connections::run(&connections[index], &url, pace, plan.turn).await;
                    let node_connections = connections_to_port(&clients_of_node(target), node_port);
                    let cpu_after = (
                        proxy(target).and_then(ProxyProcess::cpu_seconds),
                        cpu_seconds(&node.pid().to_string()),
                        cpu_seconds("self"),
                    );
                    let jiffies = jiffies_before
                        .zip(machine::cpu_jiffies())
                        .map(|(before, after)| (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1)));
                    let used = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
                    turns[index].add_turn(Turn {
                        answers,
                        proxy_cpu_seconds: used(cpu_before.0, cpu_after.0),
                        node_cpu_seconds: used(cpu_before.1, cpu_after.1),
                        bench_cpu_seconds: used(cpu_before.2, cpu_after.2),
                        jiffies,
                        node_connections,
                    });
                }
            }
            for mut cell in turns {
                cell.percentiles_us = PERCENTILES.map(|percent| {
                    cell.answers.tally.latency_percentile_ms(percent).map(|latency_ms| latency_ms * 1000.0)
                });
                let label = describe(request, pace, cell.target);
                progress(format!(
                    "{label}: {}/s, p50 {} µs, p99 {} µs, p99.9 {} µs, errors {}, late sends {}",
                    rate(cell.requests_per_second()),
                    micros(cell.percentiles_us[0]),
                    micros(cell.percentiles_us[1]),
                    micros(cell.percentiles_us[2]),
                    cell.answers.tally.errors,
                    cell.answers.late_sends
                ));
                note_errors(notes, &label, &cell.answers);
                if let Pace::RatePerSecond(_) = pace {
                    let late = cell.answers.late_sends as f64 / cell.answers.requests.max(1) as f64;
                    if late > LATE_SENDS_NOTE_FRACTION {
                        notes.push(format!(
                            "{label}: {} of {} sends were more than {} ms behind schedule: the fixed rate slipped",
                            cell.answers.late_sends,
                            cell.answers.requests,
                            fixed_connections::LATE_SEND.as_millis()
                        ));
                    }
                }
                cells.push(cell);
            }
        }
    }

    let memory = Vec::from([&gateway, &nginx].map(|proxy| ProxyMemory {
        kind: proxy.kind,
        processes: proxy.process_count(),
        peak_kib: proxy.status_kib("VmHWM:"),
        rss_at_end_kib: proxy.status_kib("VmRSS:"),
    }));
    let gateway_counters = gateway_counters(gateway.base_url()).await.unwrap_or_else(|error| {
        notes.push(format!("the gateway's /metrics could not be read: {error:#}"));
        Vec::new()
    });
    note_log_lines(notes, "the gateway's log", gateway.log_file(), &["\"WARN\"", "\"ERROR\""]);
    gateway.stop().context("stopping the gateway")?;
    note_log_lines(notes, "nginx's error log", nginx.log_file(), &["[error]", "[crit]", "[alert]", "[emerg]"]);
    nginx.stop().context("stopping nginx")?;
    node.stop().context("stopping the node")?;
    Ok((cells, memory, gateway_counters))
}

/// Established TCP connections (IPv4) from any of `pids` to `port`: the sockets among their
/// open files, matched by inode against /proc/net/tcp.
fn connections_to_port(pids: &[u32], port: u16) -> Option<usize> {
    /// The `st` column's value for ESTABLISHED.
    const ESTABLISHED: &str = "01";
    let mut inodes = HashSet::new();
    for pid in pids {
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let inode = target.to_str().and_then(|target| target.strip_prefix("socket:[")?.strip_suffix(']'));
            if let Some(inode) = inode {
                inodes.insert(inode.to_string());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!(":{port:04X}");
    Some(
        table
            .lines()
            .skip(1)
            .filter(|line| {
                // sl, local_address, rem_address, st, tx:rx queues, tr:when, retrnsmt, uid, timeout, inode
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 9 && fields[2].ends_with(&port) && fields[3] == ESTABLISHED && inodes.contains(fields[9])
            })
            .count(),
    )
}

fn describe(request: Request, pace: Pace, target: Target) -> String {
    format!("GET {} {} {}", request.path(), pace_label(pace), target.label())
}

/// Posts `SEEDED_RESERVATIONS` to the node, so the list request reads a full page.
async fn seed_reservations(node: &NodeProcess) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let reservations = Arc::new(Reservations::new());
    for _ in 0..SEEDED_RESERVATIONS {
        let response = client
            .post(node.reservations_url())
            .json(&reservations.next_body())
            .send()
            .await
            .context("seeding a reservation")?;
        let status = response.status();
        if status != StatusCode::CREATED {
            bail!("seeding a reservation: the node answered {status}: {}", response.text().await.unwrap_or_default());
        }
    }
    Ok(())
}

fn note_errors(notes: &mut Vec<String>, label: &str, answers: &CellAnswers) {
    let tally = &answers.tally;
    if tally.errors == 0 && tally.other.is_empty() {
        return;
    }
    let statuses: Vec<String> = answers.statuses.iter().map(|(status, count)| format!("{status}: {count}")).collect();
    notes.push(format!(
        "{label}: {} errors (non-2xx by status: {}), other 2xx: {}; first error: {}",
        tally.errors,
        if statuses.is_empty() { "none".to_string() } else { statuses.join(", ") },
        tally.other_summary(),
        tally.first_error.as_deref().unwrap_or("-")
    ));
}

/// Counts the lines of `file` holding any of `markers`, and quotes the first.
fn note_log_lines(notes: &mut Vec<String>, label: &str, file: &Path, markers: &[&str]) {
    let Ok(text) = std::fs::read_to_string(file) else {
        notes.push(format!("{label} ({}) could not be read", file.display()));
        return;
    };
    let lines: Vec<&str> = text.lines().filter(|line| markers.iter().any(|marker| line.contains(marker))).collect();
    if let Some(first) = lines.first() {
        notes.push(format!(
            "{label}: {} warning or error lines; the first: `{}`",
            lines.len(),
            first.chars().take(LOG_LINE_CHARS_MAX).collect::<String>()
        ));
    }
}

/// The gateway's counters that say something went other than straight through: refusals,
/// retries, ejections, health changes, responses other than 2xx; those above zero.
async fn gateway_counters(base_url: &str) -> anyhow::Result<Vec<String>> {
    const WATCHED: [&str; 4] = [
        "rananeeti_gateway_refused_total",
        "rananeeti_gateway_retries_total",
        "rananeeti_gateway_ejections_total",
        "rananeeti_gateway_health_changes_total",
    ];
    let text =
        reqwest::Client::new().get(format!("{base_url}/metrics")).send().await?.error_for_status()?.text().await?;
    Ok(text
        .lines()
        .filter(|line| {
            let watched = WATCHED.iter().any(|name| line.starts_with(name))
                || (line.starts_with("rananeeti_gateway_responses_total") && !line.contains("class=\"2xx\""));
            let value = line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
            watched && value > 0.0
        })
        .map(str::to_string)
        .collect())
}

/// How the numbers were made, printed with them so a saved report stands alone.
const METHOD: [&str; 7] = [
    "Backend: one `rananeeti node` (region r1, node r1-n1) on SQLite, default configuration except \
     `[cafe] seats_per_slot`, logging JSON at info to a file; 100 reservations are posted to it first. \
     Every target is this node: direct, through the gateway, through nginx; all three run for the whole run.",
    "Our gateway: `rananeeti gateway --config FILE --workers 2`, one region of the one node, its default \
     configuration (health checks of /readyz every 100 ms, retries, in-flight limit) except the per-IP rate \
     limit, raised to 1,000,000/s (the load comes from one address). It logs JSON at info to a file.",
    "nginx: the Debian package, `nginx -c CONF -p DIR -e DIR/error.log -g 'daemon off;'` as a child process: \
     `worker_processes 2`, `upstream { keepalive 64; keepalive_requests 1000000; }`, `proxy_http_version 1.1`, \
     `proxy_set_header Connection \"\"`, `keepalive_requests 1000000` towards clients (its default of 1,000 \
     would close the load generator's connections, which the gateway does not), `access_log off` (the \
     gateway logs no line per request either), listening on 127.0.0.1; run as root, `user root`.",
    "Load: the same generator for every target, 32 kept-alive connections, each a worker with its own \
     reqwest client (one connection), warmed up before each cell. Fixed rate: request k is due at \
     k / 2,000 s on connection k mod 32 (open loop; a connection still waiting sends late, counted when more \
     than 5 ms late). Full speed: each connection sends the next request when the previous answer is read \
     (closed loop). For each request and pace, each target is warmed up, then the three take turns (1 s each \
     in a full run, each round starting with the next target) until each has had its rounds, so that other \
     work on the machine falls on all three alike; a target's figures are over all its turns.",
    "Latency: from just before the request is sent to the end of its body, at the client, nearest rank; \
     throughput: 200 answers per second of the cell. Added latency: the proxy's percentile minus the \
     direct percentile of the same request and pace. At full speed latency is mostly queueing (32 \
     connections over the throughput), so the added-latency targets are judged at the fixed rate.",
    "CPU per request: utime + stime from /proc/PID/stat before and after the cell (10 ms ticks), of the \
     gateway process, or of nginx's master and its workers, divided by the requests sent in the cell. \
     Memory: VmHWM (the kernel's peak resident set) and VmRSS at the end, summed over nginx's processes.",
    "Everything runs on this machine over loopback: the node, both proxies and the load generator share its \
     cores, so a proxy that uses more CPU also takes it from the node and the load generator.",
];

fn micros(value: Option<f64>) -> String {
    value.map(|micros| format!("{micros:.0}")).unwrap_or_else(|| "-".to_string())
}

fn added_micros(value: Option<f64>) -> String {
    value.map(|micros| format!("{micros:+.0}")).unwrap_or_else(|| "-".to_string())
}

fn megabytes(kib: Option<u64>) -> String {
    kib.map(|kib| format!("{:.1} MB", (kib * 1024) as f64 / 1e6)).unwrap_or_else(|| "?".to_string())
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}x", ours / theirs),
        _ => "n/a".to_string(),
    }
}

fn met(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

impl GatewayReport {
    fn cell(&self, request: Request, pace: Pace, target: Target) -> Option<&TargetCell> {
        self.cells.iter().find(|cell| cell.request == request && cell.pace == pace && cell.target == target)
    }

    /// The proxy's percentiles minus the direct ones of the same request and pace.
    fn added_us(&self, cell: &TargetCell) -> [Option<f64>; 3] {
        let direct = self.cell(cell.request, cell.pace, Target::Direct);
        [0, 1, 2].map(|index| Some(cell.percentiles_us[index]? - direct?.percentiles_us[index]?))
    }

    pub fn into_markdown(self) -> String {
        let mut out = String::new();
        crate::machine::RunHeader {
            title: "rananeeti gateway benchmark: direct, our gateway, nginx",
            machine: &self.machine,
            files: None,
            busy_outside_run: self.busy_outside_run,
            code: format!("{}; nginx: {}", self.code_version.as_deref().unwrap_or("unknown"), self.nginx_version),
            command: &self.command,
            mode: Some(&self.mode),
            started: Some((&self.started_at, self.took_seconds)),
        }
        .write(&mut out);
        out.push('\n');

        for request in Request::ALL {
            let _ = writeln!(out, "## GET {}\n", request.path());
            let _ = writeln!(
                out,
                "| load | path | req/s | p50 µs | p99 µs | p99.9 µs | added p50 / p99 / p99.9 µs | proxy CPU µs/req | node CPU µs/req | errors |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
            for pace in PACES {
                for target in Target::ALL {
                    let Some(cell) = self.cell(request, pace, target) else { continue };
                    let added = match target {
                        Target::Direct => "-".to_string(),
                        Target::Proxy(_) => {
                            let added = self.added_us(cell);
                            format!(
                                "{} / {} / {}",
                                added_micros(added[0]),
                                added_micros(added[1]),
                                added_micros(added[2])
                            )
                        }
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        pace_label(pace),
                        target.label(),
                        rate(cell.requests_per_second()),
                        micros(cell.percentiles_us[0]),
                        micros(cell.percentiles_us[1]),
                        micros(cell.percentiles_us[2]),
                        added,
                        match target {
                            Target::Direct => "-".to_string(),
                            Target::Proxy(_) => micros(cell.per_request_us(cell.proxy_cpu_seconds)),
                        },
                        micros(cell.per_request_us(cell.node_cpu_seconds)),
                        cell.answers.tally.errors,
                    );
                }
            }
            let _ = writeln!(out);
        }

        let _ = writeln!(out, "## Our gateway beside nginx\n");
        let _ = writeln!(
            out,
            "| request | load | req/s ours / nginx | CPU per request ours / nginx | added p99 µs ours / nginx |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for request in Request::ALL {
            for pace in PACES {
                let gateway = self.cell(request, pace, Target::Proxy(ProxyKind::Gateway));
                let nginx = self.cell(request, pace, Target::Proxy(ProxyKind::Nginx));
                let (Some(gateway), Some(nginx)) = (gateway, nginx) else { continue };
                let _ = writeln!(
                    out,
                    "| GET {} | {} | {} | {} | {} / {} |",
                    request.path(),
                    pace_label(pace),
                    ratio(Some(gateway.requests_per_second()), Some(nginx.requests_per_second())),
                    ratio(
                        gateway.per_request_us(gateway.proxy_cpu_seconds),
                        nginx.per_request_us(nginx.proxy_cpu_seconds)
                    ),
                    added_micros(self.added_us(gateway)[1]),
                    added_micros(self.added_us(nginx)[1]),
                );
            }
        }

        let _ = writeln!(out, "\n## Proxy memory at the end of the run\n");
        let _ = writeln!(out, "| proxy | processes | peak RSS (VmHWM, summed) | RSS at the end |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for memory in &self.memory {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                Target::Proxy(memory.kind).label(),
                memory.processes,
                megabytes(memory.peak_kib),
                megabytes(memory.rss_at_end_kib)
            );
        }

        let _ = writeln!(out, "\n## Targets\n");
        let gateway = Target::Proxy(ProxyKind::Gateway);
        let nginx = Target::Proxy(ProxyKind::Nginx);
        for request in Request::ALL {
            if let (Some(ours), Some(theirs)) =
                (self.cell(request, Pace::FullSpeed, gateway), self.cell(request, Pace::FullSpeed, nginx))
            {
                let (ours, theirs) = (ours.requests_per_second(), theirs.requests_per_second());
                let _ = writeln!(
                    out,
                    "- GET {} at full speed: our gateway {} req/s, nginx {} req/s (target: at least nginx's): {}",
                    request.path(),
                    rate(ours),
                    rate(theirs),
                    met(ours >= theirs)
                );
            }
            let fixed = Pace::RatePerSecond(FIXED_RATE_PER_SECOND);
            if let Some(cell) = self.cell(request, fixed, gateway) {
                let added = self.added_us(cell);
                let within = |value: Option<f64>, target: f64| value.is_some_and(|value| value <= target);
                let _ = writeln!(
                    out,
                    "- GET {} at {FIXED_RATE_PER_SECOND}/s: the gateway adds {} µs at p50 (target ≤ {ADDED_P50_TARGET_US:.0}): {}; {} µs at p99 (target ≤ {ADDED_P99_TARGET_US:.0}): {}",
                    request.path(),
                    added_micros(added[0]),
                    met(within(added[0], ADDED_P50_TARGET_US)),
                    added_micros(added[1]),
                    met(within(added[1], ADDED_P99_TARGET_US)),
                );
            }
        }
        if let Some(memory) = self.memory.iter().find(|memory| memory.kind == ProxyKind::Gateway) {
            let _ = writeln!(
                out,
                "- Our gateway's peak memory: {} (target under {:.0} MB): {}",
                megabytes(memory.peak_kib),
                GATEWAY_RSS_BYTES_MAX as f64 / 1e6,
                met(memory.peak_kib.is_some_and(|kib| kib * 1024 < GATEWAY_RSS_BYTES_MAX))
            );
        }

        let _ = writeln!(out, "\n## Detail\n");
        let _ = writeln!(
            out,
            "| request | load | path | requests | late sends | CPU cores: proxy / node / load gen. | machine busy | connections to the node (most at a turn's end) |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|");
        for cell in &self.cells {
            let seconds = cell.answers.tally.elapsed.as_secs_f64().max(f64::EPSILON);
            let cores =
                |value: Option<f64>| value.map(|used| format!("{:.2}", used / seconds)).unwrap_or("?".to_string());
            let _ = writeln!(
                out,
                "| GET {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
                cell.request.path(),
                pace_label(cell.pace),
                cell.target.label(),
                cell.answers.requests,
                match cell.pace {
                    Pace::FullSpeed => "-".to_string(),
                    Pace::RatePerSecond(_) => cell.answers.late_sends.to_string(),
                },
                match cell.target {
                    Target::Direct => "-".to_string(),
                    Target::Proxy(_) => cores(cell.proxy_cpu_seconds),
                },
                cores(cell.node_cpu_seconds),
                cores(cell.bench_cpu_seconds),
                busy(cell.machine_busy()),
                cell.node_connections_max.map(|count| count.to_string()).unwrap_or_else(|| "?".to_string()),
            );
        }
        let counters = if self.gateway_counters.is_empty() {
            "none above zero".to_string()
        } else {
            self.gateway_counters.iter().map(|line| format!("`{line}`")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "\nThe gateway's refusals, retries, ejections, health changes and non-2xx responses at the end: {counters}."
        );

        let mut method: Vec<String> = METHOD.iter().map(|line| line.to_string()).collect();
        method.push(format!(
            "nginx keeps up to {NGINX_UPSTREAM_KEEPALIVE} idle connections to the node per worker; the gateway its default."
        ));
        crate::report::bullets(&mut out, "## Method", &method);
        crate::report::bullets(&mut out, "## Notes", &self.notes);
        out
    }
}
