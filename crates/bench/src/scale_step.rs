//! The scale scenario: what one node serves of a CPU-heavy read (closed loop, one node), then
//! `rananeeti up --nodes-per-region 1..6 --target-cpu 50` offered 1x of that, then 4x, then
//! nothing: r1's node count each second (topology.json), how soon it stops rising, p99 by second.

use crate::deployment::{Deployment, Shape};
use crate::machine::busy;
use crate::machine::{self, Machine};
use crate::mixed_load::Clients;
use crate::open_loop::OpenLoopPlan;
use crate::report::{bullets, ms, rate};
use crate::steady_load::{self, Mix, SteadyRun, SEARCH_PATH};
use anyhow::{bail, Context};
use rananeeti_platform::StoreKind;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Clients of the load, each from its own loopback address.
const CLIENTS: usize = 32;
/// Workers of the closed loop that finds what one node serves.
const CLOSED_LOOP_WORKERS: usize = 8;
/// Requests in flight at most in the open loop; beyond it a due request is shed (counted).
const IN_FLIGHT_MAX: usize = 512;
/// The step: from 1x to this many times what one node serves.
const STEP_FACTOR: f64 = 4.0;
const NODES_MIN: u32 = 1;
const NODES_MAX: u32 = 6;
const TARGET_CPU_PERCENT: u32 = 50;
/// `--scale-sample-interval`, seconds (default 5).
const SAMPLE_INTERVAL_SECONDS: u64 = 1;
/// `--scale-down-window`, seconds (default 300).
const SCALE_DOWN_WINDOW_SECONDS: u64 = 10;
/// How often topology.json is read for r1's node count.
const TOPOLOGY_SAMPLE: Duration = Duration::from_secs(1);
/// p99 counts as back once every later second's p99 is under this many times the 1x phase's.
const P99_BOUND_FACTOR: f64 = 2.0;
/// ... and never under this, so a very quiet 1x does not set an unreachable bound.
const P99_BOUND_FLOOR_MS: f64 = 20.0;

#[derive(Clone, Copy, Debug)]
pub struct ScalePlan {
    /// The closed loop on one node: warm-up, then measured.
    pub one_node_warmup: Duration,
    pub one_node: Duration,
    /// Open loop at 1x, then at `STEP_FACTOR`x, then no load while the count is watched.
    pub at_one: Duration,
    pub at_step: Duration,
    pub idle: Duration,
}

/// One phase of the open loop, its time from the first phase's start.
pub struct Phase {
    pub label: String,
    pub rate_per_second: f64,
    pub starts_at: Duration,
    pub run: SteadyRun,
    pub machine_busy: Option<f64>,
}

pub struct ScaleReport {
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub started_at: String,
    pub code_version: Option<String>,
    pub took_seconds: f64,
    pub busy_outside_run: [Option<f64>; 2],
    /// What one node served flat out (ok answers per second), and its p99 then.
    pub one_node_per_second: f64,
    pub one_node_p99_ms: Option<f64>,
    pub one_node_busy: Option<f64>,
    pub phases: Vec<Phase>,
    /// (seconds since the first phase began, r1's node count), one a second; None: unreadable.
    pub node_counts: Vec<(f64, Option<usize>)>,
    pub idle_starts_at: Duration,
    pub notes: Vec<String>,
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

fn autoscaled_shape() -> Shape {
    Shape {
        regions: 1,
        nodes_per_region: format!("{NODES_MIN}..{NODES_MAX}"),
        slots_per_region: NODES_MAX,
        store: StoreKind::Sqlite,
        extra_args: [
            "--target-cpu".to_string(),
            TARGET_CPU_PERCENT.to_string(),
            "--scale-sample-interval".to_string(),
            SAMPLE_INTERVAL_SECONDS.to_string(),
            "--scale-down-window".to_string(),
            SCALE_DOWN_WINDOW_SECONDS.to_string(),
        ]
        .into(),
    }
}

/// The whole scenario, its report included; Ctrl-C stops every process it started.
pub async fn run_scenario(quick: bool, binary: PathBuf, work_dir: PathBuf) -> anyhow::Result<ScaleReport> {
    let started = Instant::now();
    let started_at = crate::now_rfc3339();
    let plan = if quick {
        ScalePlan {
            one_node_warmup: Duration::from_secs(1),
            one_node: Duration::from_secs(4),
            at_one: Duration::from_secs(10),
            at_step: Duration::from_secs(30),
            idle: Duration::from_secs(15),
        }
    } else {
        ScalePlan {
            one_node_warmup: Duration::from_secs(2),
            one_node: Duration::from_secs(8),
            at_one: Duration::from_secs(20),
            at_step: Duration::from_secs(60),
            idle: Duration::from_secs(30),
        }
    };
    let machine = machine::describe(&work_dir);
    progress(format!("{} cores, {}, {}", machine.cores, machine.cpu_model, machine.kernel));
    let busy_before = crate::machine_busy().await;
    let mut notes = Vec::new();
    // Dropping the run on Ctrl-C drops the deployment's guard: `up` gets SIGINT and is waited for.
    let mut report = tokio::select! {
        result = run(&plan, &binary, &work_dir, &mut notes) => result?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; `rananeeti up` was stopped"),
    };
    let busy_after = crate::machine_busy().await;
    let mut command = String::from("cargo run --release -p rananeeti-bench -- --scenario scale");
    if quick {
        command.push_str(" --quick");
    }
    report.machine = machine;
    report.command = command;
    report.mode = format!(
        "{}: one node (`up --regions 1 --nodes-per-region 1`) closed loop with {CLOSED_LOOP_WORKERS} workers \
         for {} s after {} s; then `rananeeti up {}` offered 1x for {} s, {STEP_FACTOR}x for {} s, nothing \
         for {} s (open loop, at most {IN_FLIGHT_MAX} in flight, over {CLIENTS} clients); binary {}",
        if quick { "quick" } else { "full" },
        plan.one_node.as_secs(),
        plan.one_node_warmup.as_secs(),
        autoscaled_shape().describe(),
        plan.at_one.as_secs(),
        plan.at_step.as_secs(),
        plan.idle.as_secs(),
        binary.display()
    );
    report.started_at = started_at;
    report.code_version = crate::code_version();
    report.took_seconds = started.elapsed().as_secs_f64();
    report.busy_outside_run = [busy_before, busy_after];
    report.notes = notes;
    Ok(report)
}

async fn run(plan: &ScalePlan, binary: &Path, dir: &Path, notes: &mut Vec<String>) -> anyhow::Result<ScaleReport> {
    let clients = Clients::new(CLIENTS)?;

    // 1x: what one node serves, flat out.
    let deployment = Deployment::start(binary, &dir.join("one-node"), 1, StoreKind::Sqlite).await?;
    progress(format!("one node: `rananeeti up` {} is up, gateway {}", deployment.pid(), deployment.gateway_url()));
    let gateway = deployment.gateway_url().to_string();
    let warm = steady_load::closed_loop(&clients, CLOSED_LOOP_WORKERS, &gateway, SEARCH_PATH, plan.one_node_warmup);
    let warm = warm.await;
    let jiffies = machine::cpu_jiffies();
    let mut one = steady_load::closed_loop(&clients, CLOSED_LOOP_WORKERS, &gateway, SEARCH_PATH, plan.one_node).await;
    let one_node_busy = busy_since(jiffies);
    let stopped = tokio::task::spawn_blocking(move || deployment.stop()).await?;
    stopped.context("stopping the one-node `rananeeti up`")?;
    if warm.errors + one.errors > 0 {
        notes.push(format!(
            "One node, closed loop: {} failed requests; first: {}",
            warm.errors + one.errors,
            one.first_error.as_deref().or(warm.first_error.as_deref()).unwrap_or("-")
        ));
    }
    let one_node_per_second = one.ok_per_second();
    let one_node_p99_ms = one.latency_percentile_ms(99.0);
    progress(format!(
        "one node serves {} GET {SEARCH_PATH} a second flat out (p99 {} ms)",
        rate(one_node_per_second),
        ms(one_node_p99_ms)
    ));
    anyhow::ensure!(one_node_per_second > 0.0, "one node served nothing; no rate to step from");

    let deployment = Deployment::start_shaped(binary, &dir.join("autoscaled"), &autoscaled_shape()).await?;
    progress(format!("autoscaled: `rananeeti up` {} is up, gateway {}", deployment.pid(), deployment.gateway_url()));
    let result = run_steps(plan, &deployment, &clients, one_node_per_second).await;
    let stopped = tokio::task::spawn_blocking(move || deployment.stop()).await?;
    let (phases, node_counts, idle_starts_at) = result?;
    stopped.context("stopping the autoscaled `rananeeti up`")?;
    progress("`rananeeti up` stopped");
    for phase in &phases {
        let window = phase.run.whole();
        if window.failed > 0 {
            notes.push(format!(
                "{}: {} failed requests; first: {}",
                phase.label,
                window.failed,
                window.first_failure.as_deref().unwrap_or("-")
            ));
        }
    }
    Ok(ScaleReport {
        machine: machine::describe(dir),
        command: String::new(),
        mode: String::new(),
        started_at: String::new(),
        code_version: None,
        took_seconds: 0.0,
        busy_outside_run: [None, None],
        one_node_per_second,
        one_node_p99_ms,
        one_node_busy,
        phases,
        node_counts,
        idle_starts_at,
        notes: Vec::new(),
    })
}

type NodeCounts = Vec<(f64, Option<usize>)>;

async fn run_steps(
    plan: &ScalePlan,
    deployment: &Deployment,
    clients: &Clients,
    one_node_per_second: f64,
) -> anyhow::Result<(Vec<Phase>, NodeCounts, Duration)> {
    let gateway = deployment.gateway_url();
    let began = Instant::now();
    let counts: Arc<Mutex<NodeCounts>> = Arc::default();
    let topology_path = deployment.topology_path();
    let sampler = {
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TOPOLOGY_SAMPLE);
            loop {
                ticker.tick().await;
                let count = r1_nodes(&topology_path);
                counts.lock().await.push((began.elapsed().as_secs_f64(), count));
            }
        })
    };
    let mut phases = Vec::new();
    let steps = [("1x".to_string(), 1.0, plan.at_one), (format!("{STEP_FACTOR}x"), STEP_FACTOR, plan.at_step)];
    for (label, factor, duration) in steps {
        let rate_per_second = one_node_per_second * factor;
        let starts_at = began.elapsed();
        progress(format!("{label}: {} requests/s for {} s", rate(rate_per_second), duration.as_secs()));
        let jiffies = machine::cpu_jiffies();
        let load = OpenLoopPlan { rate_per_second, duration, in_flight_max: IN_FLIGHT_MAX };
        let run = steady_load::run(clients, gateway, Mix::Search, load).await;
        let window = run.whole();
        progress(format!(
            "{label}: {} requests, {} failed, {} shed, p99 {} ms",
            window.requests,
            window.failed,
            run.offered.shed,
            ms(window.p99_ms)
        ));
        phases.push(Phase { label, rate_per_second, starts_at, run, machine_busy: busy_since(jiffies) });
    }
    let idle_starts_at = began.elapsed();
    progress(format!("no load for {} s", plan.idle.as_secs()));
    tokio::time::sleep(plan.idle).await;
    sampler.abort();
    let counts = counts.lock().await.clone();
    Ok((phases, counts, idle_starts_at))
}

/// r1's nodes as topology.json lists them now (None while it is unreadable, e.g. being rewritten).
fn r1_nodes(path: &Path) -> Option<usize> {
    let topology: rananeeti::topology::Topology = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    topology.regions.iter().find(|region| region.name == "r1").map(|region| region.nodes.len())
}

fn busy_since(before: Option<(u64, u64)>) -> Option<f64> {
    machine::busy_fraction(before?, machine::cpu_jiffies()?)
}

fn seconds(value: Option<f64>) -> String {
    value.map(|seconds| format!("{seconds:.0} s")).unwrap_or_else(|| "not within the phase".to_string())
}

/// How the numbers were made, printed with them so a saved report stands alone.
const METHOD: [&str; 5] = [
    "1x is measured first, in the same run: `rananeeti up --regions 1 --nodes-per-region 1` (SQLite), \
     8 workers sending `GET /api/books?q=e&limit=100` (a scan of the catalog that matches most books: the \
     CPU-heavy read) back to back through the gateway; 1x is its successful answers per second. That \
     deployment is stopped before the next starts.",
    "Then `rananeeti up --regions 1 --nodes-per-region 1..6 --target-cpu 50 --scale-sample-interval 1 \
     --scale-down-window 10` in a fresh data directory: the sample interval (default 5 s) and the \
     scale-down window (default 300 s) are shortened so the run fits in minutes; the scale-up window is \
     the default 0 (a node is added at the first sample that asks for it, one node per sample).",
    "Load: open loop (requests start on schedule whether or not earlier ones answered; beyond 512 in \
     flight a due request is shed and counted), only that read, each request on the next of 32 clients \
     bound to their own loopback addresses: 1x, then 4x (the step), then nothing while the count is \
     watched. A request is failed when its answer is not 2xx or it got none (10 s timeout).",
    "r1's node count is read from `topology.json` every second (the nodes it lists, a node being added \
     once it is ready and registered, a node being removed until it is stopped). \"Stops rising\": the \
     first sample at the highest count seen during the step. p99 is computed per second of sending; \
     \"back under the bound\" is the first second after which every second of the step has p99 under \
     the bound (twice the 1x phase's p99, at least 20 ms).",
    "Everything (gateway, nodes, load generator) shares the machine's cores over loopback: on a machine \
     with few cores, more nodes add processes, not cores, so what scaling can win here is bounded by the \
     cores, not by the node count.",
];

impl ScaleReport {
    fn step(&self) -> Option<&Phase> {
        self.phases.get(1)
    }

    /// The p99 bound of "back under the bound", in ms.
    fn p99_bound_ms(&self) -> Option<f64> {
        let at_one = self.phases.first()?.run.whole().p99_ms?;
        Some((at_one * P99_BOUND_FACTOR).max(P99_BOUND_FLOOR_MS))
    }

    /// Seconds from the step until the count first reached its highest value during the step.
    fn stopped_rising_after(&self) -> Option<(f64, usize)> {
        let step = self.step()?;
        let from = step.starts_at.as_secs_f64();
        let to = self.idle_starts_at.as_secs_f64();
        let during: Vec<(f64, usize)> = self
            .node_counts
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .filter_map(|(at, count)| Some((*at, (*count)?)))
            .collect();
        let highest = during.iter().map(|(_, count)| *count).max()?;
        let (at, _) = during.iter().find(|(_, count)| *count == highest)?;
        Some((at - from, highest))
    }

    /// p99 of each second of the step, by second since the step.
    fn step_p99_by_second(&self) -> Vec<Option<f64>> {
        let Some(step) = self.step() else { return Vec::new() };
        let seconds_total = step.run.samples.iter().map(|sample| sample.sent_at.as_secs()).max().unwrap_or(0);
        (0..=seconds_total)
            .map(|second| step.run.window(Duration::from_secs(second), Duration::from_secs(second + 1)).p99_ms)
            .collect()
    }

    /// Seconds from the step until p99 stays under the bound for the rest of the step.
    fn back_under_bound_after(&self, bound_ms: f64) -> Option<u64> {
        let by_second = self.step_p99_by_second();
        let over = by_second.iter().rposition(|p99| p99.is_none_or(|p99| p99 > bound_ms));
        match over {
            None => Some(0),
            Some(last) if last + 1 < by_second.len() => Some(last as u64 + 1),
            Some(_) => None,
        }
    }

    pub fn into_markdown(self) -> String {
        let mut out = String::new();
        crate::machine::RunHeader {
            title: "rananeeti scale benchmark: a load step against the autoscaler",
            machine: &self.machine,
            files: Some(""),
            busy_outside_run: self.busy_outside_run,
            code: self.code_version.clone().unwrap_or_else(|| "unknown".into()),
            command: &self.command,
            mode: Some(&self.mode),
            started: Some((&self.started_at, self.took_seconds)),
        }
        .write(&mut out);
        let _ = writeln!(
            out,
            "- 1x: one node served {} `GET {SEARCH_PATH}` a second flat out (p99 {} ms, machine {} busy)",
            rate(self.one_node_per_second),
            ms(self.one_node_p99_ms),
            busy(self.one_node_busy)
        );

        let _ = writeln!(out, "\n## The phases\n");
        let _ = writeln!(
            out,
            "| phase | offered req/s | requests | failed | shed | p50 ms | p99 ms | max ms | r1 nodes at its end | machine busy |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for phase in &self.phases {
            let window = phase.run.whole();
            let end = (phase.starts_at + phase.run.offered.elapsed).as_secs_f64();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                phase.label,
                rate(phase.rate_per_second),
                window.requests,
                window.failed,
                phase.run.offered.shed,
                ms(window.p50_ms),
                ms(window.p99_ms),
                ms(window.max_ms),
                self.count_at(end),
                busy(phase.machine_busy)
            );
        }
        let _ = writeln!(
            out,
            "| nothing (watching the count) | 0 | - | - | - | - | - | - | {} | - |",
            self.count_at(f64::MAX)
        );

        let bound = self.p99_bound_ms();
        let stopped = self.stopped_rising_after();
        let _ = writeln!(out, "\n## The step ({STEP_FACTOR}x)\n");
        let _ = writeln!(out, "| measure | value |");
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(
            out,
            "| r1 nodes before the step, highest during it | {}, {} |",
            self.step().map(|step| self.count_at(step.starts_at.as_secs_f64())).unwrap_or_default(),
            stopped.map(|(_, highest)| highest.to_string()).unwrap_or_else(|| "-".to_string())
        );
        let _ = writeln!(
            out,
            "| from the step until the node count stops rising | {} |",
            seconds(stopped.map(|(at, _)| at))
        );
        let _ = writeln!(
            out,
            "| from the step until p99 stays under {} ms | {} |",
            ms(bound),
            seconds(bound.and_then(|bound| self.back_under_bound_after(bound)).map(|at| at as f64))
        );
        if let (Some(step), Some((at, _))) = (self.step(), stopped) {
            let during = step.run.window(Duration::ZERO, Duration::from_secs_f64(at));
            let after = step.run.window(Duration::from_secs_f64(at), Duration::MAX);
            let _ = writeln!(
                out,
                "| p99 during the step (until the count stopped rising) / after | {} ms / {} ms |",
                ms(during.p99_ms),
                ms(after.p99_ms)
            );
            let _ = writeln!(out, "| failed during / after | {} / {} |", during.failed, after.failed);
        }
        let by_second: Vec<String> = self.step_p99_by_second().into_iter().map(ms).collect();
        let _ = writeln!(out, "\np99 (ms) of each second of the step: {}", by_second.join(", "));

        let _ = writeln!(out, "\n## r1's nodes over time (topology.json, each second)\n");
        let _ = writeln!(out, "| seconds since 1x began | r1 nodes | phase |");
        let _ = writeln!(out, "|---:|---:|---|");
        let mut last: Option<Option<usize>> = None;
        for (at, count) in &self.node_counts {
            if last == Some(*count) {
                continue;
            }
            last = Some(*count);
            let _ = writeln!(
                out,
                "| {at:.0} | {} | {} |",
                count.map(|count| count.to_string()).unwrap_or_else(|| "?".to_string()),
                self.phase_at(*at)
            );
        }
        let series: Vec<String> = self
            .node_counts
            .iter()
            .map(|(_, count)| count.map(|count| count.to_string()).unwrap_or_else(|| "?".to_string()))
            .collect();
        let _ = writeln!(out, "\nEvery sample, one a second: {}", series.join(" "));
        bullets(&mut out, "## Method", &METHOD);
        bullets(&mut out, "## Notes from this run", &self.notes);
        out
    }

    /// r1's count at the last sample taken at or before `at` seconds.
    fn count_at(&self, at: f64) -> String {
        self.node_counts
            .iter()
            .rev()
            .find(|(sampled, _)| *sampled <= at)
            .and_then(|(_, count)| *count)
            .map(|count| count.to_string())
            .unwrap_or_else(|| "?".to_string())
    }

    fn phase_at(&self, at: f64) -> String {
        if at >= self.idle_starts_at.as_secs_f64() {
            return "nothing".to_string();
        }
        self.phases
            .iter()
            .rev()
            .find(|phase| phase.starts_at.as_secs_f64() <= at)
            .map(|phase| phase.label.clone())
            .unwrap_or_default()
    }
}
