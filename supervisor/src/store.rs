//! PostgreSQL: the schema, the fixed connection budget, the batched reads the intake
//! needs per batch, and the group-commit writer that persists outcomes.
//!
//! Layout (one concern per module):
//! - [`connect`]: [`Store`], a pool of exactly N connections opened at start-up and
//!   health-checked on every acquire; database creation for `warden migrate`.
//! - [`retry`]: [`Backoff`]: what callers do while the database is away (it is never
//!   "give up and drop").
//! - [`migrate`]: the embedded migrations (`supervisor/migrations/`), applying them and
//!   refusing to serve on an out-of-date schema.
//! - [`workflows`]: workflow upsert/list and the one-query [`Store::load_for_batch`].
//! - [`configs`]: config values (secrets sealed) and organizations, read to fill the
//!   Redis config cache; the SDK's config writes.
//! - [`limits`]: the concurrency limits of workflows and organizations, read whole for
//!   the Redis mirror (crate::intake::limits).
//! - [`kv`]: the per-organization key-value store of the SDK (reads; writes are applied
//!   by [`commit`]).
//! - [`deliveries`]: event deliveries, created on intake by [`Store::begin_batch`]'s
//!   statement; their status is written by [`commit`].
//! - [`due`]: executions waiting for their next attempt or their start: claimed by the
//!   due-work poller (one statement, `FOR UPDATE SKIP LOCKED`), cancelled by `warden
//!   cancel`.
//! - [`executions`]: the one-statement [`Store::begin_batch`] that marks a batch
//!   `running` (and says which ids were already finished), [`Store::hand_back`] for
//!   what a supervisor that shuts down gives back, recording rejected requests, and the read
//!   side (`list`, `show`).
//! - [`items`]: the plain data that flows through the writer ([`Completed`] in,
//!   [`CommitOutcome`] from the transaction, [`Committed`] out) and [`Rejected`];
//!   a leaf that `commit`, `executions` and `writer` all import, and nothing else.
//! - [`schedules`]: cron schedules (`warden schedule`), and firing due ticks as
//!   `scheduled` executions, one transaction per batch of schedules.
//! - [`commit`]: one batch of outcomes in one transaction (rows, logs, SDK writes,
//!   delivery statuses, daily metrics), idempotent so a replay never records twice.
//! - [`lost`]: executions a dead supervisor left unfinished with nothing left to run
//!   them: found and ended `crashed` / `SupervisorLost` for the sweeper.
//! - [`retention`]: deleting old ended executions and their logs, a small batch per
//!   statement (for crate::ops::retention), and counting what that would delete.
//! - [`metrics`]: the per-(day, org, workflow) aggregation done in Rust before the
//!   metrics upsert.
//! - [`writer`]: the group-commit writer task: collects outcomes, writes them with
//!   [`commit`], retries with back-off, isolates bad items, and reports only committed
//!   items.
//!
//! Every statement is a runtime `sqlx::query` (no compile-time checked macros: there is
//! no database at build time).

pub mod commit;
pub mod configs;
pub mod connect;
pub mod deliveries;
pub mod due;
pub mod executions;
pub mod items;
pub mod kv;
pub mod limits;
pub mod lost;
pub mod metrics;
pub mod migrate;
pub mod retention;
pub mod retry;
pub mod schedules;
pub mod workflows;
pub mod writer;

pub use configs::{ConfigEntry, ConfigKind};
pub use connect::{redact_url, Store};
pub use executions::{Begin, ExecutionFilter, ExecutionStatus, HandBack, NewExecution};
pub use items::{CommitOutcome, Committed, Completed, Disposition, Rejected};
pub use migrate::MIGRATOR;
pub use retry::Backoff;
pub use workflows::{PushAction, Workflow, WorkflowKey, WorkflowSpec};
pub use writer::{Reservation, Writer, WriterConfig, WriterHandle};

/// Everything the store can fail with. Each variant says what was being done, so the
/// message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL could not be parsed.
    #[error("invalid database URL `{url_redacted}`: {source}")]
    InvalidUrl {
        url_redacted: String,
        #[source]
        source: sqlx::Error,
    },

    /// The server could not be reached or refused us.
    #[error(
        "cannot connect to PostgreSQL at `{url_redacted}`: {source}; \
         check that the server is running and that the URL's host, port and user are right"
    )]
    Connect {
        url_redacted: String,
        #[source]
        source: sqlx::Error,
    },

    /// The server is up but the database named in the URL does not exist.
    #[error(
        "database `{database}` does not exist at `{url_redacted}`; \
         run `warden migrate` to create it and its schema"
    )]
    DatabaseMissing {
        url_redacted: String,
        database: String,
    },

    /// The schema is older (or newer) than this build's migrations.
    #[error(
        "database schema is out of date (applied: {applied}; this build expects: {expected}); \
         run `warden migrate`"
    )]
    SchemaOutOfDate { applied: String, expected: String },

    /// Applying the migrations failed.
    #[error("applying migrations to `{url_redacted}` failed: {source}")]
    Migrate {
        url_redacted: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// No connection could be had (acquiring one, or starting a transaction on it
    /// failed). Whatever the error code, this is never about the data being written, so
    /// it is always worth retrying.
    #[error("{what}: the database is unavailable: {source}")]
    Unavailable {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A statement failed.
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A value handed to the store cannot be stored (caught before any statement ran).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    /// The writer task is gone (it panicked, or its runtime shut down).
    #[error("the store writer has stopped; outcomes can no longer be persisted")]
    WriterClosed,
}

impl StoreError {
    /// `Query` error constructor for `map_err`: `.map_err(StoreError::query("load workflows"))`.
    pub fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { what, source }
    }

    /// Whether retrying the same work later can succeed: the connection or server went
    /// away, the pool is exhausted, or the server asked us to retry (serialization
    /// failure, deadlock, too many connections, read-only after a fail-over). Anything
    /// else (a constraint, a trigger, bad data) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } | StoreError::Unavailable { .. } => true,
            StoreError::Query { source, .. } => is_transient_sqlx(source),
            StoreError::Migrate { source, .. } => match source {
                sqlx::migrate::MigrateError::Execute(e) => is_transient_sqlx(e),
                _ => false,
            },
            StoreError::InvalidUrl { .. }
            | StoreError::DatabaseMissing { .. }
            | StoreError::SchemaOutOfDate { .. }
            | StoreError::Invalid { .. }
            | StoreError::WriterClosed => false,
        }
    }

    /// Whether the statement was refused because of the values in it: a data exception
    /// (22), a constraint (23), a trigger's `RAISE` (P0), a program limit such as a
    /// too-large value (54), a row touched twice (21), or a value we could not encode.
    /// The same values fail the same way again; other values in the same batch may not,
    /// which is why the writer splits such a batch. Anything else (connectivity, a
    /// missing table, a permission) is not the batch's fault, and splitting it would
    /// only spread the failure.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Query { source, .. } => match source {
                sqlx::Error::Encode(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    ["22", "23", "P0", "54", "21"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }),
                _ => false,
            },
            StoreError::Invalid { .. } => true,
            _ => false,
        }
    }

    /// The SQLSTATE of a database error, if this is one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Query { source, .. }
            | StoreError::Connect { source, .. }
            | StoreError::Unavailable { source, .. } => source
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// See [`StoreError::is_transient`].
pub(crate) fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                let code = code.as_ref();
                // 08: connection exception. 57P01-03: admin shutdown, crash shutdown,
                // cannot connect now (pg_terminate_backend, restart, recovery).
                // 53: insufficient resources (too many connections, out of memory, disk
                // full). 40001/40P01: serialization failure, deadlock. 55P03: lock not
                // available. 25006: read-only transaction (a standby after fail-over).
                // 58: system error (I/O).
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("58")
                    || matches!(
                        code,
                        "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "25006"
                    )
            }
            None => false,
        },
        _ => false,
    }
}
