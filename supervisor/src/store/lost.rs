//! Executions whose supervisor died (or that a stopping supervisor handed back) with
//! nothing left to run them again: the sweeper's two statements
//! ([`Store::unfinished_elsewhere`] to find candidates, and [`Store::record_lost`] to
//! end them `crashed` / [`SUPERVISOR_LOST`]). Deciding which candidates are lost (their
//! supervisor's heartbeat and their stream entry are gone) is the sweeper's job
//! (crate::serve::sweeper), in Redis.
//!
//! [`Store::record_lost`] is one transaction (rows, delivery statuses, daily metrics)
//! that only touches a row still unfinished at the attempt and supervisor the sweeper
//! checked, so any number of supervisors may sweep at once: each row is ended by
//! exactly one of them, and a row begun again meanwhile (its entry taken over) is left
//! alone.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::outcome::{ExecutionId, Status};
use crate::store::metrics::{DailyMetrics, Sample};
use crate::store::{Store, StoreError};

/// The `error_type` of an execution whose supervisor died and whose stream entry is
/// gone too (Redis lost its data, or the entry was trimmed): nothing can run it again.
pub const SUPERVISOR_LOST: &str = "SupervisorLost";

/// [`Unfinished::supervisor`] of a row handed back at shutdown: it has no supervisor
/// (none is alive for it), so only its stream entry decides whether it is lost.
pub const HANDED_BACK: &str = "";

/// An unfinished row, as the sweeper checks it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Unfinished {
    pub id: ExecutionId,
    pub attempt: i32,
    /// Its supervisor; [`HANDED_BACK`] for a row a supervisor gave back at shutdown
    /// (`pending` with no supervisor: [`Store::hand_back`]).
    pub supervisor: String,
    pub stream_id: Option<String>,
}

/// A row [`Store::record_lost`] ended.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lost {
    pub id: ExecutionId,
    pub supervisor: String,
    pub error_message: String,
}

/// What the sweep statement returns per row it ended.
#[derive(sqlx::FromRow)]
struct Ended {
    id: ExecutionId,
    supervisor: String,
    error_message: String,
    workflow_id: Option<i64>,
    org_id: Option<i64>,
    completed_at: DateTime<Utc>,
}

impl Store {
    /// Rows `pending`/`running` of supervisors other than `except`, and rows handed back
    /// at shutdown (`pending`, no supervisor: [`HANDED_BACK`]), begun (or queued) more
    /// than `older_than` ago, oldest first, at most `limit`. One statement (on the status
    /// index).
    pub async fn unfinished_elsewhere(
        &self,
        except: &str,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<Unfinished>, StoreError> {
        sqlx::query_as(
            "SELECT id, attempt, COALESCE(supervisor, '') AS supervisor, stream_id
             FROM executions
             WHERE status IN ('pending', 'running')
               AND (supervisor <> $1
                    OR (supervisor IS NULL AND status = 'pending' AND stream_id IS NOT NULL))
               -- A `running` row counts from when it was taken (it has no start
               -- time until its result is committed).
               AND COALESCE(CASE WHEN status = 'running' THEN taken_at END,
                            started_at, queued_at) < now() - make_interval(secs => $2)
             ORDER BY COALESCE(CASE WHEN status = 'running' THEN taken_at END,
                               started_at, queued_at)
             LIMIT $3",
        )
        .bind(except)
        .bind(older_than.as_secs_f64())
        .bind(limit.max(0))
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query(
            "look for executions of other supervisors",
        ))
    }

    /// Ends `rows` as `crashed` / [`SUPERVISOR_LOST`], each only if it is still
    /// unfinished at the same attempt and supervisor. Returns the rows this call ended.
    pub async fn record_lost(&self, rows: &[Unfinished]) -> Result<Vec<Lost>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let supervisors: Vec<&str> = rows.iter().map(|r| r.supervisor.as_str()).collect();
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|source| StoreError::Unavailable {
                what: "begin the sweep transaction",
                source,
            })?;
        let ended: Vec<Ended> = sqlx::query_as(
            "WITH input AS (
                     SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[])
                         AS t(id, attempt, supervisor)
                 ),
                 up AS (
                     UPDATE executions e SET
                         status = 'crashed',
                         error_type = $4,
                         error_message = CASE WHEN e.supervisor IS NULL
                             THEN 'it was handed back by a supervisor that stopped, and '
                             ELSE 'its supervisor `' || e.supervisor || '` died and ' END
                             || 'its stream entry is gone too (Redis lost its data, or the '
                             || 'entry was trimmed), so nothing can run it again; submit it '
                             || 'again if it should still run',
                         completed_at = now()
                     FROM input
                     WHERE e.id = input.id AND e.attempt = input.attempt
                       AND COALESCE(e.supervisor, '') = input.supervisor
                       AND e.status IN ('pending', 'running')
                     RETURNING e.id, COALESCE(e.supervisor, '') AS supervisor,
                               e.error_message, e.workflow_id, e.org_id, e.completed_at
                 ),
                 delivered AS (
                     UPDATE deliveries d SET
                         status = 'crashed', updated_at = now(), completed_at = now()
                     FROM up
                     WHERE d.execution_id = up.id
                 )
                 SELECT * FROM up",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&supervisors)
        .bind(SUPERVISOR_LOST)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::query(
            "record executions of dead supervisors crashed",
        ))?;
        let mut metrics = DailyMetrics::new();
        for e in &ended {
            metrics.add(&Sample {
                day: e.completed_at.date_naive(),
                org_id: e.org_id,
                workflow_id: e.workflow_id,
                status: Status::Crashed,
                duration_ms: 0.0,
                cpu_seconds: 0.0,
                peak_memory_bytes: 0,
                time_saved_seconds: 0.0,
                value: 0.0,
            });
        }
        metrics.upsert(&mut tx).await?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit the sweep"))?;
        Ok(ended
            .into_iter()
            .map(|e| Lost {
                id: e.id,
                supervisor: e.supervisor,
                error_message: e.error_message,
            })
            .collect())
    }
}
