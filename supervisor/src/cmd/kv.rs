//! `warden kv list`: the per-organization key-value store workflows use through
//! `warden.kv` (written only by successful executions; this command only reads).

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;

#[derive(Debug, Subcommand)]
pub enum KvCmd {
    /// List keys and values, of one organization or all.
    List {
        #[arg(long)]
        org: Option<String>,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

pub async fn run(conn: ConnArgs, cmd: KvCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let result = async {
        match cmd {
            KvCmd::List { org, prefix } => {
                if let Some(name) = org.as_deref() {
                    if store.org_id(name).await?.is_none() {
                        return Err(CliError::OrganizationNotFound {
                            name: name.to_string(),
                        });
                    }
                }
                let entries = store.kv_list(org.as_deref(), &prefix).await?;
                println!("{:<16} {:<32} {:<24} value", "org", "key", "updated by");
                for e in entries {
                    println!(
                        "{:<16} {:<32} {:<24} {}",
                        e.org.as_deref().unwrap_or("-"),
                        e.key,
                        e.updated_by.as_deref().unwrap_or("-"),
                        e.value
                    );
                }
                Ok(0)
            }
        }
    }
    .await;
    store.close().await;
    result
}
