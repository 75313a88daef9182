//! Backups of real deployments (`rananeeti up` on SQLite and PostgreSQL): create while writes run,
//! verify, restore into a new directory (also SQLite to PostgreSQL), start it, and every write
//! acknowledged before the backup is there; damaged objects, wrong keys and incomplete backups
//! fail clearly.

use crate::regions::{start_up, Up};
use crate::support::{eventually, reservation};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn rananeeti(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rananeeti")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn ok(output: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "command failed: {text}");
    text
}

fn failed(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "command should fail: {}{stderr}", String::from_utf8_lossy(&output.stdout));
    let reason: Vec<&str> = stderr.lines().filter(|line| line.starts_with("rananeeti backup:")).collect();
    assert_eq!(reason.len(), 1, "one line says why: {stderr}");
    reason[0].to_string()
}

fn keygen(dir: &Path) -> (String, String) {
    let key = dir.join("backup.key");
    ok(&rananeeti(&["backup", "keygen", "--out", key.to_str().unwrap()]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    (key.to_str().unwrap().to_string(), format!("{}.pub", key.to_str().unwrap()))
}

/// Starts `up` on a restored directory and answers the reservation ids its regions hold.
async fn reservations_after_restore(into: &Path, regions: u32, store: &str) -> BTreeSet<String> {
    let port = crate::support::free_port_run(regions as u16 + 2);
    let log = std::fs::File::create(into.with_extension("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["up", "--store", store, "--nodes-per-region", "1", "--regions"])
        .arg(regions.to_string())
        .arg("--port")
        .arg(port.to_string())
        .arg("--data")
        .arg(into)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    // Every region's database, read directly once the deployment is up and has drained.
    let topology = eventually("the restored deployment to start", Duration::from_secs(90), || async {
        let topology = rananeeti::topology::Topology::read(&into.join("topology.json")).ok()?;
        let ready = client.get(format!("{base}/gateway/healthz")).send().await.ok()?;
        (ready.status() == 200
            && topology.regions.iter().all(|region| region.nodes.iter().all(|node| node.pid.is_some())))
        .then_some(topology)
    })
    .await;
    let mut committed = BTreeSet::new();
    for region in &topology.regions {
        use sqlx::{Connection, Row};
        eventually("the restored queue to drain", Duration::from_secs(60), || async {
            let depth: Value = client
                .get(format!("{}/admin/queue", region.nodes[0].url))
                .bearer_auth(std::fs::read_to_string(into.join("admin-token")).unwrap().trim())
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (depth["depth"] == 0).then_some(())
        })
        .await;
        let mut connection = sqlx::AnyConnection::connect(&region.database.connect_url().unwrap()).await.unwrap();
        for row in sqlx::query("SELECT id FROM cafe_reservations").fetch_all(&mut connection).await.unwrap() {
            committed.insert(row.get::<String, _>("id"));
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
    let _ = child.wait();
    committed
}

async fn round_trip(regions: u32, store: &str, restore_store: &str) {
    sqlx::any::install_default_drivers();
    let up = start_up(regions, 1, store).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let repo = format!("file://{}", dir.path().join("repo").display());

    // Writes before the backup (some queued: one node's store is down), and during it.
    let client = reqwest::Client::new();
    let mut before = BTreeSet::new();
    let urls: Vec<String> = (0..regions as usize).map(|region| up.region_urls(region)[0].clone()).collect();
    let (r1, r2) = (urls[0].clone(), urls[1].clone());
    for i in 0..30 {
        let answer = crate::support::post_reservation(&client, &urls[i % urls.len()], &reservation("before", i), false)
            .await
            .unwrap();
        assert_eq!(answer.status, 201);
        before.insert(answer.id());
    }
    let down = client
        .post(format!("{r2}/admin/faults"))
        .bearer_auth(&up.token)
        .json(&serde_json::json!({ "db": "down" }))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    for i in 30..40 {
        let answer = crate::support::post_reservation(&client, &r2, &reservation("queued", i), false).await.unwrap();
        assert_eq!(answer.status, 202, "queued while r2's store is down");
        before.insert(answer.id());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(BTreeSet::new()));
    let writer = {
        let (stop, during, r1) = (Arc::clone(&stop), Arc::clone(&during), r1.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 1000;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(answer) =
                    crate::support::post_reservation(&client, &r1, &reservation("during", i), false).await
                {
                    if answer.acknowledged() {
                        during.lock().unwrap().insert(answer.id());
                    }
                }
                i += 1;
            }
        })
    };
    let data = up._dir.path().join("data");
    let created = ok(&rananeeti(&[
        "backup",
        "create",
        "--data",
        data.to_str().unwrap(),
        "--repo",
        &repo,
        "--recipient",
        &public,
    ]));
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(created.contains("backup "), "{created}");
    let listed = ok(&rananeeti(&["backup", "list", "--repo", &repo]));
    assert_eq!(listed.lines().count(), 2, "a header and one backup: {listed}");
    let verified = ok(&rananeeti(&["backup", "verify", "--repo", &repo, "--key", &key]));
    assert!(verified.contains("is good"), "{verified}");

    let into = dir.path().join("restored");
    ok(&rananeeti(&[
        "backup",
        "restore",
        "--repo",
        &repo,
        "--key",
        &key,
        "--into",
        into.to_str().unwrap(),
        "--store",
        restore_store,
    ]));
    drop(up);
    let restored = reservations_after_restore(&into, regions, restore_store).await;
    let missing: Vec<&String> = before.iter().filter(|id| !restored.contains(*id)).collect();
    assert!(missing.is_empty(), "every write acknowledged before the backup is restored; missing {missing:?}");
    println!(
        "round trip of {regions} regions, {store} -> {restore_store}: {} acknowledged before, {} during, {} restored",
        before.len(),
        during.lock().unwrap().len(),
        restored.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_round_trip_sqlite() {
    round_trip(2, "sqlite", "sqlite").await;
}

/// Three regions (no witness: they are a majority by themselves) back up and restore every
/// region's database and queue, and the restored deployment starts with three regions again.
#[tokio::test(flavor = "multi_thread")]
async fn backup_round_trip_three_regions_sqlite() {
    round_trip(3, "sqlite", "sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_round_trip_postgres() {
    round_trip(2, "postgres", "postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_round_trip_sqlite_to_postgres() {
    round_trip(2, "sqlite", "postgres").await;
}

/// A one-region SQLite deployment holding 20 committed reservations named after `label`.
async fn up_with_reservations(label: &str) -> Up {
    let up = start_up(1, 1, "sqlite").await;
    let client = reqwest::Client::new();
    let node = up.region_urls(0)[0].clone();
    for i in 0..20 {
        let answer = crate::support::post_reservation(&client, &node, &reservation(label, i), false).await.unwrap();
        assert_eq!(answer.status, 201);
    }
    up
}

/// A flipped byte in an object, a wrong key, a truncated upload: each fails with one line naming
/// what is wrong, and an incomplete backup is never listed.
#[tokio::test(flavor = "multi_thread")]
async fn damaged_backups_and_wrong_keys_fail_clearly() {
    let up = up_with_reservations("damage").await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    // A mistyped local repository is said so, and not made on the spot by a command that reads.
    let missing = dir.path().join("no-such-repo");
    let missing_url = format!("file://{}", missing.display());
    for args in [
        vec!["backup", "list", "--repo", &missing_url],
        vec!["backup", "verify", "--repo", &missing_url, "--key", &key],
        vec!["backup", "prune", "--repo", &missing_url, "--dry-run"],
    ] {
        assert!(failed(&rananeeti(&args)).contains("no such directory"), "{args:?}");
    }
    assert!(!missing.exists(), "reading commands create no repository");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_key, _) = keygen(&other);
    let repo_dir = dir.path().join("repo");
    let repo = format!("file://{}", repo_dir.display());
    let data = up._dir.path().join("data");
    ok(&rananeeti(&["backup", "create", "--data", data.to_str().unwrap(), "--repo", &repo, "--recipient", &public]));

    let wrong = failed(&rananeeti(&["backup", "verify", "--repo", &repo, "--key", &other_key]));
    assert!(wrong.contains("wrong key"), "{wrong}");

    // A backup in a format this version does not read is refused, saying so.
    let backup_dir = std::fs::read_dir(repo_dir.join("backups")).unwrap().next().unwrap().unwrap().path();
    let manifest_path = backup_dir.join("manifest.json");
    let manifest_text = std::fs::read_to_string(&manifest_path).unwrap();
    let mut manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    manifest["format"] = Value::from(99);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let newer = failed(&rananeeti(&["backup", "verify", "--repo", &repo, "--key", &key]));
    assert!(newer.contains("format 99"), "{newer}");
    std::fs::write(&manifest_path, manifest_text).unwrap();
    let object = backup_dir.join("r1.export.zst.age");
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();
    let damaged = failed(&rananeeti(&["backup", "verify", "--repo", &repo, "--key", &key]));
    assert!(damaged.contains("r1.export.zst.age") && damaged.contains("damaged"), "{damaged}");
    let into = dir.path().join("restored");
    let refused =
        failed(&rananeeti(&["backup", "restore", "--repo", &repo, "--key", &key, "--into", into.to_str().unwrap()]));
    assert!(refused.contains("r1.export.zst.age"), "{refused}");

    // A truncated upload (no manifest: the writer died) is not listed, and verify says so.
    let manifest = backup_dir.join("manifest.json");
    std::fs::remove_file(&manifest).unwrap();
    bytes.truncate(middle);
    std::fs::write(&object, &bytes).unwrap();
    let listed = ok(&rananeeti(&["backup", "list", "--repo", &repo]));
    assert!(listed.contains("no backups"), "{listed}");
    let none = failed(&rananeeti(&["backup", "verify", "--repo", &repo, "--key", &key]));
    assert!(none.contains("no complete backup"), "{none}");
    let _ = up;
}

/// `up` with a backup schedule takes backups by itself and verifies each one.
#[tokio::test(flavor = "multi_thread")]
async fn up_takes_and_verifies_scheduled_backups() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let repo = format!("file://{}", dir.path().join("repo").display());
    let data = dir.path().join("data");
    let port = crate::support::free_port_run(2);
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["up", "--regions", "1", "--nodes-per-region", "1", "--backup-interval-seconds", "2"])
        .args(["--backup-repo", &repo, "--backup-recipient", &public, "--backup-verify-key", &key])
        .arg("--port")
        .arg(port.to_string())
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let listed = eventually("a scheduled backup, verified", Duration::from_secs(90), || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let verified = log.lines().any(|line| line.contains("scheduled backup") && line.contains("is good"));
        let listed = String::from_utf8_lossy(&rananeeti(&["backup", "list", "--repo", &repo]).stdout).to_string();
        (verified && listed.lines().count() >= 2).then_some(listed)
    })
    .await;
    assert!(listed.contains("sqlite"), "{listed}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
    let _ = child.wait();
}

/// Runs `rananeeti` with extra environment variables, killed (and the test failed) if it has not
/// finished within `bound`: a hang is a failure, not a slow pass.
fn rananeeti_bounded(args: &[&str], envs: &[(&str, String)], bound: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(args)
        .envs(envs.iter().map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "rananeeti {args:?} was still running after {bound:?}: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output { status, stdout: std::fs::read(&stdout_path).unwrap(), stderr: std::fs::read(&stderr_path).unwrap() }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        // tmpfs's root is world-writable (mode 1777), so the test writes into it either way.
        let status = Tmpfs::privileged("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=1777"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs at {}: this test fills a small tmpfs, which needs root or password-less sudo \
             (scripts/test.sh needs the same to install packages)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }

    /// `program` as root: itself when we are root, else through `sudo -n`.
    fn privileged(program: &str) -> Command {
        if nix::unistd::Uid::effective().is_root() {
            Command::new(program)
        } else {
            let mut command = Command::new("sudo");
            command.args(["-n", program]);
            command
        }
    }

    /// Writes a file until the file system has no room left.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        loop {
            if let Err(error) = filler.write_all(&block).and_then(|_| filler.sync_all()) {
                assert_eq!(error.raw_os_error(), Some(nix::libc::ENOSPC), "filling {}: {error}", self.0.display());
                break;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Tmpfs::privileged("umount").arg("-l").arg(&self.0).status();
    }
}

/// A repository on a full disk: `create` fails with one line and leaves nothing that `list`
/// shows, even once there is room again; a restore onto a full disk fails with one line too,
/// and removes what it had built.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_fails_clearly_and_leaves_no_listed_backup() {
    let up = up_with_reservations("full").await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let data = up._dir.path().join("data");
    let small = Tmpfs::mount(&dir.path().join("small"), "256k");
    let full_repo_dir = small.0.join("repo");
    std::fs::create_dir_all(&full_repo_dir).unwrap();
    small.fill();
    let full_repo = format!("file://{}", full_repo_dir.display());
    let reason = failed(&rananeeti(&[
        "backup",
        "create",
        "--data",
        data.to_str().unwrap(),
        "--repo",
        &full_repo,
        "--recipient",
        &public,
    ]));
    assert!(reason.contains("No space left on device"), "{reason}");
    let listed = ok(&rananeeti(&["backup", "list", "--repo", &full_repo]));
    assert!(listed.contains("no backups"), "{listed}");
    std::fs::remove_file(small.0.join("filler")).unwrap();
    let listed = ok(&rananeeti(&["backup", "list", "--repo", &full_repo]));
    assert!(listed.contains("no backups"), "nothing half-written is listed once there is room: {listed}");

    // Restoring a good backup onto a full disk.
    let repo = format!("file://{}", dir.path().join("repo").display());
    ok(&rananeeti(&["backup", "create", "--data", data.to_str().unwrap(), "--repo", &repo, "--recipient", &public]));
    small.fill();
    let into = small.0.join("restored");
    let reason =
        failed(&rananeeti(&["backup", "restore", "--repo", &repo, "--key", &key, "--into", into.to_str().unwrap()]));
    assert!(reason.contains("full") || reason.contains("No space left on device"), "{reason}");
    assert!(!into.exists(), "a failed restore leaves no half-built deployment behind");
    drop(small);
    let _ = up;
}

/// An S3 repository whose endpoint nobody listens on: `create`, `list` and `verify` each fail
/// with one line saying the repository is unreachable, within the retry budget (bounded here so
/// that a hang fails the test).
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_repository_fails_clearly() {
    let up = start_up(1, 1, "sqlite").await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let data = up._dir.path().join("data");
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let envs = [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{closed_port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "rananeeti-test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "rananeeti-test-secret".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let repo = "s3://bucket/prefix";
    let bound = Duration::from_secs(120);
    let created = rananeeti_bounded(
        &["backup", "create", "--data", data.to_str().unwrap(), "--repo", repo, "--recipient", &public],
        &envs,
        bound,
    );
    let reason = failed(&created);
    assert!(reason.contains("s3://bucket/prefix") && reason.contains("unreachable"), "{reason}");
    assert!(!reason.contains("rananeeti-test-secret"), "no secret in the message: {reason}");
    let listed = failed(&rananeeti_bounded(&["backup", "list", "--repo", repo], &envs, bound));
    assert!(listed.contains("s3://bucket/prefix"), "{listed}");
    let verified = failed(&rananeeti_bounded(&["backup", "verify", "--repo", repo, "--key", &key], &envs, bound));
    assert!(verified.contains("s3://bucket/prefix"), "{verified}");
    let _ = up;
}

/// A PostgreSQL column of a type the portable format does not carry (every rananeeti column is
/// BIGINT or TEXT; this one is added by hand) is refused by name, not exported as NULL.
#[tokio::test(flavor = "multi_thread")]
async fn a_column_the_format_cannot_carry_is_refused_not_emptied() {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let up = start_up(1, 1, "postgres").await;
    let url = up.topology.regions[0].database.connect_url().unwrap();
    let mut connection = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE hand_made (id TEXT PRIMARY KEY, flag BOOLEAN)").execute(&mut connection).await.unwrap();
    sqlx::query("INSERT INTO hand_made VALUES ('a', true)").execute(&mut connection).await.unwrap();
    drop(connection);
    let dir = tempfile::tempdir().unwrap();
    let (_key, public) = keygen(dir.path());
    let repo = format!("file://{}", dir.path().join("repo").display());
    let data = up._dir.path().join("data");
    let reason = failed(&rananeeti(&[
        "backup",
        "create",
        "--data",
        data.to_str().unwrap(),
        "--repo",
        &repo,
        "--recipient",
        &public,
    ]));
    assert!(
        reason.contains("hand_made") && reason.contains("flag") && reason.contains("neither BIGINT nor TEXT"),
        "{reason}"
    );
    assert!(ok(&rananeeti(&["backup", "list", "--repo", &repo])).contains("no backups"));
}
