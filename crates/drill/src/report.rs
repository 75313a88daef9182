//! The report: every figure of every scenario run, each target beside its figure, and the
//! verdict; written as `report.json` (fields documented in docs/drill.md) and read as text.

use crate::checker::Checked;
use crate::figures::{Bucket, FailedRun, Latency, Phases};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
pub const REPORT_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub format: u32,
    /// The rananeeti version that ran the drill.
    pub version: String,
    /// When the drill started (RFC 3339, UTC).
    pub started_at: String,
    pub machine: Machine,
    pub deployment: DeploymentSummary,
    pub settings: Settings,
    /// Every scenario run met every target (skipped ones are not run).
    pub passed: bool,
    pub scenarios: Vec<ScenarioReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub os: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeploymentSummary {
    pub regions: usize,
    pub nodes: usize,
    pub gateways: usize,
    pub store: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// How long each fault is held.
    pub duration_seconds: f64,
    pub rate_per_second: u32,
    /// The write budget targets are measured against.
    pub budget_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    /// Not run: the deployment cannot run it, or it destroys data and `--yes` was not given.
    Skipped,
    /// The drill itself could not finish the scenario (the reason says why).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

/// One target beside its figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    /// The target, as a person reads it (`0`, `≤ 1 s`).
    pub target: String,
    /// The figure, as a person reads it.
    pub value: String,
    pub met: bool,
    /// A target on time (RTO, the write budget, drain and restore times), which a busy machine
    /// can miss; the others are about the data (lost, duplicated, stuck, RPO), which nothing
    /// excuses.
    pub timing: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// What was done, to what.
    pub what: String,
    /// Seconds since the load started.
    pub at_seconds: f64,
    pub healed_at_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Load {
    pub seconds: f64,
    pub rate_per_second: u32,
    pub requests: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Ticks not sent because the drill already had its maximum of requests in flight.
    pub shed_by_client: u64,
    /// Requests by answer: HTTP status, `timeout` or `connection`.
    pub answers: BTreeMap<String, u64>,
    /// The same per kind of request: `reserve`, `cart_add`, `checkout`, `signup`,
    /// `read_reservation`, `read_books`, `read_bestsellers`.
    pub answers_by_request: BTreeMap<String, BTreeMap<String, u64>>,
    /// Attempts the gateways retried on another node, by reason (their counters' increase).
    pub gateway_retries: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rto {
    /// From the fault to the first moment after which 99% of requests succeed for 2 s; `null`
    /// when the load ended first.
    pub seconds: Option<f64>,
    pub longest_failed_run: FailedRun,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionRpo {
    pub region: String,
    /// Acknowledged writes this region's database lacks after the heal.
    pub missing: usize,
    /// When those were acknowledged (seconds since the load started).
    pub window_seconds: Option<[f64; 2]>,
    /// How far this region trailed its peers when the fault began (its nodes' highest
    /// `rananeeti_replication_lag_seconds`): the loss a region failure could cause.
    pub replication_lag_at_fault_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settle {
    /// Queues empty on every node and every region caught up with every other.
    pub settled: bool,
    /// From the end of the load until settled (or giving up).
    pub seconds: f64,
    /// From the heal until every node's queue was empty.
    pub queue_drained_after_heal_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Restore {
    pub backup_seconds: f64,
    pub restore_seconds: f64,
    /// Until the restored deployment's `up` had every node running.
    pub start_seconds: f64,
    /// From the start of the backup until the restored deployment served every write
    /// acknowledged before the backup started.
    pub serving_seconds: Option<f64>,
    /// Writes acknowledged before the backup started, asked of the restored deployment.
    pub writes_checked: usize,
    /// Of those, not served (committed or rejected) by the restored deployment.
    pub missing: usize,
    pub missing_ids: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub summary: String,
    pub outcome: Outcome,
    /// Why it was skipped or could not finish.
    pub reason: Option<String>,
    pub fault: Option<Fault>,
    pub load: Option<Load>,
    pub rto: Option<Rto>,
    pub rpo: Vec<RegionRpo>,
    pub writes: Option<Checked>,
    pub latency_ms: Option<Phases<Latency>>,
    /// Latency over the whole load per kind of request (the names of `answers_by_request`).
    pub latency_ms_by_request: BTreeMap<String, Latency>,
    /// Writes without a promised answer (committed, duplicate, pending, refused with a reason)
    /// within the budget: late, a server error, 408, 429, or none.
    pub writes_unanswered_within_budget: Option<u64>,
    pub settle: Option<Settle>,
    pub restore: Option<Restore>,
    pub targets: Vec<Target>,
    pub timeline: Vec<Bucket>,
}

impl ScenarioReport {
    pub(crate) fn not_run(name: &str, summary: &str, outcome: Outcome, reason: String) -> ScenarioReport {
        ScenarioReport {
            name: name.into(),
            summary: summary.into(),
            outcome,
            reason: Some(reason),
            fault: None,
            load: None,
            rto: None,
            rpo: Vec::new(),
            writes: None,
            latency_ms: None,
            latency_ms_by_request: BTreeMap::new(),
            writes_unanswered_within_budget: None,
            settle: None,
            restore: None,
            targets: Vec::new(),
            timeline: Vec::new(),
        }
    }

    pub fn targets_met(&self) -> bool {
        self.targets.iter().all(|target| target.met)
    }
}

/// Whether an answer label (`201`, `503`, `timeout`) counts as answered, as the workload counts it.
fn answer_succeeded(label: &str) -> bool {
    label.parse::<u16>().is_ok_and(|status| status < 500 && status != 408 && status != 429)
}

pub(crate) fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "never".to_string(), |value| format!("{value:.2} s"))
}

fn latency_text(latency: &Latency) -> String {
    let ms = |value: Option<u32>| value.map_or("-".to_string(), |value| value.to_string());
    format!("{}/{}/{}", ms(latency.p50_ms), ms(latency.p99_ms), ms(latency.p999_ms))
}

impl Report {
    /// The report as lines for a terminal.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for scenario in &self.scenarios {
            let _ = writeln!(text, "== {}: {}", scenario.name, scenario.outcome.as_str().to_uppercase());
            if let Some(reason) = &scenario.reason {
                let _ = writeln!(text, "   {reason}");
            }
            if let Some(fault) = &scenario.fault {
                let _ = writeln!(
                    text,
                    "   fault: {} at {:.1} s, healed at {:.1} s",
                    fault.what, fault.at_seconds, fault.healed_at_seconds
                );
            }
            if let Some(load) = &scenario.load {
                let answers: Vec<String> =
                    load.answers.iter().map(|(answer, count)| format!("{answer} {count}")).collect();
                let retries: u64 = load.gateway_retries.values().sum();
                let _ = writeln!(
                    text,
                    "   load: {:.1} s at {}/s, {} requests, {} failed ({}); gateway retries {retries}",
                    load.seconds,
                    load.rate_per_second,
                    load.requests,
                    load.failed,
                    answers.join(", ")
                );
            }
            if let Some(load) = scenario.load.as_ref().filter(|load| load.failed > 0) {
                let failed: Vec<String> = load
                    .answers_by_request
                    .iter()
                    .filter_map(|(request, answers)| {
                        let failures: Vec<String> = answers
                            .iter()
                            .filter(|(answer, _)| !answer_succeeded(answer))
                            .map(|(answer, count)| format!("{answer} {count}"))
                            .collect();
                        (!failures.is_empty()).then(|| format!("{request}: {}", failures.join(", ")))
                    })
                    .collect();
                let _ = writeln!(text, "   failed by request: {}", failed.join("; "));
            }
            if let Some(rto) = &scenario.rto {
                let run = &rto.longest_failed_run;
                let _ = writeln!(
                    text,
                    "   RTO {}; longest run of failed requests: {} over {:.2} s",
                    seconds(rto.seconds),
                    run.requests,
                    run.seconds
                );
            }
            if !scenario.rpo.is_empty() {
                let regions: Vec<String> = scenario
                    .rpo
                    .iter()
                    .map(|region| {
                        let lag = region
                            .replication_lag_at_fault_seconds
                            .map_or(String::new(), |lag| format!(", lag at the fault {lag:.3} s"));
                        format!("{} missing {}{lag}", region.region, region.missing)
                    })
                    .collect();
                let _ = writeln!(text, "   RPO: {}", regions.join("; "));
            }
            if let Some(writes) = &scenario.writes {
                let _ =
                    writeln!(
                    text,
                    "   writes: {} acknowledged, {} committed, {} rejected by a rule; lost {}, duplicated {}, stuck {}",
                    writes.acknowledged, writes.committed, writes.rejected, writes.lost, writes.duplicated, writes.stuck
                );
                for lost in writes.lost_writes.iter().take(5) {
                    let _ = writeln!(
                        text,
                        "     lost {} {} (acknowledged {} at {:.2} s): {}",
                        lost.kind,
                        lost.id,
                        lost.answered,
                        lost.acknowledged_at_seconds,
                        lost.why.join("; ")
                    );
                }
                for duplicate in writes.duplicates.iter().take(5) {
                    let _ = writeln!(
                        text,
                        "     duplicated in {} (by {}): {}",
                        duplicate.region, duplicate.found_by, duplicate.what
                    );
                }
            }
            if let Some(latency) = &scenario.latency_ms {
                let _ = writeln!(
                    text,
                    "   latency p50/p99/p99.9 ms: before {}, during {}, after {}",
                    latency_text(&latency.before),
                    latency_text(&latency.during),
                    latency_text(&latency.after)
                );
            }
            if let Some(settle) = &scenario.settle {
                let _ = writeln!(
                    text,
                    "   settled: {} in {:.1} s; queues drained {} after the heal",
                    if settle.settled { "yes" } else { "NO" },
                    settle.seconds,
                    seconds(settle.queue_drained_after_heal_seconds)
                );
            }
            if let Some(restore) = &scenario.restore {
                let _ = writeln!(
                    text,
                    "   restore: backup {:.1} s, restore {:.1} s, start {:.1} s, serving every restored write {}; {} of {} missing",
                    restore.backup_seconds,
                    restore.restore_seconds,
                    restore.start_seconds,
                    seconds(restore.serving_seconds),
                    restore.missing,
                    restore.writes_checked
                );
            }
            for target in &scenario.targets {
                let _ = writeln!(
                    text,
                    "   [{}] {}: {} (target {})",
                    if target.met { "met" } else { "NOT MET" },
                    target.name,
                    target.value,
                    target.target
                );
            }
        }
        let run: Vec<&ScenarioReport> =
            self.scenarios.iter().filter(|scenario| scenario.outcome != Outcome::Skipped).collect();
        let passed = run.iter().filter(|scenario| scenario.outcome == Outcome::Passed).count();
        let skipped = self.scenarios.len() - run.len();
        let _ = writeln!(
            text,
            "drill: {} ({passed} of {} scenarios met every target{})",
            if self.passed { "PASSED" } else { "FAILED" },
            run.len(),
            if skipped > 0 { format!(", {skipped} skipped") } else { String::new() }
        );
        text
    }
}
