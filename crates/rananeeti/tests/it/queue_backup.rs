//! A backup of a deployment whose queue an outage grew: 200,000 writes held on an r2 node for r1,
//! partitioned away. The node streams its queue's export a page at a time and `backup create`
//! spools it to a scratch file, so neither holds it whole (issue 11, defect 6: the export was one
//! JSON of the whole queue, the backup cloned it and wrote it as one line).
//!
//! Bounds (on this 2-core machine, debug build): `backup create`'s peak RSS stays under 150 MB
//! and the node's peak RSS grows by less than 64 MB while it serves the export, with about 75 MB
//! of queued commands. Before the fix, create's peak was several times that.

use crate::queue_delivery::{closure, command, node_url_after_restart, queue_dir, queue_of, Surgery};
use futures::StreamExt;
use rananeeti_platform::{Command, CommandId};
use rananeeti_queue::{Queue, QueueConfig};
use serde_json::json;
use std::process::Command as Process;

const QUEUED: usize = 200_000;
const CREATE_PEAK_RSS_MAX_KIB: u64 = 150 * 1024;
const NODE_EXPORT_GROWTH_MAX_KIB: u64 = 64 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs the binary with `args` under Python's `getrusage(RUSAGE_CHILDREN)`: its peak RSS (KiB).
fn run_measured(args: &[&str]) -> u64 {
    let output = Process::new("python3")
        .arg("-c")
        .arg(
            "import resource, subprocess, sys\n\
             done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n\
             sys.stderr.write(done.stdout + done.stderr)\n\
             print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             sys.exit(done.returncode)",
        )
        .arg(env!("CARGO_BIN_EXE_rananeeti"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "rananeeti {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_of_200000_queued_writes_streams_them_in_bounded_memory() {
    let up = crate::regions::start_up_with(2, 1, "sqlite", &[("RANANEETI_OWNERSHIP__FAILOVER_AFTER_MS", "0")]).await;
    let client = reqwest::Client::new();
    let r1 = up.topology.regions[0].nodes[0].url.clone();
    let cut = client.post(format!("{r1}/admin/faults")).bearer_auth(&up.token).json(&json!({ "partition": "cut" }));
    assert_eq!(cut.send().await.unwrap().status(), 200);

    let phase = std::time::Instant::now();
    let mut surgery = Surgery::stop(&up, 1);
    {
        let queue = Queue::open(QueueConfig::new(queue_dir(&up, 1))).unwrap();
        let commands: Vec<Command> = (0..QUEUED)
            .map(|i| {
                let day = format!("{}-{:02}-{:02}", 2100 + i / 336, 1 + (i / 28) % 12, 1 + i % 28);
                let id = CommandId::digest("test", &(i as u64).to_be_bytes());
                command("cafe.set_closure", id, closure(&day, "held while r1 is cut off"), i as u64 + 1)
            })
            .collect();
        let now = rananeeti_platform::hlc::wall_clock_ms() as i64;
        let enqueues = commands
            .iter()
            .map(|command| queue.enqueue(*command.id.as_bytes(), now, serde_json::to_vec(command).unwrap()));
        let mut enqueued = futures::stream::iter(enqueues).buffered(1024);
        while let Some(result) = enqueued.next().await {
            result.unwrap();
        }
    }
    println!("filled in {:?}", phase.elapsed());
    surgery.restart();
    let r2 = node_url_after_restart(&up, 1).await;
    assert_eq!(queue_of(&r2, &up.token).await["depth"], QUEUED as u64);
    let node_pid = crate::regions::node_pid(&up.data_dir(), 1);
    let node_before = status_kib(node_pid, "VmHWM:");

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("backup.key");
    let repo = format!("file://{}", dir.path().join("repo").display());
    run_measured(&["backup", "keygen", "--out", key.to_str().unwrap()]);
    let data = up.data_dir();
    let create_peak = run_measured(&[
        "backup",
        "create",
        "--data",
        data.to_str().unwrap(),
        "--repo",
        &repo,
        "--recipient",
        dir.path().join("backup.key.pub").to_str().unwrap(),
    ]);
    println!("created at {:?}", phase.elapsed());
    let node_growth = status_kib(node_pid, "VmHWM:").saturating_sub(node_before);
    println!("backup create peak RSS {create_peak} KiB; node peak RSS grew by {node_growth} KiB");
    assert!(create_peak < CREATE_PEAK_RSS_MAX_KIB, "backup create's peak RSS was {create_peak} KiB");
    assert!(node_growth < NODE_EXPORT_GROWTH_MAX_KIB, "the node's peak RSS grew by {node_growth} KiB");

    // Every queued write is in the backup, and verify reads them all back.
    let manifest = std::fs::read_dir(dir.path().join("repo").join("backups"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("manifest.json"))
        .find(|path| path.is_file())
        .expect("a complete backup");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let r2_entry = manifest["regions"].as_array().unwrap().iter().find(|region| region["name"] == "r2").unwrap();
    assert_eq!(r2_entry["queued"], QUEUED as u64);
    let verify_peak = run_measured(&["backup", "verify", "--repo", &repo, "--key", key.to_str().unwrap()]);
    println!("backup verify peak RSS {verify_peak} KiB, done at {:?}", phase.elapsed());
    assert!(verify_peak < CREATE_PEAK_RSS_MAX_KIB, "backup verify's peak RSS was {verify_peak} KiB");
    drop(surgery);
}
