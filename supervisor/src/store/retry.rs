//! What to do while the database is away: wait and try again, doubling the wait.
//!
//! [`Backoff`] is the schedule (50 ms, 100 ms, ... capped at 5 s by default, with a
//! little jitter so several supervisors do not reconnect in lock-step).
//! The stages that must not give up while the database (or Redis) is away wait on it
//! between attempts: batch preparation, the acker, the hand-back and the module sync.

use std::time::{Duration, Instant};

/// An exponential back-off schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    /// Start at `initial`, double each time, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt (with up to 10% jitter), advancing the
    /// schedule.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        base + jitter(base / 10)
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
        self.attempts = 0;
    }
}

impl Default for Backoff {
    /// 50 ms doubling to 5 s.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// A pseudo-random duration in `[0, max]`; good enough to spread reconnects.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(h.finish() % (nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        let bases = [50, 100, 200, 300, 300, 300];
        for (d, base) in delays.iter().zip(bases) {
            assert!(*d >= base && *d <= base + base / 10, "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(56));
    }
}
