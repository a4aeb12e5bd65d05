//! The command line: the tree of subcommands (clap) and the one `match` that hands
//! each to its module. Each subcommand's flags and behaviour live in its own module;
//! the flags several share (pool, services, durations) live in [`crate::args`].

use clap::{Parser, Subcommand};

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::telemetry::LogFormat;

/// Warden runs Python workflow functions in sandboxed, forked worker processes: `serve`
/// takes executions from a Redis stream and records them in PostgreSQL; `exec` runs one
/// file with no services.
#[derive(Debug, Parser)]
#[command(name = "warden", version)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it). Default:
    /// info for `serve`, warn for the other commands.
    #[arg(long, global = true, env = "WARDEN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "WARDEN_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one workflow file through the worker pool, with no database or Redis.
    ///
    /// Streams the workflow's logs to stderr and prints its result on stdout. Exit
    /// code: 0 success, 1 failed, 3 timeout, 4 crashed, 5 cancelled, 2 usage error.
    Exec(crate::exec_cmd::ExecArgs),
    /// Measure executions/s, latency percentiles, PostgreSQL sessions and transactions and
    /// Redis commands per execution, and RSS: end to end through `serve` (a scratch
    /// database and key prefix), or the pool alone with --local.
    Bench(crate::bench::BenchArgs),
    /// Run the supervisor daemon: take executions from the Redis stream, run them in
    /// the worker pool, and record them in PostgreSQL. SIGTERM/SIGINT drain (queued
    /// executions are handed back to other supervisors); a second signal stops within a
    /// second.
    Serve(crate::cmd::serve::ServeArgs),
    /// Create the database if needed and bring its schema up to date.
    Migrate {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Store, list and remove the workspace's shared Python modules, which workflows
    /// import (`from shared.tickets import open_ticket`).
    Module {
        #[command(subcommand)]
        cmd: crate::cmd::module::ModuleCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Third-party Python packages workflows import (`requests`, `pydantic`): the
    /// workspace's requirements, which every supervisor installs with pip and rolls
    /// its workers over to.
    Package {
        #[command(subcommand)]
        cmd: crate::cmd::package::PackageCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Store and list workflows.
    Workflow {
        #[command(subcommand)]
        cmd: crate::cmd::workflow::WorkflowCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Queue an execution of a workflow (and, with --wait, follow it to its end).
    Submit(crate::cmd::submit::SubmitArgs),
    /// List executions, or show one with its logs.
    Executions {
        #[command(subcommand)]
        cmd: crate::cmd::executions::ExecutionsCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Cancel a queued or running execution (it ends `cancelled`).
    Cancel {
        /// The execution's id.
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Live supervisors, their workers, and the stream's backlog.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Set, delete and list the config workflows read (`warden.config`), global or per
    /// organization; secrets are stored encrypted and shown as `***`.
    Config {
        #[command(subcommand)]
        cmd: crate::cmd::config::ConfigCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Inspect the per-organization key-value store workflows use (`warden.kv`).
    Kv {
        #[command(subcommand)]
        cmd: crate::cmd::kv::KvCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

impl Command {
    /// The default log level: `serve` is a daemon, the rest are one-shot commands.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }

    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self) -> Result<i32, CliError> {
        match self {
            Command::Exec(args) => crate::exec_cmd::run(args).await,
            Command::Bench(args) => crate::bench::run(args).await,
            Command::Serve(args) => crate::cmd::serve::run(args).await,
            Command::Migrate { conn } => crate::cmd::migrate::run(conn).await,
            Command::Module { cmd, conn } => crate::cmd::module::run(conn, cmd).await,
            Command::Package { cmd, conn } => crate::cmd::package::run(conn, cmd).await,
            Command::Workflow { cmd, conn } => crate::cmd::workflow::run(conn, cmd).await,
            Command::Submit(args) => crate::cmd::submit::run(args).await,
            Command::Executions { cmd, conn } => crate::cmd::executions::run(conn, cmd).await,
            Command::Cancel { id, conn } => crate::cmd::cancel::run(conn, id).await,
            Command::Status { conn } => crate::cmd::status::run(conn).await,
            Command::Config { cmd, conn } => crate::cmd::config::run(conn, cmd).await,
            Command::Kv { cmd, conn } => crate::cmd::kv::run(conn, cmd).await,
        }
    }
}
