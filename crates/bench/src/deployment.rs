//! A whole local deployment as `rananeeti up` runs it (gateway, nodes, PostgreSQL when asked), as
//! one child process of the benchmark: started in a fresh data directory, found through its
//! `topology.json`, stopped with SIGINT (it stops its nodes and databases) also after an error.

use anyhow::{bail, Context};
use rananeeti::topology::Topology;
use rananeeti_platform::StoreKind;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `up` gets to write its topology (PostgreSQL's initdb is the slow part).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the gateway gets to pass a first request through to a node once `up` says it is up.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `up` gets to stop its nodes and PostgreSQL after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of `up`'s log quoted when it fails.
const LOG_TAIL_LINES_MAX: usize = 20;
/// `up` takes its port for the gateway and the next ones for every node slot and its witness:
/// besides the slots, this many are checked free before it starts (gateway, witness).
const PORTS_BESIDE_SLOTS: u16 = 2;
/// Bases tried for that run of ports, below the kernel's ephemeral range (32768 and up), so a
/// port picked free is not taken by an outgoing connection a moment later.
const PORT_BASE_FIRST: u16 = 20_000;
const PORT_BASE_SPAN: u16 = 10_000;
const PORT_BASE_ATTEMPTS_MAX: usize = 50;

/// What `up` is asked to run.
#[derive(Clone, Debug)]
pub struct Shape {
    pub regions: u32,
    /// Nodes per region: a count, or `MIN..MAX` (autoscaled); `slots_per_region` is the MAX.
    pub nodes_per_region: String,
    pub slots_per_region: u32,
    pub store: StoreKind,
    /// More arguments for `up` (the autoscaler's flags).
    pub extra_args: Vec<String>,
}

impl Shape {
    /// One region of `nodes` nodes, unscaled.
    pub fn one_region(nodes: u32, store: StoreKind) -> Shape {
        Shape {
            regions: 1,
            nodes_per_region: nodes.to_string(),
            slots_per_region: nodes,
            store,
            extra_args: Vec::new(),
        }
    }

    /// The `up` arguments this shape adds, as a reader would type them.
    pub fn describe(&self) -> String {
        let mut words =
            vec![format!("--regions {}", self.regions), format!("--nodes-per-region {}", self.nodes_per_region)];
        if self.store == StoreKind::Postgres {
            words.push("--store postgres".to_string());
        }
        words.extend(self.extra_args.iter().cloned());
        words.join(" ")
    }
}

/// A running `rananeeti up`; SIGINT and a bounded wait when dropped.
pub struct Deployment {
    child: Child,
    log_file: PathBuf,
    data: PathBuf,
    pub topology: Topology,
}

impl Deployment {
    /// `binary up --regions 1 --nodes-per-region NODES --port P --data DIR/data [--store postgres]`,
    /// its output in `DIR/up.log`; returns once the gateway answers a catalog read.
    pub async fn start(binary: &Path, dir: &Path, nodes_per_region: u32, store: StoreKind) -> anyhow::Result<Self> {
        Self::start_shaped(binary, dir, &Shape::one_region(nodes_per_region, store)).await
    }

    /// `binary up` as `shape` says, on `--port P --data DIR/data`, its output in `DIR/up.log`;
    /// returns once the gateway answers a catalog read.
    pub async fn start_shaped(binary: &Path, dir: &Path, shape: &Shape) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports_needed = u16::try_from(shape.regions * shape.slots_per_region)
            .ok()
            .and_then(|slots| slots.checked_add(PORTS_BESIDE_SLOTS))
            .context("too many node slots for one run of ports")?;
        let port = free_port_run(ports_needed).context("finding free loopback ports for `rananeeti up`")?;
        let data = dir.join("data");
        let log_file = dir.join("up.log");
        let log = File::create(&log_file).with_context(|| format!("creating {}", log_file.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("up")
            .args(["--regions", &shape.regions.to_string(), "--nodes-per-region", &shape.nodes_per_region])
            .args(["--port", &port.to_string()])
            .arg("--data")
            .arg(&data)
            .args(&shape.extra_args);
        if shape.store == StoreKind::Postgres {
            command.args(["--store", "postgres"]);
        }
        // Its defaults, not whatever this shell has set.
        command.env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RANANEETI_") {
                command.env_remove(key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} up", binary.display()))?;
        let mut deployment = Deployment { child, log_file, data: data.clone(), topology: Topology::default() };
        let topology_path = deployment.topology_path();
        deployment.topology = deployment.wait_for_topology(&topology_path).await?;
        deployment.wait_for_first_answer().await?;
        Ok(deployment)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The deployment's data directory (`rananeeti deploy --data` takes it).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `topology.json`, which `up` rewrites as nodes come and go.
    pub fn topology_path(&self) -> PathBuf {
        self.data.join("topology.json")
    }

    /// The topology as `up` last wrote it (None while it is being rewritten or unreadable).
    pub fn read_topology(&self) -> Option<Topology> {
        serde_json::from_str(&std::fs::read_to_string(self.topology_path()).ok()?).ok()
    }

    pub fn gateway_url(&self) -> &str {
        self.topology.gateway_url.as_deref().expect("the topology names the gateway once up is up")
    }

    /// The region's database (one region).
    /// The first region's database URL with its password (in this process only).
    pub fn database_connect_url(&self) -> anyhow::Result<String> {
        self.topology.regions[0].database.connect_url()
    }

    /// SIGINT, then waits for `up` to stop everything it started and exit 0.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.interrupt_and_wait()?;
        if !status.success() {
            bail!("`rananeeti up` exited with {status} after SIGINT{}", log_tail(&self.log_file));
        }
        Ok(())
    }

    fn interrupt_and_wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).context("sending SIGINT to `rananeeti up`")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("`rananeeti up` did not stop within {} s of SIGINT; killed", STOP_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to `up`; its nodes die with it (parent-death signal), PostgreSQL would not, so its
    /// postmaster gets a fast shutdown (SIGINT) of its own.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(postmaster) = self.topology.regions.first().and_then(|region| region.database.pid) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster as i32), nix::sys::signal::Signal::SIGINT);
        }
    }

    async fn wait_for_topology(&mut self, path: &Path) -> anyhow::Result<Topology> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(topology) = serde_json::from_str::<Topology>(&text) {
                    if topology.gateway_url.is_some() && !topology.regions.is_empty() {
                        return Ok(topology);
                    }
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("`rananeeti up` exited with {status} before it was up{}", log_tail(&self.log_file));
            }
            if Instant::now() >= deadline {
                bail!("`rananeeti up` was not up within {} s{}", START_TIMEOUT.as_secs(), log_tail(&self.log_file));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gateway health-checks its nodes before it sends them anything: wait for a 200.
    async fn wait_for_first_answer(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
        let url = format!("{}/api/books?limit=1", self.gateway_url());
        let deadline = Instant::now() + FIRST_ANSWER_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("`rananeeti up` exited with {status}{}", log_tail(&self.log_file));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the gateway did not answer GET /api/books within {} s{}",
                    FIRST_ANSWER_TIMEOUT.as_secs(),
                    log_tail(&self.log_file)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Only after an error: `stop` has reaped the child already, and then this does nothing.
        if let Ok(None) = self.child.try_wait() {
            if let Err(error) = self.interrupt_and_wait() {
                eprintln!("[bench] stopping `rananeeti up`: {error:#}");
            }
        }
    }
}

/// A base port such that it and the `ports_needed - 1` after it can be bound on loopback now.
fn free_port_run(ports_needed: u16) -> anyhow::Result<u16> {
    for _ in 0..PORT_BASE_ATTEMPTS_MAX {
        let base = PORT_BASE_FIRST + (rand::random::<u16>() % PORT_BASE_SPAN);
        let listeners: Result<Vec<TcpListener>, _> =
            (base..base + ports_needed).map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port))).collect();
        if listeners.is_ok() {
            return Ok(base);
        }
    }
    bail!("no run of {ports_needed} free loopback ports in {PORT_BASE_ATTEMPTS_MAX} attempts")
}

fn log_tail(log_file: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log_file) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES_MAX)..].join("\n");
    format!("\nlast lines of {}:\n{tail}", log_file.display())
}
