//! The deployment a drill runs against, as `rananeeti up` describes it in `DIR/topology.json`,
//! and what the drill asks of it over HTTP: admin faults, queues, metrics, readiness.

use crate::DrillError;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest one admin, health or metrics request of the drill may take.
pub(crate) const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// The admin token of the deployment. Never logged, never in a URL, a command line or the report.
#[derive(Clone)]
pub(crate) struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    pub(crate) fn read(path: &Path) -> Result<AdminToken, DrillError> {
        let token = std::fs::read_to_string(path)
            .map_err(|source| DrillError::Io { what: format!("reading {}", path.display()), source })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(DrillError::Deployment(format!("{} is empty", path.display())));
        }
        Ok(AdminToken(token.to_string()))
    }

    /// The token itself, for an `Authorization: Bearer` header. Never log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// topology.json as written by `up` (the external contract: read, never written here).
#[derive(Deserialize)]
struct TopologyFile {
    gateway_url: Option<String>,
    #[serde(default)]
    gateways: Vec<GatewayEntry>,
    regions: Vec<RegionEntry>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GatewayEntry {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) pid: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
struct RegionEntry {
    name: String,
    nodes: Vec<NodeEntry>,
    database: DatabaseEntry,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct NodeEntry {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) pid: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
struct DatabaseEntry {
    kind: StoreKind,
    url: String,
    /// The file holding the URL's user's password (PostgreSQL), never the password.
    #[serde(default)]
    password_file: Option<PathBuf>,
}

/// One region: its nodes and its database.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub(crate) name: String,
    pub(crate) nodes: Vec<NodeEntry>,
    pub(crate) database: Database,
}

/// A region's database, as the drill reaches it.
#[derive(Clone, Debug)]
pub struct Database {
    pub region: String,
    pub kind: StoreKind,
    /// Connection URL without credentials.
    pub url: String,
    /// The file (mode 0600) holding the password of the URL's user (`up`'s PostgreSQL clusters).
    pub password_file: Option<PathBuf>,
    /// `DIR/rN/pg` for a PostgreSQL cluster `up` runs.
    pub pg_data_dir: Option<PathBuf>,
    /// The cluster's loopback port.
    pub pg_port: Option<u16>,
}

impl Database {
    /// The URL to read it with: SQLite opened read-only, so the checker can never write to it;
    /// PostgreSQL with the password from its file. A secret: never logged or shown.
    pub(crate) fn read_url(&self) -> Result<String, DrillError> {
        match self.kind {
            StoreKind::Sqlite => Ok(self.url.replace("mode=rwc", "mode=ro")),
            StoreKind::Postgres => {
                let password = match &self.password_file {
                    Some(file) => {
                        let text = std::fs::read_to_string(file).map_err(|error| {
                            DrillError::Check(format!(
                                "reading region {}'s database password from {}: {error}",
                                self.region,
                                file.display()
                            ))
                        })?;
                        Some(rananeeti_platform::StorePassword::new(text.trim()))
                    }
                    None => None,
                };
                rananeeti_platform::url_with_password(&self.url, password.as_ref())
                    .map_err(|error| DrillError::Check(format!("region {}'s database URL: {error}", self.region)))
            }
        }
    }
}

/// The deployment: where everything is, and the clients to talk to it.
#[derive(Clone, Debug)]
pub(crate) struct Deployment {
    pub(crate) data: PathBuf,
    pub(crate) gateways: Vec<GatewayEntry>,
    pub(crate) regions: Vec<Region>,
    token: AdminToken,
    http: reqwest::Client,
}

impl Deployment {
    /// Reads `DIR/topology.json` and `DIR/admin-token`.
    pub(crate) fn load(data: &Path) -> Result<Deployment, DrillError> {
        let path = data.join("topology.json");
        let bytes = std::fs::read(&path).map_err(|source| DrillError::Io {
            what: format!("reading {} (is `rananeeti up --data {}` running?)", path.display(), data.display()),
            source,
        })?;
        let topology: TopologyFile = serde_json::from_slice(&bytes)
            .map_err(|error| DrillError::Deployment(format!("{}: {error}", path.display())))?;
        let token = AdminToken::read(&data.join("admin-token"))?;
        let mut gateways = topology.gateways;
        if gateways.is_empty() {
            let url = topology
                .gateway_url
                .ok_or_else(|| DrillError::Deployment(format!("{} names no gateway", path.display())))?;
            gateways.push(GatewayEntry { name: "g1".into(), url, pid: None });
        }
        let regions = topology
            .regions
            .into_iter()
            .map(|region| {
                let pg_port =
                    (region.database.kind == StoreKind::Postgres).then(|| port_of(&region.database.url)).flatten();
                Region {
                    database: Database {
                        region: region.name.clone(),
                        kind: region.database.kind,
                        url: region.database.url,
                        password_file: region.database.password_file,
                        pg_data_dir: pg_port.map(|_| data.join(&region.name).join("pg")),
                        pg_port,
                    },
                    name: region.name,
                    nodes: region.nodes,
                }
            })
            .collect::<Vec<_>>();
        if regions.is_empty() || regions.iter().any(|region| region.nodes.is_empty()) {
            return Err(DrillError::Deployment(format!("{} lists a region without nodes", path.display())));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(ADMIN_REQUEST_TIMEOUT)
            .build()
            .map_err(|error| DrillError::Deployment(format!("building an HTTP client: {error}")))?;
        Ok(Deployment { data: data.to_path_buf(), gateways, regions, token, http })
    }

    pub(crate) fn store_kind(&self) -> StoreKind {
        self.regions[0].database.kind
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.regions.iter().flat_map(|region| region.nodes.iter())
    }

    pub(crate) fn gateway_urls(&self) -> Vec<String> {
        self.gateways.iter().map(|gateway| gateway.url.clone()).collect()
    }

    /// The region traffic goes to first (the gateway's default policy is failover in topology
    /// order), where faults hit the workload.
    pub(crate) fn first_region(&self) -> &Region {
        &self.regions[0]
    }

    /// `DIR/rN/rN-nM`: a node's data directory (queue, copies it holds for its peer).
    pub(crate) fn node_data_dir(&self, region: &Region, node: &NodeEntry) -> PathBuf {
        self.data.join(&region.name).join(&node.name)
    }

    /// `POST /admin/faults` on one node.
    pub(crate) async fn set_faults(&self, node_url: &str, faults: &Value) -> Result<(), DrillError> {
        let response = self
            .http
            .post(format!("{node_url}/admin/faults"))
            .bearer_auth(&self.token.0)
            .json(faults)
            .send()
            .await
            .map_err(|error| DrillError::Deployment(format!("POST {node_url}/admin/faults: {error}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(DrillError::Deployment(format!("POST {node_url}/admin/faults {faults}: {status} {body}")));
        }
        Ok(())
    }

    /// `GET /admin/queue` on one node: the queue's depth, `None` when the node does not answer.
    pub(crate) async fn queue_depth(&self, node_url: &str, timeout: Duration) -> Option<u64> {
        let response = self
            .http
            .get(format!("{node_url}/admin/queue"))
            .bearer_auth(&self.token.0)
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().await.ok()?["depth"].as_u64()
    }

    /// The ids of every command waiting in the node's queue (`GET /admin/queue/export`).
    pub(crate) async fn queued_ids(&self, node_url: &str) -> Result<Vec<String>, DrillError> {
        let response = self
            .http
            .get(format!("{node_url}/admin/queue/export"))
            .bearer_auth(&self.token.0)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|error| DrillError::Deployment(format!("GET {node_url}/admin/queue/export: {error}")))?;
        let body: Value = response
            .json()
            .await
            .map_err(|error| DrillError::Deployment(format!("GET {node_url}/admin/queue/export: {error}")))?;
        Ok(body["commands"]
            .as_array()
            .map(|commands| commands.iter().filter_map(|command| command["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// `GET {url}/metrics` (a node's or a gateway's), `None` when it does not answer.
    pub(crate) async fn metrics(&self, url: &str) -> Option<String> {
        let response = self.http.get(format!("{url}/metrics")).send().await.ok()?;
        response.status().is_success().then_some(())?;
        response.text().await.ok()
    }

    /// Whether `GET {url}{path}` answers 200 within `timeout`.
    pub(crate) async fn answers(&self, url: &str, path: &str, timeout: Duration) -> bool {
        matches!(
            self.http.get(format!("{url}{path}")).timeout(timeout).send().await,
            Ok(response) if response.status().is_success()
        )
    }
}

/// The port of `postgres://user@127.0.0.1:PORT/db`.
fn port_of(url: &str) -> Option<u16> {
    let after_scheme = url.split_once("://")?.1;
    let host_port = after_scheme.split('/').next()?;
    let host_port = host_port.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// Every sample of `name` in Prometheus text, with its labels as written (`{peer="r2"}`).
pub(crate) fn metric_samples<'a>(metrics: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(labelled) = rest.strip_prefix('{') {
                let (labels, value) = labelled.split_once('}')?;
                (labels, value)
            } else {
                ("", rest)
            };
            let value = value.strip_prefix(' ')?.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_of_a_postgres_url() {
        assert_eq!(port_of("postgres://rananeeti@127.0.0.1:5433/rananeeti"), Some(5433));
        assert_eq!(port_of("postgres://127.0.0.1/rananeeti"), None);
    }

    #[test]
    fn metric_samples_with_and_without_labels() {
        let text = "# HELP x\nrananeeti_replication_lag_seconds{peer=\"r2\"} 0.25\n\
                    rananeeti_replication_lag_seconds_total 3\nrananeeti_queue_depth 4\n";
        assert_eq!(metric_samples(text, "rananeeti_replication_lag_seconds"), vec![("peer=\"r2\"", 0.25)]);
        assert_eq!(metric_samples(text, "rananeeti_queue_depth"), vec![("", 4.0)]);
    }

    #[test]
    fn the_token_is_redacted_in_debug() {
        assert_eq!(format!("{:?}", AdminToken("secret".into())), "AdminToken(<redacted>)");
    }
}
