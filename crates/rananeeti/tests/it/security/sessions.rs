//! Issue 12.4 and 12.6: signing out did not end a session (tokens were stateless and stayed valid
//! for 24 hours, in every region); cookies never got `Secure` behind the gateway.

use super::{client, send, shopper, SETTLE_TIMEOUT};
use crate::regions::{start_up, start_up_with_config};
use crate::support::eventually;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_token_used_after_sign_out_is_refused_in_every_region() {
    let up = start_up(2, 1, "sqlite").await;
    let (r1, r2) = (up.topology.regions[0].nodes[0].url.clone(), up.topology.regions[1].nodes[0].url.clone());
    let (_, token) = shopper(&r1, "leaver@example.com").await;
    let cart = |base: &str, token: &str| send(client().get(format!("{base}/api/cart")).bearer_auth(token));
    assert_eq!(cart(&r1, &token).await.status, 200);
    eventually("the account to reach r2", SETTLE_TIMEOUT, || async {
        (cart(&r2, &token).await.status == 200).then_some(())
    })
    .await;
    let (_, other) = shopper(&r1, "stayer@example.com").await;

    // A stolen copy of the token is worthless once its owner signs out: here, and in the other
    // region once the sign-out has replicated there.
    let signout = send(client().post(format!("{r1}/api/auth/signout")).bearer_auth(&token)).await;
    assert_eq!(signout.status, 200, "{}", signout.body);
    assert_eq!(cart(&r1, &token).await.status, 401, "the signed-out token in its own region");
    eventually("the sign-out to reach r2", SETTLE_TIMEOUT, || async {
        (cart(&r2, &token).await.status == 401).then_some(())
    })
    .await;
    assert_eq!(
        send(client().post(format!("{r1}/api/auth/refresh")).bearer_auth(&token)).await.status,
        401,
        "no refresh either"
    );
    assert_eq!(cart(&r1, &other).await.status, 200, "another session is not touched");

    // A session lasts at most 12 hours and 30 idle minutes (ASVS 3.3): the sign-in says so, and
    // a refresh renews the idle timeout of a live session.
    let signin = send(
        client()
            .post(format!("{r1}/api/auth/signin"))
            .json(&json!({ "email": "stayer@example.com", "password": super::PASSWORD })),
    )
    .await;
    assert_eq!(signin.body["expires_in_seconds"], 30 * 60, "{}", signin.body);
    let refreshed = send(client().post(format!("{r1}/api/auth/refresh")).bearer_auth(&other)).await;
    assert_eq!(refreshed.status, 200);
    assert_eq!(cart(&r1, refreshed.body["token"].as_str().unwrap()).await.status, 200);
}

fn set_cookies(answer: &super::Answer) -> Vec<String> {
    answer.headers.get_all("set-cookie").iter().filter_map(|value| value.to_str().ok().map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_are_sent_without_secure_behind_tls_no_longer() {
    // TLS in front (`http.cookies_secure`): every cookie is Secure, every answer has HSTS.
    let up = start_up_with_config(1, 1, "sqlite", Some("[http]\ncookies_secure = true\n")).await;
    let base = up.topology.gateway_url.clone().unwrap();
    for path in ["/bookstore/signin", "/cafe"] {
        let page = send(client().get(format!("{base}{path}"))).await;
        let cookies = set_cookies(&page);
        assert!(!cookies.is_empty(), "{path} sets a cookie");
        assert!(cookies.iter().all(|cookie| cookie.contains("; Secure")), "{path}: {cookies:?}");
        assert!(page.header("strict-transport-security").contains("max-age="), "{path}: HSTS");
    }
    drop(up);

    // Without it, a trusted proxy's word decides: the nodes trust loopback (the gateway), the
    // gateway trusts no one by default, so a client's own `X-Forwarded-Proto: https` through the
    // gateway changes nothing, and the gateway's does.
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let node = up.topology.regions[0].nodes[0].url.clone();
    let claimed = send(client().get(format!("{base}/bookstore/signin")).header("x-forwarded-proto", "https")).await;
    assert!(
        set_cookies(&claimed).iter().all(|cookie| !cookie.contains("Secure")),
        "a client's claim through the gateway"
    );
    assert_eq!(claimed.header("strict-transport-security"), "");
    let proxied = send(client().get(format!("{node}/bookstore/signin")).header("x-forwarded-proto", "https")).await;
    assert!(set_cookies(&proxied).iter().all(|cookie| cookie.contains("; Secure")), "from a trusted proxy");
    assert!(proxied.header("strict-transport-security").contains("max-age="));
}
