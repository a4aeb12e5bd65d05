//! `warden migrate`: creates the database if it is missing and applies the schema.

use crate::args::ConnArgs;
use crate::store::Store;

pub async fn run(conn: ConnArgs) -> Result<i32, String> {
    if Store::create_database_if_missing(&conn.database_url)
        .await
        .map_err(|e| e.to_string())?
    {
        println!(
            "created database {}",
            crate::store::redact_url(&conn.database_url)
        );
    }
    let store = conn.store().await?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let status = store.check_schema().await.map_err(|e| e.to_string())?;
    println!("schema is up to date ({status:?})");
    store.close().await;
    Ok(0)
}
