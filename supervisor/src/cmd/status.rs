//! `warden status`: live supervisors (from the status each publishes every second),
//! their workers, and the stream's backlog.

use super::ConnArgs;

pub async fn run(conn: ConnArgs) -> Result<i32, String> {
    let client = conn.intake().await?;
    let o = client.status().await.map_err(|e| e.to_string())?;
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
    println!(
        "stream: {} waiting, {} in progress{}",
        b.waiting(),
        b.pending,
        if b.group_exists {
            ""
        } else {
            " (no supervisor has read it yet)"
        }
    );
    Ok(0)
}
