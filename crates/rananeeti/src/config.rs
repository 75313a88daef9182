//! Node configuration: defaults, then a TOML file, then `RANANEETI_<SECTION>__<FIELD>`
//! environment variables, then command-line flags. Every field is documented in docs/config.md.

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub store: StoreSection,
    pub submit: SubmitSection,
    pub breaker: BreakerSection,
    pub queue: QueueSection,
    pub drain: DrainSection,
    pub http: HttpSection,
    pub replication: ReplicationSection,
    pub ownership: OwnershipSection,
    pub cafe: CafeSection,
    pub bookstore: BookstoreSection,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BookstoreSection {
    /// File holding the key that signs the bookstore's session tokens; every node of the
    /// deployment must have the same. Without one, tokens work only on the node that issued them.
    pub session_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnershipSection {
    /// The home region of `global` writes. Default: the first region by name (this node's and
    /// its peers'). Every node must agree.
    pub primary_region: Option<String>,
    /// The witness that votes with the regions (needed for a two-region deployment to fail over
    /// by itself or keep applying owned writes while the other region is down).
    pub witness_url: Option<String>,
    /// How long an exchange with a majority of the voters lets this node apply owned writes.
    pub lease_ms: u64,
    /// How often ownership tables are exchanged (the lease renewed).
    pub renew_ms: u64,
    /// An acting owner nobody has heard from for this long is failed over; 0 turns it off.
    pub failover_after_ms: u64,
}

impl Default for OwnershipSection {
    fn default() -> Self {
        OwnershipSection {
            primary_region: None,
            witness_url: None,
            lease_ms: 2000,
            renew_ms: 250,
            failover_after_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    /// The other regions and their nodes' URLs; this node pulls each one's outbox.
    pub peers: Vec<rananeeti_node::replication::PeerRegion>,
    pub batch_entries_max: usize,
    pub long_poll_ms: u64,
    pub retry_ms: u64,
    /// `async` (committed once committed here) or `region-sync` (once another region holds it).
    pub durability: rananeeti_platform::Durability,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            peers: Vec::new(),
            batch_entries_max: 256,
            long_poll_ms: 1000,
            retry_ms: 200,
            durability: rananeeti_platform::Durability::Async,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Address to listen on; loopback only by default.
    pub listen: String,
    pub region: String,
    pub name: String,
    /// The node's own files: the fallback queue (and the SQLite store by default).
    pub data_dir: PathBuf,
    /// File holding the admin bearer token. Without one the admin API refuses every request.
    pub admin_token_file: Option<PathBuf>,
    /// File holding the cluster token nodes present to each other (replication).
    pub cluster_token_file: Option<PathBuf>,
    /// The URL other nodes reach this one on (queue copies call back on it). Default: the
    /// listening address, with 127.0.0.1 for an unspecified one (0.0.0.0): right on one machine,
    /// wrong in a pod, where it is the pod's DNS name.
    pub advertise_url: Option<String>,
    /// Demo switches: the `X-Rananeeti-Fault: db` header and the cafe's "simulate database
    /// failure" box make one request see a failed database. Off unless set; `up` sets it for its
    /// nodes unless the configuration says `false` (a production configuration does).
    pub demo: Option<bool>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            listen: "127.0.0.1:8080".into(),
            region: "r1".into(),
            name: "r1-n1".into(),
            data_dir: PathBuf::from("rananeeti-data/r1/r1-n1"),
            admin_token_file: None,
            cluster_token_file: None,
            advertise_url: None,
            demo: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://PATH?mode=rwc` or `postgres://USER@HOST:PORT/DB`. Default: `store.db` in data_dir.
    pub writer_url: Option<String>,
    /// File holding the PostgreSQL password of the URLs' user (mode 0600). A URL never carries
    /// the password.
    pub password_file: Option<PathBuf>,
    /// Optional reader endpoint (replica); reads use the writer when absent.
    pub reader_url: Option<String>,
    /// Other regions' databases, read (marked stale) when this region's cannot be.
    pub fallback_readers: Vec<FallbackReader>,
    pub connections_max: u32,
    pub busy_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            writer_url: None,
            password_file: None,
            reader_url: None,
            fallback_readers: Vec::new(),
            connections_max: 8,
            busy_timeout_ms: 1000,
            statement_timeout_ms: 1500,
            acquire_timeout_ms: 1000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackReader {
    pub region: String,
    pub url: String,
    /// File holding that database's password, when it needs one.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitSection {
    pub budget_ms: u64,
    pub attempts_max: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub queue_reserve_ms: u64,
}

impl Default for SubmitSection {
    fn default() -> Self {
        let defaults = rananeeti_platform::SubmitConfig::default();
        SubmitSection {
            budget_ms: defaults.budget_ms,
            attempts_max: defaults.attempts_max,
            backoff_base_ms: defaults.backoff_base_ms,
            backoff_max_ms: defaults.backoff_max_ms,
            queue_reserve_ms: defaults.queue_reserve_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSection {
    pub failures_to_open: u32,
    pub open_ms: u64,
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection { failures_to_open: 3, open_ms: 1000 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    pub group_commit_entries_max: usize,
    pub waiting_entries_max: usize,
    pub entries_max: u64,
    /// The peer node that keeps copies of this node's queued commands (URL; or several,
    /// comma-separated, tried in turn when one does not answer: a peer that `rananeeti deploy`
    /// moves between two ports).
    pub copy_peer_url: Option<String>,
    /// For nodes of a Kubernetes StatefulSet, whose names end in an ordinal (`rananeeti-node-3`):
    /// the peer's URL with `{peer}` standing for the peer's name, the node with the previous
    /// ordinal (ordinal 0 takes ordinal 1), e.g. `http://{peer}.rananeeti-node:8080`. Pods leave
    /// a StatefulSet from the highest ordinal down, so every node's peer exists while it does.
    /// Used when `copy_peer_url` is not set.
    pub copy_peer_url_template: Option<String>,
    /// `sync`: *pending* is answered once the peer holds the copy; `async`: after the local fsync.
    pub copy_durability: rananeeti_platform::CopyDurability,
    /// How long the origin of held copies must be unreachable before they are adopted.
    pub adopt_after_ms: u64,
    /// How often held copies are checked against their origins.
    pub adopt_check_ms: u64,
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            group_commit_entries_max: 1024,
            waiting_entries_max: 8192,
            entries_max: 1_000_000,
            copy_peer_url: None,
            copy_peer_url_template: None,
            copy_durability: rananeeti_platform::CopyDurability::Sync,
            adopt_after_ms: 5000,
            adopt_check_ms: 1000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainSection {
    pub batch_entries_max: usize,
    pub scan_entries_max: usize,
    pub idle_ms: u64,
    pub apply_timeout_ms: u64,
}

impl Default for DrainSection {
    fn default() -> Self {
        let defaults = rananeeti_platform::DrainConfig::default();
        DrainSection {
            batch_entries_max: defaults.batch_entries_max,
            scan_entries_max: defaults.scan_entries_max,
            idle_ms: defaults.idle_ms,
            apply_timeout_ms: defaults.apply_timeout_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub body_bytes_max: usize,
    pub request_timeout_ms: u64,
    /// TLS is in front of the deployment: cookies always get `Secure` and answers HSTS. Without
    /// it, they do when a trusted proxy says the request came over HTTPS (`X-Forwarded-Proto`).
    pub cookies_secure: bool,
    /// Peers (IP addresses or CIDR networks) whose `X-Forwarded-Proto` and client address
    /// (`X-Rananeeti-Client`, set by the gateway) are believed. Default: loopback (`up`'s gateway).
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            body_bytes_max: 64 * 1024,
            request_timeout_ms: 30_000,
            cookies_secure: false,
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// Parses `http.trusted_proxies`-like lists: IP addresses or CIDR networks.
pub fn parse_networks(key: &str, texts: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    texts
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(
                |_| anyhow::anyhow!("configuration: {key}: {text} is neither an IP address nor a CIDR network"),
            )
        })
        .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CafeSection {
    pub seats_per_slot: i64,
}

impl Default for CafeSection {
    fn default() -> Self {
        CafeSection { seats_per_slot: rananeeti_cafe::CafeConfig::default().seats_per_slot }
    }
}

impl Config {
    /// The platform's part of the configuration.
    pub fn platform_config(&self) -> rananeeti_platform::PlatformConfig {
        rananeeti_platform::PlatformConfig {
            region: self.node.region.clone(),
            node: self.node.name.clone(),
            submit: rananeeti_platform::SubmitConfig {
                budget_ms: self.submit.budget_ms,
                attempts_max: self.submit.attempts_max,
                backoff_base_ms: self.submit.backoff_base_ms,
                backoff_max_ms: self.submit.backoff_max_ms,
                queue_reserve_ms: self.submit.queue_reserve_ms,
            },
            breaker: rananeeti_platform::BreakerConfig {
                failures_to_open: self.breaker.failures_to_open,
                open_ms: self.breaker.open_ms,
            },
            drain: rananeeti_platform::DrainConfig {
                batch_entries_max: self.drain.batch_entries_max,
                scan_entries_max: self.drain.scan_entries_max,
                idle_ms: self.drain.idle_ms,
                apply_timeout_ms: self.drain.apply_timeout_ms,
            },
            outbox_commit_ordered: !self.replication.peers.is_empty(),
            // Two regions need no relay: each has the other's writes from the other itself.
            relay: self.replication.peers.len() >= 2,
            durability: self.replication.durability,
            ownership: rananeeti_platform::OwnershipConfig {
                primary_region: self.primary_region(),
                regions: self.regions(),
                witness: self.ownership.witness_url.is_some(),
                lease_ms: self.ownership.lease_ms,
            },
        }
    }

    /// Every region of the deployment: this node's and its peers', sorted.
    pub fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = std::iter::once(self.node.region.clone())
            .chain(self.replication.peers.iter().map(|peer| peer.region.clone()))
            .collect();
        regions.sort();
        regions.dedup();
        regions
    }

    pub fn primary_region(&self) -> String {
        self.ownership.primary_region.clone().unwrap_or_else(|| self.regions()[0].clone())
    }

    /// Defaults, then the file (if any), then `RANANEETI_<SECTION>__<FIELD>` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only double-underscore variables are configuration; RANANEETI_ADMIN_TOKEN and the like are not.
        figment = figment.merge(Env::prefixed("RANANEETI_").filter(|key| key.as_str().contains("__")).split("__"));
        let config: Config = figment.extract().map_err(|error| anyhow::anyhow!("configuration: {error}"))?;
        config.check()?;
        Ok(config)
    }

    /// The queue peer's URL: `queue.copy_peer_url`, else `queue.copy_peer_url_template` filled
    /// in from this node's name.
    pub fn copy_peer_url(&self) -> anyhow::Result<Option<String>> {
        if let Some(url) = &self.queue.copy_peer_url {
            return Ok(Some(url.clone()));
        }
        let Some(template) = &self.queue.copy_peer_url_template else {
            return Ok(None);
        };
        anyhow::ensure!(
            template.contains("{peer}"),
            "configuration: queue.copy_peer_url_template must contain {{peer}}"
        );
        let name = &self.node.name;
        let (stem, ordinal) = name
            .rsplit_once('-')
            .and_then(|(stem, ordinal)| Some((stem, ordinal.parse::<u32>().ok()?)))
            .with_context(|| {
                format!("configuration: queue.copy_peer_url_template needs a node name ending in -ORDINAL, not {name}")
            })?;
        let peer_ordinal = if ordinal == 0 { 1 } else { ordinal - 1 };
        Ok(Some(template.replace("{peer}", &format!("{stem}-{peer_ordinal}"))))
    }

    /// What can only be checked once the command-line flags are applied.
    pub fn check_complete(&self) -> anyhow::Result<()> {
        if self.copy_peer_url()?.is_some() && self.node.cluster_token_file.is_none() {
            anyhow::bail!("configuration: queue.copy_peer_url needs node.cluster_token_file (or --cluster-token-file)");
        }
        if !self.replication.peers.is_empty() && self.node.cluster_token_file.is_none() {
            anyhow::bail!("configuration: replication.peers needs node.cluster_token_file (or --cluster-token-file)");
        }
        if self.ownership.witness_url.is_some() && self.node.cluster_token_file.is_none() {
            anyhow::bail!(
                "configuration: ownership.witness_url needs node.cluster_token_file (or --cluster-token-file)"
            );
        }
        if let Some(primary) = &self.ownership.primary_region {
            if !self.regions().contains(primary) {
                anyhow::bail!(
                    "configuration: ownership.primary_region {primary} is not one of the regions ({})",
                    self.regions().join(", ")
                );
            }
        }
        self.check()
    }

    fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("store.connections_max", self.store.connections_max as u64),
            ("submit.budget_ms", self.submit.budget_ms),
            ("submit.attempts_max", self.submit.attempts_max as u64),
            ("breaker.failures_to_open", self.breaker.failures_to_open as u64),
            ("queue.group_commit_entries_max", self.queue.group_commit_entries_max as u64),
            ("queue.waiting_entries_max", self.queue.waiting_entries_max as u64),
            ("queue.entries_max", self.queue.entries_max),
            ("drain.batch_entries_max", self.drain.batch_entries_max as u64),
            ("drain.scan_entries_max", self.drain.scan_entries_max as u64),
            ("drain.idle_ms", self.drain.idle_ms),
            ("drain.apply_timeout_ms", self.drain.apply_timeout_ms),
            ("breaker.open_ms", self.breaker.open_ms),
            ("replication.batch_entries_max", self.replication.batch_entries_max as u64),
            ("replication.retry_ms", self.replication.retry_ms),
            ("queue.adopt_check_ms", self.queue.adopt_check_ms),
            ("http.body_bytes_max", self.http.body_bytes_max as u64),
            ("cafe.seats_per_slot", self.cafe.seats_per_slot.max(0) as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                anyhow::bail!("configuration: {name} must be positive");
            }
        }
        if self.http.request_timeout_ms <= self.submit.budget_ms {
            anyhow::bail!("configuration: http.request_timeout_ms must be more than submit.budget_ms");
        }
        for peer in &self.replication.peers {
            if peer.region == self.node.region {
                anyhow::bail!("configuration: replication.peers names this node's own region {}", peer.region);
            }
            if peer.urls.is_empty() {
                anyhow::bail!("configuration: replication peer {} has no urls", peer.region);
            }
        }
        if self.ownership.renew_ms == 0 || self.ownership.lease_ms < 2 * self.ownership.renew_ms {
            anyhow::bail!(
                "configuration: ownership.lease_ms must be at least twice ownership.renew_ms (which must be positive)"
            );
        }
        if self.ownership.failover_after_ms != 0 && self.ownership.failover_after_ms <= self.ownership.lease_ms {
            anyhow::bail!(
                "configuration: ownership.failover_after_ms must be more than ownership.lease_ms (or 0: off)"
            );
        }
        parse_networks("http.trusted_proxies", &self.http.trusted_proxies)?;
        if self.submit.queue_reserve_ms >= self.submit.budget_ms {
            anyhow::bail!("configuration: submit.queue_reserve_ms must be less than submit.budget_ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rananeeti.toml");
        std::fs::write(&path, "[submit]\nbudget_ms = 1500\n[cafe]\nseats_per_slot = 12\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.submit.budget_ms, 1500);
        assert_eq!(config.cafe.seats_per_slot, 12);
        assert_eq!(config.submit.attempts_max, 3);

        std::fs::write(&path, "[submit]\nbudget_msec = 1500\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("budget_msec"), "{error}");

        std::fs::write(&path, "[submit]\nbudget_ms = 100\nqueue_reserve_ms = 100\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
    }

    #[test]
    fn a_statefulset_node_copies_to_the_previous_ordinal_and_ordinal_zero_to_one() {
        let mut config = Config::default();
        config.queue.copy_peer_url_template = Some("http://{peer}.rananeeti-node:8080".into());
        for (name, peer) in [
            ("rananeeti-node-0", "rananeeti-node-1"),
            ("rananeeti-node-1", "rananeeti-node-0"),
            ("rananeeti-node-7", "rananeeti-node-6"),
        ] {
            config.node.name = name.into();
            assert_eq!(config.copy_peer_url().unwrap(), Some(format!("http://{peer}.rananeeti-node:8080")));
        }
        config.node.name = "r1-n1".into();
        config.node.name.push('x');
        assert!(config.copy_peer_url().is_err(), "a name without an ordinal is refused");
        config.queue.copy_peer_url = Some("http://127.0.0.1:9".into());
        assert_eq!(config.copy_peer_url().unwrap().as_deref(), Some("http://127.0.0.1:9"), "an explicit URL wins");
    }
}
