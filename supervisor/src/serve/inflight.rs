//! What the main loop remembers about each execution between dispatch and its end:
//! where it came from (stream entry), what to account it to (workflow, org, ROI), and
//! the log lines it produced so far (written with its result, in one transaction).

use std::collections::HashMap;

use warden_protocol::Log;

use crate::intake::Completion;
use crate::outcome::{ExecutionId, ExecutionOutcome};
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
}

impl Meta {
    /// The writer's item for `outcome`, carrying its stream entry and the completion to
    /// publish once it is committed.
    pub fn into_completed(self, outcome: ExecutionOutcome, logs: Vec<Log>) -> Completed {
        let completion = Completion::from_outcome(&outcome);
        let mut c = Completed::new(outcome);
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
