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
//!
//! **Start marks.** An execution's row says `running` with no `started_at` from the
//! moment the reader takes it until its result is committed (the result statement
//! writes the real start time: no statement per execution is added for it). What tells
//! "queued here" from "running since T" meanwhile is a start mark
//! (crate::intake::StartMark), sent in the same pipeline as the log lines. To add no
//! round trip for short executions, a mark waits for a flush that happens anyway (a log
//! line) or, once it is [`MARK_DELAY`] old, for the status tick (once a second); the
//! mark of an execution that ended before then is dropped (its start time arrives with
//! its result). So only an execution that runs longer than that without logging costs
//! a pipeline of its own (one per second at most, for all such marks), off the main
//! loop; `warden executions show` calls it queued for at most about a second after it
//! started. Measured: a tick of the marks' own in the main loop's `select!` (every 50
//! ms) halved the throughput under load (docs/architecture.md), and sharing the log
//! tick let a mark take the first flush of a short execution's log lines, which then
//! reached Redis after its completion.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use warden_protocol::Log;

use super::outage::RedisOutage;
use crate::intake::{Intake, StartMark, SupervisorStatus};

/// How long one side send may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Most live log lines waiting for a flush; more are dropped.
pub const MAX_LIVE_LOGS: usize = 10_000;
/// How long a start mark waits for a flush that happens anyway before it is sent on
/// its own.
pub const MARK_DELAY: Duration = Duration::from_millis(100);
/// How long a start mark outlives its attempt's deadline.
const MARK_MARGIN: Duration = Duration::from_secs(60);

/// A start mark waiting for a flush: the execution, the mark, how long its key lives,
/// and when it was queued.
struct PendingMark {
    execution_id: String,
    mark: StartMark,
    ttl: Duration,
    queued: Instant,
}

pub struct Publisher {
    intake: Intake,
    outage: RedisOutage,
    logs: Vec<Log>,
    /// Oldest first.
    marks: Vec<PendingMark>,
    logs_in_flight: Option<JoinHandle<()>>,
    status_in_flight: Option<JoinHandle<()>>,
}

impl Publisher {
    pub fn new(intake: Intake, outage: RedisOutage) -> Publisher {
        Publisher {
            intake,
            outage,
            logs: Vec::new(),
            marks: Vec::new(),
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

    /// Queues the start mark of an execution a worker just started (dropped while
    /// Redis is away: the row gets its start time with its result anyway). `deadline`:
    /// the attempt's timeout, which bounds how long the mark is worth keeping.
    pub fn started(&mut self, execution_id: &str, mark: StartMark, deadline: Duration) {
        if self.outage.is_away() || self.marks.len() >= MAX_LIVE_LOGS {
            return;
        }
        self.marks.push(PendingMark {
            execution_id: execution_id.to_owned(),
            mark,
            ttl: deadline.saturating_add(MARK_MARGIN),
            queued: Instant::now(),
        });
    }

    /// An execution ended (or went back): its mark, if not sent yet, is not needed.
    pub fn ended(&mut self, execution_id: &str) {
        if let Some(i) = self
            .marks
            .iter()
            .position(|m| m.execution_id == execution_id)
        {
            self.marks.remove(i);
        }
    }

    /// Whether the oldest waiting mark is due to be sent on its own.
    fn mark_due(&self) -> bool {
        self.marks
            .first()
            .is_some_and(|m| m.queued.elapsed() >= MARK_DELAY)
    }

    /// Publishes the queued lines and start marks (marks alone only once the oldest is
    /// [`MARK_DELAY`] old), unless the previous flush is still in flight.
    pub fn flush_logs(&mut self) {
        if busy(&self.logs_in_flight) || (self.logs.is_empty() && !self.mark_due()) {
            return;
        }
        let batch = std::mem::take(&mut self.logs);
        let marks: Vec<(String, StartMark, Duration)> = std::mem::take(&mut self.marks)
            .into_iter()
            .map(|m| (m.execution_id, m.mark, m.ttl))
            .collect();
        let (intake, outage) = (self.intake.clone(), self.outage.clone());
        self.logs_in_flight = Some(tokio::spawn(async move {
            match tokio::time::timeout(SEND_TIMEOUT, intake.publish_logs(&batch, &marks)).await {
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
