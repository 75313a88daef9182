//! `/healthz`, `/readyz` and `/metrics` from the outside, with the store up and down.

use crate::support::{metric_value, reservation, Deployment, Node, StoreKind};
use serde_json::{json, Value};

async fn get(node: &Node, path: &str) -> (u16, Option<String>, String) {
    let response = node.client.get(node.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|value| value.to_str().unwrap().to_string());
    (status, content_type, response.text().await.unwrap())
}

async fn readyz(node: &Node) -> Value {
    let (status, _, body) = get(node, "/readyz").await;
    assert_eq!(status, 200, "a node whose store is down still serves (writes go to the queue): {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_healthz_metrics_answer() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;

    let (status, _, body) = get(node, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({ "status": "alive" }));
    let ready = readyz(node).await;
    assert_eq!((&ready["store"], &ready["queue_depth"]), (&json!("up"), &json!(0)), "{ready}");

    // Something for the histograms and counters to show.
    let answer = node.reserve(&reservation("health", 0)).await.unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    node.set_faults(json!({ "db": "down" })).await;
    let answer = node.reserve(&reservation("health", 1)).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);

    let ready = readyz(node).await;
    assert_eq!(ready["queue_depth"], 1, "{ready}");
    assert!(ready["store"] == "down" || ready["store"] == "recovering", "the failed writes open the breaker: {ready}");

    let (status, content_type, metrics) = get(node, "/metrics").await;
    assert_eq!(status, 200);
    // Prometheus's text format unless OpenMetrics is asked for (as Prometheus itself does).
    assert!(content_type.is_some_and(|value| value.starts_with("text/plain; version=0.0.4")), "content type");
    let openmetrics =
        node.client.get(node.url("/metrics")).header("accept", "application/openmetrics-text").send().await.unwrap();
    let content_type = openmetrics.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    for name in [
        "rananeeti_http_request_duration_seconds",
        "rananeeti_queue_depth",
        "rananeeti_store_breaker_state",
        "rananeeti_queue_drained_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"rananeeti_http_request_duration_seconds_count{method="POST",route="/api/cafe/reservations",status="202"} 1"#),
        "requests are counted by method, route pattern and status:\n{metrics}"
    );
    assert_eq!(metric_value(&metrics, "rananeeti_queue_depth"), Some(1.0), "{metrics}");
    assert!(metric_value(&metrics, "rananeeti_store_breaker_state").is_some_and(|state| state >= 1.0), "{metrics}");

    node.set_faults(json!({ "db": "up" })).await;
    node.wait_until_drained().await;
    let (_, _, metrics) = get(node, "/metrics").await;
    assert_eq!(metric_value(&metrics, "rananeeti_queue_depth"), Some(0.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "rananeeti_queue_drained_total"), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "rananeeti_store_breaker_state"), Some(0.0), "{metrics}");
    let ready = readyz(node).await;
    assert_eq!((&ready["store"], &ready["queue_depth"]), (&json!("up"), &json!(0)), "{ready}");
}
