//! Store outages (injected, PostgreSQL really stopped, SQLite locked by another writer): every
//! write is answered within the budget, queued, and committed exactly once when the store is back.

use crate::support::{
    assert_each_reported_committed, post_many, reservation, Deployment, Node, StoreKind, SUBMIT_BUDGET,
};
use serde_json::json;
use sqlx::Connection;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes sent during each outage.
const OUTAGE_WRITES: usize = 500;
/// Requests in flight at once.
const IN_FLIGHT_MAX: usize = 100;
/// What HTTP and a busy 2-core machine may add to the submit budget. This checks the budget
/// contract (promise 2) for gross violations, such as waiting on a dead database; it is not a
/// benchmark, so it is generous.
const HTTP_ALLOWANCE: Duration = Duration::from_millis(1500);
/// How long a new write may take to be committed (not only queued) once the store is back.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `count` reservations at once while the store is out and checks that each is answered
/// 202 pending within the budget. Returns their ids.
async fn write_during_outage(node: &Node, tag: &str, count: usize) -> BTreeSet<String> {
    let bodies = (0..count).map(|i| reservation(tag, i)).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let results = post_many(node.client.clone(), node.base.clone(), bodies, IN_FLIGHT_MAX, answered).await;
    assert_eq!(results.len(), count);

    let mut ids = BTreeSet::new();
    let mut wrong = Vec::new();
    let mut slowest = Duration::ZERO;
    for (body, result) in &results {
        match result {
            Ok(answer) if answer.status == 202 && answer.body["status"] == "pending" => {
                slowest = slowest.max(answer.latency);
                if answer.latency > SUBMIT_BUDGET + HTTP_ALLOWANCE {
                    wrong.push(format!("{body}: answered after {:?}", answer.latency));
                }
                assert!(ids.insert(answer.id()), "two different writes got the same id {}", answer.id());
            }
            Ok(answer) => wrong.push(format!("{body}: {} {}", answer.status, answer.body)),
            Err(error) => wrong.push(format!("{body}: {error}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {count} writes during the outage were not answered 202 pending within {:?} (+{:?} for HTTP); \
         first ones:\n{}{}",
        wrong.len(),
        SUBMIT_BUDGET,
        HTTP_ALLOWANCE,
        wrong.iter().take(10).cloned().collect::<Vec<_>>().join("\n"),
        node.log_tail()
    );
    eprintln!("{tag}: {count} writes answered 202 pending; slowest answer {slowest:?}");
    ids
}

async fn outage_with_fault_injected(kind: StoreKind) {
    let deployment = Deployment::start(kind).await;
    let node = &deployment.node;
    node.set_faults(json!({ "db": "down" })).await;

    let ids = write_during_outage(node, "fault", OUTAGE_WRITES).await;
    assert_eq!(node.queue_depth().await, OUTAGE_WRITES as u64, "every pending write waits in the queue");

    node.set_faults(json!({ "db": "up" })).await;
    node.wait_until_drained().await;
    deployment.store.assert_each_committed_once(&ids).await;
    assert_eq!(deployment.store.reservation_rows().await.len(), OUTAGE_WRITES);
    assert_each_reported_committed(node, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outage_with_fault_injected_every_write_answered_and_committed_once_sqlite() {
    outage_with_fault_injected(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outage_with_fault_injected_every_write_answered_and_committed_once_postgres() {
    outage_with_fault_injected(StoreKind::Postgres).await;
}

/// A real PostgreSQL crash: the node must queue, drain once it is back, and its pools must
/// reconnect so that new writes commit again instead of queueing forever (sqlx issue 2763).
#[tokio::test(flavor = "multi_thread")]
async fn outage_with_postgres_really_stopped_every_write_answered_and_committed_once_then_writes_commit_again() {
    let deployment = Deployment::start(StoreKind::Postgres).await;
    let node = &deployment.node;
    // The node has connected and migrated; its pooled connections die with the server.
    let first = node.reserve(&reservation("before-crash", 0)).await.unwrap();
    assert_eq!(first.status, 201, "with PostgreSQL up a write commits: {}", first.body);
    let mut ids = BTreeSet::from([first.id()]);

    deployment.store.pg_stop_immediate();
    ids.extend(write_during_outage(node, "pg-stopped", OUTAGE_WRITES).await);
    assert_eq!(node.queue_depth().await, OUTAGE_WRITES as u64, "every pending write waits in the queue");

    deployment.store.pg_start();
    node.wait_until_drained().await;

    let deadline = Instant::now() + RECONNECT_TIMEOUT;
    let mut attempt = 0;
    loop {
        let answer = node.reserve(&reservation("after-restart", attempt)).await.unwrap();
        assert!(answer.acknowledged(), "a write after the restart was refused: {} {}", answer.status, answer.body);
        ids.insert(answer.id());
        if answer.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} writes after PostgreSQL restarted were all only queued, none committed within {:?}: \
             the store pools did not reconnect{}",
            attempt + 1,
            RECONNECT_TIMEOUT,
            node.log_tail()
        );
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    node.wait_until_drained().await;
    deployment.store.assert_each_committed_once(&ids).await;
    assert_eq!(deployment.store.reservation_rows().await.len(), ids.len());
    assert_each_reported_committed(node, &ids).await;
}

/// A real SQLite outage. Running as root, permissions do not stop the node from opening the file,
/// so the outage is another process holding SQLite's write lock (as a long migration, a backup
/// tool or a stuck writer would): the node's writes see SQLITE_BUSY or run out of budget.
#[tokio::test(flavor = "multi_thread")]
async fn outage_with_sqlite_locked_by_another_writer_every_write_answered_and_committed_once() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;
    let first = node.reserve(&reservation("before-lock", 0)).await.unwrap();
    assert_eq!(first.status, 201, "with SQLite free a write commits: {}", first.body);
    let mut ids = BTreeSet::from([first.id()]);

    let path = deployment.store.sqlite_path.as_ref().unwrap();
    let mut locker = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();

    ids.extend(write_during_outage(node, "sqlite-locked", OUTAGE_WRITES).await);
    assert_eq!(node.queue_depth().await, OUTAGE_WRITES as u64, "every pending write waits in the queue");
    assert_eq!(
        deployment.store.command_rows().await.len(),
        1,
        "nothing can have been committed while another writer held the lock"
    );

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();
    node.wait_until_drained().await;
    deployment.store.assert_each_committed_once(&ids).await;
    assert_eq!(deployment.store.reservation_rows().await.len(), ids.len());
    assert_each_reported_committed(node, &ids).await;
}
