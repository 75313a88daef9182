//! Logs are JSON lines, documented field by field in docs/logs.md: `rananeeti up --log-format
//! json` (two regions of one node) is driven through a store outage, a partition that costs a
//! node its lease, a drain and a node killed with SIGKILL; every line it and its nodes write is JSON (but the "is up" lines on stdout),
//! every request is logged once with the request id the gateway passed on, and every state
//! change is logged with its `event`, each of whose fields docs/logs.md documents.

use crate::regions::{start_up_with_args, Up};
use crate::support::{eventually, post_reservation, reservation};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const EVENT_TIMEOUT: Duration = Duration::from_secs(40);

/// Every JSON line of up's log; panics on a line that is neither JSON nor one of the lines `up`
/// prints for a person on stdout.
fn json_lines(log: &str) -> Vec<Value> {
    let mut lines = Vec::new();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        if line.starts_with('{') {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            lines.push(value);
        } else {
            let banner =
                line.starts_with("rananeeti is up: ") || line.starts_with("cafe: ") || line.starts_with("  region ");
            assert!(banner, "a log line that is not JSON: {line}");
        }
    }
    lines
}

/// The events docs/logs.md documents, with the fields of each (`### \`event\`` headings, then
/// `- \`field\`: ...` items).
pub(crate) fn documented_events() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/logs.md")).unwrap();
    let mut events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("### `") {
            let name = heading.split('`').next().unwrap().to_string();
            events.insert(name.clone(), BTreeSet::new());
            current = Some(name);
        } else if line.starts_with("## ") {
            current = None;
        } else if let (Some(event), Some(item)) = (&current, line.strip_prefix("- `")) {
            let field = item.split('`').next().unwrap().to_string();
            events.get_mut(event).unwrap().insert(field);
        }
    }
    events
}

fn events_named<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["fields"]["event"] == event).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_line_is_json_every_request_has_its_id_and_every_state_change_is_a_documented_event() {
    let up: Up = start_up_with_args(2, 1, "sqlite", &["--log-format".to_string(), "json".to_string()]).await;
    let gateway = up.topology.gateway_url.clone().unwrap();
    let r1 = up.region_urls(0)[0].clone();
    let client = reqwest::Client::new();
    let admin = |url: String, body: Option<Value>| {
        let mut request = client.post(url).bearer_auth(&up.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
        }
    };

    // A request whose id the gateway passes on to the node that serves it.
    let response = client
        .post(format!("{gateway}/api/cafe/reservations"))
        .header("x-request-id", "logs-test-request-0001")
        .json(&reservation("logs", 0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // A store outage on r1-n1 under writes, then healed: the breaker opens and closes.
    admin(format!("{r1}/admin/faults"), Some(json!({ "db": "down" }))).await;
    for i in 1..6 {
        let answer = post_reservation(&client, &r1, &reservation("logs", i), false).await.unwrap();
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    admin(format!("{r1}/admin/faults"), Some(json!({ "db": "up" }))).await;
    // r1-n1 cut off from r2 and the witness loses its lease; healed at once (before a
    // failover), it holds it again.
    admin(format!("{r1}/admin/faults"), Some(json!({ "partition": "cut" }))).await;
    eventually("r1-n1 to log that it lost its lease", EVENT_TIMEOUT, || async {
        (!events_named(&json_lines(&up.log()), "lease_lost").is_empty()).then_some(())
    })
    .await;
    admin(format!("{r1}/admin/faults"), Some(json!({ "partition": "ok" }))).await;
    // A drain and an undrain at the gateway, then r2-n1 killed: up restarts it, the gateway
    // takes it out and back.
    admin(format!("{gateway}/admin/nodes/r2-n1/drain"), None).await;
    admin(format!("{gateway}/admin/nodes/r2-n1/undrain"), None).await;
    let victim = up.topology.regions[1].nodes[0].pid.expect("r2-n1 runs");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();

    let wanted = [
        "fault_set",
        "lease_lost",
        "lease_held",
        "breaker_opened",
        "breaker_closed",
        "drain_changed",
        "node_exited",
        "node_started",
        "node_down",
        "node_up",
    ];
    // After r2-n1's exit: up starts it again, and the gateway takes it out and back in.
    let after_exit = |lines: &[Value], event: &str| {
        let exit =
            lines.iter().position(|line| line["fields"]["event"] == "node_exited" && line["fields"]["node"] == "r2-n1");
        exit.is_some_and(|exit| {
            lines[exit..].iter().any(|line| line["fields"]["event"] == event && line["fields"]["node"] == "r2-n1")
        })
    };
    let lines = eventually("every state change to be logged", EVENT_TIMEOUT, || async {
        let lines = json_lines(&up.log());
        let lost = lines.iter().position(|line| line["fields"]["event"] == "lease_lost");
        let held_again = lost.is_some_and(|lost| !events_named(&lines[lost..], "lease_held").is_empty());
        let all = wanted.iter().all(|event| !events_named(&lines, event).is_empty())
            && held_again
            && ["node_started", "node_down", "node_up"].iter().all(|event| after_exit(&lines, event));
        all.then_some(lines)
    })
    .await;

    // Every line: a timestamp, a level, a target and a message.
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
        assert!(line["fields"]["message"].is_string(), "no message: {line}");
    }
    // Every request answered by a node: one line with its status, latency and request id.
    let requests: Vec<&Value> =
        lines.iter().filter(|line| line["fields"]["message"] == "finished processing request").collect();
    assert!(requests.len() >= 6, "the requests are logged: {}", requests.len());
    for request in &requests {
        let id = request["span"]["request_id"].as_str().unwrap_or("");
        assert!(!id.is_empty() && id != "-", "a request without its id: {request}");
        assert!(request["fields"]["status"].is_number() && request["fields"]["latency"].is_string(), "{request}");
        assert!(request["span"]["method"].is_string() && request["span"]["path"].is_string(), "{request}");
    }
    let passed_on: Vec<&&Value> =
        requests.iter().filter(|request| request["span"]["request_id"] == "logs-test-request-0001").collect();
    assert_eq!(passed_on.len(), 1, "the gateway's request id reaches the node's log, once");
    assert_eq!(passed_on[0]["fields"]["status"], 201);

    // Every state change: an event docs/logs.md documents, with no field it does not document.
    let documented = documented_events();
    let mut undocumented = Vec::new();
    for line in lines.iter().filter(|line| line["fields"]["event"].is_string()) {
        let event = line["fields"]["event"].as_str().unwrap();
        let Some(fields) = documented.get(event) else {
            undocumented.push(format!("event {event}: {line}"));
            continue;
        };
        for field in line["fields"].as_object().unwrap().keys() {
            if field != "message" && field != "event" && !fields.contains(field) {
                undocumented.push(format!("field {field} of {event}: {line}"));
            }
        }
    }
    assert!(undocumented.is_empty(), "not in docs/logs.md:\n{}", undocumented.join("\n"));
    let exited = events_named(&lines, "node_exited");
    assert_eq!(exited[0]["fields"]["node"], "r2-n1", "{}", exited[0]);
    let lost = events_named(&lines, "lease_lost");
    assert_eq!(lost[0]["fields"]["region"], "r1", "{}", lost[0]);
    let drains: Vec<&Value> = events_named(&lines, "drain_changed");
    assert_eq!(
        drains.iter().map(|line| line["fields"]["drained"].clone()).collect::<Vec<_>>(),
        [json!(true), json!(false)]
    );
}
