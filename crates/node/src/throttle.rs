//! Sign-in throttling (ASVS 2.2.1): failed sign-ins are counted per account and per client
//! address; past a free allowance each further failure doubles a lock-out (from one second up to
//! `LOCKOUT_MS_MAX`), during which sign-ins for that account, or from that address, are answered
//! 429 without checking the password; trying during a lock-out starts it again, so guessing at
//! full speed never gets a turn. A success clears the account's count. Every sign-in form
//! and endpoint (the shoppers' API and pages, the admin's) goes through one `SignInThrottle`.
//!
//! Counts live in the node's memory: with several nodes behind the gateway an attacker gets each
//! node's allowance, and the lock-outs still double on each node. Both maps are bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an account may have before each further one locks it out.
pub const ACCOUNT_FAILURES_FREE: u32 = 5;
/// Failures an address may have (many people can share one) before it is locked out.
pub const ADDRESS_FAILURES_FREE: u32 = 20;
/// The first lock-out; each further failure doubles it.
const LOCKOUT_MS_FIRST: u64 = 1000;
/// The longest lock-out.
const LOCKOUT_MS_MAX: u64 = 15 * 60 * 1000;
/// A count is forgotten this long after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Accounts and addresses tracked at once; past it, the stalest entries are dropped.
const ENTRIES_MAX: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
    /// The current lock-out's length (restarted by an attempt during it).
    lockout: Duration,
}

/// Why a sign-in is not even tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockedOut {
    pub retry_after_seconds: u64,
}

#[derive(Default)]
pub struct SignInThrottle {
    accounts: Mutex<HashMap<String, Failures>>,
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

impl std::fmt::Debug for SignInThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInThrottle")
    }
}

impl SignInThrottle {
    pub fn new() -> SignInThrottle {
        SignInThrottle::default()
    }

    /// `Err` while the account or the address is locked out.
    pub fn check(&self, account: &str, address: Option<IpAddr>) -> Result<(), LockedOut> {
        let now = Instant::now();
        let mut wait =
            locked_for(&mut self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), account, now);
        if let Some(address) = address {
            let mut addresses = self.addresses.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            wait = wait.max(locked_for(&mut addresses, &address, now));
        }
        match wait {
            Some(wait) => Err(LockedOut { retry_after_seconds: wait.as_secs().max(1) }),
            None => Ok(()),
        }
    }

    /// A wrong password (or an unknown account: counted alike, so locking says nothing).
    pub fn failed(&self, account: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        record_failure(
            &mut self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            account.to_string(),
            ACCOUNT_FAILURES_FREE,
            now,
        );
        if let Some(address) = address {
            record_failure(
                &mut self.addresses.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
                address,
                ADDRESS_FAILURES_FREE,
                now,
            );
        }
    }

    /// Also counted against the address only: a probe that learnt something (an email that is
    /// taken, at sign-up).
    pub fn probed(&self, address: Option<IpAddr>) {
        if let Some(address) = address {
            record_failure(
                &mut self.addresses.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
                address,
                ADDRESS_FAILURES_FREE,
                Instant::now(),
            );
        }
    }

    /// The right password: the account's count starts again (the address's does not, so one
    /// account of one's own does not reset a guessing run over others).
    pub fn succeeded(&self, account: &str) {
        self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(account);
    }
}

/// How long `key` is locked out for; an attempt during a lock-out starts it again.
fn locked_for<K: std::hash::Hash + Eq + ?Sized, Q: std::borrow::Borrow<K> + std::hash::Hash + Eq>(
    map: &mut HashMap<Q, Failures>,
    key: &K,
    now: Instant,
) -> Option<Duration> {
    let failures = map.get_mut(key)?;
    failures.locked_until.filter(|until| *until > now)?;
    failures.locked_until = Some(now + failures.lockout);
    Some(failures.lockout)
}

fn record_failure<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Failures>, key: K, free: u32, now: Instant) {
    if map.len() >= ENTRIES_MAX && !map.contains_key(&key) {
        map.retain(|_, failures| now.duration_since(failures.last) < FORGET_AFTER);
        if map.len() >= ENTRIES_MAX {
            // Still full of recent entries: drop the stalest tenth.
            let mut lasts: Vec<Instant> = map.values().map(|failures| failures.last).collect();
            lasts.sort();
            let cutoff = lasts[lasts.len() / 10];
            map.retain(|_, failures| failures.last > cutoff);
        }
    }
    let fresh = Failures { count: 0, last: now, locked_until: None, lockout: Duration::ZERO };
    let failures = map.entry(key).or_insert(fresh);
    if now.duration_since(failures.last) >= FORGET_AFTER {
        *failures = fresh;
    }
    failures.count = failures.count.saturating_add(1);
    failures.last = now;
    if failures.count > free {
        let doublings = (failures.count - free - 1).min(20);
        let lockout_ms = LOCKOUT_MS_FIRST.saturating_mul(1 << doublings).min(LOCKOUT_MS_MAX);
        failures.lockout = Duration::from_millis(lockout_ms);
        failures.locked_until = Some(now + failures.lockout);
    }
    assert!(map.len() <= ENTRIES_MAX, "the throttle's map is bounded");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_locked_out_after_its_free_failures_and_a_success_clears_it() {
        let throttle = SignInThrottle::new();
        let address: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..ACCOUNT_FAILURES_FREE {
            assert!(throttle.check("ann", Some(address)).is_ok());
            throttle.failed("ann", Some(address));
        }
        assert!(throttle.check("ann", Some(address)).is_ok(), "the free failures do not lock");
        throttle.failed("ann", Some(address));
        assert!(throttle.check("ann", Some(address)).is_err(), "the next one does");
        assert_eq!(throttle.check("ann", None), Err(LockedOut { retry_after_seconds: 1 }), "trying again restarts it");
        assert!(throttle.check("bob", Some(address)).is_ok(), "another account from the same address is not");
        throttle.succeeded("ann");
        assert!(throttle.check("ann", None).is_ok());
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_out() {
        let throttle = SignInThrottle::new();
        let address: IpAddr = "127.0.0.9".parse().unwrap();
        for account in 0..=ADDRESS_FAILURES_FREE {
            throttle.failed(&format!("user{account}"), Some(address));
        }
        assert!(throttle.check("someone-new", Some(address)).is_err());
        assert!(throttle.check("someone-new", Some("127.0.0.10".parse().unwrap())).is_ok());
    }

    #[test]
    fn lockouts_double_up_to_the_maximum() {
        let mut map = HashMap::new();
        let now = Instant::now();
        for _ in 0..(ACCOUNT_FAILURES_FREE + 3) {
            record_failure(&mut map, "ann", ACCOUNT_FAILURES_FREE, now);
        }
        assert_eq!(map["ann"].locked_until.unwrap() - now, Duration::from_millis(4 * LOCKOUT_MS_FIRST));
        for _ in 0..40 {
            record_failure(&mut map, "ann", ACCOUNT_FAILURES_FREE, now);
        }
        assert_eq!(map["ann"].locked_until.unwrap() - now, Duration::from_millis(LOCKOUT_MS_MAX));
    }
}
