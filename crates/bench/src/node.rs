//! One `rananeeti node` process under test: started on a free loopback port with its own data
//! directory, driven through its admin API, its memory sampled, stopped with SIGTERM.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the node gets to write its address file and answer /readyz.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the node's resident memory is read.
pub const MEMORY_SAMPLE_INTERVAL_MS: u64 = 100;
/// Timeout of one admin request.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the node log quoted when it fails to start.
const LOG_TAIL_LINES_MAX: usize = 20;
/// The cafe's seats per slot for the benchmark: large enough that no load is ever refused.
pub const SEATS_PER_SLOT: i64 = 1_000_000;

/// What the memory sampler saw over the node's whole life.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryReport {
    /// Highest VmRSS among the samples.
    pub peak_rss_kib: u64,
    /// The kernel's own high-water mark (VmHWM), read just before stopping.
    pub high_water_kib: u64,
    pub samples: u64,
}

pub struct NodeProcess {
    child: Child,
    base_url: String,
    admin_token: String,
    client: reqwest::Client,
    log_file: PathBuf,
    sampler: Option<MemorySampler>,
}

impl NodeProcess {
    /// Starts `binary node` with its files under `dir` and its store at `store_url`, listening on
    /// `listen`, with `extra_args` after the benchmark's own flags (`--store-password-file`;
    /// `--region`, `--peer`: a region's peers must know its address before it starts), and waits
    /// until it answers /readyz. `rust_log` replaces the node's default log filter (for
    /// experiments); `None` keeps it.
    pub async fn start_with(
        binary: &Path,
        dir: &Path,
        store_url: &str,
        rust_log: Option<&str>,
        listen: &str,
        extra_args: &[String],
    ) -> anyhow::Result<NodeProcess> {
        NodeProcess::start_configured(binary, dir, store_url, rust_log, listen, extra_args, "").await
    }

    /// `start_with`, with more TOML for the node's configuration file (after its cafe section).
    pub async fn start_configured(
        binary: &Path,
        dir: &Path,
        store_url: &str,
        rust_log: Option<&str>,
        listen: &str,
        extra_args: &[String],
        more_config: &str,
    ) -> anyhow::Result<NodeProcess> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let admin_token = format!("{:032x}", rand::random::<u128>());
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, &admin_token).with_context(|| format!("writing {}", token_file.display()))?;
        let config_file = dir.join("rananeeti.toml");
        std::fs::write(&config_file, format!("[cafe]\nseats_per_slot = {SEATS_PER_SLOT}\n{more_config}"))
            .with_context(|| format!("writing {}", config_file.display()))?;
        let addr_file = dir.join("addr");
        let log_file = dir.join("node.log");
        let log = File::create(&log_file).with_context(|| format!("creating {}", log_file.display()))?;

        let mut command = Command::new(binary);
        command
            .arg("node")
            .arg("--config")
            .arg(&config_file)
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--store-url")
            .arg(store_url)
            .arg("--admin-token-file")
            .arg(&token_file)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the node log handle")?)
            .stderr(log);
        // The node's defaults, not whatever this shell has set: no RUST_LOG, no RANANEETI_*.
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RANANEETI_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let sampler = MemorySampler::start(child.id());
        let client = reqwest::Client::builder().timeout(ADMIN_REQUEST_TIMEOUT).build()?;
        let mut node =
            NodeProcess { child, base_url: String::new(), admin_token, client, log_file, sampler: Some(sampler) };
        let address = node.wait_for_address(&addr_file).await?;
        node.base_url = format!("http://{address}");
        node.wait_until_ready().await?;
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /metrics`: the node's metrics in the Prometheus text format.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let response = self
            .client
            .get(format!("{}/metrics", self.base_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .context("GET /metrics")?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET /metrics answered {status}: {}", response.text().await?);
        }
        Ok(response.text().await?)
    }

    pub fn reservations_url(&self) -> String {
        format!("{}/api/cafe/reservations", self.base_url)
    }

    /// `POST /admin/faults {"db": state}` with `state` "down" or "up".
    pub async fn set_db(&self, state: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/admin/faults", self.base_url))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "db": state }))
            .send()
            .await
            .context("POST /admin/faults")?;
        let status = response.status();
        if !status.is_success() {
            bail!("POST /admin/faults {{\"db\":\"{state}\"}} answered {status}: {}", response.text().await?);
        }
        Ok(())
    }

    /// `GET /admin/queue`: the fallback queue's depth and the fsyncs it has done so far.
    pub async fn queue(&self) -> anyhow::Result<QueueState> {
        let response = self
            .client
            .get(format!("{}/admin/queue", self.base_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .context("GET /admin/queue")?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET /admin/queue answered {status}: {}", response.text().await?);
        }
        let body: Value = response.json().await.context("GET /admin/queue: not JSON")?;
        let field = |name: &str| {
            body.get(name).and_then(Value::as_u64).with_context(|| format!("GET /admin/queue: no \"{name}\" in {body}"))
        };
        Ok(QueueState { depth: field("depth")?, fsyncs_total: field("fsyncs_total")? })
    }

    /// SIGTERM, then waits for the node to exit (killing it after the timeout); returns what the
    /// memory sampler saw.
    pub fn stop(mut self) -> anyhow::Result<MemoryReport> {
        let high_water_kib = read_status_kib(self.child.id(), "VmHWM:").unwrap_or(0);
        let mut sampler = self.sampler.take().expect("the sampler runs until stop");
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("sending SIGTERM to the node")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                bail!("the node did not stop within {} s of SIGTERM; killed", STOP_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut report = sampler.finish();
        report.high_water_kib = high_water_kib;
        if !status.success() {
            bail!("the node exited with {status} after SIGTERM{}", log_tail(&self.log_file));
        }
        Ok(report)
    }

    async fn wait_for_address(&mut self, addr_file: &Path) -> anyhow::Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(address) = std::fs::read_to_string(addr_file) {
                if !address.trim().is_empty() {
                    return Ok(address.trim().to_string());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the node exited with {status} before listening{}", log_tail(&self.log_file));
            }
            if Instant::now() >= deadline {
                bail!("the node wrote no address within {} s{}", START_TIMEOUT.as_secs(), log_tail(&self.log_file));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/readyz", self.base_url);
        loop {
            if let Ok(response) = self.client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the node exited with {status} before it was ready{}", log_tail(&self.log_file));
            }
            if Instant::now() >= deadline {
                bail!("the node was not ready within {} s{}", START_TIMEOUT.as_secs(), log_tail(&self.log_file));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Only after an error: `stop` has reaped the child already, and then this does nothing.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(mut sampler) = self.sampler.take() {
            sampler.finish();
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct QueueState {
    pub depth: u64,
    pub fsyncs_total: u64,
}

/// A thread reading the node's VmRSS every 100 ms. A thread rather than a task, so a busy
/// runtime during a cell does not stretch the interval.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    peak_rss_kib: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl MemorySampler {
    fn start(pid: u32) -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss_kib = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak_rss_kib, samples) = (Arc::clone(&stop), Arc::clone(&peak_rss_kib), Arc::clone(&samples));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss_kib) = read_status_kib(pid, "VmRSS:") {
                        peak_rss_kib.fetch_max(rss_kib, Ordering::Relaxed);
                        samples.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(MEMORY_SAMPLE_INTERVAL_MS));
                }
            })
        };
        MemorySampler { stop, peak_rss_kib, samples, thread: Some(thread) }
    }

    fn finish(&mut self) -> MemoryReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        MemoryReport {
            peak_rss_kib: self.peak_rss_kib.load(Ordering::Relaxed),
            high_water_kib: 0,
            samples: self.samples.load(Ordering::Relaxed),
        }
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/{entry}/stat`; `entry` is a
/// pid or "self".
pub fn cpu_seconds(entry: &str) -> Option<f64> {
    /// /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{entry}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line are utime and stime; `fields` starts at field 3.
    let user_ticks: u64 = fields.get(11)?.parse().ok()?;
    let system_ticks: u64 = fields.get(12)?.parse().ok()?;
    Some((user_ticks + system_ticks) as f64 / TICKS_PER_SECOND)
}

/// CPU time used so far by `pid` and its direct children alive now (a PostgreSQL postmaster and
/// its backends; the benchmark's pooled connections live as long as a cell).
pub fn process_and_children_cpu_seconds(pid: u32) -> Option<f64> {
    let mut total = cpu_seconds(&pid.to_string())?;
    for child in child_pids(pid) {
        total += cpu_seconds(&child.to_string()).unwrap_or(0.0);
    }
    Some(total)
}

/// The processes alive now whose parent is `pid` (an nginx master's workers, a postmaster's
/// backends), from the parent pid in each `/proc/PID/stat`.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // Field 4, the parent's pid, is the second after the command name.
        let parent = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// A `kB` line of /proc/PID/status, e.g. `VmRSS:     12345 kB`.
pub fn read_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn log_tail(log_file: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log_file) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES_MAX)..].join("\n");
    format!("\nlast lines of {}:\n{tail}", log_file.display())
}
