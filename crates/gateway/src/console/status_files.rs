//! The files the console reads what it cannot sample: the backup schedule's status
//! (`backup-status.json`, written by `up`) and the newest drill report (`report.json` in a
//! directory per run under the drills directory, written by `rananeeti drill --report`). Both
//! are read loosely: a field this gateway does not know is ignored, one it misses is shown as
//! unknown.

use crate::metrics::BackupMetrics;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A status file or report larger than this is not read.
const FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Drill runs looked at, newest by modification time first.
const DRILL_RUNS_MAX: usize = 1000;

#[derive(Clone, Debug, Deserialize)]
pub struct BackupStatus {
    pub repo: String,
    pub interval_seconds: u64,
    #[serde(default)]
    pub schedule_started_at_unix_seconds: f64,
    #[serde(default)]
    pub verifies: bool,
    pub last_attempt: Option<Attempt>,
    pub last_success: Option<Attempt>,
    pub last_verify: Option<Attempt>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Attempt {
    pub at_unix_seconds: f64,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// What the console says about backups.
#[derive(Debug)]
pub enum Backups {
    NotConfigured,
    /// The file is not there: no schedule runs (or it has not started yet).
    NotScheduled,
    Unreadable(String),
    Scheduled(BackupStatus),
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let size = std::fs::metadata(path)?.len();
    if size > FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!("{size} bytes, more than {FILE_BYTES_MAX}")));
    }
    std::fs::read(path)
}

pub fn backups(file: Option<&Path>) -> Backups {
    let Some(file) = file else { return Backups::NotConfigured };
    match read_small(file) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(status) => Backups::Scheduled(status),
            Err(error) => Backups::Unreadable(format!("{}: {error}", file.display())),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Backups::NotScheduled,
        Err(error) => Backups::Unreadable(format!("{}: {error}", file.display())),
    }
}

/// Sets `rananeeti_backup_*` from the status file. Answers whether it says a schedule runs
/// (else the metrics are not exported: no schedule, nothing to alert on).
pub fn refresh_backup_metrics(file: &Path, metrics: &BackupMetrics) -> bool {
    let Backups::Scheduled(status) = backups(Some(file)) else { return false };
    metrics.interval.set(status.interval_seconds as f64);
    metrics.schedule_start.set(status.schedule_started_at_unix_seconds);
    metrics.last_success.set(status.last_success.as_ref().map_or(0.0, |attempt| attempt.at_unix_seconds));
    metrics.last_attempt.set(status.last_attempt.as_ref().map_or(0.0, |attempt| attempt.at_unix_seconds));
    metrics.last_attempt_success.set(status.last_attempt.as_ref().is_some_and(|attempt| attempt.ok) as i64);
    metrics.last_verify.set(status.last_verify.as_ref().map_or(0.0, |attempt| attempt.at_unix_seconds));
    metrics.last_verify_success.set(status.last_verify.as_ref().is_some_and(|attempt| attempt.ok) as i64);
    true
}

/// The newest drill report, as much of it as the console shows.
#[derive(Debug)]
pub enum Drill {
    NotConfigured,
    /// No run directory holds a `report.json`.
    None,
    Unreadable(String),
    Report(DrillReport),
}

#[derive(Debug)]
pub struct DrillReport {
    pub path: PathBuf,
    pub started_at: Option<String>,
    pub passed: Option<bool>,
    /// Each scenario's name and outcome, in the order run.
    pub scenarios: Vec<(String, String)>,
}

pub fn latest_drill(dir: Option<&Path>) -> Drill {
    let Some(dir) = dir else { return Drill::NotConfigured };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Drill::None,
        Err(error) => return Drill::Unreadable(format!("{}: {error}", dir.display())),
    };
    let newest = entries
        .flatten()
        .take(DRILL_RUNS_MAX)
        .map(|entry| entry.path().join("report.json"))
        .filter_map(|report| Some((std::fs::metadata(&report).ok()?.modified().ok()?, report)))
        .max_by_key(|(modified, _)| *modified);
    let Some((_, path)) = newest else { return Drill::None };
    let value: serde_json::Value = match read_small(&path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
    {
        Ok(value) => value,
        Err(error) => return Drill::Unreadable(format!("{}: {error}", path.display())),
    };
    let scenarios = value["scenarios"]
        .as_array()
        .map(|scenarios| {
            scenarios
                .iter()
                .map(|scenario| {
                    let text = |key: &str| scenario[key].as_str().unwrap_or("unknown").to_string();
                    (text("name"), text("outcome"))
                })
                .collect()
        })
        .unwrap_or_default();
    Drill::Report(DrillReport {
        started_at: value["started_at"].as_str().map(str::to_string),
        passed: value["passed"].as_bool(),
        scenarios,
        path,
    })
}
