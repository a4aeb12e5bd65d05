//! `warden bench --local`: the pool on its own (no database, no Redis). Runs N trivial
//! executions (`def run(x): return {"y": x * 2}`) per isolation mode and prints
//! executions/s, latency percentiles, template spawn-to-ready time, and the RSS of the
//! supervisor and its workers.
//!
//! Two measurements per mode: *throughput* (all N queued at once; latency is dispatch
//! to result) and *one at a time* (submit, wait, repeat; latency is submit to result as
//! the caller sees it, i.e. the pool's whole overhead for a function that does nothing).

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::sync::mpsc;
use warden_protocol::Isolation;

use crate::cli::PoolArgs;
use crate::outcome::{Job, PoolEvent, Status};
use crate::pool::Pool;

pub const TRIVIAL: &str = "def run(x):\n    return {\"y\": x * 2}\n";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Pool only, no services (the only mode so far).
    #[arg(long)]
    pub local: bool,
    /// Executions per measurement.
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub n: usize,
    /// Executions in the one-at-a-time latency measurement.
    #[arg(long, default_value_t = 1000)]
    pub sequential: usize,
    /// Which isolation modes to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub modes: Modes,
    #[command(flatten)]
    pub pool: PoolArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Modes {
    Fork,
    Reuse,
    Both,
}

pub async fn run(args: BenchArgs) -> Result<i32, String> {
    let modes: &[Isolation] = match args.modes {
        Modes::Fork => &[Isolation::Fork],
        Modes::Reuse => &[Isolation::Reuse],
        Modes::Both => &[Isolation::Fork, Isolation::Reuse],
    };
    println!(
        "{:<6} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>10} {:>10}",
        "mode",
        "execs/s",
        "p50 ms",
        "p99 ms",
        "1x1 p50 ms",
        "1x1 p99 ms",
        "spawn ms",
        "sup MiB",
        "wrk MiB"
    );
    for &mode in modes {
        let r = bench_mode(&args, mode).await?;
        println!(
            "{:<6} {:>9.0} {:>9.3} {:>9.3} {:>11.3} {:>11.3} {:>11.1} {:>10.1} {:>10.1}",
            r["mode"].as_str().unwrap_or(""),
            r["executions_per_s"].as_f64().unwrap_or(0.0),
            r["latency_ms_p50"].as_f64().unwrap_or(0.0),
            r["latency_ms_p99"].as_f64().unwrap_or(0.0),
            r["one_at_a_time_ms_p50"].as_f64().unwrap_or(0.0),
            r["one_at_a_time_ms_p99"].as_f64().unwrap_or(0.0),
            r["spawn_to_ready_ms"].as_f64().unwrap_or(0.0),
            r["supervisor_rss_mib"].as_f64().unwrap_or(0.0),
            r["workers_rss_mib"].as_f64().unwrap_or(0.0),
        );
        println!("{r}");
    }
    Ok(0)
}

async fn bench_mode(args: &BenchArgs, mode: Isolation) -> Result<serde_json::Value, String> {
    let (run_dir, _guard) = args.pool.run_dir().map_err(|e| e.to_string())?;
    let mut cfg = args.pool.to_config(run_dir);
    cfg.isolation = mode;
    // Recycling is part of reuse mode's cost; keep the configured value.
    let workers = cfg.workers;
    let (tx, mut events) = mpsc::unbounded_channel();
    let pool = Pool::start(cfg, tx).await.map_err(|e| e.to_string())?;
    let spawn_ms = pool.stats().last_spawn_to_ready_us as f64 / 1000.0;

    let job = |i: usize| Job {
        execution_id: format!("b{i}"),
        path: "bench/trivial.py".into(),
        source: TRIVIAL.into(),
        function: "run".into(),
        params_json: format!("{{\"x\": {i}}}"),
        context_json: "{}".into(),
        timeout: None,
        limits: None,
        modules_generation: 0,
    };

    // Warm up (first forks fault in pages).
    for i in 0..(50 * workers) {
        pool.submit(job(i))
            .map_err(|_| "the pool stopped".to_string())?;
    }
    wait_for(&mut events, 50 * workers).await?;

    // Throughput: everything queued at once.
    let t0 = Instant::now();
    for i in 0..args.n {
        pool.submit(job(i))
            .map_err(|_| "the pool stopped".to_string())?;
    }
    let mut lat = wait_for(&mut events, args.n).await?;
    let wall = t0.elapsed();
    let workers_rss = children_rss_bytes();

    // One at a time: the caller's view of the pool's overhead.
    let mut one = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        let t = Instant::now();
        pool.submit(job(i))
            .map_err(|_| "the pool stopped".to_string())?;
        wait_for(&mut events, 1).await?;
        one.push(t.elapsed());
    }
    pool.shutdown(Duration::from_secs(5)).await;

    lat.sort();
    one.sort();
    Ok(json!({
        "mode": match mode { Isolation::Fork => "fork", Isolation::Reuse => "reuse" },
        "n": args.n,
        "workers": workers,
        "executions_per_s": args.n as f64 / wall.as_secs_f64(),
        "latency_ms_p50": pct(&lat, 50.0),
        "latency_ms_p99": pct(&lat, 99.0),
        "one_at_a_time_ms_p50": pct(&one, 50.0),
        "one_at_a_time_ms_p99": pct(&one, 99.0),
        "spawn_to_ready_ms": spawn_ms,
        "supervisor_rss_mib": self_rss_bytes() as f64 / 1048576.0,
        "workers_rss_mib": workers_rss as f64 / 1048576.0,
    }))
}

/// Waits for `n` finished executions; every one must succeed (a benchmark of failures
/// measures nothing).
async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<PoolEvent>,
    n: usize,
) -> Result<Vec<Duration>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match events.recv().await {
            Some(PoolEvent::Finished(o)) => {
                if o.status != Status::Success {
                    return Err(format!(
                        "benchmark execution {} ended {}: {:?}",
                        o.execution_id, o.status, o.error
                    ));
                }
                out.push(o.duration);
            }
            Some(_) => {}
            None => return Err("the pool stopped during the benchmark".into()),
        }
    }
    Ok(out)
}

/// The p-th percentile in milliseconds of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// VmRSS of a process, in bytes (0 when it is gone).
pub fn rss_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn self_rss_bytes() -> u64 {
    rss_bytes("self")
}

/// Summed RSS of this process's direct children (the templates).
pub fn children_rss_bytes() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|pid| rss_bytes(&pid))
        .sum()
}
