//! `restore`: the seed's "move to another region". A backup of the running deployment, under
//! load, restored into a new directory and started there by `rananeeti up` on other ports; the
//! time until it serves every write acknowledged before the backup started.

use super::{FaultRun, Injected};
use crate::report::Restore;
use crate::DrillError;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The seed's bookstore: RTO under 15 minutes.
pub(crate) const SERVING_TARGET: Duration = Duration::from_secs(15 * 60);
/// Longest one `rananeeti backup ...` step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the restored `up` gets to start every node.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the restored deployment gets to serve every restored write.
const SERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the restored `up` gets to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Status reads in flight at once against the restored deployment.
const READS_IN_FLIGHT_MAX: usize = 16;
/// Attempts at a run of free ports for the restored deployment.
const PORT_ATTEMPTS_MAX: usize = 50;

/// Runs `rananeeti ARGS` to completion, bounded; its stderr is the error.
async fn rananeeti(run: &FaultRun<'_>, args: &[&str]) -> Result<(), DrillError> {
    let mut command = tokio::process::Command::new(&run.config.executable);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = command.spawn().map_err(|source| DrillError::Io {
        what: format!("running {} {}", run.config.executable.display(), args[0]),
        source,
    })?;
    let output = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            DrillError::Fault(format!("rananeeti {} took more than {} s", args.join(" "), STEP_TIMEOUT.as_secs()))
        })?
        .map_err(|source| DrillError::Io { what: format!("waiting for rananeeti {}", args[1]), source })?;
    if !output.status.success() {
        return Err(DrillError::Fault(format!(
            "rananeeti {} {} failed: {}",
            args[0],
            args.get(1).unwrap_or(&""),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// A loopback port followed by `count - 1` free ones (what `up` takes).
fn free_port_run(count: u16) -> Option<u16> {
    (0..PORT_ATTEMPTS_MAX).find_map(|_| {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0)).ok()?.local_addr().ok()?.port();
        let free = (1..count).all(|offset| {
            port.checked_add(offset).is_some_and(|next| std::net::TcpListener::bind(("127.0.0.1", next)).is_ok())
        });
        free.then_some(port)
    })
}

/// The restored deployment's `up`: interrupted (and waited for) when dropped on the normal path,
/// killed with its process group otherwise.
struct RestoredUp {
    child: Option<tokio::process::Child>,
}

impl RestoredUp {
    async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
            }
            if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

impl Drop for RestoredUp {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                // SIGINT lets it stop its nodes and clusters; kill_on_drop is the backstop.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
            }
        }
    }
}

async fn start_restored(run: &FaultRun<'_>, into: &Path) -> Result<(RestoredUp, String), DrillError> {
    let regions = run.deployment.regions.len();
    let nodes_per_region = run.deployment.regions.iter().map(|region| region.nodes.len()).max().unwrap_or(1);
    let ports = (1 + regions * nodes_per_region + 1) as u16;
    let port = free_port_run(ports).ok_or_else(|| DrillError::Fault(format!("no run of {ports} free ports")))?;
    let log = std::fs::File::create(into.with_extension("up.log"))
        .map_err(|source| DrillError::Io { what: "creating the restored deployment's log".into(), source })?;
    let log_err = log.try_clone().map_err(|source| DrillError::Io { what: "the log".into(), source })?;
    let mut command = tokio::process::Command::new(&run.config.executable);
    command
        .arg("up")
        .arg("--data")
        .arg(into)
        .args(["--regions", &regions.to_string(), "--nodes-per-region", &nodes_per_region.to_string()])
        .args(["--store", run.deployment.store_kind().as_str(), "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    let child =
        command.spawn().map_err(|source| DrillError::Io { what: "starting the restored deployment".into(), source })?;
    let mut restored = RestoredUp { child: Some(child) };
    let topology_path = into.join("topology.json");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read(&topology_path) {
            if let Ok(topology) = serde_json::from_slice::<Value>(&text) {
                let nodes: Vec<&Value> = topology["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|region| region["nodes"].as_array().into_iter().flatten())
                    .collect();
                if !nodes.is_empty() && nodes.iter().all(|node| node["pid"].is_u64()) {
                    return Ok((restored, format!("http://127.0.0.1:{port}")));
                }
            }
        }
        if let Some(child) = restored.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                restored.child = None;
                return Err(DrillError::Fault(format!(
                    "the restored deployment's up exited with {status}; the end of its log:\n{}",
                    log_tail(&into.with_extension("up.log"))
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(DrillError::Fault(format!(
                "the restored deployment did not start within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        run.hold(Duration::from_millis(100)).await?;
    }
}

/// The last lines of a log, for an error message (the scratch directory goes with the drill).
fn log_tail(path: &Path) -> String {
    const LINES_MAX: usize = 20;
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LINES_MAX)..].join("\n")
}

/// Asks the restored deployment for each id until each is committed or rejected there, bounded;
/// answers the ids it does not serve. The status of a command is the admin's to read whoever
/// wrote it, so it asks with the token the restored `up` keeps in its own directory (a backup
/// carries no secret: the restored deployment has a token of its own).
async fn unserved(
    run: &FaultRun<'_>,
    gateway: &str,
    restored: &Path,
    ids: BTreeSet<String>,
) -> Result<BTreeSet<String>, DrillError> {
    let token = crate::deployment::AdminToken::read(&restored.join("admin-token"))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| DrillError::Fault(format!("an HTTP client: {error}")))?;
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let mut waiting = ids;
    loop {
        let answers: Vec<(String, bool)> = futures::stream::iter(waiting.iter().cloned())
            .map(|id| {
                let client = client.clone();
                let url = format!("{gateway}/api/commands/{id}");
                let request = client.get(&url).bearer_auth(token.expose());
                async move {
                    let served = match request.send().await {
                        Ok(response) if response.status().is_success() => response
                            .json::<Value>()
                            .await
                            .is_ok_and(|status| matches!(status["status"].as_str(), Some("committed" | "rejected"))),
                        _ => false,
                    };
                    (id, served)
                }
            })
            .buffer_unordered(READS_IN_FLIGHT_MAX)
            .collect()
            .await;
        for (id, served) in answers {
            if served {
                waiting.remove(&id);
            }
        }
        if waiting.is_empty() || Instant::now() >= deadline {
            return Ok(waiting);
        }
        run.hold(Duration::from_millis(250)).await?;
    }
}

pub(super) async fn restore(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let scratch = tempfile::Builder::new()
        .prefix("rananeeti-drill-restore-")
        .tempdir()
        .map_err(|source| DrillError::Io { what: "making a scratch directory".into(), source })?;
    let key = scratch.path().join("backup.key");
    let key_text = key.display().to_string();
    let public = format!("{key_text}.pub");
    let repo = format!("file://{}", scratch.path().join("repo").display());
    let into = scratch.path().join("restored");
    let data = run.deployment.data.display().to_string();
    rananeeti(run, &["backup", "keygen", "--out", &key_text]).await?;

    let what = format!(
        "backup of the running deployment into {repo}, restored into a new directory and started there on other ports"
    );
    // What must be there: every write acknowledged before the backup starts.
    let before: BTreeSet<String> = run.workload.acks_so_far().into_iter().map(|ack| ack.id).collect();
    let started = Instant::now();
    run.fault_now(&what);
    rananeeti(run, &["backup", "create", "--data", &data, "--repo", &repo, "--recipient", &public]).await?;
    let backup_seconds = started.elapsed().as_secs_f64();
    run.progress(&format!("backup taken in {backup_seconds:.1} s; restoring"));
    let restore_started = Instant::now();
    rananeeti(run, &["backup", "restore", "--repo", &repo, "--key", &key_text, "--into", &into.display().to_string()])
        .await?;
    let restore_seconds = restore_started.elapsed().as_secs_f64();
    run.progress(&format!("restored in {restore_seconds:.1} s; starting it"));
    let up_started = Instant::now();
    let (restored, gateway) = start_restored(run, &into).await?;
    let start_seconds = up_started.elapsed().as_secs_f64();
    run.progress(&format!(
        "restored deployment up at {gateway} after {start_seconds:.1} s; reading every restored write"
    ));
    let writes_checked = before.len();
    let missing = unserved(run, &gateway, &into, before).await;
    let serving_seconds = started.elapsed().as_secs_f64();
    restored.stop().await;
    let missing = missing?;
    run.healed_now();
    Ok(Injected {
        what,
        restore: Some(Restore {
            backup_seconds,
            restore_seconds,
            start_seconds,
            serving_seconds: missing.is_empty().then_some(serving_seconds),
            writes_checked,
            missing: missing.len(),
            missing_ids: missing.into_iter().take(crate::checker::LISTED_MAX).collect(),
        }),
    })
}
