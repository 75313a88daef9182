//! Replication between regions, store side: read this region's outbox for peers, and apply a
//! batch pulled from a peer together with its checkpoint in one transaction (exactly-once effect,
//! restartable from any crash). The HTTP transport lives in the node crate.

use crate::command::Command;
use crate::platform::{insert_record_inner, Platform, StoreUnavailable};
use crate::store::StoreError;
use futures::future::BoxFuture;
use sqlx::Row;

/// One outbox entry: its sequence number in the origin region and the command.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub command: Command,
}

/// A page of a region's outbox.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OutboxPage {
    pub entries: Vec<OutboxEntry>,
    /// The highest seq in the outbox when read (for lag in entries).
    pub last_seq: u64,
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
    /// Up to `limit` entries of this region's outbox after `after`, in seq order.
    pub async fn outbox_after(&self, after: u64, limit: usize) -> Result<OutboxPage, ReplicationError> {
        let pool = self.reader().await?;
        let rows = sqlx::query("SELECT seq, command FROM rn_outbox WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(limit as i64)
            .fetch_all(&pool)
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.try_get::<i64, _>("seq")? as u64;
            let text: String = row.try_get("command")?;
            let command = serde_json::from_str(&text)
                .map_err(|error| ReplicationError::Corrupt { seq, reason: error.to_string() })?;
            entries.push(OutboxEntry { seq, command });
        }
        let last_seq: i64 = sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS last_seq FROM rn_outbox")
            .fetch_one(&pool)
            .await?
            .try_get("last_seq")?;
        Ok(OutboxPage { entries, last_seq: last_seq as u64 })
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

    /// Applies entries pulled from `peer_region`'s outbox and moves the checkpoint past them, in
    /// one transaction. Entries at or below the checkpoint, or already applied (another node of
    /// this region pulled them too), change nothing.
    pub fn apply_replicated<'a>(
        &'a self,
        peer_region: &'a str,
        entries: &'a [OutboxEntry],
    ) -> BoxFuture<'a, Result<Applied, ReplicationError>> {
        Box::pin(async move {
            let Some(last) = entries.last() else {
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
            for entry in entries {
                let command = &entry.command;
                self.clock.observe(command.hlc);
                let handler = self.registry.get(&command.kind).ok_or_else(|| ReplicationError::UnknownKind {
                    id: command.id.to_hex(),
                    kind: command.kind.clone(),
                })?;
                // Recorded as applied by the peer region whose outbox it came from (its store
                // decided it); the node is the one that submitted it there.
                let inserted =
                    insert_record_inner(&mut tx, command, peer_region, &command.origin_node, "committed", false)
                        .await?;
                if inserted {
                    handler.apply_replicated(command, &mut tx).await?;
                    applied += 1;
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
            let checkpoint = last.seq;
            sqlx::query(
                "INSERT INTO rn_checkpoints (peer_region, seq) VALUES ($1, $2) ON CONFLICT (peer_region) \
                 DO UPDATE SET seq = excluded.seq WHERE rn_checkpoints.seq < excluded.seq",
            )
            .bind(peer_region)
            .bind(checkpoint as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
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
