//! `warden cancel ID`: asks every supervisor to cancel an execution. A queued one never
//! starts; a running one is killed. Either way it ends `cancelled`.
//!
//! Before asking, it looks the id up: an execution that already ended (its row is
//! final) or that nothing knows (no row in PostgreSQL and no entry in the Redis stream,
//! where a queued execution waits before a supervisor records it) is refused with a
//! non-zero exit code, rather than a cancel request that can only be ignored.
//!
//! An execution waiting for its next attempt (`retrying`) or its start (`scheduled`)
//! is cancelled in PostgreSQL at once, and its completion published; its due entry,
//! if one is already in the stream, then finds it ended.
//!
//! Any client can do the same: `SET warden:cancelled:<id> 1 EX 86400` (so a supervisor
//! that reads the request later still sees it) and `PUBLISH warden:cancel <id>`.

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::intake::Completion;
use crate::outcome::Status;
use crate::store::ExecutionStatus;

pub async fn run(conn: ConnArgs, id: String) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let found = store.execution_status(&id).await;
    let waiting = matches!(
        found,
        Ok(Some(ExecutionStatus::Retrying | ExecutionStatus::Scheduled))
    );
    let cancelled_waiting = if waiting {
        store.cancel_waiting(&id).await
    } else {
        Ok(false)
    };
    store.close().await;
    let client = conn.intake().await?;
    if cancelled_waiting? {
        let mut c = Completion::new(id.clone(), Status::Cancelled);
        c.error_type = Some("Cancelled".into());
        c.error_message = Some("cancelled while waiting for its next attempt or its start".into());
        // The marker too: a due entry already read by a supervisor finds it.
        client.cancel(&id).await?;
        client.publish_completion(&c).await?;
        println!("cancelled {id}");
        return Ok(0);
    }
    match found? {
        Some(status) if status.terminal().is_some() => {
            return Err(CliError::ExecutionEnded {
                id,
                status: status.as_str(),
            });
        }
        Some(_) => {}
        None => {
            if !client.is_queued(&id).await? {
                return Err(CliError::ExecutionNotFound { id });
            }
        }
    }
    client.cancel(&id).await?;
    println!("cancel requested for {id}");
    Ok(0)
}
