//! `warden serve`: the daemon. Intake from the Redis stream, the worker pool, and the
//! group-commit writer, joined by one loop.
//!
//! ```text
//!  reader task ──Vec<Dispatch>──▶ main loop ──Job──▶ pool ──PoolEvent──▶ main loop
//!   (XREADGROUP, one query for        │                                     │ Finished
//!    the batch's workflows, one       │ live logs, status: publisher        ▼
//!    MGET of cancel markers, one      ▼ (tasks of their own)     writer (1 tx per batch)
//!    INSERT marking them running)   Redis                                   │ Committed
//!                                                         acker task ◀──────┘
//!                                                         (queue; XACK+XDEL+PUBLISH)
//!   Interrupted / Returned (shutdown) ──▶ hand-back task (rows back to `pending`)
//! ```
//!
//! - **One way.** Each message carries what the next stage needs, so no stage looks
//!   anything up in a table another one fills: a `Dispatch` carries the job and its
//!   [`inflight::Meta`] (stream entry, attribution, attempt); the main loop keeps that
//!   with the logs until the pool's `Finished`, then hands the writer one `Completed`
//!   with the outcome, its stream entry and the completion to publish; the writer
//!   answers each with a `Committed` that brings the stream entry and completion back
//!   with what the commit found, and the acker acknowledges and publishes from that
//!   alone. Entries answered without a commit reach the acker as ready `Done`s.
//! - **Capacity.** The reader takes as many stream entries as there are free places: one
//!   per worker plus a bounded prefetch (a semaphore; the main loop returns a permit when
//!   an execution's end has been handed on). The stream, not memory, holds the backlog,
//!   and other supervisors can take what this one cannot. Under load the reader waits
//!   until half its places are free before reading again, so each batch (and its one
//!   transaction) covers many executions whatever the rate; a lone request is read at
//!   once.
//! - **The main loop never waits on a server.** Results enter the writer through a
//!   reservation taken inside its `select!`; live logs and status are sent by
//!   [`publisher::Publisher`]'s tasks with timeouts; acknowledgements queue in the
//!   acker; the heartbeat has its own task and connection, and what peers took during
//!   a lapse is asked off the loop. So signals, pool events and cancels are answered
//!   whatever is down.
//! - **PostgreSQL away.** The writer keeps results in memory up to its bound; past it
//!   the main loop stops giving places back, and the reader, which retries the batch it
//!   holds, reads nothing new. Nothing is acknowledged before it is committed.
//! - **Redis away.** Results still commit; their acknowledgements and completions wait
//!   in the acker's bounded queue and go out when Redis returns; live log lines are
//!   dropped meanwhile (they are stored with the result). One warning when the outage
//!   begins, one line when it ends ([`outage::RedisOutage`]).
//! - **Module cache.** At start-up the workspace's modules are synced from PostgreSQL to
//!   Redis, and kept in step (LISTEN/NOTIFY) by crate::modules::ModuleSync, whose
//!   LISTEN connection is the one database connection beyond `db_connections`. Each
//!   batch carries the cache's generation (one GET); workers' `module_miss` requests
//!   are answered from the database here.
//! - **Liveness.** A heartbeat key (its own task and connection) tells peers this
//!   supervisor lives; the reader takes over the entries of consumers whose heartbeat
//!   is gone, and takes no work while its own is lapsing. After a lapse, executions
//!   whose entries a peer took meanwhile are killed and their outcomes dropped
//!   (crate::intake::liveness); the store refuses a result whose attempt was
//!   superseded, and the acker neither acknowledges nor publishes it. The sweeper
//!   ends rows a dead supervisor left running with nothing left to run them
//!   ([`sweeper`]).
//! - **Shutdown.** The first signal stops intake and hands back what has not started:
//!   executions queued in the pool (or prepared by the reader) go back to `pending` in
//!   PostgreSQL at the same attempt ([`handback`]), and their stream entries stay
//!   unacknowledged in this consumer's pending list for another supervisor to take
//!   over. What runs may finish for `--drain-timeout`; what still runs then is killed
//!   and recorded as an interrupted attempt (`pending`, error type `Interrupted`, the
//!   entry unacknowledged: it runs again elsewhere at attempt + 1). Executions a user
//!   cancelled stay `cancelled`. The writer then commits what it holds and the acker
//!   acknowledges it; only then is the heartbeat key deleted (and the status removed),
//!   so peers take over at once what is left pending and find its rows `pending`,
//!   never `running` from this clean stop. Every wait on this path is bounded: the
//!   process is gone by drain timeout + the pool's kill grace + 1 s, and within a
//!   second of a second signal (which interrupts what runs at once), whatever server
//!   is down. What the deadline leaves (results not committed or not acknowledged, rows
//!   not given back) stays unacknowledged in the stream, and rows stay as they are; the
//!   heartbeat is deleted then too (after the writer and acker are stopped, so nothing
//!   is committed after it), and a peer takes it over at once (at attempt + 1 for rows
//!   still `running`).

pub mod acker;
pub mod handback;
pub mod held;
pub mod inflight;
pub mod outage;
pub mod prepare;
pub mod publisher;
pub mod sweeper;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};

use crate::intake::liveness::DEFAULT_HEARTBEAT_TTL;
use crate::intake::{Heartbeat, Intake, Keys, SupervisorStatus};
use crate::modules::{ModuleCache, ModuleSync};
use crate::outcome::{ExecutionOutcome, PoolEvent};
use crate::pool::{Pool, PoolConfig};
use crate::sdk::Sdk;
use crate::store::{Completed, Store, Writer, WriterConfig};
use handback::HandBacks;
use inflight::Inflight;
use outage::RedisOutage;
use publisher::Publisher;

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
    /// Executions given back at shutdown without starting (queued, or prepared as
    /// intake stopped): not counted in `executions`.
    pub returned: u64,
    /// Executions the drain's deadline (or a second signal) cut off: not counted in
    /// `executions`; they run again elsewhere at attempt + 1.
    pub interrupted: u64,
    /// Rows of those two kinds moved back to `pending` in PostgreSQL (fewer when the
    /// database was away at shutdown, or another supervisor had taken one over).
    pub handed_back: u64,
}

/// A start-up failure: which step failed, with its cause. Each shows as its cause's
/// own message (one sentence for the operator, naming what to fix); the variant says
/// which service or step it came from.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Connecting to PostgreSQL (or opening its connections) failed.
    #[error(transparent)]
    DatabaseConnect(crate::store::StoreError),
    /// The schema is not this build's (migrations missing or different), or could not
    /// be checked: run `warden migrate`.
    #[error(transparent)]
    Schema(crate::store::StoreError),
    /// Connecting to Redis, creating the stream's group, or subscribing to cancels.
    #[error(transparent)]
    Redis(#[from] crate::intake::IntakeError),
    /// Setting this supervisor's heartbeat key.
    #[error(transparent)]
    Heartbeat(crate::intake::IntakeError),
    /// The SDK's config cache or secret key check.
    #[error(transparent)]
    Sdk(#[from] crate::sdk::SdkError),
    /// Connecting the module cache, or its first sync and LISTEN.
    #[error(transparent)]
    Modules(#[from] crate::modules::ModuleError),
    /// The workers' read-only Redis access (their user, or the given URL's check).
    #[error(transparent)]
    WorkerAccess(#[from] crate::modules::access::AccessError),
    /// Starting the worker pool (its templates).
    #[error(transparent)]
    PoolStart(#[from] crate::pool::config::PoolError),
}

/// A request to stop, as the daemon's shutdown channel carries it (`None` until the
/// first). Ordered: a later `Now` escalates an earlier `Drain`, never the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Stop intake, hand back what has not started, let what runs finish within the
    /// drain timeout (the first SIGTERM/SIGINT).
    Drain,
    /// Interrupt what runs and be gone within a second (a second signal).
    Now,
}

/// Runs the daemon until `shutdown` says [`Shutdown::Drain`] or [`Shutdown::Now`] (a
/// dropped sender counts as `Now`) — the binary feeds it SIGTERM/SIGINT; tests feed it
/// directly.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: watch::Receiver<Option<Shutdown>>,
) -> Result<ServeReport, ServeError> {
    let store = Store::connect(&cfg.database_url, cfg.db_connections)
        .await
        .map_err(ServeError::DatabaseConnect)?;
    store.check_schema().await.map_err(ServeError::Schema)?;
    let keys = Keys::new(cfg.key_prefix.clone());
    let intake = Intake::connect(&cfg.redis_url, keys, cfg.consumer.clone()).await?;
    intake.ensure_group().await?;
    // Peers see this supervisor alive from now on; set before the first read.
    let heartbeat = Heartbeat::start(&intake, cfg.heartbeat_ttl)
        .await
        .map_err(ServeError::Heartbeat)?;
    let mut liveness = heartbeat.watch();
    // Advice only: a Redis that persists nothing loses unread requests when it restarts.
    crate::intake::persistence::warn_if_unpersisted(intake.client(), &cfg.redis_url).await;
    let mut cancels = intake.cancel_listener().await?;
    let sdk = Sdk::start(
        store.clone(),
        intake.client(),
        intake.keys().clone(),
        cfg.secret_key.clone(),
    )
    .await?;

    // The module cache: filled from the database now, then kept in step (LISTEN).
    let module_cache = ModuleCache::connect(&cfg.redis_url, intake.keys().clone()).await?;
    let modules = ModuleSync::new(store.clone(), module_cache);
    let (stop_modules, modules_stopped) = watch::channel(false);
    let module_follower = modules.start(&cfg.database_url, modules_stopped).await?;
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
    pool_cfg.redis_url = Some(access?);
    pool_cfg.key_prefix = cfg.key_prefix.clone();

    let (pool_tx, mut pool_events) = mpsc::unbounded_channel();
    let pool = Pool::start(pool_cfg, pool_tx).await?;
    let (writer, committed) = Writer::spawn(store.clone(), cfg.writer.clone());
    // Config changes of committed executions reach the cache before their completions.
    let committed = sdk.after_commit(committed);
    let held = held::Held::default();
    let outage = RedisOutage::default();
    let acks_waiting = acker::Waiting::default();
    let (direct_acks, direct_acks_rx) = mpsc::unbounded_channel();
    let mut acker = tokio::spawn(acker::run(
        intake.clone(),
        committed,
        direct_acks_rx,
        outage.clone(),
        acks_waiting.clone(),
        held.clone(),
    ));
    let mut publisher = Publisher::new(intake.clone(), outage.clone());
    let mut hand_backs = HandBacks::spawn(store.clone(), cfg.consumer.clone());

    // One permit per execution this supervisor holds (running or queued in the pool).
    let capacity = cfg.pool.workers + cfg.prefetch;
    let permits = Arc::new(Semaphore::new(capacity));
    let (stop_reader, reader_stopped) = watch::channel(false);
    let (dispatch_tx, mut dispatches) = mpsc::channel(4);
    let taken_over = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sweeper = tokio::spawn(
        sweeper::Sweeper {
            store: store.clone(),
            intake: intake.clone(),
            every: cfg.sweep_every,
            older_than: cfg.heartbeat_ttl * 2,
            stop: reader_stopped.clone(),
        }
        .run(),
    );
    let mut reader = tokio::spawn(
        prepare::Reader {
            intake: intake.clone(),
            store: store.clone(),
            writer: writer.clone(),
            held: held.clone(),
            direct_acks,
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
    // Finished executions waiting for a place in the writer, with whether each holds an
    // intake place (given back once the writer takes it: that is the back-pressure).
    let mut to_writer: VecDeque<(Completed, bool)> = VecDeque::new();
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut log_tick = tokio::time::interval(Duration::from_millis(20));
    let mut liveness_open = true;
    // Entries peers took over during a heartbeat lapse, found off the loop.
    let (lapse_tx, mut lapse_rx) = mpsc::unbounded_channel::<Vec<String>>();
    let mut rate = RateWindow::default();
    let started = chrono::Utc::now();
    let mut stop = Stop::new(
        shutdown,
        cfg.drain_timeout + cfg.pool.kill_grace + FLUSH_GRACE,
    );
    let mut draining: Option<tokio::task::JoinHandle<()>> = None;

    loop {
        let deadline = stop.deadline;
        tokio::select! {
            request = stop.next_signal() => {
                if draining.is_none() {
                    tracing::info!(drain = ?cfg.drain_timeout, in_flight = inflight.len(), "shutting down: intake stopped, queued executions handed back, draining what runs");
                    let _ = stop_reader.send(true);
                    let p = pool.clone();
                    let drain = match request {
                        Shutdown::Now => Duration::ZERO,
                        Shutdown::Drain => cfg.drain_timeout,
                    };
                    draining = Some(tokio::spawn(async move { p.shutdown(drain).await; }));
                } else if request == Shutdown::Now {
                    tracing::warn!("second signal: interrupting what still runs and stopping within a second; what is unfinished is left to another supervisor");
                    let p = pool.clone();
                    tokio::spawn(async move { p.shutdown(Duration::ZERO).await; });
                }
            }
            _ = sleep_until_opt(deadline), if draining.is_some() => {
                tracing::warn!(in_flight = inflight.len(), "shutdown deadline passed; leaving what is unfinished to another supervisor");
                break;
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
                    // Asked off the loop (Redis may be slow to answer as it returns).
                    let (sids, i, tx) = (inflight.stream_ids(), intake.clone(), lapse_tx.clone());
                    tokio::spawn(async move {
                        let taken = match tokio::time::timeout(SIDE_TIMEOUT, i.taken_over(&sids)).await {
                            Ok(Ok(taken)) => taken,
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "could not check which entries peers took over (results of those are refused by the store anyway)");
                                return;
                            }
                            Err(_) => {
                                tracing::warn!("could not check in time which entries peers took over (results of those are refused by the store anyway)");
                                return;
                            }
                        };
                        let _ = tx.send(taken);
                    });
                }
            }
            Some(taken) = lapse_rx.recv() => {
                held.remove(taken.iter().map(String::as_str));
                for id in inflight.mark_lost(&taken) {
                    tracing::warn!(execution = %id, "a peer took this execution over while the heartbeat was gone: killing it here, its outcome will not be recorded");
                    report.lost_to_peers += 1;
                    pool.cancel(&id);
                }
            }
            Some(batch) = dispatches.recv() => {
                for d in batch {
                    let (id, sid) = (d.job.execution_id.clone(), d.meta.stream_id.clone());
                    if draining.is_some() {
                        // Prepared as intake stopped: never started, so it goes back.
                        hand_backs.give_back(id, sid, false);
                        permits.add_permits(1);
                        report.returned += 1;
                        continue;
                    }
                    inflight.insert(id.clone(), d.meta);
                    if pool.submit(d.job).is_err() {
                        // The pool stopped between read and submit: give it back, never drop it.
                        returned(&mut inflight, &mut hand_backs, &permits, &id, &mut report);
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
                    publisher.log(log.clone());
                    inflight.log(log);
                }
                PoolEvent::Finished(mut out) => {
                    // Redacted and checked before it reaches the writer or the acker.
                    let org_id = inflight.org_id(&out.execution_id).flatten();
                    sdk.on_finished(&mut out, org_id);
                    finish(&mut inflight, &permits, &mut to_writer, out, &mut report);
                }
                PoolEvent::Interrupted(mut out) => {
                    let org_id = inflight.org_id(&out.execution_id).flatten();
                    sdk.on_finished(&mut out, org_id);
                    interrupted(&mut inflight, &mut hand_backs, &permits, &out.execution_id, &mut report);
                }
                PoolEvent::Returned { execution_id } => {
                    returned(&mut inflight, &mut hand_backs, &permits, &execution_id, &mut report);
                }
            },
            reservation = writer.reserve(), if !to_writer.is_empty() => {
                let (item, place) = to_writer.pop_front().expect("not empty");
                if let Ok(r) = reservation {
                    if r.submit(item).is_err() {
                        tracing::error!("the result writer stopped; the execution stays pending in the stream and will be taken over");
                    }
                }
                if place {
                    permits.add_permits(1);
                }
            }
            Some(sig) = cancels.recv() => match sig {
                crate::intake::CancelSignal::Cancel(id) => {
                    if inflight.contains(&id) {
                        tracing::info!(execution = %id, "cancel requested");
                        pool.cancel(&id);
                    }
                }
                crate::intake::CancelSignal::Resubscribed => {
                    // Cancels sent while we were not listening are still marked; checked
                    // off the loop (Redis may be slow to answer right after it returns).
                    let (ids, i, p) = (inflight.ids(), intake.clone(), pool.clone());
                    tokio::spawn(async move {
                        if let Ok(Ok(flags)) = tokio::time::timeout(SIDE_TIMEOUT, i.is_cancelled(&ids)).await {
                            for (id, c) in ids.iter().zip(flags) {
                                if c { p.cancel(id); }
                            }
                        }
                    });
                }
            },
            _ = log_tick.tick(), if publisher.has_logs() => publisher.flush_logs(),
            _ = status_tick.tick() => {
                let stats = pool.stats();
                let mut st = SupervisorStatus::for_this_process(cfg.consumer.clone(), stats.workers as u32);
                st.workers_busy = stats.busy as u32;
                st.executions_completed = report.executions;
                st.executions_per_sec = rate.per_sec(report.executions);
                st.started_at = started;
                publisher.status(st);
            }
        }
        if let Some(d) = &draining {
            if d.is_finished()
                && inflight.is_empty()
                && pool_events.is_empty()
                && to_writer.is_empty()
            {
                break;
            }
        }
    }

    // Every wait from here on is bounded by the shutdown deadline (a second signal
    // brings it to within a second).
    let _ = stop_reader.send(true);
    // Batches the reader prepares until it stops are given back, unstarted.
    let reader_done = stop
        .within("waiting for the intake to stop", async {
            loop {
                tokio::select! {
                    Some(batch) = dispatches.recv() => {
                        for d in batch {
                            hand_backs.give_back(d.job.execution_id, d.meta.stream_id, false);
                            permits.add_permits(1);
                            report.returned += 1;
                        }
                    }
                    _ = &mut reader => break,
                }
            }
        })
        .await;
    if reader_done.is_none() {
        reader.abort();
    }
    // What it sent just before it ended.
    while let Ok(batch) = dispatches.try_recv() {
        for d in batch {
            hand_backs.give_back(d.job.execution_id, d.meta.stream_id, false);
            permits.add_permits(1);
            report.returned += 1;
        }
    }
    // Results still waiting for the writer (the deadline came first): their places are
    // given back; their entries stay pending for another supervisor.
    if !to_writer.is_empty() {
        tracing::warn!(
            executions = to_writer.len(),
            "results not handed to the writer before the deadline; their stream entries stay pending"
        );
        for (_, place) in to_writer.drain(..) {
            if place {
                permits.add_permits(1);
            }
        }
    }
    report.places = capacity;
    report.places_free_at_stop = permits.available_permits();
    // Given back before this supervisor's heartbeat goes, so that whoever takes the
    // entries over finds the rows `pending`.
    let left = stop.left();
    report.handed_back = hand_backs.finish(left).await.unwrap_or(0);
    // The writer commits what it holds, then closes its channel; the acker drains it.
    let writer = writer.close();
    let flushed = stop
        .within("committing and acknowledging the last results", async {
            let _ = (&mut acker).await;
        })
        .await;
    if flushed.is_none() {
        writer.abandon();
        acker.abort();
        tracing::warn!(
            acknowledgements_waiting = acks_waiting.get(),
            results_uncommitted = writer.pending(),
            "stopping with results not committed or not acknowledged (is PostgreSQL or Redis \
             away?): their stream entries stay pending and another supervisor takes them over \
             (a committed one is found done and only acknowledged)"
        );
    }
    // The sweeper stopped with intake; a sweep in flight is given what time is left.
    match tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), &mut sweeper).await {
        Ok(swept) => report.swept = swept.unwrap_or(0),
        Err(_) => sweeper.abort(),
    }
    report.taken_over = taken_over.load(std::sync::atomic::Ordering::Relaxed);
    // Last: rows are handed back and what was committed is acknowledged (or, past the
    // deadline, the writer and the acker are stopped, so nothing of this supervisor's
    // is committed after this). Peers may now take over at once what is left pending.
    // Even past the deadline the key is deleted if Redis answers quickly; otherwise it
    // expires on its own within the TTL.
    let heartbeat_left = stop.left().clamp(HEARTBEAT_DELETE_MIN, SIDE_TIMEOUT);
    if tokio::time::timeout(heartbeat_left, heartbeat.stop())
        .await
        .is_err()
    {
        tracing::warn!("could not delete the heartbeat in time; it expires on its own");
    }
    publisher.retire(stop.left().min(SIDE_TIMEOUT)).await;
    report.redis = intake.calls();
    let _ = stop_modules.send(true);
    let mut module_follower = module_follower;
    if tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), &mut module_follower)
        .await
        .is_err()
    {
        module_follower.abort();
    }
    report.module_cache_redis = modules.cache().calls();
    let _ = tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), store.close()).await;
    tracing::info!(
        executions = report.executions,
        statuses = ?report.by_status,
        returned = report.returned,
        interrupted = report.interrupted,
        handed_back = report.handed_back,
        "stopped"
    );
    Ok(report)
}

/// After the drain's deadline, time to kill what still runs, give back what will not
/// finish and write the last results, before the process must be gone.
const FLUSH_GRACE: Duration = Duration::from_secs(1);
/// How soon after a second signal the process is gone.
const SECOND_SIGNAL_GRACE: Duration = Duration::from_secs(1);
/// The most one side call to Redis or PostgreSQL may take off the main path.
const SIDE_TIMEOUT: Duration = Duration::from_secs(2);
/// Even past the deadline, this long to delete the heartbeat (so peers take over at
/// once instead of after the TTL).
const HEARTBEAT_DELETE_MIN: Duration = Duration::from_millis(300);

/// The shutdown's clock: the requests, and the instant by which the process must be
/// gone (set by the first request, brought closer by `Now`).
struct Stop {
    requests: watch::Receiver<Option<Shutdown>>,
    closed: bool,
    /// The strongest request seen so far.
    seen: Option<Shutdown>,
    /// Drain timeout plus [`FLUSH_GRACE`] and the pool's kill grace.
    first_grace: Duration,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    fn new(requests: watch::Receiver<Option<Shutdown>>, first_grace: Duration) -> Stop {
        Stop {
            requests,
            closed: false,
            seen: None,
            first_grace,
            deadline: None,
        }
    }

    /// The next request stronger than any before; a dropped sender counts as `Now`.
    /// Sets or tightens the deadline.
    async fn next_signal(&mut self) -> Shutdown {
        loop {
            if self.closed {
                std::future::pending::<()>().await;
            }
            let request = match self.requests.changed().await {
                Ok(()) => *self.requests.borrow_and_update(),
                Err(_) => {
                    self.closed = true;
                    Some(Shutdown::Now)
                }
            };
            let Some(request) = request.filter(|r| Some(*r) > self.seen) else {
                continue;
            };
            self.seen = Some(request);
            let now = tokio::time::Instant::now();
            let grace = match request {
                Shutdown::Now => SECOND_SIGNAL_GRACE,
                Shutdown::Drain => self.first_grace,
            };
            self.deadline = Some(self.deadline.map_or(now + grace, |d| d.min(now + grace)));
            return request;
        }
    }

    /// Time left before the deadline.
    fn left(&self) -> Duration {
        self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    /// `work`, unless the deadline comes first (`None`); a second signal meanwhile
    /// brings the deadline closer.
    async fn within<F: std::future::Future>(&mut self, what: &str, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let deadline = self.deadline;
            tokio::select! {
                out = &mut work => return Some(out),
                _ = sleep_until_opt(deadline) => {
                    tracing::warn!(what, "shutdown deadline passed");
                    return None;
                }
                _ = self.next_signal() => {}
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Hands a finished execution on to the writer, through `to_writer` (the main loop
/// moves it into the writer as soon as the writer has room; its place is given back
/// then, which is how intake pauses while the database is away).
fn finish(
    inflight: &mut Inflight,
    permits: &Semaphore,
    to_writer: &mut VecDeque<(Completed, bool)>,
    out: ExecutionOutcome,
    report: &mut ServeReport,
) {
    // Every end of a dispatch gives its place back, whether or not its execution is
    // still in flight (a second dispatch of the same id ends after the first).
    let place = inflight.release_place(&out.execution_id);
    if inflight.take_lost(&out.execution_id) {
        // A peer runs it now: nothing of this run is recorded or acknowledged.
        inflight.remove(&out.execution_id);
        if place {
            permits.add_permits(1);
        }
        return;
    }
    report.executions += 1;
    *report
        .by_status
        .entry(out.status.as_str().to_string())
        .or_default() += 1;
    let Some((meta, logs)) = inflight.remove(&out.execution_id) else {
        tracing::warn!(execution = %out.execution_id, "finished execution was not in flight");
        if place {
            permits.add_permits(1);
        }
        return;
    };
    // The item carries its stream entry and completion on to the acker.
    to_writer.push_back((meta.into_completed(out, logs), place));
}

/// An execution the pool never started (or that never reached it): its row goes back
/// to `pending` at the same attempt, its entry stays pending in the stream.
fn returned(
    inflight: &mut Inflight,
    hand_backs: &mut HandBacks,
    permits: &Semaphore,
    id: &str,
    report: &mut ServeReport,
) {
    report.returned += 1;
    give_back(inflight, hand_backs, permits, id, false);
}

/// An execution the drain's deadline (or a second signal) cut off: an interrupted
/// attempt, run again elsewhere at attempt + 1; its logs are not kept.
fn interrupted(
    inflight: &mut Inflight,
    hand_backs: &mut HandBacks,
    permits: &Semaphore,
    id: &str,
    report: &mut ServeReport,
) {
    report.interrupted += 1;
    give_back(inflight, hand_backs, permits, id, true);
}

fn give_back(
    inflight: &mut Inflight,
    hand_backs: &mut HandBacks,
    permits: &Semaphore,
    id: &str,
    started: bool,
) {
    if inflight.release_place(id) {
        permits.add_permits(1);
    }
    let lost = inflight.take_lost(id);
    if let Some((meta, _logs)) = inflight.remove(id) {
        // A row a peer took over is the peer's: nothing to give back.
        if !lost {
            hand_backs.give_back(id.to_string(), meta.stream_id, started);
        }
    }
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
