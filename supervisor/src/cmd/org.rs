//! `warden org set|show|list`: organizations and their concurrency limits (how many of
//! an organization's executions may run at once, across every supervisor), and
//! [`publish_limits`], which every command that changes a limit calls afterwards to
//! rebuild the Redis mirror the supervisors enforce (crate::intake::limits).

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum OrgCmd {
    /// Set an organization's limits (created if new).
    Set {
        /// The organization's name.
        name: String,
        /// At most this many of its executions run at once, across all supervisors
        /// (0: unlimited). Executions over it wait in their queue.
        #[arg(long, value_name = "N")]
        max_concurrency: u32,
    },
    /// One organization: its limit and workflows.
    Show {
        name: String,
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Every organization with its limit.
    List {
        /// One JSON array of objects (`name`, `max_concurrency`, `workflows`,
        /// `limited_workflows`) instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(conn: ConnArgs, cmd: OrgCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let result = match cmd {
        OrgCmd::Set {
            name,
            max_concurrency,
        } => set(&conn, &store, &name, max_concurrency).await,
        OrgCmd::Show { name, json } => {
            let orgs = store.org_limits(Some(&name)).await?;
            match orgs.first() {
                None => Err(CliError::OrganizationNotFound { name }),
                Some(o) if json => {
                    super::json::print(&org_json(o));
                    Ok(0)
                }
                Some(o) => {
                    println!("organization {}", o.name);
                    println!("  max concurrency: {}", limit_text(o.max_concurrency));
                    println!(
                        "  workflows: {} ({} with a limit of their own)",
                        o.workflows, o.limited_workflows
                    );
                    Ok(0)
                }
            }
        }
        OrgCmd::List { json } => {
            let orgs = store.org_limits(None).await?;
            if json {
                super::json::print(&serde_json::Value::Array(
                    orgs.iter().map(org_json).collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = orgs
                    .iter()
                    .map(|o| {
                        vec![
                            o.name.clone(),
                            limit_text(o.max_concurrency),
                            o.workflows.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    super::table::render(&["organization", "max concurrency", "workflows"], &rows)
                );
            }
            Ok(0)
        }
    };
    store.close().await;
    result
}

async fn set(conn: &ConnArgs, store: &Store, name: &str, max: u32) -> Result<i32, CliError> {
    let created = store.set_org_max_concurrency(name, max).await?;
    if created {
        println!("organization {name} created");
    }
    println!(
        "organization {name}: max concurrency {}",
        limit_text(max as i32)
    );
    publish_limits(conn, store).await?;
    Ok(0)
}

fn limit_text(max: i32) -> String {
    if max > 0 {
        max.to_string()
    } else {
        "unlimited".to_owned()
    }
}

fn org_json(o: &crate::store::limits::OrgLimit) -> serde_json::Value {
    serde_json::json!({
        "name": o.name,
        "max_concurrency": o.max_concurrency,
        "workflows": o.workflows,
        "limited_workflows": o.limited_workflows,
    })
}

/// Rebuilds the Redis mirror of every limit from PostgreSQL (one query, one `MULTI`),
/// after a change. The change is stored either way; if Redis cannot take the mirror,
/// the error says so and how to apply it.
pub async fn publish_limits(conn: &ConnArgs, store: &Store) -> Result<usize, CliError> {
    let limits = store.limits().await?;
    let applied = async {
        let client = conn.intake().await?;
        crate::intake::limits::publish(&mut client.connection(), client.keys(), &limits).await
    }
    .await;
    applied.map_err(|e| {
        CliError::InvalidInput(format!(
            "the limit is stored in PostgreSQL, but the supervisors could not be told: {e}; \
             run the command again once Redis answers (a supervisor also reads the limits \
             when it starts)"
        ))
    })
}
