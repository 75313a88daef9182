//! Drills (docs/design.md promise 6): against a deployment `rananeeti up` runs, a workload through
//! the gateway, a fault injected at a known moment and healed, the queues and replication
//! settled, then every acknowledged write checked in every region's database; the figures
//! (RTO, RPO, lost, duplicated, stuck, latency) beside their targets, as JSON and HTML.
//!
//! The binary (`rananeeti drill`) hands in what only it knows: its own executable (for backups
//! and the restored deployment's `up`) and how to stop and start a region's PostgreSQL.

mod checker;
mod deployment;
mod figures;
mod healer;
mod html;
mod report;
mod scenarios;
mod workload;

pub use checker::{Checked, Duplicate, KindCounts, RegionMissing, WriteRef};
pub use deployment::{Database, StoreKind};
pub use figures::{Bucket, FailedRun, Latency, Phases};
pub use report::{
    DeploymentSummary, Fault, Load, Machine, Outcome, RegionRpo, Report, Restore, Rto, ScenarioReport, Settings,
    Settle, Target, REPORT_FORMAT,
};
pub use scenarios::ScenarioInfo;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("deployment: {0}")]
    Deployment(String),
    #[error("fault: {0}")]
    Fault(String),
    #[error("check: {0}")]
    Check(String),
    #[error("unknown scenario {0:?} (rananeeti drill --list shows them)")]
    UnknownScenario(String),
    #[error("interrupted: every fault the drill set was healed")]
    Interrupted,
}

/// Stops and starts a region's PostgreSQL cluster (the binary knows how `up` runs them).
pub trait DatabaseControl: Send + Sync {
    /// Stops it the way a crash would (`pg_ctl stop -m immediate`).
    fn stop_immediate(&self, database: &Database) -> Result<(), String>;
    /// Starts it again on its port and returns once it accepts connections.
    fn start(&self, database: &Database) -> Result<(), String>;
}

/// Everything a drill run needs.
pub struct DrillConfig {
    /// The directory `rananeeti up --data DIR` runs from.
    pub data: PathBuf,
    /// How long each fault is held.
    pub duration: Duration,
    pub rate_per_second: u32,
    /// `--yes`: scenarios that destroy data may run.
    pub destroy_allowed: bool,
    /// The `rananeeti` executable (for `restore`: backups, and the restored deployment's `up`).
    pub executable: PathBuf,
    pub databases: Arc<dyn DatabaseControl>,
    /// How long the queues and replication get to settle after the load.
    pub settle_timeout: Duration,
    /// The nodes' write budget, which the `db-outage` target measures answers against.
    pub budget_ms: u32,
}

/// Every scenario, in the order `--all` runs them.
pub fn scenarios() -> Vec<ScenarioInfo> {
    scenarios::all().into_iter().map(|scenario| scenario.info).collect()
}

/// What the drill is doing, on stderr: one line per step, and on a terminal a status line kept
/// up to date while the load runs.
pub struct Progress {
    scenario: Mutex<String>,
    terminal: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { scenario: Mutex::new(String::new()), terminal: std::io::stderr().is_terminal() }
    }
}

impl Progress {
    fn set_scenario(&self, name: &str) {
        *self.scenario.lock().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    fn line(&self, message: &str) {
        let scenario = self.scenario.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let clear = if self.terminal { "\r\x1b[2K" } else { "" };
        eprintln!("{clear}[{scenario}] {message}");
    }

    /// While it lives, and on a terminal, a line with the requests so far.
    fn ticker(&self, workload: &workload::Workload) -> Option<Ticker> {
        if !self.terminal {
            return None;
        }
        let scenario = self.scenario.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let counts = workload.counter();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (sent, failed) = counts();
                let mut stderr = std::io::stderr();
                let _ = write!(stderr, "\r\x1b[2K[{scenario}] load: {sent} requests answered, {failed} failed");
                let _ = stderr.flush();
            }
        });
        Some(Ticker(task))
    }
}

struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
        eprint!("\r\x1b[2K");
    }
}

/// Runs the named scenarios in turn against `config.data` and reports them. Ctrl-C (`cancel`
/// turning true) heals every fault set and ends the drill with `Interrupted`.
pub async fn run(
    config: &DrillConfig,
    names: &[String],
    cancel: watch::Receiver<bool>,
    progress: &Progress,
) -> Result<Report, DrillError> {
    let all = scenarios::all();
    let mut chosen = Vec::new();
    for name in names {
        let scenario = all
            .iter()
            .find(|scenario| scenario.info.name == name)
            .ok_or_else(|| DrillError::UnknownScenario(name.clone()))?;
        chosen.push(scenario);
    }
    let now = time::OffsetDateTime::now_utc();
    let started_at = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let deployment = deployment::Deployment::load(&config.data)?;
    let summary = DeploymentSummary {
        regions: deployment.regions.len(),
        nodes: deployment.nodes().count(),
        gateways: deployment.gateways.len(),
        store: deployment.store_kind().as_str().into(),
    };
    let mut reports = Vec::new();
    for scenario in chosen {
        let report = scenarios::run_scenario(scenario, config, &cancel, progress).await;
        if *cancel.borrow() {
            return Err(DrillError::Interrupted);
        }
        progress.line(report.outcome.as_str());
        reports.push(report);
    }
    let passed = reports.iter().all(|report| match report.outcome {
        Outcome::Passed | Outcome::Skipped => true,
        Outcome::Failed | Outcome::Error => false,
    }) && reports.iter().any(|report| report.outcome == Outcome::Passed);
    Ok(Report {
        format: REPORT_FORMAT,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        machine: Machine {
            cores: std::thread::available_parallelism().map(|cores| cores.get()).unwrap_or(1),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        },
        deployment: summary,
        settings: Settings {
            duration_seconds: config.duration.as_secs_f64(),
            rate_per_second: config.rate_per_second,
            budget_ms: config.budget_ms,
        },
        passed,
        scenarios: reports,
    })
}

/// Writes `out/report.json` and `out/report.html` (creating `out`).
pub fn write_report(report: &Report, out: &Path) -> Result<(), DrillError> {
    let io = |what: &str| {
        let what = format!("{what} in {}", out.display());
        move |source| DrillError::Io { what: what.clone(), source }
    };
    std::fs::create_dir_all(out).map_err(io("creating the report directory"))?;
    let json = serde_json::to_vec_pretty(report).expect("a report serializes");
    std::fs::write(out.join("report.json"), json).map_err(io("writing report.json"))?;
    std::fs::write(out.join("report.html"), html::render(report)).map_err(io("writing report.html"))?;
    Ok(())
}
