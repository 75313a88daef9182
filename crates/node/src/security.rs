//! What every app's edge shares to keep callers apart: the deployment's admin token and the admin's
//! page sessions, the sign-in throttle, whether a request came over TLS (for `Secure` cookies and
//! HSTS), the client's address behind the gateway, whether demo switches are honoured, and the
//! headers every answer carries (`nosniff`, `no-store` unless cached on purpose, HSTS over TLS).

use crate::admin::AdminToken;
use crate::session::{Claims, Lifetime, SessionSigner};
use crate::throttle::SignInThrottle;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use rananeeti_platform::Platform;
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The header the gateway sets to the client's address (what it saw, or what a trusted proxy in
/// front of it said); taken only from a trusted peer.
pub const CLIENT_ADDRESS_HEADER: HeaderName = HeaderName::from_static("x-rananeeti-client");
const FORWARDED_PROTO_HEADER: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// HSTS for two years (the preload list's minimum is one).
const HSTS: &str = "max-age=63072000; includeSubDomains";
/// The cookie of an admin's page session, for every app's pages.
pub const ADMIN_COOKIE: &str = "rn_admin";
/// An admin page session: shorter than a shopper's (ASVS 3.3: re-authenticate within 12 hours).
pub const ADMIN_SESSION_LIFETIME: Lifetime = Lifetime { idle_ms: 30 * 60 * 1000, absolute_ms: 8 * 60 * 60 * 1000 };

/// What the node's configuration says about the edge (`http.*`, `node.demo`).
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Cookies always get `Secure`, and answers HSTS: TLS is in front, whatever the headers say.
    pub cookies_secure: bool,
    /// Peers whose `X-Forwarded-Proto` and client-address header are believed (the gateway).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Demo switches (`X-Rananeeti-Fault`, the cafe's "simulate database failure") are honoured.
    pub demo: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig { cookies_secure: false, trusted_proxies: loopback(), demo: false }
    }
}

/// 127.0.0.0/8 and ::1: where `up`'s gateway calls from.
pub fn loopback() -> Vec<ipnet::IpNet> {
    vec!["127.0.0.0/8".parse().expect("a network"), "::1/128".parse().expect("a network")]
}

/// Shared by every app of a node; cheap to clone.
#[derive(Clone)]
pub struct Security {
    pub admin_token: AdminToken,
    pub sign_ins: Arc<SignInThrottle>,
    pub config: Arc<EdgeConfig>,
    admin_signer: SessionSigner,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Security {
    pub fn new(admin_token: AdminToken, config: EdgeConfig) -> Security {
        let admin_signer = SessionSigner::new(
            &derive_key(admin_token.expose().as_bytes(), b"rananeeti admin session key v1"),
            "adm1",
            ADMIN_SESSION_LIFETIME,
        );
        Security { admin_token, sign_ins: Arc::new(SignInThrottle::new()), config: Arc::new(config), admin_signer }
    }

    /// A key for `purpose` derived from the admin token (the secret every node of a deployment
    /// shares): HMAC-SHA256(token, purpose). Keys for different purposes are unrelated.
    pub fn derived_key(&self, purpose: &[u8]) -> [u8; 32] {
        derive_key(self.admin_token.expose().as_bytes(), purpose)
    }

    /// Whether a sign-in form's token is the admin token (constant time).
    pub fn is_admin_token(&self, presented: &str) -> bool {
        self.admin_token.matches(presented.trim())
    }

    /// A new admin page session: its claims and the cookie value (never the admin token itself).
    pub fn issue_admin_session(&self) -> (Claims, String) {
        self.admin_signer.issue(&["admin"])
    }

    /// The admin session a cookie value stands for: signed, within its timeouts, not signed out.
    pub async fn admin_session(&self, platform: &Platform, cookie: &str) -> Option<Claims> {
        self.admin_signer.check(platform, cookie).await
    }

    pub fn renew_admin_session(&self, claims: &Claims) -> String {
        self.admin_signer.renew(claims)
    }

    pub async fn end_admin_session(&self, platform: &Platform, claims: &Claims) {
        if let Err(error) = self.admin_signer.revoke(platform, claims).await {
            tracing::warn!(%error, "admin sign-out could not be recorded; the session ends by its timeouts");
        }
    }

    /// Whether the request reached us over TLS: `http.cookies_secure`, or a trusted proxy's
    /// `X-Forwarded-Proto: https`.
    pub fn is_https(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
        self.config.cookies_secure
            || (self.trusts(peer)
                && headers
                    .get(FORWARDED_PROTO_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")))
    }

    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|peer| self.config.trusted_proxies.iter().any(|network| network.contains(&peer)))
    }

    /// The client's address: what a trusted proxy (the gateway) says it is, else the peer's.
    pub fn client_address(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        if self.trusts(peer) {
            let said = headers
                .get(CLIENT_ADDRESS_HEADER)
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.trim().parse::<IpAddr>().ok());
            if said.is_some() {
                return said;
            }
        }
        peer
    }
}

/// The client's address (`Security::client_address`), for throttling; `None` when the request
/// came without one (in-process tests).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = peer_of(&parts.extensions);
        Ok(ClientAddress(match parts.extensions.get::<Security>() {
            Some(security) => security.client_address(&parts.headers, peer),
            None => peer,
        }))
    }
}

/// The peer address of a request (set by `serve`'s connect info), when there is one.
pub fn peer_of(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(address)| address.ip())
}

fn derive_key(secret: &[u8], purpose: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

/// The headers every answer of the node carries: never sniffed; not stored by caches unless the
/// route said how to cache it (static files, covers); HSTS when the request came over TLS.
pub async fn answer_headers(
    axum::extract::State(security): axum::extract::State<Security>,
    request: Request,
    next: Next,
) -> Response {
    let https = security.is_https(request.headers(), peer_of(request.extensions()));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let security = Security::new(AdminToken::new("0123456789abcdef"), EdgeConfig::default());
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED_PROTO_HEADER, HeaderValue::from_static("https"));
        headers.insert(CLIENT_ADDRESS_HEADER, HeaderValue::from_static("203.0.113.7"));
        let gateway: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(security.is_https(&headers, Some(gateway)));
        assert!(!security.is_https(&headers, Some(stranger)));
        assert_eq!(security.client_address(&headers, Some(gateway)), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(security.client_address(&headers, Some(stranger)), Some(stranger));
        let forced = Security::new(
            AdminToken::new("0123456789abcdef"),
            EdgeConfig { cookies_secure: true, ..EdgeConfig::default() },
        );
        assert!(forced.is_https(&HeaderMap::new(), None));
    }
}
