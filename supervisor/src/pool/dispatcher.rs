//! The pool's single owner: the queue, every slot's state, deadlines, cancellation,
//! finalisation, replacement of dead templates, and the drain on shutdown.
//!
//! It runs as one task. Callers talk to it through [`Pool`] (a cheap, cloneable handle);
//! template tasks report by [`TemplateEvent`]; results leave as [`PoolEvent`]s on the
//! channel given at start, in order per execution: `Started`, `Log`*, `Finished`.
//!
//! A slot's life (one template process at a time):
//!
//! ```text
//!  Starting ──hello──▶ Idle ──Execute──▶ Busy ──Ended──▶ Idle
//!     │                  │                 │ deadline/cancel: Kill child (fork) or
//!     │                  │                 │ the template (reuse); no Ended within
//!     │                  │                 │ kill_grace: kill the template
//!     └──────── Gone ────┴──────── Gone ───┴──▶ Down ──back-off──▶ Starting
//! ```
//!
//! Finalisation is driven by `Ended` (the last frame for an execution) or by the
//! template's death: whichever comes, the execution gets exactly one end event.
//!
//! The drain on shutdown: what is queued when it begins (or submitted during it) never
//! started and is handed back at once (`PoolEvent::Returned`); what runs may finish
//! until the drain's deadline, and what is still running then is killed and reported
//! `PoolEvent::Interrupted` (a second shutdown request moves the deadline to now).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use warden_protocol::{
    Ended, ErrorInfo, ExecutionResult, ExitKind, FromWorker, Isolation, Outcome, ToWorker,
};

use super::config::{PoolConfig, PoolError};
use super::template::{self, TemplateCmd, TemplateEvent};
use super::uids::{self, SlotIds};
use super::{firewall, posture};
use crate::outcome::{ExecutionOutcome, Job, PoolEvent, Status};

/// The error type of an execution killed because the drain ended (`Interrupted`).
pub const SHUTDOWN: &str = "Shutdown";

/// Handle to a running pool. Cloning it is cheap; the pool stops when [`Pool::shutdown`]
/// is called or every handle is dropped.
#[derive(Clone)]
pub struct Pool {
    requests: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    slot_ids: Vec<SlotIds>,
}

/// A snapshot of the pool's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub workers: usize,
    pub ready: usize,
    pub busy: usize,
    pub queued: usize,
    pub completed: u64,
    pub templates_started: u64,
    /// Spawn-to-hello time of the most recent template, microseconds.
    pub last_spawn_to_ready_us: u64,
}

/// What was left when the pool stopped.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Executions that finished during the drain.
    pub drained: usize,
    /// Executions killed because the drain timed out (reported `Interrupted`).
    pub abandoned: usize,
    /// Executions handed back without starting (reported `Returned`).
    pub returned: usize,
}

#[derive(Default)]
struct Shared {
    workers: AtomicUsize,
    ready: AtomicUsize,
    busy: AtomicUsize,
    queued: AtomicUsize,
    completed: AtomicU64,
    templates_started: AtomicU64,
    last_spawn_to_ready_us: AtomicU64,
}

enum Request {
    Submit(Box<Job>),
    Cancel(String),
    Reply(warden_protocol::Reply),
    Shutdown {
        drain: Duration,
        done: oneshot::Sender<ShutdownReport>,
    },
}

impl Pool {
    /// Starts `cfg.workers` templates and returns once every one has said hello (or
    /// with the first start-up failure, e.g. a missing worker binary).
    pub async fn start(
        cfg: PoolConfig,
        events: mpsc::UnboundedSender<PoolEvent>,
    ) -> Result<Pool, PoolError> {
        if cfg.workers == 0 {
            return Err(PoolError::Config("--workers must be at least 1".into()));
        }
        if let Err(source) = std::fs::metadata(&cfg.worker_bin) {
            return Err(PoolError::WorkerBinary {
                path: cfg.worker_bin.clone(),
                source,
            });
        }
        std::fs::create_dir_all(&cfg.run_dir).map_err(|source| PoolError::RunDir {
            path: cfg.run_dir.clone(),
            source,
        })?;
        let mut cfg = cfg;
        let mut firewall = None;
        let lease = match cfg.worker_uid_base {
            Some(base) => {
                let lease = uids::lease(std::path::Path::new(uids::LOCK_DIR), base, cfg.workers)?;
                cfg.slot_ids = lease.ids.clone();
                let first_child = base + uids::RANGE;
                let last_child = first_child + uids::RANGE - 1;
                firewall = Some(firewall::block_host_services(first_child, last_child));
                Some(lease)
            }
            None => None,
        };
        let (layers, warnings) = posture::describe(&cfg, firewall.as_ref());
        tracing::info!("{layers}");
        for w in warnings {
            tracing::warn!("sandbox: {w}");
        }
        let slot_ids = cfg.slot_ids.clone();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (tmpl_tx, tmpl_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        shared.workers.store(cfg.workers, Ordering::Relaxed);
        let start_timeout = cfg.start_timeout;
        let cfg = Arc::new(cfg);
        let mut d = Dispatcher {
            slots: Vec::with_capacity(cfg.workers),
            cfg,
            queue: VecDeque::new(),
            requests: req_rx,
            tmpl_tx,
            tmpl_rx,
            events,
            shared: shared.clone(),
            startup: Some(ready_tx),
            drain: None,
            next_generation: 1,
            drained: 0,
            returned: 0,
            dispatches: 0,
            manifest: None,
            _lease: lease,
        };
        for slot in 0..d.cfg.workers {
            let (cmds, generation) = d.launch(slot);
            d.slots.push(Slot {
                generation,
                cmds,
                state: SlotState::Starting,
                executions: 0,
                failed_starts: 0,
                last_dispatch: 0,
                tenant: None,
                manifest: 0,
            });
        }
        tokio::spawn(d.run());
        match tokio::time::timeout(start_timeout + Duration::from_secs(1), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Pool {
                requests: req_tx,
                shared,
                slot_ids,
            }),
            Ok(Ok(Err(reason))) => Err(PoolError::WorkerStart(reason)),
            Ok(Err(_)) => Err(PoolError::WorkerStart(
                "the pool stopped while starting".into(),
            )),
            Err(_) => Err(PoolError::WorkerStart(format!(
                "templates not ready within {start_timeout:?}"
            ))),
        }
    }

    /// Queues an execution; its events arrive on the pool's event channel. A pool that
    /// has stopped hands the job back, so the caller can record it: nothing accepted is
    /// ever dropped silently.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match self.requests.send(Request::Submit(Box::new(job))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(Request::Submit(job))) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(job)
            }
            Err(_) => unreachable!("we sent a Submit"),
        }
    }

    /// Cancels a queued or running execution (it ends `cancelled`). Unknown ids are
    /// ignored: the execution already finished, or never came here.
    pub fn cancel(&self, execution_id: &str) {
        let _ = self
            .requests
            .send(Request::Cancel(execution_id.to_string()));
    }

    /// Answers a [`PoolEvent::Request`]. A reply for an execution that already ended
    /// is dropped.
    pub fn reply(&self, reply: warden_protocol::Reply) {
        let _ = self.requests.send(Request::Reply(reply));
    }

    /// Stops taking work and hands back what is queued (`PoolEvent::Returned`), lets
    /// what is running finish for up to `drain`, then kills what is left (reported
    /// `PoolEvent::Interrupted`) and stops every template. Called again, the drain
    /// ends now.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let (done, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Shutdown { drain, done })
            .is_err()
        {
            return ShutdownReport::default();
        }
        rx.await.unwrap_or_default()
    }

    /// The uids each slot's template and children run under (empty when the
    /// supervisor is not root).
    pub fn slot_ids(&self) -> &[SlotIds] {
        &self.slot_ids
    }

    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            workers: s.workers.load(Ordering::Relaxed),
            ready: s.ready.load(Ordering::Relaxed),
            busy: s.busy.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            templates_started: s.templates_started.load(Ordering::Relaxed),
            last_spawn_to_ready_us: s.last_spawn_to_ready_us.load(Ordering::Relaxed),
        }
    }
}

struct Slot {
    generation: u64,
    cmds: mpsc::UnboundedSender<TemplateCmd>,
    state: SlotState,
    /// Executions run by the current template (reuse-mode recycling).
    executions: u32,
    /// Templates in a row that died before saying hello (for back-off).
    failed_starts: u32,
    /// When this slot was last given an execution (dispatch order, see `dispatch`).
    last_dispatch: u64,
    /// The organization the current template has run code for (`None`: it has run
    /// nothing yet). A reuse template runs every execution in one interpreter, so it
    /// serves one organization only; a fork template prefers its last one. See
    /// [`Dispatcher::pick_slot`].
    tenant: Option<Option<String>>,
    /// The id of the module manifest the current template was sent (0: none).
    manifest: u64,
}

enum SlotState {
    Starting,
    Idle,
    Busy(Box<Running>),
    /// Asked to shut down (recycling or pool shutdown); waiting for it to go.
    Retiring,
    /// Dead; a new template starts at this instant (None: not restarted, pool stopping).
    Down(Option<Instant>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Timeout,
    Cancelled,
    Shutdown,
}

struct Running {
    job: Job,
    dispatched: Instant,
    started_at: SystemTime,
    timeout: Duration,
    deadline: Instant,
    result: Option<ExecutionResult>,
    /// Why and when we asked for it to be killed.
    kill: Option<(KillReason, Instant)>,
    /// Whether the template itself has been killed over this execution.
    template_killed: bool,
}

impl Running {
    /// Killed because the drain ended, not for its own deadline or a cancel.
    fn interrupted(&self) -> bool {
        matches!(self.kill, Some((KillReason::Shutdown, _)))
    }
}

struct Drain {
    deadline: Instant,
    done: Option<oneshot::Sender<ShutdownReport>>,
    abandoned: usize,
    /// Set once every template has been asked to stop.
    stopping: bool,
}

struct Dispatcher {
    cfg: Arc<PoolConfig>,
    slots: Vec<Slot>,
    queue: VecDeque<Job>,
    requests: mpsc::UnboundedReceiver<Request>,
    tmpl_tx: mpsc::UnboundedSender<TemplateEvent>,
    tmpl_rx: mpsc::UnboundedReceiver<TemplateEvent>,
    events: mpsc::UnboundedSender<PoolEvent>,
    shared: Arc<Shared>,
    startup: Option<oneshot::Sender<Result<(), String>>>,
    drain: Option<Drain>,
    next_generation: u64,
    drained: usize,
    /// Executions handed back without starting (`PoolEvent::Returned`).
    returned: usize,
    /// Executions dispatched so far (orders `Slot::last_dispatch`).
    dispatches: u64,
    /// The module manifest of the last job dispatched, given to templates as soon as
    /// they are ready (so they load and check the workspace before their first job).
    manifest: Option<Arc<warden_protocol::ModuleManifest>>,
    /// The slots' uids, held until the dispatcher (and so every template) is gone.
    _lease: Option<uids::Lease>,
}

impl Dispatcher {
    async fn run(mut self) {
        loop {
            let timer = self.next_timer();
            tokio::select! {
                req = self.requests.recv() => match req {
                    Some(r) => self.on_request(r),
                    // Every handle dropped: stop now.
                    None => self.begin_drain(Duration::ZERO, None),
                },
                Some(ev) = self.tmpl_rx.recv() => self.on_template(ev),
                _ = sleep_until_opt(timer) => self.on_timer(Instant::now()),
            }
            self.dispatch();
            self.publish_stats();
            if self.finish_drain_if_done() {
                return;
            }
        }
    }

    /// Starts the template task for `slot`; returns its command channel and generation.
    fn launch(&mut self, slot: usize) -> (mpsc::UnboundedSender<TemplateCmd>, u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared
            .templates_started
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(template::run(
            self.cfg.clone(),
            slot,
            generation,
            self.tmpl_tx.clone(),
            rx,
        ));
        (tx, generation)
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Submit(job) => {
                if self.drain.is_some() {
                    // Shutting down: never started here, so it goes back untouched.
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.hand_back(job.execution_id);
                } else {
                    self.queue.push_back(*job);
                }
            }
            Request::Cancel(id) => self.cancel(&id),
            Request::Reply(reply) => {
                let slot = self.slots.iter().position(|s| {
                    matches!(&s.state, SlotState::Busy(r) if r.job.execution_id == reply.execution_id)
                });
                if let Some(slot) = slot {
                    let _ = self.slots[slot]
                        .cmds
                        .send(TemplateCmd::Send(Box::new(ToWorker::Reply(reply))));
                }
            }
            Request::Shutdown { drain, done } => self.begin_drain(drain, Some(done)),
        }
    }

    fn cancel(&mut self, id: &str) {
        if let Some(pos) = self.queue.iter().position(|j| j.execution_id == id) {
            let job = self.queue.remove(pos).expect("position is in range");
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            let out = ExecutionOutcome::not_run(
                &job.execution_id,
                Status::Cancelled,
                "Cancelled",
                "cancelled before it started",
            );
            self.finish(out);
            return;
        }
        let found = self.slots.iter().position(|s| {
            matches!(&s.state, SlotState::Busy(r) if r.job.execution_id == id && r.kill.is_none())
        });
        if let Some(slot) = found {
            self.kill_running(slot, KillReason::Cancelled, Instant::now());
        }
    }

    fn begin_drain(&mut self, drain: Duration, done: Option<oneshot::Sender<ShutdownReport>>) {
        match &mut self.drain {
            // A second shutdown request: escalate, the drain ends now.
            Some(d) => {
                d.deadline = Instant::now();
                if d.done.is_none() {
                    d.done = done;
                }
            }
            None => {
                self.drain = Some(Drain {
                    deadline: Instant::now() + drain,
                    done,
                    abandoned: 0,
                    stopping: false,
                });
                // What has not started goes back now: the drain is for what runs.
                while let Some(job) = self.queue.pop_front() {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.hand_back(job.execution_id);
                }
            }
        }
        self.on_timer(Instant::now());
    }

    /// Reports a job that never started as handed back (see `PoolEvent::Returned`).
    fn hand_back(&mut self, execution_id: String) {
        self.returned += 1;
        let _ = self.events.send(PoolEvent::Returned { execution_id });
    }

    /// Hands queued jobs to idle templates.
    /// The idle slot the queue's first execution goes to, if any may take it now.
    ///
    /// Fork mode: the idle slot that has waited longest (a fork-mode template forks its
    /// next child right after an execution, so one that has been idle a while has it
    /// ready, while the one that just finished may still be forking), among those whose
    /// last execution was of the same organization if there are any: such a template
    /// may hold that organization's compiled code, and one of another organization would
    /// have to drop its own (see the worker's `code_cache`).
    ///
    /// Reuse mode: a template serves one organization. The longest-idle slot already
    /// serving the execution's organization, else one that has served nobody yet; else
    /// the longest-idle slot of another organization is recycled (a fresh template is
    /// started for it, and the execution waits for it), unless a template is already
    /// starting or retiring (it will be free soon: recycling more would only churn).
    fn pick_slot(&mut self) -> Option<usize> {
        let idle = |s: &Slot| matches!(s.state, SlotState::Idle);
        let longest_idle = |slots: &[Slot], ok: &dyn Fn(&Slot) -> bool| {
            (0..slots.len())
                .filter(|&i| idle(&slots[i]) && ok(&slots[i]))
                .min_by_key(|&i| slots[i].last_dispatch)
        };
        let org = self.queue.front()?.org.clone();
        if self.cfg.isolation != Isolation::Reuse {
            return org
                .is_some()
                .then(|| longest_idle(&self.slots, &|s| s.tenant.as_ref() == Some(&org)))
                .flatten()
                .or_else(|| longest_idle(&self.slots, &|_| true));
        }
        if let Some(i) = longest_idle(&self.slots, &|s| s.tenant.as_ref() == Some(&org))
            .or_else(|| longest_idle(&self.slots, &|s| s.tenant.is_none()))
        {
            return Some(i);
        }
        let changing = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Starting | SlotState::Retiring));
        if !changing {
            if let Some(i) = longest_idle(&self.slots, &|_| true) {
                tracing::debug!(
                    slot = i,
                    "recycling a reuse template for another organization"
                );
                let s = &mut self.slots[i];
                let _ = s.cmds.send(TemplateCmd::Send(Box::new(ToWorker::Shutdown)));
                s.state = SlotState::Retiring;
            }
        }
        None
    }

    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(slot) = self.pick_slot() else {
                return;
            };
            self.dispatches += 1;
            self.slots[slot].last_dispatch = self.dispatches;
            let job = self.queue.pop_front().expect("queue is not empty");
            self.slots[slot].tenant = Some(job.org.clone());
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            let timeout = job.timeout;
            let modules_manifest = match &job.modules_manifest {
                Some(m) => {
                    if self.slots[slot].manifest != m.id {
                        // Only when the template lacks it: never per execution.
                        self.slots[slot].manifest = m.id;
                        let msg = ToWorker::Modules(m.as_ref().clone());
                        let _ = self.slots[slot].cmds.send(TemplateCmd::Send(Box::new(msg)));
                    }
                    self.manifest = Some(m.clone());
                    m.id
                }
                None => 0,
            };
            let msg = ToWorker::Execute(warden_protocol::Execute {
                execution_id: job.execution_id.clone(),
                path: job.path.clone(),
                source: job.source.clone(),
                function: job.function.clone(),
                params_json: job.params_json.clone(),
                context_json: job.context_json.clone(),
                modules_generation: job.modules_generation,
                modules_manifest,
                limits: job
                    .limits
                    .clone()
                    .unwrap_or_else(|| self.cfg.limits.clone()),
                org: job.org.clone().unwrap_or_default(),
                code: warden_protocol::Code::None,
            });
            let now = Instant::now();
            let s = &mut self.slots[slot];
            // If the template task is gone its Gone event is on the way and will
            // finalise this execution as crashed.
            let _ = s.cmds.send(TemplateCmd::Send(Box::new(msg)));
            s.state = SlotState::Busy(Box::new(Running {
                job,
                dispatched: now,
                started_at: SystemTime::now(),
                timeout,
                deadline: now + timeout,
                result: None,
                kill: None,
                template_killed: false,
            }));
        }
    }

    fn on_template(&mut self, ev: TemplateEvent) {
        match ev {
            TemplateEvent::Ready {
                slot,
                generation,
                hello,
                spawn_to_ready,
            } => {
                if self.slots[slot].generation != generation {
                    return;
                }
                tracing::debug!(slot, pid = hello.pid, ?spawn_to_ready, "worker ready");
                self.shared
                    .last_spawn_to_ready_us
                    .store(spawn_to_ready.as_micros() as u64, Ordering::Relaxed);
                let s = &mut self.slots[slot];
                s.failed_starts = 0;
                s.executions = 0;
                s.manifest = 0;
                if self.drain.as_ref().is_some_and(|d| d.stopping) {
                    let _ = s.cmds.send(TemplateCmd::Send(Box::new(ToWorker::Shutdown)));
                    s.state = SlotState::Retiring;
                } else {
                    if let Some(m) = &self.manifest {
                        s.manifest = m.id;
                        let msg = ToWorker::Modules(m.as_ref().clone());
                        let _ = s.cmds.send(TemplateCmd::Send(Box::new(msg)));
                    }
                    s.state = SlotState::Idle;
                }
                self.check_started();
            }
            TemplateEvent::Frame {
                slot,
                generation,
                msg,
            } => {
                if self.slots[slot].generation == generation {
                    self.on_frame(slot, msg);
                }
            }
            TemplateEvent::Gone {
                slot,
                generation,
                was_ready,
                reason,
                exit_code,
                exit_signal,
            } => {
                if self.slots[slot].generation != generation {
                    return;
                }
                self.on_gone(slot, was_ready, reason, exit_code, exit_signal);
            }
        }
    }

    fn on_frame(&mut self, slot: usize, msg: FromWorker) {
        let SlotState::Busy(running) = &mut self.slots[slot].state else {
            return self.protocol_violation(slot, "a frame arrived while no execution was running");
        };
        let id = match &msg {
            FromWorker::Started(m) => &m.execution_id,
            FromWorker::Log(m) => &m.execution_id,
            FromWorker::Result(m) => &m.execution_id,
            FromWorker::Ended(m) => &m.execution_id,
            FromWorker::Request(m) => &m.execution_id,
            FromWorker::Hello(_) => return self.protocol_violation(slot, "a second hello"),
            // A child's first frame, for its template only: never relayed.
            FromWorker::Compiled(_) => {
                return self.protocol_violation(slot, "compiled code (a child's frame)")
            }
        };
        if *id != running.job.execution_id {
            return self.protocol_violation(slot, "a frame for another execution");
        }
        match msg {
            FromWorker::Started(m) => {
                let _ = self.events.send(PoolEvent::Started {
                    execution_id: m.execution_id,
                    pid: m.pid,
                });
            }
            FromWorker::Log(log) => {
                let _ = self.events.send(PoolEvent::Log(log));
            }
            FromWorker::Request(req) => {
                let _ = self.events.send(PoolEvent::Request(req));
            }
            FromWorker::Result(r) => {
                if running.result.is_some() {
                    return self.protocol_violation(slot, "a second result");
                }
                running.result = Some(r);
            }
            FromWorker::Ended(ended) => {
                let SlotState::Busy(running) =
                    std::mem::replace(&mut self.slots[slot].state, SlotState::Idle)
                else {
                    unreachable!("checked above")
                };
                let interrupted = running.interrupted();
                let out = self.outcome_from_ended(*running, ended.clone());
                self.end(out, interrupted);
                self.after_execution(slot, &ended);
            }
            FromWorker::Hello(_) | FromWorker::Compiled(_) => unreachable!("handled above"),
        }
    }

    /// Reuse mode: retire a template that ran enough executions or grew too big.
    fn after_execution(&mut self, slot: usize, ended: &Ended) {
        let cfg = &self.cfg;
        let s = &mut self.slots[slot];
        s.executions += 1;
        if cfg.isolation != Isolation::Reuse {
            return;
        }
        let too_many =
            cfg.max_executions_per_worker > 0 && s.executions >= cfg.max_executions_per_worker;
        let too_big = cfg.max_worker_memory > 0 && ended.worker_rss_bytes > cfg.max_worker_memory;
        if too_many || too_big {
            tracing::debug!(
                slot,
                executions = s.executions,
                rss = ended.worker_rss_bytes,
                "recycling worker"
            );
            let _ = s.cmds.send(TemplateCmd::Send(Box::new(ToWorker::Shutdown)));
            s.state = SlotState::Retiring;
        }
    }

    fn protocol_violation(&mut self, slot: usize, what: &str) {
        tracing::warn!(slot, what, "worker broke the protocol; killing it");
        let _ = self.slots[slot].cmds.send(TemplateCmd::Kill);
    }

    fn on_gone(
        &mut self,
        slot: usize,
        was_ready: bool,
        reason: String,
        exit_code: Option<i32>,
        exit_signal: Option<i32>,
    ) {
        let state = std::mem::replace(&mut self.slots[slot].state, SlotState::Down(None));
        let retiring = matches!(state, SlotState::Retiring);
        if let SlotState::Busy(running) = state {
            let interrupted = running.interrupted();
            let out = self.outcome_from_template_death(*running, &reason, exit_code, exit_signal);
            self.end(out, interrupted);
        }
        if !was_ready {
            if self.drain.is_some() {
                tracing::debug!(slot, %reason, "worker stopped before it was ready (shutting down)");
            } else {
                tracing::error!(slot, %reason, "worker failed to start");
            }
            if let Some(tx) = self.startup.take() {
                let _ = tx.send(Err(reason));
                // The pool is unusable: stop now.
                self.begin_drain(Duration::ZERO, None);
                return;
            }
            self.slots[slot].failed_starts += 1;
        } else if !retiring {
            tracing::warn!(slot, %reason, "worker died; starting a new one");
        }
        if self.drain.is_some() {
            return;
        }
        let n = self.slots[slot].failed_starts.min(7);
        let backoff = if n == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(100 << n).min(Duration::from_secs(10))
        };
        self.slots[slot].state = SlotState::Down(Some(Instant::now() + backoff));
        if backoff.is_zero() {
            self.respawn(slot);
        }
    }

    fn respawn(&mut self, slot: usize) {
        let (cmds, generation) = self.launch(slot);
        let s = &mut self.slots[slot];
        s.cmds = cmds;
        s.generation = generation;
        s.state = SlotState::Starting;
        s.tenant = None;
    }

    fn check_started(&mut self) {
        if self.startup.is_some()
            && self
                .slots
                .iter()
                .all(|s| !matches!(s.state, SlotState::Starting))
        {
            let _ = self.startup.take().expect("checked").send(Ok(()));
        }
    }

    /// The earliest instant at which `on_timer` has something to do.
    fn next_timer(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.drain.as_ref().map(|d| d.deadline);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for s in &self.slots {
            match &s.state {
                SlotState::Busy(r) => match r.kill {
                    None => consider(r.deadline),
                    Some((_, at)) if !r.template_killed => consider(at + self.cfg.kill_grace),
                    Some(_) => {}
                },
                SlotState::Down(Some(at)) => consider(*at),
                _ => {}
            }
        }
        next
    }

    fn on_timer(&mut self, now: Instant) {
        let drain_over = self.drain.as_ref().is_some_and(|d| now >= d.deadline);
        if drain_over {
            // Nothing is queued during a drain (see `begin_drain`); kept for safety.
            while let Some(job) = self.queue.pop_front() {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.hand_back(job.execution_id);
            }
        }
        for slot in 0..self.slots.len() {
            match &self.slots[slot].state {
                SlotState::Busy(r) => match r.kill {
                    None if now >= r.deadline => self.kill_running(slot, KillReason::Timeout, now),
                    None if drain_over => {
                        if let Some(d) = &mut self.drain {
                            d.abandoned += 1;
                        }
                        self.kill_running(slot, KillReason::Shutdown, now)
                    }
                    Some((_, at)) if !r.template_killed && now >= at + self.cfg.kill_grace => {
                        tracing::warn!(
                            slot,
                            "worker did not stop its execution in time; killing the worker"
                        );
                        self.kill_template(slot);
                    }
                    _ => {}
                },
                SlotState::Down(Some(at)) if now >= *at && self.drain.is_none() => {
                    self.respawn(slot)
                }
                _ => {}
            }
        }
    }

    fn kill_running(&mut self, slot: usize, why: KillReason, now: Instant) {
        let isolation = self.cfg.isolation;
        let SlotState::Busy(r) = &mut self.slots[slot].state else {
            return;
        };
        r.kill = Some((why, now));
        match isolation {
            // The child is the template's: it kills the child's process group.
            Isolation::Fork => {
                let id = r.job.execution_id.clone();
                let _ = self.slots[slot]
                    .cmds
                    .send(TemplateCmd::Send(Box::new(ToWorker::Kill {
                        execution_id: id,
                    })));
            }
            // The code runs in the template itself: only killing it stops the code.
            Isolation::Reuse => self.kill_template(slot),
        }
    }

    fn kill_template(&mut self, slot: usize) {
        if let SlotState::Busy(r) = &mut self.slots[slot].state {
            r.template_killed = true;
        }
        let _ = self.slots[slot].cmds.send(TemplateCmd::Kill);
    }

    /// True when a drain is complete and the dispatcher may stop.
    fn finish_drain_if_done(&mut self) -> bool {
        let Some(d) = &mut self.drain else {
            return false;
        };
        let busy = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Busy(_)));
        if busy || !self.queue.is_empty() {
            return false;
        }
        if !d.stopping {
            d.stopping = true;
            for s in &mut self.slots {
                match s.state {
                    // A starting template is told on its hello (see `Ready`): a Shutdown
                    // frame before its Welcome would be a protocol error to it.
                    SlotState::Idle => {
                        let _ = s.cmds.send(TemplateCmd::Send(Box::new(ToWorker::Shutdown)));
                        s.state = SlotState::Retiring;
                    }
                    SlotState::Down(_) => s.state = SlotState::Down(None),
                    _ => {}
                }
            }
        }
        let all_gone = self
            .slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Down(_)));
        // Templates get until the drain deadline (plus a grace) to exit by themselves.
        let late = Instant::now() >= d.deadline + self.cfg.kill_grace;
        if !all_gone && !late {
            return false;
        }
        if late {
            for s in &self.slots {
                let _ = s.cmds.send(TemplateCmd::Kill);
            }
        }
        let report = ShutdownReport {
            drained: self.drained,
            abandoned: d.abandoned,
            returned: self.returned,
        };
        if let Some(done) = d.done.take() {
            let _ = done.send(report);
        }
        if let Some(tx) = self.startup.take() {
            let _ = tx.send(Err("the pool was shut down while starting".into()));
        }
        true
    }

    fn publish_stats(&self) {
        let mut ready = 0;
        let mut busy = 0;
        for s in &self.slots {
            match s.state {
                SlotState::Idle => ready += 1,
                SlotState::Busy(_) => {
                    ready += 1;
                    busy += 1
                }
                _ => {}
            }
        }
        self.shared.ready.store(ready, Ordering::Relaxed);
        self.shared.busy.store(busy, Ordering::Relaxed);
    }

    /// The end of a started execution: `Interrupted` when the drain killed it.
    fn end(&mut self, out: ExecutionOutcome, interrupted: bool) {
        if interrupted {
            self.shared.completed.fetch_add(1, Ordering::Relaxed);
            let _ = self.events.send(PoolEvent::Interrupted(out));
        } else {
            self.finish(out);
        }
    }

    fn finish(&mut self, out: ExecutionOutcome) {
        self.shared.completed.fetch_add(1, Ordering::Relaxed);
        if self.drain.is_some() {
            self.drained += 1;
        }
        let _ = self.events.send(PoolEvent::Finished(out));
    }

    fn outcome_from_ended(&self, r: Running, ended: Ended) -> ExecutionOutcome {
        let (exit_code, exit_signal) = match ended.exit {
            ExitKind::Exited(c) => (Some(c), None),
            ExitKind::Signaled(s) => (None, Some(s)),
            _ => (None, None),
        };
        let mut out = base_outcome(&r);
        out.peak_memory_bytes = ended.peak_memory_bytes;
        out.cpu_seconds = (ended.user_cpu_us + ended.system_cpu_us) as f64 / 1e6;
        out.exit_code = exit_code;
        out.exit_signal = exit_signal;
        if let Some((why, _)) = r.kill {
            killed(&mut out, why, &r);
            return out;
        }
        if let ExitKind::ProtocolError(reason) = &ended.exit {
            out.status = Status::Crashed;
            out.error = Some(error(
                "ProtocolError",
                format!("the execution broke the worker protocol and was killed: {reason}"),
            ));
            return out;
        }
        match r.result {
            Some(res) => {
                out.logs_dropped = res.logs_dropped;
                out.sdk_writes_json = res.sdk_writes_json;
                match res.outcome {
                    Outcome::Success { result_json } => {
                        out.status = Status::Success;
                        out.result_json = Some(result_json);
                    }
                    Outcome::Failed(e) => {
                        out.status = Status::Failed;
                        out.error = Some(e);
                    }
                }
            }
            None => {
                out.status = Status::Crashed;
                out.error = Some(error("Crashed", crash_message(exit_code, exit_signal)));
            }
        }
        out
    }

    fn outcome_from_template_death(
        &self,
        r: Running,
        reason: &str,
        exit_code: Option<i32>,
        exit_signal: Option<i32>,
    ) -> ExecutionOutcome {
        let mut out = base_outcome(&r);
        out.exit_code = exit_code;
        out.exit_signal = exit_signal;
        if let Some((why, _)) = r.kill {
            killed(&mut out, why, &r);
            return out;
        }
        // Reuse mode: a result may have arrived before the template died.
        out.status = Status::Crashed;
        out.error = Some(error(
            "Crashed",
            format!("{}; {reason}", crash_message(exit_code, exit_signal)),
        ));
        out
    }
}

fn base_outcome(r: &Running) -> ExecutionOutcome {
    ExecutionOutcome {
        execution_id: r.job.execution_id.clone(),
        status: Status::Crashed,
        result_json: None,
        error: None,
        started_at: Some(r.started_at),
        finished_at: SystemTime::now(),
        duration: r.dispatched.elapsed(),
        peak_memory_bytes: 0,
        cpu_seconds: 0.0,
        exit_code: None,
        exit_signal: None,
        logs_dropped: r.result.as_ref().map_or(0, |x| x.logs_dropped),
        sdk_writes_json: String::new(),
    }
}

fn killed(out: &mut ExecutionOutcome, why: KillReason, r: &Running) {
    let (status, ty, msg) = match why {
        KillReason::Timeout => (
            Status::Timeout,
            "Timeout",
            format!(
                "the execution did not finish within its {:.3} s deadline and was killed",
                r.timeout.as_secs_f64()
            ),
        ),
        KillReason::Cancelled => (
            Status::Cancelled,
            "Cancelled",
            "cancelled while running; the process was killed".to_string(),
        ),
        KillReason::Shutdown => (
            Status::Cancelled,
            SHUTDOWN,
            "the supervisor shut down and its drain timeout passed; the process was killed"
                .to_string(),
        ),
    };
    out.status = status;
    out.error = Some(error(ty, msg));
}

fn crash_message(exit_code: Option<i32>, exit_signal: Option<i32>) -> String {
    match (exit_code, exit_signal) {
        (_, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {sig}"));
            let hint = match sig {
                libc::SIGKILL => " (by the execution itself, another process, or the kernel's out-of-memory killer)",
                libc::SIGSEGV => " (segmentation fault)",
                libc::SIGXCPU => " (CPU time limit exceeded)",
                _ => "",
            };
            format!("the process was killed by {name}{hint} before returning a result")
        }
        (Some(code), None) => {
            format!("the process exited with code {code} before returning a result")
        }
        (None, None) => "the process ended without returning a result".to_string(),
    }
}

fn error(error_type: &str, message: String) -> ErrorInfo {
    ErrorInfo {
        error_type: error_type.to_string(),
        message,
        traceback: String::new(),
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
