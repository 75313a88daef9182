//! Process faults: a node killed, a node killed with its disk lost, a region frozen, a region
//! killed with its database, a gateway killed. `up` restarts what exits; the drill waits for it.

use super::{FaultRun, Injected};
use crate::deployment::{Deployment, StoreKind};
use crate::healer::kill9;
use crate::{DrillConfig, DrillError};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long `up` gets to restart a killed node or gateway.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until topology.json names a running process other than `old_pid` for `name` (a node
/// or a gateway) and it answers its health check.
async fn wait_restarted(run: &FaultRun<'_>, name: &str, old_pid: u32) -> Result<(), DrillError> {
    let deadline = Instant::now() + RESTART_TIMEOUT;
    loop {
        if let Ok(deployment) = Deployment::load(&run.deployment.data) {
            let node =
                deployment.nodes().find(|node| node.name == name).map(|node| (node.pid, node.url.clone(), "/healthz"));
            let gateway = deployment
                .gateways
                .iter()
                .find(|gateway| gateway.name == name)
                .map(|gateway| (gateway.pid, gateway.url.clone(), "/gateway/healthz"));
            if let Some((Some(pid), url, path)) = node.or(gateway) {
                if pid != old_pid && deployment.answers(&url, path, Duration::from_millis(500)).await {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(DrillError::Fault(format!(
                "{name} was not running again within {} s",
                RESTART_TIMEOUT.as_secs()
            )));
        }
        run.hold(Duration::from_millis(100)).await?;
    }
}

fn pid_of(name: &str, pid: Option<u32>) -> Result<u32, DrillError> {
    pid.ok_or_else(|| DrillError::Deployment(format!("{name} has no pid in topology.json (is it being restarted?)")))
}

/// Holds what is left of the duration since `since`.
async fn hold_rest(run: &FaultRun<'_>, since: Instant) -> Result<(), DrillError> {
    run.hold(run.duration().saturating_sub(since.elapsed())).await
}

pub(super) async fn node_kill(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let node = &region.nodes[0];
    let pid = pid_of(&node.name, node.pid)?;
    let what = format!("kill -9 of node {} (pid {pid}); `up` restarts it", node.name);
    let started = Instant::now();
    run.fault_now(&what);
    kill9(pid)?;
    wait_restarted(run, &node.name, pid).await?;
    run.progress(&format!("{} is running again after {:.2} s", node.name, started.elapsed().as_secs_f64()));
    hold_rest(run, started).await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}

/// The node must have a peer to hold its queue's copies.
pub(super) fn node_disk_loss_cannot_run(deployment: &Deployment, _: &DrillConfig) -> Option<String> {
    (deployment.nodes().count() < 2)
        .then(|| "needs two nodes or more: the lost node's queue copies live on a peer".into())
}

pub(super) async fn node_disk_loss(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let node = &region.nodes[0];
    let pid = pid_of(&node.name, node.pid)?;
    let data_dir = run.deployment.node_data_dir(region, node);
    // Only ever a node directory `up` made: DIR/rN/rN-nM, named after the node.
    let expected_parent = run.deployment.data.join(&region.name);
    if data_dir.parent() != Some(expected_parent.as_path())
        || data_dir.file_name().and_then(|name| name.to_str()) != Some(node.name.as_str())
        || !data_dir.join("queue").is_dir()
    {
        return Err(DrillError::Deployment(format!(
            "{} does not look like node {}'s data directory; nothing deleted",
            data_dir.display(),
            node.name
        )));
    }
    let what = format!(
        "store fault on node {} so it queues, then kill -9 and its data directory {} deleted; its peer holds the copies",
        node.name,
        data_dir.display()
    );
    let started = Instant::now();
    run.fault_now(&what);
    run.healer.set_fault(&node.url, json!({ "db": "down" }), json!({ "db": "up" })).await?;
    run.hold(run.duration() / 2).await?;
    // Frozen while its directory goes, so `up` cannot restart it into a half-deleted one.
    run.healer.freeze(&[pid])?;
    let removed = std::fs::remove_dir_all(&data_dir);
    kill9(pid)?;
    removed.map_err(|source| DrillError::Io { what: format!("deleting {}", data_dir.display()), source })?;
    run.progress(&format!("{} killed and {} deleted", node.name, data_dir.display()));
    wait_restarted(run, &node.name, pid).await?;
    hold_rest(run, started).await?;
    run.healer.heal().await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}

pub(super) async fn region_freeze(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let pids = region.nodes.iter().map(|node| pid_of(&node.name, node.pid)).collect::<Result<Vec<_>, _>>()?;
    let what = format!(
        "SIGSTOP of every node of region {} for {:.0} s, then SIGCONT",
        region.name,
        run.duration().as_secs_f64()
    );
    run.fault_now(&what);
    run.healer.freeze(&pids)?;
    run.hold(run.duration()).await?;
    run.healer.heal().await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}

pub(super) async fn region_kill(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let nodes: Vec<(String, u32)> = region
        .nodes
        .iter()
        .map(|node| pid_of(&node.name, node.pid).map(|pid| (node.name.clone(), pid)))
        .collect::<Result<_, _>>()?;
    let postgres = region.database.kind == StoreKind::Postgres;
    let what = format!(
        "kill -9 of every node of region {}{}; `up` restarts the nodes{}",
        region.name,
        if postgres { " and of its PostgreSQL (pg_ctl stop -m immediate)" } else { "" },
        if postgres {
            format!(", the database is started after {:.0} s", run.duration().as_secs_f64())
        } else {
            String::new()
        }
    );
    let started = Instant::now();
    run.fault_now(&what);
    for (_, pid) in &nodes {
        kill9(*pid)?;
    }
    if postgres {
        run.healer.stop_database(&region.database).await?;
    }
    run.hold(run.duration()).await?;
    run.healer.heal().await?;
    for (name, pid) in &nodes {
        wait_restarted(run, name, *pid).await?;
    }
    run.progress(&format!("region {} is running again after {:.2} s", region.name, started.elapsed().as_secs_f64()));
    run.healed_now();
    Ok(Injected { what, restore: None })
}

pub(super) fn gateway_kill_cannot_run(deployment: &Deployment, _: &DrillConfig) -> Option<String> {
    let killable = deployment.gateways.iter().any(|gateway| gateway.pid.is_some());
    (deployment.gateways.len() < 2 || !killable)
        .then(|| "needs two gateways, one of them its own process: `rananeeti up --gateways 2`".into())
}

pub(super) async fn gateway_kill(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let gateway = run
        .deployment
        .gateways
        .iter()
        .find(|gateway| gateway.pid.is_some())
        .ok_or_else(|| DrillError::Deployment("no gateway runs as its own process".into()))?;
    let pid = pid_of(&gateway.name, gateway.pid)?;
    let what = format!(
        "kill -9 of gateway {} ({}, pid {pid}) while the load uses all {} gateways; `up` restarts it",
        gateway.name,
        gateway.url,
        run.deployment.gateways.len()
    );
    let started = Instant::now();
    run.fault_now(&what);
    kill9(pid)?;
    wait_restarted(run, &gateway.name, pid).await?;
    run.progress(&format!("{} is running again after {:.2} s", gateway.name, started.elapsed().as_secs_f64()));
    hold_rest(run, started).await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}
