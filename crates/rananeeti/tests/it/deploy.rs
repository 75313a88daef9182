//! `rananeeti deploy` against a real `rananeeti up` (2 regions x 2 nodes, SQLite): two rolls
//! under steady reads and bookings through the gateway (the same binary, then a copy of it) with
//! no failed request, every node replaced each time, every acknowledged booking in both regions
//! exactly once; `--dry-run` changes nothing; a new binary that cannot start stops the roll with
//! the old nodes serving.

use crate::regions::{start_up, start_up_with_args, Up};
use crate::support::{reservation, Seen};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use rananeeti::topology::{NodeTopology, Topology};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
const WRITERS: usize = 3;
const READERS: usize = 2;
/// Between two requests of one client: steady, not a flood, on a machine shared with others.
const CLIENT_PAUSE: Duration = Duration::from_millis(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CLIENT_TIMEOUT).no_proxy().build().unwrap()
}

/// `WRITERS` clients booking and `READERS` clients reading the catalog through the gateway,
/// one request after another each, until `stop`.
fn steady_traffic(base: &str, stop: &Arc<AtomicBool>, seen: &Arc<Mutex<Seen>>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS + READERS)
        .map(|worker| {
            let (base, stop, seen) = (base.to_string(), Arc::clone(stop), Arc::clone(seen));
            tokio::spawn(async move {
                let client = client();
                let writes = worker < WRITERS;
                let mut i = worker * 20_000;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    if writes {
                        let answer = client
                            .post(format!("{base}/api/cafe/reservations"))
                            .json(&reservation("deploy", i))
                            .send()
                            .await;
                        let outcome = match answer {
                            Ok(response) if matches!(response.status().as_u16(), 201 | 202) => response
                                .json::<Value>()
                                .await
                                .map_err(|error| format!("write answer: {error}"))
                                .and_then(|body| {
                                    body["id"].as_str().map(str::to_string).ok_or(format!("write answer {body}"))
                                }),
                            Ok(response) => Err(format!("write answered {}", response.status())),
                            Err(error) => Err(format!("write: {error}")),
                        };
                        let mut seen = seen.lock().unwrap();
                        match outcome {
                            Ok(id) => {
                                seen.acknowledged.insert(id);
                            }
                            Err(failure) => seen.failures.push(failure),
                        }
                    } else {
                        let answer = client.get(format!("{base}/api/books?limit=5")).send().await;
                        let mut seen = seen.lock().unwrap();
                        match answer {
                            Ok(response) if response.status() == 200 => seen.reads_ok += 1,
                            Ok(response) => seen.failures.push(format!("read answered {}", response.status())),
                            Err(error) => seen.failures.push(format!("read: {error}")),
                        }
                    }
                    tokio::time::sleep(CLIENT_PAUSE).await;
                }
            })
        })
        .collect()
}

fn nodes(topology: &Topology) -> Vec<NodeTopology> {
    topology.regions.iter().flat_map(|region| region.nodes.clone()).collect()
}

fn pids(topology: &Topology) -> BTreeSet<u32> {
    nodes(topology).iter().map(|node| node.pid.expect("every node runs")).collect()
}

/// `rananeeti deploy --data DIR` with `extra` flags: its exit status, stdout and stderr.
async fn deploy(data: &Path, extra: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .arg("deploy")
        .arg("--data")
        .arg(data)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn topology(up: &Up) -> Topology {
    Topology::read(&up.data_dir().join("topology.json")).unwrap()
}

/// Which nodes the deployment's (first) gateway routes to, and whether any is drained.
async fn gateway_nodes(up: &Up) -> Vec<(String, bool)> {
    nodes_at(up, &up.topology.gateway_url.clone().unwrap()).await
}

/// Which nodes the gateway at `base` routes to, and whether any is drained.
pub(crate) async fn nodes_at(up: &Up, base: &str) -> Vec<(String, bool)> {
    let view: Value = client()
        .get(format!("{base}/admin/topology"))
        .bearer_auth(&up.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut nodes: Vec<(String, bool)> = view["regions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|region| region["nodes"].as_array().unwrap().clone())
        .map(|node| (node["name"].as_str().unwrap().to_string(), node["drained"] == true))
        .collect();
    nodes.sort();
    nodes
}

fn names(topology: &Topology) -> Vec<(String, bool)> {
    let mut names: Vec<(String, bool)> = nodes(topology).into_iter().map(|node| (node.name, false)).collect();
    names.sort();
    names
}

/// The executable a process runs.
fn executable_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rolls_under_load_replace_every_node_and_lose_nothing() {
    // Two gateways: the one inside `up` takes the load, the second is a process of its own.
    let flags = ["--log-format", "json", "--gateways", "2"].map(str::to_string);
    let up = start_up_with_args(2, 2, "sqlite", &flags).await;
    assert_eq!(up.topology.gateways.len(), 2);
    let data = up.data_dir();
    let base = up.topology.gateway_url.clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients = steady_traffic(&base, &stop, &seen);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A copy of the binary: the second roll must move every node onto it.
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("rananeeti-next");
    std::fs::copy(env!("CARGO_BIN_EXE_rananeeti"), &copy).unwrap();
    let copy = std::fs::canonicalize(&copy).unwrap();

    // topology.json read all along the rolls: always whole, four or five nodes (a slot's two
    // while they overlap), each with a pid.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (path, watching) = (data.join("topology.json"), Arc::clone(&watching));
        tokio::spawn(async move {
            let mut names_seen = BTreeSet::new();
            while watching.load(Ordering::SeqCst) {
                let topology = Topology::read(&path).expect("topology.json is always whole");
                let listed = nodes(&topology);
                assert!((4..=5).contains(&listed.len()), "four or five nodes listed: {listed:?}");
                assert!(listed.iter().all(|node| node.pid.is_some()), "every listed node has a pid: {listed:?}");
                names_seen.extend(listed.into_iter().map(|node| node.name));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            names_seen
        })
    };
    let mut before = topology(&up);
    for (roll, extra) in [vec![], vec!["--binary", copy.to_str().unwrap()]].iter().enumerate() {
        let (ok, stdout, stderr) = deploy(&data, extra).await;
        assert!(ok, "roll {roll} failed:\n{stdout}\n{stderr}\n{}", up.log());
        assert!(stdout.contains("deploy done"), "roll {roll} output:\n{stdout}");
        let after = topology(&up);
        assert_eq!(nodes(&after).len(), 4, "roll {roll}: four nodes listed after it: {after:?}");
        assert!(
            pids(&before).is_disjoint(&pids(&after)),
            "roll {roll}: every node's pid changed: {:?} then {:?}",
            pids(&before),
            pids(&after)
        );
        for node in nodes(&after) {
            let pid = node.pid.unwrap();
            assert!(kill(Pid::from_raw(pid as i32), None).is_ok(), "{} (pid {pid}) runs", node.name);
        }
        for gateway in &after.gateways {
            let routed = nodes_at(&up, &gateway.url).await;
            assert_eq!(routed, names(&after), "roll {roll}: gateway {} routes to the nodes listed", gateway.name);
        }
        before = after;
    }
    for node in nodes(&before) {
        assert_eq!(executable_of(node.pid.unwrap()), copy, "{} runs the new binary", node.name);
    }
    watching.store(false, Ordering::SeqCst);
    let names_seen = watcher.await.unwrap();
    for slot in ["r1-n1", "r1-n2", "r2-n1", "r2-n2"] {
        for name in [slot.to_string(), format!("{slot}-gen2"), format!("{slot}-gen3")] {
            assert!(names_seen.contains(&name), "topology.json listed {name} at some point: {names_seen:?}");
        }
    }

    // Load goes on across the last roll's end for a moment, then stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.assert_nothing_failed(20);
    assert!(seen.reads_ok >= 20, "the readers read: {}", seen.reads_ok);
    for region in 0..2 {
        up.assert_each_once(region, &seen.acknowledged).await;
    }
    assert_steps_logged(&up.log(), 2 * 4);
}

/// `up`'s JSON log has each step of every slot's roll `rolls` times, as `deploy_step` events
/// with only the fields docs/logs.md documents.
fn assert_steps_logged(log: &str, rolls: usize) {
    let documented = crate::logs::documented_events();
    let fields = documented.get("deploy_step").expect("docs/logs.md documents deploy_step");
    let steps: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["event"] == "deploy_step")
        .collect();
    for step in &steps {
        for field in step["fields"].as_object().unwrap().keys() {
            assert!(
                field == "message" || field == "event" || fields.contains(field),
                "undocumented field {field}: {step}"
            );
        }
        assert_eq!(step["fields"]["outcome"], "ok", "{step}");
    }
    for name in ["start_new", "ready", "added", "draining", "drained", "queue_empty", "stopped", "removed", "done"] {
        let count = steps.iter().filter(|step| step["fields"]["step"] == name).count();
        assert_eq!(count, rolls, "deploy_step {name} once per slot and roll");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let up = start_up(2, 2, "sqlite").await;
    let before = topology(&up);
    let (ok, stdout, stderr) = deploy(&up.data_dir(), &["--dry-run"]).await;
    assert!(ok, "dry run failed:\n{stdout}\n{stderr}");
    for node in nodes(&before) {
        assert!(
            stdout.contains(&format!("would replace {} (pid {})", node.name, node.pid.unwrap())),
            "the plan names {}:\n{stdout}",
            node.name
        );
    }
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    // Whatever a roll would have started, it would be listed by now (its first step is at once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topology(&up), before, "topology.json is unchanged");
    assert_eq!(gateway_nodes(&up).await, names(&before), "the gateway routes to the same nodes, none drained");
    for node in nodes(&before) {
        let region = &node.name[..2];
        let second_home = up.data_dir().join(region).join(format!("{}-b", node.name));
        assert!(!second_home.exists(), "no node was started in {}", second_home.display());
    }
    assert!(up.data_dir().join("r1").join("r1-n1").exists(), "the first homes are where the nodes run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_binary_that_cannot_start_stops_the_roll_and_the_old_nodes_serve() {
    let up = start_up(2, 2, "sqlite").await;
    let before = topology(&up);
    let (ok, stdout, stderr) = deploy(&up.data_dir(), &["--binary", "/bin/false"]).await;
    assert!(!ok, "a roll onto /bin/false must fail:\n{stdout}\n{stderr}");
    assert!(stderr.contains("keeps serving"), "the error says the old node keeps serving:\n{stderr}");
    assert_eq!(stdout.matches("starting ").count(), 1, "the roll stopped at its first node:\n{stdout}");

    assert_eq!(topology(&up), before, "topology.json lists the old nodes, with their pids");
    for node in nodes(&before) {
        let pid = node.pid.unwrap();
        assert!(kill(Pid::from_raw(pid as i32), None).is_ok(), "{} (pid {pid}) still runs", node.name);
    }
    assert_eq!(gateway_nodes(&up).await, names(&before), "the gateway routes to the old nodes, none drained");
    let base = up.topology.gateway_url.clone().unwrap();
    let booked = client()
        .post(format!("{base}/api/cafe/reservations"))
        .json(&reservation("deploy-failed", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), 201, "a booking after the failed roll is committed");
    let read = client().get(format!("{base}/api/books?limit=5")).send().await.unwrap();
    assert_eq!(read.status(), 200);
}

/// POST /admin/faults on one node.
pub(crate) async fn set_store(up: &Up, node: &NodeTopology, state: &str) {
    let response = client()
        .post(format!("{}/admin/faults", node.url))
        .bearer_auth(&up.token)
        .json(&serde_json::json!({ "db": state }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "db {state} on {}", node.name);
    // (A node's faults are its own: the roll's new node starts without them.)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_queued_writes_is_not_rolled_until_they_are_in_the_store() {
    let up = start_up(2, 2, "sqlite").await;
    // A first roll moves every node, its queue peer included, to its other port.
    let (ok, stdout, stderr) = deploy(&up.data_dir(), &[]).await;
    assert!(ok, "the first roll:\n{stdout}\n{stderr}");
    let before = topology(&up);
    let first = before.regions[0].nodes[0].clone();
    set_store(&up, &first, "down").await;
    let mut queued = BTreeSet::new();
    for i in 0..5 {
        let answer = client()
            .post(format!("{}/api/cafe/reservations", first.url))
            .json(&reservation("deploy-queued", i))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202, "with its store down, {} queues the booking", first.name);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["copied"], true, "the queue peer, moved by the roll, still holds a copy: {body}");
        queued.insert(body["id"].as_str().unwrap().to_string());
    }

    let (ok, stdout, stderr) = deploy(&up.data_dir(), &[]).await;
    assert!(!ok, "a node with queued writes must not be rolled:\n{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("{} is not rolled", first.name)), "{stderr}");
    assert_eq!(topology(&up), before, "nothing changed");

    set_store(&up, &first, "up").await;
    // As the refusal says: deploy again once the store is back and the queue drained.
    crate::support::eventually("the node's store up and its queue empty", Duration::from_secs(30), || async {
        let readyz: Value = client().get(format!("{}/readyz", first.url)).send().await.ok()?.json().await.ok()?;
        (readyz["store"] == "up" && readyz["queue_depth"] == 0).then_some(())
    })
    .await;
    let (ok, stdout, stderr) = deploy(&up.data_dir(), &[]).await;
    assert!(ok, "once its queue drained, the roll goes through:\n{stdout}\n{stderr}\n{}", up.log());
    assert!(pids(&before).is_disjoint(&pids(&topology(&up))), "every node was replaced");
    for region in 0..2 {
        up.assert_each_once(region, &queued).await;
    }
}
