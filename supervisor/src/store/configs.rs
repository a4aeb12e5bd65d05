//! Configuration values and organizations, as read to fill the supervisor's Redis cache
//! (DESIGN.md, "Prepare": org and config come from that cache, not from a query per
//! batch). A key set for an organization overrides the global key (`org_id` NULL) of the
//! same name; resolving that is the cache's business, this module only stores and lists.

use chrono::{DateTime, Utc};

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

    /// Whether `value` is of this kind.
    pub fn admits(self, value: &serde_json::Value) -> bool {
        match self {
            ConfigKind::String | ConfigKind::Secret => value.is_string(),
            ConfigKind::Number => value.is_number(),
            ConfigKind::Bool => value.is_boolean(),
            ConfigKind::Json => true,
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

    /// Every organization, by name.
    pub async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError> {
        sqlx::query_as("SELECT id, name FROM organizations ORDER BY name")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("list organizations"))
    }
}
