//! `rananeeti up`: starts a deployment, writes topology.json and the admin token, restarts a node
//! that dies, keeps the data, and stops everything on SIGINT.

use crate::support::{eventually, reservation};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti::topology::Topology;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(60);

fn process_alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn topology_with_node(path: &Path, not_pid: Option<u32>) -> Topology {
    eventually("topology.json naming a running node", START_TIMEOUT, || async {
        let topology = Topology::read(path).ok()?;
        let pid = topology.regions.first()?.nodes.first()?.pid?;
        (Some(pid) != not_pid && process_alive(pid)).then_some(topology)
    })
    .await
}

async fn up_supervises_one_node(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = crate::support::free_port_run(2);
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["up", "--regions", "1", "--nodes-per-region", "1", "--store", store, "--port"])
        .arg(port.to_string())
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();

    let topology_path = data.join("topology.json");
    let topology = topology_with_node(&topology_path, None).await;
    // The gateway answers on the deployment's port; the node on the next one.
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(topology.gateway_url.as_deref(), Some(base.as_str()));
    assert_eq!(topology.regions[0].nodes[0].url, format!("http://127.0.0.1:{}", port + 1));
    let token_file = data.join("admin-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin token is readable by its owner only");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(!std::fs::read_to_string(&topology_path).unwrap().contains(&token), "no secret in topology.json");

    let client = reqwest::Client::new();
    let booked = client.post(format!("{base}/api/cafe/reservations")).json(&reservation("up", 1)).send().await.unwrap();
    assert_eq!(booked.status(), 201);
    let id = booked.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let queue = client.get(format!("{base}/admin/queue")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(queue.status(), 200, "the written token opens the admin API");

    // A node that dies is restarted, on the same port, with the same data.
    let first_pid = topology.regions[0].nodes[0].pid.unwrap();
    kill(Pid::from_raw(first_pid as i32), Signal::SIGKILL).unwrap();
    let restarted = topology_with_node(&topology_path, Some(first_pid)).await;
    let second_pid = restarted.regions[0].nodes[0].pid.unwrap();
    let status = eventually("the restarted node serving the booking", START_TIMEOUT, || async {
        let response = client.get(format!("{base}/api/cafe/reservations/{id}")).send().await.ok()?;
        (response.status() == 200).then_some(response.json::<serde_json::Value>().await.ok()?)
    })
    .await;
    assert_eq!(status["status"], "committed");

    // Ctrl-C stops the nodes (and PostgreSQL) and exits cleanly.
    kill(Pid::from_raw(up.id() as i32), Signal::SIGINT).unwrap();
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let exit = loop {
        if let Some(exit) = up.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "up did not exit after SIGINT\n{}", read_log(dir.path()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "up exits 0 after Ctrl-C: {exit:?}\n{}", read_log(dir.path()));
    assert!(!process_alive(second_pid), "the node is stopped with up");
    if let Some(database_pid) = restarted.regions[0].database.pid {
        eventually("PostgreSQL to stop with up", START_TIMEOUT, || async {
            (!process_alive(database_pid)).then_some(())
        })
        .await;
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn up_supervises_a_node_on_sqlite() {
    up_supervises_one_node("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn up_supervises_a_node_on_postgres() {
    up_supervises_one_node("postgres").await;
}
