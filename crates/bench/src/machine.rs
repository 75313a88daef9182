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

/// How busy the machine's CPUs were, as a percentage ("?" when not measured).
pub fn busy(value: Option<f64>) -> String {
    value.map(|busy| format!("{:.0}%", busy * 100.0)).unwrap_or_else(|| "?".to_string())
}

/// The lines every scenario's report opens with: what ran, on what, when, and how busy the
/// machine was around it (so a saved report stands alone).
pub struct RunHeader<'a> {
    pub title: &'a str,
    pub machine: &'a Machine,
    /// What the files line says is on `machine.filesystem` (`None`: no files line).
    pub files: Option<&'a str>,
    pub busy_outside_run: [Option<f64>; 2],
    /// The code's version, and the baselines' versions when the run has them.
    pub code: String,
    pub command: &'a str,
    pub mode: Option<&'a str>,
    /// When the run started (RFC 3339, UTC) and how many seconds it took.
    pub started: Option<(&'a str, f64)>,
}

impl RunHeader<'_> {
    pub fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let machine = self.machine;
        let _ = writeln!(out, "# {}\n", self.title);
        let _ = writeln!(out, "- Machine: {} cores, {}, {}", machine.cores, machine.cpu_model, machine.kernel);
        match self.files {
            Some("") => {
                let _ = writeln!(out, "- Files: {}", machine.filesystem);
            }
            Some(what) => {
                let _ = writeln!(out, "- Files ({what}): {}", machine.filesystem);
            }
            None => {}
        }
        let _ = writeln!(
            out,
            "- Other work on the machine: CPUs {} busy in the second before the run, {} in the second after",
            busy(self.busy_outside_run[0]),
            busy(self.busy_outside_run[1])
        );
        let _ = writeln!(out, "- Code: {}", self.code);
        let _ = writeln!(out, "- Command: `{}`", self.command);
        if let Some(mode) = self.mode {
            let _ = writeln!(out, "- Mode: {mode}");
        }
        if let Some((started_at, took_seconds)) = self.started {
            let _ = writeln!(out, "- Started {started_at} UTC, took {took_seconds:.0} s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_header_names_the_machine_the_busyness_the_code_and_the_run() {
        let machine =
            Machine { cores: 2, cpu_model: "AMD EPYC".into(), kernel: "Linux 6".into(), filesystem: "ext4".into() };
        let mut out = String::new();
        RunHeader {
            title: "t",
            machine: &machine,
            files: Some("queue"),
            busy_outside_run: [Some(0.25), None],
            code: "git abc".into(),
            command: "bench",
            mode: None,
            started: Some(("2026-12-04T20:00:00Z", 12.4)),
        }
        .write(&mut out);
        assert_eq!(
            out,
            "# t\n\n- Machine: 2 cores, AMD EPYC, Linux 6\n- Files (queue): ext4\n\
             - Other work on the machine: CPUs 25% busy in the second before the run, ? in the second after\n\
             - Code: git abc\n- Command: `bench`\n- Started 2026-12-04T20:00:00Z UTC, took 12 s\n"
        );
    }
}
