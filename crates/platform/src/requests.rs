//! Requests that carry an idempotency key (the `Idempotency-Key` header, or a form's hidden
//! token): the identity every submit of such a request takes, and the answer recorded for a
//! replay of it.
//!
//! The edge (the node's HTTP layer) runs the request inside [`within`]. Every command the app
//! submits while serving it is stamped with a [`RequestId`] derived from the caller, the key, the
//! request's own bytes and the submit's place in the request. The store keeps that id unique
//! (`rn_commands.request_id`), so the same request submitted again, on any node, through the
//! queue or forwarded to another region, is applied once: a retry whose app-made command id
//! differs (a cart add computes its quantity from the cart it reads) still meets the first one.
//!
//! The answer the edge gave is recorded as a command of its own (`rn.request_answer`, a `local`
//! kind: stored, or queued when the store is down, and replicated to every region) so that a
//! later replay gets the same status and body without running the app again.

use crate::command::{ApplyError, Command, CommandHandler, WritePattern};
use crate::id::CommandId;
use blake2::digest::consts::U20;
use blake2::{Blake2b, Digest};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

type Blake2b160 = Blake2b<U20>;

/// The kind of the commands that record an answer.
pub const KIND_REQUEST_ANSWER: &str = "rn.request_answer";

/// An answer is replayed for this long after it was recorded (the HTTP idempotency-key draft's
/// retention window; at least 24 hours). The same request is applied once for ever after.
pub const ANSWER_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest key a caller may send.
pub const KEY_BYTES_MAX: usize = 255;

fn digest(parts: &[&[u8]]) -> [u8; 20] {
    let mut hasher = Blake2b160::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// A keyed request, as the edge saw it: who sent which key (`scope`), and what it sent
/// (`fingerprint`: method, path and body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestKey {
    scope: [u8; 20],
    fingerprint: [u8; 20],
}

impl RequestKey {
    /// `caller` is the credential the request carried (empty for anonymous callers, whose keys
    /// then share one scope: such keys must be random); `key` is the caller's idempotency key.
    pub fn new(caller: &[u8], key: &str, method: &str, path_and_query: &str, body: &[u8]) -> RequestKey {
        RequestKey {
            scope: digest(&[b"rn.request-scope", caller, key.as_bytes()]),
            fingerprint: digest(&[b"rn.request-fingerprint", method.as_bytes(), path_and_query.as_bytes(), body]),
        }
    }

    pub fn scope_hex(&self) -> String {
        hex::encode(self.scope)
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// The id of the command that records this key's answer: one per key and caller.
    pub fn answer_command_id(&self) -> CommandId {
        CommandId::digest(KIND_REQUEST_ANSWER, &self.scope)
    }

    /// The identity of the `index`th submit made while serving this request.
    fn request_id(&self, index: u32) -> RequestId {
        RequestId(digest(&[b"rn.request-id", &self.scope, &self.fingerprint, &index.to_be_bytes()]))
    }
}

/// The identity of one submit of a keyed request: the same request sent again gives the same ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 20]);

impl RequestId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse_hex(text: &str) -> Option<RequestId> {
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(RequestId(bytes))
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.to_hex())
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        RequestId::parse_hex(&text).ok_or_else(|| serde::de::Error::custom("a request id is 40 hexadecimal characters"))
    }
}

/// The request being served on this task, and how many commands it has submitted so far.
struct Current {
    key: RequestKey,
    submits: Arc<AtomicU32>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// Runs `serve` as the keyed request `key`. Answers its output and how many commands it submitted.
pub async fn within<F: std::future::Future>(key: RequestKey, serve: F) -> (F::Output, u32) {
    let submits = Arc::new(AtomicU32::new(0));
    let current = Current { key, submits: Arc::clone(&submits) };
    let output = CURRENT.scope(current, serve).await;
    (output, submits.load(Ordering::Acquire))
}

/// The identity of the next submit of the keyed request being served, if one is.
pub(crate) fn next_request_id() -> Option<RequestId> {
    CURRENT
        .try_with(|current| {
            let index = current.submits.fetch_add(1, Ordering::AcqRel);
            current.key.request_id(index)
        })
        .ok()
}

/// The first answer given to a keyed request, replayed to the same key within the retention.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedAnswer {
    pub scope: String,
    pub fingerprint: String,
    pub status: u16,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    pub body: String,
    pub recorded_at_ms: u64,
}

/// Applies `rn.request_answer`: the first answer recorded for a scope stays (in every region).
pub(crate) struct RequestAnswerHandler;

impl RequestAnswerHandler {
    fn record<'a>(command: &'a Command, connection: &'a mut AnyConnection) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let answer: RecordedAnswer = serde_json::from_value(command.payload.clone())
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
            sqlx::query(
                "INSERT INTO rn_request_answers (scope, fingerprint, status, content_type, location, body, \
                 recorded_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope) DO NOTHING",
            )
            .bind(&answer.scope)
            .bind(&answer.fingerprint)
            .bind(i64::from(answer.status))
            .bind(answer.content_type.as_deref())
            .bind(answer.location.as_deref())
            .bind(&answer.body)
            .bind(answer.recorded_at_ms as i64)
            .execute(&mut *connection)
            .await?;
            Ok(())
        })
    }
}

impl CommandHandler for RequestAnswerHandler {
    fn kind(&self) -> &'static str {
        KIND_REQUEST_ANSWER
    }

    fn write_pattern(&self) -> WritePattern {
        // Each region keeps the first answer it meets; a key is the caller's, answered once.
        WritePattern::Local
    }

    fn apply<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move { Self::record(command, connection).await.map_err(ApplyError::Store) })
    }

    fn apply_replicated<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Self::record(command, connection)
    }
}

/// How long looking up a recorded answer in the store may take before the queue is asked.
const ANSWER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

impl crate::platform::Platform {
    /// The answer recorded for `key`'s scope within the retention: in the region's store, else in
    /// this node's queue (recorded while the store was down) or in a copy held for a peer node.
    pub async fn recorded_answer(&self, key: &RequestKey) -> Option<RecordedAnswer> {
        let scope = key.scope_hex();
        let since = crate::hlc::wall_clock_ms().saturating_sub(ANSWER_RETENTION_MS);
        let from_store = tokio::time::timeout(ANSWER_READ_TIMEOUT, async {
            self.reader().await.ok()?;
            let row = sqlx::query(
                "SELECT scope, fingerprint, status, content_type, location, body, recorded_at_ms \
                 FROM rn_request_answers WHERE scope = $1 AND recorded_at_ms >= $2",
            )
            .bind(&scope)
            .bind(since as i64)
            .fetch_optional(&self.store().writer())
            .await
            .ok()??;
            answer_from_row(&row).ok()
        })
        .await
        .ok()
        .flatten();
        if from_store.is_some() {
            return from_store;
        }
        let id = key.answer_command_id();
        let queued = self.queued_command(&id)?;
        let answer: RecordedAnswer = serde_json::from_value(queued.payload).ok()?;
        (answer.scope == scope && answer.recorded_at_ms >= since).then_some(answer)
    }

    /// The first command the keyed request `key` submitted, when the region's store has applied
    /// or rejected it: the request was served before, but its answer was not recorded (its node
    /// stopped in between). Its status is what a replay can say.
    pub async fn first_submit_of(&self, key: &RequestKey) -> Option<crate::CommandStatus> {
        let request = key.request_id(0).to_hex();
        tokio::time::timeout(ANSWER_READ_TIMEOUT, async {
            self.reader().await.ok()?;
            let row = sqlx::query("SELECT id FROM rn_commands WHERE request_id = $1")
                .bind(&request)
                .fetch_optional(&self.store().writer())
                .await
                .ok()??;
            let id: String = sqlx::Row::try_get(&row, "id").ok()?;
            self.status(&CommandId::parse_hex(&id).ok()?).await.ok()?
        })
        .await
        .ok()
        .flatten()
    }

    /// Records the first answer to `key` (stored, or queued when the store is down, and
    /// replicated), so that the same key gets it again. Answers within the submit budget.
    pub async fn record_answer(&self, key: &RequestKey, answer: RecordedAnswer) -> Result<(), crate::SubmitError> {
        let payload = serde_json::to_value(&answer).expect("an answer always serializes");
        let new = crate::NewCommand { kind: KIND_REQUEST_ANSWER, id: key.answer_command_id(), payload };
        self.submit(new, crate::SubmitOptions::default()).await.map(|_| ())
    }

    /// Deletes answers recorded before the retention window. Answers how many went.
    pub async fn forget_old_answers(&self) -> Result<u64, crate::StoreUnavailable> {
        self.reader().await?;
        let since = crate::hlc::wall_clock_ms().saturating_sub(ANSWER_RETENTION_MS);
        let _turn = self.store().write_turn().await;
        let deleted = sqlx::query("DELETE FROM rn_request_answers WHERE recorded_at_ms < $1")
            .bind(since as i64)
            .execute(&self.store().writer())
            .await
            .map_err(crate::StoreError::from)?;
        Ok(deleted.rows_affected())
    }
}

fn answer_from_row(row: &sqlx::any::AnyRow) -> Result<RecordedAnswer, sqlx::Error> {
    use sqlx::Row;
    Ok(RecordedAnswer {
        scope: row.try_get("scope")?,
        fingerprint: row.try_get("fingerprint")?,
        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(500),
        content_type: row.try_get("content_type")?,
        location: row.try_get("location")?,
        body: row.try_get("body")?,
        recorded_at_ms: row.try_get::<i64, _>("recorded_at_ms")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(caller: &[u8], key: &str, body: &[u8]) -> RequestKey {
        RequestKey::new(caller, key, "POST", "/api/cart", body)
    }

    #[test]
    fn the_same_request_gives_the_same_ids_and_another_body_other_ids() {
        let first = key(b"Bearer a", "k1", b"{}");
        assert_eq!(first.request_id(0), key(b"Bearer a", "k1", b"{}").request_id(0));
        assert_ne!(first.request_id(0), first.request_id(1), "each submit of a request has its own id");
        assert_ne!(first.request_id(0), key(b"Bearer a", "k1", b"{ }").request_id(0));
        assert_eq!(first.scope, key(b"Bearer a", "k1", b"{ }").scope, "one key, one scope, whatever the body");
        assert_ne!(first.scope, key(b"Bearer b", "k1", b"{}").scope, "another caller's key is another scope");
    }

    #[tokio::test]
    async fn submits_inside_a_request_are_numbered_and_outside_have_no_request() {
        assert!(next_request_id().is_none());
        let request = key(b"", "k", b"x");
        let ((a, b), submits) = within(request, async { (next_request_id(), next_request_id()) }).await;
        assert_eq!(submits, 2);
        assert_eq!(a, Some(request.request_id(0)));
        assert_eq!(b, Some(request.request_id(1)));
        assert!(next_request_id().is_none());
    }
}
