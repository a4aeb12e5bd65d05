//! Workflows and organizations: `warden push` (upsert by organization and name),
//! `warden workflows` (list), and [`Store::load_for_batch`], the single query the intake
//! makes per batch to resolve every workflow the batch names.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::retry_policy::RetryPolicy;
use crate::store::{Store, StoreError};

/// The key a workflow is looked up by: its id (the request's `workflow` is all digits)
/// or its name within an organization (`None`: a global workflow).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkflowKey {
    Id(i64),
    Name { org: Option<String>, name: String },
}

impl WorkflowKey {
    /// Interpret a request's `workflow` and `org` fields. An all-digit `workflow` is an
    /// id (and `org` is then not part of the lookup: compare [`Workflow::org`] yourself
    /// if it must match); anything else is a name. An empty `org` means none.
    pub fn parse(workflow: &str, org: Option<&str>) -> WorkflowKey {
        if !workflow.is_empty() && workflow.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = workflow.parse() {
                return WorkflowKey::Id(id);
            }
        }
        WorkflowKey::Name {
            org: org.filter(|o| !o.is_empty()).map(str::to_string),
            name: workflow.to_string(),
        }
    }
}

impl std::fmt::Display for WorkflowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkflowKey::Id(id) => write!(f, "#{id}"),
            WorkflowKey::Name {
                org: Some(org),
                name,
            } => write!(f, "{org}/{name}"),
            WorkflowKey::Name { org: None, name } => f.write_str(name),
        }
    }
}

/// An active workflow, everything needed to run it and account for it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Workflow {
    pub id: i64,
    pub org_id: Option<i64>,
    /// The organization's name (`None`: global).
    pub org: Option<String>,
    pub name: String,
    pub path: String,
    pub function_name: String,
    pub source: String,
    pub default_timeout_ms: Option<i32>,
    pub time_saved_seconds: f64,
    pub value: f64,
    pub updated_at: DateTime<Utc>,
    /// 1, 2, ...: one more each time a push changed the source.
    pub version: i32,
    /// SHA-256 of `source`, hex (kept by the database: migration 0007).
    pub source_hash: String,
    /// Its retry policy (`None`: no retries unless a submission asks for some).
    pub retry_policy: Option<sqlx::types::Json<RetryPolicy>>,
}

/// One version of a workflow (`warden workflow history`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkflowVersion {
    pub version: i32,
    pub source_hash: String,
    pub pushed_at: DateTime<Utc>,
}

/// What `warden push` sends.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    /// Organization name, created if new. `None`: a global workflow.
    pub org: Option<String>,
    pub name: String,
    pub path: String,
    pub function_name: String,
    pub source: String,
    pub default_timeout_ms: Option<i32>,
    /// ROI per successful execution; `None` keeps the stored value (0 for a new one).
    pub time_saved_seconds: Option<f64>,
    pub value: Option<f64>,
    /// Its retry policy (`None`: none; a push replaces the stored one).
    pub retry_policy: Option<RetryPolicy>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAction {
    Created,
    Updated,
    /// Already stored exactly like this (also re-activates nothing: it was active).
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushResult {
    pub id: i64,
    pub org_id: Option<i64>,
    pub action: PushAction,
    /// The workflow's version after the push (a new one only when the source changed).
    pub version: i32,
}

/// One line of `warden workflows` (no source).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WorkflowSummary {
    pub id: i64,
    pub org: Option<String>,
    pub name: String,
    pub path: String,
    pub function_name: String,
    pub default_timeout_ms: Option<i32>,
    pub active: bool,
    pub time_saved_seconds: f64,
    pub value: f64,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
    /// At most this many run at once (0: no limit; migration 0009).
    pub max_concurrency: i32,
}

const WORKFLOW_COLUMNS: &str = "w.id, w.org_id, o.name AS org, w.name, w.path, w.function_name, \
     w.source, w.default_timeout_ms, w.time_saved_seconds, w.value, w.updated_at, w.version, \
     w.source_hash, w.retry_policy";

impl Store {
    /// The id of the organization called `name`, creating it if needed.
    pub async fn org_get_or_create(&self, name: &str) -> Result<i64, StoreError> {
        if name.is_empty() {
            return Err(StoreError::Invalid {
                what: "organization name",
                reason: "it is empty".to_string(),
            });
        }
        // The insert's RETURNING is empty when the name exists; the second branch then
        // finds it (it existed before this statement's snapshot).
        sqlx::query_scalar(
            "WITH ins AS (
                 INSERT INTO organizations (name) VALUES ($1)
                 ON CONFLICT (name) DO NOTHING RETURNING id
             )
             SELECT id FROM ins
             UNION ALL
             SELECT id FROM organizations WHERE name = $1
             LIMIT 1",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query("get or create the organization"))
    }

    /// Create the workflow, or update the one with the same organization and name
    /// (keeping its id). A pushed workflow is active.
    pub async fn push_workflow(&self, spec: &WorkflowSpec) -> Result<PushResult, StoreError> {
        validate(spec)?;
        let org_id = match spec.org.as_deref().filter(|o| !o.is_empty()) {
            Some(org) => Some(self.org_get_or_create(org).await?),
            None => None,
        };
        // `up` returns a row only when something was inserted or changed; otherwise the
        // second branch reports the existing row as unchanged. `xmax = 0` tells an
        // inserted row from an updated one.
        let (id, created, changed, version): (i64, bool, bool, i32) = sqlx::query_as(
            "WITH up AS (
                 INSERT INTO workflows AS w (org_id, name, path, function_name, source,
                                             default_timeout_ms, time_saved_seconds, value,
                                             retry_policy)
                 VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, 0), COALESCE($8, 0), $9)
                 ON CONFLICT (org_id, name) DO UPDATE SET
                     path = EXCLUDED.path,
                     function_name = EXCLUDED.function_name,
                     source = EXCLUDED.source,
                     default_timeout_ms = EXCLUDED.default_timeout_ms,
                     time_saved_seconds = COALESCE($7, w.time_saved_seconds),
                     value = COALESCE($8, w.value),
                     retry_policy = EXCLUDED.retry_policy,
                     active = true,
                     updated_at = now()
                 WHERE (w.path, w.function_name, w.source, w.default_timeout_ms,
                        w.time_saved_seconds, w.value, w.active, w.retry_policy)
                       IS DISTINCT FROM
                       (EXCLUDED.path, EXCLUDED.function_name, EXCLUDED.source,
                        EXCLUDED.default_timeout_ms, COALESCE($7, w.time_saved_seconds),
                        COALESCE($8, w.value), true, EXCLUDED.retry_policy)
                 RETURNING w.id, (w.xmax = 0) AS created, w.version
             )
             SELECT id, created, true, version FROM up
             UNION ALL
             SELECT id, false, false, version FROM workflows
             WHERE org_id IS NOT DISTINCT FROM $1 AND name = $2 AND NOT EXISTS (SELECT 1 FROM up)",
        )
        .bind(org_id)
        .bind(&spec.name)
        .bind(&spec.path)
        .bind(&spec.function_name)
        .bind(&spec.source)
        .bind(spec.default_timeout_ms)
        .bind(spec.time_saved_seconds)
        .bind(spec.value)
        .bind(spec.retry_policy.clone().map(sqlx::types::Json))
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query("push the workflow"))?;
        let action = match (created, changed) {
            (true, _) => PushAction::Created,
            (false, true) => PushAction::Updated,
            (false, false) => PushAction::Unchanged,
        };
        tracing::info!(id, name = %spec.name, org = ?spec.org, ?action, "workflow pushed");
        Ok(PushResult {
            id,
            org_id,
            action,
            version,
        })
    }

    /// The versions of the workflow `name` of `org` (global when `None`), oldest first;
    /// `None` when there is no such workflow.
    pub async fn workflow_history(
        &self,
        org: Option<&str>,
        name: &str,
    ) -> Result<Option<Vec<WorkflowVersion>>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT w.id FROM workflows w LEFT JOIN organizations o ON o.id = w.org_id
             WHERE w.name = $1 AND o.name IS NOT DISTINCT FROM $2",
        )
        .bind(name)
        .bind(org)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("find the workflow"))?;
        let Some(id) = id else {
            return Ok(None);
        };
        let versions = sqlx::query_as(
            "SELECT version, source_hash, pushed_at FROM workflow_versions
             WHERE workflow_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("read the workflow's versions"))?;
        Ok(Some(versions))
    }

    /// Every workflow (active or not), by organization then name.
    pub async fn list_workflows(&self) -> Result<Vec<WorkflowSummary>, StoreError> {
        sqlx::query_as(
            "SELECT w.id, o.name AS org, w.name, w.path, w.function_name, w.default_timeout_ms,
                    w.active, w.time_saved_seconds, w.value, w.updated_at, w.version,
                    w.max_concurrency
             FROM workflows w LEFT JOIN organizations o ON o.id = w.org_id
             ORDER BY o.name NULLS FIRST, w.name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list workflows"))
    }

    /// Resolve every reference of a batch in ONE query. References that name no active
    /// workflow are absent from the map (the caller records those requests as
    /// `UnknownWorkflow`). A name without an organization finds only a global workflow.
    pub async fn load_for_batch(
        &self,
        refs: &[WorkflowKey],
    ) -> Result<HashMap<WorkflowKey, Workflow>, StoreError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(StoreError::query("acquire a connection"))?;
        Self::load_for_batch_on(&mut conn, refs).await
    }

    /// [`Store::load_for_batch`] on a given connection (or transaction).
    pub async fn load_for_batch_on(
        conn: &mut sqlx::PgConnection,
        refs: &[WorkflowKey],
    ) -> Result<HashMap<WorkflowKey, Workflow>, StoreError> {
        let wanted: HashSet<&WorkflowKey> = refs.iter().collect();
        let mut ids: Vec<i64> = Vec::new();
        let mut orgs: Vec<Option<&str>> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for r in &wanted {
            match r {
                // PostgreSQL text cannot hold NUL, so no stored workflow has it: skip the
                // reference rather than fail the batch's query.
                WorkflowKey::Name { org, name }
                    if name.contains('\0') || org.as_ref().is_some_and(|o| o.contains('\0')) => {}
                WorkflowKey::Id(id) => ids.push(*id),
                WorkflowKey::Name { org, name } => {
                    orgs.push(org.as_deref());
                    names.push(name);
                }
            }
        }
        if ids.is_empty() && names.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS}
             FROM workflows w LEFT JOIN organizations o ON o.id = w.org_id
             WHERE w.active
               AND (w.id = ANY($1)
                    OR EXISTS (SELECT 1 FROM UNNEST($2::text[], $3::text[]) AS r(org, name)
                               WHERE r.name = w.name AND r.org IS NOT DISTINCT FROM o.name))"
        );
        let rows: Vec<Workflow> = sqlx::query_as(&sql)
            .bind(&ids)
            .bind(&orgs)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::query("load the batch's workflows"))?;
        let mut found = HashMap::with_capacity(wanted.len());
        for w in rows {
            let by_name = WorkflowKey::Name {
                org: w.org.clone(),
                name: w.name.clone(),
            };
            if wanted.contains(&by_name) {
                found.insert(by_name, w.clone());
            }
            let by_id = WorkflowKey::Id(w.id);
            if wanted.contains(&by_id) {
                found.insert(by_id, w);
            }
        }
        Ok(found)
    }
}

fn validate(spec: &WorkflowSpec) -> Result<(), StoreError> {
    let invalid = |reason: &str| {
        Err(StoreError::Invalid {
            what: "workflow",
            reason: format!("`{}`: {reason}", spec.name),
        })
    };
    if spec.name.is_empty() {
        return invalid("the name is empty");
    }
    if spec.name.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("an all-digit name would be read as a workflow id");
    }
    if spec.function_name.is_empty() {
        return invalid("the function name is empty");
    }
    if spec.default_timeout_ms.is_some_and(|t| t <= 0) {
        return invalid("the default timeout must be positive");
    }
    if let Some(Err(reason)) = spec.retry_policy.as_ref().map(RetryPolicy::validate) {
        return invalid(&reason);
    }
    let has_nul = [&spec.name, &spec.path, &spec.function_name, &spec.source]
        .iter()
        .any(|s| s.contains('\0'));
    if has_nul {
        return invalid("text contains a NUL character");
    }
    if [spec.time_saved_seconds, spec.value]
        .iter()
        .flatten()
        .any(|v| !v.is_finite())
    {
        return invalid("ROI values must be finite numbers");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::WorkflowKey;

    #[test]
    fn parses_ids_and_names() {
        assert_eq!(WorkflowKey::parse("42", Some("acme")), WorkflowKey::Id(42));
        assert_eq!(
            WorkflowKey::parse("report", Some("acme")),
            WorkflowKey::Name {
                org: Some("acme".into()),
                name: "report".into()
            }
        );
        assert_eq!(
            WorkflowKey::parse("report", Some("")),
            WorkflowKey::Name {
                org: None,
                name: "report".into()
            }
        );
        // Too large for an id: a name.
        assert!(matches!(
            WorkflowKey::parse("99999999999999999999", None),
            WorkflowKey::Name { .. }
        ));
    }
}
