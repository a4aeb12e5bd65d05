//! `warden executions prune`: one retention pass (crate::ops::retention), or with
//! `--dry-run` what it would delete.

use std::time::Duration;

use clap::Args;

use crate::cli_error::CliError;
use crate::ops::retention::{self, DEFAULT_BATCH, DEFAULT_PAUSE};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete ended executions that completed longer ago than this: `30d`, `12h`,
    /// `90m`, `1w 2d`.
    #[arg(long, value_name = "AGE", value_parser = crate::ops::retention::parse_age)]
    pub older_than: Duration,
    /// Only count what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows deleted per statement (each its own short transaction).
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: i64,
}

pub async fn run(store: &Store, args: PruneArgs) -> Result<i32, CliError> {
    let cutoff = retention::cutoff(chrono::Utc::now(), args.older_than);
    let when = cutoff.format("%Y-%m-%d %H:%M:%S UTC");
    if args.dry_run {
        let n = store.count_prunable(cutoff).await?;
        println!(
            "would delete {} ended executions and {} log lines (completed before {when}); \
             pending and running executions are kept",
            n.executions, n.logs
        );
        return Ok(0);
    }
    // Held so the pass is never told to stop.
    let (_keep, mut stop) = tokio::sync::watch::channel(false);
    let r = retention::prune(store, cutoff, args.batch, DEFAULT_PAUSE, &mut stop, |_| {}).await?;
    println!(
        "deleted {} ended executions and {} log lines (completed before {when}) in {} \
         statements of at most {} rows; longest statement {} ms, {:.1} s in all",
        r.executions,
        r.logs,
        r.batches,
        args.batch.max(1),
        r.longest_batch.as_millis(),
        r.took.as_secs_f64()
    );
    Ok(0)
}
