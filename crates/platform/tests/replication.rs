//! Replicated applies on a real SQLite store, without HTTP.

use futures::future::BoxFuture;
use rananeeti_platform::{
    ApplyError, Command, CommandHandler, CommandId, Hlc, OutboxEntry, Platform, PlatformConfig, PlatformMetrics,
    Registry, ReplicationError, Store, StoreConfig, WritePattern,
};
use rananeeti_queue::{Queue, QueueConfig};
use sqlx::AnyConnection;
use std::sync::Arc;

/// A `local` kind that counts its applies in `test_applies`.
struct Counting;

impl CommandHandler for Counting {
    fn kind(&self) -> &'static str {
        "test.count"
    }

    fn write_pattern(&self) -> WritePattern {
        WritePattern::Local
    }

    fn apply<'a>(&'a self, _: &'a Command, connection: &'a mut AnyConnection) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move { count(connection).await.map_err(ApplyError::Store) })
    }

    fn apply_replicated<'a>(
        &'a self,
        _: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(count(connection))
    }
}

async fn count(connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE test_applies SET n = n + 1").execute(connection).await.map(|_| ())
}

async fn platform(dir: &std::path::Path) -> Arc<Platform> {
    let url = format!("sqlite://{}?mode=rwc", dir.join("store.db").display());
    let mut migrations = rananeeti_platform::schema::MIGRATIONS.to_vec();
    migrations.push(rananeeti_platform::Migration {
        component: "test",
        version: 1,
        sqlite: "CREATE TABLE test_applies (n BIGINT NOT NULL); INSERT INTO test_applies (n) VALUES (0)",
        postgres: "",
    });
    let store = Store::open(
        StoreConfig {
            writer_url: url,
            password: None,
            reader_url: None,
            connections_max: 4,
            busy_timeout_ms: 5000,
            statement_timeout_ms: 5000,
            acquire_timeout_ms: 2000,
        },
        migrations,
    )
    .unwrap();
    store.ensure_migrated().await.unwrap();
    let queue = Queue::open(QueueConfig::new(dir.join("queue"))).unwrap();
    let mut registry = Registry::default();
    registry.register(Arc::new(Counting));
    let config = PlatformConfig {
        region: "r2".into(),
        node: "r2-n1".into(),
        submit: Default::default(),
        breaker: rananeeti_platform::BreakerConfig { failures_to_open: 3, open_ms: 1000 },
        drain: Default::default(),
        outbox_commit_ordered: false,
        relay: false,
        durability: rananeeti_platform::Durability::Async,
        ownership: rananeeti_platform::OwnershipConfig {
            primary_region: "r1".into(),
            regions: vec!["r1".into(), "r2".into()],
            witness: false,
            lease_ms: 2000,
        },
    };
    let metrics = PlatformMetrics::new(&mut prometheus_client::registry::Registry::default());
    Platform::start(config, store, queue, registry, metrics)
}

fn entry(seq: u64) -> OutboxEntry {
    OutboxEntry {
        seq,
        command: Command {
            kind: "test.count".into(),
            id: CommandId::digest("test.count", &seq.to_be_bytes()),
            payload: serde_json::json!({}),
            origin_region: "r1".into(),
            origin_node: "r1-n1".into(),
            hlc: Hlc(seq),
            request: None,
        },
        held_by: Vec::new(),
        applied_region: None,
    }
}

/// Regression: a page out of seq order (a peer's bug) hit an assertion that killed the puller
/// for good; it is now refused, nothing of it applied, and a good page after it applies.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_page_out_of_seq_order_is_refused_and_the_next_good_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path()).await;

    let refused = platform.apply_replicated("r1", &[entry(2), entry(1)], None).await;
    assert!(matches!(refused, Err(ReplicationError::OutOfOrder { seq: 1, after: 2 })), "{refused:?}");
    assert_eq!(platform.checkpoint("r1").await.unwrap(), 0, "the checkpoint did not move");

    let applied = platform.apply_replicated("r1", &[entry(1), entry(2)], None).await.unwrap();
    assert_eq!((applied.applied, applied.checkpoint), (2, 2));
}

/// Regression: a queued command's status read the store (not there yet), then the queue (already
/// drained into the store meanwhile) and answered "no such command": the cafe's page of a booking
/// drained as it loaded was a 404. Commands queued on a working store are drained at once; their
/// status is read the whole time and must always be found.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_drained_while_its_status_is_read_is_always_found() {
    use rananeeti_platform::{CommandState, Delivery, NewCommand, SubmitOptions};
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path()).await;
    let mut readers = Vec::new();
    for n in 0u64..200 {
        let id = CommandId::digest("test.count", &(1000 + n).to_be_bytes());
        let new = NewCommand { kind: "test.count", id, payload: serde_json::json!({ "n": n }) };
        platform.submit(new, SubmitOptions::delivered(Delivery::SimulatedStoreFailure)).await.unwrap();
        let platform = Arc::clone(&platform);
        readers.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                match platform.status(&id).await {
                    Ok(Some(status)) if status.state == CommandState::Committed => return Ok(()),
                    Ok(Some(_)) | Err(_) => {}
                    Ok(None) => return Err(format!("command {n} not found while it was being drained")),
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("command {n} not committed within 20 s"));
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap().unwrap();
    }
}
