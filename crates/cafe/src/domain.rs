//! Reservation input parsed into domain types at the edge: each field checked once, with a
//! message a person can act on.

use rananeeti_platform::CommandId;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

pub const KIND_RESERVE: &str = "cafe.reserve";
pub const NAME_CHARS_MAX: usize = 40;
pub const PARTY_SIZE_MAX: i64 = 20;
pub const NOTES_CHARS_MAX: usize = 200;

/// A field that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field, message: message.into() }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Name, FieldError> {
        let name = raw.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err(field_error("name", "enter the name the table is booked under"));
        }
        if chars > NAME_CHARS_MAX {
            return Err(field_error("name", format!("at most {NAME_CHARS_MAX} characters (this one has {chars})")));
        }
        if name.chars().any(char::is_control) {
            return Err(field_error("name", "a name cannot contain control characters"));
        }
        Ok(Name(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartySize(i64);

impl PartySize {
    pub fn parse(raw: i64) -> Result<PartySize, FieldError> {
        if !(1..=PARTY_SIZE_MAX).contains(&raw) {
            return Err(field_error("party_size", format!("a party is 1 to {PARTY_SIZE_MAX} people")));
        }
        Ok(PartySize(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A table's date and time, to the minute, as `YYYY-MM-DDTHH:MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTime(PrimitiveDateTime);

impl SlotTime {
    /// `now` is the edge's clock; apply never reads one.
    pub fn parse(raw: &str, now: OffsetDateTime) -> Result<SlotTime, FieldError> {
        let format = format_description!("[year]-[month]-[day]T[hour]:[minute]");
        let time = PrimitiveDateTime::parse(raw.trim(), &format).map_err(|_| {
            field_error("time", "a real date and time as YYYY-MM-DDTHH:MM, for example 2030-06-01T19:30")
        })?;
        let now = PrimitiveDateTime::new(now.date(), now.time());
        if time < now.replace_second(0).unwrap_or(now).replace_nanosecond(0).unwrap_or(now) {
            return Err(field_error("time", "that time has passed; choose a time from now on"));
        }
        if time.year() > now.year() + 2 {
            return Err(field_error("time", "bookings open at most two years ahead"));
        }
        Ok(SlotTime(time))
    }

    pub fn as_string(&self) -> String {
        let format = format_description!("[year]-[month]-[day]T[hour]:[minute]");
        self.0.format(&format).expect("a parsed time formats")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notes(String);

impl Notes {
    pub fn parse(raw: Option<&str>) -> Result<Notes, FieldError> {
        let notes = raw.unwrap_or("").trim();
        let chars = notes.chars().count();
        if chars > NOTES_CHARS_MAX {
            return Err(field_error("notes", format!("at most {NOTES_CHARS_MAX} characters (these have {chars})")));
        }
        if notes.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
            return Err(field_error("notes", "notes cannot contain control characters"));
        }
        Ok(Notes(notes.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid request for a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRequest {
    pub name: Name,
    pub party_size: PartySize,
    pub time: SlotTime,
    pub notes: Notes,
}

/// The payload stored with the command and in the queue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReservationPayload {
    pub name: String,
    pub party_size: i64,
    pub time: String,
    pub notes: String,
}

impl ReservationRequest {
    /// Checks every field; the first failure in form order is reported.
    pub fn parse(
        name: &str,
        party_size: i64,
        time: &str,
        notes: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ReservationRequest, FieldError> {
        Ok(ReservationRequest {
            name: Name::parse(name)?,
            party_size: PartySize::parse(party_size)?,
            time: SlotTime::parse(time, now)?,
            notes: Notes::parse(notes)?,
        })
    }

    pub fn payload(&self) -> ReservationPayload {
        ReservationPayload {
            name: self.name.as_str().to_string(),
            party_size: self.party_size.get(),
            time: self.time.as_string(),
            notes: self.notes.as_str().to_string(),
        }
    }

    /// The same content gives the same id: that is what makes a second submit a duplicate.
    pub fn id(&self) -> CommandId {
        let payload = self.payload();
        let canonical =
            format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", payload.name, payload.party_size, payload.time, payload.notes);
        CommandId::digest(KIND_RESERVE, canonical.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 17:00 UTC);

    #[test]
    fn accepts_a_good_request_and_gives_a_stable_id() {
        let a = ReservationRequest::parse(" Ann ", 2, "2027-01-01T19:30", Some("window"), NOW).unwrap();
        let b = ReservationRequest::parse("Ann", 2, "2027-01-01T19:30", Some("window "), NOW).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.payload().name, "Ann");
        let c = ReservationRequest::parse("Ann", 3, "2027-01-01T19:30", Some("window"), NOW).unwrap();
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn names_the_field_that_failed() {
        let field = |result: Result<ReservationRequest, FieldError>| result.unwrap_err().field;
        assert_eq!(field(ReservationRequest::parse("", 2, "2027-01-01T19:30", None, NOW)), "name");
        assert_eq!(field(ReservationRequest::parse(&"x".repeat(41), 2, "2027-01-01T19:30", None, NOW)), "name");
        assert!(ReservationRequest::parse(&"é".repeat(40), 2, "2027-01-01T19:30", None, NOW).is_ok());
        assert_eq!(field(ReservationRequest::parse("Ann", 0, "2027-01-01T19:30", None, NOW)), "party_size");
        assert_eq!(field(ReservationRequest::parse("Ann", 21, "2027-01-01T19:30", None, NOW)), "party_size");
        assert_eq!(field(ReservationRequest::parse("Ann", 2, "2027-02-30T19:30", None, NOW)), "time");
        assert_eq!(field(ReservationRequest::parse("Ann", 2, "2027-01-01 19:30", None, NOW)), "time");
        assert_eq!(field(ReservationRequest::parse("Ann", 2, "2026-11-23T16:59", None, NOW)), "time");
        assert_eq!(
            field(ReservationRequest::parse("Ann", 2, "2027-01-01T19:30", Some(&"n".repeat(201)), NOW)),
            "notes"
        );
        assert!(ReservationRequest::parse("Ann", 20, "2026-11-23T17:00", Some(&"n".repeat(200)), NOW).is_ok());
        assert_eq!(field(ReservationRequest::parse("Ann", 2, "2027-01-01T19:30", Some("a\u{0}b"), NOW)), "notes");
        assert!(ReservationRequest::parse("Ann", 2, "2027-01-01T19:30", Some("line\nnext"), NOW).is_ok());
    }
}
