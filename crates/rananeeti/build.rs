//! Build script: records the git commit the binary is built from, for `rananeeti --version`.
//!
//! `RANANEETI_COMMIT` in the build's environment wins (a build from a tarball whose commit is
//! known); else `git rev-parse --short=12 HEAD`; else "unknown". It reruns only when HEAD or the
//! branch it points to moves, not on every source change.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RANANEETI_COMMIT");
    let given = std::env::var("RANANEETI_COMMIT").ok().filter(|commit| !commit.trim().is_empty());
    let commit = given.or_else(|| git(&["rev-parse", "--short=12", "HEAD"])).unwrap_or_else(|| "unknown".into());
    // Paths git reports are relative to the current directory (this crate's); watch HEAD, the
    // branch's ref and packed-refs (where a ref goes after `git gc`).
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "packed-refs"])];
    if let Some(branch) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).filter(|name| name.starts_with("refs/")) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        let path = PathBuf::from(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rustc-env=RANANEETI_COMMIT={}", commit.trim());
}
