//! The items that flow through the group-commit writer, and what it answers: a
//! [`Completed`] goes in (an outcome with its stream entry and the completion to
//! publish), [`Store::commit_batch`](crate::store::Store::commit_batch) says per item
//! what its transaction did ([`CommitOutcome`]), and a [`Committed`] comes out (the
//! stream entry and completion back, with its [`Disposition`]). Plain data, shared by
//! `commit` (which writes), `executions` (which records rejections through it) and
//! `writer` (which batches), so that none of those imports another for its types.

use warden_protocol::{ErrorInfo, Log};

use crate::intake::Completion;
use crate::outcome::{ExecutionId, ExecutionOutcome, Status};
use crate::store::StoreError;

/// One finished execution to persist.
#[derive(Debug, Clone)]
pub struct Completed {
    pub outcome: ExecutionOutcome,
    /// Its log lines (any order; stored by `seq`).
    pub logs: Vec<Log>,
    /// Attribution for the metrics (kept from the row when the row already has it).
    pub workflow_id: Option<i64>,
    pub org_id: Option<i64>,
    /// The workflow's ROI per successful execution (counted on success only).
    pub time_saved_seconds: f64,
    pub value: f64,
    /// The stream entry to acknowledge once this is committed.
    pub stream_id: Option<String>,
    /// The name the request asked for and who sent it; only used when no row exists yet
    /// (a rejected request never went through `begin_batch`).
    pub workflow_name: Option<String>,
    pub caller: Option<String>,
    /// The attempt this outcome is of, as `begin_batch` numbered it (`None`: the item
    /// was never begun, e.g. a rejected request). A result is written only while the
    /// row is still at this attempt: once a peer took the stream entry over and began
    /// it again, this run's outcome is [`CommitOutcome::Superseded`].
    pub attempt: Option<i32>,
    /// When the attempt after this one is due, if the retry policy gave it one
    /// (crate::retry_policy): the execution is then recorded `retrying`, and no
    /// completion is published.
    pub retry_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A not-run outcome of a due attempt's entry (crate::serve::due), which may end a
    /// `retrying` or `scheduled` row (a cancel may anyway).
    pub due_entry: bool,
    /// The completion to publish once this outcome is recorded, handed back in its
    /// [`Committed`] (`None`: nothing was arranged, e.g. an item from a test; the
    /// acknowledger then publishes the committed status alone).
    pub completion: Option<Completion>,
}

impl Completed {
    /// An outcome with no logs, attribution, ROI or stream entry; set the fields you have.
    pub fn new(outcome: ExecutionOutcome) -> Completed {
        Completed {
            outcome,
            logs: Vec::new(),
            workflow_id: None,
            org_id: None,
            time_saved_seconds: 0.0,
            value: 0.0,
            stream_id: None,
            workflow_name: None,
            caller: None,
            attempt: None,
            retry_at: None,
            due_entry: false,
            completion: None,
        }
    }

    /// A rejected request as a `failed` outcome (see [`Rejected`]).
    pub fn rejected(r: Rejected) -> Completed {
        Completed {
            outcome: ExecutionOutcome::not_run(&r.id, Status::Failed, &r.error_type, r.message),
            logs: Vec::new(),
            workflow_id: None,
            org_id: r.org_id,
            time_saved_seconds: 0.0,
            value: 0.0,
            stream_id: r.stream_id,
            workflow_name: r.workflow_name,
            caller: r.caller,
            attempt: None,
            retry_at: None,
            due_entry: false,
            completion: None,
        }
    }

    /// What is recorded instead when this item cannot be stored: `failed` with error
    /// type `StoreError`, the reason, and what the execution had ended as. No result,
    /// no logs (they count as dropped), no workflow reference (it may be the problem).
    pub(super) fn isolated(&self, error: &StoreError) -> Completed {
        let o = &self.outcome;
        let ended = match &o.error {
            Some(e) => format!("{} ({}: {})", o.status, e.error_type, e.message),
            None => o.status.to_string(),
        };
        let mut message = format!(
            "the execution's outcome could not be stored: {error}; it had ended as {ended}"
        );
        truncate(&mut message, 8 * 1024);
        Completed {
            outcome: ExecutionOutcome {
                execution_id: o.execution_id.clone(),
                status: Status::Failed,
                result_json: None,
                error: Some(ErrorInfo {
                    error_type: "StoreError".to_string(),
                    message,
                    traceback: String::new(),
                }),
                started_at: o.started_at,
                finished_at: o.finished_at,
                duration: o.duration,
                peak_memory_bytes: o.peak_memory_bytes,
                cpu_seconds: o.cpu_seconds,
                exit_code: o.exit_code,
                exit_signal: o.exit_signal,
                logs_dropped: o
                    .logs_dropped
                    .saturating_add(u32::try_from(self.logs.len()).unwrap_or(u32::MAX)),
                sdk_writes_json: String::new(),
            },
            logs: Vec::new(),
            workflow_id: None,
            org_id: self.org_id,
            time_saved_seconds: 0.0,
            value: 0.0,
            stream_id: self.stream_id.clone(),
            workflow_name: None,
            caller: None,
            attempt: self.attempt,
            // Stored as `failed`: nothing is retried after a StoreError.
            retry_at: None,
            due_entry: self.due_entry,
            // Kept so the acknowledger knows a completion was arranged (it publishes
            // the `StoreError` instead).
            completion: self.completion.clone(),
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A request that cannot run (it names no known workflow, its params are not a JSON
/// object, the message is malformed): recorded as a `failed` execution with a clear
/// `error_type`, so the client sees why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: ExecutionId,
    pub workflow_name: Option<String>,
    pub org_id: Option<i64>,
    pub caller: Option<String>,
    /// e.g. `UnknownWorkflow`, `InvalidParams`, `InvalidMessage`.
    pub error_type: String,
    pub message: String,
    pub stream_id: Option<String>,
}

impl Rejected {
    /// As an item for the group-commit writer, so the rejection is acknowledged on the
    /// stream after COMMIT like any other outcome.
    pub fn into_completed(self) -> Completed {
        Completed::rejected(self)
    }
}

/// What committing one item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Its terminal state, logs and metrics were written by this transaction.
    Recorded,
    /// The execution already had a terminal state (a replay, a duplicate, or a request
    /// recorded elsewhere): nothing was written for it.
    AlreadyTerminal { status: Status },
    /// The execution is not terminal but was begun by another stream entry (this item
    /// is a duplicate submission's, e.g. a malformed copy of a running request): its
    /// row belongs to that entry's run, and nothing was written for this one.
    NotOwner,
    /// The same stream entry was begun again (a later attempt: a peer took the entry
    /// over while this supervisor could not reach Redis) and is not finished: that run
    /// owns the row; nothing was written for this one.
    Superseded,
    /// The attempt was recorded and the execution waits for its next attempt
    /// (`retrying`): acknowledge the entry, publish no completion.
    Retrying,
}

/// What was done with a committed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Its outcome, logs and metrics are committed.
    Recorded,
    /// It already had a terminal state (a replay or duplicate); nothing was written.
    AlreadyTerminal,
    /// It could not be stored as it was; it is committed as `failed` / `StoreError`.
    Isolated,
    /// Its execution was begun by another stream entry and is not finished: nothing
    /// was written; acknowledge this entry without publishing a completion.
    NotOwner,
    /// Its stream entry was taken over and begun again by another supervisor (a later
    /// attempt): nothing was written, and the entry is that supervisor's to
    /// acknowledge, not this one's.
    Superseded,
    /// The attempt is committed and another is due: acknowledge the entry (the due-work
    /// poller enqueues the next attempt), publish no completion.
    Retrying,
}

/// An item whose terminal state is committed: acknowledge its stream entry and publish.
/// Carries back what its [`Completed`] brought for that (stream entry, completion), so
/// whoever acknowledges needs nothing else.
#[derive(Debug, Clone)]
pub struct Committed {
    pub execution_id: ExecutionId,
    pub stream_id: Option<String>,
    /// The terminal status now in the database (for `AlreadyTerminal`, the one that was
    /// there; for `Isolated`, `failed`).
    pub status: Status,
    pub disposition: Disposition,
    /// The item's [`Completed::completion`], as submitted.
    pub completion: Option<Completion>,
}
