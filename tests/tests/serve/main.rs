//! `warden serve` end to end (real stream, workers, PostgreSQL and Redis): one test
//! binary for the area (fewer links than one binary per file), one concern per module.
//! Run one module with e.g. `cargo test -p warden-tests --test serve liveness::`.
//!
//! - [`delays`]: executions submitted to start later (`not_before`).
//! - [`duplicate_entries`]: a valid and a malformed entry with one execution id.
//! - [`fairness`]: organizations take turns, urgent queues first, only queues served.
//! - [`http`]: `--http`: `/metrics` against the database, `/readyz` through outages.
//! - [`idempotency`]: an execution id reused with the same or with other params.
//! - [`limits`]: concurrency limits across supervisors, and a SIGKILLed holder.
//! - [`liveness`]: takeover by heartbeat, supervisors cut off from Redis.
//! - [`logs`]: `warden logs ID [--follow]`, and Ctrl-C while following.
//! - [`outages`]: Redis or PostgreSQL away, and shutting down then.
//! - [`outcomes`]: each terminal state, bad input, cancellation, logs and metrics.
//! - [`places`]: every way an execution ends gives its intake place back once.
//! - [`queued`]: a taken execution is `pending`, with no start time, until a worker
//!   starts it.
//! - [`redis_wipe`]: Redis wiped under a running service.
//! - [`systemd`]: `READY=1`, watchdog pings and `STOPPING=1` on `NOTIFY_SOCKET`.
//! - [`versions`]: workflow versions, their history, and the version each execution ran.
//! - [`retries`]: retry policies, due attempts, each attempt once across supervisors.
//! - [`schedules`]: cron schedules: each tick once across supervisors, catch-up.
//! - [`resilience`]: the connection budget, dropped connections, SIGKILL, several
//!   supervisors on one stream.

mod delays;
mod duplicate_entries;
mod fairness;
mod http;
mod idempotency;
mod limits;
mod liveness;
mod logs;
mod outages;
mod outcomes;
mod places;
mod queued;
mod redis_wipe;
mod resilience;
mod retries;
mod schedules;
mod systemd;
mod versions;
