//! The gateway's configuration: the regions and nodes behind it, routing policies per path
//! prefix, health checks, retries and limits. Every field has a default chosen so that a dead
//! region is detected in under a second on loopback (documented in docs/config.md).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on; loopback by default.
    pub listen: String,
    /// File holding the admin bearer token for `/admin/nodes` and `/admin/topology`.
    pub admin_token_file: Option<PathBuf>,
    pub regions: Vec<RegionConfig>,
    /// Routing per path prefix; the longest matching prefix wins. Without a route for `/`, `/`
    /// uses `failover` over the regions in the order they are listed.
    pub routes: Vec<RouteConfig>,
    pub health: HealthConfig,
    pub retries: RetryConfig,
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    /// POSTs under these prefixes are platform commands whose id is a digest of their content:
    /// the platform deduplicates them, so the gateway may retry them on another node. The
    /// gateway knows no app: the binary fills this from its registry of apps (`rananeeti::apps`)
    /// unless the configuration names its own. Default here: none.
    pub digest_post_prefixes: Vec<String>,
    /// The operator console (`/admin/console`).
    pub console: ConsoleConfig,
    /// Proxies in front of the gateway (IP addresses or CIDR networks, e.g. a TLS-terminating
    /// load balancer) whose `X-Forwarded-Proto` and `X-Forwarded-For` are believed: the nodes
    /// then see `https` (Secure cookies, HSTS) and the client's own address. From anyone else
    /// the proto is `http` and the client is the connection's peer. Default: none.
    pub trusted_proxies: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            admin_token_file: None,
            regions: Vec::new(),
            routes: Vec::new(),
            health: HealthConfig::default(),
            retries: RetryConfig::default(),
            limits: LimitsConfig::default(),
            upstream: UpstreamConfig::default(),
            digest_post_prefixes: Vec::new(),
            console: ConsoleConfig::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub nodes: Vec<NodeConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// Base URL, `http://127.0.0.1:8081`.
    pub url: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The first healthy region of `regions` (seed 003's warm standby).
    Failover,
    /// The client's region (header `X-Rananeeti-Region` or cookie `rananeeti_region`), else the
    /// healthy region with the lowest latency.
    Nearest,
    /// The user's home region (header `X-Rananeeti-Home` or cookie `rananeeti_home`), else failover.
    Home,
    /// A healthy region at random, in proportion to `weights`.
    Weighted,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub policy: Policy,
    /// The regions, in order of preference (`failover`, `home`'s fallback); all when empty.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Per region, for `weighted` (missing: 1).
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive passing checks that bring a node back.
    pub rise: u32,
    /// Consecutive failing checks that take a node out.
    pub fall: u32,
    /// Consecutive failed requests (connect errors or 5xx) that eject a node until its checks
    /// pass again (passive health).
    pub eject_after_failures: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        // Dead in at most interval * fall + timeout = 100 * 2 + 150 ms on loopback.
        HealthConfig {
            path: "/readyz".into(),
            interval_ms: 100,
            timeout_ms: 150,
            rise: 2,
            fall: 2,
            eject_after_failures: 3,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, the first included; never twice on one node.
    pub attempts_max: u32,
    /// Retries may add this fraction of the requests (the retry budget)...
    pub budget_ratio: f64,
    /// ...plus this many per second, so a quiet gateway can still retry.
    pub budget_min_per_sec: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { attempts_max: 3, budget_ratio: 0.2, budget_min_per_sec: 10.0 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub body_bytes_max: usize,
    /// The request head (request line and headers); larger gets 431.
    pub header_bytes_max: usize,
    /// Requests in flight at once; past it, 503 at once (load shedding).
    pub in_flight_max: usize,
    /// Per client IP: sustained requests per second, and the burst above it; past it, 429.
    pub rate_per_ip_per_sec: u32,
    pub rate_burst_per_ip: u32,
    /// A client must send its whole request head within this time (slowloris), else the
    /// connection is closed.
    pub header_read_timeout_ms: u64,
    /// ...and its body within this time, else 408.
    pub body_read_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            body_bytes_max: 1024 * 1024,
            header_bytes_max: 16 * 1024,
            in_flight_max: 2048,
            rate_per_ip_per_sec: 2000,
            rate_burst_per_ip: 4000,
            header_read_timeout_ms: 5000,
            body_read_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// Longest one attempt may wait for a node's response head (more than the nodes' submit
    /// budget, so a write that queues is not cut short).
    pub attempt_timeout_ms: u64,
    /// Idle keep-alive connections kept per node.
    pub idle_connections_per_node: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig { connect_timeout_ms: 250, attempt_timeout_ms: 5000, idle_connections_per_node: 256 }
    }
}

/// The operator console: what it samples from the nodes (`GET /admin/status` with the admin
/// token), how much of it it keeps for its charts, and the files it shows the backups and the
/// drills from (written by `up`'s backup schedule and by `rananeeti drill --report`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Between two samples of every node.
    pub sample_interval_ms: u64,
    /// Samples kept for the charts (the oldest goes first).
    pub history_samples_max: usize,
    /// One node's status gets this long to answer.
    pub sample_timeout_ms: u64,
    /// How often the page reloads itself.
    pub refresh_seconds: u64,
    /// The backup schedule's status file (`up` writes `DIR/backup-status.json`); its figures
    /// are also exported as `rananeeti_backup_*`.
    pub backup_status_file: Option<PathBuf>,
    /// A directory of drill reports, one directory per run holding `report.json`
    /// (`rananeeti drill --report DIR/drills/NAME`); the newest is shown.
    pub drills_dir: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            sample_interval_ms: 2000,
            history_samples_max: 90,
            sample_timeout_ms: 1000,
            refresh_seconds: 5,
            backup_status_file: None,
            drills_dir: None,
        }
    }
}

impl GatewayConfig {
    /// Refuses what cannot work, naming the field.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for region in &self.regions {
            anyhow::ensure!(!region.name.is_empty(), "gateway: a region has no name");
            for node in &region.nodes {
                anyhow::ensure!(names.insert(node.name.clone()), "gateway: node {} is listed twice", node.name);
                node.url
                    .parse::<hyper::Uri>()
                    .map_err(|error| anyhow::anyhow!("gateway: node {} url: {error}", node.name))?;
                anyhow::ensure!(
                    node.url.starts_with("http://"),
                    "gateway: node {} url must start with http://",
                    node.name
                );
            }
        }
        for route in &self.routes {
            anyhow::ensure!(route.prefix.starts_with('/'), "gateway: route prefix {} must start with /", route.prefix);
            for region in route.regions.iter().chain(route.weights.keys()) {
                anyhow::ensure!(
                    self.regions.iter().any(|known| &known.name == region),
                    "gateway: route {} names unknown region {region}",
                    route.prefix
                );
            }
        }
        let positive = [
            ("health.interval_ms", self.health.interval_ms),
            ("health.timeout_ms", self.health.timeout_ms),
            ("health.rise", self.health.rise as u64),
            ("health.fall", self.health.fall as u64),
            ("retries.attempts_max", self.retries.attempts_max as u64),
            ("limits.in_flight_max", self.limits.in_flight_max as u64),
            ("limits.rate_per_ip_per_sec", self.limits.rate_per_ip_per_sec as u64),
            ("limits.rate_burst_per_ip", self.limits.rate_burst_per_ip as u64),
            ("limits.header_read_timeout_ms", self.limits.header_read_timeout_ms),
            ("upstream.connect_timeout_ms", self.upstream.connect_timeout_ms),
            ("upstream.attempt_timeout_ms", self.upstream.attempt_timeout_ms),
            ("console.sample_interval_ms", self.console.sample_interval_ms),
            ("console.history_samples_max", self.console.history_samples_max as u64),
            ("console.sample_timeout_ms", self.console.sample_timeout_ms),
            ("console.refresh_seconds", self.console.refresh_seconds),
        ];
        for (name, value) in positive {
            anyhow::ensure!(value > 0, "gateway: {name} must be positive");
        }
        anyhow::ensure!(self.limits.header_bytes_max >= 8192, "gateway: limits.header_bytes_max must be at least 8192");
        self.trusted_networks()?;
        Ok(())
    }

    /// `trusted_proxies` parsed.
    pub fn trusted_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!("gateway: trusted_proxies: {text} is neither an IP address nor a CIDR network")
                    })
            })
            .collect()
    }
}
