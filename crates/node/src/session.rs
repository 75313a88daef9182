//! Sessions as signed tokens: an id of their own, who they are for, when they began and when they
//! were last used, under an HMAC-SHA256 of the deployment's key. A session ends when it has been
//! idle for `idle_ms`, `absolute_ms` after it began whatever its use (ASVS 3.3), or when it is
//! signed out: its id is then revoked through the platform (`Platform::revoke_session`), which
//! every node of every region consults.
//!
//! Token: `VERSION.SESSION_ID.FIELD....ISSUED_MS.ACTIVE_MS.SIGNATURE`; fields hold no `.`.

use hmac::{Hmac, Mac};
use rananeeti_platform::hlc::wall_clock_ms;
use rananeeti_platform::Platform;
use sha2::Sha256;
use std::sync::Arc;

/// ASVS 3.3.2 (level 2): a session lasts at most 12 hours, and 30 minutes without use.
pub const ABSOLUTE_LIFETIME_MS: u64 = 12 * 60 * 60 * 1000;
pub const IDLE_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// A session used this long after its last renewal gets a renewed token (pages renew their
/// cookie; API clients call their refresh endpoint).
pub const RENEW_AFTER_MS: u64 = 60 * 1000;
/// Random bytes in a session id (hex in the token).
const SESSION_ID_BYTES: usize = 16;

#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub idle_ms: u64,
    pub absolute_ms: u64,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime { idle_ms: IDLE_TIMEOUT_MS, absolute_ms: ABSOLUTE_LIFETIME_MS }
    }
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub session_id: String,
    pub fields: Vec<String>,
    pub issued_at_ms: u64,
    pub active_at_ms: u64,
}

impl Claims {
    /// When the session ends by itself, used or not.
    pub fn expires_at_ms(&self, lifetime: Lifetime) -> u64 {
        self.issued_at_ms + lifetime.absolute_ms
    }

    /// Whether a renewed token should be handed out now.
    pub fn due_for_renewal(&self) -> bool {
        wall_clock_ms().saturating_sub(self.active_at_ms) >= RENEW_AFTER_MS
    }
}

/// Issues and verifies one kind of session token. The key never leaves it (no `Debug` of it).
#[derive(Clone)]
pub struct SessionSigner {
    key: Arc<[u8]>,
    version: &'static str,
    lifetime: Lifetime,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSigner({}, <key redacted>)", self.version)
    }
}

impl SessionSigner {
    /// `version` names the kind of token (`bs2` for shoppers, `adm1` for admins): a token of one
    /// kind never verifies as another, even under the same key.
    pub fn new(key: &[u8], version: &'static str, lifetime: Lifetime) -> SessionSigner {
        assert!(key.len() >= 16, "a session key has at least 16 bytes");
        assert!(!version.contains('.') && !version.is_empty(), "a token version is one word");
        SessionSigner { key: Arc::from(key), version, lifetime }
    }

    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    fn sign(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn encode(&self, claims: &Claims) -> String {
        for field in &claims.fields {
            assert!(!field.contains('.') && !field.is_empty(), "session token fields are non-empty and hold no '.'");
        }
        let mut text = format!("{}.{}", self.version, claims.session_id);
        for field in &claims.fields {
            text.push('.');
            text.push_str(field);
        }
        text.push_str(&format!(".{}.{}", claims.issued_at_ms, claims.active_at_ms));
        let signature = self.sign(&text);
        format!("{text}.{signature}")
    }

    /// A new session for `fields`.
    pub fn issue(&self, fields: &[&str]) -> (Claims, String) {
        let now = wall_clock_ms();
        let claims = Claims {
            session_id: hex::encode(rand::random::<[u8; SESSION_ID_BYTES]>()),
            fields: fields.iter().map(|field| field.to_string()).collect(),
            issued_at_ms: now,
            active_at_ms: now,
        };
        let token = self.encode(&claims);
        (claims, token)
    }

    /// The same session, marked used now (its absolute end does not move).
    pub fn renew(&self, claims: &Claims) -> String {
        let renewed = Claims { active_at_ms: wall_clock_ms(), ..claims.clone() };
        self.encode(&renewed)
    }

    /// The claims of a token whose signature holds and which has neither been idle too long nor
    /// outlived its absolute lifetime. Revocation is checked separately (`check`), as it needs
    /// the store.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let (text, signature) = token.rsplit_once('.')?;
        let expected = self.sign(text);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.as_bytes())) {
            return None;
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() < 4 || parts[0] != self.version {
            return None;
        }
        let issued_at_ms = parts[parts.len() - 2].parse::<u64>().ok()?;
        let active_at_ms = parts[parts.len() - 1].parse::<u64>().ok()?;
        let now = wall_clock_ms();
        let alive = now < issued_at_ms.saturating_add(self.lifetime.absolute_ms)
            && now < active_at_ms.saturating_add(self.lifetime.idle_ms)
            && active_at_ms >= issued_at_ms;
        if !alive {
            return None;
        }
        Some(Claims {
            session_id: parts[1].to_string(),
            fields: parts[2..parts.len() - 2].iter().map(|field| field.to_string()).collect(),
            issued_at_ms,
            active_at_ms,
        })
    }

    /// `verify`, then the revocation list: `None` for a session signed out anywhere. When the
    /// list cannot be read (this region's database and its fallbacks all failing), the session
    /// is taken as it verifies: it still ends by its timeouts.
    pub async fn check(&self, platform: &Platform, token: &str) -> Option<Claims> {
        let claims = self.verify(token)?;
        match platform.session_revoked(&claims.session_id).await {
            Ok(true) => None,
            Ok(false) => Some(claims),
            Err(error) => {
                tracing::warn!(%error, "revoked sessions could not be read; taking a valid token as it is");
                Some(claims)
            }
        }
    }

    /// Ends the session everywhere (a write through the platform: committed or queued).
    pub async fn revoke(&self, platform: &Platform, claims: &Claims) -> Result<(), rananeeti_platform::SubmitError> {
        platform.revoke_session(&claims.session_id, claims.expires_at_ms(self.lifetime)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_refuse_tampering_other_kinds_and_expiry() {
        let signer = SessionSigner::new(b"0123456789abcdef0123456789abcdef", "t1", Lifetime::default());
        let (claims, token) = signer.issue(&["u1", "r2"]);
        assert_eq!(signer.verify(&token), Some(claims.clone()));
        assert_eq!(claims.fields, ["u1", "r2"]);
        assert_eq!(signer.verify(&token.replacen("r2", "r1", 1)), None, "tampered");
        let other_kind = SessionSigner::new(b"0123456789abcdef0123456789abcdef", "t2", Lifetime::default());
        assert_eq!(other_kind.verify(&token), None, "another kind of token");

        let idle =
            SessionSigner::new(b"0123456789abcdef0123456789abcdef", "t1", Lifetime { idle_ms: 0, absolute_ms: 60_000 });
        assert_eq!(idle.verify(&token), None, "idle for longer than the idle timeout");
        let old = Claims { issued_at_ms: 1, active_at_ms: wall_clock_ms(), ..claims.clone() };
        assert_eq!(signer.verify(&signer.encode(&old)), None, "past its absolute lifetime");
        let renewed = signer.verify(&signer.renew(&claims)).unwrap();
        assert_eq!((renewed.session_id, renewed.issued_at_ms), (claims.session_id, claims.issued_at_ms));
    }
}
