//! The scenarios (one function each, in the files below) and the harness every one runs in:
//! settle, start the load, inject the fault at a known moment, heal, settle again, check.

mod network;
mod processes;
mod restore;
mod store;

use crate::checker::{self, StockSnapshot};
use crate::deployment::{metric_samples, Deployment};
use crate::figures;
use crate::healer::Healer;
use crate::report::{self, Fault, Load, Outcome, RegionRpo, Rto, ScenarioReport, Settle, Target};
use crate::workload::{self, Recorded, Workload};
use crate::{DrillConfig, DrillError, Progress};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the deployment gets to be healthy and settled before a scenario starts.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Between two looks at the queues while settling, and at the queues during the load.
const SETTLE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest one look at a node's queue during the load (a frozen node does not answer).
const QUEUE_POLL_TIMEOUT: Duration = Duration::from_millis(400);
/// The queue must be drained this soon after the database is back (db-outage).
const QUEUE_DRAINED_TARGET: Duration = Duration::from_secs(15);
/// RTO target of the scenarios that have one.
const RTO_TARGET: Duration = Duration::from_secs(1);

/// What `--list` shows of a scenario.
#[derive(Clone, Copy, Debug)]
pub struct ScenarioInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Destroys data on purpose: runs only with `--yes`.
    pub destroys_data: bool,
}

type FaultFn = for<'a> fn(&'a FaultRun<'a>) -> BoxFuture<'a, Result<Injected, DrillError>>;

/// A scenario: what it is, its fault, and the targets it adds to the ones every scenario has.
pub(crate) struct Scenario {
    pub(crate) info: ScenarioInfo,
    fault: FaultFn,
    /// Why this deployment cannot run it (`None`: it can).
    cannot_run: fn(&Deployment, &DrillConfig) -> Option<String>,
    rto_target: bool,
    /// Every write answered within the budget, and the queue drained within 15 s of the heal.
    budget_target: bool,
}

fn always(_: &Deployment, _: &DrillConfig) -> Option<String> {
    None
}

fn needs_two_regions(deployment: &Deployment, _: &DrillConfig) -> Option<String> {
    (deployment.regions.len() < 2).then(|| "needs two regions or more (`rananeeti up --regions 2`)".to_string())
}

pub(crate) fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            info: ScenarioInfo {
                name: "db-outage",
                summary: "the first region's database down for the duration (PostgreSQL: pg_ctl stop -m immediate, then started again; SQLite: the store fault on every node)",
                destroys_data: false,
            },
            fault: |run| Box::pin(store::db_outage(run)),
            cannot_run: always,
            rto_target: false,
            budget_target: true,
        },
        Scenario {
            info: ScenarioInfo {
                name: "db-flaky",
                summary: "half of the first region's store accesses fail, on every node of it",
                destroys_data: false,
            },
            fault: |run| Box::pin(store::db_flaky(run)),
            cannot_run: always,
            rto_target: false,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "db-slow",
                summary: "every store access of the first region waits 800 ms, on every node of it",
                destroys_data: false,
            },
            fault: |run| Box::pin(store::db_slow(run)),
            cannot_run: always,
            rto_target: false,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "node-kill",
                summary: "kill -9 of the first node of the first region; `up` restarts it",
                destroys_data: false,
            },
            fault: |run| Box::pin(processes::node_kill(run)),
            cannot_run: always,
            rto_target: true,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "node-disk-loss",
                summary: "DESTROYS DATA (needs --yes): the first node's store fault set so it queues, then kill -9 and its data directory deleted; its peer applies its queue's copies",
                destroys_data: true,
            },
            fault: |run| Box::pin(processes::node_disk_loss(run)),
            cannot_run: processes::node_disk_loss_cannot_run,
            rto_target: false,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "region-freeze",
                summary: "SIGSTOP of every node of the first region for the duration, then SIGCONT",
                destroys_data: false,
            },
            fault: |run| Box::pin(processes::region_freeze(run)),
            cannot_run: needs_two_regions,
            rto_target: true,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "region-kill",
                summary: "kill -9 of every node of the first region and of its PostgreSQL (started again after the duration); `up` restarts the nodes",
                destroys_data: false,
            },
            fault: |run| Box::pin(processes::region_kill(run)),
            cannot_run: needs_two_regions,
            rto_target: true,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "partition",
                summary: "the first region cut off from the other regions and the witness for the duration",
                destroys_data: false,
            },
            fault: |run| Box::pin(network::partition(run)),
            cannot_run: needs_two_regions,
            rto_target: false,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "replication-cut",
                summary: "replication between the regions cut on every node for the duration",
                destroys_data: false,
            },
            fault: |run| Box::pin(network::replication_cut(run)),
            cannot_run: needs_two_regions,
            rto_target: false,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "gateway-kill",
                summary: "kill -9 of a gateway process while the load uses every gateway (`up --gateways 2`); `up` restarts it",
                destroys_data: false,
            },
            fault: |run| Box::pin(processes::gateway_kill(run)),
            cannot_run: processes::gateway_kill_cannot_run,
            rto_target: true,
            budget_target: false,
        },
        Scenario {
            info: ScenarioInfo {
                name: "restore",
                summary: "a backup of the running deployment restored into a new directory and started there on other ports: the time until it serves every write acknowledged before the backup",
                destroys_data: false,
            },
            fault: |run| Box::pin(restore::restore(run)),
            cannot_run: always,
            rto_target: false,
            budget_target: false,
        },
    ]
}

/// What a scenario's fault did.
pub(crate) struct Injected {
    pub(crate) what: String,
    pub(crate) restore: Option<report::Restore>,
}

/// What a scenario's fault function works with.
pub(crate) struct FaultRun<'a> {
    pub(crate) deployment: &'a Deployment,
    pub(crate) healer: &'a Healer,
    pub(crate) config: &'a DrillConfig,
    pub(crate) workload: &'a Workload,
    fault_at: Mutex<Option<Instant>>,
    healed_at: Mutex<Option<Instant>>,
    cancel: watch::Receiver<bool>,
    progress: &'a Progress,
}

impl FaultRun<'_> {
    /// The fault begins now (call right before injecting it).
    pub(crate) fn fault_now(&self, what: &str) {
        *self.fault_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.progress.line(&format!("fault: {what}"));
    }

    /// The fault is over now (call right after healing it).
    pub(crate) fn healed_now(&self) {
        *self.healed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.progress.line("healed");
    }

    /// Waits `duration`, or less when the drill is interrupted (then `Interrupted`).
    pub(crate) async fn hold(&self, duration: Duration) -> Result<(), DrillError> {
        let mut cancel = self.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(()),
            _ = cancel.wait_for(|cancelled| *cancelled) => Err(DrillError::Interrupted),
        }
    }

    /// How long the fault is held.
    pub(crate) fn duration(&self) -> Duration {
        self.config.duration
    }

    pub(crate) fn progress(&self, message: &str) {
        self.progress.line(message);
    }
}

/// Load before the fault and after the heal, scaled to the duration.
fn before_and_after(duration: Duration) -> (Duration, Duration) {
    let before = (duration / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
    // At least the 2 s the RTO looks at, plus a little.
    let after = (duration / 2).clamp(Duration::from_millis(2500), Duration::from_secs(10));
    (before, after)
}

/// Waits until every node and gateway answers and the deployment is settled.
async fn wait_ready(deployment: &Deployment, cancel: &watch::Receiver<bool>) -> Result<(), DrillError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut healthy = true;
        for gateway in &deployment.gateways {
            healthy &= deployment.answers(&gateway.url, "/gateway/healthz", Duration::from_secs(1)).await;
        }
        for node in deployment.nodes() {
            healthy &= deployment.answers(&node.url, "/readyz", Duration::from_secs(1)).await;
        }
        if healthy && settled(deployment).await? {
            return Ok(());
        }
        if *cancel.borrow() {
            return Err(DrillError::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(DrillError::Deployment(format!(
                "the deployment was not healthy and settled (queues empty, replication caught up) within {} s",
                READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
    }
}

/// Every node's queue is empty and every region has applied every other's outbox.
async fn settled(deployment: &Deployment) -> Result<bool, DrillError> {
    for node in deployment.nodes() {
        if deployment.queue_depth(&node.url, Duration::from_secs(1)).await != Some(0) {
            return Ok(false);
        }
    }
    checker::replication_caught_up(deployment).await
}

/// Sum of every node's queue depth, `None` when a node does not answer.
async fn total_queue_depth(deployment: &Deployment) -> Option<u64> {
    let mut total = 0;
    for node in deployment.nodes() {
        total += deployment.queue_depth(&node.url, QUEUE_POLL_TIMEOUT).await?;
    }
    Some(total)
}

/// The gateways' retry counters, by reason, summed over the gateways.
async fn gateway_retries(deployment: &Deployment) -> BTreeMap<String, u64> {
    let mut retries = BTreeMap::new();
    for gateway in &deployment.gateways {
        if let Some(metrics) = deployment.metrics(&gateway.url).await {
            for (labels, value) in metric_samples(&metrics, "rananeeti_gateway_retries_total") {
                let reason = labels.trim_start_matches("reason=\"").trim_end_matches('"').to_string();
                *retries.entry(reason).or_insert(0) += value as u64;
            }
        }
    }
    retries
}

/// Each region's nodes' highest replication lag, now.
async fn replication_lag(deployment: &Deployment) -> BTreeMap<String, f64> {
    let mut lag = BTreeMap::new();
    for region in &deployment.regions {
        for node in &region.nodes {
            if let Some(metrics) = deployment.metrics(&node.url).await {
                for (_, value) in metric_samples(&metrics, "rananeeti_replication_lag_seconds") {
                    let highest = lag.entry(region.name.clone()).or_insert(0.0_f64);
                    *highest = highest.max(value);
                }
            }
        }
    }
    lag
}

/// Runs one scenario against the deployment in `config.data` and reports it.
pub(crate) async fn run_scenario(
    scenario: &Scenario,
    config: &DrillConfig,
    cancel: &watch::Receiver<bool>,
    progress: &Progress,
) -> ScenarioReport {
    let info = scenario.info;
    if info.destroys_data && !config.destroy_allowed {
        return ScenarioReport::not_run(
            info.name,
            info.summary,
            Outcome::Skipped,
            "destroys data on purpose: run it with --yes".into(),
        );
    }
    let deployment = match Deployment::load(&config.data) {
        Ok(deployment) => deployment,
        Err(error) => return ScenarioReport::not_run(info.name, info.summary, Outcome::Error, error.to_string()),
    };
    if let Some(reason) = (scenario.cannot_run)(&deployment, config) {
        return ScenarioReport::not_run(info.name, info.summary, Outcome::Skipped, reason);
    }
    progress.set_scenario(info.name);
    match run_checked(scenario, &deployment, config, cancel, progress).await {
        Ok(report) => report,
        Err(error) => ScenarioReport::not_run(info.name, info.summary, Outcome::Error, error.to_string()),
    }
}

async fn run_checked(
    scenario: &Scenario,
    deployment: &Deployment,
    config: &DrillConfig,
    cancel: &watch::Receiver<bool>,
    progress: &Progress,
) -> Result<ScenarioReport, DrillError> {
    progress.line("waiting for the deployment to be healthy and settled");
    wait_ready(deployment, cancel).await?;
    let stock_before: StockSnapshot = checker::stock_snapshot(deployment).await?;
    let retries_before = gateway_retries(deployment).await;
    let tag = workload::new_tag();
    progress.line(&format!("signing up shoppers, then load at {}/s (run {tag})", config.rate_per_second));
    let workload = Workload::start(deployment.gateway_urls(), config.rate_per_second, tag.clone()).await?;
    let origin = workload.origin();

    // The queues, watched through the whole run (the drain time and the chart).
    let queue_series: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    let (stop_watching, mut watching) = watch::channel(false);
    let watcher = {
        let deployment = deployment.clone();
        let series = Arc::clone(&queue_series);
        tokio::spawn(async move {
            loop {
                if let Some(depth) = total_queue_depth(&deployment).await {
                    let at = origin.elapsed().as_millis() as u32;
                    series.lock().unwrap_or_else(|p| p.into_inner()).push((at, depth));
                }
                tokio::select! {
                    _ = tokio::time::sleep(SETTLE_POLL_INTERVAL) => {}
                    _ = watching.changed() => return,
                }
            }
        })
    };

    let healer = Healer::new(deployment.clone(), Arc::clone(&config.databases));
    let run = FaultRun {
        deployment,
        healer: &healer,
        config,
        workload: &workload,
        fault_at: Mutex::new(None),
        healed_at: Mutex::new(None),
        cancel: cancel.clone(),
        progress,
    };
    let (before, after) = before_and_after(config.duration);
    let ticker = progress.ticker(&workload);
    let mut result = run.hold(before).await;
    let lag_at_fault = replication_lag(deployment).await;
    let mut injected = None;
    if result.is_ok() {
        match (scenario.fault)(&run).await {
            Ok(done) => injected = Some(done),
            Err(error) => result = Err(error),
        }
    }
    // Whatever the scenario left set (an error, an interruption) is healed before anything else.
    let healed = healer.heal().await;
    if run.healed_at.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
        run.healed_now();
    }
    if result.is_ok() {
        result = healed;
    }
    if result.is_ok() {
        result = run.hold(after).await;
    }
    let load_seconds = origin.elapsed().as_secs_f64();
    let fault_at = run.fault_at.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(origin);
    let healed_at = run.healed_at.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(fault_at);
    drop(run);
    let recorded = workload.stop().await;
    drop(ticker);
    result?;
    let injected = injected.expect("a fault that returned Ok");

    progress.line("settling: queues empty, replication caught up");
    let settle_started = Instant::now();
    let mut is_settled = false;
    while settle_started.elapsed() < config.settle_timeout {
        if settled(deployment).await? {
            is_settled = true;
            break;
        }
        if *cancel.borrow() {
            return Err(DrillError::Interrupted);
        }
        tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
    }
    let settle_seconds = settle_started.elapsed().as_secs_f64();
    let _ = stop_watching.send(true);
    let _ = watcher.await;
    let mut queued = HashSet::new();
    for node in deployment.nodes() {
        // A node that cannot say what it holds fails the check rather than hiding a loss.
        queued.extend(deployment.queued_ids(&node.url).await?);
    }
    progress.line("checking every acknowledged write in every region's database");
    let checked = checker::check(deployment, &recorded, origin, &tag, &stock_before, &queued).await?;
    let retries_after = gateway_retries(deployment).await;

    let fault_ms = fault_at.saturating_duration_since(origin).as_millis() as u32;
    let heal_ms = healed_at.saturating_duration_since(origin).as_millis() as u32;
    let load_end_ms = (load_seconds * 1000.0) as u32;
    let queue_series = std::mem::take(&mut *queue_series.lock().unwrap_or_else(|p| p.into_inner()));
    let queue_drained_after_heal_seconds = queue_series
        .iter()
        .find(|(at, depth)| *at >= heal_ms && *depth == 0)
        .map(|(at, _)| f64::from(at - heal_ms) / 1000.0)
        .or_else(|| is_settled.then(|| load_seconds - f64::from(heal_ms) / 1000.0 + settle_seconds));

    Ok(build_report(
        scenario,
        config,
        &recorded,
        checked,
        Figures {
            injected,
            fault_ms,
            heal_ms,
            load_end_ms,
            load_seconds,
            lag_at_fault,
            retries_before,
            retries_after,
            settle: Settle { settled: is_settled, seconds: settle_seconds, queue_drained_after_heal_seconds },
            queue_series,
        },
    ))
}

/// What the harness measured besides the requests and the check.
struct Figures {
    injected: Injected,
    fault_ms: u32,
    heal_ms: u32,
    load_end_ms: u32,
    load_seconds: f64,
    lag_at_fault: BTreeMap<String, f64>,
    retries_before: BTreeMap<String, u64>,
    retries_after: BTreeMap<String, u64>,
    settle: Settle,
    queue_series: Vec<(u32, u64)>,
}

fn build_report(
    scenario: &Scenario,
    config: &DrillConfig,
    recorded: &Recorded,
    checked: checker::Checked,
    figures: Figures,
) -> ScenarioReport {
    let samples = &recorded.samples;
    let rto_ms = figures::rto_ms(samples, figures.fault_ms, figures.load_end_ms);
    let rto = Rto {
        seconds: rto_ms.map(|ms| f64::from(ms) / 1000.0),
        longest_failed_run: figures::longest_failed_run(samples),
    };
    let unanswered = figures::writes_unanswered_within_budget(samples, config.budget_ms);
    let gateway_retries = figures
        .retries_after
        .iter()
        .map(|(reason, after)| {
            // A gateway restarted during the run starts its counter again from zero.
            let before = figures.retries_before.get(reason).copied().unwrap_or(0);
            (reason.clone(), if *after >= before { after - before } else { *after })
        })
        .filter(|(_, count)| *count > 0)
        .collect();
    let succeeded = samples.iter().filter(|sample| sample.answer.succeeded()).count();
    let rpo: Vec<RegionRpo> = checked
        .regions
        .iter()
        .map(|region| RegionRpo {
            region: region.region.clone(),
            missing: region.missing,
            window_seconds: region.window_seconds,
            replication_lag_at_fault_seconds: figures.lag_at_fault.get(&region.region).copied(),
        })
        .collect();

    let mut targets = vec![
        Target {
            name: "lost".into(),
            target: "0".into(),
            value: checked.lost.to_string(),
            met: checked.lost == 0,
            timing: false,
        },
        Target {
            name: "duplicated".into(),
            target: "0".into(),
            value: checked.duplicated.to_string(),
            met: checked.duplicated == 0,
            timing: false,
        },
        Target {
            name: "stuck after settling".into(),
            target: "0".into(),
            value: checked.stuck.to_string(),
            met: checked.stuck == 0,
            timing: false,
        },
    ];
    let missing_total: usize = rpo.iter().map(|region| region.missing).sum();
    targets.push(Target {
        name: "RPO (acknowledged writes missing in any region)".into(),
        target: "0".into(),
        value: rpo.iter().map(|region| format!("{} {}", region.region, region.missing)).collect::<Vec<_>>().join(", "),
        met: missing_total == 0,
        timing: false,
    });
    if scenario.rto_target {
        targets.push(Target {
            name: "RTO".into(),
            target: format!("≤ {} s", RTO_TARGET.as_secs()),
            value: report::seconds(rto.seconds),
            met: rto_ms.is_some_and(|ms| Duration::from_millis(u64::from(ms)) <= RTO_TARGET),
            timing: true,
        });
    }
    if scenario.budget_target {
        targets.push(Target {
            name: format!("writes answered within the {} ms budget", config.budget_ms),
            target: "all".into(),
            value: format!("{unanswered} were not"),
            met: unanswered == 0,
            timing: true,
        });
        let drained = figures.settle.queue_drained_after_heal_seconds;
        targets.push(Target {
            name: "queue drained after the database is back".into(),
            target: format!("≤ {} s", QUEUE_DRAINED_TARGET.as_secs()),
            value: report::seconds(drained),
            met: drained.is_some_and(|seconds| seconds <= QUEUE_DRAINED_TARGET.as_secs_f64()),
            timing: true,
        });
    }
    if let Some(restore) = &figures.injected.restore {
        targets.push(Target {
            name: "restored deployment serves every write acknowledged before the backup".into(),
            target: "0 missing".into(),
            value: format!("{} of {} missing", restore.missing, restore.writes_checked),
            met: restore.missing == 0 && restore.writes_checked > 0,
            timing: false,
        });
        targets.push(Target {
            name: "time until the restored deployment serves them (the seed's RTO)".into(),
            target: format!("≤ {} s", restore::SERVING_TARGET.as_secs()),
            value: report::seconds(restore.serving_seconds),
            met: restore.serving_seconds.is_some_and(|seconds| seconds <= restore::SERVING_TARGET.as_secs_f64()),
            timing: true,
        });
    }
    let outcome = if targets.iter().all(|target| target.met) { Outcome::Passed } else { Outcome::Failed };
    ScenarioReport {
        name: scenario.info.name.into(),
        summary: scenario.info.summary.into(),
        outcome,
        reason: None,
        fault: Some(Fault {
            what: figures.injected.what,
            at_seconds: f64::from(figures.fault_ms) / 1000.0,
            healed_at_seconds: f64::from(figures.heal_ms) / 1000.0,
        }),
        load: Some(Load {
            seconds: figures.load_seconds,
            rate_per_second: config.rate_per_second,
            requests: samples.len(),
            succeeded,
            failed: samples.len() - succeeded,
            shed_by_client: recorded.shed_by_client,
            answers: figures::answers(samples),
            answers_by_request: figures::answers_by_request(samples),
            gateway_retries,
        }),
        rto: Some(rto),
        rpo,
        latency_ms: Some(figures::latency_by_phase(samples, figures.fault_ms, figures.heal_ms)),
        latency_ms_by_request: figures::latency_by_request(samples),
        writes_unanswered_within_budget: Some(unanswered),
        writes: Some(checked),
        settle: Some(figures.settle),
        restore: figures.injected.restore,
        targets,
        timeline: figures::timeline(samples, figures.load_end_ms, &figures.queue_series),
    }
}
