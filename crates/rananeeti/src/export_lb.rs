//! `rananeeti export-lb`: an nginx or HAProxy configuration that does what our gateway does, as far
//! as each can, in front of the nodes of a deployment's `topology.json`.
//!
//! What each does of the gateway's job (docs/deploy.md has the measured comparison):
//! - region policy: the first region's nodes serve, the other regions' are `backup` servers;
//! - health: HAProxy checks `/readyz` actively (100 ms, fall 2, rise 2, as the gateway does);
//!   open-source nginx has no active checks, only passive ones (`max_fails`/`fail_timeout`);
//! - retries: a request that never reached a node is retried; after it may have reached one,
//!   only GET/HEAD/OPTIONS/PUT/DELETE, a POST under the platform's digest-idempotent prefixes, or
//!   a POST with `Idempotency-Key` is retried on another node, never a plain POST;
//! - passive ejection: HAProxy marks a server down after 3 failed responses in a row; nginx after
//!   one failed attempt, for `fail_timeout`.
//!
//! The configuration keeps every file the proxy writes (pid, logs, nginx's temporary files) under
//! one runtime directory, so it runs as any user.

use crate::topology::Topology;
use anyhow::Context;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How long a proxy waits for a node's response head. More than the nodes' 2 s submit budget, so
/// a write that is queued is not cut short (the gateway's attempt timeout is 5 s, but it abandons
/// an attempt as soon as its checks see the node go down).
const RESPONSE_TIMEOUT_MS: u64 = 3000;
/// Connect timeout to a node, as the gateway's.
const CONNECT_TIMEOUT_MS: u64 = 250;
/// Attempts per request, the first included, as the gateway's `retries.attempts_max`.
const ATTEMPTS_MAX: u32 = 3;
/// nginx: how long a server that failed stays out before one request tries it again.
const NGINX_FAIL_TIMEOUT_SECONDS: u64 = 10;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Nginx,
    Haproxy,
}

#[derive(clap::Args, Debug)]
pub struct ExportLbArgs {
    /// The deployment's data directory (holding topology.json, as `up --data` was given).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// Address the load balancer listens on (not `up`'s port range, which starts at 8080).
    #[arg(long, default_value = "127.0.0.1:9080")]
    pub listen: String,
    /// Where the load balancer keeps its pid file, logs and temporary files (created if
    /// missing). Default: DATA/lb-nginx or DATA/lb-haproxy.
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
}

/// What a configuration is made from.
pub struct Plan {
    pub topology: Topology,
    pub listen: String,
    pub runtime_dir: PathBuf,
    /// POSTs under these prefixes are deduplicated by the platform (the gateway's
    /// `digest_post_prefixes`), so they may be retried.
    pub digest_post_prefixes: Vec<String>,
}

pub fn run(args: ExportLbArgs) -> anyhow::Result<()> {
    let topology = Topology::read(&args.data.join("topology.json"))
        .context("export-lb reads the nodes from topology.json: is `rananeeti up` running with this --data?")?;
    let runtime_dir = match args.runtime_dir {
        Some(dir) => dir,
        None => args.data.join(match args.format {
            Format::Nginx => "lb-nginx",
            Format::Haproxy => "lb-haproxy",
        }),
    };
    std::fs::create_dir_all(&runtime_dir).with_context(|| format!("creating {}", runtime_dir.display()))?;
    let runtime_dir = std::fs::canonicalize(&runtime_dir)?;
    let plan =
        Plan { topology, listen: args.listen, runtime_dir, digest_post_prefixes: crate::apps::digest_post_prefixes() };
    let text = match args.format {
        Format::Nginx => nginx(&plan)?,
        Format::Haproxy => haproxy(&plan)?,
    };
    print!("{text}");
    Ok(())
}

/// `host:port` of a node URL (`http://127.0.0.1:8081` → `127.0.0.1:8081`).
fn address(url: &str) -> anyhow::Result<&str> {
    let rest = url.strip_prefix("http://").with_context(|| format!("node URL {url} is not http://"))?;
    let address = rest.trim_end_matches('/');
    anyhow::ensure!(!address.is_empty() && !address.contains('/'), "node URL {url} has a path");
    Ok(address)
}

/// Each node as (region, name, address, backup), the first region's first.
fn servers(plan: &Plan) -> anyhow::Result<Vec<(String, String, String, bool)>> {
    let mut servers = Vec::new();
    for (index, region) in plan.topology.regions.iter().enumerate() {
        for node in &region.nodes {
            servers.push((region.name.clone(), node.name.clone(), address(&node.url)?.to_string(), index > 0));
        }
    }
    anyhow::ensure!(!servers.is_empty(), "topology.json lists no node");
    Ok(servers)
}

fn path_in(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn header(plan: &Plan, format: &str) -> String {
    let regions: Vec<&str> = plan.topology.regions.iter().map(|region| region.name.as_str()).collect();
    format!(
        "# {format} in front of a rananeeti deployment, made by `rananeeti export-lb` {}.\n\
         # Region policy: failover in this order: {}. Runtime files under {}.\n",
        env!("CARGO_PKG_VERSION"),
        regions.join(", "),
        plan.runtime_dir.display()
    )
}

pub fn nginx(plan: &Plan) -> anyhow::Result<String> {
    let dir = &plan.runtime_dir;
    let mut text = header(plan, "nginx");
    let safe_retry = "error timeout http_502 http_503 http_504";
    writeln!(
        text,
        r#"# Open-source nginx has no active health checks: a node is taken out passively, after one failed
# attempt, for {fail}s (then one request tries it again). Retries: `proxy_next_upstream` leaves
# out non_idempotent, so a POST that may have reached a node is never sent to another one, except
# in the locations of the digest-idempotent prefixes and for a POST with Idempotency-Key.
worker_processes 1;
pid {pid};
error_log {error_log} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {access_log};
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};

    upstream rananeeti_nodes {{"#,
        fail = NGINX_FAIL_TIMEOUT_SECONDS,
        pid = path_in(dir, "nginx.pid"),
        error_log = path_in(dir, "error.log"),
        access_log = path_in(dir, "access.log"),
        body = path_in(dir, "client_body"),
        proxy = path_in(dir, "proxy"),
        fastcgi = path_in(dir, "fastcgi"),
        uwsgi = path_in(dir, "uwsgi"),
        scgi = path_in(dir, "scgi"),
    )?;
    for (region, name, address, backup) in servers(plan)? {
        writeln!(
            text,
            "        server {address} max_fails=1 fail_timeout={NGINX_FAIL_TIMEOUT_SECONDS}s{}; # {region} {name}",
            if backup { " backup" } else { "" }
        )?;
    }
    writeln!(
        text,
        r#"        keepalive 32;
    }}

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_connect_timeout {connect}ms;
    proxy_send_timeout {response}ms;
    proxy_read_timeout {response}ms;
    proxy_next_upstream_tries {attempts};
    proxy_next_upstream {safe_retry};
    # Which node answered (the gateway says X-Served-By-Node).
    add_header X-Upstream-Addr $upstream_addr always;

    server {{
        listen {listen};

        location / {{
            # A POST with Idempotency-Key is deduplicated by the nodes: it may be retried.
            error_page 418 = @idempotency_key;
            if ($http_idempotency_key != "") {{
                return 418;
            }}
            proxy_pass http://rananeeti_nodes;
        }}

        location @idempotency_key {{
            proxy_pass http://rananeeti_nodes;
            proxy_next_upstream {safe_retry} non_idempotent;
        }}"#,
        connect = CONNECT_TIMEOUT_MS,
        response = RESPONSE_TIMEOUT_MS,
        attempts = ATTEMPTS_MAX,
        listen = plan.listen,
    )?;
    for prefix in &plan.digest_post_prefixes {
        anyhow::ensure!(
            prefix.starts_with('/') && !prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == ';'),
            "digest prefix {prefix} cannot be written into an nginx location"
        );
        writeln!(
            text,
            r#"
        # Platform commands whose id digests their content: a second apply is a duplicate.
        location {prefix} {{
            proxy_pass http://rananeeti_nodes;
            proxy_next_upstream {safe_retry} non_idempotent;
        }}"#
        )?;
    }
    writeln!(text, "    }}\n}}")?;
    Ok(text)
}

pub fn haproxy(plan: &Plan) -> anyhow::Result<String> {
    let dir = &plan.runtime_dir;
    let mut text = header(plan, "HAProxy");
    let prefixes: Vec<&str> = plan.digest_post_prefixes.iter().map(String::as_str).collect();
    for prefix in &prefixes {
        anyhow::ensure!(
            prefix.starts_with('/') && !prefix.contains(char::is_whitespace),
            "digest prefix {prefix} cannot be written into an HAProxy ACL"
        );
    }
    writeln!(
        text,
        r#"# Active checks of /readyz as the gateway's (every 100 ms, timeout 150 ms, fall 2, rise 2), passive
# ejection after 3 failed responses in a row, the other regions as backup servers. L7 retries
# (a response timeout, an empty response, 502/503/504) are disabled for every request that is not
# safe to send twice; a connection that failed (nothing sent) is retried for every request.
global
    pidfile {pid}
    maxconn 4096

defaults
    mode http
    timeout connect {connect}ms
    timeout client 30s
    timeout server {response}ms
    timeout http-request 10s
    timeout check 150ms
    option http-keep-alive
    option forwardfor

frontend rananeeti
    bind {listen}
    default_backend rananeeti_nodes

backend rananeeti_nodes
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    option allbackups
    option redispatch 1
    retries {retries}
    retry-on conn-failure empty-response response-timeout 502 503 504
    acl safe_method method GET HEAD OPTIONS PUT DELETE
    acl digest_idempotent path_beg {prefixes}
    acl idempotency_key req.hdr(idempotency-key) -m found
    http-request disable-l7-retry unless safe_method || METH_POST digest_idempotent || METH_POST idempotency_key
    # Which node answered (the gateway says X-Served-By-Node).
    http-response set-header X-Upstream-Server %[srv_name]
    default-server check inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2 observe layer7 error-limit 3 on-error mark-down"#,
        pid = path_in(dir, "haproxy.pid"),
        connect = CONNECT_TIMEOUT_MS,
        response = RESPONSE_TIMEOUT_MS,
        listen = plan.listen,
        retries = ATTEMPTS_MAX - 1,
        prefixes = prefixes.join(" "),
    )?;
    for (region, name, address, backup) in servers(plan)? {
        writeln!(text, "    server {name} {address}{} # {region}", if backup { " backup" } else { "" })?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{DatabaseKind, DatabaseTopology, NodeTopology, RegionTopology};

    fn plan() -> Plan {
        let region = |name: &str, ports: [u16; 2]| RegionTopology {
            name: name.into(),
            nodes: ports
                .iter()
                .enumerate()
                .map(|(i, port)| NodeTopology {
                    name: format!("{name}-n{}", i + 1),
                    url: format!("http://127.0.0.1:{port}"),
                    pid: None,
                })
                .collect(),
            database: DatabaseTopology {
                kind: DatabaseKind::Sqlite,
                url: "sqlite://x".into(),
                pid: None,
                password_file: None,
            },
        };
        Plan {
            topology: Topology {
                gateway_url: None,
                witness_url: None,
                gateways: Vec::new(),
                regions: vec![region("r1", [8081, 8082]), region("r2", [8083, 8084])],
            },
            listen: "127.0.0.1:9000".into(),
            runtime_dir: PathBuf::from("/run/lb"),
            digest_post_prefixes: vec!["/api/cafe/reservations".into()],
        }
    }

    #[test]
    fn the_other_region_is_backup_and_only_digest_prefixes_retry_a_sent_post() {
        let nginx = nginx(&plan()).unwrap();
        assert!(nginx.contains("server 127.0.0.1:8081 max_fails=1 fail_timeout=10s; # r1 r1-n1"), "{nginx}");
        assert!(nginx.contains("server 127.0.0.1:8083 max_fails=1 fail_timeout=10s backup; # r2 r2-n1"), "{nginx}");
        // non_idempotent appears only in the digest prefix and the Idempotency-Key locations.
        assert_eq!(nginx.matches("non_idempotent;").count(), 2, "{nginx}");
        assert!(nginx.contains("location /api/cafe/reservations {"), "{nginx}");

        let haproxy = haproxy(&plan()).unwrap();
        assert!(haproxy.contains("server r2-n2 127.0.0.1:8084 backup # r2"), "{haproxy}");
        assert!(haproxy.contains("server r1-n1 127.0.0.1:8081 # r1"), "{haproxy}");
        assert!(haproxy.contains("acl digest_idempotent path_beg /api/cafe/reservations\n"), "{haproxy}");
        assert!(haproxy.contains("pidfile /run/lb/haproxy.pid"), "{haproxy}");
    }
}
