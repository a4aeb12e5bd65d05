//! `warden migrate`: creates the database if it is missing and applies the schema.

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::store::Store;

pub async fn run(conn: ConnArgs) -> Result<i32, CliError> {
    if Store::create_database_if_missing(&conn.database_url).await? {
        println!(
            "created database {}",
            crate::store::redact_url(&conn.database_url)
        );
    }
    let store = conn.store().await?;
    store.migrate().await?;
    let status = store.check_schema().await?;
    println!("schema is up to date ({status:?})");
    store.close().await;
    Ok(0)
}
