//! `warden bench` end to end: a real `serve` (in this process), a scratch database and a
//! private Redis key prefix. Per isolation mode:
//!
//! 1. *throughput*: N requests pipelined into the stream at once; each latency is from
//!    its submit to its completion being published, which happens only after its
//!    result is committed and its entry acknowledged;
//! 2. *one at a time*: submit, wait for the completion, repeat (the p50 a lone caller
//!    sees).
//!
//! PostgreSQL figures come from `pg_stat_database` of the scratch database, read on one
//! side connection opened before the run (its own statements are subtracted); Redis
//! figures from the supervisor's own command counter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use warden_protocol::Isolation;

use super::workload::Workload;
use super::{children_rss_bytes, latencies, pct, self_rss_bytes, BenchArgs};
use crate::intake::{ExecutionRequest, IntakeClient, Keys, WorkflowRef};
use crate::modules::bench::CountingProxy;
use crate::serve::{serve, ServeConfig, Shutdown};
use crate::store::{Store, WorkflowSpec};
use sqlx::{Connection, PgConnection};

pub async fn bench_mode(
    args: &BenchArgs,
    mode: Isolation,
    workload: Workload,
) -> Result<serde_json::Value, String> {
    if workload == Workload::Requests {
        return Err("the requests workload is measured with --local (the pool alone)".into());
    }
    if workload == Workload::Fairness {
        return super::fairness::bench(args, mode).await;
    }
    let db_url = scratch_database(&args.conn.database_url).await?;
    let store = Store::connect(&db_url, 1)
        .await
        .map_err(|e| e.to_string())?;
    for org in orgs(args.orgs) {
        store
            .push_workflow(&WorkflowSpec {
                org,
                name: workload.name().into(),
                path: format!("bench/{}.py", workload.name()),
                function_name: "run".into(),
                source: workload.source().into(),
                default_timeout_ms: None,
                time_saved_seconds: None,
                value: None,
                retry_policy: workload.retry_policy(),
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    workload.setup(&store).await?;
    let mode_name = super::mode_name(mode);
    let prefix = format!("bench:{}:{mode_name}:", std::process::id());
    // The modules workload: workers read the module cache through a proxy that counts
    // their commands (the target is none per execution in the steady state). It fronts
    // the workers' read-only user, as the supervisor would hand it out: a URL that can
    // write is refused at start-up.
    let proxy = match workload {
        Workload::Modules => {
            let url =
                crate::modules::access::worker_url(store.pool(), &args.conn.redis_url, &prefix)
                    .await
                    .map_err(|e| e.to_string())?;
            CountingProxy::start(&url).await
        }
        _ => None,
    };
    store.close().await;

    let keys = Keys::new(prefix.clone());
    let client = IntakeClient::connect(&args.conn.redis_url, keys.clone())
        .await
        .map_err(|e| e.to_string())?;

    let (cfg, _guard) = serve_config(
        args,
        mode,
        &db_url,
        &prefix,
        format!("bench-{mode_name}"),
        proxy.as_ref().map(|p| p.url.clone()),
    )?;
    let mut side = PgConnection::connect(&db_url)
        .await
        .map_err(|e| format!("side connection: {e}"))?;
    let (s0, _) = stats(&mut side).await?;
    let (signals, handle) = {
        let (tx, rx) = watch::channel(None);
        (tx, tokio::spawn(serve(cfg, rx)))
    };

    let mut completions = Completions::subscribe(&args.conn.redis_url, &keys).await?;
    // Warm up: templates started, connections open, first forks paid.
    let warm = ids("w", 200.min(args.n.max(1)));
    submit(&client, &warm, workload, args.orgs).await?;
    completions.wait(&warm, Duration::from_secs(120)).await?;

    let (s1, x1) = stats(&mut side).await?;
    let worker_commands_before = proxy.as_ref().map(CountingProxy::commands);
    let t0 = Instant::now();
    let cpu0 = super::self_cpu();
    let batch = ids("t", args.n);
    let submitted = Instant::now();
    submit(&client, &batch, workload, args.orgs).await?;
    let arrived = completions.wait(&batch, Duration::from_secs(600)).await?;
    let wall = t0.elapsed();
    let cpu = super::self_cpu().saturating_sub(cpu0);
    let lat: Vec<Duration> = arrived
        .values()
        .map(|t| t.duration_since(submitted))
        .collect();
    let lat = latencies(&lat);
    let workers_rss = children_rss_bytes();
    let sup_rss = self_rss_bytes();

    let (_, x2) = stats(&mut side).await?;

    let mut one = Vec::with_capacity(args.sequential);
    for id in ids("s", args.sequential) {
        let t = Instant::now();
        submit(&client, std::slice::from_ref(&id), workload, args.orgs).await?;
        completions
            .wait(std::slice::from_ref(&id), Duration::from_secs(60))
            .await?;
        one.push(t.elapsed());
    }
    let one = latencies(&one);
    let worker_redis = proxy
        .as_ref()
        .map(CountingProxy::commands)
        .zip(worker_commands_before)
        .map(|(after, before)| (after - before) as f64 / (args.n + args.sequential) as f64);
    let (s3, x3) = stats(&mut side).await?;
    let _ = signals.send(Some(Shutdown::Drain));
    let report = handle
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    forget_run(&args.conn.redis_url, &prefix).await;
    let executions = (args.n + args.sequential) as f64;
    // Each `stats` call is 2 statements of our own (flush + read), each a transaction.
    let own_xacts = 2.0;
    let per = |dx: i64, n: usize| (dx as f64 - own_xacts) / n.max(1) as f64;
    let redis_per_exec = report.redis.commands as f64 / (executions + warm.len() as f64);

    Ok(json!({
        "mode": mode_name,
        "workload": workload.name(),
        "end_to_end": true,
        "n": args.n,
        "workers": args.pool.workers,
        "orgs": args.orgs,
        "executions_per_s": args.n as f64 / wall.as_secs_f64(),
        "latency_ms_p50": pct(&lat, 50.0),
        "latency_ms_p99": pct(&lat, 99.0),
        "one_at_a_time_ms_p50": pct(&one, 50.0),
        "one_at_a_time_ms_p99": pct(&one, 99.0),
        "pg_sessions_at_startup": s1 - s0 - 1,
        "pg_sessions_opened_during_run": s3 - s1,
        "pg_xact_per_execution_under_load": per(x2 - x1, args.n),
        "pg_xact_per_execution_one_at_a_time": per(x3 - x2, args.sequential),
        "redis_commands_per_execution": redis_per_exec,
        // The module cache: the supervisor's (a GET per batch, plus start-up) and the
        // workers' (measured executions only; null when not counted).
        "module_cache_redis_commands_per_execution":
            report.module_cache_redis.commands as f64 / (executions + warm.len() as f64),
        "worker_redis_commands_per_execution": worker_redis,
        "redis_round_trips_per_execution": report.redis.round_trips as f64 / (executions + warm.len() as f64),
        "supervisor_rss_mib": sup_rss as f64 / 1048576.0,
        "workers_rss_mib": workers_rss as f64 / 1048576.0,
        // Under load: the supervisor's CPU (and the bench client's) per execution.
        "supervisor_cpu_us_per_execution": cpu.as_secs_f64() * 1e6 / args.n.max(1) as f64,
    }))
}

/// The supervisor a bench run measures: the pool as the bench's flags say, in `mode`,
/// under its own key prefix and consumer name, with the end-to-end flags (`--http`,
/// `--read-linger`, `--commit-delay`); `workers_redis`: the workers' Redis URL when it is
/// not the supervisor's own read-only user. The guard keeps a temporary run directory.
pub(super) fn serve_config(
    args: &BenchArgs,
    mode: Isolation,
    db_url: &str,
    prefix: &str,
    consumer: String,
    workers_redis: Option<String>,
) -> Result<(ServeConfig, Option<tempfile::TempDir>), String> {
    let (run_dir, guard) = args.pool.run_dir().map_err(|e| e.to_string())?;
    let mut pool = args.pool.to_config(run_dir);
    pool.isolation = mode;
    if workers_redis.is_some() {
        pool.redis_url = workers_redis;
    }
    let mut cfg = ServeConfig::new(pool, db_url.to_owned(), args.conn.redis_url.clone());
    cfg.key_prefix = prefix.to_owned();
    cfg.consumer = consumer;
    cfg.http = args.http;
    cfg.read_linger = args.read_linger;
    cfg.writer.max_delay = args.commit_delay;
    Ok((cfg, guard))
}

/// Deletes what a bench run left in Redis once its serve has stopped: the workers' Redis
/// user `serve` made for the run's prefix, and every key under the prefix (completions
/// and live logs, about two per execution, the stream and the lanes). The keys used to
/// stay until their TTL: 1.2 million had piled up on one machine, and Redis spent CPU
/// expiring them during later runs. A failure only leaves them behind: said, not fatal.
pub(super) async fn forget_run(redis_url: &str, prefix: &str) {
    if let Err(e) = crate::modules::access::remove_user(redis_url, prefix).await {
        tracing::warn!(error = %e, "cannot delete the bench run's workers' Redis user");
    }
    if let Err(e) = delete_keys(redis_url, prefix).await {
        tracing::warn!(error = %e, prefix, "cannot delete the bench run's Redis keys");
    }
}

/// `SCAN MATCH <prefix>*` and `UNLINK` of what it finds; returns how many were deleted.
/// The prefix is the bench's own (`bench:<pid>:<mode>:`), with no glob characters.
async fn delete_keys(redis_url: &str, prefix: &str) -> redis::RedisResult<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{prefix}*");
    let (mut cursor, mut deleted) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// The organizations a run spreads over: none (the global workflow) for one.
fn orgs(n: u32) -> Vec<Option<String>> {
    if n <= 1 {
        return vec![None];
    }
    (0..n).map(|k| Some(format!("org{k}"))).collect()
}

pub(super) fn ids(prefix: &str, n: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| format!("{prefix}{i}-{}", &run[..8]))
        .collect()
}

async fn submit(
    client: &IntakeClient,
    ids: &[String],
    workload: Workload,
    n_orgs: u32,
) -> Result<(), String> {
    let orgs = orgs(n_orgs);
    let reqs: Vec<ExecutionRequest> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut r =
                ExecutionRequest::new(id.clone(), WorkflowRef::Name(workload.name().into()));
            r.params_json = format!("{{\"x\": {i}}}");
            r.org = orgs[i % orgs.len()].clone();
            r
        })
        .collect();
    for chunk in reqs.chunks(1000) {
        client.submit_many(chunk).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `(sessions, xact_commit)` of the current database, after flushing our own counters.
async fn stats(conn: &mut PgConnection) -> Result<(i64, i64), String> {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    // Other backends flush their counters at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::query_as(
        "SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| e.to_string())
}

/// `<db>_bench_<pid>` next to the configured database, dropped and created afresh (and
/// those of benches no longer running dropped).
pub(super) async fn scratch_database(url: &str) -> Result<String, String> {
    let (base, rest) = url
        .rsplit_once('/')
        .ok_or_else(|| format!("cannot find the database name in {url}"))?;
    let (name, query) = match rest.split_once('?') {
        Some((n, q)) => (n, format!("?{q}")),
        None => (rest, String::new()),
    };
    // One per bench process: two benches on one host (a helper's, the peers harness)
    // must not drop each other's database mid-run.
    let stem = format!("{}_bench", if name.is_empty() { "warden" } else { name });
    let scratch = format!("{stem}_{}", std::process::id());
    let mut admin = PgConnection::connect(&format!("{base}/postgres{query}"))
        .await
        .map_err(|e| {
            format!(
                "cannot reach PostgreSQL at {}: {e}",
                crate::store::redact_url(url)
            )
        })?;
    // This run's, left by an earlier workload, and those of benches no longer running.
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("{stem}_"))
            .fetch_all(&mut admin)
            .await
            .map_err(|e| e.to_string())?;
    for db in existing {
        let owner = db[stem.len() + 1..].parse::<u32>().ok();
        let stale = owner.is_some_and(|pid| {
            pid == std::process::id() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        if stale {
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let _ = admin.close().await;
    let scratch_url = format!("{base}/{scratch}{query}");
    Store::create_database_if_missing(&scratch_url)
        .await
        .map_err(|e| e.to_string())?;
    let store = Store::connect(&scratch_url, 1)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    store.close().await;
    Ok(scratch_url)
}

/// Every completion published under the prefix, as it arrives.
pub(super) struct Completions {
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    seen: HashMap<String, Instant>,
}

impl Completions {
    pub(super) async fn subscribe(redis_url: &str, keys: &Keys) -> Result<Self, String> {
        let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
        let pattern = keys.completion_channel("*");
        pubsub
            .psubscribe(&pattern)
            .await
            .map_err(|e| e.to_string())?;
        let strip = pattern.trim_end_matches('*').to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut msgs = pubsub.into_on_message();
            while let Some(m) = msgs.next().await {
                let channel = m.get_channel_name().to_string();
                if let Some(id) = channel.strip_prefix(&strip) {
                    if tx.send((id.to_string(), Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            rx,
            seen: HashMap::new(),
        })
    }

    /// Waits until every id in `ids` has completed; returns their arrival times.
    pub(super) async fn wait(
        &mut self,
        ids: &[String],
        within: Duration,
    ) -> Result<HashMap<String, Instant>, String> {
        let deadline = tokio::time::Instant::now() + within;
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = self.seen.remove(id) {
                out.insert(id.clone(), t);
            }
        }
        while out.len() < ids.len() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((id, t))) => {
                    if wanted.contains(id.as_str()) {
                        out.insert(id, t);
                    } else {
                        self.seen.insert(id, t);
                    }
                }
                Ok(None) => return Err("the completion subscription closed".into()),
                Err(_) => {
                    return Err(format!(
                        "only {} of {} executions completed in {within:?}",
                        out.len(),
                        ids.len()
                    ))
                }
            }
        }
        Ok(out)
    }
}
