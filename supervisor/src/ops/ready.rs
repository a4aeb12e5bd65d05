//! What `/readyz` answers: whether this supervisor can take and finish work now.
//!
//! Ready means all of: start-up has finished and no shutdown has begun; PostgreSQL
//! answers `SELECT 1` on one of the supervisor's own connections; Redis answers `PING`
//! on the intake's connection; at least one worker template is up. Each service check
//! has [`CHECK_TIMEOUT`]; a check never opens a connection of its own beyond what the
//! pool does to replace a lost one. The verdict itself is [`verdict`], a pure function.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::intake::Intake;
use crate::pool::Pool;
use crate::store::Store;

/// How long each service may take to answer a readiness check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The daemon's lifecycle as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
    Draining,
}

/// The services a readiness check asks.
#[derive(Clone)]
pub struct Checks {
    pub store: Store,
    pub intake: Intake,
    pub pool: Pool,
}

/// Shared between the daemon (which moves the phase) and the HTTP server (which
/// asks). Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    phase: AtomicU8,
    checks: OnceLock<Checks>,
}

impl Readiness {
    /// Start-up is done: from now on the services are checked.
    pub fn serving(&self, checks: Checks) {
        let _ = self.inner.checks.set(checks);
        self.inner.phase.store(1, Ordering::Relaxed);
    }

    /// A shutdown began: not ready from now on.
    pub fn draining(&self) {
        self.inner.phase.store(2, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// `Ok` when ready, or every reason it is not.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let phase = self.phase();
        let Some(c) = self.inner.checks.get().filter(|_| phase == Phase::Serving) else {
            return verdict(phase, Ok(()), Ok(()), 1);
        };
        let postgres = async {
            match tokio::time::timeout(CHECK_TIMEOUT, c.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            }
        };
        let redis = async {
            match tokio::time::timeout(CHECK_TIMEOUT, c.intake.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            }
        };
        let (postgres, redis) = tokio::join!(postgres, redis);
        verdict(phase, postgres, redis, c.pool.stats().ready)
    }
}

/// Ready, or why not (one sentence per reason).
pub fn verdict(
    phase: Phase,
    postgres: Result<(), String>,
    redis: Result<(), String>,
    templates_up: usize,
) -> Result<(), Vec<String>> {
    match phase {
        Phase::Starting => return Err(vec!["starting up".into()]),
        Phase::Draining => return Err(vec!["shutting down (draining)".into()]),
        Phase::Serving => {}
    }
    let mut why = Vec::new();
    if let Err(e) = postgres {
        why.push(format!("PostgreSQL unavailable: {e}"));
    }
    if let Err(e) = redis {
        why.push(format!("Redis unavailable: {e}"));
    }
    if templates_up == 0 {
        why.push("no worker template is up".into());
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_serving_with_every_service_up() {
        assert_eq!(verdict(Phase::Serving, Ok(()), Ok(()), 2), Ok(()));
        assert_eq!(
            verdict(Phase::Starting, Ok(()), Ok(()), 2),
            Err(vec!["starting up".to_string()])
        );
        assert_eq!(
            verdict(Phase::Draining, Ok(()), Ok(()), 2),
            Err(vec!["shutting down (draining)".to_string()])
        );
        assert_eq!(
            verdict(Phase::Serving, Err("down".into()), Err("gone".into()), 0),
            Err(vec![
                "PostgreSQL unavailable: down".to_string(),
                "Redis unavailable: gone".to_string(),
                "no worker template is up".to_string(),
            ])
        );
    }
}
