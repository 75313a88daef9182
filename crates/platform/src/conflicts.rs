//! The conflict log: for kinds that resolve concurrent writes by last-writer-wins on the HLC,
//! every concurrent write that lost is recorded here, in each region that saw the conflict.

use crate::platform::{Platform, StoreUnavailable};
use crate::store::StoreError;
use futures::future::BoxFuture;
use sqlx::Row;

/// One side of a last-writer-wins decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Write {
    pub id: String,
    pub hlc: u64,
    /// The write's payload (JSON text as stored).
    pub payload: String,
}

/// Whether `a` wins over `b` under last-writer-wins: the later HLC, ties broken by id, so every
/// region picks the same winner whatever order the writes arrive in.
pub fn wins(a: &Write, b: &Write) -> bool {
    (a.hlc, &a.id) > (b.hlc, &b.id)
}

/// Records that `loser` was overwritten by (or lost to) `winner` for `entity` of `kind`.
pub fn record_conflict<'a>(
    connection: &'a mut sqlx::AnyConnection,
    kind: &'a str,
    entity: &'a str,
    winner: &'a Write,
    loser: &'a Write,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO rn_conflicts (kind, entity, winner_id, winner_hlc, loser_id, loser_hlc, loser_payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(kind)
        .bind(entity)
        .bind(&winner.id)
        .bind(winner.hlc as i64)
        .bind(&loser.id)
        .bind(loser.hlc as i64)
        .bind(&loser.payload)
        .execute(&mut *connection)
        .await?;
        Ok(())
    })
}

/// A recorded conflict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Conflict {
    pub seq: u64,
    pub kind: String,
    pub entity: String,
    pub winner: Write,
    pub loser: Write,
}

impl Platform {
    /// Conflicts recorded in this region's store, oldest first, after `after` (a `seq`).
    pub async fn conflicts(&self, after: u64, limit: usize) -> Result<Vec<Conflict>, StoreUnavailable> {
        let pool = self.reader().await?;
        let rows = sqlx::query(
            "SELECT seq, kind, entity, winner_id, winner_hlc, loser_id, loser_hlc, loser_payload FROM rn_conflicts \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(limit as i64)
        .fetch_all(&pool)
        .await
        .map_err(StoreError::from)?;
        decode_conflicts(rows)
    }

    /// The `limit` conflicts recorded last in this region's store, newest first (for an
    /// operator's overview).
    pub async fn recent_conflicts(&self, limit: usize) -> Result<Vec<Conflict>, StoreUnavailable> {
        let pool = self.reader().await?;
        let rows = sqlx::query(
            "SELECT seq, kind, entity, winner_id, winner_hlc, loser_id, loser_hlc, loser_payload FROM rn_conflicts \
             ORDER BY seq DESC LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&pool)
        .await
        .map_err(StoreError::from)?;
        decode_conflicts(rows)
    }
}

fn decode_conflicts(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Conflict>, StoreUnavailable> {
    let decode = |row: sqlx::any::AnyRow| -> Result<Conflict, sqlx::Error> {
        Ok(Conflict {
            seq: row.try_get::<i64, _>("seq")? as u64,
            kind: row.try_get("kind")?,
            entity: row.try_get("entity")?,
            winner: Write {
                id: row.try_get("winner_id")?,
                hlc: row.try_get::<i64, _>("winner_hlc")? as u64,
                payload: String::new(),
            },
            loser: Write {
                id: row.try_get("loser_id")?,
                hlc: row.try_get::<i64, _>("loser_hlc")? as u64,
                payload: row.try_get("loser_payload")?,
            },
        })
    };
    rows.into_iter().map(|row| decode(row).map_err(|error| StoreError::from(error).into())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: &str, hlc: u64) -> Write {
        Write { id: id.into(), hlc, payload: String::new() }
    }

    #[test]
    fn later_hlc_wins_and_ties_break_the_same_way_everywhere() {
        assert!(wins(&write("a", 2), &write("b", 1)));
        assert!(!wins(&write("b", 1), &write("a", 2)));
        assert!(wins(&write("b", 5), &write("a", 5)));
        assert!(!wins(&write("a", 5), &write("b", 5)));
    }
}
