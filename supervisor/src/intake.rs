//! Redis side of the supervisor ("intake"): the execution request stream and its
//! consumer group, dead letters, cancel requests, and what the supervisor publishes
//! back (completions, live logs, its own status).
//!
//! Layout:
//! - [`keys`]: every key and channel name, built from one prefix (tests use their own).
//! - [`lanes`]: fair intake: a lane per queue and organization, and the script that
//!   takes work from them in turn ([`Intake::take`]).
//! - [`request`]: the stream entry format (`id`, `workflow`, `params`, ...) and its parser.
//! - [`entry`]: a stream entry as read, and byte-safe decoding of read replies.
//! - [`messages`]: the JSON published for clients: [`Completion`], [`LogLine`] (kept in
//!   each execution's live-log stream),
//!   [`SupervisorStatus`].
//! - [`stream`]: [`Intake`], the supervisor's handle: read, acknowledge and publish,
//!   dead-letter, status.
//! - [`liveness`]: each supervisor's heartbeat key ([`Heartbeat`]), and taking over the
//!   pending entries of supervisors whose heartbeat is gone ([`Intake::take_over`]).
//! - [`limits`]: concurrency limits: the Redis mirror of the stored limits, the
//!   permits the take script hands out and the acknowledgement gives back, and the
//!   running counts for `warden status`.
//! - [`cancel`]: cancel requests (a marker key plus a pub/sub notice) and the
//!   [`CancelListener`].
//! - [`client`]: [`IntakeClient`], what the CLI uses: submit, cancel, wait, status.
//! - [`persistence`]: the start-up check that warns when Redis persists nothing.
//!
//! # How a request flows
//!
//! A client adds an entry to its lane (`warden:queue:<queue>:org:<org>`, [`lanes`]). The
//! supervisor takes work with one script call that moves entries from the lanes, in turn,
//! to `warden:executions` and reads them as `XREADGROUP GROUP warden <consumer> … >` would
//! (blocking on the queues' bells when there is nothing), so the entry is now *pending*
//! on that consumer. Before dispatching it checks the batch's
//! cancel markers (one `MGET`). Once the execution's terminal state is committed to
//! PostgreSQL, one pipeline `XACK`s and `XDEL`s the batch's entries and, for each,
//! `SET`s its completion key, `PUBLISH`es its completion and shortens the life of its
//! live-log stream (`PEXPIRE`). An entry is never
//! acknowledged before its commit, so a supervisor that dies leaves its entries
//! pending, and once its heartbeat expires a live one takes them over
//! ([`Intake::take_over`]). The store makes a second delivery of an already-committed
//! execution harmless.
//!
//! # Redis commands on the steady-state path
//!
//! Per batch of N executions (N up to the free worker slots):
//!
//! | step                         | round trips | commands        |
//! |------------------------------|-------------|-----------------|
//! | take (script: see [`lanes`]) | 1           | 1               |
//! | cancel check (`MGET`)        | 1           | 1               |
//! | ack + publish (one pipeline) | 1           | 3 + 3N          |
//! | live logs (per flush)        | 1           | one per line, plus one per execution that logged |
//!
//! The ack pipeline is `XACK` + `XDEL` + the permits' release script ([`limits`]) for
//! the whole batch plus `SET EX`, `PUBLISH`
//! and `PEXPIRE` (its live-log stream) per execution: the per-execution commands exist because each execution has its
//! own channel, but they ride in the same round trip. Nothing on this path costs a
//! round trip per execution. Off the steady path, at fixed intervals: the heartbeat
//! (`SET … PX … GET`, on its own connection, every third of its TTL), the takeover
//! pass (`XINFO CONSUMERS` about once a second, plus one `EXISTS` per other consumer
//! and a claim script per dead one), `SET EX` + `SADD` (status). [`Intake::calls`] counts round trips and commands so tests can hold the
//! code to this table.
//!
//! # Decisions
//!
//! - **Acknowledged entries are deleted** (`XDEL` with the `XACK`). The stream then
//!   holds only work not yet finished, so it cannot grow without bound, `XLEN` minus
//!   pending is the true backlog, and re-creating the group from id `0` (after a
//!   `FLUSHALL` or a lost group) never replays finished work. Clients must therefore
//!   not `XADD … MAXLEN`: trimming could drop unprocessed requests.
//! - **Reads block on their own connection.** Redis serves one connection's commands
//!   in order, so an `XREADGROUP … BLOCK` would hold up every acknowledgement queued
//!   behind it. [`Intake`] keeps two multiplexed connections (blocking reads; all
//!   else), and a [`CancelListener`] one pub/sub connection: three in total, fixed.
//! - **A lost group heals itself.** A `NOGROUP` reply (the stream or group vanished,
//!   e.g. `FLUSHALL` or a Redis restart without persistence) re-creates the group
//!   and retries, instead of failing the supervisor.
//! - **Idle time is not death.** An entry's idle time grows while its execution runs
//!   (up to the 24 h maximum timeout) and while its supervisor cannot reach Redis, so
//!   entries are taken over only from consumers whose heartbeat key is gone, never on
//!   idle time ([`liveness`] explains the design).
//! - **Completions are also kept** (`warden:execution:<id>:completion`, one hour), so
//!   a client that subscribes after the publish still gets the outcome: clients
//!   subscribe first, then check the key ([`IntakeClient::wait_for_completion`]).
//! - **Cancel markers are keys with a TTL**, not members of one set: Redis 7.0 cannot
//!   expire set members, and a cancel that arrives before the supervisor reads the
//!   entry must still work when it does.
//! - **Live logs are a stream per execution**, not pub/sub: `XADD
//!   warden:execution:<id>:logs` per line (`MAXLEN ~ 10000`) and one `PEXPIRE` (an hour)
//!   per execution and flush, so `warden logs ID --follow` attached mid-run reads the
//!   lines so far, then waits for the next (`XREAD BLOCK`). The completion's pipeline
//!   cuts the stream's life to a minute: the lines are in the database by then. A
//!   flush that lands after that (rare) makes it live an hour again; an execution
//!   taken over by a peer appends its new attempt's lines after the old ones.
//! - **Replies are decoded as bytes** ([`entry`]): a non-UTF-8 field name in one
//!   entry must not make every read of the batch fail.

pub mod cancel;
pub mod client;
pub mod entry;
pub mod keys;
pub mod lanes;
pub mod limits;
pub mod liveness;
pub mod messages;
pub mod persistence;
pub mod request;
pub mod stream;

use std::time::Duration;

pub use cancel::{request_cancel, CancelListener, CancelSignal};
pub use client::{IntakeClient, WaitEvent};
pub use entry::Entry;
pub use keys::Keys;
pub use lanes::{Lane, LaneDepth, DEFAULT_QUEUE};
pub use liveness::{Heartbeat, Liveness};
pub use messages::{Completion, Done, StartMark, SupervisorStatus};
pub use request::{ExecutionRequest, InvalidEntry, WorkflowRef};
pub use stream::{ConsumerBacklog, Intake, RedisCalls};

/// Everything that can go wrong talking to Redis, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("invalid Redis URL `{url}`: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "cannot reach Redis at {url}: {source}. Is Redis running and listening there? \
         Start it, or give Warden the right Redis URL"
    )]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "timed out after {timeout:?} connecting to Redis at {url}. Is the host right and \
         the port open?"
    )]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("Redis error while {context}: {source}")]
    Redis {
        context: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis did not answer within {after:?} while {context}")]
    TimedOut { context: String, after: Duration },
    #[error("unexpected reply from Redis while {context}: {detail}")]
    UnexpectedReply { context: String, detail: String },
    #[error("invalid consumer name {name:?}: {reason}")]
    InvalidConsumer { name: String, reason: String },
    #[error("invalid execution id {id:?}: {reason}")]
    InvalidExecutionId { id: String, reason: String },
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] InvalidEntry),
    #[error("gave up after {timeout:?} waiting for execution {execution_id} to complete")]
    WaitTimedOut {
        execution_id: crate::outcome::ExecutionId,
        timeout: Duration,
    },
    #[error(
        "the Redis subscription closed while waiting for execution {execution_id}, and no \
         completion was recorded"
    )]
    SubscriptionClosed {
        execution_id: crate::outcome::ExecutionId,
    },
}

impl IntakeError {
    pub(crate) fn redis(context: impl Into<String>, source: redis::RedisError) -> Self {
        IntakeError::Redis {
            context: context.into(),
            source,
        }
    }

    /// True for failures worth retrying after a pause (connection lost or refused, a
    /// timeout, Redis loading its dataset): the caller should back off and try again
    /// rather than give up.
    pub fn is_transient(&self) -> bool {
        match self {
            IntakeError::Unreachable { .. }
            | IntakeError::ConnectTimeout { .. }
            | IntakeError::TimedOut { .. }
            | IntakeError::SubscriptionClosed { .. } => true,
            IntakeError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || matches!(
                        source.code(),
                        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN")
                    )
            }
            _ => false,
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs (one copy for the
/// supervisor and the worker: warden_protocol::url).
pub use warden_protocol::redact_url;
