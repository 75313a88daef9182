//! Issue 12.10, 12.14, 12.15 and issue 11.7: the public port forwarded `/internal/*` to the nodes
//! and served `/metrics` and the nodes' `/readyz` details to anyone; API answers (a sign-in's
//! token among them) carried neither `Cache-Control: no-store` nor `nosniff`; admin routes parsed
//! the body before asking who was calling, so a shopper's token with a bad body got 400 naming
//! the missing field (the schema) instead of 403.

use super::{client, send, shopper, PASSWORD};
use crate::regions::start_up;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn internal_routes_metrics_and_readiness_details_are_not_on_the_public_port() {
    let up = start_up(2, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    for path in [
        "/internal/replication/outbox?after=0",
        "/internal/ownership",
        "/internal/queue/holds",
        "/internal/commands",
        "/internal",
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let answer = send(client().request(method.clone(), format!("{base}{path}")).json(&json!({}))).await;
            assert_eq!(answer.status, 404, "{method} {path} on the public port: {}", answer.body);
            assert_eq!(answer.header("x-served-by-node"), "", "{method} {path} reached a node");
        }
    }

    // The gateway's metrics: the admin's; its readiness: a word, no node's details.
    assert_eq!(send(client().get(format!("{base}/metrics"))).await.status, 401, "metrics without the token");
    let metrics = send(client().get(format!("{base}/metrics")).bearer_auth(&up.token)).await;
    assert!(metrics.status == 200 && metrics.body.as_str().unwrap().contains("rananeeti_gateway"));
    let ready = send(client().get(format!("{base}/readyz"))).await;
    assert_eq!(
        (ready.status, ready.body.clone()),
        (200, json!({ "status": "ready" })),
        "no details on the public port"
    );
    // The details stay on the nodes' own ports, for operators and the gateway's checks.
    let node = &up.topology.regions[0].nodes[0].url;
    let details = send(client().get(format!("{node}/readyz"))).await;
    assert!(details.body.get("queue_depth").is_some(), "{}", details.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_answers_are_neither_cached_nor_sniffed() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    shopper(&base, "cache@example.com").await;
    let signin = send(
        client()
            .post(format!("{base}/api/auth/signin"))
            .json(&json!({ "email": "cache@example.com", "password": PASSWORD })),
    )
    .await;
    assert_eq!(signin.status, 200);
    let token = signin.body["token"].as_str().unwrap().to_string();
    let answers = [
        ("the sign-in (a token)", signin),
        ("a cart", send(client().get(format!("{base}/api/cart")).bearer_auth(&token)).await),
        ("a refusal", send(client().get(format!("{base}/api/orders"))).await),
        ("a book", send(client().get(format!("{base}/api/books/emma"))).await),
        ("a command's status", send(client().get(format!("{base}/api/commands/{}", "0".repeat(40)))).await),
        ("the admin API", send(client().get(format!("{base}/admin/queue")).bearer_auth(&up.token)).await),
        ("an unknown path", send(client().get(format!("{base}/api/nothing-here"))).await),
    ];
    for (what, answer) in answers {
        assert_eq!(answer.header("cache-control"), "no-store", "{what}");
        assert_eq!(answer.header("x-content-type-options"), "nosniff", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shoppers_token_on_an_admin_route_learns_nothing_of_its_body() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let (_, shopper_token) = shopper(&base, "schema@example.com").await;
    let day = &crate::support::slot_time(0)[..10];
    let routes = [
        (reqwest::Method::POST, "/api/admin/books".to_string()),
        (reqwest::Method::PUT, "/api/admin/books/emma".to_string()),
        (reqwest::Method::POST, "/api/blog".to_string()),
        (reqwest::Method::PUT, format!("/api/cafe/closures/{day}")),
        (reqwest::Method::PUT, format!("/api/cafe/specials/{day}")),
        (reqwest::Method::POST, "/admin/faults".to_string()),
    ];
    for (method, path) in &routes {
        for body in [json!({}), json!({ "unexpected": true }), json!("not an object")] {
            let request = |token: Option<&str>| {
                let mut request = client().request(method.clone(), format!("{base}{path}")).json(&body);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                send(request)
            };
            let as_shopper = request(Some(&shopper_token)).await;
            assert_eq!(
                as_shopper.status,
                if path.starts_with("/admin") { 401 } else { 403 },
                "{method} {path} {body} as a shopper: {}",
                as_shopper.body
            );
            assert!(
                as_shopper.body["error"].get("field").is_none(),
                "{method} {path}: a field named to a shopper: {}",
                as_shopper.body
            );
            let anonymous = request(None).await;
            assert_eq!(anonymous.status, 401, "{method} {path} {body} without a token: {}", anonymous.body);
            assert!(anonymous.body["error"].get("field").is_none(), "{method} {path}: a field named to nobody");
        }
    }
    // The admin is told which field.
    let admin = send(client().post(format!("{base}/api/admin/books")).bearer_auth(&up.token).json(&json!({}))).await;
    assert_eq!((admin.status, admin.body["error"]["field"].is_string()), (400, true), "{}", admin.body);
}
