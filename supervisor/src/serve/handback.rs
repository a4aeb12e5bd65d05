//! Giving back what this supervisor will not finish: at shutdown, executions it marked
//! `running` but never started (queued in the pool, or prepared by the reader) and
//! executions the drain's deadline cut off go back to `pending` in PostgreSQL
//! ([`Store::hand_back`]), while their stream entries stay unacknowledged in this
//! consumer's pending list, so another supervisor takes them over: the never-started
//! ones at the same attempt, the interrupted ones at attempt + 1.
//!
//! A task of its own, so the main loop never waits on the database: it writes what it
//! is given in batches (one statement each), retrying while PostgreSQL is away. The
//! daemon gives it until the shutdown deadline; rows it could not give back by then
//! stay `running` and are taken over like those of a supervisor that died (attempt + 1).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::outcome::ExecutionId;
use crate::store::{Backoff, HandBack, Store};

pub struct HandBacks {
    tx: Option<mpsc::UnboundedSender<HandBack>>,
    task: JoinHandle<u64>,
    queued: u64,
}

impl HandBacks {
    /// Starts the task, for the rows `supervisor` (this consumer's name) holds.
    pub fn spawn(store: Store, supervisor: String) -> HandBacks {
        let (tx, rx) = mpsc::unbounded_channel();
        HandBacks {
            tx: Some(tx),
            task: tokio::spawn(run(store, supervisor, rx)),
            queued: 0,
        }
    }

    /// Gives back execution `id`, begun by stream entry `stream_id`.
    /// `started_at`: when its attempt started (`None`: it never did).
    pub fn give_back(
        &mut self,
        id: ExecutionId,
        stream_id: String,
        started_at: Option<std::time::SystemTime>,
    ) {
        if let Some(tx) = &self.tx {
            self.queued += 1;
            let _ = tx.send(HandBack {
                id,
                stream_id,
                started: started_at.is_some(),
                started_at: started_at.map(chrono::DateTime::<chrono::Utc>::from),
            });
        }
    }

    /// Waits (at most `within`) until everything given back is written; returns how many
    /// rows were given back, or `None` if the database did not take them in time (the
    /// task is stopped then).
    pub async fn finish(mut self, within: Duration) -> Option<u64> {
        self.tx = None;
        match tokio::time::timeout(within, &mut self.task).await {
            Ok(given) => Some(given.unwrap_or(0)),
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    executions = self.queued,
                    "could not give back the executions this supervisor will not finish \
                     before the shutdown deadline (is PostgreSQL reachable?): their rows stay \
                     `running`, and another supervisor takes them over from the stream"
                );
                None
            }
        }
    }
}

async fn run(store: Store, supervisor: String, mut rx: mpsc::UnboundedReceiver<HandBack>) -> u64 {
    let mut given = 0;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match store.hand_back(&supervisor, &batch).await {
                Ok(n) => {
                    given += n;
                    tracing::info!(
                        executions = batch.len(),
                        given_back = n,
                        "handed back executions this supervisor will not finish"
                    );
                    break;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot give back executions yet");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    given
}
