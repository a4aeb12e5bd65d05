//! [`FairQueue`]: the pool's queue of jobs waiting for a free slot. The most urgent
//! queue first ([`Job::priority`], 0 first); within one priority, organizations take
//! turns, one job each, and each organization's jobs keep their order. So the jobs the
//! reader took ahead of the workers (its prefetch, dozens per worker) do not make another
//! organization's lone execution, or an urgent one, wait behind all of them
//! (crate::intake::lanes explains the rest of fair intake).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::outcome::{ExecutionId, Job};

/// One priority's organizations in turn.
#[derive(Default)]
struct Turns {
    /// Organizations with jobs, the next to be served first.
    order: VecDeque<Option<String>>,
    jobs: HashMap<Option<String>, VecDeque<Job>>,
}

#[derive(Default)]
pub(super) struct FairQueue {
    by_priority: BTreeMap<u32, Turns>,
    len: usize,
}

impl FairQueue {
    pub(super) fn push_back(&mut self, job: Job) {
        let turns = self.by_priority.entry(job.priority).or_default();
        let lane = turns.jobs.entry(job.org.clone()).or_default();
        if lane.is_empty() {
            turns.order.push_back(job.org.clone());
        }
        lane.push_back(job);
        self.len += 1;
    }

    /// The job [`FairQueue::pop_front`] would return.
    pub(super) fn front(&self) -> Option<&Job> {
        let turns = self.by_priority.values().next()?;
        let org = turns.order.front()?;
        turns.jobs.get(org)?.front()
    }

    /// The next job: the most urgent priority's next organization's oldest job; that
    /// organization then goes to the back of the turn.
    pub(super) fn pop_front(&mut self) -> Option<Job> {
        let mut entry = self.by_priority.first_entry()?;
        let turns = entry.get_mut();
        let org = turns.order.pop_front()?;
        let lane = turns.jobs.get_mut(&org)?;
        let job = lane.pop_front();
        if lane.is_empty() {
            turns.jobs.remove(&org);
        } else {
            turns.order.push_back(org);
        }
        if turns.order.is_empty() {
            entry.remove();
        }
        self.len -= job.is_some() as usize;
        job
    }

    /// Takes the job of this execution out of the queue, wherever it is.
    pub(super) fn remove(&mut self, id: &ExecutionId) -> Option<Job> {
        let (&priority, org, pos) = self.by_priority.iter().find_map(|(p, turns)| {
            turns.jobs.iter().find_map(|(org, jobs)| {
                jobs.iter()
                    .position(|j| j.execution_id == *id)
                    .map(|pos| (p, org.clone(), pos))
            })
        })?;
        let turns = self.by_priority.get_mut(&priority)?;
        let lane = turns.jobs.get_mut(&org)?;
        let job = lane.remove(pos)?;
        if lane.is_empty() {
            turns.jobs.remove(&org);
            turns.order.retain(|o| *o != org);
            if turns.order.is_empty() {
                self.by_priority.remove(&priority);
            }
        }
        self.len -= 1;
        Some(job)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, org: &str, priority: u32) -> Job {
        Job {
            execution_id: id.into(),
            path: "t.py".into(),
            source: String::new(),
            function: "run".into(),
            params_json: "{}".into(),
            context_json: "{}".into(),
            timeout: std::time::Duration::from_secs(1),
            limits: None,
            modules_generation: 0,
            org: (!org.is_empty()).then(|| org.to_owned()),
            modules_manifest: None,
            priority,
        }
    }

    fn drain(q: &mut FairQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop_front())
            .map(|j| j.execution_id.to_string())
            .collect()
    }

    #[test]
    fn organizations_take_turns_and_keep_their_own_order() {
        let mut q = FairQueue::default();
        for i in 1..=4 {
            q.push_back(job(&format!("a{i}"), "a", 1));
        }
        q.push_back(job("b1", "b", 1));
        q.push_back(job("c1", "", 1));
        q.push_back(job("b2", "b", 1));
        assert_eq!(q.len(), 7);
        assert_eq!(q.front().unwrap().execution_id.as_str(), "a1");
        assert_eq!(drain(&mut q), ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        assert!(q.is_empty());
        assert!(q.pop_front().is_none());
    }

    #[test]
    fn a_more_urgent_job_goes_first_whatever_waits() {
        let mut q = FairQueue::default();
        for i in 1..=3 {
            q.push_back(job(&format!("d{i}"), "a", 1));
        }
        assert_eq!(q.pop_front().unwrap().execution_id.as_str(), "d1");
        q.push_back(job("urgent", "a", 0));
        q.push_back(job("bulk", "b", 2));
        assert_eq!(q.front().unwrap().execution_id.as_str(), "urgent");
        assert_eq!(drain(&mut q), ["urgent", "d2", "d3", "bulk"]);
    }

    #[test]
    fn removing_a_job_keeps_the_rest_in_turn() {
        let mut q = FairQueue::default();
        q.push_back(job("a1", "a", 1));
        q.push_back(job("b1", "b", 1));
        q.push_back(job("a2", "a", 1));
        q.push_back(job("x", "x", 0));
        assert_eq!(q.remove(&"b1".into()).unwrap().execution_id.as_str(), "b1");
        assert!(q.remove(&"b1".into()).is_none());
        assert_eq!(q.remove(&"x".into()).unwrap().execution_id.as_str(), "x");
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), ["a1", "a2"]);
    }
}
