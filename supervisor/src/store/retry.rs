//! What to do while the database is away: wait and try again, doubling the wait.
//!
//! [`Backoff`] is the schedule (50 ms, 100 ms, ... capped at 5 s by default, with a
//! little jitter so several supervisors do not reconnect in lock-step).
//! [`retry_with_backoff`] applies it to one piece of work, retrying only errors that
//! [`StoreError::is_transient`] says can go away; the group-commit writer uses the same
//! schedule but never gives up.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::store::StoreError;

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

/// Run `work` until it succeeds, retrying transient errors with the default
/// [`Backoff`]. Gives up (returning the last error) on a non-transient error, or once
/// `give_up_after` has passed; `None` retries for as long as it takes.
///
/// ```no_run
/// # async fn f(store: warden::store::Store, rows: Vec<warden::store::NewExecution>) -> Result<(), warden::store::StoreError> {
/// use std::time::Duration;
/// let begun = warden::store::retry_with_backoff("begin batch", Some(Duration::from_secs(60)), || {
///     store.begin_batch(&rows)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn retry_with_backoff<T, F, Fut>(
    what: &str,
    give_up_after: Option<Duration>,
    mut work: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::default();
    loop {
        match work().await {
            Ok(value) => {
                if backoff.attempts() > 0 {
                    tracing::info!(
                        what,
                        attempts = backoff.attempts(),
                        "database work succeeded after retrying"
                    );
                }
                return Ok(value);
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if give_up_after.is_some_and(|limit| started.elapsed() + delay > limit) {
                    tracing::error!(what, error = %e, "database still unavailable; giving up");
                    return Err(e);
                }
                tracing::warn!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
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
