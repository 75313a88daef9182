//! The console's HTML: the sign-in page and the console itself, rendered from the gateway's own
//! view of its nodes (now), the last sample of every node's status, the samples kept (charts),
//! and the backup and drill files. Test hooks are `data-*` attributes, documented in
//! docs/monitoring.md.

use super::chart::{escape, figure, line_chart, Series};
use super::sample::{NodeSample, Sample};
use super::status_files::{self, Backups, Drill};
use crate::gateway::Gateway;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const STYLE: &str = r#"
:root { color: #1b1f24; background: #ffffff; font: 15px/1.45 system-ui, sans-serif; }
body { margin: 0; }
header, main { max-width: 84rem; margin: 0 auto; padding: 0 1rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.5rem 1.5rem; border-bottom: 1px solid #c9d1d9; }
h1 { font-size: 1.5rem; margin: 0.8rem 0; }
h2 { font-size: 1.2rem; margin: 1.6rem 0 0.6rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 0.4rem; }
.sampled { color: #4a5560; margin: 0; flex: 1 1 20rem; }
form.signout { margin: 0 0 0.6rem; }
button { font: inherit; padding: 0.35rem 0.9rem; border: 1px solid #1a4fa0; border-radius: 4px; background: #1a4fa0; color: #ffffff; cursor: pointer; }
button:focus-visible, input:focus-visible, a:focus-visible { outline: 3px solid #b35c00; outline-offset: 2px; }
input { font: inherit; padding: 0.35rem; border: 1px solid #5a6570; border-radius: 4px; }
a { color: #1a4fa0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(10.5rem, 1fr)); gap: 0.6rem; list-style: none; padding: 0; margin: 0; }
.cards li { border: 1px solid #c9d1d9; border-radius: 6px; padding: 0.5rem 0.7rem; }
.cards strong { display: block; font-size: 1.25rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; min-width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid #dfe3e8; vertical-align: top; }
th { background: #f4f6f8; font-weight: 600; white-space: nowrap; }
.badge { display: inline-block; padding: 0 0.45rem; border-radius: 3px; font-weight: 600; white-space: nowrap; }
.ok { background: #e3f1e6; color: #1d5a2c; }
.warn { background: #fdf1d8; color: #6b4700; }
.bad { background: #fbe4e4; color: #8c1c1c; }
.muted { color: #4a5560; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr)); gap: 1rem; }
figure.chart { margin: 0; }
figure.chart svg { width: 100%; max-width: 360px; height: 96px; display: block; }
figcaption { font-weight: 600; margin-bottom: 0.3rem; }
.scale { font-weight: 400; color: #4a5560; }
.legend { list-style: none; padding: 0; margin: 0.3rem 0 0; }
.swatch { display: inline-block; width: 0.8rem; height: 0.8rem; margin-right: 0.35rem; vertical-align: -0.05rem; border-radius: 2px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
code { font-size: 0.92em; overflow-wrap: anywhere; }
"#;

fn document(title: &str, refresh_seconds: Option<u64>, body: &str) -> String {
    let refresh = refresh_seconds.map(|seconds| format!(r#"<meta http-equiv="refresh" content="{seconds}">"#));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\">{}<title>{}</title><style>{STYLE}</style></head>\
         <body>{body}</body></html>\n",
        refresh.unwrap_or_default(),
        escape(title)
    )
}

pub fn message(title: &str, text: &str) -> String {
    document(title, None, &format!("<main><h1>{}</h1><p>{}</p></main>", escape(title), escape(text)))
}

pub fn sign_in(error: Option<&str>) -> String {
    let error = error
        .map(|error| format!(r#"<p class="badge bad" id="sign-in-error" role="alert">{}</p>"#, escape(error)))
        .unwrap_or_default();
    document(
        "Sign in: rananeeti console",
        None,
        &format!(
            r#"<main><h1>rananeeti console</h1>{error}<form method="post" action="/admin/console/session" id="sign-in">
<p><label for="token">Admin token</label><br><input id="token" name="token" type="password" autocomplete="current-password" required size="40"></p>
<p><button type="submit">Sign in</button></p></form>
<p class="muted">The admin token of a deployment <code>rananeeti up --data DIR</code> runs is in <code>DIR/admin-token</code>.</p></main>"#
        ),
    )
}

fn badge(class: &str, text: &str) -> String {
    format!(r#"<span class="badge {class}">{}</span>"#, escape(text))
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// `2026-06-01 19:30:05 UTC`
fn clock(unix_seconds: f64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix_seconds as i64)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| "unknown time".to_string())
}

/// `4 s`, `3 min`, `2.5 h`, `3 days`
fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 90.0 {
        format!("{} s", figure((seconds * 10.0).round() / 10.0))
    } else if seconds < 90.0 * 60.0 {
        format!("{} min", figure((seconds / 60.0).round()))
    } else if seconds < 36.0 * 3600.0 {
        format!("{} h", figure((seconds / 360.0).round() / 10.0))
    } else {
        format!("{} days", figure((seconds / 8640.0).round() / 10.0))
    }
}

pub fn console(gateway: &Arc<Gateway>) -> String {
    let samples = gateway.console.samples();
    let latest = samples.last().cloned();
    let config = &gateway.config.console;
    let backups = status_files::backups(config.backup_status_file.as_deref());
    let drill = status_files::latest_drill(config.drills_dir.as_deref());
    let now = unix_seconds(SystemTime::now());

    let mut body = String::new();
    let sampled = match &latest {
        Some(sample) => format!(
            "Nodes sampled at {} ({} ago, every {} s); this page reloads every {} s.",
            clock(unix_seconds(sample.at)),
            duration(now - unix_seconds(sample.at)),
            figure(config.sample_interval_ms as f64 / 1000.0),
            config.refresh_seconds
        ),
        None if gateway.admin_token.is_none() => "No admin token: the nodes cannot be sampled.".to_string(),
        None => format!("No sample of the nodes yet; this page reloads every {} s.", config.refresh_seconds),
    };
    let _ = write!(
        body,
        r#"<header><h1>rananeeti console</h1><p class="sampled" id="sampled">{}</p><form class="signout" method="post" action="/admin/console/signout"><button type="submit">Sign out</button></form></header><main>"#,
        escape(&sampled)
    );
    let nodes: Vec<&NodeSample> = latest.iter().flat_map(|sample| sample.nodes.iter()).collect();
    body.push_str(&overview(gateway, &nodes, &backups, &drill, now));
    body.push_str(&regions(gateway, &nodes));
    body.push_str(&charts(&samples));
    body.push_str(&ownership(&nodes));
    body.push_str(&conflicts(&nodes));
    body.push_str(&backups_section(&backups, now));
    body.push_str(&drill_section(&drill));
    body.push_str("</main>");
    document("rananeeti console", Some(config.refresh_seconds), &body)
}

fn overview(gateway: &Gateway, nodes: &[&NodeSample], backups: &Backups, drill: &Drill, now: f64) -> String {
    let regions = gateway.backends.snapshot();
    let total: usize = regions.iter().map(|region| region.nodes.len()).sum();
    let ready: usize = regions.iter().flat_map(|region| &region.nodes).filter(|node| node.available()).count();
    let queued: f64 = nodes.iter().filter_map(|node| node.number("/queue/depth")).sum();
    let oldest = nodes.iter().filter_map(|node| node.number("/queue/oldest_age_seconds")).fold(0.0, f64::max);
    let lag = nodes
        .iter()
        .filter_map(|node| node.status.as_ref().ok()?.get("replication")?.as_object().cloned())
        .flat_map(|peers| peers.into_values())
        .filter_map(|peer| peer["lag_seconds"].as_f64())
        .fold(0.0, f64::max);
    let breakers =
        nodes.iter().filter(|node| node.text("/store/breaker").is_some_and(|state| state != "closed")).count();
    let silent = nodes.iter().filter(|node| node.status.is_err()).count();
    let backup = match backups {
        Backups::Scheduled(status) => match &status.last_success {
            Some(success) => format!("{} ago", duration(now - success.at_unix_seconds)),
            None => "none yet".to_string(),
        },
        Backups::NotScheduled | Backups::NotConfigured => "not scheduled".to_string(),
        Backups::Unreadable(_) => "unreadable".to_string(),
    };
    let drill = match drill {
        Drill::Report(report) => match report.passed {
            Some(true) => "passed".to_string(),
            Some(false) => "failed".to_string(),
            None => "unknown".to_string(),
        },
        Drill::None | Drill::NotConfigured => "no drill yet".to_string(),
        Drill::Unreadable(_) => "unreadable".to_string(),
    };
    let card = |key: &str, label: &str, value: String, class: &str| {
        format!(r#"<li data-card="{key}" class="{class}">{}<strong>{}</strong></li>"#, escape(label), escape(&value))
    };
    let mut cards = String::new();
    let ready_class = if ready == total && total > 0 { "" } else { "warn" };
    cards.push_str(&card("ready-nodes", "Ready nodes", format!("{ready} of {total}"), ready_class));
    cards.push_str(&card("queued", "Queued writes", figure(queued), if queued > 0.0 { "warn" } else { "" }));
    cards.push_str(&card("oldest", "Oldest queued", duration(oldest), ""));
    cards.push_str(&card("lag", "Largest replication lag", duration(lag), ""));
    cards.push_str(&card(
        "breakers",
        "Store breakers not closed",
        breakers.to_string(),
        if breakers > 0 { "bad" } else { "" },
    ));
    cards.push_str(&card("silent", "Nodes not answering", silent.to_string(), if silent > 0 { "bad" } else { "" }));
    cards.push_str(&card("backup", "Last backup", backup, ""));
    cards.push_str(&card("drill", "Last drill", drill, ""));
    format!(
        r#"<section aria-labelledby="overview"><h2 id="overview">Overview</h2><ul class="cards">{cards}</ul></section>"#
    )
}

fn regions(gateway: &Gateway, nodes: &[&NodeSample]) -> String {
    let by_name: BTreeMap<&str, &NodeSample> = nodes.iter().map(|node| (node.name.as_str(), *node)).collect();
    let mut out = String::from(r#"<section aria-labelledby="regions"><h2 id="regions">Regions and nodes</h2>"#);
    for region in gateway.backends.snapshot().iter() {
        let ready = region.nodes.iter().filter(|node| node.available()).count();
        let class = if ready == 0 {
            "bad"
        } else if ready < region.nodes.len() {
            "warn"
        } else {
            "ok"
        };
        let _ = write!(
            out,
            r#"<h3 id="region-{0}">Region {0} {1}</h3><div class="scroll"><table data-region="{0}" aria-labelledby="region-{0}"><thead><tr><th scope="col">Node</th><th scope="col">Gateway</th><th scope="col">Version</th><th scope="col">Store</th><th scope="col">Breaker</th><th scope="col">Queued</th><th scope="col">Oldest</th><th scope="col">Lease</th><th scope="col">Replication lag</th><th scope="col">In flight</th><th scope="col">Latency</th></tr></thead><tbody>"#,
            escape(&region.name),
            badge(class, &format!("{ready} of {} ready", region.nodes.len())),
        );
        for node in &region.nodes {
            let sample = by_name.get(node.name.as_str());
            let health = if !node.healthy() {
                ("down", badge("bad", "down"))
            } else if node.drained() {
                ("drained", badge("warn", "drained"))
            } else {
                ("up", badge("ok", "up"))
            };
            let unanswered = |why: &str| format!(r#"<td colspan="7" class="muted">{}</td>"#, escape(why));
            let (details, store, breaker, depth, lease) = match sample.map(|sample| &sample.status) {
                Some(Ok(_)) => {
                    let sample = sample.expect("a sample with a status");
                    let store = match sample.flag("/store/up") {
                        Some(true) => ("up", badge("ok", "up")),
                        Some(false) => ("down", badge("bad", "down")),
                        None => ("unknown", badge("warn", "unknown")),
                    };
                    let breaker = sample.text("/store/breaker").unwrap_or("unknown");
                    let breaker_badge = match breaker {
                        "closed" => badge("ok", "closed"),
                        "open" => badge("bad", "open"),
                        other => badge("warn", other),
                    };
                    let depth = sample.number("/queue/depth").unwrap_or(0.0);
                    let lease = match sample.flag("/ownership/lease_held") {
                        Some(true) => ("held", badge("ok", "held")),
                        Some(false) => ("lost", badge("bad", "lost")),
                        None => ("unknown", badge("warn", "unknown")),
                    };
                    let lags = sample
                        .status
                        .as_ref()
                        .ok()
                        .and_then(|status| status.get("replication")?.as_object().cloned())
                        .unwrap_or_default();
                    let lag_text = if lags.is_empty() {
                        "no peers".to_string()
                    } else {
                        lags.iter()
                            .map(|(peer, lag)| {
                                format!(
                                    "from {peer}: {} ({} behind)",
                                    duration(lag["lag_seconds"].as_f64().unwrap_or(0.0)),
                                    figure(lag["lag_entries"].as_f64().unwrap_or(0.0))
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let details = format!(
                        "<td>{}</td><td>{}</td><td>{breaker_badge}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                        escape(sample.text("/version").unwrap_or("unknown")),
                        store.1,
                        figure(depth),
                        duration(sample.number("/queue/oldest_age_seconds").unwrap_or(0.0)),
                        lease.1,
                        escape(&lag_text),
                    );
                    (details, store.0, breaker.to_string(), depth, lease.0)
                }
                Some(Err(why)) => {
                    (unanswered(&format!("no status: {why}")), "unknown", "unknown".into(), 0.0, "unknown")
                }
                None => (unanswered("not sampled yet"), "unknown", "unknown".into(), 0.0, "unknown"),
            };
            let _ = write!(
                out,
                r#"<tr data-node="{name}" data-health="{health}" data-store="{store}" data-breaker="{breaker}" data-queue-depth="{depth}" data-lease="{lease}"><th scope="row">{name}</th><td>{}</td>{details}<td>{}</td><td>{} ms</td></tr>"#,
                health.1,
                node.in_flight.load(Ordering::Relaxed),
                figure((node.ewma_us() as f64 / 100.0).round() / 10.0),
                name = escape(&node.name),
                health = health.0,
                breaker = escape(&breaker),
                depth = figure(depth),
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
    out
}

fn charts(samples: &[Arc<Sample>]) -> String {
    let node_names: BTreeSet<(String, String)> = samples
        .iter()
        .flat_map(|sample| sample.nodes.iter().map(|node| (node.region.clone(), node.name.clone())))
        .collect();
    let per_node = |pointer: &str| -> Vec<Series> {
        node_names
            .iter()
            .map(|(_, name)| Series {
                label: name.clone(),
                values: samples
                    .iter()
                    .map(|sample| {
                        sample.nodes.iter().find(|node| &node.name == name).and_then(|node| node.number(pointer))
                    })
                    .collect(),
            })
            .collect()
    };
    // Per region and peer, the largest lag any of the region's nodes reports.
    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
    for node in samples.iter().flat_map(|sample| &sample.nodes) {
        if let Some(peers) = node.status.as_ref().ok().and_then(|status| status.get("replication")?.as_object()) {
            for peer in peers.keys() {
                pairs.insert((node.region.clone(), peer.clone()));
            }
        }
    }
    let lag: Vec<Series> = pairs
        .iter()
        .map(|(region, peer)| Series {
            label: format!("{region} from {peer}"),
            values: samples
                .iter()
                .map(|sample| {
                    sample
                        .nodes
                        .iter()
                        .filter(|node| &node.region == region)
                        .filter_map(|node| {
                            node.status.as_ref().ok()?.pointer(&format!("/replication/{peer}/lag_seconds"))?.as_f64()
                        })
                        .reduce(f64::max)
                })
                .collect(),
        })
        .collect();
    let rate = |total: fn(&Sample) -> u64| -> Vec<Option<f64>> {
        let mut values = vec![None];
        for pair in samples.windows(2) {
            let seconds = pair[1].at.duration_since(pair[0].at).map_or(0.0, |elapsed| elapsed.as_secs_f64());
            let delta = total(&pair[1]).saturating_sub(total(&pair[0])) as f64;
            values.push((seconds > 0.0).then(|| (delta / seconds * 10.0).round() / 10.0));
        }
        values.truncate(samples.len());
        values
    };
    let traffic = vec![
        Series { label: "answered".into(), values: rate(|sample| sample.responses_total) },
        Series { label: "errors (5xx)".into(), values: rate(|sample| sample.errors_total) },
    ];
    let regions: BTreeSet<&String> = node_names.iter().map(|(region, _)| region).collect();
    let ready: Vec<Series> = regions
        .iter()
        .map(|region| Series {
            label: region.to_string(),
            values: samples
                .iter()
                .map(|sample| {
                    Some(
                        sample
                            .nodes
                            .iter()
                            .filter(|node| &node.region == *region && node.healthy && !node.drained)
                            .count() as f64,
                    )
                })
                .collect(),
        })
        .collect();
    format!(
        r#"<section aria-labelledby="charts"><h2 id="charts">Recent samples</h2><div class="charts">{}{}{}{}</div></section>"#,
        line_chart("queue-depth", "Queued writes per node", "entries", &per_node("/queue/depth")),
        line_chart("replication-lag", "Replication lag per region and peer", "s", &lag),
        line_chart("gateway-traffic", "Requests through this gateway", "per s", &traffic),
        line_chart("ready-nodes", "Ready nodes per region", "nodes", &ready),
    )
}

fn ownership(nodes: &[&NodeSample]) -> String {
    // Per region, the newest row any node knows (highest epoch, then the greater acting region),
    // and who holds a lease.
    let mut rows: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut leases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in nodes {
        let Ok(status) = &node.status else { continue };
        if status.pointer("/ownership/lease_held").and_then(|held| held.as_bool()) == Some(true) {
            leases.entry(node.region.clone()).or_default().push(node.name.clone());
        }
        for row in status.pointer("/ownership/owners").and_then(|owners| owners.as_array()).into_iter().flatten() {
            let Some(region) = row["region"].as_str() else { continue };
            let key = |row: &serde_json::Value| {
                (row["epoch"].as_u64().unwrap_or(0), row["acting"].as_str().unwrap_or("").to_string())
            };
            if rows.get(region).is_none_or(|known| key(row) > key(known)) {
                rows.insert(region.to_string(), row.clone());
            }
        }
    }
    let mut out = String::from(
        r#"<section aria-labelledby="ownership"><h2 id="ownership">Ownership</h2><div class="scroll"><table data-table="ownership"><thead><tr><th scope="col">Writes homed in</th><th scope="col">Applied by</th><th scope="col">Epoch</th><th scope="col">In effect since</th><th scope="col">Nodes holding a lease there</th></tr></thead><tbody>"#,
    );
    if rows.is_empty() {
        out.push_str(
            r#"<tr><td colspan="5" class="muted">No node has answered with its ownership table yet.</td></tr>"#,
        );
    }
    for (region, row) in &rows {
        let acting = row["acting"].as_str().unwrap_or("unknown");
        let epoch = row["epoch"].as_u64().unwrap_or(0);
        let since = row["effective_at_ms"]
            .as_f64()
            .filter(|ms| *ms > 0.0)
            .map_or("the start".to_string(), |ms| clock(ms / 1000.0));
        let moved = if acting == region { String::new() } else { format!(" {}", badge("warn", "failed over")) };
        let holders = leases.get(acting).map_or("none".to_string(), |names| names.join(", "));
        let _ = write!(
            out,
            r#"<tr data-owner-region="{}" data-acting="{}" data-epoch="{epoch}"><th scope="row">{}</th><td>{}{moved}</td><td>{epoch}</td><td>{}</td><td>{}</td></tr>"#,
            escape(region),
            escape(acting),
            escape(region),
            escape(acting),
            escape(&since),
            escape(&holders),
        );
    }
    out.push_str("</tbody></table></div></section>");
    out
}

fn conflicts(nodes: &[&NodeSample]) -> String {
    let mut seen: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut listed: Vec<(String, serde_json::Value)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for node in nodes {
        let Ok(status) = &node.status else { continue };
        if let Some(error) = status.pointer("/conflicts/error").and_then(|error| error.as_str()) {
            errors.push(format!("{}: {error}", node.name));
        }
        for conflict in status.pointer("/conflicts/recent").and_then(|recent| recent.as_array()).into_iter().flatten() {
            let seq = conflict["seq"].as_u64().unwrap_or(0);
            if seen.insert((node.region.clone(), seq)) {
                listed.push((node.region.clone(), conflict.clone()));
            }
        }
    }
    listed.sort_by(|a, b| b.1["seq"].as_u64().cmp(&a.1["seq"].as_u64()).then_with(|| a.0.cmp(&b.0)));
    let short = |id: &serde_json::Value| id.as_str().map_or("?".to_string(), |id| id.chars().take(12).collect());
    let mut out = String::from(
        r#"<section aria-labelledby="conflicts"><h2 id="conflicts">Recent conflicts</h2><p class="muted">Concurrent last-writer-wins writes that lost, newest first (each region's <code>GET /admin/conflicts</code> has them all).</p><div class="scroll"><table data-table="conflicts"><thead><tr><th scope="col">Region</th><th scope="col">Seq</th><th scope="col">Kind</th><th scope="col">Entity</th><th scope="col">Kept</th><th scope="col">Lost</th></tr></thead><tbody>"#,
    );
    if listed.is_empty() {
        out.push_str(r#"<tr><td colspan="6" class="muted">No conflict recorded.</td></tr>"#);
    }
    for (region, conflict) in &listed {
        let _ = write!(
            out,
            r#"<tr data-conflict="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>"#,
            escape(conflict["entity"].as_str().unwrap_or("")),
            escape(region),
            conflict["seq"].as_u64().unwrap_or(0),
            escape(conflict["kind"].as_str().unwrap_or("")),
            escape(conflict["entity"].as_str().unwrap_or("")),
            escape(&short(&conflict["winner"]["id"])),
            escape(&short(&conflict["loser"]["id"])),
        );
    }
    out.push_str("</tbody></table></div>");
    for error in errors {
        let _ = write!(out, r#"<p class="muted">Not read from {}</p>"#, escape(&error));
    }
    out.push_str("</section>");
    out
}

fn backups_section(backups: &Backups, now: f64) -> String {
    let mut out =
        String::from(r#"<section aria-labelledby="backups" data-section="backups"><h2 id="backups">Backups</h2>"#);
    match backups {
        Backups::NotConfigured => out.push_str(r#"<p data-backup="unknown">This gateway knows no backup status file (<code>console.backup_status_file</code>).</p>"#),
        Backups::NotScheduled => out.push_str(r#"<p data-backup="not-scheduled">Backups are not scheduled: run <code>rananeeti up --backup-repo URL --backup-recipient FILE.pub</code>.</p>"#),
        Backups::Unreadable(why) => {
            let _ = write!(out, r#"<p data-backup="unreadable">The backup status cannot be read: {}</p>"#, escape(why));
        }
        Backups::Scheduled(status) => {
            let state = match (&status.last_attempt, &status.last_verify) {
                (Some(attempt), _) if !attempt.ok => "failed",
                (_, Some(verify)) if !verify.ok => "verify-failed",
                (Some(_), _) => "ok",
                (None, _) => "none-yet",
            };
            let attempt = |attempt: &Option<status_files::Attempt>, never: &str| match attempt {
                Some(attempt) => format!(
                    "{} {} ({} ago): {}",
                    if attempt.ok { badge("ok", "ok") } else { badge("bad", "failed") },
                    escape(&clock(attempt.at_unix_seconds)),
                    escape(&duration(now - attempt.at_unix_seconds)),
                    escape(&attempt.message)
                ),
                None => escape(never),
            };
            let _ = write!(
                out,
                r#"<dl data-backup="{state}"><dt>Repository</dt><dd><code>{}</code></dd><dt>Schedule</dt><dd>every {}{}</dd><dt>Last backup</dt><dd>{}</dd><dt>Last attempt</dt><dd>{}</dd><dt>Last verification</dt><dd>{}</dd></dl>"#,
                escape(&status.repo),
                escape(&duration(status.interval_seconds as f64)),
                if status.verifies { ", each verified with the private key" } else { ", not verified (no --backup-verify-key)" },
                attempt(&status.last_success, "none yet"),
                attempt(&status.last_attempt, "none yet"),
                attempt(&status.last_verify, if status.verifies { "none yet" } else { "not verified" }),
            );
        }
    }
    out.push_str("</section>");
    out
}

fn drill_section(drill: &Drill) -> String {
    let mut out =
        String::from(r#"<section aria-labelledby="drills" data-section="drills"><h2 id="drills">Last drill</h2>"#);
    match drill {
        Drill::NotConfigured => out.push_str(r#"<p data-drill="unknown">This gateway knows no drills directory (<code>console.drills_dir</code>).</p>"#),
        Drill::None => out.push_str(r#"<p data-drill="none">No drill yet. Run one with <code>rananeeti drill --data DIR --all --report DIR/drills/NAME</code>.</p>"#),
        Drill::Unreadable(why) => {
            let _ = write!(out, r#"<p data-drill="unreadable">The newest drill report cannot be read: {}</p>"#, escape(why));
        }
        Drill::Report(report) => {
            let verdict = match report.passed {
                Some(true) => ("passed", badge("ok", "passed")),
                Some(false) => ("failed", badge("bad", "failed")),
                None => ("unknown", badge("warn", "unknown")),
            };
            let scenarios: Vec<String> = report
                .scenarios
                .iter()
                .map(|(name, outcome)| {
                    let class = match outcome.as_str() {
                        "passed" => "ok",
                        "skipped" => "warn",
                        _ => "bad",
                    };
                    format!(r#"<li data-scenario="{}">{} {}</li>"#, escape(name), escape(name), badge(class, outcome))
                })
                .collect();
            let _ = write!(
                out,
                r#"<dl data-drill="{}"><dt>Started</dt><dd>{}</dd><dt>Verdict</dt><dd>{}</dd><dt>Report</dt><dd><code>{}</code></dd></dl><ul>{}</ul>"#,
                verdict.0,
                escape(report.started_at.as_deref().unwrap_or("unknown")),
                verdict.1,
                escape(&report.path.display().to_string()),
                scenarios.join(""),
            );
        }
    }
    out.push_str("</section>");
    out
}
