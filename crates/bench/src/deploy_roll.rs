//! The deploy scenario: `rananeeti up` (2 regions x 2 nodes, SQLite) under a steady open-loop mix
//! of reads and bookings through the gateway, measured twice for the same time: with no deploy
//! (the baseline), then while `rananeeti deploy` rolls every node; what the roll adds to latency.

use crate::deployment::{Deployment, Shape};
use crate::machine::busy;
use crate::machine::{self, Machine};
use crate::mixed_load::Clients;
use crate::open_loop::OpenLoopPlan;
use crate::report::{bullets, ms};
use crate::steady_load::{self, Mix, SteadyRun, Window, BOOKING_PATH, READ_PATH};
use anyhow::{bail, Context};
use rananeeti_platform::StoreKind;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clients of the load, each from its own loopback address.
const CLIENTS: usize = 16;
/// Requests in flight at most; beyond it a due request is shed (counted).
const IN_FLIGHT_MAX: usize = 256;
/// Reads per booking in the mix.
const READS_PER_WRITE: u64 = 3;
/// A roll that takes longer than this is killed, and the run fails.
const ROLL_TIMEOUT: Duration = Duration::from_secs(180);
const REGIONS: u32 = 2;
const NODES_PER_REGION: u32 = 2;

#[derive(Clone, Copy, Debug)]
pub struct DeployPlan {
    pub rate_per_second: f64,
    pub warmup: Duration,
    /// Each of the two measured runs.
    pub measured: Duration,
}

/// One measured run.
pub struct Measured {
    pub run: SteadyRun,
    pub machine_busy: Option<f64>,
}

pub struct DeployReport {
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub started_at: String,
    pub code_version: Option<String>,
    pub took_seconds: f64,
    pub busy_outside_run: [Option<f64>; 2],
    pub baseline: Measured,
    pub deploying: Measured,
    /// From `rananeeti deploy` started to its exit 0.
    pub roll_seconds: f64,
    /// Nodes listed before the roll, and how many of them run under another pid after it.
    pub nodes_before: usize,
    pub nodes_replaced: usize,
    pub notes: Vec<String>,
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

/// The whole scenario, its report included; Ctrl-C stops every process it started.
pub async fn run_scenario(quick: bool, binary: PathBuf, work_dir: PathBuf) -> anyhow::Result<DeployReport> {
    let started = Instant::now();
    let started_at = crate::now_rfc3339();
    let plan = if quick {
        DeployPlan { rate_per_second: 100.0, warmup: Duration::from_secs(2), measured: Duration::from_secs(15) }
    } else {
        DeployPlan { rate_per_second: 200.0, warmup: Duration::from_secs(3), measured: Duration::from_secs(30) }
    };
    let machine = machine::describe(&work_dir);
    progress(format!("{} cores, {}, {}", machine.cores, machine.cpu_model, machine.kernel));
    let busy_before = crate::machine_busy().await;
    let mut notes = Vec::new();
    // Dropping the run on Ctrl-C drops the guards: `deploy` is killed, `up` gets SIGINT.
    let outcome = tokio::select! {
        result = run(&plan, &binary, &work_dir, &mut notes) => result?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; `rananeeti up` and `rananeeti deploy` were stopped"),
    };
    let busy_after = crate::machine_busy().await;
    let mut command = String::from("cargo run --release -p rananeeti-bench -- --scenario deploy");
    if quick {
        command.push_str(" --quick");
    }
    Ok(DeployReport {
        machine,
        command,
        mode: format!(
            "{}: {} requests/s offered (open loop, at most {IN_FLIGHT_MAX} in flight), {READS_PER_WRITE} of \
             `GET {READ_PATH}` to one `POST {BOOKING_PATH}`, over {CLIENTS} clients; {} s of warm-up, then {} s \
             without a deploy and {} s with one; `rananeeti up {}` from {}",
            if quick { "quick" } else { "full" },
            plan.rate_per_second,
            plan.warmup.as_secs(),
            plan.measured.as_secs(),
            plan.measured.as_secs(),
            shape().describe(),
            binary.display()
        ),
        started_at,
        code_version: crate::code_version(),
        took_seconds: started.elapsed().as_secs_f64(),
        busy_outside_run: [busy_before, busy_after],
        baseline: outcome.baseline,
        deploying: outcome.deploying,
        roll_seconds: outcome.roll_seconds,
        nodes_before: outcome.nodes_before,
        nodes_replaced: outcome.nodes_replaced,
        notes,
    })
}

fn shape() -> Shape {
    Shape {
        regions: REGIONS,
        nodes_per_region: NODES_PER_REGION.to_string(),
        slots_per_region: NODES_PER_REGION,
        store: StoreKind::Sqlite,
        extra_args: Vec::new(),
    }
}

struct Outcome {
    baseline: Measured,
    deploying: Measured,
    roll_seconds: f64,
    nodes_before: usize,
    nodes_replaced: usize,
}

async fn run(plan: &DeployPlan, binary: &Path, dir: &Path, notes: &mut Vec<String>) -> anyhow::Result<Outcome> {
    let deployment = Deployment::start_shaped(binary, dir, &shape()).await?;
    progress(format!("`rananeeti up` {} is up, gateway {}", deployment.pid(), deployment.gateway_url()));
    let result = measure(plan, binary, dir, &deployment, notes).await;
    // `up` stops its nodes; the wait blocks, so keep it off the runtime's workers.
    let stopped = tokio::task::spawn_blocking(move || deployment.stop()).await?;
    let outcome = result?;
    stopped.context("stopping `rananeeti up`")?;
    progress("`rananeeti up` stopped");
    Ok(outcome)
}

async fn measure(
    plan: &DeployPlan,
    binary: &Path,
    dir: &Path,
    deployment: &Deployment,
    notes: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let clients = Clients::new(CLIENTS)?;
    let gateway = deployment.gateway_url();
    let mix = Mix::ReadsAndBookings { reads_per_write: READS_PER_WRITE };
    let load =
        |duration| OpenLoopPlan { rate_per_second: plan.rate_per_second, duration, in_flight_max: IN_FLIGHT_MAX };
    let warm = steady_load::run(&clients, gateway, mix, load(plan.warmup)).await;
    note_failures(notes, "warm-up", &warm.whole());

    let jiffies = machine::cpu_jiffies();
    let run = steady_load::run(&clients, gateway, mix, load(plan.measured)).await;
    let baseline = Measured { run, machine_busy: busy_since(jiffies) };
    report_progress("no deploy", &baseline.run.whole());

    let pids_before = node_pids(deployment);
    let jiffies = machine::cpu_jiffies();
    let mut roll = Roll::start(binary, deployment.data_dir(), &dir.join("deploy.log"))?;
    let rolling = tokio::task::spawn_blocking(move || roll.wait().map(|status| (status, roll)));
    let run = steady_load::run(&clients, gateway, mix, load(plan.measured)).await;
    let deploying = Measured { run, machine_busy: busy_since(jiffies) };
    report_progress("while deploying", &deploying.run.whole());
    let (status, roll) = rolling.await??;
    let roll_seconds = roll.took.as_secs_f64();
    if !status.success() {
        bail!("`rananeeti deploy` exited with {status}{}", roll.log_tail());
    }
    progress(format!("the roll took {roll_seconds:.1} s"));
    if roll.took > plan.measured {
        notes.push(format!(
            "The roll ({roll_seconds:.1} s) outlasted the measured {} s: its last {:.1} s had no load.",
            plan.measured.as_secs(),
            roll_seconds - plan.measured.as_secs_f64()
        ));
    }
    let pids_after = node_pids(deployment);
    let nodes_replaced =
        pids_before.iter().filter(|(slot, pid)| pids_after.get(*slot).is_some_and(|after| after != *pid)).count();
    note_failures(notes, "without a deploy", &baseline.run.whole());
    note_failures(notes, "while deploying", &deploying.run.whole());
    for (label, measured) in [("without a deploy", &baseline), ("while deploying", &deploying)] {
        if measured.run.offered.shed > 0 {
            notes.push(format!(
                "{label}: {} requests shed ({IN_FLIGHT_MAX} were in flight when they came due)",
                measured.run.offered.shed
            ));
        }
    }
    Ok(Outcome { baseline, deploying, roll_seconds, nodes_before: pids_before.len(), nodes_replaced })
}

/// Each node slot's pid, by the slot's name (`r1-n1` also for its `r1-n1-genK` successor).
fn node_pids(deployment: &Deployment) -> BTreeMap<String, u32> {
    let Some(topology) = deployment.read_topology() else { return BTreeMap::new() };
    topology
        .regions
        .iter()
        .flat_map(|region| region.nodes.iter())
        .filter_map(|node| {
            let slot = node.name.split("-gen").next().unwrap_or(&node.name).to_string();
            Some((slot, node.pid?))
        })
        .collect()
}

fn busy_since(before: Option<(u64, u64)>) -> Option<f64> {
    machine::busy_fraction(before?, machine::cpu_jiffies()?)
}

fn report_progress(label: &str, window: &Window) {
    progress(format!(
        "{label}: {} requests, {} failed, p50 {} ms, p99 {} ms, max {} ms",
        window.requests,
        window.failed,
        ms(window.p50_ms),
        ms(window.p99_ms),
        ms(window.max_ms)
    ));
}

fn note_failures(notes: &mut Vec<String>, label: &str, window: &Window) {
    if window.failed > 0 {
        notes.push(format!(
            "{label}: {} failed requests; first: {}",
            window.failed,
            window.first_failure.as_deref().unwrap_or("-")
        ));
    }
}

/// A running `rananeeti deploy --data DIR`; killed when dropped before it exited.
struct Roll {
    child: Child,
    started: Instant,
    took: Duration,
    log_file: PathBuf,
}

impl Roll {
    fn start(binary: &Path, data: &Path, log_file: &Path) -> anyhow::Result<Roll> {
        let log = File::create(log_file).with_context(|| format!("creating {}", log_file.display()))?;
        let child = Command::new(binary)
            .arg("deploy")
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} deploy", binary.display()))?;
        progress(format!("`rananeeti deploy` {} started", child.id()));
        Ok(Roll { child, started: Instant::now(), took: Duration::ZERO, log_file: log_file.to_path_buf() })
    }

    /// Waits for the exit, at most `ROLL_TIMEOUT` (then kills it and fails).
    fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.took = self.started.elapsed();
                return Ok(status);
            }
            if self.started.elapsed() >= ROLL_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "`rananeeti deploy` did not finish within {} s; killed{}",
                    ROLL_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("\n{}:\n{}", self.log_file.display(), lines[lines.len().saturating_sub(20)..].join("\n"))
    }
}

impl Drop for Roll {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How the numbers were made, printed with them so a saved report stands alone.
const METHOD: [&str; 4] = [
    "The system as a user runs it: `rananeeti up --regions 2 --nodes-per-region 2` (SQLite, default \
     configuration) as a child process in a fresh data directory; every request goes through its gateway.",
    "Load: open loop (requests start on schedule whether or not earlier ones have answered, so a stall \
     shows as latency instead of slowing the load), 3 reads of `GET /api/books?limit=20` to 1 `POST \
     /api/cafe/reservations` (a new booking each time), each request on the next of 16 clients bound to \
     their own loopback addresses. A request is failed when its answer is not 2xx or it got none (10 s \
     timeout); 202 pending counts as answered. Latency from just before sending to the end of the body, \
     every request's, failed ones too; nearest rank.",
    "Method: a warm-up, then the same load for the same time twice in one run against the same deployment: \
     first with nothing else happening (the baseline), then with `rananeeti deploy --data DIR` started at \
     the load's first request; it rolls the four nodes one by one (successor started and ready, registered \
     at the gateway, old node drained, stopped). The roll time is from starting `deploy` to its exit 0.",
    "Everything (gateway, nodes, load generator, the roll's new nodes) shares the machine's cores over \
     loopback; the machine's busy share over each run is shown.",
];

fn ratio(ours: Option<f64>, baseline: Option<f64>) -> String {
    match (ours, baseline) {
        (Some(ours), Some(baseline)) if baseline > 0.0 => format!("{:.2}x", ours / baseline),
        _ => "-".to_string(),
    }
}

fn difference(ours: Option<f64>, baseline: Option<f64>) -> String {
    match (ours, baseline) {
        (Some(ours), Some(baseline)) => format!("{:+.1}", ours - baseline),
        _ => "-".to_string(),
    }
}

/// The max latency of the requests sent in each second of a run.
fn max_by_second(run: &SteadyRun) -> Vec<String> {
    let seconds_total = run.samples.iter().map(|sample| sample.sent_at.as_secs()).max().unwrap_or(0);
    (0..=seconds_total)
        .map(|second| ms(run.window(Duration::from_secs(second), Duration::from_secs(second + 1)).max_ms))
        .collect()
}

impl DeployReport {
    pub fn into_markdown(self) -> String {
        let mut out = String::new();
        crate::machine::RunHeader {
            title: "rananeeti deploy benchmark: a rolling deploy under steady load",
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
            "- The roll: {:.1} s for {} nodes, {} of them under a new pid afterwards",
            self.roll_seconds, self.nodes_before, self.nodes_replaced
        );

        let _ = writeln!(out, "\n## Latency through the gateway, without and with a deploy\n");
        let _ = writeln!(out, "| run | requests | failed | shed | p50 ms | p99 ms | max ms | machine busy |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let baseline = self.baseline.run.whole();
        let deploying = self.deploying.run.whole();
        // The roll is a few seconds of the run: its own seconds show what a whole run dilutes.
        let roll = Duration::from_secs_f64(self.roll_seconds);
        let rolling = self.deploying.run.window(Duration::ZERO, roll);
        let same_seconds = self.baseline.run.window(Duration::ZERO, roll);
        let rows = [
            (
                "no deploy (baseline)",
                &baseline,
                self.baseline.run.offered.shed.to_string(),
                busy(self.baseline.machine_busy),
            ),
            (
                "while `deploy` rolls every node",
                &deploying,
                self.deploying.run.offered.shed.to_string(),
                busy(self.deploying.machine_busy),
            ),
            ("baseline, its first seconds as long as the roll", &same_seconds, "-".to_string(), "-".to_string()),
            ("with deploy, only the seconds the roll ran", &rolling, "-".to_string(), "-".to_string()),
        ];
        for (label, window, shed, machine_busy) in rows {
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {shed} | {} | {} | {} | {machine_busy} |",
                window.requests,
                window.failed,
                ms(window.p50_ms),
                ms(window.p99_ms),
                ms(window.max_ms),
            );
        }
        let _ = writeln!(out, "\n| added by the deploy | p50 | p99 | max |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let roll_label = format!("the roll's {0:.1} s against the baseline's first {0:.1} s", self.roll_seconds);
        let pairs = [("whole runs", &deploying, &baseline), (roll_label.as_str(), &rolling, &same_seconds)];
        for (label, ours, base) in pairs {
            let _ = writeln!(
                out,
                "| {label}: ms (with deploy minus baseline) | {} | {} | {} |",
                difference(ours.p50_ms, base.p50_ms),
                difference(ours.p99_ms, base.p99_ms),
                difference(ours.max_ms, base.max_ms)
            );
            let _ = writeln!(
                out,
                "| {label}: ratio (with deploy / baseline) | {} | {} | {} |",
                ratio(ours.p50_ms, base.p50_ms),
                ratio(ours.p99_ms, base.p99_ms),
                ratio(ours.max_ms, base.max_ms)
            );
        }
        let _ = writeln!(out, "\nMax latency (ms) of each second of sending, to see when the slow answers came:\n");
        for (label, run) in [("- no deploy", &self.baseline.run), ("- with deploy", &self.deploying.run)] {
            let _ = writeln!(out, "{label}: {}", max_by_second(run).join(", "));
        }
        bullets(&mut out, "## Method", &METHOD);
        bullets(&mut out, "## Notes from this run", &self.notes);
        out
    }
}
