//! The schema: migrations embedded from `supervisor/migrations/` at build time.
//!
//! `warden migrate` calls [`Store::migrate`]; `warden serve` calls
//! [`Store::check_schema`] first and refuses to start unless every embedded migration is
//! applied, with matching checksums, and nothing newer or half-applied is there.
//! Migrations are never edited once released: a change is a new file.

use sqlx::migrate::Migrator;

use crate::store::{Store, StoreError};

/// This build's migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The schema version of this build: its newest migration.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// What [`Store::check_schema`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Applied versions, in order.
    pub applied: Vec<i64>,
    /// This build's versions, in order.
    pub expected: Vec<i64>,
}

impl Store {
    /// Apply every pending migration (each in its own transaction, under sqlx's advisory
    /// lock, so two supervisors migrating at once is safe). Returns the migrations this
    /// call applied, as `0003_sdk` (their file names), oldest first; empty when the schema
    /// was already up to date.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let before = self.applied_versions().await?;
        MIGRATOR
            .run(self.pool())
            .await
            .map_err(|source| StoreError::Migrate {
                url_redacted: self.url_redacted().to_string(),
                source,
            })?;
        tracing::info!(version = schema_version(), "schema up to date");
        Ok(MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !before.contains(&m.version))
            .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
            .collect())
    }

    /// The versions recorded as applied (none when the migrations table is missing).
    async fn applied_versions(&self) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .applied_rows()
            .await?
            .into_iter()
            .filter(|(_, success, _)| *success)
            .map(|(version, _, _)| version)
            .collect())
    }

    /// `_sqlx_migrations` as `(version, success, checksum)`, oldest first; empty when the
    /// table is missing (a database never migrated).
    async fn applied_rows(&self) -> Result<Vec<(i64, bool, Vec<u8>)>, StoreError> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(self.pool())
                .await
                .map_err(StoreError::query("check for the migrations table"))?;
        if table.is_none() {
            return Ok(Vec::new());
        }
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("read the applied migrations"))
    }

    /// Succeed only if the database has exactly this build's migrations applied.
    /// Otherwise [`StoreError::SchemaOutOfDate`], whose message says to run
    /// `warden migrate`.
    pub async fn check_schema(&self) -> Result<SchemaStatus, StoreError> {
        let expected: Vec<(i64, Vec<u8>)> = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect();
        let applied = self.applied_rows().await?;
        let status = SchemaStatus {
            applied: applied.iter().map(|(v, _, _)| *v).collect(),
            expected: expected.iter().map(|(v, _)| *v).collect(),
        };
        let matches = applied.len() == expected.len()
            && applied
                .iter()
                .zip(&expected)
                .all(|((v, ok, sum), (ev, esum))| v == ev && *ok && sum == esum);
        if matches {
            Ok(status)
        } else {
            Err(StoreError::SchemaOutOfDate {
                applied: describe(&applied, &expected),
                expected: describe_expected(&expected),
            })
        }
    }
}

/// Applied versions, each marked if it failed half-way, differs from this build's file
/// of the same version, or is unknown to this build (a newer supervisor migrated).
fn describe(applied: &[(i64, bool, Vec<u8>)], expected: &[(i64, Vec<u8>)]) -> String {
    if applied.is_empty() {
        return "none".to_string();
    }
    applied
        .iter()
        .map(
            |(v, ok, sum)| match expected.iter().find(|(ev, _)| ev == v) {
                _ if !*ok => format!("{v} (failed)"),
                None => format!("{v} (unknown to this build)"),
                Some((_, esum)) if esum != sum => format!("{v} (modified)"),
                Some(_) => v.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_expected(expected: &[(i64, Vec<u8>)]) -> String {
    expected
        .iter()
        .map(|(v, _)| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
