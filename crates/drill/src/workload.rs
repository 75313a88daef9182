//! The workload: an open-loop mix of cafe reservations, bookstore sign-ups, carts and checkouts,
//! and reads, sent through the gateways at a fixed rate. Every request is recorded (when it
//! started, how long it took, how it was answered) and every acknowledged write kept for the
//! checker.

use crate::DrillError;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Longest a request may go unanswered before it counts as a timeout (the write budget is 2 s;
/// this is what a patient client would wait).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight at most; past it a tick is not sent and counted as shed by the client.
const IN_FLIGHT_MAX: usize = 512;
/// A gateway that refused a connection is skipped this long (clients with two addresses do so).
const GATEWAY_DOWN_FOR: Duration = Duration::from_secs(1);
/// Recent reservation ids kept to read back.
const RECENT_RESERVATIONS_MAX: usize = 256;
/// Books the shoppers choose from: the ones with the most stock. A shopper buys each at most once
/// per run, so an order line with two copies was added twice.
const BOOKS_MAX: usize = 100;
/// A book with less stock than this is not chosen (it would be sold out within the run).
const BOOK_STOCK_MIN: i64 = 10;
/// Pages of the catalog read to choose the books.
const CATALOG_PAGES_MAX: usize = 100;
/// How long setup may take to sign the shoppers up and in.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Checkouts that found the cart empty before a shopper gives up on the round.
const EMPTY_CART_ATTEMPTS_MAX: u32 = 3;
/// The password of every account the drill creates.
const SHOPPER_PASSWORD: &str = "drill-shopper-password";

/// What one request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Reserve,
    CartAdd,
    CartRemove,
    Checkout,
    Signup,
    ReadCart,
    ReadReservation,
    ReadBooks,
    ReadBestsellers,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Reserve => "reserve",
            Op::CartAdd => "cart_add",
            Op::CartRemove => "cart_remove",
            Op::Checkout => "checkout",
            Op::Signup => "signup",
            Op::ReadCart => "read_cart",
            Op::ReadReservation => "read_reservation",
            Op::ReadBooks => "read_books",
            Op::ReadBestsellers => "read_bestsellers",
        }
    }

    pub(crate) fn is_write(self) -> bool {
        matches!(self, Op::Reserve | Op::CartAdd | Op::CartRemove | Op::Checkout | Op::Signup)
    }
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Status(u16),
    Timeout,
    /// No connection to any gateway, or the connection broke before an answer.
    Connection,
}

impl Answer {
    /// Answered, by the application: not a server error, not shed (429), not a timeout.
    pub(crate) fn succeeded(self) -> bool {
        matches!(self, Answer::Status(status) if status < 500 && status != 408 && status != 429)
    }

    pub(crate) fn label(self) -> String {
        match self {
            Answer::Status(status) => status.to_string(),
            Answer::Timeout => "timeout".into(),
            Answer::Connection => "connection".into(),
        }
    }
}

/// One request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// When it was sent, since the load started.
    pub(crate) start_ms: u32,
    pub(crate) latency_ms: u32,
    pub(crate) op: Op,
    pub(crate) answer: Answer,
}

impl Sample {
    pub(crate) fn end_ms(&self) -> u32 {
        self.start_ms + self.latency_ms
    }
}

/// What an acknowledged write must have done, for the checker.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    Reservation,
    /// Found by email: a replayed answer (`Idempotency-Key`) carries no `user_id`.
    Signup {
        email: String,
    },
    /// A cart line set (added or removed): its command record is what stays.
    CartLine,
    Checkout,
}

/// A write answered *committed*, *pending* or *duplicate* (the first one was acknowledged).
#[derive(Clone, Debug)]
pub(crate) struct Ack {
    pub(crate) id: String,
    pub(crate) kind: &'static str,
    /// When the answer arrived.
    pub(crate) at: Instant,
    pub(crate) answered: String,
    pub(crate) effect: Effect,
}

/// What a shopper does next.
enum Stage {
    /// Add the round's book to the cart.
    Add,
    CheckOut,
    /// A checkout was refused (a book sold out): list the cart, then remove each line, as a
    /// person would before trying again.
    Clear {
        listed: bool,
        remove: Vec<String>,
    },
}

/// A user of the bookstore the drill signed up and in.
struct Shopper {
    user_id: String,
    token: String,
    /// Where in the books this shopper starts; round `r` adds book `offset + r`.
    offset: usize,
    round: usize,
    stage: Stage,
    empty_checkouts: u32,
}

/// What the workload recorded.
pub(crate) struct Recorded {
    pub(crate) samples: Vec<Sample>,
    pub(crate) acks: Vec<Ack>,
    pub(crate) shed_by_client: u64,
    /// Every slot a reservation was sent for, and the user ids of the shoppers.
    pub(crate) slots: Vec<String>,
    pub(crate) shopper_ids: Vec<String>,
}

/// Everything the requests share.
struct Shared {
    tag: String,
    origin: Instant,
    client: reqwest::Client,
    gateways: Vec<String>,
    gateway_down_until: Vec<Mutex<Option<Instant>>>,
    next_gateway: AtomicUsize,
    books: Vec<String>,
    shoppers: Vec<tokio::sync::Mutex<Shopper>>,
    /// The first minute reservations are booked at; each reservation takes the next minute.
    slot_base: time::PrimitiveDateTime,
    samples: Mutex<Vec<Sample>>,
    acks: Mutex<Vec<Ack>>,
    recent_reservations: Mutex<VecDeque<String>>,
    slots: Mutex<Vec<String>>,
    signups: AtomicU64,
}

/// The workload while it runs.
pub(crate) struct Workload {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

/// The run's tag: in every reservation's notes, every email and idempotency key, so the
/// checker can tell this run's rows from any other's.
pub(crate) fn new_tag() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; 4]>())
}

/// The notes of the reservations of run `tag` start with this.
pub(crate) fn notes_prefix(tag: &str) -> String {
    format!("drill {tag} #")
}

fn client() -> Result<reqwest::Client, DrillError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(IN_FLIGHT_MAX)
        .tcp_nodelay(true)
        .build()
        .map_err(|error| DrillError::Deployment(format!("building the load's HTTP client: {error}")))
}

impl Workload {
    /// Prepares the load (books to buy, shoppers signed up and in: acknowledged writes too) and
    /// starts it at `rate_per_second`; its clock starts then (`origin`).
    pub(crate) async fn start(
        gateways: Vec<String>,
        rate_per_second: u32,
        tag: String,
    ) -> Result<Workload, DrillError> {
        assert!(!gateways.is_empty(), "a workload needs a gateway");
        assert!(rate_per_second > 0, "a workload needs a rate");
        let client = client()?;
        let books = list_books(&client, &gateways[0]).await?;
        let slot_base = slot_base();
        let gateway_down_until = gateways.iter().map(|_| Mutex::new(None)).collect();
        let mut shared = Shared {
            tag,
            origin: Instant::now(),
            client,
            gateways,
            gateway_down_until,
            next_gateway: AtomicUsize::new(0),
            books,
            shoppers: Vec::new(),
            slot_base,
            samples: Mutex::new(Vec::new()),
            acks: Mutex::new(Vec::new()),
            recent_reservations: Mutex::new(VecDeque::new()),
            slots: Mutex::new(Vec::new()),
            signups: AtomicU64::new(0),
        };
        let shoppers_total = (rate_per_second / 25).clamp(4, 32) as usize;
        let shoppers = sign_up_shoppers(&shared, shoppers_total).await?;
        shared.shoppers = shoppers.into_iter().map(tokio::sync::Mutex::new).collect();
        shared.origin = Instant::now();
        let shared = Arc::new(shared);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&shared), rate_per_second, stopped));
        Ok(Workload { shared, stop, task })
    }

    /// When the load started: every time in the records is measured from here.
    pub(crate) fn origin(&self) -> Instant {
        self.shared.origin
    }

    /// The writes acknowledged so far.
    pub(crate) fn acks_so_far(&self) -> Vec<Ack> {
        self.shared.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests answered so far and how many of them failed (for the progress line).
    pub(crate) fn counter(&self) -> impl Fn() -> (usize, usize) + Send + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            let samples = shared.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            (samples.len(), samples.iter().filter(|sample| !sample.answer.succeeded()).count())
        }
    }

    /// Stops sending, waits (bounded) for the requests in flight, and hands over the records.
    pub(crate) async fn stop(self) -> Recorded {
        let _ = self.stop.send(true);
        let shed_by_client = self.task.await.unwrap_or(0);
        fn take<T>(mutex: &Mutex<Vec<T>>) -> Vec<T> {
            std::mem::take(&mut *mutex.lock().unwrap_or_else(|p| p.into_inner()))
        }
        let mut samples: Vec<Sample> = take(&self.shared.samples);
        samples.sort_by_key(|sample| sample.start_ms);
        let mut shopper_ids = Vec::new();
        for shopper in &self.shared.shoppers {
            shopper_ids.push(shopper.lock().await.user_id.clone());
        }
        Recorded {
            samples,
            acks: take(&self.shared.acks),
            shed_by_client,
            slots: take(&self.shared.slots),
            shopper_ids,
        }
    }
}

/// Sends one request per tick until told to stop; answers how many ticks were shed.
async fn run(shared: Arc<Shared>, rate_per_second: u32, mut stop: watch::Receiver<bool>) -> u64 {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate_per_second)));
    // Open loop: a late tick is sent at once, so a slow answer never lowers the offered load.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq: u64 = 0;
    let mut shed = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        seq += 1;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            shed += 1;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            one_request(&shared, seq).await;
        });
    }
    // Every request ends within its timeout; wait that long at most for the last ones.
    let _ =
        tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), in_flight.acquire_many(IN_FLIGHT_MAX as u32))
            .await;
    shed
}

/// The mix, over 40 ticks: 20 reservations, 8 shopper steps (add to cart, then check out), 1
/// sign-up, 11 reads.
async fn one_request(shared: &Shared, seq: u64) {
    match seq % 40 {
        0..=19 => reserve(shared, seq).await,
        20..=27 => {
            let index = (seq as usize / 40 * 8 + (seq % 40 - 20) as usize) % shared.shoppers.len();
            match shared.shoppers[index].try_lock() {
                Ok(mut shopper) if shopper.round < shared.books.len() => shop(shared, &mut shopper).await,
                // Still busy with its last step (a shopper does one thing at a time), or every
                // book bought once: a read instead.
                _ => read(shared, seq).await,
            }
        }
        28 => signup(shared, seq).await,
        _ => read(shared, seq).await,
    }
}

fn since_origin_ms(shared: &Shared, at: Instant) -> u32 {
    at.saturating_duration_since(shared.origin).as_millis().min(u128::from(u32::MAX)) as u32
}

/// An answer with its body (JSON or null).
struct Answered {
    answer: Answer,
    body: Value,
}

/// Sends a request built by `build` for a gateway's base URL, trying the next gateway when one
/// refuses the connection (never sent, so always safe), and records it.
async fn send(shared: &Shared, op: Op, build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder) -> Answered {
    let started = Instant::now();
    let mut answer = Answer::Connection;
    let mut body = Value::Null;
    let gateways_total = shared.gateways.len();
    let first = shared.next_gateway.fetch_add(1, Ordering::Relaxed);
    for offset in 0..gateways_total {
        let index = (first + offset) % gateways_total;
        let down = shared.gateway_down_until[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if down && offset + 1 < gateways_total {
            continue;
        }
        match build(&shared.client, &shared.gateways[index]).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                body = match response.bytes().await {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    Err(error) if error.is_timeout() => {
                        answer = Answer::Timeout;
                        break;
                    }
                    Err(_) => {
                        answer = Answer::Connection;
                        break;
                    }
                };
                answer = Answer::Status(status);
                break;
            }
            Err(error) if error.is_connect() => {
                *shared.gateway_down_until[index].lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + GATEWAY_DOWN_FOR);
                answer = Answer::Connection;
            }
            Err(error) if error.is_timeout() => {
                answer = Answer::Timeout;
                break;
            }
            Err(_) => {
                answer = Answer::Connection;
                break;
            }
        }
    }
    let sample = Sample {
        start_ms: since_origin_ms(shared, started),
        latency_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        op,
        answer,
    };
    shared.samples.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
    Answered { answer, body }
}

/// Committed (201), pending (202) or a duplicate of an acknowledged one (200): acknowledged.
fn acknowledged(answered: &Answered) -> Option<(String, String)> {
    let Answer::Status(status) = answered.answer else { return None };
    if !matches!(status, 200..=202) {
        return None;
    }
    let id = answered.body["id"].as_str()?.to_string();
    let status = answered.body["status"].as_str().unwrap_or("").to_string();
    matches!(status.as_str(), "committed" | "pending" | "duplicate").then_some((id, status))
}

fn record_ack(shared: &Shared, id: String, kind: &'static str, answered: String, effect: Effect) {
    shared.acks.lock().unwrap_or_else(|p| p.into_inner()).push(Ack { id, kind, at: Instant::now(), answered, effect });
}

/// The first slot: a year and a day from now at a random minute of the next half year, so runs
/// rarely share slots (and bookings stay inside the cafe's two-year window).
fn slot_base() -> time::PrimitiveDateTime {
    let now = time::OffsetDateTime::now_utc();
    let offset_minutes = rand::thread_rng().gen_range(0..180 * 24 * 60);
    let base = now + time::Duration::days(367) + time::Duration::minutes(offset_minutes);
    let base = base.replace_second(0).unwrap_or(base).replace_nanosecond(0).unwrap_or(base);
    time::PrimitiveDateTime::new(base.date(), base.time())
}

fn slot(shared: &Shared, seq: u64) -> String {
    let at = shared.slot_base + time::Duration::minutes(seq as i64);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    at.format(&format).expect("a time formats")
}

async fn reserve(shared: &Shared, seq: u64) {
    let time = slot(shared, seq);
    shared.slots.lock().unwrap_or_else(|p| p.into_inner()).push(time.clone());
    let body = json!({
        "name": format!("Drill guest {}", seq % 1000),
        "party_size": 1 + seq % 4,
        "time": time,
        "notes": format!("{}{seq}", notes_prefix(&shared.tag)),
    });
    let answered =
        send(shared, Op::Reserve, |client, base| client.post(format!("{base}/api/cafe/reservations")).json(&body))
            .await;
    if let Some((id, status)) = acknowledged(&answered) {
        {
            let mut recent = shared.recent_reservations.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_RESERVATIONS_MAX {
                recent.pop_front();
            }
            recent.push_back(id.clone());
        }
        record_ack(shared, id, "cafe.reserve", status, Effect::Reservation);
    }
}

async fn signup(shared: &Shared, seq: u64) {
    let number = shared.signups.fetch_add(1, Ordering::Relaxed);
    let email = format!("drill-{}-s{number}@example.com", shared.tag);
    let key = format!("drill-{}-signup-{seq}", shared.tag);
    let body = json!({ "email": email, "password": SHOPPER_PASSWORD });
    let answered = send(shared, Op::Signup, |client, base| {
        client.post(format!("{base}/api/auth/signup")).header("Idempotency-Key", &key).json(&body)
    })
    .await;
    if let Some((id, status)) = acknowledged(&answered) {
        record_ack(shared, id, "bookstore.signup", status, Effect::Signup { email });
    }
}

/// One step of a shopper: add the round's book to the cart, check the cart out, or clear it
/// after a refused checkout. A step that got no answer is sent again with the same
/// idempotency key, as a careful client would.
async fn shop(shared: &Shared, shopper: &mut Shopper) {
    let token = shopper.token.clone();
    let round_key = format!("drill-{}-{}-r{}", shared.tag, shopper.user_id, shopper.round);
    let next_round = |shopper: &mut Shopper| {
        shopper.round += 1;
        shopper.stage = Stage::Add;
        shopper.empty_checkouts = 0;
    };
    match &mut shopper.stage {
        Stage::Add => {
            let book = &shared.books[(shopper.offset + shopper.round) % shared.books.len()];
            let key = format!("{round_key}-add");
            let body = json!({ "book_id": book, "quantity": 1 });
            let answered = send(shared, Op::CartAdd, |client, base| {
                client.post(format!("{base}/api/cart")).bearer_auth(&token).header("Idempotency-Key", &key).json(&body)
            })
            .await;
            if let Some((id, status)) = acknowledged(&answered) {
                record_ack(shared, id, "bookstore.cart_set", status, Effect::CartLine);
                shopper.stage = Stage::CheckOut;
            } else if matches!(answered.answer, Answer::Status(400..=499)) {
                // Refused (no such book any more): the next round takes another.
                next_round(shopper);
            }
        }
        Stage::CheckOut => {
            let key = format!("{round_key}-checkout-{}", shopper.empty_checkouts);
            let answered = send(shared, Op::Checkout, |client, base| {
                client.post(format!("{base}/api/orders")).bearer_auth(&token).header("Idempotency-Key", &key)
            })
            .await;
            if let Some((id, status)) = acknowledged(&answered) {
                record_ack(shared, id, "bookstore.checkout", status, Effect::Checkout);
                next_round(shopper);
            } else if let Answer::Status(status) = answered.answer {
                match status {
                    409 => shopper.stage = Stage::Clear { listed: false, remove: Vec::new() },
                    // The cart is empty here (its line still queued, or read from a region that
                    // has not got it yet): try again later, then move on.
                    422 => {
                        shopper.empty_checkouts += 1;
                        if shopper.empty_checkouts >= EMPTY_CART_ATTEMPTS_MAX {
                            next_round(shopper);
                        }
                    }
                    _ => {}
                }
            }
        }
        Stage::Clear { listed: false, remove } => {
            let answered =
                send(shared, Op::ReadCart, |client, base| client.get(format!("{base}/api/cart")).bearer_auth(&token))
                    .await;
            if answered.answer == Answer::Status(200) {
                *remove = answered.body["items"]
                    .as_array()
                    .map(|items| items.iter().filter_map(|line| line["book_id"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if remove.is_empty() {
                    next_round(shopper);
                } else {
                    shopper.stage = Stage::Clear { listed: true, remove: std::mem::take(remove) };
                }
            }
        }
        Stage::Clear { listed: true, remove } => {
            let Some(book) = remove.last().cloned() else {
                next_round(shopper);
                return;
            };
            let key = format!("{round_key}-remove-{book}");
            let body = json!({ "book_id": book });
            let answered = send(shared, Op::CartRemove, |client, base| {
                client
                    .delete(format!("{base}/api/cart"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .json(&body)
            })
            .await;
            if let Some((id, status)) = acknowledged(&answered) {
                record_ack(shared, id, "bookstore.cart_set", status, Effect::CartLine);
                remove.pop();
            } else if matches!(answered.answer, Answer::Status(400..=499)) {
                remove.pop();
            }
            if remove.is_empty() {
                next_round(shopper);
            }
        }
    }
}

async fn read(shared: &Shared, seq: u64) {
    match seq % 3 {
        0 => {
            let id = {
                let recent = shared.recent_reservations.lock().unwrap_or_else(|p| p.into_inner());
                (!recent.is_empty()).then(|| recent[seq as usize % recent.len()].clone())
            };
            let path = match id {
                Some(id) => format!("/api/cafe/reservations/{id}"),
                None => "/api/cafe/reservations?limit=5".to_string(),
            };
            send(shared, Op::ReadReservation, |client, base| client.get(format!("{base}{path}"))).await;
        }
        1 => {
            send(shared, Op::ReadBooks, |client, base| client.get(format!("{base}/api/books?q=the&limit=10"))).await;
        }
        _ => {
            send(shared, Op::ReadBestsellers, |client, base| client.get(format!("{base}/api/bestsellers"))).await;
        }
    }
}

/// The books with the most stock (at least `BOOK_STOCK_MIN`), read page by page.
async fn list_books(client: &reqwest::Client, gateway: &str) -> Result<Vec<String>, DrillError> {
    let mut books: Vec<(i64, String)> = Vec::new();
    let mut after = String::new();
    for _ in 0..CATALOG_PAGES_MAX {
        let url = format!("{gateway}/api/books?limit=100&after={after}");
        let body: Value = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| DrillError::Deployment(format!("GET {url}: {error}")))?
            .json()
            .await
            .map_err(|error| DrillError::Deployment(format!("GET {url}: {error}")))?;
        for book in body["items"].as_array().into_iter().flatten() {
            if let (Some(id), Some(stock)) = (book["id"].as_str(), book["stock"].as_i64()) {
                books.push((stock, id.to_string()));
            }
        }
        match body["next"].as_str() {
            Some(next) if !next.is_empty() => after = next.to_string(),
            _ => break,
        }
    }
    books.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let plenty: Vec<String> =
        books.iter().filter(|(stock, _)| *stock >= BOOK_STOCK_MIN).take(BOOKS_MAX).map(|(_, id)| id.clone()).collect();
    if !plenty.is_empty() {
        return Ok(plenty);
    }
    // Sold out everywhere: checkouts will be refused (answers all the same), carts cleared.
    let any: Vec<String> = books.into_iter().take(BOOKS_MAX).map(|(_, id)| id).collect();
    if any.is_empty() {
        return Err(DrillError::Deployment(format!("{gateway}/api/books lists no books to buy")));
    }
    Ok(any)
}

/// Signs up and signs in the shoppers (their sign-ups are acknowledged writes too), bounded.
async fn sign_up_shoppers(shared: &Shared, total: usize) -> Result<Vec<Shopper>, DrillError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let gateway = &shared.gateways[0];
    let mut shoppers = Vec::new();
    for number in 0..total {
        let email = format!("drill-{}-shopper{number}@example.com", shared.tag);
        let credentials = json!({ "email": email, "password": SHOPPER_PASSWORD });
        let key = format!("drill-{}-shopper{number}", shared.tag);
        loop {
            let response = shared
                .client
                .post(format!("{gateway}/api/auth/signup"))
                .header("Idempotency-Key", &key)
                .json(&credentials)
                .send()
                .await;
            if let Ok(response) = response {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let answered = Answered { answer: Answer::Status(status), body };
                if let Some((id, status)) = acknowledged(&answered) {
                    record_ack(shared, id, "bookstore.signup", status, Effect::Signup { email: email.clone() });
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(DrillError::Deployment(format!("signing up {email} through {gateway} failed")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (token, user_id) = loop {
            let response = shared.client.post(format!("{gateway}/api/auth/signin")).json(&credentials).send().await;
            if let Ok(response) = response {
                if response.status().is_success() {
                    let body = response.json::<Value>().await.unwrap_or(Value::Null);
                    if let (Some(token), Some(user_id)) = (body["token"].as_str(), body["user_id"].as_str()) {
                        break (token.to_string(), user_id.to_string());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(DrillError::Deployment(format!("signing in {email} through {gateway} failed")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let offset = number * BOOKS_MAX / total;
        shoppers.push(Shopper { user_id, token, offset, round: 0, stage: Stage::Add, empty_checkouts: 0 });
    }
    Ok(shoppers)
}
