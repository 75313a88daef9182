//! `up --gateways N`: the gateways after the first, each its own `rananeeti gateway` process
//! (so one can be killed while the others serve), restarted when it exits.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::topology::Topology;

use super::{
    node_port, stop_with_up, TopologyFile, UpArgs, NODE_STOP_TIMEOUT, RESTART_BACKOFF_INITIAL, RESTART_BACKOFF_MAX,
    RESTART_BACKOFF_RESET_UPTIME,
};

/// One gateway process: its name (`g2`, ...), port and config file.
#[derive(Clone, Debug)]
pub(super) struct GatewayPlan {
    pub(super) name: String,
    port: u16,
    config_file: PathBuf,
    admin_token_file: PathBuf,
}

impl GatewayPlan {
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Writes `DIR/gateway-gK.toml` for every gateway after the first: the same regions and nodes
/// as the one inside `up`, on the ports after the witness's.
pub(super) fn plan_extra_gateways(
    args: &UpArgs,
    data: &Path,
    config: &rananeeti_gateway::GatewayConfig,
    admin_token_file: &Path,
    nodes_total: u32,
    ports_total: u32,
) -> anyhow::Result<Vec<GatewayPlan>> {
    let mut plans = Vec::new();
    for number in 2..=args.gateways {
        let name = format!("g{number}");
        let port = node_port(args.port, nodes_total + number, ports_total)?;
        let config_file = data.join(format!("gateway-{name}.toml"));
        let plan = GatewayPlan { name, port, config_file, admin_token_file: admin_token_file.to_path_buf() };
        let regions = config.regions.iter().map(|region| {
            (region.name.as_str(), region.nodes.iter().map(|node| (node.name.as_str(), node.url.as_str())).collect())
        });
        plan.write_config(regions.collect())?;
        plans.push(plan);
    }
    Ok(plans)
}

/// Rewrites every gateway process's configuration file with the nodes `topology` lists now, so
/// a gateway restarted after `rananeeti deploy` rolled a node knows the new one.
pub(super) fn rewrite_gateway_configs(plans: &[GatewayPlan], topology: &Topology) -> anyhow::Result<()> {
    for plan in plans {
        let regions = topology.regions.iter().map(|region| {
            (region.name.as_str(), region.nodes.iter().map(|node| (node.name.as_str(), node.url.as_str())).collect())
        });
        plan.write_config(regions.collect())?;
    }
    Ok(())
}

/// A region's name and its nodes' names and URLs.
type RegionNodes<'a> = (&'a str, Vec<(&'a str, &'a str)>);

impl GatewayPlan {
    /// `DIR/gateway-gK.toml`: this gateway's port and the regions' nodes, replaced atomically
    /// (a gateway restarting meanwhile reads the old file or the new one).
    fn write_config(&self, regions: Vec<RegionNodes<'_>>) -> anyhow::Result<()> {
        let mut text = format!("listen = {}\n", toml_string(&format!("127.0.0.1:{}", self.port)));
        for (region, nodes) in regions {
            text.push_str(&format!("\n[[regions]]\nname = {}\n", toml_string(region)));
            for (name, url) in nodes {
                text.push_str(&format!(
                    "[[regions.nodes]]\nname = {}\nurl = {}\n",
                    toml_string(name),
                    toml_string(url)
                ));
            }
        }
        let temporary = self.config_file.with_extension("toml.tmp");
        fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
        fs::rename(&temporary, &self.config_file).with_context(|| format!("replacing {}", self.config_file.display()))
    }
}

/// A TOML basic string: JSON's escaping is valid TOML for these (names, addresses, URLs).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

pub(super) fn spawn_gateway_process(executable: &Path, plan: &GatewayPlan) -> anyhow::Result<Child> {
    if let Err(error) = std::net::TcpListener::bind(("127.0.0.1", plan.port)) {
        anyhow::bail!(
            "127.0.0.1:{} is not available for gateway {} ({error}); choose another --port",
            plan.port,
            plan.name
        );
    }
    let mut command = Command::new(executable);
    command
        .arg("gateway")
        .arg("--config")
        .arg(&plan.config_file)
        .arg("--admin-token-file")
        .arg(&plan.admin_token_file)
        .arg("--workers")
        .arg("2")
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    stop_with_up(&mut command);
    let child = command.spawn().with_context(|| format!("starting gateway {}", plan.name))?;
    tracing::info!(gateway = %plan.name, pid = child.id(), port = plan.port, "started gateway");
    Ok(child)
}

/// Keeps one gateway process running until shutdown (restarted with a backoff when it exits,
/// its pid kept in the topology); on shutdown, SIGTERM and then SIGKILL.
pub(super) async fn supervise_gateway(
    plan: GatewayPlan,
    child: Child,
    executable: PathBuf,
    topology: TopologyFile,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut child = Some(child);
    let mut started_at = Instant::now();
    let mut backoff = RESTART_BACKOFF_INITIAL;
    loop {
        if let Some(running) = child.as_mut() {
            let exited = tokio::select! {
                status = running.wait() => Some(status),
                _ = shutdown.wait_for(|requested| *requested) => None,
            };
            match exited {
                Some(status) => tracing::error!(gateway = %plan.name, ?status, "gateway exited; restarting it"),
                None => {
                    stop_gateway(&plan.name, running).await;
                    return;
                }
            }
        }
        child = None;
        topology.set_gateway_pid(&plan.name, None);
        if started_at.elapsed() >= RESTART_BACKOFF_RESET_UPTIME {
            backoff = RESTART_BACKOFF_INITIAL;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|requested| *requested) => return,
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        started_at = Instant::now();
        match spawn_gateway_process(&executable, &plan) {
            Ok(restarted) => {
                topology.set_gateway_pid(&plan.name, restarted.id());
                child = Some(restarted);
            }
            Err(error) => {
                tracing::error!(gateway = %plan.name, error = format!("{error:#}"), "restarting gateway failed")
            }
        }
    }
}

async fn stop_gateway(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(NODE_STOP_TIMEOUT, child.wait()).await.is_err() {
        tracing::warn!(gateway = %name, "gateway ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}
