//! The platform: submit a command within a budget (store, else fallback queue), look up any
//! command's status, and drain the queue into the store when it is healthy again.

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Transition};
use crate::command::{ApplyError, Command, CommandHandler, NewCommand, Registry, WritePattern};
use crate::copies::{CopyDurability, QueueCopier};
use crate::faults::{Faults, StoreAccess};
use crate::hlc::{wall_clock_ms, HlcClock};
use crate::id::CommandId;
use crate::metrics::{OutcomeLabels, PlatformMetrics};
use crate::ownership::{ForwardError, Forwarded, Forwarder, Ownership, OwnershipConfig, Route};
use crate::requests::RequestId;
use crate::store::{is_transient, Store, StoreError, StoreKind};
use futures::future::BoxFuture;
use rananeeti_queue::{Enqueued, Queue, QueueError};
use rand::Rng;
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SubmitConfig {
    /// Every submit is answered within this time.
    pub budget_ms: u64,
    /// Store attempts at most, per submit.
    pub attempts_max: u32,
    /// First backoff between attempts; doubles, with full jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Part of the budget kept for the queue fallback (its fsync).
    pub queue_reserve_ms: u64,
}

impl Default for SubmitConfig {
    fn default() -> Self {
        SubmitConfig {
            budget_ms: 2000,
            attempts_max: 3,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            queue_reserve_ms: 500,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DrainConfig {
    /// Entries applied or forwarded per drain round, at most.
    pub batch_entries_max: usize,
    /// Entries looked at per drain round, at most (held and skipped ones included); the next
    /// round goes on where this one stopped.
    pub scan_entries_max: usize,
    /// Pause between rounds when the queue is empty or the store is unavailable.
    pub idle_ms: u64,
    /// Longest one queued command's apply may take.
    pub apply_timeout_ms: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { batch_entries_max: 256, scan_entries_max: 4096, idle_ms: 100, apply_timeout_ms: 5000 }
    }
}

#[derive(Clone, Debug)]
pub struct PlatformConfig {
    pub region: String,
    pub node: String,
    pub submit: SubmitConfig,
    pub breaker: BreakerConfig,
    pub drain: DrainConfig,
    /// Peers pull this region's outbox: on PostgreSQL, make outbox order the commit order (a lock
    /// held to COMMIT, which costs throughput). Every node of a region must agree on it.
    pub outbox_commit_ordered: bool,
    /// Commands applied from a peer go into this region's outbox too, so that every region gets
    /// every write from any survivor (deployments of three or more regions).
    pub relay: bool,
    /// When a committed write is answered *committed*: at once (`Async`), or once another region
    /// holds it (`RegionSync`; else it is answered *pending*).
    pub durability: Durability,
    /// Who applies `global` and `home` writes, and the lease that fences a cut-off owner.
    pub ownership: OwnershipConfig,
}

/// When a write committed in this region is answered *committed*.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Once committed here; other regions get it within the replication lag (a region lost in
    /// that window loses it).
    #[default]
    Async,
    /// Once committed here and held durably by at least one other region; when none confirms
    /// within the submit budget, *pending* (durable here, confirmed once a peer holds it).
    RegionSync,
}

/// A pool to read from, and whether it is another region's (stale: replicated, may lag).
#[derive(Clone, Debug)]
pub struct ReadPool {
    pub pool: AnyPool,
    /// The region whose database this is, when it is not this region's.
    pub stale_from: Option<String>,
}

/// Where a command stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum CommandState {
    Committed,
    Pending,
    Rejected { reason: String },
}

impl CommandState {
    pub fn as_str(&self) -> &'static str {
        match self {
            CommandState::Committed => "committed",
            CommandState::Pending => "pending",
            CommandState::Rejected { .. } => "rejected",
        }
    }
}

/// The answer to a submit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Committed,
    /// Already submitted; carries where the first one stands.
    Duplicate {
        first: CommandState,
    },
    /// Durably queued; will be applied when the store is back.
    Pending,
    Rejected {
        reason: String,
    },
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Pending => "pending",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Submitted {
    pub id: CommandId,
    pub outcome: Outcome,
    /// For a newly queued command when queue copies are on: whether the peer node holds a copy.
    pub copied: Option<bool>,
}

/// Where a command is held: the region's store, or a node's fallback queue.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommandStatus {
    pub id: CommandId,
    pub kind: String,
    #[serde(flatten)]
    pub state: CommandState,
    /// The region whose store holds it (or will).
    pub region: String,
    /// "store" when in the region's database, "queue" when in a node's fallback queue.
    pub stored_in: &'static str,
    /// The node that applied it, or whose queue holds it.
    pub node: String,
    pub payload: serde_json::Value,
    pub hlc: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no handler for command kind {0}")]
    UnknownKind(String),
    /// Not acknowledged: the client may retry.
    #[error("store failed with a non-retryable error: {0}")]
    Store(sqlx::Error),
    /// Not acknowledged: neither the store nor the queue took it.
    #[error("neither the store nor the fallback queue could take the command: {0}")]
    Queue(QueueError),
    /// Not acknowledged: the queue did not answer within the budget.
    #[error("the fallback queue did not answer within the budget")]
    QueueTimeout,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreUnavailable {
    #[error("store unavailable (injected fault)")]
    Injected,
    #[error("store did not answer in time")]
    Timeout,
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Why one store attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    Transient(String),
    Permanent(sqlx::Error),
}

impl From<sqlx::Error> for AttemptError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            AttemptError::Transient(error.to_string())
        } else {
            AttemptError::Permanent(error)
        }
    }
}

impl From<StoreError> for AttemptError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Sqlx(error) => error.into(),
            StoreError::Migration { source, .. } if is_transient(&source) => {
                AttemptError::Transient(source.to_string())
            }
            other => AttemptError::Transient(other.to_string()),
        }
    }
}

/// What one apply decided, and the id of the command it decided on: for a retry of a keyed
/// request, the first try's (`requests`).
pub(crate) struct ApplyAnswer {
    pub(crate) outcome: Outcome,
    pub(crate) id: CommandId,
    /// Where a newly committed command is in this region's outbox.
    pub(crate) outbox_seq: Option<u64>,
}

/// Where a submit goes first: the store, or this node's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// The store (or the owner region) within the budget, the queue when that fails.
    #[default]
    Store,
    /// This one request sees a failed store: the cafe's "simulate database failure" box, and
    /// `X-Rananeeti-Fault: db` (with `node.demo` on).
    SimulatedStoreFailure,
    /// Straight to this node's queue, behind the caller's own writes that still wait in it, so
    /// that the drain applies them in the order they were made (the bookstore's cart).
    BehindWaiting,
}

/// Per-submit choices made at the edge.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubmitOptions {
    pub delivery: Delivery,
}

impl SubmitOptions {
    pub const fn delivered(delivery: Delivery) -> SubmitOptions {
        SubmitOptions { delivery }
    }
}

/// How a command reaches its apply: straight from its submit, or out of a queue (the drain, an
/// adopted copy). Recorded in `rn_commands.via_queue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    Direct,
    FromQueue,
}

impl Arrival {
    fn via_queue(self) -> bool {
        self == Arrival::FromQueue
    }
}

/// Whether a submit whose owner is another region is forwarded to it: a command another region
/// already forwarded here is never forwarded again (it is applied or queued here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forwarding {
    ToOwner,
    NotAgain,
}

pub struct Platform {
    pub(crate) config: PlatformConfig,
    pub(crate) store: Store,
    pub(crate) queue: Queue,
    pub(crate) registry: Registry,
    pub(crate) faults: Faults,
    breaker: CircuitBreaker,
    pub(crate) clock: HlcClock,
    pub(crate) metrics: PlatformMetrics,
    pub(crate) drain_wakeup: Arc<tokio::sync::Notify>,
    /// Where the drainer's pass has got to (see `drain`).
    pub(crate) drain_cursor: std::sync::Mutex<crate::drain::DrainCursor>,
    /// Bumped after each commit that wrote the outbox, so a waiting outbox read wakes at once.
    pub(crate) outbox_commits: tokio::sync::watch::Sender<u64>,
    /// Per peer region, the highest seq of this region's outbox it acknowledged holding.
    pub(crate) peer_acks: tokio::sync::watch::Sender<std::collections::BTreeMap<String, u64>>,
    /// Region-sync writes waiting on this node for a peer's acknowledgment.
    pub(crate) peer_ack_waiters: std::sync::atomic::AtomicUsize,
    pub(crate) queue_fsyncs_seen: std::sync::atomic::AtomicU64,
    pub(crate) copier: std::sync::OnceLock<(Arc<dyn QueueCopier>, CopyDurability)>,
    forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    pub(crate) ownership: Ownership,
    tasks: Arc<crate::tasks::Tasks>,
    pub(crate) copies: std::sync::OnceLock<Queue>,
    pub(crate) monitoring: crate::monitoring::Monitoring,
    /// Queue entries already reported as impossible to apply, so the log says it once.
    pub(crate) stuck_reported: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// The queue gets at least this long, even when the store attempts used the whole budget.
const QUEUE_WAIT_MIN: Duration = Duration::from_millis(100);

/// A status read from the store gives up after this long and falls back to the queue.
const STATUS_READ_TIMEOUT: Duration = Duration::from_millis(2000);

impl Platform {
    /// Starts the platform and its drainer (which stops when the last `Arc<Platform>` is dropped).
    pub fn start(
        config: PlatformConfig,
        store: Store,
        queue: Queue,
        mut registry: Registry,
        metrics: PlatformMetrics,
    ) -> Arc<Platform> {
        registry.register(Arc::new(crate::requests::RequestAnswerHandler));
        registry.register(Arc::new(crate::sessions::RevokeSessionHandler));
        let breaker = CircuitBreaker::new(config.breaker);
        let ownership = Ownership::new(config.ownership.clone());
        let tasks = crate::tasks::Tasks::new(metrics.task_restarts.clone());
        let platform = Arc::new(Platform {
            tasks,
            config,
            store,
            queue,
            registry,
            faults: Faults::default(),
            breaker,
            clock: HlcClock::default(),
            metrics,
            drain_wakeup: Arc::new(tokio::sync::Notify::new()),
            drain_cursor: std::sync::Mutex::new(crate::drain::DrainCursor::default()),
            outbox_commits: tokio::sync::watch::channel(0).0,
            peer_acks: tokio::sync::watch::channel(std::collections::BTreeMap::new()).0,
            peer_ack_waiters: std::sync::atomic::AtomicUsize::new(0),
            queue_fsyncs_seen: std::sync::atomic::AtomicU64::new(0),
            stuck_reported: std::sync::Mutex::new(std::collections::HashSet::new()),
            copier: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
            ownership,
            copies: std::sync::OnceLock::new(),
            monitoring: crate::monitoring::Monitoring::default(),
        });
        let drained = Arc::downgrade(&platform);
        platform.tasks.supervise("drain", move || crate::drain::drain_loop(drained.clone()));
        if platform.config.durability == Durability::RegionSync {
            let followed = Arc::downgrade(&platform);
            platform.tasks.supervise("peer acknowledgments", move || Platform::follow_peer_acks(followed.clone()));
        }
        platform
    }

    pub fn region(&self) -> &str {
        &self.config.region
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The node's supervised background tasks.
    pub fn tasks(&self) -> &Arc<crate::tasks::Tasks> {
        &self.tasks
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Moves this node's clock past a timestamp it has seen (a value a write will replace), so
    /// the write is stamped after it.
    pub fn observe(&self, seen: crate::hlc::Hlc) {
        self.clock.observe(seen);
    }

    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.config.submit.budget_ms)
    }

    /// Submits a command: applied in the store within the budget when possible, else durably
    /// queued (*pending*). Always answers within the budget, barring a stalled disk.
    #[tracing::instrument(skip_all, fields(kind = new.kind, id = %new.id))]
    pub async fn submit(&self, new: NewCommand, options: SubmitOptions) -> Result<Submitted, SubmitError> {
        let started = Instant::now();
        let result = self.submit_inner(new, options, started).await;
        self.metrics.submit_duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(submitted) => submitted.outcome.as_str(),
            Err(_) => "error",
        };
        self.metrics.submit_outcomes.get_or_create(&OutcomeLabels { outcome }).inc();
        result
    }

    async fn submit_inner(
        &self,
        new: NewCommand,
        options: SubmitOptions,
        started: Instant,
    ) -> Result<Submitted, SubmitError> {
        let handler = self.registry.get(new.kind).ok_or_else(|| SubmitError::UnknownKind(new.kind.to_string()))?;
        let id = new.id;
        let request = crate::requests::next_request_id();
        // Already waiting in this node's queue: the first submit was acknowledged as pending.
        if let Some(outcome) = self.queued_duplicate(&id, request)? {
            return Ok(Submitted { id, outcome, copied: None });
        }
        let command = Command {
            kind: new.kind.to_string(),
            id,
            payload: new.payload,
            origin_region: self.config.region.clone(),
            origin_node: self.config.node.clone(),
            hlc: self.clock.now(),
            request,
        };
        self.deliver_submitted(handler.as_ref(), command, options, started, Forwarding::ToOwner).await
    }

    /// Submits a command another region forwarded here (this region acts for its owner): applied
    /// or queued here, never forwarded again (a stale view queues it; the drainer routes it).
    #[tracing::instrument(skip_all, fields(kind = command.kind, id = %command.id, origin = command.origin_region))]
    pub async fn submit_forwarded(&self, command: Command) -> Result<Submitted, SubmitError> {
        let started = Instant::now();
        let handler = self.registry.get(&command.kind).ok_or_else(|| SubmitError::UnknownKind(command.kind.clone()))?;
        let id = command.id;
        if let Some(outcome) = self.queued_duplicate(&id, command.request)? {
            return Ok(Submitted { id, outcome, copied: None });
        }
        self.clock.observe(command.hlc);
        let result = self
            .deliver_submitted(handler.as_ref(), command, SubmitOptions::default(), started, Forwarding::NotAgain)
            .await;
        self.metrics.submit_duration.observe(started.elapsed().as_secs_f64());
        result
    }

    /// What a submit of `id` answers when this node's queue already holds it: *pending* again for
    /// a retry of the same keyed request, else *duplicate* of a pending command. `None` when the
    /// queue does not hold it.
    fn queued_duplicate(&self, id: &CommandId, request: Option<RequestId>) -> Result<Option<Outcome>, SubmitError> {
        let Some(entry) = self.queue.get(id.as_bytes()).map_err(SubmitError::Queue)? else { return Ok(None) };
        let queued_request = serde_json::from_slice::<Command>(&entry.body).ok().and_then(|queued| queued.request);
        Ok(Some(duplicate_outcome(CommandState::Pending, request.is_some() && queued_request == request)))
    }

    /// Where an owned write goes from this node; `Apply` for `local` kinds.
    pub(crate) fn route(&self, handler: &dyn CommandHandler, command: &Command) -> Route {
        if handler.write_pattern() == WritePattern::Local {
            return Route::Apply;
        }
        self.ownership.route(&self.config.region, &self.home_of(handler, command))
    }

    /// The region an owned (`global` or `home`) command is homed in.
    pub(crate) fn home_of(&self, handler: &dyn CommandHandler, command: &Command) -> String {
        let config = self.ownership.config();
        match handler.write_pattern() {
            WritePattern::Local | WritePattern::Global => config.primary_region.clone(),
            WritePattern::Home => handler
                .home_region(command)
                .filter(|region| config.regions.contains(region))
                .unwrap_or_else(|| config.primary_region.clone()),
        }
    }

    /// Whether the breaker lets a store call through now.
    pub(crate) fn breaker_allows(&self) -> bool {
        self.breaker.allow()
    }

    /// Forwards a command to the region acting for its owner, within `timeout`.
    pub(crate) async fn forward(
        &self,
        region: &str,
        command: &Command,
        timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let Some(forwarder) = self.forwarder.get() else {
            return Err(ForwardError::Unreachable(
                "no forwarder: this node has no peer regions configured".to_string(),
            ));
        };
        let forwarded = tokio::time::timeout(timeout, forwarder.forward(region, command)).await;
        let result = forwarded
            .unwrap_or_else(|_| Err(ForwardError::Unreachable(format!("region {region} did not answer in time"))));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ForwardError::Unreachable(_)) => "unreachable",
            Err(ForwardError::Refused(_)) => "refused",
            Err(ForwardError::UnknownKind(_)) => "unknown_kind",
        };
        self.metrics
            .forwards
            .get_or_create(&crate::metrics::ForwardLabels { region: region.to_string(), outcome })
            .inc();
        result
    }

    /// Forwards an adopted copy of a queued owned write to the region acting for its owner.
    pub(crate) async fn forward_adopted(
        &self,
        region: &str,
        command: &Command,
        timeout: Duration,
    ) -> Result<(), ForwardError> {
        let forwarded = self.forward(region, command, timeout).await?;
        tracing::info!(id = %command.id, region, outcome = forwarded.outcome.as_str(), "adopted copy forwarded to its owner");
        Ok(())
    }

    /// Forwarded commands go through `forwarder`. Set once, at start.
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        assert!(self.forwarder.set(forwarder).is_ok(), "forwarder set twice");
    }

    async fn deliver_submitted(
        &self,
        handler: &dyn CommandHandler,
        command: Command,
        options: SubmitOptions,
        started: Instant,
        forwarding: Forwarding,
    ) -> Result<Submitted, SubmitError> {
        let id = command.id;
        let submit = &self.config.submit;
        let budget = Duration::from_millis(submit.budget_ms);
        let store_deadline = started + budget.saturating_sub(Duration::from_millis(submit.queue_reserve_ms));
        let route = match options.delivery {
            Delivery::Store => self.route(handler, &command),
            Delivery::SimulatedStoreFailure => Route::Hold("simulated store failure"),
            Delivery::BehindWaiting => Route::Hold("queued behind the caller's waiting writes"),
        };
        match &route {
            Route::Forward(region) if forwarding == Forwarding::ToOwner => {
                let remaining = store_deadline.saturating_duration_since(Instant::now());
                match self.forward(region, &command, remaining).await {
                    Ok(forwarded) => {
                        let id = forwarded.id.unwrap_or(id);
                        return Ok(Submitted { id, outcome: forwarded.outcome, copied: None });
                    }
                    Err(ForwardError::Refused(reason)) => {
                        // The owner will never take it: rejected, with its reason, and recorded
                        // here so that its status says so.
                        tracing::warn!(region, reason, "the owner region refused the command");
                        let reason = format!("refused by region {region}: {reason}");
                        if let Err(error) = self.record_rejection(&command, &reason).await {
                            tracing::warn!(%error, "rejection not recorded; the client was told");
                        }
                        return Ok(Submitted { id, outcome: Outcome::Rejected { reason }, copied: None });
                    }
                    Err(error) => {
                        tracing::warn!(region, %error, "could not forward to the owner region; queued for it")
                    }
                }
            }
            Route::Forward(region) => {
                tracing::warn!(region, "forwarded here, but this view says another region owns it; queued")
            }
            Route::Hold(reason) => tracing::debug!(reason, "owned write held in the queue"),
            Route::Apply => {}
        }

        if route == Route::Apply {
            let mut backoff_ms = submit.backoff_base_ms;
            for attempt in 1..=submit.attempts_max {
                if !self.breaker.allow() {
                    break;
                }
                let remaining = store_deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(remaining, self.apply(handler, &command, Arrival::Direct)).await {
                    Ok(Ok(answer)) => {
                        self.store_succeeded();
                        let outcome = match answer.outbox_seq {
                            Some(seq) if self.config.durability == Durability::RegionSync => {
                                self.region_sync_outcome(seq, started + budget).await
                            }
                            _ => answer.outcome,
                        };
                        return Ok(Submitted { id: answer.id, outcome, copied: None });
                    }
                    Ok(Err(AttemptError::Permanent(error))) => {
                        // The store answered: it is up, the command is at fault (a bug).
                        self.store_succeeded();
                        tracing::error!(%error, attempt, "store refused the command");
                        return Err(SubmitError::Store(error));
                    }
                    Ok(Err(AttemptError::Transient(reason))) => {
                        tracing::warn!(reason, attempt, "store attempt failed");
                        self.store_failed();
                    }
                    Err(_elapsed) => {
                        tracing::warn!(attempt, "store attempt ran out of budget");
                        self.store_failed();
                        break;
                    }
                }
                if attempt < submit.attempts_max {
                    let jittered = rand::thread_rng().gen_range(0..=backoff_ms);
                    let pause =
                        Duration::from_millis(jittered).min(store_deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                    backoff_ms = (backoff_ms * 2).min(submit.backoff_max_ms);
                }
            }
        }

        // Bounded too: a stalled disk gets a 503 (not acknowledged), never a hung client. The
        // entry may still land; a retry of the same command is then answered *duplicate*.
        let remaining = (started + budget).saturating_duration_since(Instant::now()).max(QUEUE_WAIT_MIN);
        let outcome =
            tokio::time::timeout(remaining, self.enqueue(&command)).await.map_err(|_| SubmitError::QueueTimeout)??;
        let copied = match (&outcome, self.copier.get()) {
            (Outcome::Pending, Some((copier, durability))) => {
                Some(self.copy(copier, *durability, &command, started + budget).await)
            }
            _ => None,
        };
        Ok(Submitted { id, outcome, copied })
    }

    /// A command committed here at outbox `seq` is *committed* once another region holds it,
    /// waited for until `deadline`; else *pending* (durable here, confirmed once a peer has it).
    async fn region_sync_outcome(&self, seq: u64, deadline: Instant) -> Outcome {
        let started = Instant::now();
        match self.wait_for_peer(seq, deadline).await {
            Some(peer) => {
                self.metrics
                    .region_sync_wait
                    .get_or_create(&crate::metrics::PeerLabels { peer })
                    .observe(started.elapsed().as_secs_f64());
                Outcome::Committed
            }
            None => {
                self.metrics.region_sync_unconfirmed.inc();
                Outcome::Pending
            }
        }
    }

    /// Copies a newly queued command to the peer node: waited for (within what is left of the
    /// budget) with `sync` durability, sent in the background with `async`.
    async fn copy(
        &self,
        copier: &Arc<dyn QueueCopier>,
        durability: CopyDurability,
        command: &Command,
        deadline: Instant,
    ) -> bool {
        let copy = {
            let copier = Arc::clone(copier);
            let command = command.clone();
            async move { copier.copy(&command).await }
        };
        let copied = match durability {
            CopyDurability::Async => {
                let failures = self.metrics.queue_copy_failures.clone();
                tokio::spawn(async move {
                    if let Err(reason) = copy.await {
                        failures.inc();
                        tracing::warn!(reason, "queue copy to the peer failed");
                    }
                });
                return false;
            }
            CopyDurability::Sync => {
                let remaining = deadline.saturating_duration_since(Instant::now()).max(QUEUE_WAIT_MIN);
                tokio::time::timeout(remaining, copy).await.unwrap_or_else(|_| Err("timed out".to_string()))
            }
        };
        match copied {
            Ok(()) => true,
            Err(reason) => {
                self.metrics.queue_copy_failures.inc();
                tracing::warn!(reason, id = %command.id, "queue copy to the peer failed: this write is held by this node only");
                false
            }
        }
    }

    /// Copies of this node's queued commands go to `copier`. Set once, at start.
    pub fn set_copier(&self, copier: Arc<dyn QueueCopier>, durability: CopyDurability) {
        assert!(self.copier.set((copier, durability)).is_ok(), "queue copier set twice");
    }

    /// Copies that peers send are kept in `copies`. Set once, at start.
    pub fn set_copy_store(&self, copies: Queue) {
        assert!(self.copies.set(copies).is_ok(), "copy store set twice");
    }

    async fn enqueue(&self, command: &Command) -> Result<Outcome, SubmitError> {
        let body = serde_json::to_vec(command).expect("a command always serializes");
        let enqueued = self
            .queue
            .enqueue(*command.id.as_bytes(), wall_clock_ms() as i64, body)
            .await
            .map_err(SubmitError::Queue)?;
        self.drain_wakeup.notify_one();
        Ok(match enqueued {
            Enqueued::Added { .. } => Outcome::Pending,
            // Queued meanwhile (by a concurrent submit of the same id).
            Enqueued::AlreadyQueued { .. } => {
                self.queued_duplicate(&command.id, command.request)?.unwrap_or(Outcome::Pending)
            }
        })
    }

    pub(crate) fn store_succeeded(&self) {
        self.monitoring.store_contacted();
        if self.breaker.record_success() == Transition::Closed {
            tracing::info!(event = "breaker_closed", "store breaker closed: the store answers again");
        }
        self.metrics.store_up.set(1);
    }

    pub(crate) fn store_failed(&self) {
        self.monitoring.store_contacted();
        self.metrics.store_up.set(0);
        if self.breaker.record_failure() == Transition::Opened {
            tracing::warn!(event = "breaker_opened", "store breaker opened: writes go to the fallback queue");
            self.store.rebuild_pools();
            self.metrics.pool_rebuilds.inc();
        }
    }

    /// Applies a command with its dedup record in one transaction.
    /// Boxed so the future is `Send` for every lifetime (sqlx executors and HRTBs otherwise
    /// stop the drainer from being spawned).
    pub(crate) fn apply<'a>(
        &'a self,
        handler: &'a dyn CommandHandler,
        command: &'a Command,
        arrival: Arrival,
    ) -> BoxFuture<'a, Result<ApplyAnswer, AttemptError>> {
        Box::pin(async move {
            let answer = |outcome| ApplyAnswer { outcome, id: command.id, outbox_seq: None };
            self.injected_store_fault().await.map_err(|error| AttemptError::Transient(error.to_string()))?;
            self.store.ensure_migrated().await?;
            let _turn = self.store.write_turn().await;
            let pool = self.store.writer();
            let mut tx = pool.begin().await?;
            // The dedup record goes first: it takes SQLite's write lock at once and, on PostgreSQL,
            // makes a concurrent apply of the same id wait and then see the conflict.
            let inserted = insert_record(&mut tx, command, &self.config, "committed", arrival).await?;
            if !inserted {
                tx.rollback().await?;
                return self.recorded_duplicate(&pool, command).await;
            }
            match handler.apply(command, &mut tx).await {
                Ok(()) => {
                    // Test builds only: a drill's checker must catch a lost or doubled write.
                    #[cfg(feature = "drill-faults")]
                    let Some(mut tx) = crate::drill_faults::before_commit(self.node(), handler, command, tx).await?
                    else {
                        return Ok(answer(Outcome::Committed));
                    };
                    let ordered = self.config.outbox_commit_ordered && self.store.kind() == StoreKind::Postgres;
                    let seq = append_outbox(&mut tx, ordered, command, &self.config.region, None).await?;
                    tx.commit().await?;
                    self.outbox_commits.send_modify(|commits| *commits += 1);
                    Ok(ApplyAnswer { outbox_seq: Some(seq), ..answer(Outcome::Committed) })
                }
                Err(ApplyError::Store(error)) => Err(error.into()),
                Err(ApplyError::Rejected(reason)) => {
                    tx.rollback().await?;
                    let mut tx = pool.begin().await?;
                    let inserted = insert_record(&mut tx, command, &self.config, "rejected", arrival).await?;
                    if !inserted {
                        tx.rollback().await?;
                        return self.recorded_duplicate(&pool, command).await;
                    }
                    set_rejection_reason(&mut tx, &command.id, &reason).await?;
                    tx.commit().await?;
                    Ok(answer(Outcome::Rejected { reason }))
                }
            }
        })
    }

    /// The answer to a command whose dedup record was already there: the record with its id, or
    /// with its request (a retry of a keyed request whose app-made id differed). A retry of the
    /// same request gets the first one's outcome; anything else is a *duplicate*.
    fn recorded_duplicate<'a>(
        &'a self,
        pool: &'a AnyPool,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<ApplyAnswer, AttemptError>> {
        Box::pin(async move {
            let request = command.request.map(|request| request.to_hex());
            let row = sqlx::query(
                "SELECT id, status, reason, request_id FROM rn_commands WHERE id = $1 OR request_id = $2 \
                 ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
            )
            .bind(command.id.to_hex())
            .bind(request.as_deref())
            .fetch_one(pool)
            .await?;
            let first = state_from_row(row.try_get("status")?, row.try_get("reason")?);
            let recorded_request: Option<String> = row.try_get("request_id")?;
            let same_request = request.is_some() && recorded_request == request;
            // A retry of the same request answers with the first one's id (the app may have made
            // another for the retry).
            let recorded_id: String = row.try_get("id")?;
            let id = CommandId::parse_hex(&recorded_id).unwrap_or(command.id);
            Ok(ApplyAnswer {
                outcome: duplicate_outcome(first, same_request),
                id: if same_request { id } else { command.id },
                outbox_seq: None,
            })
        })
    }

    async fn injected_store_fault(&self) -> Result<(), StoreUnavailable> {
        match self.faults.store_access() {
            StoreAccess::Proceed => Ok(()),
            StoreAccess::Fail => Err(StoreUnavailable::Injected),
            StoreAccess::Delay(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }

    /// A pool for reads: the reader endpoint when configured, else the writer. Fails when the
    /// store is down by injected fault; real outages surface as errors from the queries.
    pub async fn reader(&self) -> Result<AnyPool, StoreUnavailable> {
        self.injected_store_fault().await?;
        self.store.ensure_migrated().await?;
        Ok(self.store.reader())
    }

    /// Changes after every commit this node writes to the outbox (other nodes of the region
    /// commit too: a reader must still poll, this only wakes it early).
    pub fn outbox_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.outbox_commits.subscribe()
    }

    /// A pool for reads that survive this region's database being down: the reader (or writer)
    /// while the store answers, else another region's database, marked stale (it is replicated
    /// data and can lag). Fails only when there is no fallback either.
    pub async fn read_pool(&self) -> Result<ReadPool, StoreUnavailable> {
        let local_failing =
            matches!(self.faults.store_access(), StoreAccess::Fail) || self.breaker.state() == BreakerState::Open;
        if !local_failing {
            match self.reader().await {
                Ok(pool) => return Ok(ReadPool { pool, stale_from: None }),
                Err(error) if self.store.fallback_readers().is_empty() => return Err(error),
                Err(_) => {}
            }
        }
        match self.store.fallback_readers().into_iter().next() {
            Some((region, pool)) => Ok(ReadPool { pool, stale_from: Some(region) }),
            None => self.reader().await.map(|pool| ReadPool { pool, stale_from: None }),
        }
    }

    /// A read on the local store failed: counts toward opening the breaker when the failure is
    /// the store's (so later reads go to a fallback region and writes to the queue).
    pub fn read_failed(&self, error: &sqlx::Error) {
        if is_transient(error) {
            self.store_failed();
        }
    }

    /// Where a command stands, looked up in the store and then in this node's queue. `None` when
    /// neither knows it; `Err` when the store could not be asked and the queue does not hold it.
    pub async fn status(&self, id: &CommandId) -> Result<Option<CommandStatus>, StoreUnavailable> {
        Ok(self.status_unredacted(id).await?.map(|status| self.redacted(status)))
    }

    /// Who besides the admin may read `status` by its id (its kind decides, from its payload).
    pub fn status_audience(&self, status: &CommandStatus) -> crate::StatusAudience {
        match self.registry.get(&status.kind) {
            Some(handler) => handler.status_audience(&status.payload),
            None => crate::StatusAudience::Admin,
        }
    }

    /// `status` with what no answer may carry removed by its kind (`CommandHandler::redact`).
    fn redacted(&self, mut status: CommandStatus) -> CommandStatus {
        if let Some(handler) = self.registry.get(&status.kind) {
            handler.redact(&mut status.payload);
        }
        status
    }

    async fn status_unredacted(&self, id: &CommandId) -> Result<Option<CommandStatus>, StoreUnavailable> {
        let read_store = || async {
            match tokio::time::timeout(STATUS_READ_TIMEOUT, self.status_in_store(id)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(StoreUnavailable::Timeout),
            }
        };
        let mut from_store = read_store().await;
        if matches!(from_store, Ok(None)) && self.queued_somewhere(id).is_none() {
            // Drained between the two reads (the drainer commits, then removes from the queue):
            // the store has it now. Without this second read it was "no such command".
            from_store = read_store().await;
        }
        if let Ok(Some(mut status)) = from_store {
            // Region-sync: committed here is *pending* until another region holds it.
            if self.config.durability == Durability::RegionSync
                && status.state == CommandState::Committed
                && status.region == self.config.region
                && !self.held_by_a_peer(id).await.unwrap_or(true)
            {
                status.state = CommandState::Pending;
            }
            return Ok(Some(status));
        }
        if let Some((command, held_for)) = self.queued_somewhere(id) {
            let region = command.origin_region.clone();
            let mut status = self.queued_status(command);
            // A copy held for the peer node that queued it: pending there.
            if let Some(origin_node) = held_for {
                status.region = region;
                status.node = origin_node;
            }
            return Ok(Some(status));
        }
        from_store
    }

    /// A command waiting in this node's queue, or in a copy held here for a peer node.
    pub(crate) fn queued_command(&self, id: &CommandId) -> Option<Command> {
        self.queued_somewhere(id).map(|(command, _)| command)
    }

    /// The queued command with `id` and, for a copy held for a peer, the peer's node name.
    fn queued_somewhere(&self, id: &CommandId) -> Option<(Command, Option<String>)> {
        if let Ok(Some(entry)) = self.queue.get(id.as_bytes()) {
            if let Ok(command) = serde_json::from_slice::<Command>(&entry.body) {
                return Some((command, None));
            }
        }
        let entry = self.copies.get()?.get(id.as_bytes()).ok()??;
        let copy = serde_json::from_slice::<crate::copies::HeldCopy>(&entry.body).ok()?;
        Some((copy.command, Some(copy.origin_node)))
    }

    async fn status_in_store(&self, id: &CommandId) -> Result<Option<CommandStatus>, StoreUnavailable> {
        let pool = self.reader().await?;
        let row = sqlx::query(
            "SELECT id, kind, status, reason, applied_region, applied_node, hlc, payload FROM rn_commands WHERE id = $1",
        )
        .bind(id.to_hex())
        .fetch_optional(&pool)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(status_from_row(row).map_err(StoreError::from)?))
    }

    /// Commands of `kind` recorded in the store (committed or rejected), newest first, with an
    /// HLC below `before` when given.
    pub async fn list_recorded(
        &self,
        kind: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<CommandStatus>, StoreUnavailable> {
        let pool = self.reader().await?;
        let rows = sqlx::query(
            "SELECT id, kind, status, reason, applied_region, applied_node, hlc, payload FROM rn_commands \
             WHERE kind = $1 AND hlc < $2 ORDER BY hlc DESC LIMIT $3",
        )
        .bind(kind)
        .bind(before.map(|hlc| hlc as i64).unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&pool)
        .await
        .map_err(StoreError::from)?;
        rows.into_iter()
            .map(|row| {
                status_from_row(row).map(|status| self.redacted(status)).map_err(|error| StoreError::from(error).into())
            })
            .collect()
    }

    fn queued_status(&self, command: Command) -> CommandStatus {
        CommandStatus {
            id: command.id,
            kind: command.kind,
            state: CommandState::Pending,
            region: self.config.region.clone(),
            stored_in: "queue",
            node: self.config.node.clone(),
            payload: command.payload,
            hlc: command.hlc.0,
        }
    }

    /// Commands of `kind` waiting in this node's queue, oldest first, at most `limit`.
    pub fn pending(&self, kind: &str, limit: usize) -> Result<Vec<CommandStatus>, QueueError> {
        Ok(self
            .queue
            .list(limit)?
            .into_iter()
            .filter_map(|entry| serde_json::from_slice::<Command>(&entry.body).ok())
            .filter(|command| command.kind == kind)
            .map(|command| self.redacted(self.queued_status(command)))
            .collect())
    }

    /// Records `command` as *rejected* for `reason` in this region's store (unless it is already
    /// recorded), so that its status says why it was not applied.
    pub(crate) fn record_rejection<'a>(
        &'a self,
        command: &'a Command,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let _turn = self.store.write_turn().await;
            let pool = self.store.writer();
            let mut tx = pool.begin().await?;
            if insert_record(&mut tx, command, &self.config, "rejected", Arrival::FromQueue).await? {
                set_rejection_reason(&mut tx, &command.id, reason).await?;
            }
            tx.commit().await
        })
    }
}

fn insert_record<'a>(
    connection: &'a mut sqlx::AnyConnection,
    command: &'a Command,
    config: &'a PlatformConfig,
    status: &'a str,
    arrival: Arrival,
) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
    Box::pin(insert_record_inner(connection, command, &config.region, &config.node, status, arrival))
}

pub(crate) async fn insert_record_inner(
    connection: &mut sqlx::AnyConnection,
    command: &Command,
    applied_region: &str,
    applied_node: &str,
    status: &str,
    arrival: Arrival,
) -> Result<bool, sqlx::Error> {
    // No conflict target: a record with the same id, or with the same request (`requests`), is
    // the first one of this command.
    let result = sqlx::query(
        "INSERT INTO rn_commands (id, kind, status, reason, origin_region, origin_node, applied_region, \
         applied_node, hlc, payload, via_queue, applied_at_ms, request_id) \
         VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
    )
    .bind(command.id.to_hex())
    .bind(&command.kind)
    .bind(status)
    .bind(&command.origin_region)
    .bind(&command.origin_node)
    .bind(applied_region)
    .bind(applied_node)
    .bind(command.hlc.0 as i64)
    .bind(command.payload.to_string())
    .bind(arrival.via_queue() as i64)
    .bind(wall_clock_ms() as i64)
    .bind(command.request.map(|request| request.to_hex()))
    .execute(&mut *connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The outbox row that replicates a committed command to the other regions. Written last in the
/// apply transaction. On PostgreSQL an advisory lock held to COMMIT makes outbox sequence order
/// the commit order, so a peer that has pulled up to seq N never misses a lower seq that commits
/// later; SQLite's single writer gives that by itself.
pub(crate) fn append_outbox<'a>(
    connection: &'a mut sqlx::AnyConnection,
    commit_ordered: bool,
    command: &'a Command,
    held_by: &'a str,
    relayed_from_decision_of: Option<&'a str>,
) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move {
        if commit_ordered {
            sqlx::query("SELECT pg_advisory_xact_lock(7277001)").execute(&mut *connection).await?;
        }
        let row = sqlx::query(
            "INSERT INTO rn_outbox (id, command, held_by, applied_region) VALUES ($1, $2, $3, $4) RETURNING seq",
        )
        .bind(command.id.to_hex())
        .bind(serde_json::to_string(command).expect("a command always serializes"))
        .bind(held_by)
        .bind(relayed_from_decision_of)
        .fetch_one(&mut *connection)
        .await?;
        Ok(row.try_get::<i64, _>("seq")? as u64)
    })
}

fn set_rejection_reason<'a>(
    connection: &'a mut sqlx::AnyConnection,
    id: &'a CommandId,
    reason: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::query("UPDATE rn_commands SET reason = $1 WHERE id = $2")
            .bind(reason)
            .bind(id.to_hex())
            .execute(connection)
            .await?;
        Ok(())
    })
}

fn status_from_row(row: sqlx::any::AnyRow) -> Result<CommandStatus, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let payload: String = row.try_get("payload")?;
    Ok(CommandStatus {
        id: CommandId::parse_hex(&id).map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
        kind: row.try_get("kind")?,
        state: state_from_row(row.try_get("status")?, row.try_get("reason")?),
        region: row.try_get("applied_region")?,
        stored_in: "store",
        node: row.try_get("applied_node")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        hlc: row.try_get::<i64, _>("hlc")? as u64,
    })
}

/// A retry of the same keyed request answers what the first one did; another submit of a known
/// command is a *duplicate* of it.
fn duplicate_outcome(first: CommandState, same_request: bool) -> Outcome {
    if !same_request {
        return Outcome::Duplicate { first };
    }
    match first {
        CommandState::Committed => Outcome::Committed,
        CommandState::Pending => Outcome::Pending,
        CommandState::Rejected { reason } => Outcome::Rejected { reason },
    }
}

fn state_from_row(status: String, reason: Option<String>) -> CommandState {
    match status.as_str() {
        "rejected" => CommandState::Rejected { reason: reason.unwrap_or_default() },
        _ => CommandState::Committed,
    }
}
