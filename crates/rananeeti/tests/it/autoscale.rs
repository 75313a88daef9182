//! Autoscaling against a real `rananeeti up --regions 2 --nodes-per-region 1..3` (SQLite): a
//! CPU-heavy read load on r1 through the gateway grows r1 past one node and the gateway serves
//! from the new ones; once the load stops, r1 shrinks back to one; bookings run all along with no
//! failed request, each acknowledged one in both regions exactly once, every decision a
//! documented `scale` event.

use crate::deploy::nodes_at;
use crate::regions::{start_up_scaled, Up};
use crate::support::{eventually, reservation, Seen};
use rananeeti::topology::Topology;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Clients reading the catalog's substring search (a scan of every book) without a pause.
const HEAVY_READERS: usize = 6;
/// Between two bookings: a steady trickle, light enough that it alone keeps r1 at one node.
const WRITER_PAUSE: Duration = Duration::from_millis(50);
/// How long r1 gets to grow under the load, and to shrink once it stopped.
const GROW_TIMEOUT: Duration = Duration::from_secs(90);
const SHRINK_TIMEOUT: Duration = Duration::from_secs(90);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CLIENT_TIMEOUT).no_proxy().build().unwrap()
}

fn r1_nodes(up: &Up) -> Vec<String> {
    let topology = Topology::read(&up.data_dir().join("topology.json")).unwrap();
    topology.regions[0].nodes.iter().map(|node| node.name.clone()).collect()
}

/// r1's nodes the gateway at `base` routes to, sorted.
async fn r1_routed(up: &Up, base: &str) -> Vec<String> {
    nodes_at(up, base).await.into_iter().map(|(name, _)| name).filter(|name| name.starts_with("r1-")).collect()
}

fn heavy_readers(base: &str, stop: &Arc<AtomicBool>, seen: &Arc<Mutex<Seen>>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..HEAVY_READERS)
        .map(|_| {
            let (base, stop, seen) = (base.to_string(), Arc::clone(stop), Arc::clone(seen));
            tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::SeqCst) {
                    let answer = client.get(format!("{base}/api/books?q=e&limit=100")).send().await;
                    let outcome = match answer {
                        Ok(response) if response.status() == 200 => {
                            let node = response
                                .headers()
                                .get("x-served-by-node")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            match response.bytes().await {
                                Ok(_) => Ok(node),
                                Err(error) => Err(format!("read cut short: {error}")),
                            }
                        }
                        Ok(response) => Err(format!("read answered {}", response.status())),
                        Err(error) => Err(format!("read: {error}")),
                    };
                    let mut seen = seen.lock().unwrap();
                    match outcome {
                        Ok(node) => {
                            seen.reads_ok += 1;
                            seen.served_by.insert(node);
                        }
                        Err(failure) => seen.failures.push(failure),
                    }
                }
            })
        })
        .collect()
}

fn writer(base: &str, stop: &Arc<AtomicBool>, seen: &Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    let (base, stop, seen) = (base.to_string(), Arc::clone(stop), Arc::clone(seen));
    tokio::spawn(async move {
        let client = client();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let answer =
                client.post(format!("{base}/api/cafe/reservations")).json(&reservation("autoscale", i)).send().await;
            let outcome = match answer {
                Ok(response) if matches!(response.status().as_u16(), 201 | 202) => response
                    .json::<Value>()
                    .await
                    .map_err(|error| format!("write answer: {error}"))
                    .and_then(|body| body["id"].as_str().map(str::to_string).ok_or(format!("write answer {body}"))),
                Ok(response) => Err(format!("write answered {}", response.status())),
                Err(error) => Err(format!("write: {error}")),
            };
            match outcome {
                Ok(id) => {
                    seen.lock().unwrap().acknowledged.insert(id);
                }
                Err(failure) => seen.lock().unwrap().failures.push(failure),
            }
            tokio::time::sleep(WRITER_PAUSE).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_load_on_a_region_grows_it_up_to_max_and_it_shrinks_back_to_min_losing_nothing() {
    // A low target, so the load grows r1 on a busy shared machine; a short sample interval and
    // scale-down window so the test takes seconds, not minutes. Two gateways: the load goes
    // through the one inside `up`, the second (a process) must follow every change too.
    let flags = [
        "--log-format",
        "json",
        "--gateways",
        "2",
        "--target-cpu",
        "20",
        "--scale-sample-interval",
        "1",
        "--scale-down-window",
        "5",
    ]
    .map(str::to_string);
    let up = start_up_scaled(2, "1..3", 1, 3, &flags).await;
    assert_eq!(up.topology.gateways.len(), 2);
    let base = up.topology.gateway_url.clone().unwrap();
    assert_eq!(r1_nodes(&up), ["r1-n1"], "r1 starts at MIN");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_writer = Arc::new(AtomicBool::new(false));
    let writing = writer(&base, &stop_writer, &seen);
    let stop_load = Arc::new(AtomicBool::new(false));
    let readers = heavy_readers(&base, &stop_load, &seen);

    // Under the load r1 grows: a second node at least, up to three, never more.
    eventually("r1 to run more than one node under the load", GROW_TIMEOUT, || async {
        (r1_nodes(&up).len() > 1).then_some(())
    })
    .await;
    let mut most = 0;
    let grow_deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < grow_deadline && most < 3 {
        let listed = r1_nodes(&up);
        assert!(listed.len() <= 3, "never past MAX: {listed:?}");
        most = most.max(listed.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("r1 grew to {most} nodes: {:?}", r1_nodes(&up));
    // Every gateway routes to what topology.json lists, and reads were served by a new node.
    let listed = r1_nodes(&up);
    for gateway in &up.topology.gateways {
        eventually(
            &format!("gateway {} to route to r1's listed nodes", gateway.name),
            Duration::from_secs(10),
            || async { (r1_routed(&up, &gateway.url).await == listed).then_some(()) },
        )
        .await;
    }
    eventually("a read served by a node the autoscaler added", Duration::from_secs(10), || async {
        let served = seen.lock().unwrap().served_by.clone();
        served.iter().any(|node| node == "r1-n2" || node == "r1-n3").then_some(())
    })
    .await;

    // The load stops: r1 shrinks back to its one node (the writer goes on).
    stop_load.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    eventually("r1 back to one node once the load stopped", SHRINK_TIMEOUT, || async {
        (r1_nodes(&up) == ["r1-n1"]).then_some(())
    })
    .await;
    for gateway in &up.topology.gateways {
        eventually(
            &format!("gateway {} to route to r1-n1 alone in r1", gateway.name),
            Duration::from_secs(10),
            || async { (r1_routed(&up, &gateway.url).await == ["r1-n1"]).then_some(()) },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_writer.store(true, Ordering::SeqCst);
    writing.await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.assert_nothing_failed(20);
    for region in 0..2 {
        up.assert_each_once(region, &seen.acknowledged).await;
    }
    assert_scale_events(&up.log(), most);
}

/// `up`'s log has a documented `scale` event for each step r1 took: up to `most` nodes and back
/// to one, each `ok`, with the target and the average that decided it.
fn assert_scale_events(log: &str, most: usize) {
    let documented = crate::logs::documented_events();
    let fields = documented.get("scale").expect("docs/logs.md documents scale");
    let events: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["event"] == "scale")
        .map(|line| line["fields"].clone())
        .collect();
    for event in &events {
        for field in event.as_object().unwrap().keys() {
            assert!(
                field == "message" || field == "event" || fields.contains(field),
                "undocumented field {field}: {event}"
            );
        }
        assert_eq!(event["target_cpu_percent"], 20.0, "{event}");
        assert!(event["cpu_percent"].is_number(), "{event}");
    }
    for event in &events {
        println!("scale: {event}");
    }
    let r1: Vec<&Value> = events.iter().filter(|event| event["region"] == "r1" && event["outcome"] == "ok").collect();
    let ups = r1.iter().filter(|event| event["reason"] == "cpu_above_target").count();
    let downs = r1.iter().filter(|event| event["reason"] == "cpu_below_target").count();
    assert!(ups >= most - 1 && downs >= most - 1, "r1 went up and down again step by step: {r1:?}");
    for event in &r1 {
        let (from, to) = (event["from"].as_u64().unwrap(), event["to"].as_u64().unwrap());
        let cpu = event["cpu_percent"].as_f64().unwrap();
        if event["reason"] == "cpu_above_target" {
            assert!(to == from + 1 && cpu > 20.0, "up one node, above the target: {event}");
        } else {
            assert!(to + 1 == from && cpu < 20.0, "down one node, below the target: {event}");
        }
        assert!((1..=3).contains(&to), "within MIN..MAX: {event}");
    }
}

/// `rananeeti up` with `args`, expected to refuse them: its stderr.
async fn up_refuses(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .arg("up")
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "up {args:?} must be refused");
    assert!(!dir.path().join("data").join("topology.json").exists(), "nothing started for {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn autoscaling_flags_need_a_range_and_a_range_must_be_one() {
    let port = crate::support::free_port_run(4).to_string();
    let stderr = up_refuses(&["--nodes-per-region", "2", "--target-cpu", "20", "--port", &port]).await;
    assert!(stderr.contains("need --nodes-per-region MIN..MAX"), "{stderr}");
    let stderr = up_refuses(&["--nodes-per-region", "3..1", "--port", &port]).await;
    assert!(stderr.contains("MIN must not be above MAX"), "{stderr}");
    let stderr = up_refuses(&["--nodes-per-region", "1..3", "--target-cpu", "0", "--port", &port]).await;
    assert!(stderr.contains("--target-cpu 0"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_rolls_the_running_nodes_of_an_autoscaled_deployment_and_skips_parked_slots() {
    // A target no idle node reaches: the regions stay at MIN while the deploy runs.
    let flags = ["--target-cpu", "5000", "--scale-sample-interval", "1"].map(str::to_string);
    let up = start_up_scaled(2, "1..2", 1, 2, &flags).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .arg("deploy")
        .arg("--data")
        .arg(up.data_dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "deploy failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let topology = Topology::read(&up.data_dir().join("topology.json")).unwrap();
    let names: Vec<Vec<String>> =
        topology.regions.iter().map(|region| region.nodes.iter().map(|node| node.name.clone()).collect()).collect();
    assert_eq!(names, [["r1-n1-gen2"], ["r2-n1-gen2"]], "each region's running node was rolled, and only it");
    for region in ["r1", "r2"] {
        let parked_home = up.data_dir().join(region).join(format!("{region}-n2-b"));
        assert!(!parked_home.exists(), "no node was started for the parked slot {region}-n2");
    }
    let base = up.topology.gateway_url.clone().unwrap();
    let booked = client()
        .post(format!("{base}/api/cafe/reservations"))
        .json(&reservation("autoscale-deploy", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), 201, "a booking after the roll is committed");
}

/// `up`'s `scale` events for `region` with this `outcome`.
fn scale_events(up: &Up, region: &str, outcome: &str) -> Vec<Value> {
    up.log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|line| line["fields"].clone())
        .filter(|fields| fields["event"] == "scale" && fields["region"] == region && fields["outcome"] == outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_queue_holds_writes_is_not_removed_until_they_are_in_the_store() {
    let flags =
        ["--log-format", "json", "--target-cpu", "20", "--scale-sample-interval", "1", "--scale-down-window", "5"]
            .map(str::to_string);
    let up = start_up_scaled(2, "1..2", 1, 2, &flags).await;
    let base = up.topology.gateway_url.clone().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_load = Arc::new(AtomicBool::new(false));
    let readers = heavy_readers(&base, &stop_load, &seen);
    eventually("r1 to run two nodes under the load", GROW_TIMEOUT, || async {
        (r1_nodes(&up) == ["r1-n1", "r1-n2"]).then_some(())
    })
    .await;
    stop_load.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    // The added node's store goes down and it queues writes: it must not be removed now.
    let topology = Topology::read(&up.data_dir().join("topology.json")).unwrap();
    let added = topology.regions[0].nodes.iter().find(|node| node.name == "r1-n2").unwrap().clone();
    crate::deploy::set_store(&up, &added, "down").await;
    let mut queued = BTreeSet::new();
    for i in 0..5 {
        let answer = client()
            .post(format!("{}/api/cafe/reservations", added.url))
            .json(&reservation("autoscale-queued", i))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202, "with its store down, r1-n2 queues the booking");
        let body: Value = answer.json().await.unwrap();
        queued.insert(body["id"].as_str().unwrap().to_string());
    }
    let refused = eventually("a refused scale down of r1", SHRINK_TIMEOUT, || async {
        scale_events(&up, "r1", "failed").into_iter().next()
    })
    .await;
    assert!(
        refused["error"].as_str().unwrap().contains("r1-n2 is not removed"),
        "the refusal names the node and why: {refused}"
    );
    assert_eq!(r1_nodes(&up), ["r1-n1", "r1-n2"], "r1-n2 still runs, listed");
    assert!(
        nodes_at(&up, &base).await.contains(&("r1-n2".to_string(), false)),
        "and the gateway routes to it, undrained"
    );

    // Its store back, its queue drains, and then it goes.
    crate::deploy::set_store(&up, &added, "up").await;
    eventually("r1 back to one node once r1-n2's queue drained", SHRINK_TIMEOUT, || async {
        (r1_nodes(&up) == ["r1-n1"]).then_some(())
    })
    .await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.failures.is_empty(), "reads failed: {:?}", &seen.failures[..seen.failures.len().min(10)]);
    for region in 0..2 {
        up.assert_each_once(region, &queued).await;
    }
}
