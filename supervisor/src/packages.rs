//! Third-party Python packages for workflows (docs/packages.md): the workspace's
//! requirements in PostgreSQL, installed by each supervisor with pip into a directory
//! of its own, and rolled out to its templates without failing an execution.
//!
//! Layout:
//! - [`spec`]: requirement lines: the shape accepted, and normalised names.
//! - [`store`]: the requirements, their generation, and each supervisor's install state.
//! - [`install`]: one set installed atomically with pip, made read-only; old sets removed.
//! - [`keeper`]: [`PackageKeeper`], `serve`'s side: install at start-up, then follow the
//!   generation (LISTEN/NOTIFY, on the module cache's listener) and roll the pool over.

pub mod install;
pub mod keeper;
pub mod spec;
pub mod store;

pub use keeper::PackageKeeper;

/// The channel the `workspace_requirements` trigger notifies (migrations/0008).
pub const CHANNEL: &str = "warden_packages";
/// Held (flock) under the package root by the supervisor that installs there.
pub const LOCK_FILE: &str = ".lock";
/// Where package sets go when `--packages-dir` is not given.
pub const DEFAULT_ROOT: &str = "/var/lib/warden/packages";
