//! The `workspace_requirements`, `package_generation` and `package_installs` tables
//! (migrations/0008): what the CLI changes, what a supervisor reads when it follows the
//! requirements, and what each supervisor records about its installs.
//!
//! Every change to `workspace_requirements` moves the generation and notifies
//! `warden_packages` in the same transaction (a statement trigger), so a supervisor
//! learns of it through the LISTEN connection it already holds for the module cache.
//! All statements run on the [`Store`]'s fixed pool: nothing here opens a connection.

use chrono::{DateTime, Utc};

use super::spec::Requirement;
use crate::store::{Store, StoreError};

/// The requirements at one generation, read in one statement (one snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub generation: i64,
    /// `(name, line)`, by name.
    pub lines: Vec<(String, String)>,
}

/// What a supervisor last recorded about its packages (`warden package list`, `status`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstallState {
    pub consumer: String,
    pub generation: Option<i64>,
    pub content_hash: Option<String>,
    pub directory: Option<String>,
    pub state: String,
    pub attempt_generation: Option<i64>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// What `add` did to each requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Created,
    Updated,
    Unchanged,
}

/// Adds or replaces requirements (by normalised name), in one statement.
pub async fn add(store: &Store, reqs: &[Requirement]) -> Result<Vec<Added>, StoreError> {
    let names: Vec<&str> = reqs.iter().map(|r| r.name.as_str()).collect();
    let before: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, requirement FROM workspace_requirements WHERE name = ANY($1::text[])",
    )
    .bind(&names)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read the stored requirements"))?;
    let before: std::collections::HashMap<String, String> = before.into_iter().collect();
    let actions: Vec<Added> = reqs
        .iter()
        .map(|r| match before.get(&r.name) {
            None => Added::Created,
            Some(l) if *l == r.line => Added::Unchanged,
            Some(_) => Added::Updated,
        })
        .collect();
    let changed: Vec<&Requirement> = reqs
        .iter()
        .zip(&actions)
        .filter(|(_, a)| **a != Added::Unchanged)
        .map(|(r, _)| r)
        .collect();
    if !changed.is_empty() {
        sqlx::query(
            "INSERT INTO workspace_requirements (name, requirement)
             SELECT * FROM UNNEST($1::text[], $2::text[])
             ON CONFLICT (name) DO UPDATE
                SET requirement = EXCLUDED.requirement, updated_at = now()",
        )
        .bind(changed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|r| r.line.as_str()).collect::<Vec<_>>())
        .execute(store.pool())
        .await
        .map_err(StoreError::query("store the requirements"))?;
    }
    Ok(actions)
}

/// Removes the requirements with these (normalised) names; returns those that were there.
pub async fn remove(store: &Store, names: &[String]) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "DELETE FROM workspace_requirements WHERE name = ANY($1::text[]) RETURNING name",
    )
    .bind(names)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("remove requirements"))
}

/// Makes the requirements exactly `reqs` (one transaction: what is not listed goes).
/// Returns `(added or changed, removed)` names.
pub async fn replace_all(
    store: &Store,
    reqs: &[Requirement],
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let q = StoreError::query("replace the requirements");
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(StoreError::query("begin"))?;
    let names: Vec<&str> = reqs.iter().map(|r| r.name.as_str()).collect();
    let removed: Vec<String> = sqlx::query_scalar(
        "DELETE FROM workspace_requirements WHERE NOT (name = ANY($1::text[])) RETURNING name",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::query("remove requirements"))?;
    let changed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO workspace_requirements (name, requirement)
         SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (name) DO UPDATE
            SET requirement = EXCLUDED.requirement, updated_at = now()
          WHERE workspace_requirements.requirement IS DISTINCT FROM EXCLUDED.requirement
         RETURNING name",
    )
    .bind(&names)
    .bind(reqs.iter().map(|r| r.line.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::query("store the requirements"))?;
    tx.commit().await.map_err(q)?;
    Ok((changed, removed))
}

/// The requirements and their generation, in one statement.
pub async fn current(store: &Store) -> Result<Requirements, StoreError> {
    let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT g.generation, r.name, r.requirement
           FROM package_generation g
           LEFT JOIN workspace_requirements r ON true
          ORDER BY r.name",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read the requirements"))?;
    let generation = rows.first().map_or(0, |r| r.0);
    let lines = rows
        .into_iter()
        .filter_map(|(_, n, l)| Some((n?, l?)))
        .collect();
    Ok(Requirements { generation, lines })
}

/// Records what this supervisor now uses, or why its last attempt failed.
pub async fn record(store: &Store, s: &InstallState) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO package_installs
            (consumer, generation, content_hash, directory, state, attempt_generation, error, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())
         ON CONFLICT (consumer) DO UPDATE SET
            generation = EXCLUDED.generation, content_hash = EXCLUDED.content_hash,
            directory = EXCLUDED.directory, state = EXCLUDED.state,
            attempt_generation = EXCLUDED.attempt_generation, error = EXCLUDED.error,
            updated_at = now()",
    )
    .bind(&s.consumer)
    .bind(s.generation)
    .bind(&s.content_hash)
    .bind(&s.directory)
    .bind(&s.state)
    .bind(s.attempt_generation)
    .bind(&s.error)
    .execute(store.pool())
    .await
    .map_err(StoreError::query("record the package install state"))?;
    Ok(())
}

/// Every supervisor's recorded state, by consumer.
pub async fn installs(store: &Store) -> Result<Vec<InstallState>, StoreError> {
    sqlx::query_as(
        "SELECT consumer, generation, content_hash, directory, state, attempt_generation,
                error, updated_at
           FROM package_installs ORDER BY consumer",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read the package install states"))
}
