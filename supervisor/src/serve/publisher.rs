//! What the main loop sends to Redis on the side: live log lines (one `PUBLISH`
//! pipeline per flush) and the supervisor's status (once a second). Claims on the
//! entries it runs need no refresh: peers take over only from a consumer whose
//! heartbeat is gone (crate::intake::liveness). Each send runs as a task of its own,
//! at most one of each kind at a time, bounded by [`SEND_TIMEOUT`], so the main loop
//! (which hands results to the writer and answers signals) never waits on Redis.
//!
//! While Redis is away ([`RedisOutage`]) live log lines are dropped, not queued: they
//! are stored with their execution's result anyway, and a backlog of them would only
//! arrive late. While a flush is in flight, lines wait, up to [`MAX_LIVE_LOGS`].

use std::time::Duration;

use tokio::task::JoinHandle;
use warden_protocol::Log;

use super::outage::RedisOutage;
use crate::intake::{Intake, SupervisorStatus};

/// How long one side send may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Most live log lines waiting for a flush; more are dropped.
pub const MAX_LIVE_LOGS: usize = 10_000;

pub struct Publisher {
    intake: Intake,
    outage: RedisOutage,
    logs: Vec<Log>,
    logs_in_flight: Option<JoinHandle<()>>,
    status_in_flight: Option<JoinHandle<()>>,
}

impl Publisher {
    pub fn new(intake: Intake, outage: RedisOutage) -> Publisher {
        Publisher {
            intake,
            outage,
            logs: Vec::new(),
            logs_in_flight: None,
            status_in_flight: None,
        }
    }

    /// Queues a live log line (dropped while Redis is away or the queue is full).
    pub fn log(&mut self, log: Log) {
        if self.outage.is_away() || self.logs.len() >= MAX_LIVE_LOGS {
            self.outage.dropped_logs(1);
            return;
        }
        self.logs.push(log);
    }

    pub fn has_logs(&self) -> bool {
        !self.logs.is_empty()
    }

    /// Publishes the queued lines, unless the previous flush is still in flight.
    pub fn flush_logs(&mut self) {
        if busy(&self.logs_in_flight) || self.logs.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.logs);
        let (intake, outage) = (self.intake.clone(), self.outage.clone());
        self.logs_in_flight = Some(tokio::spawn(async move {
            match tokio::time::timeout(SEND_TIMEOUT, intake.publish_logs(&batch)).await {
                Ok(Ok(())) => outage.reached(),
                Ok(Err(e)) => {
                    outage.dropped_logs(batch.len() as u64);
                    outage.failed("publishing live logs", &e);
                }
                Err(_) => {
                    outage.dropped_logs(batch.len() as u64);
                    outage.failed("publishing live logs", &"timed out");
                }
            }
        }));
    }

    /// Publishes the status; skipped while the previous one is in flight.
    pub fn status(&mut self, status: SupervisorStatus) {
        if busy(&self.status_in_flight) {
            return;
        }
        let (intake, outage) = (self.intake.clone(), self.outage.clone());
        self.status_in_flight = Some(tokio::spawn(async move {
            match tokio::time::timeout(SEND_TIMEOUT, intake.publish_status(&status)).await {
                Ok(Ok(())) => outage.reached(),
                Ok(Err(e)) => outage.failed("publishing the supervisor status", &e),
                Err(_) => outage.failed("publishing the supervisor status", &"timed out"),
            }
        }));
    }

    /// At shutdown: stops what is in flight and removes the status, within `within`.
    pub async fn retire(&mut self, within: Duration) {
        for task in [self.logs_in_flight.take(), self.status_in_flight.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        match tokio::time::timeout(within, self.intake.retire_status()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not remove the supervisor status"),
            Err(_) => tracing::debug!("could not remove the supervisor status in time"),
        }
    }
}

fn busy(task: &Option<JoinHandle<()>>) -> bool {
    task.as_ref().is_some_and(|t| !t.is_finished())
}
