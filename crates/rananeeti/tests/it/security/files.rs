//! Issue 12.8: the data directory was 0755, `store.db` and its WAL 0644, the queues 0755, and
//! they hold emails and password hashes: any local user could read them.

use crate::regions::{start_up, Up};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every file and directory under `root` whose mode lets anyone but its owner in: files must be
/// 0600 or stricter, directories 0700; the one exception is a directory on the way to a
/// PostgreSQL data directory when we are root, which the server (run as `postgres`) must pass
/// through: group `postgres`, search only (0710).
fn too_open(root: &Path) -> (usize, Vec<String>) {
    let postgres_gid = nix::unistd::Group::from_name("postgres").ok().flatten().map(|group| group.gid.as_raw());
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.mode() & 0o7777;
        checked += 1;
        if metadata.is_dir() {
            let private = mode & 0o077 == 0;
            let traversable_by_postgres = mode & 0o077 == 0o010 && Some(metadata.gid()) == postgres_gid;
            if !private && !traversable_by_postgres {
                problems.push(format!("{} is a directory with mode {mode:o}", path.display()));
            }
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                pending.push(entry.path());
            }
        } else if mode & 0o177 != 0 {
            problems.push(format!("{} has mode {mode:o}", path.display()));
        }
    }
    (checked, problems)
}

async fn write_something(up: &Up) {
    let base = up.topology.gateway_url.clone().unwrap();
    let client = reqwest::Client::new();
    let booked = client.post(format!("{base}/api/cafe/reservations")).json(&crate::support::reservation("files", 1));
    assert_eq!(booked.send().await.unwrap().status(), 201);
    let account = serde_json::json!({ "email": "files@example.com", "password": super::PASSWORD });
    let signup = client.post(format!("{base}/api/auth/signup")).json(&account).send().await.unwrap();
    assert_eq!(signup.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_file_up_creates_is_readable_by_other_users() {
    for (store, regions) in [("sqlite", 2), ("postgres", 1)] {
        let up = start_up(regions, 1, store).await;
        write_something(&up).await;
        let data = up._dir.path().join("data");
        let (checked, problems) = too_open(&data);
        println!("{store}: {checked} files and directories under {}", data.display());
        assert!(checked > 20, "{store}: the walk found the deployment's files ({checked})");
        let names: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        for expected in ["admin-token", "topology.json", "up.lock", "r1"] {
            assert!(names.iter().any(|name| name == expected), "{store}: {expected} among {names:?}");
        }
        assert!(problems.is_empty(), "{store}: readable by others:\n{}", problems.join("\n"));
    }
}
