//! One command run to completion and measured: wall time, the kernel's peak resident set (the
//! `ru_maxrss` of `wait4`), CPU time, and its resident set sampled over the run.
//!
//! The peak must be the command's own, not the largest of every child this process ever
//! waited for, so the benchmark runs itself as a small wrapper (`WRAPPER_OUT_ENV` set) whose
//! only child is the command: the wrapper's `getrusage(RUSAGE_CHILDREN)` is then exactly the
//! command's. The wrapper also samples the command's VmRSS and kills it at its deadline.

use anyhow::{bail, Context};
use nix::sys::resource::{getrusage, UsageWho};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set in the wrapper's environment: where it writes what it measured.
const WRAPPER_OUT_ENV: &str = "RANANEETI_BENCH_MEASURE_OUT";
/// Set in the wrapper's environment: seconds the command may run before it is killed.
const WRAPPER_TIMEOUT_ENV: &str = "RANANEETI_BENCH_MEASURE_TIMEOUT_S";
/// How often the command's VmRSS is read.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Samples kept (the run's first ones; at 100 ms this is over an hour).
const RSS_SAMPLES_MAX: usize = 40_000;
/// Lines of the command's output quoted when it fails.
const LOG_TAIL_LINES_MAX: usize = 15;

/// What one run of a command cost.
#[derive(Clone, Debug)]
pub struct Measured {
    pub seconds: f64,
    /// `ru_maxrss`: the kernel's high-water mark of the command's resident set.
    pub peak_rss_kib: u64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// VmRSS read every `RSS_SAMPLE_INTERVAL`, in order.
    pub rss_samples_kib: Vec<u64>,
    /// How busy the machine's CPUs were over the run, 0 to 1, whoever used them.
    pub machine_busy: Option<f64>,
}

impl Measured {
    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    /// The sampled VmRSS at `fraction` (0 to 1) of the run, to see whether memory grows.
    pub fn rss_at_kib(&self, fraction: f64) -> Option<u64> {
        let last = self.rss_samples_kib.len().checked_sub(1)?;
        self.rss_samples_kib.get(((last as f64) * fraction).round() as usize).copied()
    }
}

/// Runs `program args` with `envs` added, output to `log`, through the wrapper; fails if it
/// exits unsuccessfully or outlives `timeout` (it is then killed).
pub fn run(
    program: &Path,
    args: &[OsString],
    envs: &[(&str, OsString)],
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Measured> {
    let out = PathBuf::from(format!("{}.measured.json", log.display()));
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let wrapper = std::env::current_exe().context("locating this executable")?;
    let mut command = Command::new(wrapper);
    command
        .arg(program)
        .args(args)
        .env(WRAPPER_OUT_ENV, &out)
        .env(WRAPPER_TIMEOUT_ENV, timeout.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating a log handle")?)
        .stderr(log_file);
    for (key, value) in envs {
        command.env(key, value);
    }
    let jiffies_before = crate::machine::cpu_jiffies();
    let status = command.status().with_context(|| format!("running {}", program.display()))?;
    let machine_busy = jiffies_before
        .zip(crate::machine::cpu_jiffies())
        .and_then(|(before, after)| crate::machine::busy_fraction(before, after));
    let name = program.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    if !status.success() {
        bail!("`{name} {}` failed ({status}){}", show_args(args), log_tail(log));
    }
    let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", out.display()))?;
    let number = |key: &str| value[key].as_f64().with_context(|| format!("{}: no {key}", out.display()));
    Ok(Measured {
        seconds: number("seconds")?,
        peak_rss_kib: number("max_rss_kib")? as u64,
        user_seconds: number("user_seconds")?,
        system_seconds: number("system_seconds")?,
        rss_samples_kib: value["rss_samples_kib"]
            .as_array()
            .map(|samples| samples.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
        machine_busy,
    })
}

fn show_args(args: &[OsString]) -> String {
    args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "\nlast lines of {}:\n{}",
        log.display(),
        lines[lines.len().saturating_sub(LOG_TAIL_LINES_MAX)..].join("\n")
    )
}

/// When this process is the wrapper: runs the command, writes what it measured, and answers
/// the exit code to leave with. `None` when this is not the wrapper.
pub fn wrapper_main() -> Option<i32> {
    let out = std::env::var_os(WRAPPER_OUT_ENV)?;
    Some(match wrap(Path::new(&out)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("[bench wrapper] {error:#}");
            1
        }
    })
}

fn wrap(out: &Path) -> anyhow::Result<i32> {
    let mut args = std::env::args_os().skip(1);
    let program = args.next().context("the wrapper needs a command to run")?;
    let timeout = std::env::var(WRAPPER_TIMEOUT_ENV)
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .map(Duration::from_secs)
        .context("the wrapper needs its timeout")?;
    let started = Instant::now();
    let mut child = Command::new(&program)
        .args(args)
        .env_remove(WRAPPER_OUT_ENV)
        .env_remove(WRAPPER_TIMEOUT_ENV)
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (done, timed_out, samples) = (Arc::clone(&done), Arc::clone(&timed_out), Arc::clone(&samples));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss_kib) = crate::node::read_status_kib(pid, "VmRSS:") {
                    let mut samples = samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if samples.len() < RSS_SAMPLES_MAX {
                        samples.push(rss_kib);
                    }
                }
                if started.elapsed() > timeout && !timed_out.swap(true, Ordering::Relaxed) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(RSS_SAMPLE_INTERVAL);
            }
        })
    };
    let status = child.wait().context("waiting for the command")?;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if timed_out.load(Ordering::Relaxed) {
        bail!("{} ran longer than {} s and was killed", program.to_string_lossy(), timeout.as_secs());
    }
    // The only child this process ever waited for is the command.
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let seconds_of = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let report = json!({
        "seconds": seconds,
        // Linux reports ru_maxrss in KiB.
        "max_rss_kib": usage.max_rss(),
        "user_seconds": seconds_of(usage.user_time()),
        "system_seconds": seconds_of(usage.system_time()),
        "rss_samples_kib": samples,
    });
    std::fs::write(out, report.to_string()).with_context(|| format!("writing {}", out.display()))?;
    Ok(status.code().unwrap_or(1))
}
