//! Warden's supervisor: the `warden` CLI and the `serve` daemon.
//!
//! Layout (one concern per module; every module is private to the crate):
//! - `outcome`: what an execution asked for and how it ended (plain data).
//! - `pool`: the worker pool: spawns sandboxed templates, dispatches executions,
//!   enforces deadlines, cancels, replaces dead templates, drains on shutdown.
//! - `store`: PostgreSQL: schema and migrations, the fixed connection budget, batched
//!   reads, and the group-commit writer.
//! - `intake`: Redis: the execution stream and its consumer group, dead letters,
//!   cancel requests, completion and status publishing.
//! - `serve`: the daemon: intake → pool → group-commit writer → acknowledgement.
//! - `modules`: the workspace module cache: `workspace_modules` kept in step with
//!   Redis (full sync, LISTEN/NOTIFY, per-batch generation check, worker misses).
//! - `packages`: third-party Python packages: requirements in PostgreSQL, installed
//!   with pip per supervisor, templates rolled over to each new set.
//! - `sdk`: the workflow SDK's supervisor side: config and secrets, kv reads,
//!   buffered writes, redaction.
//! - `cli`: the command line (clap): the tree of subcommands, and the dispatch.
//! - `args`: the flags and value parsers several subcommands share (pool, services,
//!   sizes, durations); a leaf the command modules import, never each other.
//! - `cli_error`: `CliError`, the one error type of the subcommands.
//! - `cmd`: the subcommands that use the services (serve, migrate, workflow, submit,
//!   executions, cancel, status, config, kv), one file each.
//! - `exec_cmd`: `warden exec`, one workflow through the pool with no services.
//! - `bench`: `warden bench`.
//! - `ops`: operating the daemon: `/metrics`, `/healthz`, `/readyz` (`serve --http`),
//!   systemd notifications, retention.
//! - `pycheck`: push-time Python checks (`ast.parse` in a `python3` subprocess, never
//!   running the code).
//! - `telemetry`: tracing set-up (human or JSON).
//! - `schedule`: cron schedules, the pure part: ticks in a zone, catch-up, tick ids.
//! - `retry_policy`: whether an ended attempt is retried, and the back-off before the
//!   next (pure; the jitter's randomness is passed in).
//!
//! # The public surface
//!
//! The crate has two users: its own binary (`main.rs`: parse [`Cli`], set up tracing,
//! run, print a [`CliError`]) and the end-to-end tests (package `warden-tests`), which
//! run the pool, the store, the intake and the whole daemon in-process. So the modules
//! are private and the re-exports below are the whole public surface, grouped by area:
//! the handful of types and functions those two users name, and nothing else (as
//! mini-redis's `lib.rs` does). A type reached through one of them (a method's return
//! type, say) is usable but not nameable from outside. Dependencies are not re-exported:
//! the tests depend on `sqlx` and `redis` themselves.
//!
//! [`testing`] (hidden from the docs) holds the few internal functions the tests call
//! for set-up or check directly; it is kept to what they use.

// The doc comments are written for readers of the whole crate
// (`cargo doc --document-private-items`): a public item's docs may link into the
// private modules it works with.
#![allow(rustdoc::private_intra_doc_links)]

mod args;
mod bench;
mod cli;
mod cli_error;
mod cmd;
mod exec_cmd;
mod intake;
mod modules;
mod ops;
mod outcome;
mod packages;
mod pool;
mod pycheck;
mod retry_policy;
mod schedule;
mod sdk;
mod serve;
mod size;
mod store;
mod telemetry;

// The command line, for `main.rs`: parse, set up tracing, run, report.
pub use cli::Cli;
pub use cli_error::CliError;
pub use telemetry::init as init_telemetry;

// Executions as the pool sees them: the job, its events, its outcome.
pub use outcome::{ExecutionId, ExecutionOutcome, Job, PoolEvent, Status};

// The worker pool.
pub use pool::{Pool, PoolConfig, PoolError};

// PostgreSQL: the store, its migrations, and the group-commit writer's items.
pub use store::{
    Begin, CommitOutcome, Committed, Completed, ConfigKind, Disposition, ExecutionFilter,
    ExecutionStatus, HandBack, NewExecution, Rejected, Store, StoreError, WorkflowKey,
    WorkflowSpec, Writer, WriterConfig, MIGRATOR,
};

// Redis: the execution stream (supervisor side), the client side, cancels, completions.
pub use intake::{
    request_cancel, CancelListener, CancelSignal, Completion, Done, Entry, ExecutionRequest,
    Heartbeat, Intake, IntakeClient, IntakeError, Keys, Lane, LaneDepth, SupervisorStatus,
    WaitEvent, WorkflowRef, DEFAULT_QUEUE,
};

// Concurrency limits: the Redis mirror, and the running counts against them.
pub use intake::limits;

// `PushAction` is defined by two areas (a module push and a workflow push): re-exported
// under area names.
pub use modules::PushAction as ModulePushAction;
pub use store::PushAction as WorkflowPushAction;

// The workspace module cache.
pub use modules::{content_hash, Applied, ModuleCache, ModuleFile, ModuleSync};

// The workflow SDK's supervisor side.
pub use sdk::{
    Redactions, Scope, Sdk, SdkError, SdkWrites, SecretKey, SecretKeyArgs, SDK_WRITE_ERROR,
};

// The daemon, run in-process with a shutdown trigger the caller holds.
pub use serve::{serve, ServeConfig, ServeError, ServeReport, Shutdown};

// Retries: a workflow's policy.
pub use retry_policy::{RetryOn, RetryPolicy};
// Operating the daemon: retention's settings and one pass of it.
pub use ops::retention::{prune, PruneReport, Retention};

/// Internal functions the end-to-end tests (`warden-tests`) call for set-up, or to
/// check one step on its own against real PostgreSQL and Redis. Not part of the API:
/// hidden from the docs, and kept to what those tests use.
#[doc(hidden)]
pub mod testing {
    /// The pool's default worker uid base, and the answer to a request nobody serves.
    pub use crate::pool::{config::default_uid_base, unavailable};

    /// The per-organization Redis user name the sandbox grants, and its removal (what
    /// `warden bench` does for the prefix of each run).
    pub use crate::modules::access::{remove_user, user_name};

    /// The SDK's config cache, read through by the worker-request handler.
    pub use crate::sdk::cache::ConfigCache;

    /// Whether Redis persists the stream: `serve`'s start-up check and its verdict.
    pub mod persistence {
        pub use crate::intake::persistence::{check, warning};
    }

    /// Workspace modules in PostgreSQL, as `warden module push/rm/ls` change them.
    pub mod module_store {
        pub use crate::modules::store::{list, load, push, remove};
    }

    /// Config and secret administration, as `warden config` does it.
    pub mod sdk_admin {
        pub use crate::sdk::admin::{display_value, invalidate, set};
    }

    /// The supervisor's answer to a worker's SDK request.
    pub mod sdk_handler {
        pub use crate::sdk::handler::{answer, Asker, Sources};
    }
}
