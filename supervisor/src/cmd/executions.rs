//! `warden executions list|show|prune` (prune: crate::cmd::prune): what ran, for which organization, when it was queued
//! and started, how it ended, and its logs.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::store::executions::{ExecutionDetail, ExecutionSummary};
use crate::store::{ExecutionFilter, ExecutionStatus};

use super::json::{opt_time, time};
use super::live::{self, Shown, Stored};

#[derive(Debug, Subcommand)]
pub enum ExecutionsCmd {
    /// Recent executions, newest first.
    List {
        /// Only this status: pending, running, retrying, scheduled, success, failed,
        /// timeout, cancelled, crashed.
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
        /// One JSON array of objects instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One execution: status, result or error, resources, and its logs.
    Show {
        id: String,
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
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
            json,
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
                        CliError::InvalidInput(format!("unknown status `{s}`: use pending, running, retrying, scheduled, success, failed, timeout, cancelled or crashed"))
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
            let stored: Vec<Stored> = rows
                .iter()
                .map(|r| Stored {
                    id: r.id.as_str(),
                    status: r.status,
                    attempt: r.attempt,
                    started_at: r.started_at,
                    supervisor: r.supervisor.as_deref(),
                })
                .collect();
            let shown = live::resolve(&conn, &stored).await;
            drop(stored);
            // `pending` and `running` are read together (a `running` row may still be
            // queued): keep those shown with the status asked for.
            let (rows, shown): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .zip(shown)
                .filter(|(_, s)| status.is_none_or(|want| s.status == want || s.start_unknown))
                .unzip();
            if json {
                super::json::print(&Value::Array(
                    rows.iter()
                        .zip(&shown)
                        .map(|(r, s)| summary_json(r, s))
                        .collect(),
                ));
                store.close().await;
                return Ok(0);
            }
            let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .zip(shown)
                .map(|(r, s)| {
                    vec![
                        r.id.to_string(),
                        r.org.unwrap_or_else(|| "-".into()),
                        r.workflow_name.unwrap_or_else(|| "-".into()),
                        status_text(&s),
                        r.attempt.to_string(),
                        time(r.queued_at),
                        s.started_at.map(time).unwrap_or_else(|| "-".into()),
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
        ExecutionsCmd::Show { id, json } => {
            let Some(d) = store.show_execution(&id).await? else {
                // No row until a supervisor reads the request: it may wait in the stream.
                store.close().await;
                // Redis unreachable: say what PostgreSQL says.
                let queued = match conn.intake().await {
                    Ok(client) => client.is_queued(&id).await.unwrap_or(false),
                    Err(_) => false,
                };
                if !queued {
                    return Err(CliError::ExecutionNotFound { id });
                }
                if json {
                    super::json::print(&json!({"id": id, "status": "pending", "in_stream": true}));
                } else {
                    println!("id:        {id}");
                    println!("status:    pending (in the stream; no supervisor has taken it yet)");
                }
                return Ok(0);
            };
            let e = &d.execution;
            let shown = live::resolve(
                &conn,
                &[Stored {
                    id: e.id.as_str(),
                    status: e.status,
                    attempt: e.attempt,
                    started_at: e.started_at,
                    supervisor: e.supervisor.as_deref(),
                }],
            )
            .await
            .remove(0);
            if json {
                super::json::print(&detail_json(&d, &shown));
                store.close().await;
                return Ok(0);
            }
            println!("id:        {}", e.id);
            println!(
                "workflow:  {}{}",
                e.workflow_name.as_deref().unwrap_or("-"),
                version_note(e.workflow_version, e.workflow_hash.as_deref())
            );
            println!("status:    {} (attempt {})", status_text(&shown), e.attempt);
            if let Some(t) = e.next_attempt_at {
                let what = if e.status == ExecutionStatus::Scheduled {
                    "starts at"
                } else {
                    "next try:"
                };
                println!("{what} {t}");
            }
            println!("queued:    {}", e.queued_at);
            if let (Some(t), Some(_)) = (e.taken_at, &shown.queued_on) {
                println!("taken:     {t} (waiting for a worker)");
            }
            if let Some(t) = shown.started_at {
                println!("started:   {t}");
            }
            if let Some(t) = e.completed_at {
                println!("completed: {t}");
            }
            if let Some(ms) = e.duration_ms {
                println!(
                    "resources: {ms:.1} ms, CPU {:.3} s, peak memory {}",
                    e.cpu_seconds.unwrap_or(0.0),
                    memory(e.peak_memory_bytes)
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
            if !d.attempts.is_empty() {
                println!("attempts:");
                for a in &d.attempts {
                    let error = a
                        .error_type
                        .as_deref()
                        .map(|t| format!(" {t}: {}", a.error_message.as_deref().unwrap_or("")))
                        .unwrap_or_default();
                    let next = a
                        .next_attempt_at
                        .map(|t| format!("; next due {t}"))
                        .unwrap_or_default();
                    println!(
                        "  {:>3} {:<9} {:>9.1} ms, CPU {:.3} s, {}, ended {}{error}{next}",
                        a.attempt,
                        a.status,
                        a.duration_ms.unwrap_or(0.0),
                        a.cpu_seconds.unwrap_or(0.0),
                        memory(a.peak_memory_bytes),
                        a.completed_at,
                    );
                }
            }
            if !d.logs.is_empty() {
                println!("logs:");
                let several = d.logs.iter().any(|l| l.attempt != d.logs[0].attempt);
                for l in &d.logs {
                    if several {
                        println!("  #{} {:>4} [{}] {}", l.attempt, l.seq, l.level, l.message);
                    } else {
                        println!("  {:>4} [{}] {}", l.seq, l.level, l.message);
                    }
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

/// The status as shown: `pending (queued on S)` for a row taken but not started,
/// `running (start unknown)` when Redis could not say.
fn status_text(s: &Shown) -> String {
    match (&s.queued_on, s.start_unknown) {
        (Some(sup), _) => format!("{} (queued on {sup})", s.status),
        (None, true) => format!("{} (start unknown: Redis unreachable)", s.status),
        (None, false) => s.status.to_string(),
    }
}

/// One `executions list --json` element.
fn summary_json(r: &ExecutionSummary, s: &Shown) -> Value {
    json!({
        "id": r.id.as_str(),
        "org": r.org,
        "workflow": r.workflow_name,
        "status": s.status.as_str(),
        "queued_on": s.queued_on,
        "start_unknown": s.start_unknown,
        "attempt": r.attempt,
        "queued_at": time(r.queued_at),
        "started_at": opt_time(s.started_at),
        "completed_at": opt_time(r.completed_at),
        "duration_ms": r.duration_ms,
        "error_type": r.error_type,
    })
}

/// `executions show --json`.
fn detail_json(d: &ExecutionDetail, s: &Shown) -> Value {
    let e = &d.execution;
    let logs: Vec<Value> = d
        .logs
        .iter()
        .map(|l| {
            json!({
                "attempt": l.attempt,
                "seq": l.seq,
                "level": l.level,
                "message": l.message,
                "logged_at": time(l.logged_at),
            })
        })
        .collect();
    let attempts: Vec<Value> = d
        .attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt,
                "status": a.status,
                "error_type": a.error_type,
                "error_message": a.error_message,
                "traceback": a.traceback,
                "started_at": opt_time(a.started_at),
                "completed_at": time(a.completed_at),
                "duration_ms": a.duration_ms,
                "cpu_seconds": a.cpu_seconds,
                "peak_memory_bytes": a.peak_memory_bytes,
                "exit_code": a.exit_code,
                "exit_signal": a.exit_signal,
                "supervisor": a.supervisor,
                "next_attempt_at": opt_time(a.next_attempt_at),
            })
        })
        .collect();
    json!({
        "id": e.id.as_str(),
        "workflow": e.workflow_name,
        "workflow_id": e.workflow_id,
        "workflow_version": e.workflow_version,
        "workflow_hash": e.workflow_hash,
        "org_id": e.org_id,
        "caller": e.caller,
        "status": s.status.as_str(),
        "queued_on": s.queued_on,
        "start_unknown": s.start_unknown,
        "attempt": e.attempt,
        "queued_at": time(e.queued_at),
        "taken_at": opt_time(e.taken_at),
        "started_at": opt_time(s.started_at),
        "completed_at": opt_time(e.completed_at),
        "duration_ms": e.duration_ms,
        "cpu_seconds": e.cpu_seconds,
        "peak_memory_bytes": e.peak_memory_bytes,
        "exit_code": e.exit_code,
        "exit_signal": e.exit_signal,
        "params": e.params,
        "result": e.result,
        "error_type": e.error_type,
        "error_message": e.error_message,
        "traceback": e.traceback,
        "supervisor": e.supervisor,
        "next_attempt_at": opt_time(e.next_attempt_at),
        "attempts": attempts,
        "logs": logs,
        "logs_dropped": e.logs_dropped,
    })
}

/// ` (version 3, source 1a2b3c4d5e6f)` after the workflow's name, or nothing when the
/// execution was begun before versions were recorded.
fn version_note(version: Option<i32>, hash: Option<&str>) -> String {
    match (version, hash) {
        (Some(v), Some(h)) => format!(" (version {v}, source {})", &h[..h.len().min(12)]),
        (Some(v), None) => format!(" (version {v})"),
        _ => String::new(),
    }
}

/// A stored peak memory (bytes; none recorded reads as 0) as `41.3 MiB`.
fn memory(bytes: Option<i64>) -> String {
    crate::size::show(bytes.map_or(0, |b| u64::try_from(b).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::version_note;

    #[test]
    fn the_version_note_names_version_and_short_hash() {
        assert_eq!(
            version_note(Some(3), Some("1a2b3c4d5e6f7a8b9c")),
            " (version 3, source 1a2b3c4d5e6f)"
        );
        assert_eq!(version_note(None, None), "");
    }
}
