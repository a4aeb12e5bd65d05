//! Third-party packages end to end (docs/packages.md), with real packages from the
//! index pip is configured with (network needed). One binary for the area; run one
//! module with e.g. `cargo test -p warden-tests --test packages rollover::`.
//!
//! - [`cli`]: `warden package add|rm|list|sync`: what is checked, stored and shown.
//! - [`converge`]: two supervisors on one database each install the set and use it.
//! - [`imports`]: `requests` and a compiled extension imported in fork and reuse mode;
//!   a workspace module beats a package of the same name; workers cannot write the set.
//! - [`rollover`]: an upgrade under continuous load fails nothing, and every execution
//!   started after the rollout sees the new version; a requirement pip cannot install
//!   leaves the previous set in use and is reported.
//!
//! pip's download cache (root's `~/.cache/pip` unless `PIP_CACHE_DIR` says otherwise)
//! is shared by the tests and kept between runs, so only a first run downloads.

mod cli;
mod converge;
mod fixture;
mod imports;
mod rollover;
