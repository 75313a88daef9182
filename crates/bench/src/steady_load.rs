//! Steady load through a gateway for the deploy and scale scenarios: requests started at a fixed
//! rate (`open_loop`) over the bookstore's clients, each answer kept with when it was sent, so a
//! run can be cut into windows afterwards; and a closed loop to find what one node serves.

use crate::load::Reservations;
use crate::mixed_load::Clients;
use crate::open_loop::{self, Offered, OpenLoopPlan};
use crate::tally::Tally;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Characters of an error answer kept for the notes.
const ERROR_TEXT_CHARS_MAX: usize = 200;

/// What each request of a load is.
#[derive(Clone, Copy, Debug)]
pub enum Mix {
    /// `reads_per_write` reads of `GET /api/books?limit=20`, then one `POST
    /// /api/cafe/reservations` (a new booking each time), again and again.
    ReadsAndBookings { reads_per_write: u64 },
    /// Only `GET /api/books?q=e&limit=100`: a scan of the catalog, the CPU-heavy read.
    Search,
}

/// The CPU-heavy read of `Mix::Search`.
pub const SEARCH_PATH: &str = "/api/books?q=e&limit=100";
/// The read of `Mix::ReadsAndBookings`.
pub const READ_PATH: &str = "/api/books?limit=20";
/// The write of `Mix::ReadsAndBookings`.
pub const BOOKING_PATH: &str = "/api/cafe/reservations";

/// One request's fate: when it was sent (since the load began), how long it took, whether it failed.
#[derive(Clone, Debug)]
pub struct Sample {
    pub sent_at: Duration,
    pub latency: Duration,
    /// None for a 2xx; otherwise the status and the start of the body, or the transport error.
    pub failure: Option<String>,
}

/// A whole open-loop run.
pub struct SteadyRun {
    pub offered: Offered,
    pub samples: Vec<Sample>,
}

/// Requests, failures and latency of the requests sent within a window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub requests: u64,
    pub failed: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub first_failure: Option<String>,
}

impl SteadyRun {
    /// The requests sent in `from..to` (since the load began).
    /// Latencies are of every request, failed ones too (a failure after a long wait is slow).
    pub fn window(&self, from: Duration, to: Duration) -> Window {
        let mut tally = Tally::default();
        let mut window = Window::default();
        for sample in self.samples.iter().filter(|sample| sample.sent_at >= from && sample.sent_at < to) {
            window.requests += 1;
            match &sample.failure {
                None => tally.record_ok(sample.latency),
                Some(failure) => {
                    window.failed += 1;
                    window.first_failure.get_or_insert_with(|| failure.clone());
                    tally.record_other("failed".to_string(), sample.latency);
                }
            }
        }
        window.p50_ms = tally.latency_percentile_ms(50.0);
        window.p99_ms = tally.latency_percentile_ms(99.0);
        window.max_ms = tally.latency_percentile_ms(100.0);
        window
    }

    /// Every request of the run.
    pub fn whole(&self) -> Window {
        self.window(Duration::ZERO, Duration::MAX)
    }
}

/// Runs `mix` through `base_url` at `plan`'s rate, each request on the next of `clients`.
pub async fn run(clients: &Clients, base_url: &str, mix: Mix, plan: OpenLoopPlan) -> SteadyRun {
    let reservations = Arc::new(Reservations::new());
    let started = Instant::now();
    let (offered, samples) = open_loop::run(plan, |n| {
        let client = clients.nth(n).clone();
        let base_url = base_url.to_string();
        let reservations = Arc::clone(&reservations);
        async move {
            let sent_at = started.elapsed();
            let sent = Instant::now();
            let request = match mix {
                Mix::ReadsAndBookings { reads_per_write } if n % (reads_per_write + 1) == reads_per_write => {
                    client.post(format!("{base_url}{BOOKING_PATH}")).json(&reservations.next_body())
                }
                Mix::ReadsAndBookings { .. } => client.get(format!("{base_url}{READ_PATH}")),
                Mix::Search => client.get(format!("{base_url}{SEARCH_PATH}")),
            };
            let failure = answer_failure(request.send().await).await;
            Sample { sent_at, latency: sent.elapsed(), failure }
        }
    })
    .await;
    SteadyRun { offered, samples }
}

/// `workers` clients each sending `GET path` back to back for `duration`: what the target serves
/// flat out.
pub async fn closed_loop(clients: &Clients, workers: usize, base_url: &str, path: &str, duration: Duration) -> Tally {
    assert!((1..=clients.count()).contains(&workers), "1 to {} workers, not {workers}", clients.count());
    let started = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    for worker in 0..workers {
        let client = clients.nth(worker as u64).clone();
        let url = format!("{base_url}{path}");
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < duration {
                let sent = Instant::now();
                match answer_failure(client.get(&url).send().await).await {
                    None => tally.record_ok(sent.elapsed()),
                    Some(failure) => tally.record_error(failure),
                }
            }
            tally
        }));
    }
    crate::tally::gather(handles, started).await
}

/// None for a 2xx read to its end; the reason otherwise.
async fn answer_failure(sent: reqwest::Result<reqwest::Response>) -> Option<String> {
    match sent {
        Ok(response) => {
            let status = response.status();
            // Read the body to the end so the connection goes back to the pool.
            let body = response.text().await;
            match body {
                Ok(_) if status.is_success() => None,
                Ok(text) => {
                    Some(format!("HTTP {status}: {}", text.chars().take(ERROR_TEXT_CHARS_MAX).collect::<String>()))
                }
                Err(error) => Some(format!("reading the answer: {error}")),
            }
        }
        Err(error) => Some(format!("request failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_at_ms: u64, latency_ms: u64, failed: bool) -> Sample {
        Sample {
            sent_at: Duration::from_millis(sent_at_ms),
            latency: Duration::from_millis(latency_ms),
            failure: failed.then(|| "HTTP 503".to_string()),
        }
    }

    #[test]
    fn a_window_counts_what_was_sent_in_it_and_the_latency_of_failed_requests_too() {
        let run = SteadyRun {
            offered: Offered::default(),
            samples: vec![
                sample(100, 1, false),
                sample(900, 3, false),
                sample(1_100, 50, true),
                sample(2_500, 2, false),
            ],
        };
        let first_second = run.window(Duration::ZERO, Duration::from_secs(1));
        assert_eq!((first_second.requests, first_second.failed), (2, 0));
        assert_eq!(first_second.max_ms, Some(3.0));
        let second = run.window(Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!((second.requests, second.failed), (1, 1));
        assert_eq!(second.max_ms, Some(50.0), "a slow failure is the window's slowest request");
        assert_eq!(second.first_failure.as_deref(), Some("HTTP 503"));
        assert_eq!(run.whole().requests, 4);
    }
}
