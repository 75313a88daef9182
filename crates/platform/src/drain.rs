//! The drainer: applies this node's queued commands once the store is back, and forwards the ones
//! another region owns, in queue order per owner, with a bounded amount of work per round.
//!
//! A *pass* walks the queue from its head to its tail over as many rounds as it takes; a round
//! examines at most `drain.scan_entries_max` entries and applies or forwards at most
//! `drain.batch_entries_max`, then the next round goes on where it stopped. What is held does not
//! starve what is behind it:
//! - an owner region that cannot take a write now (unreachable, or this region without its lease)
//!   is *held* for the rest of the pass: its later writes are skipped, so each owner still
//!   receives a node's writes in queue order, while everyone else's go on;
//! - an entry that does not decode, or whose kind this node or its owner does not know, is left
//!   in the queue for an operator and skipped;
//! - a store failure on a local apply ends the round at that entry (queued local writes keep
//!   their order), and the next round starts there.
//!
//! The pass restarts at the head once it reaches the tail, trying each held owner again.

use crate::command::{Command, CommandHandler, WritePattern};
use crate::id::CommandId;
use crate::ownership::{ForwardError, Route};
use crate::platform::{AttemptError, Platform};
use rananeeti_queue::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Entries read from the queue at a time while scanning.
const SCAN_PAGE_ENTRIES: usize = 256;
/// Entries whose home is remembered (to skip a held owner's backlog without decoding it again).
const HOMES_REMEMBERED_MAX: usize = 200_000;

/// Where the current pass has got to, kept between rounds (only the drain task touches it).
#[derive(Default)]
pub(crate) struct DrainCursor {
    /// The last seq this pass examined; `None`: the pass starts at the head.
    after: Option<u64>,
    /// Regions whose writes wait until the next pass.
    held: HashSet<String>,
    /// The home of entries already decoded, by seq.
    homes: HashMap<u64, Home>,
}

/// Whose write a queued entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Home {
    /// A `local` kind: applied here.
    Local,
    /// A `global` or `home` kind homed in this region.
    Owned(String),
    /// Cannot be applied here (does not decode, unknown kind): left for an operator.
    Unusable,
}

/// What happened to one examined entry.
enum Step {
    /// Applied, forwarded, or recorded as rejected: it leaves the queue.
    Done { store_reached: bool },
    /// Left in the queue this pass.
    Skipped,
    /// The store failed: the round ends here.
    StoreFailed,
}

impl Platform {
    /// One drain round (see the module's comment). Answers whether the next round should start
    /// at once (work is left that may be doable now).
    pub(crate) async fn drain_round(&self) -> bool {
        let idle = false;
        if self.queue.depth() == 0 {
            *self.drain_cursor.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = DrainCursor::default();
            self.probe_store_when_idle().await;
            return idle;
        }
        if !self.breaker_allows() {
            return idle;
        }
        let mut cursor =
            std::mem::take(&mut *self.drain_cursor.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let batch_max = self.config.drain.batch_entries_max.max(1);
        let scan_max = self.config.drain.scan_entries_max.max(batch_max);
        let mut done: Vec<Entry> = Vec::new();
        // None: no store call was made this round, so the breaker learns nothing from it.
        let mut store_reached: Option<bool> = None;
        let mut examined = 0;
        let mut end_of_pass = false;
        'pages: loop {
            let page = match self.queue.peek(cursor.after, SCAN_PAGE_ENTRIES) {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "could not read the fallback queue");
                    break;
                }
            };
            if page.is_empty() {
                end_of_pass = true;
                break;
            }
            for entry in page {
                if examined >= scan_max || done.len() >= batch_max {
                    break 'pages;
                }
                examined += 1;
                match self.drain_one(&entry, &mut cursor).await {
                    Step::Done { store_reached: reached } => {
                        if reached {
                            store_reached = Some(true);
                        }
                        cursor.homes.remove(&entry.seq);
                        cursor.after = Some(entry.seq);
                        done.push(entry);
                    }
                    Step::Skipped => cursor.after = Some(entry.seq),
                    Step::StoreFailed => {
                        store_reached = Some(false);
                        break 'pages;
                    }
                }
            }
        }
        if end_of_pass {
            cursor.after = None;
            cursor.held.clear();
        }
        *self.drain_cursor.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = cursor;
        match store_reached {
            Some(true) => self.store_succeeded(),
            Some(false) => self.store_failed(),
            None => {}
        }
        // Straight on only while something moves: a round that only skipped held entries lets
        // the next one wait `idle_ms` (the cursor keeps its place), so a long backlog held for
        // an unreachable owner is walked without burning a core.
        if done.is_empty() {
            return idle;
        }
        if let Err(error) = self.queue.remove(&done) {
            // Not removed: a later round applies them again as duplicates. Pause instead of
            // spinning on them.
            tracing::error!(%error, "could not remove drained entries; they will be deduplicated");
            return idle;
        }
        self.metrics.queue_drained.inc_by(done.len() as u64);
        self.forget_copies_of(&done);
        true
    }

    async fn drain_one(&self, entry: &Entry, cursor: &mut DrainCursor) -> Step {
        // A held owner's backlog is skipped without decoding it again.
        if let Some(home) = cursor.homes.get(&entry.seq) {
            if self.held_this_pass(home, &cursor.held) {
                return Step::Skipped;
            }
        }
        let Some((command, handler)) = self.decode_queued(entry) else {
            remember(cursor, entry.seq, Home::Unusable);
            return Step::Skipped;
        };
        let home = match handler.write_pattern() {
            WritePattern::Local => Home::Local,
            _ => Home::Owned(self.home_of(handler.as_ref(), &command)),
        };
        remember(cursor, entry.seq, home.clone());
        let route = match &home {
            Home::Owned(home) => self.ownership.route(&self.config.region, home),
            Home::Local | Home::Unusable => Route::Apply,
        };
        match route {
            Route::Hold(_) => {
                cursor.held.insert(self.config.region.clone());
                Step::Skipped
            }
            Route::Apply if matches!(home, Home::Owned(_)) && cursor.held.contains(&self.config.region) => {
                Step::Skipped
            }
            Route::Apply => self.drain_apply(handler.as_ref(), &command).await,
            Route::Forward(region) if cursor.held.contains(&region) => Step::Skipped,
            Route::Forward(region) => self.drain_forward(entry, &region, &command, &mut cursor.held).await,
        }
    }

    /// Whether `home`'s writes wait this pass (or the entry cannot be applied at all).
    fn held_this_pass(&self, home: &Home, held: &HashSet<String>) -> bool {
        match home {
            Home::Unusable => true,
            Home::Local => false,
            Home::Owned(home) => match self.ownership.route(&self.config.region, home) {
                Route::Forward(region) => held.contains(&region),
                Route::Apply | Route::Hold(_) => held.contains(&self.config.region),
            },
        }
    }

    async fn drain_apply(&self, handler: &dyn CommandHandler, command: &Command) -> Step {
        let apply_timeout = Duration::from_millis(self.config.drain.apply_timeout_ms);
        match tokio::time::timeout(apply_timeout, self.apply(handler, command, crate::platform::Arrival::FromQueue))
            .await
        {
            Ok(Ok(answer)) => {
                tracing::info!(id = %command.id, outcome = answer.outcome.as_str(), "queued command applied");
                Step::Done { store_reached: true }
            }
            Ok(Err(AttemptError::Permanent(error))) => {
                // A command the store can never take would block every one behind it.
                tracing::error!(%error, id = %command.id, "queued command refused by the store; recorded as rejected");
                let reason = "could not be applied (internal error; see the node log)";
                self.drain_reject(command, reason).await
            }
            Ok(Err(AttemptError::Transient(reason))) => {
                tracing::warn!(reason, "drain paused: store unavailable");
                Step::StoreFailed
            }
            Err(_elapsed) => {
                tracing::warn!("drain paused: apply timed out");
                Step::StoreFailed
            }
        }
    }

    async fn drain_forward(&self, entry: &Entry, region: &str, command: &Command, held: &mut HashSet<String>) -> Step {
        let apply_timeout = Duration::from_millis(self.config.drain.apply_timeout_ms);
        match self.forward(region, command, apply_timeout).await {
            Ok(forwarded) => {
                tracing::info!(id = %command.id, region, outcome = forwarded.outcome.as_str(), "queued command forwarded to its owner");
                Step::Done { store_reached: false }
            }
            Err(ForwardError::Unreachable(reason)) => {
                tracing::debug!(region, reason, "owner region unreachable; its queued writes wait");
                held.insert(region.to_string());
                Step::Skipped
            }
            Err(ForwardError::Refused(reason)) => {
                tracing::warn!(id = %command.id, region, reason, "the owner region refused a queued command; recorded as rejected");
                self.drain_reject(command, &format!("refused by region {region}: {reason}")).await
            }
            Err(ForwardError::UnknownKind(reason)) => {
                self.report_stuck(entry.seq, &format!("region {region} does not know this kind yet: {reason}"));
                Step::Skipped
            }
        }
    }

    /// Records a queued command that will never be applied as *rejected*, so that it leaves the
    /// queue and its status says why.
    async fn drain_reject(&self, command: &Command, reason: &str) -> Step {
        let apply_timeout = Duration::from_millis(self.config.drain.apply_timeout_ms);
        match tokio::time::timeout(apply_timeout, self.record_rejection(command, reason)).await {
            Ok(Ok(())) => Step::Done { store_reached: true },
            Ok(Err(error)) => {
                tracing::warn!(%error, "drain paused: the rejection could not be recorded");
                Step::StoreFailed
            }
            Err(_elapsed) => Step::StoreFailed,
        }
    }

    /// The command and its handler, or `None` (logged once per entry) when the body no longer
    /// decodes or names a kind this node does not know.
    pub(crate) fn decode_queued(&self, entry: &Entry) -> Option<(Command, Arc<dyn CommandHandler>)> {
        let problem = match serde_json::from_slice::<Command>(&entry.body) {
            Ok(command) => match self.registry.get(&command.kind) {
                Some(handler) => return Some((command, Arc::clone(handler))),
                None => format!("no handler for kind {}", command.kind),
            },
            Err(error) => format!("body does not decode: {error}"),
        };
        self.report_stuck(entry.seq, &problem);
        None
    }

    /// Logs, once per entry, why a queued command stays in the queue.
    fn report_stuck(&self, seq: u64, problem: &str) {
        let mut reported = self.stuck_reported.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if reported.len() < STUCK_REPORTED_MAX && reported.insert(seq) {
            tracing::error!(seq, problem, "queued command cannot be delivered now; left in the queue");
        }
    }

    /// Tells the peer node to forget its copies of drained entries (best effort).
    fn forget_copies_of(&self, done: &[Entry]) {
        if let Some((copier, _)) = self.copier.get() {
            let ids = done.iter().map(|entry| CommandId::from_bytes(entry.id)).collect();
            tokio::spawn(copier.forget(ids));
        }
    }
}

/// Queue entries whose problem is logged at most (once each).
pub(crate) const STUCK_REPORTED_MAX: usize = 10_000;

fn remember(cursor: &mut DrainCursor, seq: u64, home: Home) {
    if cursor.homes.len() < HOMES_REMEMBERED_MAX {
        cursor.homes.insert(seq, home);
    }
}

/// Runs drain rounds for the life of the platform (until the last `Arc<Platform>` is dropped).
pub(crate) async fn drain_loop(platform: std::sync::Weak<Platform>) {
    loop {
        let Some(platform) = platform.upgrade() else { return };
        if !platform.drain_round().await {
            let idle = Duration::from_millis(platform.config.drain.idle_ms);
            let wakeup = Arc::clone(&platform.drain_wakeup);
            // Hold no strong reference while idle, so dropping the platform stops the loop.
            drop(platform);
            let _ = tokio::time::timeout(idle, wakeup.notified()).await;
        }
    }
}
