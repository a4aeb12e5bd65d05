//! The reader task: takes stream entries as worker slots free up and turns a batch of
//! them into dispatchable jobs with a fixed number of round trips per *batch*:
//!
//! 1. one `XREADGROUP` (or, about once a second, a takeover pass that claims the
//!    entries of consumers whose heartbeat is gone: crate::intake::liveness; or, at
//!    start-up and after a failed read or a heartbeat lapse, this consumer's own
//!    pending entries that it does not hold: [`Held`]). No read while this
//!    supervisor's own heartbeat is lapsing;
//! 2. one query loading every workflow the batch names;
//! 3. one `MGET` of cancel markers (cancelled while still queued: never run);
//! 4. one statement recording the batch `running` (and the event deliveries it starts),
//!    which also says which ids are already finished (a replay after a crash) or
//!    duplicated;
//! 5. one `GET` of the module cache's generation, carried by every job of the batch (a
//!    wiped cache is refilled first: crate::modules::ModuleSync::check).
//!
//! `Reader::prepare` calls one function per step: `parse_entries` (what the read
//! brought), `cancel_markers` (3), `record_running` (2 and 4), `sort_by_workflow`,
//! `dead_letter`, `batch_context` (configs, and 5), `settle` (jobs, or entries answered
//! without running) and `hand_on` (records to the writer, answers to the acker). Those
//! that decide from plain data alone are pure and unit-tested.
//!
//! Entries that cannot run (malformed, unknown workflow) are dead-lettered with the
//! reason and recorded `failed` through the writer, so they are acknowledged only
//! after that row is committed, like any other outcome. Entries answered without
//! running anything (already done, duplicates) go straight to the acker's queue.
//!
//! **Stopping.** Every wait here gives way to the stop signal. Before the batch is
//! recorded `running` the reader just returns (what it read stays pending in the
//! stream, for another supervisor); after, it hands the batch's jobs on unfinished
//! (no config, no module check), and the daemon, draining, gives them back without
//! running them. While PostgreSQL is away the reader retries the batch it holds and
//! reads nothing new.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};

use super::held::Held;
use super::inflight::Meta;
use super::places::Places;
use crate::intake::liveness::TAKEOVER_EVERY;
use crate::intake::{self, Completion, Done, Entry, ExecutionRequest, Intake, Liveness};
use crate::outcome::{ExecutionId, ExecutionOutcome, Job, Status};
use crate::store::{
    Backoff, Begin, Completed, NewExecution, Store, Workflow, WorkflowKey, WriterHandle,
};

/// One execution ready for the pool, with what the writer will need afterwards.
#[derive(Debug)]
pub struct Dispatch {
    pub job: Job,
    pub meta: Meta,
}

pub struct Reader {
    pub intake: Intake,
    pub store: Store,
    pub writer: WriterHandle,
    /// Entries read and not yet acknowledged (see [`Held`]).
    pub held: Held,
    /// The acker's queue for entries acknowledged without a commit of their own.
    pub direct_acks: mpsc::UnboundedSender<Vec<Done>>,
    /// Config for the executions' contexts; event deliveries.
    pub sdk: crate::sdk::Sdk,
    /// The module cache, checked once per batch.
    pub modules: crate::modules::ModuleSync,
    /// The free places (worker or prefetch), with the probes' overdraft.
    pub places: Places,
    /// See [`crate::serve::ServeConfig::read_linger`].
    pub read_linger: Duration,
    pub out: mpsc::Sender<Vec<Dispatch>>,
    pub consumer: String,
    /// This supervisor's heartbeat: no work is taken while it is not live.
    pub liveness: watch::Receiver<Liveness>,
    /// Entries taken over from dead supervisors, for the report.
    pub taken_over: Arc<AtomicU64>,
    pub read_block: Duration,
    /// The queues this supervisor serves, in priority order, as given to the take
    /// script (crate::intake::lanes).
    pub queues: Arc<[String]>,
    /// While gathering under load, how often to look for work of lanes that have too
    /// little here (see [`crate::serve::ServeConfig::fair_probe`]).
    pub fair_probe: Duration,
    /// A lane holding this many entries here has enough: probes skip it (the workers).
    pub enough_per_lane: usize,
    pub default_timeout: Duration,
    pub stop: watch::Receiver<bool>,
}

impl Reader {
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        // Own pending entries this supervisor does not hold: at start-up, what its
        // previous incarnation left; later, reads whose reply was lost.
        let mut check_orphans = true;
        let mut lapses = 0;
        // The first pass runs as soon as there is a free place.
        let mut last_takeover: Option<Instant> = None;
        let mut more_to_take = false;
        // When the last read brought more than one entry, work is arriving faster than
        // one at a time: gather before reading again (see `gather`).
        let mut busy_since: Option<Instant> = None;
        loop {
            // A probe takes the work of lanes that have too little here while one lane's
            // backlog keeps the places full: another organization's lone request, or a
            // more urgent queue's, is not held up by the gathering, nor by the places
            // the backlog holds (a probe may overdraw them: crate::serve::places).
            let mut probe = false;
            if let Some(read_at) = busy_since {
                let gathered = gather(
                    &self.places.permits,
                    self.places.capacity(),
                    read_at + self.read_linger,
                );
                tokio::select! {
                    _ = gathered => {}
                    _ = tokio::time::sleep(self.fair_probe) => probe = true,
                    _ = self.stop.wait_for(|s| *s) => return,
                }
            } else if self.places.all_taken() {
                tokio::select! {
                    _ = self.places.permits.acquire() => {}
                    _ = tokio::time::sleep(self.fair_probe) => probe = true,
                    _ = self.stop.wait_for(|s| *s) => return,
                }
            }
            if !self.liveness.borrow().live {
                // Peers may soon see this supervisor dead: take nothing until its
                // heartbeat is refreshed again.
                tokio::select! {
                    _ = self.liveness.wait_for(|l| l.live) => {}
                    _ = self.stop.wait_for(|s| *s) => return,
                }
            }
            let taken = if probe {
                self.places.for_probe(self.enough_per_lane)
            } else {
                let taken = tokio::select! {
                    t = self.places.for_read() => t,
                    _ = self.stop.wait_for(|s| *s) => return,
                };
                let Some(taken) = taken else { return };
                taken
            };
            let n = taken.n;
            if n == 0 {
                // Nothing free for a probe, or what came back paid the overdraft.
                continue;
            }
            let now = *self.liveness.borrow();
            if now.lapses > lapses {
                lapses = now.lapses;
                check_orphans = true;
            }
            let reading = async {
                if probe {
                    let skip = self.held.crowded(self.enough_per_lane);
                    self.intake
                        .take(n, &self.queues, &skip, Duration::ZERO)
                        .await
                } else if check_orphans {
                    check_orphans = false;
                    match self.intake.recover_own(usize::MAX).await {
                        Ok(mine) => {
                            let mut orphans = self.held.orphans(mine);
                            if orphans.len() > n {
                                orphans.truncate(n);
                                check_orphans = true;
                            }
                            if orphans.is_empty() {
                                self.intake
                                    .take(n, &self.queues, &[], self.read_block)
                                    .await
                            } else {
                                tracing::info!(count = orphans.len(), "running entries pending on this consumer that it did not hold (left by its previous incarnation, or a read whose reply was lost)");
                                Ok(orphans)
                            }
                        }
                        Err(e) => {
                            check_orphans = true;
                            Err(e)
                        }
                    }
                } else if more_to_take
                    || last_takeover.is_none_or(|t| t.elapsed() >= TAKEOVER_EVERY)
                {
                    last_takeover = Some(Instant::now());
                    match self.intake.take_over(n).await {
                        Ok(t) => {
                            more_to_take = t.more;
                            self.taken_over
                                .fetch_add(t.entries.len() as u64, Ordering::Relaxed);
                            if t.entries.is_empty() {
                                self.intake
                                    .take(n, &self.queues, &[], self.read_block)
                                    .await
                            } else {
                                Ok(t.entries)
                            }
                        }
                        Err(e) => {
                            more_to_take = false;
                            Err(e)
                        }
                    }
                } else {
                    self.intake
                        .take(n, &self.queues, &[], self.read_block)
                        .await
                }
            };
            let mut stop = self.stop.clone();
            let Some(read) = or_stop(&mut stop, reading).await else {
                // Whatever the read took stays pending in the stream.
                self.places.give_back(taken, n);
                return;
            };
            match read {
                Err(e) => {
                    // A read may have been delivered and its reply lost: look for it.
                    check_orphans = true;
                    self.places.give_back(taken, n);
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot read the execution stream");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.wait_for(|s| *s) => return,
                    }
                }
                Ok(entries) => {
                    self.held.insert(&entries);
                    backoff.reset();
                    if *self.stop.borrow() {
                        // Left pending: a live supervisor (or this one, restarted) takes
                        // them. Their places were never used.
                        self.places.give_back(taken, n);
                        return;
                    }
                    if !probe {
                        busy_since = (entries.len() > 1).then(Instant::now);
                    }
                    let dispatches = self.prepare(entries).await;
                    self.places.give_back(taken, n - dispatches.len().min(n));
                    if !dispatches.is_empty() {
                        if let Err(unsent) = self.out.send(dispatches).await {
                            // Nobody runs them (the main loop is gone): left pending.
                            self.places.permits.add_permits(unsent.0.len());
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Turns a batch of entries into jobs; everything that will not run is recorded or
    /// acknowledged here. The module header's steps, one function each.
    async fn prepare(&mut self, entries: Vec<Entry>) -> Vec<Dispatch> {
        if entries.is_empty() {
            return Vec::new();
        }
        let Parsed {
            requests,
            dead,
            mut records,
            mut ack_only,
        } = parse_entries(&entries);
        let refs: Vec<WorkflowKey> = requests.iter().map(|(_, r)| store_ref(r)).collect();
        // Step 3 (cancel markers) comes first: step 2's transaction needs them.
        let Some(cancelled) = self.cancel_markers(&requests).await else {
            return Vec::new();
        };
        let Some((workflows, begins)) = self.record_running(&requests, &refs, &cancelled).await
        else {
            // Stopped before the batch was recorded: nothing of it has begun.
            return Vec::new();
        };
        // From here the batch is recorded `running`: when the stop signal comes, its
        // jobs still go to the daemon (which gives them back), unprepared.
        let Sorted {
            runnable,
            unknown,
            cancelled,
        } = sort_by_workflow(requests, refs, cancelled, &workflows);
        records.extend(cancelled);
        records.extend(
            unknown
                .iter()
                .map(|(sid, req, r)| unknown_record(sid, req, r)),
        );
        let mut stopped = !self.dead_letter(&entries, &dead, &unknown).await;

        // The SDK's part: the configs of the batch's organizations (one Redis read).
        let runs: Vec<Option<i64>> = runnable
            .iter()
            .zip(&begins)
            .filter(|(_, b)| matches!(b, Begin::Run { .. }))
            .map(|((_, _, wf), _)| wf.org_id)
            .collect();
        let mut configs = crate::sdk::cache::ConfigSnapshot::default();
        let mut modules = (0, None);
        if !stopped && !runs.is_empty() {
            match self.batch_context(runs).await {
                Some((c, m)) => (configs, modules) = (c, m),
                None => stopped = true,
            }
        }
        let (out, answered) = settle(
            runnable,
            begins,
            self.default_timeout,
            &configs,
            modules,
            &self.queues,
        );
        ack_only.extend(answered);
        self.hand_on(records, ack_only, stopped).await;
        out
    }

    /// Step 3: one `MGET` of the batch's cancel markers (all `false` if Redis does not
    /// answer). `None`: the stop signal came first.
    async fn cancel_markers(&self, requests: &[(String, ExecutionRequest)]) -> Option<Vec<bool>> {
        let ids: Vec<&str> = requests
            .iter()
            .map(|(_, r)| r.execution_id.as_str())
            .collect();
        let mut stop = self.stop.clone();
        let cancelled = or_stop(&mut stop, self.intake.is_cancelled(&ids)).await?;
        Some(cancelled.unwrap_or_else(|_| vec![false; ids.len()]))
    }

    /// Steps 2 and 4, one transaction: load the batch's workflows, and record the
    /// runnable ones (a workflow found, not cancelled) running, in the order of
    /// `requests`. `None`: the stop signal came first.
    async fn record_running(
        &self,
        requests: &[(String, ExecutionRequest)],
        refs: &[WorkflowKey],
        cancelled: &[bool],
    ) -> Option<(HashMap<WorkflowKey, Workflow>, Vec<Begin>)> {
        let consumer = self.consumer.clone();
        self.prepare_in_db(refs, |wfs| {
            requests
                .iter()
                .zip(refs)
                .zip(cancelled)
                .filter_map(|(((sid, req), r), was_cancelled)| {
                    let wf = wfs.get(r).filter(|_| !*was_cancelled)?;
                    Some(NewExecution {
                        id: req.execution_id.clone(),
                        workflow_id: Some(wf.id),
                        workflow_name: wf.name.clone(),
                        org_id: wf.org_id,
                        caller: req.caller.clone(),
                        params_json: req.params_json.clone(),
                        queued_at: req.enqueued_at.or_else(|| stream_time(sid)),
                        supervisor: consumer.clone(),
                        stream_id: Some(sid.clone()),
                        delivery_id: req.delivery_id.clone(),
                        workflow_version: Some(wf.version),
                        workflow_hash: Some(wf.source_hash.clone()),
                        timeout_ms: req
                            .timeout
                            .map(|t| t.as_millis().min(i32::MAX as u128) as i32),
                        retries: req.retries.map(|r| r as i32),
                        carrier_attempt: req.attempt,
                        not_before: req.not_before,
                        queue: req.queue.clone(),
                    })
                })
                .collect()
        })
        .await
    }

    /// Dead letters for the malformed entries and those naming no known workflow, with
    /// the reason (one Redis call). `false`: the stop signal came first.
    async fn dead_letter(
        &self,
        entries: &[Entry],
        dead: &[(intake::InvalidEntry, &[intake::entry::Field])],
        unknown: &[(String, ExecutionRequest, WorkflowKey)],
    ) -> bool {
        let mut dead_fields: Vec<(intake::InvalidEntry, Vec<intake::entry::Field>)> =
            dead.iter().map(|(r, f)| (r.clone(), f.to_vec())).collect();
        let by_sid: HashMap<&str, &Entry> =
            entries.iter().map(|e| (e.stream_id.as_str(), e)).collect();
        for (sid, req, _) in unknown {
            if let Some(e) = by_sid.get(sid.as_str()) {
                dead_fields.push((
                    intake::InvalidEntry {
                        stream_id: sid.clone(),
                        execution_id: Some(req.execution_id.clone()),
                        reason: "unknown workflow".into(),
                    },
                    e.fields.clone(),
                ));
            }
        }
        if dead_fields.is_empty() {
            return true;
        }
        let batch: Vec<(&intake::InvalidEntry, &[intake::entry::Field])> =
            dead_fields.iter().map(|(r, f)| (r, f.as_slice())).collect();
        let mut stop = self.stop.clone();
        match or_stop(&mut stop, self.intake.dead_letter_batch(&batch)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not write dead letters (the executions are still recorded failed)")
            }
            None => return false,
        }
        true
    }

    /// What every job of the batch carries besides its request: the configs of the
    /// organizations that run (one Redis read), and step 5, the module cache's
    /// generation and manifest (one GET; templates behind it reload before running if
    /// it moved). `None`: the stop signal came first.
    async fn batch_context(
        &self,
        orgs: Vec<Option<i64>>,
    ) -> Option<(crate::sdk::cache::ConfigSnapshot, ModulesOfBatch)> {
        let mut stop = self.stop.clone();
        let configs = or_stop(&mut stop, self.sdk.configs_for_batch(orgs)).await?;
        let generation = or_stop(&mut stop, self.modules.check()).await?;
        Some((configs, (generation, Some(self.modules.manifest()))))
    }

    /// Hands on what will not run: its `failed` / `cancelled` records to the writer (so
    /// they are acknowledged after commit), unless stopped (their entries then stay
    /// pending, for another supervisor), and what is answered without a commit to the
    /// acker.
    async fn hand_on(&self, records: Vec<Completed>, ack_only: Vec<Done>, mut stopped: bool) {
        let mut stop = self.stop.clone();
        for item in records {
            if stopped {
                // Not recorded: their entries stay pending, for another supervisor.
                break;
            }
            match or_stop(&mut stop, self.writer.submit(item)).await {
                Some(Ok(())) => {}
                Some(Err(_)) => tracing::error!(
                    "the result writer stopped; entries stay pending and will be taken over"
                ),
                None => stopped = true,
            }
        }
        // Held until the acker has them acknowledged (see `acker::run`).
        if !ack_only.is_empty() && self.direct_acks.send(ack_only).is_err() {
            tracing::debug!("the acker stopped; those entries stay pending");
        }
    }

    /// [`Store::prepare_batch`], retried with back-off while the database is away (the
    /// entries stay pending in the stream meanwhile, so nothing is lost, and nothing new
    /// is read). `None`: the stop signal came first; whether a transaction in flight
    /// then committed is unknown, so its rows are left as they are (a supervisor that
    /// takes the entries over runs them as a next attempt).
    async fn prepare_in_db<F>(
        &self,
        refs: &[WorkflowKey],
        rows: F,
    ) -> Option<(HashMap<WorkflowKey, Workflow>, Vec<Begin>)>
    where
        F: Fn(&HashMap<WorkflowKey, Workflow>) -> Vec<NewExecution>,
    {
        let mut stop = self.stop.clone();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match or_stop(&mut stop, self.store.prepare_batch(refs, &rows)).await? {
                Ok((workflows, _, begins)) => return Some((workflows, begins)),
                Err(e) => {
                    self.store.count_error();
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot load the batch's workflows or record it running; retrying (intake paused)");
                    or_stop(&mut stop, tokio::time::sleep(wait)).await?;
                }
            }
        }
    }
}

/// `work`, unless the stop signal comes first (`None`).
async fn or_stop<F: std::future::Future>(
    stop: &mut watch::Receiver<bool>,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// Under load, waits until half of the reader's places are free again, so that the next
/// read (and its one transaction) covers many executions, but not past `until` (the last
/// read plus `read_linger`), so a slow trickle is not held back. The half still taken
/// keeps the workers fed meanwhile.
async fn gather(permits: &Semaphore, capacity: usize, until: Instant) {
    let half = (capacity / 2).max(1) as u32;
    tokio::select! {
        // Acquired only to learn that they are free; released at once.
        _ = permits.acquire_many(half) => {}
        _ = tokio::time::sleep_until(until.into()) => {}
    }
}

/// The module cache's generation and manifest every job of a batch carries.
type ModulesOfBatch = (u64, Option<Arc<warden_protocol::ModuleManifest>>);

/// Step 1's entries, sorted: the requests, the malformed ones (with their fields, for
/// the dead letters), the `failed` records of those that had an id, and the
/// acknowledgements of those that had none.
struct Parsed<'a> {
    requests: Vec<(String, ExecutionRequest)>,
    dead: Vec<(intake::InvalidEntry, &'a [intake::entry::Field])>,
    records: Vec<Completed>,
    ack_only: Vec<Done>,
}

fn parse_entries(entries: &[Entry]) -> Parsed<'_> {
    let mut parsed = Parsed {
        requests: Vec::with_capacity(entries.len()),
        dead: Vec::new(),
        records: Vec::new(),
        ack_only: Vec::new(),
    };
    for e in entries {
        match e.parse() {
            Ok(r) => parsed.requests.push((e.stream_id.clone(), r)),
            Err(rej) => parsed.dead.push((rej, e.fields.as_slice())),
        }
    }
    for (rej, _) in &parsed.dead {
        match &rej.execution_id {
            Some(id) => {
                let mut record = Completed::rejected(crate::store::Rejected {
                    id: id.clone(),
                    workflow_name: None,
                    org_id: None,
                    caller: None,
                    error_type: intake::messages::INVALID_REQUEST.into(),
                    message: rej.reason.clone(),
                    stream_id: Some(rej.stream_id.clone()),
                });
                record.completion = Completion::rejected(rej);
                parsed.records.push(record);
            }
            None => parsed.ack_only.push(Done::rejected(rej)),
        }
    }
    parsed
}

/// The batch's requests by what their workflow lookup and cancel marker say.
struct Sorted {
    runnable: Vec<(String, ExecutionRequest, Workflow)>,
    unknown: Vec<(String, ExecutionRequest, WorkflowKey)>,
    /// `cancelled` records of those cancelled while still queued.
    cancelled: Vec<Completed>,
}

fn sort_by_workflow(
    requests: Vec<(String, ExecutionRequest)>,
    refs: Vec<WorkflowKey>,
    cancelled: Vec<bool>,
    workflows: &HashMap<WorkflowKey, Workflow>,
) -> Sorted {
    let mut sorted = Sorted {
        runnable: Vec::new(),
        unknown: Vec::new(),
        cancelled: Vec::new(),
    };
    for (((sid, req), r), was_cancelled) in requests.into_iter().zip(refs).zip(cancelled) {
        match workflows.get(&r) {
            None => sorted.unknown.push((sid, req, r)),
            Some(wf) if was_cancelled => {
                let meta = meta_for(&sid, &req, wf);
                let out = not_run(&req.execution_id, "cancelled before it started");
                sorted.cancelled.push(meta.into_completed(out, Vec::new()));
            }
            Some(wf) => sorted.runnable.push((sid, req, wf.clone())),
        }
    }
    sorted
}

/// The `failed` / `UnknownWorkflow` record of a request naming no active workflow,
/// with the completion to publish once it is committed.
fn unknown_record(sid: &str, req: &ExecutionRequest, r: &WorkflowKey) -> Completed {
    let reason = format!(
        "no active workflow {r}{}: push it with `warden workflow push`",
        req.org
            .as_deref()
            .map(|o| format!(" in organization {o}"))
            .unwrap_or_default()
    );
    let rej = intake::InvalidEntry {
        stream_id: sid.to_string(),
        execution_id: Some(req.execution_id.clone()),
        reason: reason.clone(),
    };
    let mut completion = Completion::rejected(&rej);
    if let Some(c) = completion.as_mut() {
        c.error_type = Some("UnknownWorkflow".into());
    }
    let mut record = Completed::rejected(crate::store::Rejected {
        id: req.execution_id.clone(),
        workflow_name: Some(r.to_string()),
        org_id: None,
        caller: req.caller.clone(),
        error_type: "UnknownWorkflow".into(),
        message: reason,
        stream_id: Some(sid.to_string()),
    });
    record.completion = completion;
    // A due attempt whose workflow was deactivated or deleted meanwhile: this ends the
    // waiting execution (otherwise it would wait, and be enqueued again, for ever).
    record.due_entry = req.attempt.is_some();
    record
}

/// What the batch's `running` statement said of each runnable request: a job to run
/// (with the batch's configs and module cache), or an entry answered without running
/// (already finished: its status is published; a duplicate: acknowledged only).
fn settle(
    runnable: Vec<(String, ExecutionRequest, Workflow)>,
    begins: Vec<Begin>,
    default_timeout: Duration,
    configs: &crate::sdk::cache::ConfigSnapshot,
    (modules_generation, modules_manifest): ModulesOfBatch,
    queues: &[String],
) -> (Vec<Dispatch>, Vec<Done>) {
    let mut out = Vec::new();
    let mut answered = Vec::new();
    for ((sid, req, wf), begin) in runnable.into_iter().zip(begins) {
        match begin {
            Begin::Run { attempt } => {
                let priority = priority_of(queues, req.queue_name());
                let mut d = dispatch(sid, req, &wf, attempt, default_timeout, configs);
                d.job.priority = priority;
                out.push(d)
            }
            Begin::AlreadyDone { status } => answered.push(Done::new(
                sid,
                Completion::new(req.execution_id.clone(), status),
            )),
            // Recorded `scheduled` (durably: see Store::prepare_batch): the entry's
            // work is done; the due-work poller starts it when it is due.
            Begin::Duplicate | Begin::Scheduled => answered.push(Done {
                stream_id: sid,
                completion: None,
            }),
            Begin::Conflict => {
                tracing::warn!(execution = %req.execution_id, stream_id = %sid, "execution id reused with other params: not run");
                answered.push(Done::new(sid, Completion::conflict(&req.execution_id)));
            }
        }
    }
    for d in &mut out {
        d.job.modules_generation = modules_generation;
        d.job.modules_manifest = modules_manifest.clone();
    }
    (out, answered)
}

/// An execution's deadline, resolved once, here: the request's, else its workflow's
/// default (when positive), else `--timeout`.
fn resolve_timeout(
    requested: Option<Duration>,
    workflow_default_ms: Option<i32>,
    default: Duration,
) -> Duration {
    requested
        .or(workflow_default_ms
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64)))
        .unwrap_or(default)
}

fn store_ref(r: &ExecutionRequest) -> WorkflowKey {
    match &r.workflow {
        intake::WorkflowRef::Id(id) => WorkflowKey::Id(*id),
        intake::WorkflowRef::Name(name) => WorkflowKey::Name {
            org: r.org.clone(),
            name: name.clone(),
        },
    }
}

fn meta_for(sid: &str, req: &ExecutionRequest, wf: &Workflow) -> Meta {
    Meta {
        stream_id: sid.to_string(),
        workflow_id: Some(wf.id),
        org_id: wf.org_id,
        workflow_name: wf.name.clone(),
        org: wf.org.clone(),
        caller: req.caller.clone(),
        time_saved_seconds: wf.time_saved_seconds,
        value: wf.value,
        attempt: None,
        retry: None,
        timeout: Duration::ZERO,
        started: false,
    }
}

/// The retry policy an execution runs under: its workflow's, with the request's
/// `retries` in place of the workflow's number. `None` when nothing is retried (no
/// allocation on the common path).
fn retry_policy_of(
    req: &ExecutionRequest,
    wf: &Workflow,
) -> Option<Arc<crate::retry_policy::RetryPolicy>> {
    let stored = wf.retry_policy.as_ref().map(|p| &p.0);
    if req.retries.is_none() && stored.is_none_or(|p| p.retries == 0) {
        return None;
    }
    let policy = crate::retry_policy::RetryPolicy::resolve(stored, req.retries);
    (policy.retries > 0).then(|| Arc::new(policy))
}

fn dispatch(
    sid: String,
    req: ExecutionRequest,
    wf: &Workflow,
    attempt: i32,
    default_timeout: Duration,
    configs: &crate::sdk::cache::ConfigSnapshot,
) -> Dispatch {
    let timeout = resolve_timeout(req.timeout, wf.default_timeout_ms, default_timeout);
    let context = json!({
        "execution_id": req.execution_id,
        "workflow": wf.name,
        "workflow_id": wf.id,
        "org": wf.org_id.map(|id| json!({"id": id, "name": wf.org})),
        "caller": req.caller,
        "attempt": attempt,
        "timeout_seconds": timeout.as_secs_f64(),
        "delivery_id": req.delivery_id,
    });
    let mut meta = meta_for(&sid, &req, wf);
    meta.attempt = Some(attempt);
    meta.retry = retry_policy_of(&req, wf);
    meta.timeout = timeout;
    Dispatch {
        job: Job {
            execution_id: req.execution_id,
            path: wf.path.clone(),
            source: wf.source.clone(),
            function: wf.function_name.clone(),
            params_json: req.params_json,
            context_json: crate::sdk::Sdk::context_json(
                &context.to_string(),
                configs,
                wf.org_id,
                wf.time_saved_seconds,
                wf.value,
            ),
            timeout,
            limits: None,
            modules_generation: 0,
            org: wf.org_id.map(|id| id.to_string()),
            modules_manifest: None,
            priority: 0,
        },
        meta,
    }
}

/// Where a queue stands among those served (0: the most urgent). Work of a queue not
/// served here (taken over from a dead peer that served it) comes last.
fn priority_of(queues: &[String], queue: &str) -> u32 {
    queues
        .iter()
        .position(|q| q == queue)
        .unwrap_or(queues.len()) as u32
}

/// When the client added the entry (to the stream directly; lane entries carry it).
fn stream_time(sid: &str) -> Option<SystemTime> {
    crate::intake::request::stream_id_time(sid)
}

fn not_run(id: &ExecutionId, why: &str) -> ExecutionOutcome {
    ExecutionOutcome::not_run(id, Status::Cancelled, "Cancelled", why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_the_requests_else_the_workflows_else_the_default() {
        let (s, d) = (Duration::from_secs, Duration::from_secs(60));
        assert_eq!(resolve_timeout(Some(s(5)), Some(9_000), d), s(5));
        assert_eq!(resolve_timeout(None, Some(9_000), d), s(9));
        assert_eq!(
            resolve_timeout(None, Some(0), d),
            d,
            "0: no workflow default"
        );
        assert_eq!(resolve_timeout(None, Some(-1), d), d);
        assert_eq!(resolve_timeout(None, None, d), d);
    }

    fn entry(sid: &str, fields: &[(&str, &str)]) -> Entry {
        Entry {
            stream_id: sid.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn request(id: &str, workflow: i64) -> ExecutionRequest {
        ExecutionRequest {
            execution_id: id.into(),
            workflow: intake::WorkflowRef::Id(workflow),
            params_json: "{}".into(),
            org: None,
            caller: None,
            timeout: None,
            delivery_id: None,
            retries: None,
            not_before: None,
            attempt: None,
            queue: None,
            enqueued_at: None,
        }
    }

    fn workflow(id: i64) -> Workflow {
        Workflow {
            id,
            org_id: Some(3),
            org: Some("acme".into()),
            name: format!("wf{id}"),
            path: "flows/wf.py".into(),
            function_name: "run".into(),
            source: "def run(): pass".into(),
            default_timeout_ms: Some(5_000),
            time_saved_seconds: 1.0,
            value: 2.0,
            updated_at: chrono::Utc::now(),
            version: 1,
            source_hash: "0".repeat(64),
            retry_policy: None,
        }
    }

    #[test]
    fn malformed_entries_are_recorded_failed_when_they_have_an_id_else_only_acknowledged() {
        let entries = [
            entry("1-0", &[("id", "e1"), ("workflow", "1")]),
            entry("2-0", &[("id", "e2")]),
            entry("3-0", &[("workflow", "1")]),
        ];
        let parsed = parse_entries(&entries);
        assert_eq!(parsed.requests.len(), 1);
        assert_eq!(parsed.requests[0].0, "1-0");
        assert_eq!(parsed.dead.len(), 2);
        assert_eq!(parsed.records.len(), 1);
        let record = &parsed.records[0];
        assert_eq!(record.outcome.execution_id, "e2");
        assert_eq!(record.outcome.status, Status::Failed);
        assert_eq!(record.stream_id.as_deref(), Some("2-0"));
        let completion = record.completion.as_ref().expect("a completion to publish");
        assert_eq!(completion.status, Status::Failed);
        assert_eq!(
            completion.error_type.as_deref(),
            Some(intake::messages::INVALID_REQUEST)
        );
        assert_eq!(parsed.ack_only.len(), 1);
        assert_eq!(parsed.ack_only[0].stream_id, "3-0");
        assert!(parsed.ack_only[0].completion.is_none());
    }

    #[test]
    fn requests_sort_into_runnable_cancelled_and_unknown() {
        let workflows = HashMap::from([(WorkflowKey::Id(1), workflow(1))]);
        let requests = vec![
            ("1-0".to_string(), request("run", 1)),
            ("2-0".to_string(), request("stop", 1)),
            ("3-0".to_string(), request("lost", 2)),
        ];
        let refs = requests.iter().map(|(_, r)| store_ref(r)).collect();
        let sorted = sort_by_workflow(requests, refs, vec![false, true, false], &workflows);
        assert_eq!(sorted.runnable.len(), 1);
        assert_eq!(sorted.runnable[0].1.execution_id, "run");
        assert_eq!(sorted.cancelled.len(), 1);
        let c = &sorted.cancelled[0];
        assert_eq!(c.outcome.status, Status::Cancelled);
        assert_eq!(c.stream_id.as_deref(), Some("2-0"));
        assert_eq!(
            c.completion.as_ref().map(|c| c.status),
            Some(Status::Cancelled)
        );
        assert_eq!(sorted.unknown.len(), 1);
        let (sid, req, r) = &sorted.unknown[0];
        let record = unknown_record(sid, req, r);
        assert_eq!(record.outcome.status, Status::Failed);
        assert_eq!(
            record.outcome.error.as_ref().map(|e| e.error_type.as_str()),
            Some("UnknownWorkflow")
        );
        let completion = record.completion.expect("a completion to publish");
        assert_eq!(completion.error_type.as_deref(), Some("UnknownWorkflow"));
    }

    #[test]
    fn begins_settle_into_jobs_and_answered_entries() {
        let runnable = vec![
            ("1-0".to_string(), request("new", 1), workflow(1)),
            ("2-0".to_string(), request("done", 1), workflow(1)),
            ("3-0".to_string(), request("copy", 1), workflow(1)),
        ];
        let begins = vec![
            Begin::Run { attempt: 2 },
            Begin::AlreadyDone {
                status: Status::Success,
            },
            Begin::Duplicate,
        ];
        let configs = crate::sdk::cache::ConfigSnapshot::default();
        let (out, answered) = settle(
            runnable,
            begins,
            Duration::from_secs(60),
            &configs,
            (7, None),
            &["critical".to_string(), "default".to_string()],
        );
        assert_eq!(out.len(), 1);
        // A request naming no queue is in `default`, the second served.
        assert_eq!(out[0].job.priority, 1);
        let d = &out[0];
        assert_eq!(d.job.execution_id, "new");
        assert_eq!(
            d.job.timeout,
            Duration::from_secs(5),
            "the workflow's default"
        );
        assert_eq!(d.job.modules_generation, 7);
        assert_eq!(d.job.org.as_deref(), Some("3"));
        assert_eq!(d.meta.stream_id, "1-0");
        assert_eq!(d.meta.attempt, Some(2));
        assert_eq!(answered.len(), 2);
        assert_eq!(answered[0].stream_id, "2-0");
        assert_eq!(
            answered[0].completion.as_ref().map(|c| c.status),
            Some(Status::Success)
        );
        assert_eq!(answered[1].stream_id, "3-0");
        assert!(answered[1].completion.is_none());
    }

    #[test]
    fn stream_ids_give_the_time_the_entry_was_added() {
        assert_eq!(
            stream_time("1700000000123-0"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(stream_time("nonsense"), None);
    }
}
