//! Issue 12.7, 12.9 and 12.13: nothing throttled sign-in (25 wrong passwords, then the right one:
//! accepted), a few parallel sign-ups stalled every sign-in behind argon2's two permits, sign-up
//! told anyone which emails have an account, and an 8-character or common password was taken.

use super::{client, send, shopper, PASSWORD};
use crate::regions::start_up;
use serde_json::json;

/// Failed guesses in a row before the right password is tried.
const GUESSES: usize = 25;

fn csrf_field(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string()
}

/// A page's CSRF cookie (`name=value`) and its form's token.
async fn form_of(url: &str, cookie_name: &str) -> (String, String) {
    let page = send(client().get(url)).await;
    let cookie = page
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|cookie| cookie.starts_with(&format!("{cookie_name}=")))
        .map(|cookie| cookie.split(';').next().unwrap().to_string())
        .expect("a CSRF cookie");
    (cookie, csrf_field(page.body.as_str().unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_a_password_is_throttled_on_every_sign_in() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    shopper(&base, "api@example.com").await;
    shopper(&base, "page@example.com").await;

    // The API.
    let signin = |password: &str| {
        send(
            client()
                .post(format!("{base}/api/auth/signin"))
                .json(&json!({ "email": "api@example.com", "password": password })),
        )
    };
    let mut statuses = Vec::new();
    for guess in 0..GUESSES {
        statuses.push(signin(&format!("guess number {guess}")).await.status);
    }
    assert!(statuses[..5].iter().all(|status| *status == 401), "the first guesses are only wrong: {statuses:?}");
    assert!(statuses.contains(&429), "guessing is throttled: {statuses:?}");
    let right = signin(PASSWORD).await;
    assert_eq!(right.status, 429, "the right password after {GUESSES} guesses is not tried now: {}", right.body);
    assert!(right.header("retry-after").parse::<u64>().unwrap() >= 1);

    // The shop's sign-in page.
    let (cookie, csrf) = form_of(&format!("{base}/bookstore/signin"), "bs_csrf").await;
    let page_signin = |password: String| {
        send(client().post(format!("{base}/bookstore/signin")).header("cookie", &cookie).form(&[
            ("csrf", csrf.as_str()),
            ("email", "page@example.com"),
            ("password", password.as_str()),
        ]))
    };
    for guess in 0..GUESSES {
        page_signin(format!("guess number {guess}")).await;
    }
    assert_eq!(page_signin(PASSWORD.to_string()).await.status, 429, "the sign-in page after {GUESSES} guesses");

    // The admin's sign-in (the cafe's staff form; the bookstore's admin form shares its count).
    let (cookie, csrf) = form_of(&format!("{base}/cafe/reservations"), "cafe_csrf").await;
    let staff_signin = |token: String| {
        send(
            client()
                .post(format!("{base}/cafe/staff/signin"))
                .header("cookie", &cookie)
                .form(&[("csrf", csrf.as_str()), ("token", token.as_str())]),
        )
    };
    for guess in 0..GUESSES {
        staff_signin(format!("not-the-token-{guess}")).await;
    }
    assert_eq!(staff_signin(up.token.clone()).await.status, 429, "the admin token after {GUESSES} guesses");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_sign_ups_is_answered_at_once_instead_of_stalling_sign_ins() {
    let up = start_up(1, 1, "sqlite").await;
    // Straight at the node: the bound is the node's own.
    let node = up.topology.regions[0].nodes[0].url.clone();
    let flood: Vec<_> = (0..48)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move {
                let body = json!({ "email": format!("flood{i}@example.com"), "password": PASSWORD });
                send(client().post(format!("{node}/api/auth/signup")).json(&body)).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for answer in flood {
        let answer = answer.await.unwrap();
        if answer.status == 429 {
            assert_eq!(answer.header("retry-after"), "1", "a busy answer says when to come back");
        }
        statuses.push(answer.status);
    }
    statuses.sort();
    assert!(statuses.contains(&429), "past the hashing queue's bound, sign-ups are refused at once: {statuses:?}");
    assert!(statuses.contains(&201), "the ones within it are taken: {statuses:?}");
    assert!(statuses.iter().all(|status| *status == 201 || *status == 429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn short_and_common_passwords_are_refused_at_sign_up() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    for (password, why) in [
        ("elevenchars", "11 characters"),
        ("password1234", "on every list of common passwords"),
        ("qwertyuiopasdf", "a keyboard walk"),
        ("iloveyou1234", "common, with digits"),
        ("weak@example.com", "the email itself"),
    ] {
        let answer = send(
            client()
                .post(format!("{base}/api/auth/signup"))
                .json(&json!({ "email": "weak@example.com", "password": password })),
        )
        .await;
        assert_eq!(
            (answer.status, answer.body["error"]["field"].as_str()),
            (422, Some("password")),
            "{why}: {}",
            answer.body
        );
    }
    let fine = send(
        client()
            .post(format!("{base}/api/auth/signup"))
            .json(&json!({ "email": "weak@example.com", "password": PASSWORD })),
    )
    .await;
    assert_eq!(fine.status, 201, "{}", fine.body);
    let page = send(client().get(format!("{base}/bookstore/signup"))).await;
    assert!(page.body.as_str().unwrap().contains("12"), "the sign-up page says how long a password must be");
}

#[tokio::test(flavor = "multi_thread")]
async fn probing_which_emails_have_accounts_at_sign_up_is_throttled() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    shopper(&base, "known@example.com").await;
    // Sign-up says "taken" (the accepted risk in the security model); each such answer counts
    // against the prober's address, so a list of emails cannot be run through it.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let body = json!({ "email": "known@example.com", "password": "another long passphrase" });
        statuses.push(send(client().post(format!("{base}/api/auth/signup")).json(&body)).await.status);
    }
    assert_eq!(statuses[0], 409, "{statuses:?}");
    assert!(statuses.contains(&429), "probing is throttled: {statuses:?}");
    let later = send(
        client()
            .post(format!("{base}/api/auth/signup"))
            .json(&json!({ "email": "new@example.com", "password": PASSWORD })),
    )
    .await;
    assert_eq!(later.status, 429, "the prober's address is locked out for a while");
}
