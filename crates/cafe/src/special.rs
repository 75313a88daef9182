//! The day's special (`cafe.set_special`): staff in any region may set it; concurrent settings
//! resolve by last-writer-wins on the HLC and the losers go to the conflict log. This is the
//! cafe's `local` kind that overwrites (reservations only add).

use crate::domain::FieldError;
use futures::future::BoxFuture;
use rananeeti_platform::conflicts::{record_conflict, wins, Write};
use rananeeti_platform::sqlx::{self, AnyConnection, Row};
use rananeeti_platform::{ApplyError, Command, CommandHandler, CommandId, Migration, WritePattern};
use time::macros::format_description;

pub const KIND_SET_SPECIAL: &str = "cafe.set_special";
pub const DISH_CHARS_MAX: usize = 60;
pub const PRICE_CENTS_MAX: i64 = 100_000;

/// A valid special for one day.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialPayload {
    pub day: String,
    pub dish: String,
    pub price_cents: i64,
    /// The HLC of the special this write replaces, as the writer saw it (0: none). A write that
    /// replaces what it saw is an update; one that finds something else is concurrent.
    pub replaces_hlc: u64,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field, message: message.into() }
}

impl SpecialPayload {
    pub fn parse(day: &str, dish: &str, price_cents: i64, replaces_hlc: u64) -> Result<SpecialPayload, FieldError> {
        let format = format_description!("[year]-[month]-[day]");
        let day = time::Date::parse(day.trim(), &format)
            .map_err(|_| field_error("day", "a real date as YYYY-MM-DD"))?
            .format(&format)
            .expect("a parsed date formats");
        let dish = dish.trim();
        let chars = dish.chars().count();
        if chars == 0 || chars > DISH_CHARS_MAX {
            return Err(field_error("dish", format!("1 to {DISH_CHARS_MAX} characters")));
        }
        if dish.chars().any(char::is_control) {
            return Err(field_error("dish", "a dish cannot contain control characters"));
        }
        if !(0..=PRICE_CENTS_MAX).contains(&price_cents) {
            return Err(field_error("price_cents", format!("from 0 to {PRICE_CENTS_MAX} cents")));
        }
        Ok(SpecialPayload { day, dish: dish.to_string(), price_cents, replaces_hlc })
    }

    pub fn id(&self) -> CommandId {
        let canonical = format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", self.day, self.dish, self.price_cents, self.replaces_hlc);
        CommandId::digest(KIND_SET_SPECIAL, canonical.as_bytes())
    }
}

pub struct SetSpecialHandler;

impl CommandHandler for SetSpecialHandler {
    fn kind(&self) -> &'static str {
        KIND_SET_SPECIAL
    }

    fn write_pattern(&self) -> WritePattern {
        WritePattern::Local
    }

    fn apply<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move { Ok(apply_last_writer_wins(command, connection).await?) })
    }

    /// The same rule as locally: last-writer-wins is decided the same way in every region.
    fn apply_replicated<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(apply_last_writer_wins(command, connection))
    }

    fn reapplies_replicated_duplicates(&self) -> bool {
        true
    }
}

/// Keeps the later write (HLC, then id) and logs the overwritten one when the two were
/// concurrent (neither saw the other).
fn apply_last_writer_wins<'a>(
    command: &'a Command,
    connection: &'a mut AnyConnection,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let payload: SpecialPayload =
            serde_json::from_value(command.payload.clone()).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        let incoming = Write { id: command.id.to_hex(), hlc: command.hlc.0, payload: command.payload.to_string() };
        let current = sqlx::query("SELECT command_id, hlc, replaces_hlc, payload FROM cafe_specials WHERE day = $1")
            .bind(&payload.day)
            .fetch_optional(&mut *connection)
            .await?;
        let Some(current) = current else {
            return upsert(connection, &payload, &incoming).await;
        };
        let current_replaces = current.try_get::<i64, _>("replaces_hlc")? as u64;
        let current = Write {
            id: current.try_get("command_id")?,
            hlc: current.try_get::<i64, _>("hlc")? as u64,
            payload: current.try_get("payload")?,
        };
        if incoming.id == current.id {
            // The same write applied under two clocks (submitted in two regions): keep the later.
            if incoming.hlc > current.hlc {
                return upsert(connection, &payload, &incoming).await;
            }
            return Ok(());
        }
        if wins(&incoming, &current) {
            if payload.replaces_hlc != current.hlc {
                record_conflict(connection, KIND_SET_SPECIAL, &payload.day, &incoming, &current).await?;
            }
            upsert(connection, &payload, &incoming).await
        } else if current_replaces != incoming.hlc {
            // The incoming write is older than what is there and was not what it replaced:
            // concurrent, and it lost.
            record_conflict(connection, KIND_SET_SPECIAL, &payload.day, &current, &incoming).await
        } else {
            Ok(())
        }
    })
}

fn upsert<'a>(
    connection: &'a mut AnyConnection,
    payload: &'a SpecialPayload,
    write: &'a Write,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO cafe_specials (day, dish, price_cents, hlc, command_id, replaces_hlc, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (day) DO UPDATE SET dish = excluded.dish, \
             price_cents = excluded.price_cents, hlc = excluded.hlc, command_id = excluded.command_id, \
             replaces_hlc = excluded.replaces_hlc, payload = excluded.payload",
        )
        .bind(&payload.day)
        .bind(&payload.dish)
        .bind(payload.price_cents)
        .bind(write.hlc as i64)
        .bind(&write.id)
        .bind(payload.replaces_hlc as i64)
        .bind(&write.payload)
        .execute(&mut *connection)
        .await?;
        Ok(())
    })
}

const SPECIALS_SQL: &str = "CREATE TABLE cafe_specials (
        day TEXT PRIMARY KEY,
        dish TEXT NOT NULL,
        price_cents BIGINT NOT NULL,
        hlc BIGINT NOT NULL,
        command_id TEXT NOT NULL,
        replaces_hlc BIGINT NOT NULL,
        payload TEXT NOT NULL
    )";

pub const MIGRATIONS: &[Migration] =
    &[Migration { component: "cafe", version: 3, sqlite: SPECIALS_SQL, postgres: SPECIALS_SQL }];

/// The special of a day as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Special {
    pub day: String,
    pub dish: String,
    pub price_cents: i64,
    pub hlc: u64,
    pub id: String,
}

/// Reads a day's special (through the platform's reader pool).
pub async fn get(pool: &sqlx::AnyPool, day: &str) -> Result<Option<Special>, sqlx::Error> {
    let row = sqlx::query("SELECT day, dish, price_cents, hlc, command_id FROM cafe_specials WHERE day = $1")
        .bind(day)
        .fetch_optional(pool)
        .await?;
    row.map(|row| {
        Ok(Special {
            day: row.try_get("day")?,
            dish: row.try_get("dish")?,
            price_cents: row.try_get("price_cents")?,
            hlc: row.try_get::<i64, _>("hlc")? as u64,
            id: row.try_get("command_id")?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_field() {
        assert!(SpecialPayload::parse("2030-06-01", "Lentil soup", 850, 0).is_ok());
        assert_eq!(SpecialPayload::parse("2030-02-30", "Soup", 1, 0).unwrap_err().field, "day");
        assert_eq!(SpecialPayload::parse("2030-06-01", "", 1, 0).unwrap_err().field, "dish");
        assert_eq!(SpecialPayload::parse("2030-06-01", &"x".repeat(61), 1, 0).unwrap_err().field, "dish");
        assert_eq!(SpecialPayload::parse("2030-06-01", "Soup", -1, 0).unwrap_err().field, "price_cents");
        let a = SpecialPayload::parse("2030-06-01", "Soup", 1, 0).unwrap();
        let b = SpecialPayload::parse("2030-06-01", "Soup", 1, 7).unwrap();
        assert_ne!(a.id(), b.id(), "replacing something else is another write");
    }
}
