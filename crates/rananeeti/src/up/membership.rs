//! How a node joins and leaves a running deployment, shared by `rananeeti deploy`'s roll
//! (`up/deploy.rs`) and the autoscaler (`up/autoscale.rs`): start it through `spawn_node` and
//! wait until it serves, list it in topology.json and register it at every gateway, wait until
//! every gateway sees it healthy; drain it at every gateway, wait until nothing is in flight and
//! its queue is empty, unlist it, stop it with SIGTERM and remove it from the gateways.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::watch;

use super::gateways::{rewrite_gateway_configs, GatewayPlan};
use super::{probe_client, spawn_node, stop_node, wait_until_ready, NodePlan, Readiness, RunningNode, TopologyFile};
use crate::topology::NodeTopology;

/// How long a new node gets to answer `/readyz` with 200.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every gateway gets to see the new node healthy.
const GATEWAY_HEALTHY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving node's requests in flight at the gateways get to finish before SIGTERM
/// (which lets the node finish them too).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leaving node's queue gets to drain.
const QUEUE_EMPTY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of a gateway or a node.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What joining and leaving need: the gateways to tell and the token to tell them with.
#[derive(Clone)]
pub(super) struct Membership {
    client: reqwest::Client,
    admin_token_file: PathBuf,
    gateway_plans: Arc<Vec<GatewayPlan>>,
}

impl Membership {
    pub(super) fn new(admin_token_file: PathBuf, gateway_plans: Vec<GatewayPlan>) -> anyhow::Result<Membership> {
        Ok(Membership { client: probe_client()?, admin_token_file, gateway_plans: Arc::new(gateway_plans) })
    }

    pub(super) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(super) fn token(&self) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(&self.admin_token_file)
            .with_context(|| format!("reading {}", self.admin_token_file.display()))?;
        Ok(token.trim().to_string())
    }

    /// Starts `plan`'s node with `binary` and waits until its `/readyz` is 200; a node that does
    /// not get there is stopped.
    pub(super) async fn start(
        &self,
        binary: &Path,
        plan: &NodePlan,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<RunningNode> {
        let child = spawn_node(binary, plan)?;
        let mut node = RunningNode { plan: plan.clone(), child: Some(child), started_at: Instant::now() };
        if let Err(error) = wait_until_serving(&mut node, &self.client, shutdown).await {
            stop_node(&mut node).await;
            return Err(error);
        }
        Ok(node)
    }

    /// Lists `node` in topology.json (right after `after`, or last in its region) and registers
    /// it at every gateway, whose configuration files follow.
    pub(super) async fn add(
        &self,
        topology: &TopologyFile,
        after: Option<&str>,
        node: &RunningNode,
        gateways: &[String],
        token: &str,
    ) -> anyhow::Result<()> {
        let plan = &node.plan;
        let entry =
            NodeTopology { name: plan.name.clone(), url: plan.url(), pid: node.child.as_ref().and_then(|c| c.id()) };
        match after {
            Some(after) => topology.add_node_after(after, entry),
            None => topology.add_node_last(&plan.region, entry),
        }
        for gateway in gateways {
            self.register(gateway, token, &plan.region, &plan.name, &plan.url()).await?;
        }
        self.rewrite_gateway_configs(topology);
        Ok(())
    }

    /// Undoes `add` for a node that will not serve: unregistered, unlisted, stopped.
    pub(super) async fn withdraw(
        &self,
        topology: &TopologyFile,
        node: &mut RunningNode,
        gateways: &[String],
        token: &str,
    ) {
        for gateway in gateways {
            let _ = self.unregister(gateway, token, &node.plan.name).await;
        }
        stop_node(node).await;
        topology.remove_node(&node.plan.name);
        self.rewrite_gateway_configs(topology);
    }

    /// Drains (or undrains) `name` at every gateway: no new request goes there.
    pub(super) async fn set_drained(
        &self,
        gateways: &[String],
        token: &str,
        name: &str,
        drained: bool,
    ) -> anyhow::Result<()> {
        let action = if drained { "drain" } else { "undrain" };
        for gateway in gateways {
            self.gateway_call(gateway, token, reqwest::Method::POST, &format!("/admin/nodes/{name}/{action}")).await?;
        }
        Ok(())
    }

    /// A drained node that serves nobody any more: unlisted first, then stopped with SIGTERM,
    /// then removed from the gateways.
    pub(super) async fn retire(
        &self,
        topology: &TopologyFile,
        node: &mut RunningNode,
        gateways: &[String],
        token: &str,
    ) {
        topology.remove_node(&node.plan.name);
        self.rewrite_gateway_configs(topology);
        stop_node(node).await;
        for gateway in gateways {
            if let Err(error) = self.unregister(gateway, token, &node.plan.name).await {
                tracing::warn!(gateway, error = format!("{error:#}"), "removing a stopped node from a gateway");
            }
        }
    }

    fn rewrite_gateway_configs(&self, topology: &TopologyFile) {
        if let Err(error) = rewrite_gateway_configs(&self.gateway_plans, &topology.snapshot()) {
            tracing::error!(error = format!("{error:#}"), "rewriting the gateways' configuration files");
        }
    }

    async fn register(&self, gateway: &str, token: &str, region: &str, name: &str, url: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{gateway}/admin/nodes"))
            .bearer_auth(token)
            .json(&json!({ "region": region, "name": name, "url": url }))
            .send()
            .await
            .with_context(|| format!("registering {name} at the gateway {gateway}"))?;
        match response.status().as_u16() {
            201 => Ok(()),
            status => bail!("the gateway {gateway} answered {status} to registering {name}"),
        }
    }

    async fn unregister(&self, gateway: &str, token: &str, name: &str) -> anyhow::Result<()> {
        match self.gateway_call(gateway, token, reqwest::Method::DELETE, &format!("/admin/nodes/{name}")).await {
            Ok(_) => Ok(()),
            Err(error) if error.downcast_ref::<NotFound>().is_some() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// One admin call to a gateway that must answer 200 (404 is `NotFound`).
    async fn gateway_call(
        &self,
        gateway: &str,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let response = self
            .client
            .request(method.clone(), format!("{gateway}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("{method} {gateway}{path}"))?;
        match response.status().as_u16() {
            200 => response.json().await.with_context(|| format!("{method} {gateway}{path}")),
            404 => Err(anyhow::Error::new(NotFound).context(format!("{method} {gateway}{path}: 404"))),
            status => bail!("{method} {gateway}{path}: the gateway answered {status}"),
        }
    }

    /// `name` as each gateway's `/admin/topology` shows it (`None`: not there).
    async fn gateway_views(&self, gateways: &[String], token: &str, name: &str) -> Vec<Option<serde_json::Value>> {
        let mut views = Vec::new();
        for gateway in gateways {
            let topology = self.gateway_call(gateway, token, reqwest::Method::GET, "/admin/topology").await.ok();
            let node = topology.and_then(|topology| {
                topology["regions"]
                    .as_array()?
                    .iter()
                    .flat_map(|region| region["nodes"].as_array().cloned().unwrap_or_default())
                    .find(|node| node["name"] == name)
            });
            views.push(node);
        }
        views
    }

    pub(super) async fn wait_healthy(
        &self,
        gateways: &[String],
        token: &str,
        name: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + GATEWAY_HEALTHY_TIMEOUT;
        loop {
            let views = self.gateway_views(gateways, token, name).await;
            if views.iter().all(|node| node.as_ref().is_some_and(|node| node["healthy"] == true)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{name} was not healthy at every gateway within {} s", GATEWAY_HEALTHY_TIMEOUT.as_secs());
            }
            pause(shutdown).await?;
        }
    }

    pub(super) async fn wait_no_requests(
        &self,
        gateways: &[String],
        token: &str,
        name: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let views = self.gateway_views(gateways, token, name).await;
            let in_flight: u64 = views.iter().flatten().map(|node| node["in_flight"].as_u64().unwrap_or(0)).sum();
            if in_flight == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{name} still had {in_flight} request(s) in flight after {} s", DRAIN_TIMEOUT.as_secs());
            }
            pause(shutdown).await?;
        }
    }
}

/// A gateway answered 404 (the node is not, or no longer, there).
#[derive(Debug, thiserror::Error)]
#[error("not found")]
struct NotFound;

/// `/healthz` (the node is up, `up::wait_until_ready`), then `/readyz` 200, within
/// `SERVING_TIMEOUT`; a node that exits meanwhile fails at once.
async fn wait_until_serving(
    node: &mut RunningNode,
    client: &reqwest::Client,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVING_TIMEOUT;
    let name = node.plan.name.clone();
    let up = tokio::time::timeout(SERVING_TIMEOUT, wait_until_ready(node, client, shutdown))
        .await
        .map_err(|_| anyhow::anyhow!("{name} did not answer /healthz within {} s", SERVING_TIMEOUT.as_secs()))??;
    if up == Readiness::ShutdownRequested {
        bail!("shutdown requested");
    }
    let readyz = format!("{}/readyz", node.plan.url());
    loop {
        if let Ok(response) = client.get(&readyz).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if let Some(child) = node.child.as_mut() {
            if let Some(status) = child.try_wait().context("checking the new node")? {
                bail!("{name} exited with {status} before it was ready");
            }
        }
        if Instant::now() >= deadline {
            bail!("{name} was not ready (GET /readyz) within {} s", SERVING_TIMEOUT.as_secs());
        }
        pause(shutdown).await?;
    }
}

/// The node's `/readyz`: its store up and its queue empty, or why not. A node leaves only so:
/// its queue lives in its home, which no other process opens while it runs (a fjall keyspace
/// has one process at a time), so it must be empty when the node stops.
pub(super) async fn ready_to_leave(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let body: serde_json::Value =
        client.get(format!("{url}/readyz")).send().await.context("GET /readyz")?.json().await.context("GET /readyz")?;
    if body["store"] != "up" {
        bail!("its store is {} (try again once it is up)", body["store"]);
    }
    if body["queue_depth"].as_u64() != Some(0) {
        bail!("its queue holds {} write(s) not yet in the store (try again once it drains)", body["queue_depth"]);
    }
    Ok(())
}

/// Until the node's `/readyz` says its queue is empty, within `QUEUE_EMPTY_TIMEOUT`.
pub(super) async fn wait_queue_empty(
    client: &reqwest::Client,
    url: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + QUEUE_EMPTY_TIMEOUT;
    let mut depth = None;
    loop {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await {
            if let Ok(body) = response.json::<serde_json::Value>().await {
                depth = body["queue_depth"].as_u64();
                if depth == Some(0) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            let depth = depth.map_or("unknown".to_string(), |depth| depth.to_string());
            bail!("its queue was not empty after {} s (depth {depth})", QUEUE_EMPTY_TIMEOUT.as_secs());
        }
        pause(shutdown).await?;
    }
}

pub(super) async fn pause(shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    tokio::select! {
        _ = tokio::time::sleep(POLL_INTERVAL) => Ok(()),
        _ = shutdown.wait_for(|requested| *requested) => bail!("shutdown requested"),
    }
}
