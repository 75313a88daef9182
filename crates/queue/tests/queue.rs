//! The fallback queue from the outside: real fjall files in temporary directories, real crashes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rananeeti_queue::{Enqueued, Entry, Queue, QueueConfig, QueueError, Recovery};
use tokio::task::JoinSet;

fn id(n: u32) -> [u8; 20] {
    let mut id = [0xa5; 20];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id
}

fn body(n: u32) -> Vec<u8> {
    format!("command body {n}").into_bytes()
}

fn config(dir: impl Into<PathBuf>) -> QueueConfig {
    QueueConfig { dir: dir.into(), group_commit_entries_max: 512, waiting_entries_max: 1024, entries_max: 10_000 }
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.seq).collect()
}

#[tokio::test]
async fn enqueue_peek_get_remove_round_trip_and_reopen_keeps_entries_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(config(dir.path())).unwrap();
        assert_eq!(queue.recovery(), Recovery::default());
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.oldest_enqueued_at_ms(), None);

        for n in 0..5 {
            let enqueued = queue.enqueue(id(n), 1_000 + i64::from(n), body(n)).await;
            assert_eq!(enqueued.unwrap(), Enqueued::Added { seq: u64::from(n) + 1 });
        }
        assert_eq!(queue.depth(), 5);
        assert_eq!(queue.oldest_enqueued_at_ms(), Some(1_000));

        let all = queue.peek(None, 100).unwrap();
        assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
        for (n, entry) in (0..5).zip(&all) {
            assert_eq!(entry.id, id(n));
            assert_eq!(entry.body, body(n));
            assert_eq!(entry.enqueued_at_ms, 1_000 + i64::from(n));
        }
        assert_eq!(seqs(&queue.peek(Some(2), 2).unwrap()), [3, 4]);
        assert_eq!(seqs(&queue.peek(Some(5), 2).unwrap()), Vec::<u64>::new());
        assert_eq!(queue.list(3).unwrap(), all[..3]);
        assert_eq!(queue.get(&id(3)).unwrap(), Some(all[3].clone()));
        assert_eq!(queue.get(&id(99)).unwrap(), None);

        queue.remove(&all[..2]).unwrap();
        assert_eq!(queue.depth(), 3);
        assert_eq!(queue.oldest_enqueued_at_ms(), Some(1_002));
        assert_eq!(queue.get(&id(0)).unwrap(), None);
        assert_eq!(seqs(&queue.peek(None, 100).unwrap()), [3, 4, 5]);
        // A second remove of the same entries (a retried drain) changes nothing.
        queue.remove(&all[..2]).unwrap();
        assert_eq!(queue.depth(), 3);
    }

    let queue = Queue::open(config(dir.path())).unwrap();
    assert_eq!(queue.recovery(), Recovery { entries: 3, torn_bytes_dropped: 0 });
    assert_eq!(queue.depth(), 3);
    assert_eq!(seqs(&queue.peek(None, 100).unwrap()), [3, 4, 5]);
    assert_eq!(queue.oldest_enqueued_at_ms(), Some(1_002));
    assert_eq!(queue.enqueue(id(10), 2_000, body(10)).await.unwrap(), Enqueued::Added { seq: 6 });
    assert_eq!(queue.enqueue(id(2), 2_000, body(2)).await.unwrap(), Enqueued::AlreadyQueued { seq: 3 });

    // Emptied and reopened, the queue still never hands out a seq twice.
    queue.remove(&queue.list(100).unwrap()).unwrap();
    assert_eq!(queue.depth(), 0);
    assert_eq!(queue.oldest_enqueued_at_ms(), None);
    drop(queue);
    let queue = Queue::open(config(dir.path())).unwrap();
    assert_eq!(queue.recovery().entries, 0);
    assert_eq!(queue.enqueue(id(0), 3_000, body(0)).await.unwrap(), Enqueued::Added { seq: 7 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_is_queued_once_sequentially_and_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path())).unwrap();

    assert_eq!(queue.enqueue(id(1), 0, body(1)).await.unwrap(), Enqueued::Added { seq: 1 });
    assert_eq!(queue.enqueue(id(1), 5, b"another body".to_vec()).await.unwrap(), Enqueued::AlreadyQueued { seq: 1 });
    assert_eq!(queue.get(&id(1)).unwrap().unwrap().body, body(1));

    // Many at once, so that duplicates land in the same group as the first of them.
    let mut tasks = JoinSet::new();
    for _ in 0..64 {
        let queue = queue.clone();
        tasks.spawn(async move { queue.enqueue(id(2), 0, body(2)).await.unwrap() });
    }
    let answers = tasks.join_all().await;
    let added: Vec<_> = answers.iter().filter(|answer| matches!(answer, Enqueued::Added { .. })).collect();
    assert_eq!(added.len(), 1, "{answers:?}");
    let seq = added[0].seq();
    assert!(answers.iter().all(|answer| answer.seq() == seq), "{answers:?}");
    assert_eq!(queue.depth(), 2);
    assert_eq!(seqs(&queue.peek(None, 100).unwrap()), [1, seq]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_fsyncs() {
    const ENQUEUES: u32 = 512;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path())).unwrap();

    let mut tasks = JoinSet::new();
    for n in 0..ENQUEUES {
        let queue = queue.clone();
        tasks.spawn(async move { queue.enqueue(id(n), 0, body(n)).await.unwrap() });
    }
    let mut seqs_added: Vec<u64> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|answer| match answer {
            Enqueued::Added { seq } => seq,
            other => panic!("expected Added, got {other:?}"),
        })
        .collect();
    seqs_added.sort_unstable();
    assert_eq!(seqs_added, (1..=u64::from(ENQUEUES)).collect::<Vec<_>>());
    assert_eq!(queue.depth(), u64::from(ENQUEUES));

    let fsyncs_total = queue.fsyncs_total();
    eprintln!("fsyncs_total for {ENQUEUES} concurrent enqueues: {fsyncs_total}");
    assert!(fsyncs_total >= 1);
    assert!(fsyncs_total < u64::from(ENQUEUES) / 4, "{fsyncs_total} fsyncs for {ENQUEUES} enqueues: not batching");
}

/// Set by `torn_tail_is_dropped_and_reported` when it runs this binary as the writer it kills.
const CHILD_DIR_ENV: &str = "RANANEETI_QUEUE_TEST_CHILD_DIR";
/// What the child prints once every entry is acknowledged.
const CHILD_WRITTEN: &str = "rananeeti-queue-child: written";
/// Entries the child writes, each in its own enqueue (so its own journal batch).
const CHILD_ENTRIES: u32 = 8;
/// How long a child waits to be killed before giving up on its parent.
const CHILD_WAIT_MAX: Duration = Duration::from_secs(60);

/// The writer half of `torn_tail_is_dropped_and_reported`; does nothing in a normal run.
#[tokio::test]
async fn torn_tail_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let queue = Queue::open(config(dir)).unwrap();
    for n in 0..CHILD_ENTRIES {
        let enqueued = queue.enqueue(id(n), i64::from(n), body(n)).await.unwrap();
        assert_eq!(enqueued, Enqueued::Added { seq: u64::from(n) + 1 });
    }
    println!("{CHILD_WRITTEN}");
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(CHILD_WAIT_MAX).await;
    std::process::exit(1);
}

/// Kills the child if the parent test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child writer against `dir` and SIGKILLs it once it has written, so no clean shutdown
/// touches the journal.
fn write_in_child_and_kill(dir: &Path) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["torn_tail_child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut written = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains(CHILD_WRITTEN) {
            written = true;
            break;
        }
    }
    assert!(written, "the child writer ended before writing");
    child.0.kill().unwrap(); // SIGKILL on Unix
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// The journal file fjall writes to: the highest-numbered one under `<dir>/journals`.
fn newest_journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("journals"))
        .unwrap()
        .map(|dirent| dirent.unwrap().path())
        .max_by_key(|path| path.file_name().unwrap().to_str().unwrap().parse::<u64>().unwrap())
        .unwrap()
}

/// Cuts `bytes` off the end of what was written to the journal file. fjall preallocates journal
/// files with zeros, so what was written ends at the last non-zero byte, not at the file's end.
fn cut_written_tail(journal: &Path, bytes: u64) {
    let contents = std::fs::read(journal).unwrap();
    let written_end = contents.iter().rposition(|&byte| byte != 0).unwrap() as u64 + 1;
    assert!(written_end > bytes);
    let file = std::fs::OpenOptions::new().write(true).open(journal).unwrap();
    file.set_len(written_end - bytes).unwrap();
    file.sync_all().unwrap();
}

#[tokio::test]
async fn torn_tail_is_dropped_and_reported() {
    let n = u64::from(CHILD_ENTRIES);

    // Killed, then reopened as it was: nothing is torn, every acknowledged entry is there.
    let intact = tempfile::tempdir().unwrap();
    write_in_child_and_kill(intact.path());
    let queue = Queue::open(config(intact.path())).unwrap();
    assert_eq!(queue.recovery(), Recovery { entries: n, torn_bytes_dropped: 0 });
    assert_eq!(seqs(&queue.peek(None, 100).unwrap()), (1..=n).collect::<Vec<_>>());
    drop(queue);

    // Killed, then the last batch torn: recovery drops it, and only it.
    let torn = tempfile::tempdir().unwrap();
    write_in_child_and_kill(torn.path());
    cut_written_tail(&newest_journal(torn.path()), 5);
    let queue = Queue::open(config(torn.path())).unwrap();
    let recovery = queue.recovery();
    eprintln!("torn tail recovery: {recovery:?}");
    assert_eq!(recovery.entries, n - 1);
    assert!(recovery.torn_bytes_dropped > 0, "{recovery:?}");
    // Only the torn batch (one small entry), not the journal's zero padding.
    assert!(recovery.torn_bytes_dropped < 4096, "{recovery:?}");
    let entries = queue.peek(None, 100).unwrap();
    assert_eq!(seqs(&entries), (1..n).collect::<Vec<_>>());
    for (k, entry) in (0..CHILD_ENTRIES - 1).zip(&entries) {
        assert_eq!((entry.id, entry.body.clone()), (id(k), body(k)));
    }
    assert_eq!(queue.depth(), n - 1);
    assert_eq!(queue.get(&id(CHILD_ENTRIES - 1)).unwrap(), None);
    let enqueued = queue.enqueue(id(100), 0, body(100)).await.unwrap();
    assert_eq!(enqueued, Enqueued::Added { seq: n });
    drop(queue);

    // The tail was cut off for good: the next open finds nothing torn.
    let queue = Queue::open(config(torn.path())).unwrap();
    assert_eq!(queue.recovery(), Recovery { entries: n, torn_bytes_dropped: 0 });
}

#[tokio::test]
async fn one_corrupt_value_is_skipped_and_reported_and_the_rest_of_the_queue_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(config(dir.path())).unwrap();
        for n in 0..3 {
            queue.enqueue(id(n), 0, body(n)).await.unwrap();
        }
    }
    // Flip one bit of entry 2's body, writing through fjall as a failing disk would not be
    // caught by fjall itself: `entries` is keyed by big-endian seq.
    {
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let entries = keyspace.open_partition("entries", fjall::PartitionCreateOptions::default()).unwrap();
        let key = 2u64.to_be_bytes();
        let mut value = entries.get(key).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 1;
        entries.insert(key, value).unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }

    let queue = Queue::open(config(dir.path())).unwrap();
    // Every read goes on past it; it is reported by seq, and kept (still counted).
    assert_eq!(seqs(&queue.peek(None, 10).unwrap()), [1, 3]);
    assert_eq!(queue.get(&id(1)).unwrap(), None);
    assert_eq!(queue.get(&id(0)).unwrap().unwrap().body, body(0));
    let corrupt = queue.corrupt_entries();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0].0, 2);
    assert!(corrupt[0].1.contains("checksum mismatch"), "{corrupt:?}");
    assert_eq!(queue.depth(), 3);
    // The good entries drain; the corrupt one stays for an operator.
    let good = queue.peek(None, 10).unwrap();
    queue.remove(&good).unwrap();
    assert_eq!(queue.depth(), 1);
    assert!(queue.peek(None, 10).unwrap().is_empty());
    assert_eq!(queue.enqueue(id(7), 0, body(7)).await.unwrap(), Enqueued::Added { seq: 4 });
}

#[tokio::test]
async fn an_enqueue_past_entries_max_or_with_an_oversized_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig { entries_max: 2, ..config(dir.path()) }).unwrap();
    queue.enqueue(id(0), 0, body(0)).await.unwrap();
    queue.enqueue(id(1), 0, body(1)).await.unwrap();
    assert!(matches!(queue.enqueue(id(2), 0, body(2)).await, Err(QueueError::Full { entries_max: 2 })));
    // A duplicate of a queued id is still answered when full.
    assert_eq!(queue.enqueue(id(1), 0, body(1)).await.unwrap(), Enqueued::AlreadyQueued { seq: 2 });
    let oversized = vec![0; rananeeti_queue::ENTRY_BODY_BYTES_MAX + 1];
    assert!(matches!(queue.enqueue(id(3), 0, oversized).await, Err(QueueError::BodyTooLarge { .. })));
    assert_eq!(queue.depth(), 2);

    assert!(matches!(
        Queue::open(QueueConfig { group_commit_entries_max: 0, ..config(dir.path()) }),
        Err(QueueError::InvalidConfig { field: "group_commit_entries_max", .. })
    ));
}

#[test]
fn fsync_per_write_appends_one_record_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baseline.log");
    let mut baseline = rananeeti_queue::FsyncPerWrite::create(&path).unwrap();
    baseline.append(b"one").unwrap();
    baseline.append(b"three").unwrap();
    assert_eq!(baseline.appends_total(), 2);
    // Two records: 8-byte header (length, CRC-32) and the body each.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 + 3 + 8 + 5);
}
