//! `DIR/backup-status.json`: what `up`'s backup schedule last did, for the gateway's console and
//! its `rananeeti_backup_*` metrics (the gateway reads it; fields in docs/monitoring.md). Written
//! atomically after each step; holds no secret (the repository URL names no key).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The file's layout version.
const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupStatus {
    pub format: u32,
    pub repo: String,
    pub interval_seconds: u64,
    /// Unix time, seconds, when this run of `up` started the schedule (its first backup is due
    /// one interval later).
    pub schedule_started_at_unix_seconds: f64,
    /// Whether each backup is verified with the private key right after it is taken.
    pub verifies: bool,
    pub last_attempt: Option<Attempt>,
    pub last_success: Option<Attempt>,
    pub last_verify: Option<Attempt>,
}

/// One run of `rananeeti backup create` or `verify`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix time, seconds, when it ended.
    pub at_unix_seconds: f64,
    pub ok: bool,
    /// Its last line of output: the backup's id and size, or the error.
    pub message: String,
}

fn unix_seconds_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

impl Attempt {
    pub fn now(outcome: &Result<String, String>) -> Attempt {
        let at_unix_seconds = unix_seconds_now();
        let (ok, message) = match outcome {
            Ok(output) => (true, output),
            Err(error) => (false, error),
        };
        let message = message.lines().last().unwrap_or("").to_string();
        Attempt { at_unix_seconds, ok, message }
    }
}

impl BackupStatus {
    pub fn new(repo: &str, interval_seconds: u64, verifies: bool) -> BackupStatus {
        BackupStatus {
            format: FORMAT,
            repo: repo.to_string(),
            interval_seconds,
            schedule_started_at_unix_seconds: unix_seconds_now(),
            verifies,
            last_attempt: None,
            last_success: None,
            last_verify: None,
        }
    }

    /// The schedule's status, keeping what an earlier run of `up` recorded for the same
    /// repository (its last backup is still the last one).
    pub fn load_or_new(path: &Path, repo: &str, interval_seconds: u64, verifies: bool) -> BackupStatus {
        let mut status = BackupStatus::new(repo, interval_seconds, verifies);
        let earlier = std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice::<BackupStatus>(&bytes).ok());
        if let Some(earlier) = earlier.filter(|earlier| earlier.format == FORMAT && earlier.repo == repo) {
            status.last_attempt = earlier.last_attempt;
            status.last_success = earlier.last_success;
            status.last_verify = earlier.last_verify;
        }
        status
    }

    /// Where `up --data DIR` keeps it.
    pub fn path(data: &Path) -> PathBuf {
        data.join("backup-status.json")
    }

    /// Replaces the file whole (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).context("serialising the backup status")?;
        json.push(b'\n');
        let temporary = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        };
        write().with_context(|| format!("writing {}", path.display()))
    }
}
