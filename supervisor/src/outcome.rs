//! What one execution asked for ([`Job`]) and how it ended ([`ExecutionOutcome`]): the
//! types the pool hands to whoever persists or prints results (the store, `warden exec`,
//! the benchmark), and the [`ExecutionId`] every stage names an execution by. Plain
//! data, no behaviour beyond naming (and the exit code each terminal status maps to).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use warden_protocol::{ErrorInfo, ExecutionLimits, Log};

/// An execution's id, as the client chose it (or `warden submit` made it up): checked
/// where it enters (a stream entry's `id` field, a CLI argument) and carried as is from
/// there to the store, the pool and back. It is plain text on the wire (the protocol
/// crate's `execution_id: String`), in JSON and in the database, converted at those
/// edges.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct ExecutionId(String);

impl ExecutionId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for ExecutionId {
    fn from(id: String) -> Self {
        ExecutionId(id)
    }
}

impl From<&str> for ExecutionId {
    fn from(id: &str) -> Self {
        ExecutionId(id.to_owned())
    }
}

impl From<&String> for ExecutionId {
    fn from(id: &String) -> Self {
        ExecutionId(id.clone())
    }
}

impl From<ExecutionId> for String {
    fn from(id: ExecutionId) -> Self {
        id.0
    }
}

impl AsRef<str> for ExecutionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by [`ExecutionId`] be searched with the `&str` a protocol message
/// carries (same `Hash` and `Eq` as the `String` inside).
impl std::borrow::Borrow<str> for ExecutionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ExecutionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ExecutionId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ExecutionId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<ExecutionId> for String {
    fn eq(&self, other: &ExecutionId) -> bool {
        *self == other.0
    }
}

impl PartialEq<ExecutionId> for &str {
    fn eq(&self, other: &ExecutionId) -> bool {
        *self == other.0
    }
}

/// One execution to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub execution_id: ExecutionId,
    /// Workflow path, used as the code's filename in tracebacks.
    pub path: String,
    pub source: String,
    pub function: String,
    /// A JSON object (its keys become keyword arguments).
    pub params_json: String,
    /// SDK context as a JSON object, `{}` when there is none.
    pub context_json: String,
    /// Wall-clock deadline, counted from dispatch; resolved by whoever builds the job
    /// (request, workflow or `--timeout`), so the pool applies it as it is.
    pub timeout: Duration,
    /// `None`: the pool's default limits.
    pub limits: Option<ExecutionLimits>,
    /// The module cache generation for this execution (0: no module cache).
    pub modules_generation: u64,
    /// The organization it runs for (`None`: none, or unknown). A reuse-mode template
    /// serves one organization only (see `pool::dispatcher`).
    pub org: Option<String>,
    /// The module paths and content hashes (from the database) the execution's
    /// workspace imports are checked against; the pool sends it to a template only when
    /// that template does not have it yet. `None`: no module cache.
    pub modules_manifest: Option<std::sync::Arc<warden_protocol::ModuleManifest>>,
    /// Which of the queues served it came from, 0 the most urgent: the pool runs the
    /// lowest first (crate::pool::fair_queue). 0 where there is one queue.
    pub priority: u32,
}

/// The terminal states. Every accepted execution reaches exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failed,
    Timeout,
    Cancelled,
    Crashed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
            Status::Crashed => "crashed",
        }
    }

    /// The process exit code of a command that ran an execution to this end (`warden
    /// exec`, `warden submit --wait`): 0 only for success; 2 is left for usage errors.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Success => 0,
            Status::Failed => 1,
            Status::Timeout => 3,
            Status::Crashed => 4,
            Status::Cancelled => 5,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an execution ended, with everything worth recording about it.
#[derive(Debug, Clone)]
pub struct ExecutionOutcome {
    pub execution_id: ExecutionId,
    pub status: Status,
    /// The return value as JSON text (success only).
    pub result_json: Option<String>,
    /// Exception or failure details (failed, timeout, crashed, cancelled).
    pub error: Option<ErrorInfo>,
    /// When it was handed to a worker (None: cancelled while still queued).
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
    /// Dispatch to end.
    pub duration: Duration,
    pub peak_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub logs_dropped: u32,
    /// SDK writes to apply with the result (JSON array; empty: none). Applied only when
    /// the status is `success`.
    pub sdk_writes_json: String,
}

impl ExecutionOutcome {
    /// An execution that ended without running: cancelled while queued, refused at
    /// shutdown, or rejected before dispatch.
    pub fn not_run(
        execution_id: &ExecutionId,
        status: Status,
        error_type: &str,
        message: impl Into<String>,
    ) -> ExecutionOutcome {
        ExecutionOutcome {
            execution_id: execution_id.clone(),
            status,
            result_json: None,
            error: Some(ErrorInfo {
                error_type: error_type.to_string(),
                message: message.into(),
                traceback: String::new(),
            }),
            started_at: None,
            finished_at: SystemTime::now(),
            duration: Duration::ZERO,
            peak_memory_bytes: 0,
            cpu_seconds: 0.0,
            exit_code: None,
            exit_signal: None,
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        }
    }
}

/// What the pool reports, in order per execution: `Started`, `Log`* and `Request`*,
/// then exactly one end: `Finished`, `Interrupted` (started, cut off by a shutdown) or
/// `Returned` (never started, handed back by a shutdown).
#[derive(Debug, Clone)]
pub enum PoolEvent {
    Started {
        execution_id: ExecutionId,
        pid: u32,
        /// When the pool sent it to the worker (the start its outcome records).
        started_at: SystemTime,
    },
    Log(Log),
    /// The running execution asks something; answer with [`crate::pool::Pool::reply`].
    /// It blocks until answered (or until its deadline).
    Request(warden_protocol::Request),
    Finished(ExecutionOutcome),
    /// Started, then killed because the pool's drain ended (its deadline passed, or a
    /// second shutdown request): it did not end by itself, so it has no terminal state
    /// of its own. The outcome says what happened (`cancelled`, error type `Shutdown`)
    /// for callers that must show one; `serve` records an interrupted attempt instead
    /// and leaves the execution to run again elsewhere.
    Interrupted(ExecutionOutcome),
    /// Never started: queued when the drain began, or submitted during it. The pool
    /// hands it back untouched; whoever submitted it may run it elsewhere.
    Returned {
        execution_id: ExecutionId,
    },
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn exit_code_per_status() {
        let all = [
            Status::Success,
            Status::Failed,
            Status::Timeout,
            Status::Cancelled,
            Status::Crashed,
        ];
        let codes: Vec<i32> = all.iter().map(|s| s.exit_code()).collect();
        assert_eq!(codes, [0, 1, 3, 5, 4]);
    }
}
