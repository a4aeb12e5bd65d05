//! The workspace module cache, supervisor side. Workflows import shared code
//! (`from shared.tickets import open_ticket`) that lives in PostgreSQL
//! (`workspace_modules`); workers never read the database, so the supervisor keeps a
//! copy in Redis, which the workers' import hook reads (worker/src/modules).
//!
//! Layout:
//! - [`files`]: `.py` files on disk → workspace paths and content hashes (`module push`).
//! - [`store`]: the `workspace_modules` table: push, list, remove, and the sync's reads.
//! - [`cache`]: the Redis side: the per-batch generation read, and atomic conditional
//!   writes (full and incremental).
//! - [`sync`]: [`ModuleSync`], which keeps the two in step: a full sync at start-up,
//!   LISTEN/NOTIFY for changes, the per-batch check that refills a wiped cache, and the
//!   answers to workers' `module_miss` requests.
//! - [`bench`]: the `warden bench` workload that imports workspace modules.
//!
//! Redis per batch of executions: one `GET` of the generation. Per execution: nothing
//! (templates run children from a snapshot, refreshed only when the generation moves).

pub mod access;
pub mod bench;
pub mod cache;
pub mod files;
pub mod store;
pub mod sync;

use std::path::PathBuf;

pub use cache::{Applied, ModuleCache};
pub use files::{content_hash, ModuleFile};
pub use store::PushAction;
pub use sync::{ModuleSync, CHANNEL, MISS_OP};

use crate::store::StoreError;

/// Everything the module cache can fail with, each saying what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Redis failed while {during}: {source}")]
    Redis {
        during: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("timed out {0}")]
    Timeout(String),
    #[error("cannot listen for module changes on `{CHANNEL}`: {0}")]
    Listen(#[source] sqlx::Error),
    #[error("unexpected reply from Redis: {0}")]
    UnexpectedReply(String),
    #[error(
        "the module cache kept changing under this write (another supervisor writing, or \
         Redis being wiped repeatedly); try again"
    )]
    Contended,
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store a module at {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
}

impl ModuleError {
    fn listen(source: sqlx::Error) -> ModuleError {
        ModuleError::Listen(source)
    }
}
