//! The admin API from the outside: the bearer token is required, and fault bodies are checked.

use crate::support::{Deployment, Node, StoreKind};
use serde_json::{json, Value};

async fn faults(node: &Node) -> Value {
    let response = node.admin_get("/admin/faults").send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_refuses_missing_or_wrong_token() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;
    let token = node.admin_token.clone();
    let wrong_headers = [
        None,
        Some("Bearer wrong-token".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer".to_string()),
        Some(token.clone()),
        Some(format!("Basic {token}")),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(format!("Bearer {token} {token}")),
    ];
    let requests = [("GET", "/admin/faults"), ("POST", "/admin/faults"), ("GET", "/admin/queue")];
    for (method, path) in requests {
        for header in &wrong_headers {
            let mut request = match method {
                "GET" => node.client.get(node.url(path)),
                _ => node.client.post(node.url(path)).json(&json!({ "db": "down" })),
            };
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").map(|value| value.to_str().unwrap().to_string());
            let body = response.text().await.unwrap();
            assert_eq!(status, 401, "{method} {path} with authorization {header:?}: {body}");
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{method} {path} with authorization {header:?}");
            assert!(!body.contains(&token), "a refusal must not echo the token: {body}");
        }
        let request = match method {
            "GET" => node.admin_get(path),
            _ => node.admin_post(path).json(&json!({ "db": "up" })),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{method} {path} with the right token");
    }
    assert_eq!(faults(node).await["db"], "up", "refused requests changed nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_bodies_are_checked_and_what_is_set_is_shown() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let node = &deployment.node;

    // (body, the field the answer must name, where one is to blame)
    let bad_bodies = [
        (json!({}).to_string(), Some("db")),
        (json!({ "db": "sideways" }).to_string(), None),
        (json!({ "db": null, "replication": null }).to_string(), Some("db")),
        (json!({ "db": { "flaky": 1.5 } }).to_string(), Some("db.flaky")),
        (json!({ "db": { "flaky": -0.1 } }).to_string(), Some("db.flaky")),
        (json!({ "db": { "slow_ms": 600_001 } }).to_string(), Some("db.slow_ms")),
        (json!({ "db": { "slow_ms": -1 } }).to_string(), None),
        (json!({ "db": 3 }).to_string(), None),
        (json!({ "replication": "maybe" }).to_string(), None),
        (json!({ "color": "red" }).to_string(), Some("color")),
        (json!(["down"]).to_string(), None),
        ("db=down".to_string(), None),
        (String::new(), None),
    ];
    for (body, field) in &bad_bodies {
        let response =
            node.admin_post("/admin/faults").header("content-type", "application/json").body(body.clone()).send().await;
        let response = response.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert!((400..500).contains(&status), "fault body {body:?}: {status} {answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"].as_str(), Some(*field), "fault body {body:?}: {answer}");
        }
    }
    let shown = faults(node).await;
    assert_eq!((&shown["db"], &shown["replication"]), (&json!("up"), &json!("ok")), "refused bodies set nothing");

    for (set, db, replication) in [
        (json!({ "db": "down" }), json!("down"), json!("ok")),
        (json!({ "db": { "flaky": 0.5 } }), json!({ "flaky": 0.5 }), json!("ok")),
        (json!({ "db": { "slow_ms": 3000 } }), json!({ "slow_ms": 3000 }), json!("ok")),
        (json!({ "replication": "cut" }), json!({ "slow_ms": 3000 }), json!("cut")),
        (json!({ "db": "up", "replication": "ok" }), json!("up"), json!("ok")),
    ] {
        node.set_faults(set.clone()).await;
        let shown = faults(node).await;
        assert_eq!((&shown["db"], &shown["replication"]), (&db, &replication), "after setting {set}: {shown}");
    }
}
