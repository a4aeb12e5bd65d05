//! Shared helpers for the end-to-end tests: each test gets its own PostgreSQL database
//! ([`db`]), its own Redis key prefix ([`redis`]) and its own pool and run directory
//! ([`pool`]), so tests run in parallel; [`serve`] runs the whole daemon on them.
//!
//! The tests themselves are in `tests/tests/`, one binary per area (`<area>/main.rs`
//! declaring one module per file: `cargo test -p warden-tests --test serve liveness::`),
//! since every binary is a separate link against `warden`. A test that needs its process
//! to itself (it sets the process environment, or counts the process's children and
//! descriptors) keeps a binary of its own: `modules_isolation.rs`, `sdk_worker_env.rs`,
//! `pool_no_leaks.rs`. `exec_cli.rs` is its area's only file.
//!
//! Tests see the supervisor only through `warden`'s public surface: the re-exports at
//! its root (`warden::Store`, `warden::Intake`, `warden::serve`, ...) and, for the few
//! internal functions a test calls for set-up or checks on its own, `warden::testing`.
//! They talk to PostgreSQL and Redis with `sqlx` and `redis` directly (dependencies of
//! this crate, declared once for the workspace with the supervisor's).

pub mod cli;
pub mod db;
pub mod http;
pub mod pool;
pub mod proxy;
pub mod redis;
pub mod serve;
