//! Circuit breaker: after consecutive store failures, stop trying the store for a while so a dead
//! database is not hammered and writes go straight to the queue.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before letting one probe through.
    pub open_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The gauge value exported as `rananeeti_store_breaker_state`.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    /// When the half-open probe was let through. A probe whose outcome is never recorded (its
    /// future dropped, its caller gave up) expires after `open_ms`, so the breaker cannot stick.
    probe_started_at: Option<Instant>,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// What `record_failure` changed, so the caller can act once per opening (rebuild the pool).
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    /// It was open or half-open, and a success closed it.
    Closed,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        assert!(config.failures_to_open > 0, "failures_to_open must be positive");
        CircuitBreaker {
            config,
            inner: Mutex::new(Inner { consecutive_failures: 0, opened_at: None, probe_started_at: None }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(opened) if opened.elapsed() < Duration::from_millis(self.config.open_ms) => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a store attempt may go ahead now. In half-open state one probe goes at a time.
    pub fn allow(&self) -> bool {
        let open_for = Duration::from_millis(self.config.open_ms);
        let mut inner = self.lock();
        match inner.opened_at {
            None => true,
            Some(opened) if opened.elapsed() < open_for => false,
            Some(_) => match inner.probe_started_at {
                Some(started) if started.elapsed() < open_for => false,
                _ => {
                    inner.probe_started_at = Some(Instant::now());
                    true
                }
            },
        }
    }

    pub fn record_success(&self) -> Transition {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.probe_started_at = None;
        match inner.opened_at.take() {
            Some(_) => Transition::Closed,
            None => Transition::None,
        }
    }

    pub fn record_failure(&self) -> Transition {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let was_half_open_probe = inner.probe_started_at.take().is_some();
        if was_half_open_probe {
            // The probe failed: stay open for another period.
            inner.opened_at = Some(Instant::now());
            return Transition::None;
        }
        if inner.opened_at.is_none() && inner.consecutive_failures >= self.config.failures_to_open {
            inner.opened_at = Some(Instant::now());
            return Transition::Opened;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once_after_the_open_period() {
        let breaker = CircuitBreaker::new(BreakerConfig { failures_to_open: 2, open_ms: 30 });
        assert!(breaker.allow());
        assert_eq!(breaker.record_failure(), Transition::None);
        assert_eq!(breaker.record_failure(), Transition::Opened);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.allow(), "one probe goes through");
        assert!(!breaker.allow(), "only one probe at a time");
        assert_eq!(breaker.record_success(), Transition::Closed, "the probe's success closes it");
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
        assert_eq!(breaker.record_success(), Transition::None, "closed already: no change to report");
    }

    #[test]
    fn a_probe_whose_outcome_is_never_recorded_expires() {
        let breaker = CircuitBreaker::new(BreakerConfig { failures_to_open: 1, open_ms: 20 });
        breaker.record_failure();
        std::thread::sleep(Duration::from_millis(25));
        assert!(breaker.allow(), "the probe");
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(25));
        assert!(breaker.allow(), "a lost probe must not keep the breaker shut forever");
    }

    #[test]
    fn failed_probe_keeps_it_open() {
        let breaker = CircuitBreaker::new(BreakerConfig { failures_to_open: 1, open_ms: 20 });
        assert_eq!(breaker.record_failure(), Transition::Opened);
        std::thread::sleep(Duration::from_millis(25));
        assert!(breaker.allow());
        assert_eq!(breaker.record_failure(), Transition::None);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
