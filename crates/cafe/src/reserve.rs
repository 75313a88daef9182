//! The `cafe.reserve` command: its apply (the seat rule) and its table.

use crate::domain::{ReservationPayload, KIND_RESERVE};
use futures::future::BoxFuture;
use rananeeti_platform::sqlx::{self, AnyConnection, Row};
use rananeeti_platform::{ApplyError, Command, CommandHandler, Migration, StatusAudience, WritePattern};

/// Seats the cafe has for one time slot, unless configured otherwise.
pub const SEATS_PER_SLOT_DEFAULT: i64 = 60;

pub struct ReserveHandler {
    pub seats_per_slot: i64,
}

impl CommandHandler for ReserveHandler {
    fn kind(&self) -> &'static str {
        KIND_RESERVE
    }

    /// Digest-unique inserts commute, so any region may apply them.
    fn write_pattern(&self) -> WritePattern {
        WritePattern::Local
    }

    /// A booking's id is the guest's reference (the link they were given) and a digest of what
    /// they typed: whoever holds it sees where the booking stands.
    fn status_audience(&self, _payload: &serde_json::Value) -> StatusAudience {
        StatusAudience::IdHolder
    }

    fn apply<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let payload: ReservationPayload = serde_json::from_value(command.payload.clone())
                .map_err(|error| ApplyError::Rejected(format!("not a reservation: {error}")))?;
            let day = payload.time.get(..10).unwrap_or(&payload.time);
            if let Some(reason) = crate::closure::closed_because(connection, day).await? {
                return Err(ApplyError::Rejected(format!("the cafe is closed on {day}: {reason}")));
            }
            if payload.party_size > self.seats_per_slot {
                return Err(ApplyError::Rejected(format!(
                    "a party of {} is larger than the {} seats of a time slot",
                    payload.party_size, self.seats_per_slot
                )));
            }
            // Book the seats on the slot's counter row with one conditional upsert: on PostgreSQL
            // (READ COMMITTED) a concurrent booking of the same slot waits for the row and the
            // condition is checked again on the row it committed, so two bookings never both take
            // the last seats. On SQLite the dedup insert already holds the write lock.
            let booked = sqlx::query(
                "INSERT INTO cafe_slots (slot, booked) VALUES ($1, $2) ON CONFLICT (slot) DO UPDATE \
                 SET booked = cafe_slots.booked + excluded.booked WHERE cafe_slots.booked + excluded.booked <= $3",
            )
            .bind(&payload.time)
            .bind(payload.party_size)
            .bind(self.seats_per_slot)
            .execute(&mut *connection)
            .await?;
            if booked.rows_affected() == 0 {
                let taken: i64 = sqlx::query("SELECT booked FROM cafe_slots WHERE slot = $1")
                    .bind(&payload.time)
                    .fetch_one(&mut *connection)
                    .await?
                    .try_get("booked")?;
                let free = (self.seats_per_slot - taken).max(0);
                return Err(ApplyError::Rejected(format!(
                    "fully booked at {}: {free} of {} seats left for a party of {}",
                    payload.time.replace('T', " "),
                    self.seats_per_slot,
                    payload.party_size
                )));
            }
            Self::insert_reservation(command, &payload, connection).await?;
            Ok(())
        })
    }

    /// The booking was decided in its own region: count its seats and insert it, without the
    /// seat rule (two regions booking one slot while cut off from each other can overbook it;
    /// that is what `local` means, and the counter shows it).
    fn apply_replicated<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let payload: ReservationPayload = serde_json::from_value(command.payload.clone())
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
            sqlx::query(
                "INSERT INTO cafe_slots (slot, booked) VALUES ($1, $2) ON CONFLICT (slot) DO UPDATE \
                 SET booked = cafe_slots.booked + excluded.booked",
            )
            .bind(&payload.time)
            .bind(payload.party_size)
            .execute(&mut *connection)
            .await?;
            Self::insert_reservation(command, &payload, connection).await
        })
    }
}

const SLOTS_SQL: &str = "CREATE TABLE cafe_slots (
        slot TEXT PRIMARY KEY,
        booked BIGINT NOT NULL CHECK (booked >= 0)
    );
    INSERT INTO cafe_slots (slot, booked)
        SELECT slot, CAST(SUM(party_size) AS BIGINT) FROM cafe_reservations GROUP BY slot";

impl ReserveHandler {
    fn insert_reservation<'a>(
        command: &'a Command,
        payload: &'a ReservationPayload,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO cafe_reservations (id, name, party_size, slot, notes, hlc) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(command.id.to_hex())
            .bind(&payload.name)
            .bind(payload.party_size)
            .bind(&payload.time)
            .bind(&payload.notes)
            .bind(command.hlc.0 as i64)
            .execute(&mut *connection)
            .await?;
            Ok(())
        })
    }
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        component: "cafe",
        version: 1,
        sqlite: "CREATE TABLE cafe_reservations (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        party_size BIGINT NOT NULL,
        slot TEXT NOT NULL,
        notes TEXT NOT NULL,
        hlc BIGINT NOT NULL
    );
    CREATE INDEX cafe_reservations_slot ON cafe_reservations (slot);",
        postgres: "CREATE TABLE cafe_reservations (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        party_size BIGINT NOT NULL,
        slot TEXT NOT NULL,
        notes TEXT NOT NULL,
        hlc BIGINT NOT NULL
    );
    CREATE INDEX cafe_reservations_slot ON cafe_reservations (slot);",
    },
    Migration { component: "cafe", version: 2, sqlite: SLOTS_SQL, postgres: SLOTS_SQL },
];
