//! `rananeeti node`: runs one node (platform + apps) until SIGTERM or Ctrl-C.

use crate::config::Config;
use anyhow::Context;
use rananeeti_node::admin::AdminToken;
use rananeeti_node::ownership::{OwnershipService, OwnershipTransportConfig};
use rananeeti_node::queue_copies::{self, HttpCopier, QueueCopiesConfig};
use rananeeti_node::replication::{self, ReplicationConfig, ReplicationMetrics};
use rananeeti_node::{App, NodeHttpConfig};
use rananeeti_platform::{Platform, PlatformMetrics, Registry, Store, StoreConfig};
use rananeeti_queue::{Queue, QueueConfig};
use std::path::PathBuf;

/// Flags override the config file, which overrides `RANANEETI_*` environment variables' defaults.
#[derive(clap::Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML configuration file (see docs/config.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Region this node belongs to.
    #[arg(long)]
    pub region: Option<String>,
    /// This node's name, unique in the deployment.
    #[arg(long)]
    pub name: Option<String>,
    /// Directory for the node's own files (the fallback queue).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Writer URL of the store: sqlite://PATH or postgres://...
    #[arg(long)]
    pub store_url: Option<String>,
    /// Optional reader URL (a replica or reader endpoint).
    #[arg(long)]
    pub reader_url: Option<String>,
    /// File holding the admin bearer token.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the cluster token nodes present to each other (replication).
    #[arg(long)]
    pub cluster_token_file: Option<PathBuf>,
    /// A peer region to replicate from, as REGION=URL[,URL...]; repeatable. Replaces the
    /// configuration's replication.peers when given.
    #[arg(long = "peer", value_name = "REGION=URLS")]
    pub peers: Vec<String>,
    /// The peer node that keeps copies of this node's queued commands (URL, or URL,URL: the
    /// two ports a peer moves between when `rananeeti deploy` rolls it).
    #[arg(long)]
    pub queue_peer: Option<String>,
    /// Another region's database to read from when this region's is down, as REGION=URL;
    /// repeatable. Replaces the configuration's store.fallback_readers when given.
    #[arg(long = "fallback-reader", value_name = "REGION=URL")]
    pub fallback_readers: Vec<String>,
    /// File holding the PostgreSQL password of the store URL's user.
    #[arg(long)]
    pub store_password_file: Option<PathBuf>,
    /// The password file of a fallback reader's database, as REGION=FILE; repeatable.
    #[arg(long = "fallback-reader-password-file", value_name = "REGION=FILE")]
    pub fallback_reader_password_files: Vec<String>,
    /// Honour the demo switches (`X-Rananeeti-Fault`, the cafe's "simulate database failure").
    #[arg(long)]
    pub demo: bool,
    /// File holding the key that signs bookstore sessions (the same on every node).
    #[arg(long)]
    pub session_key_file: Option<PathBuf>,
    /// The witness that votes on ownership with the regions (URL).
    #[arg(long)]
    pub witness: Option<String>,
    /// The home region of `global` writes (default: the first region by name).
    #[arg(long)]
    pub primary_region: Option<String>,
    /// After binding, write the listening address (e.g. 127.0.0.1:41234) to this file, atomically.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Check the configuration (defaults, file, environment, flags) and exit: 0 and one line
    /// when it is valid, else the error. Opens nothing and reads no secret.
    #[arg(long)]
    pub check_config: bool,
}

/// The configuration with the flags applied on top.
pub fn resolve(args: &NodeArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = &args.listen {
        config.node.listen = listen.clone();
    }
    if let Some(region) = &args.region {
        config.node.region = region.clone();
    }
    if let Some(name) = &args.name {
        config.node.name = name.clone();
    }
    if let Some(data_dir) = &args.data_dir {
        config.node.data_dir = data_dir.clone();
    }
    if let Some(url) = &args.store_url {
        config.store.writer_url = Some(url.clone());
    }
    if let Some(url) = &args.reader_url {
        config.store.reader_url = Some(url.clone());
    }
    if let Some(file) = &args.store_password_file {
        config.store.password_file = Some(file.clone());
    }
    if args.demo {
        config.node.demo = Some(true);
    }
    if let Some(file) = &args.admin_token_file {
        config.node.admin_token_file = Some(file.clone());
    }
    if let Some(file) = &args.cluster_token_file {
        config.node.cluster_token_file = Some(file.clone());
    }
    if let Some(url) = &args.queue_peer {
        config.queue.copy_peer_url = Some(url.clone());
    }
    if !args.fallback_readers.is_empty() {
        config.store.fallback_readers = args
            .fallback_readers
            .iter()
            .map(|text| {
                let (region, url) = text
                    .split_once('=')
                    .filter(|(region, url)| !region.trim().is_empty() && !url.trim().is_empty())
                    .with_context(|| "--fallback-reader: expected REGION=URL".to_string())?;
                Ok(crate::config::FallbackReader {
                    region: region.trim().to_string(),
                    url: url.trim().to_string(),
                    password_file: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    for text in &args.fallback_reader_password_files {
        let (region, file) = text
            .split_once('=')
            .filter(|(region, file)| !region.trim().is_empty() && !file.trim().is_empty())
            .with_context(|| "--fallback-reader-password-file: expected REGION=FILE".to_string())?;
        let reader = config
            .store
            .fallback_readers
            .iter_mut()
            .find(|reader| reader.region == region.trim())
            .with_context(|| format!("--fallback-reader-password-file: no fallback reader for region {region}"))?;
        reader.password_file = Some(PathBuf::from(file.trim()));
    }
    if let Some(file) = &args.session_key_file {
        config.bookstore.session_key_file = Some(file.clone());
    }
    if let Some(url) = &args.witness {
        config.ownership.witness_url = Some(url.clone());
    }
    if let Some(region) = &args.primary_region {
        config.ownership.primary_region = Some(region.clone());
    }
    if !args.peers.is_empty() {
        config.replication.peers = args.peers.iter().map(|peer| parse_peer(peer)).collect::<anyhow::Result<_>>()?;
    }
    config.check_complete()?;
    Ok(config)
}

fn parse_peer(text: &str) -> anyhow::Result<rananeeti_node::replication::PeerRegion> {
    let (region, urls) =
        text.split_once('=').with_context(|| format!("--peer {text}: expected REGION=URL[,URL...]"))?;
    let urls: Vec<String> = urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(String::from).collect();
    anyhow::ensure!(!region.trim().is_empty() && !urls.is_empty(), "--peer {text}: expected REGION=URL[,URL...]");
    Ok(rananeeti_node::replication::PeerRegion { region: region.trim().to_string(), urls })
}

/// Every migration a node runs: the platform's and each app's (what a restore must create).
pub fn all_migrations() -> Vec<rananeeti_platform::Migration> {
    crate::apps::migrations()
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.check_config {
        let config = resolve(&args)?;
        println!(
            "configuration is valid: node {} of region {}, {} peer region(s), queue peer {}",
            config.node.name,
            config.node.region,
            config.replication.peers.len(),
            config.copy_peer_url()?.as_deref().unwrap_or("none")
        );
        return Ok(());
    }
    crate::files::keep_private();
    rananeeti_node::telemetry::init_json_logs();
    let config = resolve(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(serve(config, args.addr_file));
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "node stopped");
    }
    result
}

async fn serve(config: Config, addr_file: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let admin_token = load_admin_token(config.node.admin_token_file.as_deref())?;
    let cluster_token = config.node.cluster_token_file.as_deref().map(read_token_file).transpose()?;

    let queue = Queue::open(QueueConfig {
        dir: data_dir.join("queue"),
        group_commit_entries_max: config.queue.group_commit_entries_max,
        waiting_entries_max: config.queue.waiting_entries_max,
        entries_max: config.queue.entries_max,
    })
    .context("opening the fallback queue")?;
    let recovery = queue.recovery();
    tracing::info!(
        entries = recovery.entries,
        torn_bytes_dropped = recovery.torn_bytes_dropped,
        "fallback queue opened"
    );

    let session_key = match &config.bookstore.session_key_file {
        Some(file) => {
            let key = read_token_file(file)?;
            anyhow::ensure!(
                key.expose().len() >= 16,
                "session key file {} holds fewer than 16 characters",
                file.display()
            );
            rananeeti_bookstore::auth::SessionKey::new(key.expose().as_bytes())
        }
        None => {
            tracing::warn!("no bookstore.session_key_file: bookstore sign-ins work only on this node");
            rananeeti_bookstore::auth::SessionKey::random()
        }
    };
    let security = rananeeti_node::security::Security::new(
        admin_token.clone(),
        rananeeti_node::security::EdgeConfig {
            cookies_secure: config.http.cookies_secure,
            trusted_proxies: crate::config::parse_networks("http.trusted_proxies", &config.http.trusted_proxies)?,
            demo: config.node.demo.unwrap_or(false),
        },
    );
    if security.config.demo {
        tracing::warn!("demo switches are on (node.demo): X-Rananeeti-Fault and the cafe's checkbox fail requests");
    }
    let apps: Vec<Box<dyn App>> =
        crate::apps::build(&crate::apps::AppWiring { config: &config, session_key, security: security.clone() });
    let migrations = crate::apps::migrations();
    let mut registry = Registry::default();
    for app in &apps {
        for handler in app.handlers() {
            registry.register(handler);
        }
    }
    let writer_url = match &config.store.writer_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", data_dir.join("store.db").display()),
    };
    let password = config.store.password_file.as_deref().map(read_password_file).transpose()?;
    let store = Store::open(
        StoreConfig {
            writer_url,
            password,
            reader_url: config.store.reader_url.clone(),
            connections_max: config.store.connections_max,
            busy_timeout_ms: config.store.busy_timeout_ms,
            statement_timeout_ms: config.store.statement_timeout_ms,
            acquire_timeout_ms: config.store.acquire_timeout_ms,
        },
        migrations,
    )?;
    for fallback in &config.store.fallback_readers {
        store
            .add_fallback_reader(
                &fallback.region,
                &fallback.url,
                fallback.password_file.as_deref().map(read_password_file).transpose()?.as_ref(),
            )
            .with_context(|| format!("fallback reader for region {}", fallback.region))?;
    }
    if let Err(error) = store.ensure_migrated().await {
        // The node still starts: writes go to the queue until the store answers.
        tracing::warn!(%error, "store not reachable at start; migrations run when it is");
    }
    let store_kind = store.kind();

    let mut metrics_registry = prometheus_client::registry::Registry::default();
    register_build_info(&mut metrics_registry);
    let metrics = PlatformMetrics::new(&mut metrics_registry);
    let platform = Platform::start(config.platform_config(), store, queue, registry, metrics);
    tracing::info!(store = store_kind.as_str(), region = platform.region(), node = platform.node(), "platform started");
    let advertised_url = std::sync::Arc::new(std::sync::OnceLock::new());
    if let Some(url) = &config.node.advertise_url {
        // Set before the server starts, which then keeps it instead of its listening address.
        let _ = advertised_url.set(url.trim_end_matches('/').to_string());
    }
    if let Some(cluster_token) = &cluster_token {
        // Any node may keep copies for a peer, whether or not it sends its own anywhere.
        let copies = Queue::open(QueueConfig {
            dir: data_dir.join("queue-copies"),
            group_commit_entries_max: config.queue.group_commit_entries_max,
            waiting_entries_max: config.queue.waiting_entries_max,
            entries_max: config.queue.entries_max,
        })
        .context("opening the store of queue copies")?;
        platform.set_copy_store(copies);
        queue_copies::start_adopter(
            std::sync::Arc::clone(&platform),
            QueueCopiesConfig {
                adopt_after_ms: config.queue.adopt_after_ms,
                adopt_check_ms: config.queue.adopt_check_ms,
            },
            cluster_token.clone(),
        );
        if let Some(peer_url) = &config.copy_peer_url()? {
            let copier = HttpCopier::new(
                peer_url.clone(),
                cluster_token.clone(),
                config.node.name.clone(),
                std::sync::Arc::clone(&advertised_url),
            );
            platform.set_copier(std::sync::Arc::new(copier), config.queue.copy_durability);
        }
        if !config.replication.peers.is_empty() {
            let metrics = ReplicationMetrics::new(&mut metrics_registry);
            replication::start(
                std::sync::Arc::clone(&platform),
                ReplicationConfig {
                    peers: config.replication.peers.clone(),
                    batch_entries_max: config.replication.batch_entries_max,
                    long_poll_ms: config.replication.long_poll_ms,
                    retry_ms: config.replication.retry_ms,
                },
                cluster_token.clone(),
                metrics,
            );
        }
    }
    let ownership = cluster_token.as_ref().map(|cluster_token| {
        let service = OwnershipService::new(
            std::sync::Arc::clone(&platform),
            OwnershipTransportConfig {
                peers: config.replication.peers.clone(),
                witness_url: config.ownership.witness_url.clone(),
                renew_ms: config.ownership.renew_ms,
                failover_after_ms: config.ownership.failover_after_ms,
            },
            cluster_token.clone(),
        );
        service.start();
        service
    });
    rananeeti_node::serve(
        NodeHttpConfig {
            ownership,
            listen: config.node.listen.clone(),
            addr_file,
            advertised_url: Some(advertised_url),
            admin_token,
            security,
            cluster_token,
            body_bytes_max: config.http.body_bytes_max,
            request_timeout_ms: config.http.request_timeout_ms,
            version: crate::VERSION.to_string(),
        },
        platform,
        &apps,
        metrics_registry,
    )
    .await
}

/// `rananeeti_build_info{version}` 1: which binary a node runs (a rolling deploy mixes two).
fn register_build_info(registry: &mut prometheus_client::registry::Registry) {
    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct BuildLabels {
        version: &'static str,
    }
    let info =
        prometheus_client::metrics::family::Family::<BuildLabels, prometheus_client::metrics::gauge::Gauge>::default();
    info.get_or_create(&BuildLabels { version: crate::VERSION }).set(1);
    registry.register("rananeeti_build_info", "The binary this node runs: 1, labelled with its version", info);
}

/// A database password from its file (trimmed); the error names the file, never the content.
pub fn read_password_file(file: &std::path::Path) -> anyhow::Result<rananeeti_platform::StorePassword> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading password file {}", file.display()))?;
    let password = text.trim();
    anyhow::ensure!(!password.is_empty(), "password file {} is empty", file.display());
    Ok(rananeeti_platform::StorePassword::new(password))
}

fn read_token_file(file: &std::path::Path) -> anyhow::Result<AdminToken> {
    let token = std::fs::read_to_string(file).with_context(|| format!("reading token file {}", file.display()))?;
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", file.display());
    Ok(AdminToken::new(token))
}

/// The admin token from its file, else `RANANEETI_ADMIN_TOKEN`; without either, a random token
/// nobody knows, so the admin API refuses everything.
fn load_admin_token(file: Option<&std::path::Path>) -> anyhow::Result<AdminToken> {
    if let Some(file) = file {
        return read_token_file(file);
    }
    if let Ok(token) = std::env::var("RANANEETI_ADMIN_TOKEN") {
        if !token.trim().is_empty() {
            return Ok(AdminToken::new(token.trim()));
        }
    }
    tracing::warn!("no admin token given: the admin API refuses every request");
    let random: [u8; 32] = rand::random();
    Ok(AdminToken::new(&hex::encode(random)))
}
