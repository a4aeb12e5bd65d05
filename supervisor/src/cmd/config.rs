//! `warden config set|delete|list`: the configuration workflows read with
//! `warden.config.get`, global or per organization; secrets sealed with the secret key
//! and shown as `***`. `set` reads VALUE as JSON when it can, or as a string with
//! `--string`. A change invalidates the supervisors' Redis cache once it is
//! committed, so the next batch they prepare sees it.

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::sdk::{admin, Scope, SecretKeyArgs};

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Set KEY to VALUE, globally or for an organization (created if new).
    ///
    /// VALUE is JSON when it parses as JSON (`3`, `true`, `{"a":1}`, `"quoted"`),
    /// otherwise the text itself; so `1.10` is stored as the number 1.1. With --string
    /// it is stored as a string, exactly as typed (`1.10`, `true`, `007`). With --secret
    /// it is stored encrypted, always as text, and only ever shown as `***`.
    Set {
        key: String,
        value: String,
        /// The organization (default: the global config, which organizations override).
        #[arg(long)]
        org: Option<String>,
        /// Store the value encrypted (needs the secret key: --secret-key-file or
        /// WARDEN_SECRET_KEY).
        #[arg(long)]
        secret: bool,
        /// Store VALUE as a JSON string, verbatim, even when it reads as a number,
        /// boolean, null or other JSON (`--string 1.10` stays "1.10", not 1.1).
        #[arg(long)]
        string: bool,
        #[command(flatten)]
        key_args: SecretKeyArgs,
    },
    /// Delete KEY, globally or for an organization.
    Delete {
        key: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// List config values (secrets as `***`), of one organization or all.
    List {
        #[arg(long)]
        org: Option<String>,
        /// One JSON array of objects (`org`, `key`, `kind`, `value`, `updated_at`; a
        /// secret's value is `"***"`) instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(conn: ConnArgs, cmd: ConfigCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let result = run_on(&conn, &store, cmd).await;
    store.close().await;
    result
}

async fn run_on(
    conn: &ConnArgs,
    store: &crate::store::Store,
    cmd: ConfigCmd,
) -> Result<i32, CliError> {
    match cmd {
        ConfigCmd::Set {
            key,
            value,
            org,
            secret,
            string,
            key_args,
        } => {
            let secret_key = if secret { key_args.load()? } else { None };
            // `admin::set` reads the text as JSON when it can; a JSON string literal reads
            // back as exactly the text. Secrets are always stored as the text itself.
            let value = if string && !secret {
                serde_json::Value::String(value).to_string()
            } else {
                value
            };
            let scope = admin::set(
                store,
                org.as_deref(),
                &key,
                &value,
                secret,
                secret_key.as_ref(),
            )
            .await?;
            invalidate(conn, scope).await;
            println!(
                "{} {key} set{}",
                describe(org.as_deref()),
                if secret { " (secret)" } else { "" }
            );
        }
        ConfigCmd::Delete { key, org } => {
            if !store.delete_config(org.as_deref(), &key).await? {
                return Err(CliError::ConfigKeyNotFound { org, key });
            }
            let scope = match org.as_deref() {
                Some(name) => match store.org_id(name).await? {
                    Some(id) => Scope::Org(id),
                    None => return Ok(0),
                },
                None => Scope::Global,
            };
            invalidate(conn, scope).await;
            println!("{} {key} deleted", describe(org.as_deref()));
        }
        ConfigCmd::List { org, json } => {
            if let Some(name) = org.as_deref() {
                if store.org_id(name).await?.is_none() {
                    return Err(CliError::OrganizationNotFound {
                        name: name.to_string(),
                    });
                }
            }
            let all = store.list_configs().await?;
            let shown = all
                .iter()
                .filter(|c| org.is_none() || c.org.as_deref() == org.as_deref());
            if json {
                let items = shown.map(|c| {
                    let value = if c.kind == crate::store::ConfigKind::Secret {
                        serde_json::Value::String(crate::sdk::MASK.to_string())
                    } else {
                        c.value.clone()
                    };
                    serde_json::json!({
                        "org": c.org,
                        "key": c.key,
                        "kind": c.kind.as_str(),
                        "value": value,
                        "updated_at": super::json::time(c.updated_at),
                    })
                });
                super::json::print(&serde_json::Value::Array(items.collect()));
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = shown
                .map(|c| {
                    vec![
                        c.org.clone().unwrap_or_else(|| "-".into()),
                        c.key.clone(),
                        c.kind.as_str().to_string(),
                        admin::display_value(c),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table::render(&["org", "key", "kind", "value"], &rows)
            );
        }
    }
    Ok(0)
}

fn describe(org: Option<&str>) -> String {
    match org {
        Some(o) => format!("organization {o}:"),
        None => "global:".to_string(),
    }
}

/// The change is committed either way; a cache that cannot be told expires on its own.
async fn invalidate(conn: &ConnArgs, scope: Scope) {
    if let Err(e) = admin::invalidate(&conn.redis_url, &conn.keys(), scope).await {
        eprintln!(
            "warning: saved, but the supervisors' config cache could not be invalidated ({e}); \
             they will see the change within {} s",
            crate::sdk::cache::CACHE_TTL.as_secs()
        );
    }
}
