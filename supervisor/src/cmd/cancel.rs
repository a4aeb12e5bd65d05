//! `warden cancel ID`: asks every supervisor to cancel an execution. A queued one never
//! starts; a running one is killed. Either way it ends `cancelled`.
//!
//! Any client can do the same: `SET warden:cancelled:<id> 1 EX 86400` (so a supervisor
//! that reads the request later still sees it) and `PUBLISH warden:cancel <id>`.

use crate::args::ConnArgs;
use crate::cli_error::CliError;

pub async fn run(conn: ConnArgs, id: String) -> Result<i32, CliError> {
    let client = conn.intake().await?;
    client.cancel(&id).await?;
    println!("cancel requested for {id}");
    Ok(0)
}
