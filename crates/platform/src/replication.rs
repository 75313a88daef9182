//! Replication between regions, store side: read this region's outbox for peers, and apply a
//! batch pulled from a peer together with its checkpoint in one transaction (exactly-once effect,
//! restartable from any crash). The HTTP transport lives in the node crate.

use crate::command::Command;
use crate::platform::{insert_record_inner, Arrival, Platform, StoreUnavailable};
use crate::store::StoreError;
use futures::future::BoxFuture;
use sqlx::Row;

/// One outbox entry: its sequence number in the region serving it, the command, and the regions
/// known to hold it (a relayed command: where it came from, and through whom).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub command: Command,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
    /// The region whose store decided it, when not the one serving it (a relayed command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_region: Option<String>,
}

/// A page of a region's outbox.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OutboxPage {
    pub entries: Vec<OutboxEntry>,
    /// The highest seq in the outbox when read (for lag in entries).
    pub last_seq: u64,
    /// The highest seq this page looked at: entries the puller's region holds already were left
    /// out, and its checkpoint moves past them. Absent from older nodes: the last entry's.
    #[serde(default)]
    pub scanned_to: Option<u64>,
}

/// Regions as the outbox keeps them: sorted, comma-separated.
pub(crate) fn held_by_text(regions: &std::collections::BTreeSet<String>) -> String {
    regions.iter().map(String::as_str).collect::<Vec<_>>().join(",")
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
    #[error("replicated command {id} has kind {kind}, which this node does not know")]
    UnknownKind { id: String, kind: String },
    #[error("outbox entry {seq} does not decode: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// A peer's page must list its entries in seq order past the checkpoint; this one does not
    /// (a peer's bug), so nothing of it is applied and the puller asks again.
    #[error("the peer's page is not in seq order past the checkpoint (seq {seq} after {after})")]
    OutOfOrder { seq: u64, after: u64 },
}

/// What applying a pulled batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Commands newly applied (not already present).
    pub applied: usize,
    /// The checkpoint after the batch.
    pub checkpoint: u64,
}

impl Platform {
    /// Up to `limit` entries of this region's outbox after `after`, in seq order, leaving out
    /// those `for_region` is known to hold already (no echo of a relayed command).
    pub async fn outbox_after(
        &self,
        after: u64,
        limit: usize,
        for_region: Option<&str>,
    ) -> Result<OutboxPage, ReplicationError> {
        let pool = self.reader().await?;
        let rows = sqlx::query(
            "SELECT seq, command, held_by, applied_region FROM rn_outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(limit as i64)
        .fetch_all(&pool)
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut scanned_to = None;
        for row in rows {
            let seq = row.try_get::<i64, _>("seq")? as u64;
            scanned_to = Some(seq);
            let held_by: Vec<String> = row
                .try_get::<Option<String>, _>("held_by")?
                .map(|text| text.split(',').filter(|region| !region.is_empty()).map(str::to_string).collect())
                .unwrap_or_default();
            if for_region.is_some_and(|region| held_by.iter().any(|held| held == region)) {
                continue;
            }
            let text: String = row.try_get("command")?;
            let command = serde_json::from_str(&text)
                .map_err(|error| ReplicationError::Corrupt { seq, reason: error.to_string() })?;
            let applied_region = row.try_get::<Option<String>, _>("applied_region")?;
            entries.push(OutboxEntry { seq, command, held_by, applied_region });
        }
        let last_seq: i64 = sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS last_seq FROM rn_outbox")
            .fetch_one(&pool)
            .await?
            .try_get("last_seq")?;
        Ok(OutboxPage { entries, last_seq: last_seq as u64, scanned_to })
    }

    /// How far this region has applied `peer_region`'s outbox.
    pub async fn checkpoint(&self, peer_region: &str) -> Result<u64, ReplicationError> {
        // From the writer: a lagging reader would make the puller fetch the same pages again.
        self.reader().await?;
        let pool = self.store.writer();
        let row = sqlx::query("SELECT seq FROM rn_checkpoints WHERE peer_region = $1")
            .bind(peer_region)
            .fetch_optional(&pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<i64, _>("seq")? as u64,
            None => 0,
        })
    }

    /// Applies entries pulled from `peer_region`'s outbox and moves the checkpoint past them (and
    /// to `scanned_to`, past entries the page left out), in one transaction. Entries at or below
    /// the checkpoint, or already applied (another node of this region pulled them too, or a
    /// relay brought them first), change nothing. With `relay`, what is newly applied goes into
    /// this region's outbox too, with the regions known to hold it.
    pub fn apply_replicated<'a>(
        &'a self,
        peer_region: &'a str,
        entries: &'a [OutboxEntry],
        scanned_to: Option<u64>,
    ) -> BoxFuture<'a, Result<Applied, ReplicationError>> {
        Box::pin(async move {
            let through = entries.last().map(|entry| entry.seq).max(scanned_to);
            let Some(through) = through else {
                return Ok(Applied { applied: 0, checkpoint: self.checkpoint(peer_region).await? });
            };
            if let Some(pair) = entries.windows(2).find(|pair| pair[0].seq >= pair[1].seq) {
                return Err(ReplicationError::OutOfOrder { seq: pair[1].seq, after: pair[0].seq });
            }
            self.reader().await?; // the injected store fault applies to replication too
            self.store.ensure_migrated().await.map_err(StoreUnavailable::from)?;
            let _turn = self.store.write_turn().await;
            let pool = self.store.writer();
            let mut tx = pool.begin().await?;
            let mut applied = 0;
            let mut relayed = Vec::new();
            for entry in entries {
                let command = &entry.command;
                self.clock.observe(command.hlc);
                let handler = self.registry.get(&command.kind).ok_or_else(|| ReplicationError::UnknownKind {
                    id: command.id.to_hex(),
                    kind: command.kind.clone(),
                })?;
                // Recorded as applied by the region whose store decided it: the peer whose outbox
                // it came from, or for a relayed one the region it names; the node is the one
                // that submitted it there.
                let decided_by = entry.applied_region.as_deref().unwrap_or(peer_region);
                let inserted = insert_record_inner(
                    &mut tx,
                    command,
                    decided_by,
                    &command.origin_node,
                    "committed",
                    Arrival::Direct,
                )
                .await?;
                if inserted {
                    handler.apply_replicated(command, &mut tx).await?;
                    applied += 1;
                    relayed.push(entry);
                } else if upgrade_local_rejection(&mut tx, command, peer_region).await? {
                    // Rejected here (a copy adopted in this region met its rule) but committed in
                    // the peer: committed wins, so every region ends with the same answer.
                    handler.apply_replicated(command, &mut tx).await?;
                    applied += 1;
                } else if handler.reapplies_replicated_duplicates() {
                    // The same write, applied in both regions under different clocks: let the kind
                    // decide again (last-writer-wins is idempotent and order-free).
                    handler.apply_replicated(command, &mut tx).await?;
                }
            }
            let relays = self.config.relay && !relayed.is_empty();
            if self.config.relay {
                // Written last, as a local apply writes its row: on PostgreSQL under the lock
                // that makes outbox order the commit order.
                for entry in relayed {
                    let mut held_by: std::collections::BTreeSet<String> = entry.held_by.iter().cloned().collect();
                    held_by.insert(entry.command.origin_region.clone());
                    held_by.insert(peer_region.to_string());
                    held_by.insert(self.config.region.clone());
                    let ordered = self.config.outbox_commit_ordered && self.store.kind() == crate::StoreKind::Postgres;
                    let decided_by = entry.applied_region.as_deref().unwrap_or(peer_region);
                    crate::platform::append_outbox(
                        &mut tx,
                        ordered,
                        &entry.command,
                        &held_by_text(&held_by),
                        Some(decided_by),
                    )
                    .await?;
                }
            }
            let checkpoint = through;
            sqlx::query(
                "INSERT INTO rn_checkpoints (peer_region, seq) VALUES ($1, $2) ON CONFLICT (peer_region) \
                 DO UPDATE SET seq = excluded.seq WHERE rn_checkpoints.seq < excluded.seq",
            )
            .bind(peer_region)
            .bind(checkpoint as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if relays {
                self.outbox_commits.send_modify(|commits| *commits += 1);
            }
            Ok(Applied { applied, checkpoint })
        })
    }
}

/// Turns this region's *rejected* record of `command` into *committed* (applied by `peer_region`).
/// True when there was such a record.
fn upgrade_local_rejection<'a>(
    connection: &'a mut sqlx::AnyConnection,
    command: &'a Command,
    peer_region: &'a str,
) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let updated = sqlx::query(
            "UPDATE rn_commands SET status = 'committed', reason = NULL, applied_region = $1 \
             WHERE id = $2 AND status = 'rejected'",
        )
        .bind(peer_region)
        .bind(command.id.to_hex())
        .execute(&mut *connection)
        .await?;
        Ok(updated.rows_affected() == 1)
    })
}

impl From<StoreError> for ReplicationError {
    fn from(error: StoreError) -> Self {
        ReplicationError::Unavailable(StoreUnavailable::Store(error))
    }
}

/// Looks for a peer's acknowledgment in the store this often while a region-sync write waits (a
/// peer may have pulled through another node of this region).
const PEER_ACK_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl Platform {
    /// A peer region's pull asked for entries after `seq`: everything up to `seq` is durably held
    /// there (its checkpoint commits with the batch it applied). Kept in memory, and in the
    /// store for the other nodes of this region when writes wait for it (region-sync).
    pub async fn record_peer_ack(&self, peer_region: &str, seq: u64) {
        let mut advanced = false;
        self.peer_acks.send_if_modified(|acks| {
            let known = acks.entry(peer_region.to_string()).or_insert(0);
            if seq > *known {
                *known = seq;
                advanced = true;
            }
            advanced
        });
        if !advanced || self.config.durability != crate::Durability::RegionSync {
            return;
        }
        let stored = sqlx::query(
            "INSERT INTO rn_replication_acks (peer_region, seq) VALUES ($1, $2) ON CONFLICT (peer_region) \
             DO UPDATE SET seq = excluded.seq WHERE rn_replication_acks.seq < excluded.seq",
        )
        .bind(peer_region)
        .bind(seq.min(i64::MAX as u64) as i64)
        .execute(&self.store.writer())
        .await;
        if let Err(error) = stored {
            tracing::debug!(%error, peer = peer_region, "peer acknowledgment not stored; this node still knows it");
        }
    }

    /// The first peer region found to hold this region's outbox entry `seq`, waiting until
    /// `deadline` at most. `None`: none confirmed in time. Woken by the pulls this node serves
    /// and by `follow_peer_acks`, which reads the other nodes' from the store while anyone waits.
    pub(crate) async fn wait_for_peer(&self, seq: u64, deadline: std::time::Instant) -> Option<String> {
        let mut acks = self.peer_acks.subscribe();
        self.peer_ack_waiters.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let found = loop {
            let holder =
                acks.borrow_and_update().iter().find(|(_, acked)| **acked >= seq).map(|(peer, _)| peer.clone());
            if holder.is_some() {
                break holder;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, acks.changed()).await.is_err() {
                break None;
            }
        };
        self.peer_ack_waiters.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        found
    }

    /// While region-sync writes wait on this node, reads what peers acknowledged through the
    /// other nodes of this region (a peer pulls from one of them) every `PEER_ACK_POLL`.
    pub(crate) async fn follow_peer_acks(platform: std::sync::Weak<Platform>) {
        loop {
            let Some(platform) = platform.upgrade() else { return };
            if platform.peer_ack_waiters.load(std::sync::atomic::Ordering::Acquire) > 0 {
                let rows = sqlx::query("SELECT peer_region, seq FROM rn_replication_acks")
                    .fetch_all(&platform.store.writer())
                    .await
                    .unwrap_or_default();
                platform.peer_acks.send_if_modified(|acks| {
                    let mut advanced = false;
                    for row in &rows {
                        let (Ok(peer), Ok(seq)) =
                            (row.try_get::<String, _>("peer_region"), row.try_get::<i64, _>("seq"))
                        else {
                            continue;
                        };
                        let known = acks.entry(peer).or_insert(0);
                        if (seq as u64) > *known {
                            *known = seq as u64;
                            advanced = true;
                        }
                    }
                    advanced
                });
            }
            drop(platform);
            tokio::time::sleep(PEER_ACK_POLL).await;
        }
    }

    /// A peer that acknowledged `seq` through any node of this region, from the store.
    async fn stored_peer_ack(&self, seq: u64) -> Option<String> {
        let row =
            sqlx::query("SELECT peer_region FROM rn_replication_acks WHERE seq >= $1 ORDER BY peer_region LIMIT 1")
                .bind(seq.min(i64::MAX as u64) as i64)
                .fetch_optional(&self.store.writer())
                .await
                .ok()??;
        row.try_get("peer_region").ok()
    }

    /// Whether a command this region committed is held by another region yet (region-sync):
    /// `false` while its outbox entry is past every peer's acknowledgment.
    pub(crate) async fn held_by_a_peer(&self, id: &crate::CommandId) -> Result<bool, sqlx::Error> {
        let pool = self.store.writer();
        let Some(row) =
            sqlx::query("SELECT seq FROM rn_outbox WHERE id = $1").bind(id.to_hex()).fetch_optional(&pool).await?
        else {
            // Not in this region's outbox: it came from a peer, which holds it.
            return Ok(true);
        };
        let seq = row.try_get::<i64, _>("seq")? as u64;
        if self.peer_acks.borrow().values().any(|acked| *acked >= seq) {
            return Ok(true);
        }
        Ok(self.stored_peer_ack(seq).await.is_some())
    }
}
