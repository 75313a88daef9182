//! Every fault the drill sets goes through the healer, which keeps how to undo it: a frozen
//! process is continued, a store or network fault set back, a stopped database started, on
//! the normal path, on Ctrl-C, and (for what can be done without the runtime) on a panic.

use crate::deployment::{Database, Deployment};
use crate::{DatabaseControl, DrillError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a heal run from `Drop` (a panic path) may take in all.
const HEAL_ON_DROP_TIMEOUT: Duration = Duration::from_secs(40);

enum Undo {
    /// SIGCONT to a process the drill sent SIGSTOP.
    Continue(u32),
    /// `POST /admin/faults` with `heal` on the node.
    Faults { node_url: String, heal: Value },
    /// Start the database the drill stopped.
    StartDatabase(Database),
}

pub(crate) struct Healer {
    deployment: Deployment,
    databases: Arc<dyn DatabaseControl>,
    undo: Mutex<Vec<Undo>>,
}

impl Healer {
    pub(crate) fn new(deployment: Deployment, databases: Arc<dyn DatabaseControl>) -> Healer {
        Healer { deployment, databases, undo: Mutex::new(Vec::new()) }
    }

    fn remember(&self, undo: Undo) {
        self.undo.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(undo);
    }

    /// SIGSTOP to each process; each is remembered before it is stopped, so none can be missed.
    pub(crate) fn freeze(&self, pids: &[u32]) -> Result<(), DrillError> {
        for &pid in pids {
            self.remember(Undo::Continue(pid));
            signal(pid, Signal::SIGSTOP)?;
        }
        Ok(())
    }

    /// Sets a fault on a node, remembering `heal` to set it back.
    pub(crate) async fn set_fault(&self, node_url: &str, fault: Value, heal: Value) -> Result<(), DrillError> {
        self.remember(Undo::Faults { node_url: node_url.to_string(), heal });
        self.deployment.set_faults(node_url, &fault).await
    }

    /// Stops a region's PostgreSQL the way a crash would.
    pub(crate) async fn stop_database(&self, database: &Database) -> Result<(), DrillError> {
        self.remember(Undo::StartDatabase(database.clone()));
        let databases = Arc::clone(&self.databases);
        let database = database.clone();
        tokio::task::spawn_blocking(move || databases.stop_immediate(&database))
            .await
            .map_err(|error| DrillError::Fault(format!("stopping the database: {error}")))?
            .map_err(DrillError::Fault)
    }

    /// Undoes everything set so far, newest first; goes on after a failure and answers the first.
    pub(crate) async fn heal(&self) -> Result<(), DrillError> {
        let undo: Vec<Undo> = std::mem::take(&mut *self.undo.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let mut first_error = None;
        for step in undo.into_iter().rev() {
            let result = match step {
                Undo::Continue(pid) => signal(pid, Signal::SIGCONT),
                Undo::Faults { node_url, heal } => set_faults_retrying(&self.deployment, &node_url, &heal).await,
                Undo::StartDatabase(database) => {
                    let databases = Arc::clone(&self.databases);
                    tokio::task::spawn_blocking(move || databases.start(&database))
                        .await
                        .map_err(|error| DrillError::Fault(format!("starting the database: {error}")))
                        .and_then(|started| started.map_err(DrillError::Fault))
                }
            };
            if let Err(error) = result {
                tracing::error!(%error, "healing a fault");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A node that was frozen or restarting may miss the first request: a few tries, bounded.
async fn set_faults_retrying(deployment: &Deployment, node_url: &str, faults: &Value) -> Result<(), DrillError> {
    const ATTEMPTS_MAX: u32 = 10;
    let mut last = None;
    for _ in 0..ATTEMPTS_MAX {
        match deployment.set_faults(node_url, faults).await {
            Ok(()) => return Ok(()),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last.expect("at least one attempt"))
}

fn signal(pid: u32, signal: Signal) -> Result<(), DrillError> {
    let raw = i32::try_from(pid).map_err(|_| DrillError::Fault(format!("pid {pid} is out of range")))?;
    assert!(raw > 1, "never signal init or a process group: pid {raw}");
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) => Ok(()),
        // Gone already (it exited or was killed): nothing to continue.
        Err(nix::errno::Errno::ESRCH) if signal == Signal::SIGCONT => Ok(()),
        Err(errno) => Err(DrillError::Fault(format!("{signal} to pid {pid}: {errno}"))),
    }
}

/// SIGKILL, for the scenarios that kill (nothing to undo: `up` restarts what exits).
pub(crate) fn kill9(pid: u32) -> Result<(), DrillError> {
    signal(pid, Signal::SIGKILL)
}

impl Drop for Healer {
    fn drop(&mut self) {
        let undo = self.undo.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if undo.is_empty() {
            return;
        }
        // Frozen processes first, without any runtime: signals cannot fail to be sent here.
        for step in undo.iter() {
            if let Undo::Continue(pid) = step {
                let _ = signal(*pid, Signal::SIGCONT);
            }
        }
        undo.retain(|step| !matches!(step, Undo::Continue(_)));
        if undo.is_empty() {
            return;
        }
        // The rest needs HTTP or pg_ctl: on a thread of its own with its own runtime, bounded.
        let rest = Healer {
            deployment: self.deployment.clone(),
            databases: Arc::clone(&self.databases),
            undo: Mutex::new(std::mem::take(undo)),
        };
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = runtime.block_on(rest.heal());
            }
            let _ = done.send(());
        });
        if finished.recv_timeout(HEAL_ON_DROP_TIMEOUT).is_ok() {
            let _ = thread.join();
        } else {
            eprintln!("rananeeti drill: healing the faults it set did not finish; check `GET /admin/faults`");
        }
    }
}
