//! Every JSON API against its OpenAPI 3 document, with schemathesis (PyPI) on a real
//! `rananeeti up`: the platform's own endpoints (health, command status, admin) as the admin, the
//! cafe's API anonymously, and the bookstore's as a signed-in shopper and as the admin. Checks
//! `not_a_server_error`, `status_code_conformance` and `response_schema_conformance`; bounded in
//! examples and time (a fixed seed, so a failure is reproducible); 0 failures.
//!
//! Each document gets a deployment of its own: fuzzing the admin API injects faults and fails
//! regions over, which must not change what the other documents' runs see.

use crate::regions::start_up;
use crate::support::eventually;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// Per document: examples per operation and phase, and the whole run's budget.
const EXAMPLES_MAX: &str = "15";
const RUN_SECONDS_MAX: &str = "60";
const SEED: &str = "20261204";

/// Runs schemathesis on the document at `base + document`; panics with its report on a failure.
fn schemathesis(base: &str, document: &str, token: Option<&str>, extra: &[&str]) {
    let workdir = tempfile::tempdir().unwrap();
    let mut command = Command::new("st");
    command
        .current_dir(workdir.path())
        .arg("run")
        .arg(format!("{base}{document}"))
        .args(["--url", base])
        .args(["--checks", "not_a_server_error,status_code_conformance,response_schema_conformance"])
        .args(["--max-examples", EXAMPLES_MAX, "--max-time", RUN_SECONDS_MAX, "--seed", SEED])
        .args(["--workers", "2", "--no-color"])
        .args(extra);
    if let Some(token) = token {
        // From the environment through schemathesis.toml: never on a command line.
        std::fs::write(
            workdir.path().join("schemathesis.toml"),
            "headers = { Authorization = \"Bearer ${RANANEETI_TEST_TOKEN}\" }\n",
        )
        .unwrap();
        command.env("RANANEETI_TEST_TOKEN", token);
    }
    let output = command.output().expect("schemathesis (`st`, PyPI) is installed: ./scripts/test.sh does it");
    let report = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = report.lines().filter(|line| line.contains("generated")).collect();
    println!("schemathesis {document}: {}", summary.join(" "));
    assert!(output.status.success(), "schemathesis found failures in {document}:\n{report}");
}

async fn shopper_token(base: &str) -> String {
    let client = reqwest::Client::new();
    let credentials = json!({ "email": "contract@example.com", "password": "a long contract password" });
    let signup = client.post(format!("{base}/api/auth/signup")).json(&credentials).send().await.unwrap();
    assert!(signup.status().is_success(), "signup: {}", signup.status());
    eventually("the shopper to sign in", Duration::from_secs(60), || async {
        let signin = client.post(format!("{base}/api/auth/signin")).json(&credentials).send().await.ok()?;
        let body: serde_json::Value = signin.json().await.ok()?;
        body["token"].as_str().map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platform_api_matches_its_openapi_document() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.regions[0].nodes[0].url.clone();
    schemathesis(&base, "/api/platform/openapi.json", Some(&up.token), &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cafe_api_matches_its_openapi_document() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.regions[0].nodes[0].url.clone();
    schemathesis(&base, "/api/cafe/openapi.json", None, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bookstore_api_matches_its_openapi_document_for_a_shopper_and_the_admin() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.regions[0].nodes[0].url.clone();
    let shopper = shopper_token(&base).await;
    schemathesis(&base, "/api/openapi.json", Some(&shopper), &[]);
    schemathesis(&base, "/api/openapi.json", Some(&up.token), &[]);
}
