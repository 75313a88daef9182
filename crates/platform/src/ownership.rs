//! Ownership of `global` and `home` writes (seed 003): which region applies the writes homed in
//! a region (its *acting owner*, numbered by an epoch), the lease that stops an owner cut off from
//! the others from applying with a stale view, and the forwarder that carries a write to its owner.
//!
//! The rule (also in ARCHITECTURE.md): a node applies a write homed in region H only when
//! 1. its region is H's acting owner in its view (the highest epoch it has seen; on a tie the
//!    greater region name),
//! 2. that row is in effect (`effective_at_ms`, a lease after the change that made it),
//! 3. it holds a lease: within the last `lease_ms` it exchanged ownership tables with a majority
//!    of the voters in its view (the regions that act for themselves, plus the witness), and
//! 4. for a row a failover made (epoch > 0), `lease_ms` have passed since this node first heard a
//!    majority of its voters answer with that epoch: any lease the previous owner still holds
//!    was granted by a majority that includes one of them, before it knew the epoch, so it has
//!    run out (the argument is in ARCHITECTURE.md, "The fencing rule").
//!
//! A view is stored before it is learned (and before it is answered with), so a voter that said
//! it knows an epoch still knows it after a restart.
//!
//! Otherwise the write goes to the acting owner (forwarded) or waits in the queue (*pending*).

use crate::command::Command;
use crate::hlc::wall_clock_ms;
use crate::platform::{Outcome, Platform};
use crate::store::StoreError;
use futures::future::BoxFuture;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct OwnershipConfig {
    /// The home region of `global` kinds (the primary). Every node must agree on it.
    pub primary_region: String,
    /// Every region of the deployment, this one included.
    pub regions: Vec<String>,
    /// Whether a witness votes (a third party that breaks ties between two regions).
    pub witness: bool,
    /// How long an exchange with a majority keeps the right to apply owned writes.
    pub lease_ms: u64,
}

/// Who applies the writes homed in `region`, since which epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerRow {
    pub region: String,
    pub acting: String,
    pub epoch: u64,
    /// Wall-clock time from which the acting region may apply (a lease after the change).
    pub effective_at_ms: u64,
}

impl OwnerRow {
    fn initial(region: &str) -> OwnerRow {
        OwnerRow { region: region.to_string(), acting: region.to_string(), epoch: 0, effective_at_ms: 0 }
    }

    /// Whether this row replaces `other` (same region): a higher epoch, or the same epoch with a
    /// greater acting region (two changes made concurrently settle on one everywhere).
    pub fn supersedes(&self, other: &OwnerRow) -> bool {
        (self.epoch, &self.acting) > (other.epoch, &other.acting)
    }
}

/// Carries a command to a node of its owner region, which submits it there.
pub trait Forwarder: Send + Sync + 'static {
    fn forward<'a>(&'a self, region: &'a str, command: &'a Command) -> BoxFuture<'a, Result<Forwarded, ForwardError>>;
}

/// The owner's answer to a forwarded command: what it decided, and on which command (a retry of
/// a keyed request is answered with the first try's id).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Absent in answers of nodes from before it was added: then the forwarded command's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<crate::id::CommandId>,
}

/// Why the owner did not take a forwarded command, classified as the local path classifies the
/// store's errors: what may change (retry later) apart from what never will.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// Not reached, overloaded, shutting down, or cut off: try again later, in order.
    #[error("owner unreachable: {0}")]
    Unreachable(String),
    /// The owner refused the command itself (too large, does not parse): it never will take it.
    #[error("owner refused the command: {0}")]
    Refused(String),
    /// The owner does not know the command's kind (it runs an older version): held for it,
    /// without holding back the owner's other writes.
    #[error("owner does not know the kind: {0}")]
    UnknownKind(String),
}

/// Where an owned write goes, decided on this node's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Apply here.
    Apply,
    /// Send to this region, which acts for the write's home region.
    Forward(String),
    /// This region owns it but may not apply now (no lease, or the change is not in effect yet).
    Hold(&'static str),
}

/// This node's view of ownership and its lease.
pub struct Ownership {
    config: OwnershipConfig,
    rows: RwLock<BTreeMap<String, OwnerRow>>,
    /// Per voter, its last answered exchange.
    renewed: Mutex<HashMap<String, Renewal>>,
    /// Per region this node's region acts for since a failover: the epoch, and when this node
    /// first heard a majority of its voters answer with it.
    armed: Mutex<HashMap<String, (u64, Instant)>>,
}

/// A voter's answer to an exchange: when the exchange was sent, and the (epoch, acting region)
/// per region that its answer carried.
#[derive(Clone, Debug)]
struct Renewal {
    sent_at: Instant,
    known: HashMap<String, (u64, String)>,
}

pub const WITNESS_VOTER: &str = "witness";

impl Ownership {
    pub fn new(config: OwnershipConfig) -> Ownership {
        Ownership {
            config,
            rows: RwLock::new(BTreeMap::new()),
            renewed: Mutex::new(HashMap::new()),
            armed: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &OwnershipConfig {
        &self.config
    }

    /// The row for `region` in this view (a region acts for itself until a change says otherwise).
    pub fn row(&self, region: &str) -> OwnerRow {
        self.rows
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(region)
            .cloned()
            .unwrap_or_else(|| OwnerRow::initial(region))
    }

    /// Every region's row, the configured ones and any other this view has heard of.
    pub fn table(&self) -> Vec<OwnerRow> {
        let rows = self.rows.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut table: BTreeMap<String, OwnerRow> = rows.clone();
        for region in &self.config.regions {
            table.entry(region.clone()).or_insert_with(|| OwnerRow::initial(region));
        }
        table.into_values().collect()
    }

    /// The rows of `rows` that supersede this view's (what `learn` would change).
    pub fn newer_of(&self, rows: &[OwnerRow]) -> Vec<OwnerRow> {
        let view = self.rows.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut newer: BTreeMap<String, OwnerRow> = BTreeMap::new();
        for row in rows {
            let current = newer
                .get(&row.region)
                .or_else(|| view.get(&row.region))
                .cloned()
                .unwrap_or_else(|| OwnerRow::initial(&row.region));
            if row.supersedes(&current) {
                newer.insert(row.region.clone(), row.clone());
            }
        }
        newer.into_values().collect()
    }

    /// Takes the rows that supersede this view's. Answers whether anything changed. A node
    /// stores rows before it learns them (`Platform::learn_owners`).
    pub fn learn(&self, rows: &[OwnerRow]) -> bool {
        let mut view = self.rows.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut changed = false;
        for row in rows {
            let current = view.get(&row.region).cloned().unwrap_or_else(|| OwnerRow::initial(&row.region));
            if row.supersedes(&current) {
                tracing::info!(region = row.region, acting = row.acting, epoch = row.epoch, "ownership changed");
                view.insert(row.region.clone(), row.clone());
                changed = true;
            }
        }
        changed
    }

    /// The voters in this view: the regions that act for themselves, and the witness.
    pub fn voters(&self) -> Vec<String> {
        let mut voters: Vec<String> =
            self.config.regions.iter().filter(|region| self.row(region).acting == **region).cloned().collect();
        if self.config.witness {
            voters.push(WITNESS_VOTER.to_string());
        }
        voters
    }

    /// A voter answered an exchange sent at `sent_at` with its table `rows` (already learned
    /// and stored by this node). `own_region` is this node's.
    pub fn renewed_by(&self, voter: &str, sent_at: Instant, rows: &[OwnerRow], own_region: &str) {
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let newer = renewed.get(voter).is_none_or(|last| sent_at >= last.sent_at);
            if newer {
                let known = rows.iter().map(|row| (row.region.clone(), (row.epoch, row.acting.clone()))).collect();
                renewed.insert(voter.to_string(), Renewal { sent_at, known });
            }
        }
        for row in self.table() {
            if row.acting == own_region && row.epoch > 0 {
                self.arm(own_region, &row);
            }
        }
    }

    /// Notes when a majority of the voters first answered knowing `row` (this region acting
    /// since a failover). Answers since when, if they have.
    fn arm(&self, own_region: &str, row: &OwnerRow) -> Option<Instant> {
        let mut armed = self.armed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((epoch, at)) = armed.get(&row.region) {
            if *epoch == row.epoch {
                return Some(*at);
            }
        }
        let voters = self.voters();
        let lease = Duration::from_millis(self.config.lease_ms);
        let renewed = self.renewed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let knowing = voters
            .iter()
            .filter(|voter| {
                *voter == own_region
                    || renewed.get(*voter).is_some_and(|renewal| {
                        renewal.sent_at.elapsed() < lease
                            && renewal
                                .known
                                .get(&row.region)
                                .is_some_and(|(epoch, acting)| (*epoch, acting) >= (row.epoch, &row.acting))
                    })
            })
            .count();
        if knowing * 2 <= voters.len() {
            return None;
        }
        let now = Instant::now();
        tracing::info!(
            region = row.region,
            epoch = row.epoch,
            "a majority knows this region acts: it applies after one lease"
        );
        armed.insert(row.region.clone(), (row.epoch, now));
        Some(now)
    }

    /// Whether this node, in `own_region`, holds the lease: a majority of the voters in its view
    /// (itself counted when it is one) answered an exchange sent within the last `lease_ms`.
    pub fn lease_held(&self, own_region: &str) -> bool {
        let voters = self.voters();
        let lease = Duration::from_millis(self.config.lease_ms);
        let renewed = self.renewed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = voters
            .iter()
            .filter(|voter| {
                *voter == own_region || renewed.get(*voter).is_some_and(|renewal| renewal.sent_at.elapsed() < lease)
            })
            .count();
        fresh * 2 > voters.len()
    }

    /// When each voter last answered, in milliseconds ago (`None`: never).
    pub fn renewal_ages_ms(&self) -> BTreeMap<String, Option<u64>> {
        let renewed = self.renewed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.voters()
            .into_iter()
            .map(|voter| {
                let age = renewed.get(&voter).map(|renewal| renewal.sent_at.elapsed().as_millis() as u64);
                (voter, age)
            })
            .collect()
    }

    /// Where a write homed in `home` goes from a node of `own_region`.
    pub fn route(&self, own_region: &str, home: &str) -> Route {
        let row = self.row(home);
        if row.acting != own_region {
            return Route::Forward(row.acting);
        }
        if wall_clock_ms() < row.effective_at_ms {
            return Route::Hold("the ownership change is not in effect yet");
        }
        if !self.lease_held(own_region) {
            return Route::Hold("no ownership lease: a majority of the voters has not answered lately");
        }
        if row.epoch > 0 {
            let lease = Duration::from_millis(self.config.lease_ms);
            match self.arm(own_region, &row) {
                Some(armed_at) if armed_at.elapsed() >= lease => {}
                _ => return Route::Hold("the failover is not fenced yet: the previous owner's lease may still run"),
            }
        }
        Route::Apply
    }
}

impl Platform {
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// Reads the ownership table from the store into this node's view, and the view's newer rows
    /// into the store. Answers the merged table.
    pub async fn sync_owners(&self) -> Result<Vec<OwnerRow>, StoreError> {
        self.store.ensure_migrated().await?;
        let pool = self.store.writer();
        let rows = sqlx::query("SELECT region, acting, epoch, effective_at_ms FROM rn_owners").fetch_all(&pool).await?;
        let stored: Vec<OwnerRow> = rows
            .into_iter()
            .map(|row| {
                Ok(OwnerRow {
                    region: row.try_get("region")?,
                    acting: row.try_get("acting")?,
                    epoch: row.try_get::<i64, _>("epoch")? as u64,
                    effective_at_ms: row.try_get::<i64, _>("effective_at_ms")? as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        self.ownership.learn(&stored);
        let view = self.ownership.table();
        for row in &view {
            let in_store = stored.iter().find(|stored| stored.region == row.region);
            if row.epoch > 0 && in_store.is_none_or(|stored| row.supersedes(stored)) {
                store_owner_row(&pool, row).await?;
            }
        }
        Ok(view)
    }

    /// Takes rows from a peer or the witness: into the store, then into the view (an answer
    /// that says this node knows an epoch must hold after a restart too). Answers the table.
    pub async fn learn_owners(&self, rows: &[OwnerRow]) -> Result<Vec<OwnerRow>, StoreError> {
        let newer = self.ownership.newer_of(rows);
        if newer.is_empty() {
            return Ok(self.ownership.table());
        }
        self.store.ensure_migrated().await?;
        let pool = self.store.writer();
        for row in &newer {
            store_owner_row(&pool, row).await?;
        }
        self.ownership.learn(&newer);
        self.sync_owners().await
    }

    /// Makes `acting` the owner of the writes homed in `region`, with the next epoch, in effect a
    /// lease from now. Stored here first; the exchanges carry it to the other regions.
    pub async fn fail_over(&self, region: &str, acting: &str) -> Result<OwnerRow, StoreError> {
        self.sync_owners().await?;
        let current = self.ownership.row(region);
        let row = OwnerRow {
            region: region.to_string(),
            acting: acting.to_string(),
            epoch: current.epoch + 1,
            effective_at_ms: wall_clock_ms() + self.ownership.config().lease_ms,
        };
        store_owner_row(&self.store.writer(), &row).await?;
        self.ownership.learn(std::slice::from_ref(&row));
        tracing::warn!(region, acting, epoch = row.epoch, "ownership failed over");
        Ok(row)
    }
}

async fn store_owner_row(pool: &sqlx::AnyPool, row: &OwnerRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rn_owners (region, acting, epoch, effective_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (region) DO UPDATE SET acting = excluded.acting, epoch = excluded.epoch, \
         effective_at_ms = excluded.effective_at_ms \
         WHERE excluded.epoch > rn_owners.epoch OR (excluded.epoch = rn_owners.epoch AND excluded.acting > rn_owners.acting)",
    )
    .bind(&row.region)
    .bind(&row.acting)
    .bind(row.epoch as i64)
    .bind(row.effective_at_ms as i64)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership(regions: &[&str], witness: bool) -> Ownership {
        Ownership::new(OwnershipConfig {
            primary_region: regions[0].to_string(),
            regions: regions.iter().map(|region| region.to_string()).collect(),
            witness,
            lease_ms: 1000,
        })
    }

    fn row(region: &str, acting: &str, epoch: u64) -> OwnerRow {
        OwnerRow { region: region.into(), acting: acting.into(), epoch, effective_at_ms: 0 }
    }

    #[test]
    fn a_higher_epoch_wins_and_ties_settle_on_the_greater_region() {
        let view = ownership(&["r1", "r2", "r3"], false);
        assert!(view.learn(&[row("r1", "r2", 1)]));
        assert!(!view.learn(&[row("r1", "r1", 0)]), "an older epoch changes nothing");
        assert!(view.learn(&[row("r1", "r3", 1)]), "same epoch, greater region");
        assert!(!view.learn(&[row("r1", "r2", 1)]));
        assert_eq!(view.row("r1").acting, "r3");
    }

    #[test]
    fn a_lone_region_of_two_holds_no_lease_without_the_witness() {
        let view = ownership(&["r1", "r2"], false);
        assert!(!view.lease_held("r1"), "one of two voters is not a majority");
        view.renewed_by("r2", Instant::now(), &[], "r1");
        assert!(view.lease_held("r1"));

        let with_witness = ownership(&["r1", "r2"], true);
        assert!(!with_witness.lease_held("r1"));
        with_witness.renewed_by(WITNESS_VOTER, Instant::now(), &[], "r1");
        assert!(with_witness.lease_held("r1"), "itself and the witness are two of three");
    }

    #[test]
    fn a_stale_renewal_does_not_count() {
        let view = ownership(&["r1", "r2"], false);
        view.renewed_by("r2", Instant::now() - Duration::from_millis(1500), &[], "r1");
        assert!(!view.lease_held("r1"));
    }

    #[test]
    fn a_region_failed_over_away_stops_voting_and_its_writes_go_to_the_new_owner() {
        let view = ownership(&["r1", "r2"], false);
        view.learn(&[row("r1", "r2", 1)]);
        assert_eq!(view.voters(), vec!["r2".to_string()]);
        assert!(view.lease_held("r2"), "the only voter left is itself");
        // It knows the epoch (a majority of one); a lease later the old owner's has run out.
        assert!(matches!(view.route("r2", "r1"), Route::Hold(_)));
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(view.route("r2", "r1"), Route::Apply);
        assert_eq!(view.route("r1", "r1"), Route::Forward("r2".into()));
    }

    /// Regression (issue 11, defect 5): the new owner applied as soon as the change was in effect
    /// and it held a lease, while the old owner could still hold one granted by a voter that had
    /// not heard of the new epoch. It now waits a lease after a majority answered knowing it.
    #[test]
    fn a_new_owner_applies_only_a_lease_after_a_majority_answered_knowing_its_epoch() {
        let view = Ownership::new(OwnershipConfig {
            primary_region: "r1".into(),
            regions: vec!["r1".into(), "r2".into()],
            witness: true,
            lease_ms: 200,
        });
        let failover = row("r1", "r2", 1);
        view.learn(std::slice::from_ref(&failover));
        // The witness answers, but from before it heard of epoch 1: a lease, not a fence.
        view.renewed_by(WITNESS_VOTER, Instant::now(), &[row("r1", "r1", 0)], "r2");
        assert!(view.lease_held("r2"));
        assert!(matches!(view.route("r2", "r1"), Route::Hold(_)), "no majority knows epoch 1 yet");
        // It answers knowing epoch 1: the old owner's lease can last one more lease at most.
        view.renewed_by(WITNESS_VOTER, Instant::now(), std::slice::from_ref(&failover), "r2");
        assert!(matches!(view.route("r2", "r1"), Route::Hold(_)), "one lease to wait");
        std::thread::sleep(Duration::from_millis(250));
        view.renewed_by(WITNESS_VOTER, Instant::now(), std::slice::from_ref(&failover), "r2");
        assert_eq!(view.route("r2", "r1"), Route::Apply);
    }

    #[test]
    fn newer_rows_are_told_before_they_are_learned() {
        let view = ownership(&["r1", "r2"], false);
        assert_eq!(view.newer_of(&[row("r1", "r2", 1), row("r2", "r2", 0)]), vec![row("r1", "r2", 1)]);
        assert_eq!(view.row("r1").epoch, 0, "telling changes nothing");
    }

    #[test]
    fn a_change_waits_for_its_effective_time() {
        let view = ownership(&["r1"], false);
        view.learn(&[OwnerRow {
            region: "r1".into(),
            acting: "r1".into(),
            epoch: 1,
            effective_at_ms: wall_clock_ms() + 60_000,
        }]);
        assert!(matches!(view.route("r1", "r1"), Route::Hold(_)));
    }
}
