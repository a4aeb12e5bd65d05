//! `warden logs ID [--follow]`: an execution's log lines on stdout, one per line as
//! `[level] message`, and how it ended on stderr.
//!
//! - Ended: its lines from PostgreSQL; exit code [`crate::outcome::Status::exit_code`].
//! - Queued or running, without `--follow`: the lines so far (its live-log stream in
//!   Redis), then a note that it is still going; exit code 0.
//! - Queued or running, with `--follow`: the lines so far, then each new one as it is
//!   produced, until it ends; then any line the live path missed (dropped during a
//!   Redis outage), from PostgreSQL, and its status; exit code as when ended.
//!
//! An execution still waiting in the stream (no supervisor has read it, so it has no
//! row yet) counts as queued. An unknown id is an error (exit code 2). Ctrl-C while following leaves the execution
//! running and says how to follow or cancel it again ([`detached`], shared with
//! `submit --wait`); exit code [`EXIT_INTERRUPTED`].

use std::time::Duration;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::intake::{Completion, WaitEvent};

/// Exit code after Ctrl-C stopped a command following an execution (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// How long `--follow` follows an execution at most (the longest allowed timeout).
const FOLLOW_LIMIT: Duration = Duration::from_secs(25 * 60 * 60);

pub async fn run(conn: ConnArgs, id: String, follow: bool) -> Result<i32, CliError> {
    let store = conn.store().await?;
    let detail = store.show_execution(&id).await?;
    if let Some(d) = &detail {
        if let Some(end) = d.execution.status.terminal() {
            let e = &d.execution;
            for l in &d.logs {
                println!("[{}] {}", l.level, l.message);
            }
            eprintln!(
                "{}",
                ended_line(
                    &id,
                    end.as_str(),
                    e.error_type.as_deref(),
                    e.error_message.as_deref()
                )
            );
            store.close().await;
            return Ok(end.exit_code());
        }
    }
    // Not ended: Redis has its lines so far. No row yet: still in the stream, not read
    // by any supervisor (or no such id).
    let client = conn.intake().await?;
    let status = match &detail {
        Some(d) => d.execution.status.to_string(),
        None if client.is_queued(&id).await? => "queued in the stream".to_string(),
        None => {
            store.close().await;
            return Err(CliError::ExecutionNotFound { id });
        }
    };
    if !follow {
        for l in client.live_logs(&id).await? {
            println!("[{}] {}", l.level, l.message);
        }
        eprintln!("execution {id} is {status}; `warden logs {id} --follow` follows it to its end");
        store.close().await;
        return Ok(0);
    }
    let mut interrupts = interrupts()?;
    let mut waiter = client.wait_for_completion(&id, FOLLOW_LIMIT).await?;
    let mut last_seq: Option<u32> = None;
    let completion: Completion = loop {
        let event = tokio::select! {
            event = waiter.next() => event?,
            _ = interrupts.recv() => {
                detached(&id);
                return Ok(EXIT_INTERRUPTED);
            }
        };
        match event {
            Some(WaitEvent::Log(l)) => {
                if last_seq.is_some_and(|s| l.seq <= s) {
                    eprintln!("(execution {id} started again: the next attempt's lines follow)");
                }
                last_seq = Some(l.seq);
                println!("[{}] {}", l.level, l.message);
            }
            Some(WaitEvent::Completed(c)) => break c,
            None => {
                return Err(CliError::Stopped(
                    "the completion stream ended without a result",
                ))
            }
        }
    };
    // Lines the live path dropped (a Redis outage, a full queue) are in the database.
    if let Some(d) = store.show_execution(&id).await? {
        let after = last_seq.map_or(-1, i64::from);
        for l in d.logs.iter().filter(|l| i64::from(l.seq) > after) {
            println!("[{}] {}", l.level, l.message);
        }
    }
    store.close().await;
    eprintln!(
        "{}",
        ended_line(
            &id,
            completion.status.as_str(),
            completion.error_type.as_deref(),
            completion.error_message.as_deref()
        )
    );
    Ok(completion.status.exit_code())
}

/// `execution ID ended STATUS[: ErrorType: message]`.
fn ended_line(id: &str, status: &str, error_type: Option<&str>, message: Option<&str>) -> String {
    match (error_type, message) {
        (Some(t), Some(m)) if !m.is_empty() => format!("execution {id} ended {status}: {t}: {m}"),
        (Some(t), _) => format!("execution {id} ended {status}: {t}"),
        _ => format!("execution {id} ended {status}"),
    }
}

/// SIGINT (Ctrl-C) as a stream, installed once before following: a signal that arrives
/// between two events is kept for the next `recv`, never lost to the default action.
pub fn interrupts() -> Result<tokio::signal::unix::Signal, CliError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(CliError::Signals)
}

/// Said on stderr when Ctrl-C stops following execution `id`: it goes on, and how to
/// follow or cancel it.
pub fn detached(id: &str) {
    eprintln!("\n{}", detached_message(id));
}

fn detached_message(id: &str) -> String {
    format!(
        "stopped following; execution {id} goes on.\n  \
         follow it again: warden logs {id} --follow\n  \
         cancel it:       warden cancel {id}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_line_names_status_and_error() {
        assert_eq!(
            ended_line("e1", "success", None, None),
            "execution e1 ended success"
        );
        assert_eq!(
            ended_line("e1", "failed", Some("ValueError"), Some("bad x")),
            "execution e1 ended failed: ValueError: bad x"
        );
        assert_eq!(
            ended_line("e1", "timeout", Some("Timeout"), Some("")),
            "execution e1 ended timeout: Timeout"
        );
    }

    #[test]
    fn detaching_names_both_commands() {
        let m = detached_message("e7");
        assert!(m.contains("warden logs e7 --follow"), "{m}");
        assert!(m.contains("warden cancel e7"), "{m}");
    }
}
