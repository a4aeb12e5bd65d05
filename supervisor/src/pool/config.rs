//! What a pool is started with, and the errors starting it can give.

use std::path::PathBuf;
use std::time::Duration;

use warden_protocol::{ExecutionLimits, Isolation};

/// Everything the pool needs to run. Built by the CLI from flags; tests build it directly.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Concurrent executions = template processes.
    pub workers: usize,
    /// Default wall-clock deadline per execution.
    pub timeout: Duration,
    /// Default per-execution limits (a job may bring its own).
    pub limits: ExecutionLimits,
    pub isolation: Isolation,
    /// Reuse mode: a template is replaced after this many executions (0 = never).
    pub max_executions_per_worker: u32,
    /// Reuse mode: a template whose RSS is above this after an execution is replaced.
    pub max_worker_memory: u64,
    /// Run each template in a new network namespace (needs root).
    pub network_isolation: bool,
    /// When the supervisor runs as root, template N runs as uid/gid `worker_uid_base + N`
    /// (so RLIMIT_NPROC, which root ignores, contains fork bombs per slot). `None`: keep
    /// the supervisor's uid.
    pub worker_uid_base: Option<u32>,
    /// The uids each slot runs under, leased by `Pool::start` from `worker_uid_base`
    /// (callers leave it empty).
    pub slot_ids: Vec<super::uids::SlotIds>,
    /// Size of each template's private `/tmp`, `/var/tmp` and `/dev/shm` (bytes each;
    /// root only).
    pub tmp_size: u64,
    /// Path of the `warden-worker` binary.
    pub worker_bin: PathBuf,
    /// Directory for the templates' private working directories.
    pub run_dir: PathBuf,
    /// Extra `KEY=VALUE` pairs for the workers' otherwise scrubbed environment.
    pub worker_env: Vec<(String, String)>,
    /// Largest frame either side accepts.
    pub max_frame: usize,
    /// How long a template may take to start and say hello.
    pub start_timeout: Duration,
    /// Fork mode: a busy template is sent its next job ahead only while its executions
    /// run shorter than this (see the dispatcher's "Sent ahead"); zero: never.
    pub ahead_if_under: Duration,
    /// After asking a template to kill its child, how long to wait for `Ended` before
    /// killing the template itself.
    pub kill_grace: Duration,
    /// Where the workers read the module cache (`--redis-url`). `None`: no module cache
    /// (the workers' import hook serves nothing). Never a database URL. With
    /// `network_isolation`, give a `unix://` URL: TCP is unreachable from a new network
    /// namespace.
    pub redis_url: Option<String>,
    /// Prefix of the module cache's keys (`--key-prefix`; "" in production).
    pub key_prefix: String,
    /// The package set templates start with (`serve` installs it; see
    /// [`super::Pool::set_packages`] for later sets). `None`: no packages.
    pub packages_dir: Option<PathBuf>,
    /// Packages each template imports once at start (`--preload`), so forked children
    /// inherit them already imported.
    pub preload: Vec<String>,
}

impl PoolConfig {
    /// Defaults suitable for tests and `warden exec`: every field is then overridable.
    pub fn new(worker_bin: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            workers: 2,
            timeout: Duration::from_secs(60),
            limits: ExecutionLimits::default(),
            isolation: Isolation::Fork,
            max_executions_per_worker: 1000,
            max_worker_memory: 512 * 1024 * 1024,
            network_isolation: false,
            worker_uid_base: default_uid_base(),
            slot_ids: Vec::new(),
            tmp_size: 64 * 1024 * 1024,
            worker_bin,
            run_dir,
            worker_env: Vec::new(),
            max_frame: warden_protocol::frame::DEFAULT_MAX_FRAME,
            start_timeout: Duration::from_secs(20),
            ahead_if_under: super::dispatcher::AHEAD_IF_UNDER,
            kill_grace: Duration::from_secs(2),
            redis_url: None,
            key_prefix: String::new(),
            packages_dir: None,
            preload: Vec::new(),
        }
    }
}

/// Root supervisors drop their workers to uids 61000+ by default.
pub fn default_uid_base() -> Option<u32> {
    nix::unistd::geteuid().is_root().then_some(61000)
}

/// Where `warden-worker` is when nobody says: next to the running executable.
pub fn default_worker_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WARDEN_WORKER_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("warden-worker")))
        .unwrap_or_else(|| PathBuf::from("warden-worker"))
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start the worker binary {path}: {source}. Build it with `cargo build --bins`, or point --worker-bin (or WARDEN_WORKER_BIN) at it")]
    WorkerBinary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("worker did not become ready: {0}")]
    WorkerStart(String),
    #[error("cannot prepare the run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid pool configuration: {0}")]
    Config(String),
}
