//! Local PostgreSQL clusters started from the machine's binaries (initdb, pg_ctl, psql).
//!
//! A cluster listens on one loopback TCP port only (no unix socket) and keeps every durability
//! setting on: it stands in for a managed database in `rananeeti up --store postgres` and in
//! tests. It is locked like one: every connection authenticates with SCRAM-SHA-256; the
//! bootstrap superuser `postgres` has a generated password kept in `<dir>.superuser.pgpass`
//! (a PGPASSFILE, 0600) for setting the cluster up; the apps connect as `rananeeti`, a role that
//! is no superuser, cannot create roles or databases, and owns only the schema `rananeeti` of the
//! database `rananeeti` (where its tables go: the schema named after the role comes first in the
//! search path), with a generated password in `<dir>.password` (0600) that nodes read through
//! `store.password_file`. Neither password is ever on a command line, in a URL or in the
//! server's log: the roles' passwords are sent as SCRAM verifiers computed here, over psql's
//! standard input. PostgreSQL refuses to run as root, so when we are root the server programs
//! run as the `postgres` system user (else `nobody`).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The apps' role, its database, and the schema it owns there.
pub const ROLE: &str = "rananeeti";
const DATABASE: &str = "rananeeti";
/// The bootstrap superuser initdb creates; used only to set the cluster up.
const SUPERUSER: &str = "postgres";
/// Random bytes in a generated password (hex in its file).
const PASSWORD_BYTES: usize = 32;
/// PostgreSQL's default SCRAM iteration count.
const SCRAM_ITERATIONS: u32 = 4096;
/// Extensions the apps' migrations use that need more than the apps' role may do: created by the
/// superuser at set-up, in the apps' schema (the bookstore's trigram search index).
const EXTENSIONS: &[&str] = &["pg_trgm"];
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
        if let Some(run_as) = &run_as {
            make_traversable_for(&parent, run_as)?;
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
        } else {
            if !cluster.superuser_passfile().exists() || !cluster.password_file().exists() {
                bail!(
                    "the PostgreSQL cluster in {} has no {} or {}: it was made by an earlier rananeeti, which let every \
                     local user in without a password. Take a backup of it (`rananeeti backup create`), restore it into \
                     a new directory (`rananeeti backup restore --store postgres`), and use that one",
                    cluster.data_dir.display(),
                    cluster.superuser_passfile().display(),
                    cluster.password_file().display()
                );
            }
            if let Some(run_as) = &cluster.run_as {
                chown_tree(&cluster.data_dir, run_as)?;
            }
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
        cluster.set_up_roles_and_schema()?;
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

    /// `postgres://rananeeti@127.0.0.1:PORT/rananeeti`: the apps' role, without its password
    /// (that is in `password_file`).
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The apps' role's password (mode 0600): what nodes get as `store.password_file`.
    pub fn password_file(&self) -> PathBuf {
        sibling(&self.data_dir, ".password")
    }

    /// A PGPASSFILE (0600) with the superuser's password, for psql and for an operator.
    pub fn superuser_passfile(&self) -> PathBuf {
        sibling(&self.data_dir, ".superuser.pgpass")
    }

    /// `url` with the password, for a connection made in this process (tests, backups). A
    /// secret: never log it or pass it to another program.
    pub fn connect_url(&self) -> anyhow::Result<String> {
        connect_url(&self.url(), Some(&self.password_file()))
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

        // The passwords first: a cluster is never without them. Kept when an earlier, interrupted
        // initdb already wrote them.
        let superuser_password = match read_passfile_password(&self.superuser_passfile()) {
            Some(password) => password,
            None => {
                let password = new_password();
                write_private(
                    &self.superuser_passfile(),
                    format!("127.0.0.1:*:*:{SUPERUSER}:{password}\n").as_bytes(),
                )?;
                password
            }
        };
        if read_password(&self.password_file()).is_none() {
            write_private(&self.password_file(), new_password().as_bytes())?;
        }
        // initdb reads the superuser's password from a file the run-as user can read; it goes
        // once initdb is done.
        let pwfile = sibling(&partial, ".pwfile");
        write_private(&pwfile, superuser_password.as_bytes())?;
        if let Some(run_as) = &self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(run_as.uid), Some(run_as.gid))
                .with_context(|| format!("chown {} to {}", pwfile.display(), run_as.name))?;
        }

        // No --no-sync: initdb fsyncs the new cluster, which is what makes the rename below safe.
        let mut command = self.command("initdb");
        command
            .arg("-D")
            .arg(&partial)
            .arg("--auth=scram-sha-256")
            .arg("--pwfile")
            .arg(&pwfile)
            .arg("-U")
            .arg(SUPERUSER)
            .arg("-E")
            .arg("UTF8")
            // C locale: exists on every machine, and sorting does not change with the host.
            .arg("--locale=C");
        let output = run(&mut command);
        let _ = fs::remove_file(&pwfile);
        let output = output?;
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

    /// The apps' role (its password set from `password_file`, as a SCRAM verifier), the
    /// database, and the schema the role owns; every step is a no-op when it is already so, so
    /// this runs at every start.
    fn set_up_roles_and_schema(&self) -> anyhow::Result<()> {
        let password = read_password(&self.password_file())
            .with_context(|| format!("reading the apps' role's password from {}", self.password_file().display()))?;
        let verifier = scram_verifier(&password);
        let extensions: String = EXTENSIONS
            .iter()
            .map(|extension| format!("CREATE EXTENSION IF NOT EXISTS {extension} SCHEMA {ROLE};\n"))
            .collect();
        let script = format!(
            // A standby (in recovery) has it all from its primary, and can write nothing.
            "SELECT pg_is_in_recovery() AS recovering \\gset\n\\if :recovering\n\\quit\n\\endif\n\
             SELECT 'CREATE ROLE {ROLE}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')\\gexec\n\
             ALTER ROLE {ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
             PASSWORD '{verifier}';\n\
             SELECT 'CREATE DATABASE {DATABASE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n\
             REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;\n\
             GRANT CONNECT, TEMPORARY ON DATABASE {DATABASE} TO {ROLE};\n\
             REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;\n\
             \\connect {DATABASE}\n\
             REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
             CREATE SCHEMA IF NOT EXISTS {ROLE} AUTHORIZATION {ROLE};\n\
             {extensions}"
        );
        self.psql_script(&script)?;
        tracing::info!(port = self.port, role = ROLE, "PostgreSQL roles and schema set up");
        Ok(())
    }

    /// Another database for the apps' role, set up like `rananeeti` (its own schema, the
    /// extensions), e.g. for a benchmark that compares two stores on one server. Its URL, without
    /// the password.
    pub fn add_database(&self, name: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !name.is_empty()
                && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'),
            "a database name of lowercase letters, digits and _: {name}"
        );
        let extensions: String = EXTENSIONS
            .iter()
            .map(|extension| format!("CREATE EXTENSION IF NOT EXISTS {extension} SCHEMA {ROLE};\n"))
            .collect();
        self.psql_script(&format!(
            "SELECT 'CREATE DATABASE {name}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n\
             REVOKE ALL ON DATABASE {name} FROM PUBLIC;\n\
             GRANT CONNECT, TEMPORARY ON DATABASE {name} TO {ROLE};\n\
             \\connect {name}\n\
             REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
             CREATE SCHEMA IF NOT EXISTS {ROLE} AUTHORIZATION {ROLE};\n\
             {extensions}"
        ))?;
        Ok(format!("postgres://{ROLE}@127.0.0.1:{}/{name}", self.port))
    }

    /// The superuser's password (for a tool that must act as it, such as `pg_basebackup`). A
    /// secret: never log it.
    pub fn superuser_password(&self) -> anyhow::Result<String> {
        read_passfile_password(&self.superuser_passfile())
            .with_context(|| format!("reading {}", self.superuser_passfile().display()))
    }

    /// The superuser's name.
    pub fn superuser(&self) -> &'static str {
        SUPERUSER
    }

    /// Runs a psql script (on standard input, so nothing of it is on a command line) as the
    /// superuser, in the `postgres` database, stopping at the first error.
    fn psql_script(&self, script: &str) -> anyhow::Result<String> {
        // A client: it needs no run-as user, only the TCP port and the superuser's PGPASSFILE.
        let mut command = Command::new(self.bin_dir.join("psql"));
        command
            .env_clear()
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGPASSFILE", self.superuser_passfile())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w", "-f", "-"])
            .args(["-h", "127.0.0.1", "-U", SUPERUSER, "-d", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("running psql")?;
        let mut stdin = child.stdin.take().context("psql's standard input")?;
        stdin.write_all(script.as_bytes()).context("writing to psql")?;
        drop(stdin);
        let output = child.wait_with_output().context("waiting for psql")?;
        if !output.status.success() {
            // The script holds a SCRAM verifier, not a password; still, quote psql, not the script.
            bail!("setting up PostgreSQL on 127.0.0.1:{} failed: {}", self.port, output_text(&output));
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

/// `url` with the password from `password_file` (when given), for a connection made in this
/// process: a secret, never logged, never passed to another program.
pub fn connect_url(url: &str, password_file: Option<&Path>) -> anyhow::Result<String> {
    let password = match password_file {
        Some(file) => Some(
            read_password(file).with_context(|| format!("reading the database password from {}", file.display()))?,
        ),
        None => None,
    };
    let password = password.as_deref().map(rananeeti_platform::StorePassword::new);
    rananeeti_platform::url_with_password(url, password.as_ref()).map_err(|error| anyhow::anyhow!("{error}"))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn new_password() -> String {
    hex::encode(rand::random::<[u8; PASSWORD_BYTES]>())
}

/// A password file's content, trimmed; `None` when missing or empty.
fn read_password(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    Some(text.trim().to_string()).filter(|password| !password.is_empty())
}

/// The password of a one-line PGPASSFILE (`host:port:db:user:password`; ours hold no escapes).
fn read_passfile_password(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().next()?.splitn(5, ':').nth(4).map(str::to_string).filter(|password| !password.is_empty())
}

/// Writes a secret file, mode 0600 from its creation, fsynced, atomically in place.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = sibling(path, ".tmp");
    let _ = fs::remove_file(&temporary);
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// A SCRAM-SHA-256 verifier of `password` (RFC 5802, as PostgreSQL stores it): the server gets
/// this, never the password.
fn scram_verifier(password: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let salt: [u8; 16] = rand::random();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, SCRAM_ITERATIONS, &mut salted);
    let hmac = |key: &[u8], text: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(text);
        mac.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, close).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Lets the user PostgreSQL's server runs as (when we are root) enter `path` and every directory
/// above it that we own, without letting anyone list or read them: a private directory (nothing
/// for group or others, as rananeeti makes them) is given to that user's group with search
/// permission only (0710); any other directory we own gets the search bit for others. Read
/// permission is never added, so names inside stay unlisted.
pub fn make_traversable(path: &Path) -> anyhow::Result<()> {
    let Some(run_as) = run_as_user()? else { return Ok(()) };
    make_traversable_for(path, &run_as)
}

fn make_traversable_for(path: &Path, run_as: &RunAs) -> anyhow::Result<()> {
    let path = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    for directory in path.ancestors() {
        let metadata =
            fs::metadata(directory).with_context(|| format!("reading metadata of {}", directory.display()))?;
        let mode = metadata.permissions().mode() & 0o7777;
        if !metadata.is_dir() || metadata.uid() != euid || mode & 0o001 != 0 {
            continue;
        }
        if mode & 0o077 == 0 || (metadata.gid() == run_as.gid && mode & 0o070 == 0o010) {
            if metadata.gid() != run_as.gid {
                std::os::unix::fs::chown(directory, None, Some(run_as.gid))
                    .with_context(|| format!("giving {} to group {}", directory.display(), run_as.name))?;
            }
            if mode & 0o010 == 0 {
                fs::set_permissions(directory, fs::Permissions::from_mode(mode | 0o010))
                    .with_context(|| format!("adding group search permission to {}", directory.display()))?;
            }
        } else {
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
