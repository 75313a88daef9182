//! `rananeeti export-lb`: the real nginx and the real HAProxy run the exported configuration as it
//! is. In front of nodes that freeze while holding a request, they retry only what is safe (never
//! a plain POST); in front of `up`'s nodes, beside our gateway in the same run, a frozen region
//! (SIGSTOP) is counted: failed requests and the time until traffic moved are printed, not
//! asserted against a clock.

use crate::regions::{start_up, Up};
use crate::support::{eventually, reservation};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti::postgres::free_loopback_port;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LB_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried when a proxy exits at start (its port taken by another test between the two).
const LB_START_ATTEMPTS_MAX: usize = 5;
/// How long a started proxy must stay up to count as listening on its own port.
const LB_SETTLE: Duration = Duration::from_millis(200);
/// Longer than the exported response timeout (3 s) plus a retry.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// A probe answered within this counts as traffic served normally again.
const PROBE_PROMPT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Nginx,
    Haproxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// A load balancer process running an exported configuration; killed when dropped.
struct Lb {
    kind: Kind,
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Lb {
    /// Exports the configuration for the deployment in `data`, checks it with the proxy's own
    /// checker (`nginx -t`, `haproxy -c`), starts the proxy and waits until it answers. A free
    /// port can be taken by another test's process before the proxy binds it (the suite starts
    /// many servers at once): a proxy that exits at start is tried again on another port.
    async fn start(kind: Kind, data: &Path) -> Lb {
        for _ in 1..LB_START_ATTEMPTS_MAX {
            if let Some(lb) = Lb::try_start(kind, data).await {
                return lb;
            }
        }
        Lb::try_start(kind, data).await.unwrap_or_else(|| panic!("{} exited at start on every port tried", kind.name()))
    }

    /// One start on a fresh port: None when the proxy exited before it was listening for good.
    async fn try_start(kind: Kind, data: &Path) -> Option<Lb> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_loopback_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let exported = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
            .args(["export-lb", "--format", kind.name(), "--listen", &listen, "--data"])
            .arg(data)
            .arg("--runtime-dir")
            .arg(dir.path().join("runtime"))
            .output()
            .unwrap();
        assert!(exported.status.success(), "export-lb: {}", String::from_utf8_lossy(&exported.stderr));
        let config = dir.path().join(format!("{}.conf", kind.name()));
        std::fs::write(&config, &exported.stdout).unwrap();

        let check = match kind {
            Kind::Nginx => Command::new("nginx").arg("-t").arg("-c").arg(&config).output(),
            Kind::Haproxy => Command::new("haproxy").arg("-c").arg("-f").arg(&config).output(),
        }
        .unwrap_or_else(|error| panic!("running {} (scripts/test.sh installs it): {error}", kind.name()));
        assert!(
            check.status.success(),
            "{} refuses the exported configuration:\n{}{}\n{}",
            kind.name(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&exported.stdout)
        );

        let log = std::fs::File::create(dir.path().join("lb.log")).unwrap();
        let mut command = match kind {
            // One process in the foreground, so that killing it stops everything (a test
            // choice: in production, run nginx with its master process).
            Kind::Nginx => {
                let mut command = Command::new("nginx");
                command.arg("-c").arg(&config).arg("-g").arg("daemon off; master_process off;");
                command
            }
            Kind::Haproxy => {
                let mut command = Command::new("haproxy");
                command.arg("-db").arg("-f").arg(&config);
                command
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut lb = Lb { kind, child, url: format!("http://{listen}"), dir };
        let deadline = Instant::now() + LB_START_TIMEOUT;
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            if lb.exited() {
                eprintln!("{} exited at start on {listen}:\n{}", kind.name(), lb.log());
                return None;
            }
            assert!(Instant::now() < deadline, "{} did not listen on {listen}:\n{}", kind.name(), lb.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What answered may be another process on that port while the proxy fails to bind it.
        tokio::time::sleep(LB_SETTLE).await;
        if lb.exited() {
            eprintln!("{} exited at start on {listen} (port taken?):\n{}", kind.name(), lb.log());
            return None;
        }
        Some(lb)
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lb.log")).unwrap_or_default()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.kind.name(), self.log());
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A stand-in for a node that freezes while it holds a request: it answers `/readyz` with 200
/// until the first other request arrives, then answers nothing at all (like SIGSTOP) and only
/// records what reaches it. `answers` makes it a healthy node instead, answering everything.
struct FakeNode {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    readyz_seen: Arc<AtomicUsize>,
}

impl FakeNode {
    async fn start(answers: bool) -> FakeNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let readyz_seen = Arc::new(AtomicUsize::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let (task_seen, task_readyz) = (Arc::clone(&seen), Arc::clone(&readyz_seen));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, readyz_seen, frozen) =
                    (Arc::clone(&task_seen), Arc::clone(&task_readyz), Arc::clone(&frozen));
                tokio::spawn(serve_fake(stream, answers, seen, readyz_seen, frozen));
            }
        });
        FakeNode { url, seen, readyz_seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_fake(
    mut stream: tokio::net::TcpStream,
    answers: bool,
    seen: Arc<Mutex<Vec<String>>>,
    readyz_seen: Arc<AtomicUsize>,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = Vec::new();
    loop {
        // One request head (and its body, by Content-Length) at a time.
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > REQUEST_HEAD_BYTES_MAX {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let content_length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < head_end + content_length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        buffer.drain(..head_end + content_length);
        let request_line = head.lines().next().unwrap_or("").to_string();
        let keyed = head.to_ascii_lowercase().contains("\r\nidempotency-key:");
        let is_readyz = request_line.split_whitespace().nth(1) == Some("/readyz");
        if frozen.load(Ordering::SeqCst) {
            // Frozen: hold the connection, answer nothing.
            if !is_readyz {
                seen.lock().unwrap().push(request_line.clone());
            }
            std::future::pending::<()>().await;
        }
        if is_readyz {
            readyz_seen.fetch_add(1, Ordering::SeqCst);
        } else {
            seen.lock().unwrap().push(format!("{request_line}{}", if keyed { " keyed" } else { "" }));
            if !answers {
                frozen.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
        }
        let body = br#"{"status":"ok"}"#;
        let response =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        if stream.write_all(response.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
            return;
        }
    }
}

/// topology.json naming `primary` as region r1's only node and `backup` as r2's.
fn write_topology(dir: &Path, primary: &FakeNode, backup: &FakeNode) {
    let topology = serde_json::json!({
        "gateway_url": null,
        "regions": [
            { "name": "r1", "nodes": [{ "name": "r1-n1", "url": primary.url, "pid": null }],
              "database": { "kind": "sqlite", "url": "sqlite://unused", "pid": null } },
            { "name": "r2", "nodes": [{ "name": "r2-n1", "url": backup.url, "pid": null }],
              "database": { "kind": "sqlite", "url": "sqlite://unused", "pid": null } }
        ]
    });
    std::fs::write(dir.join("topology.json"), serde_json::to_vec_pretty(&topology).unwrap()).unwrap();
}

/// One request sent through a load balancer to a node that freezes while holding it.
struct RetryCase {
    what: &'static str,
    method: reqwest::Method,
    path: &'static str,
    idempotency_key: bool,
    /// Whether sending it again to another node is safe, so the load balancer must.
    retry_expected: bool,
}

async fn run_retry_case(kind: Kind, case: RetryCase) -> String {
    let (frozen, healthy) = (FakeNode::start(false).await, FakeNode::start(true).await);
    let data = tempfile::tempdir().unwrap();
    write_topology(data.path(), &frozen, &healthy);
    let lb = Lb::start(kind, data.path()).await;
    if kind == Kind::Haproxy {
        // The request must reach r1's node while HAProxy takes it for healthy (rise 2).
        eventually("two passing HAProxy checks of r1's node", LB_START_TIMEOUT, || async {
            (frozen.readyz_seen.load(Ordering::SeqCst) >= 2).then_some(())
        })
        .await;
    }
    let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).no_proxy().build().unwrap();
    let mut request = client.request(case.method.clone(), format!("{}{}", lb.url, case.path));
    if case.method == reqwest::Method::POST {
        request = request.json(&serde_json::json!({ "email": "ann@example.com", "password": "a long password" }));
    }
    if case.idempotency_key {
        request = request.header("Idempotency-Key", "export-lb-test-1");
    }
    let started = Instant::now();
    let status = request.send().await.map(|response| response.status().as_u16()).unwrap_or(0);
    let took = started.elapsed();
    let (at_frozen, at_healthy) = (frozen.seen(), healthy.seen());
    let line = format!(
        "{:8} {:42} -> {status} in {:.1} s; frozen node saw {}, other node saw {}",
        kind.name(),
        case.what,
        took.as_secs_f64(),
        at_frozen.len(),
        at_healthy.len()
    );
    assert_eq!(at_frozen.len(), 1, "{line}: the request reached the frozen node once: {at_frozen:?}");
    if case.retry_expected {
        assert_eq!(status, 200, "{line}: a safe request is retried on the other node: {at_healthy:?}");
        assert_eq!(at_healthy.len(), 1, "{line}: {at_healthy:?}");
    } else {
        assert!(at_healthy.is_empty(), "{line}: a plain POST that reached a node is never sent to another");
        assert!(status >= 500 || status == 0, "{line}: the client is told it failed");
    }
    line
}

/// Each load balancer, in front of a node that freezes holding the request: a GET, a digest POST
/// and a POST with Idempotency-Key are retried on the other region's node; a plain POST is not.
#[tokio::test(flavor = "multi_thread")]
async fn exported_load_balancers_retry_only_what_is_safe() {
    let cases = || {
        [
            RetryCase {
                what: "GET /api/cafe/reservations",
                method: reqwest::Method::GET,
                path: "/api/cafe/reservations?limit=1",
                idempotency_key: false,
                retry_expected: true,
            },
            RetryCase {
                what: "POST /api/cafe/reservations (digest id)",
                method: reqwest::Method::POST,
                path: "/api/cafe/reservations",
                idempotency_key: false,
                retry_expected: true,
            },
            RetryCase {
                what: "POST /api/auth/signup with Idempotency-Key",
                method: reqwest::Method::POST,
                path: "/api/auth/signup",
                idempotency_key: true,
                retry_expected: true,
            },
            RetryCase {
                what: "POST /api/auth/signup (plain)",
                method: reqwest::Method::POST,
                path: "/api/auth/signup",
                idempotency_key: false,
                retry_expected: false,
            },
        ]
    };
    // All at once: each waits for the proxy's response timeout.
    let runs: Vec<_> = [Kind::Nginx, Kind::Haproxy]
        .into_iter()
        .flat_map(|kind| cases().into_iter().map(move |case| tokio::spawn(run_retry_case(kind, case))))
        .collect();
    let mut lines = Vec::new();
    for run in runs {
        lines.push(run.await.unwrap());
    }
    println!("retries through the exported configurations:\n{}", lines.join("\n"));
}

/// What one request through one front ended as.
#[derive(Clone, Debug)]
struct Served {
    /// When it was sent, and when its answer (or error) came.
    sent: Instant,
    at: Instant,
    took: Duration,
    ok: bool,
    region: String,
    /// Sent by the prober (a new request every 100 ms, whatever the others wait for).
    probe: bool,
}

/// Which region served a response: the gateway says so; nginx and HAProxy name the node.
fn region_of(response: &reqwest::Response, nodes: &BTreeMap<String, String>) -> String {
    let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(String::from);
    if let Some(region) = header("x-served-by-region") {
        return region;
    }
    let node = header("x-upstream-server").or_else(|| {
        // nginx lists every address it tried; the last one answered.
        header("x-upstream-addr").and_then(|addresses| addresses.rsplit(", ").next().map(String::from))
    });
    node.and_then(|node| nodes.get(&node).cloned()).unwrap_or_default()
}

/// Steady bookings and reads through `base` until `stop`, one after another per task.
fn steady_load(
    base: String,
    nodes: Arc<BTreeMap<String, String>>,
    tasks: usize,
    first_id: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Served>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|task| {
            let (base, nodes, stop, log) = (base.clone(), Arc::clone(&nodes), Arc::clone(&stop), Arc::clone(&log));
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).no_proxy().build().unwrap();
                let writes = task % 2 == 0;
                let mut i = first_id + task * 5_000;
                while !stop.load(Ordering::SeqCst) {
                    let request = if writes {
                        client.post(format!("{base}/api/cafe/reservations")).json(&reservation("export-lb", i))
                    } else {
                        client.get(format!("{base}/api/books?limit=5"))
                    };
                    i += 1;
                    let started = Instant::now();
                    let served = match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let region = region_of(&response, &nodes);
                            let ok = if writes { status == 201 || status == 202 } else { status == 200 };
                            let _ = response.bytes().await;
                            Served {
                                sent: started,
                                at: Instant::now(),
                                took: started.elapsed(),
                                ok,
                                region,
                                probe: false,
                            }
                        }
                        Err(_) => Served {
                            sent: started,
                            at: Instant::now(),
                            took: started.elapsed(),
                            ok: false,
                            region: String::new(),
                            probe: false,
                        },
                    };
                    log.lock().unwrap().push(served);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect()
}

/// A new read through `base` every `PROBE_INTERVAL` until `stop`, each on its own: how soon new
/// traffic reaches r2 does not depend on what the steady load is stuck on.
fn prober(
    base: String,
    nodes: Arc<BTreeMap<String, String>>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Served>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).no_proxy().build().unwrap();
        let mut probes = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let (client, base, nodes, log) = (client.clone(), base.clone(), Arc::clone(&nodes), Arc::clone(&log));
            probes.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = client.get(format!("{base}/api/books?limit=1")).send().await;
                let (ok, region) = match answer {
                    Ok(response) => (response.status() == 200, region_of(&response, &nodes)),
                    Err(_) => (false, String::new()),
                };
                log.lock().unwrap().push(Served {
                    sent: started,
                    at: Instant::now(),
                    took: started.elapsed(),
                    ok,
                    region,
                    probe: true,
                });
            }));
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        for probe in probes {
            probe.await.unwrap();
        }
    })
}

fn signal_region(up: &Up, region: usize, signal: Signal) {
    for node in &up.topology.regions[region].nodes {
        kill(Pid::from_raw(node.pid.unwrap() as i32), signal).unwrap();
    }
}

/// The same steady load through our gateway, the exported nginx and the exported HAProxy, all in
/// front of one `up` (2 regions x 2 nodes), while region r1 is frozen with SIGSTOP: prints each
/// one's failed requests, the time until r2 served, and the slowest request. Asserts only what
/// must hold: every front moved traffic to r2, and r1 served before the freeze.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_region_behind_nginx_haproxy_and_the_gateway() {
    let up = start_up(2, 2, "sqlite").await;
    let data = up._dir.path().join("data");
    let nginx = Lb::start(Kind::Nginx, &data).await;
    let haproxy = Lb::start(Kind::Haproxy, &data).await;
    // Node address or name → region, to read nginx's and HAProxy's headers.
    let mut nodes = BTreeMap::new();
    for region in &up.topology.regions {
        for node in &region.nodes {
            nodes.insert(node.url.trim_start_matches("http://").to_string(), region.name.clone());
            nodes.insert(node.name.clone(), region.name.clone());
        }
    }
    let nodes = Arc::new(nodes);
    let fronts = [
        ("rananeeti gateway", up.topology.gateway_url.clone().unwrap()),
        ("nginx", nginx.url.clone()),
        ("HAProxy", haproxy.url.clone()),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for (index, (_, base)) in fronts.iter().enumerate() {
        let log = Arc::new(Mutex::new(Vec::new()));
        tasks.extend(steady_load(
            base.clone(),
            Arc::clone(&nodes),
            4,
            150_000 + index * 30_000,
            Arc::clone(&stop),
            Arc::clone(&log),
        ));
        tasks.push(prober(base.clone(), Arc::clone(&nodes), Arc::clone(&stop), Arc::clone(&log)));
        logs.push(log);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal_region(&up, 0, Signal::SIGSTOP);
    let frozen_at = Instant::now();
    // nginx needs its response timeout once per frozen node before it tries a backup.
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    signal_region(&up, 0, Signal::SIGCONT);

    let mut table = vec![format!(
        "{:18} {:>9} {:>13} {:>7} {:>18} {:>22} {:>12}",
        "front", "requests", "after freeze", "failed", "first r2 answer", "new traffic on r2 from", "slowest"
    )];
    let mut problems = Vec::new();
    for ((name, _), log) in fronts.iter().zip(&logs) {
        let log = log.lock().unwrap().clone();
        let after: Vec<&Served> = log.iter().filter(|served| served.at >= frozen_at).collect();
        let failed = log.iter().filter(|served| !served.ok).count();
        let moved =
            after.iter().filter(|served| served.ok && served.region == "r2").map(|served| served.at - frozen_at).min();
        let slowest = log.iter().map(|served| served.took).max().unwrap_or_default();
        // The first probe sent after the freeze that r2 answered promptly.
        let new_traffic = log
            .iter()
            .filter(|served| served.probe && served.sent >= frozen_at && served.ok && served.region == "r2")
            .filter(|served| served.took < PROBE_PROMPT)
            .map(|served| served.sent - frozen_at)
            .min();
        if !log.iter().any(|served| served.at < frozen_at && served.ok && served.region == "r1") {
            problems.push(format!("{name}: r1 did not serve before the freeze"));
        }
        if moved.is_none() {
            problems.push(format!("{name}: r2 never served after r1 froze"));
        }
        let seconds = |duration: Option<Duration>| {
            duration.map(|duration| format!("{:.2} s", duration.as_secs_f64())).unwrap_or_else(|| "never".into())
        };
        table.push(format!(
            "{:18} {:>9} {:>13} {:>7} {:>18} {:>22} {:>10.2} s",
            name,
            log.len(),
            after.len(),
            failed,
            seconds(moved),
            seconds(new_traffic),
            slowest.as_secs_f64()
        ));
    }
    println!(
        "region r1 frozen (SIGSTOP) for 9 s; per front 4 tasks booking and reading one request after another, \
         and a new read every 100 ms:\n{}",
        table.join("\n")
    );
    assert!(problems.is_empty(), "{problems:?}\n{}", table.join("\n"));
}
