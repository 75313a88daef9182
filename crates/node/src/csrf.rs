//! CSRF tokens for page forms (double-submit, signed): a visitor gets a random cookie, and every
//! form carries an HMAC of it (and of whatever else the token is bound to, such as the session
//! cookie). A POST is taken only when its token matches its cookie and the browser does not say
//! it comes from another site (`Sec-Fetch-Site: cross-site`).

use axum::http::{HeaderMap, HeaderName};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// Bytes of randomness in a visitor's CSRF cookie (hex in the cookie).
pub const COOKIE_BYTES: usize = 32;
/// The cookie lasts a week; a form older than that is sent again.
pub const COOKIE_MAX_AGE_SECONDS: u64 = 7 * 24 * 60 * 60;
const FETCH_SITE_HEADER: HeaderName = HeaderName::from_static("sec-fetch-site");

#[derive(Clone)]
pub struct CsrfKey(Arc<[u8; 32]>);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(<redacted>)")
    }
}

impl CsrfKey {
    pub fn new(key: [u8; 32]) -> CsrfKey {
        CsrfKey(Arc::new(key))
    }

    /// The token of a form, bound to the visitor's cookie and to each of `bound_to`.
    pub fn token(&self, cookie: &str, bound_to: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_slice()).expect("HMAC takes any key length");
        for part in std::iter::once(cookie).chain(bound_to.iter().copied()) {
            mac.update(part.as_bytes());
            mac.update(b"\x1f");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `presented` is the token for this cookie and binding (constant time).
    pub fn matches(&self, cookie: &str, bound_to: &[&str], presented: &str) -> bool {
        let expected = self.token(cookie, bound_to);
        bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), presented.trim().as_bytes()))
    }
}

/// A fresh cookie value.
pub fn new_cookie_value() -> String {
    hex::encode(rand::random::<[u8; COOKIE_BYTES]>())
}

/// Whether a cookie value is one of ours (the right length, hex).
pub fn is_cookie_value(value: &str) -> bool {
    value.len() == COOKIE_BYTES * 2 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The browser says the request was made by another site's page.
pub fn is_cross_site(headers: &HeaderMap) -> bool {
    headers
        .get(FETCH_SITE_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|site| site.trim().eq_ignore_ascii_case("cross-site"))
}

/// The first cookie of that name in a request (the browser sends the longest path first).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| found.trim() == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_its_cookie_and_binding() {
        let key = CsrfKey::new([7; 32]);
        let cookie = new_cookie_value();
        assert!(is_cookie_value(&cookie));
        let token = key.token(&cookie, &["session"]);
        assert!(key.matches(&cookie, &["session"], &token));
        assert!(!key.matches(&cookie, &["another session"], &token));
        assert!(!key.matches(&new_cookie_value(), &["session"], &token));
        assert!(!CsrfKey::new([8; 32]).matches(&cookie, &["session"], &token));
    }
}
