//! `warden migrate`: creates the database if it is missing and applies the schema, then
//! says in one sentence what it applied and the schema version it left.

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::store::migrate::schema_version;
use crate::store::Store;

pub async fn run(conn: ConnArgs) -> Result<i32, CliError> {
    conn.warn_if_default_database();
    if Store::create_database_if_missing(&conn.database_url).await? {
        println!(
            "created database {}",
            crate::store::redact_url(&conn.database_url)
        );
    }
    let store = conn.store().await?;
    let applied = store.migrate().await?;
    store.check_schema().await?;
    println!("{}", summary(&applied, schema_version()));
    store.close().await;
    Ok(0)
}

/// `applied 2 migrations (0003_sdk, 0004_settings); the schema is at version 4`, or
/// `the schema is already up to date (version 4)`.
fn summary(applied: &[String], version: i64) -> String {
    match applied.len() {
        0 => format!("the schema is already up to date (version {version})"),
        n => format!(
            "applied {n} migration{} ({}); the schema is at version {version}",
            if n == 1 { "" } else { "s" },
            applied.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn sentences() {
        assert_eq!(
            summary(&[], 4),
            "the schema is already up to date (version 4)"
        );
        assert_eq!(
            summary(&["0004_settings".into()], 4),
            "applied 1 migration (0004_settings); the schema is at version 4"
        );
    }
}
