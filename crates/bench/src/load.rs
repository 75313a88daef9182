//! The HTTP load generator: N workers, each posting distinct reservations back to back, for a
//! fixed time or until a fixed count is reached.

use crate::tally::Tally;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, Time};

/// Distinct time slots the reservations are spread over (about 278 days of minutes), so no slot
/// fills up and the seat check reads a handful of rows, as it would in a real cafe.
pub const SLOTS: u64 = 400_000;

/// When a cell stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    After(Duration),
    /// After this many requests in all (the last ones in flight finish).
    Count(u64),
}

/// Makes reservation bodies that are all different, so none is answered as a duplicate.
pub struct Reservations {
    sequence: AtomicU64,
    /// Random per run, so a second run against a kept store would not collide either.
    run_tag: String,
    first_slot: PrimitiveDateTime,
}

impl Reservations {
    pub fn new() -> Reservations {
        let today = OffsetDateTime::now_utc().date();
        let first_day = today.next_day().and_then(|day| day.next_day()).expect("the calendar goes on");
        let run_tag: u32 = rand::random();
        Reservations {
            sequence: AtomicU64::new(0),
            run_tag: format!("{:06x}", run_tag & 0xff_ffff),
            first_slot: PrimitiveDateTime::new(first_day, Time::MIDNIGHT),
        }
    }

    /// The next body: `{"name","party_size","time","notes"}`, unique name and notes.
    pub fn next_body(&self) -> Value {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let slot = self.first_slot + time::Duration::minutes((sequence % SLOTS) as i64);
        let slot = slot.format(format_description!("[year]-[month]-[day]T[hour]:[minute]")).expect("a slot formats");
        json!({
            "name": format!("bench {} {sequence}", self.run_tag),
            "party_size": 1 + sequence % 4,
            "time": slot,
            "notes": format!("load generator request {sequence}, table by the window if free"),
        })
    }
}

/// Runs `concurrency` workers posting to `url`; a `expected` answer counts as ok, another 2xx as
/// "other", anything else (non-2xx, transport failure) as an error.
pub async fn run(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    stop: Stop,
    expected: StatusCode,
    reservations: &Arc<Reservations>,
) -> Tally {
    assert!(concurrency > 0, "a cell needs at least one worker");
    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        let issued = Arc::clone(&issued);
        let reservations = Arc::clone(reservations);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let more = match stop {
                    Stop::After(duration) => started.elapsed() < duration,
                    Stop::Count(count) => issued.fetch_add(1, Ordering::Relaxed) < count,
                };
                if !more {
                    break;
                }
                let body = reservations.next_body();
                let sent = Instant::now();
                match client.post(&url).json(&body).send().await {
                    Ok(response) => {
                        let status = response.status();
                        // Read the body to the end so the connection goes back to the pool.
                        let text = response.text().await.unwrap_or_default();
                        let latency = sent.elapsed();
                        if status == expected {
                            tally.record_ok(latency);
                        } else if status.is_success() {
                            tally.record_other(status.as_u16().to_string(), latency);
                        } else {
                            tally
                                .record_error(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()));
                        }
                    }
                    Err(error) => tally.record_error(format!("request failed: {error}")),
                }
            }
            tally
        }));
    }
    crate::tally::gather(workers, started).await
}
