//! `rananeeti up`: runs a whole local deployment in the foreground and keeps it running.
//!
//! It prepares the data directory (admin token, stores), starts each region's store and nodes as
//! child processes of this executable, restarts a node that exits, keeps `DIR/topology.json` in
//! step, rolls the nodes onto new processes when `rananeeti deploy` asks (`up/deploy.rs`), with
//! `--nodes-per-region MIN..MAX` adds and removes nodes by their CPU (`up/autoscale.rs`; both
//! through `up/membership.rs`), and on Ctrl-C or SIGTERM stops the nodes, then the databases, and
//! exits 0.
//!
//! Layout of `DIR` (0700, every file in it 0600): `admin-token`, `cluster-token`, `session-key`,
//! `topology.json`, `up.lock`, `witness.json`, `control.sock` (`rananeeti deploy` asks on it,
//! `up/deploy.rs`), and per region `rN/` holding `store.db` (SQLite) or `pg/` + `pg.log` +
//! `pg.password` + `pg.superuser.pgpass` (PostgreSQL), and two directories per node slot
//! (`rN/rN-nM/` and, once a deploy rolled it, `rN/rN-nM-b/`: the node's `addr` file and queues).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::RngCore;
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub mod autoscale;
mod backup_status;
pub mod deploy;
mod membership;

use self::gateways::{plan_extra_gateways, spawn_gateway_process, supervise_gateway};
use crate::postgres::{free_loopback_port, PgCluster};
use crate::topology::{DatabaseKind, DatabaseTopology, NodeTopology, RegionTopology, Topology};
use backup_status::{Attempt, BackupStatus};

mod gateways;

/// How long a (re)started node gets to answer `/healthz` on first start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bound on one readiness HTTP request.
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Restart backoff: starts here, doubles per quick exit, up to the maximum.
const RESTART_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A node that ran this long before exiting is restarted after the initial backoff again.
const RESTART_BACKOFF_RESET_UPTIME: Duration = Duration::from_secs(30);
/// How long a node gets to shut down after SIGTERM before it is killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Random bytes in a generated admin token (hex-encoded in the file).
const ADMIN_TOKEN_BYTES: usize = 32;
/// Gateways one deployment may run (`--gateways`).
const GATEWAYS_MAX: u32 = 4;

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of regions (r1..rN), each with its own store.
    #[arg(long, default_value_t = 2)]
    pub regions: u32,
    /// Nodes in each region: a count (`2`), or a range `MIN..MAX` the autoscaler keeps to by
    /// the nodes' CPU (README "Autoscaling").
    #[arg(long, default_value = "2")]
    pub nodes_per_region: autoscale::NodesPerRegion,
    /// Autoscaling: the average CPU per node to keep to, in percent of one core (default 50).
    #[arg(long)]
    pub target_cpu: Option<f64>,
    /// Autoscaling: seconds the load must stay high before a node is added (default 0: at once).
    #[arg(long)]
    pub scale_up_window: Option<u64>,
    /// Autoscaling: seconds the load must stay low before a node is removed (default 300).
    #[arg(long)]
    pub scale_down_window: Option<u64>,
    /// Autoscaling: seconds between two CPU samples of the nodes (default 5).
    #[arg(long)]
    pub scale_sample_interval: Option<u64>,
    /// Port on 127.0.0.1 where the deployment answers.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Gateways in front of the nodes: the first on --port inside this process, each other one
    /// as its own process on the ports after the witness's (all listed in topology.json).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=GATEWAYS_MAX as i64))]
    pub gateways: u32,
    /// Directory for everything the deployment keeps: stores, queues, token, topology.
    #[arg(long, default_value = "./rananeeti-data")]
    pub data: PathBuf,
    /// Store for each region: an embedded SQLite file, or a local PostgreSQL cluster started from
    /// the machine's PostgreSQL binaries.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Configuration file passed to every node.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Use the admin token in this file instead of generating DIR/admin-token.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Take scheduled backups into this repository (file:///path or s3://bucket/prefix).
    #[arg(long, requires = "backup_recipient")]
    pub backup_repo: Option<String>,
    /// Public key file scheduled backups are encrypted to.
    #[arg(long)]
    pub backup_recipient: Option<PathBuf>,
    /// Seconds between scheduled backups.
    #[arg(long, default_value_t = 3600)]
    pub backup_interval_seconds: u64,
    /// Private key to verify each scheduled backup with, right after it is taken (optional: the
    /// key can stay offline).
    #[arg(long)]
    pub backup_verify_key: Option<PathBuf>,
    /// How `up` itself logs on stderr (its supervisor, gateway and witness): lines for a person,
    /// or JSON lines like the nodes' (docs/logs.md).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    // Every file of the deployment is private: the nodes and the databases inherit it.
    crate::files::keep_private();
    // `up` is for a person at a terminal: plain lines on stderr (JSON lines when asked), stdout
    // keeps the "is up" line.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .try_init(),
    };

    if args.regions == 0 {
        bail!("--regions must be at least 1");
    }
    const NODES_MAX: u32 = 64;
    if args.regions.checked_mul(args.nodes_per_region.max()).is_none_or(|nodes| nodes > NODES_MAX) {
        bail!("at most {NODES_MAX} nodes in one local deployment (counting each region's MAX)");
    }
    // Checked before anything starts (`autoscale_policy` runs again once the nodes are up).
    autoscale_policy(&args)?;

    // One thread: every child is spawned from it, which is what the parent-death signal set on
    // the nodes is tied to.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the tokio runtime")?;
    runtime.block_on(up(args))
}

/// Everything `up` decided about one node before starting it.
#[derive(Clone, Debug)]
struct NodePlan {
    region: String,
    /// The node's place in its region (`r1-n1`): what `rananeeti deploy` rolls, one generation
    /// of processes after another.
    slot: String,
    /// 1 for the node `up` started; each roll by `rananeeti deploy` starts the next.
    generation: u32,
    /// `slot` for the first generation, `slot-genN` after (beside the old one, the new node is
    /// another node to the gateways).
    name: String,
    listen: SocketAddr,
    data_dir: PathBuf,
    addr_file: PathBuf,
    /// The slot's other home (port and data directory): the next generation starts there, beside
    /// this one, and the one after comes back here (see `up/deploy.rs`).
    other_listen: SocketAddr,
    other_data_dir: PathBuf,
    store_url: String,
    /// The store's password file (PostgreSQL), passed by path: the password is never an argument.
    store_password_file: Option<PathBuf>,
    admin_token_file: PathBuf,
    cluster_token_file: PathBuf,
    session_key_file: PathBuf,
    /// The other regions' node URLs, as `--peer REGION=URL,URL` values.
    peers: Vec<String>,
    /// The node that keeps copies of this node's queue: the next node of its region, or the
    /// first node of the next region when the region has one node.
    queue_peer: Option<String>,
    /// The witness's URL, when the deployment has more than one region.
    witness: Option<String>,
    /// The other regions' databases, as `--fallback-reader REGION=URL` values, and their
    /// password files as `--fallback-reader-password-file REGION=FILE` values.
    fallback_readers: Vec<String>,
    fallback_reader_password_files: Vec<String>,
    config: Option<PathBuf>,
    /// Honour the demo switches (unless the configuration turns them off).
    demo: bool,
}

impl NodePlan {
    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The slot's two URLs, this generation's first: peers list both, so a roll changes no
    /// other node's arguments.
    fn urls(&self) -> [String; 2] {
        [self.url(), format!("http://{}", self.other_listen)]
    }

    /// The node that replaces this one in its slot: the other home, the next generation.
    fn next_generation(&self) -> NodePlan {
        let generation = self.generation + 1;
        NodePlan {
            generation,
            name: format!("{}-gen{generation}", self.slot),
            listen: self.other_listen,
            other_listen: self.listen,
            addr_file: self.other_data_dir.join("addr"),
            data_dir: self.other_data_dir.clone(),
            other_data_dir: self.data_dir.clone(),
            ..self.clone()
        }
    }
}

/// A node process and when it was started.
struct RunningNode {
    plan: NodePlan,
    child: Option<Child>,
    started_at: Instant,
}

/// The topology and the file it is kept in, shared by the node supervisors.
#[derive(Clone)]
struct TopologyFile {
    path: PathBuf,
    topology: Arc<Mutex<Topology>>,
}

impl TopologyFile {
    fn set_node_pid(&self, node_name: &str, pid: Option<u32>) {
        self.update(|topology| {
            for region in &mut topology.regions {
                for node in &mut region.nodes {
                    if node.name == node_name {
                        node.pid = pid;
                    }
                }
            }
        });
    }

    fn set_gateway_pid(&self, gateway_name: &str, pid: Option<u32>) {
        self.update(|topology| {
            for gateway in &mut topology.gateways {
                if gateway.name == gateway_name {
                    gateway.pid = pid;
                }
            }
        });
    }

    /// Lists `node` right after `after`, in the same region (a new generation beside the old).
    fn add_node_after(&self, after: &str, node: NodeTopology) {
        self.update(|topology| {
            for region in &mut topology.regions {
                if let Some(index) = region.nodes.iter().position(|existing| existing.name == after) {
                    region.nodes.insert(index + 1, node);
                    return;
                }
            }
        });
    }

    /// Lists `node` last in `region` (a node the autoscaler started).
    fn add_node_last(&self, region: &str, node: NodeTopology) {
        self.update(|topology| {
            if let Some(listed) = topology.regions.iter_mut().find(|listed| listed.name == region) {
                listed.nodes.push(node);
            }
        });
    }

    fn remove_node(&self, node_name: &str) {
        self.update(|topology| {
            for region in &mut topology.regions {
                region.nodes.retain(|node| node.name != node_name);
            }
        });
    }

    fn gateway_urls(&self) -> Vec<String> {
        self.snapshot().gateways.iter().map(|gateway| gateway.url.clone()).collect()
    }

    fn snapshot(&self) -> Topology {
        self.topology.lock().expect("topology lock poisoned").clone()
    }

    fn update(&self, change: impl FnOnce(&mut Topology)) {
        let snapshot = {
            let mut topology = self.topology.lock().expect("topology lock poisoned");
            change(&mut topology);
            topology.clone()
        };
        if let Err(error) = snapshot.write_atomically(&self.path) {
            tracing::error!(error = format!("{error:#}"), "rewriting topology");
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut shutdown = shutdown_on_signal()?;

    fs::create_dir_all(&args.data).with_context(|| format!("creating data directory {}", args.data.display()))?;
    let data =
        fs::canonicalize(&args.data).with_context(|| format!("resolving data directory {}", args.data.display()))?;
    crate::files::make_private_dir(&data)?;
    let _lock = lock_data_dir(&data)?;
    let topology_path = data.join("topology.json");
    // A topology.json from an earlier run would tell readers we are up before we are.
    remove_if_exists(&topology_path)?;

    let admin_token_file = match &args.admin_token_file {
        Some(given) => given_admin_token_file(given)?,
        None => ensure_admin_token(&data)?,
    };
    let cluster_token_file = ensure_token(&data, "cluster-token")?;
    let session_key_file = ensure_token(&data, "session-key")?;
    let config = args
        .config
        .as_deref()
        .map(|config| fs::canonicalize(config).with_context(|| format!("configuration file {}", config.display())))
        .transpose()?;
    let executable = std::env::current_exe().context("finding the rananeeti executable")?;
    // `up` is a demo on one machine: its nodes honour the demo switches, unless the configuration
    // (file or environment) says `node.demo = false`, as a production one does.
    let demo = crate::config::Config::load(config.as_deref())?.node.demo.unwrap_or(true);

    let mut clusters = Vec::new();
    let mut topology = Topology::default();
    let mut plans = Vec::new();
    let slots_per_region = args.nodes_per_region.max();
    let running_per_region = args.nodes_per_region.min();
    // Every slot a region may run (MAX of them) has its ports from the start, so every peer
    // list names it whether its node runs or not.
    let nodes_total = args.regions * slots_per_region;
    // The gateway's port, then the nodes', the witness's, and the other gateways'.
    let ports_total = nodes_total + 1 + args.gateways;
    for region_number in 1..=args.regions {
        let region = format!("r{region_number}");
        let region_dir = data.join(&region);
        fs::create_dir_all(&region_dir).with_context(|| format!("creating {}", region_dir.display()))?;
        let database = match args.store {
            StoreKind::Sqlite => DatabaseTopology {
                kind: DatabaseKind::Sqlite,
                url: format!("sqlite://{}?mode=rwc", region_dir.join("store.db").display()),
                pid: None,
                password_file: None,
            },
            StoreKind::Postgres => {
                let port = free_loopback_port().context("finding a port for PostgreSQL")?;
                let cluster = PgCluster::init_and_start(&region_dir.join("pg"), port)
                    .with_context(|| format!("starting PostgreSQL for region {region}"))?;
                let database = DatabaseTopology {
                    kind: DatabaseKind::Postgres,
                    url: cluster.url(),
                    pid: cluster.pid(),
                    password_file: Some(cluster.password_file()),
                };
                clusters.push(cluster);
                database
            }
        };
        let mut nodes = Vec::new();
        for node_number in 1..=slots_per_region {
            let name = format!("{region}-n{node_number}");
            let node_index = (region_number - 1) * slots_per_region + (node_number - 1);
            let node_dir = region_dir.join(&name);
            // Where `rananeeti deploy` starts this node's successor: any free port (the run
            // after the deployment's port is taken), chosen now so every peer can list it.
            let other_port = free_loopback_port().context("finding a port for a node's next generation")?;
            let plan = NodePlan {
                region: region.clone(),
                slot: name.clone(),
                generation: 1,
                // The gateway takes the deployment's port; the nodes the ones after it.
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, node_port(args.port, node_index + 1, ports_total)?)),
                addr_file: node_dir.join("addr"),
                other_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, other_port)),
                other_data_dir: region_dir.join(format!("{name}-b")),
                data_dir: node_dir,
                store_url: database.url.clone(),
                store_password_file: database.password_file.clone(),
                admin_token_file: admin_token_file.clone(),
                cluster_token_file: cluster_token_file.clone(),
                session_key_file: session_key_file.clone(),
                peers: Vec::new(),
                queue_peer: None,
                witness: None,
                fallback_readers: Vec::new(),
                fallback_reader_password_files: Vec::new(),
                config: config.clone(),
                demo,
                name,
            };
            // The slots past MIN are parked: the autoscaler starts their nodes when load asks.
            if node_number <= running_per_region {
                nodes.push(NodeTopology { name: plan.name.clone(), url: plan.url(), pid: None });
            }
            plans.push(plan);
        }
        topology.regions.push(RegionTopology { name: region, nodes, database });
    }
    let regions_total = topology.regions.len();
    // Both of a slot's URLs, wherever a peer names it: the slot moves between them when it is
    // redeployed, and nobody else's arguments need to change.
    let slot_urls = |name: &str| -> String {
        plans.iter().find(|plan| plan.name == name).map(|plan| plan.urls().join(",")).unwrap_or_default()
    };
    // A queue peer is a node that always runs: among the first MIN slots of the region (the next
    // one), or, when MIN is 1, the first node of the next region; a slot past MIN sends its
    // copies to its region's first node.
    let mut queue_peers = Vec::new();
    for (region_index, region) in topology.regions.iter().enumerate() {
        let slot_names: Vec<&str> =
            plans.iter().filter(|plan| plan.region == region.name).map(|plan| plan.name.as_str()).collect();
        for (slot_index, name) in slot_names.iter().enumerate() {
            let always = running_per_region as usize;
            let queue_peer = if slot_index >= always {
                Some(slot_urls(slot_names[0]))
            } else if always > 1 {
                Some(slot_urls(slot_names[(slot_index + 1) % always]))
            } else if regions_total > 1 {
                Some(slot_urls(&topology.regions[(region_index + 1) % regions_total].nodes[0].name))
            } else {
                None
            };
            queue_peers.push((name.to_string(), queue_peer));
        }
    }
    for (name, queue_peer) in queue_peers {
        if let Some(plan) = plans.iter_mut().find(|plan| plan.name == name) {
            plan.queue_peer = queue_peer;
        }
    }
    // Every node pulls every other region's outbox, from any of that region's nodes, and reads
    // the other regions' databases when its own is down.
    let region_urls: Vec<(String, String)> = topology
        .regions
        .iter()
        .map(|region| {
            let slots: Vec<&NodePlan> = plans.iter().filter(|plan| plan.region == region.name).collect();
            // Every slot's current URL first, then their other ones.
            let urls: Vec<String> =
                (0..2).flat_map(|home| slots.iter().map(move |plan| plan.urls()[home].clone())).collect();
            (region.name.clone(), urls.join(","))
        })
        .collect();
    for plan in &mut plans {
        plan.fallback_readers = topology
            .regions
            .iter()
            .filter(|region| region.name != plan.region)
            .map(|region| format!("{}={}", region.name, region.database.url))
            .collect();
        plan.fallback_reader_password_files = topology
            .regions
            .iter()
            .filter(|region| region.name != plan.region)
            .filter_map(|region| Some(format!("{}={}", region.name, region.database.password_file.as_ref()?.display())))
            .collect();
        plan.peers = region_urls
            .iter()
            .filter(|(region, _)| *region != plan.region)
            .map(|(region, urls)| format!("{region}={urls}"))
            .collect();
    }

    // With two regions, a witness votes with them on ownership (see ownership.rs): a majority of
    // two is both, so neither could act alone. It runs in this process, on the port after the
    // nodes'. Three or more regions are a majority by themselves (a witness would only add a
    // voter to reach).
    if regions_total == 2 {
        let port = node_port(args.port, nodes_total + 1, ports_total)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("127.0.0.1:{port} is not available for the witness; choose another --port"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let witness = rananeeti_node::witness::Witness::open(data.join("witness.json"))?;
        let token = rananeeti_node::admin::AdminToken::new(fs::read_to_string(&cluster_token_file)?.trim());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|requested| *requested).await;
            };
            if let Err(error) = rananeeti_node::witness::serve(listener, witness, token, stopped).await {
                tracing::error!(error = format!("{error:#}"), "witness stopped");
            }
        });
        let witness_url = format!("http://127.0.0.1:{port}");
        for plan in &mut plans {
            plan.witness = Some(witness_url.clone());
        }
        topology.witness_url = Some(witness_url);
    }

    // The gateway, on the deployment's port, in front of every node: its own threads, so its
    // throughput does not depend on this supervisor's one.
    let gateway_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).with_context(|| {
        format!(
            "127.0.0.1:{} is not available for the gateway; is another `rananeeti up` running? Choose another --port",
            args.port
        )
    })?;
    let gateway_config = rananeeti_gateway::GatewayConfig {
        listen: format!("127.0.0.1:{}", args.port),
        regions: topology
            .regions
            .iter()
            .map(|region| rananeeti_gateway::config::RegionConfig {
                name: region.name.clone(),
                nodes: region
                    .nodes
                    .iter()
                    .map(|node| rananeeti_gateway::config::NodeConfig {
                        name: node.name.clone(),
                        url: node.url.clone(),
                    })
                    .collect(),
            })
            .collect(),
        console: rananeeti_gateway::config::ConsoleConfig {
            backup_status_file: Some(BackupStatus::path(&data)),
            drills_dir: Some(data.join("drills")),
            ..rananeeti_gateway::config::ConsoleConfig::default()
        },
        digest_post_prefixes: crate::apps::digest_post_prefixes(),
        ..rananeeti_gateway::GatewayConfig::default()
    };
    let gateway_token = fs::read_to_string(&admin_token_file)
        .with_context(|| format!("reading {}", admin_token_file.display()))?
        .trim()
        .to_string();
    let extra_gateways =
        plan_extra_gateways(&args, &data, &gateway_config, &admin_token_file, nodes_total, ports_total)?;
    let gateway = crate::gateway_cmd::spawn_gateway(gateway_listener, gateway_config, Some(gateway_token))?;
    topology.gateway_url = Some(format!("http://127.0.0.1:{}", args.port));
    topology.gateways.push(crate::topology::GatewayTopology {
        name: "g1".into(),
        url: format!("http://127.0.0.1:{}", args.port),
        pid: None,
    });
    let mut gateway_children = Vec::new();
    for plan in &extra_gateways {
        match spawn_gateway_process(&executable, plan) {
            Ok(child) => {
                topology.gateways.push(crate::topology::GatewayTopology {
                    name: plan.name.clone(),
                    url: plan.url(),
                    pid: child.id(),
                });
                gateway_children.push((plan.clone(), child));
            }
            Err(error) => {
                stop_clusters(clusters);
                return Err(error);
            }
        }
    }

    let first_plans: Vec<NodePlan> = plans
        .iter()
        .filter(|plan| topology.regions.iter().any(|region| region.nodes.iter().any(|node| node.name == plan.name)))
        .cloned()
        .collect();
    let mut running = Vec::new();
    let started = start_nodes(&executable, &first_plans, &mut running, &mut shutdown).await;
    let interrupted = match started {
        Ok(interrupted) => interrupted,
        Err(error) => {
            stop_nodes(&mut running).await;
            stop_clusters(clusters);
            return Err(error);
        }
    };
    if interrupted {
        tracing::info!("shutdown requested while starting");
        stop_nodes(&mut running).await;
        stop_clusters(clusters);
        return Ok(());
    }

    for node in &running {
        let pid = node.child.as_ref().and_then(Child::id);
        for region in &mut topology.regions {
            for entry in &mut region.nodes {
                if entry.name == node.plan.name {
                    entry.pid = pid;
                }
            }
        }
    }
    // Every slot in plan order (regions, then slots): the running ones, and the parked ones
    // (no process) the autoscaler may start.
    let mut every_slot: Vec<RunningNode> = Vec::new();
    for plan in &plans {
        match running.iter().position(|node| node.plan.name == plan.name) {
            Some(index) => every_slot.push(running.remove(index)),
            None => every_slot.push(RunningNode { plan: plan.clone(), child: None, started_at: Instant::now() }),
        }
    }
    let mut running = every_slot;
    // The control socket is there before topology.json says the deployment is up, so a deploy
    // can follow it at once; its requests wait for the supervisors, started below.
    let mut slots = Vec::new();
    let mut slot_requests = Vec::new();
    let mut regions_slots: Vec<autoscale::RegionSlots> = Vec::new();
    for node in &running {
        let (requests, received) = tokio::sync::mpsc::channel(1);
        if regions_slots.last().is_none_or(|region| region.name != node.plan.region) {
            regions_slots.push(autoscale::RegionSlots {
                name: node.plan.region.clone(),
                lock: Arc::new(tokio::sync::Mutex::new(())),
                slots: Vec::new(),
                running: running_per_region,
            });
        }
        let region = regions_slots.last_mut().expect("pushed above");
        region.slots.push(requests.clone());
        slots.push(deploy::Slot { name: node.plan.slot.clone(), requests, region_lock: Arc::clone(&region.lock) });
        slot_requests.push(received);
    }
    let control_socket = match deploy::serve_control(&data, slots, shutdown.clone()) {
        Ok(path) => path,
        Err(error) => {
            stop_nodes(&mut running).await;
            stop_clusters(clusters);
            return Err(error);
        }
    };
    if let Err(error) = topology.write_atomically(&topology_path) {
        let _ = remove_if_exists(&control_socket);
        stop_nodes(&mut running).await;
        stop_clusters(clusters);
        return Err(error);
    }
    let topology_file = TopologyFile { path: topology_path.clone(), topology: Arc::new(Mutex::new(topology)) };

    let base_url = format!("http://127.0.0.1:{}/", args.port);
    println!("rananeeti is up: {base_url}  (admin token in {})", admin_token_file.display());
    println!("cafe: {base_url}cafe");
    if first_plans.len() > 1 {
        for plan in &first_plans {
            println!("  region {} node {}: {}/", plan.region, plan.name, plan.url());
        }
    }
    for plan in &extra_gateways {
        println!("  gateway {}: {}/", plan.name, plan.url());
    }
    let _ = std::io::stdout().flush();

    let membership = membership::Membership::new(admin_token_file.clone(), extra_gateways.clone())?;
    let deployer = deploy::Deployer::new(membership.clone());
    let mut supervisors: Vec<_> = running
        .into_iter()
        .zip(slot_requests)
        .map(|(node, received)| {
            tokio::spawn(supervise(
                node,
                executable.clone(),
                topology_file.clone(),
                received,
                deployer.clone(),
                membership.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    if let Some(policy) = autoscale_policy(&args)? {
        tracing::info!(
            nodes_per_region = %args.nodes_per_region,
            target_cpu_percent = policy.target_cpu_percent,
            scale_up_window_seconds = policy.up_window.as_secs(),
            scale_down_window_seconds = policy.down_window.as_secs(),
            sample_interval_seconds = policy.sample_interval.as_secs(),
            "autoscaling"
        );
        tokio::spawn(autoscale::run(policy, regions_slots, topology_file.clone(), shutdown.clone()));
    }
    for (plan, child) in gateway_children {
        supervisors.push(tokio::spawn(supervise_gateway(
            plan,
            child,
            executable.clone(),
            topology_file.clone(),
            shutdown.clone(),
        )));
    }
    if let (Some(repo), Some(recipient)) = (&args.backup_repo, &args.backup_recipient) {
        let schedule = BackupSchedule {
            executable: executable.clone(),
            data: data.clone(),
            repo: repo.clone(),
            recipient: recipient.clone(),
            every: Duration::from_secs(args.backup_interval_seconds.max(1)),
            verify_key: args.backup_verify_key.clone(),
        };
        tokio::spawn(schedule.run(shutdown.clone()));
    } else {
        // Not scheduled this time: an earlier run's status would say otherwise.
        remove_if_exists(&BackupStatus::path(&data))?;
    }
    let _ = shutdown.wait_for(|requested| *requested).await;
    tracing::info!("shutting down");
    for supervisor in supervisors {
        if let Err(error) = supervisor.await {
            tracing::error!(%error, "node supervisor failed");
        }
    }
    gateway.stop();
    stop_clusters(clusters);
    remove_if_exists(&control_socket)?;
    remove_if_exists(&topology_path)?;
    tracing::info!("stopped");
    Ok(())
}

/// The autoscaler's policy from `up`'s flags: `None` for a fixed count of nodes (when none of the
/// autoscaling flags may be given).
fn autoscale_policy(args: &UpArgs) -> anyhow::Result<Option<autoscale::Policy>> {
    /// Longest stabilization window and sample interval taken, in seconds (a day).
    const WINDOW_SECONDS_MAX: u64 = 86_400;
    /// Highest target: 64 cores' worth, in percent of one.
    const TARGET_CPU_PERCENT_MAX: f64 = 6_400.0;
    if !args.nodes_per_region.is_range() {
        let given = [args.target_cpu.is_some(), args.scale_up_window.is_some(), args.scale_down_window.is_some()];
        if given.contains(&true) || args.scale_sample_interval.is_some() {
            bail!(
                "--target-cpu, --scale-up-window, --scale-down-window and --scale-sample-interval need \
                 --nodes-per-region MIN..MAX (a plain number runs that many nodes, unscaled)"
            );
        }
        return Ok(None);
    }
    let target_cpu_percent = args.target_cpu.unwrap_or(50.0);
    if !(target_cpu_percent > 0.0 && target_cpu_percent <= TARGET_CPU_PERCENT_MAX) {
        bail!("--target-cpu {target_cpu_percent}: a percent of one core, above 0 and at most {TARGET_CPU_PERCENT_MAX}");
    }
    let seconds = |flag: &str, value: Option<u64>, default: u64, least: u64| -> anyhow::Result<Duration> {
        let value = value.unwrap_or(default);
        if !(least..=WINDOW_SECONDS_MAX).contains(&value) {
            bail!("--{flag} {value}: seconds from {least} to {WINDOW_SECONDS_MAX}");
        }
        Ok(Duration::from_secs(value))
    };
    Ok(Some(autoscale::Policy {
        nodes: args.nodes_per_region,
        target_cpu_percent,
        up_window: seconds("scale-up-window", args.scale_up_window, 0, 0)?,
        down_window: seconds("scale-down-window", args.scale_down_window, 300, 0)?,
        sample_interval: seconds("scale-sample-interval", args.scale_sample_interval, 5, 1)?,
    }))
}

/// Scheduled backups: `rananeeti backup create` (then `verify`, then `prune`) as child processes,
/// so the compression never slows this supervisor.
struct BackupSchedule {
    executable: PathBuf,
    data: PathBuf,
    repo: String,
    recipient: PathBuf,
    every: Duration,
    verify_key: Option<PathBuf>,
}

impl BackupSchedule {
    /// Runs `create`, `verify` (with a key) and `prune` every `every`, recording each outcome in
    /// `DIR/backup-status.json` (see `backup_status`).
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let status_path = BackupStatus::path(&self.data);
        let mut status =
            BackupStatus::load_or_new(&status_path, &self.repo, self.every.as_secs(), self.verify_key.is_some());
        self.record(&status, &status_path);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.wait_for(|requested| *requested) => return,
            }
            let data = self.data.display().to_string();
            let recipient = self.recipient.display().to_string();
            let created = self
                .step(&["backup", "create", "--data", &data, "--repo", &self.repo, "--recipient", &recipient])
                .await;
            let attempt = Attempt::now(&created);
            if attempt.ok {
                status.last_success = Some(attempt.clone());
            }
            status.last_attempt = Some(attempt);
            self.record(&status, &status_path);
            if created.is_err() {
                continue;
            }
            if let Some(key) = &self.verify_key {
                let key = key.display().to_string();
                let verified = self.step(&["backup", "verify", "--repo", &self.repo, "--key", &key]).await;
                status.last_verify = Some(Attempt::now(&verified));
                self.record(&status, &status_path);
            }
            let _ = self.step(&["backup", "prune", "--repo", &self.repo]).await;
        }
    }

    fn record(&self, status: &BackupStatus, path: &Path) {
        if let Err(error) = status.write(path) {
            tracing::error!(error = format!("{error:#}"), "recording the backup status");
        }
    }

    /// One `rananeeti backup` command: its output, or its error.
    async fn step(&self, args: &[&str]) -> Result<String, String> {
        let output =
            tokio::process::Command::new(&self.executable).args(args).stdin(std::process::Stdio::null()).output().await;
        match output {
            Ok(output) if output.status.success() => {
                let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
                tracing::info!(event = "backup_step", step = args[1], ok = true, output = %printed, "scheduled backup");
                Ok(printed)
            }
            Ok(output) => {
                let error = String::from_utf8_lossy(&output.stderr).trim().to_string();
                tracing::error!(event = "backup_step", step = args[1], ok = false, %error, "scheduled backup failed");
                Err(error)
            }
            Err(error) => {
                tracing::error!(event = "backup_step", step = args[1], ok = false, %error, "could not run the scheduled backup");
                Err(format!("could not run rananeeti backup {}: {error}", args[1]))
            }
        }
    }
}

/// The port at `node_index` after the deployment's port (0: the gateway's own).
fn node_port(base_port: u16, node_index: u32, nodes_total: u32) -> anyhow::Result<u16> {
    assert!(node_index < nodes_total, "port {node_index} of {nodes_total}");
    let port = u32::from(base_port) + node_index;
    u16::try_from(port).with_context(|| format!("node port {port} is out of range"))
}

/// Spawns every planned node and waits until each answers `/healthz`. Returns `true` when a
/// shutdown was requested meanwhile.
async fn start_nodes(
    executable: &Path,
    plans: &[NodePlan],
    running: &mut Vec<RunningNode>,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let client = probe_client()?;
    for plan in plans {
        if let Err(error) = TcpListener::bind(plan.listen) {
            bail!(
                "{} is not available for node {} ({error}); is another `rananeeti up` running? \
                 Choose another --port",
                plan.listen,
                plan.name
            );
        }
        let child = spawn_node(executable, plan)?;
        running.push(RunningNode { plan: plan.clone(), child: Some(child), started_at: Instant::now() });
    }
    for node in running.iter_mut() {
        if wait_until_ready(node, &client, shutdown).await? == Readiness::ShutdownRequested {
            return Ok(true);
        }
    }
    Ok(false)
}

fn spawn_node(executable: &Path, plan: &NodePlan) -> anyhow::Result<Child> {
    fs::create_dir_all(&plan.data_dir).with_context(|| format!("creating {}", plan.data_dir.display()))?;
    // Whatever the addr file says must come from the process we are about to start.
    remove_if_exists(&plan.addr_file)?;

    let mut command = Command::new(executable);
    command
        .arg("node")
        .arg("--listen")
        .arg(plan.listen.to_string())
        .arg("--region")
        .arg(&plan.region)
        .arg("--name")
        .arg(&plan.name)
        .arg("--data-dir")
        .arg(&plan.data_dir)
        .arg("--store-url")
        .arg(&plan.store_url)
        .arg("--admin-token-file")
        .arg(&plan.admin_token_file)
        .arg("--addr-file")
        .arg(&plan.addr_file)
        .arg("--cluster-token-file")
        .arg(&plan.cluster_token_file)
        .arg("--session-key-file")
        .arg(&plan.session_key_file);
    for peer in &plan.peers {
        command.arg("--peer").arg(peer);
    }
    if let Some(queue_peer) = &plan.queue_peer {
        command.arg("--queue-peer").arg(queue_peer);
    }
    if let Some(witness) = &plan.witness {
        command.arg("--witness").arg(witness);
    }
    if let Some(file) = &plan.store_password_file {
        command.arg("--store-password-file").arg(file);
    }
    for fallback in &plan.fallback_readers {
        command.arg("--fallback-reader").arg(fallback);
    }
    for file in &plan.fallback_reader_password_files {
        command.arg("--fallback-reader-password-file").arg(file);
    }
    if plan.demo {
        command.arg("--demo");
    }
    if let Some(config) = &plan.config {
        command.arg("--config").arg(config);
    }
    command
        .stdin(std::process::Stdio::null())
        // Its own process group: Ctrl-C at the terminal reaches `up` only, which then stops the
        // nodes in order instead of racing them.
        .process_group(0)
        // Backstop for paths that forget to stop a node; the orderly path sends SIGTERM first.
        .kill_on_drop(true);
    stop_with_up(&mut command);
    let child = command.spawn().with_context(|| format!("starting node {}", plan.name))?;
    tracing::info!(
        event = "node_started",
        node = %plan.name,
        pid = child.id(),
        listen = %plan.listen,
        "started node"
    );
    Ok(child)
}

/// If `up` dies without stopping the child (kill -9), the child gets SIGTERM and shuts down
/// rather than holding its port for the next `up`.
fn stop_with_up(command: &mut Command) {
    let parent_pid = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes two system calls
    // (prctl, getppid), both async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid().as_raw() as u32 != parent_pid {
                return Err(std::io::Error::other("rananeeti up exited while starting a child process"));
            }
            Ok(())
        });
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    ShutdownRequested,
}

/// Waits until the node has written its address file and answers `GET /healthz` with 200 there,
/// then reports (without failing) when `/readyz` says it cannot serve yet.
async fn wait_until_ready(
    node: &mut RunningNode,
    client: &reqwest::Client,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Readiness> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let name = node.plan.name.clone();
    let address = loop {
        let child = node.child.as_mut().context("node has no process to wait for")?;
        if let Some(status) = child.try_wait().context("checking node process")? {
            bail!("node {name} exited with {status} before it was ready (its log is above)");
        }
        if let Some(address) = read_addr_file(&node.plan.addr_file) {
            let healthz = format!("http://{address}/healthz");
            if let Ok(response) = client.get(&healthz).send().await {
                if response.status().is_success() {
                    break address;
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("node {name} did not answer GET /healthz within {} s", READY_TIMEOUT.as_secs());
        }
        tokio::select! {
            _ = tokio::time::sleep(READY_POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|requested| *requested) => return Ok(Readiness::ShutdownRequested),
        }
    };

    match client.get(format!("http://{address}/readyz")).send().await {
        Ok(response) if response.status().is_success() => {
            tracing::info!(node = %name, %address, "node is ready");
        }
        Ok(response) => {
            let status = response.status();
            let reason = response.text().await.unwrap_or_default();
            tracing::warn!(node = %name, %address, %status, %reason, "node is up but not ready yet");
        }
        Err(error) => tracing::warn!(node = %name, %address, %error, "GET /readyz failed"),
    }
    Ok(Readiness::Ready)
}

fn read_addr_file(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn probe_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        // Loopback only: a proxy from the environment must not sit in between.
        .no_proxy()
        .timeout(PROBE_REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client for readiness probes")
}

/// What a slot's supervisor is asked: a roll (`rananeeti deploy`), or a start or stop
/// (the autoscaler).
enum SlotCommand {
    Deploy(deploy::SlotRequest),
    Scale(autoscale::ScaleRequest),
}

/// What wakes a node's supervisor.
enum SupervisorEvent {
    Exited(std::io::Result<std::process::ExitStatus>),
    Command(SlotCommand),
    Shutdown,
}

/// Keeps one node slot running until shutdown: restarts its node (same port) whenever it exits,
/// with a backoff, and records each new pid in the topology; rolls it onto a new process when
/// `rananeeti deploy` asks (`up/deploy.rs`), starts or stops it when the autoscaler asks
/// (`up/autoscale.rs`), which is why those happen here and nowhere else: nothing else starts or
/// stops this slot's processes; on shutdown, stops it. A slot whose node the autoscaler stopped
/// (or never started) is parked: nothing to restart, nothing to roll.
async fn supervise(
    mut node: RunningNode,
    mut executable: PathBuf,
    topology: TopologyFile,
    mut requests: tokio::sync::mpsc::Receiver<SlotCommand>,
    deployer: deploy::Deployer,
    membership: membership::Membership,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = RESTART_BACKOFF_INITIAL;
    let mut parked = node.child.is_none();
    loop {
        let name = node.plan.name.clone();
        if parked {
            let command = tokio::select! {
                Some(command) = requests.recv() => command,
                _ = shutdown.wait_for(|requested| *requested) => return,
            };
            match command {
                SlotCommand::Deploy(request) => request.nothing_to_roll(),
                SlotCommand::Scale(request) if request.start => {
                    let started =
                        autoscale::bring_in(&membership, &mut node, &executable, &topology, &mut shutdown).await;
                    parked = started.is_err();
                    backoff = RESTART_BACKOFF_INITIAL;
                    let _ = request
                        .done
                        .send(started.map(|()| node.plan.name.clone()).map_err(|error| format!("{error:#}")));
                }
                SlotCommand::Scale(request) => {
                    let _ = request.done.send(Err(format!("{name} is not running")));
                }
            }
            continue;
        }
        let event = match node.child.as_mut() {
            Some(child) => tokio::select! {
                status = child.wait() => SupervisorEvent::Exited(status),
                // `None` only once the control socket is gone (it lives as long as `up`).
                Some(command) = requests.recv() => SupervisorEvent::Command(command),
                _ = shutdown.wait_for(|requested| *requested) => SupervisorEvent::Shutdown,
            },
            // Restarting failed last time: go straight to the backoff.
            None => SupervisorEvent::Exited(Err(std::io::Error::other("node is not running"))),
        };
        let status = match event {
            SupervisorEvent::Shutdown => {
                stop_node(&mut node).await;
                return;
            }
            SupervisorEvent::Command(SlotCommand::Deploy(request)) => {
                deployer.handle(&mut node, &mut executable, &topology, request, &mut shutdown).await;
                continue;
            }
            SupervisorEvent::Command(SlotCommand::Scale(request)) => {
                let outcome = if request.start {
                    Err(format!("{name} runs already"))
                } else {
                    match autoscale::take_out(&membership, &mut node, &topology, &mut shutdown).await {
                        Ok(()) => {
                            parked = true;
                            Ok(name.clone())
                        }
                        Err(error) => Err(format!("{error:#}")),
                    }
                };
                let _ = request.done.send(outcome);
                continue;
            }
            SupervisorEvent::Exited(status) => status,
        };
        let uptime = node.started_at.elapsed();
        match status {
            Ok(status) => tracing::error!(
                event = "node_exited",
                node = %name,
                %status,
                uptime_seconds = uptime.as_secs_f64(),
                "node exited; restarting it"
            ),
            Err(error) => {
                tracing::error!(event = "node_exited", node = %name, %error, "node is not running; restarting it")
            }
        }
        node.child = None;
        topology.set_node_pid(&name, None);
        if uptime >= RESTART_BACKOFF_RESET_UPTIME {
            backoff = RESTART_BACKOFF_INITIAL;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|requested| *requested) => return,
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);

        node.started_at = Instant::now();
        match spawn_node(&executable, &node.plan) {
            Ok(child) => {
                topology.set_node_pid(&name, child.id());
                node.child = Some(child);
            }
            Err(error) => {
                tracing::error!(node = %name, error = format!("{error:#}"), "restarting node failed");
            }
        }
    }
}

async fn stop_nodes(running: &mut [RunningNode]) {
    for node in running.iter_mut() {
        stop_node(node).await;
    }
}

/// SIGTERM, then SIGKILL if the node is still running after `NODE_STOP_TIMEOUT`.
async fn stop_node(node: &mut RunningNode) {
    let Some(mut child) = node.child.take() else {
        return;
    };
    let name = &node.plan.name;
    // `id` is `None` once the child has been reaped, so the pid cannot belong to someone else.
    if let Some(pid) = child.id() {
        if let Err(error) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
            tracing::warn!(node = %name, %error, "sending SIGTERM");
        }
    }
    match tokio::time::timeout(NODE_STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(node = %name, %status, "node stopped"),
        Ok(Err(error)) => tracing::warn!(node = %name, %error, "waiting for node"),
        Err(_) => {
            tracing::warn!(
                node = %name,
                timeout_seconds = NODE_STOP_TIMEOUT.as_secs(),
                "node ignored SIGTERM; killing it"
            );
            if let Err(error) = child.kill().await {
                tracing::warn!(node = %name, %error, "killing node");
            }
        }
    }
}

fn stop_clusters(clusters: Vec<PgCluster>) {
    for cluster in clusters {
        match cluster.stop() {
            Ok(()) => tracing::info!(port = cluster.port(), "PostgreSQL stopped"),
            Err(error) => tracing::error!(error = format!("{error:#}"), "stopping PostgreSQL"),
        }
    }
}

/// A receiver that turns `true` on the first SIGINT (Ctrl-C) or SIGTERM.
fn shutdown_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutdown requested");
        let _ = sender.send(true);
        // Keep the sender so receivers never see the channel close.
        std::future::pending::<()>().await;
    });
    Ok(receiver)
}

/// One `up` per data directory: a second one would fight the first over ports and files.
fn lock_data_dir(data: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    let path = data.join("up.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => {
            anyhow::anyhow!("another `rananeeti up` is using {} (it holds {})", data.display(), path.display())
        }
        errno => anyhow::anyhow!("locking {}: {errno}", path.display()),
    })
}

/// `DIR/admin-token`: kept from an earlier run when it is private to us, else a fresh random
/// token, created 0600 from the start.
fn ensure_admin_token(data: &Path) -> anyhow::Result<PathBuf> {
    ensure_token(data, "admin-token")
}

/// DIR/`file_name`: a random token, mode 0600, kept across runs when it is private and non-empty.
fn ensure_token(data: &Path, file_name: &str) -> anyhow::Result<PathBuf> {
    let path = data.join(file_name);
    match fs::symlink_metadata(&path) {
        Ok(metadata) => {
            let private =
                metadata.is_file() && metadata.mode() & 0o077 == 0 && metadata.uid() == nix::unistd::geteuid().as_raw();
            let usable = private && fs::read_to_string(&path).map(|token| !token.trim().is_empty()).unwrap_or(false);
            if usable {
                return Ok(path);
            }
            tracing::warn!(
                path = %path.display(),
                "existing token is empty or readable by others; replacing it"
            );
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", path.display()));
        }
    }
    write_new_admin_token(&path)?;
    tracing::info!(path = %path.display(), "generated a new token");
    Ok(path)
}

fn write_new_admin_token(path: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; ADMIN_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);

    let mut temporary_name = path.as_os_str().to_os_string();
    temporary_name.push(".tmp");
    let temporary = PathBuf::from(temporary_name);
    remove_if_exists(&temporary)?;
    let write = || -> std::io::Result<()> {
        // Mode at creation, so the token is never readable by others, not even for an instant.
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    };
    write().with_context(|| format!("writing admin token {}", path.display()))
}

fn given_admin_token_file(given: &Path) -> anyhow::Result<PathBuf> {
    let path = fs::canonicalize(given).with_context(|| format!("admin token file {}", given.display()))?;
    let metadata = fs::metadata(&path).with_context(|| format!("admin token file {}", path.display()))?;
    if !metadata.is_file() {
        bail!("admin token file {} is not a file", path.display());
    }
    if metadata.mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "admin token file is readable by other users; chmod 600 it"
        );
    }
    Ok(path)
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}
