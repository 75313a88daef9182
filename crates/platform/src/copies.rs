//! Queue copies: each entry of a node's fallback queue is copied to a peer node, so a node that
//! dies with its disk loses nothing it acknowledged. The peer keeps copies in a queue of its own
//! and adopts them (applies them through the same dedup'd apply) when their origin no longer holds
//! them. The transport is the node crate's; this is the store side.

use crate::command::Command;
use crate::id::CommandId;
use crate::ownership::ForwardError;
use crate::platform::{AttemptError, Platform};
use futures::future::BoxFuture;
use rananeeti_queue::{Entry, Queue, QueueError};
use std::time::Duration;

/// Sends copies of queued commands to the peer node, and tells it to forget drained ones.
pub trait QueueCopier: Send + Sync + 'static {
    fn copy<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<(), String>>;
    /// Best effort: a copy that is not forgotten is adopted later as a harmless duplicate.
    fn forget(&self, ids: Vec<CommandId>) -> BoxFuture<'static, ()>;
}

/// When *pending* is answered: after the peer has the copy (`Sync`), or after the local fsync,
/// with the copy sent in the background (`Async`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyDurability {
    Sync,
    Async,
}

/// A copy held for another node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HeldCopy {
    pub origin_node: String,
    /// Where the origin answers, to ask whether it still holds the command.
    pub origin_url: String,
    pub command: Command,
}

const ADOPT_APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What adopting one copy did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Applied, forwarded, or recorded as rejected (or found applied), and dropped.
    Adopted,
    /// This region's store cannot take it now: no more local applies this round.
    StoreUnavailable,
    /// Its owner cannot be reached, or this region owns it but holds no lease: this owner's later
    /// copies wait too (in order), the others go on.
    OwnerUnavailable(String),
    /// This copy cannot be applied (unknown kind, here or at its owner): kept for an operator.
    Stuck,
}

impl Platform {
    /// Stores a copy of another node's queued command, durably (fsynced) when it returns.
    pub async fn accept_copy(&self, copy: HeldCopy) -> Result<(), QueueError> {
        let copies = self.copies.get().ok_or(QueueError::Closed)?;
        let id = *copy.command.id.as_bytes();
        let body = serde_json::to_vec(&copy).expect("a copy always serializes");
        copies.enqueue(id, crate::hlc::wall_clock_ms() as i64, body).await?;
        Ok(())
    }

    /// Drops copies whose origin drained them.
    pub fn forget_copies(&self, ids: &[CommandId]) -> Result<usize, QueueError> {
        let Some(copies) = self.copies.get() else { return Ok(0) };
        let mut held = Vec::new();
        for id in ids {
            if let Some(entry) = copies.get(id.as_bytes())? {
                held.push(entry);
            }
        }
        copies.remove(&held)?;
        Ok(held.len())
    }

    /// Which of `ids` this node's own queue still holds.
    pub fn holds(&self, ids: &[CommandId]) -> Result<Vec<CommandId>, QueueError> {
        let mut held = Vec::new();
        for id in ids {
            if self.queue.get(id.as_bytes())?.is_some() {
                held.push(*id);
            }
        }
        Ok(held)
    }

    /// Copies held for other nodes with a seq past `after` (from the oldest when `None`).
    pub fn held_copies(&self, after: Option<u64>, limit: usize) -> Result<Vec<(Entry, HeldCopy)>, QueueError> {
        let Some(copies) = self.copies.get() else { return Ok(Vec::new()) };
        Ok(copies
            .peek(after, limit)?
            .into_iter()
            .filter_map(|entry| {
                let copy = serde_json::from_slice::<HeldCopy>(&entry.body).ok()?;
                Some((entry, copy))
            })
            .collect())
    }

    /// Which owner an adopted copy waits for: `None` when it is applied here (a `local` kind, or
    /// an owned one this region may apply now), else the region acting for its owner (this
    /// region itself while it holds no lease).
    pub fn owner_of(&self, command: &Command) -> Option<String> {
        let handler = self.registry.get(&command.kind)?;
        match self.route(handler.as_ref(), command) {
            crate::ownership::Route::Apply => None,
            crate::ownership::Route::Hold(_) => Some(self.region().to_string()),
            crate::ownership::Route::Forward(region) => Some(region),
        }
    }

    pub fn copies_depth(&self) -> u64 {
        self.copies.get().map(Queue::depth).unwrap_or(0)
    }

    /// Applies an adopted copy (a duplicate if its origin applied it after all) and drops it.
    pub async fn adopt_copy(&self, entry: &Entry, copy: &HeldCopy) -> Result<Adoption, QueueError> {
        let command = &copy.command;
        let Some(handler) = self.registry.get(&command.kind) else {
            tracing::error!(kind = command.kind, id = %command.id, "adopted copy of an unknown kind; kept");
            return Ok(Adoption::Stuck);
        };
        match self.route(handler.as_ref(), command) {
            crate::ownership::Route::Apply => {}
            crate::ownership::Route::Hold(_) => return Ok(Adoption::OwnerUnavailable(self.region().to_string())),
            crate::ownership::Route::Forward(region) => {
                return match self.forward_adopted(&region, command, ADOPT_APPLY_TIMEOUT).await {
                    Ok(()) => self.drop_copy(entry),
                    Err(ForwardError::Unreachable(_)) => Ok(Adoption::OwnerUnavailable(region)),
                    Err(ForwardError::Refused(reason)) => {
                        let reason = format!("refused by region {region}: {reason}");
                        match self.record_rejection(command, &reason).await {
                            Ok(()) => self.drop_copy(entry),
                            Err(_) => Ok(Adoption::StoreUnavailable),
                        }
                    }
                    Err(ForwardError::UnknownKind(reason)) => {
                        tracing::error!(id = %command.id, region, reason, "adopted copy of a kind its owner does not know yet; kept");
                        Ok(Adoption::Stuck)
                    }
                };
            }
        }
        match tokio::time::timeout(
            ADOPT_APPLY_TIMEOUT,
            self.apply(handler.as_ref(), command, crate::platform::Arrival::FromQueue),
        )
        .await
        {
            Ok(Ok(answer)) => {
                tracing::info!(id = %command.id, origin = copy.origin_node, outcome = answer.outcome.as_str(), "adopted a queued command");
            }
            Ok(Err(AttemptError::Permanent(error))) => {
                tracing::error!(%error, id = %command.id, "adopted copy refused by the store; kept");
                return Ok(Adoption::Stuck);
            }
            Ok(Err(AttemptError::Transient(_))) | Err(_) => return Ok(Adoption::StoreUnavailable),
        }
        self.drop_copy(entry)
    }

    fn drop_copy(&self, entry: &Entry) -> Result<Adoption, QueueError> {
        self.copies.get().ok_or(QueueError::Closed)?.remove(std::slice::from_ref(entry))?;
        Ok(Adoption::Adopted)
    }
}
