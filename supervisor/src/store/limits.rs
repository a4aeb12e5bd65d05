//! Concurrency limits as stored (migration 0009): `workflows.max_concurrency` and
//! `organizations.max_concurrency`, 0 meaning unlimited. Set by `warden workflow push
//! --max-concurrency` and `warden org set`; read whole by [`Store::limits`], in one
//! query, for the Redis mirror the take script enforces (crate::intake::limits).

use crate::intake::limits::{Limits, WorkflowLimit};
use crate::store::{Store, StoreError};

/// The most a limit may be (it is an `integer` column).
pub const MAX_LIMIT: u32 = i32::MAX as u32;

/// One organization with its limit (`warden org list|show`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrgLimit {
    pub name: String,
    /// 0: unlimited.
    pub max_concurrency: i32,
    /// Its workflows, and how many of them have a limit of their own.
    pub workflows: i64,
    pub limited_workflows: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    /// `None`: an organization's row.
    id: Option<i64>,
    org: Option<String>,
    name: Option<String>,
    max: i32,
    org_max: i32,
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn check(n: u32) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::Invalid {
        what: "concurrency limit",
        reason: format!("{n} is more than {MAX_LIMIT}"),
    })
}

impl Store {
    /// Every limit set: organizations with one, and workflows with one or whose
    /// organization has one. One query.
    pub async fn limits(&self) -> Result<Limits, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT NULL::bigint AS id, name AS org, NULL::text AS name,
                    max_concurrency AS max, max_concurrency AS org_max
             FROM organizations WHERE max_concurrency > 0
             UNION ALL
             SELECT w.id, o.name, w.name, w.max_concurrency, COALESCE(o.max_concurrency, 0)
             FROM workflows w LEFT JOIN organizations o ON o.id = w.org_id
             WHERE w.max_concurrency > 0 OR o.max_concurrency > 0",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("read the concurrency limits"))?;
        let mut out = Limits::default();
        for r in rows {
            match (r.id, r.name) {
                (Some(id), Some(name)) => out.workflows.push(WorkflowLimit {
                    id,
                    org: r.org,
                    name,
                    max: to_u32(r.max),
                    org_max: to_u32(r.org_max),
                }),
                _ => {
                    if let Some(org) = r.org {
                        out.orgs.push((org, to_u32(r.max)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sets the limit of workflow `id` (0: unlimited).
    pub async fn set_workflow_max_concurrency(&self, id: i64, max: u32) -> Result<(), StoreError> {
        let max = check(max)?;
        sqlx::query("UPDATE workflows SET max_concurrency = $2 WHERE id = $1")
            .bind(id)
            .bind(max)
            .execute(self.pool())
            .await
            .map_err(StoreError::query("set the workflow's concurrency limit"))?;
        Ok(())
    }

    /// Sets the limit of organization `name` (0: unlimited), creating it if new.
    /// Returns whether it was created.
    pub async fn set_org_max_concurrency(&self, name: &str, max: u32) -> Result<bool, StoreError> {
        let max = check(max)?;
        if name.is_empty() || name.contains('\0') {
            return Err(StoreError::Invalid {
                what: "organization name",
                reason: "it is empty or contains a NUL character".to_string(),
            });
        }
        sqlx::query_scalar(
            "INSERT INTO organizations AS o (name, max_concurrency) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET max_concurrency = EXCLUDED.max_concurrency
             RETURNING (o.xmax = 0)",
        )
        .bind(name)
        .bind(max)
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query(
            "set the organization's concurrency limit",
        ))
    }

    /// The limit of organization `name` (`None`: no such organization).
    pub async fn org_max_concurrency(&self, name: &str) -> Result<Option<u32>, StoreError> {
        let max: Option<i32> =
            sqlx::query_scalar("SELECT max_concurrency FROM organizations WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::query(
                    "read the organization's concurrency limit",
                ))?;
        Ok(max.map(to_u32))
    }

    /// Organizations with their limits (one, or all by name).
    pub async fn org_limits(&self, name: Option<&str>) -> Result<Vec<OrgLimit>, StoreError> {
        sqlx::query_as(
            "SELECT o.name, o.max_concurrency,
                    count(w.id) AS workflows,
                    count(w.id) FILTER (WHERE w.max_concurrency > 0) AS limited_workflows
             FROM organizations o LEFT JOIN workflows w ON w.org_id = o.id
             WHERE $1::text IS NULL OR o.name = $1
             GROUP BY o.id ORDER BY o.name",
        )
        .bind(name)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list the organizations"))
    }
}
