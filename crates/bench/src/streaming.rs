//! The physical replication baseline: PostgreSQL streaming replication between two local
//! clusters on loopback, a primary and a hot standby made from it with `pg_basebackup -R`;
//! single-row inserts into the primary at a fixed rate, and the lag until each is visible on the
//! standby, watched the same way as the regions' lag.

use crate::baseline;
use crate::lag::{Arrivals, Watcher};
use crate::machine;
use crate::node::process_and_children_cpu_seconds;
use crate::open_loop::{self, Offered, OpenLoopPlan};
use crate::tally::Tally;
use anyhow::{bail, Context};
use rananeeti::postgres::{free_loopback_port, PgCluster};
use sqlx::AnyPool;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The table the inserts go to, created on the primary before the standby is made.
const TABLE: &str = "bench_reservations";

/// A primary and its standby. Fields drop in order: the standby stops first.
pub struct StreamingPair {
    standby: PgCluster,
    primary: PgCluster,
    primary_pool: AnyPool,
    standby_pool: AnyPool,
    /// Numbers the inserted rows across cells, so every id is new.
    sequence: Arc<AtomicU64>,
}

/// One cell: what was offered, how the inserts went, and when they were visible on the standby.
pub struct StreamingCell {
    pub offered: Offered,
    pub inserts: Tally,
    pub arrivals: Arrivals,
    /// CPU cores both servers used while the load ran.
    pub servers_cores: Option<f64>,
    /// How busy the machine's CPUs were meanwhile, 0 to 1.
    pub machine_busy: Option<f64>,
}

impl StreamingPair {
    /// Starts the primary in `dir/primary` (with the inserts' table), copies it with
    /// `pg_basebackup -R` into `dir/standby` and starts that as a hot standby.
    pub async fn start(dir: &Path) -> anyhow::Result<StreamingPair> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // wal_level=replica and max_wal_senders=10 are PostgreSQL's defaults (since 10), and
        // initdb's pg_hba.conf lets loopback replication connections in with SCRAM, as PgCluster
        // makes every cluster: the standby connects as the superuser with its password.
        let primary_dir = dir.join("primary");
        let primary = tokio::task::spawn_blocking(move || {
            PgCluster::init_and_start(&primary_dir, free_loopback_port().context("finding a free loopback port")?)
        })
        .await?
        .context("starting the streaming baseline's primary")?;
        let primary_pool = baseline::pool(&primary.connect_url()?)?;
        baseline::create_table(&primary_pool).await?;

        let standby_dir = dir.join("standby");
        let primary_port = primary.port();
        let (superuser, passfile, password_file) =
            (primary.superuser(), primary.superuser_passfile(), primary.password_file());
        let superuser_password = primary.superuser_password()?;
        let standby = tokio::task::spawn_blocking(move || {
            base_backup(superuser, &passfile, primary_port, &standby_dir)?;
            // The copy's roles are the primary's: so are their password files, beside it.
            let beside = |suffix: &str| {
                let mut name = standby_dir.as_os_str().to_os_string();
                name.push(suffix);
                PathBuf::from(name)
            };
            std::fs::copy(&password_file, beside(".password")).context("copying the password file")?;
            std::fs::copy(&passfile, beside(".superuser.pgpass")).context("copying the superuser's PGPASSFILE")?;
            // The standby's server runs as `postgres` when we are root and cannot read our
            // PGPASSFILE: its connection to the primary carries the password in its own
            // configuration (0600, in its data directory). A benchmark's baseline only.
            let mut auto_conf = std::fs::OpenOptions::new()
                .append(true)
                .open(standby_dir.join("postgresql.auto.conf"))
                .context("opening the standby's postgresql.auto.conf")?;
            std::io::Write::write_all(
                &mut auto_conf,
                format!(
                    "primary_conninfo = 'host=127.0.0.1 port={primary_port} user={superuser} password={superuser_password}'\n"
                )
                .as_bytes(),
            )
            .context("writing the standby's primary_conninfo")?;
            // The copy holds PG_VERSION, so PgCluster starts it as it is (no initdb), as the
            // postgres user when we are root; standby.signal, written by -R, makes it a standby.
            PgCluster::init_and_start(&standby_dir, free_loopback_port().context("finding a free loopback port")?)
        })
        .await?
        .context("starting the streaming baseline's standby")?;
        let standby_pool = baseline::pool(&standby.connect_url()?)?;
        let (in_recovery,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
            .fetch_one(&standby_pool)
            .await
            .context("asking the standby whether it is one")?;
        if !in_recovery {
            bail!("the streaming baseline's standby is not in recovery: it would not replicate");
        }
        Ok(StreamingPair { standby, primary, primary_pool, standby_pool, sequence: Arc::new(AtomicU64::new(0)) })
    }

    /// Inserts into the primary at `rate_per_second` for `duration`, each row watched for on the
    /// standby from its commit on; waits up to `arrival_timeout` for the last ones.
    pub async fn run_cell(
        &self,
        rate_per_second: f64,
        duration: Duration,
        in_flight_max: usize,
        arrival_timeout: Duration,
    ) -> StreamingCell {
        let watcher = Watcher::start(self.standby_pool.clone(), TABLE);
        let expectations = watcher.expectations();
        let plan = OpenLoopPlan { rate_per_second, duration, in_flight_max };
        let servers_before = self.servers_cpu_seconds();
        let jiffies_before = machine::cpu_jiffies();
        let (offered, results) = open_loop::run(plan, |_| {
            let pool = self.primary_pool.clone();
            let expectations = expectations.clone();
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
            async move {
                let started = Instant::now();
                let inserted = baseline::insert_one(&pool, sequence).await;
                let committed = Instant::now();
                match inserted {
                    Ok(()) => {
                        expectations.expect(baseline::id_of(sequence), committed, true);
                        Ok(committed - started)
                    }
                    Err(error) => Err(format!("insert failed: {error}")),
                }
            }
        })
        .await;
        let servers_after = self.servers_cpu_seconds();
        let machine_busy = jiffies_before
            .zip(machine::cpu_jiffies())
            .and_then(|(before, after)| machine::busy_fraction(before, after));
        let seconds = offered.elapsed.as_secs_f64().max(f64::EPSILON);
        let servers_cores = servers_before.zip(servers_after).map(|(before, after)| (after - before) / seconds);
        let mut inserts = Tally::default();
        for result in results {
            match result {
                Ok(latency) => inserts.record_ok(latency),
                Err(error) => inserts.record_error(error),
            }
        }
        inserts.elapsed = offered.elapsed;
        let arrivals = watcher.finish(arrival_timeout).await;
        StreamingCell { offered, inserts, arrivals, servers_cores, machine_busy }
    }

    /// CPU seconds used so far by both servers, backends included.
    fn servers_cpu_seconds(&self) -> Option<f64> {
        [self.primary.pid()?, self.standby.pid()?].into_iter().map(process_and_children_cpu_seconds).sum()
    }

    /// Closes the pools and stops both servers (standby first), off the runtime's workers.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.primary_pool.close().await;
        self.standby_pool.close().await;
        let (standby, primary) = (self.standby, self.primary);
        tokio::task::spawn_blocking(move || {
            drop(standby);
            drop(primary);
        })
        .await?;
        Ok(())
    }
}

/// `pg_basebackup -R -X stream` of the primary at 127.0.0.1:`port` into `target`, as `user`
/// with the password from `passfile`: a copy that starts as a standby streaming from it.
fn base_backup(user: &str, passfile: &Path, port: u16, target: &Path) -> anyhow::Result<()> {
    let program = postgres_bin_dir()?.join("pg_basebackup");
    // A client, like psql: it runs as we do. When we are root the copy is ours; PgCluster hands
    // the data directory to the postgres user before starting it.
    let output = Command::new(&program)
        .env_clear()
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGPASSFILE", passfile)
        .current_dir("/")
        .args(["-h", "127.0.0.1", "-U", user, "-X", "stream", "-R", "-c", "fast", "--no-password"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-D")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "pg_basebackup into {} failed ({}): {}",
            target.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Where pg_basebackup is: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
/// PgCluster finds its server binaries the same way but keeps the directory to itself (its API
/// is clusters, not programs); this is the smallest copy of that search that finds the client.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
        let directory = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && directory.join("pg_basebackup").is_file() {
            return Ok(directory);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, directory): &(u32, PathBuf)| directory.join("pg_basebackup").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, directory)| directory)
        .context("pg_basebackup not found (neither `pg_config --bindir` nor /usr/lib/postgresql/*/bin has it)")
}
