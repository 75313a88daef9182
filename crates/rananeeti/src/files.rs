//! Every file and directory rananeeti creates is private to the user it runs as: mode 0600 and
//! 0700. Set once per process as its umask (inherited by the nodes and the PostgreSQL servers
//! `up` starts), so no code path that creates a file can forget it: SQLite's files and their
//! journals, the queues, the tokens, topology.json, logs, backups and restored deployments.

/// Sets the process's umask to 077 (only the owner's permission bits survive).
pub fn keep_private() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Makes an existing directory private (0700) when it is ours and others could read or enter
/// it, or its group read or write it (a data directory made by an earlier version, or by hand).
/// Search alone for the group is kept: it is how the `postgres` user reaches its data directory
/// when we are root (`postgres::make_traversable`).
pub fn make_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let metadata = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.uid() == nix::unistd::geteuid().as_raw() && metadata.mode() & 0o067 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", path.display()))?;
        tracing::warn!(path = %path.display(), "data directory was readable by others; it is now 0700");
    }
    Ok(())
}
