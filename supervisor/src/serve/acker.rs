//! Acknowledging committed executions: for every transaction the writer commits, one
//! Redis pipeline acknowledges (and deletes) their stream entries and publishes their
//! completions. Runs only on what the writer reports as committed, so an entry is never
//! acknowledged before its terminal state is in PostgreSQL. While Redis is away it
//! retries the same batch (every command in it is safe to repeat); entries left
//! unacknowledged by a crash are taken over by a peer and found already done. An
//! outcome the store reports superseded (its entry was taken over and begun again
//! elsewhere) is neither acknowledged nor published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::held::Held;
use crate::intake::{Completion, Done, Intake};
use crate::outcome::{ExecutionOutcome, Status};
use crate::store::{Backoff, Committed, Disposition};

/// The completion to publish for each execution handed to the writer, by execution id
/// and stream entry (two entries may carry the same id: a duplicate submission, or a
/// malformed copy, must not take the completion of the entry that runs it).
#[derive(Clone, Default)]
pub struct PendingAcks(Arc<Mutex<HashMap<(String, String), Done>>>);

impl PendingAcks {
    /// Remembers what to publish once `out` is committed.
    pub fn expect(&self, stream_id: &str, out: &ExecutionOutcome) {
        self.expect_done(&out.execution_id, Done::from_outcome(stream_id, out));
    }

    pub fn expect_done(&self, execution_id: &str, done: Done) {
        self.0
            .lock()
            .expect("acks lock")
            .insert((execution_id.to_string(), done.stream_id.clone()), done);
    }

    fn take(&self, execution_id: &str, stream_id: Option<&str>) -> Option<Done> {
        let key = (execution_id.to_string(), stream_id?.to_string());
        self.0.lock().expect("acks lock").remove(&key)
    }
}

/// Runs until the writer closes its channel (after it committed everything it held).
pub async fn run(
    intake: Intake,
    mut committed: mpsc::Receiver<Vec<Committed>>,
    pending: PendingAcks,
    held: Held,
) {
    while let Some(batch) = committed.recv().await {
        let mut superseded = Vec::new();
        let dones: Vec<Done> = batch
            .into_iter()
            .filter_map(|c| {
                let sid = c.stream_id.clone();
                let done = done_for(&pending, c);
                if done.is_none() {
                    superseded.extend(sid);
                }
                done
            })
            .collect();
        // Given up to the peer that runs them now.
        held.remove(superseded.iter().map(String::as_str));
        ack_with_retry(&intake, &held, &dones).await;
    }
}

/// Acknowledges `dones`, retrying with back-off until Redis takes them; then they are
/// no longer held.
pub async fn ack_with_retry(intake: &Intake, held: &Held, dones: &[Done]) {
    if dones.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while let Err(e) = intake.ack_and_publish(dones).await {
        let wait = backoff.next_delay();
        tracing::warn!(error = %e, retry_in = ?wait, n = dones.len(), "cannot acknowledge committed executions yet");
        tokio::time::sleep(wait).await;
    }
    held.remove(dones.iter().map(|d| d.stream_id.as_str()));
}

fn done_for(pending: &PendingAcks, c: Committed) -> Option<Done> {
    let expected = pending.take(&c.execution_id, c.stream_id.as_deref());
    if c.disposition == Disposition::Superseded {
        // A peer took the entry over and runs it again: acknowledging it here would
        // drop it from that peer's pending list (and lose it if the peer died too).
        tracing::info!(execution = %c.execution_id, "outcome superseded by a later attempt elsewhere: not acknowledged");
        return None;
    }
    let stream_id = expected
        .as_ref()
        .map(|d| d.stream_id.clone())
        .or(c.stream_id.clone())?;
    match (expected, c.disposition) {
        (Some(done), Disposition::Recorded) => Some(done),
        // Another entry runs this id: acknowledge this one, publish nothing for it (the
        // running entry's completion is the execution's).
        (_, Disposition::NotOwner) => Some(Done {
            stream_id,
            completion: None,
        }),
        (_, Disposition::Superseded) => None,
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
