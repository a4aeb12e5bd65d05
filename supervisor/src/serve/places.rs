//! [`Places`]: the reader's side of the supervisor's places (one per execution it holds,
//! running or queued in the pool: workers + prefetch), with a small overdraft for the
//! fairness probe.
//!
//! A place is given back when its execution's result goes to the writer
//! (crate::serve::daemon), and the reader fills it again at its next read, so under a
//! backlog every place is taken most of the time, by the backlog's lane. A probe (crate::serve::prepare) looks for work of the
//! lanes that have little here — another organization's lone request, a more urgent
//! queue's — and must not wait for a place to come back, or the local queue's backlog
//! starts first. So when no place is free a probe may *overdraw*: take up to `overdraft`
//! places beyond the capacity (the workers: one lane's worth). The debt is paid back
//! from the next places that come back, before the reader reads anything else, and a
//! probe's unused places cancel debt first. The supervisor therefore never holds more
//! than capacity + overdraft entries, and holds at most capacity again once the debt is
//! paid.
//!
//! Plain counting on a tokio semaphore; the accounting is unit-tested below.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Cheap to clone (the semaphore and the debt are shared).
#[derive(Clone)]
pub struct Places {
    /// One permit per free place. Whoever ends an execution adds its permit back.
    pub permits: Arc<Semaphore>,
    capacity: usize,
    overdraft: usize,
    /// Places taken beyond the capacity and not yet paid back.
    overdrawn: Arc<AtomicUsize>,
}

/// Places the reader took for one read: `n` in all, of which `overdrawn` beyond the
/// capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub n: usize,
    pub overdrawn: usize,
}

impl Places {
    pub fn new(capacity: usize, overdraft: usize) -> Places {
        Places {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            overdraft,
            overdrawn: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free places, debt deducted (at stop, with nothing running: the capacity).
    pub fn free(&self) -> usize {
        self.permits
            .available_permits()
            .saturating_sub(self.overdrawn.load(Ordering::Relaxed))
    }

    /// Takes up to `max` free places without waiting; 0 when none is free.
    fn take_free(&self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Ok(p) = self.permits.try_acquire() else {
                break;
            };
            p.forget();
            n += 1;
        }
        n
    }

    /// For a probe: up to `max` free places, or when none is free, what is left of the
    /// overdraft (up to `max`).
    pub fn for_probe(&self, max: usize) -> Taken {
        let n = self.take_free(max);
        if n > 0 {
            return Taken { n, overdrawn: 0 };
        }
        let owed = self.overdrawn.load(Ordering::Relaxed);
        let n = self.overdraft.saturating_sub(owed).min(max);
        self.overdrawn.fetch_add(n, Ordering::Relaxed);
        Taken { n, overdrawn: n }
    }

    /// Waits for one free place, then takes every free one; the debt is paid from them
    /// first, so the result may be `n == 0` (wait again).
    pub async fn for_read(&self) -> Option<Taken> {
        let first = self.permits.acquire().await.ok()?;
        first.forget();
        let n = 1 + self.take_free(usize::MAX);
        Some(self.pay_back(n))
    }

    /// Keeps of `n` freshly taken places what is owed; returns the rest.
    fn pay_back(&self, n: usize) -> Taken {
        let owed = self.overdrawn.load(Ordering::Relaxed);
        let paid = owed.min(n);
        self.overdrawn.fetch_sub(paid, Ordering::Relaxed);
        Taken {
            n: n - paid,
            overdrawn: 0,
        }
    }

    /// Gives back `unused` of the places of `taken`: overdrawn ones cancel their debt,
    /// the others become free again.
    pub fn give_back(&self, taken: Taken, unused: usize) {
        let unused = unused.min(taken.n);
        let cancelled = unused.min(taken.overdrawn);
        self.overdrawn.fetch_sub(cancelled, Ordering::Relaxed);
        self.permits.add_permits(unused - cancelled);
    }

    /// Whether every place is taken (a probe would overdraw).
    pub fn all_taken(&self) -> bool {
        self.permits.available_permits() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_takes_free_places_first_and_overdraws_only_when_none_is_free() {
        let p = Places::new(4, 2);
        assert_eq!(p.for_probe(3), Taken { n: 3, overdrawn: 0 });
        assert_eq!(p.for_probe(3), Taken { n: 1, overdrawn: 0 });
        assert_eq!(p.for_probe(3), Taken { n: 2, overdrawn: 2 });
        // The overdraft is spent: nothing more until it is paid back.
        assert_eq!(p.for_probe(3), Taken { n: 0, overdrawn: 0 });
        assert_eq!(p.free(), 0);
    }

    #[tokio::test]
    async fn the_debt_is_paid_from_the_next_places_that_come_back() {
        let p = Places::new(4, 2);
        let all = p.for_read().await.unwrap();
        assert_eq!(all, Taken { n: 4, overdrawn: 0 });
        assert_eq!(p.for_probe(5), Taken { n: 2, overdrawn: 2 });
        // Three executions end: two places pay the debt, one is read with.
        p.permits.add_permits(3);
        assert_eq!(p.for_read().await.unwrap(), Taken { n: 1, overdrawn: 0 });
        // Everything ends: back to the capacity, no debt.
        p.permits.add_permits(4 + 2 - 3 + 1);
        assert_eq!(p.free(), 4);
        assert_eq!(p.for_probe(9), Taken { n: 4, overdrawn: 0 });
    }

    #[test]
    fn a_probes_unused_places_cancel_its_debt_first() {
        let p = Places::new(2, 2);
        let read = p.for_probe(2);
        assert_eq!(read.overdrawn, 0);
        let probe = p.for_probe(2);
        assert_eq!(probe, Taken { n: 2, overdrawn: 2 });
        // The probe found one entry: one overdrawn place cancelled, one still owed.
        p.give_back(probe, 1);
        assert_eq!(p.permits.available_permits(), 0);
        // The first read's two executions end and the probe's one: two free, one paid.
        p.permits.add_permits(3);
        assert_eq!(p.free(), 2);
        p.give_back(read, 0);
        assert_eq!(p.free(), 2);
    }

    #[test]
    fn free_places_are_given_back_as_permits() {
        let p = Places::new(3, 1);
        let t = p.for_probe(3);
        p.give_back(t, 2);
        assert_eq!(p.free(), 2);
        assert!(!p.all_taken());
    }
}
