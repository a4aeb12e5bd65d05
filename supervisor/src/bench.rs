//! `warden bench`: measured figures, never timed tests.
//!
//! - [`local`] (`--local`): the pool on its own, no services: executions/s, latency,
//!   spawn-to-ready, RSS.
//! - [`service`] (default): end to end through `serve`: submit to the Redis stream,
//!   wait until each result is committed and acknowledged; adds PostgreSQL sessions and
//!   transactions per execution (from `pg_stat_database`) and Redis commands per
//!   execution.
//!
//! Both run each workload ([`workload`]: the trivial function, the SDK workload) in
//! each isolation mode in turn and print a table, then one JSON line per run.

pub mod fairness;
pub mod local;
pub mod service;
pub mod workload;

use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use warden_protocol::Isolation;

use crate::args::{ConnArgs, PoolArgs};
use crate::cli_error::CliError;

pub const TRIVIAL: &str = "def run(x):\n    return {\"y\": x * 2}\n";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Pool only, no services. Default: end to end through `serve`, PostgreSQL and Redis
    /// (in a scratch database `<name>_bench_<pid>` and a private key prefix).
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
    /// What each execution runs: `trivial` (returns at once), `sdk` (5 config.get,
    /// 5 kv.set and 20 log lines), or `both`, one after the other.
    #[arg(long, value_enum, default_value = "trivial")]
    pub workload: workload::Workloads,
    /// Spread the executions round-robin over this many organizations (each with its
    /// own copy of the workflow): what a shared host sees. A reuse-mode template serves
    /// one organization, so many interleaved organizations make it recycle templates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub orgs: u32,
    /// End to end: run `serve` with `--http ADDR` (metrics counted), to compare its
    /// throughput with and without.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// End to end: `serve --read-linger` (how long the reader gathers under load).
    #[arg(long, default_value = "100ms", value_parser = crate::args::parse_duration)]
    pub read_linger: std::time::Duration,
    /// End to end: `serve --commit-delay` (at most one result transaction per interval).
    #[arg(long, default_value = "100ms", value_parser = crate::args::parse_duration)]
    pub commit_delay: std::time::Duration,
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Set from the global connection flags (crate::args::ConnArgs).
    #[arg(skip)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Modes {
    Fork,
    Reuse,
    Both,
}

pub async fn run(args: BenchArgs) -> Result<i32, CliError> {
    let modes: &[Isolation] = match args.modes {
        Modes::Fork => &[Isolation::Fork],
        Modes::Reuse => &[Isolation::Reuse],
        Modes::Both => &[Isolation::Fork, Isolation::Reuse],
    };
    let columns: &[(&str, &str)] = if args.workload == workload::Workloads::Fairness {
        &[
            ("small p50", "small_org_start_p50_ms"),
            ("small p99", "small_org_start_p99_ms"),
            ("fifo p50", "fifo_small_org_start_p50_ms"),
            ("fifo p99", "fifo_small_org_start_p99_ms"),
            ("big ex/s", "big_org_executions_per_s"),
            ("fifo ex/s", "fifo_big_org_executions_per_s"),
        ]
    } else if args.local {
        &[
            ("execs/s", "executions_per_s"),
            ("p50 ms", "latency_ms_p50"),
            ("p99 ms", "latency_ms_p99"),
            ("1x1 p50", "one_at_a_time_ms_p50"),
            ("1x1 p99", "one_at_a_time_ms_p99"),
            ("orgs", "orgs"),
            ("spawn ms", "spawn_to_ready_ms"),
            ("sup MiB", "supervisor_rss_mib"),
            ("wrk MiB", "workers_rss_mib"),
            ("wrk rd/ex", "worker_redis_commands_per_execution"),
        ]
    } else {
        &[
            ("execs/s", "executions_per_s"),
            ("p50 ms", "latency_ms_p50"),
            ("p99 ms", "latency_ms_p99"),
            ("1x1 p50", "one_at_a_time_ms_p50"),
            ("1x1 p99", "one_at_a_time_ms_p99"),
            ("orgs", "orgs"),
            ("xact/ex", "pg_xact_per_execution_under_load"),
            ("sessions", "pg_sessions_opened_during_run"),
            ("redis/ex", "redis_commands_per_execution"),
            ("cache/ex", "module_cache_redis_commands_per_execution"),
            ("wrk rd/ex", "worker_redis_commands_per_execution"),
            ("sup MiB", "supervisor_rss_mib"),
            ("sup µs/ex", "supervisor_cpu_us_per_execution"),
        ]
    };
    let mut header = format!("{:<8} {:<6}", "workload", "mode");
    for (title, _) in columns {
        header.push_str(&format!(" {title:>10}"));
    }
    println!("{header}");
    for &wl in args.workload.list() {
        for &mode in modes {
            let r = if args.local {
                local::bench_mode(&args, mode, wl).await?
            } else {
                service::bench_mode(&args, mode, wl)
                    .await
                    .map_err(CliError::Bench)?
            };
            let mut line = format!("{:<8} {:<6}", wl.name(), r["mode"].as_str().unwrap_or(""));
            for (_, key) in columns {
                line.push_str(&format!(" {:>10.3}", r[*key].as_f64().unwrap_or(0.0)));
            }
            println!("{line}");
            println!("{r}");
        }
    }
    Ok(0)
}

/// Durations as a histogram of microseconds (HdrHistogram: 3 significant digits, so a
/// percentile is within 0.1% of the exact one), from 1 µs to an hour (a longer one
/// counts as an hour).
pub fn latencies<'a>(durations: impl IntoIterator<Item = &'a Duration>) -> Histogram<u64> {
    const HOUR_US: u64 = 3_600_000_000;
    let mut h = Histogram::new_with_bounds(1, HOUR_US, 3).expect("valid bounds and precision");
    for d in durations {
        h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    h
}

/// The isolation mode's name, as the bench prints it.
pub fn mode_name(mode: Isolation) -> &'static str {
    match mode {
        Isolation::Fork => "fork",
        Isolation::Reuse => "reuse",
    }
}

/// The p-th percentile in milliseconds (0 with no samples).
pub fn pct(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(p / 100.0) as f64 / 1000.0
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

/// CPU time (user + system) this process has used so far, all threads: in service mode
/// the supervisor and the bench's own client (its share is the same whatever the
/// supervisor's flags). Much steadier on a busy machine than throughput.
pub fn self_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_latencies_in_milliseconds() {
        // 1 ms to 100 ms, shuffled: no sorting is needed.
        let ms: Vec<Duration> = (1..=100u64)
            .map(|i| Duration::from_millis((i * 37) % 100 + 1))
            .collect();
        let h = latencies(&ms);
        for (p, exact) in [(50.0, 50.0), (99.0, 99.0), (100.0, 100.0), (0.0, 1.0)] {
            let got = pct(&h, p);
            assert!(
                (got - exact).abs() <= exact * 0.001,
                "p{p}: {got} ms, exactly {exact} ms"
            );
        }
        assert_eq!(pct(&latencies(&[]), 99.0), 0.0);
        // A sub-millisecond latency keeps its microseconds.
        let h = latencies(&[Duration::from_micros(250)]);
        assert_eq!(pct(&h, 50.0), 0.25);
        // Past the top, an hour.
        let h = latencies(&[Duration::from_secs(7200)]);
        assert!((pct(&h, 50.0) - 3_600_000.0).abs() <= 3_600.0);
    }
}
