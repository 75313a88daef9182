//! `rananeeti drill`: runs the drill crate's scenarios against the deployment `up` runs from
//! `--data DIR`, prints the figures beside their targets, writes the report, and exits 0 only
//! when every target of the scenarios run holds.

use crate::postgres::PgCluster;
use anyhow::Context;
use rananeeti_drill::{Database, DatabaseControl, DrillConfig, DrillError, Progress};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Exit status when a target is not met (or a scenario could not finish).
const EXIT_TARGET_MISSED: i32 = 1;
/// Exit status when the command line asks for something the drill will not do.
const EXIT_USAGE: i32 = 2;
/// Exit status after Ctrl-C (every fault healed first).
const EXIT_INTERRUPTED: i32 = 130;
/// Bounds on `--duration` and `--rate`: a drill is bounded load on loopback.
const DURATION_SECONDS_MAX: f64 = 3600.0;
const RATE_PER_SECOND_MAX: u32 = 5000;

#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// The directory `rananeeti up --data DIR` runs from (topology.json, admin-token).
    #[arg(long, required_unless_present = "list")]
    pub data: Option<PathBuf>,
    /// The scenario to run (repeat the flag for several); `--list` names them.
    #[arg(long, conflicts_with_all = ["all", "list"], required_unless_present_any = ["all", "list"])]
    pub scenario: Vec<String>,
    /// Every scenario in turn, one report.
    #[arg(long, conflicts_with = "list")]
    pub all: bool,
    /// The scenarios, one line each, and exit.
    #[arg(long)]
    pub list: bool,
    /// Seconds each fault is held; the load runs a little before and after it.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Requests per second the workload sends through the gateways.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Write OUT/report.json and OUT/report.html.
    #[arg(long, value_name = "OUT")]
    pub report: Option<PathBuf>,
    /// Let scenarios that destroy data on purpose run (node-disk-loss).
    #[arg(long)]
    pub yes: bool,
    /// Seconds the queues and replication get to settle after the load.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout: u64,
    /// The nodes' write budget (`submit.budget_ms`), which db-outage's target measures against.
    #[arg(long, default_value_t = 2000)]
    pub budget_ms: u32,
}

/// A region's PostgreSQL as `up` runs it: `DIR/rN/pg` on the port of its URL.
struct LocalClusters;

fn cluster(database: &Database) -> Result<PgCluster, String> {
    let (Some(dir), Some(port)) = (&database.pg_data_dir, database.pg_port) else {
        return Err(format!("region {}'s database is not a PostgreSQL cluster `up` runs", database.region));
    };
    PgCluster::attach(dir, port).map_err(|error| format!("{error:#}"))
}

impl DatabaseControl for LocalClusters {
    fn stop_immediate(&self, database: &Database) -> Result<(), String> {
        cluster(database)?.stop_immediate().map_err(|error| format!("{error:#}"))
    }

    fn start(&self, database: &Database) -> Result<(), String> {
        cluster(database)?.start().map_err(|error| format!("{error:#}"))
    }
}

pub fn run(args: DrillArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();

    let scenarios = rananeeti_drill::scenarios();
    if args.list {
        for scenario in &scenarios {
            println!("{:<16} {}", scenario.name, scenario.summary);
        }
        return Ok(());
    }
    if !(0.5..=DURATION_SECONDS_MAX).contains(&args.duration) {
        eprintln!("rananeeti drill: --duration is seconds from 0.5 to {DURATION_SECONDS_MAX}");
        std::process::exit(EXIT_USAGE);
    }
    if !(1..=RATE_PER_SECOND_MAX).contains(&args.rate) {
        eprintln!("rananeeti drill: --rate is requests per second from 1 to {RATE_PER_SECOND_MAX}");
        std::process::exit(EXIT_USAGE);
    }
    let names: Vec<String> = if args.all {
        scenarios.iter().map(|scenario| scenario.name.to_string()).collect()
    } else {
        args.scenario.clone()
    };
    for name in &names {
        match scenarios.iter().find(|scenario| scenario.name == name) {
            None => {
                eprintln!("rananeeti drill: unknown scenario {name:?}; `rananeeti drill --list` names them");
                std::process::exit(EXIT_USAGE);
            }
            Some(scenario) if scenario.destroys_data && !args.yes && !args.all => {
                eprintln!("rananeeti drill: {name} destroys data on purpose ({}); run it with --yes", scenario.summary);
                std::process::exit(EXIT_USAGE);
            }
            Some(_) => {}
        }
    }
    let data = args.data.clone().context("--data DIR is required")?;
    // Absolute, so what the report names (and node-disk-loss deletes) is unambiguous.
    let data = std::fs::canonicalize(&data).with_context(|| {
        format!("{} (the directory `rananeeti up --data DIR` runs from, with its topology.json)", data.display())
    })?;
    let config = DrillConfig {
        data,
        duration: Duration::from_secs_f64(args.duration),
        rate_per_second: args.rate,
        destroy_allowed: args.yes,
        executable: std::env::current_exe().context("finding the rananeeti executable")?,
        databases: Arc::new(LocalClusters),
        settle_timeout: Duration::from_secs(args.settle_timeout),
        budget_ms: args.budget_ms,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("building the runtime")?;
    let result = runtime.block_on(async {
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut interrupt), Ok(mut terminate)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("rananeeti drill: interrupted; healing every fault it set");
            let _ = cancel.send(true);
        });
        let progress = Progress::default();
        rananeeti_drill::run(&config, &names, cancelled, &progress).await
    });
    let report = match result {
        Ok(report) => report,
        Err(DrillError::Interrupted) => {
            eprintln!("rananeeti drill: {}", DrillError::Interrupted);
            std::process::exit(EXIT_INTERRUPTED);
        }
        Err(error) => return Err(error.into()),
    };
    print!("{}", report.to_text());
    if let Some(out) = &args.report {
        rananeeti_drill::write_report(&report, out)?;
        println!("report: {} and {}", out.join("report.json").display(), out.join("report.html").display());
    }
    if !report.passed {
        std::process::exit(EXIT_TARGET_MISSED);
    }
    Ok(())
}
