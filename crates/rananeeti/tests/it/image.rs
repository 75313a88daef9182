//! The OCI image: the Containerfile passes hadolint; `scripts/build-image.sh` builds it with the
//! real podman, offline, from this test's binary (the debug build: the suite does not build a
//! release one; the script builds the release binary when given none); the image is exported
//! with `podman save` and its layers unpacked, and the binary runs from that root with `chroot`
//! as the image's user: `--version`, then `node` serving `/readyz` and its admin API with the
//! token from a file. Running the container itself is not possible in this sandbox (crun cannot
//! set rlimits here).

use crate::support::eventually;
use rananeeti::postgres::free_loopback_port;
use serde_json::Value;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The image's user (deploy/image/assemble-rootfs.sh).
const IMAGE_UID: u32 = 10001;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("{what}: {error} (scripts/test.sh installs it)"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A blob of an OCI image layout by digest (`sha256:...`).
fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A process started in the unpacked root; killed when dropped.
struct Chrooted(std::process::Child);

impl Drop for Chrooted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_builds_offline_and_its_binary_runs_from_the_unpacked_root() {
    let root_dir = repository();
    let lint = run(Command::new("hadolint").arg(root_dir.join("Containerfile")), "hadolint Containerfile");
    assert!(lint.trim().is_empty(), "hadolint: {lint}");

    let scratch = tempfile::tempdir().unwrap();
    // The test's own image store (vfs: no overlay mounts needed), nothing outside the tempdir.
    let podman = format!(
        "podman --root {} --runroot {} --storage-driver vfs --events-backend none",
        scratch.path().join("storage").display(),
        scratch.path().join("run").display()
    );
    let tag = "localhost/rananeeti:test";
    let built = tokio::task::block_in_place(|| {
        run(
            Command::new(root_dir.join("scripts/build-image.sh"))
                .args(["--binary", env!("CARGO_BIN_EXE_rananeeti"), "--tag", tag])
                .env("PODMAN", &podman),
            "scripts/build-image.sh",
        )
    });
    assert_eq!(built.lines().last(), Some(tag), "the script prints the tag last: {built}");

    let layout = scratch.path().join("oci");
    let podman_words: Vec<&str> = podman.split_whitespace().collect();
    tokio::task::block_in_place(|| {
        run(
            Command::new(podman_words[0])
                .args(&podman_words[1..])
                .args(["save", "--format", "oci-dir", "-o"])
                .arg(&layout)
                .arg(tag),
            "podman save",
        )
    });
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(&layout, index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    let image = &config["config"];

    // What the image says about itself: the binary's version and commit, the user, no shell.
    let version_line = run(Command::new(env!("CARGO_BIN_EXE_rananeeti")).arg("--version"), "rananeeti --version");
    let labels = &image["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(version_line.contains(&format!("(commit {revision})")), "{version_line} vs revision {revision}");
    assert!(labels["org.opencontainers.image.licenses"].as_str().unwrap().starts_with("Apache-2.0"), "{labels}");
    assert!(labels["org.opencontainers.image.source"].is_string(), "{labels}");
    assert_eq!(image["User"], format!("{IMAGE_UID}:{IMAGE_UID}"));
    assert_eq!(image["Entrypoint"][0], "/usr/local/bin/rananeeti");

    let root = scratch.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob(&layout, layer["digest"].as_str().unwrap());
        run(Command::new("tar").arg("-xf").arg(&path).arg("-C").arg(&root), "unpacking a layer");
    }
    for absent in ["bin/sh", "usr/bin/sh", "bin/bash"] {
        assert!(!root.join(absent).exists(), "the image has no shell: {absent}");
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains(&format!("rananeeti:x:{IMAGE_UID}:{IMAGE_UID}:")), "{passwd}");
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file(), "CA certificates");
    let data = root.join("var/lib/rananeeti");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data).unwrap()), IMAGE_UID);

    let in_root =
        run(Command::new("chroot").arg(&root).args(["/usr/local/bin/rananeeti", "--version"]), "chroot --version");
    assert_eq!(in_root.trim(), version_line.trim(), "the unpacked binary is this one");

    // The admin token as a mounted Secret would give it: a file readable by the image's user.
    let secrets = root.join("run/secrets/rananeeti");
    std::fs::create_dir_all(&secrets).unwrap();
    let token = format!("image-test-{}", std::process::id());
    std::fs::write(secrets.join("admin-token"), &token).unwrap();
    chown(secrets.join("admin-token"), Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    std::fs::set_permissions(secrets.join("admin-token"), std::fs::Permissions::from_mode(0o400)).unwrap();

    let port = free_loopback_port().unwrap();
    let log = std::fs::File::create(scratch.path().join("node.log")).unwrap();
    let _node = Chrooted(
        Command::new("chroot")
            .arg(format!("--userspec={IMAGE_UID}:{IMAGE_UID}"))
            .arg(&root)
            .args(["/usr/local/bin/rananeeti", "node", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", "/var/lib/rananeeti/node", "--admin-token-file", "/run/secrets/rananeeti/admin-token"])
            .env_remove("RANANEETI_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("chroot"),
    );
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let ready = eventually("the node in the unpacked root to answer /readyz", NODE_START_TIMEOUT, || async {
        let response = client.get(format!("{base}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(response.json::<Value>().await.ok()?)
    })
    .await;
    assert_eq!(ready["store"], "up", "{ready}\n{}", std::fs::read_to_string(scratch.path().join("node.log")).unwrap());
    let queue = client.get(format!("{base}/admin/queue")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(queue.status(), 200, "the token file was read inside the root");
    let refused = client.get(format!("{base}/admin/queue")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(data.join("node/queue").is_dir(), "the node wrote its queue in the image's data directory");
    println!(
        "image {tag}: {} layers, labels {labels}; node in the unpacked root answered /readyz {ready}",
        manifest["layers"].as_array().unwrap().len()
    );
}

/// The release workflow (deploy/ci/release.yml) runs the README's test command, builds the image
/// with scripts/build-image.sh and tags it with the binary's version; checkov's GitHub Actions
/// checks find nothing (it reads workflows only under .github/workflows, so it is copied there).
/// The workflow itself does not run here: that needs GitHub and a registry.
#[test]
fn the_release_workflow_tests_then_builds_and_tags_the_image() {
    let workflow = repository().join("deploy/ci/release.yml");
    let script = "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    let parsed: Value =
        serde_json::from_str(&run(Command::new("python3").arg("-c").arg(script).arg(&workflow), "YAML")).unwrap();
    let steps = |job: &str| -> String {
        parsed["jobs"][job]["steps"].as_array().unwrap().iter().filter_map(|step| step["run"].as_str()).collect()
    };
    assert!(steps("test").contains("./scripts/test.sh"), "the test job runs the README's test command");
    assert_eq!(parsed["jobs"]["image"]["needs"], "test", "the image is built only after the tests pass");
    let image = steps("image");
    assert!(
        image.contains("scripts/build-image.sh --binary target/release/rananeeti --tag \"$IMAGE:$version\""),
        "{image}"
    );
    assert!(image.contains("podman push \"$IMAGE:$version\""), "{image}");

    let scratch = tempfile::tempdir().unwrap();
    let workflows = scratch.path().join(".github/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::copy(&workflow, workflows.join("release.yml")).unwrap();
    let report = run(
        Command::new("checkov")
            .args(["--framework", "github_actions", "--output", "json", "--skip-download", "--quiet", "-d"])
            .arg(scratch.path()),
        "checkov github_actions",
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["summary"]["failed"], 0, "{report}");
    assert!(report["summary"]["passed"].as_u64().unwrap() > 0, "{report}");
}
