//! Execution rows: the one-statement [`Store::begin_batch`] that records a batch as
//! `running` before dispatch (and, in the same statement, the event deliveries it
//! starts), [`Store::hand_back`] for what a supervisor that shuts down gives back,
//! rejected requests, and the read side for `warden list` and `warden show`. Terminal
//! states are written by the group-commit writer ([`crate::store::commit`]).
//!
//! A row moves `running` → one terminal state, once: every statement that writes a
//! status only touches rows that are not terminal yet, which is what makes a reclaimed
//! stream message or a replayed batch harmless. A supervisor that shuts down may move
//! its `running` rows back to `pending` ([`Store::hand_back`]):
//!
//! | row | means | the next `begin_batch` of its entry |
//! | --- | --- | --- |
//! | `pending`, `started_at` empty | handed back before it started | runs it, same attempt |
//! | `pending`, `started_at` set, `error_type` `Interrupted` | its attempt was cut off by a shutdown | runs it, attempt + 1 |
//! | `running` | taken by `supervisor` at `taken_at`: queued there or running (see below), or its supervisor died | runs it, attempt + 1 |
//!
//! A `running` row has no `started_at` until its result is committed: most of a batch
//! waits in the supervisor's local queue before a worker starts it, and writing each
//! start would cost a statement per execution. The result statement writes the real
//! start time; meanwhile the supervisor's start mark in Redis (crate::intake::StartMark)
//! says whether, and when, a worker started it, and `warden executions` shows such a
//! row `pending` (queued on that supervisor) until then.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::outcome::{ExecutionId, Status};
use crate::store::items::{CommitOutcome, Completed, Rejected};
use crate::store::{Store, StoreError, Workflow, WorkflowKey};

/// The `execution_status` enum of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    Pending,
    Running,
    /// An attempt failed and another is due at `next_attempt_at`.
    Retrying,
    /// Submitted with a `not_before` still in the future.
    Scheduled,
    Success,
    Failed,
    Timeout,
    Cancelled,
    Crashed,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "pending",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Retrying => "retrying",
            ExecutionStatus::Scheduled => "scheduled",
            ExecutionStatus::Success => "success",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Timeout => "timeout",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Crashed => "crashed",
        }
    }

    /// The terminal status, if this is one.
    pub fn terminal(self) -> Option<Status> {
        match self {
            ExecutionStatus::Pending
            | ExecutionStatus::Running
            | ExecutionStatus::Retrying
            | ExecutionStatus::Scheduled => None,
            ExecutionStatus::Success => Some(Status::Success),
            ExecutionStatus::Failed => Some(Status::Failed),
            ExecutionStatus::Timeout => Some(Status::Timeout),
            ExecutionStatus::Cancelled => Some(Status::Cancelled),
            ExecutionStatus::Crashed => Some(Status::Crashed),
        }
    }
}

impl From<Status> for ExecutionStatus {
    fn from(s: Status) -> ExecutionStatus {
        match s {
            Status::Success => ExecutionStatus::Success,
            Status::Failed => ExecutionStatus::Failed,
            Status::Timeout => ExecutionStatus::Timeout,
            Status::Cancelled => ExecutionStatus::Cancelled,
            Status::Crashed => ExecutionStatus::Crashed,
        }
    }
}

impl std::str::FromStr for ExecutionStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<ExecutionStatus, StoreError> {
        Ok(match s {
            "pending" => ExecutionStatus::Pending,
            "running" => ExecutionStatus::Running,
            "retrying" => ExecutionStatus::Retrying,
            "scheduled" => ExecutionStatus::Scheduled,
            "success" => ExecutionStatus::Success,
            "failed" => ExecutionStatus::Failed,
            "timeout" => ExecutionStatus::Timeout,
            "cancelled" => ExecutionStatus::Cancelled,
            "crashed" => ExecutionStatus::Crashed,
            other => {
                return Err(StoreError::Invalid {
                    what: "execution status",
                    reason: format!(
                        "`{other}` (expected pending, running, retrying, scheduled, success, \
                         failed, timeout, cancelled or crashed)"
                    ),
                })
            }
        })
    }
}

impl TryFrom<String> for ExecutionStatus {
    type Error = StoreError;

    fn try_from(s: String) -> Result<ExecutionStatus, StoreError> {
        s.parse()
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One accepted request of a batch, about to be dispatched.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    pub id: ExecutionId,
    pub workflow_id: Option<i64>,
    pub workflow_name: String,
    pub org_id: Option<i64>,
    pub caller: Option<String>,
    /// A JSON document (normally an object). Text that is not JSON is stored as a JSON
    /// string rather than failing the whole batch.
    pub params_json: String,
    /// When the client queued it (`None`: now).
    pub queued_at: Option<SystemTime>,
    /// Consumer name of the supervisor that will run it.
    pub supervisor: String,
    pub stream_id: Option<String>,
    /// The event delivery this execution carries (`delivery_id` on the stream):
    /// recorded by the same statement, only if the execution runs (see
    /// crate::store::deliveries).
    pub delivery_id: Option<String>,
    /// The version of the workflow it runs, and its source's SHA-256 (from the
    /// workflow record loaded for the batch; `None`: not known).
    pub workflow_version: Option<i32>,
    pub workflow_hash: Option<String>,
    /// The request's own deadline and `retries` (kept for later attempts).
    pub timeout_ms: Option<i32>,
    pub retries: Option<i32>,
    /// The attempt a due-work entry carries (crate::serve::due): it begins a
    /// `retrying` or `scheduled` row only while the row waits for exactly this attempt.
    pub carrier_attempt: Option<i32>,
    /// Not to start before this: a later time records the row `scheduled`.
    pub not_before: Option<DateTime<Utc>>,
    /// The named queue it was submitted to (`None`: the default queue), kept for its
    /// later attempts (crate::serve::due).
    pub queue: Option<String>,
}

/// Per request of [`Store::begin_batch`]'s statement: id, the attempt it was begun at
/// and the status it was given (`None`: left alone), its status before, and whether
/// its stored params differ from the request's.
type BeginAnswer = (String, Option<i32>, Option<String>, Option<String>, bool);

/// The `error_type` of a row whose attempt a shutdown cut off ([`Store::hand_back`]).
pub const INTERRUPTED: &str = "Interrupted";

/// A `running` row a supervisor that shuts down gives back ([`Store::hand_back`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandBack {
    pub id: ExecutionId,
    /// The stream entry that began it (only that entry's row is given back).
    pub stream_id: String,
    /// Whether it had started: then its attempt counts (the next run is attempt + 1)
    /// and the row says which supervisor's shutdown interrupted it.
    pub started: bool,
    /// When it started (the row holds no start time while it runs: the result
    /// statement writes it); `None` with `started`: now.
    pub started_at: Option<DateTime<Utc>>,
}

/// What [`Store::begin_batch`] says to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Run it. `attempt` is 1 for a new execution, more when a non-terminal row is taken
    /// up again (its previous supervisor died or was interrupted, the message was
    /// reclaimed); a row handed back before it started keeps its attempt; a due
    /// retry runs the attempt its row waits for.
    Run { attempt: i32 },
    /// Recorded `scheduled` (its `not_before` is later): acknowledge the entry; the
    /// due-work poller starts it when it is due.
    Scheduled,
    /// Its terminal state is already committed: acknowledge the message, do not run it.
    AlreadyDone { status: Status },
    /// The same id appeared earlier in this batch, or is running from another stream
    /// entry, or waits for another attempt than the one this entry carries (a due-work
    /// entry enqueued twice, or a stale one): acknowledge this copy without running it.
    Duplicate,
    /// The id was already used with other params: not a copy of that execution but a
    /// mistake (or a reused id). Acknowledge it without running, and tell its sender.
    Conflict,
}

/// Filters for [`Store::list_executions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub workflow: Option<String>,
    /// Only this organization (by name).
    pub org: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

impl Default for ExecutionFilter {
    fn default() -> ExecutionFilter {
        ExecutionFilter {
            status: None,
            workflow: None,
            org: None,
            limit: 50,
        }
    }
}

/// One line of `warden list`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExecutionSummary {
    pub id: ExecutionId,
    pub workflow_name: Option<String>,
    pub org_id: Option<i64>,
    /// The organization's name (`None`: no organization).
    pub org: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    pub attempt: i32,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<f64>,
    pub error_type: Option<String>,
    /// The supervisor that holds it (while `running`).
    pub supervisor: Option<String>,
    /// When a supervisor last took it from the stream.
    pub taken_at: Option<DateTime<Utc>>,
}

/// A whole execution row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExecutionRecord {
    pub id: ExecutionId,
    pub workflow_id: Option<i64>,
    pub workflow_name: Option<String>,
    pub org_id: Option<i64>,
    pub caller: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    pub params: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub traceback: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<f64>,
    pub peak_memory_bytes: Option<i64>,
    pub cpu_seconds: Option<f64>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub attempt: i32,
    pub supervisor: Option<String>,
    pub stream_id: Option<String>,
    pub logs_dropped: i32,
    /// The workflow version it ran (or runs) and its source's SHA-256.
    pub workflow_version: Option<i32>,
    pub workflow_hash: Option<String>,
    /// While `retrying` or `scheduled`: when the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When a supervisor last took it from the stream.
    pub taken_at: Option<DateTime<Utc>>,
}

/// One attempt of an execution, as recorded when it ended.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub status: String,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub traceback: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    pub duration_ms: Option<f64>,
    pub peak_memory_bytes: Option<i64>,
    pub cpu_seconds: Option<f64>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub supervisor: Option<String>,
    /// When the attempt after it was due (`None`: it was the last).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One stored log line (the live one published to clients is `intake::LogLine`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredLogLine {
    /// The attempt that wrote it (each attempt numbers its lines from 0).
    pub attempt: i32,
    pub seq: i32,
    pub level: String,
    pub message: String,
    pub logged_at: DateTime<Utc>,
}

/// `warden show`: the row and its logs in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionDetail {
    pub execution: ExecutionRecord,
    pub logs: Vec<StoredLogLine>,
    /// Every attempt that ran to an end, first first.
    pub attempts: Vec<AttemptRecord>,
}

impl Store {
    /// The intake's per-batch database work in ONE transaction: load every workflow the
    /// batch names, then record the runnable ones `running` ([`Store::begin_batch`]).
    /// `rows` turns the loaded workflows into the rows to begin (requests naming no
    /// workflow are left out by the caller). Returns the workflows and, in `rows`'
    /// order, what to do with each.
    pub async fn prepare_batch<F>(
        &self,
        refs: &[WorkflowKey],
        rows: F,
    ) -> Result<
        (
            HashMap<WorkflowKey, Workflow>,
            Vec<NewExecution>,
            Vec<Begin>,
        ),
        StoreError,
    >
    where
        F: FnOnce(&HashMap<WorkflowKey, Workflow>) -> Vec<NewExecution>,
    {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(StoreError::query("begin the batch transaction"))?;
        let workflows = Self::load_for_batch_on(&mut tx, refs).await?;
        let new = rows(&workflows);
        // Marking executions `running` need not wait for the disk: if the database
        // crashes before it is durable, the stream entries are still pending (they are
        // acknowledged only after the *result* is committed, synchronously) and are
        // simply begun again. This saves a flush per batch on the intake path. A batch
        // that schedules an execution for later is the exception: its entry is
        // acknowledged once this commits, so the row must be durable by then.
        let now = Utc::now();
        if !new.iter().any(|r| r.not_before.is_some_and(|t| t > now)) {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(
                    "relax durability of the batch transaction",
                ))?;
        }
        let begins = if new.is_empty() {
            Vec::new()
        } else {
            Self::begin_batch_on(&mut tx, &new).await?
        };
        tx.commit()
            .await
            .map_err(StoreError::query("commit the batch transaction"))?;
        Ok((workflows, new, begins))
    }

    /// Record a batch as `running` in ONE statement and say, per request (in input
    /// order), whether to run it.
    ///
    /// New ids are inserted with attempt 1. An id whose row exists but is not terminal
    /// (a reclaimed message) is taken over: this supervisor and stream id, a fresh
    /// `started_at`, and attempt + 1, unless the row was handed back before it ever
    /// started ([`Store::hand_back`]), which keeps its attempt. An id whose row is
    /// terminal is left alone and reported as [`Begin::AlreadyDone`].
    ///
    /// The same statement records the event deliveries of the rows it begins (a
    /// data-modifying CTE): new, `running`, attempt 1; another execution, or the same
    /// one taken up again: `running`, attempts + 1 (+ 0 when the execution never
    /// started); the same, terminal execution (a replay): left alone. A delivery named
    /// twice in `rows` is taken by its first occurrence.
    pub async fn begin_batch(&self, rows: &[NewExecution]) -> Result<Vec<Begin>, StoreError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(StoreError::query("acquire a connection"))?;
        Self::begin_batch_on(&mut conn, rows).await
    }

    /// [`Store::begin_batch`] on a given connection (or transaction).
    pub async fn begin_batch_on(
        conn: &mut sqlx::PgConnection,
        rows: &[NewExecution],
    ) -> Result<Vec<Begin>, StoreError> {
        // ON CONFLICT DO UPDATE cannot touch a row twice in one statement, so repeats of
        // an id within the batch are answered here and left out.
        // Ids are stored without NUL characters (PostgreSQL text cannot hold them), here
        // and in the writer alike.
        let keys: Vec<String> = rows.iter().map(|r| strip_nul(r.id.as_str())).collect();
        let mut seen = HashSet::with_capacity(rows.len());
        let mut unique: Vec<&NewExecution> = Vec::with_capacity(rows.len());
        let mut ids: Vec<&str> = Vec::with_capacity(rows.len());
        for (row, key) in rows.iter().zip(&keys) {
            if seen.insert(key.as_str()) {
                unique.push(row);
                ids.push(key);
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let workflow_ids: Vec<Option<i64>> = unique.iter().map(|r| r.workflow_id).collect();
        let names: Vec<String> = unique.iter().map(|r| strip_nul(&r.workflow_name)).collect();
        let org_ids: Vec<Option<i64>> = unique.iter().map(|r| r.org_id).collect();
        let callers: Vec<Option<String>> = unique
            .iter()
            .map(|r| r.caller.as_deref().map(strip_nul))
            .collect();
        let params: Vec<String> = unique
            .iter()
            .map(|r| json_or_string(&r.params_json))
            .collect();
        let queued: Vec<Option<DateTime<Utc>>> = unique
            .iter()
            .map(|r| r.queued_at.map(DateTime::<Utc>::from))
            .collect();
        let supervisors: Vec<String> = unique.iter().map(|r| strip_nul(&r.supervisor)).collect();
        let stream_ids: Vec<Option<String>> = unique
            .iter()
            .map(|r| r.stream_id.as_deref().map(strip_nul))
            .collect();
        let versions: Vec<Option<i32>> = unique.iter().map(|r| r.workflow_version).collect();
        let hashes: Vec<Option<String>> = unique.iter().map(|r| r.workflow_hash.clone()).collect();
        let delivery_ids: Vec<Option<String>> = unique
            .iter()
            .map(|r| {
                r.delivery_id
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .map(strip_nul)
            })
            .collect();
        let timeouts: Vec<Option<i32>> = unique.iter().map(|r| r.timeout_ms).collect();
        let retries: Vec<Option<i32>> = unique.iter().map(|r| r.retries).collect();
        let carriers: Vec<Option<i32>> = unique.iter().map(|r| r.carrier_attempt).collect();
        let not_before: Vec<Option<DateTime<Utc>>> = unique.iter().map(|r| r.not_before).collect();
        let queues: Vec<Option<String>> = unique.iter().map(|r| r.queue.clone()).collect();

        // `prev` reads the snapshot from before this statement: for rows the upsert left
        // alone (terminal ones) it is their committed status.
        let found: Vec<BeginAnswer> = sqlx::query_as(
            "WITH input AS (
                 SELECT *, not_before > now() AS later
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[],
                             $5::text[], $6::text[], $7::timestamptz[], $8::text[],
                             $9::text[], $10::text[], $11::int[], $12::int[], $13::int[],
                             $14::timestamptz[], $15::int[], $16::text[], $17::text[])
                             WITH ORDINALITY
                     AS t(id, workflow_id, workflow_name, org_id, caller, params, queued_at,
                          supervisor, stream_id, delivery_id, timeout_ms, retries,
                          carrier_attempt, not_before, workflow_version, workflow_hash, queue,
                          ord)
             ),
             up AS (
                 INSERT INTO executions AS e (id, workflow_id, workflow_name, org_id, caller,
                                              status, params, queued_at, started_at,
                                              taken_at, supervisor, stream_id, requested_timeout_ms,
                                              requested_retries, next_attempt_at,
                                              workflow_version, workflow_hash, queue)
                 SELECT id,
                        -- A workflow deleted since the batch was loaded is not an error.
                        (SELECT w.id FROM workflows w WHERE w.id = input.workflow_id),
                        workflow_name, org_id, caller,
                        -- Not due yet: waits for the due-work poller (crate::serve::due).
                        CASE WHEN later THEN 'scheduled' ELSE 'running' END::execution_status,
                        params::jsonb, COALESCE(queued_at, now()),
                        -- Taken, not started: the result statement writes when a
                        -- worker started it (crate::serve::publisher, start marks).
                        NULL, CASE WHEN later THEN NULL ELSE now() END,
                        CASE WHEN later THEN NULL ELSE supervisor END, stream_id,
                        timeout_ms, retries, CASE WHEN later THEN not_before END,
                        workflow_version, workflow_hash, queue
                 FROM input
                 ON CONFLICT (id) DO UPDATE SET
                     status = 'running',
                     -- Handed back before it started: this is still its first try. A
                     -- due attempt of a retrying (or scheduled) row is the one it
                     -- waited for.
                     attempt = CASE WHEN e.status IN ('retrying', 'scheduled')
                                      OR (e.status = 'pending' AND e.started_at IS NULL)
                                    THEN e.attempt ELSE e.attempt + 1 END,
                     started_at = NULL,
                     taken_at = now(),
                     next_attempt_at = NULL,
                     -- The note of an interrupted attempt belongs to that attempt.
                     error_type = NULL,
                     error_message = NULL,
                     supervisor = EXCLUDED.supervisor,
                     stream_id = COALESCE(EXCLUDED.stream_id, e.stream_id),
                     workflow_id = COALESCE(e.workflow_id, EXCLUDED.workflow_id),
                     org_id = COALESCE(e.org_id, EXCLUDED.org_id),
                     -- The version this attempt runs.
                     workflow_version = COALESCE(EXCLUDED.workflow_version, e.workflow_version),
                     workflow_hash = COALESCE(EXCLUDED.workflow_hash, e.workflow_hash)
                 -- Only the same stream entry is taken over (it was reclaimed from a
                 -- supervisor that died). Another entry with a non-terminal id is a
                 -- duplicate submission while the first copy runs: never run it twice.
                 WHERE (e.status IN ('pending', 'running')
                        AND (EXCLUDED.stream_id IS NULL OR e.stream_id IS NULL
                             OR e.stream_id = EXCLUDED.stream_id))
                    -- A waiting row is begun only by a due-work entry carrying the very
                    -- attempt it waits for: (id, attempt) is the key, so an entry
                    -- enqueued twice runs once, and a stale one not at all.
                    OR (e.status IN ('retrying', 'scheduled')
                        AND e.attempt = (SELECT i.carrier_attempt FROM input i
                                         WHERE i.id = EXCLUDED.id))
                 RETURNING e.id, e.attempt, e.status::text AS status
             ),
             -- Reads `executions` as it was before this statement, like `prev` below.
             delivered AS (
                 INSERT INTO deliveries AS d (id, execution_id)
                 SELECT DISTINCT ON (i.delivery_id) i.delivery_id, i.id
                 FROM input i JOIN up ON up.id = i.id
                 WHERE i.delivery_id IS NOT NULL
                 ORDER BY i.delivery_id, i.ord
                 ON CONFLICT (id) DO UPDATE SET
                     execution_id = EXCLUDED.execution_id,
                     status = 'running',
                     attempts = d.attempts + CASE
                         WHEN d.execution_id = EXCLUDED.execution_id AND EXISTS (
                             SELECT 1 FROM executions p
                             WHERE p.id = EXCLUDED.execution_id AND p.status = 'pending'
                               AND p.started_at IS NULL)
                         THEN 0 ELSE 1 END,
                     updated_at = now(),
                     completed_at = NULL
                 WHERE d.execution_id <> EXCLUDED.execution_id OR d.status = 'running'
             )
             SELECT i.id, up.attempt, up.status, prev.status::text,
                    COALESCE(prev.params IS DISTINCT FROM i.params::jsonb, false)
             FROM input i
             LEFT JOIN up ON up.id = i.id
             LEFT JOIN executions prev ON prev.id = i.id",
        )
        .bind(&ids)
        .bind(&workflow_ids)
        .bind(&names)
        .bind(&org_ids)
        .bind(&callers)
        .bind(&params)
        .bind(&queued)
        .bind(&supervisors)
        .bind(&stream_ids)
        .bind(&delivery_ids)
        .bind(&timeouts)
        .bind(&retries)
        .bind(&carriers)
        .bind(&not_before)
        .bind(&versions)
        .bind(&hashes)
        .bind(&queues)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::query("record the batch as running"))?;

        let mut answers = std::collections::HashMap::with_capacity(found.len());
        for (id, attempt, status, previous, params_differ) in found {
            let begin = match (attempt, previous) {
                (Some(_), _) if status.as_deref() == Some("scheduled") => Begin::Scheduled,
                (Some(attempt), _) => Begin::Run { attempt },
                // Not begun, and the row holds other params: the same id was used for
                // another request.
                (None, Some(_)) if params_differ => Begin::Conflict,
                (None, Some(previous)) => match previous.parse::<ExecutionStatus>()?.terminal() {
                    Some(status) => Begin::AlreadyDone { status },
                    // Not terminal and not taken: another stream entry runs this id.
                    None => Begin::Duplicate,
                },
                (None, None) => {
                    return Err(StoreError::Invalid {
                        what: "begin_batch answer",
                        reason: format!("execution `{id}` was neither inserted nor found"),
                    })
                }
            };
            answers.insert(id, begin);
        }
        let mut first = HashSet::with_capacity(rows.len());
        rows.iter()
            .zip(&keys)
            .map(|(row, key)| {
                if !first.insert(key.as_str()) {
                    return Ok(Begin::Duplicate);
                }
                answers
                    .get(key)
                    .copied()
                    .ok_or_else(|| StoreError::Invalid {
                        what: "begin_batch answer",
                        reason: format!("no answer for execution `{}`", row.id),
                    })
            })
            .collect()
    }

    /// Gives back `running` rows that `supervisor` holds and will not finish, in one
    /// statement, so that another supervisor runs them from their stream entries (which
    /// stay unacknowledged): each goes back to `pending` with no supervisor. One that
    /// never started also loses its `started_at`, so its next run keeps the attempt;
    /// one that started keeps it and is marked [`INTERRUPTED`], naming the supervisor
    /// whose shutdown cut it off, so its next run is attempt + 1.
    ///
    /// Only rows still `running` under `supervisor` from the same stream entry are
    /// touched: one another supervisor has taken over meanwhile is left alone. Returns
    /// how many rows were given back.
    pub async fn hand_back(&self, supervisor: &str, items: &[HandBack]) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = items.iter().map(|h| strip_nul(h.id.as_str())).collect();
        let stream_ids: Vec<String> = items.iter().map(|h| strip_nul(&h.stream_id)).collect();
        let started: Vec<bool> = items.iter().map(|h| h.started).collect();
        let started_at: Vec<Option<DateTime<Utc>>> = items.iter().map(|h| h.started_at).collect();
        let done = sqlx::query(
            "UPDATE executions e SET
                 status = 'pending',
                 supervisor = NULL,
                 -- A started attempt keeps a start time, which is also what makes its
                 -- next run attempt + 1 (begin_batch).
                 started_at = CASE WHEN i.started
                                   THEN COALESCE(i.started_at, e.started_at, now()) END,
                 error_type = CASE WHEN i.started THEN $5 END,
                 error_message = CASE WHEN i.started THEN format(
                     'attempt %s was interrupted by the shutdown of supervisor %s; \
                      it runs again on another supervisor', e.attempt, $4) END
             FROM UNNEST($1::text[], $2::text[], $3::bool[], $6::timestamptz[])
                  AS i(id, stream_id, started, started_at)
             WHERE e.id = i.id AND e.status = 'running' AND e.supervisor = $4
               AND e.stream_id = i.stream_id",
        )
        .bind(&ids)
        .bind(&stream_ids)
        .bind(&started)
        .bind(strip_nul(supervisor))
        .bind(INTERRUPTED)
        .bind(&started_at)
        .execute(self.pool())
        .await
        .map_err(StoreError::query(
            "give back the executions this supervisor will not finish",
        ))?;
        Ok(done.rows_affected())
    }

    /// Record a rejected request now, in its own transaction (row and daily metrics),
    /// unless the id already has a terminal state. Returns whether it was recorded.
    /// Prefer [`Rejected::into_completed`] through the writer when the stream message
    /// must be acknowledged after COMMIT.
    pub async fn record_rejected(&self, r: &Rejected) -> Result<bool, StoreError> {
        let item = Completed::rejected(r.clone());
        let outcome = self.commit_batch([&item]).await?;
        Ok(outcome.first() == Some(&CommitOutcome::Recorded))
    }

    /// Executions, newest first.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionSummary>, StoreError> {
        sqlx::query_as(
            "SELECT e.id, e.workflow_name, e.org_id, o.name AS org, e.status::text AS status,
                    e.attempt, e.queued_at, e.started_at, e.completed_at, e.duration_ms,
                    e.error_type, e.supervisor, e.taken_at
             FROM executions e LEFT JOIN organizations o ON o.id = e.org_id
             WHERE ($1::text IS NULL OR e.status = $1::execution_status
                    -- pending or running: a `running` row may still be queued on
                    -- its supervisor (the caller tells which)
                    OR ($1 IN ('pending', 'running') AND e.status IN ('pending', 'running')))
               AND ($2::text IS NULL OR e.workflow_name = $2)
               AND ($4::text IS NULL OR o.name = $4)
             ORDER BY e.queued_at DESC, e.id
             LIMIT $3",
        )
        .bind(filter.status.map(ExecutionStatus::as_str))
        .bind(filter.workflow.as_deref())
        .bind(filter.limit.max(0))
        .bind(filter.org.as_deref())
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list executions"))
    }

    /// The params an execution was submitted with (`None`: no row).
    pub async fn execution_params(
        &self,
        id: &str,
    ) -> Result<Option<Option<serde_json::Value>>, StoreError> {
        sqlx::query_scalar("SELECT params FROM executions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("read the execution's params"))
    }

    /// An execution's status alone (`None`: no row), without its record and logs.
    pub async fn execution_status(&self, id: &str) -> Result<Option<ExecutionStatus>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status::text FROM executions WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::query("read the execution's status"))?;
        status.map(|s| s.parse()).transpose()
    }

    /// One execution and its logs in `seq` order; `None` if there is no such id.
    pub async fn show_execution(&self, id: &str) -> Result<Option<ExecutionDetail>, StoreError> {
        let execution: Option<ExecutionRecord> = sqlx::query_as(
            "SELECT id, workflow_id, workflow_name, org_id, caller, status::text AS status,
                    params, result, error_type, error_message, traceback, queued_at,
                    started_at, completed_at, duration_ms, peak_memory_bytes, cpu_seconds,
                    exit_code, exit_signal, attempt, supervisor, stream_id, logs_dropped,
                    next_attempt_at, workflow_version, workflow_hash, taken_at
             FROM executions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("read the execution"))?;
        let Some(execution) = execution else {
            return Ok(None);
        };
        let logs = sqlx::query_as(
            "SELECT attempt, seq, level, message, logged_at FROM execution_logs
             WHERE execution_id = $1 ORDER BY attempt, seq",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("read the execution's logs"))?;
        let attempts = sqlx::query_as(
            "SELECT attempt, status, error_type, error_message, traceback, started_at,
                    completed_at, duration_ms, peak_memory_bytes, cpu_seconds, exit_code,
                    exit_signal, supervisor, next_attempt_at
             FROM execution_attempts WHERE execution_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("read the execution's attempts"))?;
        Ok(Some(ExecutionDetail {
            execution,
            logs,
            attempts,
        }))
    }
}

/// PostgreSQL text cannot hold NUL; replace it rather than fail a whole batch.
pub(crate) fn strip_nul(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

/// JSON text that `::jsonb` will accept: `text` itself when it is JSON without a
/// `\u0000` escape (jsonb rejects those), the same document with NULs replaced when it
/// has one, and `text` as a JSON string otherwise.
pub(crate) fn json_or_string(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if text.contains("\\u0000") => {
            serde_json::to_string(&without_nul(value)).unwrap_or_else(|_| "null".to_string())
        }
        Ok(_) => text.to_string(),
        Err(_) => serde_json::Value::String(strip_nul(text)).to_string(),
    }
}

fn without_nul(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(strip_nul(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (strip_nul(&k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::json_or_string;

    #[test]
    fn json_is_made_storable() {
        assert_eq!(json_or_string(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(json_or_string("not json"), r#""not json""#);
        assert_eq!(
            json_or_string(r#"{"a":"x\u0000y"}"#),
            "{\"a\":\"x\u{FFFD}y\"}"
        );
    }
}
