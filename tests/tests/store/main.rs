//! The store against a real PostgreSQL: one test binary for the area (fewer links than
//! one binary per file), one concern per module. Run one module with e.g.
//! `cargo test -p warden-tests --test store writer::`.
//!
//! - [`begin`]: `begin_batch` and attempts.
//! - [`budget`]: the connection budget.
//! - [`cli_fixes`]: the `warden` binary's admin commands (issue 13's CLI fixes).
//! - [`cli_flags`]: completions, man pages, connection flags after a subcommand.
//! - [`cli_json`]: `--json` on the list, show and status commands.
//! - [`configs`]: config values.
//! - [`queued_view`]: a taken, not started execution shown `pending` (start marks).
//! - [`resilience`]: the writer under failure.
//! - [`retention`]: deleting old ended executions (store, `executions prune`,
//!   `serve --retention`).
//! - [`schema`]: migrations, `check_schema`, connection errors.
//! - [`workflows`]: workflow push and `load_for_batch`.
//! - [`writer`]: the group-commit writer.

mod begin;
mod budget;
mod cli_fixes;
mod cli_flags;
mod cli_json;
mod configs;
mod queued_view;
mod resilience;
mod retention;
mod schema;
mod workflows;
mod writer;
