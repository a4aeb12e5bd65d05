//! The subcommands that talk to PostgreSQL and Redis, one file each. `exec` and `bench`
//! (which need neither) live in `exec_cmd` and `bench`. Where the services are
//! ([`crate::args::ConnArgs`]) is a group of global flags of the top-level command,
//! handed to each.
//!
//! Every function returns the process exit code, or a [`crate::cli_error::CliError`]
//! (printed once by `main` as `error: ...`, exit code 2).

pub mod cancel;
pub mod config;
pub mod executions;
mod json;
pub mod kv;
mod live;
pub mod logs;
pub mod manual;
pub mod migrate;
pub mod module;
pub mod org;
pub mod package;
pub mod prune;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod submit;
mod table;
pub mod workflow;
