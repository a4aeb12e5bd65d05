//! `warden serve`: flags → [`crate::serve::ServeConfig`], signals → the drain.

use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::args::{parse_duration, ConnArgs, PoolArgs};
use crate::cli_error::CliError;
use crate::serve::{serve, ServeConfig, Shutdown};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Set from the global connection flags (crate::args::ConnArgs).
    #[arg(skip)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub secret: crate::sdk::SecretKeyArgs,
    /// PostgreSQL connections, all opened at start-up and kept (plus none per
    /// execution, ever).
    #[arg(long, default_value_t = 2)]
    pub db_connections: u32,
    /// This supervisor's name in the stream's consumer group (default: host-pid).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Most executions written in one transaction.
    #[arg(long, default_value_t = 256)]
    pub commit_batch: usize,
    /// Under load, at most one result transaction per this interval (results arriving
    /// meanwhile share it). After a quiet spell a result is committed at once.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub commit_delay: Duration,
    /// Under load, the reader takes new entries when half its places (workers +
    /// prefetch) are free, or at the latest this long after its last read: each read
    /// is one transaction, so a longer linger means fewer transactions per execution.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub read_linger: Duration,
    /// Stream entries taken ahead of free workers (waiting in this supervisor's queue),
    /// so each batch's reads and writes cover many executions. Default: 64 per worker.
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Results held in memory while PostgreSQL is unreachable; intake pauses past it.
    #[arg(long, default_value_t = 10_000)]
    pub max_pending_results: usize,
    /// Time to live of this supervisor's heartbeat key in Redis (refreshed every third
    /// of it). When a supervisor dies, peers take over its unfinished stream entries
    /// once its heartbeat has expired, so this bounds how long they wait (plus about a
    /// second). Live supervisors' entries are never taken, however long they run.
    /// While this supervisor cannot refresh its heartbeat (Redis unreachable) it takes
    /// no new work. Keep it well above Redis's worst answer time.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,
    /// Where this supervisor installs the workspace's packages (`warden package add`),
    /// one directory per set; give each supervisor on a host its own.
    #[arg(long, default_value = crate::packages::DEFAULT_ROOT, env = "WARDEN_PACKAGES_DIR")]
    pub packages_dir: std::path::PathBuf,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address, e.g.
    /// `127.0.0.1:9187` (port 0: any free port, named in the log). Off by default: no
    /// server, and nothing is counted.
    #[arg(long, value_name = "ADDR", env = "WARDEN_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// Delete ended executions (and their logs) that completed longer ago than this,
    /// e.g. `30d`, `12h`: a pass at start-up and every 10 minutes, 1,000 rows per
    /// statement. Executions still pending or running are never deleted. Off by default.
    #[arg(
        long,
        value_name = "AGE",
        value_parser = crate::ops::retention::parse_age,
        env = "WARDEN_RETENTION"
    )]
    pub retention: Option<Duration>,
    /// The queues this supervisor serves, most urgent first (comma-separated): it takes
    /// work of the first queue while there is any, then of the next, and its workers run
    /// queued work in that order too. Within a queue, organizations take turns, so one
    /// organization's backlog does not hold up another's. A host can serve only some
    /// queues (a pool for heavy work, another for quick calls); work of a queue nobody
    /// serves waits.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = crate::intake::DEFAULT_QUEUE,
        value_parser = crate::intake::lanes::parse_queue,
        env = "WARDEN_QUEUES"
    )]
    pub queues: Vec<String>,
}

pub async fn run(args: ServeArgs) -> Result<i32, CliError> {
    args.conn.warn_if_default_database();
    let (run_dir, _guard) = args.pool.run_dir().map_err(|source| CliError::Local {
        what: "create a run directory",
        source,
    })?;
    let mut cfg = ServeConfig::new(
        args.pool.to_config(run_dir),
        args.conn.database_url.clone(),
        args.conn.redis_url.clone(),
    );
    cfg.key_prefix = args.conn.key_prefix.clone();
    cfg.secret_key = args.secret.load()?;
    cfg.db_connections = args.db_connections.max(1);
    if let Some(c) = args.consumer {
        cfg.consumer = c;
    }
    cfg.writer.max_batch = args.commit_batch.max(1);
    cfg.writer.max_delay = args.commit_delay;
    cfg.read_linger = args.read_linger;
    cfg.writer.max_pending = args.max_pending_results.max(1);
    cfg.drain_timeout = args.pool.drain_timeout;
    cfg.heartbeat_ttl = args
        .heartbeat_ttl
        .max(crate::intake::liveness::MIN_HEARTBEAT_TTL);
    cfg.packages_root = args.packages_dir;
    if let Some(p) = args.prefetch {
        cfg.prefetch = p;
    }
    cfg.http = args.http;
    cfg.queues = dedup_queues(args.queues)?;
    cfg.retention = args.retention.map(crate::ops::retention::Retention::new);
    until_stopped(cfg).await
}

/// The queues in their order, each once (a queue named twice is a mistake, said so).
fn dedup_queues(queues: Vec<String>) -> Result<Vec<String>, CliError> {
    let mut seen = std::collections::HashSet::new();
    for q in &queues {
        if !seen.insert(q.as_str()) {
            return Err(CliError::InvalidInput(format!(
                "--queues names `{q}` twice: give each queue once, most urgent first"
            )));
        }
    }
    Ok(queues)
}

/// Runs the daemon with SIGTERM/SIGINT as its shutdown requests; `Err` is a start-up
/// failure, one sentence naming the service.
async fn until_stopped(cfg: ServeConfig) -> Result<i32, CliError> {
    let (tx, rx) = watch::channel(None);
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            // The first signal drains, any later one stops now.
            tx.send_modify(|s| {
                *s = Some(match s {
                    None => Shutdown::Drain,
                    Some(_) => Shutdown::Now,
                })
            });
        }
    });
    serve(cfg, rx).await?;
    Ok(0)
}
