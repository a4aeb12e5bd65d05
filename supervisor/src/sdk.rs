//! The supervisor's side of the workflow SDK (the `warden` Python module that workers
//! provide, worker/src/python/sdk.py): what an execution is sent, what it may ask, and
//! what happens to what it wrote.
//!
//! Every side effect of an execution lands in the one transaction that records its
//! result (crate::store::commit), and a worker never holds a database connection:
//! config travels with the execution, reads it cannot answer itself come back over its
//! socket, and writes are buffered in the execution and sent with its result.
//!
//! Layout (one concern per module):
//! - [`writes`]: the `sdk_writes_json` format, parsed and checked.
//! - [`crypto`]: secrets at rest (XChaCha20-Poly1305), the key and where it comes from.
//! - [`cache`]: the Redis config cache, filled from PostgreSQL, invalidated by generation.
//! - [`context`]: the config layers and ROI defaults added to `Execute.context_json`.
//! - [`handler`]: the answers to `kv_get`, `kv_list` and `config_secret` requests.
//! - [`redact`]: masking the secrets an execution was sent in everything it outputs.
//! - [`service`]: [`Sdk`], the handle `warden serve` calls at each step.
//! - [`admin`]: setting config values and secrets for the CLI (sealing, invalidation).

pub mod admin;
pub mod cache;
pub mod context;
pub mod crypto;
pub mod handler;
pub mod redact;
pub mod service;
pub mod writes;

use std::path::PathBuf;

pub use crypto::{Scope, SecretKey, SecretKeyArgs};
pub use redact::{Redactions, MASK};
pub use service::{Sdk, SDK_WRITE_ERROR};
pub use writes::SdkWrites;

use crate::store::StoreError;

/// Everything the SDK side can fail with, each a sentence an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The secret key is not 32 bytes of hex or base64.
    #[error("the secret key from {origin} is invalid: {reason}")]
    BadKey { origin: String, reason: String },

    /// The key file cannot be read.
    #[error("cannot read the secret key file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A secret is set or read but no key is configured.
    #[error(
        "no secret key is configured: give --secret-key-file PATH or set WARDEN_SECRET_KEY \
         (32 bytes as 64 hex digits or base64, e.g. from `openssl rand -hex 32`)"
    )]
    NoKey,

    /// A stored secret does not open with the configured key.
    #[error("the secret `{key}` ({scope}) cannot be decrypted: {reason}")]
    Undecryptable {
        scope: Scope,
        key: String,
        reason: String,
    },

    /// The random generator or the cipher refused.
    #[error("cannot {what}: {reason}")]
    Crypto { what: &'static str, reason: String },

    /// A value given to `config set` is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    InvalidValue { key: String, reason: String },

    /// An execution's `sdk_writes_json` is malformed or too large.
    #[error("invalid SDK writes: {reason}")]
    InvalidWrites { reason: String },

    /// Redis refused or is unreachable.
    #[error("Redis error while trying to {what}: {reason}")]
    Redis { what: &'static str, reason: String },

    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SdkError {
    pub(crate) fn redis(what: &'static str, e: redis::RedisError) -> SdkError {
        SdkError::Redis {
            what,
            reason: e.to_string(),
        }
    }
}
