//! Accounts: argon2id password hashes (made at the edge: apply is deterministic), checked against
//! a list of common passwords at sign-up, on a bounded hashing queue; and sessions as signed,
//! revocable tokens (`rananeeti_node::session`, HMAC-SHA256 with the deployment's session key),
//! the same for the API and, in a cookie, for the pages.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rananeeti_node::session::{Claims, Lifetime, SessionSigner};
use rananeeti_platform::Platform;

/// ASVS 2.1.1: at least 12 characters; 2.1.2: at most 128 are taken.
pub const PASSWORD_CHARS_MIN: usize = 12;
pub const PASSWORD_CHARS_MAX: usize = 128;
pub const EMAIL_CHARS_MAX: usize = 254;

/// A signed-in user, as a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub home_region: String,
}

/// Signs and checks shoppers' session tokens. Never logged.
#[derive(Clone, Debug)]
pub struct SessionKey(SessionSigner);

impl SessionKey {
    pub fn new(key: &[u8]) -> SessionKey {
        SessionKey(SessionSigner::new(key, "bs2", Lifetime::default()))
    }

    /// A key of this process only (tokens then work on this node alone).
    pub fn random() -> SessionKey {
        SessionKey::new(&rand::random::<[u8; 32]>())
    }

    pub fn lifetime(&self) -> Lifetime {
        self.0.lifetime()
    }

    /// A new session for the user: its claims and its token.
    pub fn issue(&self, session: &Session) -> (Claims, String) {
        self.0.issue(&[&session.user_id, &session.home_region])
    }

    /// The same session, marked used now.
    pub fn renew(&self, claims: &Claims) -> String {
        self.0.renew(claims)
    }

    /// The session a token stands for: signed by us, within its idle and absolute timeouts, and
    /// not signed out (anywhere).
    pub async fn check(&self, platform: &Platform, token: &str) -> Option<(Session, Claims)> {
        let claims = self.0.check(platform, token).await?;
        let session = session_of(&claims)?;
        Some((session, claims))
    }

    /// Signs a session out everywhere.
    pub async fn revoke(&self, platform: &Platform, claims: &Claims) -> Result<(), rananeeti_platform::SubmitError> {
        self.0.revoke(platform, claims).await
    }

    #[cfg(test)]
    fn verify(&self, token: &str) -> Option<Session> {
        self.0.verify(token).as_ref().and_then(session_of)
    }
}

fn session_of(claims: &Claims) -> Option<Session> {
    match claims.fields.as_slice() {
        [user_id, home_region] => Some(Session { user_id: user_id.clone(), home_region: home_region.clone() }),
        _ => None,
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

/// ASVS 2.1.1, 2.1.2 and 2.1.7: 12 to 128 characters, and not one that guessing tries early: not
/// on the common-password lists `zxcvbn` carries (the most common passwords of breached sites,
/// English words and names, keyboard walks, dates, repeats), alone or slightly altered, nor made
/// of the email address. Measured by zxcvbn: fewer than 10^8 guesses (its score below 3) is
/// refused. No other composition rule (2.1.9).
pub fn check_password(password: &str, email: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < PASSWORD_CHARS_MIN {
        return Err(format!("at least {PASSWORD_CHARS_MIN} characters"));
    }
    if chars > PASSWORD_CHARS_MAX {
        return Err(format!("at most {PASSWORD_CHARS_MAX} characters"));
    }
    let local_part = email.split('@').next().unwrap_or_default();
    let estimate = zxcvbn::zxcvbn(password, &[email, local_part, "bookstore", "rananeeti"]);
    if (estimate.score() as u8) < 3 {
        return Err("this password is too common or too easy to guess (it is on a list of common passwords, or \
                    close to one); try a few unrelated words"
            .to_string());
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

/// Password hashing runs here, off the request threads, at most `HASHING_AT_ONCE` at once:
/// argon2 is deliberately slow, and on the async workers it would starve the node's health
/// checks. At most `HASHING_WAITING_MAX` more wait, each at most `HASHING_WAIT_MS`; past either,
/// the request is answered at once (429, retry in a second) instead of queueing behind them.
const HASHING_AT_ONCE: usize = 2;
pub const HASHING_WAITING_MAX: usize = 8;
pub const HASHING_WAIT_MS: u64 = 2000;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHING_AT_ONCE);
static HASHING_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The hashing queue is full, or a turn did not come in time.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is busy; retry shortly")]
pub struct HashingBusy;

async fn off_the_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashingBusy> {
    use std::sync::atomic::Ordering;
    let permit = match HASHING.try_acquire() {
        Ok(permit) => permit,
        Err(_) => {
            let waiting = HASHING_WAITING.fetch_add(1, Ordering::SeqCst) + 1;
            let turn = if waiting > HASHING_WAITING_MAX {
                None
            } else {
                tokio::time::timeout(std::time::Duration::from_millis(HASHING_WAIT_MS), HASHING.acquire()).await.ok()
            };
            HASHING_WAITING.fetch_sub(1, Ordering::SeqCst);
            match turn {
                Some(permit) => permit.expect("the hashing semaphore is never closed"),
                None => return Err(HashingBusy),
            }
        }
    };
    let result = tokio::task::spawn_blocking(work).await.expect("password hashing does not panic");
    drop(permit);
    Ok(result)
}

/// `hash_password` on the blocking pool.
pub async fn hash_password_async(password: &str) -> Result<String, HashingBusy> {
    let password = password.to_string();
    off_the_workers(move || hash_password(&password)).await
}

/// `password_matches` on the blocking pool.
pub async fn password_matches_async(password: &str, hash: &str) -> Result<bool, HashingBusy> {
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
        let (_, token) = key.issue(&session);
        assert_eq!(key.verify(&token), Some(session));
        let tampered = token.replacen("r2", "r1", 1);
        assert_eq!(key.verify(&tampered), None);
        assert_eq!(SessionKey::random().verify(&token), None, "another key");
        assert_eq!(key.verify("bs2.s.u1.r2.1.1.abc"), None);
    }

    #[test]
    fn emails_and_passwords_are_checked() {
        assert_eq!(parse_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@example.com", "ann@example", "a b@example.com", "ann@@example.com"] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
        assert!(check_password("short", "ann@example.com").is_err());
        for common in ["password1234", "123456789012", "qwertyuiopasdf", "iloveyou1234", "annexample12"] {
            assert!(check_password(common, "annexample12@example.com").is_err(), "{common}");
        }
        assert!(check_password("ann@example.com!", "ann@example.com").is_err(), "the email itself");
        assert!(check_password("plum kettle orbit drift", "ann@example.com").is_ok());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"));
        assert!(password_matches("correct horse", &hash));
        assert!(!password_matches("wrong horse", &hash));
    }
}
