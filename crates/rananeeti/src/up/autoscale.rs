//! `up --nodes-per-region MIN..MAX`: every sample interval, each region's average CPU of its node
//! processes decides (like Kubernetes' HPA, with its stabilization windows) whether the region
//! gets a node more or a node less; each decision is a `scale` event (docs/logs.md).
//!
//! CPU of a node: the user plus system time of its process (`/proc/PID/stat` `utime` + `stime`)
//! spent between two samples, over the wall time between them, in percent of one core (a node
//! busy on two cores is 200%). A region's average is the mean over its node processes.
//!
//! Every region has MAX slots from the start (ports, data directories, and a place in every
//! node's `--peer` list), MIN of them running: starting a slot's node changes no other node's
//! arguments, exactly as a roll does (`up/deploy.rs`). A slot's supervisor starts and stops its
//! node (`up::supervise`), through the steps a roll uses (`up/membership.rs`); a region's lock,
//! which a deploy holds while it rolls the region, keeps the two apart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};

use super::membership::{ready_to_leave, wait_queue_empty, Membership};
use super::{RunningNode, SlotCommand, TopologyFile};

/// HPA's tolerance: a ratio of average to target within 10% of 1 changes nothing.
const TOLERANCE: f64 = 0.1;
/// Recommendations kept per region (the longest window over the shortest interval, bounded).
const RECOMMENDATIONS_MAX: usize = 4096;

/// `--nodes-per-region`: a fixed count (`2`), or a range the autoscaler keeps (`1..3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodesPerRegion {
    min: u32,
    max: u32,
}

impl NodesPerRegion {
    /// Nodes each region starts with, and never goes below.
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Slots each region has (ports, data directories), and the most nodes it runs.
    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn is_range(&self) -> bool {
        self.min != self.max
    }
}

impl FromStr for NodesPerRegion {
    type Err = String;

    fn from_str(text: &str) -> Result<NodesPerRegion, String> {
        let number = |part: &str| {
            part.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or(format!("{part:?} is not a whole number from 1"))
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (number(min)?, number(max)?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("{text}: MIN must not be above MAX"));
        }
        Ok(NodesPerRegion { min, max })
    }
}

impl fmt::Display for NodesPerRegion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_range() {
            write!(formatter, "{}..{}", self.min, self.max)
        } else {
            write!(formatter, "{}", self.min)
        }
    }
}

/// What the autoscaler keeps to, for every region.
#[derive(Clone, Debug)]
pub(super) struct Policy {
    pub(super) nodes: NodesPerRegion,
    /// The average CPU per node it aims at, in percent of one core.
    pub(super) target_cpu_percent: f64,
    /// A scale up happens once every recommendation within it asks for more (0: at once).
    pub(super) up_window: Duration,
    /// A scale down happens once every recommendation within it asks for fewer.
    pub(super) down_window: Duration,
    pub(super) sample_interval: Duration,
}

/// Why a region changes size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Reason {
    CpuAboveTarget,
    CpuBelowTarget,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::CpuAboveTarget => "cpu_above_target",
            Reason::CpuBelowTarget => "cpu_below_target",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Decision {
    Hold,
    /// One node more or one node less (`to` is `from` ± 1).
    Scale {
        from: u32,
        to: u32,
        reason: Reason,
        window: Duration,
    },
}

/// One region's recommendations over time, and the decision they make (pure: no clock, no I/O).
#[derive(Debug)]
pub(super) struct Recommender {
    policy: Policy,
    /// (when, desired count), oldest first.
    recommendations: VecDeque<(Duration, u32)>,
    /// When the first sample was seen: a window is passed only once it has been watched whole.
    first_sample: Option<Duration>,
}

impl Recommender {
    pub(super) fn new(policy: Policy) -> Recommender {
        Recommender { policy, recommendations: VecDeque::new(), first_sample: None }
    }

    /// HPA's desired count for one sample: `ceil(current * average / target)`, unchanged within
    /// the tolerance, clamped to MIN..MAX.
    pub(super) fn desired(&self, current: u32, average_cpu_percent: f64) -> u32 {
        let ratio = average_cpu_percent / self.policy.target_cpu_percent;
        let desired =
            if (ratio - 1.0).abs() <= TOLERANCE { current } else { (f64::from(current) * ratio).ceil() as u32 };
        desired.clamp(self.policy.nodes.min, self.policy.nodes.max)
    }

    /// Takes the sample made at `now` (time since any fixed start) of a region running
    /// `current` nodes, and decides: up when every recommendation within the up window asks for
    /// more, down when every one within the down window (watched whole) asks for fewer; one node
    /// per step.
    pub(super) fn decide(&mut self, now: Duration, current: u32, average_cpu_percent: f64) -> Decision {
        let desired = self.desired(current, average_cpu_percent);
        let first = *self.first_sample.get_or_insert(now);
        self.recommendations.push_back((now, desired));
        let longest = self.policy.up_window.max(self.policy.down_window);
        while self.recommendations.front().is_some_and(|(at, _)| now.saturating_sub(*at) > longest)
            || self.recommendations.len() > RECOMMENDATIONS_MAX
        {
            self.recommendations.pop_front();
        }
        assert!(!self.recommendations.is_empty(), "the sample just taken is kept");
        let within = |window: Duration| {
            self.recommendations.iter().filter(move |(at, _)| now.saturating_sub(*at) <= window).map(|(_, n)| *n)
        };
        let up = within(self.policy.up_window).min().expect("the newest recommendation is within every window");
        if up > current && current < self.policy.nodes.max {
            return Decision::Scale {
                from: current,
                to: current + 1,
                reason: Reason::CpuAboveTarget,
                window: self.policy.up_window,
            };
        }
        let watched_whole = now.saturating_sub(first) >= self.policy.down_window;
        let down = within(self.policy.down_window).max().expect("the newest recommendation is within every window");
        if watched_whole && down < current && current > self.policy.nodes.min {
            return Decision::Scale {
                from: current,
                to: current - 1,
                reason: Reason::CpuBelowTarget,
                window: self.policy.down_window,
            };
        }
        Decision::Hold
    }
}

/// CPU seconds a process has used (`utime + stime` of `/proc/PID/stat`), or `None` when it is gone.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it,
    // where field 3 (state) is the first.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

/// The kernel's clock ticks per second, the unit of `utime` and `stime`.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointer and changes nothing.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK) = {ticks}");
    ticks as f64
}

/// Each node process's CPU seconds at the last sample.
struct CpuSampler {
    ticks_per_second: f64,
    last: HashMap<u32, (Instant, f64)>,
}

impl CpuSampler {
    /// The average CPU percent of `pids` since the last sample; `None` when one of them was not
    /// sampled before (it just started) or is gone.
    fn average(&mut self, pids: &[u32]) -> Option<f64> {
        let now = Instant::now();
        let mut total = 0.0;
        let mut complete = true;
        for pid in pids {
            let Some(seconds) = cpu_seconds(*pid, self.ticks_per_second) else {
                complete = false;
                self.last.remove(pid);
                continue;
            };
            match self.last.insert(*pid, (now, seconds)) {
                Some((at, before)) if now > at => {
                    total += (seconds - before).max(0.0) / now.duration_since(at).as_secs_f64() * 100.0;
                }
                _ => complete = false,
            }
        }
        (complete && !pids.is_empty()).then(|| total / pids.len() as f64)
    }

    fn forget_all_but(&mut self, pids: &[u32]) {
        self.last.retain(|pid, _| pids.contains(pid));
    }
}

/// What the autoscaler asks a slot's supervisor.
pub(super) struct ScaleRequest {
    pub(super) start: bool,
    pub(super) done: oneshot::Sender<Result<String, String>>,
}

/// One region, as the autoscaler sees it.
pub(super) struct RegionSlots {
    pub(super) name: String,
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
    /// Its slots' supervisors, in slot order; the first `running` have a node.
    pub(super) slots: Vec<mpsc::Sender<SlotCommand>>,
    pub(super) running: u32,
}

/// Samples every region each interval and scales it as `Recommender` decides, until shutdown.
pub(super) async fn run(
    policy: Policy,
    mut regions: Vec<RegionSlots>,
    topology: TopologyFile,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut sampler = CpuSampler { ticks_per_second: ticks_per_second(), last: HashMap::new() };
    let mut recommenders: Vec<Recommender> = regions.iter().map(|_| Recommender::new(policy.clone())).collect();
    let mut decisions_total: BTreeMap<(String, Reason), u64> = BTreeMap::new();
    let mut interval = tokio::time::interval(policy.sample_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|requested| *requested) => return,
        }
        let snapshot = topology.snapshot();
        let mut all_pids = Vec::new();
        for (region, recommender) in regions.iter_mut().zip(&mut recommenders) {
            // A deploy rolling the region holds its lock (and lists a slot's two nodes while they
            // overlap): the region is neither measured nor scaled until the roll is done.
            let Ok(_region_guard) = region.lock.try_lock() else {
                tracing::info!(region = %region.name, "a deploy is rolling this region; scaling waits for it");
                continue;
            };
            let Some(listed) = snapshot.regions.iter().find(|listed| listed.name == region.name) else { continue };
            // A node restarting has no pid: the region is not measured until it runs again.
            let Some(pids) = listed.nodes.iter().map(|node| node.pid).collect::<Option<Vec<u32>>>() else { continue };
            all_pids.extend_from_slice(&pids);
            let Some(average) = sampler.average(&pids) else { continue };
            if pids.len() != region.running as usize {
                continue;
            }
            let current = region.running;
            let Decision::Scale { from, to, reason, window } = recommender.decide(started.elapsed(), current, average)
            else {
                continue;
            };
            let count = decisions_total.entry((region.name.clone(), reason)).or_insert(0);
            *count += 1;
            let decisions_total = *count;
            let outcome = step(region, to > from, &mut shutdown).await;
            if outcome.is_ok() {
                region.running = to;
            }
            let detail = match reason {
                Reason::CpuAboveTarget => format!(
                    "average CPU {average:.0}% above the target {:.0}% (scale-up window {} s)",
                    policy.target_cpu_percent,
                    window.as_secs()
                ),
                Reason::CpuBelowTarget => format!(
                    "average CPU {average:.0}% below the target {:.0}% for the scale-down window ({} s)",
                    policy.target_cpu_percent,
                    window.as_secs()
                ),
            };
            match outcome {
                Ok(node) => tracing::info!(
                    event = "scale",
                    outcome = "ok",
                    region = %region.name,
                    from,
                    to,
                    node = %node,
                    reason = reason.as_str(),
                    detail = %detail,
                    cpu_percent = average,
                    target_cpu_percent = policy.target_cpu_percent,
                    window_seconds = window.as_secs(),
                    decisions_total,
                    "scaled"
                ),
                Err(error) => tracing::warn!(
                    event = "scale",
                    outcome = "failed",
                    error = %error,
                    region = %region.name,
                    from,
                    to,
                    reason = reason.as_str(),
                    detail = %detail,
                    cpu_percent = average,
                    target_cpu_percent = policy.target_cpu_percent,
                    window_seconds = window.as_secs(),
                    decisions_total,
                    "scaling failed"
                ),
            }
        }
        sampler.forget_all_but(&all_pids);
    }
}

/// Asks the next slot to start, or the last running one to stop; the node's name, or why not.
/// Not timed out here: every wait of the step is bounded in `up/membership.rs` (30 s to serve,
/// 10 s to be healthy, 30 s to drain, 30 s for the queue), and an answer given up on would leave
/// the count kept here unlike what the slot did.
async fn step(region: &RegionSlots, up: bool, shutdown: &mut watch::Receiver<bool>) -> Result<String, String> {
    let index = if up { region.running } else { region.running - 1 } as usize;
    let slot = region.slots.get(index).ok_or(format!("{} has no slot {index}", region.name))?;
    let (done, answer) = oneshot::channel();
    slot.send(SlotCommand::Scale(ScaleRequest { start: up, done }))
        .await
        .map_err(|_| format!("the supervisor of {}'s slot {} is gone", region.name, index + 1))?;
    tokio::select! {
        answer = answer => answer.unwrap_or_else(|_| Err("the slot's supervisor stopped answering".to_string())),
        _ = shutdown.wait_for(|requested| *requested) => Err("shutdown requested".to_string()),
    }
}

/// Starts a parked slot's node and makes it serve: ready, listed last in its region, registered
/// at every gateway and healthy there; undone when it does not get there.
pub(super) async fn bring_in(
    membership: &Membership,
    node: &mut RunningNode,
    executable: &std::path::Path,
    topology: &TopologyFile,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let token = membership.token()?;
    let gateways = topology.gateway_urls();
    let mut new = membership.start(executable, &node.plan, shutdown).await?;
    let added = async {
        membership.add(topology, None, &new, &gateways, &token).await?;
        membership.wait_healthy(&gateways, &token, &new.plan.name, shutdown).await
    }
    .await;
    if let Err(error) = added {
        membership.withdraw(topology, &mut new, &gateways, &token).await;
        return Err(error.context(format!("{} was not added", new.plan.name)));
    }
    *node = new;
    Ok(())
}

/// Takes a node out of its region: refused while its store is down or its queue holds writes
/// (its queue is opened by its process alone, so it must be empty when the process stops);
/// drained at every gateway, waited for (no request in flight, queue empty: else undrained and
/// kept), unlisted, stopped with SIGTERM and removed from the gateways.
pub(super) async fn take_out(
    membership: &Membership,
    node: &mut RunningNode,
    topology: &TopologyFile,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = node.plan.name.clone();
    let url = node.plan.url();
    ready_to_leave(membership.client(), &url).await.with_context(|| format!("{name} is not removed"))?;
    let token = membership.token()?;
    let gateways = topology.gateway_urls();
    membership.set_drained(&gateways, &token, &name, true).await?;
    if let Err(error) = membership.wait_no_requests(&gateways, &token, &name, shutdown).await {
        tracing::warn!(node = %name, error = format!("{error:#}"), "stopping it anyway (SIGTERM lets it finish them)");
    }
    if let Err(error) = wait_queue_empty(membership.client(), &url, shutdown).await {
        let _ = membership.set_drained(&gateways, &token, &name, false).await;
        return Err(error.context(format!("{name} is kept (undrained)")));
    }
    membership.retire(topology, node, &gateways, &token).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32, up_seconds: u64, down_seconds: u64) -> Policy {
        Policy {
            nodes: NodesPerRegion { min, max },
            target_cpu_percent: 50.0,
            up_window: Duration::from_secs(up_seconds),
            down_window: Duration::from_secs(down_seconds),
            sample_interval: Duration::from_secs(5),
        }
    }

    fn at(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn nodes_per_region_is_a_count_or_a_range() {
        assert_eq!("2".parse::<NodesPerRegion>(), Ok(NodesPerRegion { min: 2, max: 2 }));
        assert_eq!("1..3".parse::<NodesPerRegion>(), Ok(NodesPerRegion { min: 1, max: 3 }));
        assert!(!"2".parse::<NodesPerRegion>().unwrap().is_range());
        assert!("1..3".parse::<NodesPerRegion>().unwrap().is_range());
        for wrong in ["0", "3..1", "0..2", "1..", "a", "1..3..4", ""] {
            assert!(wrong.parse::<NodesPerRegion>().is_err(), "{wrong:?} is refused");
        }
        assert_eq!("1..3".parse::<NodesPerRegion>().unwrap().to_string(), "1..3");
    }

    #[test]
    fn desired_follows_the_hpa_formula_within_the_tolerance_and_the_range() {
        let recommender = Recommender::new(policy(1, 8, 0, 300));
        assert_eq!(recommender.desired(2, 100.0), 4, "ceil(2 * 100 / 50)");
        assert_eq!(recommender.desired(3, 60.0), 4, "ceil(3 * 1.2) = ceil(3.6)");
        assert_eq!(recommender.desired(3, 54.0), 3, "within 10% of the target: unchanged");
        assert_eq!(recommender.desired(4, 10.0), 1, "ceil(4 * 0.2) = ceil(0.8)");
        assert_eq!(recommender.desired(2, 1000.0), 8, "clamped to MAX");
        assert_eq!(recommender.desired(4, 0.0), 1, "clamped to MIN");
    }

    #[test]
    fn a_high_average_scales_up_at_once_one_node_a_step_and_never_past_max() {
        let mut recommender = Recommender::new(policy(1, 3, 0, 300));
        assert_eq!(
            recommender.decide(at(0), 1, 200.0),
            Decision::Scale { from: 1, to: 2, reason: Reason::CpuAboveTarget, window: at(0) },
            "desired 4, one step at a time"
        );
        assert_eq!(
            recommender.decide(at(5), 2, 100.0),
            Decision::Scale { from: 2, to: 3, reason: Reason::CpuAboveTarget, window: at(0) }
        );
        assert_eq!(recommender.decide(at(10), 3, 300.0), Decision::Hold, "at MAX");
    }

    #[test]
    fn an_up_window_needs_every_recommendation_in_it_to_ask_for_more() {
        let mut recommender = Recommender::new(policy(1, 3, 10, 300));
        assert_eq!(recommender.decide(at(0), 1, 10.0), Decision::Hold);
        // High now, but the low sample 5 s ago is within the 10 s window.
        assert_eq!(recommender.decide(at(5), 1, 200.0), Decision::Hold);
        assert_eq!(recommender.decide(at(10), 1, 200.0), Decision::Hold, "the low one is 10 s old: still in");
        assert_eq!(
            recommender.decide(at(16), 1, 200.0),
            Decision::Scale { from: 1, to: 2, reason: Reason::CpuAboveTarget, window: at(10) },
            "every recommendation of the last 10 s asks for more"
        );
    }

    #[test]
    fn scale_down_waits_for_the_whole_down_window_of_low_load_and_never_goes_below_min() {
        let mut recommender = Recommender::new(policy(1, 3, 0, 30));
        // Low from the first sample on, but the window has not been watched whole yet.
        for seconds in [0, 10, 20] {
            assert_eq!(recommender.decide(at(seconds), 3, 5.0), Decision::Hold, "at {seconds} s");
        }
        assert_eq!(
            recommender.decide(at(30), 3, 5.0),
            Decision::Scale { from: 3, to: 2, reason: Reason::CpuBelowTarget, window: at(30) }
        );
        // One busy sample inside the window holds the region at its size for another window.
        assert_eq!(recommender.decide(at(35), 2, 50.0), Decision::Hold);
        for seconds in [40, 50, 60] {
            assert_eq!(recommender.decide(at(seconds), 2, 5.0), Decision::Hold, "at {seconds} s");
        }
        assert_eq!(
            recommender.decide(at(66), 2, 5.0),
            Decision::Scale { from: 2, to: 1, reason: Reason::CpuBelowTarget, window: at(30) },
            "the busy sample is older than the window"
        );
        assert_eq!(recommender.decide(at(100), 1, 0.0), Decision::Hold, "at MIN");
    }

    #[test]
    fn a_fixed_count_never_scales() {
        let mut recommender = Recommender::new(policy(2, 2, 0, 0));
        assert_eq!(recommender.decide(at(0), 2, 500.0), Decision::Hold);
        assert_eq!(recommender.decide(at(1), 2, 0.0), Decision::Hold);
    }

    #[test]
    fn recommendations_are_bounded() {
        let mut recommender = Recommender::new(policy(1, 3, 0, 1_000_000));
        for seconds in 0..(RECOMMENDATIONS_MAX as u64 + 100) {
            recommender.decide(at(seconds), 2, 50.0);
        }
        assert!(recommender.recommendations.len() <= RECOMMENDATIONS_MAX);
    }

    #[test]
    fn this_process_cpu_time_is_read_from_proc() {
        let ticks = ticks_per_second();
        let pid = std::process::id();
        let before = cpu_seconds(pid, ticks).expect("our own /proc/PID/stat");
        // Spin until 100 ms of CPU time show, however busy the machine; bounded by wall time.
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.1 && Instant::now() < give_up {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = cpu_seconds(pid, ticks).unwrap();
        }
        assert!(after - before >= 0.1, "spinning shows as CPU time: {before} then {after}");
        assert_eq!(cpu_seconds(u32::MAX, ticks), None, "no such process");
    }
}
