//! `warden status`: live supervisors (from the status each publishes every second),
//! their workers (busy ones run an execution each) and the executions taken and queued
//! for them, the stream's backlog, the work waiting per queue and organization,
//! each consumer of the stream's group as live or dead (its heartbeat key present or not)
//! with its unfinished entries, and the concurrency limits set, with the permits held
//! under each (top 10 by use).

use serde_json::{json, Value};

use super::table;
use crate::args::ConnArgs;
use crate::cli_error::CliError;

pub async fn run(conn: ConnArgs, json: bool) -> Result<i32, CliError> {
    let client = conn.intake().await?;
    let o = client.status().await?;
    let limits = crate::intake::limits::usage(&mut client.connection(), client.keys()).await?;
    if json {
        let mut v = overview_json(&o);
        v["limits"] = limits_json(&limits);
        super::json::print(&v);
        return Ok(0);
    }
    if o.supervisors.is_empty() {
        println!("no live supervisor (start one with `warden serve`)");
    } else {
        let rows: Vec<Vec<String>> = o
            .supervisors
            .iter()
            .map(|s| {
                vec![
                    s.consumer.clone(),
                    s.workers_total.to_string(),
                    s.workers_busy.to_string(),
                    s.workers_total.saturating_sub(s.workers_busy).to_string(),
                    s.executions_queued.to_string(),
                    s.executions_completed.to_string(),
                    format!("{:.1}", s.executions_per_sec),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render_aligned(
                &[
                    "supervisor",
                    "workers",
                    "busy",
                    "idle",
                    "queued",
                    "completed",
                    "execs/s"
                ],
                &rows,
                &[1, 2, 3, 4, 5, 6],
            )
        );
    }
    let b = &o.backlog;
    let dead_pending = b.left_by_dead();
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
    let consumers: Vec<Vec<String>> = b
        .consumers
        .iter()
        .filter(|c| c.live || c.pending > 0)
        .map(|c| consumer_row(c, any_live))
        .collect();
    print!(
        "{}",
        table::indent(&table::render_aligned(&[], &consumers, &[2]))
    );
    for q in queues(&o.lanes) {
        let served = o.supervisors.iter().any(|s| s.queues.contains(&q.name));
        println!(
            "queue {}: {} waiting in {} organization(s){}",
            q.name,
            q.waiting,
            q.orgs.len(),
            if served || o.supervisors.is_empty() {
                ""
            } else {
                " (no live supervisor serves it: add it to a `serve --queues`)"
            }
        );
        let rows: Vec<Vec<String>> = q
            .orgs
            .iter()
            .take(TOP_ORGS)
            .map(|(org, waiting)| vec![org_name(org).to_owned(), waiting.to_string()])
            .collect();
        print!(
            "{}",
            table::indent(&table::render_aligned(&[], &rows, &[1]))
        );
        if q.orgs.len() > TOP_ORGS {
            println!("  ... and {} more", q.orgs.len() - TOP_ORGS);
        }
    }
    if !limits.is_empty() {
        println!("concurrency limits: running / limit");
        let rows: Vec<Vec<String>> = limits
            .iter()
            .take(TOP_LIMITS)
            .map(|l| vec![l.label.clone(), format!("{} / {}", l.running, l.max)])
            .collect();
        print!(
            "{}",
            table::indent(&table::render_aligned(&[], &rows, &[1]))
        );
        if limits.len() > TOP_LIMITS {
            println!("  ... and {} more", limits.len() - TOP_LIMITS);
        }
    }
    packages(&conn, &o.supervisors).await;
    Ok(0)
}

/// Limits listed, most used first.
const TOP_LIMITS: usize = 10;

/// `status --json`'s `limits`: the most used first, as the text.
fn limits_json(limits: &[crate::intake::limits::LimitUsage]) -> Value {
    Value::Array(
        limits
            .iter()
            .take(TOP_LIMITS)
            .map(|l| json!({"key": l.key, "name": l.label, "running": l.running, "max": l.max}))
            .collect(),
    )
}

/// Organizations listed per queue, deepest first.
const TOP_ORGS: usize = 10;

/// One queue's waiting work, from its lanes.
struct QueueDepth {
    name: String,
    waiting: u64,
    /// Deepest first.
    orgs: Vec<(Option<String>, u64)>,
}

/// The lanes (deepest first) grouped by queue, queues by name.
fn queues(lanes: &[crate::intake::LaneDepth]) -> Vec<QueueDepth> {
    let mut by_queue: std::collections::BTreeMap<&str, QueueDepth> = Default::default();
    for l in lanes {
        let q = by_queue
            .entry(l.lane.queue.as_str())
            .or_insert_with(|| QueueDepth {
                name: l.lane.queue.clone(),
                waiting: 0,
                orgs: Vec::new(),
            });
        q.waiting += l.waiting;
        q.orgs.push((l.lane.org.clone(), l.waiting));
    }
    by_queue.into_values().collect()
}

fn org_name(org: &Option<String>) -> &str {
    org.as_deref().unwrap_or("(no organization)")
}

/// `status --json`: the supervisors, the stream's counts (as the text's `stream:`
/// line), and every consumer of the group.
fn overview_json(o: &crate::intake::client::Overview) -> Value {
    let b = &o.backlog;
    let dead_pending = b.left_by_dead();
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
                // Taken from the stream, waiting in its local queue for a worker.
                "queued": s.executions_queued,
                "completed": s.executions_completed,
                "executions_per_sec": s.executions_per_sec,
                "started_at": super::json::time(s.started_at),
                "version": s.version,
                "queues": s.queues,
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
        "queues": queues(&o.lanes)
            .iter()
            .map(|q| json!({
                "queue": q.name,
                "waiting": q.waiting,
                "organizations": q.orgs.len(),
                "top": q.orgs.iter().take(TOP_ORGS)
                    .map(|(org, waiting)| json!({"org": org, "waiting": waiting}))
                    .collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>(),
    })
}

/// The live supervisors' package sets (docs/packages.md), from PostgreSQL; only when
/// there are requirements or a supervisor reported a set. Best effort: the rest of the
/// status comes from Redis and stands without it.
async fn packages(conn: &ConnArgs, live: &[crate::intake::SupervisorStatus]) {
    let Ok(store) = conn.store().await else {
        return;
    };
    let (Ok(current), Ok(installs)) = (
        crate::packages::store::current(&store).await,
        crate::packages::store::installs(&store).await,
    ) else {
        store.close().await;
        return;
    };
    let installs: Vec<_> = installs
        .iter()
        .filter(|s| live.iter().any(|l| l.consumer == s.consumer))
        .collect();
    if !current.lines.is_empty() || !installs.is_empty() {
        println!(
            "packages: generation {} ({} requirements)",
            current.generation,
            current.lines.len()
        );
        let rows: Vec<Vec<String>> = installs
            .iter()
            .map(|s| {
                vec![
                    s.consumer.clone(),
                    crate::cmd::package::install_line(s, current.generation),
                ]
            })
            .collect();
        print!("{}", table::indent(&table::render(&[], &rows)));
    }
    store.close().await;
}

/// One consumer of the group: its name, live or dead, its unfinished entries, and what
/// becomes of a dead one's.
fn consumer_row(c: &crate::intake::ConsumerBacklog, any_live: bool) -> Vec<String> {
    let row =
        |state: &str, what: String| vec![c.name.clone(), state.into(), c.pending.to_string(), what];
    if c.live {
        return row("live", "in progress".into());
    }
    let fate = if any_live {
        format!(
            "taken over within ~{}s",
            crate::intake::liveness::TAKEOVER_EVERY.as_secs().max(1)
        )
    } else {
        "taken over when a supervisor starts".to_owned()
    };
    row("dead", format!("unfinished, {fate}"))
}
