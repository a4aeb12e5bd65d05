//! The command line: the tree of subcommands (clap) and the one `match` that hands
//! each to its module. Each subcommand's flags and behaviour live in its own module;
//! the flags several share (pool, services, durations) live in [`crate::args`]. Where the
//! services are ([`ConnArgs`]) is a group of global flags of [`Cli`] itself, so they
//! stand before the subcommand or after it, and [`Command::run`] hands them down.

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
    #[command(flatten)]
    pub conn: ConnArgs,
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
    Migrate,
    /// Store, list and remove the workspace's shared Python modules, which workflows
    /// import (`from shared.tickets import open_ticket`).
    Module {
        #[command(subcommand)]
        cmd: crate::cmd::module::ModuleCmd,
    },
    /// Third-party Python packages workflows import (`requests`, `pydantic`): the
    /// workspace's requirements, which every supervisor installs with pip and rolls
    /// its workers over to.
    Package {
        #[command(subcommand)]
        cmd: crate::cmd::package::PackageCmd,
    },
    /// Store and list workflows.
    Workflow {
        #[command(subcommand)]
        cmd: crate::cmd::workflow::WorkflowCmd,
    },
    /// Organizations and their concurrency limits.
    Org {
        #[command(subcommand)]
        cmd: crate::cmd::org::OrgCmd,
    },
    /// Queue an execution of a workflow (and, with --wait, follow it to its end).
    Submit(crate::cmd::submit::SubmitArgs),
    /// Cron schedules: run a workflow at every tick, once per tick across supervisors.
    Schedule {
        #[command(subcommand)]
        cmd: crate::cmd::schedule::ScheduleCmd,
    },
    /// List executions, or show one with its logs.
    Executions {
        #[command(subcommand)]
        cmd: crate::cmd::executions::ExecutionsCmd,
    },
    /// An execution's log lines: stored ones for an ended execution; with --follow, a
    /// queued or running one's lines so far, then each new one, until it ends (exit
    /// code as `submit --wait`: 0 success, 1 failed, 3 timeout, 4 crashed, 5 cancelled).
    Logs {
        /// The execution's id.
        id: String,
        /// Follow a queued or running execution to its end.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a queued or running execution (it ends `cancelled`).
    Cancel {
        /// The execution's id.
        id: String,
    },
    /// Live supervisors, their workers, and the stream's backlog.
    Status {
        /// One JSON object (`supervisors`, `stream`, `consumers`, `queues`, `limits`) instead
        /// of the text.
        #[arg(long)]
        json: bool,
    },
    /// Set, delete and list the config workflows read (`warden.config`), global or per
    /// organization; secrets are stored encrypted and shown as `***`.
    Config {
        #[command(subcommand)]
        cmd: crate::cmd::config::ConfigCmd,
    },
    /// Inspect the per-organization key-value store workflows use (`warden.kv`).
    Kv {
        #[command(subcommand)]
        cmd: crate::cmd::kv::KvCmd,
    },
    /// Print a shell completion script (`warden completions bash >
    /// /etc/bash_completion.d/warden`; zsh: a file `_warden` in a `$fpath` directory;
    /// fish: `~/.config/fish/completions/warden.fish`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (`warden man | man -l -`), or write one page per command into
    /// a directory (`warden man --dir /usr/local/share/man/man1`).
    Man {
        /// Write `warden.1`, `warden-serve.1`, ... here instead.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
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

    /// Runs the subcommand with the services `conn` names and returns the process exit
    /// code.
    pub async fn run(self, conn: ConnArgs) -> Result<i32, CliError> {
        match self {
            Command::Exec(args) => crate::exec_cmd::run(args).await,
            Command::Bench(args) => {
                crate::bench::run(crate::bench::BenchArgs { conn, ..args }).await
            }
            Command::Serve(args) => {
                crate::cmd::serve::run(crate::cmd::serve::ServeArgs { conn, ..args }).await
            }
            Command::Migrate => crate::cmd::migrate::run(conn).await,
            Command::Module { cmd } => crate::cmd::module::run(conn, cmd).await,
            Command::Package { cmd } => crate::cmd::package::run(conn, cmd).await,
            Command::Workflow { cmd } => crate::cmd::workflow::run(conn, cmd).await,
            Command::Org { cmd } => crate::cmd::org::run(conn, cmd).await,
            Command::Submit(args) => {
                crate::cmd::submit::run(crate::cmd::submit::SubmitArgs { conn, ..args }).await
            }
            Command::Schedule { cmd } => crate::cmd::schedule::run(conn, cmd).await,
            Command::Executions { cmd } => crate::cmd::executions::run(conn, cmd).await,
            Command::Logs { id, follow } => crate::cmd::logs::run(conn, id, follow).await,
            Command::Cancel { id } => crate::cmd::cancel::run(conn, id).await,
            Command::Status { json } => crate::cmd::status::run(conn, json).await,
            Command::Config { cmd } => crate::cmd::config::run(conn, cmd).await,
            Command::Kv { cmd } => crate::cmd::kv::run(conn, cmd).await,
            Command::Completions { shell } => crate::cmd::manual::completions(shell),
            Command::Man { dir } => crate::cmd::manual::man(dir.as_deref()),
        }
    }
}
