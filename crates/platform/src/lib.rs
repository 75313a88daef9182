//! The data platform every app goes through: commands with digest ids, apply with a dedup record
//! in one transaction, submit within a latency budget, and the fallback queue when the store fails.
//!
//! Apps register a [`CommandHandler`] per command kind and read through [`Platform::reader`]. This
//! crate knows nothing of HTTP.

pub mod breaker;
pub mod command;
pub mod conflicts;
pub mod copies;
mod drain;
#[cfg(feature = "drill-faults")]
mod drill_faults;
pub mod faults;
pub mod hlc;
pub mod id;
pub mod metrics;
pub mod monitoring;
pub mod ownership;
mod platform;
pub mod replication;
pub mod requests;
pub mod schema;
pub mod sessions;
pub mod store;
pub mod tasks;
pub mod write_gate;

pub use breaker::{BreakerConfig, BreakerState};
pub use command::{ApplyError, Command, CommandHandler, NewCommand, Registry, StatusAudience, WritePattern};
pub use copies::{Adoption, CopyDurability, HeldCopy, QueueCopier};
pub use faults::{DbFault, Faults, Partition};
pub use hlc::{Hlc, HlcClock};
pub use id::{CommandId, InvalidCommandId};
pub use metrics::PlatformMetrics;
pub use monitoring::PeerLag;
pub use ownership::{ForwardError, Forwarded, Forwarder, OwnerRow, Ownership, OwnershipConfig, Route};
pub use platform::{
    CommandState, CommandStatus, Delivery, DrainConfig, Durability, Outcome, Platform, PlatformConfig, ReadPool,
    StoreUnavailable, SubmitConfig, SubmitError, SubmitOptions, Submitted,
};
pub use replication::{Applied, OutboxEntry, OutboxPage, ReplicationError};
pub use requests::{RecordedAnswer, RequestId, RequestKey};
pub use store::{url_with_password, Migration, Store, StoreConfig, StoreError, StoreKind, StorePassword};

/// The largest command body the fallback queue takes.
pub fn queue_entry_bytes_max() -> usize {
    rananeeti_queue::ENTRY_BODY_BYTES_MAX
}

/// Re-exported so apps write their SQL against the platform's own sqlx.
pub use sqlx;
