//! What every app's web pages share: static files compiled into the binary, linked with a digest
//! of their bytes so a cached copy never outlives a new build, and the headers every page carries.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// A static file compiled into the binary.
pub struct Asset {
    pub body: &'static [u8],
    pub content_type: &'static str,
}

const ASSET_CACHE_CONTROL: &str = "public, max-age=86400";

/// FNV-1a over the assets' bytes: pages link the files with `?v=` of it (`asset_version`).
pub const fn assets_digest(assets: &[&Asset]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut asset = 0;
    while asset < assets.len() {
        let bytes = assets[asset].body;
        let mut index = 0;
        while index < bytes.len() {
            hash ^= bytes[index] as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            index += 1;
        }
        asset += 1;
    }
    hash
}

/// The `?v=` templates append to static URLs.
pub fn asset_version(digest: u64) -> String {
    format!("{digest:016x}")
}

/// A static file's response: cached for a day (its URL changes with its bytes), never sniffed.
pub fn asset_response(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, ASSET_CACHE_CONTROL),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.body,
    )
        .into_response()
}

/// A new key for one rendering of a write form (its hidden `idempotency_key` field): sending the
/// form twice is one write (`crate::idempotency`). Random, so no other caller can guess it.
pub fn form_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Only this origin's scripts, styles, forms and fetches; never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every page carries. Pages hold people's names, carts and orders, so caches never
/// store them.
pub fn page_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_any_byte_of_any_asset() {
        const A: Asset = Asset { body: b"body { color: red }", content_type: "text/css" };
        const B: Asset = Asset { body: b"body { color: rod }", content_type: "text/css" };
        assert_ne!(assets_digest(&[&A]), assets_digest(&[&B]));
        assert_ne!(assets_digest(&[&A, &B]), assets_digest(&[&A]));
        assert_eq!(asset_version(assets_digest(&[&A])).len(), 16);
    }
}
