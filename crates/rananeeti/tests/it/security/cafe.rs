//! Issue 12.3, 12.11 and 12.12: the cafe's admin actions took no credential; its booking form had
//! no CSRF check and its demo switches were open to anyone; everyone's bookings were public.

use super::{client, send, shopper};
use crate::regions::{start_up, start_up_with_config};
use crate::support::{reservation, slot_time};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_cafe_or_changing_its_special_without_the_admin_token_is_refused() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let (_, shopper_token) = shopper(&base, "closer@example.com").await;
    let day = &slot_time(0)[..10];
    let writes = [
        (format!("{base}/api/cafe/closures/{day}"), json!({ "closed": true, "reason": "Closed by a stranger" })),
        (format!("{base}/api/cafe/specials/{day}"), json!({ "dish": "Stranger's stew", "price_cents": 1 })),
    ];
    for (url, body) in &writes {
        assert_eq!(send(client().put(url).json(body)).await.status, 401, "PUT {url} without a credential");
        let shopper = send(client().put(url).bearer_auth(&shopper_token).json(body)).await;
        assert_eq!(shopper.status, 403, "PUT {url} with a shopper's token");
        assert_eq!(send(client().get(url)).await.status, 404, "nothing was written by {url}");
    }
    for (url, body) in &writes {
        let admin = send(client().put(url).bearer_auth(&up.token).json(body)).await;
        assert_eq!(admin.status, 201, "the admin writes {url}: {}", admin.body);
    }
}

/// The CSRF cookie and the form's token from a fresh visit to the booking page.
async fn booking_form(base: &str) -> (String, String) {
    let page = client().get(format!("{base}/cafe")).send().await.unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|cookie| cookie.starts_with("cafe_csrf="))
        .expect("the booking page sets its CSRF cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    let token = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a CSRF token")
        .to_string();
    (cookie, token)
}

fn form_of(i: usize, csrf: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let slot = slot_time(i);
    let mut fields = vec![
        ("name".to_string(), format!("Forged {i}")),
        ("party_size".to_string(), "2".to_string()),
        ("date".to_string(), slot[..10].to_string()),
        ("time".to_string(), slot[11..].to_string()),
        ("notes".to_string(), String::new()),
        ("csrf".to_string(), csrf.to_string()),
    ];
    fields.extend(extra.iter().map(|(name, value)| (name.to_string(), value.to_string())));
    fields
}

async fn listed_names(base: &str, token: &str) -> Vec<String> {
    let list = send(client().get(format!("{base}/api/cafe/reservations?limit=100")).bearer_auth(token)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    list.body["items"].as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_booking_form_posted_from_another_site_is_refused() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let post = |fields: Vec<(String, String)>, cookie: Option<&str>, site: Option<&str>| {
        let mut request = client().post(format!("{base}/cafe/reservations")).form(&fields);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        send(request)
    };
    // Another site's page posting the form: no cookie, no token; or a stolen token without the
    // visitor's cookie; or the browser saying it came from elsewhere.
    assert_eq!(post(form_of(1, "", &[]), None, None).await.status, 403, "no cookie, no token");
    let (cookie, token) = booking_form(&base).await;
    assert_eq!(post(form_of(2, &token, &[]), None, None).await.status, 403, "a token without its cookie");
    let (other_cookie, _) = booking_form(&base).await;
    assert_eq!(post(form_of(3, &token, &[]), Some(&other_cookie), None).await.status, 403, "another visitor's token");
    assert_eq!(post(form_of(4, &token, &[]), Some(&cookie), Some("cross-site")).await.status, 403, "cross-site");
    assert!(listed_names(&base, &up.token).await.is_empty(), "a refused form booked nothing");

    // Our own page, as a browser sends it: booked.
    let booked = post(form_of(5, &token, &[]), Some(&cookie), Some("same-origin")).await;
    assert_eq!(booked.status, 303, "{}", booked.body);
    assert_eq!(listed_names(&base, &up.token).await, ["Forged 5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_failure_switches_are_ignored_with_demo_off() {
    // `rananeeti node` on its own (a production node): the header changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::support::TestStore::create(crate::support::StoreKind::Sqlite, dir.path());
    let node = crate::support::Node::start_with(dir.path(), &store.url, None, false).await;
    let answer = node.reserve_with_simulated_failure(&reservation("production", 1)).await.unwrap();
    assert_eq!((answer.status, answer.body["status"].as_str()), (201, Some("committed")), "{}", answer.body);
    assert_eq!(node.queue_depth().await, 0, "nothing was pushed into a production node's queue");
    drop(node);

    // `up` with a production configuration (`node.demo = false`): neither the header nor the box.
    let up = start_up_with_config(1, 1, "sqlite", Some("[node]\ndemo = false\n")).await;
    let base = up.topology.gateway_url.clone().unwrap();
    // The header that made one request see a failed database (and pushed writes into the queue).
    let header = send(
        client()
            .post(format!("{base}/api/cafe/reservations"))
            .header("X-Rananeeti-Fault", "db")
            .json(&reservation("demo", 1)),
    )
    .await;
    assert_eq!((header.status, header.body["status"].as_str()), (201, Some("committed")), "{}", header.body);
    // The form's checkbox: not shown, and not honoured when sent anyway.
    let (cookie, token) = booking_form(&base).await;
    let page = client().get(format!("{base}/cafe")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("simulate_failure"), "the demo's checkbox is shown with demo off");
    let form = form_of(2, &token, &[("simulate_failure", "on")]);
    let placed = client().post(format!("{base}/cafe/reservations")).header("cookie", &cookie).form(&form).send().await;
    let location = placed.unwrap().headers()["location"].to_str().unwrap().to_string();
    assert!(location.ends_with("placed=committed"), "the checkbox queued the booking: {location}");
    let queue =
        send(client().get(format!("{}/admin/queue", up.topology.regions[0].nodes[0].url)).bearer_auth(&up.token)).await;
    assert_eq!(queue.body["depth"], 0, "nothing was pushed into the queue: {}", queue.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_everyones_bookings_without_the_admin_token_is_refused() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let booking = json!({ "name": "Private Person", "party_size": 2, "time": slot_time(7), "notes": "anniversary" });
    let booked = send(client().post(format!("{base}/api/cafe/reservations")).json(&booking)).await;
    assert_eq!(booked.status, 201);
    let id = booked.body["id"].as_str().unwrap();

    let api = send(client().get(format!("{base}/api/cafe/reservations"))).await;
    assert_eq!(api.status, 401, "the list through the API without a credential: {}", api.body);
    let (_, shopper_token) = shopper(&base, "lister@example.com").await;
    let as_shopper = send(client().get(format!("{base}/api/cafe/reservations")).bearer_auth(&shopper_token)).await;
    assert_eq!(as_shopper.status, 403);
    let page = send(client().get(format!("{base}/cafe/reservations"))).await;
    assert_eq!(page.status, 401, "the list page without the staff's session");
    let html = page.body.as_str().unwrap();
    assert!(!html.contains("Private Person") && !html.contains("anniversary"), "a guest's booking on the page");
    assert!(html.contains(r#"id="staff-signin""#), "the page asks staff to sign in");

    // The staff (admin token) read the list; a guest reads their own booking by its id.
    assert_eq!(listed_names(&base, &up.token).await, ["Private Person"]);
    let own = send(client().get(format!("{base}/api/cafe/reservations/{id}"))).await;
    assert_eq!((own.status, own.body["name"].as_str()), (200, Some("Private Person")));
    let own_page = send(client().get(format!("{base}/cafe/reservations/{id}"))).await;
    assert_eq!(own_page.status, 200);
}
