//! `warden serve`: the daemon. Intake from the Redis stream, the worker pool, and the
//! group-commit writer, joined by one loop.
//!
//! ```text
//!  reader task ──Vec<Dispatch>──▶ main loop ──Job──▶ pool ──PoolEvent──▶ main loop
//!   (XREADGROUP, one query for        │                                     │
//!    the batch's workflows, one       │ logs (live, batched PUBLISH)        │ Completed
//!    MGET of cancel markers, one      ▼                                     ▼
//!    INSERT marking them running)   Redis                       writer (1 tx per batch)
//!                                                                           │ Committed
//!                                                         acker task ◀──────┘
//!                                                         (XACK+XDEL+PUBLISH, 1 pipeline)
//! ```
//!
//! - **Capacity.** The reader takes as many stream entries as there are free places: one
//!   per worker plus a bounded prefetch (a semaphore; the main loop returns a permit when
//!   an execution finishes). The stream, not memory, holds the backlog, and other
//!   supervisors can take what this one cannot. Under load the reader waits until half
//!   its places are free before reading again, so each batch (and its one transaction)
//!   covers many executions whatever the rate; a lone request is read at once.
//! - **Back-pressure.** While the database is away the writer keeps results in memory
//!   up to its bound; `submit` then waits, the main loop stops returning permits, and
//!   intake pauses. Nothing is acknowledged before it is committed.
//! - **Module cache.** At start-up the workspace's modules are synced from PostgreSQL to
//!   Redis, and kept in step (LISTEN/NOTIFY) by crate::modules::ModuleSync, whose
//!   LISTEN connection is the one database connection beyond `db_connections`. Each
//!   batch carries the cache's generation (one GET); workers' `module_miss` requests
//!   are answered from the database here.
//! - **Liveness.** A heartbeat key (its own task and connection) tells peers this
//!   supervisor lives; the reader takes over the entries of consumers whose heartbeat
//!   is gone, and takes no work while its own is lapsing. After a lapse, executions
//!   whose entries a peer took meanwhile are killed and their outcomes dropped
//!   (crate::intake::liveness). The sweeper ends rows a dead supervisor left running
//!   with nothing left to run them ([`sweeper`]).
//! - **Shutdown.** The first signal stops intake and drains the pool for
//!   `--drain-timeout` (what is still running is then killed and recorded `cancelled`);
//!   a second signal kills at once. The writer then commits what it holds and the acker
//!   acknowledges it; the heartbeat key is deleted last, so peers take over at once
//!   whatever is left pending.

pub mod acker;
pub mod held;
pub mod inflight;
pub mod prepare;
pub mod sweeper;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};

use crate::intake::liveness::DEFAULT_HEARTBEAT_TTL;
use crate::intake::{Heartbeat, Intake, Keys, SupervisorStatus};
use crate::modules::{ModuleCache, ModuleSync};
use crate::outcome::{ExecutionOutcome, PoolEvent, Status};
use crate::pool::{Pool, PoolConfig};
use crate::sdk::Sdk;
use crate::store::{Store, Writer, WriterConfig};
use inflight::Inflight;

/// Everything `serve` needs; the CLI builds it from flags, tests build it directly.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub pool: PoolConfig,
    pub database_url: String,
    pub redis_url: String,
    /// Prefix of every Redis key ("" in production; tests use their own).
    pub key_prefix: String,
    /// PostgreSQL connections, all opened at start-up.
    pub db_connections: u32,
    /// This supervisor's consumer name in the stream's group.
    pub consumer: String,
    pub writer: WriterConfig,
    pub drain_timeout: Duration,
    /// This supervisor's heartbeat key lives this long unless refreshed (every third
    /// of it). Peers take over its pending entries once it is gone, so this bounds how
    /// long a dead supervisor's work waits (crate::intake::liveness).
    pub heartbeat_ttl: Duration,
    /// How often the sweeper looks for executions left `running` by a dead supervisor
    /// whose stream entry is gone (crate::serve::sweeper).
    pub sweep_every: Duration,
    /// How long one XREADGROUP waits for new entries.
    pub read_block: Duration,
    /// Entries taken ahead of free workers (they wait in the pool's queue), so that a
    /// batch's reads and writes cover many executions.
    pub prefetch: usize,
    /// Under load, the reader waits for half its places to free up before reading
    /// again, but at most this long after its last read.
    pub read_linger: Duration,
    /// The key that opens secret config values (`--secret-key-file` or
    /// `WARDEN_SECRET_KEY`); `None`: executions that read a secret get a clear error.
    pub secret_key: Option<crate::sdk::SecretKey>,
}

impl ServeConfig {
    pub fn new(pool: PoolConfig, database_url: String, redis_url: String) -> Self {
        Self {
            prefetch: 64 * pool.workers.max(1),
            pool,
            database_url,
            redis_url,
            key_prefix: String::new(),
            db_connections: 2,
            consumer: default_consumer(),
            writer: WriterConfig::default(),
            drain_timeout: Duration::from_secs(30),
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            sweep_every: sweeper::SWEEP_EVERY,
            read_block: Duration::from_millis(200),
            read_linger: Duration::from_millis(50),
            secret_key: None,
        }
    }
}

/// `<host>-<pid>`: unique per live supervisor, stable for its lifetime.
pub fn default_consumer() -> String {
    format!(
        "{}-{}",
        crate::intake::messages::hostname(),
        std::process::id()
    )
}

/// What `serve` did, for its final log line and for tests.
#[derive(Debug, Clone, Default)]
pub struct ServeReport {
    pub executions: u64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Redis round trips and commands of the intake, reader and acker (not the cancel
    /// subscription, which only receives).
    pub redis: crate::intake::RedisCalls,
    /// Those of the module cache's keeper (one GET per batch in the steady state;
    /// start-up and change syncs besides).
    pub module_cache_redis: crate::intake::RedisCalls,
    /// Intake places (one per worker plus the prefetch), and how many were free when
    /// the supervisor stopped: every way an execution ends gives its place back, so
    /// the two are equal after a clean stop.
    pub places: usize,
    pub places_free_at_stop: usize,
    /// Times this supervisor's heartbeat was found expired (Redis unreachable or
    /// wiped, or the process stalled past the TTL).
    pub heartbeat_lapses: u64,
    /// Executions this supervisor was running whose entries a peer took over during
    /// such a lapse: killed, their outcomes neither committed nor acknowledged.
    pub lost_to_peers: u64,
    /// Pending entries this supervisor took over from dead supervisors.
    pub taken_over: u64,
    /// Executions this supervisor's sweeper recorded `crashed` / `SupervisorLost`.
    pub swept: u64,
}

/// A start-up failure, as one sentence for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(pub String);

/// Runs the daemon until `signals` reports 1 (drain) or 2 (stop now) — the binary feeds
/// it SIGTERM/SIGINT; tests feed it directly.
pub async fn serve(
    cfg: ServeConfig,
    mut signals: watch::Receiver<u32>,
) -> Result<ServeReport, ServeError> {
    let store = Store::connect(&cfg.database_url, cfg.db_connections)
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    store
        .check_schema()
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let keys = Keys::new(cfg.key_prefix.clone());
    let intake = Intake::connect(&cfg.redis_url, keys, cfg.consumer.clone())
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    intake
        .ensure_group()
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    // Peers see this supervisor alive from now on; set before the first read.
    let heartbeat = Heartbeat::start(&intake, cfg.heartbeat_ttl)
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let mut liveness = heartbeat.watch();
    // Advice only: a Redis that persists nothing loses unread requests when it restarts.
    crate::intake::persistence::warn_if_unpersisted(intake.client(), &cfg.redis_url).await;
    let mut cancels = intake
        .cancel_listener()
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let sdk = Sdk::start(
        store.clone(),
        intake.client(),
        intake.keys().clone(),
        cfg.secret_key.clone(),
    )
    .await
    .map_err(|e| ServeError(e.to_string()))?;

    // The module cache: filled from the database now, then kept in step (LISTEN).
    let module_cache = ModuleCache::connect(&cfg.redis_url, intake.keys().clone())
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let modules = ModuleSync::new(store.clone(), module_cache);
    let (stop_modules, modules_stopped) = watch::channel(false);
    let module_follower = modules
        .start(&cfg.database_url, modules_stopped)
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    // Workers read the cache from the same Redis (unless told otherwise, e.g. a Unix
    // socket for network-isolated workers), as a read-only user; never the database.
    let mut pool_cfg = cfg.pool.clone();
    let access = match pool_cfg.redis_url.take() {
        Some(url) => crate::modules::access::check_read_only(&url, &cfg.key_prefix)
            .await
            .map(|()| url),
        None => {
            crate::modules::access::worker_url(store.pool(), &cfg.redis_url, &cfg.key_prefix).await
        }
    };
    pool_cfg.redis_url = Some(access.map_err(|e| ServeError(e.to_string()))?);
    pool_cfg.key_prefix = cfg.key_prefix.clone();

    let (pool_tx, mut pool_events) = mpsc::unbounded_channel();
    let pool = Pool::start(pool_cfg, pool_tx)
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let (writer, committed) = Writer::spawn(store.clone(), cfg.writer.clone());
    // Config changes of committed executions reach the cache before their completions.
    let committed = sdk.after_commit(committed);
    let pending_acks = acker::PendingAcks::default();
    let held = held::Held::default();
    let acker = tokio::spawn(acker::run(
        intake.clone(),
        committed,
        pending_acks.clone(),
        held.clone(),
    ));

    // One permit per execution this supervisor holds (running or queued in the pool).
    let capacity = cfg.pool.workers + cfg.prefetch;
    let permits = Arc::new(Semaphore::new(capacity));
    let (stop_reader, reader_stopped) = watch::channel(false);
    let (dispatch_tx, mut dispatches) = mpsc::channel(4);
    let taken_over = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sweeper = tokio::spawn(
        sweeper::Sweeper {
            store: store.clone(),
            intake: intake.clone(),
            every: cfg.sweep_every,
            older_than: cfg.heartbeat_ttl * 2,
            stop: reader_stopped.clone(),
        }
        .run(),
    );
    let reader = tokio::spawn(
        prepare::Reader {
            intake: intake.clone(),
            store: store.clone(),
            writer: writer.clone(),
            acks: pending_acks.clone(),
            held: held.clone(),
            sdk: sdk.clone(),
            modules: modules.clone(),
            permits: permits.clone(),
            capacity,
            read_linger: cfg.read_linger,
            out: dispatch_tx,
            consumer: cfg.consumer.clone(),
            liveness: heartbeat.watch(),
            taken_over: taken_over.clone(),
            read_block: cfg.read_block,
            default_timeout: cfg.pool.timeout,
            stop: reader_stopped,
        }
        .run(),
    );
    tracing::info!(
        consumer = %cfg.consumer,
        workers = cfg.pool.workers,
        db_connections = cfg.db_connections,
        "serving"
    );

    let mut inflight = Inflight::default();
    let mut report = ServeReport::default();
    let mut live_logs = Vec::new();
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut log_tick = tokio::time::interval(Duration::from_millis(20));
    let mut liveness_open = true;
    let mut rate = RateWindow::default();
    let started = chrono::Utc::now();
    let mut draining: Option<tokio::task::JoinHandle<()>> = None;

    loop {
        tokio::select! {
            changed = signals.changed(), if draining.as_ref().is_none_or(|_| *signals.borrow() < 2) => {
                let level = if changed.is_err() { 2 } else { *signals.borrow_and_update() };
                if level >= 1 && draining.is_none() {
                    tracing::info!(drain = ?cfg.drain_timeout, in_flight = inflight.len(), "shutting down: intake stopped, draining");
                    let _ = stop_reader.send(true);
                    let p = pool.clone();
                    let drain = if level >= 2 { Duration::ZERO } else { cfg.drain_timeout };
                    draining = Some(tokio::spawn(async move { p.shutdown(drain).await; }));
                } else if level >= 2 {
                    tracing::warn!("second signal: killing what is still running");
                    let p = pool.clone();
                    tokio::spawn(async move { p.shutdown(Duration::ZERO).await; });
                }
            }
            changed = liveness.changed(), if liveness_open => {
                if changed.is_err() {
                    liveness_open = false;
                    continue;
                }
                let now = *liveness.borrow_and_update();
                if now.lapses > report.heartbeat_lapses {
                    report.heartbeat_lapses = now.lapses;
                    // Peers may have taken over entries meanwhile: those runs are theirs.
                    let sids = inflight.stream_ids();
                    match intake.taken_over(&sids).await {
                        Ok(taken) => {
                            held.remove(taken.iter().map(String::as_str));
                            for id in inflight.mark_lost(&taken) {
                                tracing::warn!(execution = %id, "a peer took this execution over while the heartbeat was gone: killing it here, its outcome will not be recorded");
                                report.lost_to_peers += 1;
                                pool.cancel(&id);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "could not check which entries peers took over (results of those are refused by the store anyway)"),
                    }
                }
            }
            Some(batch) = dispatches.recv() => {
                for d in batch {
                    inflight.insert(d.job.execution_id.clone(), d.meta);
                    if let Err(job) = pool.submit(d.job) {
                        // The pool stopped between read and submit: record it, never drop it.
                        let out = refused(&job.execution_id);
                        finish(&mut inflight, &writer, &pending_acks, &permits, out, &mut report).await;
                    }
                }
            }
            Some(ev) = pool_events.recv() => match ev {
                PoolEvent::Started { .. } => {}
                PoolEvent::Request(req) if Sdk::handles(&req.op) => {
                    // The org is what this supervisor dispatched, never what the request says.
                    match inflight.org_id(&req.execution_id) {
                        Some(org_id) => {
                            let p = pool.clone();
                            sdk.handle(req, org_id, move |reply| p.reply(reply));
                        }
                        None => pool.reply(crate::pool::unavailable(&req, "the execution is not running here")),
                    }
                }
                PoolEvent::Request(req) if req.op == crate::modules::MISS_OP => {
                    // A worker lost a module (or the whole cache): re-cache it from the
                    // database, off the main loop, then let the import go on.
                    let (m, p) = (modules.clone(), pool.clone());
                    tokio::spawn(async move { p.reply(m.answer(&req).await) });
                }
                PoolEvent::Request(req) => {
                    pool.reply(crate::pool::unavailable(&req, "this supervisor does not serve it"));
                }
                PoolEvent::Log(mut log) => {
                    sdk.on_log(&mut log);
                    live_logs.push(log.clone());
                    inflight.log(log);
                }
                PoolEvent::Finished(mut out) => {
                    // Redacted and checked before it reaches the writer or the acker.
                    let org_id = inflight.org_id(&out.execution_id).flatten();
                    sdk.on_finished(&mut out, org_id);
                    finish(&mut inflight, &writer, &pending_acks, &permits, out, &mut report).await;
                }
            },
            Some(sig) = cancels.recv() => match sig {
                crate::intake::CancelSignal::Cancel(id) => {
                    if inflight.contains(&id) {
                        tracing::info!(execution = %id, "cancel requested");
                        pool.cancel(&id);
                    }
                }
                crate::intake::CancelSignal::Resubscribed => {
                    // Cancels sent while we were not listening are still marked.
                    let ids = inflight.ids();
                    if let Ok(flags) = intake.is_cancelled(&ids).await {
                        for (id, c) in ids.iter().zip(flags) {
                            if c { pool.cancel(id); }
                        }
                    }
                }
            },
            _ = log_tick.tick(), if !live_logs.is_empty() => {
                if let Err(e) = intake.publish_logs(&live_logs).await {
                    tracing::debug!(error = %e, "live log publish failed (logs are still stored)");
                }
                live_logs.clear();
            }
            _ = status_tick.tick() => {
                let stats = pool.stats();
                let mut st = SupervisorStatus::for_this_process(cfg.consumer.clone(), stats.workers as u32);
                st.workers_busy = stats.busy as u32;
                st.executions_completed = report.executions;
                st.executions_per_sec = rate.per_sec(report.executions);
                st.started_at = started;
                if let Err(e) = intake.publish_status(&st).await {
                    tracing::debug!(error = %e, "status publish failed");
                }
            }
        }
        if let Some(d) = &draining {
            if d.is_finished() && inflight.is_empty() && pool_events.is_empty() {
                break;
            }
        }
    }

    let _ = reader.await;
    // Batches the reader prepared after the loop stopped looking: recorded as refused,
    // like those the stopped pool turns away.
    while let Ok(batch) = dispatches.try_recv() {
        for d in batch {
            let out = refused(&d.job.execution_id);
            inflight.insert(d.job.execution_id, d.meta);
            finish(
                &mut inflight,
                &writer,
                &pending_acks,
                &permits,
                out,
                &mut report,
            )
            .await;
        }
    }
    report.places = capacity;
    report.places_free_at_stop = permits.available_permits();
    drop(writer);
    // The writer commits what it holds, then closes its channel; the acker drains it.
    let _ = acker.await;
    report.swept = sweeper.await.unwrap_or(0);
    report.taken_over = taken_over.load(std::sync::atomic::Ordering::Relaxed);
    // What is still pending here (if anything) may be taken over at once.
    heartbeat.stop().await;
    let _ = intake.retire_status().await;
    report.redis = intake.calls();
    let _ = stop_modules.send(true);
    let _ = module_follower.await;
    report.module_cache_redis = modules.cache().calls();
    store.close().await;
    tracing::info!(executions = report.executions, statuses = ?report.by_status, "stopped");
    Ok(report)
}

/// Hands a finished execution to the writer (which may wait: that is the
/// back-pressure) and frees its worker permit.
async fn finish(
    inflight: &mut Inflight,
    writer: &crate::store::WriterHandle,
    acks: &acker::PendingAcks,
    permits: &Semaphore,
    out: ExecutionOutcome,
    report: &mut ServeReport,
) {
    // Every end of a dispatch gives its place back, whether or not its execution is
    // still in flight (a second dispatch of the same id ends after the first).
    if inflight.release_place(&out.execution_id) {
        permits.add_permits(1);
    }
    if inflight.take_lost(&out.execution_id) {
        // A peer runs it now: nothing of this run is recorded or acknowledged.
        inflight.remove(&out.execution_id);
        return;
    }
    report.executions += 1;
    *report
        .by_status
        .entry(out.status.as_str().to_string())
        .or_default() += 1;
    let Some((meta, logs)) = inflight.remove(&out.execution_id) else {
        tracing::warn!(execution = %out.execution_id, "finished execution was not in flight");
        return;
    };
    acks.expect(&meta.stream_id, &out);
    let item = meta.into_completed(out, logs);
    if let Err(e) = writer.submit(item).await {
        tracing::error!(error = %e, "the result writer stopped; the execution stays pending in the stream and will be reclaimed");
    }
}

fn refused(id: &str) -> ExecutionOutcome {
    ExecutionOutcome::not_run(
        id,
        Status::Cancelled,
        "Shutdown",
        "the supervisor was shutting down and did not start this execution",
    )
}

/// Executions per second over the last few status ticks.
#[derive(Default)]
struct RateWindow {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateWindow {
    fn per_sec(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((now, total));
        while self.samples.len() > 5 {
            self.samples.pop_front();
        }
        let (t0, n0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            0.0
        } else {
            (total - n0) as f64 / dt
        }
    }
}
