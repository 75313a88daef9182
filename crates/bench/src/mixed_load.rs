//! The bookstore's load: a fixed set of workers, each with its own client and its own loopback
//! source address (127.0.0.2, 127.0.0.3, ...: the gateway limits requests per client address),
//! sending a mix of requests back to back (closed loop) and counting each kind apart.

use crate::generated_books::{ADJECTIVES, NOUNS};
use crate::tally::Tally;
use anyhow::Context;
use reqwest::StatusCode;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timeout of one request: far above anything a loopback request should take (a write is
/// answered within the node's 2 s budget).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first source address; worker i uses this plus i.
const FIRST_SOURCE_ADDRESS: [u8; 4] = [127, 0, 0, 2];
/// Workers at most: the source addresses stay within 127.0.0.0/24.
pub const WORKERS_MAX: usize = 250;
/// Characters of an error answer kept in the first-error note.
const ERROR_TEXT_CHARS_MAX: usize = 200;
/// Quantities cycle up to this, so a user's cart lines never repeat (see `Shopper::next_line`).
const QUANTITY_MAX: u64 = 99;

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Request {
    /// `GET /bookstore`: the home page (best sellers, top rated, categories, posts).
    Home,
    /// `GET /api/books?q=WORD`: one word of the generated titles.
    Search,
    /// `GET /api/books?q=WORD` for a word no book holds.
    SearchNoMatch,
    /// `GET /bookstore/books/{id}`: the book page (with "also bought").
    BookPage,
    /// `GET /api/bestsellers`.
    Bestsellers,
    /// `POST /api/cart {"book_id","quantity"}`, signed in.
    CartAdd,
    /// `POST /api/orders`, signed in: the cart becomes an order.
    PlaceOrder,
}

impl Request {
    pub fn label(self) -> &'static str {
        match self {
            Request::Home => "GET /bookstore",
            Request::Search => "GET /api/books?q=WORD",
            Request::SearchNoMatch => "GET /api/books?q=NO-MATCH",
            Request::BookPage => "GET /bookstore/books/{id}",
            Request::Bestsellers => "GET /api/bestsellers",
            Request::CartAdd => "POST /api/cart",
            Request::PlaceOrder => "POST /api/orders",
        }
    }

    /// The answer that counts as ok: 200 for reads, 201 (committed) for writes; any other 2xx
    /// (202 pending, 200 duplicate) is counted apart.
    fn ok_status(self) -> StatusCode {
        match self {
            Request::CartAdd | Request::PlaceOrder => StatusCode::CREATED,
            _ => StatusCode::OK,
        }
    }
}

/// The browse mix: each request one of these, equally likely.
pub const BROWSE_MIX: [Request; 4] = [Request::Home, Request::Search, Request::BookPage, Request::Bestsellers];

/// A signed-in user of the checkout mix, who adds one book and checks out, again and again.
pub struct Shopper {
    pub token: String,
    /// Where this user's walk through the catalog starts, and its stride (coprime to the
    /// catalog's size), so the user's cart lines are all different.
    start: u64,
    stride: u64,
}

impl Shopper {
    pub fn new(token: String, index: usize, books: usize) -> Shopper {
        const STRIDES: [u64; 4] = [7_919, 7_927, 7_933, 7_937];
        let books = books as u64;
        let stride = STRIDES
            .into_iter()
            .find(|stride| !books.is_multiple_of(*stride))
            .expect("four primes cannot all divide it");
        Shopper { token, start: (index as u64).wrapping_mul(1_009) % books.max(1), stride }
    }

    /// The `step`th cart line of this user: a book and a quantity such that no two steps give
    /// the same pair. The bookstore names a cart change by (user, book, quantity, the line's HLC
    /// before), and after a checkout the line is gone (HLC 0), so adding the same book in the
    /// same quantity again would be a duplicate of the first add and change nothing.
    fn next_line(&self, step: u64, books: usize) -> (usize, u64) {
        let books = books as u64;
        let book = (self.start + (step % books) * self.stride) % books;
        let quantity = 1 + (step / books) % QUANTITY_MAX;
        (book as usize, quantity)
    }
}

/// What the workers do.
#[derive(Clone)]
pub enum Work {
    /// `BROWSE_MIX`, anonymous.
    Browse { book_ids: Arc<Vec<String>> },
    /// One worker per shopper: `POST /api/cart` then `POST /api/orders`, again and again; the
    /// counters say how many steps each shopper has taken so far (kept across cells).
    Checkout { book_ids: Arc<Vec<String>>, shoppers: Arc<Vec<Shopper>>, steps: Arc<Vec<std::sync::atomic::AtomicU64>> },
    /// One kind of search only.
    Search { matching: bool },
}

/// A cell's answers, by request kind.
#[derive(Default)]
pub struct MixAnswers {
    pub by_request: BTreeMap<Request, Tally>,
    /// Non-2xx answers by status code, all kinds together (transport failures are errors only).
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
}

impl MixAnswers {
    fn merge(&mut self, other: MixAnswers) {
        for (request, tally) in other.by_request {
            self.by_request.entry(request).or_default().merge(tally);
        }
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += count;
        }
    }

    /// Every request of the cell as one tally.
    pub fn all(&self) -> Tally {
        let mut all = Tally::default();
        for tally in self.by_request.values() {
            all.merge(tally.clone());
        }
        all.elapsed = self.elapsed;
        all
    }

    /// One kind's tally, with the cell's time.
    pub fn of(&self, request: Request) -> Option<Tally> {
        let mut tally = self.by_request.get(&request)?.clone();
        tally.elapsed = self.elapsed;
        Some(tally)
    }

    fn record(&mut self, request: Request, status: StatusCode, latency: Duration, body: &[u8]) {
        let tally = self.by_request.entry(request).or_default();
        if status == request.ok_status() {
            tally.record_ok(latency);
        } else if status.is_success() {
            tally.record_other(status.as_u16().to_string(), latency);
        } else {
            *self.statuses.entry(status.as_u16()).or_insert(0) += 1;
            let text: String = String::from_utf8_lossy(body).chars().take(ERROR_TEXT_CHARS_MAX).collect();
            tally.record_error(format!("{} answered {status}: {text}", request.label()));
        }
    }

    fn record_failure(&mut self, request: Request, error: String) {
        self.by_request.entry(request).or_default().record_error(format!("{}: {error}", request.label()));
    }
}

/// One client per worker, each bound to its own source address, so each worker keeps one
/// connection and the gateway's per-address rate limit applies to each worker apart.
pub struct Clients {
    clients: Vec<reqwest::Client>,
}

impl Clients {
    pub fn new(count: usize) -> anyhow::Result<Clients> {
        assert!((1..=WORKERS_MAX).contains(&count), "1 to {WORKERS_MAX} workers, not {count}");
        let clients = (0..count)
            .map(|index| {
                let [a, b, c, d] = FIRST_SOURCE_ADDRESS;
                let address = Ipv4Addr::new(a, b, c, d + index as u8);
                reqwest::Client::builder()
                    .local_address(IpAddr::V4(address))
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .timeout(REQUEST_TIMEOUT)
                    .no_proxy()
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Clients { clients })
    }

    pub fn count(&self) -> usize {
        self.clients.len()
    }

    pub fn first(&self) -> &reqwest::Client {
        &self.clients[0]
    }

    /// The `n`th client, counting round the set again past its end.
    pub fn nth(&self, n: u64) -> &reqwest::Client {
        &self.clients[(n % self.clients.len() as u64) as usize]
    }
}

/// Runs `work` with `workers` workers over all the clients for `duration`, against `base_url`.
pub async fn run(clients: &Clients, workers: usize, base_url: &str, work: &Work, duration: Duration) -> MixAnswers {
    assert!((1..=clients.count()).contains(&workers), "1 to {} workers, not {workers}", clients.count());
    if let Work::Checkout { shoppers, .. } = work {
        assert!(shoppers.len() >= workers, "one shopper per worker: {} for {workers}", shoppers.len());
    }
    let started = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    for index in 0..workers {
        // Worker i takes clients i, i + workers, ... and sends each request on the next of them:
        // with as many workers as clients, one each; with one worker, one request at a time
        // rotating over every source address, so it stays under the per-address rate limit.
        let own: Vec<reqwest::Client> = clients.clients.iter().skip(index).step_by(workers).cloned().collect();
        let base_url = base_url.to_string();
        let work = work.clone();
        handles.push(tokio::spawn(async move {
            let mut answers = MixAnswers::default();
            let mut sent: usize = 0;
            while started.elapsed() < duration {
                let client = &own[sent % own.len()];
                sent += 1;
                match &work {
                    Work::Browse { book_ids } => {
                        let request = BROWSE_MIX[(rand::random::<u32>() as usize) % BROWSE_MIX.len()];
                        let path = match request {
                            Request::Home => "/bookstore".to_string(),
                            Request::Search => format!("/api/books?q={}", matching_word()),
                            Request::BookPage => format!("/bookstore/books/{}", pick(book_ids)),
                            _ => "/api/bestsellers".to_string(),
                        };
                        get(client, &base_url, &path, request, &mut answers).await;
                    }
                    Work::Search { matching } => {
                        let (request, word) = if *matching {
                            (Request::Search, matching_word().to_string())
                        } else {
                            (Request::SearchNoMatch, word_matching_nothing())
                        };
                        get(client, &base_url, &format!("/api/books?q={word}"), request, &mut answers).await;
                    }
                    Work::Checkout { book_ids, shoppers, steps } => {
                        let shopper = &shoppers[index];
                        let step = steps[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (book, quantity) = shopper.next_line(step, book_ids.len());
                        let body = json!({ "book_id": book_ids[book], "quantity": quantity });
                        let added = post(
                            client,
                            &base_url,
                            "/api/cart",
                            &shopper.token,
                            Some(body),
                            Request::CartAdd,
                            &mut answers,
                        )
                        .await;
                        if added {
                            post(
                                client,
                                &base_url,
                                "/api/orders",
                                &shopper.token,
                                None,
                                Request::PlaceOrder,
                                &mut answers,
                            )
                            .await;
                        }
                    }
                }
            }
            answers
        }));
    }
    let mut all = MixAnswers::default();
    for handle in handles {
        match handle.await {
            Ok(answers) => all.merge(answers),
            Err(error) => all.record_failure(Request::Home, format!("worker panicked: {error}")),
        }
    }
    all.elapsed = started.elapsed();
    all
}

fn pick(ids: &[String]) -> &str {
    &ids[(rand::random::<u64>() % ids.len() as u64) as usize]
}

/// A title word of the generated catalog (the seed's titles hold some of them too).
fn matching_word() -> &'static str {
    let index = (rand::random::<u32>() as usize) % (ADJECTIVES.len() + NOUNS.len());
    if index < ADJECTIVES.len() {
        ADJECTIVES[index]
    } else {
        NOUNS[index - ADJECTIVES.len()]
    }
}

/// Six letters starting "qx", which no title, author or category holds.
fn word_matching_nothing() -> String {
    let letters: String = (0..4).map(|_| char::from(b'a' + (rand::random::<u8>() % 26))).collect();
    format!("qx{letters}")
}

async fn get(client: &reqwest::Client, base_url: &str, path: &str, request: Request, answers: &mut MixAnswers) {
    let sent = Instant::now();
    match client.get(format!("{base_url}{path}")).send().await {
        Ok(response) => {
            let status = response.status();
            // Read to the end, so the connection is free for the next request.
            match response.bytes().await {
                Ok(body) => answers.record(request, status, sent.elapsed(), &body),
                Err(error) => answers.record_failure(request, format!("reading a {status} answer: {error}")),
            }
        }
        Err(error) => answers.record_failure(request, format!("request failed: {error}")),
    }
}

/// Posts and records the answer; true when it was the ok answer (or another 2xx).
async fn post(
    client: &reqwest::Client,
    base_url: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
    request: Request,
    answers: &mut MixAnswers,
) -> bool {
    let mut builder = client.post(format!("{base_url}{path}")).bearer_auth(token);
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let sent = Instant::now();
    match builder.send().await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(bytes) => {
                    answers.record(request, status, sent.elapsed(), &bytes);
                    status.is_success()
                }
                Err(error) => {
                    answers.record_failure(request, format!("reading a {status} answer: {error}"));
                    false
                }
            }
        }
        Err(error) => {
            answers.record_failure(request, format!("request failed: {error}"));
            false
        }
    }
}

/// Signs up `count` users through `base_url` (emails from `tag`) and signs each in, one at a
/// time: their tokens. Not timed. One at a time because the node hashes passwords (argon2) on
/// its request threads: many at once starve its health checks, and the gateway then takes the
/// node for down and fails the requests in flight on it (502).
pub async fn sign_up_shoppers(
    client: &reqwest::Client,
    base_url: &str,
    tag: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    /// Attempts of a sign-up or sign-in, a moment apart: a sign-up may be queued (202) and not
    /// applied yet, or fail in the gateway (502) after it was applied.
    const ATTEMPTS_MAX: usize = 50;
    const RETRY_PAUSE: Duration = Duration::from_millis(100);
    let password = "correct horse battery staple";
    let mut tokens = Vec::with_capacity(count);
    for index in 0..count {
        let email = format!("bench-{tag}-{index}@example.com");
        let credentials = json!({ "email": email, "password": password });
        let mut signed_up = false;
        let mut last = String::new();
        for _ in 0..ATTEMPTS_MAX {
            let response = client.post(format!("{base_url}/api/auth/signup")).json(&credentials).send().await?;
            let status = response.status();
            // 409: an earlier attempt that failed on the way back was applied.
            if status.is_success() || status == StatusCode::CONFLICT {
                signed_up = true;
                break;
            }
            last = format!("{status}: {}", response.text().await.unwrap_or_default());
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        anyhow::ensure!(signed_up, "signing up {email}: no success in {ATTEMPTS_MAX} attempts; last {last}");
        let mut token = None;
        for _ in 0..ATTEMPTS_MAX {
            let response = client.post(format!("{base_url}/api/auth/signin")).json(&credentials).send().await?;
            if response.status() == StatusCode::OK {
                let body: serde_json::Value = response.json().await?;
                token = Some(
                    body["token"]
                        .as_str()
                        .map(str::to_string)
                        .with_context(|| format!("signing in {email}: no token in {body}"))?,
                );
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        tokens.push(token.with_context(|| format!("signing in {email}: no 200 in {ATTEMPTS_MAX} attempts"))?);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shoppers_cart_lines_never_repeat() {
        for books in [269, 7_919, 100_000] {
            let shopper = Shopper::new(String::new(), 3, books);
            let lines: std::collections::HashSet<(usize, u64)> =
                (0..(books as u64 * 2)).map(|step| shopper.next_line(step, books)).collect();
            assert_eq!(lines.len(), books * 2, "{books} books");
            assert!(lines.iter().all(|(book, quantity)| *book < books && (1..=QUANTITY_MAX).contains(quantity)));
        }
    }
}
