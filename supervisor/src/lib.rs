//! Warden's supervisor: the `warden` CLI and the `serve` daemon.
//!
//! Layout (one concern per module):
//! - [`outcome`]: what an execution asked for and how it ended (plain data).
//! - [`pool`]: the worker pool: spawns sandboxed templates, dispatches executions,
//!   enforces deadlines, cancels, replaces dead templates, drains on shutdown.
//! - [`store`]: PostgreSQL: schema and migrations, the fixed connection budget, batched
//!   reads, and the group-commit writer.
//! - [`intake`]: Redis: the execution stream and its consumer group, dead letters,
//!   cancel requests, completion and status publishing.
//! - [`serve`]: the daemon: intake → pool → group-commit writer → acknowledgement.
//! - [`modules`]: the workspace module cache: `workspace_modules` kept in step with
//!   Redis (full sync, LISTEN/NOTIFY, per-batch generation check, worker misses).
//! - [`sdk`]: the workflow SDK's supervisor side: config and secrets, kv reads,
//!   buffered writes, redaction.
//! - [`cli`]: the command line (clap): the tree of subcommands, and the dispatch.
//! - [`args`]: the flags and value parsers several subcommands share (pool, services,
//!   sizes, durations); a leaf the command modules import, never each other.
//! - [`cli_error`]: `CliError`, the one error type of the subcommands.
//! - [`cmd`]: the subcommands that use the services (serve, migrate, workflow, submit,
//!   executions, cancel, status, config, kv), one file each.
//! - [`exec_cmd`]: `warden exec`, one workflow through the pool with no services.
//! - [`bench`]: `warden bench`.
//! - [`telemetry`]: tracing set-up (human or JSON).

pub mod args;
pub mod bench;
pub mod cli;
pub mod cli_error;
pub mod cmd;
pub mod exec_cmd;
pub mod intake;
pub mod modules;
pub mod outcome;
pub mod pool;
pub mod sdk;
pub mod serve;
pub mod store;
pub mod telemetry;
