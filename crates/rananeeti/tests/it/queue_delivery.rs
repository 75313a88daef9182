//! What the drainer does with a queue that holds more than it can deliver now, on a real
//! `rananeeti up` of two regions whose r2 node's queue is filled on disk while it is down (its
//! supervisor paused so it is not restarted meanwhile), then started again:
//! - a forwarded write its owner refuses for good ends *rejected* with the owner's reason, and the
//!   owner's later writes go through (issue 11, defect 2: it blocked that owner's queue forever);
//! - writes held for an owner that cannot be reached do not starve the local writes behind them
//!   (defect 3: the drainer read a fixed window of 256 at the head);
//! - one corrupt value is skipped, reported by seq in `/admin/queue` and a metric, kept on disk,
//!   and everything else drains and backs up (defect 4: `peek` failed for good).

use crate::regions::{start_up, Up};
use crate::support::{booking_year, eventually, metric_value};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti_platform::{Command, CommandId, Hlc};
use rananeeti_queue::{Queue, QueueConfig};
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::path::PathBuf;
use std::time::Duration;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A node of `up` stopped with its supervisor paused, so its queue on disk can be changed; both
/// run again when this is dropped (also when the test fails).
pub(crate) struct Surgery<'a> {
    up: &'a Up,
    paused: Vec<u32>,
}

impl<'a> Surgery<'a> {
    pub(crate) fn stop(up: &'a Up, region: usize) -> Surgery<'a> {
        let supervisor = up.child.id();
        kill(Pid::from_raw(supervisor as i32), Signal::SIGSTOP).unwrap();
        let node = up.topology.regions[region].nodes[0].pid.expect("the node runs");
        kill(Pid::from_raw(node as i32), Signal::SIGKILL).unwrap();
        // Dead (a zombie until the paused supervisor reaps it): its files are closed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{node}/stat")).is_ok_and(|stat| !stat.contains(") Z ")) {
            assert!(std::time::Instant::now() < deadline, "node {node} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
        Surgery { up, paused: vec![supervisor] }
    }

    /// Freezes `region`'s node as well (an owner that cannot answer).
    pub(crate) fn freeze(&mut self, region: usize) {
        let pid = self.up.topology.regions[region].nodes[0].pid.expect("the node runs");
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        self.paused.push(pid);
    }

    /// Lets the supervisor restart the stopped node.
    pub(crate) fn restart(&mut self) {
        let supervisor = self.up.child.id();
        kill(Pid::from_raw(supervisor as i32), Signal::SIGCONT).unwrap();
        self.paused.retain(|pid| *pid != supervisor);
    }
}

impl Drop for Surgery<'_> {
    fn drop(&mut self) {
        for pid in &self.paused {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
        }
    }
}

pub(crate) fn queue_dir(up: &Up, region: usize) -> PathBuf {
    let data = PathBuf::from(&up.topology.regions[region].database.url.trim_start_matches("sqlite://"))
        .parent()
        .unwrap()
        .to_path_buf();
    data.join(format!("r{}-n1", region + 1)).join("queue")
}

/// A command as an r2 node would have queued it.
pub(crate) fn command(kind: &str, id: CommandId, payload: Value, hlc: u64) -> Command {
    Command {
        kind: kind.to_string(),
        id,
        payload,
        origin_region: "r2".into(),
        origin_node: "r2-n1".into(),
        hlc: Hlc(hlc),
        request: None,
    }
}

pub(crate) fn closure(day: &str, reason: &str) -> Value {
    json!({ "day": day, "closed": true, "reason": reason, "replaces_hlc": 0 })
}

fn reservation(name: &str) -> Value {
    json!({ "name": name, "party_size": 2, "time": format!("{}-07-01T19:30", booking_year()), "notes": "" })
}

async fn enqueue(dir: &PathBuf, commands: &[Command]) {
    let queue = Queue::open(QueueConfig::new(dir)).unwrap();
    let now = rananeeti_platform::hlc::wall_clock_ms() as i64;
    for command in commands {
        queue.enqueue(*command.id.as_bytes(), now, serde_json::to_vec(command).unwrap()).await.unwrap();
    }
}

pub(crate) async fn node_url_after_restart(up: &Up, region: usize) -> String {
    let url = up.topology.regions[region].nodes[0].url.clone();
    eventually("the node to serve again", DRAIN_TIMEOUT, || async {
        let ready = reqwest::get(format!("{url}/readyz")).await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    url
}

pub(crate) async fn queue_of(url: &str, token: &str) -> Value {
    let client = reqwest::Client::new();
    client.get(format!("{url}/admin/queue")).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

async fn command_status(url: &str, id: &CommandId) -> Value {
    reqwest::get(format!("{url}/api/commands/{id}")).await.unwrap().json().await.unwrap_or(Value::Null)
}

async fn closures_in(up: &Up, region: usize) -> Vec<String> {
    let mut connection = sqlx::AnyConnection::connect(&up.topology.regions[region].database.url).await.unwrap();
    let rows = sqlx::query("SELECT day FROM cafe_closures ORDER BY day").fetch_all(&mut connection).await.unwrap();
    rows.iter().map(|row| row.get::<String, _>("day")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_write_its_owner_refuses_for_good_is_rejected_and_the_owners_later_writes_go_through() {
    let up = start_up(2, 1, "sqlite").await;
    let year = booking_year();
    let refused = command("cafe.set_closure", CommandId::digest("test", b"refused"), json!({ "garbage": true }), 1);
    let behind = command(
        "cafe.set_closure",
        CommandId::digest("test", b"behind"),
        closure(&format!("{year}-03-04"), "behind a refused one"),
        2,
    );
    let mut surgery = Surgery::stop(&up, 1);
    enqueue(&queue_dir(&up, 1), &[refused.clone(), behind.clone()]).await;
    surgery.restart();

    let r2 = node_url_after_restart(&up, 1).await;
    eventually("r2's queue to drain", DRAIN_TIMEOUT, || async {
        (queue_of(&r2, &up.token).await["depth"] == 0).then_some(())
    })
    .await;
    let status = command_status(&r2, &refused.id).await;
    assert_eq!(status["status"], "rejected", "{status}");
    assert!(status["reason"].as_str().unwrap().contains("refused by region r1"), "{status}");
    assert_eq!(closures_in(&up, 0).await, vec![format!("{year}-03-04")], "the write behind it reached its owner");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_held_for_an_unreachable_owner_do_not_starve_the_local_writes_behind_them() {
    const HELD: usize = 300;
    let up = start_up(2, 1, "sqlite").await;
    let year = booking_year();
    let mut commands: Vec<Command> = (0..HELD)
        .map(|i| {
            let day = format!("{year}-{:02}-{:02}", 1 + i / 28, 1 + i % 28);
            command("cafe.set_closure", CommandId::digest("test", day.as_bytes()), closure(&day, "held"), i as u64 + 1)
        })
        .collect();
    let local = command("cafe.reserve", CommandId::digest("test", b"local"), reservation("Behind"), HELD as u64 + 1);
    commands.push(local.clone());
    let mut surgery = Surgery::stop(&up, 1);
    surgery.freeze(0);
    enqueue(&queue_dir(&up, 1), &commands).await;
    surgery.restart();

    let r2 = node_url_after_restart(&up, 1).await;
    let status = eventually("the local write behind the held ones to be applied", DRAIN_TIMEOUT, || async {
        let status = command_status(&r2, &local.id).await;
        (status["status"] == "committed").then_some(status)
    })
    .await;
    assert_eq!(status["stored_in"], "store");
    assert_eq!(queue_of(&r2, &up.token).await["depth"], HELD as u64, "the owner's writes wait for it, in the queue");

    // The owner is back: its writes follow, all of them.
    drop(surgery);
    eventually("the held writes to reach their owner", DRAIN_TIMEOUT, || async {
        (queue_of(&r2, &up.token).await["depth"] == 0).then_some(())
    })
    .await;
    assert_eq!(closures_in(&up, 0).await.len(), HELD);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_corrupt_queue_entry_is_skipped_reported_and_kept_while_the_rest_drains() {
    let up = start_up(2, 1, "sqlite").await;
    let bookings: Vec<Command> = (0..3)
        .map(|i| {
            let name = format!("Corrupt test {i}");
            command("cafe.reserve", CommandId::digest("test", name.as_bytes()), reservation(&name), i + 1)
        })
        .collect();
    let mut surgery = Surgery::stop(&up, 1);
    let dir = queue_dir(&up, 1);
    enqueue(&dir, &bookings).await;
    // Damage the middle entry's value as a failing disk would, past fjall's own checks.
    {
        let keyspace = fjall::Config::new(&dir).open().unwrap();
        let entries = keyspace.open_partition("entries", fjall::PartitionCreateOptions::default()).unwrap();
        let (key, value) = entries.iter().nth(1).unwrap().unwrap();
        let mut value = value.to_vec();
        let last = value.len() - 1;
        value[last] ^= 1;
        entries.insert(key, value).unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    surgery.restart();

    let r2 = node_url_after_restart(&up, 1).await;
    for booking in [&bookings[0], &bookings[2]] {
        eventually("the readable entries to drain", DRAIN_TIMEOUT, || async {
            (command_status(&r2, &booking.id).await["status"] == "committed").then_some(())
        })
        .await;
    }
    let queue = queue_of(&r2, &up.token).await;
    assert_eq!(queue["depth"], 1, "the corrupt entry is kept for an operator: {queue}");
    let corrupt = queue["corrupt"].as_array().expect("corrupt entries are listed");
    assert_eq!(corrupt.len(), 1, "{queue}");
    assert!(corrupt[0]["reason"].as_str().unwrap().contains("checksum"), "{queue}");
    let metrics = reqwest::get(format!("{r2}/metrics")).await.unwrap().text().await.unwrap();
    assert_eq!(metric_value(&metrics, "rananeeti_queue_corrupt_entries"), Some(1.0), "{metrics}");

    // The queue's export (what a backup reads) goes on past it too.
    let export =
        reqwest::Client::new().get(format!("{r2}/admin/queue/export")).bearer_auth(&up.token).send().await.unwrap();
    assert_eq!(export.status(), 200);
    drop(surgery);
}
