//! The per-organization key-value store behind the SDK's `warden.kv`.
//!
//! Reads come from the supervisor's request handler (an execution asking for a key it
//! did not write itself) and from `warden kv list`; writes only from the result
//! transaction ([`apply_kv_writes`], called by crate::store::commit), so a value is
//! changed only by an execution that ended `success`, atomically with its result.
//! Organization `None` is the store of executions that belong to no organization.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::sdk::writes::Change;
use crate::store::{Store, StoreError};

/// One stored key.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct KvEntry {
    pub org_id: Option<i64>,
    /// The organization's name (`None`: no organization).
    pub org: Option<String>,
    pub key: String,
    pub value: serde_json::Value,
    /// The execution whose successful result wrote it last.
    pub updated_by: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// One kv change of an SDK write: `(org_id, key)`, what to do, and the execution.
pub type KvWrite = ((Option<i64>, String), Change, String);

impl Store {
    /// The value of `key` in the organization's store.
    pub async fn kv_get(
        &self,
        org_id: Option<i64>,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let query = match org_id {
            Some(_) => "SELECT value FROM kv WHERE org_id = $1 AND key = $2",
            None => "SELECT value FROM kv WHERE org_id IS NULL AND key = $2 AND $1::bigint IS NULL",
        };
        sqlx::query_scalar(query)
            .bind(org_id)
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("read a kv value"))
    }

    /// The keys starting with `prefix` in the organization's store, sorted, at most
    /// `limit` of them.
    pub async fn kv_keys(
        &self,
        org_id: Option<i64>,
        prefix: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let query = match org_id {
            Some(_) => {
                "SELECT key FROM kv WHERE org_id = $1 AND key LIKE $2 ESCAPE '\\'
                 ORDER BY key LIMIT $3"
            }
            None => {
                "SELECT key FROM kv WHERE org_id IS NULL AND $1::bigint IS NULL
                   AND key LIKE $2 ESCAPE '\\'
                 ORDER BY key LIMIT $3"
            }
        };
        sqlx::query_scalar(query)
            .bind(org_id)
            .bind(like_prefix(prefix))
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("list kv keys"))
    }

    /// Every entry (of one organization, or all), for `warden kv list`.
    pub async fn kv_list(
        &self,
        org: Option<&str>,
        prefix: &str,
    ) -> Result<Vec<KvEntry>, StoreError> {
        sqlx::query_as(
            "SELECT k.org_id, o.name AS org, k.key, k.value, k.updated_by, k.updated_at
             FROM kv k LEFT JOIN organizations o ON o.id = k.org_id
             WHERE ($1::text IS NULL OR o.name = $1) AND k.key LIKE $2 ESCAPE '\\'
             ORDER BY o.name NULLS FIRST, k.key",
        )
        .bind(org)
        .bind(like_prefix(prefix))
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list kv entries"))
    }
}

/// `prefix` as a LIKE pattern matching every string that starts with it.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Applies SDK kv writes on `conn` (inside the result transaction): one upsert for the
/// sets, one delete for the deletes. `writes` must hold each (org, key) once, sorted, so
/// that concurrent supervisors lock rows in the same order.
pub(crate) async fn apply_kv_writes(
    conn: &mut PgConnection,
    writes: &[KvWrite],
) -> Result<(), StoreError> {
    let (mut set_org, mut set_key, mut set_value, mut set_by) = (vec![], vec![], vec![], vec![]);
    let (mut del_org, mut del_key) = (vec![], vec![]);
    for ((org, key), change, by) in writes {
        match change {
            Change::Set(value) => {
                set_org.push(*org);
                set_key.push(key.as_str());
                set_value.push(value.to_string());
                set_by.push(by.as_str());
            }
            Change::Delete => {
                del_org.push(*org);
                del_key.push(key.as_str());
            }
        }
    }
    if !set_key.is_empty() {
        sqlx::query(
            "INSERT INTO kv AS k (org_id, key, value, updated_by)
             SELECT org_id, key, value::jsonb, updated_by
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[])
                 AS t(org_id, key, value, updated_by)
             ON CONFLICT (org_id, key) DO UPDATE SET
                 value = EXCLUDED.value, updated_by = EXCLUDED.updated_by, updated_at = now()",
        )
        .bind(&set_org)
        .bind(&set_key)
        .bind(&set_value)
        .bind(&set_by)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query("apply the executions' kv writes"))?;
    }
    if !del_key.is_empty() {
        sqlx::query(
            "DELETE FROM kv k
             USING UNNEST($1::bigint[], $2::text[]) AS t(org_id, key)
             WHERE k.org_id IS NOT DISTINCT FROM t.org_id AND k.key = t.key",
        )
        .bind(&del_org)
        .bind(&del_key)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query("apply the executions' kv deletes"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }
}
