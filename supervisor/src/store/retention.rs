//! Retention's statements: delete the oldest ended executions (and their log lines) a
//! small batch at a time, or count what that would delete. Rows that are `pending` or
//! `running` are never touched, whatever their age.
//!
//! One batch is one statement (its own short transaction): the batch's rows are
//! chosen oldest first through the partial index `executions_ended_completed_at`
//! (migration 0006) and locked `FOR UPDATE SKIP LOCKED`, so a row another transaction
//! holds is left for a later batch instead of waited for, and nothing else waits
//! longer than one batch takes. The pacing between batches is the caller's
//! (crate::ops::retention).

use chrono::{DateTime, Utc};

use crate::store::{Store, StoreError};

/// What one batch deleted (or, for [`Store::count_prunable`], would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub executions: u64,
    pub logs: u64,
}

impl Store {
    /// Deletes up to `limit` ended executions that completed before `cutoff`, oldest
    /// first, with their log lines, in one statement.
    pub async fn prune_batch(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Pruned, StoreError> {
        let (executions, logs): (i64, i64) = sqlx::query_as(
            "WITH doomed AS (
                 SELECT id FROM executions
                 WHERE status NOT IN ('pending', 'running') AND completed_at < $1
                 ORDER BY completed_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ),
             logs AS (
                 DELETE FROM execution_logs l USING doomed d
                 WHERE l.execution_id = d.id
                 RETURNING 1
             ),
             gone AS (
                 DELETE FROM executions e USING doomed d
                 WHERE e.id = d.id
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM logs)",
        )
        .bind(cutoff)
        .bind(limit.max(1))
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query("delete old executions"))?;
        Ok(Pruned {
            executions: executions as u64,
            logs: logs as u64,
        })
    }

    /// What [`Store::prune_batch`] would delete, all batches together.
    pub async fn count_prunable(&self, cutoff: DateTime<Utc>) -> Result<Pruned, StoreError> {
        let (executions, logs): (i64, i64) = sqlx::query_as(
            "SELECT count(*),
                    COALESCE(sum((SELECT count(*) FROM execution_logs l
                                  WHERE l.execution_id = e.id)), 0)::bigint
             FROM executions e
             WHERE status NOT IN ('pending', 'running') AND completed_at < $1",
        )
        .bind(cutoff)
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query("count old executions"))?;
        Ok(Pruned {
            executions: executions as u64,
            logs: logs as u64,
        })
    }
}
