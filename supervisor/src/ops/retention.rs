//! Retention: deleting ended executions (and their log lines) older than an age, so
//! the tables stop growing. `warden serve --retention 30d` runs a pass at start-up and
//! every [`Retention::every`] after; `warden executions prune --older-than 30d` runs one
//! pass and reports it.
//!
//! A pass deletes [`Retention::batch`] rows per statement (crate::store::retention:
//! oldest first, rows another transaction holds skipped) with [`Retention::pause`]
//! between statements, until a batch comes back short. So no lock is held longer than
//! one batch takes, the writer and the reader get the connections in between, and the
//! supervisor's own connections are used (never a new one per batch). Executions that
//! are `pending` or `running` are never deleted, however old. A failed statement ends
//! the pass; the next pass starts again from the oldest rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ops::metrics::Metrics;
use crate::store::retention::Pruned;
use crate::store::{Store, StoreError};

/// Rows per statement.
pub const DEFAULT_BATCH: i64 = 1_000;
/// Pause between two statements of a pass.
pub const DEFAULT_PAUSE: Duration = Duration::from_millis(20);
/// Time between two passes of `serve --retention`.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(600);

/// What `serve --retention` deletes, and how it paces itself.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Ended executions that completed longer ago than this are deleted.
    pub older_than: Duration,
    pub batch: i64,
    pub pause: Duration,
    pub every: Duration,
}

impl Retention {
    pub fn new(older_than: Duration) -> Retention {
        Retention {
            older_than,
            batch: DEFAULT_BATCH,
            pause: DEFAULT_PAUSE,
            every: DEFAULT_EVERY,
        }
    }
}

/// What one pass deleted, and how long its statements took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub executions: u64,
    pub logs: u64,
    /// Statements run (the last one short, or empty).
    pub batches: u64,
    /// The longest single statement.
    pub longest_batch: Duration,
    /// The whole pass, pauses included.
    pub took: Duration,
}

/// An age on the command line (`30d`, `12h`, `1w 2d`: humantime), more than zero.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not an age ({e}): use a number and a unit, e.g. `30d`, `12h`, `90m`")
    })?;
    if age.is_zero() {
        return Err(format!("`{s}`: the age must be more than zero"));
    }
    Ok(age)
}

/// The instant before which an execution must have completed to be deleted.
pub fn cutoff(now: DateTime<Utc>, older_than: Duration) -> DateTime<Utc> {
    let age = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    now.checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// One pass: batches of `batch` rows with `pause` between them until a batch comes
/// back short, or `stop` turns true (between batches). `on_batch` sees each batch's
/// counts as it is committed.
pub async fn prune(
    store: &Store,
    cutoff: DateTime<Utc>,
    batch: i64,
    pause: Duration,
    stop: &mut watch::Receiver<bool>,
    mut on_batch: impl FnMut(Pruned),
) -> Result<PruneReport, StoreError> {
    let batch = batch.max(1);
    let began = Instant::now();
    let mut report = PruneReport::default();
    loop {
        let t = Instant::now();
        let pruned = store.prune_batch(cutoff, batch).await?;
        report.longest_batch = report.longest_batch.max(t.elapsed());
        report.batches += 1;
        report.executions += pruned.executions;
        report.logs += pruned.logs;
        on_batch(pruned);
        if pruned.executions < batch as u64 || *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    report.took = began.elapsed();
    Ok(report)
}

/// `serve --retention`: a pass now and every `cfg.every`, until `stop` turns true.
pub async fn run(
    store: Store,
    cfg: Retention,
    metrics: Option<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(older_than = %humantime::format_duration(cfg.older_than), every = %humantime::format_duration(cfg.every), "retention: deleting ended executions older than this");
    loop {
        let cut = cutoff(Utc::now(), cfg.older_than);
        let counted = |p: Pruned| {
            if let Some(m) = &metrics {
                m.retention_deleted(p.executions);
            }
        };
        match prune(&store, cut, cfg.batch, cfg.pause, &mut stop, counted).await {
            Ok(r) if r.executions > 0 => tracing::info!(
                executions = r.executions,
                logs = r.logs,
                batches = r.batches,
                longest_batch_ms = r.longest_batch.as_millis() as u64,
                took_ms = r.took.as_millis() as u64,
                "retention: deleted ended executions and their logs"
            ),
            Ok(_) => tracing::debug!("retention: nothing to delete"),
            Err(e) => {
                store.count_error();
                tracing::warn!(error = %e, "retention: a delete failed; trying again at the next pass");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_need_a_unit_and_must_be_positive() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("1w 2d"), Ok(Duration::from_secs(9 * 86_400)));
        let e = parse_age("forever").unwrap_err();
        assert!(e.starts_with("`forever` is not an age ("), "{e}");
        assert!(e.contains("e.g. `30d`"), "{e}");
        assert!(parse_age("30").unwrap_err().contains("time unit needed"));
        assert_eq!(
            parse_age("0s").unwrap_err(),
            "`0s`: the age must be more than zero"
        );
    }

    #[test]
    fn the_cutoff_is_the_age_before_now_and_saturates() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            cutoff(now, Duration::from_secs(30 * 86_400)).to_rfc3339(),
            "2026-11-05T12:00:00+00:00"
        );
        assert_eq!(cutoff(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }
}
