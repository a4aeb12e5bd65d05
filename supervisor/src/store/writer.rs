//! The group-commit writer: one task that turns a stream of outcomes into a few
//! transactions, and reports each outcome only once its transaction has committed.
//!
//! ```text
//!  pool/intake ──submit──▶ [ ≤ max_pending items ] ──▶ batch (≤ max_batch, ≤ max_delay)
//!                                                         │ commit_batch: ONE transaction
//!                     ◀── Vec<Committed> ─────────────────┘ (only after COMMIT)
//! ```
//!
//! Each [`Committed`] carries back its item's stream entry and the completion it was
//! submitted with, next to what the commit found ([`Disposition`]): whoever reads the
//! channel acknowledges and publishes from that alone (crate::serve::acker). The item
//! and answer types live in crate::store::items.
//!
//! - **Bounded.** [`WriterHandle::submit`] waits while `max_pending` items are in the
//!   writer (queued or being written). That is how the intake pauses when the database
//!   is away: results wait in memory, up to the bound, and nothing is dropped. A caller
//!   that must not wait (the daemon's main loop, which also answers signals) takes a
//!   place first with [`WriterHandle::reserve`] inside its `select!`.
//! - **Stopping.** Dropping every handle makes the writer write what it holds, then
//!   close its `Committed` channel. A shutdown that cannot wait for that (the database
//!   is away and the deadline has come) calls [`WriterTask::abandon`]: what is not
//!   committed is dropped, and its stream entries, never acknowledged, are redelivered.
//! - **Connectivity errors** (database down, restart, `pg_terminate_backend`), and any
//!   other error that is not about the batch's values (a missing table, a permission):
//!   the batch stays in memory and is retried with exponential back-off (50 ms → 5 s)
//!   until it commits. A retry after a COMMIT whose answer was lost records nothing
//!   twice, because [`Store::commit_batch`] is idempotent.
//! - **Data errors** ([`StoreError::is_data_error`]: a constraint, a trigger's `RAISE`;
//!   something the same batch will hit every time): the batch is split in halves until
//!   the bad item is alone, so every other item commits. The bad item is then recorded as `failed` with error type `StoreError` and
//!   the reason (its result and logs are not kept). If even that fails, it is parked and
//!   retried (as itself first, then as `StoreError`) with a back-off up to a minute; it is
//!   never dropped while the writer runs. At shutdown a still-parked item is logged and
//!   left unacknowledged, so its stream message is redelivered later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::outcome::Status;
use crate::store::items::{CommitOutcome, Committed, Completed, Disposition};
use crate::store::{Backoff, Store, StoreError};

/// How the writer batches and retries.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most items per transaction.
    pub max_batch: usize,
    /// While results arrive concurrently, the shortest time between two commits (items
    /// arriving meanwhile share the next one). A lone item is written at once.
    pub max_delay: Duration,
    /// Most items inside the writer (queued or being written) before `submit` waits.
    pub max_pending: usize,
    /// Back-off after a connectivity error: first delay, and cap.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Cap of the back-off for an item that cannot be stored even as `StoreError`.
    pub park_retry_max: Duration,
    /// Where each committed transaction's size and time are recorded (`serve --http`).
    pub metrics: Option<crate::ops::metrics::CommitMetrics>,
}

impl Default for WriterConfig {
    fn default() -> WriterConfig {
        WriterConfig {
            max_batch: 256,
            max_delay: Duration::from_millis(50),
            max_pending: 10_000,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            park_retry_max: Duration::from_secs(60),
            metrics: None,
        }
    }
}

/// Counters since the writer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    pub recorded: u64,
    pub already_terminal: u64,
    pub isolated: u64,
    /// Failed attempts (connectivity or data) that were retried or split.
    pub failed_attempts: u64,
    /// Items currently parked (could not be stored even as `StoreError`).
    pub parked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    recorded: AtomicU64,
    already_terminal: AtomicU64,
    isolated: AtomicU64,
    failed_attempts: AtomicU64,
    parked: AtomicU64,
}

/// An item and its place in the `max_pending` budget, released when it is reported.
struct Envelope {
    item: Completed,
    _permit: OwnedSemaphorePermit,
}

/// Submits outcomes to the writer. Clone freely; the writer finishes (writes what it
/// holds, then closes the `Committed` channel) once every handle is dropped.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Envelope>,
    permits: Arc<Semaphore>,
    max_pending: usize,
    counters: Arc<Counters>,
    task: Arc<tokio::task::AbortHandle>,
}

/// The writer task, seen from a closed handle ([`WriterHandle::close`]).
#[derive(Debug)]
pub struct WriterTask {
    task: Arc<tokio::task::AbortHandle>,
    permits: Arc<Semaphore>,
    max_pending: usize,
}

impl WriterTask {
    /// Items inside the writer now (not yet committed and reported).
    pub fn pending(&self) -> usize {
        self.max_pending - self.permits.available_permits()
    }

    /// Stops the writer now, wherever it is: items not yet committed are dropped (a
    /// transaction in flight rolls back) and nothing more is reported. For a shutdown
    /// whose deadline has come while the database is away; the dropped items' stream
    /// entries stay unacknowledged, so another supervisor runs them again.
    pub fn abandon(&self) {
        self.task.abort();
    }
}

/// A place in the writer's `max_pending` budget, taken by [`WriterHandle::reserve`]:
/// submitting through it never waits.
#[derive(Debug)]
pub struct Reservation {
    tx: mpsc::UnboundedSender<Envelope>,
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Hands `item` to the writer in the place taken.
    pub fn submit(self, item: Completed) -> Result<(), StoreError> {
        self.tx
            .send(Envelope {
                item,
                _permit: self.permit,
            })
            .map_err(|_| StoreError::WriterClosed)
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("execution_id", &self.item.outcome.execution_id)
            .finish()
    }
}

impl WriterHandle {
    /// Hand one outcome to the writer, waiting while it already holds `max_pending`.
    pub async fn submit(&self, item: Completed) -> Result<(), StoreError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        self.tx
            .send(Envelope {
                item,
                _permit: permit,
            })
            .map_err(|_| StoreError::WriterClosed)
    }

    /// Waits for a place in the writer (cancel-safe: dropping the future takes none).
    pub async fn reserve(&self) -> Result<Reservation, StoreError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        Ok(Reservation {
            tx: self.tx.clone(),
            permit,
        })
    }

    /// Drops this handle (once every handle is gone the writer writes what it holds and
    /// finishes) and keeps a way to stop the writer if that takes too long.
    pub fn close(self) -> WriterTask {
        WriterTask {
            task: Arc::clone(&self.task),
            permits: Arc::clone(&self.permits),
            max_pending: self.max_pending,
        }
    }

    /// Hand several outcomes to the writer (in order), waiting for room as needed.
    pub async fn submit_all(&self, items: Vec<Completed>) -> Result<(), StoreError> {
        for item in items {
            self.submit(item).await?;
        }
        Ok(())
    }

    /// Items inside the writer now (queued, being written, or parked).
    pub fn pending(&self) -> usize {
        self.max_pending - self.permits.available_permits()
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            recorded: c.recorded.load(Ordering::Relaxed),
            already_terminal: c.already_terminal.load(Ordering::Relaxed),
            isolated: c.isolated.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
        }
    }
}

/// The writer task. See the module docs.
pub struct Writer {
    store: Store,
    config: WriterConfig,
    rx: mpsc::UnboundedReceiver<Envelope>,
    out: mpsc::Sender<Vec<Committed>>,
    parked: Vec<Parked>,
    counters: Arc<Counters>,
}

/// An item that could not be stored even as `StoreError`, waiting to be tried again.
struct Parked {
    envelope: Envelope,
    next_try: Instant,
    backoff: Backoff,
}

/// How one attempt at a batch ended.
enum Attempt {
    Committed(Vec<CommitOutcome>),
    /// A data error: the batch will fail the same way if retried as it is.
    Rejected(StoreError),
}

impl Writer {
    /// Start the writer on the current tokio runtime. Returns the handle to submit with
    /// and the channel of committed items (one `Vec` per transaction). Reading that
    /// channel is how outcomes get acknowledged; if it is not read, the writer waits.
    pub fn spawn(
        store: Store,
        config: WriterConfig,
    ) -> (WriterHandle, mpsc::Receiver<Vec<Committed>>) {
        let config = WriterConfig {
            max_batch: config.max_batch.max(1),
            max_pending: config.max_pending.max(1),
            ..config
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (out, committed) = mpsc::channel((config.max_pending / config.max_batch).max(16));
        let counters = Arc::new(Counters::default());
        let max_pending = config.max_pending;
        let writer = Writer {
            store,
            config,
            rx,
            out,
            parked: Vec::new(),
            counters: Arc::clone(&counters),
        };
        let task = tokio::spawn(writer.run());
        let handle = WriterHandle {
            tx,
            permits: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            counters,
            task: Arc::new(task.abort_handle()),
        };
        (handle, committed)
    }

    async fn run(mut self) {
        tracing::debug!(config = ?self.config, "store writer started");
        let mut closed = false;
        let mut last_write: Option<Instant> = None;
        let mut last_batch = 0;
        while !closed {
            // Wait for the first item of a batch, or for a parked item's next try.
            let first = match self.next_parked_try() {
                Some(at) => tokio::select! {
                    item = self.rx.recv() => item,
                    _ = tokio::time::sleep_until(at) => {
                        self.retry_parked(false).await;
                        continue;
                    }
                },
                None => self.rx.recv().await,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            // Group commit, adaptive. While results arrive concurrently (the last batch
            // held more than one), at most one commit per max_delay: transactions per
            // execution fall as the load rises. Otherwise (a lone caller, a quiet
            // spell) the batch is what is already queued, written at once: waiting
            // would only add latency, since nothing else is coming.
            let now = Instant::now();
            let deadline = last_write
                .filter(|_| last_batch > 1)
                .map(|t| t + self.config.max_delay)
                .filter(|d| *d > now)
                .unwrap_or(now);
            while batch.len() < self.config.max_batch {
                match self.rx.try_recv() {
                    Ok(envelope) => {
                        batch.push(envelope);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                // Nothing queued and no reason to wait: write now. (A `sleep_until` of
                // now would wait for the timer's next millisecond tick.)
                if deadline <= Instant::now() {
                    break;
                }
                tokio::select! {
                    item = self.rx.recv() => match item {
                        Some(envelope) => batch.push(envelope),
                        None => {
                            closed = true;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            last_write = Some(Instant::now());
            last_batch = batch.len();
            self.write(batch).await;
            if self
                .next_parked_try()
                .is_some_and(|at| at <= Instant::now())
            {
                self.retry_parked(false).await;
            }
        }
        // Every handle is gone and every batch written: one last try for parked items.
        if !self.parked.is_empty() {
            self.retry_parked(true).await;
        }
        for p in &self.parked {
            tracing::error!(
                execution_id = %p.envelope.item.outcome.execution_id,
                stream_id = ?p.envelope.item.stream_id,
                "writer stopping with an outcome it could not store; \
                 its stream entry stays unacknowledged and will be redelivered"
            );
        }
        tracing::debug!("store writer finished");
    }

    /// Write a batch until every item in it is committed, recorded as `StoreError`, or
    /// parked: retry connectivity errors, split on data errors.
    async fn write(&mut self, batch: Vec<Envelope>) {
        // Halves still to write, the next one last.
        let mut work = vec![batch];
        while let Some(batch) = work.pop() {
            match self.attempt(&batch).await {
                Attempt::Committed(outcomes) => self.report(batch, outcomes, false).await,
                Attempt::Rejected(error) if batch.len() > 1 => {
                    tracing::warn!(
                        %error,
                        size = batch.len(),
                        "batch refused by the database; splitting it to isolate the bad item"
                    );
                    let mut left = batch;
                    let right = left.split_off(left.len() / 2);
                    work.push(right);
                    work.push(left);
                }
                Attempt::Rejected(error) => {
                    let mut batch = batch;
                    if let Some(envelope) = batch.pop() {
                        self.isolate(envelope, error).await;
                    }
                }
            }
        }
    }

    /// One batch as one transaction, retrying connectivity errors for as long as it
    /// takes (the batch stays in memory meanwhile).
    async fn attempt(&self, batch: &[Envelope]) -> Attempt {
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        loop {
            let began = Instant::now();
            match self.store.commit_batch(batch.iter().map(|e| &e.item)).await {
                Ok(outcomes) => {
                    if let Some(m) = &self.config.metrics {
                        m.observe(batch.len(), began.elapsed());
                    }
                    if backoff.attempts() > 0 {
                        tracing::info!(
                            size = batch.len(),
                            attempts = backoff.attempts() + 1,
                            "batch committed after the database came back"
                        );
                    }
                    return Attempt::Committed(outcomes);
                }
                Err(error) if error.is_data_error() => {
                    self.store.count_error();
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    return Attempt::Rejected(error);
                }
                Err(error) => {
                    self.store.count_error();
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    let retry_in_ms = delay.as_millis() as u64;
                    if error.is_transient() {
                        tracing::warn!(
                            %error,
                            size = batch.len(),
                            retry_in_ms,
                            "could not write a batch; keeping it and retrying"
                        );
                    } else {
                        // A missing table, a permission: not this batch's fault, and
                        // nothing can be written until someone fixes the database.
                        tracing::error!(
                            %error,
                            size = batch.len(),
                            retry_in_ms,
                            "the database cannot take any outcome (is the schema migrated?); \
                             keeping the batch and retrying"
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A single item the database refuses: record it as `StoreError`, or park it.
    async fn isolate(&mut self, envelope: Envelope, error: StoreError) {
        let id = envelope.item.outcome.execution_id.clone();
        tracing::error!(execution_id = %id, %error, "the database refused an outcome; recording it as StoreError");
        let substitute = envelope.item.isolated(&error);
        let substitute = Envelope {
            item: substitute,
            _permit: envelope._permit,
        };
        match self.attempt(std::slice::from_ref(&substitute)).await {
            Attempt::Committed(outcomes) => self.report(vec![substitute], outcomes, true).await,
            Attempt::Rejected(error) => {
                tracing::error!(
                    execution_id = %id,
                    %error,
                    "the database refused even the StoreError record; parking the outcome and retrying later"
                );
                let mut backoff =
                    Backoff::new(self.config.retry_initial, self.config.park_retry_max);
                let next_try = Instant::now() + backoff.next_delay();
                self.counters.parked.fetch_add(1, Ordering::Relaxed);
                self.parked.push(Parked {
                    envelope: Envelope {
                        item: envelope.item,
                        _permit: substitute._permit,
                    },
                    next_try,
                    backoff,
                });
            }
        }
    }

    fn next_parked_try(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.next_try).min()
    }

    /// Try parked items whose time has come (all of them if `all`): as themselves, then
    /// as `StoreError`; back to the park if both are refused.
    async fn retry_parked(&mut self, all: bool) {
        let now = Instant::now();
        let (due, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| all || p.next_try <= now);
        self.parked = waiting;
        for mut p in due {
            let batch = vec![p.envelope];
            match self.attempt(&batch).await {
                Attempt::Committed(outcomes) => {
                    self.counters.parked.fetch_sub(1, Ordering::Relaxed);
                    tracing::info!(
                        execution_id = %batch[0].item.outcome.execution_id,
                        "parked outcome committed"
                    );
                    self.report(batch, outcomes, false).await;
                }
                Attempt::Rejected(error) => {
                    let Some(envelope) = batch.into_iter().next() else {
                        continue;
                    };
                    let substitute = Envelope {
                        item: envelope.item.isolated(&error),
                        _permit: envelope._permit,
                    };
                    match self.attempt(std::slice::from_ref(&substitute)).await {
                        Attempt::Committed(outcomes) => {
                            self.counters.parked.fetch_sub(1, Ordering::Relaxed);
                            self.report(vec![substitute], outcomes, true).await;
                        }
                        Attempt::Rejected(error) => {
                            let delay = p.backoff.next_delay();
                            tracing::error!(
                                execution_id = %envelope.item.outcome.execution_id,
                                %error,
                                retry_in_s = delay.as_secs(),
                                "parked outcome still refused by the database"
                            );
                            p.envelope = Envelope {
                                item: envelope.item,
                                _permit: substitute._permit,
                            };
                            p.next_try = Instant::now() + delay;
                            self.parked.push(p);
                        }
                    }
                }
            }
        }
    }

    /// Send a committed batch to whoever acknowledges it, then let its items go (which
    /// frees their places in `max_pending`).
    async fn report(&self, mut batch: Vec<Envelope>, outcomes: Vec<CommitOutcome>, isolated: bool) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let mut committed = Vec::with_capacity(batch.len());
        for (envelope, outcome) in batch.iter_mut().zip(outcomes) {
            let item = &mut envelope.item;
            let (status, disposition) = match outcome {
                CommitOutcome::Recorded if isolated => (Status::Failed, Disposition::Isolated),
                CommitOutcome::Recorded => (item.outcome.status, Disposition::Recorded),
                CommitOutcome::AlreadyTerminal { status } => (status, Disposition::AlreadyTerminal),
                CommitOutcome::NotOwner => (item.outcome.status, Disposition::NotOwner),
                CommitOutcome::Superseded => (item.outcome.status, Disposition::Superseded),
                CommitOutcome::Retrying => (item.outcome.status, Disposition::Retrying),
            };
            let counter = match disposition {
                Disposition::Recorded | Disposition::Retrying => &self.counters.recorded,
                Disposition::AlreadyTerminal | Disposition::NotOwner | Disposition::Superseded => {
                    &self.counters.already_terminal
                }
                Disposition::Isolated => &self.counters.isolated,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            committed.push(Committed {
                execution_id: item.outcome.execution_id.clone(),
                stream_id: item.stream_id.clone(),
                status,
                disposition,
                completion: item.completion.take(),
            });
        }
        if self.out.send(committed).await.is_err() {
            tracing::debug!("nobody is reading committed outcomes; dropping the report");
        }
        drop(batch);
    }
}
