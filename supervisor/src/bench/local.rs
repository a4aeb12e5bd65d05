//! `warden bench --local`: N trivial executions through the pool alone.
//!
//! Two measurements per mode: *throughput* (all N queued at once; latency is dispatch
//! to result) and *one at a time* (submit, wait, repeat; latency is submit to result as
//! the caller sees it, i.e. the pool's whole overhead for a function that does nothing).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use warden_protocol::Isolation;

use super::workload::Workload;
use super::{children_rss_bytes, latencies, pct, self_rss_bytes, BenchArgs};
use crate::cli_error::CliError;
use crate::modules::bench::LocalModules;
use crate::outcome::{Job, PoolEvent, Status};
use crate::pool::Pool;

pub async fn bench_mode(
    args: &BenchArgs,
    mode: Isolation,
    workload: Workload,
) -> Result<serde_json::Value, CliError> {
    let (run_dir, _guard) = args.pool.run_dir().map_err(|source| CliError::Local {
        what: "create a run directory",
        source,
    })?;
    let mut cfg = args.pool.to_config(run_dir);
    cfg.isolation = mode;
    if workload == Workload::Fairness {
        return Err(CliError::Bench(
            "the fairness workload is measured end to end (without --local)".into(),
        ));
    }
    let modules = match workload {
        Workload::Modules => Some(
            LocalModules::start(&args.conn.redis_url)
                .await
                .map_err(CliError::Bench)?,
        ),
        _ => None,
    };
    if let Some(m) = &modules {
        m.configure(&mut cfg);
    }
    if workload == Workload::Requests {
        cfg.packages_dir = Some(
            super::workload::requests_set()
                .await
                .map_err(CliError::Bench)?,
        );
    }
    let modules_generation = modules.as_ref().map_or(0, |m| m.generation);
    let modules_manifest = modules.as_ref().map(|m| m.manifest.clone());
    // Recycling is part of reuse mode's cost; keep the configured value.
    let workers = cfg.workers;
    let timeout = cfg.timeout;
    let (tx, mut events) = mpsc::unbounded_channel();
    let pool = Pool::start(cfg, tx).await?;
    let spawn_ms = pool.stats().last_spawn_to_ready_us as f64 / 1000.0;

    let context = workload.local_context();
    let job = |i: usize| Job {
        execution_id: format!("b{i}").into(),
        path: format!("bench/{}.py", workload.name()),
        source: workload.source().into(),
        function: "run".into(),
        params_json: format!("{{\"x\": {i}}}"),
        context_json: context.clone(),
        timeout,
        limits: None,
        modules_generation,
        org: Some(format!("org{}", i % args.orgs as usize)),
        modules_manifest: modules_manifest.clone(),
        priority: 0,
    };

    // Warm up (first forks fault in pages).
    for i in 0..(50 * workers) {
        pool.submit(job(i))
            .map_err(|_| CliError::Stopped("the pool stopped"))?;
    }
    wait_for(&mut events, 50 * workers).await?;

    // Throughput: everything queued at once.
    let worker_commands_before = modules.as_ref().and_then(LocalModules::worker_commands);
    let t0 = Instant::now();
    for i in 0..args.n {
        pool.submit(job(i))
            .map_err(|_| CliError::Stopped("the pool stopped"))?;
    }
    let lat = wait_for(&mut events, args.n).await?;
    let wall = t0.elapsed();
    let workers_rss = children_rss_bytes();

    // One at a time: the caller's view of the pool's overhead.
    let mut one = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        let t = Instant::now();
        pool.submit(job(i))
            .map_err(|_| CliError::Stopped("the pool stopped"))?;
        wait_for(&mut events, 1).await?;
        one.push(t.elapsed());
    }
    // Redis commands the workers sent for the measured executions (the modules
    // workload: the target is none, templates serve imports from their snapshot).
    let worker_redis = modules
        .as_ref()
        .and_then(LocalModules::worker_commands)
        .zip(worker_commands_before)
        .map(|(after, before)| (after - before) as f64 / (args.n + args.sequential) as f64);
    pool.shutdown(Duration::from_secs(5)).await;
    if let Some(m) = modules {
        m.finish().await;
    }

    let (lat, one) = (latencies(&lat), latencies(&one));
    Ok(json!({
        "mode": super::mode_name(mode),
        "workload": workload.name(),
        "n": args.n,
        "workers": workers,
        "orgs": args.orgs,
        "executions_per_s": args.n as f64 / wall.as_secs_f64(),
        "latency_ms_p50": pct(&lat, 50.0),
        "latency_ms_p99": pct(&lat, 99.0),
        "one_at_a_time_ms_p50": pct(&one, 50.0),
        "one_at_a_time_ms_p99": pct(&one, 99.0),
        "spawn_to_ready_ms": spawn_ms,
        "supervisor_rss_mib": self_rss_bytes() as f64 / 1048576.0,
        "workers_rss_mib": workers_rss as f64 / 1048576.0,
        "worker_redis_commands_per_execution": worker_redis,
    }))
}

/// Waits for `n` finished executions; every one must succeed (a benchmark of failures
/// measures nothing).
async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<PoolEvent>,
    n: usize,
) -> Result<Vec<Duration>, CliError> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match events.recv().await {
            Some(PoolEvent::Finished(o)) => {
                if o.status != Status::Success {
                    return Err(CliError::Bench(format!(
                        "benchmark execution {} ended {}: {:?}",
                        o.execution_id, o.status, o.error
                    )));
                }
                out.push(o.duration);
            }
            Some(_) => {}
            None => return Err(CliError::Stopped("the pool stopped during the benchmark")),
        }
    }
    Ok(out)
}
