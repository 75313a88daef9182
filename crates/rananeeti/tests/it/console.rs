//! The operator console at the gateway (`/admin/console`), in headless Chromium against a running
//! `up` (2 regions x 2 nodes, scheduled backups verified, a drill report on disk): it is refused
//! without the admin token, signs in with it into an HttpOnly session cookie that does not hold
//! it, shows every node with what it says of itself (a store down and its queue, a drained node,
//! versions, leases, replication lag), ownership, a conflict, the last backup and drill, draws
//! its charts, passes the accessibility audit at desktop and phone widths, and reloads itself to
//! show the store back. Writes `docs/screenshots/console.png`.

use crate::browser::{
    audit, fits_width, mark_page, open_browser, screenshot, wait_for, ChromeDriver, PAGE_LOAD_TIMEOUT,
};
use crate::regions::{start_up_with_args, Up};
use crate::support::{booking_year, eventually, post_reservation, reservation};
use fantoccini::{Client, Locator};
use futures::FutureExt;
use serde_json::{json, Value};
use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::time::Duration;

/// How long the console gets to show a change: a sample every 2 s, a reload every 5 s.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(40);

async fn admin(up: &Up, method: reqwest::Method, url: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, url).bearer_auth(&up.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    response
}

async fn console_html(up: &Up, gateway: &str) -> String {
    admin(up, reqwest::Method::GET, &format!("{gateway}/admin/console"), None).await.text().await.unwrap()
}

/// A drill report as `rananeeti drill --report DIR/drills/NAME` writes it (docs/drill.md).
fn write_drill_report(up: &Up) {
    let dir = up.data_dir().join("drills").join("2030-06-01-db-outage");
    std::fs::create_dir_all(&dir).unwrap();
    let report = json!({
        "format": 1,
        "version": "0.1.0",
        "started_at": "2030-06-01T09:30:00Z",
        "passed": true,
        "scenarios": [
            { "name": "db-outage", "summary": "a region's database stops", "outcome": "passed" },
            { "name": "region-freeze", "summary": "a region's nodes freeze", "outcome": "passed" },
        ],
    });
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_an_outage_a_drain_a_conflict_the_backups_and_the_drill_and_updates_itself() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("backup.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_rananeeti")).args(["backup", "keygen", "--out"]).arg(&key).output();
    assert!(keygen.unwrap().status.success(), "backup keygen");
    let extra: Vec<String> = [
        "--backup-repo",
        &format!("file://{}", keys.path().join("backups").display()),
        "--backup-interval-seconds",
        "3",
        "--backup-recipient",
        &key.with_extension("key.pub").display().to_string(),
        "--backup-verify-key",
        &key.display().to_string(),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let up = start_up_with_args(2, 2, "sqlite", &extra).await;
    let gateway = up.topology.gateway_url.clone().unwrap();
    let (r1, r2) = (up.region_urls(0), up.region_urls(1));
    write_drill_report(&up);

    // Without the token: the sign-in page, and nothing of the deployment.
    let anonymous = reqwest::get(format!("{gateway}/admin/console")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let page = anonymous.text().await.unwrap();
    assert!(page.contains("id=\"sign-in\"") && !page.contains("data-node="), "{page}");
    let refused = reqwest::Client::new()
        .post(format!("{gateway}/admin/console/session"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a wrong token signs nobody in");
    assert!(refused.headers().get("set-cookie").is_none());

    // Traffic, a conflict between the regions, a drained node, and a store down on r1-n1 with
    // writes queued there.
    let client = reqwest::Client::new();
    for i in 0..10 {
        let answer = post_reservation(&client, &gateway, &reservation("console", i), false).await.unwrap();
        assert!(answer.acknowledged(), "{answer:?}");
    }
    let day = format!("{}-06-01", booking_year());
    up.set_replication("cut").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (url, dish) in [(&r1[0], "Lentil soup"), (&r2[0], "Mushroom risotto")] {
        let response = client
            .put(format!("{url}/api/cafe/specials/{day}"))
            .bearer_auth(&up.token)
            .json(&json!({ "dish": dish, "price_cents": 950 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "special set in its region");
    }
    up.set_replication("ok").await;
    admin(&up, reqwest::Method::POST, &format!("{gateway}/admin/nodes/r2-n2/drain"), None).await;
    admin(&up, reqwest::Method::POST, &format!("{}/admin/faults", r1[0]), Some(json!({ "db": "down" }))).await;
    for i in 100..103 {
        let answer = post_reservation(&client, &r1[0], &reservation("console-down", i), false).await.unwrap();
        assert_eq!(answer.status, 202, "queued while r1-n1's store is down: {answer:?}");
    }

    // The console has sampled all of it (and a backup has been taken and verified).
    eventually("the console to show the outage, the drain, the conflict and the backup", CONSOLE_TIMEOUT, || async {
        let html = console_html(&up, &gateway).await;
        let shown = html.contains(r#"data-node="r1-n1" data-health="up" data-store="down""#)
            && html.contains(r#"data-queue-depth="3""#)
            && html.contains(r#"data-node="r2-n2" data-health="drained""#)
            && html.contains(&format!(r#"data-conflict="{day}""#))
            && html.contains(r#"data-backup="ok""#);
        shown.then_some(())
    })
    .await;

    let browser_dir = tempfile::tempdir().unwrap();
    let driver = ChromeDriver::start(browser_dir.path()).await;
    let profile = browser_dir.path().join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let browser = open_browser(&driver, &profile).await;
    let outcome = AssertUnwindSafe(in_the_browser(&browser, &up, &gateway, &day)).catch_unwind().await;
    if outcome.is_err() {
        eprintln!("{}", driver.log_tail());
    }
    let _ = browser.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// What the console page shows, read from its `data-*` hooks.
const CONSOLE_PAGE: &str = r##"
    if (document.readyState !== "complete" || !document.querySelector("table[data-region]")) return null;
    const rows = {};
    for (const row of document.querySelectorAll("tr[data-node]")) {
        rows[row.dataset.node] = { health: row.dataset.health, store: row.dataset.store, breaker: row.dataset.breaker,
                                   depth: row.dataset.queueDepth, lease: row.dataset.lease,
                                   text: row.innerText };
    }
    const charts = {};
    for (const chart of document.querySelectorAll("figure[data-chart]")) {
        charts[chart.dataset.chart] = { series: Number(chart.dataset.series),
                                        lines: chart.querySelectorAll("polyline, circle").length };
    }
    return {
        h1: document.querySelector("h1").innerText,
        regions: [...document.querySelectorAll("table[data-region]")].map(table => table.dataset.region),
        rows,
        charts,
        owners: [...document.querySelectorAll("tr[data-owner-region]")].map(row => [row.dataset.ownerRegion, row.dataset.acting, row.dataset.epoch]),
        conflicts: [...document.querySelectorAll("tr[data-conflict]")].map(row => row.dataset.conflict),
        backup: document.querySelector("[data-backup]").dataset.backup,
        drill: document.querySelector("[data-drill]").dataset.drill,
        scenarios: [...document.querySelectorAll("[data-scenario]")].map(item => item.innerText),
        cards: Object.fromEntries([...document.querySelectorAll("[data-card]")].map(card => [card.dataset.card, card.querySelector("strong").innerText])),
        refresh: (document.querySelector('meta[http-equiv="refresh"]') || {}).content,
        scripts: document.scripts.length,
        external: [...document.querySelectorAll("link[href], script[src], img[src]")].length,
        not_navigated: window[arguments[0]] === true,
    };
"##;

async fn read_console(browser: &Client) -> Value {
    wait_for(browser, "the console", PAGE_LOAD_TIMEOUT, CONSOLE_PAGE, vec![json!(crate::browser::NO_NAVIGATION_MARKER)])
        .await
}

async fn in_the_browser(browser: &Client, up: &Up, gateway: &str, day: &str) {
    // Signed in with the token typed into the form.
    browser.goto(&format!("{gateway}/admin/console")).await.unwrap();
    wait_for(
        browser,
        "the sign-in form",
        PAGE_LOAD_TIMEOUT,
        r##"return document.getElementById("token") ? true : null;"##,
        vec![],
    )
    .await;
    audit(browser, "the console's sign-in page").await;
    browser.find(Locator::Css("#token")).await.unwrap().send_keys(&up.token).await.unwrap();
    browser.find(Locator::Css("#sign-in button[type=submit]")).await.unwrap().click().await.unwrap();
    let page = read_console(browser).await;
    let cookies = browser.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|cookie| cookie.name() == "rananeeti_console").expect("a session cookie");
    assert_eq!(session.http_only(), Some(true), "scripts cannot read the session");
    assert!(!session.value().contains(up.token.as_str()), "the cookie does not carry the token");
    assert!(!browser.current_url().await.unwrap().as_str().contains(up.token.as_str()), "nor does the URL");

    // Everything the outage, the drain and the conflict changed, and what stayed fine.
    assert_eq!(page["h1"], "rananeeti console");
    assert_eq!(page["regions"], json!(["r1", "r2"]), "{page}");
    let row = |node: &str| page["rows"][node].clone();
    assert_eq!((row("r1-n1")["store"].clone(), row("r1-n1")["depth"].clone()), (json!("down"), json!("3")), "{page}");
    assert!(["open", "halfopen"].contains(&row("r1-n1")["breaker"].as_str().unwrap()), "{page}");
    assert_eq!(row("r2-n2")["health"], "drained", "{page}");
    for node in ["r1-n2", "r2-n1", "r2-n2"] {
        assert_eq!(
            (row(node)["store"].clone(), row(node)["depth"].clone()),
            (json!("up"), json!("0")),
            "{node}: {page}"
        );
    }
    for node in ["r1-n1", "r1-n2", "r2-n1", "r2-n2"] {
        assert_eq!(row(node)["lease"], "held", "{node}: {page}");
        let text = row(node)["text"].as_str().unwrap().to_string();
        assert!(text.contains(rananeeti::VERSION), "{node} shows its version: {text}");
        let peer = if node.starts_with("r1") { "from r2" } else { "from r1" };
        assert!(text.contains(peer), "{node} shows its replication lag {peer}: {text}");
    }
    assert_eq!(page["owners"], json!([["r1", "r1", "0"], ["r2", "r2", "0"]]), "{page}");
    assert!(page["conflicts"].as_array().unwrap().iter().any(|entity| entity == day), "{page}");
    assert_eq!((page["backup"].clone(), page["drill"].clone()), (json!("ok"), json!("passed")), "{page}");
    assert_eq!(page["scenarios"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["cards"]["ready-nodes"], "3 of 4", "{page}");
    assert_eq!(page["cards"]["queued"], "3", "{page}");
    assert_eq!(page["cards"]["drill"], "passed", "{page}");
    for chart in ["queue-depth", "replication-lag", "gateway-traffic", "ready-nodes"] {
        let drawn = &page["charts"][chart];
        assert!(drawn["series"].as_u64().unwrap() >= 2 && drawn["lines"].as_u64().unwrap() >= 1, "{chart}: {page}");
    }
    assert_eq!((page["scripts"].clone(), page["external"].clone()), (json!(0), json!(0)), "no script, no asset");
    assert_eq!(page["refresh"], "5", "{page}");

    audit(browser, "the console").await;
    screenshot(browser, "console.png").await;
    let (width, height) = browser.get_window_size().await.unwrap();
    browser.set_window_size(375, 812).await.unwrap();
    fits_width(browser, "the console at 375 px").await;
    audit(browser, "the console at 375 px").await;
    browser.set_window_size(width as u32, height as u32).await.unwrap();

    // The store comes back and the queue drains: the page shows it by reloading itself.
    mark_page(browser).await;
    admin(up, reqwest::Method::POST, &format!("{}/admin/faults", up.region_urls(0)[0]), Some(json!({ "db": "up" })))
        .await;
    let healed = wait_for(
        browser,
        "the console to reload itself and show r1-n1's store back and its queue drained",
        CONSOLE_TIMEOUT,
        &format!(
            "const page = (function () {{ {CONSOLE_PAGE} }}).apply(null, arguments);
             return page && !page.not_navigated && page.rows['r1-n1'].store === 'up' && page.rows['r1-n1'].depth === '0' ? page : null;"
        ),
        vec![json!(crate::browser::NO_NAVIGATION_MARKER)],
    )
    .await;
    assert_eq!(healed["cards"]["queued"], "0", "{healed}");
    assert!(
        browser.current_url().await.unwrap().as_str().ends_with("/admin/console"),
        "it reloaded, it did not go anywhere"
    );

    // Signed out: the sign-in page again, the cookie gone.
    browser.find(Locator::Css("form.signout button")).await.unwrap().click().await.unwrap();
    wait_for(
        browser,
        "the sign-in page after signing out",
        PAGE_LOAD_TIMEOUT,
        r##"return document.getElementById("token") ? true : null;"##,
        vec![],
    )
    .await;
    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(cookies.iter().all(|cookie| cookie.name() != "rananeeti_console"), "{cookies:?}");
}
