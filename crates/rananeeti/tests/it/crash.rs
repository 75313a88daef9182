//! `kill -9` of a node while it takes writes, and a torn fallback-queue record on disk: nothing
//! acknowledged is lost or applied twice, and a torn tail is dropped and logged at start.

use crate::support::{post_many, reservation, Deployment, Node, StoreKind};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes sent in each crash test.
const CRASH_WRITES: usize = 300;
/// Answers to wait for before the kill, so that it lands with writes in flight.
const ANSWERS_BEFORE_KILL: usize = 100;
const IN_FLIGHT_MAX: usize = 30;
/// How long the first answers may take to arrive.
const ANSWERS_TIMEOUT: Duration = Duration::from_secs(60);

/// What the writes cut short by a kill got.
struct Acknowledged {
    /// Ids answered 201 committed or 202 pending.
    ids: BTreeSet<String>,
    /// How many of them were answered 201 committed.
    committed: usize,
}

/// Sends `CRASH_WRITES` reservations, SIGKILLs the node once `ANSWERS_BEFORE_KILL` are answered,
/// and returns what was acknowledged.
async fn write_and_kill(node: &mut Node, tag: &str) -> Acknowledged {
    let bodies: Vec<Value> = (0..CRASH_WRITES).map(|i| reservation(tag, i)).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let writes =
        tokio::spawn(post_many(node.client.clone(), node.base.clone(), bodies, IN_FLIGHT_MAX, Arc::clone(&answered)));
    let deadline = Instant::now() + ANSWERS_TIMEOUT;
    while answered.load(Ordering::SeqCst) < ANSWERS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} of {CRASH_WRITES} writes answered within {ANSWERS_TIMEOUT:?}{}",
            answered.load(Ordering::SeqCst),
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    node.kill9();
    let results = writes.await.unwrap();

    let mut acknowledged = Acknowledged { ids: BTreeSet::new(), committed: 0 };
    let mut unanswered = 0;
    for (body, result) in &results {
        match result {
            Ok(answer) if answer.acknowledged() => {
                acknowledged.ids.insert(answer.id());
                acknowledged.committed += usize::from(answer.status == 201);
            }
            Ok(answer) => {
                panic!("{body} was answered {} {} (neither committed nor pending)", answer.status, answer.body)
            }
            Err(_) => unanswered += 1,
        }
    }
    assert!(
        unanswered > 0,
        "all {CRASH_WRITES} writes were answered before the kill: it did not land with writes in flight"
    );
    eprintln!(
        "{tag}: {} writes acknowledged ({} committed), {unanswered} unanswered when the node was killed",
        acknowledged.ids.len(),
        acknowledged.committed
    );
    assert!(acknowledged.ids.len() >= ANSWERS_BEFORE_KILL);
    acknowledged
}

/// After the restart: the queue drains, every acknowledged write is committed exactly once, and
/// nothing is stored that was not sent.
async fn assert_nothing_lost(deployment: &Deployment, acknowledged: &BTreeSet<String>) {
    deployment.node.wait_until_drained().await;
    deployment.store.assert_each_committed_once(acknowledged).await;
    let stored = deployment.store.reservation_rows().await.len();
    assert!(
        (acknowledged.len()..=CRASH_WRITES).contains(&stored),
        "{stored} reservations stored: fewer than the {} acknowledged or more than the {CRASH_WRITES} sent",
        acknowledged.len()
    );
}

async fn kill_9_while_taking_pending_writes(kind: StoreKind) {
    let mut deployment = Deployment::start(kind).await;
    deployment.node.set_faults(json!({ "db": "down" })).await;

    let acknowledged = write_and_kill(&mut deployment.node, "pending-kill").await;
    assert_eq!(acknowledged.committed, 0, "nothing commits while the store is down");

    deployment.node.restart().await;
    // Faults live in memory: the restarted node sees the store up and drains.
    let faults: Value = deployment.node.admin_get("/admin/faults").send().await.unwrap().json().await.unwrap();
    assert_eq!(faults["db"], "up", "a restarted node starts without faults: {faults}");
    assert_nothing_lost(&deployment, &acknowledged.ids).await;
}

async fn kill_9_while_committing_writes(kind: StoreKind) {
    let mut deployment = Deployment::start(kind).await;

    let acknowledged = write_and_kill(&mut deployment.node, "commit-kill").await;
    assert!(acknowledged.committed > 0, "with the store up, writes commit before the kill");

    deployment.node.restart().await;
    assert_nothing_lost(&deployment, &acknowledged.ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_taking_pending_writes_loses_nothing_sqlite() {
    kill_9_while_taking_pending_writes(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_taking_pending_writes_loses_nothing_postgres() {
    kill_9_while_taking_pending_writes(StoreKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_committing_writes_loses_nothing_sqlite() {
    kill_9_while_committing_writes(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_committing_writes_loses_nothing_postgres() {
    kill_9_while_committing_writes(StoreKind::Postgres).await;
}

/// Pending writes taken before the torn one.
const WRITES_BEFORE_TORN: usize = 4;
/// Bytes of the last journal batch zeroed, as if the last write never reached the disk.
const TORN_BYTES: u64 = 16;

/// fjall journal files are named by number; the newest has the highest.
fn newest_journal_file(journals: &Path) -> PathBuf {
    std::fs::read_dir(journals)
        .unwrap_or_else(|error| panic!("reading {}: {error}", journals.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .filter_map(|path| Some((path.file_name()?.to_str()?.parse::<u64>().ok()?, path)))
        .max()
        .unwrap_or_else(|| panic!("no numbered journal file in {}", journals.display()))
        .1
}

/// The offset just past the last non-zero byte: fjall pre-fills journal files with zeros, so the
/// written data ends where the trailing run of zeros starts.
fn written_end(path: &Path) -> u64 {
    let mut bytes = Vec::new();
    std::fs::File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes.iter().rposition(|&byte| byte != 0).map(|last| last as u64 + 1).unwrap_or(0)
}

/// Zeroes the last `TORN_BYTES` written bytes of the newest journal file.
fn tear_newest_journal(journals: &Path) -> (PathBuf, u64) {
    let path = newest_journal_file(journals);
    let end = written_end(&path);
    assert!(end > TORN_BYTES, "{} holds only {end} written bytes", path.display());
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(end - TORN_BYTES)).unwrap();
    file.write_all(&[0; TORN_BYTES as usize]).unwrap();
    file.sync_all().unwrap();
    (path, end)
}

/// The last JSON event in the node's log whose message contains `message`.
fn last_log_event(log: &str, message: &str) -> Option<Value> {
    log.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["fields"]["message"].as_str().is_some_and(|text| text.contains(message)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_queue_record_is_dropped_and_logged_at_start() {
    let mut deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &mut deployment.node;
    node.set_faults(json!({ "db": "down" })).await;
    // One at a time, so that each is its own batch in the journal and the last batch is the last write.
    let mut ids = Vec::new();
    for i in 0..=WRITES_BEFORE_TORN {
        let answer = node.reserve(&reservation("torn", i)).await.unwrap();
        assert_eq!(answer.status, 202, "{}", answer.body);
        ids.push(answer.id());
    }
    let torn_id = ids.pop().unwrap();
    assert_eq!(node.queue_depth().await, WRITES_BEFORE_TORN as u64 + 1);

    node.kill9();
    let journals = node.data_dir().join("queue").join("journals");
    let (journal, written_end_before) = tear_newest_journal(&journals);
    eprintln!("tore {TORN_BYTES} bytes before offset {written_end_before} of {}", journal.display());

    node.restart().await;
    let log = node.log();
    let warning = last_log_event(&log, "torn tail")
        .unwrap_or_else(|| panic!("no warning about the torn journal tail in the log{}", node.log_tail()));
    assert_eq!(warning["level"], "WARN", "{warning}");
    let dropped = warning["fields"]["torn_bytes_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "the warning must say how many bytes were dropped: {warning}");
    let opened = last_log_event(&log, "fallback queue opened").expect("the node logs what the queue held");
    assert_eq!(opened["fields"]["torn_bytes_dropped"].as_u64(), Some(dropped), "{opened}");
    assert_eq!(
        opened["fields"]["entries"].as_u64(),
        Some(WRITES_BEFORE_TORN as u64),
        "all but the torn entry are recovered: {opened}"
    );

    node.wait_until_drained().await;
    let kept: BTreeSet<String> = ids.into_iter().collect();
    deployment.store.assert_each_committed_once(&kept).await;
    let stored = deployment.store.reservation_rows().await;
    assert_eq!(stored.len(), WRITES_BEFORE_TORN);
    assert!(!stored.contains_key(&torn_id), "the torn write cannot have been applied");
    let (status, body) = deployment.node.reservation(&torn_id).await;
    assert_eq!(status, 404, "the torn write is gone: {body}");
}
