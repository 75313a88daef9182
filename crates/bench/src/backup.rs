//! The backup scenario: `rananeeti backup create`, `verify` and `restore` of a stopped one-region
//! deployment of about 1 GB, beside `restic backup`, `restic check --read-data` and `restic
//! restore` of the same database file: time, peak memory, CPU and stored size, side by side.

use crate::backup_data::{self, Generated};
use crate::machine::busy;
use crate::machine::{self, Machine};
use crate::measured::{self, Measured};
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The database's size in a full run, and with `--quick`, in MB (10^6 bytes).
pub const FULL_SIZE_MB: u64 = 1_000;
pub const QUICK_SIZE_MB: u64 = 100;
/// restic from the PATH (Debian: `apt-get install -y restic`).
const DEFAULT_RESTIC_BIN: &str = "restic";
/// Longest any one measured command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest the database may take to generate.
const GENERATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest an unmeasured helper command (keygen, restic init, restic version) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// Targets: create no slower than `restic backup`; every command's peak resident set under
/// 100 MB; a restore of 1 GB under 60 s.
pub const PEAK_RSS_BYTES_MAX: u64 = 100_000_000;
pub const RESTORE_SECONDS_MAX_PER_GB: f64 = 60.0;

#[derive(Clone, Debug)]
pub struct BackupPlan {
    pub size_mb: u64,
    pub node_binary: PathBuf,
    pub restic_binary: PathBuf,
}

/// One operation, ours beside restic's.
pub struct Pair {
    pub operation: &'static str,
    pub ours_command: &'static str,
    pub restic_command: &'static str,
    pub ours: Measured,
    pub restic: Measured,
}

pub struct BackupReport {
    pub machine: Machine,
    pub command: String,
    pub started_at: String,
    pub code_version: Option<String>,
    pub restic_version: String,
    pub restic_repository_version: String,
    pub took_seconds: f64,
    pub busy_outside_run: [Option<f64>; 2],
    pub generated: Generated,
    pub pairs: Vec<Pair>,
    /// Bytes of every file in each repository after the backup.
    pub ours_stored_bytes: u64,
    pub restic_stored_bytes: u64,
    /// The export before compression (the manifest's `plain_bytes`).
    pub ours_plain_bytes: Option<u64>,
    pub notes: Vec<String>,
}

/// The work's places under the run's temporary directory.
struct Paths {
    deployment: PathBuf,
    ours_repo: PathBuf,
    restic_repo: PathBuf,
    restic_cache: PathBuf,
    key: PathBuf,
    restored: PathBuf,
    restic_restored: PathBuf,
    /// TMPDIR of every command: `verify` restores into a scratch directory there.
    tmp: PathBuf,
    logs: PathBuf,
}

impl Paths {
    fn under(dir: &Path) -> Paths {
        Paths {
            deployment: dir.join("deployment"),
            ours_repo: dir.join("repo-rananeeti"),
            restic_repo: dir.join("repo-restic"),
            restic_cache: dir.join("restic-cache"),
            key: dir.join("backup.key"),
            restored: dir.join("restored"),
            restic_restored: dir.join("restic-restored"),
            tmp: dir.join("tmp"),
            logs: dir.join("logs"),
        }
    }
}

fn progress(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

/// The scenario as `main` runs it: the plan from the flags, stopped cleanly on Ctrl-C.
pub async fn run_scenario(
    quick: bool,
    size_mb: Option<u64>,
    node_binary: PathBuf,
    work_dir: PathBuf,
) -> anyhow::Result<BackupReport> {
    let size_mb = size_mb.unwrap_or(if quick { QUICK_SIZE_MB } else { FULL_SIZE_MB });
    anyhow::ensure!(size_mb > 0, "--backup-size-mb must be positive");
    let plan = BackupPlan { size_mb, node_binary, restic_binary: PathBuf::from(DEFAULT_RESTIC_BIN) };
    let mut command = String::from("cargo run --release -p rananeeti-bench -- --scenario backup");
    if quick {
        command.push_str(" --quick");
    }
    if size_mb != if quick { QUICK_SIZE_MB } else { FULL_SIZE_MB } {
        command.push_str(&format!(" --backup-size-mb {size_mb}"));
    }
    // Ctrl-C reaches the measured command too (same process group); the run's directory goes.
    tokio::select! {
        report = run(&plan, &work_dir, command) => report,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

pub async fn run(plan: &BackupPlan, work_dir: &Path, command: String) -> anyhow::Result<BackupReport> {
    let started = Instant::now();
    let started_at = crate::now_rfc3339();
    let machine = machine::describe(work_dir);
    progress(format!(
        "{} cores, {}, {}; files on {}",
        machine.cores, machine.cpu_model, machine.kernel, machine.filesystem
    ));
    let restic_version = helper_output(&plan.restic_binary, &["version"], &[]).with_context(|| {
        format!("{} is needed for this scenario: apt-get install -y restic", plan.restic_binary.display())
    })?;
    let paths = Paths::under(work_dir);
    for dir in [&paths.tmp, &paths.logs, &paths.restic_cache] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let busy_before = crate::machine_busy().await;
    let mut notes = Vec::new();

    progress(format!("generating a database of {} MB (cafe reservations and bookstore orders)", plan.size_mb));
    let generated = backup_data::generate(&paths.deployment, plan.size_mb * 1_000_000, GENERATE_TIMEOUT).await?;
    progress(format!(
        "database {}: {:.0} MB in {:.0} s",
        generated.db_file.display(),
        generated.bytes as f64 / 1e6,
        generated.seconds
    ));

    let node = plan.node_binary.clone();
    let restic = plan.restic_binary.clone();
    let password = format!("{:032x}", rand::random::<u128>());
    let ours_repo_url = format!("file://{}", paths.ours_repo.display());
    let key_public = PathBuf::from(format!("{}.pub", paths.key.display()));
    let restic_env: Vec<(&'static str, OsString)> =
        vec![("RESTIC_PASSWORD", password.clone().into()), ("TMPDIR", paths.tmp.clone().into())];
    let ours_env: Vec<(&'static str, OsString)> = vec![("TMPDIR", paths.tmp.clone().into())];
    helper_output(&node, &["backup", "keygen", "--out", &paths.key.to_string_lossy()], &[])?;
    let restic_repo = paths.restic_repo.to_string_lossy().into_owned();
    let restic_cache = paths.restic_cache.to_string_lossy().into_owned();
    helper_output(&restic, &["init", "--repo", &restic_repo], &restic_env)?;
    let restic_repository_version = helper_output(&restic, &["cat", "config", "--repo", &restic_repo], &restic_env)
        .ok()
        .and_then(|config| serde_json::from_str::<serde_json::Value>(&config).ok())
        .and_then(|config| config["version"].as_u64())
        .map(|version| format!("repository version {version}"))
        .unwrap_or_else(|| "repository version unknown".to_string());
    let restic_common = ["--repo", &restic_repo, "--cache-dir", &restic_cache];

    let with_common =
        |args: &[&str]| -> Vec<String> { restic_common.iter().chain(args.iter()).map(|arg| arg.to_string()).collect() };
    let db_file = generated.db_file.to_string_lossy().into_owned();

    let ours_create = step(
        "rananeeti backup create",
        &node,
        strings(&[
            "backup",
            "create",
            "--data",
            &paths.deployment.to_string_lossy(),
            "--repo",
            &ours_repo_url,
            "--recipient",
            &key_public.to_string_lossy(),
        ]),
        &ours_env,
        &paths.logs,
    )
    .await?;
    let restic_backup =
        step("restic backup", &restic, with_common(&["backup", &db_file]), &restic_env, &paths.logs).await?;
    let ours_verify = step(
        "rananeeti backup verify",
        &node,
        strings(&["backup", "verify", "--repo", &ours_repo_url, "--key", &paths.key.to_string_lossy()]),
        &ours_env,
        &paths.logs,
    )
    .await?;
    let restic_check =
        step("restic check", &restic, with_common(&["check", "--read-data"]), &restic_env, &paths.logs).await?;
    let ours_restore = step(
        "rananeeti backup restore",
        &node,
        strings(&[
            "backup",
            "restore",
            "--repo",
            &ours_repo_url,
            "--key",
            &paths.key.to_string_lossy(),
            "--into",
            &paths.restored.to_string_lossy(),
        ]),
        &ours_env,
        &paths.logs,
    )
    .await?;
    let restic_restore = step(
        "restic restore",
        &restic,
        with_common(&["restore", "latest", "--target", &paths.restic_restored.to_string_lossy()]),
        &restic_env,
        &paths.logs,
    )
    .await?;

    // Both restores must hold the data, or their times mean nothing.
    let restored_db = paths.restored.join("r1").join("store.db");
    for (table, expected) in &generated.rows {
        let actual = backup_data::count_rows_in(&restored_db, table).await?;
        if actual != *expected {
            notes.push(format!("our restore holds {actual} rows of {table}, the database held {expected}"));
        }
    }
    let restic_file = paths.restic_restored.join(generated.db_file.strip_prefix("/").unwrap_or(&generated.db_file));
    let restic_bytes = std::fs::metadata(&restic_file).map(|metadata| metadata.len()).unwrap_or(0);
    if restic_bytes != generated.bytes {
        notes.push(format!(
            "restic's restore left {restic_bytes} bytes at {}, the database file has {}",
            restic_file.display(),
            generated.bytes
        ));
    }

    let ours_plain_bytes = manifest_plain_bytes(&paths.ours_repo);
    let report = BackupReport {
        machine,
        command,
        started_at,
        code_version: crate::code_version(),
        restic_version: restic_version.lines().next().unwrap_or("").trim().to_string(),
        restic_repository_version,
        took_seconds: 0.0,
        busy_outside_run: [busy_before, None],
        ours_stored_bytes: directory_bytes(&paths.ours_repo),
        restic_stored_bytes: directory_bytes(&paths.restic_repo),
        ours_plain_bytes,
        generated,
        pairs: vec![
            Pair {
                operation: "back up",
                ours_command: "rananeeti backup create",
                restic_command: "restic backup",
                ours: ours_create,
                restic: restic_backup,
            },
            Pair {
                operation: "check",
                ours_command: "rananeeti backup verify",
                restic_command: "restic check --read-data",
                ours: ours_verify,
                restic: restic_check,
            },
            Pair {
                operation: "restore",
                ours_command: "rananeeti backup restore",
                restic_command: "restic restore",
                ours: ours_restore,
                restic: restic_restore,
            },
        ],
        notes,
    };
    // The big files go now rather than when the run's directory is removed.
    for dir in [&paths.restored, &paths.restic_restored, &paths.tmp] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let busy_after = crate::machine_busy().await;
    Ok(BackupReport {
        busy_outside_run: [busy_before, busy_after],
        took_seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// Runs one measured command, its output in `logs`.
async fn step(
    label: &str,
    program: &Path,
    args: Vec<String>,
    env: &[(&'static str, OsString)],
    logs: &Path,
) -> anyhow::Result<Measured> {
    progress(format!("{label}: running"));
    let (program, env) = (program.to_path_buf(), env.to_vec());
    let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
    let log = logs.join(format!("{}.log", label.replace(' ', "-")));
    let measured = tokio::task::spawn_blocking(move || measured::run(&program, &args, &env, &log, COMMAND_TIMEOUT))
        .await?
        .with_context(|| label.to_string())?;
    progress(format!(
        "{label}: {:.1} s, peak RSS {:.1} MB, CPU {:.1} s",
        measured.seconds,
        megabytes(measured.peak_rss_kib),
        measured.cpu_seconds()
    ));
    Ok(measured)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// Runs a command that is not measured and answers its stdout; fails on a non-zero exit or
/// after `HELPER_TIMEOUT`.
fn helper_output(program: &Path, args: &[&str], envs: &[(&str, OsString)]) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let deadline = Instant::now() + HELPER_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{} {}` took longer than {} s", program.display(), args.join(" "), HELPER_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Bytes of every file under `dir`.
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            Ok(_) => entry.metadata().map(|metadata| metadata.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The export's size before compression, from the one backup's manifest.
fn manifest_plain_bytes(repo: &Path) -> Option<u64> {
    let backup = std::fs::read_dir(repo.join("backups")).ok()?.flatten().next()?;
    let text = std::fs::read_to_string(backup.path().join("manifest.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    manifest["regions"].as_array()?.iter().map(|region| region["plain_bytes"].as_u64()).sum()
}

fn megabytes(kib: u64) -> f64 {
    (kib * 1024) as f64 / 1e6
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "n/a".to_string()
    }
}

fn met(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

const METHOD: &[&str] = &[
    "The database is a stopped one-region deployment, `DIR/r1/store.db`, made by the binary's own \
     migrations and filled directly with sqlx as the apply path writes: per command its `rn_commands` \
     record and (committed) its outbox row; per reservation a `cafe_reservations` row (3% of \
     reservations recorded rejected instead); per order one `bookstore.cart_set` command per line (1 to \
     4 books), a `bookstore.checkout`, the `bs_orders` row and its `bs_order_lines`; new accounts \
     (`bs_users`, argon2id-shaped hashes) for 15% of orders; `cafe_slots` and `bs_bestsellers` \
     recounted at the end. Three reservations per order. Fixed seed: every run has the same data. \
     WAL checkpointed and removed, as a node that stopped cleanly leaves it.",
    "Each command runs under a small wrapper (this benchmark's own executable) whose only child it \
     is: time is the wrapper's wall clock around spawn and wait; peak RSS is `ru_maxrss` of \
     `getrusage(RUSAGE_CHILDREN)` after the wait, i.e. the kernel's high-water mark of the command's \
     resident set (VmHWM at exit); CPU is its user + system time. VmRSS is also sampled every 100 ms to \
     show whether memory grows over the run. Machine busy: the share of all CPUs' time that was busy \
     over the run (/proc/stat), whoever used it; beyond the command's own cores it is other work.",
    "rananeeti: `backup create --data DIR --repo file:///R --recipient K.pub` (zstd level 3, age X25519), \
     `backup verify --repo file:///R --key K` (download to a scratch file with its SHA-256 checked, \
     decrypt, decompress, import into a fresh SQLite store in one transaction, recount every table's \
     rows and checksum against the manifest), `backup restore ... --into DIR2` (the same into \
     `DIR2/r1/store.db`). TMPDIR is a directory in the run's temporary directory.",
    "restic: `restic init` (not timed), then `restic backup DIR/r1/store.db`, `restic check \
     --read-data` (reads and decrypts every pack and checks its hashes; it does not rebuild the file) \
     and `restic restore latest --target DIR3`, each with `--cache-dir` in the run's temporary \
     directory and `RESTIC_PASSWORD` set; restic's default compression for its repository version.",
    "Each operation runs right after the previous one on the same, just-written data: the database \
     file is in the page cache for both tools alike. Stored size: every file in each repository \
     after the one backup. Both restores are checked: ours row for row per table, restic's by the \
     file's size.",
    "verify and check do different work: restic checks the stored packs, ours restores the whole \
     database into a scratch SQLite file and recomputes every table's checksum, i.e. as much as a \
     restore. The pairing is by purpose (\"is my backup good?\").",
];

impl BackupReport {
    pub fn into_markdown(self) -> String {
        let mut out = String::new();
        crate::machine::RunHeader {
            title: "rananeeti backup benchmark: rananeeti backup beside restic",
            machine: &self.machine,
            files: Some(""),
            busy_outside_run: self.busy_outside_run,
            code: format!(
                "{}; {} ({})",
                self.code_version.as_deref().unwrap_or("unknown"),
                self.restic_version,
                self.restic_repository_version
            ),
            command: &self.command,
            mode: None,
            started: None,
        }
        .write(&mut out);
        let generated = &self.generated;
        let rows: Vec<String> = generated.rows.iter().map(|(table, rows)| format!("{table} {rows}")).collect();
        let _ = writeln!(
            out,
            "- Database: one SQLite file of {:.1} MB ({} bytes), generated in {:.0} s; rows: {}",
            generated.bytes as f64 / 1e6,
            generated.bytes,
            generated.seconds,
            rows.join(", ")
        );
        let _ = writeln!(out, "- Started {} UTC, took {:.0} s\n", self.started_at, self.took_seconds);

        let _ = writeln!(out, "## Side by side\n");
        let _ = writeln!(
            out,
            "| operation | rananeeti | time (s) | peak RSS (MB) | CPU (s) | restic | time (s) | peak RSS (MB) | CPU (s) | time ours / restic | peak RSS ours / restic |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        for pair in &self.pairs {
            let _ = writeln!(
                out,
                "| {} | `{}` | {:.1} | {:.1} | {:.1} | `{}` | {:.1} | {:.1} | {:.1} | {} | {} |",
                pair.operation,
                pair.ours_command,
                pair.ours.seconds,
                megabytes(pair.ours.peak_rss_kib),
                pair.ours.cpu_seconds(),
                pair.restic_command,
                pair.restic.seconds,
                megabytes(pair.restic.peak_rss_kib),
                pair.restic.cpu_seconds(),
                ratio(pair.ours.seconds, pair.restic.seconds),
                ratio(pair.ours.peak_rss_kib as f64, pair.restic.peak_rss_kib as f64),
            );
        }

        let _ = writeln!(out, "\n## Stored\n");
        let _ = writeln!(out, "| repository | stored (MB) | of the database file | ours / restic |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let database = generated.bytes.max(1) as f64;
        let plain = self
            .ours_plain_bytes
            .map(|plain| format!(", export of {:.1} MB before compression", plain as f64 / 1e6))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| rananeeti (JSON lines, zstd 3, age{plain}) | {:.1} | {:.1}% | {} |",
            self.ours_stored_bytes as f64 / 1e6,
            100.0 * self.ours_stored_bytes as f64 / database,
            ratio(self.ours_stored_bytes as f64, self.restic_stored_bytes as f64)
        );
        let _ = writeln!(
            out,
            "| restic ({}, the database file) | {:.1} | {:.1}% | - |",
            self.restic_repository_version,
            self.restic_stored_bytes as f64 / 1e6,
            100.0 * self.restic_stored_bytes as f64 / database
        );

        let _ = writeln!(out, "\n## Targets\n");
        if let Some(create) = self.pairs.iter().find(|pair| pair.operation == "back up") {
            let _ = writeln!(
                out,
                "- `backup create` no slower than `restic backup`: {:.1} s against {:.1} s ({}): {}",
                create.ours.seconds,
                create.restic.seconds,
                ratio(create.ours.seconds, create.restic.seconds),
                met(create.ours.seconds <= create.restic.seconds)
            );
        }
        let peaks: Vec<String> = self
            .pairs
            .iter()
            .map(|pair| {
                format!(
                    "{} {:.1} MB",
                    pair.ours_command.trim_start_matches("rananeeti "),
                    megabytes(pair.ours.peak_rss_kib)
                )
            })
            .collect();
        let under = self.pairs.iter().all(|pair| pair.ours.peak_rss_kib * 1024 < PEAK_RSS_BYTES_MAX);
        let _ = writeln!(
            out,
            "- Peak memory under {:.0} MB: {}: {}",
            PEAK_RSS_BYTES_MAX as f64 / 1e6,
            peaks.join(", "),
            met(under)
        );
        if let Some(restore) = self.pairs.iter().find(|pair| pair.operation == "restore") {
            let gigabytes = generated.bytes as f64 / 1e9;
            let per_gigabyte = restore.ours.seconds / gigabytes.max(f64::EPSILON);
            let verdict = if gigabytes >= 0.95 {
                format!("{:.0} s per GB: {}", per_gigabyte, met(per_gigabyte < RESTORE_SECONDS_MAX_PER_GB))
            } else {
                format!(
                    "not judged at {:.0} MB ({:.0} s per GB if it scaled linearly)",
                    generated.bytes as f64 / 1e6,
                    per_gigabyte
                )
            };
            let _ = writeln!(
                out,
                "- Restore of 1 GB under {RESTORE_SECONDS_MAX_PER_GB:.0} s: {:.1} s for {:.2} GB: {verdict}",
                restore.ours.seconds, gigabytes
            );
        }

        let _ = writeln!(out, "\n## Detail: memory over each run, CPU\n");
        let _ = writeln!(
            out,
            "| command | samples | VmRSS at 25% of the run (MB) | at 50% | at 75% | last sample | peak (ru_maxrss) | CPU cores used | machine busy |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for pair in &self.pairs {
            for (command, measured) in [(pair.ours_command, &pair.ours), (pair.restic_command, &pair.restic)] {
                let at = |fraction: f64| {
                    measured.rss_at_kib(fraction).map(|kib| format!("{:.1}", megabytes(kib))).unwrap_or("-".into())
                };
                let _ = writeln!(
                    out,
                    "| `{command}` | {} | {} | {} | {} | {} | {:.1} | {:.2} | {} |",
                    measured.rss_samples_kib.len(),
                    at(0.25),
                    at(0.5),
                    at(0.75),
                    at(1.0),
                    megabytes(measured.peak_rss_kib),
                    measured.cpu_seconds() / measured.seconds.max(f64::EPSILON),
                    busy(measured.machine_busy),
                );
            }
        }

        let _ = writeln!(out, "\n## Method\n");
        for line in METHOD {
            let _ = writeln!(out, "- {line}");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}
