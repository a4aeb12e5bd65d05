//! Whether Redis answers the supervisor's side paths (acknowledgements, live logs,
//! status), so that an outage is reported once when it begins and once when it ends,
//! not by every call that fails meanwhile. Live logs are dropped while Redis is away;
//! acknowledgements wait (crate::serve::acker).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared by the acker and the publisher. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RedisOutage(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// When the current outage began (`None`: Redis answers).
    since: Mutex<Option<Instant>>,
    /// Live log lines dropped during the current outage.
    dropped_logs: AtomicU64,
    /// Outages that ended (Redis answered again), for `/metrics`.
    recoveries: AtomicU64,
}

impl RedisOutage {
    /// A call failed: the first failure of an outage is logged as a warning.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut since = self.since();
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                %error,
                while_ = what,
                "Redis is unreachable: results still commit to PostgreSQL; their \
                 acknowledgements and completions wait in memory and go out when Redis \
                 returns; live log lines are dropped meanwhile (they are still stored)"
            );
        } else {
            tracing::debug!(%error, while_ = what, "Redis still unreachable");
        }
    }

    /// A call succeeded: ends the outage, if there was one.
    pub fn reached(&self) {
        let began = self.since().take();
        if let Some(began) = began {
            self.0.recoveries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                after = ?began.elapsed(),
                dropped_live_log_lines = self.0.dropped_logs.swap(0, Ordering::Relaxed),
                "Redis is reachable again; sending the acknowledgements that waited"
            );
        }
    }

    /// Outages that ended so far.
    pub fn recoveries(&self) -> u64 {
        self.0.recoveries.load(Ordering::Relaxed)
    }

    pub fn is_away(&self) -> bool {
        self.since().is_some()
    }

    /// Counts live log lines dropped because Redis is away.
    pub fn dropped_logs(&self, n: u64) {
        self.0.dropped_logs.fetch_add(n, Ordering::Relaxed);
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.since.lock().unwrap_or_else(|p| p.into_inner())
    }
}
