//! Event deliveries: a stream message may carry a `delivery_id` (an execution started by
//! an event or a webhook). Its row is created (or taken up again) on intake, in one
//! statement per batch ([`Store::begin_deliveries`]), and its terminal status is written
//! by the result transaction itself (a data-modifying CTE in crate::store::commit), so
//! the delivery can never say `success` for a result that was not committed, nor stay
//! `running` after one was.
//!
//! `attempts` counts the executions started for a delivery: a redelivered event (a new
//! execution id) or a reclaimed stream message (the same execution taken up again after
//! its supervisor died) adds one. A delivery whose execution is already terminal is not
//! touched again by a replay of the same message.

use chrono::{DateTime, Utc};

use crate::store::{Store, StoreError};

/// One delivery row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    pub id: String,
    pub execution_id: String,
    /// `running`, or the terminal status of its execution.
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A delivery taken up by an execution about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub delivery_id: String,
    pub execution_id: String,
}

impl Store {
    /// Creates (or takes up again) the deliveries of a batch, in one statement.
    ///
    /// New: `running`, attempt 1. Existing with another execution, or with the same one
    /// still `running` (a reclaimed message): that execution, `running`, attempts + 1.
    /// Existing with the same, already terminal execution: left alone. A delivery named
    /// twice in `items` is taken by its first occurrence.
    pub async fn begin_deliveries(&self, items: &[NewDelivery]) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        let (mut ids, mut executions) = (Vec::new(), Vec::new());
        for d in items {
            if seen.insert(d.delivery_id.as_str()) {
                ids.push(d.delivery_id.as_str());
                executions.push(d.execution_id.as_str());
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO deliveries AS d (id, execution_id)
             SELECT * FROM UNNEST($1::text[], $2::text[])
             ON CONFLICT (id) DO UPDATE SET
                 execution_id = EXCLUDED.execution_id,
                 status = 'running',
                 attempts = d.attempts + 1,
                 updated_at = now(),
                 completed_at = NULL
             WHERE d.execution_id <> EXCLUDED.execution_id OR d.status = 'running'",
        )
        .bind(&ids)
        .bind(&executions)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("record the batch's event deliveries"))?;
        Ok(())
    }

    /// One delivery, by id.
    pub async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        sqlx::query_as(
            "SELECT id, execution_id, status, attempts, created_at, updated_at, completed_at
             FROM deliveries WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("read a delivery"))
    }
}
