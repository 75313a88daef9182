//! Local PostgreSQL clusters started from the machine's binaries (initdb, pg_ctl, psql).
//!
//! A cluster listens on one loopback TCP port only (no unix socket), trusts loopback connections
//! for the `rananeeti` role, and keeps every durability setting on: it stands in for a managed
//! database in `rananeeti up --store postgres` and in tests. PostgreSQL refuses to run as root, so
//! when we are root the server programs run as the `postgres` system user (else `nobody`).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The role initdb creates as superuser, and the database `init_and_start` creates.
const ROLE: &str = "rananeeti";
const DATABASE: &str = "rananeeti";
/// How long pg_ctl may wait for the server to start or stop.
const PG_CTL_TIMEOUT_SECONDS: u64 = 30;
/// How long a started server gets to accept a TCP connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server log quoted in an error.
const LOG_TAIL_LINES_MAX: usize = 20;
/// Bytes read from the end of the server log to find those lines.
const LOG_TAIL_BYTES_MAX: u64 = 16 * 1024;

/// The system user the server programs run as when we are root.
#[derive(Clone, Debug)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// A PostgreSQL cluster in a data directory, listening on `127.0.0.1:port`.
///
/// Dropping it stops the server (fast shutdown: clients are disconnected, committed work is kept).
#[derive(Debug)]
pub struct PgCluster {
    data_dir: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    log_file: PathBuf,
    run_as: Option<RunAs>,
    /// Stop the server when this handle is dropped: true for a cluster this handle started,
    /// false for one attached to (`attach`), which belongs to whoever started it.
    stop_on_drop: bool,
}

impl PgCluster {
    /// Initialises `dir` (unless it already holds a cluster) and starts the server on
    /// `127.0.0.1:port`, then creates the `rananeeti` database if it is missing.
    ///
    /// The binaries are found with `pg_config --bindir`, else on `PATH`, else in the newest
    /// `/usr/lib/postgresql/*/bin`. A server left running in `dir` by an earlier run is stopped
    /// first, since its port is unknown.
    pub fn init_and_start(dir: &Path, port: u16) -> anyhow::Result<PgCluster> {
        let bin_dir = find_bin_dir()?;
        let run_as = run_as_user()?;
        let data_dir = std::path::absolute(dir)
            .with_context(|| format!("resolving PostgreSQL data directory {}", dir.display()))?;
        let parent = data_dir
            .parent()
            .with_context(|| format!("data directory {} has no parent", data_dir.display()))?
            .to_path_buf();
        fs::create_dir_all(&parent).with_context(|| format!("creating directory {}", parent.display()))?;
        if run_as.is_some() {
            make_traversable(&parent)?;
        }
        let mut log_name = data_dir
            .file_name()
            .with_context(|| format!("data directory {} has no name", data_dir.display()))?
            .to_os_string();
        log_name.push(".log");
        let cluster =
            PgCluster { log_file: parent.join(log_name), data_dir, port, bin_dir, run_as, stop_on_drop: true };

        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb()?;
        } else if let Some(run_as) = &cluster.run_as {
            chown_tree(&cluster.data_dir, run_as)?;
        }
        cluster.prepare_log_file()?;
        if cluster.is_running()? {
            tracing::warn!(
                data_dir = %cluster.data_dir.display(),
                "a PostgreSQL server from an earlier run is still running here; stopping it"
            );
            cluster.stop()?;
        }
        cluster.start()?;
        cluster.create_database_if_missing()?;
        tracing::info!(
            data_dir = %cluster.data_dir.display(),
            port,
            pid = cluster.pid(),
            "PostgreSQL is up"
        );
        Ok(cluster)
    }

    /// A handle on a cluster another process runs from `dir` on `port` (a drill stopping and
    /// restarting `up`'s): nothing is started, and dropping the handle does not stop it.
    pub fn attach(dir: &Path, port: u16) -> anyhow::Result<PgCluster> {
        let data_dir = std::path::absolute(dir)
            .with_context(|| format!("resolving PostgreSQL data directory {}", dir.display()))?;
        anyhow::ensure!(data_dir.join("PG_VERSION").exists(), "{} holds no PostgreSQL cluster", data_dir.display());
        let mut log_name = data_dir
            .file_name()
            .with_context(|| format!("data directory {} has no name", data_dir.display()))?
            .to_os_string();
        log_name.push(".log");
        let log_file = data_dir.parent().unwrap_or(Path::new("/")).join(log_name);
        Ok(PgCluster {
            data_dir,
            port,
            bin_dir: find_bin_dir()?,
            log_file,
            run_as: run_as_user()?,
            stop_on_drop: false,
        })
    }

    /// `postgres://rananeeti@127.0.0.1:PORT/rananeeti` (no password: loopback trust).
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The postmaster's pid, from `DIR/postmaster.pid`; `None` when the server is not running.
    pub fn pid(&self) -> Option<u32> {
        let contents = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        contents.lines().next()?.trim().parse().ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the server writes its log.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops the server the way a crash would: no checkpoint, recovery replays the WAL on the next
    /// start (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`): clients are disconnected, work committed so
    /// far is kept.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the server on the same port and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        // Quoted for the shell pg_ctl runs the server through; '' is an empty value, which turns
        // the unix socket off.
        let server_options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' \
             -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
            self.port
        );
        let mut command = self.command("pg_ctl");
        command
            .arg("start")
            .arg("--wait")
            .arg(format!("--timeout={PG_CTL_TIMEOUT_SECONDS}"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(server_options);
        let output = run(&mut command)?;
        if !output.status.success() {
            bail!(
                "PostgreSQL in {} did not start on 127.0.0.1:{} within {PG_CTL_TIMEOUT_SECONDS} s \
                 (pg_ctl: {}){}",
                self.data_dir.display(),
                self.port,
                output_text(&output),
                self.log_tail()
            );
        }
        self.wait_until_accepting()
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut command = self.command("pg_ctl");
        command
            .arg("stop")
            .arg("--wait")
            .arg(format!("--timeout={PG_CTL_TIMEOUT_SECONDS}"))
            .arg("-m")
            .arg(mode)
            .arg("-D")
            .arg(&self.data_dir);
        let output = run(&mut command)?;
        if !output.status.success() {
            bail!(
                "stopping PostgreSQL in {} ({mode}) failed: {}{}",
                self.data_dir.display(),
                output_text(&output),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Whether a server is running in the data directory (`pg_ctl status` exits 0).
    fn is_running(&self) -> anyhow::Result<bool> {
        let mut command = self.command("pg_ctl");
        command.arg("status").arg("-D").arg(&self.data_dir);
        Ok(run(&mut command)?.status.success())
    }

    /// Runs initdb into a sibling directory and renames it into place, so that `data_dir` either
    /// does not exist or holds a whole cluster, even if we are killed halfway.
    fn initdb(&self) -> anyhow::Result<()> {
        if self.data_dir.exists() {
            let mut entries =
                fs::read_dir(&self.data_dir).with_context(|| format!("reading {}", self.data_dir.display()))?;
            if entries.next().is_some() {
                bail!("{} is neither empty nor a PostgreSQL data directory (no PG_VERSION)", self.data_dir.display());
            }
            fs::remove_dir(&self.data_dir).with_context(|| format!("removing empty {}", self.data_dir.display()))?;
        }
        let mut partial_name = self.data_dir.as_os_str().to_os_string();
        partial_name.push(".initdb-partial");
        let partial = PathBuf::from(partial_name);
        if partial.exists() {
            fs::remove_dir_all(&partial).with_context(|| format!("removing leftover {}", partial.display()))?;
        }
        fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", partial.display()))?;
        if let Some(run_as) = &self.run_as {
            std::os::unix::fs::chown(&partial, Some(run_as.uid), Some(run_as.gid))
                .with_context(|| format!("chown {} to {}", partial.display(), run_as.name))?;
        }

        // No --no-sync: initdb fsyncs the new cluster, which is what makes the rename below safe.
        let mut command = self.command("initdb");
        command
            .arg("-D")
            .arg(&partial)
            .arg("--auth=trust")
            .arg("-U")
            .arg(ROLE)
            .arg("-E")
            .arg("UTF8")
            // C locale: exists on every machine, and sorting does not change with the host.
            .arg("--locale=C");
        let output = run(&mut command)?;
        if !output.status.success() {
            bail!("initdb into {} failed: {}", partial.display(), output_text(&output));
        }
        fs::rename(&partial, &self.data_dir)
            .with_context(|| format!("renaming {} to {}", partial.display(), self.data_dir.display()))?;
        if let Some(parent) = self.data_dir.parent() {
            File::open(parent)
                .and_then(|directory| directory.sync_all())
                .with_context(|| format!("fsync {}", parent.display()))?;
        }
        tracing::info!(data_dir = %self.data_dir.display(), "initialised a PostgreSQL cluster");
        Ok(())
    }

    /// The server appends to its log as the run-as user, who may not create files next to the
    /// data directory: create the file ourselves and hand it over.
    fn prepare_log_file(&self) -> anyhow::Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("creating {}", self.log_file.display()))?;
        if let Some(run_as) = &self.run_as {
            std::os::unix::fs::chown(&self.log_file, Some(run_as.uid), Some(run_as.gid))
                .with_context(|| format!("chown {} to {}", self.log_file.display(), run_as.name))?;
        }
        Ok(())
    }

    fn wait_until_accepting(&self) -> anyhow::Result<()> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + ACCEPT_TIMEOUT;
        loop {
            match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline => bail!(
                    "PostgreSQL in {} started but does not accept connections on {address} \
                     after {} s: {error}{}",
                    self.data_dir.display(),
                    ACCEPT_TIMEOUT.as_secs(),
                    self.log_tail()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn create_database_if_missing(&self) -> anyhow::Result<()> {
        let exists = self.psql(&format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"))?;
        if exists.trim() != "1" {
            self.psql(&format!("CREATE DATABASE {DATABASE}"))?;
            tracing::info!(port = self.port, "created database {DATABASE}");
        }
        Ok(())
    }

    /// Runs one SQL statement in the `postgres` database and returns its unaligned output.
    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        // A client: it needs no run-as user, only the TCP port.
        let mut command = Command::new(self.bin_dir.join("psql"));
        command
            .env_clear()
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", ROLE, "-d", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql);
        let output = run(&mut command)?;
        if !output.status.success() {
            bail!("psql on 127.0.0.1:{} running {sql:?} failed: {}", self.port, output_text(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A server program from the bin dir, run as the run-as user when we are root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        // The run-as user may not be able to enter our working directory; the server programs
        // complain (and initdb fails) when they cannot.
        command.current_dir("/");
        // A clean environment, so no PGDATA, PGPORT or locale of ours leaks into the cluster.
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.env("LC_ALL", "C");
        if let Some(run_as) = &self.run_as {
            command.uid(run_as.uid).gid(run_as.gid);
        }
        command
    }

    /// The last lines of the server log, formatted to end an error message.
    fn log_tail(&self) -> String {
        match read_tail(&self.log_file) {
            Ok(tail) if !tail.trim().is_empty() => {
                format!("\nlast lines of {}:\n{tail}", self.log_file.display())
            }
            Ok(_) => format!("\n({} is empty)", self.log_file.display()),
            Err(error) => format!("\n(could not read {}: {error})", self.log_file.display()),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.stop_on_drop && self.pid().is_some() {
            if let Err(error) = self.stop() {
                tracing::warn!(%error, "stopping PostgreSQL on drop");
            }
        }
    }
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, close).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Lets other users enter `path` and every directory above it that we own, by adding the execute
/// (search) bit for group and others where it is missing. Read permission is not added, so names
/// inside stay unlisted. Needed when we are root and the server runs as `postgres`: temporary
/// directories are created 0700.
pub fn make_traversable(path: &Path) -> anyhow::Result<()> {
    let path = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    for directory in path.ancestors() {
        let metadata =
            fs::metadata(directory).with_context(|| format!("reading metadata of {}", directory.display()))?;
        let mode = metadata.permissions().mode();
        if metadata.is_dir() && metadata.uid() == euid && mode & 0o011 != 0o011 {
            fs::set_permissions(directory, fs::Permissions::from_mode(mode | 0o011))
                .with_context(|| format!("adding search permission to {}", directory.display()))?;
        }
    }
    Ok(())
}

/// The directory holding initdb, pg_ctl and postgres.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut tried = Vec::new();

    match Command::new("pg_config").arg("--bindir").output() {
        Ok(output) if output.status.success() => {
            let directory = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            match missing_programs(&directory) {
                None => return Ok(directory),
                Some(missing) => {
                    tried.push(format!("`pg_config --bindir` gives {}, which lacks {missing}", directory.display()))
                }
            }
        }
        Ok(output) => tried.push(format!("`pg_config --bindir` failed: {}", output_text(&output))),
        Err(error) => tried.push(format!("no pg_config ({error})")),
    }

    // pg_ctl and initdb find the server next to themselves, symlinks resolved: use that directory.
    match find_on_path("pg_ctl").and_then(|pg_ctl| fs::canonicalize(pg_ctl).ok()) {
        Some(pg_ctl) => {
            let directory = pg_ctl.parent().unwrap_or(Path::new("/")).to_path_buf();
            match missing_programs(&directory) {
                None => return Ok(directory),
                Some(missing) => {
                    tried.push(format!("pg_ctl on PATH lives in {}, which lacks {missing}", directory.display()))
                }
            }
        }
        None => tried.push("no pg_ctl on PATH".to_string()),
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, directory)) => match missing_programs(&directory) {
            None => return Ok(directory),
            Some(missing) => tried.push(format!("{} lacks {missing}", directory.display())),
        },
        None => tried.push("nothing under /usr/lib/postgresql/*/bin".to_string()),
    }

    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found: {}; \
         install PostgreSQL (Debian/Ubuntu: apt-get install postgresql)",
        tried.join("; ")
    )
}

/// The programs we need that `directory` lacks, as a readable list; `None` when all are there.
fn missing_programs(directory: &Path) -> Option<String> {
    let missing: Vec<&str> = ["initdb", "pg_ctl", "postgres", "psql"]
        .into_iter()
        .filter(|program| !is_executable(&directory.join(program)))
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|directory| directory.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// `None` unless we are root; then the `postgres` system user, else `nobody`.
fn run_as_user() -> anyhow::Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        let user = nix::unistd::User::from_name(name).with_context(|| format!("looking up system user {name}"))?;
        if let Some(user) = user {
            return Ok(Some(RunAs { name: name.to_string(), uid: user.uid.as_raw(), gid: user.gid.as_raw() }));
        }
    }
    bail!(
        "running as root, and PostgreSQL refuses to: neither a `postgres` nor a `nobody` user \
         exists to run it as"
    )
}

/// Gives `root` and everything below it to the run-as user, e.g. after a cluster made by another
/// user. Skipped when `root` already belongs to them.
fn chown_tree(root: &Path, run_as: &RunAs) -> anyhow::Result<()> {
    let metadata = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if metadata.uid() == run_as.uid {
        return Ok(());
    }
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, Some(run_as.uid), Some(run_as.gid))
            .with_context(|| format!("chown {} to {}", path.display(), run_as.name))?;
        let metadata = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if metadata.is_dir() {
            for entry in fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    command.stdin(Stdio::null());
    command.output().with_context(|| format!("running {}", program_name(command)))
}

fn program_name(command: &Command) -> String {
    Path::new(command.get_program()).file_name().unwrap_or(OsStr::new("?")).to_string_lossy().into_owned()
}

/// Stderr and stdout of a finished program, trimmed, for an error message.
fn output_text(output: &Output) -> String {
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim()
    );
    let text = text.trim();
    if text.is_empty() {
        format!("{} with no output", output.status)
    } else {
        format!("{} ({})", text, output.status)
    }
}

fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES_MAX);
    Ok(lines[start..].join("\n"))
}
