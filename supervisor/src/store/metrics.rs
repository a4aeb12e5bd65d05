//! Daily metrics: a batch's executions summed in Rust per (day, organization, workflow),
//! then added to `daily_metrics` with one upsert.
//!
//! Each execution counts in its workflow's row and in its organization's total row
//! (`workflow_id` 0); one that names no workflow (a rejected request) counts in the total
//! only. Organization 0 stands for "no organization". ROI (time saved, value) counts on
//! success only. Keys are upserted in sorted order, so two supervisors adding to the same
//! rows lock them in the same order and cannot deadlock each other.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::outcome::Status;
use crate::store::StoreError;

/// A `daily_metrics` primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricsKey {
    pub day: NaiveDate,
    /// 0: no organization.
    pub org_id: i64,
    /// 0: the organization's total.
    pub workflow_id: i64,
}

/// What a batch adds to one `daily_metrics` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsDelta {
    pub success: i64,
    pub failed: i64,
    pub timeout: i64,
    pub cancelled: i64,
    pub crashed: i64,
    pub total_duration_ms: f64,
    pub total_cpu_seconds: f64,
    pub max_peak_memory_bytes: i64,
    pub time_saved_seconds: f64,
    pub value: f64,
}

/// One committed execution, as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub day: NaiveDate,
    pub org_id: Option<i64>,
    pub workflow_id: Option<i64>,
    pub status: Status,
    pub duration_ms: f64,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: i64,
    /// The workflow's ROI per success (ignored unless `status` is success).
    pub time_saved_seconds: f64,
    pub value: f64,
}

impl MetricsDelta {
    fn add(&mut self, s: &Sample) {
        match s.status {
            Status::Success => self.success += 1,
            Status::Failed => self.failed += 1,
            Status::Timeout => self.timeout += 1,
            Status::Cancelled => self.cancelled += 1,
            Status::Crashed => self.crashed += 1,
        }
        self.total_duration_ms += finite(s.duration_ms);
        self.total_cpu_seconds += finite(s.cpu_seconds);
        self.max_peak_memory_bytes = self.max_peak_memory_bytes.max(s.peak_memory_bytes);
        if s.status == Status::Success {
            self.time_saved_seconds += finite(s.time_saved_seconds);
            self.value += finite(s.value);
        }
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// A batch's metrics, summed per key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyMetrics {
    rows: BTreeMap<MetricsKey, MetricsDelta>,
}

impl DailyMetrics {
    pub fn new() -> DailyMetrics {
        DailyMetrics::default()
    }

    /// Count one execution in its workflow's row and its organization's total.
    pub fn add(&mut self, s: &Sample) {
        let org_id = s.org_id.unwrap_or(0);
        let total = MetricsKey {
            day: s.day,
            org_id,
            workflow_id: 0,
        };
        self.rows.entry(total).or_default().add(s);
        if let Some(workflow_id) = s.workflow_id.filter(|&w| w != 0) {
            let key = MetricsKey {
                day: s.day,
                org_id,
                workflow_id,
            };
            self.rows.entry(key).or_default().add(s);
        }
    }

    #[cfg(test)]
    pub fn rows(&self) -> impl Iterator<Item = (&MetricsKey, &MetricsDelta)> {
        self.rows.iter()
    }

    /// Add every row to `daily_metrics` in one statement (inside the caller's
    /// transaction).
    pub(crate) async fn upsert(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let n = self.rows.len();
        let mut day = Vec::with_capacity(n);
        let mut org = Vec::with_capacity(n);
        let mut wf = Vec::with_capacity(n);
        let mut success = Vec::with_capacity(n);
        let mut failed = Vec::with_capacity(n);
        let mut timeout = Vec::with_capacity(n);
        let mut cancelled = Vec::with_capacity(n);
        let mut crashed = Vec::with_capacity(n);
        let mut duration = Vec::with_capacity(n);
        let mut cpu = Vec::with_capacity(n);
        let mut peak = Vec::with_capacity(n);
        let mut saved = Vec::with_capacity(n);
        let mut value = Vec::with_capacity(n);
        for (k, d) in &self.rows {
            day.push(k.day);
            org.push(k.org_id);
            wf.push(k.workflow_id);
            success.push(d.success);
            failed.push(d.failed);
            timeout.push(d.timeout);
            cancelled.push(d.cancelled);
            crashed.push(d.crashed);
            duration.push(d.total_duration_ms);
            cpu.push(d.total_cpu_seconds);
            peak.push(d.max_peak_memory_bytes);
            saved.push(d.time_saved_seconds);
            value.push(d.value);
        }
        sqlx::query(
            "INSERT INTO daily_metrics AS m (day, org_id, workflow_id, success, failed, timeout,
                                             cancelled, crashed, total_duration_ms,
                                             total_cpu_seconds, max_peak_memory_bytes,
                                             time_saved_seconds, value)
             SELECT * FROM UNNEST($1::date[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                                  $9::float8[], $10::float8[], $11::bigint[], $12::float8[],
                                  $13::float8[])
             ON CONFLICT (day, org_id, workflow_id) DO UPDATE SET
                 success = m.success + EXCLUDED.success,
                 failed = m.failed + EXCLUDED.failed,
                 timeout = m.timeout + EXCLUDED.timeout,
                 cancelled = m.cancelled + EXCLUDED.cancelled,
                 crashed = m.crashed + EXCLUDED.crashed,
                 total_duration_ms = m.total_duration_ms + EXCLUDED.total_duration_ms,
                 total_cpu_seconds = m.total_cpu_seconds + EXCLUDED.total_cpu_seconds,
                 max_peak_memory_bytes = GREATEST(m.max_peak_memory_bytes,
                                                  EXCLUDED.max_peak_memory_bytes),
                 time_saved_seconds = m.time_saved_seconds + EXCLUDED.time_saved_seconds,
                 value = m.value + EXCLUDED.value",
        )
        .bind(day)
        .bind(org)
        .bind(wf)
        .bind(success)
        .bind(failed)
        .bind(timeout)
        .bind(cancelled)
        .bind(crashed)
        .bind(duration)
        .bind(cpu)
        .bind(peak)
        .bind(saved)
        .bind(value)
        .execute(conn)
        .await
        .map_err(StoreError::query("add the daily metrics"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(status: Status, workflow_id: Option<i64>) -> Sample {
        Sample {
            day: NaiveDate::from_ymd_opt(2024, 5, 1).unwrap(),
            org_id: Some(7),
            workflow_id,
            status,
            duration_ms: 10.0,
            cpu_seconds: 0.5,
            peak_memory_bytes: 100,
            time_saved_seconds: 60.0,
            value: 2.0,
        }
    }

    #[test]
    fn counts_in_workflow_and_total_rows_with_roi_on_success_only() {
        let mut m = DailyMetrics::new();
        m.add(&sample(Status::Success, Some(3)));
        m.add(&sample(Status::Failed, Some(3)));
        m.add(&sample(Status::Failed, None));
        let rows: Vec<_> = m.rows().collect();
        assert_eq!(rows.len(), 2);
        let (total_key, total) = rows[0];
        assert_eq!(total_key.workflow_id, 0);
        assert_eq!((total.success, total.failed), (1, 2));
        assert_eq!(total.time_saved_seconds, 60.0);
        let (_, wf) = rows[1];
        assert_eq!((wf.success, wf.failed), (1, 1));
        assert_eq!(wf.value, 2.0);
        assert_eq!(wf.total_duration_ms, 20.0);
    }
}
