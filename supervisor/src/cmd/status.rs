//! `warden status`: live supervisors (from the status each publishes every second),
//! their workers, the stream's backlog, and each consumer of the stream's group as
//! live or dead (its heartbeat key present or not) with its unfinished entries.

use crate::args::ConnArgs;
use crate::cli_error::CliError;

pub async fn run(conn: ConnArgs) -> Result<i32, CliError> {
    let client = conn.intake().await?;
    let o = client.status().await?;
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
    packages(&conn, &o.supervisors).await;
    Ok(0)
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
        for s in installs {
            println!(
                "  {:<32} {}",
                s.consumer,
                crate::cmd::package::install_line(s, current.generation)
            );
        }
    }
    store.close().await;
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
