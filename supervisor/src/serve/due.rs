//! The due-work poller: every supervisor runs one. About twice a second it fires the
//! cron schedules whose tick is due (crate::store::schedules: one transaction, only
//! when one is due), then takes the
//! executions whose next attempt (`retrying`) or start (`scheduled`) is due, in one
//! statement on a pooled connection ([`Store::claim_due`]: `FOR UPDATE SKIP LOCKED`,
//! and a lease), and puts each back on the intake path as a stream entry that carries
//! the attempt it starts. From there the attempt is read, begun, run, committed and
//! acknowledged like any other entry, by whichever supervisor reads it, with every
//! guarantee of that path (takeover from a dead supervisor, hand-back at shutdown, the
//! attempt fence).
//!
//! Exactly once, through the crash windows (docs/architecture.md, "Retries"):
//! - the failed attempt and the decision to try again are one transaction: a supervisor
//!   that dies after that commit left a `retrying` row any poller takes;
//! - claimed and not yet enqueued (the claimer died, or Redis did not answer): the
//!   lease ([`LEASE`]) runs out and a poller takes the row again;
//! - enqueued twice (the lease ran out while the first entry still waited in the
//!   stream): `begin_batch` begins a waiting row only for the entry carrying the very
//!   attempt it waits for, once; the other entry finds the row running (or at a later
//!   attempt, or ended) and is acknowledged without running.

use std::time::Duration;

use tokio::sync::watch;

use crate::intake::{ExecutionRequest, Intake, WorkflowRef};
use crate::store::due::DueExecution;
use crate::store::Store;

/// How often each supervisor polls by default.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long a claimed row is left alone before another poller may enqueue it again.
pub const LEASE: Duration = Duration::from_secs(10);
/// The most rows one poll takes.
const POLL_LIMIT: i64 = 500;
/// The most schedules one poll fires (in one transaction).
const SCHEDULES_PER_POLL: i64 = 200;

pub struct DuePoller {
    pub store: Store,
    pub intake: Intake,
    pub every: Duration,
    pub lease: Duration,
    pub stop: watch::Receiver<bool>,
}

impl DuePoller {
    /// Polls until stopped; returns how many attempts it enqueued.
    pub async fn run(mut self) -> u64 {
        let mut enqueued = 0;
        let mut tick = tokio::time::interval(self.every.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.wait_for(|s| *s) => return enqueued,
            }
            // A full page means more is due: poll again at once.
            loop {
                match self.poll().await {
                    Ok(n) => {
                        enqueued += n as u64;
                        if n < POLL_LIMIT as usize || *self.stop.borrow() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "due-work poll skipped");
                        break;
                    }
                }
            }
        }
    }

    /// One poll: claims what is due and enqueues it; how many it enqueued.
    pub async fn poll(&self) -> Result<usize, String> {
        // Cron ticks first: they become `scheduled` executions due at once, which the
        // claim below takes in the same poll.
        if self
            .store
            .schedules_due()
            .await
            .map_err(|e| e.to_string())?
        {
            let fired = self
                .store
                .fire_schedules(chrono::Utc::now(), SCHEDULES_PER_POLL)
                .await
                .map_err(|e| e.to_string())?;
            if fired > 0 {
                tracing::debug!(executions = fired, "schedules fired");
            }
        }
        let due = self
            .store
            .claim_due(POLL_LIMIT, self.lease)
            .await
            .map_err(|e| e.to_string())?;
        if due.is_empty() {
            return Ok(0);
        }
        let entries: Vec<ExecutionRequest> = due.iter().map(entry_for).collect();
        // Not enqueued: the lease runs out and a poller (this one, likely) takes the
        // rows again.
        self.intake
            .enqueue(&entries)
            .await
            .map_err(|e| e.to_string())?;
        for d in &due {
            tracing::info!(execution = %d.id, attempt = d.attempt, "due attempt enqueued");
        }
        Ok(due.len())
    }
}

/// The stream entry that starts a due attempt: the workflow by id (by name within its
/// organization if it was deleted since), the stored params, caller and the request's
/// own deadline and retries, and the attempt the row waits for.
pub fn entry_for(d: &DueExecution) -> ExecutionRequest {
    let workflow = match (d.workflow_id, &d.workflow_name) {
        (Some(id), _) => WorkflowRef::Id(id),
        (None, Some(name)) => WorkflowRef::Name(name.clone()),
        (None, None) => WorkflowRef::Name("(deleted workflow)".into()),
    };
    let mut r = ExecutionRequest::new(d.id.clone(), workflow);
    r.params_json = d.params.clone().unwrap_or_else(|| "{}".into());
    r.org = d.org.clone();
    r.caller = d.caller.clone();
    r.timeout = d
        .requested_timeout_ms
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64));
    r.retries = d.requested_retries.and_then(|n| u32::try_from(n).ok());
    r.attempt = Some(d.attempt);
    r.queue = d.queue.clone();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_entry_carries_the_attempt_and_what_the_request_asked_for() {
        let d = DueExecution {
            id: "e1".into(),
            attempt: 3,
            workflow_id: Some(7),
            workflow_name: Some("flaky".into()),
            org: Some("acme".into()),
            params: Some(r#"{"x": 1}"#.into()),
            caller: Some("ops".into()),
            requested_timeout_ms: Some(1_500),
            requested_retries: Some(4),
            queue: Some("critical".into()),
        };
        let r = entry_for(&d);
        assert_eq!(r.queue.as_deref(), Some("critical"));
        assert_eq!(r.attempt, Some(3));
        assert_eq!(r.workflow, WorkflowRef::Id(7));
        assert_eq!(r.timeout, Some(Duration::from_millis(1_500)));
        assert_eq!(r.retries, Some(4));
        assert_eq!(r.not_before, None, "a due entry runs now");
        let back = crate::intake::request::parse("1-0", r.to_fields()).unwrap();
        assert_eq!(back, r);
    }
}
