//! Security (issue 12, and issue 11's authorization before parsing): each test is an attack a
//! reviewer made on a running `up`, refused. Every one of them failed on the code before its fix.

mod admin_sessions;
mod cafe;
mod database;
mod edge;
mod files;
mod sessions;
mod sign_in;
mod status;

use crate::support::eventually;
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// What the tests' shoppers sign up with: 12 characters or more, on no common-password list.
pub(crate) const PASSWORD: &str = "plum kettle orbit drift";

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An answer: status, headers, body (JSON when it is JSON, else the text as a JSON string).
pub(crate) struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
    }
}

pub(crate) async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// Signs `email` up (committed) and in; returns the sign-up's answer and the token.
pub(crate) async fn shopper(base: &str, email: &str) -> (Value, String) {
    let signup =
        send(client().post(format!("{base}/api/auth/signup")).json(&json!({ "email": email, "password": PASSWORD })))
            .await;
    assert_eq!(signup.status, 201, "sign-up of {email}: {}", signup.body);
    let token = eventually("the account to be usable", SETTLE_TIMEOUT, || async {
        let signin = send(
            client().post(format!("{base}/api/auth/signin")).json(&json!({ "email": email, "password": PASSWORD })),
        )
        .await;
        (signin.status == 200).then(|| signin.body["token"].as_str().unwrap().to_string())
    })
    .await;
    (signup.body, token)
}
