//! The operator console, `/admin/console` behind the admin token: one server-rendered page (no
//! script, no external asset, small inline SVG charts) that reloads itself, showing every region
//! and node as the gateway and the nodes themselves see it (`GET /admin/status` on each node,
//! sampled in the background into a bounded history), ownership, conflicts, and the last backup
//! and drill.
//!
//! A browser signs in with the admin token once (`POST /admin/console/session`) and gets a
//! session cookie: an expiry and an HMAC of it keyed by the token, so any gateway holding the
//! same token accepts it, and changing the token ends every session. The token itself never
//! goes into a cookie, a URL or a page. `Authorization: Bearer` works too (curl, tests).

mod chart;
mod page;
pub mod sample;
pub mod status_files;

use crate::answer::Body;
use crate::gateway::Gateway;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use sample::History;

const SESSION_COOKIE: &str = "rananeeti_console";
/// How long a console session lasts.
const SESSION_SECONDS: u64 = 12 * 3600;
/// The sign-in form's body.
const SIGN_IN_BODY_BYTES_MAX: usize = 4096;
/// No script at all; only the page's own inline style; forms post to this gateway only.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == "/admin/console" || path.starts_with("/admin/console/")
}

pub async fn handle(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/admin/console") => {
            if !signed_in(gateway, &request) {
                return html(StatusCode::UNAUTHORIZED, page::sign_in(None), None);
            }
            html(StatusCode::OK, page::console(gateway), None)
        }
        (Method::POST, "/admin/console/session") => sign_in(gateway, request).await,
        (Method::POST, "/admin/console/signout") => {
            let cookie = format!("{SESSION_COOKIE}=; Path=/admin/console; HttpOnly; SameSite=Strict; Max-Age=0");
            see_other("/admin/console", Some(cookie))
        }
        (_, "/admin/console" | "/admin/console/session" | "/admin/console/signout") => html(
            StatusCode::METHOD_NOT_ALLOWED,
            page::message("Method not allowed", "Use the console's own forms."),
            None,
        ),
        _ => html(StatusCode::NOT_FOUND, page::message("Not found", "The console has no such page."), None),
    }
}

/// The admin token as a bearer token, or a valid session cookie.
fn signed_in(gateway: &Gateway, request: &Request<Incoming>) -> bool {
    let Some(token) = &gateway.admin_token else { return false };
    if crate::gateway::authorized(gateway, request) {
        return true;
    }
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .any(|session| session_valid(token, session, unix_now()))
}

async fn sign_in(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let Some(token) = gateway.admin_token.clone() else {
        return html(StatusCode::UNAUTHORIZED, page::sign_in(Some("This gateway has no admin token.")), None);
    };
    let body = match Limited::new(request.into_body(), SIGN_IN_BODY_BYTES_MAX).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return html(StatusCode::PAYLOAD_TOO_LARGE, page::sign_in(Some("The form is too large.")), None),
    };
    let presented = form_urlencoded::parse(&body).find(|(name, _)| name == "token").map(|(_, value)| value);
    let matches = presented.is_some_and(|presented| {
        bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), presented.trim().as_bytes()))
    });
    if !matches {
        tracing::warn!(event = "console_sign_in_refused", "console sign-in with a wrong token");
        return html(StatusCode::UNAUTHORIZED, page::sign_in(Some("That is not the admin token.")), None);
    }
    let expiry = unix_now() + SESSION_SECONDS;
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/admin/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}",
        session_value(&token, expiry)
    );
    see_other("/admin/console", Some(cookie))
}

fn session_mac(token: &str, expiry: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("rananeeti console session until {expiry}").as_bytes());
    mac
}

/// `EXPIRY.HEX(HMAC-SHA256(token, what EXPIRY means))`.
fn session_value(token: &str, expiry: u64) -> String {
    format!("{expiry}.{}", hex_lower(&session_mac(token, expiry).finalize().into_bytes()))
}

fn session_valid(token: &str, session: &str, now: u64) -> bool {
    let Some((expiry, signature)) = session.split_once('.') else { return false };
    let (Ok(expiry), Some(signature)) = (expiry.parse::<u64>(), hex_decode(signature)) else { return false };
    // A forged far expiry still needs the MAC; a long one from a past configuration is refused.
    expiry > now && expiry <= now + SESSION_SECONDS && session_mac(token, expiry).verify_slice(&signature).is_ok()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok()).collect()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

fn html(status: StatusCode, page: String, cookie: Option<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(page)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Some(value) = cookie.and_then(|cookie| HeaderValue::from_str(&cookie).ok()) {
        headers.insert(SET_COOKIE, value);
    }
    response
}

fn see_other(location: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut response = html(StatusCode::SEE_OTHER, String::new(), cookie);
    response.headers_mut().insert(LOCATION, HeaderValue::from_static(location));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_good_until_it_expires_and_only_for_the_token_that_made_it() {
        let now = 1_000_000;
        let session = session_value("token-a", now + 60);
        assert!(session_valid("token-a", &session, now));
        assert!(!session_valid("token-a", &session, now + 60), "expired");
        assert!(!session_valid("token-b", &session, now), "another token");
        let (_, signature) = session.split_once('.').unwrap();
        assert!(!session_valid("token-a", &format!("{}.{signature}", now + 120), now), "a moved expiry");
        let far = session_value("token-a", now + SESSION_SECONDS + 1);
        assert!(!session_valid("token-a", &far, now), "longer than a session lasts");
        for garbage in ["", ".", "12", "x.y", "99999999999.zz"] {
            assert!(!session_valid("token-a", garbage, now), "{garbage:?}");
        }
    }
}
