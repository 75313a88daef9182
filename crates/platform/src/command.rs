//! Commands: serializable intents with digest ids, and the per-kind apply functions apps register.

use crate::hlc::Hlc;
use crate::id::CommandId;
use crate::requests::RequestId;
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use std::collections::HashMap;
use std::sync::Arc;

/// A command as it travels: through the fallback queue, into the store, later between regions.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Command {
    pub kind: String,
    pub id: CommandId,
    pub payload: serde_json::Value,
    pub origin_region: String,
    pub origin_node: String,
    pub hlc: Hlc,
    /// The keyed request that submitted it (`requests`): unique in the store, so the same request
    /// is applied once whatever id the app gave each try. Absent for requests without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestId>,
}

/// What an app hands to `Platform::submit`: the platform adds origin and clock.
#[derive(Clone, Debug)]
pub struct NewCommand {
    pub kind: &'static str,
    pub id: CommandId,
    pub payload: serde_json::Value,
}

/// Why an apply did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A business rule said no (slot full, out of stock). Final: recorded as *rejected*.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The store failed; the platform decides whether to retry or queue.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// How a kind's writes are routed between regions (seed 003).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePattern {
    /// Applied in any region; commands commute or resolve by last-writer-wins on the HLC.
    Local,
    /// Applied by the region acting for the primary region; other regions forward.
    Global,
    /// Applied by the region acting for the entity's home region (`CommandHandler::home_region`).
    Home,
}

/// An app's deterministic apply for one command kind. It reads neither the wall clock nor a
/// random source: everything it needs is in the command.
pub trait CommandHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn write_pattern(&self) -> WritePattern;
    /// Applies inside the platform's transaction; the dedup record is already written in it.
    fn apply<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), ApplyError>>;

    /// Applies a command that a peer region already committed (pulled from its outbox). Its rules
    /// were decided there: this applies the effect and must not reject. No default, so every
    /// kind says what replaying it means.
    fn apply_replicated<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// The home region of the entity a `Home` command writes (from its payload). Only asked of
    /// `Home` kinds; `None` (or a region the deployment does not have) routes to the primary.
    fn home_region(&self, _command: &Command) -> Option<String> {
        None
    }

    /// Whether a replicated command that this region already applied (the same id, submitted in
    /// both regions) is passed to `apply_replicated` again. True for kinds that resolve by
    /// last-writer-wins, whose apply is idempotent and decides by the command's own clock.
    fn reapplies_replicated_duplicates(&self) -> bool {
        false
    }
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn CommandHandler>>,
}

impl Registry {
    pub fn register(&mut self, handler: Arc<dyn CommandHandler>) {
        let kind = handler.kind();
        let previous = self.handlers.insert(kind, handler);
        assert!(previous.is_none(), "command kind {kind} registered twice");
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn CommandHandler>> {
        self.handlers.get(kind)
    }
}
