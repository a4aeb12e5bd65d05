//! The flags and value parsers that more than one command shares: the pool's flags
//! ([`PoolArgs`], for `exec`, `serve` and `bench`), where the services are
//! ([`ConnArgs`], which warns when the database is the built-in default), and the
//! parsers for durations and `KEY=VALUE` pairs (sizes: [`crate::size`]).
//!
//! A leaf: it imports nothing from `cli`, `cmd`, `bench` or `exec_cmd`, which all
//! import it, so the command modules never depend on each other through their flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use warden_protocol::{ExecutionLimits, Isolation};

use crate::intake::{IntakeClient, IntakeError, Keys};
use crate::pool::config::{default_uid_base, default_worker_bin};
use crate::pool::PoolConfig;
use crate::store::{Store, StoreError};

/// Flags shared by everything that runs a pool (`exec`, `serve`, `bench`).
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Maximum concurrent executions (one worker template each).
    #[arg(long, default_value_t = 2, env = "WARDEN_WORKERS")]
    pub workers: usize,
    /// Default deadline per execution: `30`, `1.5`, `500ms`, `2m`. On expiry the
    /// execution's whole process group is killed and it ends `timeout`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Address-space limit per execution (`512M`, `1G`, bytes; `0` = none). Python
    /// raises MemoryError past it. In every size flag K, M, G and T (also written KB,
    /// KiB, ...) are powers of 1024.
    #[arg(long, default_value = "1G", value_parser = crate::size::parse)]
    pub memory_limit: u64,
    /// CPU seconds per execution (`0` = none): a backstop behind --timeout.
    #[arg(long, default_value_t = 0)]
    pub cpu_limit: u64,
    /// Processes per execution (RLIMIT_NPROC; contains fork bombs). Enforced when
    /// workers run under their own uid, which they do when the supervisor is root.
    #[arg(long, default_value_t = 64)]
    pub max_processes: u64,
    /// Open files per execution.
    #[arg(long, default_value_t = 256)]
    pub max_open_files: u64,
    /// Largest JSON result an execution may return (`4M`).
    #[arg(long, default_value = "4M", value_parser = crate::size::parse)]
    pub max_result_size: u64,
    /// Largest file an execution may write (RLIMIT_FSIZE; `256M`; 0 = no limit): a
    /// write past it fails with "File too large".
    #[arg(long, default_value = "256M", value_parser = crate::size::parse)]
    pub max_file_size: u64,
    /// Size of each worker's private /tmp, /var/tmp and /dev/shm when the supervisor is
    /// root (`64M` each); emptied after every execution.
    #[arg(long, default_value = "64M", value_parser = crate::size::parse)]
    pub tmp_size: u64,
    /// Log lines kept per execution; the rest are counted and dropped.
    #[arg(long, default_value_t = 10_000)]
    pub max_log_lines: u32,
    /// `fork`: a fresh forked child per execution (isolated; default). `reuse`: the
    /// worker runs executions itself (trusted code only; fastest).
    #[arg(long, value_enum, default_value = "fork")]
    pub isolation: IsolationArg,
    /// Reuse mode: replace a worker after this many executions (0 = never).
    #[arg(long, default_value_t = 1000)]
    pub max_executions_per_worker: u32,
    /// Reuse mode: replace a worker whose memory grows past this (`512M`).
    #[arg(long, default_value = "512M", value_parser = crate::size::parse)]
    pub max_worker_memory: u64,
    /// On SIGTERM/SIGINT, how long running executions may take to finish before they
    /// are killed. `serve` hands queued executions back at once (another supervisor
    /// runs them, same attempt) and records killed ones as interrupted attempts (run
    /// again elsewhere, attempt + 1), never as cancelled; it exits by this timeout plus
    /// about 3 s, even with PostgreSQL or Redis down. A second signal kills at once and
    /// exits within a second.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// What network workflows get: `egress` (the default: other hosts, but nothing on
    /// this one when the supervisor is root) or `none` (a network namespace of their own
    /// with no interface; needs root; the module cache must then be a Unix-socket Redis).
    #[arg(long, value_enum, default_value = "egress")]
    pub network: NetworkArg,
    /// The same as `--network none`.
    #[arg(long)]
    pub network_isolation: bool,
    /// When root, worker slots lease uids from BASE to BASE+999 (default 61000; their
    /// children run as the slot's uid + 1000), unique on the host; `--worker-uid-base 0` keeps
    /// root (fork bombs are then not contained by RLIMIT_NPROC).
    #[arg(long)]
    pub worker_uid_base: Option<u32>,
    /// Extra environment for workers, `KEY=VALUE` (repeatable). Workers otherwise see
    /// only PATH, HOME, TMPDIR, LANG, LC_ALL and TZ.
    #[arg(long = "worker-env", value_parser = parse_key_value)]
    pub worker_env: Vec<(String, String)>,
    /// Packages each template imports once when it starts (`requests,pydantic`), so
    /// every forked child finds them already imported; one that cannot be imported is
    /// logged and skipped (docs/packages.md).
    #[arg(long, value_delimiter = ',')]
    pub preload: Vec<String>,
    /// Path of the warden-worker binary (default: next to this executable).
    #[arg(long, env = "WARDEN_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Directory for the workers' private working directories (default: a fresh
    /// temporary directory, removed at exit).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    Egress,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    Fork,
    Reuse,
}

impl From<IsolationArg> for Isolation {
    fn from(a: IsolationArg) -> Self {
        match a {
            IsolationArg::Fork => Isolation::Fork,
            IsolationArg::Reuse => Isolation::Reuse,
        }
    }
}

impl PoolArgs {
    /// The pool configuration these flags describe, with workers under `run_dir`.
    pub fn to_config(&self, run_dir: PathBuf) -> PoolConfig {
        let mut cfg = PoolConfig::new(
            self.worker_bin.clone().unwrap_or_else(default_worker_bin),
            run_dir,
        );
        cfg.workers = self.workers;
        cfg.timeout = self.timeout;
        cfg.isolation = self.isolation.into();
        cfg.max_executions_per_worker = self.max_executions_per_worker;
        cfg.max_worker_memory = self.max_worker_memory;
        cfg.network_isolation = self.network_isolation || self.network == NetworkArg::None;
        cfg.worker_uid_base = match self.worker_uid_base {
            Some(0) => None,
            Some(b) => Some(b),
            None => default_uid_base(),
        };
        cfg.worker_env = self.worker_env.clone();
        cfg.preload = self
            .preload
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        cfg.tmp_size = self.tmp_size;
        // Without a uid of its own, RLIMIT_NPROC would count every process of the
        // user running the supervisor, so it is left off.
        let nproc = if cfg.worker_uid_base.is_some() {
            self.max_processes
        } else {
            0
        };
        cfg.limits = ExecutionLimits {
            memory_bytes: self.memory_limit,
            cpu_seconds: self.cpu_limit,
            open_files: self.max_open_files,
            processes: nproc,
            max_log_lines: self.max_log_lines,
            max_result_bytes: self.max_result_size,
            file_bytes: self.max_file_size,
            ..ExecutionLimits::default()
        };
        cfg
    }

    /// The run directory to use: the one given, or a fresh temporary one (kept alive
    /// by the returned guard).
    pub fn run_dir(&self) -> std::io::Result<(PathBuf, Option<tempfile::TempDir>)> {
        match &self.run_dir {
            Some(d) => Ok((d.clone(), None)),
            None => {
                let t = tempfile::Builder::new().prefix("warden-").tempdir()?;
                Ok((t.path().to_path_buf(), Some(t)))
            }
        }
    }
}

/// The PostgreSQL URL used when neither DATABASE_URL nor --database-url says otherwise.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warden";

/// The Redis URL used when neither REDIS_URL nor --redis-url says otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where the services are. Defaults suit a local set-up (`scripts/services`).
///
/// Flags of the top-level command ([`crate::cli::Cli`]), every one `global`: they stand
/// before the subcommand or anywhere after it (`warden --database-url URL executions
/// list`, `warden executions list --database-url URL`). The commands whose flags are a
/// struct of their own (`serve`, `submit`, `bench`) get them set from there
/// (`#[arg(skip)]` fields).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Services")]
pub struct ConnArgs {
    /// PostgreSQL URL. Only the supervisor and admin commands use it; workers never see it.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Redis URL.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix for every Redis key, to share one Redis between installations (and tests).
    #[arg(long, global = true, env = "WARDEN_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,
}

impl Default for ConnArgs {
    /// The built-in defaults (what the flags default to without their variables).
    fn default() -> ConnArgs {
        ConnArgs {
            database_url: DEFAULT_DATABASE_URL.to_string(),
            redis_url: DEFAULT_REDIS_URL.to_string(),
            key_prefix: String::new(),
        }
    }
}

impl ConnArgs {
    /// One connection, for a short admin command.
    pub async fn store(&self) -> Result<Store, StoreError> {
        self.warn_if_default_database();
        Store::connect(&self.database_url, 1).await
    }

    /// Warns, once per process, when the database is the built-in default because
    /// DATABASE_URL is not set: a forgotten variable otherwise shows up only as a
    /// connection error or, worse, as another database's data. (The URL equal to the
    /// default because --database-url spelled it out is warned about too: clap does not
    /// tell the two apart here, and the message stays true.)
    pub fn warn_if_default_database(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        if self.database_url == DEFAULT_DATABASE_URL && std::env::var_os("DATABASE_URL").is_none() {
            ONCE.call_once(|| {
                tracing::warn!(
                    "DATABASE_URL is not set: using the built-in default {DEFAULT_DATABASE_URL}; \
                     set DATABASE_URL or pass --database-url to use another database"
                );
            });
        }
    }

    pub async fn intake(&self) -> Result<IntakeClient, IntakeError> {
        IntakeClient::connect(&self.redis_url, self.keys()).await
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.key_prefix.clone())
    }
}

/// `30` (seconds), `1.5`, `500ms`, `30s`, `2m` → a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num.trim().parse().map_err(|_| {
        format!("`{s}` is not a duration: use seconds (`30`, `1.5`) or `500ms`, `2m`")
    })?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("`{s}`: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
