//! `warden cancel ID`: asks every supervisor to cancel an execution. A queued one never
//! starts; a running one is killed. Either way it ends `cancelled`.
//!
//! Before asking, it looks the id up: an execution that already ended (its row is
//! final) or that nothing knows (no row in PostgreSQL and no entry in the Redis stream,
//! where a queued execution waits before a supervisor records it) is refused with a
//! non-zero exit code, rather than a cancel request that can only be ignored.
//!
//! Any client can do the same: `SET warden:cancelled:<id> 1 EX 86400` (so a supervisor
//! that reads the request later still sees it) and `PUBLISH warden:cancel <id>`.

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::intake::{IntakeClient, IntakeError};

pub async fn run(conn: ConnArgs, id: String) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let found = store.execution_status(&id).await;
    store.close().await;
    let client = conn.intake().await?;
    match found? {
        Some(status) if status.terminal().is_some() => {
            return Err(CliError::ExecutionEnded {
                id,
                status: status.as_str(),
            });
        }
        Some(_) => {}
        None => {
            if !queued(&client, &id).await? {
                return Err(CliError::ExecutionNotFound { id });
            }
        }
    }
    client.cancel(&id).await?;
    println!("cancel requested for {id}");
    Ok(0)
}

/// Whether the stream holds an entry for `id`: queued, or taken by a supervisor that has
/// not recorded it yet. Entries are deleted once their execution is recorded, so the
/// stream holds only the backlog; it is read in pages.
async fn queued(client: &IntakeClient, id: &str) -> Result<bool, IntakeError> {
    let stream = client.keys().stream();
    let mut conn = client.connection();
    let mut start = "-".to_string();
    loop {
        let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await
            .map_err(|e| IntakeError::redis(format!("reading `{stream}`"), e))?;
        if page
            .iter()
            .any(|(_, fields)| fields.chunks(2).any(|kv| kv == ["id", id]))
        {
            return Ok(true);
        }
        match page.last() {
            Some((last, _)) if page.len() == 500 => start = format!("({last}"),
            _ => return Ok(false),
        }
    }
}
