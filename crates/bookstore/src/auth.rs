//! Accounts: argon2id password hashes (made at the edge: apply is deterministic) and signed,
//! expiring bearer tokens (HMAC-SHA256 with the deployment's session key), the same for the API
//! and, in a cookie, for the pages.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use rananeeti_platform::hlc::wall_clock_ms;
use sha2::Sha256;

pub const PASSWORD_CHARS_MIN: usize = 8;
pub const PASSWORD_CHARS_MAX: usize = 128;
pub const EMAIL_CHARS_MAX: usize = 254;
/// How long a token is good for.
pub const TOKEN_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;

/// A signed-in user, as a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub home_region: String,
}

/// The key tokens are signed with. Never logged.
#[derive(Clone)]
pub struct SessionKey(std::sync::Arc<[u8]>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    pub fn new(key: &[u8]) -> SessionKey {
        assert!(key.len() >= 16, "a session key has at least 16 bytes");
        SessionKey(std::sync::Arc::from(key))
    }

    /// A key of this process only (tokens then work on this node alone).
    pub fn random() -> SessionKey {
        SessionKey::new(&rand::random::<[u8; 32]>())
    }

    fn sign(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn issue(&self, session: &Session) -> String {
        let text = format!("v1.{}.{}.{}", session.user_id, session.home_region, wall_clock_ms() + TOKEN_LIFETIME_MS);
        let signature = self.sign(&text);
        format!("{text}.{signature}")
    }

    /// The session a token stands for, when its signature holds and it has not expired.
    pub fn verify(&self, token: &str) -> Option<Session> {
        let (text, signature) = token.rsplit_once('.')?;
        let expected = self.sign(text);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.as_bytes())) {
            return None;
        }
        let mut parts = text.split('.');
        let (version, user_id, home_region, expires) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" || parts.next().is_some() || expires.parse::<u64>().ok()? < wall_clock_ms() {
            return None;
        }
        Some(Session { user_id: user_id.to_string(), home_region: home_region.to_string() })
    }
}

/// Checks an email's shape (one @, a dot in the domain, no spaces) and lowercases it.
pub fn parse_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("enter your email address");
    }
    if email.len() > EMAIL_CHARS_MAX {
        return Err("an email address has at most 254 characters");
    }
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
                && !domain.contains('@')
        }
        None => false,
    };
    if valid {
        Ok(email)
    } else {
        Err("an email address looks like name@example.com")
    }
}

pub fn check_password(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < PASSWORD_CHARS_MIN {
        return Err(format!("at least {PASSWORD_CHARS_MIN} characters"));
    }
    if chars > PASSWORD_CHARS_MAX {
        return Err(format!("at most {PASSWORD_CHARS_MAX} characters"));
    }
    Ok(())
}

/// argon2id with the crate's default (OWASP) parameters, as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes any password").to_string()
}

pub fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Password hashing runs here, off the request threads, at most this many at once: argon2 is
/// deliberately slow, and on the async workers it would starve the node's health checks.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn off_the_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let _permit = HASHING.acquire().await.expect("the hashing semaphore is never closed");
    tokio::task::spawn_blocking(work).await.expect("password hashing does not panic")
}

/// `hash_password` on the blocking pool.
pub async fn hash_password_async(password: &str) -> String {
    let password = password.to_string();
    off_the_workers(move || hash_password(&password)).await
}

/// `password_matches` on the blocking pool.
pub async fn password_matches_async(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    off_the_workers(move || password_matches(&password, &hash)).await
}

/// A user's id: a digest of their email (the same in every region, before any region knows it).
pub fn user_id(email: &str) -> String {
    rananeeti_platform::CommandId::digest("bookstore.user", email.as_bytes()).to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_refuse_tampering() {
        let key = SessionKey::new(b"0123456789abcdef0123456789abcdef");
        let session = Session { user_id: "u1".into(), home_region: "r2".into() };
        let token = key.issue(&session);
        assert_eq!(key.verify(&token), Some(session));
        let tampered = token.replacen("r2", "r1", 1);
        assert_eq!(key.verify(&tampered), None);
        assert_eq!(SessionKey::random().verify(&token), None, "another key");
        assert_eq!(key.verify("v1.u1.r2.1.abc"), None);
    }

    #[test]
    fn emails_and_passwords_are_checked() {
        assert_eq!(parse_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@example.com", "ann@example", "a b@example.com", "ann@@example.com"] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"));
        assert!(password_matches("correct horse", &hash));
        assert!(!password_matches("wrong horse", &hash));
    }
}
