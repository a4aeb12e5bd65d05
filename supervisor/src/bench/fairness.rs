//! `warden bench --workload fairness`: what a small organization's lone executions wait
//! while a large one's backlog runs (crate::intake::lanes).
//!
//! Per isolation mode, twice, each time with a fresh `serve` and key prefix: organization
//! `big` submits `-n` executions at once, then organization `small` submits one every
//! 50 ms ([`SMALL_COUNT`] in all) while the backlog runs. Each execution returns the time
//! it started (`time.time()` in the workflow), so a small execution's latency is from its
//! submit to its start, on one clock. The first run submits as clients do (each request
//! to its lane); the second adds every request to the execution stream itself, first come
//! first served: the one FIFO stream Warden had before queues. The JSON line carries
//! `small_org_start_p99_ms` and `fifo_small_org_start_p99_ms`.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use warden_protocol::Isolation;

use super::service::{ids, scratch_database, Completions};
use super::workload::Workload;
use super::{latencies, mode_name, pct, BenchArgs};
use crate::intake::{ExecutionRequest, IntakeClient, Keys, WorkflowRef};
use crate::serve::{serve, Shutdown};
use crate::store::{Store, WorkflowSpec};

/// The small organization's executions per run, one every [`SMALL_EVERY`].
pub const SMALL_COUNT: usize = 200;
pub const SMALL_EVERY: Duration = Duration::from_millis(50);
const BIG: &str = "big";
const SMALL: &str = "small";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// Each request to its lane: what clients do.
    Fair,
    /// Every request straight into the execution stream: one FIFO.
    Fifo,
}

/// What one run measured.
struct Run {
    small_start: Vec<Duration>,
    /// Of the small executions, those submitted before the big backlog was done.
    small_during_backlog: usize,
    big_per_s: f64,
}

pub async fn bench(args: &BenchArgs, mode: Isolation) -> Result<serde_json::Value, String> {
    let db_url = scratch_database(&args.conn.database_url).await?;
    let store = Store::connect(&db_url, 1)
        .await
        .map_err(|e| e.to_string())?;
    for org in [BIG, SMALL] {
        store
            .push_workflow(&WorkflowSpec {
                org: Some(org.into()),
                name: Workload::Fairness.name().into(),
                path: "bench/fairness.py".into(),
                function_name: "run".into(),
                source: Workload::Fairness.source().into(),
                default_timeout_ms: None,
                time_saved_seconds: None,
                value: None,
                retry_policy: None,
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    store.close().await;
    let mut side = PgConnection::connect(&db_url)
        .await
        .map_err(|e| format!("side connection: {e}"))?;
    let fair = run(args, mode, &db_url, &mut side, Intake::Fair).await?;
    let fifo = run(args, mode, &db_url, &mut side, Intake::Fifo).await?;
    let (fair_small, fifo_small) = (latencies(&fair.small_start), latencies(&fifo.small_start));
    let mode_name = mode_name(mode);
    Ok(json!({
        "mode": mode_name,
        "workload": "fairness",
        "end_to_end": true,
        "n": args.n,
        "workers": args.pool.workers,
        "orgs": 2,
        "small_org_executions": SMALL_COUNT,
        "small_org_every_ms": SMALL_EVERY.as_millis() as u64,
        "small_org_start_p50_ms": pct(&fair_small, 50.0),
        "small_org_start_p99_ms": pct(&fair_small, 99.0),
        "small_org_start_max_ms": pct(&fair_small, 100.0),
        "small_org_submitted_during_backlog": fair.small_during_backlog,
        "big_org_executions_per_s": fair.big_per_s,
        "fifo_small_org_start_p50_ms": pct(&fifo_small, 50.0),
        "fifo_small_org_start_p99_ms": pct(&fifo_small, 99.0),
        "fifo_small_org_submitted_during_backlog": fifo.small_during_backlog,
        "fifo_big_org_executions_per_s": fifo.big_per_s,
    }))
}

async fn run(
    args: &BenchArgs,
    mode: Isolation,
    db_url: &str,
    side: &mut PgConnection,
    how: Intake,
) -> Result<Run, String> {
    let name = match how {
        Intake::Fair => "fair",
        Intake::Fifo => "fifo",
    };
    let prefix = format!(
        "bench:{}:fairness:{}:{name}:",
        std::process::id(),
        mode_name(mode)
    );
    let keys = Keys::new(prefix.clone());
    let client = IntakeClient::connect(&args.conn.redis_url, keys.clone())
        .await
        .map_err(|e| e.to_string())?;
    let (cfg, _guard) = super::service::serve_config(
        args,
        mode,
        db_url,
        &prefix,
        format!("bench-fairness-{name}"),
        None,
    )?;
    let (signals, handle) = {
        let (tx, rx) = watch::channel(None);
        (tx, tokio::spawn(serve(cfg, rx)))
    };
    let mut completions = Completions::subscribe(&args.conn.redis_url, &keys).await?;
    let warm: Vec<String> = ids("w", 200);
    submit(&client, &warm, BIG, how).await?;
    completions.wait(&warm, Duration::from_secs(120)).await?;

    let big = ids("a", args.n);
    let t0 = Instant::now();
    for chunk in big.chunks(1000) {
        submit(&client, chunk, BIG, how).await?;
    }
    let mut small = Vec::with_capacity(SMALL_COUNT);
    let mut tick = tokio::time::interval(SMALL_EVERY);
    for id in ids("b", SMALL_COUNT) {
        tick.tick().await;
        let at = SystemTime::now();
        submit(&client, std::slice::from_ref(&id), SMALL, how).await?;
        small.push((id, at));
    }
    let small_ids: Vec<String> = small.iter().map(|(id, _)| id.clone()).collect();
    let big_done = completions.wait(&big, Duration::from_secs(900)).await?;
    completions
        .wait(&small_ids, Duration::from_secs(300))
        .await?;
    let last_big = big_done.values().max().copied().unwrap_or(t0);
    let backlog_ended = SystemTime::now() - last_big.elapsed();
    let _ = signals.send(Some(Shutdown::Drain));
    handle
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    super::service::forget_run(&args.conn.redis_url, &prefix).await;

    let started: Vec<(String, f64)> = sqlx::query_as(
        "SELECT id, (result->>'started')::float8 FROM executions WHERE id = ANY($1) AND status = 'success'",
    )
    .bind(&small_ids)
    .fetch_all(&mut *side)
    .await
    .map_err(|e| format!("reading the small organization's start times: {e}"))?;
    if started.len() != small.len() {
        return Err(format!(
            "{} of {} small-organization executions succeeded",
            started.len(),
            small.len()
        ));
    }
    let started: std::collections::HashMap<String, f64> = started.into_iter().collect();
    let small_start: Vec<Duration> = small
        .iter()
        .map(|(id, at)| {
            let submitted = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            Duration::from_secs_f64((started[id] - submitted).max(0.0))
        })
        .collect();
    Ok(Run {
        small_start,
        small_during_backlog: small.iter().filter(|(_, at)| *at < backlog_ended).count(),
        big_per_s: args.n as f64 / last_big.duration_since(t0).as_secs_f64().max(1e-9),
    })
}

async fn submit(
    client: &IntakeClient,
    ids: &[String],
    org: &str,
    how: Intake,
) -> Result<(), String> {
    let reqs: Vec<ExecutionRequest> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut r = ExecutionRequest::new(
                id.clone(),
                WorkflowRef::Name(Workload::Fairness.name().into()),
            );
            r.params_json = format!("{{\"x\": {i}}}");
            r.org = Some(org.into());
            r
        })
        .collect();
    match how {
        Intake::Fair => client.submit_many(&reqs).await,
        Intake::Fifo => client.submit_many_fifo(&reqs).await,
    }
    .map(drop)
    .map_err(|e| e.to_string())
}
