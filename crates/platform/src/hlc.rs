//! Hybrid logical clock: wall-clock milliseconds with a logical counter, never going backwards.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A timestamp: physical milliseconds in the high 48 bits, a logical counter in the low 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }
}

/// Hands out strictly increasing timestamps on this node and moves forward past remote ones.
#[derive(Debug, Default)]
pub struct HlcClock {
    last: Mutex<u64>,
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

impl HlcClock {
    pub fn now(&self) -> Hlc {
        self.advance(wall_clock_ms() << LOGICAL_BITS)
    }

    /// Moves past a timestamp seen from elsewhere, so later local events order after it.
    pub fn observe(&self, remote: Hlc) -> Hlc {
        self.advance(remote.0.max(wall_clock_ms() << LOGICAL_BITS))
    }

    fn advance(&self, candidate: u64) -> Hlc {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = if candidate > *last { candidate } else { *last + 1 };
        assert!(next & LOGICAL_MASK != LOGICAL_MASK || next > *last, "hlc overflow");
        *last = next;
        Hlc(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_and_past_remote() {
        let clock = HlcClock::default();
        let a = clock.now();
        let b = clock.now();
        assert!(b > a);
        let far = Hlc((wall_clock_ms() + 60_000) << LOGICAL_BITS);
        let c = clock.observe(far);
        assert!(c >= far);
        assert!(clock.now() > far);
    }
}
