//! Acknowledging committed executions: for every transaction the writer commits, one
//! Redis pipeline acknowledges (and deletes) their stream entries and publishes their
//! completions. Runs only on what the writer reports as committed (or, for entries the
//! intake answers without running anything, on what the reader hands it), so an entry
//! is never acknowledged before its terminal state is in PostgreSQL. An outcome the
//! store reports superseded (its entry was taken over and begun again elsewhere) is
//! neither acknowledged nor published, and no longer held ([`Held`]); an entry leaves
//! `Held` too once Redis has taken its acknowledgement.
//!
//! **Nothing is looked up.** Each [`Committed`] carries its stream entry and the
//! completion put into its `Completed` when the outcome was handed to the writer (by
//! the main loop for a finished run, by the reader for an entry recorded without
//! running); the commit's disposition decides what of it goes out (`done_for`).
//! Entries answered without a commit come as ready [`Done`]s from the reader.
//!
//! **Redis outages do not reach the writer.** The acker keeps taking committed batches
//! while a pipeline is in flight or Redis is away: they wait in its queue (at most
//! [`MAX_WAITING`] acknowledgements; past that it stops taking more, and only then
//! does the writer wait for it), and go out in order, [`ACK_CHUNK`] per pipeline, when
//! Redis answers again. Every command is safe to repeat, so a pipeline whose answer was
//! lost is simply sent again. Entries left unacknowledged (a crash, or a shutdown whose
//! deadline came first) are taken over by a peer once this supervisor's heartbeat is
//! gone, and found already done.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::held::Held;
use super::outage::RedisOutage;
use crate::intake::{Completion, Done, Intake, IntakeError};
use crate::outcome::Status;
use crate::store::{Backoff, Committed, Disposition};

/// Most acknowledgements waiting for Redis before the acker stops taking more.
pub const MAX_WAITING: usize = 10_000;
/// Most acknowledgements in one pipeline.
pub const ACK_CHUNK: usize = 1_000;
/// How long one pipeline may take before it counts as failed (and is sent again).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Acknowledgements queued and not yet taken by Redis (for the shutdown's report).
#[derive(Clone, Default)]
pub struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

type Sending = Pin<Box<dyn Future<Output = (usize, Result<(), IntakeError>)> + Send>>;

/// Runs until both inputs are closed (the writer closes `committed` after committing
/// everything it held; `direct` closes when the reader and the daemon drop it) and
/// everything queued is acknowledged.
pub async fn run(
    intake: Intake,
    mut committed: mpsc::Receiver<Vec<Committed>>,
    mut direct: mpsc::UnboundedReceiver<Vec<Done>>,
    outage: RedisOutage,
    waiting: Waiting,
    held: Held,
) {
    let mut queue: VecDeque<Done> = VecDeque::new();
    let (mut committed_open, mut direct_open) = (true, true);
    let mut sending: Option<Sending> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut retry_at: Option<Instant> = None;
    loop {
        waiting.0.store(queue.len(), Ordering::Relaxed);
        if sending.is_none() && !queue.is_empty() && retry_at.is_none_or(|t| t <= Instant::now()) {
            let n = queue.len().min(ACK_CHUNK);
            let chunk: Vec<Done> = queue.iter().take(n).cloned().collect();
            let intake = intake.clone();
            sending = Some(Box::pin(async move {
                let sent = tokio::time::timeout(ACK_TIMEOUT, intake.ack_and_publish(&chunk))
                    .await
                    .unwrap_or_else(|_| {
                        Err(IntakeError::TimedOut {
                            context: format!("acknowledging {n} committed executions"),
                            after: ACK_TIMEOUT,
                        })
                    });
                (n, sent)
            }));
        }
        if !committed_open && !direct_open && queue.is_empty() && sending.is_none() {
            return;
        }
        let room = queue.len() < MAX_WAITING;
        tokio::select! {
            batch = committed.recv(), if committed_open && room => match batch {
                Some(batch) => {
                    let mut superseded = Vec::new();
                    for c in batch {
                        let sid = c.stream_id.clone();
                        match done_for(c) {
                            Some(done) => queue.push_back(done),
                            None => superseded.extend(sid),
                        }
                    }
                    // Given up to the peer that runs them now.
                    held.remove(superseded.iter().map(String::as_str));
                }
                None => committed_open = false,
            },
            dones = direct.recv(), if direct_open && room => match dones {
                Some(dones) => queue.extend(dones),
                None => direct_open = false,
            },
            (n, sent) = async { sending.as_mut().expect("checked").await }, if sending.is_some() => {
                sending = None;
                match sent {
                    Ok(()) => {
                        let acked: Vec<Done> = queue.drain(..n).collect();
                        held.remove(acked.iter().map(|d| d.stream_id.as_str()));
                        backoff.reset();
                        retry_at = None;
                        outage.reached();
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        outage.failed("acknowledging committed executions", &e);
                        tracing::debug!(error = %e, retry_in = ?wait, waiting = queue.len(), "acknowledgements wait for Redis");
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if sending.is_none() && retry_at.is_some() => {
                retry_at = None;
            }
        }
    }
}

/// What to acknowledge and publish for one committed item, from what it carries: the
/// completion it was submitted with (`None`: nothing was arranged) and what the commit
/// found. `None`: nothing (superseded, or no stream entry).
fn done_for(c: Committed) -> Option<Done> {
    if c.disposition == Disposition::Superseded {
        // A peer took the entry over and runs it again: acknowledging it here would
        // drop it from that peer's pending list (and lose it if the peer died too).
        tracing::info!(execution = %c.execution_id, "outcome superseded by a later attempt elsewhere: not acknowledged");
        return None;
    }
    let stream_id = c.stream_id?;
    match (c.completion, c.disposition) {
        (Some(completion), Disposition::Recorded) => Some(Done::new(stream_id, completion)),
        // Another entry runs this id: acknowledge this one, publish nothing for it (the
        // running entry's completion is the execution's).
        (_, Disposition::NotOwner) => Some(Done {
            stream_id,
            completion: None,
        }),
        (_, Disposition::Superseded) => None,
        // The execution waits for its next attempt: callers hear of the last one only.
        (_, Disposition::Retrying) => Some(Done {
            stream_id,
            completion: None,
        }),
        // What is in the database wins: publish that status, not ours.
        (_, Disposition::AlreadyTerminal) | (None, _) => Some(Done::new(
            stream_id,
            Completion::new(c.execution_id, c.status),
        )),
        (Some(_), Disposition::Isolated) => {
            let mut completion = Completion::new(c.execution_id, Status::Failed);
            completion.error_type = Some("StoreError".into());
            completion.error_message = Some(
                "the outcome could not be stored as it was; see `warden executions show`".into(),
            );
            Some(Done::new(stream_id, completion))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(disposition: Disposition, completion: Option<Completion>) -> Committed {
        Committed {
            execution_id: "e1".into(),
            stream_id: Some("1-0".into()),
            status: Status::Success,
            disposition,
            completion,
        }
    }

    fn ours() -> Option<Completion> {
        let mut c = Completion::new("e1", Status::Success);
        c.error_type = Some("ours".into());
        Some(c)
    }

    #[test]
    fn a_recorded_outcome_publishes_the_completion_it_carries() {
        let done = done_for(committed(Disposition::Recorded, ours())).expect("acknowledged");
        assert_eq!(done.stream_id, "1-0");
        let c = done.completion.expect("published");
        assert_eq!(c.error_type.as_deref(), Some("ours"));
    }

    #[test]
    fn a_superseded_outcome_is_neither_acknowledged_nor_published() {
        assert!(done_for(committed(Disposition::Superseded, ours())).is_none());
        assert!(done_for(committed(Disposition::Superseded, None)).is_none());
    }

    #[test]
    fn what_the_database_holds_wins_and_a_duplicate_is_only_acknowledged() {
        let mut c = committed(Disposition::AlreadyTerminal, ours());
        c.status = Status::Failed;
        let done = done_for(c).expect("acknowledged");
        let published = done.completion.expect("published");
        assert_eq!(published.status, Status::Failed);
        assert_eq!(published.error_type, None);
        let done = done_for(committed(Disposition::NotOwner, ours())).expect("acknowledged");
        assert!(done.completion.is_none());
    }

    #[test]
    fn a_retried_attempt_is_acknowledged_without_a_completion() {
        let done = done_for(committed(Disposition::Retrying, ours())).expect("acknowledged");
        assert_eq!(done.stream_id, "1-0");
        assert!(
            done.completion.is_none(),
            "callers hear of the last attempt only"
        );
    }

    #[test]
    fn an_isolated_outcome_publishes_the_store_error() {
        let mut c = committed(Disposition::Isolated, ours());
        c.status = Status::Failed;
        let published = done_for(c).and_then(|d| d.completion).expect("published");
        assert_eq!(published.status, Status::Failed);
        assert_eq!(published.error_type.as_deref(), Some("StoreError"));
    }

    #[test]
    fn without_an_arranged_completion_the_committed_status_is_published() {
        let published = done_for(committed(Disposition::Recorded, None))
            .and_then(|d| d.completion)
            .expect("published");
        assert_eq!(published.status, Status::Success);
        let mut no_entry = committed(Disposition::Recorded, ours());
        no_entry.stream_id = None;
        assert!(done_for(no_entry).is_none(), "nothing to acknowledge");
    }
}
