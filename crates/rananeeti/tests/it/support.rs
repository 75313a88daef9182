//! Test fixtures: a real `rananeeti node` process on a free port over a throwaway store, talked to
//! over HTTP, killed with SIGKILL and restarted; the store opened directly to count rows.

use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti::postgres::{free_loopback_port, PgCluster};
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

/// How long a node gets to write its address file and answer `/healthz`.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the fallback queue gets to drain once the store is back.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest any one HTTP request of a test may take before it counts as unanswered.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The node's default submit budget (docs/design.md promise 2); the tests run with the defaults.
pub const SUBMIT_BUDGET: Duration = Duration::from_millis(2000);
/// Between two looks at something a test waits for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of the node's log printed when a test fails.
const LOG_TAIL_LINES_MAX: usize = 60;

/// Which store a test runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// A throwaway store: a SQLite file, or a PostgreSQL cluster started from the local binaries.
pub struct TestStore {
    pub kind: StoreKind,
    /// Without a password (that is in `password_file`).
    pub url: String,
    /// PostgreSQL: the file holding the apps' role's password (what a node gets).
    pub password_file: Option<PathBuf>,
    /// Where the SQLite database file lives (`None` for PostgreSQL).
    pub sqlite_path: Option<PathBuf>,
    pub pg: Option<PgCluster>,
}

impl TestStore {
    /// A new store under `dir`. Starting PostgreSQL blocks (initdb, pg_ctl): run on a multi-thread
    /// runtime.
    pub fn create(kind: StoreKind, dir: &Path) -> TestStore {
        match kind {
            StoreKind::Sqlite => {
                let path = dir.join("store.db");
                TestStore {
                    kind,
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    password_file: None,
                    sqlite_path: Some(path),
                    pg: None,
                }
            }
            StoreKind::Postgres => {
                let port = free_loopback_port().expect("a free loopback port for PostgreSQL");
                let pg = tokio::task::block_in_place(|| PgCluster::init_and_start(&dir.join("pg"), port))
                    .unwrap_or_else(|error| panic!("starting a throwaway PostgreSQL cluster: {error:#}"));
                TestStore {
                    kind,
                    url: pg.url(),
                    password_file: Some(pg.password_file()),
                    sqlite_path: None,
                    pg: Some(pg),
                }
            }
        }
    }

    pub fn pg(&self) -> &PgCluster {
        self.pg.as_ref().expect("this test store is PostgreSQL")
    }

    /// Stops PostgreSQL the way a crash would.
    pub fn pg_stop_immediate(&self) {
        tokio::task::block_in_place(|| self.pg().stop_immediate())
            .unwrap_or_else(|error| panic!("stopping PostgreSQL (immediate): {error:#}"));
    }

    pub fn pg_start(&self) {
        tokio::task::block_in_place(|| self.pg().start())
            .unwrap_or_else(|error| panic!("restarting PostgreSQL: {error:#}"));
    }

    /// The store's URL with its password (PostgreSQL), to open it directly from the test.
    pub fn connect_url(&self) -> String {
        rananeeti::postgres::connect_url(&self.url, self.password_file.as_deref())
            .unwrap_or_else(|error| panic!("the store's connect URL: {error:#}"))
    }

    pub async fn connect(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.connect_url())
            .await
            .unwrap_or_else(|error| panic!("opening the store {} directly: {error}", self.url))
    }

    /// Every row of `cafe_reservations` by id: how many rows carry it.
    pub async fn reservation_rows(&self) -> HashMap<String, usize> {
        let mut connection = self.connect().await;
        let rows = sqlx::query("SELECT id FROM cafe_reservations").fetch_all(&mut connection).await.unwrap();
        let _ = connection.close().await;
        let mut counts = HashMap::new();
        for row in rows {
            *counts.entry(row.get::<String, _>("id")).or_insert(0) += 1;
        }
        counts
    }

    /// Every row of `rn_commands` by id: the statuses recorded for it.
    pub async fn command_rows(&self) -> HashMap<String, Vec<String>> {
        let mut connection = self.connect().await;
        let rows = sqlx::query("SELECT id, status FROM rn_commands").fetch_all(&mut connection).await.unwrap();
        let _ = connection.close().await;
        let mut statuses: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            statuses.entry(row.get::<String, _>("id")).or_default().push(row.get::<String, _>("status"));
        }
        statuses
    }

    /// Each id has exactly one reservation row and exactly one command record, committed; and no
    /// id at all is stored twice.
    pub async fn assert_each_committed_once(&self, ids: &BTreeSet<String>) {
        let reservations = self.reservation_rows().await;
        let commands = self.command_rows().await;
        let mut problems = Vec::new();
        for id in ids {
            let reservation_count = reservations.get(id).copied().unwrap_or(0);
            let statuses = commands.get(id).cloned().unwrap_or_default();
            if reservation_count != 1 || statuses != ["committed"] {
                problems.push(format!("{id}: {reservation_count} reservation rows, command records {statuses:?}"));
            }
        }
        for (id, count) in &reservations {
            if *count != 1 {
                problems.push(format!("{id}: stored {count} times in cafe_reservations"));
            }
        }
        for (id, statuses) in &commands {
            if statuses.len() != 1 {
                problems.push(format!("{id}: {} command records {statuses:?}", statuses.len()));
            }
        }
        assert!(
            problems.is_empty(),
            "{} of {} acknowledged writes are not committed exactly once in the {:?} store; first ones:\n{}",
            problems.len(),
            ids.len(),
            self.kind,
            problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// A `rananeeti node` process. Dropping it kills it; when the test is failing, the tail of the
/// node's log is printed first.
pub struct Node {
    data_dir: PathBuf,
    store_url: String,
    store_password_file: Option<PathBuf>,
    /// `--demo`: the demo switches (`X-Rananeeti-Fault`) are honoured.
    demo: bool,
    token_file: PathBuf,
    addr_file: PathBuf,
    log_file: PathBuf,
    pub admin_token: String,
    child: Option<Child>,
    pub base: String,
    pub client: reqwest::Client,
    /// Starts so far, counting restarts.
    pub starts: usize,
}

impl Node {
    /// Spawns a node with its files under `dir` over the store at `store_url` (its password in
    /// `store_password_file`), with the demo switches on, and waits until it answers `/healthz`.
    pub async fn start(dir: &Path, store_url: &str, store_password_file: Option<&Path>) -> Node {
        Node::start_with(dir, store_url, store_password_file, true).await
    }

    /// `start`, with the demo switches on or off (`rananeeti node`'s default: off).
    pub async fn start_with(dir: &Path, store_url: &str, store_password_file: Option<&Path>, demo: bool) -> Node {
        let admin_token = format!("test-admin-{}", std::process::id());
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, format!("{admin_token}\n")).unwrap();
        let client = reqwest::Client::builder()
            .timeout(HTTP_REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut node = Node {
            data_dir: dir.join("node"),
            store_url: store_url.to_string(),
            store_password_file: store_password_file.map(Path::to_path_buf),
            demo,
            token_file,
            addr_file: dir.join("node.addr"),
            log_file: dir.join("node.log"),
            admin_token,
            child: None,
            base: String::new(),
            client,
            starts: 0,
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the node is already running");
        match std::fs::remove_file(&self.addr_file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("removing {}: {error}", self.addr_file.display()),
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log_file).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rananeeti"));
        if let Some(file) = &self.store_password_file {
            command.arg("node").arg("--store-password-file").arg(file);
        } else {
            command.arg("node");
        }
        if self.demo {
            // The tests use the demo's per-request fault (X-Rananeeti-Fault).
            command.arg("--demo");
        }
        let child = command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--store-url")
            .arg(&self.store_url)
            .arg("--admin-token-file")
            .arg(&self.token_file)
            .arg("--addr-file")
            .arg(&self.addr_file)
            .env("RUST_LOG", "info")
            .env_remove("RANANEETI_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning the rananeeti binary");
        self.child = Some(child);
        self.starts += 1;

        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("the node exited while starting ({status}){}", self.log_tail());
            }
            if let Ok(address) = std::fs::read_to_string(&self.addr_file) {
                let address = address.trim();
                if !address.is_empty() {
                    self.base = format!("http://{address}");
                    let healthz = self.client.get(self.url("/healthz")).send().await;
                    if matches!(&healthz, Ok(response) if response.status() == 200) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the node did not write {} and answer /healthz within {:?}{}",
                self.addr_file.display(),
                NODE_START_TIMEOUT,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the node is running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("sending SIGKILL to the node");
        let status = child.wait().expect("reaping the killed node");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::SIGKILL as i32),
            "the node was meant to die of SIGKILL: {status}"
        );
    }

    /// Starts the node again with the same data directory and store (on a new port).
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES_MAX);
        format!("\n--- last lines of {} ---\n{}", self.log_file.display(), lines[start..].join("\n"))
    }

    pub fn admin_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.admin_token)
    }

    pub fn admin_post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(&self.admin_token)
    }

    /// `POST /admin/faults` with `faults`, which must be accepted.
    pub async fn set_faults(&self, faults: Value) {
        let response = self.admin_post("/admin/faults").json(&faults).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "setting faults {faults}: {body}");
    }

    pub async fn queue(&self) -> Value {
        let response = self.admin_get("/admin/queue").send().await.unwrap();
        assert_eq!(response.status(), 200, "GET /admin/queue");
        response.json().await.unwrap()
    }

    pub async fn queue_depth(&self) -> u64 {
        self.queue().await["depth"].as_u64().expect("/admin/queue has a numeric depth")
    }

    /// Waits (bounded) until the fallback queue is empty.
    pub async fn wait_until_drained(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let queue = self.queue().await;
            if queue["depth"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the fallback queue did not drain within {DRAIN_TIMEOUT:?}: {queue}{}",
                self.log_tail()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `GET /api/cafe/reservations/{id}` as status code and JSON body.
    pub async fn reservation(&self, id: &str) -> (u16, Value) {
        let response = self.client.get(self.url(&format!("/api/cafe/reservations/{id}"))).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts a reservation: the answer, or why there was none.
    pub async fn reserve(&self, body: &Value) -> Result<Answer, String> {
        post_reservation(&self.client, &self.base, body, false).await
    }

    /// Posts a reservation with `X-Rananeeti-Fault: db`.
    pub async fn reserve_with_simulated_failure(&self, body: &Value) -> Result<Answer, String> {
        post_reservation(&self.client, &self.base, body, true).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// One test's world: a temporary directory, a store, and a node over it. Dropped in field order:
/// the node first, then the store, then the directory.
pub struct Deployment {
    pub node: Node,
    pub store: TestStore,
    /// Holds the node's files and the store; removed last.
    _dir: TempDir,
}

impl Deployment {
    pub async fn start(kind: StoreKind) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore::create(kind, dir.path());
        let node = Node::start(dir.path(), &store.url, store.password_file.as_deref()).await;
        Deployment { node, store, _dir: dir }
    }
}

/// An HTTP answer to a reservation.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// From sending the request to having the whole answer.
    pub latency: Duration,
}

impl Answer {
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_else(|| panic!("answer {} {} has no id", self.status, self.body)).to_string()
    }

    /// Acknowledged: committed or durably queued.
    pub fn acknowledged(&self) -> bool {
        self.status == 201 || self.status == 202
    }
}

pub async fn post_reservation(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    simulate_failure: bool,
) -> Result<Answer, String> {
    let started = Instant::now();
    let mut request = client.post(format!("{base}/api/cafe/reservations")).json(body);
    if simulate_failure {
        request = request.header("X-Rananeeti-Fault", "db");
    }
    let response = request.send().await.map_err(|error| format!("no answer: {error}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|error| format!("answer {status} cut short: {error}"))?;
    let latency = started.elapsed();
    let body = serde_json::from_str(&text).map_err(|error| format!("answer {status} is not JSON ({error}): {text}"))?;
    Ok(Answer { status, body, latency })
}

/// Posts every body with at most `in_flight_max` requests in flight, counting answers in
/// `answered` as they arrive. Returns each body with its answer (in no particular order).
pub async fn post_many(
    client: reqwest::Client,
    base: String,
    bodies: Vec<Value>,
    in_flight_max: usize,
    answered: Arc<AtomicUsize>,
) -> Vec<(Value, Result<Answer, String>)> {
    futures::stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            let base = base.clone();
            let answered = Arc::clone(&answered);
            async move {
                let answer = post_reservation(&client, &base, &body, false).await;
                if answer.is_ok() {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                (body, answer)
            }
        })
        .buffer_unordered(in_flight_max)
        .collect()
        .await
}

/// A year in which every month from June on is in the future and that bookings are open for
/// (at most two years ahead): next year, give or take the days around New Year.
pub fn booking_year() -> i64 {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    // Mean Gregorian year; off by a day at most, which June-onwards times do not notice.
    1970 + seconds / 31_556_952 + 1
}

/// A slot time unique to `i` (one minute each, from June of the booking year on).
pub fn slot_time(i: usize) -> String {
    let minutes_per_day = 24 * 60;
    let days_per_month = 28;
    let month = 6 + i / (days_per_month * minutes_per_day);
    assert!(month <= 12, "slot {i} is past December");
    let day = 1 + (i / minutes_per_day) % days_per_month;
    let hour = (i / 60) % 24;
    let minute = i % 60;
    format!("{}-{month:02}-{day:02}T{hour:02}:{minute:02}", booking_year())
}

/// A valid reservation unique to `tag` and `i`: a party of one at its own minute, so the seat
/// rule never refuses it.
pub fn reservation(tag: &str, i: usize) -> Value {
    json!({ "name": format!("Guest {i}"), "party_size": 1, "time": slot_time(i), "notes": format!("{tag} #{i}") })
}

/// Polls `probe` until it gives `Some`, at most `timeout`; the panic names `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asks the node for each id's reservation (bounded concurrency) and asserts it is committed.
pub async fn assert_each_reported_committed(node: &Node, ids: &BTreeSet<String>) {
    let answers: Vec<(String, u16, Value)> = futures::stream::iter(ids.iter().cloned())
        .map(|id| async move {
            let (status, body) = node.reservation(&id).await;
            (id, status, body)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(_, status, body)| *status != 200 || body["status"] != "committed")
        .map(|(id, status, body)| format!("{id}: {status} {body}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} reservations are not reported committed; first ones:\n{}",
        wrong.len(),
        ids.len(),
        wrong.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The value of an unlabelled sample in Prometheus text, e.g. `rananeeti_queue_depth`.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// A free loopback port followed by `count - 1` more free ones: `up` takes the gateway's port and
/// the ones after it (nodes, witness). Another process may still take one meanwhile.
pub fn free_port_run(count: u16) -> u16 {
    for _ in 0..50 {
        let port = rananeeti::postgres::free_loopback_port().unwrap();
        let free = (1..count).all(|offset| {
            port.checked_add(offset).is_some_and(|next| std::net::TcpListener::bind(("127.0.0.1", next)).is_ok())
        });
        if free {
            return port;
        }
    }
    panic!("no run of {count} free ports");
}

/// What the clients of a test under steady load saw: acknowledged booking ids, the reads
/// answered (and which node served them, when asked), and every request that failed.
#[derive(Default)]
pub struct Seen {
    pub acknowledged: BTreeSet<String>,
    pub reads_ok: usize,
    /// `X-Served-By-Node` of the reads answered.
    pub served_by: BTreeSet<String>,
    pub failures: Vec<String>,
}

impl Seen {
    /// Prints the counts, then asserts that no request failed and that at least `writes_min`
    /// bookings were acknowledged.
    pub fn assert_nothing_failed(&self, writes_min: usize) {
        println!(
            "acknowledged writes: {}, reads: {}, served by {:?}, failures: {}",
            self.acknowledged.len(),
            self.reads_ok,
            self.served_by,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{} requests failed; first ones: {:?}",
            self.failures.len(),
            &self.failures[..self.failures.len().min(10)]
        );
        assert!(self.acknowledged.len() >= writes_min, "the writers wrote: {}", self.acknowledged.len());
    }
}
