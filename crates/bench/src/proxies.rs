//! The reverse proxies of the gateway scenario, each a child process with a config generated in
//! the run's directory, on a free loopback port: `rananeeti gateway`, and nginx beside it. Both
//! are stopped when dropped, also after an error.

use crate::node::{child_pids, process_and_children_cpu_seconds, read_status_kib};
use anyhow::{bail, Context};
use rananeeti::postgres::free_loopback_port;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a proxy gets to listen and pass a request through to the node.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a proxy gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a proxy's log quoted when it fails to start.
const LOG_TAIL_LINES_MAX: usize = 20;
/// Idle keep-alive connections nginx keeps to the node per worker (`keepalive` in `upstream`).
pub const NGINX_UPSTREAM_KEEPALIVE: usize = 64;
/// Requests nginx serves on one kept-alive connection, on both sides, before closing it. Its
/// default (1,000) would make the load generator reconnect every 1,000 requests, which the
/// gateway never asks for; the benchmark compares proxying, not reconnecting.
const NGINX_KEEPALIVE_REQUESTS: u64 = 1_000_000;
/// Requests per second per client IP the gateway allows: the load comes from one address.
const GATEWAY_RATE_PER_IP_PER_SECOND: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Gateway,
    Nginx,
}

impl ProxyKind {
    pub fn label(self) -> &'static str {
        match self {
            ProxyKind::Gateway => "gateway",
            ProxyKind::Nginx => "nginx",
        }
    }
}

/// One proxy process (for nginx: its master; the workers are its children).
pub struct ProxyProcess {
    pub kind: ProxyKind,
    child: Child,
    base_url: String,
    log_file: PathBuf,
}

impl ProxyProcess {
    /// `rananeeti gateway --config DIR/gateway.toml --workers N` in front of the node at `node_url`.
    pub async fn start_gateway(binary: &Path, dir: &Path, node_url: &str, workers: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_loopback_port().context("finding a free loopback port")?;
        let config_file = dir.join("gateway.toml");
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\n\n[[regions]]\nname = \"r1\"\n\n[[regions.nodes]]\nname = \"r1-n1\"\n\
             url = \"{node_url}\"\n\n[limits]\nrate_per_ip_per_sec = {GATEWAY_RATE_PER_IP_PER_SECOND}\n\
             rate_burst_per_ip = {GATEWAY_RATE_PER_IP_PER_SECOND}\n"
        );
        std::fs::write(&config_file, config).with_context(|| format!("writing {}", config_file.display()))?;
        // Unused by the benchmark; given so that the gateway does not warn about its absence.
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, format!("{:032x}", rand::random::<u128>()))
            .with_context(|| format!("writing {}", token_file.display()))?;
        let log_file = dir.join("gateway.log");
        let log = File::create(&log_file).with_context(|| format!("creating {}", log_file.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("gateway")
            .arg("--config")
            .arg(&config_file)
            .arg("--admin-token-file")
            .arg(&token_file)
            .arg("--workers")
            .arg(workers.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the gateway log handle")?)
            .stderr(log);
        let child = command.spawn().with_context(|| format!("starting {} gateway", binary.display()))?;
        let mut proxy =
            ProxyProcess { kind: ProxyKind::Gateway, child, base_url: format!("http://127.0.0.1:{port}"), log_file };
        // Its own endpoint first, then a request passed through: the node is up in its view.
        proxy.wait_until_answering("/gateway/healthz").await?;
        proxy.wait_until_answering("/healthz").await?;
        Ok(proxy)
    }

    /// `nginx -c DIR/nginx.conf -p DIR -g 'daemon off;'`: `workers` worker processes, an upstream
    /// with kept-alive connections to the node at `node_url`, no access log.
    pub async fn start_nginx(binary: &Path, dir: &Path, node_url: &str, workers: usize) -> anyhow::Result<Self> {
        if !binary.is_file() {
            bail!(
                "{} is missing: install nginx (`apt-get install -y nginx`) or pass --nginx-bin PATH",
                binary.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let port = free_loopback_port().context("finding a free loopback port")?;
        let upstream = node_url.strip_prefix("http://").context("the node's URL starts with http://")?;
        let config_file = dir.join("nginx.conf");
        std::fs::write(&config_file, nginx_config(&dir, port, upstream, workers))
            .with_context(|| format!("writing {}", config_file.display()))?;
        let log_file = dir.join("error.log");
        let output = File::create(dir.join("nginx.out")).context("creating nginx's output file")?;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&config_file)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(&log_file)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(output.try_clone().context("duplicating nginx's output handle")?)
            .stderr(output);
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let mut proxy =
            ProxyProcess { kind: ProxyKind::Nginx, child, base_url: format!("http://127.0.0.1:{port}"), log_file };
        proxy.wait_until_answering("/healthz").await?;
        Ok(proxy)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The process and, for nginx, its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(child_pids(self.child.id()));
        pids
    }

    /// How many processes serve: 1 for the gateway, master and workers for nginx.
    pub fn process_count(&self) -> usize {
        self.pids().len()
    }

    /// CPU seconds used so far by the process and its children (nginx's workers).
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_and_children_cpu_seconds(self.child.id())
    }

    /// A `kB` line of /proc/PID/status summed over the process and its children.
    pub fn status_kib(&self, key: &str) -> Option<u64> {
        self.pids().into_iter().map(|pid| read_status_kib(pid, key)).sum()
    }

    /// SIGTERM (nginx: fast shutdown; the gateway: finish open requests), then waits; kills the
    /// process after the timeout.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let label = self.kind.label();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("sending SIGTERM to {label}"))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{label} did not stop within {} s of SIGTERM; killed", STOP_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("{label} exited with {status} after SIGTERM{}", log_tail(&self.log_file));
        }
        Ok(())
    }

    /// SIGKILL to the process and its children (a killed nginx master leaves its workers behind).
    fn kill(&mut self) {
        let children = child_pids(self.child.id());
        let _ = self.child.kill();
        for child in children {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }

    async fn wait_until_answering(&mut self, path: &str) -> anyhow::Result<()> {
        let label = self.kind.label();
        let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
        let url = format!("{}{path}", self.base_url);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{label} exited with {status} before answering {path}{}", log_tail(&self.log_file));
            }
            if Instant::now() >= deadline {
                bail!("{label} did not answer {path} within {} s{}", START_TIMEOUT.as_secs(), log_tail(&self.log_file));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // Only after an error: `stop` has reaped the child already, and then this does nothing.
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// nginx's configuration: everything it writes stays in `dir`, it listens on loopback only.
fn nginx_config(dir: &Path, port: u16, upstream: &str, workers: usize) -> String {
    let dir = dir.display();
    // As root the master switches its workers to `nobody` unless told otherwise, and `nobody`
    // cannot enter the run's private temporary directory.
    let user = if nix::unistd::geteuid().is_root() { "user root;\n" } else { "" };
    format!(
        "# Written by rananeeti-bench for one run of --scenario gateway.
{user}worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests {NGINX_KEEPALIVE_REQUESTS};

    upstream node {{
        server {upstream};
        keepalive {NGINX_UPSTREAM_KEEPALIVE};
        keepalive_requests {NGINX_KEEPALIVE_REQUESTS};
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://node;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

fn log_tail(log_file: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log_file) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES_MAX)..].join("\n");
    format!("\nlast lines of {}:\n{tail}", log_file.display())
}
