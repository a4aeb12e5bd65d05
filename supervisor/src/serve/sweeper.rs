//! The sweeper: ends executions that a dead supervisor left `pending`/`running` and
//! that nothing can run again, as `crashed` / `SupervisorLost`, and publishes their
//! completion (so `submit --wait` callers learn the end).
//!
//! A dead supervisor's pending entries are normally taken over by a peer and run
//! again (crate::intake::liveness). That needs the entry: when Redis lost its data
//! (restarted without persistence, flushed) or the entry was trimmed, the row would
//! stay `running` forever, and a resubmission of its id would be refused as a
//! duplicate. Every few seconds ([`SWEEP_EVERY`]) each supervisor:
//!
//! 1. reads the unfinished rows of *other* supervisors begun more than twice the
//!    heartbeat TTL ago, and rows handed back at shutdown (`pending`, no supervisor:
//!    crate::serve::handback), which have no heartbeat to check (one statement on the
//!    status index; nothing per execution);
//! 2. keeps those whose supervisor's heartbeat is gone (one `EXISTS` per supervisor
//!    named) and whose stream entry is gone for good (pending nowhere, and deleted or
//!    already delivered: [`crate::intake::Intake::entries_gone`]);
//! 3. ends them in one transaction that re-checks each row's attempt and supervisor, so
//!    a row begun again meanwhile is left alone and, with several supervisors
//!    sweeping, each row is ended (and published) by exactly one.
//!
//! A live supervisor's rows are never touched, whatever Redis holds: a supervisor is
//! judged by its own heartbeat, not by its membership in the consumer group (which a
//! Redis wipe also erases).

use std::time::Duration;

use tokio::sync::watch;

use crate::intake::{Completion, Intake};
use crate::outcome::Status;
use crate::store::lost::{Unfinished, HANDED_BACK, SUPERVISOR_LOST};
use crate::store::Store;

/// How often each supervisor sweeps by default.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The most rows one sweep looks at.
const SWEEP_LIMIT: i64 = 2000;

pub struct Sweeper {
    pub store: Store,
    pub intake: Intake,
    pub every: Duration,
    /// Rows begun more recently are not looked at (their supervisor's heartbeat may
    /// not have been seen yet by anyone; twice the heartbeat TTL).
    pub older_than: Duration,
    pub stop: watch::Receiver<bool>,
}

impl Sweeper {
    /// Sweeps every [`Sweeper::every`] until stopped; returns how many rows it ended.
    pub async fn run(mut self) -> u64 {
        let mut swept = 0;
        let mut tick = tokio::time::interval(self.every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.wait_for(|s| *s) => return swept,
            }
            match self.sweep().await {
                Ok(n) => swept += n,
                Err(e) => tracing::debug!(error = %e, "sweep skipped"),
            }
        }
    }

    /// One sweep: how many rows it ended.
    pub async fn sweep(&self) -> Result<u64, SweepError> {
        let rows = self
            .store
            .unfinished_elsewhere(self.intake.consumer(), self.older_than, SWEEP_LIMIT)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let lost = lost_rows(&self.intake, rows).await?;
        if lost.is_empty() {
            return Ok(0);
        }
        let ended = self.store.record_lost(&lost).await?;
        let completions: Vec<Completion> = ended
            .iter()
            .map(|l| {
                tracing::warn!(execution = %l.id, supervisor = %l.supervisor, "execution lost with its supervisor and its stream entry: recorded crashed");
                let mut c = Completion::new(l.id.clone(), Status::Crashed);
                c.error_type = Some(SUPERVISOR_LOST.into());
                c.error_message = Some(l.error_message.clone());
                c
            })
            .collect();
        if let Err(e) = self.intake.publish_completions(&completions).await {
            tracing::warn!(error = %e, "could not publish the completions of swept executions (they are recorded)");
        }
        Ok(ended.len() as u64)
    }
}

/// Of `rows`, those whose supervisor is dead (a row handed back at shutdown has none)
/// and whose stream entry is gone for good.
async fn lost_rows(intake: &Intake, rows: Vec<Unfinished>) -> Result<Vec<Unfinished>, SweepError> {
    let mut supervisors: Vec<String> = rows
        .iter()
        .map(|r| r.supervisor.clone())
        .filter(|s| s != HANDED_BACK)
        .collect();
    supervisors.sort();
    supervisors.dedup();
    let alive = intake.heartbeats(&supervisors).await?;
    let mut dead: std::collections::HashSet<&str> = supervisors
        .iter()
        .zip(alive)
        .filter(|(_, live)| !live)
        .map(|(s, _)| s.as_str())
        .collect();
    dead.insert(HANDED_BACK);
    let candidates: Vec<Unfinished> = rows
        .into_iter()
        .filter(|r| dead.contains(r.supervisor.as_str()))
        .collect();
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let with_entry: Vec<String> = candidates
        .iter()
        .filter_map(|r| r.stream_id.clone())
        .collect();
    let mut gone = intake.entries_gone(&with_entry).await?.into_iter();
    Ok(candidates
        .into_iter()
        .filter(|r| match r.stream_id {
            // No entry was ever recorded: nothing can run it again.
            None => true,
            Some(_) => gone.next().unwrap_or(false),
        })
        .collect())
}

/// Why a sweep was skipped (it is tried again at the next tick).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("sweep: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("sweep: {0}")]
    Redis(#[from] crate::intake::IntakeError),
}
