//! `warden kv list`: the per-organization key-value store workflows use through
//! `warden.kv` (written only by successful executions; this command only reads), as a
//! table whose columns fit their values.

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
        /// One JSON array of objects (`org`, `key`, `value`, `updated_by`, `updated_at`)
        /// instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(conn: ConnArgs, cmd: KvCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let result = async {
        match cmd {
            KvCmd::List { org, prefix, json } => {
                if let Some(name) = org.as_deref() {
                    if store.org_id(name).await?.is_none() {
                        return Err(CliError::OrganizationNotFound {
                            name: name.to_string(),
                        });
                    }
                }
                let entries = store.kv_list(org.as_deref(), &prefix).await?;
                if json {
                    let items = entries.iter().map(|e| {
                        serde_json::json!({
                            "org": e.org,
                            "key": e.key,
                            "value": e.value,
                            "updated_by": e.updated_by,
                            "updated_at": super::json::time(e.updated_at),
                        })
                    });
                    super::json::print(&serde_json::Value::Array(items.collect()));
                    return Ok(0);
                }
                let rows: Vec<Vec<String>> = entries
                    .into_iter()
                    .map(|e| {
                        vec![
                            e.org.unwrap_or_else(|| "-".into()),
                            e.key,
                            e.updated_by.unwrap_or_else(|| "-".into()),
                            e.value.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    super::table::render(&["org", "key", "updated by", "value"], &rows)
                );
                Ok(0)
            }
        }
    }
    .await;
    store.close().await;
    result
}
