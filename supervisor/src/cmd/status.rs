//! `warden status`: live supervisors (from the status each publishes every second),
//! their workers, the stream's backlog, and each consumer of the stream's group as
//! live or dead (its heartbeat key present or not) with its unfinished entries.

use serde_json::{json, Value};

use crate::args::ConnArgs;
use crate::cli_error::CliError;

pub async fn run(conn: ConnArgs, json: bool) -> Result<i32, CliError> {
    let client = conn.intake().await?;
    let o = client.status().await?;
    if json {
        super::json::print(&overview_json(&o));
        return Ok(0);
    }
    if o.supervisors.is_empty() {
        println!("no live supervisor (start one with `warden serve`)");
    } else {
        println!(
            "{:<32} {:>8} {:>6} {:>6} {:>12} {:>9}",
            "supervisor", "workers", "busy", "idle", "completed", "execs/s"
        );
        for s in &o.supervisors {
            println!(
                "{:<32} {:>8} {:>6} {:>6} {:>12} {:>9.1}",
                s.consumer,
                s.workers_total,
                s.workers_busy,
                s.workers_total.saturating_sub(s.workers_busy),
                s.executions_completed,
                s.executions_per_sec
            );
        }
    }
    let b = &o.backlog;
    let dead_pending: u64 = b
        .consumers
        .iter()
        .filter(|c| !c.live)
        .map(|c| c.pending)
        .sum();
    println!(
        "stream: {} waiting, {} in progress{}{}",
        b.waiting(),
        b.pending - dead_pending.min(b.pending),
        if dead_pending > 0 {
            format!(", {dead_pending} left by dead supervisors")
        } else {
            String::new()
        },
        if b.group_exists {
            ""
        } else {
            " (no supervisor has read it yet)"
        }
    );
    let any_live = b.consumers.iter().any(|c| c.live);
    for c in b.consumers.iter().filter(|c| c.live || c.pending > 0) {
        println!("  {}", consumer_line(c, any_live));
    }
    Ok(0)
}

/// `status --json`: the supervisors, the stream's counts (as the text's `stream:`
/// line), and every consumer of the group.
fn overview_json(o: &crate::intake::client::Overview) -> Value {
    let b = &o.backlog;
    let dead_pending: u64 = b
        .consumers
        .iter()
        .filter(|c| !c.live)
        .map(|c| c.pending)
        .sum();
    let supervisors: Vec<Value> = o
        .supervisors
        .iter()
        .map(|s| {
            json!({
                "consumer": s.consumer,
                "host": s.host,
                "pid": s.pid,
                "workers": s.workers_total,
                "busy": s.workers_busy,
                "idle": s.workers_total.saturating_sub(s.workers_busy),
                "completed": s.executions_completed,
                "executions_per_sec": s.executions_per_sec,
                "started_at": super::json::time(s.started_at),
                "version": s.version,
            })
        })
        .collect();
    let consumers: Vec<Value> = b
        .consumers
        .iter()
        .map(
            |c| json!({"name": c.name, "live": c.live, "pending": c.pending, "idle_ms": c.idle_ms}),
        )
        .collect();
    json!({
        "supervisors": supervisors,
        "stream": {
            "waiting": b.waiting(),
            "in_progress": b.pending - dead_pending.min(b.pending),
            "left_by_dead": dead_pending,
            "group_exists": b.group_exists,
        },
        "consumers": consumers,
    })
}

/// One consumer of the group: live or dead, and what becomes of a dead one's entries.
fn consumer_line(c: &crate::intake::ConsumerBacklog, any_live: bool) -> String {
    if c.live {
        return format!("{:<32} live   {:>6} in progress", c.name, c.pending);
    }
    let fate = if any_live {
        format!(
            "taken over within ~{}s",
            crate::intake::liveness::TAKEOVER_EVERY.as_secs().max(1)
        )
    } else {
        "taken over when a supervisor starts".to_owned()
    };
    format!("{:<32} dead   {:>6} unfinished, {fate}", c.name, c.pending)
}
