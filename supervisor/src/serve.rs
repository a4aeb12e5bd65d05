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
//! Layout: this file holds the configuration, the report, the start-up error and the
//! [`Shutdown`] request; `daemon` runs it (start-up, the main loop with one handler per
//! event, the stop sequence, and the loop's decisions as pure, unit-tested functions);
//! [`prepare`] is the reader, [`acker`] the acknowledger, [`inflight`] what the loop
//! keeps per execution, [`places`] the reader's places (with the probes' overdraft),
//! [`handback`], [`publisher`], [`sweeper`], [`held`] and [`outage`] the rest.
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
//! - **Due work.** Retries and delayed starts wait in PostgreSQL (`retrying`,
//!   `scheduled`); each supervisor's [`due`] poller puts those that are due back on the
//!   stream, as entries carrying the attempt they start.
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
mod daemon;
pub mod due;
pub mod handback;
pub mod held;
pub mod inflight;
pub mod outage;
pub mod places;
pub mod prepare;
pub mod publisher;
pub mod sweeper;

use std::time::Duration;

use tokio::sync::watch;

use crate::intake::liveness::DEFAULT_HEARTBEAT_TTL;
use crate::ops::metrics::Metrics;
use crate::ops::ready::Readiness;
use crate::pool::PoolConfig;
use crate::store::WriterConfig;

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
    /// Where this supervisor installs the workspace's packages, one directory per set
    /// (`--packages-dir`; see docs/packages.md).
    pub packages_root: std::path::PathBuf,
    /// `--http ADDR`: serve `/metrics`, `/healthz` and `/readyz` there (crate::ops::http);
    /// `None`: no server, and no metrics are counted.
    pub http: Option<std::net::SocketAddr>,
    /// `--retention AGE`: delete ended executions older than that (crate::ops::retention).
    pub retention: Option<crate::ops::retention::Retention>,
    /// `--queues`: the queues served, most urgent first (crate::intake::lanes).
    pub queues: Vec<String>,
    /// While one lane's backlog keeps the reader's places full, how often it looks for
    /// work of lanes that have little or none here (another organization's, a more
    /// urgent queue's): bounds how long such work waits to be taken.
    pub fair_probe: Duration,
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
            read_linger: Duration::from_millis(100),
            secret_key: None,
            packages_root: crate::packages::DEFAULT_ROOT.into(),
            http: None,
            retention: None,
            queues: vec![crate::intake::DEFAULT_QUEUE.to_owned()],
            fair_probe: Duration::from_millis(20),
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
    /// Due attempts (retries, delayed starts) this supervisor's poller enqueued
    /// (crate::serve::due); a row enqueued twice counts twice, and runs once.
    pub due_enqueued: u64,
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
    /// Binding the `--http` address.
    #[error("cannot listen on {addr} for --http: {source}; choose a free address and port")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    // Bound before start-up, so `/healthz` answers and `/readyz` says "starting up"
    // meanwhile; counted only when someone can read the counts.
    let ops = match cfg.http {
        Some(addr) => {
            let metrics = Metrics::new();
            let ready = Readiness::default();
            let http = crate::ops::http::start(addr, metrics.clone(), ready.clone())
                .await
                .map_err(|source| ServeError::Http { addr, source })?;
            Some((http, metrics, ready))
        }
        None => None,
    };
    let (metrics, ready) = match &ops {
        Some((_, m, r)) => (Some(m.clone()), r.clone()),
        None => (None, Readiness::default()),
    };
    let daemon = daemon::Daemon::start(cfg, shutdown, metrics, ready).await?;
    let report = daemon.run().await;
    drop(ops);
    Ok(report)
}
