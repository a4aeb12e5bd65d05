//! The subcommands that talk to PostgreSQL and Redis, one file each. `exec` and `bench`
//! (which need neither) live in `exec_cmd` and `bench`.
//!
//! Every function returns the process exit code, or `Err` with one sentence for the
//! user (printed as `error: ...`, exit code 2).

pub mod cancel;
pub mod config;
pub mod executions;
pub mod kv;
pub mod migrate;
pub mod module;
pub mod serve;
pub mod status;
pub mod submit;
pub mod workflow;

use clap::Args;

use crate::intake::{IntakeClient, Keys};
use crate::store::Store;

/// Where the services are. Defaults suit a local set-up (`scripts/services`).
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// PostgreSQL URL. Only the supervisor and admin commands use it; workers never see it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/warden",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix for every Redis key, to share one Redis between installations (and tests).
    #[arg(long, env = "WARDEN_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,
}

impl ConnArgs {
    /// One connection, for a short admin command.
    pub async fn store(&self) -> Result<Store, String> {
        Store::connect(&self.database_url, 1)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn intake(&self) -> Result<IntakeClient, String> {
        IntakeClient::connect(&self.redis_url, self.keys())
            .await
            .map_err(|e| e.to_string())
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.key_prefix.clone())
    }
}
