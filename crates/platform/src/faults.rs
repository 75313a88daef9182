//! Injected faults of this node (docs/design.md "Faults"), set through the admin API.

use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// What the store does when it is reached through this node.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbFault {
    Up,
    Down,
    Flaky { flaky: f64 },
    Slow { slow_ms: u64 },
}

/// The faults currently set on this node.
#[derive(Debug)]
pub struct Faults {
    db: RwLock<DbFault>,
    /// Replication between regions is cut: this node serves no outbox page and its pullers
    /// pause (see the node crate's replication module). `cut_from` lists the peer regions it is
    /// cut from alone (empty: the flag decides).
    replication_cut: AtomicBool,
    replication_cut_from: RwLock<std::collections::BTreeSet<String>>,
    /// This node is cut off from the other regions and the witness (a network partition), or
    /// from some of them.
    partition: RwLock<Partition>,
}

/// A network partition injected on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Partition {
    #[default]
    None,
    /// Cut off from every other region and the witness: no replication, no ownership exchange,
    /// no forwarding, in either direction.
    All,
    /// Cut off from these voters only (region names, or `witness`): no ownership exchange and no
    /// forwarding with them, either way. Replication is not cut.
    From(std::collections::BTreeSet<String>),
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            db: RwLock::new(DbFault::Up),
            replication_cut: AtomicBool::new(false),
            replication_cut_from: RwLock::new(std::collections::BTreeSet::new()),
            partition: RwLock::new(Partition::None),
        }
    }
}

/// The effect of the store fault on one store access.
pub enum StoreAccess {
    Proceed,
    Fail,
    Delay(Duration),
}

impl Faults {
    pub fn db(&self) -> DbFault {
        *self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_db(&self, fault: DbFault) {
        *self.db.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fault;
    }

    /// Replication is cut, by itself or by a partition.
    pub fn replication_cut(&self) -> bool {
        self.replication_cut.load(Ordering::Relaxed) || self.partitioned()
    }

    /// Cut off from everyone.
    pub fn partitioned(&self) -> bool {
        self.partition() == Partition::All
    }

    /// Cut off from `voter` (a region, or the witness).
    pub fn cut_from(&self, voter: &str) -> bool {
        match &*self.partition.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Partition::None => false,
            Partition::All => true,
            Partition::From(cut) => cut.contains(voter),
        }
    }

    pub fn partition(&self) -> Partition {
        self.partition.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_partition(&self, partition: Partition) {
        *self.partition.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = partition;
    }

    pub fn set_replication_cut(&self, cut: bool) {
        self.replication_cut.store(cut, Ordering::Relaxed);
        self.replication_cut_from.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Replication cut with these peer regions only (both ways: no pull from them, no page to them).
    pub fn set_replication_cut_from(&self, regions: std::collections::BTreeSet<String>) {
        self.replication_cut.store(false, Ordering::Relaxed);
        *self.replication_cut_from.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = regions;
    }

    /// Replication with `region` is cut: by itself, by a cut of everything, or by a partition.
    pub fn replication_cut_with(&self, region: &str) -> bool {
        self.replication_cut()
            || self.cut_from(region)
            || self.replication_cut_from.read().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(region)
    }

    /// The peer regions replication is cut from alone.
    pub fn replication_cut_from(&self) -> std::collections::BTreeSet<String> {
        self.replication_cut_from.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Decides, for one access, what the injected fault does to it.
    pub fn store_access(&self) -> StoreAccess {
        match self.db() {
            DbFault::Up => StoreAccess::Proceed,
            DbFault::Down => StoreAccess::Fail,
            DbFault::Flaky { flaky } => {
                if rand::thread_rng().gen_bool(flaky.clamp(0.0, 1.0)) {
                    StoreAccess::Fail
                } else {
                    StoreAccess::Proceed
                }
            }
            DbFault::Slow { slow_ms } => StoreAccess::Delay(Duration::from_millis(slow_ms)),
        }
    }
}
