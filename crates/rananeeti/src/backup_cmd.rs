//! `rananeeti backup ...`: keys, create, list, verify, restore, prune (docs/design.md "External
//! contract"). The deployment side lives here (topology, local PostgreSQL clusters, node queues);
//! the format, encryption and repository are `rananeeti-backup`'s.

use crate::postgres::{free_loopback_port, PgCluster};
use crate::topology::Topology;
use anyhow::Context;
use rananeeti_backup::format::{Manifest, RegionEntry, FORMAT_VERSION};
use rananeeti_backup::repo::{Repo, SealedWriter};
use rananeeti_backup::spool::QueueSpool;
use rananeeti_backup::{db, keys, retention};
use rananeeti_platform::{Store, StoreConfig, StoreKind};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum BackupCommand {
    /// Make a key pair: FILE (private, mode 0600, keep it offline) and FILE.pub.
    Keygen {
        /// Where to write the private key; the public key goes to FILE.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Back up every region of a deployment (running or stopped).
    Create {
        /// The deployment's data directory (what `up --data` was given).
        #[arg(long)]
        data: PathBuf,
        /// file:///path or s3://bucket/prefix
        #[arg(long)]
        repo: String,
        /// Public key file(s) to encrypt to; repeatable.
        #[arg(long = "recipient", required = true)]
        recipients: Vec<PathBuf>,
        /// zstd level.
        #[arg(long, default_value_t = 3)]
        level: i32,
    },
    /// List complete backups with size, ratio and age.
    List {
        /// The repository: file:///path or s3://bucket/prefix (with the usual AWS_* variables).
        #[arg(long)]
        repo: String,
    },
    /// Download, check, decrypt and restore a backup into a scratch store, and compare it with
    /// its manifest.
    Verify {
        /// The repository: file:///path or s3://bucket/prefix (with the usual AWS_* variables).
        #[arg(long)]
        repo: String,
        /// The private key file (`backup keygen --out FILE` made it).
        #[arg(long)]
        key: PathBuf,
        /// The backup's id (default: the newest).
        #[arg(long)]
        backup: Option<String>,
    },
    /// Build a new deployment directory from a backup (then `rananeeti up --data DIR2`).
    Restore {
        /// The repository: file:///path or s3://bucket/prefix (with the usual AWS_* variables).
        #[arg(long)]
        repo: String,
        /// The private key file (`backup keygen --out FILE` made it).
        #[arg(long)]
        key: PathBuf,
        /// The new deployment's data directory (new or empty).
        #[arg(long)]
        into: PathBuf,
        /// The backup's id (default: the newest).
        #[arg(long)]
        backup: Option<String>,
        /// The store to restore into (default: the one the backup came from).
        #[arg(long, value_enum)]
        store: Option<crate::up::StoreKind>,
    },
    /// Delete backups the retention policy does not keep.
    Prune {
        /// The repository: file:///path or s3://bucket/prefix (with the usual AWS_* variables).
        #[arg(long)]
        repo: String,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value_t = retention::Policy::default().keep_last)]
        keep_last: u32,
        #[arg(long, default_value_t = retention::Policy::default().keep_daily)]
        keep_daily: u32,
        #[arg(long, default_value_t = retention::Policy::default().keep_weekly)]
        keep_weekly: u32,
        #[arg(long, default_value_t = retention::Policy::default().keep_monthly)]
        keep_monthly: u32,
        #[arg(long, default_value_t = retention::Policy::default().keep_yearly)]
        keep_yearly: u32,
    },
}

/// Runs a backup command; a failure is one line on stderr and exit status 1.
pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    crate::files::keep_private();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // sqlx's "slow statement" warnings are for servers: a backup reads whole tables.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if let Err(error) = runtime.block_on(dispatch(args.command)) {
        eprintln!("rananeeti backup: {}", one_line(&error));
        std::process::exit(1);
    }
    Ok(())
}

/// An error and its causes on one line, each said once: some errors (object_store's) print
/// their source inside their own message, and the chain would repeat it, up to five times for
/// an unreachable S3 endpoint. A cause's text that already holds the next cause's is cut there.
fn one_line(error: &anyhow::Error) -> String {
    let texts: Vec<String> = error.chain().map(ToString::to_string).collect();
    let mut parts: Vec<String> = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let own = match texts.get(index + 1) {
            Some(next) if !next.is_empty() => text.find(next.as_str()).map_or(text.as_str(), |at| &text[..at]),
            _ => text.as_str(),
        };
        let own = own.trim_end_matches([' ', ':', ',']).trim_end_matches("source").trim_end_matches([' ', ':', ',']);
        if !own.is_empty() {
            parts.push(own.to_string());
        }
    }
    parts.join(": ")
}

async fn dispatch(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Keygen { out } => {
            let recipient = keys::generate(&out)?;
            println!("private key: {} (mode 0600; keep it offline)", out.display());
            println!("public key:  {} ({recipient})", keys::public_path(&out).display());
            Ok(())
        }
        BackupCommand::Create { data, repo, recipients, level } => {
            create(&data, &repo, &recipients, level).await.map(|_| ())
        }
        BackupCommand::List { repo } => list(&repo).await,
        BackupCommand::Verify { repo, key, backup } => verify(&repo, &key, backup.as_deref()).await,
        BackupCommand::Restore { repo, key, into, backup, store } => {
            restore(&repo, &key, &into, backup.as_deref(), store).await
        }
        BackupCommand::Prune { repo, dry_run, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly } => {
            let policy = retention::Policy { keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly };
            prune(&repo, &policy, dry_run).await
        }
    }
}

/// One region to back up: its database and the commands queued on its nodes.
struct Source {
    name: String,
    url: String,
    /// Spooled to a scratch file: memory stays flat however long an outage made the queues.
    queued: QueueSpool,
    /// A cluster started for the backup (the deployment is stopped), stopped afterwards.
    cluster: Option<PgCluster>,
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            if let Err(error) = cluster.stop() {
                tracing::warn!(error = format!("{error:#}"), "stopping the PostgreSQL started for the backup");
            }
        }
    }
}

/// The regions of a deployment: from topology.json while it runs (queues asked of the nodes),
/// else from its directory (queues read from disk, PostgreSQL started for the while).
async fn sources(data: &Path) -> anyhow::Result<Vec<Source>> {
    anyhow::ensure!(data.is_dir(), "{} is not a deployment directory", data.display());
    let topology_path = data.join("topology.json");
    if let Ok(topology) = Topology::read(&topology_path) {
        let token =
            std::fs::read_to_string(data.join("admin-token")).context("reading the deployment's admin token")?;
        let client = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(30)).build()?;
        let mut sources = Vec::new();
        // Queues first, then the database snapshot: a command drained in between is in both
        // (and deduplicated on restore); one acknowledged before the backup is in one of them.
        for region in &topology.regions {
            let mut queued = QueueSpool::new()?;
            for node in &region.nodes {
                spool_node_queue(&client, &node.url, token.trim(), &mut queued).await.with_context(|| {
                    format!("node {} did not give its queue; a backup must hold every queued write", node.name)
                })?;
            }
            // In memory only (with its password, for PostgreSQL): never printed.
            let url = region.database.connect_url()?;
            sources.push(Source { name: region.name.clone(), url, queued, cluster: None });
        }
        return Ok(sources);
    }
    let mut regions: Vec<PathBuf> = std::fs::read_dir(data)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_dir() && path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with('r'))
        })
        .collect();
    regions.sort();
    let mut sources = Vec::new();
    for dir in regions {
        let name = dir.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_string();
        let mut queued = QueueSpool::new()?;
        for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
            let queue_dir = entry.path().join("queue");
            if queue_dir.is_dir() {
                read_queue(&queue_dir, &mut queued)?;
            }
        }
        if dir.join("store.db").is_file() {
            let url = format!("sqlite://{}?mode=ro", dir.join("store.db").display());
            sources.push(Source { name, url, queued, cluster: None });
        } else if dir.join("pg").join("PG_VERSION").is_file() {
            let cluster = PgCluster::init_and_start(&dir.join("pg"), free_loopback_port()?)
                .with_context(|| format!("starting region {name}'s PostgreSQL for the backup"))?;
            sources.push(Source { name, url: cluster.connect_url()?, queued, cluster: Some(cluster) });
        }
    }
    anyhow::ensure!(!sources.is_empty(), "{} holds no region (r1/store.db or r1/pg)", data.display());
    Ok(sources)
}

/// Spools a running node's queue from its export, streamed one line per command.
async fn spool_node_queue(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    queued: &mut QueueSpool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let response = client
        .get(format!("{url}/admin/queue/export?format=ndjson"))
        .bearer_auth(token)
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .map_err(|error| anyhow::anyhow!("{}", error.without_url()))?;
    let mut body = response.bytes_stream();
    let mut line = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|error| anyhow::anyhow!("{}", error.without_url()))?;
        for chunk in piece.split_inclusive(|byte| *byte == b'\n') {
            line.extend_from_slice(chunk);
            anyhow::ensure!(
                line.len() <= QUEUED_COMMAND_BYTES_MAX,
                "a queued command of over {QUEUED_COMMAND_BYTES_MAX} bytes"
            );
            if line.ends_with(b"\n") {
                if !line.trim_ascii().is_empty() {
                    queued.push_json(&line)?;
                }
                line.clear();
            }
        }
    }
    anyhow::ensure!(line.trim_ascii().is_empty(), "the queue export ended in the middle of a command");
    Ok(())
}

/// A queued command's JSON is at most the queue's entry size.
const QUEUED_COMMAND_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Spools the commands in a stopped node's queue.
fn read_queue(dir: &Path, queued: &mut QueueSpool) -> anyhow::Result<()> {
    let queue = rananeeti_queue::Queue::open(rananeeti_queue::QueueConfig {
        dir: dir.to_path_buf(),
        group_commit_entries_max: 64,
        waiting_entries_max: 64,
        entries_max: u64::MAX,
    })
    .with_context(|| format!("opening queue {} (is the deployment still running?)", dir.display()))?;
    let mut after = None;
    loop {
        let page = queue.peek(after, 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        for entry in page {
            queued.push_json(&entry.body).context("a queued entry does not decode")?;
        }
    }
    Ok(())
}

/// `url` may carry its password (`connect_url`): it stays in this process.
fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        writer_url: url.to_string(),
        password: None,
        reader_url: None,
        connections_max: 4,
        busy_timeout_ms: 5000,
        statement_timeout_ms: 0,
        acquire_timeout_ms: 10_000,
    }
}

/// The database behind a store URL, as the backup reads and writes it.
fn database(url: &str) -> anyhow::Result<db::Database> {
    Ok(match StoreKind::from_url(url)? {
        StoreKind::Sqlite => db::Database::Sqlite(rananeeti_backup::sqlite::path_of_url(url)?),
        StoreKind::Postgres => {
            db::Database::Postgres { pool: Store::open(store_config(url), Vec::new())?.writer(), url: url.to_string() }
        }
    })
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn now_rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

pub async fn create(data: &Path, repo_url: &str, recipient_files: &[PathBuf], level: i32) -> anyhow::Result<Manifest> {
    anyhow::ensure!((1..=22).contains(&level), "--level: zstd levels are 1 to 22");
    let mut recipients = Vec::new();
    for file in recipient_files {
        recipients.extend(keys::read_recipients(file)?);
    }
    let repo = Repo::open(repo_url)?;
    repo.check_reachable().await?;
    let started_ms = rananeeti_platform::hlc::wall_clock_ms();
    let id = format!(
        "{}-{}",
        time::OffsetDateTime::now_utc()
            .format(&time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))?,
        hex::encode(rand::random::<[u8; 3]>())
    );
    let sources = sources(data).await?;
    let store_kind = StoreKind::from_url(&sources[0].url)?;
    let mut regions = Vec::new();
    let mut sources = sources;
    let result: anyhow::Result<()> = async {
        for source in &mut sources {
            let database = database(&source.url)?;
            let queued_count = source.queued.len();
            let queued = std::mem::replace(&mut source.queued, QueueSpool::new()?);
            let object = format!("{}.export.zst.age", source.name);
            let mut out = SealedWriter::new(&repo, &id, &object, &recipients, level)?;
            let bar = progress_bar(&format!("backing up region {}", source.name));
            let tables = db::export(&database, queued, &mut out, &|bytes| bar.set_position(bytes))
                .await
                .with_context(|| format!("exporting region {}", source.name))?;
            let plain_bytes = out.plain_bytes;
            let (sha256, bytes) = out.finish().await?;
            bar.finish_and_clear();
            regions.push(RegionEntry {
                name: source.name.clone(),
                object,
                sha256,
                bytes,
                plain_bytes,
                tables,
                queued: queued_count,
            });
        }
        Ok(())
    }
    .await;
    drop(sources);
    if let Err(error) = result {
        // No manifest was written: `list` never shows it; remove what was uploaded.
        let _ = repo.delete(&id).await;
        return Err(error);
    }
    // Sizes are known only after finishing each object.
    let manifest = Manifest {
        format: FORMAT_VERSION,
        id: id.clone(),
        created_at: now_rfc3339(started_ms),
        created_at_ms: started_ms,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        store: store_kind.as_str().to_string(),
        compression: format!("zstd level {level}"),
        encryption: "age (X25519)".into(),
        recipients: recipients.iter().map(ToString::to_string).collect(),
        regions,
    };
    repo.put_manifest(&manifest).await?;
    println!(
        "backup {id}: {} regions, {} bytes stored ({} before compression), in {}",
        manifest.regions.len(),
        manifest.bytes(),
        manifest.plain_bytes(),
        repo.display
    );
    Ok(manifest)
}

async fn list(repo_url: &str) -> anyhow::Result<()> {
    let repo = Repo::open_existing(repo_url)?;
    let manifests = repo.list().await?;
    if manifests.is_empty() {
        println!("no backups in {}", repo.display);
        return Ok(());
    }
    let now = rananeeti_platform::hlc::wall_clock_ms();
    println!("{:<26} {:>7} {:>12} {:>7} {:>10}  regions", "id", "store", "bytes", "ratio", "age");
    for manifest in manifests {
        let ratio = manifest.plain_bytes() as f64 / manifest.bytes().max(1) as f64;
        let age_h = now.saturating_sub(manifest.created_at_ms) as f64 / 3_600_000.0;
        let age = if age_h < 48.0 { format!("{age_h:.1} h") } else { format!("{:.1} d", age_h / 24.0) };
        let regions: Vec<&str> = manifest.regions.iter().map(|region| region.name.as_str()).collect();
        println!(
            "{:<26} {:>7} {:>12} {:>6.1}x {:>10}  {}",
            manifest.id,
            manifest.store,
            manifest.bytes(),
            ratio,
            age,
            regions.join(",")
        );
    }
    Ok(())
}

/// Pieces of a decoded backup read ahead of the import, and how many may wait (4 MiB at most).
const DECODED_CHUNK_BYTES: usize = 1 << 20;
const DECODED_CHUNKS_AHEAD: usize = 4;

/// Downloads, checks and decrypts one region's object, then imports it into `target_url`.
async fn restore_region(
    repo: &Repo,
    manifest: &Manifest,
    region: &RegionEntry,
    identity: &age::x25519::Identity,
    target_url: &str,
    scratch: &Path,
) -> anyhow::Result<QueueSpool> {
    anyhow::ensure!(
        manifest.format == FORMAT_VERSION,
        "backup {} is in format {}; this rananeeti ({}) reads format {FORMAT_VERSION}: use the version that made it ({})",
        manifest.id,
        manifest.format,
        env!("CARGO_PKG_VERSION"),
        manifest.tool_version
    );
    let file = scratch.join(&region.object);
    repo.download_checked(&manifest.id, &region.object, &region.sha256, region.bytes, &file).await?;
    let reader = std::io::BufReader::new(std::fs::File::open(&file)?);
    let decryptor = age::Decryptor::new_buffered(reader)
        .map_err(|error| anyhow::anyhow!("object {}: not an age file: {error}", region.object))?;
    let decrypted =
        decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => {
                anyhow::anyhow!("wrong key: backup {} was not encrypted to this key", manifest.id)
            }
            other => anyhow::anyhow!("object {}: cannot decrypt: {other}", region.object),
        })?;
    let decoder = zstd::stream::read::Decoder::new(decrypted)?;
    // Decrypted and decompressed on a thread of its own, while the import parses and inserts.
    let decoded = rananeeti_backup::read_ahead::read_ahead(decoder, DECODED_CHUNK_BYTES, DECODED_CHUNKS_AHEAD)?;
    let lines = Box::new(std::io::BufReader::with_capacity(256 * 1024, decoded));
    let migrations_url = match StoreKind::from_url(target_url)? {
        StoreKind::Sqlite => {
            // Migrated under another name, then copied to the target (see `sqlite::copy_migrated`).
            let target = rananeeti_backup::sqlite::path_of_url(target_url)?;
            anyhow::ensure!(!target.exists(), "{} exists already: restore makes a new store", target.display());
            let migrated = target.with_extension("migrated.db");
            rananeeti_backup::sqlite::create_new(&migrated)?;
            format!("sqlite://{}?mode=rwc", migrated.display())
        }
        StoreKind::Postgres => target_url.to_string(),
    };
    let store = Store::open(store_config(&migrations_url), crate::node_cmd::all_migrations())?;
    store.ensure_migrated().await.with_context(|| format!("preparing the store for region {}", region.name))?;
    store.writer().close().await;
    drop(store);
    if migrations_url != target_url {
        rananeeti_backup::sqlite::copy_migrated(
            &rananeeti_backup::sqlite::path_of_url(&migrations_url)?,
            &rananeeti_backup::sqlite::path_of_url(target_url)?,
        )?;
    }
    let database = database(target_url)?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("restoring region {}", region.name));
    let (queued, _end) = db::import(&database, lines, {
        let bar = bar.clone();
        move |rows| bar.set_position(rows)
    })
    .await
    .with_context(|| format!("object {}", region.object))?;
    bar.finish_and_clear();
    // The restored tables must be the ones backed up, row for row.
    let tables: Vec<String> = region.tables.keys().cloned().collect();
    let sums = db::sums(&database, &tables).await?;
    for (table, expected) in &region.tables {
        let actual = sums.get(table).cloned().unwrap_or_default();
        anyhow::ensure!(
            &actual == expected,
            "region {} table {table}: restored {} rows with checksum {}, the manifest says {} rows with {}",
            region.name,
            actual.rows,
            actual.checksum,
            expected.rows,
            expected.checksum
        );
    }
    anyhow::ensure!(
        queued.len() == region.queued,
        "region {}: {} queued commands restored, the manifest says {}",
        region.name,
        queued.len(),
        region.queued
    );
    Ok(queued)
}

async fn verify(repo_url: &str, key: &Path, backup: Option<&str>) -> anyhow::Result<()> {
    let identity = keys::read_identity(key)?;
    let repo = Repo::open_existing(repo_url)?;
    let manifest = repo.find(backup).await?;
    let scratch = tempfile::tempdir()?;
    for region in &manifest.regions {
        let url = format!("sqlite://{}?mode=rwc", scratch.path().join(format!("{}.db", region.name)).display());
        restore_region(&repo, &manifest, region, &identity, &url, scratch.path()).await?;
    }
    let rows: u64 = manifest.regions.iter().flat_map(|region| region.tables.values()).map(|table| table.rows).sum();
    println!(
        "backup {} is good: {} regions, {rows} rows and {} queued commands restored and matching the manifest",
        manifest.id,
        manifest.regions.len(),
        manifest.regions.iter().map(|region| region.queued).sum::<u64>()
    );
    Ok(())
}

async fn restore(
    repo_url: &str,
    key: &Path,
    into: &Path,
    backup: Option<&str>,
    store: Option<crate::up::StoreKind>,
) -> anyhow::Result<()> {
    let identity = keys::read_identity(key)?;
    let repo = Repo::open_existing(repo_url)?;
    let manifest = repo.find(backup).await?;
    let created = !into.exists();
    if !created {
        anyhow::ensure!(
            std::fs::read_dir(into)?.next().is_none(),
            "{} is not empty: restore builds a new deployment directory",
            into.display()
        );
    }
    std::fs::create_dir_all(into)?;
    let restored = restore_into(&repo, &manifest, &identity, into, store).await;
    if restored.is_err() {
        // Nothing half-built is left to be mistaken for a deployment: the directory goes back to
        // how it was (absent, or empty). Its PostgreSQL clusters were stopped first.
        let removed = if created {
            std::fs::remove_dir_all(into)
        } else {
            std::fs::read_dir(into)
                .and_then(|entries| entries.into_iter().try_for_each(|entry| std::fs::remove_dir_all(entry?.path())))
        };
        if let Err(error) = removed {
            tracing::warn!(%error, dir = %into.display(), "could not remove the half-built restore");
        }
    }
    restored
}

/// Restores every region of `manifest` into the new directory `into`.
async fn restore_into(
    repo: &Repo,
    manifest: &Manifest,
    identity: &age::x25519::Identity,
    into: &Path,
    store: Option<crate::up::StoreKind>,
) -> anyhow::Result<()> {
    let postgres = match store {
        Some(crate::up::StoreKind::Postgres) => true,
        Some(crate::up::StoreKind::Sqlite) => false,
        None => manifest.store == "postgres",
    };
    let scratch = tempfile::tempdir()?;
    let mut clusters = Vec::new();
    let mut targets = Vec::new();
    for region in &manifest.regions {
        let dir = into.join(&region.name);
        std::fs::create_dir_all(&dir)?;
        let url = if postgres {
            let cluster = PgCluster::init_and_start(&dir.join("pg"), free_loopback_port()?)
                .with_context(|| format!("starting PostgreSQL for region {}", region.name))?;
            // With its password, in memory only.
            let url = cluster.connect_url()?;
            clusters.push(cluster);
            url
        } else {
            format!("sqlite://{}?mode=rwc", dir.join("store.db").display())
        };
        let queued = restore_region(repo, manifest, region, identity, &url, scratch.path()).await;
        match queued {
            Ok(queued) => targets.push((region.name.clone(), url, queued)),
            Err(error) => {
                for cluster in &clusters {
                    let _ = cluster.stop();
                }
                return Err(error);
            }
        }
    }
    let finished = finish_restore(into, targets).await;
    let mut stopped = Ok(());
    for cluster in &clusters {
        stopped = stopped.and(cluster.stop());
    }
    finished?;
    stopped?;
    println!(
        "restored backup {} ({} regions) into {}: start it with `rananeeti up --data {} --regions {}{}`",
        manifest.id,
        manifest.regions.len(),
        into.display(),
        into.display(),
        manifest.regions.len(),
        if postgres { " --store postgres" } else { "" }
    );
    Ok(())
}

/// Across regions: a region's checkpoint on a peer never points past the peer's restored
/// outbox (regions were read at slightly different moments), so nothing the peer writes after
/// the restore is skipped. Queued commands go back into a node queue, to be applied (or found
/// applied) when the deployment starts.
async fn finish_restore(into: &Path, targets: Vec<(String, String, QueueSpool)>) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut outbox_max = std::collections::HashMap::new();
    for (name, url, _) in &targets {
        let store = Store::open(store_config(url), Vec::new())?;
        let row = rananeeti_platform::sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM rn_outbox")
            .fetch_one(&store.writer())
            .await?;
        outbox_max.insert(name.clone(), rananeeti_platform::sqlx::Row::try_get::<i64, _>(&row, "seq")?);
    }
    for (name, url, queued) in targets {
        let store = Store::open(store_config(&url), Vec::new())?;
        for (peer, max) in &outbox_max {
            rananeeti_platform::sqlx::query("UPDATE rn_checkpoints SET seq = $1 WHERE peer_region = $2 AND seq > $1")
                .bind(max)
                .bind(peer)
                .execute(&store.writer())
                .await?;
        }
        if !queued.is_empty() {
            let queue = rananeeti_queue::Queue::open(rananeeti_queue::QueueConfig {
                dir: into.join(&name).join(format!("{name}-n1")).join("queue"),
                group_commit_entries_max: 1024,
                waiting_entries_max: 8192,
                entries_max: u64::MAX,
            })?;
            // In the backup's order, many at a time so they share fsyncs, a bounded number in
            // memory: read back from the scratch file a command at a time.
            let mut commands = queued.commands()?;
            let mut decoded: Vec<(rananeeti_platform::CommandId, Vec<u8>)> =
                Vec::with_capacity(RESTORE_ENQUEUE_IN_FLIGHT);
            loop {
                decoded.clear();
                while decoded.len() < RESTORE_ENQUEUE_IN_FLIGHT {
                    let Some(json) = commands.next_json()? else { break };
                    // Checked to be a command; queued as the backup holds it (serde_json's text).
                    let command: rananeeti_platform::Command =
                        serde_json::from_slice(json).context("a queued command in the backup does not decode")?;
                    decoded.push((command.id, json.to_vec()));
                }
                if decoded.is_empty() {
                    break;
                }
                let now = rananeeti_platform::hlc::wall_clock_ms() as i64;
                let enqueues = decoded.drain(..).map(|(id, body)| queue.enqueue(*id.as_bytes(), now, body));
                let mut enqueued = futures::stream::iter(enqueues).buffered(RESTORE_ENQUEUE_IN_FLIGHT);
                while let Some(result) = enqueued.next().await {
                    result?;
                }
            }
        }
    }
    Ok(())
}

/// Queued commands put back into a restored node's queue at once (they share fsyncs).
const RESTORE_ENQUEUE_IN_FLIGHT: usize = 1024;

async fn prune(repo_url: &str, policy: &retention::Policy, dry_run: bool) -> anyhow::Result<()> {
    let repo = Repo::open_existing(repo_url)?;
    let manifests = repo.list().await?;
    let created: Vec<u64> = manifests.iter().map(|manifest| manifest.created_at_ms).collect();
    let kept = retention::keep(policy, &created);
    let verb = if dry_run { "would delete" } else { "deleted" };
    for (index, manifest) in manifests.iter().enumerate() {
        if kept.contains(&index) {
            println!("keep   {} ({})", manifest.id, manifest.created_at);
        } else {
            if !dry_run {
                repo.delete(&manifest.id).await?;
            }
            println!("{verb} {} ({})", manifest.id, manifest.created_at);
        }
    }
    // Incomplete backups are left alone while they may still be written (a day).
    let day_ago = rananeeti_platform::hlc::wall_clock_ms().saturating_sub(24 * 3_600_000);
    for (id, last_written) in repo.incomplete().await? {
        if last_written < day_ago {
            if !dry_run {
                repo.delete(&id).await?;
            }
            println!("{verb} {id} (incomplete, abandoned)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug)]
    struct Wrapping(&'static str, Option<Box<Wrapping>>);

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // As object_store does: the source's text inside this one's.
            match &self.1 {
                Some(source) => write!(formatter, "{}, source:{source}", self.0),
                None => write!(formatter, "{}", self.0),
            }
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let inner = Wrapping("connection refused", None);
        let middle = Wrapping("after 3 retries", Some(Box::new(inner)));
        let error = anyhow::Error::new(middle).context("listing repository s3://bucket/prefix");
        assert_eq!(one_line(&error), "listing repository s3://bucket/prefix: after 3 retries: connection refused");
        let plain = anyhow::anyhow!("wrong key").context("restoring");
        assert_eq!(one_line(&plain), "restoring: wrong key");
    }
}
