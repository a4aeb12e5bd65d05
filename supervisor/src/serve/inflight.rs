//! What the main loop remembers about each execution between dispatch and its end:
//! where it came from (stream entry), what to account it to (workflow, org, ROI), and
//! the log lines it produced so far (written with its result, in one transaction).

use std::collections::HashMap;
use std::sync::Arc;

use warden_protocol::Log;

use crate::intake::Completion;
use crate::outcome::{ExecutionId, ExecutionOutcome};
use crate::retry_policy::RetryPolicy;
use crate::store::Completed;

/// Per-execution facts the writer needs besides the outcome.
#[derive(Debug, Clone)]
pub struct Meta {
    pub stream_id: String,
    pub workflow_id: Option<i64>,
    pub org_id: Option<i64>,
    pub workflow_name: String,
    /// The organization's name (for the metrics' labels).
    pub org: Option<String>,
    pub caller: Option<String>,
    pub time_saved_seconds: f64,
    pub value: f64,
    /// The attempt `begin_batch` gave this run (`None`: never begun).
    pub attempt: Option<i32>,
    /// The retry policy it runs under (`None`: no retries).
    pub retry: Option<Arc<RetryPolicy>>,
    /// Its deadline (how long its start mark is worth keeping: crate::serve::publisher).
    pub timeout: std::time::Duration,
    /// Whether a worker started it (otherwise it waits in the pool's queue).
    pub started: bool,
}

impl Meta {
    /// The writer's item for `outcome`, carrying its stream entry and the completion to
    /// publish once it is committed.
    pub fn into_completed(self, outcome: ExecutionOutcome, logs: Vec<Log>) -> Completed {
        let completion = Completion::from_outcome(&outcome);
        let retry_at = self.retry_at(&outcome, fastrand::f64);
        let mut c = Completed::new(outcome);
        c.retry_at = retry_at;
        c.completion = Some(completion);
        c.logs = logs;
        c.workflow_id = self.workflow_id;
        c.org_id = self.org_id;
        c.time_saved_seconds = self.time_saved_seconds;
        c.value = self.value;
        c.stream_id = Some(self.stream_id);
        c.workflow_name = Some(self.workflow_name);
        c.caller = self.caller;
        c.attempt = self.attempt;
        c
    }

    /// When the attempt after this one is due, if its policy retries how this attempt
    /// ended (`random`: the jitter's draw, in `[0, 1)`).
    pub fn retry_at(
        &self,
        outcome: &ExecutionOutcome,
        random: impl FnOnce() -> f64,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let (policy, attempt) = (self.retry.as_deref()?, self.attempt?);
        let error_type = outcome.error.as_ref().map(|e| e.error_type.as_str());
        let delay = policy.next_attempt(attempt, outcome.status, error_type, random)?;
        Some(chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
    }
}

/// The live log line that says an attempt failed and when the next is due (published
/// on the execution's log channel; not stored: the attempt's row says the same).
pub fn retry_note(c: &Completed, last_seq: Option<u32>) -> Option<Log> {
    let at = c.retry_at?;
    let attempt = c.attempt.unwrap_or(1);
    let o = &c.outcome;
    let how = match &o.error {
        Some(e) => format!("{} ({}: {})", o.status, e.error_type, e.message),
        None => o.status.to_string(),
    };
    Some(Log {
        execution_id: o.execution_id.to_string(),
        seq: last_seq.map_or(0, |s| s.saturating_add(1)),
        level: warden_protocol::LogLevel::Warning,
        message: format!(
            "attempt {attempt} ended {how}; attempt {} is due at {}",
            attempt + 1,
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        timestamp_us: chrono::Utc::now().timestamp_micros(),
    })
}

#[derive(Debug, Default)]
pub struct Inflight {
    map: HashMap<ExecutionId, (Meta, Vec<Log>)>,
    /// Intake places held per execution id: one per dispatch, given back by the pool's
    /// one end of that dispatch. Usually 1; more when the same id was dispatched again
    /// while it ran (its entry reclaimed), whose ends find no `map` entry left.
    places: HashMap<ExecutionId, usize>,
    /// Executions whose stream entry a peer took over while this supervisor's
    /// heartbeat was gone: their outcome is dropped (neither committed nor
    /// acknowledged), since the peer runs them again.
    lost: std::collections::HashSet<ExecutionId>,
}

impl Inflight {
    /// Takes over one intake place for this dispatch of `id`.
    pub fn insert(&mut self, id: ExecutionId, meta: Meta) {
        *self.places.entry(id.clone()).or_default() += 1;
        self.map.insert(id, (meta, Vec::new()));
    }

    /// One end of a dispatch of `id`: whether it held a place (to give back).
    pub fn release_place(&mut self, id: &ExecutionId) -> bool {
        match self.places.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.places.remove(id);
                true
            }
            None => false,
        }
    }

    /// Keeps a log line for its execution (lines for unknown ids are dropped: the
    /// execution already ended).
    pub fn log(&mut self, log: Log) {
        if let Some((_, logs)) = self.map.get_mut(log.execution_id.as_str()) {
            logs.push(log);
        }
    }

    /// A worker started `id`: its facts, if it is in flight.
    pub fn mark_started(&mut self, id: &ExecutionId) -> Option<&Meta> {
        let (meta, _) = self.map.get_mut(id)?;
        meta.started = true;
        Some(meta)
    }

    /// How many executions in flight wait in the pool's queue (not started yet).
    pub fn queued(&self) -> usize {
        self.map.values().filter(|(m, _)| !m.started).count()
    }

    pub fn remove(&mut self, id: &ExecutionId) -> Option<(Meta, Vec<Log>)> {
        self.map.remove(id)
    }

    /// Marks the executions in flight from these stream entries as lost to a peer;
    /// returns their ids (to kill them).
    pub fn mark_lost(&mut self, stream_ids: &[String]) -> Vec<ExecutionId> {
        let taken: std::collections::HashSet<&str> =
            stream_ids.iter().map(String::as_str).collect();
        let ids: Vec<ExecutionId> = self
            .map
            .iter()
            .filter(|(_, (m, _))| taken.contains(m.stream_id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        self.lost.extend(ids.iter().cloned());
        ids
    }

    /// Whether `id` was lost to a peer (forgetting it: asked once, at its end).
    pub fn take_lost(&mut self, id: &ExecutionId) -> bool {
        self.lost.remove(id)
    }

    /// The organization of an execution in flight (`Some(None)`: it has none; `None`:
    /// not in flight). By [`ExecutionId`], or by the `&str` an SDK request carries.
    pub fn org_id<Q>(&self, id: &Q) -> Option<Option<i64>>
    where
        ExecutionId: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(id).map(|(m, _)| m.org_id)
    }

    pub fn contains(&self, id: &ExecutionId) -> bool {
        self.map.contains_key(id)
    }

    pub fn ids(&self) -> Vec<ExecutionId> {
        self.map.keys().cloned().collect()
    }

    pub fn stream_ids(&self) -> Vec<String> {
        self.map
            .values()
            .map(|(m, _)| m.stream_id.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Nothing in flight and no place held (a dispatch still running somewhere keeps
    /// its place until its end arrives).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.places.is_empty() && self.lost.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Status;
    use crate::retry_policy::RetryPolicy;

    fn meta(attempt: i32, retries: u32) -> Meta {
        Meta {
            stream_id: "1-0".into(),
            workflow_id: Some(1),
            org_id: None,
            org: None,
            workflow_name: "wf".into(),
            caller: None,
            time_saved_seconds: 0.0,
            value: 0.0,
            attempt: Some(attempt),
            retry: (retries > 0).then(|| {
                Arc::new(RetryPolicy {
                    retries,
                    backoff_base_ms: 1_000,
                    backoff_cap_ms: 1_000,
                    ..RetryPolicy::default()
                })
            }),
            timeout: std::time::Duration::ZERO,
            started: false,
        }
    }

    fn failed() -> ExecutionOutcome {
        ExecutionOutcome::not_run(&"e1".into(), Status::Failed, "ValueError", "boom")
    }

    #[test]
    fn a_failed_attempt_with_retries_left_is_due_again_within_the_ceiling() {
        let before = chrono::Utc::now();
        let at = meta(1, 2).retry_at(&failed(), || 0.5).expect("retried");
        let wait = (at - before).num_milliseconds();
        assert!((450..=600).contains(&wait), "{wait} ms");
        let item = meta(1, 2).into_completed(failed(), Vec::new());
        assert!(item.retry_at.is_some());
        let note = retry_note(&item, Some(4)).expect("a live note");
        assert_eq!(note.seq, 5);
        assert!(note
            .message
            .starts_with("attempt 1 ended failed (ValueError: boom); attempt 2 is due at "));
    }

    #[test]
    fn the_last_attempt_and_a_cancel_are_not_retried() {
        assert_eq!(meta(3, 2).retry_at(&failed(), || 0.5), None);
        assert_eq!(meta(1, 0).retry_at(&failed(), || 0.5), None);
        let cancelled =
            ExecutionOutcome::not_run(&"e1".into(), Status::Cancelled, "Cancelled", "by a user");
        assert_eq!(meta(1, 2).retry_at(&cancelled, || 0.5), None);
        let item = meta(3, 2).into_completed(failed(), Vec::new());
        assert!(item.retry_at.is_none());
        assert!(retry_note(&item, None).is_none());
    }
}
