//! The region's database: SQLite (embedded default) or PostgreSQL, behind one sqlx `Any` code path,
//! with a writer pool, an optional reader pool, migrations, and pool rebuilds after an outage.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Once, RwLock};
use std::time::Duration;

use crate::write_gate::{WriteGate, WriteTurn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn from_url(url: &str) -> Result<StoreKind, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(StoreKind::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(StoreKind::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A database password, kept out of URLs, logs and `Debug` output: it joins the connection
/// options only when a pool is built.
#[derive(Clone)]
pub struct StorePassword(std::sync::Arc<str>);

impl StorePassword {
    pub fn new(password: &str) -> StorePassword {
        StorePassword(std::sync::Arc::from(password))
    }

    /// The password itself, to connect with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StorePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorePassword(<redacted>)")
    }
}

/// `url` with `password` for its user, for a connection made in this process only (the result
/// is a secret: never log it, never put it on a command line).
pub fn url_with_password(url: &str, password: Option<&StorePassword>) -> Result<String, StoreError> {
    let Some(password) = password else { return Ok(url.to_string()) };
    if StoreKind::from_url(url)? != StoreKind::Postgres {
        return Ok(url.to_string());
    }
    let mut parsed = url::Url::parse(url).map_err(|_| StoreError::InvalidUrl("not a URL".into()))?;
    parsed
        .set_password(Some(password.expose()))
        .map_err(|()| StoreError::InvalidUrl("a password needs a user in the URL".into()))?;
    Ok(parsed.to_string())
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// sqlite://PATH?mode=rwc or postgres://user@host:port/db (no password: that is `password`)
    pub writer_url: String,
    /// The PostgreSQL password of the URLs' user (`store.password_file`), for writer and reader.
    pub password: Option<StorePassword>,
    /// A reader endpoint (replica); reads go to the writer when absent.
    pub reader_url: Option<String>,
    pub connections_max: u32,
    /// SQLite: how long a writer waits for the file lock.
    pub busy_timeout_ms: u64,
    /// PostgreSQL: longest a statement may run (also bounds lock waits), so a dropped attempt
    /// does not leave work running on the server.
    pub statement_timeout_ms: u64,
    /// How long taking a connection from the pool (or opening one) may take.
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The message never includes the URL: it may carry a password.
    #[error("store URL must start with sqlite: or postgres:")]
    UnsupportedUrl,
    #[error("store URL could not be parsed: {0}")]
    InvalidUrl(String),
    #[error("migration {component} {version}: {source}")]
    Migration { component: &'static str, version: i64, source: sqlx::Error },
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// One schema change, written for each store kind.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub component: &'static str,
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

struct Pools {
    writer: AnyPool,
    reader: Option<AnyPool>,
}

pub struct Store {
    kind: StoreKind,
    config: StoreConfig,
    pools: RwLock<Pools>,
    migrations: Vec<Migration>,
    migrated: AtomicBool,
    migrate_lock: tokio::sync::Mutex<()>,
    rebuilds: AtomicU64,
    /// Other regions' databases, read (never written) when this region's cannot be.
    fallback_readers: RwLock<Vec<(String, AnyPool)>>,
    /// Turns at SQLite's write lock (see `write_gate`); nothing for PostgreSQL.
    write_gate: WriteGate,
}

static INSTALL_DRIVERS: Once = Once::new();

impl Store {
    /// Builds lazy pools: the store may be down when the node starts; writes then go to the queue
    /// and migrations run on first contact.
    pub fn open(config: StoreConfig, migrations: Vec<Migration>) -> Result<Store, StoreError> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let kind = StoreKind::from_url(&config.writer_url)?;
        if let Some(reader) = &config.reader_url {
            if StoreKind::from_url(reader)? != kind {
                return Err(StoreError::InvalidUrl("reader and writer are different kinds of store".into()));
            }
        }
        let pools = build_pools(kind, &config)?;
        let write_gate = match sqlite_path(&config.writer_url) {
            Some(path) if kind == StoreKind::Sqlite => {
                WriteGate::sqlite(&path, Duration::from_millis(config.busy_timeout_ms / 2))
            }
            _ => WriteGate::none(),
        };
        Ok(Store {
            write_gate,
            kind,
            config,
            pools: RwLock::new(pools),
            migrations,
            migrated: AtomicBool::new(false),
            migrate_lock: tokio::sync::Mutex::new(()),
            rebuilds: AtomicU64::new(0),
            fallback_readers: RwLock::new(Vec::new()),
        })
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Waits for a turn to write (SQLite: one writer at a time across the processes sharing the
    /// file, in turn rather than by SQLite's sleeping retries); hold it until the transaction ends.
    pub async fn write_turn(&self) -> WriteTurn {
        self.write_gate.turn().await
    }

    pub fn writer(&self) -> AnyPool {
        self.pools.read().unwrap_or_else(|poisoned| poisoned.into_inner()).writer.clone()
    }

    pub fn reader(&self) -> AnyPool {
        let pools = self.pools.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.reader.clone().unwrap_or_else(|| pools.writer.clone())
    }

    /// Adds another region's database as a last resort for reads (replicated data: it can lag).
    /// SQLite files are opened read-only.
    /// A PostgreSQL one is read in read-only transactions, whatever its user may do.
    pub fn add_fallback_reader(
        &self,
        region: &str,
        url: &str,
        password: Option<&StorePassword>,
    ) -> Result<(), StoreError> {
        let kind = StoreKind::from_url(url)?;
        let url = match kind {
            StoreKind::Sqlite => url.replace("mode=rwc", "mode=ro"),
            StoreKind::Postgres => url_with_password(url, password)?,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(self.config.connections_max.min(4))
            .min_connections(0)
            .acquire_timeout(Duration::from_millis(self.config.acquire_timeout_ms))
            .idle_timeout(Duration::from_secs(60))
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    if kind == StoreKind::Postgres {
                        connection.execute("SET default_transaction_read_only = on").await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy(&url)
            .map_err(|error| StoreError::InvalidUrl(redact(&error.to_string())))?;
        self.fallback_readers.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push((region.to_string(), pool));
        Ok(())
    }

    /// The other regions' databases to read from when this one fails, in order.
    pub fn fallback_readers(&self) -> Vec<(String, AnyPool)> {
        self.fallback_readers.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn rebuilds_total(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Replaces the pools with fresh ones and closes the old ones. Called when the breaker opens:
    /// connections to a restarted PostgreSQL are dead, and a pool that keeps them may not recover
    /// by itself (sqlx issue 2763).
    pub fn rebuild_pools(&self) {
        let fresh = match build_pools(self.kind, &self.config) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, "could not rebuild store pools");
                return;
            }
        };
        let old = std::mem::replace(&mut *self.pools.write().unwrap_or_else(|poisoned| poisoned.into_inner()), fresh);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(store = self.kind.as_str(), "store pools rebuilt");
        tokio::spawn(async move {
            old.writer.close().await;
            if let Some(reader) = old.reader {
                reader.close().await;
            }
        });
    }

    /// Applies pending migrations once; cheap after the first success.
    pub async fn ensure_migrated(&self) -> Result<(), StoreError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.migrate_lock.lock().await;
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.migrate().await?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let pool = self.writer();
        pool.execute(
            "CREATE TABLE IF NOT EXISTS rn_migrations (component TEXT NOT NULL, version BIGINT NOT NULL, \
             PRIMARY KEY (component, version))",
        )
        .await?;
        for migration in self.migrations.iter().copied() {
            let sql = match self.kind {
                StoreKind::Sqlite => migration.sqlite,
                StoreKind::Postgres => migration.postgres,
            };
            let applied = apply_migration(pool.clone(), migration, sql).await.map_err(|source| {
                StoreError::Migration { component: migration.component, version: migration.version, source }
            })?;
            if applied {
                tracing::info!(component = migration.component, version = migration.version, "migration applied");
            }
        }
        Ok(())
    }
}

/// Applies one migration unless another node already did. Type-erased so callers' futures stay
/// `Send` for every lifetime (sqlx executor HRTBs).
fn apply_migration(
    pool: AnyPool,
    migration: Migration,
    sql: &'static str,
) -> futures::future::BoxFuture<'static, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let mut tx = pool.begin().await?;
        // Claim the migration first: a second node racing on the same database waits on this
        // row and then skips, so the DDL runs once.
        let claimed = sqlx::query(
            "INSERT INTO rn_migrations (component, version) VALUES ($1, $2) ON CONFLICT (component, version) DO NOTHING",
        )
        .bind(migration.component)
        .bind(migration.version)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Migrations hold no semicolons inside literals, so statements split on ';'.
        for statement in sql.split(';').map(str::trim).filter(|statement| !statement.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    })
}

fn build_pools(kind: StoreKind, config: &StoreConfig) -> Result<Pools, StoreError> {
    let writer = build_pool(kind, config, &config.writer_url)?;
    let reader = config.reader_url.as_deref().map(|url| build_pool(kind, config, url)).transpose()?;
    Ok(Pools { writer, reader })
}

fn build_pool(kind: StoreKind, config: &StoreConfig, url: &str) -> Result<AnyPool, StoreError> {
    assert!(config.connections_max > 0, "connections_max must be positive");
    let busy_timeout_ms = config.busy_timeout_ms;
    let statement_timeout_ms = config.statement_timeout_ms;
    let options = AnyPoolOptions::new()
        .max_connections(config.connections_max)
        .min_connections(0)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .idle_timeout(Duration::from_secs(60))
        // No ping before every use (a round trip per write): a connection that died with the
        // server fails its first statement, which is retried, and the breaker rebuilds the pool.
        .test_before_acquire(false)
        .after_connect(move |connection, _meta| {
            Box::pin(async move {
                if kind == StoreKind::Sqlite {
                    // WAL for concurrent readers; synchronous=FULL so a commit is on disk when it
                    // returns (the promise is "never lost"); busy_timeout so writers queue up.
                    connection.execute("PRAGMA journal_mode = WAL").await?;
                    connection.execute("PRAGMA synchronous = FULL").await?;
                    connection.execute(format!("PRAGMA busy_timeout = {busy_timeout_ms}").as_str()).await?;
                } else {
                    connection.execute(format!("SET statement_timeout = {statement_timeout_ms}").as_str()).await?;
                }
                Ok(())
            })
        });
    let url = url_with_password(url, config.password.as_ref())?;
    options.connect_lazy(&url).map_err(|error| StoreError::InvalidUrl(redact(&error.to_string())))
}

/// The database file of a `sqlite:` URL (`sqlite://PATH?mode=...`, `sqlite:PATH`); None for
/// other URLs and in-memory databases.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// Keeps a password that an error message may quote out of logs.
fn redact(message: &str) -> String {
    message
        .split_whitespace()
        .map(|word| if word.contains("://") && word.contains('@') { "<url>" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a store error means "unavailable for now" (retry, then queue), as opposed to "this
/// command is at fault" (a bug: answered as an error, never queued). Only errors about the data
/// or the SQL itself are the command's fault; everything else (connection lost, shutdown,
/// read-only after a failover, bad login, disk full, locked) is the store's state.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => false,
        sqlx::Error::Database(database) => {
            let Some(code) = database.code() else { return true };
            if let Ok(sqlite_code) = code.parse::<i64>() {
                // SQL error, too big, constraint, datatype mismatch, bind range (primary codes).
                return !matches!(sqlite_code & 0xff, 1 | 18 | 19 | 20 | 25);
            }
            // PostgreSQL classes: data exception, integrity violation, syntax or access rule,
            // feature not supported.
            !(code.starts_with("22") || code.starts_with("23") || code.starts_with("42") || code.starts_with("0A"))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_database_file_of_sqlite_urls() {
        use std::path::PathBuf;
        assert_eq!(sqlite_path("sqlite:///data/r1/store.db?mode=rwc"), Some(PathBuf::from("/data/r1/store.db")));
        assert_eq!(sqlite_path("sqlite:store.db"), Some(PathBuf::from("store.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }

    #[test]
    fn a_password_joins_a_postgres_url_only_in_memory() {
        let password = StorePassword::new("s3cr#t/pw");
        let url = url_with_password("postgres://app@127.0.0.1:5432/db", Some(&password)).unwrap();
        assert_eq!(url::Url::parse(&url).unwrap().password(), Some("s3cr%23t%2Fpw"));
        assert_eq!(url_with_password("sqlite:///x.db", Some(&password)).unwrap(), "sqlite:///x.db");
        assert!(!format!("{password:?}").contains("s3cr"));
    }

    #[test]
    fn redacts_urls_with_credentials() {
        assert_eq!(redact("cannot connect to postgres://u:secret@h:5/db now"), "cannot connect to <url> now");
        assert_eq!(redact("plain message"), "plain message");
    }

    #[test]
    fn only_data_and_sql_errors_are_the_commands_fault() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
