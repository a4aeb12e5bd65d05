//! [`CliError`]: the one error type every subcommand returns. `main` prints it once, as
//! `error: <message>`, and exits with [`CliError::exit_code`].
//!
//! Each variant names what went wrong; its message also says what to do about it. The
//! service errors ([`StoreError`], [`IntakeError`], [`ModuleError`], [`SdkError`],
//! [`PoolError`]) already read that way, so they pass through unchanged (`#[from]`, shown
//! as they are). A leaf, like [`crate::args`]: the command modules import it, it
//! imports none of them.

use std::path::PathBuf;

use crate::intake::IntakeError;
use crate::modules::ModuleError;
use crate::pool::PoolError;
use crate::sdk::SdkError;
use crate::store::StoreError;

/// Exit code for a command that could not do its job (a user mistake, a service that
/// cannot be reached, something named that does not exist). Clap uses the same code for
/// bad flags. Executions that ran map their end to a code with
/// [`crate::outcome::Status::exit_code`].
pub const EXIT_USAGE: i32 = 2;

/// Why a subcommand failed, as one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// PostgreSQL: unreachable, a bad URL, the database or its schema missing or out of
    /// date, or a statement that failed.
    #[error(transparent)]
    Database(#[from] StoreError),

    /// Redis: unreachable, a bad URL, or a command that failed.
    #[error(transparent)]
    Redis(#[from] IntakeError),

    /// The workspace modules: files that cannot be read or stored, or the module cache.
    #[error(transparent)]
    Modules(#[from] ModuleError),

    /// Config and secrets: no or a bad secret key, or a value that cannot be stored.
    #[error(transparent)]
    Config(#[from] SdkError),

    /// The worker pool could not start (the worker binary, the run directory).
    #[error(transparent)]
    Pool(#[from] PoolError),

    /// `serve` could not start (the message names the step and the service).
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),

    /// The daemon's SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),

    /// An argument the command cannot use (clap checked its syntax; this is its meaning).
    #[error("{0}")]
    InvalidInput(String),

    /// No execution has this id.
    #[error("no execution with id `{id}`")]
    ExecutionNotFound { id: String },

    /// The execution to cancel has already ended (`status` is its final status).
    #[error("execution `{id}` already ended ({status}); there is nothing to cancel")]
    ExecutionEnded { id: String, status: &'static str },

    /// No organization has this name.
    #[error("there is no organization {name}")]
    OrganizationNotFound { name: String },

    /// The config key to delete is not set (globally when `org` is `None`).
    #[error("{}", match org {
        Some(o) => format!("organization {o} has no config key {key}"),
        None => format!("there is no global config key {key}"),
    })]
    ConfigKeyNotFound { org: Option<String>, key: String },

    /// A file or directory the command was pointed at cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// `workflow file`, `directory`, ...
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A local resource the command needs could not be had (a run directory, a signal
    /// handler, the current directory).
    #[error("cannot {what}: {source}")]
    Local {
        /// What was being done: `create a run directory`, ...
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// What the command was waiting on ended before the answer came (the worker pool,
    /// the completion stream).
    #[error("{0}")]
    Stopped(&'static str),

    /// `bench` could not set up or finish a measurement.
    #[error("{0}")]
    Bench(String),
}

impl CliError {
    /// The process exit code for this error: always [`EXIT_USAGE`] today, kept in one
    /// place so a variant can get its own.
    pub fn exit_code(&self) -> i32 {
        EXIT_USAGE
    }
}

#[cfg(test)]
mod tests {
    use super::CliError;

    #[test]
    fn not_found_messages_name_what_is_missing() {
        let global = CliError::ConfigKeyNotFound {
            org: None,
            key: "k".into(),
        };
        assert_eq!(global.to_string(), "there is no global config key k");
        let org = CliError::ConfigKeyNotFound {
            org: Some("acme".into()),
            key: "k".into(),
        };
        assert_eq!(org.to_string(), "organization acme has no config key k");
        let id = CliError::ExecutionNotFound { id: "x".into() };
        assert_eq!(id.to_string(), "no execution with id `x`");
    }
}
