//! Secrets stay in their files: a running `up` (2 regions x 2 nodes, scheduled backups verified
//! with the private key), used through the admin API, the bookstore's sign-in and replication,
//! shows none of its secrets (admin token, cluster token, session key, backup key) in its log,
//! its data directory's JSON files, or the command line and environment of any of its processes.
//! S3 keys come from files too (`AWS_*_FILE`), proven by the request signature a fake S3 endpoint
//! receives.

use crate::support::{eventually, reservation};
use hmac::{Hmac, Mac};
use rananeeti::topology::Topology;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the deployment's processes are sampled (long enough for scheduled backups to run).
const SAMPLING: Duration = Duration::from_secs(6);

/// Every process under `root` (itself included): from /proc's parent links.
fn descendants(root: u32) -> BTreeSet<u32> {
    let mut parents = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, after)| after.to_string()) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) {
            parents.insert(pid, ppid);
        }
    }
    let mut found = BTreeSet::from([root]);
    loop {
        let before = found.len();
        for (pid, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Where each secret value appears among `sources` (name, bytes).
fn leaks(secrets: &[(&str, String)], sources: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    for (secret, value) in secrets {
        assert!(value.len() >= 16, "{secret} is too short to grep for meaningfully");
        for (source, bytes) in sources {
            if bytes.windows(value.len()).any(|window| window == value.as_bytes()) {
                found.push(format!("{secret} in {source}"));
            }
        }
    }
    found
}

fn read_secret(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_logs_topology_command_lines_or_environments_of_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("backup.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_rananeeti")).args(["backup", "keygen", "--out"]).arg(&key).output();
    assert!(keygen.unwrap().status.success(), "backup keygen");
    let repo = format!("file://{}", dir.path().join("backups").display());
    let port = crate::support::free_port_run(7);
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["up", "--regions", "2", "--nodes-per-region", "2", "--port", &port.to_string(), "--data"])
        .arg(&data)
        .args(["--backup-repo", &repo, "--backup-interval-seconds", "1", "--backup-recipient"])
        .arg(key.with_extension("key.pub"))
        .arg("--backup-verify-key")
        .arg(&key)
        // Everything the processes log, not only the defaults.
        .env("RUST_LOG", "debug")
        .env_remove("RANANEETI_ADMIN_TOKEN")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let up_pid = up.id();
    let stop_up = scopeguard(up_pid);
    let topology_path = data.join("topology.json");
    let topology = eventually("up to start every node", START_TIMEOUT, || async {
        let topology = Topology::read(&topology_path).ok()?;
        let running = topology.regions.iter().flat_map(|region| &region.nodes).filter(|node| node.pid.is_some());
        (running.count() == 4).then_some(topology)
    })
    .await;

    let secrets = [
        ("admin token", read_secret(&data.join("admin-token"))),
        ("cluster token", read_secret(&data.join("cluster-token"))),
        ("session key", read_secret(&data.join("session-key"))),
        ("backup private key", {
            let text = std::fs::read_to_string(&key).unwrap();
            text.lines().find(|line| line.starts_with("AGE-SECRET-KEY-")).expect("an age identity").to_string()
        }),
    ];
    let admin_token = &secrets[0].1;

    // Use what the secrets guard: the admin API (right and wrong token), a sign-in (the session
    // key signs its token), a booking replicated to the other region (the cluster token).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build().unwrap();
    let gateway = topology.gateway_url.clone().unwrap();
    let booked = client.post(format!("{gateway}/api/cafe/reservations")).json(&reservation("secrets", 1)).send().await;
    assert_eq!(booked.unwrap().status(), 201);
    for node in topology.regions.iter().flat_map(|region| &region.nodes) {
        let queue = client.get(format!("{}/admin/queue", node.url)).bearer_auth(admin_token).send().await.unwrap();
        assert_eq!(queue.status(), 200);
        let refused = client.get(format!("{}/admin/queue", node.url)).bearer_auth("not-the-token").send().await;
        assert_eq!(refused.unwrap().status(), 401);
    }
    let topology_answer = client.get(format!("{gateway}/admin/topology")).bearer_auth(admin_token).send().await;
    assert_eq!(topology_answer.unwrap().status(), 200);
    let account = serde_json::json!({ "email": "secrets@example.com", "password": "a long enough password" });
    let signup = client.post(format!("{gateway}/api/auth/signup")).json(&account).send().await.unwrap();
    assert!(signup.status().is_success(), "signup: {}", signup.status());
    let signin = client.post(format!("{gateway}/api/auth/signin")).json(&account).send().await.unwrap();
    assert_eq!(signin.status(), 200);
    let r2 = &topology.regions[1].nodes[0].url;
    eventually("the booking replicated to r2", START_TIMEOUT, || async {
        let list: serde_json::Value =
            client.get(format!("{r2}/api/cafe/reservations?limit=5")).send().await.ok()?.json().await.ok()?;
        (!list["items"].as_array()?.is_empty()).then_some(())
    })
    .await;

    // Sample every process of the deployment (backups come and go) for a while.
    let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
    let mut processes_seen = BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < SAMPLING {
        for pid in descendants(up_pid) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if !cmdline.is_empty() {
                let name = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                processes_seen.insert(name.split(' ').take(3).collect::<Vec<_>>().join(" "));
                sources.push((format!("/proc/{pid}/cmdline ({name})"), cmdline));
                sources.push((format!("/proc/{pid}/environ"), environ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backups = std::fs::read_dir(dir.path().join("backups/backups")).map(|dir| dir.count()).unwrap_or(0);
    assert!(backups > 0, "scheduled backups ran while sampled");

    drop(stop_up);
    let _ = up.wait();
    sources.push(("up's log (nodes' included)".into(), std::fs::read(&log_path).unwrap()));
    sources.push(("topology.json".into(), std::fs::read(&topology_path).unwrap_or_default()));
    sources.push(("witness.json".into(), std::fs::read(data.join("witness.json")).unwrap_or_default()));
    // The search finds a secret where it is (its own file), so finding none elsewhere means something.
    let control = [("admin-token file".to_string(), std::fs::read(data.join("admin-token")).unwrap())];
    assert_eq!(leaks(&secrets, &control), ["admin token in admin-token file"], "the search works");
    let found = leaks(&secrets, &sources);
    let log_lines = std::fs::read_to_string(&log_path).unwrap().lines().count();
    println!(
        "secrets: {} sources ({} log lines, {} distinct processes: {:?}), {backups} backups: {} leaks",
        sources.len(),
        log_lines,
        processes_seen.len(),
        processes_seen,
        found.len()
    );
    assert!(processes_seen.iter().any(|name| name.contains("backup")), "a backup process was sampled");
    assert!(found.is_empty(), "secrets leaked: {found:#?}");
}

/// Stops `up` (SIGINT, then SIGKILL) when dropped, also when the test fails.
fn scopeguard(pid: u32) -> impl Drop {
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            use nix::sys::signal::{kill, Signal};
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = kill(pid, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && kill(pid, None).is_ok() {
                // Reaped by the test's wait(); until then it is a zombie, which is fine.
                if std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|stat| stat.contains(") Z ")) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    Stop(pid)
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], message: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The AWS Signature V4 of a request head, as S3 computes it with `secret`: what proves the key
/// read from the file signed the request.
fn sigv4_signature(head: &str, secret: &str) -> (String, String) {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let authorization = &headers["authorization"];
    let field = |name: &str| {
        authorization.split(", ").find_map(|part| part.split(' ').next_back()?.strip_prefix(name)).unwrap().to_string()
    };
    let (credential, signed_headers, signature) = (field("Credential="), field("SignedHeaders="), field("Signature="));
    let scope = credential.split_once('/').unwrap().1.to_string();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut query: Vec<&str> = query.split('&').filter(|pair| !pair.is_empty()).collect();
    query.sort();
    let canonical_headers: String =
        signed_headers.split(';').map(|name| format!("{name}:{}\n", headers[name])).collect();
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        query.join("&"),
        headers["x-amz-content-sha256"]
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        headers["x-amz-date"],
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for step in scope.split('/') {
        key = hmac(&key, step);
    }
    (hex::encode(hmac(&key, &string_to_sign)), signature)
}

/// `rananeeti backup list` against an S3 endpoint on loopback with the keys only in files
/// (`AWS_ACCESS_KEY_ID_FILE`, `AWS_SECRET_ACCESS_KEY_FILE`): the request is signed with them.
#[tokio::test(flavor = "multi_thread")]
async fn s3_keys_are_read_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (key_id, secret) = ("AKIDFROMAFILE0001", format!("secret-from-a-file-{}", std::process::id()));
    std::fs::write(dir.path().join("access-key-id"), format!("{key_id}\n")).unwrap();
    std::fs::write(dir.path().join("secret-access-key"), format!("{secret}\n")).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = std::sync::Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 16 * 1024 {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => head.extend_from_slice(&chunk[..read]),
                }
            }
            recorded.lock().unwrap().push(String::from_utf8_lossy(&head).to_string());
            let body = r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><Prefix>prefix/backups/</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>false</IsTruncated></ListBucketResult>"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_rananeeti"))
            .args(["backup", "list", "--repo", "s3://bucket/prefix"])
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID_FILE", dir.path().join("access-key-id"))
            .env("AWS_SECRET_ACCESS_KEY_FILE", dir.path().join("secret-access-key"))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "backup list: {stderr}");
    assert!(!stderr.contains(&secret) && !String::from_utf8_lossy(&output.stdout).contains(&secret));
    let heads = heads.lock().unwrap().clone();
    assert!(!heads.is_empty(), "the fake S3 endpoint was asked");
    for head in &heads {
        assert!(head.contains(&format!("Credential={key_id}/")), "signed with the key id from the file:\n{head}");
        let (expected, sent) = sigv4_signature(head, &secret);
        assert_eq!(sent, expected, "signed with the secret key from the file:\n{head}");
    }

    // A file that is named but missing is an error naming the variable, not an unsigned request.
    let missing = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["backup", "list", "--repo", "s3://bucket/prefix"])
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID_FILE", dir.path().join("access-key-id"))
        .env("AWS_SECRET_ACCESS_KEY_FILE", dir.path().join("no-such-file"))
        .output()
        .unwrap();
    let reason = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && reason.contains("AWS_SECRET_ACCESS_KEY_FILE"), "{reason}");
    println!("S3 keys from files: {} signed request(s) verified with the key from the file", heads.len());
}
