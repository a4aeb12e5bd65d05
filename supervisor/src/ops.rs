//! Operating the daemon: what `warden serve` shows a monitoring system, a load balancer
//! and a service manager, and the bound on table growth. Nothing here is on the
//! execution's path except a few atomic increments ([`metrics::Metrics`]).
//!
//! Layout:
//! - [`metrics`]: the Prometheus metrics (`prometheus-client`): counters and histograms
//!   the daemon updates as executions start and end and as the writer commits, and the
//!   gauges and counters read from the pool, the store, the intake and the module cache
//!   only when `/metrics` is scraped.
//! - [`http`]: `--http ADDR`: `/metrics`, `/healthz`, `/readyz` (axum).
//! - [`ready`]: what `/readyz` checks (start-up done, not draining, PostgreSQL, Redis
//!   and the pool usable), as a plain verdict.
//! - [`notify`]: systemd's notify protocol (`sd-notify`): `READY=1`, `WATCHDOG=1`,
//!   `STOPPING=1`.
//! - [`retention`]: `--retention`: deleting old ended executions and their logs in small
//!   batches, on the supervisor's own connections.
//!
//! docs/operations.md is the operator's side of all this.

pub mod http;
pub mod metrics;
pub mod notify;
pub mod ready;
pub mod retention;
