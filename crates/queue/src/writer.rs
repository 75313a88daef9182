//! The group-commit writer: one thread turns every waiting enqueue into one fjall batch and one fsync.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::store::Store;
use crate::{Enqueued, QueueError};

/// Body bytes past which the writer stops adding requests to a group, so that one batch stays
/// bounded in memory however large `group_commit_entries_max` is. A group may go over it by at
/// most one body.
pub(crate) const GROUP_COMMIT_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One enqueue waiting for the writer.
pub(crate) struct Request {
    pub(crate) id: [u8; 20],
    pub(crate) enqueued_at_ms: i64,
    pub(crate) body: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<Enqueued, QueueError>>,
}

/// What the writer will answer a request once the group's batch is (or is not) durable.
enum Answer {
    /// Decided without this group's batch (already stored, full, or an error reading).
    Settled(Result<Enqueued, QueueError>),
    /// Depends on this group's batch: `Added`, or `AlreadyQueued` behind an earlier request of
    /// the same group.
    InBatch(Enqueued),
}

/// Runs until every sender is gone (the last `Queue` dropped) or a commit fails; after a failed
/// fsync fjall refuses further writes, so the writer stops and later enqueues get `Closed`.
pub(crate) fn run(
    store: Arc<Store>,
    mut requests: mpsc::Receiver<Request>,
    mut next_seq: u64,
    group_commit_entries_max: usize,
) {
    assert!(group_commit_entries_max > 0);
    assert!(next_seq > 0, "seq 0 is never handed out");
    let mut group = Vec::with_capacity(group_commit_entries_max);
    while let Some(first) = requests.blocking_recv() {
        let mut group_body_bytes = first.body.len();
        group.push(first);
        // Whatever arrived while the previous group was being fsynced joins this one.
        while group.len() < group_commit_entries_max && group_body_bytes < GROUP_COMMIT_BODY_BYTES_MAX {
            match requests.try_recv() {
                Ok(request) => {
                    group_body_bytes += request.body.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        assert!(!group.is_empty() && group.len() <= group_commit_entries_max);
        match commit_group(&store, &mut group, next_seq) {
            Ok(next) => {
                assert!(next >= next_seq, "seq must never go back");
                next_seq = next;
            }
            Err(error) => {
                tracing::error!(%error, path = %store.path.display(), "queue writer stopped: group commit failed");
                return;
            }
        }
    }
    tracing::debug!(path = %store.path.display(), "queue writer stopped: queue closed");
}

/// Writes one group under one fsync and answers every request in it. Returns the next seq.
fn commit_group(store: &Store, group: &mut Vec<Request>, mut next_seq: u64) -> Result<u64, fjall::Error> {
    let mut batch = store.keyspace.batch().durability(Some(PersistMode::SyncAll));
    let mut seqs_in_group: HashMap<[u8; 20], u64> = HashMap::with_capacity(group.len());
    let mut answers = Vec::with_capacity(group.len());
    let depth = store.depth.load(Ordering::Acquire);
    let mut added: u64 = 0;
    for request in group.iter() {
        let answer = if let Some(&seq) = seqs_in_group.get(&request.id) {
            Answer::InBatch(Enqueued::AlreadyQueued { seq })
        } else {
            match store.seq_of(&request.id) {
                Err(error) => Answer::Settled(Err(error)),
                Ok(Some(seq)) => Answer::Settled(Ok(Enqueued::AlreadyQueued { seq })),
                Ok(None) if depth + added >= store.entries_max => {
                    Answer::Settled(Err(QueueError::Full { entries_max: store.entries_max }))
                }
                Ok(None) => {
                    let seq = next_seq;
                    next_seq += 1;
                    let key = codec::seq_key(seq);
                    let value = codec::encode_entry(seq, &request.id, request.enqueued_at_ms, &request.body);
                    batch.insert(&store.entries, key, value);
                    batch.insert(&store.ids, request.id, codec::encode_seq_value(&request.id, seq));
                    seqs_in_group.insert(request.id, seq);
                    added += 1;
                    Answer::InBatch(Enqueued::Added { seq })
                }
            }
        };
        answers.push(answer);
    }

    let mut failure = None;
    if added > 0 {
        // Kept with the entries so that a seq is never handed out twice, even once the queue
        // has been emptied and reopened.
        batch.insert(&store.meta, codec::NEXT_SEQ_KEY, codec::encode_seq_value(codec::NEXT_SEQ_KEY, next_seq));
        // Counted before the batch becomes visible: a drainer may remove an entry the moment it
        // can see it, and must never subtract what was not yet added.
        let before = store.depth.fetch_add(added, Ordering::AcqRel);
        assert!(before + added <= store.entries_max, "depth over entries_max");
        // With durability SyncAll the journal is fsynced before the batch becomes visible, so
        // peek and get never see an entry that is not yet durable.
        match batch.commit() {
            Ok(()) => {
                store.fsyncs_total.fetch_add(1, Ordering::Relaxed);
                #[cfg(test)]
                tests::after_visible(store);
            }
            Err(error) => {
                store.depth.fetch_sub(added, Ordering::AcqRel);
                failure = Some(error);
            }
        }
    }

    for (request, answer) in group.drain(..).zip(answers) {
        let result = match (answer, &failure) {
            (Answer::Settled(result), _) => result,
            (Answer::InBatch(enqueued), None) => Ok(enqueued),
            (Answer::InBatch(_), Some(error)) => {
                Err(QueueError::WriteFailed { path: store.path.clone(), reason: error.to_string() })
            }
        };
        // The caller may have gone away (its future dropped); the entry is written regardless.
        let _ = request.reply.send(result);
    }
    match failure {
        None => Ok(next_seq),
        Some(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs on the writer's thread right after a group became visible (a drainer's turn).
    type Hook = Box<dyn Fn(&Store)>;

    thread_local! {
        static AFTER_VISIBLE: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
    }

    pub(super) fn after_visible(store: &Store) {
        AFTER_VISIBLE.with(|hook| {
            if let Some(hook) = hook.borrow().as_ref() {
                hook(store)
            }
        });
    }

    /// Regression: the writer made a group visible before counting it in `depth`, so a drainer
    /// that removed the new entries in between subtracted more than was counted, its assertion
    /// fired, and the drain task died while the node stayed ready.
    #[test]
    fn a_drainer_that_removes_a_group_the_moment_it_is_visible_never_takes_depth_below_zero() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = Store::open(dir.path().to_path_buf(), keyspace, 10).unwrap();
        AFTER_VISIBLE.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(|store: &Store| {
                let visible = store.peek(None, 10).unwrap();
                assert_eq!(store.remove(&visible).unwrap(), visible.len() as u64);
            }))
        });
        let (first, first_answer) = request(1);
        let (second, second_answer) = request(2);
        let mut group = vec![first, second];

        commit_group(&store, &mut group, 1).unwrap();
        AFTER_VISIBLE.with(|hook| hook.borrow_mut().take());

        assert_eq!(first_answer.blocking_recv().unwrap().unwrap(), Enqueued::Added { seq: 1 });
        assert_eq!(second_answer.blocking_recv().unwrap().unwrap(), Enqueued::Added { seq: 2 });
        assert_eq!(store.depth.load(Ordering::Relaxed), 0, "both removed by the drainer");
    }

    fn request(id: u8) -> (Request, oneshot::Receiver<Result<Enqueued, QueueError>>) {
        let (reply, answer) = oneshot::channel();
        let request = Request { id: [id; 20], enqueued_at_ms: 0, body: vec![id], reply };
        (request, answer)
    }

    #[test]
    fn the_same_id_twice_in_one_group_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = Store::open(dir.path().to_path_buf(), keyspace, 10).unwrap();
        let (first, first_answer) = request(1);
        let (again, again_answer) = request(1);
        let (other, other_answer) = request(2);
        let mut group = vec![first, again, other];

        let next_seq = commit_group(&store, &mut group, 1).unwrap();

        assert!(group.is_empty());
        assert_eq!(next_seq, 3);
        assert_eq!(first_answer.blocking_recv().unwrap().unwrap(), Enqueued::Added { seq: 1 });
        assert_eq!(again_answer.blocking_recv().unwrap().unwrap(), Enqueued::AlreadyQueued { seq: 1 });
        assert_eq!(other_answer.blocking_recv().unwrap().unwrap(), Enqueued::Added { seq: 2 });
        assert_eq!(store.fsyncs_total.load(Ordering::Relaxed), 1);
        assert_eq!(store.depth.load(Ordering::Relaxed), 2);
        assert_eq!(store.peek(None, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_group_past_entries_max_is_answered_full_for_the_excess() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = Store::open(dir.path().to_path_buf(), keyspace, 1).unwrap();
        let (first, first_answer) = request(1);
        let (second, second_answer) = request(2);
        let mut group = vec![first, second];

        commit_group(&store, &mut group, 1).unwrap();

        assert_eq!(first_answer.blocking_recv().unwrap().unwrap(), Enqueued::Added { seq: 1 });
        assert!(matches!(second_answer.blocking_recv().unwrap(), Err(QueueError::Full { entries_max: 1 })));
        assert_eq!(store.depth.load(Ordering::Relaxed), 1);
    }
}
