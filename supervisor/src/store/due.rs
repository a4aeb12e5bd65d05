//! Executions that wait in PostgreSQL for their time (`retrying`: the next attempt is
//! due at `next_attempt_at`; `scheduled`: submitted with a later `not_before`), for the
//! due-work poller (crate::serve::due) and `warden cancel`.
//!
//! [`Store::claim_due`] is one statement: it takes the due rows with `FOR UPDATE SKIP
//! LOCKED` (so two supervisors polling at once take different rows) and pushes their
//! `next_attempt_at` a lease ahead, so nobody takes them again while the claimer
//! enqueues them. A claimer that dies before enqueueing loses nothing: the lease runs
//! out and another supervisor takes the row again. A row enqueued twice that way is
//! begun once: `begin_batch` keys a waiting row on (id, attempt).

use std::time::Duration;

use crate::outcome::{ExecutionId, ExecutionOutcome, Status};
use crate::store::items::{CommitOutcome, Completed};
use crate::store::{Store, StoreError};

/// A due execution, with what its next attempt's stream entry carries.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DueExecution {
    pub id: ExecutionId,
    /// The attempt that is due.
    pub attempt: i32,
    pub workflow_id: Option<i64>,
    pub workflow_name: Option<String>,
    /// The organization's name, for a workflow looked up by name.
    pub org: Option<String>,
    pub params: Option<String>,
    pub caller: Option<String>,
    pub requested_timeout_ms: Option<i32>,
    pub requested_retries: Option<i32>,
    /// The named queue it was submitted to (`None`: the default queue).
    pub queue: Option<String>,
}

impl Store {
    /// Takes up to `limit` due executions for `lease` (see the module docs), in one
    /// statement on a pooled connection.
    pub async fn claim_due(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<DueExecution>, StoreError> {
        sqlx::query_as(
            "UPDATE executions e SET next_attempt_at = now() + make_interval(secs => $2)
             FROM (SELECT id FROM executions
                   WHERE next_attempt_at <= now() AND status IN ('retrying', 'scheduled')
                   ORDER BY next_attempt_at
                   LIMIT $1
                   FOR UPDATE SKIP LOCKED) due
             WHERE e.id = due.id
             RETURNING e.id, e.attempt, e.workflow_id, e.workflow_name,
                       (SELECT o.name FROM organizations o WHERE o.id = e.org_id) AS org,
                       e.params::text AS params, e.caller, e.requested_timeout_ms,
                       e.requested_retries, e.queue",
        )
        .bind(limit.max(0))
        .bind(lease.as_secs_f64())
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("claim due executions"))
    }

    /// Cancels an execution that waits for its next attempt or its start, at once, in
    /// one transaction (row, attempt-less, and metrics): whether it did (`false`: the
    /// row is not waiting, e.g. it runs now or has ended).
    pub async fn cancel_waiting(&self, id: &str) -> Result<bool, StoreError> {
        let outcome = ExecutionOutcome::not_run(
            &ExecutionId::from(id),
            Status::Cancelled,
            "Cancelled",
            "cancelled while waiting for its next attempt or its start",
        );
        let item = Completed::new(outcome);
        let done = self.commit_batch([&item]).await?;
        Ok(done.first() == Some(&CommitOutcome::Recorded))
    }
}
