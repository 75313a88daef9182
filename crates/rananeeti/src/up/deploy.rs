//! `rananeeti deploy`, `up`'s side: the control socket (`DIR/control.sock`) a deploy asks on, and
//! the roll of each node slot onto a new process, one slot at a time, every step logged as a
//! `deploy_step` event and sent back to the deploy as a JSON line.
//!
//! A slot has two homes (port and data directory) and its generations alternate between them:
//! the new node starts in the other home beside the old one, is registered with every gateway
//! once its `/readyz` is ready, the old one is drained at every gateway, waited for until it has
//! no request in flight and its queue is empty, stopped with SIGTERM and removed. Peers list both
//! of a slot's URLs from the start, so a roll changes no other node's arguments. The roll runs in
//! the slot's supervisor (`up::supervise`), so the supervisor never restarts what the roll stops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};

use super::membership::{ready_to_leave, wait_queue_empty, Membership, POLL_INTERVAL};
use super::{RunningNode, SlotCommand, TopologyFile};

/// The socket in `DIR` a deploy talks to `up` on (0600, in a 0700 directory).
pub const CONTROL_SOCKET: &str = "control.sock";
/// Bound on the one request line a deploy sends.
const REQUEST_BYTES_MAX: u64 = 4096;
/// Steps waiting to be written to the deploy's connection.
const PROGRESS_MESSAGES_MAX: usize = 64;
/// Bound on `BINARY --version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a slot gets to finish its roll (its steps are bounded; its node may be restarting).
const SLOT_ROLL_TIMEOUT: Duration = Duration::from_secs(180);

/// What `rananeeti deploy` sends: one JSON line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The binary the new nodes run (absolute); `None`: the one the nodes run now.
    pub binary: Option<PathBuf>,
    /// Say what would be done, and do nothing.
    pub dry_run: bool,
}

/// One step of a roll, as logged (`deploy_step`, docs/logs.md) and sent to the deploy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeployStep {
    /// `plan`, `start_new`, `ready`, `added`, `draining`, `drained`, `queue_empty`, `stopped`,
    /// `removed`, `done`, `stopped_roll` (docs/logs.md).
    pub step: String,
    pub region: String,
    pub slot: String,
    /// The node being replaced, and its pid.
    pub node: String,
    pub old_pid: Option<u32>,
    /// Its replacement, its URL and pid once it runs.
    pub new_node: String,
    pub new_url: String,
    pub new_pid: Option<u32>,
    /// The binary the replacement runs, and what `--version` says of the old and the new one.
    pub binary: PathBuf,
    pub from_version: String,
    pub to_version: String,
    /// What a person should know about this step (a wait that ran out, why it failed).
    pub detail: Option<String>,
}

/// One line `up` sends back: a step, or the outcome of the whole deploy (the last line).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeployMessage {
    Step(Box<DeployStep>),
    Done { ok: bool, error: Option<String> },
}

/// A deploy's request to one slot's supervisor.
pub(super) struct SlotRequest {
    binary: Option<PathBuf>,
    dry_run: bool,
    progress: mpsc::Sender<DeployMessage>,
    done: oneshot::Sender<Result<(), String>>,
}

impl SlotRequest {
    /// The slot is parked (the autoscaler stopped its node, or never started it): done at once.
    pub(super) fn nothing_to_roll(self) {
        let _ = self.done.send(Ok(()));
    }
}

/// A slot's supervisor, as the control socket sees it.
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) requests: mpsc::Sender<SlotCommand>,
    /// Held by whoever changes the slot's region (this deploy, or the autoscaler's step), so the
    /// two never change one region at once.
    pub(super) region_lock: Arc<tokio::sync::Mutex<()>>,
}

/// What a roll needs besides the slot: how nodes join and leave (`up/membership.rs`).
#[derive(Clone)]
pub(super) struct Deployer {
    membership: Membership,
}

impl Deployer {
    pub(super) fn new(membership: Membership) -> Deployer {
        Deployer { membership }
    }

    /// Rolls (or, dry, describes) `node`'s slot and answers the deploy.
    pub(super) async fn handle(
        &self,
        node: &mut RunningNode,
        executable: &mut PathBuf,
        topology: &TopologyFile,
        request: SlotRequest,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        if request.done.is_closed() {
            // The deploy gave up waiting for this slot (its node was restarting): a roll now
            // would surprise whoever reads its failure.
            return;
        }
        let binary = request.binary.clone().unwrap_or_else(|| executable.clone());
        let mut step = DeployStep::new(node, &binary);
        step.from_version = version_of(executable).await;
        step.to_version = version_of(&binary).await;
        let mut roll = Roll { step, progress: &request.progress };
        let outcome = if request.dry_run {
            roll.emit("plan", Some(format!("data directory {}", node.plan.other_data_dir.display()))).await;
            Ok(())
        } else {
            self.roll(node, &binary, topology, &mut roll, shutdown).await
        };
        let outcome = match outcome {
            Ok(()) => {
                if !request.dry_run {
                    *executable = binary;
                }
                Ok(())
            }
            Err(error) => {
                let error = format!("{error:#}");
                roll.emit("stopped_roll", Some(error.clone())).await;
                Err(error)
            }
        };
        let _ = request.done.send(outcome);
    }

    async fn roll(
        &self,
        node: &mut RunningNode,
        binary: &Path,
        topology: &TopologyFile,
        roll: &mut Roll<'_>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let membership = &self.membership;
        let old = node.plan.clone();
        let next = old.next_generation();
        let token = membership.token()?;
        let gateways = topology.gateway_urls();
        // A node whose store is down or whose queue holds writes is not rolled: its queue lives
        // in its home, which the new node does not open, so it must be empty when it stops.
        ready_to_leave(membership.client(), &old.url()).await.with_context(|| format!("{} is not rolled", old.name))?;
        roll.emit("start_new", None).await;
        let mut new = membership.start(binary, &next, shutdown).await.with_context(|| {
            format!("{} did not take over from {}; {} keeps serving", next.name, old.name, old.name)
        })?;
        roll.step.new_pid = new.child.as_ref().and_then(Child::id);
        roll.emit("ready", None).await;

        // Until the old node is drained, giving up leaves it serving as before.
        let started = async {
            membership.add(topology, Some(&old.name), &new, &gateways, &token).await?;
            roll.emit("added", Some(format!("at {} gateway(s)", gateways.len()))).await;
            membership.wait_healthy(&gateways, &token, &next.name, shutdown).await?;
            membership.set_drained(&gateways, &token, &old.name, true).await
        }
        .await;
        if let Err(error) = started {
            let _ = membership.set_drained(&gateways, &token, &old.name, false).await;
            membership.withdraw(topology, &mut new, &gateways, &token).await;
            return Err(
                error.context(format!("{} did not take over from {}; {} keeps serving", next.name, old.name, old.name))
            );
        }
        roll.emit("draining", None).await;

        let in_flight = membership.wait_no_requests(&gateways, &token, &old.name, shutdown).await;
        roll.emit(
            "drained",
            in_flight.err().map(|error| format!("{error:#}; stopping it anyway (SIGTERM lets it finish them)")),
        )
        .await;
        let queue = wait_queue_empty(membership.client(), &old.url(), shutdown).await;
        roll.emit(
            "queue_empty",
            queue.err().map(|error| {
                format!(
                    "{error:#}; what is queued stays in {} (durable), delivered by its queue peer's copies and by \
                     the next generation in that home",
                    old.data_dir.display()
                )
            }),
        )
        .await;

        // Drained, it serves nobody any more: topology.json stops listing it before it stops.
        membership.retire(topology, node, &gateways, &token).await;
        roll.emit("stopped", None).await;
        roll.emit("removed", None).await;
        *node = new;
        roll.emit("done", None).await;
        Ok(())
    }
}

/// The steps of one slot's roll, sent and logged as they happen.
struct Roll<'a> {
    step: DeployStep,
    progress: &'a mpsc::Sender<DeployMessage>,
}

impl Roll<'_> {
    async fn emit(&mut self, step: &str, detail: Option<String>) {
        self.step.step = step.to_string();
        self.step.detail = detail;
        let step = &self.step;
        let detail = step.detail.as_deref().unwrap_or("");
        if step.step == "stopped_roll" {
            tracing::error!(
                event = "deploy_step",
                step = %step.step,
                outcome = "failed",
                error = detail,
                region = %step.region,
                slot = %step.slot,
                node = %step.node,
                old_pid = step.old_pid,
                new_node = %step.new_node,
                new_url = %step.new_url,
                new_pid = step.new_pid,
                binary = %step.binary.display(),
                from_version = %step.from_version,
                to_version = %step.to_version,
                "deploy stopped"
            );
        } else {
            tracing::info!(
                event = "deploy_step",
                step = %step.step,
                outcome = "ok",
                detail,
                region = %step.region,
                slot = %step.slot,
                node = %step.node,
                old_pid = step.old_pid,
                new_node = %step.new_node,
                new_url = %step.new_url,
                new_pid = step.new_pid,
                binary = %step.binary.display(),
                from_version = %step.from_version,
                to_version = %step.to_version,
                "deploy step"
            );
        }
        // A deploy that went away does not stop the roll: the log still has every step.
        let _ = self.progress.send(DeployMessage::Step(Box::new(step.clone()))).await;
    }
}

impl DeployStep {
    fn new(node: &RunningNode, binary: &Path) -> DeployStep {
        let next = node.plan.next_generation();
        DeployStep {
            step: String::new(),
            region: node.plan.region.clone(),
            slot: node.plan.slot.clone(),
            node: node.plan.name.clone(),
            old_pid: node.child.as_ref().and_then(Child::id),
            new_node: next.name.clone(),
            new_url: next.url(),
            new_pid: None,
            binary: binary.to_path_buf(),
            from_version: String::new(),
            to_version: String::new(),
            detail: None,
        }
    }
}

/// What `binary --version` prints (`rananeeti 0.1.0 (commit ...)`), or `unknown`.
async fn version_of(binary: &Path) -> String {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(VERSION_TIMEOUT, output).await {
        Ok(Ok(output)) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        _ => "unknown".to_string(),
    }
}

/// Listens on `DIR/control.sock` until shutdown; one deploy at a time.
pub(super) fn serve_control(
    data: &Path,
    slots: Vec<Slot>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<PathBuf> {
    let path = data.join(CONTROL_SOCKET);
    // `up.lock` is ours: a socket left there is from an `up` that is gone.
    super::remove_if_exists(&path)?;
    let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    let slots = Arc::new(slots);
    let busy = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|requested| *requested) => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let slots = Arc::clone(&slots);
                    let busy = Arc::clone(&busy);
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &slots, &busy).await {
                            tracing::warn!(error = format!("{error:#}"), "deploy connection");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting on the control socket");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    });
    Ok(path)
}

/// One deploy: its request line, then a line per step, then the outcome.
async fn answer(stream: UnixStream, slots: &[Slot], busy: &tokio::sync::Mutex<()>) -> anyhow::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    BufReader::new(reader.take(REQUEST_BYTES_MAX)).read_line(&mut line).await.context("reading the request")?;
    let outcome = match serde_json::from_str::<DeployRequest>(&line) {
        Err(error) => Err(format!("not a deploy request: {error}")),
        Ok(request) => match check_binary(request.binary.as_deref()) {
            Err(error) => Err(format!("{error:#}")),
            Ok(()) => match busy.try_lock() {
                Err(_) => Err("another deploy is running".to_string()),
                Ok(_running) => roll_every_slot(&request, slots, &mut writer).await,
            },
        },
    };
    let done = match outcome {
        Ok(()) => DeployMessage::Done { ok: true, error: None },
        Err(error) => DeployMessage::Done { ok: false, error: Some(error) },
    };
    write_message(&mut writer, &done).await
}

fn check_binary(binary: Option<&Path>) -> anyhow::Result<()> {
    let Some(binary) = binary else { return Ok(()) };
    if !binary.is_absolute() {
        bail!("--binary {} must be an absolute path", binary.display());
    }
    let metadata = std::fs::metadata(binary).with_context(|| format!("--binary {}", binary.display()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        bail!("--binary {} is not an executable file", binary.display());
    }
    Ok(())
}

/// Every slot in order (regions, then nodes), each one done before the next is asked; the first
/// failure stops the deploy.
async fn roll_every_slot(
    request: &DeployRequest,
    slots: &[Slot],
    writer: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<(), String> {
    // The region being rolled, held against the autoscaler until its last slot is done.
    let mut region: Option<(&Arc<tokio::sync::Mutex<()>>, tokio::sync::MutexGuard<'_, ()>)> = None;
    for slot in slots {
        if !region.as_ref().is_some_and(|(lock, _)| Arc::ptr_eq(lock, &slot.region_lock)) {
            // The previous region is let go before the next is waited for.
            drop(region.take());
            region = Some((&slot.region_lock, slot.region_lock.lock().await));
        }
        let (progress, mut steps) = mpsc::channel(PROGRESS_MESSAGES_MAX);
        let (done, outcome) = oneshot::channel();
        let asked = SlotRequest { binary: request.binary.clone(), dry_run: request.dry_run, progress, done };
        slot.requests
            .send(SlotCommand::Deploy(asked))
            .await
            .map_err(|_| format!("the supervisor of {} is gone", slot.name))?;
        let rolled = async {
            // `steps` ends when the supervisor drops the request, after answering `outcome`.
            while let Some(message) = steps.recv().await {
                let _ = write_message(writer, &message).await;
            }
            outcome.await.unwrap_or_else(|_| Err(format!("the supervisor of {} stopped answering", slot.name)))
        };
        match tokio::time::timeout(SLOT_ROLL_TIMEOUT, rolled).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(format!("{} did not finish its roll within {} s", slot.name, SLOT_ROLL_TIMEOUT.as_secs()))
            }
        }
    }
    Ok(())
}

async fn write_message(writer: &mut tokio::net::unix::OwnedWriteHalf, message: &DeployMessage) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(message).context("encoding a deploy message")?;
    line.push(b'\n');
    writer.write_all(&line).await.context("writing to the deploy")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::NodePlan;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    fn first_generation() -> NodePlan {
        NodePlan {
            region: "r1".into(),
            slot: "r1-n1".into(),
            generation: 1,
            name: "r1-n1".into(),
            listen: "127.0.0.1:8081".parse::<SocketAddr>().unwrap(),
            data_dir: PathBuf::from("/d/r1/r1-n1"),
            addr_file: PathBuf::from("/d/r1/r1-n1/addr"),
            other_listen: "127.0.0.1:40001".parse::<SocketAddr>().unwrap(),
            other_data_dir: PathBuf::from("/d/r1/r1-n1-b"),
            store_url: "sqlite:///d/r1/store.db".into(),
            store_password_file: None,
            admin_token_file: PathBuf::from("/d/admin-token"),
            cluster_token_file: PathBuf::from("/d/cluster-token"),
            session_key_file: PathBuf::from("/d/session-key"),
            peers: vec!["r2=http://127.0.0.1:8083".into()],
            queue_peer: Some("http://127.0.0.1:8082,http://127.0.0.1:40002".into()),
            witness: None,
            fallback_readers: Vec::new(),
            fallback_reader_password_files: Vec::new(),
            config: None,
            demo: true,
        }
    }

    #[test]
    fn generations_alternate_between_the_slots_two_homes_and_keep_everything_else() {
        let first = first_generation();
        let second = first.next_generation();
        assert_eq!((second.name.as_str(), second.generation), ("r1-n1-gen2", 2));
        assert_eq!(second.url(), "http://127.0.0.1:40001");
        assert_eq!(second.data_dir, PathBuf::from("/d/r1/r1-n1-b"));
        assert_eq!(second.addr_file, PathBuf::from("/d/r1/r1-n1-b/addr"));
        assert_eq!(second.urls(), ["http://127.0.0.1:40001".to_string(), "http://127.0.0.1:8081".to_string()]);
        let third = second.next_generation();
        assert_eq!((third.name.as_str(), third.generation), ("r1-n1-gen3", 3));
        assert_eq!(
            (third.listen, &third.data_dir, &third.addr_file),
            (first.listen, &first.data_dir, &first.addr_file)
        );
        for plan in [&second, &third] {
            assert_eq!(plan.slot, "r1-n1");
            assert_eq!(
                (&plan.peers, &plan.queue_peer, &plan.store_url),
                (&first.peers, &first.queue_peer, &first.store_url)
            );
            assert_eq!(plan.admin_token_file, first.admin_token_file, "secrets still go by file");
        }
    }
}
