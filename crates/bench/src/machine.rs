//! The machine the numbers come from: cores, CPU model, kernel, and the filesystem under test.

use std::path::Path;

pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// The filesystem holding the benchmark's files: on tmpfs an fsync costs nothing.
    pub filesystem: String,
}

pub fn describe(work_dir: &Path) -> Machine {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|cpuinfo| {
            cpuinfo
                .lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| format!("Linux {}", release.trim()))
        .unwrap_or_else(|_| "unknown".to_string());
    Machine { cores, cpu_model, kernel, filesystem: filesystem_of(work_dir) }
}

/// "ext4 on /dev/vda (mounted at /)" for the mount that holds `path`, from /proc/mounts.
fn filesystem_of(path: &Path) -> String {
    let Ok(path) = std::fs::canonicalize(path) else { return "unknown".to_string() };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return "unknown".to_string() };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), format!("{kind} on {device} (mounted at {mount_point})")))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, description)| description)
        .unwrap_or_else(|| "unknown".to_string())
}

/// Jiffies the CPUs spent busy, and in all, so far (first line of /proc/stat).
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line.split_whitespace().filter_map(|value| value.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...; guest time is already in user.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// How busy the machine's CPUs were, 0 to 1, between two `cpu_jiffies` readings.
pub fn busy_fraction(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    (total > 0).then(|| (after.0.saturating_sub(before.0)) as f64 / total as f64)
}
