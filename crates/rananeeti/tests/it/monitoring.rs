//! Monitoring with the real Prometheus tools (Debian's `prometheus` package): the shipped rules
//! pass `promtool check rules` and their unit tests, every rule has one; `rananeeti
//! prometheus-config` passes `promtool check config` and names the token by file only; what every
//! process of a running `up` serves on `/metrics` passes `promtool check metrics`; and a real
//! Prometheus scraping `up` sees the store-down and queue alerts fire when a region's database
//! goes down under writes, and resolve once it is back.

use crate::regions::{start_up, start_up_with_args, Up};
use crate::support::{eventually, reservation};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Prometheus gets to start and scrape every target once.
const PROMETHEUS_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an alert gets to fire or resolve: scrapes and evaluations every second and `for:`
/// of two seconds make it a few seconds; the rest is room for a busy 2-core machine.
const ALERT_TIMEOUT: Duration = Duration::from_secs(60);
/// `for:` of every rule in the Prometheus test (the shipped rules keep realistic ones).
const TEST_FOR: &str = "2s";
/// Alerts about the machine the test runs on (its disk may well be nearly full), not about what
/// the test does to the deployment: true or not, they are left out of what it judges.
const MACHINE_ALERTS: [&str; 2] = ["RananeetiQueueDiskLow", "RananeetiQueueDiskFillingUp"];

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed: run scripts/test.sh, which installs Debian's prometheus package");
}

/// Runs promtool with `args`, feeding it `stdin`; answers (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(binary("promtool"))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The names after `key:` in a YAML file's lines (`- alert: X`, `alertname: X`, `- record: X`).
fn names_after(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|name| name.trim().trim_matches('"').to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn the_shipped_rules_pass_promtool_and_every_rule_has_a_unit_test() {
    let dir = rules_dir();
    let rules = dir.join("rananeeti.rules.yml");
    let tests = dir.join("rananeeti.rules.test.yml");
    let (ok, output) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok && output.contains("SUCCESS"), "promtool check rules:\n{output}");
    let (ok, output) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok && output.contains("SUCCESS"), "promtool test rules:\n{output}");

    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests_text = std::fs::read_to_string(&tests).unwrap();
    let alerts = names_after(&rules_text, "alert:");
    let records = names_after(&rules_text, "record:");
    assert!(alerts.len() >= 15 && records.len() >= 5, "the rules: {alerts:?} {records:?}");
    let tested = names_after(&tests_text, "alertname:");
    let untested: Vec<&String> = alerts.difference(&tested).collect();
    assert!(untested.is_empty(), "alerts without a unit test: {untested:?}");
    let untested: Vec<&String> = records.iter().filter(|record| !tests_text.contains(record.as_str())).collect();
    assert!(untested.is_empty(), "recording rules without a unit test: {untested:?}");
    // Each alert fires in its test with its annotations: a runbook line among them.
    let runbooks = rules_text.lines().filter(|line| line.trim().starts_with("runbook:")).count();
    assert_eq!(runbooks, alerts.len(), "every alert has a runbook annotation");
}

/// A topology of two regions of two nodes, a gateway and a witness, with its admin token.
fn write_topology(dir: &Path, token: &str) {
    let node = |name: &str, port: u16| json!({ "name": name, "url": format!("http://127.0.0.1:{port}"), "pid": 1 });
    let topology = json!({
        "gateway_url": "http://127.0.0.1:18080",
        "witness_url": "http://127.0.0.1:18085",
        "regions": [
            { "name": "r1", "nodes": [node("r1-n1", 18081), node("r1-n2", 18082)],
              "database": { "kind": "sqlite", "url": "sqlite:///tmp/r1.db", "pid": null } },
            { "name": "r2", "nodes": [node("r2-n1", 18083), node("r2-n2", 18084)],
              "database": { "kind": "sqlite", "url": "sqlite:///tmp/r2.db", "pid": null } },
        ],
    });
    std::fs::write(dir.join("topology.json"), serde_json::to_vec_pretty(&topology).unwrap()).unwrap();
    std::fs::write(dir.join("admin-token"), token).unwrap();
}

fn prometheus_config(data: &Path, rules: &Path, intervals: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["prometheus-config", "--data"])
        .arg(data)
        .arg("--rules-dir")
        .arg(rules)
        .args(intervals)
        .output()
        .unwrap();
    assert!(output.status.success(), "prometheus-config: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn prometheus_config_scrapes_every_process_names_the_token_by_file_and_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let token = "token-that-must-stay-in-its-file-0123456789";
    write_topology(dir.path(), token);
    let config = prometheus_config(dir.path(), &rules_dir(), &[]);
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, &config).unwrap();
    let (ok, output) = promtool(&["check", "config", file.to_str().unwrap()], None);
    assert!(ok, "promtool check config:\n{output}\n{config}");
    assert!(output.contains("SUCCESS: 1 rule files found"), "the shipped rules are loaded:\n{output}");

    assert!(!config.contains(token), "the token itself is in the configuration:\n{config}");
    let token_file = std::fs::canonicalize(dir.path().join("admin-token")).unwrap();
    assert_eq!(
        config.matches(&format!("credentials_file: \"{}\"", token_file.display())).count(),
        2,
        "nodes and gateway are scraped with the token from its file:\n{config}"
    );
    for (target, region, node) in
        [("18081", "r1", "r1-n1"), ("18082", "r1", "r1-n2"), ("18083", "r2", "r2-n1"), ("18084", "r2", "r2-n2")]
    {
        let group = format!(
            "      - targets: [\"127.0.0.1:{target}\"]\n        labels: {{ region: \"{region}\", node: \"{node}\" }}\n"
        );
        assert!(config.contains(&group), "{node} is scraped with its region and name:\n{config}");
    }
    for job in ["rananeeti-node", "rananeeti-gateway", "rananeeti-witness"] {
        assert!(config.contains(&format!("job_name: {job}\n")), "job {job}:\n{config}");
    }
    assert!(config.contains("- targets: [\"127.0.0.1:18080\"]") && config.contains("- targets: [\"127.0.0.1:18085\"]"));

    // Intervals below Prometheus's default timeout take the interval as the timeout.
    let fast = prometheus_config(dir.path(), &rules_dir(), &["--scrape-interval", "1s", "--evaluation-interval", "1s"]);
    assert!(fast.contains("scrape_interval: 1s\n  scrape_timeout: 1000ms\n  evaluation_interval: 1s"), "{fast}");
    std::fs::write(&file, &fast).unwrap();
    let (ok, output) = promtool(&["check", "config", file.to_str().unwrap()], None);
    assert!(ok, "promtool check config (1 s):\n{output}");
    let refused = Command::new(env!("CARGO_BIN_EXE_rananeeti"))
        .args(["prometheus-config", "--scrape-interval", "fast", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a duration Prometheus would refuse is refused");
}

async fn get_text(url: &str, accept: Option<&str>, token: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    (content_type, response.text().await.unwrap())
}

/// The families a text exposition declares (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

async fn post_json(url: &str, token: &str, body: Value) {
    let response = reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "POST {url} {body}: {}", response.status());
}

/// Posts `count` reservations to `base`; answers how many were acknowledged.
async fn write(base: &str, tag: &str, first: usize, count: usize) -> usize {
    let client = reqwest::Client::new();
    let mut acknowledged = 0;
    for i in first..first + count {
        let answer = crate::support::post_reservation(&client, base, &reservation(tag, i), false).await;
        if answer.is_ok_and(|answer| answer.acknowledged()) {
            acknowledged += 1;
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_a_running_deployment_serves_passes_promtool_check_metrics() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("backup.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_rananeeti")).args(["backup", "keygen", "--out"]).arg(&key).output();
    assert!(keygen.unwrap().status.success(), "backup keygen");
    let repo = format!("file://{}", keys.path().join("backups").display());
    let extra: Vec<String> = vec![
        "--backup-repo".into(),
        repo,
        "--backup-interval-seconds".into(),
        "2".into(),
        "--backup-recipient".into(),
        key.with_extension("key.pub").display().to_string(),
        "--backup-verify-key".into(),
        key.display().to_string(),
    ];
    let up = start_up_with_args(2, 2, "sqlite", &extra).await;
    let gateway = up.topology.gateway_url.clone().unwrap();
    let witness = up.topology.witness_url.clone().unwrap();
    let r1 = up.region_urls(0);

    // Traffic through the gateway (replicated to r2), a store outage on one node that queues
    // writes and drains them, and a scheduled backup verified: every family has samples.
    assert_eq!(write(&gateway, "metrics", 0, 20).await, 20);
    post_json(&format!("{}/admin/faults", r1[0]), &up.token, json!({ "db": "down" })).await;
    assert_eq!(write(&r1[0], "metrics-down", 100, 5).await, 5);
    post_json(&format!("{}/admin/faults", r1[0]), &up.token, json!({ "db": "up" })).await;
    let status_file = up.data_dir().join("backup-status.json");
    eventually("a scheduled backup taken and verified", Duration::from_secs(60), || async {
        let status: Value = serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok()?;
        (status["last_verify"]["ok"] == true).then_some(())
    })
    .await;
    eventually("r2 to replicate r1's writes", Duration::from_secs(60), || async {
        let (_, text) = get_text(&format!("{}/metrics", up.region_urls(1)[0]), None, None).await;
        text.lines().any(|line| line.starts_with("rananeeti_replication_applied_total{peer=\"r1\"} ")).then_some(())
    })
    .await;

    let mut targets: Vec<(String, String)> = up
        .topology
        .regions
        .iter()
        .flat_map(|region| &region.nodes)
        .map(|node| (node.name.clone(), format!("{}/metrics", node.url)))
        .collect();
    targets.push(("gateway".into(), format!("{gateway}/metrics")));
    targets.push(("witness".into(), format!("{witness}/metrics")));
    let mut node_families = BTreeSet::new();
    for (name, url) in &targets {
        // What curl, promtool and most readers get: Prometheus's text format.
        let (content_type, text) = get_text(url, None, Some(&up.token)).await;
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{name}: {content_type}");
        let (ok, lint) = promtool(&["check", "metrics"], Some(&text));
        assert!(ok && lint.trim().is_empty(), "promtool check metrics on {name}'s /metrics:\n{lint}\n---\n{text}");
        let declared = families(&text);
        let helped = text.lines().filter(|line| line.starts_with("# HELP ")).count();
        assert_eq!(helped, declared.len(), "{name}: a HELP line for every family");
        if name.starts_with('r') {
            node_families.extend(declared);
        } else if name == "gateway" {
            for family in [
                "rananeeti_gateway_responses_total",
                "rananeeti_gateway_request_duration_seconds",
                "rananeeti_gateway_node_healthy",
                "rananeeti_gateway_node_drained",
                "rananeeti_gateway_region_ready_nodes",
                "rananeeti_backup_last_success_timestamp_seconds",
                "rananeeti_backup_last_verify_success",
                "rananeeti_backup_interval_seconds",
            ] {
                assert!(declared.contains(family), "the gateway lacks {family}:\n{text}");
            }
            assert!(text.contains("rananeeti_backup_last_verify_success 1\n"), "{text}");
            assert!(text.contains("rananeeti_gateway_region_ready_nodes{region=\"r1\"} 2\n"), "{text}");
        } else {
            assert!(declared.contains("rananeeti_witness_exchanges_total"), "{text}");
            assert!(text.contains("rananeeti_witness_exchanges_total{voter=\"r1\"}"), "{text}");
        }
        // What Prometheus asks for first: OpenMetrics, with the same samples.
        let (content_type, openmetrics) =
            get_text(url, Some("application/openmetrics-text;version=1.0.0"), Some(&up.token)).await;
        assert!(content_type.starts_with("application/openmetrics-text"), "{name}: {content_type}");
        assert!(openmetrics.ends_with("# EOF\n"), "{name}: OpenMetrics ends with # EOF");
    }
    for family in [
        "rananeeti_submit_outcomes_total",
        "rananeeti_submit_duration_seconds",
        "rananeeti_http_request_duration_seconds",
        "rananeeti_store_up",
        "rananeeti_store_breaker_state",
        "rananeeti_store_pool_rebuilds_total",
        "rananeeti_queue_depth",
        "rananeeti_queue_oldest_age_seconds",
        "rananeeti_queue_drained_total",
        "rananeeti_queue_capacity_entries",
        "rananeeti_queue_disk_usage_bytes",
        "rananeeti_queue_filesystem_avail_bytes",
        "rananeeti_queue_filesystem_size_bytes",
        "rananeeti_replication_lag_seconds",
        "rananeeti_replication_lag_entries",
        "rananeeti_replication_applied_total",
        "rananeeti_replication_delay_seconds",
        "rananeeti_ownership_lease_held",
        "rananeeti_ownership_acting_regions",
        "rananeeti_ownership_epoch",
        "rananeeti_build_info",
    ] {
        assert!(node_families.contains(family), "no node serves {family}: {node_families:?}");
    }
}

/// A Prometheus process on a loopback port with its data in a temporary directory; killed when
/// dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    async fn start(config: &Path, dir: &Path) -> Prometheus {
        let port = rananeeti::postgres::free_loopback_port().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(binary("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), log: dir.join("prometheus.err") };
        let client = reqwest::Client::new();
        eventually("Prometheus to be ready", PROMETHEUS_START_TIMEOUT, || async {
            let response = client.get(format!("{}/-/ready", prometheus.url)).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    async fn api(&self, path: &str) -> Value {
        let body: Value = reqwest::get(format!("{}{path}", self.url)).await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }

    /// Alerts now pending or firing, as (name, state, node), but those about the machine.
    async fn alerts(&self) -> Vec<(String, String, String)> {
        let data = self.api("/api/v1/alerts").await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|alert| !MACHINE_ALERTS.iter().any(|name| alert["labels"]["alertname"] == *name))
            .map(|alert| {
                let label = |name: &str| alert["labels"][name].as_str().unwrap_or("").to_string();
                (label("alertname"), alert["state"].as_str().unwrap_or("").to_string(), label("node"))
            })
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- last lines of Prometheus's log ---\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped rules with every `for:` made `TEST_FOR`, written into `dir`.
fn rules_with_short_for(dir: &Path) -> PathBuf {
    let rules = std::fs::read_to_string(rules_dir().join("rananeeti.rules.yml")).unwrap();
    let rewritten: Vec<String> = rules
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: {TEST_FOR}"),
            _ => line.to_string(),
        })
        .collect();
    let rewritten = rewritten.join("\n") + "\n";
    assert!(rewritten.matches(&format!("for: {TEST_FOR}")).count() >= 15, "every alert's for: is rewritten");
    let out = dir.join("rules");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("rananeeti.rules.yml"), rewritten).unwrap();
    out
}

fn firing<'a>(alerts: &'a [(String, String, String)], name: &str) -> BTreeSet<&'a str> {
    alerts
        .iter()
        .filter(|(alert, state, _)| alert == name && state == "firing")
        .map(|(_, _, node)| node.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_fires_the_store_and_queue_alerts_when_a_database_goes_down_and_resolves_them() {
    let up: Up = start_up(1, 2, "sqlite").await;
    let dir = tempfile::tempdir().unwrap();
    let config = prometheus_config(
        &up.data_dir(),
        &rules_with_short_for(dir.path()),
        &["--scrape-interval", "1s", "--evaluation-interval", "1s"],
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let prometheus = Prometheus::start(&config_file, dir.path()).await;
    let started = Instant::now();

    // Every target up (the token from its file is accepted), and a healthy deployment alerts on
    // nothing.
    eventually("every target to be scraped", PROMETHEUS_START_TIMEOUT, || async {
        let targets = prometheus.api("/api/v1/targets").await;
        let active = targets["activeTargets"].as_array().cloned().unwrap_or_default();
        (active.len() == 3 && active.iter().all(|target| target["health"] == "up")).then_some(())
    })
    .await;
    let gateway = up.topology.gateway_url.clone().unwrap();
    assert_eq!(write(&gateway, "prometheus", 0, 10).await, 10);
    eventually("no alert on a healthy deployment", ALERT_TIMEOUT, || async {
        prometheus.alerts().await.is_empty().then_some(())
    })
    .await;

    // The region's database goes down under writes: queued on both nodes.
    let nodes = up.region_urls(0);
    for node in &nodes {
        post_json(&format!("{node}/admin/faults"), &up.token, json!({ "db": "down" })).await;
    }
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(write(node, "prometheus-down", 100 + index * 10, 5).await, 5, "acknowledged (pending)");
    }
    let names: BTreeSet<&str> = ["r1-n1", "r1-n2"].into();
    let fired =
        eventually("RananeetiStoreDown and RananeetiQueueBacklog to fire for both nodes", ALERT_TIMEOUT, || async {
            let alerts = prometheus.alerts().await;
            (firing(&alerts, "RananeetiStoreDown") == names && firing(&alerts, "RananeetiQueueBacklog") == names)
                .then_some(alerts)
        })
        .await;
    let unexpected: Vec<&(String, String, String)> = fired
        .iter()
        .filter(|(name, _, _)| {
            !["RananeetiStoreDown", "RananeetiQueueBacklog", "RananeetiStoreBreakerOpen"].contains(&name.as_str())
        })
        .collect();
    assert!(unexpected.is_empty(), "alerts the outage does not explain: {unexpected:?}");
    let fired_after = started.elapsed();

    // Healed: the queues drain and every alert resolves.
    for node in &nodes {
        post_json(&format!("{node}/admin/faults"), &up.token, json!({ "db": "up" })).await;
    }
    eventually("every alert to resolve", ALERT_TIMEOUT, || async {
        prometheus.alerts().await.is_empty().then_some(())
    })
    .await;
    let depth = prometheus.api("/api/v1/query?query=sum(rananeeti_queue_depth)").await;
    assert_eq!(depth["result"][0]["value"][1], "0", "the queues drained: {depth}");
    eprintln!("alerts fired {fired_after:?} and resolved {:?} after Prometheus started", started.elapsed());
}
