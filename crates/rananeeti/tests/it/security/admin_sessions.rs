//! Issue 12.5: the admin's page cookie was the deployment's admin token itself (hex-encoded), so
//! a stolen cookie was the whole admin API, for ever.

use super::{client, send};
use crate::regions::start_up;

/// A cookie `name=value` from a response's `Set-Cookie` headers.
fn cookie_named(answer: &super::Answer, names: &[&str]) -> Option<(String, String)> {
    answer.headers.get_all("set-cookie").iter().filter_map(|value| value.to_str().ok()).find_map(|cookie| {
        let pair = cookie.split(';').next()?;
        let (name, value) = pair.split_once('=')?;
        names.contains(&name).then(|| (name.to_string(), value.to_string()))
    })
}

fn csrf_field(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_admin_cookie_is_neither_the_admin_token_nor_forever() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let node = up.topology.regions[0].nodes[0].url.clone();

    // The admin signs in on the bookstore's admin page.
    let form = send(client().get(format!("{base}/bookstore/admin"))).await;
    let (_, csrf_cookie) = cookie_named(&form, &["bs_csrf"]).expect("a CSRF cookie");
    let csrf = csrf_field(form.body.as_str().unwrap());
    let cookies = format!("bs_csrf={csrf_cookie}");
    let signin = send(
        client()
            .post(format!("{base}/bookstore/admin/signin"))
            .header("cookie", &cookies)
            .form(&[("csrf", csrf.as_str()), ("token", up.token.as_str())]),
    )
    .await;
    assert_eq!(signin.status, 303, "{}", signin.body);
    let (name, value) = cookie_named(&signin, &["rn_admin", "bs_admin"]).expect("an admin session cookie");

    // What a thief of the cookie holds is not the token, and opens no admin API.
    assert!(!value.contains(&up.token) && !value.contains(&hex_of(&up.token)), "the admin cookie is the admin token");
    for base in [&base, &node] {
        let queue = send(client().get(format!("{base}/admin/queue")).bearer_auth(&value)).await;
        assert_eq!(queue.status, 401, "the cookie's value as a bearer on {base}/admin/queue");
    }

    // It opens the admin pages while the session lasts...
    let session_cookie = format!("{cookies}; {name}={value}");
    let admin_page = send(client().get(format!("{base}/bookstore/admin")).header("cookie", &session_cookie)).await;
    assert!(!admin_page.body.as_str().unwrap().contains(r#"name="token""#), "signed in as admin");
    // ...and not once the admin has signed out, even replayed as it was.
    let signout = send(
        client()
            .post(format!("{base}/bookstore/admin/signout"))
            .header("cookie", &session_cookie)
            .form(&[("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(signout.status, 303, "{}", signout.body);
    let replayed = send(client().get(format!("{base}/bookstore/admin")).header("cookie", &session_cookie)).await;
    assert!(
        replayed.body.as_str().unwrap().contains(r#"name="token""#),
        "a signed-out admin cookie still opens the admin"
    );
    let cafe = send(client().get(format!("{base}/cafe/reservations")).header("cookie", &session_cookie)).await;
    assert_eq!(cafe.status, 401, "nor the cafe's staff list");
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}
