//! The workflow SDK: one test binary for the area (fewer links than one binary per
//! file), one side of it per module. Run one module with e.g.
//! `cargo test -p warden-tests --test sdk store::`.
//!
//! - [`config`]: config and secrets on the supervisor's side.
//! - [`serve`]: the SDK end to end through `serve`.
//! - [`store`]: the SDK's side of the result transaction.
//! - [`worker`]: the `warden` module inside real workers.
//!
//! `sdk_worker_env` (workers see neither the database URL nor the secret key) is a binary
//! of its own: it sets the process environment, which no other test may share.

mod config;
mod serve;
mod store;
mod worker;
