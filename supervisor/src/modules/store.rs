//! The `workspace_modules` table, the module cache's source of truth: push (skipping
//! unchanged content by hash), list, remove, and the reads the sync makes (everything,
//! at start-up or after a wipe; the few paths a change or a miss names).
//!
//! Every write fires the table's trigger, which notifies `warden_modules` with the path
//! when the transaction commits (migrations/0002): that is how every supervisor, on any
//! host, learns about a push.
//!
//! All statements run on the [`Store`]'s fixed pool: nothing here opens a connection.

use chrono::{DateTime, Utc};

use super::files::ModuleFile;
use crate::store::{Store, StoreError};

/// A stored module, as `warden module list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ModuleSummary {
    pub path: String,
    pub content_hash: String,
    pub size_bytes: i32,
    pub updated_at: DateTime<Utc>,
}

/// What a push did to each path it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAction {
    Created,
    Updated,
    /// Same hash as stored: not sent, not written.
    Unchanged,
}

/// A module as the cache needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredModule {
    pub path: String,
    pub content: String,
    pub content_hash: String,
}

/// Stores `files` in one transaction, sending only those whose hash differs from the
/// stored one (one query for the stored hashes, one upsert for the rest). Returns each
/// path with what happened to it, in the order given.
pub async fn push(
    store: &Store,
    files: &[ModuleFile],
) -> Result<Vec<(String, PushAction)>, StoreError> {
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT path, content_hash FROM workspace_modules WHERE path = ANY($1::text[])",
    )
    .bind(&paths)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read stored module hashes"))?;
    let stored: std::collections::HashMap<String, String> = stored.into_iter().collect();
    let changed: Vec<&ModuleFile> = files
        .iter()
        .filter(|f| stored.get(&f.path) != Some(&f.hash))
        .collect();
    if !changed.is_empty() {
        // The WHERE keeps a concurrent identical push from touching the row (and
        // notifying) again.
        sqlx::query(
            "INSERT INTO workspace_modules (path, content, content_hash)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
             ON CONFLICT (path) DO UPDATE
                SET content = EXCLUDED.content,
                    content_hash = EXCLUDED.content_hash,
                    updated_at = now()
              WHERE workspace_modules.content_hash IS DISTINCT FROM EXCLUDED.content_hash",
        )
        .bind(changed.iter().map(|f| f.path.as_str()).collect::<Vec<_>>())
        .bind(
            changed
                .iter()
                .map(|f| f.content.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(changed.iter().map(|f| f.hash.as_str()).collect::<Vec<_>>())
        .execute(store.pool())
        .await
        .map_err(StoreError::query("store modules"))?;
    }
    Ok(files
        .iter()
        .map(|f| {
            let action = match stored.get(&f.path) {
                None => PushAction::Created,
                Some(h) if h == &f.hash => PushAction::Unchanged,
                Some(_) => PushAction::Updated,
            };
            (f.path.clone(), action)
        })
        .collect())
}

/// Every stored module, without content, by path.
pub async fn list(store: &Store) -> Result<Vec<ModuleSummary>, StoreError> {
    sqlx::query_as(
        "SELECT path, content_hash, octet_length(content) AS size_bytes, updated_at
         FROM workspace_modules ORDER BY path",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("list modules"))
}

/// Removes `path`, or, when `path` names a directory (no `.py` suffix), every module
/// under it. Returns the removed paths.
pub async fn remove(store: &Store, path: &str) -> Result<Vec<String>, StoreError> {
    let path = path.trim_end_matches('/');
    let dir = format!("{path}/");
    // `left(...) =` rather than LIKE: `_` (as in `__init__`) is a LIKE wildcard.
    sqlx::query_scalar(
        "DELETE FROM workspace_modules
          WHERE path = $1 OR (NOT $1 LIKE '%.py' AND left(path, length($2)) = $2)
          RETURNING path",
    )
    .bind(path)
    .bind(&dir)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("remove modules"))
}

/// Every module with its content: a full sync (start-up, or after the cache was wiped).
/// Never per execution.
pub async fn load_all(store: &Store) -> Result<Vec<StoredModule>, StoreError> {
    sqlx::query_as("SELECT path, content, content_hash FROM workspace_modules")
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("load all modules"))
}

/// The modules among `paths` that exist (a change notification, a miss).
pub async fn load(store: &Store, paths: &[String]) -> Result<Vec<StoredModule>, StoreError> {
    sqlx::query_as(
        "SELECT path, content, content_hash FROM workspace_modules WHERE path = ANY($1::text[])",
    )
    .bind(paths)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("load modules"))
}

/// Every module's path and `content_hash` column, without content: how the per-batch
/// check tells which paths changed after another writer moved the cache's generation.
pub async fn hashes(store: &Store) -> Result<Vec<(String, String)>, StoreError> {
    sqlx::query_as("SELECT path, content_hash FROM workspace_modules")
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::query("read module hashes"))
}
