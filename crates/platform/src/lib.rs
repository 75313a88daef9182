//! The data platform every app goes through: commands with digest ids, apply with a dedup record
//! in one transaction, submit within a latency budget, and the fallback queue when the store fails.
//!
//! Apps register a [`CommandHandler`] per command kind and read through [`Platform::reader`]. This
//! crate knows nothing of HTTP.

pub mod breaker;
pub mod command;
pub mod conflicts;
pub mod copies;
#[cfg(feature = "drill-faults")]
mod drill_faults;
pub mod faults;
pub mod hlc;
pub mod id;
pub mod metrics;
pub mod ownership;
mod platform;
pub mod replication;
pub mod schema;
pub mod store;
pub mod write_gate;

pub use breaker::{BreakerConfig, BreakerState};
pub use command::{ApplyError, Command, CommandHandler, NewCommand, Registry, WritePattern};
pub use copies::{Adoption, CopyDurability, HeldCopy, QueueCopier};
pub use faults::{DbFault, Faults};
pub use hlc::{Hlc, HlcClock};
pub use id::{CommandId, InvalidCommandId};
pub use metrics::PlatformMetrics;
pub use ownership::{Forwarder, OwnerRow, Ownership, OwnershipConfig, Route};
pub use platform::{
    CommandState, CommandStatus, DrainConfig, Outcome, Platform, PlatformConfig, ReadPool, StoreUnavailable,
    SubmitConfig, SubmitError, SubmitOptions, Submitted,
};
pub use replication::{Applied, OutboxEntry, OutboxPage, ReplicationError};
pub use store::{Migration, Store, StoreConfig, StoreError, StoreKind};

/// Re-exported so apps write their SQL against the platform's own sqlx.
pub use sqlx;
