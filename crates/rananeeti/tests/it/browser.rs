//! The cafe's pages in a real browser (headless Chromium driven through ChromeDriver): a booking,
//! the same booking sent twice, a booking taken while the database is down, and a refused form.

use crate::support::{booking_year, Deployment, Node, StoreKind};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rananeeti::postgres::free_loopback_port;
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long ChromeDriver gets to answer `/status` as ready.
const CHROMEDRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a page gets to load after a click or `goto`, the submit budget included.
pub(crate) const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pending booking's page gets to show it confirmed once the database is back. The
/// page asks every second; the rest is room for a busy 2-core machine, not a latency claim.
pub(crate) const CONFIRM_ON_PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at the page.
const DOM_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of ChromeDriver's log printed when the test fails.
const CHROMEDRIVER_LOG_TAIL_LINES_MAX: usize = 40;

/// Flags this machine needs: no sandbox as root, and no background connections, which the
/// closed network refuses.
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=en-GB",
    "--window-size=1200,1000",
];

/// Set on `window` once a page has landed; still there later means the page was never reloaded
/// or left, so whatever changed on it was changed by its own script.
pub(crate) const NO_NAVIGATION_MARKER: &str = "rananeeti-test-no-navigation";

// ---------------------------------------------------------------------------------------------
// ChromeDriver and the browser session.

/// Where Debian's chromium-driver package puts it, else the first on PATH.
fn chromedriver_binary() -> PathBuf {
    let debian = Path::new("/usr/bin/chromedriver");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).map(|dir| dir.join("chromedriver")).find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "chromedriver is not at /usr/bin/chromedriver nor on PATH: run scripts/test.sh, which installs \
                 Debian's chromium and chromium-driver packages"
            )
        })
}

/// A `chromedriver` process in its own process group, so that dropping it also ends the
/// Chromium it started, even when the session was never closed.
pub(crate) struct ChromeDriver {
    child: Option<Child>,
    url: String,
    log_file: PathBuf,
}

impl ChromeDriver {
    pub(crate) async fn start(dir: &Path) -> ChromeDriver {
        let binary = chromedriver_binary();
        let port = free_loopback_port().expect("a free loopback port for chromedriver");
        let log_file = dir.join("chromedriver.log");
        let log = File::create(&log_file).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("spawning {}: {error}", binary.display()));
        let mut driver = ChromeDriver { child: Some(child), url: format!("http://127.0.0.1:{port}"), log_file };

        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let deadline = Instant::now() + CHROMEDRIVER_START_TIMEOUT;
        loop {
            if let Some(status) = driver.child.as_mut().unwrap().try_wait().unwrap() {
                driver.child = None;
                panic!("chromedriver exited while starting ({status}){}", driver.log_tail());
            }
            if let Ok(response) = client.get(format!("{}/status", driver.url)).send().await {
                if let Ok(status) = response.json::<Value>().await {
                    if status["value"]["ready"] == true {
                        return driver;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer /status as ready within {CHROMEDRIVER_START_TIMEOUT:?}{}",
                driver.log_tail()
            );
            tokio::time::sleep(DOM_POLL_INTERVAL).await;
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(CHROMEDRIVER_LOG_TAIL_LINES_MAX);
        format!("\n--- last lines of {} ---\n{}", self.log_file.display(), lines[start..].join("\n"))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole group: chromedriver and the browser processes it started.
            let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// A fresh headless Chromium with its own empty profile, driven through `driver`.
pub(crate) async fn open_browser(driver: &ChromeDriver, profile_dir: &Path) -> Client {
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| arg.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile_dir.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_string(), json!({ "args": args }));
    // chromedriver is on loopback over plain HTTP: no TLS stack is needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "starting headless Chromium through chromedriver: {error} (is Debian's chromium package installed? \
                 scripts/test.sh installs it){}",
                driver.log_tail()
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Looking at pages.

/// Runs `script` in the page; `None` when it cannot run now (mid-navigation) or answers null.
pub(crate) async fn look(client: &Client, script: &str, args: Vec<Value>) -> Option<Value> {
    match client.execute(script, args).await {
        Ok(Value::Null) | Err(_) => None,
        Ok(value) => Some(value),
    }
}

/// Looks until `script` answers something other than null, at most `timeout`.
pub(crate) async fn wait_for(client: &Client, what: &str, timeout: Duration, script: &str, args: Vec<Value>) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = look(client, script, args.clone()).await {
            return value;
        }
        if Instant::now() >= deadline {
            let page = look(client, "return location.href + '\\n' + document.body.innerText;", vec![]).await;
            panic!("gave up after {timeout:?} waiting for {what}; the page shows:\n{}", page.unwrap_or_default());
        }
        tokio::time::sleep(DOM_POLL_INTERVAL).await;
    }
}

/// What the page does wrong by WCAG 2.1 AA's checkable rules: no `lang`, no `h1`, a form field
/// without a label, an image without `alt`, a link or button with no name, an element that
/// cannot be reached by Tab, or text whose contrast with the background behind it is under
/// 4.5:1 (3:1 for large text). Answers the problems, each naming the element.
pub(crate) const AUDIT: &str = r##"
    if (document.readyState !== "complete") return null;
    const problems = [];
    const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
        (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : "") +
        " \"" + (el.textContent || "").trim().slice(0, 40) + "\"";
    const visible = (el) => {
        const style = getComputedStyle(el);
        const box = el.getBoundingClientRect();
        return style.display !== "none" && style.visibility !== "hidden" && box.width > 0 && box.height > 0;
    };
    if (!document.documentElement.lang) problems.push("html has no lang");
    if (!document.querySelector("h1")) problems.push("no h1");
    for (const field of document.querySelectorAll("input, select, textarea")) {
        if (field.type === "hidden" || field.type === "submit" || !visible(field)) continue;
        if (field.labels.length === 0 && !field.getAttribute("aria-label") && !field.getAttribute("aria-labelledby"))
            problems.push("field without a label: " + describe(field));
    }
    for (const image of document.querySelectorAll("img")) {
        if (!image.hasAttribute("alt")) problems.push("image without alt: " + image.getAttribute("src"));
    }
    // Hidden from assistive technology on purpose (a second link to a book around its cover, the
    // star glyphs beside the rating's text): judged by what stands for them instead.
    const decorative = (el) => el.closest("[aria-hidden=true]") !== null;
    for (const control of document.querySelectorAll("a[href], button")) {
        if (!visible(control) || decorative(control)) continue;
        const named = (control.textContent || "").trim() || control.getAttribute("aria-label") ||
            [...control.querySelectorAll("img[alt]")].some((image) => image.alt.trim());
        if (!named) problems.push("link or button without a name: " + describe(control));
        if (control.tabIndex < 0) problems.push("not reachable by Tab: " + describe(control));
    }
    const rgba = (text) => {
        const parts = text.match(/[\d.]+/g).map(Number);
        return { r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1 };
    };
    const luminance = ({ r, g, b }) => {
        const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
        return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    };
    const background = (el) => {
        for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
            const style = getComputedStyle(node);
            if (style.backgroundImage !== "none") return null; // a gradient or picture: not judged
            const color = rgba(style.backgroundColor);
            if (color.a >= 0.99) return color;
        }
        return { r: 255, g: 255, b: 255, a: 1 };
    };
    const seen = new Set();
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
        const text = walker.currentNode;
        const el = text.parentElement;
        if (!text.textContent.trim() || !el || seen.has(el) || !visible(el) || decorative(el)) continue;
        seen.add(el);
        const style = getComputedStyle(el);
        const behind = background(el);
        if (!behind) continue;
        const color = rgba(style.color);
        const front = { r: color.r * color.a + behind.r * (1 - color.a), g: color.g * color.a + behind.g * (1 - color.a),
                        b: color.b * color.a + behind.b * (1 - color.a) };
        const [light, dark] = [luminance(front), luminance(behind)].sort((x, y) => y - x);
        const ratio = (light + 0.05) / (dark + 0.05);
        const size = parseFloat(style.fontSize);
        const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
        if (ratio < (large ? 3 : 4.5))
            problems.push("contrast " + ratio.toFixed(2) + ":1 (" + style.color + " on " +
                `rgb(${behind.r}, ${behind.g}, ${behind.b})` + "): " + describe(el));
    }
    return problems;
"##;

/// Fails the test with every accessibility problem `AUDIT` finds on the page showing.
pub(crate) async fn audit(client: &Client, what: &str) {
    let problems = wait_for(client, what, PAGE_LOAD_TIMEOUT, AUDIT, vec![]).await;
    let problems = problems.as_array().expect("the audit answers a list");
    assert!(
        problems.is_empty(),
        "accessibility problems on {what}:\n{}",
        serde_json::to_string_pretty(problems).unwrap()
    );
}

/// Fails the test when the page showing is wider than the window (it scrolls sideways), naming
/// the elements that stick out.
pub(crate) async fn fits_width(client: &Client, what: &str) {
    let overflow = wait_for(
        client,
        what,
        PAGE_LOAD_TIMEOUT,
        r##"if (document.readyState !== "complete") return null;
           const wide = [...document.querySelectorAll("body *")]
               .filter((el) => el.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
               .map((el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + "." + el.className);
           return { page: document.documentElement.scrollWidth, view: document.documentElement.clientWidth,
                    wide: wide.slice(0, 10) };"##,
        vec![],
    )
    .await;
    assert!(
        overflow["page"].as_i64().unwrap() <= overflow["view"].as_i64().unwrap(),
        "{what} scrolls sideways: {overflow}"
    );
}

/// Walks the page showing with the Tab key from the top: every stop must show a focus
/// indicator (an outline or a shadow), and the walk must reach `must_reach` (a CSS selector)
/// within `steps_max` presses. Answers the stops, described.
pub(crate) async fn tab_walk(client: &Client, what: &str, must_reach: &str, steps_max: usize) -> Vec<String> {
    client
        .execute("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);", vec![])
        .await
        .unwrap();
    let mut stops = Vec::new();
    for _ in 0..steps_max {
        client.active_element().await.unwrap().send_keys(&fantoccini::key::Key::Tab.to_string()).await.unwrap();
        let stop = client
            .execute(
                r##"const el = document.activeElement;
                    if (!el || el === document.body) return null;
                    const style = getComputedStyle(el);
                    const outlined = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
                    const shadowed = style.boxShadow && style.boxShadow !== "none";
                    return { name: el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + " \"" +
                                   (el.textContent || el.value || el.getAttribute("aria-label") || "").trim().slice(0, 30) + "\"",
                             shown: outlined || shadowed,
                             reached: el.matches(arguments[0]) };"##,
                vec![json!(must_reach)],
            )
            .await
            .unwrap();
        assert!(!stop.is_null(), "Tab left the page on {what} after {stops:?}");
        let name = stop["name"].as_str().unwrap().to_string();
        assert_eq!(stop["shown"], true, "no focus indicator on {name} ({what})");
        stops.push(name);
        if stop["reached"] == true {
            return stops;
        }
    }
    panic!("{must_reach} not reached by Tab within {steps_max} presses on {what}: {stops:?}");
}

/// What a booking's own page shows, once it has loaded.
const STATUS_PAGE: &str = r##"
    const article = document.getElementById("reservation");
    if (document.readyState !== "complete" || !article) return null;
    const badge = article.querySelector("[data-status]");
    const flash = document.getElementById("flash");
    return {
        path: location.pathname,
        id: article.getAttribute("data-reservation-id"),
        status: badge && badge.getAttribute("data-status"),
        placed: flash && flash.getAttribute("data-placed"),
        polls: article.hasAttribute("data-poll-url"),
        pending_note: document.getElementById("pending-note") !== null,
        not_navigated: window[arguments[0]] === true,
    };
"##;

/// A booking's page as the test reads it.
#[derive(Debug)]
struct StatusPage {
    path: String,
    id: String,
    status: String,
    placed: Option<String>,
    polls: bool,
    pending_note: bool,
    /// The marker set by [`mark_page`] is still on this page.
    not_navigated: bool,
}

impl StatusPage {
    fn from_json(value: &Value) -> StatusPage {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        StatusPage {
            path: text("path").unwrap_or_default(),
            id: text("id").expect("the booking page names its reservation"),
            status: text("status").expect("the booking page has a status badge"),
            placed: text("placed"),
            polls: value["polls"] == true,
            pending_note: value["pending_note"] == true,
            not_navigated: value["not_navigated"] == true,
        }
    }
}

async fn wait_for_status_page(client: &Client, what: &str) -> StatusPage {
    let value = wait_for(client, what, PAGE_LOAD_TIMEOUT, STATUS_PAGE, vec![json!(NO_NAVIGATION_MARKER)]).await;
    StatusPage::from_json(&value)
}

/// Waits, without touching the page, until its badge says `status`.
async fn wait_for_status_in_place(client: &Client, status: &str) -> StatusPage {
    let script = format!(
        "const page = (function () {{ {STATUS_PAGE} }}).apply(null, arguments); return page && page.status === arguments[1] ? page : null;"
    );
    let what = format!("the booking page to show data-status=\"{status}\" by itself");
    let value =
        wait_for(client, &what, CONFIRM_ON_PAGE_TIMEOUT, &script, vec![json!(NO_NAVIGATION_MARKER), json!(status)])
            .await;
    StatusPage::from_json(&value)
}

/// Marks the current page; see [`NO_NAVIGATION_MARKER`].
pub(crate) async fn mark_page(client: &Client) {
    client.execute("window[arguments[0]] = true;", vec![json!(NO_NAVIGATION_MARKER)]).await.unwrap();
}

/// Saves the whole page, not only what fits the window, as `docs/screenshots/{name}`.
pub(crate) async fn screenshot(client: &Client, name: &str) {
    let (width, height) = client.get_window_size().await.unwrap();
    let heights =
        client.execute("return [document.documentElement.scrollHeight, window.innerHeight];", vec![]).await.unwrap();
    let (page_height, viewport_height) = (heights[0].as_u64().unwrap(), heights[1].as_u64().unwrap());
    let full_height = height + page_height.saturating_sub(viewport_height);
    client.set_window_size(width as u32, full_height as u32).await.unwrap();
    let png = client.screenshot().await.expect("a screenshot of the page");
    client.set_window_size(width as u32, height as u32).await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot {name} is not a PNG");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The booking form, filled in as a person would.

#[derive(Clone, Debug)]
struct Booking {
    name: &'static str,
    /// The `<select>` option's value; "" is "Choose…".
    party_size: &'static str,
    /// `YYYY-MM-DD`
    date: String,
    /// `HH:MM`
    time: &'static str,
    notes: &'static str,
    simulate_failure: bool,
}

/// A day about a year ahead, inside the booking window.
fn date_next_year(month: u32, day: u32) -> String {
    format!("{}-{month:02}-{day:02}", booking_year())
}

/// Opens the booking page and fills the form in. Text is typed; the date and time inputs get
/// their value set by script, since what they accept from the keyboard depends on the locale.
async fn fill_booking_form(client: &Client, node: &Node, booking: &Booking) {
    client.goto(&node.url("/cafe")).await.unwrap();
    wait_for(
        client,
        "the booking form",
        PAGE_LOAD_TIMEOUT,
        r##"return document.readyState === "complete" && document.getElementById("reservation-form") ? true : null;"##,
        vec![],
    )
    .await;

    let name = client.find(Locator::Css("#name")).await.unwrap();
    name.clear().await.unwrap();
    if !booking.name.is_empty() {
        name.send_keys(booking.name).await.unwrap();
    }
    client.find(Locator::Css("#party_size")).await.unwrap().select_by_value(booking.party_size).await.unwrap();
    for (selector, value) in [("#date", booking.date.as_str()), ("#time", booking.time)] {
        let set = client
            .execute(
                r##"const input = document.querySelector(arguments[0]);
                   input.value = arguments[1];
                   input.dispatchEvent(new Event("input", { bubbles: true }));
                   input.dispatchEvent(new Event("change", { bubbles: true }));
                   return input.value;"##,
                vec![json!(selector), json!(value)],
            )
            .await
            .unwrap();
        assert_eq!(set, json!(value), "the {selector} input did not take {value:?}");
    }
    let notes = client.find(Locator::Css("#notes")).await.unwrap();
    notes.clear().await.unwrap();
    if !booking.notes.is_empty() {
        notes.send_keys(booking.notes).await.unwrap();
    }
    let checkbox = client.find(Locator::Css("#simulate_failure")).await.unwrap();
    if checkbox.is_selected().await.unwrap() != booking.simulate_failure {
        checkbox.click().await.unwrap();
    }

    let typed = client
        .execute(
            r##"const field = id => document.getElementById(id);
               return ["name", "party_size", "date", "time", "notes"].map(id => field(id).value)
                   .concat([field("simulate_failure").checked]);"##,
            vec![],
        )
        .await
        .unwrap();
    let expected =
        json!([booking.name, booking.party_size, booking.date, booking.time, booking.notes, booking.simulate_failure]);
    assert_eq!(typed, expected, "the form does not hold what was typed");
}

async fn click_book(client: &Client) {
    client.find(Locator::Css("#reservation-form button[type=submit]")).await.unwrap().click().await.unwrap();
}

async fn book(client: &Client, node: &Node, booking: &Booking) -> StatusPage {
    fill_booking_form(client, node, booking).await;
    click_book(client).await;
    wait_for_status_page(client, &format!("the page of the booking for {}", booking.name)).await
}

/// The list of every booking is the staff's: a guest gets the staff sign-in form (with no
/// guest's name on it); the admin token there opens the list.
async fn sign_in_as_staff(client: &Client, node: &Node, guest_names: &[&str]) {
    client.goto(&node.url("/cafe/reservations")).await.unwrap();
    let page = wait_for(
        client,
        "the staff sign-in form",
        PAGE_LOAD_TIMEOUT,
        r##"if (document.readyState !== "complete" || !document.getElementById("staff-signin")) return null;
           return [document.body.innerText, !!document.getElementById("reservations")];"##,
        vec![],
    )
    .await;
    assert_eq!(page[1], json!(false), "a guest sees no list of bookings");
    for name in guest_names {
        assert!(!page[0].as_str().unwrap().contains(name), "a guest sees {name}'s booking on the staff page");
    }
    audit(client, "the staff sign-in form").await;
    let token = client.find(Locator::Css("#token")).await.unwrap();
    token.send_keys(&node.admin_token).await.unwrap();
    client.find(Locator::Css("#staff-signin button[type=submit]")).await.unwrap().click().await.unwrap();
}

/// The list page's rows, top to bottom, as (reservation id, status); the browser holds the
/// staff's session (`sign_in_as_staff`).
async fn listed_reservations(client: &Client, node: &Node) -> Vec<(String, String)> {
    client.goto(&node.url("/cafe/reservations")).await.unwrap();
    let rows = wait_for(
        client,
        "the list of reservations",
        PAGE_LOAD_TIMEOUT,
        r##"if (document.readyState !== "complete" || !document.getElementById("reservations")) return null;
           return Array.from(document.querySelectorAll("#reservations tbody tr")).map(row => [
               row.getAttribute("data-reservation-id"),
               (row.querySelector("[data-status]") || { getAttribute: () => null }).getAttribute("data-status"),
           ]);"##,
        vec![],
    )
    .await;
    serde_json::from_value(rows).expect("each row has an id and a status badge")
}

// ---------------------------------------------------------------------------------------------
// The scenario.

#[tokio::test(flavor = "multi_thread")]
async fn booking_in_a_browser_survives_a_database_outage() {
    let deployment = Deployment::start(StoreKind::Sqlite).await;
    let browser_dir = TempDir::new().unwrap();
    let driver = ChromeDriver::start(browser_dir.path()).await;
    let profile_dir = browser_dir.path().join("profile");
    std::fs::create_dir_all(&profile_dir).unwrap();
    let client = open_browser(&driver, &profile_dir).await;

    let outcome = AssertUnwindSafe(booking_scenario(&client, &deployment.node)).catch_unwind().await;
    if outcome.is_err() {
        eprintln!("{}\nthe node's log:\n{}", driver.log_tail(), deployment.node.log_tail());
    }
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn booking_scenario(client: &Client, node: &Node) {
    // 1. A booking while everything works: confirmed at once.
    let first = Booking {
        name: "Ann Lindqvist",
        party_size: "4",
        date: date_next_year(6, 12),
        time: "19:30",
        notes: "Window table, one high chair",
        simulate_failure: false,
    };
    fill_booking_form(client, node, &first).await;
    screenshot(client, "cafe-book.png").await;
    audit(client, "the booking form").await;
    tab_walk(client, "the booking form", "#reservation-form button[type=submit]", 30).await;
    click_book(client).await;
    let confirmed = wait_for_status_page(client, "the first booking's page").await;
    assert_eq!(confirmed.status, "committed", "{confirmed:?}");
    assert_eq!(confirmed.placed.as_deref(), Some("committed"), "{confirmed:?}");
    assert_eq!(confirmed.path, format!("/cafe/reservations/{}", confirmed.id));
    assert!(!confirmed.polls && !confirmed.pending_note, "a confirmed booking's page has nothing to wait for");
    screenshot(client, "cafe-confirmed.png").await;
    audit(client, "a confirmed booking's page").await;

    // 2. The same form again: one booking, and the page says so.
    let again = book(client, node, &first).await;
    assert_eq!(again.placed.as_deref(), Some("duplicate"), "{again:?}");
    assert_eq!((again.id.as_str(), again.status.as_str()), (confirmed.id.as_str(), "committed"));
    sign_in_as_staff(client, node, &[first.name]).await;
    let listed = listed_reservations(client, node).await;
    let copies = listed.iter().filter(|(id, _)| *id == confirmed.id).count();
    assert_eq!(copies, 1, "the booking sent twice is listed {copies} times: {listed:?}");

    // 3. The database goes down: the booking is queued, and its page confirms it by itself once
    //    the database is back.
    node.set_faults(json!({ "db": "down" })).await;
    let second = Booking {
        name: "Bo Sandberg",
        party_size: "2",
        date: date_next_year(7, 3),
        time: "12:45",
        notes: "",
        simulate_failure: false,
    };
    let queued = book(client, node, &second).await;
    assert_eq!(queued.status, "pending", "a booking taken while the database is down: {queued:?}");
    assert_eq!(queued.placed.as_deref(), Some("pending"), "{queued:?}");
    assert!(queued.polls && queued.pending_note, "a pending booking's page follows it: {queued:?}");
    screenshot(client, "cafe-pending.png").await;
    audit(client, "a pending booking's page").await;
    mark_page(client).await;
    node.set_faults(json!({ "db": "up" })).await;
    let settled = wait_for_status_in_place(client, "committed").await;
    assert!(settled.not_navigated, "the page was reloaded or left instead of updating itself: {settled:?}");
    assert_eq!((settled.id.as_str(), settled.path.as_str()), (queued.id.as_str(), queued.path.as_str()));
    assert!(!settled.pending_note, "the confirmed page still says the booking is queued: {settled:?}");

    // 4. A simulated database failure: the booking is queued (or already drained on landing) and
    //    ends confirmed on the same page.
    let third = Booking {
        name: "Chidi Okafor",
        party_size: "6",
        date: date_next_year(8, 21),
        time: "18:00",
        notes: "Birthday: a candle on the bun, please",
        simulate_failure: true,
    };
    let simulated = book(client, node, &third).await;
    assert!(
        matches!(simulated.status.as_str(), "pending" | "committed"),
        "a booking with a simulated failure is accepted: {simulated:?}"
    );
    assert_eq!(simulated.placed.as_deref(), Some("pending"), "the simulated failure queued it: {simulated:?}");
    mark_page(client).await;
    let drained = wait_for_status_in_place(client, "committed").await;
    assert!(drained.not_navigated, "the page was reloaded or left instead of updating itself: {drained:?}");
    assert_eq!(drained.id, simulated.id);

    // 5. A form with no name and no party size: the browser holds it back; sent anyway, the
    //    page names the fields at fault and keeps what was typed.
    let incomplete = Booking {
        name: "",
        party_size: "",
        date: date_next_year(9, 5),
        time: "20:15",
        notes: "Near the fireplace",
        simulate_failure: false,
    };
    fill_booking_form(client, node, &incomplete).await;
    let browser_check = client
        .execute(
            r##"const field = id => document.getElementById(id);
               return [field("reservation-form").checkValidity(), field("name").validity.valueMissing,
                       field("party_size").validity.valueMissing];"##,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(browser_check, json!([false, true, true]), "the browser's own check of the incomplete form");
    mark_page(client).await;
    click_book(client).await;
    let held_back = client
        .execute("return [location.pathname, window[arguments[0]] === true];", vec![json!(NO_NAVIGATION_MARKER)])
        .await
        .unwrap();
    assert_eq!(held_back, json!(["/cafe", true]), "the browser sent a form it should hold back");
    // As a browser without form validation would send it.
    client.execute(r##"document.getElementById("reservation-form").noValidate = true;"##, vec![]).await.unwrap();
    click_book(client).await;
    let refused = wait_for(
        client,
        "the form shown back with field errors",
        PAGE_LOAD_TIMEOUT,
        r##"if (document.readyState !== "complete" || window[arguments[0]] === true) return null;
           const field = id => document.getElementById(id);
           if (!field("reservation-form")) return null;
           return {
               errors: Array.from(document.querySelectorAll(".field-error")).map(e => e.getAttribute("data-field")),
               name_invalid: field("name").getAttribute("aria-invalid"),
               values: ["name", "party_size", "date", "time", "notes"].map(id => field(id).value),
           };"##,
        vec![json!(NO_NAVIGATION_MARKER)],
    )
    .await;
    let errors = refused["errors"].as_array().expect("a list of field errors");
    assert!(errors.contains(&json!("name")), "no error on the name: {refused}");
    assert!(errors.contains(&json!("party_size")), "no error on the party size: {refused}");
    assert_eq!(refused["name_invalid"], "true", "{refused}");
    assert_eq!(
        refused["values"],
        json!(["", "", incomplete.date, incomplete.time, incomplete.notes]),
        "the form did not keep what was typed"
    );

    // 6. The list: newest first, each confirmed; the refused form booked nothing.
    let listed = listed_reservations(client, node).await;
    let expected: Vec<(String, String)> = [&simulated.id, &queued.id, &confirmed.id]
        .into_iter()
        .map(|id| (id.clone(), "committed".to_string()))
        .collect();
    assert_eq!(listed, expected, "the list of reservations, newest first");
    screenshot(client, "cafe-reservations.png").await;
    audit(client, "the list of bookings").await;

    // 7. A phone's width: the form, a booking and the list fit without scrolling sideways.
    let (width, height) = client.get_window_size().await.unwrap();
    client.set_window_size(375, 812).await.unwrap();
    for path in ["/cafe".to_string(), format!("/cafe/reservations/{}", confirmed.id), "/cafe/reservations".to_string()]
    {
        client.goto(&node.url(&path)).await.unwrap();
        fits_width(client, &format!("{path} at 375 px")).await;
        audit(client, &format!("{path} at 375 px")).await;
    }
    client.set_window_size(width as u32, height as u32).await.unwrap();
}
