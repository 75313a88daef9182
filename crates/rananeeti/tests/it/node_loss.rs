//! Node loss: a node that dies with its data directory deleted loses nothing it acknowledged,
//! because every queued command was copied to its peer node, which adopts the copies.

use crate::support::{eventually, post_many, reservation, StoreKind, TestStore};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti::postgres::free_loopback_port;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const WRITES: usize = 100;
const ADMIN_TOKEN: &str = "node-loss-admin";

struct PeerNode {
    name: &'static str,
    port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl PeerNode {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, dir: &Path, store: &TestStore) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}.log", self.name))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rananeeti"));
        if let Some(file) = &store.password_file {
            command.env("RANANEETI_STORE__PASSWORD_FILE", file);
        }
        let child = command
            .args(["node", "--region", "r1", "--name", self.name, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--store-url")
            .arg(&store.url)
            .arg("--admin-token-file")
            .arg(dir.join("admin-token"))
            .arg("--cluster-token-file")
            .arg(dir.join("cluster-token"))
            .arg("--queue-peer")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .env("RANANEETI_QUEUE__ADOPT_AFTER_MS", "1500")
            .env("RANANEETI_QUEUE__ADOPT_CHECK_MS", "200")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PeerNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_healthy(url: &str) {
    eventually(&format!("{url} to answer /healthz"), TIMEOUT, || async {
        let response = reqwest::get(format!("{url}/healthz")).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

async fn set_db(url: &str, state: &str) {
    let response = reqwest::Client::new()
        .post(format!("{url}/admin/faults"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "db": state }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn admin_queue(url: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/admin/queue"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn committed_rows(store_url: &str) -> HashMap<String, usize> {
    let mut connection = sqlx::AnyConnection::connect(store_url).await.unwrap();
    let mut counts = HashMap::new();
    for row in sqlx::query("SELECT id FROM cafe_reservations").fetch_all(&mut connection).await.unwrap() {
        *counts.entry(row.get::<String, _>("id")).or_insert(0) += 1;
    }
    counts
}

/// `comes_back`: the lost node is restarted with its (now empty) data directory; otherwise it
/// stays dead.
async fn a_node_lost_with_its_disk_loses_nothing_it_acknowledged(kind: StoreKind, comes_back: bool) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
    std::fs::write(dir.path().join("cluster-token"), "node-loss-cluster").unwrap();
    let store = TestStore::create(kind, dir.path());
    let store_url = store.connect_url();
    let (port_1, port_2) = (free_loopback_port().unwrap(), free_loopback_port().unwrap());
    let mut lost =
        PeerNode { name: "r1-n1", port: port_1, peer_port: port_2, data_dir: dir.path().join("n1"), child: None };
    let mut keeper =
        PeerNode { name: "r1-n2", port: port_2, peer_port: port_1, data_dir: dir.path().join("n2"), child: None };
    lost.spawn(dir.path(), &store);
    keeper.spawn(dir.path(), &store);
    wait_healthy(&lost.url()).await;
    wait_healthy(&keeper.url()).await;

    set_db(&lost.url(), "down").await;
    set_db(&keeper.url(), "down").await;
    let bodies = (0..WRITES).map(|i| reservation("node-loss", i)).collect();
    let answers = post_many(reqwest::Client::new(), lost.url(), bodies, 16, Arc::new(AtomicUsize::new(0))).await;
    let mut acknowledged = BTreeSet::new();
    for (_, answer) in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 202, "queued while the store is down: {}", answer.body);
        assert_eq!(answer.body["copied"], true, "sync durability: the peer holds a copy before 202: {}", answer.body);
        acknowledged.insert(answer.id());
    }
    assert_eq!(admin_queue(&keeper.url()).await["copies_held_for_peers"], WRITES as u64);
    // Its status can be read from the peer too.
    let one = acknowledged.iter().next().unwrap();
    let status: Value =
        reqwest::get(format!("{}/api/cafe/reservations/{one}", keeper.url())).await.unwrap().json().await.unwrap();
    assert_eq!((status["status"].as_str(), status["node"].as_str()), (Some("pending"), Some("r1-n1")), "{status}");

    // The node dies and its disk is gone.
    lost.kill9();
    std::fs::remove_dir_all(&lost.data_dir).unwrap();
    if comes_back {
        lost.spawn(dir.path(), &store);
        wait_healthy(&lost.url()).await;
        assert_eq!(admin_queue(&lost.url()).await["depth"], 0, "it came back with an empty queue");
    }
    set_db(&keeper.url(), "up").await;

    eventually("the peer to adopt and apply every copy", TIMEOUT, || async {
        let rows = committed_rows(&store_url).await;
        acknowledged.iter().all(|id| rows.contains_key(id)).then_some(())
    })
    .await;
    let rows = committed_rows(&store_url).await;
    for id in &acknowledged {
        assert_eq!(rows.get(id), Some(&1), "reservation {id} exactly once");
    }
    eventually("the adopted copies to be dropped", TIMEOUT, || async {
        (admin_queue(&keeper.url()).await["copies_held_for_peers"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_its_data_directory_deleted_loses_nothing_it_acknowledged_sqlite() {
    a_node_lost_with_its_disk_loses_nothing_it_acknowledged(StoreKind::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_back_with_an_empty_disk_loses_nothing_it_acknowledged_sqlite() {
    a_node_lost_with_its_disk_loses_nothing_it_acknowledged(StoreKind::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_its_data_directory_deleted_loses_nothing_it_acknowledged_postgres() {
    a_node_lost_with_its_disk_loses_nothing_it_acknowledged(StoreKind::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_back_with_an_empty_disk_loses_nothing_it_acknowledged_postgres() {
    a_node_lost_with_its_disk_loses_nothing_it_acknowledged(StoreKind::Postgres, true).await;
}
