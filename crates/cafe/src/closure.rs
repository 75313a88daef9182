//! Closing the cafe on a day (`cafe.set_closure`): one decision for the whole cafe, so the kind is
//! `global`: the region acting for the primary applies it and every other region forwards (or
//! queues it for the primary while the primary cannot be reached). A reservation for a closed day
//! is rejected by the region that applies it, as far as that region has heard of the closure.

use crate::domain::FieldError;
use futures::future::BoxFuture;
use rananeeti_platform::sqlx::{self, AnyConnection, Row};
use rananeeti_platform::{ApplyError, Command, CommandHandler, CommandId, Migration, WritePattern};
use time::macros::format_description;

pub const KIND_SET_CLOSURE: &str = "cafe.set_closure";
pub const REASON_CHARS_MAX: usize = 120;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClosurePayload {
    pub day: String,
    pub closed: bool,
    pub reason: String,
    /// The HLC of the closure this write replaces, as its writer saw it (0: none), so closing,
    /// reopening and closing a day again are three writes, not one deduplicated twice.
    pub replaces_hlc: u64,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field, message: message.into() }
}

impl ClosurePayload {
    pub fn parse(day: &str, closed: bool, reason: &str, replaces_hlc: u64) -> Result<ClosurePayload, FieldError> {
        let format = format_description!("[year]-[month]-[day]");
        let day = time::Date::parse(day.trim(), &format)
            .map_err(|_| field_error("day", "a real date as YYYY-MM-DD"))?
            .format(&format)
            .expect("a parsed date formats");
        let reason = reason.trim();
        let chars = reason.chars().count();
        if chars > REASON_CHARS_MAX {
            return Err(field_error("reason", format!("at most {REASON_CHARS_MAX} characters (this one has {chars})")));
        }
        if reason.chars().any(char::is_control) {
            return Err(field_error("reason", "a reason cannot contain control characters"));
        }
        if closed && chars == 0 {
            return Err(field_error("reason", "say why the cafe is closed; guests see it"));
        }
        Ok(ClosurePayload { day, closed, reason: reason.to_string(), replaces_hlc })
    }

    pub fn id(&self) -> CommandId {
        let canonical = format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", self.day, self.closed, self.reason, self.replaces_hlc);
        CommandId::digest(KIND_SET_CLOSURE, canonical.as_bytes())
    }
}

pub struct SetClosureHandler;

impl CommandHandler for SetClosureHandler {
    fn kind(&self) -> &'static str {
        KIND_SET_CLOSURE
    }

    /// One owner applies closures: no two regions decide them concurrently.
    fn write_pattern(&self) -> WritePattern {
        WritePattern::Global
    }

    fn apply<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move { Ok(store_if_later(command, connection).await?) })
    }

    fn apply_replicated<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(store_if_later(command, connection))
    }
}

/// Keeps the later write by (HLC, id). One owner at a time orders them, but a write applied by
/// an old owner can arrive after its successor's: the comparison keeps every region alike.
fn store_if_later<'a>(
    command: &'a Command,
    connection: &'a mut AnyConnection,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let payload: ClosurePayload =
            serde_json::from_value(command.payload.clone()).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        sqlx::query(
            "INSERT INTO cafe_closures (day, closed, reason, hlc, command_id) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (day) DO UPDATE SET closed = excluded.closed, reason = excluded.reason, \
             hlc = excluded.hlc, command_id = excluded.command_id \
             WHERE excluded.hlc > cafe_closures.hlc \
                OR (excluded.hlc = cafe_closures.hlc AND excluded.command_id > cafe_closures.command_id)",
        )
        .bind(&payload.day)
        .bind(payload.closed as i64)
        .bind(&payload.reason)
        .bind(command.hlc.0 as i64)
        .bind(command.id.to_hex())
        .execute(&mut *connection)
        .await?;
        Ok(())
    })
}

const CLOSURES_SQL: &str = "CREATE TABLE cafe_closures (
        day TEXT PRIMARY KEY,
        closed BIGINT NOT NULL,
        reason TEXT NOT NULL,
        hlc BIGINT NOT NULL,
        command_id TEXT NOT NULL
    )";

pub const MIGRATIONS: &[Migration] =
    &[Migration { component: "cafe", version: 4, sqlite: CLOSURES_SQL, postgres: CLOSURES_SQL }];

/// A day's closure as stored (also a reopened day: `closed` false).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Closure {
    pub day: String,
    pub closed: bool,
    pub reason: String,
    pub hlc: u64,
    pub id: String,
}

pub async fn get(pool: &sqlx::AnyPool, day: &str) -> Result<Option<Closure>, sqlx::Error> {
    let row = sqlx::query("SELECT day, closed, reason, hlc, command_id FROM cafe_closures WHERE day = $1")
        .bind(day)
        .fetch_optional(pool)
        .await?;
    row.map(|row| {
        Ok(Closure {
            day: row.try_get("day")?,
            closed: row.try_get::<i64, _>("closed")? != 0,
            reason: row.try_get("reason")?,
            hlc: row.try_get::<i64, _>("hlc")? as u64,
            id: row.try_get("command_id")?,
        })
    })
    .transpose()
}

/// Why a day is closed, when it is (read inside an apply's transaction).
pub fn closed_because<'a>(
    connection: &'a mut AnyConnection,
    day: &'a str,
) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
    Box::pin(async move {
        let row = sqlx::query("SELECT reason FROM cafe_closures WHERE day = $1 AND closed = 1")
            .bind(day)
            .fetch_optional(&mut *connection)
            .await?;
        row.map(|row| row.try_get("reason")).transpose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_field() {
        assert!(ClosurePayload::parse("2030-06-01", true, "Private event", 0).is_ok());
        assert!(ClosurePayload::parse("2030-06-01", false, "", 0).is_ok(), "reopening needs no reason");
        assert_eq!(ClosurePayload::parse("2030-13-01", true, "x", 0).unwrap_err().field, "day");
        assert_eq!(ClosurePayload::parse("2030-06-01", true, " ", 0).unwrap_err().field, "reason");
        assert_eq!(ClosurePayload::parse("2030-06-01", true, &"x".repeat(121), 0).unwrap_err().field, "reason");
        let close = ClosurePayload::parse("2030-06-01", true, "Event", 0).unwrap();
        let close_again = ClosurePayload::parse("2030-06-01", true, "Event", 5).unwrap();
        assert_ne!(close.id(), close_again.id(), "closing again after a reopening is another write");
    }
}
