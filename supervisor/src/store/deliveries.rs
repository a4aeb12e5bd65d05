//! Event deliveries: a stream message may carry a `delivery_id` (an execution started by
//! an event or a webhook). Its row is created (or taken up again) on intake by the very
//! statement that marks the batch `running` ([`Store::begin_batch`], a data-modifying
//! CTE, inside the batch transaction), so a delivery is `running` exactly when its
//! execution was begun; its terminal status is written by the result transaction
//! itself (a data-modifying CTE in crate::store::commit), so the delivery can never say
//! `success` for a result that was not committed, nor stay `running` after one was.
//!
//! `attempts` counts the executions started for a delivery: a redelivered event (a new
//! execution id) or a reclaimed stream message (the same execution taken up again after
//! its supervisor died or was interrupted) adds one; an execution handed back before it
//! started (crate::store::executions, `hand_back`) adds none when it is taken up again,
//! and its delivery stays `running` meanwhile. A delivery whose execution is already
//! terminal is not touched again by a replay of the same message.

use chrono::{DateTime, Utc};

use crate::outcome::ExecutionId;
use crate::store::{Store, StoreError};

/// One delivery row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    pub id: String,
    pub execution_id: ExecutionId,
    /// `running`, or the terminal status of its execution.
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Store {
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
