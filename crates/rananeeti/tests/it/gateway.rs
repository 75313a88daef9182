//! The gateway in front of a real `rananeeti up`: a frozen region (SIGSTOP on its nodes), a node
//! killed mid-request, a node drained under load, and the edge limits, with real processes and
//! real signals. Figures (failed requests, time until traffic moved) are printed, not asserted
//! against a clock.

use crate::regions::{start_up, Up};
use crate::support::{eventually, reservation};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

fn gateway_url(up: &Up) -> String {
    up.topology.gateway_url.clone().expect("up runs a gateway")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CLIENT_TIMEOUT).no_proxy().build().unwrap()
}

/// What one request through the gateway ended as.
#[derive(Clone, Debug)]
struct Served {
    at: Instant,
    ok: bool,
    status: u16,
    region: String,
    node: String,
    what: String,
}

/// Steady traffic through the gateway: `writers` tasks booking and `readers` tasks listing, each
/// one request after another, until `stop`. Records every answer.
fn steady_traffic(
    base: &str,
    writers: usize,
    readers: usize,
    stop: &Arc<AtomicBool>,
    log: &Arc<Mutex<Vec<Served>>>,
    first_id: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for worker in 0..writers + readers {
        let (base, stop, log) = (base.to_string(), Arc::clone(stop), Arc::clone(log));
        let writes = worker < writers;
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut i = first_id + worker * 5_000;
            while !stop.load(Ordering::SeqCst) {
                let request = if writes {
                    client.post(format!("{base}/api/cafe/reservations")).json(&reservation("gateway", i))
                } else {
                    client.get(format!("{base}/api/books?limit=5"))
                };
                i += 1;
                let answer = request.send().await;
                let served = match answer {
                    Ok(response) => {
                        let header = |name: &str| {
                            response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
                        };
                        let status = response.status().as_u16();
                        Served {
                            at: Instant::now(),
                            ok: if writes { status == 201 || status == 202 } else { status == 200 },
                            status,
                            region: header("x-served-by-region"),
                            node: header("x-served-by-node"),
                            what: if writes { "write" } else { "read" }.to_string(),
                        }
                    }
                    Err(error) => Served {
                        at: Instant::now(),
                        ok: false,
                        status: 0,
                        region: String::new(),
                        node: String::new(),
                        what: format!("error: {error}"),
                    },
                };
                log.lock().unwrap().push(served);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tasks
}

/// The failed requests, described.
fn failures(log: &[Served]) -> Vec<String> {
    log.iter()
        .filter(|served| !served.ok)
        .map(|served| format!("{} answered {} by {}/{}", served.what, served.status, served.region, served.node))
        .collect()
}

fn signal_region(up: &Up, region: usize, signal: Signal) {
    for node in &up.topology.regions[region].nodes {
        kill(Pid::from_raw(node.pid.unwrap() as i32), signal).unwrap();
    }
}

/// Every node of r1 frozen with SIGSTOP under a steady stream of bookings and reads: none fails,
/// and traffic moves to r2. Prints the failures and how long until r2 served.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_region_loses_no_request() {
    let up = start_up(2, 2, "sqlite").await;
    let base = gateway_url(&up);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let tasks = steady_traffic(&base, 4, 4, &stop, &log, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    signal_region(&up, 0, Signal::SIGSTOP);
    let frozen_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    // Read while r1 is still frozen (thawed, its checks pass again within 200 ms).
    let metrics =
        client().get(format!("{base}/metrics")).bearer_auth(&up.token).send().await.unwrap().text().await.unwrap();
    signal_region(&up, 0, Signal::SIGCONT);

    let log = log.lock().unwrap().clone();
    let before: Vec<&Served> = log.iter().filter(|served| served.at < frozen_at).collect();
    assert!(before.iter().any(|served| served.region == "r1"), "failover policy: r1 serves while healthy");
    let moved_after = log
        .iter()
        .filter(|served| served.at >= frozen_at && served.ok && served.region == "r2")
        .map(|served| served.at - frozen_at)
        .min()
        .expect("r2 served after r1 froze");
    let failed = failures(&log);
    println!(
        "frozen region: {} requests ({} after the freeze), {} failed, first answer from r2 {:?} after the freeze",
        log.len(),
        log.iter().filter(|served| served.at >= frozen_at).count(),
        failed.len(),
        moved_after
    );
    assert!(failed.is_empty(), "no request fails (reads and digest-id bookings are retried): {failed:?}");
    assert!(metrics.contains("rananeeti_gateway_node_healthy{region=\"r1\",node=\"r1-n1\"} 0"), "{metrics}");
}

/// A node killed with SIGKILL while it holds requests (its store made slow so they last): the
/// client sees success, each request retried on the other node.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_request_is_retried_elsewhere() {
    let up = start_up(1, 2, "sqlite").await;
    let base = gateway_url(&up);
    let victim = up.topology.regions[0].nodes[0].clone();
    let slow = client()
        .post(format!("{}/admin/faults", victim.url))
        .bearer_auth(&up.token)
        .json(&json!({ "db": { "slow_ms": 5000 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    // The other node drained while the requests start, so that the victim holds them all.
    let other = up.topology.regions[0].nodes[1].name.clone();
    let drain = |action: &'static str| {
        let (base, other, token) = (base.clone(), other.clone(), up.token.clone());
        async move {
            let url = format!("{base}/admin/nodes/{other}/{action}");
            assert_eq!(client().post(url).bearer_auth(token).send().await.unwrap().status(), 200);
        }
    };
    drain("drain").await;

    let requests: Vec<_> = (0..16)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move {
                let client = client();
                let response = if i % 2 == 0 {
                    client
                        .post(format!("{base}/api/cafe/reservations"))
                        .json(&reservation("killed", 200_000 + i))
                        .send()
                        .await
                } else {
                    client.get(format!("{base}/api/books?limit=3")).send().await
                };
                let response = response.unwrap();
                let node = response.headers()["x-served-by-node"].to_str().unwrap().to_string();
                (i, response.status().as_u16(), node)
            })
        })
        .collect();
    // Killed once the gateway has sent all 16 to it (a fixed wait was not enough on a busy
    // machine: a request not yet sent when the other node came back went there directly).
    eventually("the victim to hold all 16 requests", Duration::from_secs(4), || async {
        let topology: Value = client()
            .get(format!("{base}/admin/topology"))
            .bearer_auth(&up.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let nodes = topology["regions"][0]["nodes"].as_array()?;
        let held = nodes.iter().find(|node| node["name"] == victim.name)?["in_flight"].as_u64()?;
        (held == 16).then_some(())
    })
    .await;
    drain("undrain").await;
    kill(Pid::from_raw(victim.pid.unwrap() as i32), Signal::SIGKILL).unwrap();
    let mut served_by = BTreeMap::new();
    for request in requests {
        let (i, status, node) = request.await.unwrap();
        let ok = if i % 2 == 0 { status == 201 || status == 202 } else { status == 200 };
        assert!(ok, "request {i} answered {status} by {node}");
        *served_by.entry(node).or_insert(0) += 1;
    }
    let metrics =
        client().get(format!("{base}/metrics")).bearer_auth(&up.token).send().await.unwrap().text().await.unwrap();
    let retried: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("rananeeti_gateway_retries_total"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    println!("killed mid-request: 16 requests all succeeded, served by {served_by:?}, {retried} retries");
    assert!(retried >= 16.0, "every request the killed node held was retried: {metrics}");
    assert_eq!(served_by.get(&other), Some(&16), "all served by the other node in the end");
}

/// A node drained under load finishes what it holds and gets nothing new; stopped and brought
/// back (a deploy), and undrained: no request fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_finishes_its_requests() {
    let up = start_up(1, 2, "sqlite").await;
    let base = gateway_url(&up);
    let node = up.topology.regions[0].nodes[0].clone();
    // Slow enough that the node holds requests when the drain starts.
    let slow = client()
        .post(format!("{}/admin/faults", node.url))
        .bearer_auth(&up.token)
        .json(&json!({ "db": { "slow_ms": 300 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let tasks = steady_traffic(&base, 4, 2, &stop, &log, 100_000);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let admin = client();
    let drained: Value = admin
        .post(format!("{base}/admin/nodes/{}/drain", node.name))
        .bearer_auth(&up.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let drained_at = Instant::now();
    assert_eq!(drained["drained"], true, "{drained}");
    let held = drained["in_flight"].as_u64().unwrap();
    eventually("the drained node to finish its requests", SETTLE_TIMEOUT, || async {
        let topology: Value =
            admin.get(format!("{base}/admin/topology")).bearer_auth(&up.token).send().await.ok()?.json().await.ok()?;
        let in_flight = topology["regions"][0]["nodes"]
            .as_array()?
            .iter()
            .find(|candidate| candidate["name"] == node.name.as_str())?["in_flight"]
            .as_u64()?;
        (in_flight == 0).then_some(())
    })
    .await;
    // The deploy: stop the drained node (up restarts it), then undrain it.
    kill(Pid::from_raw(node.pid.unwrap() as i32), Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let undrained =
        admin.post(format!("{base}/admin/nodes/{}/undrain", node.name)).bearer_auth(&up.token).send().await.unwrap();
    assert_eq!(undrained.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    // Requests it held when the drain began finish within its 300 ms; from then until the
    // undrain (2 s after it was stopped) it answers nothing.
    let new_on_drained = log
        .iter()
        .filter(|served| served.node == node.name && served.at > drained_at + Duration::from_secs(1))
        .filter(|served| served.at < drained_at + Duration::from_secs(2))
        .count();
    let failed = failures(&log);
    println!("drain: {} requests, {} failed, {held} in flight on the node when drained", log.len(), failed.len());
    assert_eq!(new_on_drained, 0, "a drained node gets no new requests");
    assert!(failed.is_empty(), "no request fails during a drain and a restart: {failed:?}");

    // Unknown node, no token.
    let unknown = admin.post(format!("{base}/admin/nodes/nope/drain")).bearer_auth(&up.token).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let anonymous = admin.post(format!("{base}/admin/nodes/{}/drain", node.name)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// A standalone `rananeeti gateway` with tight limits in front of an `up` node: an oversized body
/// gets 413, an oversized head 431, a flood from one address 429 with Retry-After, a slowloris
/// connection is closed; a client from another address is served throughout.
#[tokio::test(flavor = "multi_thread")]
async fn limits_refuse_abuse_and_spare_other_clients() {
    let up = start_up(1, 1, "sqlite").await;
    let node = &up.topology.regions[0].nodes[0];
    let dir = tempfile::tempdir().unwrap();
    let port = rananeeti::postgres::free_loopback_port().unwrap();
    let config = dir.path().join("gateway.toml");
    // Its metrics are the admin's.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, &up.token).unwrap();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_token_file = \"{}\"\n\
             [[regions]]\nname = \"r1\"\n[[regions.nodes]]\nname = \"{}\"\nurl = \"{}\"\n\
             [limits]\nbody_bytes_max = 1024\nrate_per_ip_per_sec = 20\nrate_burst_per_ip = 20\nheader_read_timeout_ms = 500\n",
            token_file.display(),
            node.name,
            node.url
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["gateway", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(address))
            .timeout(CLIENT_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap()
    };
    let (abuser, bystander) = (from([127, 0, 0, 2]), from([127, 0, 0, 3]));
    eventually("the gateway to answer", SETTLE_TIMEOUT, || async {
        let response = bystander.get(format!("{base}/gateway/healthz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    // Request ids pass through; the served-by headers name the node.
    let traced = bystander.get(format!("{base}/healthz")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(traced.status(), 200);
    assert_eq!(traced.headers()["x-request-id"], "trace-me-42");
    assert_eq!(traced.headers()["x-served-by-node"], node.name.as_str());

    let big = abuser.post(format!("{base}/api/cafe/reservations")).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(big.status(), 413);
    let huge_head = abuser.get(format!("{base}/healthz")).header("x-padding", "y".repeat(20_000)).send().await;
    assert!(huge_head.is_err() || huge_head.unwrap().status() == 431, "an oversized head is refused");

    // Slowloris: a head sent a byte at a time never completes; the gateway closes it.
    let slowloris = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let started = Instant::now();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buffer = [0u8; 256];
        loop {
            if stream.write_all(b"X").await.is_err() {
                return started.elapsed();
            }
            tokio::select! {
                read = stream.read(&mut buffer) => {
                    // Closed (0), reset, or an error response and then closed.
                    if matches!(read, Ok(0) | Err(_)) {
                        return started.elapsed();
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the slow connection is still open");
        }
    });

    // Flood from one address: refused with 429 and Retry-After, while the bystander is served.
    let flood: Vec<_> = (0..80).map(|_| abuser.get(format!("{base}/healthz")).send()).collect();
    let answers = futures::future::join_all(flood).await;
    let refused: Vec<_> =
        answers.iter().filter_map(|answer| answer.as_ref().ok()).filter(|a| a.status() == 429).collect();
    assert!(refused.len() >= 40, "most of a burst of 80 past a limit of 20 is refused: {}", refused.len());
    assert!(refused.iter().all(|answer| answer.headers().contains_key("retry-after")));
    let served = AtomicUsize::new(0);
    for _ in 0..10 {
        if bystander.get(format!("{base}/healthz")).send().await.unwrap().status() == 200 {
            served.fetch_add(1, Ordering::SeqCst);
        }
    }
    assert_eq!(served.load(Ordering::SeqCst), 10, "another address is not limited by the flood");

    let closed_after = slowloris.await.unwrap();
    println!("slowloris connection closed after {closed_after:?}");
    assert_eq!(bystander.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    let metrics =
        bystander.get(format!("{base}/metrics")).bearer_auth(&up.token).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rananeeti_gateway_refused_total{reason=\"rate_limited\"}"), "{metrics}");
    assert!(metrics.contains("rananeeti_gateway_refused_total{reason=\"body_too_large\"}"), "{metrics}");
    let _ = kill(Pid::from_raw(gateway.id() as i32), Signal::SIGTERM);
    let _ = gateway.wait();
}

/// Writes `rananeeti gateway`'s config for `up`'s nodes and starts it; answers its URL.
async fn standalone_gateway(up: &Up, dir: &std::path::Path, name: &str) -> (std::process::Child, String) {
    let port = rananeeti::postgres::free_loopback_port().unwrap();
    let mut config = format!("listen = \"127.0.0.1:{port}\"\n");
    for region in &up.topology.regions {
        config.push_str(&format!("[[regions]]\nname = \"{}\"\n", region.name));
        for node in &region.nodes {
            config.push_str(&format!("[[regions.nodes]]\nname = \"{}\"\nurl = \"{}\"\n", node.name, node.url));
        }
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["gateway", "--config"])
        .arg(&path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the gateway to answer", SETTLE_TIMEOUT, || async {
        let response = client().get(format!("{base}/gateway/healthz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    (child, base)
}

/// Two gateways in front of the same nodes: a booking made through one is read through the
/// other, and when one gateway is killed the other goes on serving; they share no state.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_either_works() {
    let up = start_up(2, 1, "sqlite").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut first, a) = standalone_gateway(&up, dir.path(), "a").await;
    let (mut second, b) = standalone_gateway(&up, dir.path(), "b").await;
    let booked = client().post(format!("{a}/api/cafe/reservations")).json(&reservation("two", 1)).send().await.unwrap();
    assert_eq!(booked.status(), 201);
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let read = client().get(format!("{b}/api/cafe/reservations/{id}")).send().await.unwrap();
    assert_eq!(read.status(), 200, "the other gateway serves the same data");

    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).unwrap();
    let _ = first.wait();
    assert!(client().get(format!("{a}/gateway/healthz")).send().await.is_err(), "the first gateway is gone");
    for i in 2..12 {
        let booked =
            client().post(format!("{b}/api/cafe/reservations")).json(&reservation("two", i)).send().await.unwrap();
        assert_eq!(booked.status(), 201, "the second gateway goes on alone");
    }
    let _ = kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM);
    let _ = second.wait();
}
