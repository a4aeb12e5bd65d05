//! The JSON the supervisor publishes for clients: an execution's [`Completion`], its
//! live [`LogLine`]s, and each supervisor's [`SupervisorStatus`]. Both sides use these
//! types (the supervisor encodes, `warden submit --wait` and `warden status` decode),
//! so the format is defined once.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use warden_protocol::Log;

use super::request::InvalidEntry;
use crate::outcome::{ExecutionId, ExecutionOutcome, Status};

/// Results larger than this are not copied into the completion message (or the
/// completion key): pub/sub is a notification path, the database holds the value.
/// The message then says `"result_truncated": true`.
pub const MAX_PUBLISHED_RESULT: usize = 64 * 1024;

/// Error messages are cut to this many bytes in a completion message.
pub const MAX_PUBLISHED_ERROR_MESSAGE: usize = 4 * 1024;

/// `error_type` of an execution whose stream entry was not a valid request.
pub const INVALID_REQUEST: &str = "InvalidRequest";

/// `error_type` of the answer to a request that reused an execution id with other
/// params (crate::store::Begin::Conflict).
pub const ID_CONFLICT: &str = "IdempotencyConflict";

/// How one execution ended, published once on `warden:execution:<id>` after its row
/// is committed:
///
/// ```json
/// {"id":"e1","status":"failed","error_type":"ValueError","error_message":"bad x","result":null}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub id: ExecutionId,
    #[serde(deserialize_with = "deserialize_status")]
    pub status: Status,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    /// The return value, as the JSON the workflow produced (success only).
    pub result: Option<Box<RawValue>>,
    /// The result existed but was larger than [`MAX_PUBLISHED_RESULT`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub result_truncated: bool,
}

impl Completion {
    /// The completion message for a finished execution.
    pub fn from_outcome(outcome: &ExecutionOutcome) -> Completion {
        let mut result_truncated = false;
        let result = match &outcome.result_json {
            Some(json) if json.len() > MAX_PUBLISHED_RESULT => {
                result_truncated = true;
                None
            }
            // The pool only hands over results it validated; if one is not JSON after
            // all, the database still has the text and the message says "no value".
            Some(json) => match RawValue::from_string(json.clone()) {
                Ok(raw) => Some(raw),
                Err(e) => {
                    tracing::warn!(
                        execution_id = %outcome.execution_id,
                        error = %e,
                        "result is not valid JSON; publishing the completion without it"
                    );
                    None
                }
            },
            None => None,
        };
        Completion {
            id: outcome.execution_id.clone(),
            status: outcome.status,
            error_type: outcome.error.as_ref().map(|e| e.error_type.clone()),
            error_message: outcome
                .error
                .as_ref()
                .map(|e| truncate(&e.message, MAX_PUBLISHED_ERROR_MESSAGE)),
            result,
            result_truncated,
        }
    }

    /// The completion message for a rejected stream entry, when it had a usable id
    /// (without one there is nobody to tell).
    pub fn rejected(rejected: &InvalidEntry) -> Option<Completion> {
        rejected.execution_id.as_ref().map(|id| Completion {
            id: id.clone(),
            status: Status::Failed,
            error_type: Some(INVALID_REQUEST.to_owned()),
            error_message: Some(truncate(&rejected.reason, MAX_PUBLISHED_ERROR_MESSAGE)),
            result: None,
            result_truncated: false,
        })
    }

    /// The answer to a request that reused `id` with other params. Published on the
    /// id's channel for its sender, never stored as the id's completion (that belongs
    /// to the execution that has the id: [`Completion::is_stored`]).
    pub fn conflict(id: &ExecutionId) -> Completion {
        Completion {
            id: id.clone(),
            status: Status::Failed,
            error_type: Some(ID_CONFLICT.to_owned()),
            error_message: Some(format!(
                "execution id {id} was already used with different params; \
                 the request was not run: submit it under a new id"
            )),
            result: None,
            result_truncated: false,
        }
    }

    /// Whether this completion is the execution's own, to keep in the completion key
    /// (every one but a [`Completion::conflict`] answer).
    pub fn is_stored(&self) -> bool {
        self.error_type.as_deref() != Some(ID_CONFLICT)
    }

    /// A completion with just a status and an optional error (e.g. `cancelled` while
    /// still queued).
    pub fn new(id: impl Into<ExecutionId>, status: Status) -> Completion {
        Completion {
            id: id.into(),
            status,
            error_type: None,
            error_message: None,
            result: None,
            result_truncated: false,
        }
    }

    pub fn to_json(&self) -> String {
        // Strings, an enum and a RawValue: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One stream entry whose execution's terminal state is committed: acknowledge it and
/// publish its completion (if any).
#[derive(Debug, Clone)]
pub struct Done {
    pub stream_id: String,
    /// `None`: acknowledge only (a rejected entry that had no usable id).
    pub completion: Option<Completion>,
}

impl Done {
    pub fn new(stream_id: impl Into<String>, completion: Completion) -> Done {
        Done {
            stream_id: stream_id.into(),
            completion: Some(completion),
        }
    }

    /// A committed execution.
    pub fn from_outcome(stream_id: impl Into<String>, outcome: &ExecutionOutcome) -> Done {
        Done::new(stream_id, Completion::from_outcome(outcome))
    }

    /// A rejected entry (its `failed` row, if it had an id, is committed).
    pub fn rejected(rejected: &InvalidEntry) -> Done {
        Done {
            stream_id: rejected.stream_id.clone(),
            completion: Completion::rejected(rejected),
        }
    }
}

/// One log line, published on `warden:execution:<id>:logs` as it is produced:
///
/// ```json
/// {"seq":0,"level":"info","message":"hello","ts":1700000000123456}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// 0, 1, 2, ... within the execution.
    pub seq: u32,
    /// `debug`, `info`, `warning`, `error` or `critical`.
    pub level: String,
    pub message: String,
    /// Microseconds since the Unix epoch.
    pub ts: i64,
}

impl LogLine {
    pub fn from_log(log: &Log) -> LogLine {
        LogLine {
            seq: log.seq,
            level: log.level.as_str().to_owned(),
            message: log.message.clone(),
            ts: log.timestamp_us,
        }
    }
}

/// "A worker started attempt `attempt` of this execution at `started_at`", stored as
/// JSON at `warden:execution:<id>:started` (crate::intake::Keys::start_mark) by the
/// supervisor's live-log flush (crate::serve::publisher), and read by `warden
/// executions list|show` for a row that is `running` with no `started_at` yet:
///
/// ```json
/// {"attempt":1,"started_at":"2026-12-06T01:02:03.456Z","supervisor":"host-1234"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartMark {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub supervisor: String,
}

/// What one supervisor says about itself every second or so, stored as JSON at
/// `warden:supervisor:<consumer>` with a TTL of a few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// The consumer name in the stream's group (unique per supervisor).
    pub consumer: String,
    pub host: String,
    pub pid: u32,
    pub workers_total: u32,
    pub workers_busy: u32,
    /// Since start-up.
    pub executions_completed: u64,
    /// Recent rate (the caller decides the window).
    pub executions_per_sec: f64,
    pub started_at: DateTime<Utc>,
    /// The supervisor's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The queues it serves, most urgent first (empty from supervisors that predate
    /// queues).
    #[serde(default)]
    pub queues: Vec<String>,
    /// Executions taken and waiting in its local queue for a worker (0 from
    /// supervisors that predate the count).
    #[serde(default)]
    pub executions_queued: u32,
}

impl SupervisorStatus {
    /// A status for this process with zero counters, started now.
    pub fn for_this_process(consumer: impl Into<String>, workers_total: u32) -> Self {
        SupervisorStatus {
            consumer: consumer.into(),
            host: hostname(),
            pid: std::process::id(),
            workers_total,
            workers_busy: 0,
            executions_completed: 0,
            executions_per_sec: 0.0,
            started_at: DateTime::<Utc>::from(SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: Vec::new(),
            executions_queued: 0,
        }
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn deserialize_status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    match &*text {
        "success" => Ok(Status::Success),
        "failed" => Ok(Status::Failed),
        "timeout" => Ok(Status::Timeout),
        "cancelled" => Ok(Status::Cancelled),
        "crashed" => Ok(Status::Crashed),
        other => Err(serde::de::Error::unknown_variant(
            other,
            &["success", "failed", "timeout", "cancelled", "crashed"],
        )),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use warden_protocol::ErrorInfo;

    use super::*;

    fn outcome(status: Status, result: Option<&str>) -> ExecutionOutcome {
        ExecutionOutcome {
            result_json: result.map(str::to_owned),
            error: None,
            ..ExecutionOutcome::not_run(&"e1".into(), status, "", "")
        }
    }

    #[test]
    fn completion_embeds_the_result_verbatim() {
        let c = Completion::from_outcome(&outcome(Status::Success, Some(r#"{"a": [1, 2]}"#)));
        assert_eq!(
            c.to_json(),
            r#"{"id":"e1","status":"success","error_type":null,"error_message":null,"result":{"a": [1, 2]}}"#
        );
        let back: Completion = serde_json::from_str(&c.to_json()).expect("decode");
        assert_eq!(back.status, Status::Success);
        assert_eq!(
            back.result.map(|r| r.get().to_owned()).as_deref(),
            Some(r#"{"a": [1, 2]}"#)
        );
    }

    #[test]
    fn big_results_are_left_out() {
        let big = format!("\"{}\"", "x".repeat(MAX_PUBLISHED_RESULT));
        let c = Completion::from_outcome(&outcome(Status::Success, Some(&big)));
        assert!(c.result.is_none());
        assert!(c.result_truncated);
        assert!(c.to_json().contains("\"result_truncated\":true"));
    }

    #[test]
    fn errors_are_carried() {
        let mut o = outcome(Status::Failed, None);
        o.error = Some(ErrorInfo {
            error_type: "ValueError".into(),
            message: "é".repeat(MAX_PUBLISHED_ERROR_MESSAGE),
            traceback: "tb".into(),
        });
        let c = Completion::from_outcome(&o);
        assert_eq!(c.error_type.as_deref(), Some("ValueError"));
        let msg = c.error_message.expect("message");
        assert!(msg.len() <= MAX_PUBLISHED_ERROR_MESSAGE + '…'.len_utf8());
        assert!(msg.ends_with('…'));
    }

    #[test]
    fn rejected_entries_complete_only_with_an_id() {
        let mut r = InvalidEntry {
            stream_id: "1-0".into(),
            execution_id: Some("e".into()),
            reason: "missing field `workflow`".into(),
        };
        let c = Completion::rejected(&r).expect("has id");
        assert_eq!(c.status, Status::Failed);
        assert_eq!(c.error_type.as_deref(), Some(INVALID_REQUEST));
        r.execution_id = None;
        assert!(Done::rejected(&r).completion.is_none());
    }

    #[test]
    fn unknown_status_is_an_error() {
        let err = serde_json::from_str::<Completion>(
            r#"{"id":"e","status":"weird","error_type":null,"error_message":null,"result":null}"#,
        );
        assert!(err.is_err());
    }
}
