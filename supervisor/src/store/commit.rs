//! One batch of outcomes in ONE transaction: the execution rows, their logs, the SDK
//! writes of the successful ones (config, kv, ROI), the status of their event
//! deliveries, and the daily metrics. The group-commit writer ([`crate::store::writer`])
//! decides when to call it and what to do when it fails; this module only knows how to
//! write.
//!
//! Its input is the writer's [`Completed`] items (crate::store::items): each an outcome
//! with its logs, attribution, stream entry and attempt, and the completion the
//! acknowledger will publish. This module writes the first four (the stream entry and
//! attempt fence the row: only the run that began it writes its result) and leaves the
//! completion alone; its answer per item is a [`CommitOutcome`], which the writer turns
//! into the `Committed` it hands on, the stream entry and completion carried back.
//!
//! It is idempotent, which is what lets the writer retry a batch whose COMMIT may or may
//! not have happened (the connection died waiting for the answer):
//! - the row upsert only touches rows that are not terminal yet, and says which ones it
//!   changed;
//! - logs, SDK writes and metrics are written for exactly those rows, so a replayed
//!   execution adds none of them twice; the delivery status is set by the same
//!   statement as the row (a data-modifying CTE), so it changes exactly when the row
//!   does.
//!
//! SDK writes (crate::sdk::writes) are applied only for rows recorded `success`, after
//! the batch's writes are collapsed per (organization, key) in batch order (the last
//! execution to finish wins, as it would one transaction at a time) and sorted, so two
//! supervisors lock the same rows in the same order. They are parsed before the
//! transaction begins: malformed writes fail the batch as a data error without a round
//! trip, and the writer isolates the item that carries them.
//!
//! Values PostgreSQL would refuse are made storable first (NUL characters, `\u0000` in
//! JSON, non-JSON results, out-of-range numbers), so one odd result cannot fail its whole
//! batch; what is left to fail is the database's own doing (constraints, triggers).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Utc};

use crate::outcome::Status;
use crate::sdk::writes::{Change, SdkWrites};
use crate::store::configs::apply_config_writes;
use crate::store::executions::{json_or_string, strip_nul, ExecutionStatus};
use crate::store::items::{CommitOutcome, Completed};
use crate::store::kv::apply_kv_writes;
use crate::store::metrics::{DailyMetrics, Sample};
use crate::store::{Store, StoreError};

/// Per item: id, whether this statement recorded it, its status, stream entry and
/// attempt before the statement, and (when recorded) the row's workflow and
/// organization.
type Answer = (
    String,
    bool,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
);

/// The arrays of the row upsert, one element per (unique) item.
#[derive(Default)]
struct Rows {
    id: Vec<String>,
    workflow_id: Vec<Option<i64>>,
    workflow_name: Vec<Option<String>>,
    caller: Vec<Option<String>>,
    org_id: Vec<Option<i64>>,
    status: Vec<&'static str>,
    result: Vec<Option<String>>,
    error_type: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    traceback: Vec<Option<String>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    completed_at: Vec<DateTime<Utc>>,
    duration_ms: Vec<f64>,
    peak_memory_bytes: Vec<i64>,
    cpu_seconds: Vec<f64>,
    exit_code: Vec<Option<i32>>,
    exit_signal: Vec<Option<i32>>,
    logs_dropped: Vec<i32>,
    stream_id: Vec<Option<String>>,
    attempt: Vec<Option<i32>>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
    due_entry: Vec<bool>,
}

/// The arrays of the log insert.
#[derive(Default)]
struct Logs {
    execution_id: Vec<String>,
    attempt: Vec<i32>,
    seq: Vec<i32>,
    level: Vec<&'static str>,
    message: Vec<String>,
    logged_at: Vec<DateTime<Utc>>,
}

impl Store {
    /// Write `items` in one transaction and say, per item in input order, whether it was
    /// recorded or already terminal. An id repeated within `items` is written once (the
    /// first); its repeats are answered as already terminal.
    ///
    /// On error nothing of the batch is written (the transaction rolls back), except in
    /// the one ambiguous case of a connection lost during COMMIT, which a retry resolves.
    pub async fn commit_batch<'a>(
        &self,
        items: impl IntoIterator<Item = &'a Completed>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let items: Vec<&Completed> = items.into_iter().collect();
        let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut unique: Vec<&Completed> = Vec::with_capacity(items.len());
        for &item in &items {
            let id = strip_nul(item.outcome.execution_id.as_str());
            if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(id) {
                slot.insert(unique.len());
                unique.push(item);
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let rows = rows_of(&unique);
        // Parsed before BEGIN: a malformed payload costs no round trip.
        let mut writes: Vec<Option<SdkWrites>> = Vec::with_capacity(unique.len());
        for item in &unique {
            let o = &item.outcome;
            writes.push(
                if o.status == Status::Success && !o.sdk_writes_json.is_empty() {
                    Some(
                        SdkWrites::parse(&o.sdk_writes_json).map_err(|e| StoreError::Invalid {
                            what: "SDK writes",
                            reason: format!("execution `{}`: {e}", o.execution_id),
                        })?,
                    )
                } else {
                    None
                },
            );
        }

        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|source| StoreError::Unavailable {
                what: "begin the batch transaction",
                source,
            })?;

        // `prev` reads the snapshot from before the statement: for a row the upsert left
        // alone it is the terminal status already committed.
        let answers: Vec<Answer> = sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[],
                                      $5::text[], $6::text[], $7::text[], $8::text[],
                                      $9::text[], $10::timestamptz[], $11::timestamptz[],
                                      $12::float8[], $13::bigint[], $14::float8[],
                                      $15::int[], $16::int[], $17::int[], $18::text[],
                                      $19::text[], $20::int[], $21::timestamptz[],
                                      $22::bool[])
                     AS t(id, workflow_id, workflow_name, org_id, status, result, error_type,
                          error_message, traceback, started_at, completed_at, duration_ms,
                          peak_memory_bytes, cpu_seconds, exit_code, exit_signal,
                          logs_dropped, stream_id, caller, attempt, next_attempt_at,
                          due_entry)
             ),
             up AS (
                 INSERT INTO executions AS e (id, workflow_id, workflow_name, org_id, status,
                                              result, error_type, error_message, traceback,
                                              started_at, completed_at, duration_ms,
                                              peak_memory_bytes, cpu_seconds, exit_code,
                                              exit_signal, logs_dropped, stream_id, caller,
                                              next_attempt_at)
                 SELECT id, workflow_id, workflow_name, org_id,
                        -- The retry policy gave this attempt a successor: the execution
                        -- waits for it (crate::retry_policy).
                        (CASE WHEN next_attempt_at IS NOT NULL THEN 'retrying'
                              ELSE status END)::execution_status,
                        result::jsonb, error_type, error_message, traceback, started_at,
                        completed_at, duration_ms, peak_memory_bytes, cpu_seconds, exit_code,
                        exit_signal, logs_dropped, stream_id, caller, next_attempt_at
                 FROM input
                 ON CONFLICT (id) DO UPDATE SET
                     status = EXCLUDED.status,
                     -- A retrying row already counts the attempt it waits for, which is
                     -- the one its due-work entry must carry (executions::begin_batch).
                     attempt = CASE WHEN EXCLUDED.next_attempt_at IS NOT NULL
                                    THEN e.attempt + 1 ELSE e.attempt END,
                     next_attempt_at = EXCLUDED.next_attempt_at,
                     result = EXCLUDED.result,
                     error_type = EXCLUDED.error_type,
                     error_message = EXCLUDED.error_message,
                     traceback = EXCLUDED.traceback,
                     started_at = COALESCE(EXCLUDED.started_at, e.started_at),
                     completed_at = CASE WHEN EXCLUDED.next_attempt_at IS NULL
                                         THEN EXCLUDED.completed_at END,
                     duration_ms = EXCLUDED.duration_ms,
                     peak_memory_bytes = EXCLUDED.peak_memory_bytes,
                     cpu_seconds = EXCLUDED.cpu_seconds,
                     exit_code = EXCLUDED.exit_code,
                     exit_signal = EXCLUDED.exit_signal,
                     logs_dropped = EXCLUDED.logs_dropped,
                     stream_id = COALESCE(EXCLUDED.stream_id, e.stream_id),
                     workflow_id = COALESCE(e.workflow_id, EXCLUDED.workflow_id),
                     workflow_name = COALESCE(e.workflow_name, EXCLUDED.workflow_name),
                     org_id = COALESCE(e.org_id, EXCLUDED.org_id),
                     caller = COALESCE(e.caller, EXCLUDED.caller)
                 -- Only the stream entry that began the execution writes its result
                 -- (as in begin_batch): another entry with the same id is a duplicate.
                 WHERE (e.status IN ('pending', 'running')
                        AND (EXCLUDED.stream_id IS NULL OR e.stream_id IS NULL
                             OR e.stream_id = EXCLUDED.stream_id)
                        -- Fenced by attempt: once the entry was begun again (a peer took
                        -- it over), only that attempt's outcome is written.
                        AND e.attempt = COALESCE(
                            (SELECT i.attempt FROM input i WHERE i.id = EXCLUDED.id),
                            e.attempt))
                    -- A cancel of an execution waiting for its next attempt (or its
                    -- start): `warden cancel`, or its due-work entry found a cancel
                    -- marker; or its due-work entry could not run (its workflow is
                    -- gone). Nothing of it runs, so no attempt fences it.
                    OR (e.status IN ('retrying', 'scheduled')
                        AND (EXCLUDED.status = 'cancelled'
                             OR (SELECT i.due_entry FROM input i WHERE i.id = EXCLUDED.id))
                        AND (SELECT i.attempt FROM input i WHERE i.id = EXCLUDED.id) IS NULL)
                 RETURNING e.id, e.workflow_id, e.org_id, e.status, e.supervisor
             ),
             attempts AS (
                 INSERT INTO execution_attempts (execution_id, attempt, status, error_type,
                                                 error_message, traceback, started_at,
                                                 completed_at, duration_ms,
                                                 peak_memory_bytes, cpu_seconds, exit_code,
                                                 exit_signal, supervisor, next_attempt_at)
                 SELECT i.id, i.attempt, i.status, i.error_type, i.error_message,
                        i.traceback, i.started_at, i.completed_at, i.duration_ms,
                        i.peak_memory_bytes, i.cpu_seconds, i.exit_code, i.exit_signal,
                        up.supervisor, i.next_attempt_at
                 FROM input i JOIN up ON up.id = i.id
                 WHERE i.attempt IS NOT NULL
                 ON CONFLICT (execution_id, attempt) DO NOTHING
             ),
             delivered AS (
                 UPDATE deliveries d SET
                     status = CASE WHEN up.status = 'retrying' THEN 'running'
                                   ELSE up.status::text END,
                     updated_at = now(),
                     completed_at = CASE WHEN up.status = 'retrying' THEN NULL ELSE now() END
                 FROM up
                 WHERE d.execution_id = up.id
             )
             SELECT i.id, up.id IS NOT NULL, prev.status::text, prev.stream_id, prev.attempt,
                    up.workflow_id, up.org_id
             FROM input i
             LEFT JOIN up ON up.id = i.id
             LEFT JOIN executions prev ON prev.id = i.id",
        )
        .bind(&rows.id)
        .bind(&rows.workflow_id)
        .bind(&rows.workflow_name)
        .bind(&rows.org_id)
        .bind(&rows.status)
        .bind(&rows.result)
        .bind(&rows.error_type)
        .bind(&rows.error_message)
        .bind(&rows.traceback)
        .bind(&rows.started_at)
        .bind(&rows.completed_at)
        .bind(&rows.duration_ms)
        .bind(&rows.peak_memory_bytes)
        .bind(&rows.cpu_seconds)
        .bind(&rows.exit_code)
        .bind(&rows.exit_signal)
        .bind(&rows.logs_dropped)
        .bind(&rows.stream_id)
        .bind(&rows.caller)
        .bind(&rows.attempt)
        .bind(&rows.next_attempt_at)
        .bind(&rows.due_entry)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query("write the execution rows"))?;

        let mut outcome_of: Vec<Option<CommitOutcome>> = vec![None; unique.len()];
        let mut logs = Logs::default();
        let mut metrics = DailyMetrics::new();
        // Collapsed per (org, key): the later item in the batch wins.
        let mut config_writes: BTreeMap<(Option<i64>, String), Change> = BTreeMap::new();
        let mut kv_writes: BTreeMap<(Option<i64>, String), (Change, String)> = BTreeMap::new();
        let mut recorded_order: Vec<(usize, Option<i64>)> = Vec::new();
        for (id, recorded, previous, previous_stream, previous_attempt, workflow_id, org_id) in
            answers
        {
            let Some(&i) = index.get(&id) else { continue };
            let item = unique[i];
            let same_entry = item.stream_id.is_some()
                && previous_stream.as_deref()
                    == item.stream_id.as_deref().map(strip_nul).as_deref();
            if recorded && item.retry_at.is_some() {
                // A failed attempt with a successor: its logs and its attempt row are
                // kept; the execution is counted in the metrics when it ends.
                outcome_of[i] = Some(CommitOutcome::Retrying);
                push_logs(&mut logs, &id, item);
            } else if recorded {
                recorded_order.push((i, org_id));
                let roi = writes[i].as_ref().and_then(|w| w.roi);
                outcome_of[i] = Some(CommitOutcome::Recorded);
                push_logs(&mut logs, &id, item);
                metrics.add(&Sample {
                    day: rows.completed_at[i].date_naive(),
                    org_id,
                    workflow_id,
                    status: item.outcome.status,
                    duration_ms: rows.duration_ms[i],
                    cpu_seconds: rows.cpu_seconds[i],
                    peak_memory_bytes: rows.peak_memory_bytes[i],
                    time_saved_seconds: roi
                        .map_or(item.time_saved_seconds, |r| r.time_saved_seconds),
                    value: roi.map_or(item.value, |r| r.value),
                });
            } else {
                let previous = previous
                    .as_deref()
                    .and_then(|p| p.parse::<ExecutionStatus>().ok());
                // This very outcome was committed before (a replay after a COMMIT whose
                // answer was lost): the row waits for the attempt after it.
                let replayed_retry = previous == Some(ExecutionStatus::Retrying)
                    && same_entry
                    && item.retry_at.is_some()
                    && item
                        .attempt
                        .is_some_and(|a| previous_attempt == Some(a + 1));
                outcome_of[i] = Some(match previous.map(ExecutionStatus::terminal) {
                    _ if replayed_retry => CommitOutcome::Retrying,
                    // A row that is not terminal was left alone: the same entry was begun
                    // again by a later attempt, or another entry owns it.
                    Some(None) if same_entry && item.attempt.is_some() => CommitOutcome::Superseded,
                    Some(None) => CommitOutcome::NotOwner,
                    status => CommitOutcome::AlreadyTerminal {
                        status: status.flatten().unwrap_or(item.outcome.status),
                    },
                });
            }
        }

        if !logs.seq.is_empty() {
            sqlx::query(
                "INSERT INTO execution_logs (execution_id, attempt, seq, level, message,
                                             logged_at)
                 SELECT * FROM UNNEST($1::text[], $6::int[], $2::int[], $3::text[],
                                      $4::text[], $5::timestamptz[])
                 ON CONFLICT (execution_id, attempt, seq) DO NOTHING",
            )
            .bind(&logs.execution_id)
            .bind(&logs.seq)
            .bind(&logs.level)
            .bind(&logs.message)
            .bind(&logs.logged_at)
            .bind(&logs.attempt)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("insert the execution logs"))?;
        }
        // Batch order, not the statement's answer order, decides which write wins.
        recorded_order.sort_unstable_by_key(|&(i, _)| i);
        for (i, org_id) in recorded_order {
            let Some(w) = writes[i].take() else { continue };
            let id = strip_nul(unique[i].outcome.execution_id.as_str());
            for (key, change) in w.config {
                config_writes.insert((org_id, key), change);
            }
            for (key, change) in w.kv {
                kv_writes.insert((org_id, key), (change, id.clone()));
            }
        }
        if !config_writes.is_empty() {
            let config_writes: Vec<_> = config_writes.into_iter().collect();
            apply_config_writes(&mut tx, &config_writes).await?;
        }
        if !kv_writes.is_empty() {
            let kv_writes: Vec<_> = kv_writes
                .into_iter()
                .map(|(k, (change, by))| (k, change, by))
                .collect();
            apply_kv_writes(&mut tx, &kv_writes).await?;
        }
        metrics.upsert(&mut tx).await?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit the batch"))?;

        // Answer every input item: unique ones from the statement, repeats from their
        // first occurrence.
        let mut result = Vec::with_capacity(items.len());
        let mut answered = vec![false; unique.len()];
        for item in &items {
            let i = index[&strip_nul(item.outcome.execution_id.as_str())];
            let first = outcome_of[i].ok_or_else(|| StoreError::Invalid {
                what: "commit answer",
                reason: format!("no answer for execution `{}`", item.outcome.execution_id),
            })?;
            result.push(if answered[i] {
                match first {
                    CommitOutcome::Recorded => CommitOutcome::AlreadyTerminal {
                        status: unique[i].outcome.status,
                    },
                    other => other,
                }
            } else {
                answered[i] = true;
                first
            });
        }
        Ok(result)
    }
}

fn rows_of(items: &[&Completed]) -> Rows {
    let mut r = Rows::default();
    for item in items {
        let o = &item.outcome;
        let logs_past_i32 = item.logs.iter().filter(|l| l.seq > i32::MAX as u32).count();
        r.id.push(strip_nul(o.execution_id.as_str()));
        r.workflow_id.push(item.workflow_id);
        r.workflow_name
            .push(item.workflow_name.as_deref().map(strip_nul));
        r.org_id.push(item.org_id);
        r.status.push(o.status.as_str());
        r.result.push(match (o.status, &o.result_json) {
            (Status::Success, Some(json)) => Some(json_or_string(json)),
            _ => None,
        });
        let error = o.error.as_ref();
        r.error_type.push(error.map(|e| strip_nul(&e.error_type)));
        r.error_message.push(error.map(|e| strip_nul(&e.message)));
        r.traceback.push(
            error
                .filter(|e| !e.traceback.is_empty())
                .map(|e| strip_nul(&e.traceback)),
        );
        r.started_at.push(o.started_at.map(DateTime::<Utc>::from));
        r.completed_at.push(DateTime::<Utc>::from(o.finished_at));
        r.duration_ms.push(o.duration.as_secs_f64() * 1000.0);
        r.peak_memory_bytes
            .push(i64::try_from(o.peak_memory_bytes).unwrap_or(i64::MAX));
        r.cpu_seconds.push(if o.cpu_seconds.is_finite() {
            o.cpu_seconds
        } else {
            0.0
        });
        r.exit_code.push(o.exit_code);
        r.exit_signal.push(o.exit_signal);
        r.logs_dropped
            .push(i32::try_from(o.logs_dropped as u64 + logs_past_i32 as u64).unwrap_or(i32::MAX));
        r.stream_id.push(item.stream_id.as_deref().map(strip_nul));
        r.attempt.push(item.attempt);
        r.next_attempt_at.push(item.retry_at);
        r.due_entry.push(item.due_entry);
    }
    r
}

/// Queue `item`'s logs for the insert, under the outcome's id (whatever a line itself
/// claims) so the foreign key holds.
fn push_logs(logs: &mut Logs, id: &str, item: &Completed) {
    let fallback = DateTime::<Utc>::from(item.outcome.finished_at);
    for line in &item.logs {
        let Ok(seq) = i32::try_from(line.seq) else {
            continue; // counted in logs_dropped
        };
        logs.execution_id.push(id.to_string());
        logs.attempt.push(item.attempt.unwrap_or(1));
        logs.seq.push(seq);
        logs.level.push(line.level.as_str());
        logs.message.push(strip_nul(&line.message));
        logs.logged_at.push(
            DateTime::<Utc>::from_timestamp_micros(line.timestamp_us)
                .filter(|t| (1900..=9999).contains(&t.year()))
                .unwrap_or(fallback),
        );
    }
}
