//! `rananeeti-bench`: a real node over loopback, on SQLite and on PostgreSQL, against the same
//! insert done directly with sqlx and against one fsync per queued write; prints a markdown table.
//! `--scenario replication` instead runs two regions replicating to each other and measures the
//! lag, beside PostgreSQL streaming replication. `--scenario gateway` puts one node behind our
//! gateway and behind nginx and measures what each proxy adds.
//!
//! `machine` describes the host, `load` is the HTTP load generator, `baseline` the two baselines,
//! `platform_alone` and `queue_alone` the node's parts without HTTP around them, `node` runs and
//! watches the node process, `scenario` is one store's run, `report` the output. The replication
//! scenario: `replication` (the regions and its report), `open_loop` (fixed-rate load), `lag`
//! (the watchers), `streaming` (the PostgreSQL baseline). The gateway scenario: `gateway` (the run
//! and its report), `proxies` (the gateway and nginx processes), `fixed_connections` (GET load).
//! `--scenario backup`: `backup` (the run and its report) times `rananeeti backup` beside restic
//! on a database made by `backup_data`, each command measured by `measured`.
//! `--scenario bookstore`: `bookstore` (the run and its report) loads `rananeeti up` run by
//! `deployment` through its gateway with `mixed_load`, on a catalog grown by `generated_books`.
//! `--scenario deploy`: `deploy_roll` (the run and its report) measures `rananeeti deploy` under
//! the open-loop load of `steady_load`; `--scenario scale`: `scale_step` (the run and its report)
//! steps that load against `up`'s autoscaler.

mod backup;
mod backup_data;
mod baseline;
mod bookstore;
mod deploy_roll;
mod deployment;
mod fixed_connections;
mod gateway;
mod generated_books;
mod lag;
mod load;
mod machine;
mod measured;
mod mixed_load;
mod node;
mod open_loop;
mod platform_alone;
mod proxies;
mod queue_alone;
mod replication;
mod report;
mod scale_step;
mod scenario;
mod steady_load;
mod streaming;
mod tally;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rananeeti_platform::StoreKind;
use report::Report;
use scenario::Plan;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where Debian's nginx package puts the binary.
const DEFAULT_NGINX_BIN: &str = "/usr/sbin/nginx";

#[derive(Parser)]
#[command(
    name = "rananeeti-bench",
    about = "Benchmarks a rananeeti node against direct-insert and fsync-per-write baselines"
)]
struct Args {
    /// What to measure: one node's write paths, two regions' replication lag, or the gateway
    /// beside nginx.
    #[arg(long, value_enum, default_value_t = Scenario::Node)]
    scenario: Scenario,
    /// 1 s cells and a smaller outage (replication: 3 s cells; gateway: 0.5 s turns), to check
    /// the benchmark runs.
    #[arg(long)]
    quick: bool,
    /// Which store the node runs on (the gateway scenario: SQLite always).
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `rananeeti` binary to run as the node; default: next to this executable.
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Reservations queued during the timed outage (default: 5000, with --quick 1000).
    #[arg(long)]
    outage_entries: Option<u64>,
    /// RUST_LOG for the node, to see what logging costs; default: the node's own filter.
    #[arg(long)]
    node_rust_log: Option<String>,
    /// Directory for the temporary files; it must not be tmpfs, or fsync costs nothing.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The nginx binary of the gateway scenario.
    #[arg(long, default_value = DEFAULT_NGINX_BIN)]
    nginx_bin: PathBuf,
    /// The backup scenario's database size in MB (default 1000, with --quick 100).
    #[arg(long)]
    backup_size_mb: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One node: committed and pending paths, drain, memory, beside their baselines.
    Node,
    /// Two regions of one node each: replication lag at fixed write rates, beside PostgreSQL
    /// streaming replication.
    Replication,
    /// One node direct, behind `rananeeti gateway` and behind nginx: the latency, CPU and memory
    /// each proxy adds under the same GET load.
    Gateway,
    /// `rananeeti up` (one region, two nodes) on each store: a browse mix and a checkout mix
    /// through the gateway, at the seed's 269 books and at 100,000, and search alone.
    Bookstore,
    /// `rananeeti backup create`, `verify` and `restore` of a database of about 1 GB beside
    /// `restic backup`, `check --read-data` and `restore`: time, peak memory, stored size.
    Backup,
    /// `rananeeti up` (2 regions x 2 nodes) under a steady load through the gateway, without and
    /// with `rananeeti deploy` rolling every node: the latency the roll adds, and its time.
    Deploy,
    /// `rananeeti up --nodes-per-region 1..6 --target-cpu 50` offered 1x then 4x what one node
    /// serves: r1's node count over time, how soon it settles, p99 during and after the step.
    Scale,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreChoice {
    Sqlite,
    Postgres,
    Both,
}

impl StoreChoice {
    fn kinds(self) -> Vec<StoreKind> {
        match self {
            StoreChoice::Sqlite => vec![StoreKind::Sqlite],
            StoreChoice::Postgres => vec![StoreKind::Postgres],
            StoreChoice::Both => vec![StoreKind::Sqlite, StoreKind::Postgres],
        }
    }
}

fn main() -> anyhow::Result<()> {
    // The backup scenario runs each measured command under this executable as a wrapper.
    if let Some(exit_code) = measured::wrapper_main() {
        std::process::exit(exit_code);
    }
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("[bench] warning: this is a debug build; run with --release for numbers that mean something");
    }
    let node_binary = scenario::node_binary_path(args.node_bin.clone())?;
    let work_root = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work_dir = tempfile::Builder::new()
        .prefix("rananeeti-bench-")
        .tempdir_in(&work_root)
        .with_context(|| format!("creating a temporary directory in {}", work_root.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let markdown = match args.scenario {
        Scenario::Node => runtime.block_on(run_node(&args, node_binary, work_dir.path().to_path_buf()))?,
        Scenario::Replication => {
            runtime.block_on(run_replication(&args, node_binary, work_dir.path().to_path_buf()))?.into_markdown()
        }
        Scenario::Gateway => {
            runtime.block_on(run_gateway(&args, node_binary, work_dir.path().to_path_buf()))?.into_markdown()
        }
        Scenario::Bookstore => {
            let store = format!("{:?}", args.store).to_lowercase();
            let run =
                bookstore::run_scenario(args.quick, &store, args.store.kinds(), node_binary, work_dir.path().into());
            runtime.block_on(run)?.into_markdown()
        }
        Scenario::Backup => {
            let run = backup::run_scenario(args.quick, args.backup_size_mb, node_binary, work_dir.path().into());
            runtime.block_on(run)?.into_markdown()
        }
        Scenario::Deploy => {
            let run = deploy_roll::run_scenario(args.quick, node_binary, work_dir.path().into());
            runtime.block_on(run)?.into_markdown()
        }
        Scenario::Scale => {
            let run = scale_step::run_scenario(args.quick, node_binary, work_dir.path().into());
            runtime.block_on(run)?.into_markdown()
        }
    };
    print!("{markdown}");
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

async fn run_node(args: &Args, node_binary: PathBuf, work_dir: PathBuf) -> anyhow::Result<String> {
    let plan = if args.quick {
        Plan {
            cell: Duration::from_secs(1),
            warmup: Duration::from_millis(250),
            drain_entries: 1_000,
            node_rust_log: args.node_rust_log.clone(),
        }
    } else {
        Plan {
            cell: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            drain_entries: 5_000,
            node_rust_log: args.node_rust_log.clone(),
        }
    };
    let plan = Plan { drain_entries: args.outage_entries.unwrap_or(plan.drain_entries), ..plan };
    anyhow::ensure!(plan.drain_entries > 0, "--outage-entries must be positive");
    Ok(run(args, &plan, node_binary, work_dir).await?.to_markdown())
}

async fn run_replication(
    args: &Args,
    node_binary: PathBuf,
    work_dir: PathBuf,
) -> anyhow::Result<replication::ReplicationReport> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let plan = replication::ReplicationPlan {
        warmup: if args.quick { Duration::from_millis(500) } else { Duration::from_secs(1) },
        cell: if args.quick { Duration::from_secs(3) } else { Duration::from_secs(10) },
        stores: args.store.kinds(),
        node_rust_log: args.node_rust_log.clone(),
    };
    let machine = machine::describe(&work_dir);
    eprintln!(
        "[bench] {} cores, {}, {}; files on {}",
        machine.cores, machine.cpu_model, machine.kernel, machine.filesystem
    );
    let busy_before = machine_busy().await;
    let mut notes = Vec::new();
    let (stores, baseline) = replication::run(&plan, &node_binary, &work_dir, &mut notes).await?;
    let busy_after = machine_busy().await;
    let mut command = String::from("cargo run --release -p rananeeti-bench -- --scenario replication");
    if args.quick {
        command.push_str(" --quick");
    }
    command.push_str(&format!(" --store {}", format!("{:?}", args.store).to_lowercase()));
    if let Some(filter) = &args.node_rust_log {
        command.push_str(&format!(" --node-rust-log '{filter}'"));
    }
    let rates: Vec<String> = replication::RATES_PER_SECOND.iter().map(u32::to_string).collect();
    Ok(replication::ReplicationReport {
        machine,
        command,
        mode: format!(
            "{}: {} writes/s offered, each for {} s after a {} ms warm-up; node {}",
            if args.quick { "quick" } else { "full" },
            rates.join(" and "),
            plan.cell.as_secs(),
            plan.warmup.as_millis(),
            node_binary.display()
        ),
        started_at,
        code_version: code_version(),
        took_seconds: started.elapsed().as_secs_f64(),
        busy_outside_run: [busy_before, busy_after],
        stores,
        baseline,
        notes,
    })
}

async fn run_gateway(args: &Args, node_binary: PathBuf, work_dir: PathBuf) -> anyhow::Result<gateway::GatewayReport> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let plan = gateway::GatewayPlan {
        warmup: if args.quick { Duration::from_millis(250) } else { Duration::from_secs(1) },
        turn: if args.quick { Duration::from_millis(500) } else { Duration::from_secs(1) },
        healthz_rounds: if args.quick { 4 } else { 10 },
        list_rounds: if args.quick { 2 } else { 5 },
        node_rust_log: args.node_rust_log.clone(),
        nginx_binary: args.nginx_bin.clone(),
    };
    let machine = machine::describe(&work_dir);
    eprintln!("[bench] {} cores, {}, {}", machine.cores, machine.cpu_model, machine.kernel);
    let nginx_version = gateway::nginx_version(&plan.nginx_binary);
    let busy_before = machine_busy().await;
    let mut notes = Vec::new();
    // Dropping the run on Ctrl-C drops its process guards: the node, the gateway and nginx stop.
    let (cells, memory, gateway_counters) = tokio::select! {
        result = gateway::run(&plan, &node_binary, &work_dir, &mut notes) => result?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the node, the gateway and nginx were stopped"),
    };
    let busy_after = machine_busy().await;
    let mut command = String::from("cargo run --release -p rananeeti-bench -- --scenario gateway");
    if args.quick {
        command.push_str(" --quick");
    }
    if args.nginx_bin != Path::new(DEFAULT_NGINX_BIN) {
        command.push_str(&format!(" --nginx-bin {}", args.nginx_bin.display()));
    }
    if let Some(filter) = &args.node_rust_log {
        command.push_str(&format!(" --node-rust-log '{filter}'"));
    }
    Ok(gateway::GatewayReport {
        machine,
        command,
        mode: format!(
            "{}: the three targets take turns of {} ms, {} turns each for GET /healthz and {} for the list, \
             after a {} ms warm-up each; {} connections; fixed rate {}/s; gateway and nginx with {} workers \
             each; node and gateway {}, nginx {}",
            if args.quick { "quick" } else { "full" },
            plan.turn.as_millis(),
            plan.healthz_rounds,
            plan.list_rounds,
            plan.warmup.as_millis(),
            gateway::CONNECTIONS,
            gateway::FIXED_RATE_PER_SECOND,
            gateway::PROXY_WORKERS,
            node_binary.display(),
            plan.nginx_binary.display()
        ),
        nginx_version,
        started_at,
        code_version: code_version(),
        took_seconds: started.elapsed().as_secs_f64(),
        busy_outside_run: [busy_before, busy_after],
        cells,
        memory,
        gateway_counters,
        notes,
    })
}

/// Now, to the second, as RFC 3339 (empty if the clock cannot say).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| now.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

async fn run(args: &Args, plan: &Plan, node_binary: PathBuf, work_dir: PathBuf) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let machine = machine::describe(&work_dir);
    eprintln!(
        "[bench] {} cores, {}, {}; files on {}",
        machine.cores, machine.cpu_model, machine.kernel, machine.filesystem
    );
    let mut notes = Vec::new();

    let busy_before = machine_busy().await;
    let fsync_at_start_ms = probe_fsync(&work_dir.join("fsync-probe-start")).await?;
    let mut stores = Vec::new();
    for kind in args.store.kinds() {
        let results = scenario::run(kind, plan, &node_binary, &work_dir.join(kind.as_str()), &mut notes)
            .await
            .with_context(|| format!("benchmarking the node on {}", kind.as_str()))?;
        stores.push(results);
    }

    let fsync_at_end_ms = probe_fsync(&work_dir.join("fsync-probe-end")).await?;
    let busy_after = machine_busy().await;
    let mode = if args.quick {
        format!("quick: {} ms per cell after a {} ms warm-up", plan.cell.as_millis(), plan.warmup.as_millis())
    } else {
        format!("full: {} s per cell after a {} ms warm-up", plan.cell.as_secs(), plan.warmup.as_millis())
    };
    let mut command = String::from("cargo run --release -p rananeeti-bench --");
    if args.quick {
        command.push_str(" --quick");
    }
    command.push_str(&format!(" --store {}", format!("{:?}", args.store).to_lowercase()));
    if let Some(entries) = args.outage_entries {
        command.push_str(&format!(" --outage-entries {entries}"));
    }
    if let Some(filter) = &args.node_rust_log {
        command.push_str(&format!(" --node-rust-log '{filter}'"));
    }
    Ok(Report {
        machine,
        command,
        mode: format!("{mode}, outage of {} reservations, node {}", plan.drain_entries, node_binary.display()),
        started_at,
        code_version: code_version(),
        took_seconds: started.elapsed().as_secs_f64(),
        fsync_probe_ms: [fsync_at_start_ms, fsync_at_end_ms],
        busy_outside_run: [busy_before, busy_after],
        stores,
        notes,
    })
}

/// How long one small append + fsync takes on this disk now (median of FsyncPerWrite at
/// concurrency 1 for half a second): on a shared VM disk it drifts with the neighbours' I/O.
async fn probe_fsync(dir: &std::path::Path) -> anyhow::Result<Option<f64>> {
    const PROBE: Duration = Duration::from_millis(500);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let summary = baseline::run_fsync_per_write(&dir, baseline::FileLayout::SharedFile, 1, PROBE)?.summary();
        eprintln!("[bench] fsync probe: p50 {:.2} ms", summary.p50_ms.unwrap_or(0.0));
        Ok(summary.p50_ms)
    })
    .await?
}

/// How busy the CPUs are over one second while the benchmark runs nothing: other work on the
/// machine competes with the node for its cores.
async fn machine_busy() -> Option<f64> {
    const SAMPLE: Duration = Duration::from_secs(1);
    let before = machine::cpu_jiffies()?;
    tokio::time::sleep(SAMPLE).await;
    machine::busy_fraction(before, machine::cpu_jiffies()?)
}

/// `git describe --always --dirty` of the workspace this benchmark was built from, if git can say.
fn code_version() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !version.is_empty()).then(|| format!("git {version}"))
}
