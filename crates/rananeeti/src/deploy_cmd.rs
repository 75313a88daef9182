//! `rananeeti deploy`: asks the `rananeeti up` running on `DIR` (over `DIR/control.sock`) to
//! roll every node onto a new binary, one region and one node at a time, and prints each step.
//!
//! The roll itself runs inside `up` (`up/deploy.rs`), which supervises the nodes: this command
//! only sends the request and follows it. It reads no secret.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::up::deploy::{DeployMessage, DeployRequest, DeployStep, CONTROL_SOCKET};

/// Longest wait for the next line from `up`: one step of a roll is bounded well below it.
const STEP_WAIT_MAX: Duration = Duration::from_secs(240);

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The data directory of the running `rananeeti up`.
    #[arg(long, default_value = "./rananeeti-data")]
    pub data: PathBuf,
    /// The binary the new nodes run (default: the one they run now, i.e. a restart).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print each step as its JSON line instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DeployArgs) -> anyhow::Result<()> {
    let binary = args
        .binary
        .as_deref()
        .map(|binary| std::fs::canonicalize(binary).with_context(|| format!("--binary {}", binary.display())))
        .transpose()?;
    let socket = args.data.join(CONTROL_SOCKET);
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!("connecting to {} (is `rananeeti up --data {}` running?)", socket.display(), args.data.display())
    })?;
    stream.set_read_timeout(Some(STEP_WAIT_MAX)).context("setting a read timeout")?;
    let mut request = serde_json::to_vec(&DeployRequest { binary, dry_run: args.dry_run })?;
    request.push(b'\n');
    stream.write_all(&request).context("sending the deploy request")?;

    let stdout = std::io::stdout();
    for line in BufReader::new(stream).lines() {
        let line = line.context("reading from rananeeti up")?;
        let message: DeployMessage =
            serde_json::from_str(&line).with_context(|| format!("an answer from rananeeti up: {line}"))?;
        let mut out = stdout.lock();
        if args.json {
            writeln!(out, "{line}")?;
        }
        match message {
            DeployMessage::Step(step) => {
                if !args.json {
                    writeln!(out, "{}", describe(&step))?;
                }
            }
            DeployMessage::Done { ok: true, .. } => {
                if !args.json {
                    writeln!(out, "{}", if args.dry_run { "dry run: nothing was changed" } else { "deploy done" })?;
                }
                return Ok(());
            }
            DeployMessage::Done { ok: false, error } => {
                bail!("deploy failed: {}", error.unwrap_or_default())
            }
        }
    }
    bail!("rananeeti up closed the connection before the deploy finished (see its log)")
}

/// One step as a sentence for the terminal.
fn describe(step: &DeployStep) -> String {
    let pid = |pid: Option<u32>| pid.map_or("-".to_string(), |pid| pid.to_string());
    let what = match step.step.as_str() {
        "plan" => format!(
            "would replace {} (pid {}) with {} on {} running {}",
            step.node,
            pid(step.old_pid),
            step.new_node,
            step.new_url,
            step.binary.display()
        ),
        "start_new" => {
            format!("starting {} on {} ({}, {})", step.new_node, step.new_url, step.binary.display(), step.to_version)
        }
        "ready" => format!("{} (pid {}) is ready", step.new_node, pid(step.new_pid)),
        "added" => format!("{} added to the gateways", step.new_node),
        "draining" => format!("draining {} at the gateways", step.node),
        "drained" => format!("{} has no request in flight", step.node),
        "queue_empty" => format!("{}'s queue is empty", step.node),
        "stopped" => format!("{} (pid {}) stopped", step.node, pid(step.old_pid)),
        "removed" => format!("{} removed from the gateways", step.node),
        "done" => format!("{} replaced by {}", step.node, step.new_node),
        "stopped_roll" => format!("the roll stopped at {}", step.node),
        other => other.to_string(),
    };
    match &step.detail {
        Some(detail) => format!("[{}] {what}: {detail}", step.region),
        None => format!("[{}] {what}", step.region),
    }
}
