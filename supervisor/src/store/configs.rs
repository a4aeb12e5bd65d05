//! Configuration values and organizations, as read to fill the supervisor's Redis cache
//! (DESIGN.md, "Prepare": org and config come from that cache, not from a query per
//! batch). A key set for an organization overrides the global key (`org_id` NULL) of the
//! same name; resolving that is the cache's business (crate::sdk::cache), this module
//! only stores and lists.
//!
//! Secrets are stored sealed: a `secret` row's value is an envelope (nonce and
//! ciphertext, see crate::sdk::crypto), never the plaintext. This module checks the shape
//! and nothing more; it never holds the key.
//!
//! The workflow SDK's `config.set`/`config.delete` are applied here too
//! ([`apply_config_writes`]), inside the transaction that records the execution's result.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::sdk::crypto::Envelope;
use crate::sdk::writes::Change;
use crate::store::{Store, StoreError};

/// What a config value holds (the schema's `configs.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigKind {
    String,
    Number,
    Bool,
    Json,
    /// A string never to be printed or logged.
    Secret,
}

impl ConfigKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::String => "string",
            ConfigKind::Number => "number",
            ConfigKind::Bool => "bool",
            ConfigKind::Json => "json",
            ConfigKind::Secret => "secret",
        }
    }

    /// Whether `value` is of this kind. A secret's value is its sealed envelope.
    pub fn admits(self, value: &serde_json::Value) -> bool {
        match self {
            ConfigKind::String => value.is_string(),
            ConfigKind::Secret => Envelope::is_envelope(value),
            ConfigKind::Number => value.is_number(),
            ConfigKind::Bool => value.is_boolean(),
            ConfigKind::Json => true,
        }
    }

    /// The kind a plain (non-secret) value is stored as.
    pub fn of(value: &serde_json::Value) -> ConfigKind {
        match value {
            serde_json::Value::String(_) => ConfigKind::String,
            serde_json::Value::Number(_) => ConfigKind::Number,
            serde_json::Value::Bool(_) => ConfigKind::Bool,
            _ => ConfigKind::Json,
        }
    }
}

impl std::str::FromStr for ConfigKind {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<ConfigKind, StoreError> {
        Ok(match s {
            "string" => ConfigKind::String,
            "number" => ConfigKind::Number,
            "bool" => ConfigKind::Bool,
            "json" => ConfigKind::Json,
            "secret" => ConfigKind::Secret,
            other => {
                return Err(StoreError::Invalid {
                    what: "config kind",
                    reason: format!("`{other}` (expected string, number, bool, json or secret)"),
                })
            }
        })
    }
}

impl TryFrom<String> for ConfigKind {
    type Error = StoreError;

    fn try_from(s: String) -> Result<ConfigKind, StoreError> {
        s.parse()
    }
}

/// One stored config value.
#[derive(Clone, PartialEq, sqlx::FromRow)]
pub struct ConfigEntry {
    pub org_id: Option<i64>,
    /// The organization's name (`None`: global).
    pub org: Option<String>,
    pub key: String,
    pub value: serde_json::Value,
    #[sqlx(try_from = "String")]
    pub kind: ConfigKind,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConfigEntry {
    /// Secrets are shown as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &dyn std::fmt::Debug = if self.kind == ConfigKind::Secret {
            &"***"
        } else {
            &self.value
        };
        f.debug_struct("ConfigEntry")
            .field("org", &self.org)
            .field("key", &self.key)
            .field("value", value)
            .field("kind", &self.kind)
            .finish()
    }
}

/// One config row as the cache needs it.
#[derive(Clone, PartialEq, sqlx::FromRow)]
pub struct ConfigRow {
    pub org_id: Option<i64>,
    pub key: String,
    pub value: serde_json::Value,
    #[sqlx(try_from = "String")]
    pub kind: ConfigKind,
}

impl std::fmt::Debug for ConfigRow {
    /// Secrets (even sealed) are shown as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &dyn std::fmt::Debug = if self.kind == ConfigKind::Secret {
            &"***"
        } else {
            &self.value
        };
        f.debug_struct("ConfigRow")
            .field("org_id", &self.org_id)
            .field("key", &self.key)
            .field("value", value)
            .field("kind", &self.kind)
            .finish()
    }
}

/// One config change of an SDK write: `(org_id, key)` and what to do.
pub type ConfigWrite = ((Option<i64>, String), Change);

/// Applies SDK config writes on `conn` (inside the result transaction): one upsert for
/// the sets, one delete for the deletes. `writes` must hold each (org, key) once, sorted
/// (a `BTreeMap`'s order), so that two supervisors lock rows in the same order. Secrets
/// are never overwritten or deleted by a workflow (the SDK refuses to; this is the
/// backstop).
pub(crate) async fn apply_config_writes(
    conn: &mut PgConnection,
    writes: &[ConfigWrite],
) -> Result<(), StoreError> {
    let (mut set_org, mut set_key, mut set_value, mut set_kind) = (vec![], vec![], vec![], vec![]);
    let (mut del_org, mut del_key) = (vec![], vec![]);
    for ((org, key), change) in writes {
        match change {
            Change::Set(value) => {
                set_org.push(*org);
                set_key.push(key.as_str());
                set_value.push(value.to_string());
                set_kind.push(ConfigKind::of(value).as_str());
            }
            Change::Delete => {
                del_org.push(*org);
                del_key.push(key.as_str());
            }
        }
    }
    if !set_key.is_empty() {
        sqlx::query(
            "INSERT INTO configs AS c (org_id, key, value, kind)
             SELECT org_id, key, value::jsonb, kind
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[])
                 AS t(org_id, key, value, kind)
             ON CONFLICT (org_id, key) DO UPDATE SET
                 value = EXCLUDED.value, kind = EXCLUDED.kind, updated_at = now()
             WHERE c.kind <> 'secret'",
        )
        .bind(&set_org)
        .bind(&set_key)
        .bind(&set_value)
        .bind(&set_kind)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query("apply the executions' config writes"))?;
    }
    if !del_key.is_empty() {
        sqlx::query(
            "DELETE FROM configs c
             USING UNNEST($1::bigint[], $2::text[]) AS t(org_id, key)
             WHERE c.org_id IS NOT DISTINCT FROM t.org_id AND c.key = t.key
               AND c.kind <> 'secret'",
        )
        .bind(&del_org)
        .bind(&del_key)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::query("apply the executions' config deletes"))?;
    }
    Ok(())
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Organization {
    pub id: i64,
    pub name: String,
}

impl Store {
    /// Set `key` for the organization (created if new) or globally (`org` `None`).
    pub async fn set_config(
        &self,
        org: Option<&str>,
        key: &str,
        value: &serde_json::Value,
        kind: ConfigKind,
    ) -> Result<(), StoreError> {
        if key.is_empty() || key.contains('\0') {
            return Err(StoreError::Invalid {
                what: "config key",
                reason: format!("{key:?} is empty or contains NUL"),
            });
        }
        if kind == ConfigKind::Secret && !kind.admits(value) {
            return Err(StoreError::Invalid {
                what: "config value",
                reason: format!(
                    "`{key}` is a secret, and secrets are stored only encrypted: seal the \
                     value with the secret key first (`warden config set --secret` does)"
                ),
            });
        }
        if !kind.admits(value) {
            return Err(StoreError::Invalid {
                what: "config value",
                reason: format!("`{key}` is declared {} but its value is not", kind.as_str()),
            });
        }
        let org_id = match org.filter(|o| !o.is_empty()) {
            Some(org) => Some(self.org_get_or_create(org).await?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO configs AS c (org_id, key, value, kind) VALUES ($1, $2, $3, $4)
             ON CONFLICT (org_id, key) DO UPDATE SET
                 value = EXCLUDED.value, kind = EXCLUDED.kind, updated_at = now()",
        )
        .bind(org_id)
        .bind(key)
        .bind(sqlx::types::Json(value))
        .bind(kind.as_str())
        .execute(self.pool())
        .await
        .map_err(StoreError::query("set the config value"))?;
        Ok(())
    }

    /// Remove `key` for the organization (or the global one). Returns whether it existed.
    pub async fn delete_config(&self, org: Option<&str>, key: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM configs c
             WHERE c.key = $2
               AND c.org_id IS NOT DISTINCT FROM
                   (SELECT id FROM organizations WHERE name = $1)
               AND ($1::text IS NULL OR c.org_id IS NOT NULL)",
        )
        .bind(org.filter(|o| !o.is_empty()))
        .bind(key)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("delete the config value"))?
        .rows_affected();
        Ok(deleted > 0)
    }

    /// Every config value (global and per organization), for filling the cache.
    pub async fn list_configs(&self) -> Result<Vec<ConfigEntry>, StoreError> {
        sqlx::query_as(
            "SELECT c.org_id, o.name AS org, c.key, c.value, c.kind, c.updated_at
             FROM configs c LEFT JOIN organizations o ON o.id = c.org_id
             ORDER BY o.name NULLS FIRST, c.key",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list config values"))
    }

    /// The config values of the given organizations and (when `global`) the global
    /// ones, in one query: what the cache is filled from.
    pub async fn configs_for_scopes(
        &self,
        org_ids: &[i64],
        global: bool,
    ) -> Result<Vec<ConfigRow>, StoreError> {
        sqlx::query_as(
            "SELECT org_id, key, value, kind FROM configs
             WHERE org_id = ANY($1) OR ($2 AND org_id IS NULL)",
        )
        .bind(org_ids)
        .bind(global)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("load config values for the cache"))
    }

    /// Some stored secret (any), to check at start-up that the configured key opens it.
    pub async fn any_secret(&self) -> Result<Option<ConfigRow>, StoreError> {
        sqlx::query_as(
            "SELECT org_id, key, value, kind FROM configs WHERE kind = 'secret'
             ORDER BY updated_at DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("look for stored secrets"))
    }

    /// The id of the organization called `name`, if there is one.
    pub async fn org_id(&self, name: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT id FROM organizations WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::query("look up the organization"))
    }

    /// Every organization, by name.
    pub async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError> {
        sqlx::query_as("SELECT id, name FROM organizations ORDER BY name")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("list organizations"))
    }
}
