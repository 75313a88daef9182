//! GET load over a fixed set of kept-alive connections, the same for every target: one worker per
//! connection (its own reqwest client, one connection each), either back to back (closed loop,
//! full speed) or each on its own fixed schedule (open loop, a fixed rate in all).

use crate::tally::Tally;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Timeout of one request: far above anything a loopback GET should take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A paced send this far behind its schedule is counted as late: beyond the timer's 1 ms
/// resolution, it means the connection was still waiting for its previous answer (or the load
/// generator was short of CPU), so the offered rate slipped.
pub const LATE_SEND: Duration = Duration::from_millis(5);

/// How the workers send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Each worker sends its next request as soon as the previous answer is read.
    FullSpeed,
    /// Requests are due at a fixed rate in all, spread evenly over the connections: request k is
    /// due at k / rate and goes on connection k mod N. A worker still busy when its next request
    /// is due sends it late rather than opening another connection.
    RatePerSecond(u32),
}

/// One client per worker, so each worker keeps exactly one connection (warmed up before a cell).
pub struct Connections {
    clients: Vec<reqwest::Client>,
}

impl Connections {
    pub fn new(count: usize) -> anyhow::Result<Connections> {
        assert!(count > 0, "a load needs at least one connection");
        let clients = (0..count)
            .map(|_| {
                reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).timeout(REQUEST_TIMEOUT).build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Connections { clients })
    }

    pub fn count(&self) -> usize {
        self.clients.len()
    }
}

/// What one cell saw: 200s as ok (other 2xx as other), latency from send to the body's end.
#[derive(Default)]
pub struct CellAnswers {
    pub tally: Tally,
    /// Non-2xx answers by status code (transport failures are in `tally.errors` only).
    pub statuses: BTreeMap<u16, u64>,
    /// Requests sent: answered or failed.
    pub requests: u64,
    /// Paced sends more than `LATE_SEND` behind their schedule (always 0 at full speed).
    pub late_sends: u64,
}

impl CellAnswers {
    /// Adds another run of the same cell: counts, latencies, and its time (`tally.elapsed` is
    /// the sum of the runs', so rates are per second of load).
    pub fn merge(&mut self, other: CellAnswers) {
        self.tally.elapsed += other.tally.elapsed;
        self.tally.merge(other.tally);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += count;
        }
        self.requests += other.requests;
        self.late_sends += other.late_sends;
    }
}

/// Runs `GET url` on every connection for `duration` at `pace`.
pub async fn run(connections: &Connections, url: &str, pace: Pace, duration: Duration) -> CellAnswers {
    let started = Instant::now();
    let count = connections.count();
    let mut workers = Vec::with_capacity(count);
    for (index, client) in connections.clients.iter().enumerate() {
        let client = client.clone();
        let url = url.to_string();
        workers.push(tokio::spawn(async move {
            let mut answers =
                CellAnswers { tally: Tally::default(), statuses: BTreeMap::new(), requests: 0, late_sends: 0 };
            loop {
                match pace {
                    Pace::FullSpeed => {
                        if started.elapsed() >= duration {
                            break;
                        }
                    }
                    Pace::RatePerSecond(rate) => {
                        let sequence = answers.requests * count as u64 + index as u64;
                        let due = started + Duration::from_secs_f64(sequence as f64 / f64::from(rate));
                        if due - started >= duration {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        if due.elapsed() > LATE_SEND {
                            answers.late_sends += 1;
                        }
                    }
                }
                answers.requests += 1;
                let sent = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status();
                        // Read to the end, so the connection is free for the next request.
                        let body = response.bytes().await;
                        let latency = sent.elapsed();
                        match body {
                            Err(error) => answers.tally.record_error(format!("reading a {status} answer: {error}")),
                            Ok(_) if status == reqwest::StatusCode::OK => answers.tally.record_ok(latency),
                            Ok(_) if status.is_success() => {
                                answers.tally.record_other(status.as_u16().to_string(), latency)
                            }
                            Ok(body) => {
                                *answers.statuses.entry(status.as_u16()).or_insert(0) += 1;
                                let text = String::from_utf8_lossy(&body).chars().take(200).collect::<String>();
                                answers.tally.record_error(format!("HTTP {status}: {text}"));
                            }
                        }
                    }
                    Err(error) => answers.tally.record_error(format!("request failed: {error}")),
                }
            }
            answers
        }));
    }
    let mut all = CellAnswers::default();
    for worker in workers {
        match worker.await {
            // Workers' tallies have no elapsed time of their own: the cell's is set below.
            Ok(answers) => all.merge(answers),
            Err(error) => all.tally.record_error(format!("worker panicked: {error}")),
        }
    }
    all.tally.elapsed = started.elapsed();
    all
}
