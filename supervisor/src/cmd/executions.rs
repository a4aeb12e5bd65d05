//! `warden executions list|show|prune` (prune: crate::cmd::prune): what ran, for which organization, when it was queued
//! and started, how it ended, and its logs.

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::store::{ExecutionFilter, ExecutionStatus};

#[derive(Debug, Subcommand)]
pub enum ExecutionsCmd {
    /// Recent executions, newest first.
    List {
        /// Only this status: pending, running, success, failed, timeout, cancelled, crashed.
        #[arg(long)]
        status: Option<String>,
        /// Only this workflow (name).
        #[arg(long)]
        workflow: Option<String>,
        /// Only this organization (name).
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One execution: status, result or error, resources, and its logs.
    Show { id: String },
    /// Delete ended executions (and their logs) older than --older-than, in small
    /// batches; executions still pending or running are never deleted.
    Prune(super::prune::PruneArgs),
}

pub async fn run(conn: ConnArgs, cmd: ExecutionsCmd) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let code = match cmd {
        ExecutionsCmd::List {
            status,
            workflow,
            org,
            limit,
        } => {
            if let Some(name) = org.as_deref() {
                if store.org_id(name).await?.is_none() {
                    return Err(CliError::OrganizationNotFound {
                        name: name.to_string(),
                    });
                }
            }
            let status = status
                .map(|s| {
                    ExecutionStatus::try_from(s.clone()).map_err(|_| {
                        CliError::InvalidInput(format!("unknown status `{s}`: use pending, running, success, failed, timeout, cancelled or crashed"))
                    })
                })
                .transpose()?;
            let rows = store
                .list_executions(&ExecutionFilter {
                    status,
                    workflow,
                    org,
                    limit,
                })
                .await?;
            let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.org.unwrap_or_else(|| "-".into()),
                        r.workflow_name.unwrap_or_else(|| "-".into()),
                        r.status.to_string(),
                        r.attempt.to_string(),
                        time(r.queued_at),
                        r.started_at.map(time).unwrap_or_else(|| "-".into()),
                        r.duration_ms.map(|d| format!("{d:.1}")).unwrap_or_default(),
                        r.error_type.unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table::render(
                    &[
                        "id",
                        "org",
                        "workflow",
                        "status",
                        "attempt",
                        "queued (UTC)",
                        "started (UTC)",
                        "ms",
                        "error",
                    ],
                    &rows
                )
            );
            0
        }
        ExecutionsCmd::Show { id } => {
            let Some(d) = store.show_execution(&id).await? else {
                return Err(CliError::ExecutionNotFound { id });
            };
            let e = &d.execution;
            println!("id:        {}", e.id);
            println!("workflow:  {}", e.workflow_name.as_deref().unwrap_or("-"));
            println!("status:    {} (attempt {})", e.status, e.attempt);
            println!("queued:    {}", e.queued_at);
            if let Some(t) = e.started_at {
                println!("started:   {t}");
            }
            if let Some(t) = e.completed_at {
                println!("completed: {t}");
            }
            if let Some(ms) = e.duration_ms {
                println!(
                    "resources: {ms:.1} ms, CPU {:.3} s, peak memory {:.1} MiB",
                    e.cpu_seconds.unwrap_or(0.0),
                    e.peak_memory_bytes.unwrap_or(0) as f64 / 1048576.0
                );
            }
            if let Some(c) = e.exit_code {
                println!("exit code: {c}");
            }
            if let Some(s) = e.exit_signal {
                println!("signal:    {s}");
            }
            if let Some(p) = &e.params {
                println!("params:    {p}");
            }
            if let Some(r) = &e.result {
                println!("result:    {r}");
            }
            if let Some(t) = &e.error_type {
                println!(
                    "error:     {t}: {}",
                    e.error_message.as_deref().unwrap_or("")
                );
            }
            if let Some(tb) = e.traceback.as_deref().filter(|t| !t.is_empty()) {
                println!("traceback:\n{tb}");
            }
            if !d.logs.is_empty() {
                println!("logs:");
                for l in &d.logs {
                    println!("  {:>4} [{}] {}", l.seq, l.level, l.message);
                }
            }
            if e.logs_dropped > 0 {
                println!("  ({} more lines dropped by the log cap)", e.logs_dropped);
            }
            0
        }
        ExecutionsCmd::Prune(args) => super::prune::run(&store, args).await?,
    };
    store.close().await;
    Ok(code)
}
