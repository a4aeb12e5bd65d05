//! The pool's decisions: the queue, every slot's state, deadlines, cancellation,
//! finalisation, replacement of dead templates, and the drain on shutdown.
//!
//! This module does no I/O. `Dispatcher::step` takes one `Event` (a caller's
//! request, a template task's report, or a `Event::Tick`) and the time it happened,
//! and returns the `Action`s that follow (start a template, send it a command, report
//! a [`PoolEvent`], answer start-up or shutdown). The driver ([`super::driver`]) owns the
//! channels and the template tasks, feeds it events and carries the actions out; the
//! unit tests at the bottom feed it events with made-up `Instant`s instead, so every
//! decision below is tested without a process (nextest's `DispatcherContext`).
//! Results leave as [`PoolEvent`]s, in order per execution: `Started`, `Log`*,
//! `Finished`.
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
//! Sent ahead (fork mode): a busy slot whose executions are short gets the next queued
//! job's `Execute` before its current one ends (at most one; [`Slot::ahead`]). The
//! template keeps it and starts it right after the current one's `Ended`, instead of
//! idling for the round trip to the supervisor and back, which with short executions
//! is a large part of a slot's cycle. The job becomes the slot's running execution
//! (its deadline starts) at that `Ended`; a cancel meanwhile kills it then; if the
//! template dies first, the job goes back to the queue (it never started). A drain
//! lets it run like the current one (it was dispatched); once the drain's deadline has
//! passed it is killed as it starts. Nothing goes ahead of a long execution (it would
//! wait behind it while another slot may free up: [`PoolConfig::ahead_if_under`]), of one that
//! uses workspace modules (see `send_ahead`), nor in reuse mode (the next job's data
//! would sit in the memory the current workflow runs in).
//!
//! The drain on shutdown: what is queued when it begins (or submitted during it) never
//! started and is handed back at once (`PoolEvent::Returned`); what runs may finish
//! until the drain's deadline, and what is still running then is killed and reported
//! `PoolEvent::Interrupted` (a second shutdown request moves the deadline to now).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use warden_protocol::{
    Ended, ErrorInfo, ExecutionResult, ExitKind, FromWorker, Isolation, Outcome, ToWorker,
};

use super::config::PoolConfig;
use super::fair_queue::FairQueue;
use super::template_task::{TemplateCmd, TemplateEvent};
use crate::outcome::{ExecutionId, ExecutionOutcome, Job, PoolEvent, Status};

/// The error type of an execution killed because the drain ended (`Interrupted`).
pub const SHUTDOWN: &str = "Shutdown";

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

/// The counters behind [`super::Pool::stats`]: written by the dispatcher (and `queued`
/// also by `Pool::submit`), read by any handle.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) workers: AtomicUsize,
    pub(super) ready: AtomicUsize,
    pub(super) busy: AtomicUsize,
    pub(super) queued: AtomicUsize,
    pub(super) completed: AtomicU64,
    pub(super) templates_started: AtomicU64,
    pub(super) last_spawn_to_ready_us: AtomicU64,
    /// The package set last given to the pool ([`Event::Packages`]; 0: the initial one).
    pub(super) packages_version: AtomicU64,
    /// Slots whose template was started with an older package set than that one.
    pub(super) packages_stale: AtomicUsize,
    /// Jobs sent ahead (see the module comment).
    pub(super) sent_ahead: AtomicU64,
}

/// Something that happened, for [`Dispatcher::step`].
#[derive(Debug)]
pub(super) enum Event {
    Submit(Box<Job>),
    Cancel(ExecutionId),
    Reply(warden_protocol::Reply),
    /// Stop taking work; let what runs finish for up to this long (a second one: now).
    Shutdown(Duration),
    /// Every `Pool` handle is gone: stop now.
    Closed,
    Template(TemplateEvent),
    /// A new package set (directory for the templates' import path, or none): templates
    /// are replaced one at a time, each once it is idle (see `Dispatcher::roll_over`).
    Packages(Option<std::path::PathBuf>),
    /// Nothing arrived, but time passed (see [`Dispatcher::next_timer`]).
    Tick,
}

/// What the driver must do, in this order.
#[derive(Debug)]
// Most actions are `Emit`s, and they live only until the step's end: boxing them would
// cost an allocation per log line to save bytes on the rare small ones.
#[allow(clippy::large_enum_variant)]
pub(super) enum Action {
    /// Start a template task for `slot`, importing packages from `packages`; later
    /// commands for the slot go to it.
    Spawn {
        slot: usize,
        generation: u64,
        packages: Option<Arc<std::path::PathBuf>>,
    },
    /// A command for the slot's current template task.
    Template { slot: usize, cmd: TemplateCmd },
    /// Report to whoever started the pool.
    Emit(PoolEvent),
    /// Start-up is over: every template is ready, or why the pool cannot start.
    Started(Result<(), String>),
    /// The drain is complete: answer the shutdown request and stop (dropping every
    /// template task's channel, so each kills what is left of its template).
    Stop(ShutdownReport),
}

struct Slot {
    generation: u64,
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
    /// The package set the current template was started with (`Dispatcher::packages`).
    packages_version: u64,
    /// Fork mode: the job whose `Execute` this busy slot's template already has, to run
    /// after its current one (see the module comment, "Sent ahead").
    ahead: Option<Ahead>,
    /// How long the slot's last execution ran (dispatch or promotion to `Ended`): a job
    /// is sent ahead only to a slot whose executions are short
    /// ([`PoolConfig::ahead_if_under`]).
    last_run: Option<Duration>,
}

/// A job sent ahead to a busy slot.
struct Ahead {
    job: Job,
    /// Cancelled while it waited: killed as soon as it becomes the running one.
    cancelled: bool,
}

/// The default of [`PoolConfig::ahead_if_under`]: a job is sent ahead only to a slot
/// whose last execution, and whose current one so far, ran under this: for short executions the round trip between a template's
/// `Ended` and its next `Execute` is a large part of the slot's cycle, while a job sent
/// ahead of a long execution would only wait behind it (and behind nothing else: one
/// ahead per slot at most).
pub(super) const AHEAD_IF_UNDER: Duration = Duration::from_millis(10);

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
    kill: KillState,
}

/// How far killing a running execution has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillState {
    /// Not asked: it runs until it ends or its deadline passes.
    NotAsked,
    /// Asked at `at`: in fork mode the template kills the child and sends `Ended`; if
    /// that has not come by `at + kill_grace`, the template itself is killed.
    Asked { why: KillReason, at: Instant },
    /// The template itself was killed over it (reuse mode, or the grace passed): its
    /// `Gone` ends the execution, and there is nothing left to time.
    TemplateKilled { why: KillReason },
}

impl KillState {
    fn reason(self) -> Option<KillReason> {
        match self {
            KillState::NotAsked => None,
            KillState::Asked { why, .. } | KillState::TemplateKilled { why } => Some(why),
        }
    }
}

impl Running {
    /// `job`, running from `now`: its deadline starts.
    fn new(job: Job, now: Instant) -> Running {
        let timeout = job.timeout;
        Running {
            job,
            dispatched: now,
            started_at: SystemTime::now(),
            timeout,
            deadline: now + timeout,
            result: None,
            kill: KillState::NotAsked,
        }
    }

    /// Killed because the drain ended, not for its own deadline or a cancel.
    fn interrupted(&self) -> bool {
        self.kill.reason() == Some(KillReason::Shutdown)
    }
}

struct Drain {
    deadline: Instant,
    abandoned: usize,
    /// Set once every template has been asked to stop.
    stopping: bool,
}

/// The pool's state and every decision about it; see the module header.
pub(super) struct Dispatcher {
    cfg: Arc<PoolConfig>,
    slots: Vec<Slot>,
    queue: FairQueue,
    shared: Arc<Shared>,
    /// Start-up has not been reported yet (`Action::Started`).
    starting: bool,
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
    /// The package directory new templates import from, and its version (bumped by every
    /// [`Event::Packages`]).
    packages: Option<Arc<std::path::PathBuf>>,
    packages_version: u64,
    /// What the current step decided, handed to the driver when it ends.
    actions: Vec<Action>,
}

impl Dispatcher {
    /// A pool of `cfg.workers` slots, and the actions that start their templates.
    pub(super) fn new(cfg: Arc<PoolConfig>, shared: Arc<Shared>) -> (Self, Vec<Action>) {
        shared.workers.store(cfg.workers, Ordering::Relaxed);
        let mut d = Dispatcher {
            slots: Vec::with_capacity(cfg.workers),
            cfg,
            queue: FairQueue::default(),
            shared,
            starting: true,
            drain: None,
            next_generation: 1,
            drained: 0,
            returned: 0,
            dispatches: 0,
            manifest: None,
            packages: None,
            packages_version: 0,
            actions: Vec::new(),
        };
        d.packages = d.cfg.packages_dir.clone().map(Arc::new);
        for slot in 0..d.cfg.workers {
            let generation = d.launch(slot);
            d.slots.push(Slot {
                generation,
                state: SlotState::Starting,
                executions: 0,
                failed_starts: 0,
                last_dispatch: 0,
                tenant: None,
                manifest: 0,
                packages_version: 0,
                ahead: None,
                last_run: None,
            });
        }
        let first = std::mem::take(&mut d.actions);
        (d, first)
    }

    /// Takes one event that happened at `now`; returns what to do about it. After an
    /// [`Action::Stop`] the dispatcher is done and must not be stepped again.
    pub(super) fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Submit(job) => {
                if self.drain.is_some() {
                    // Shutting down: never started here, so it goes back untouched.
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.hand_back(job.execution_id);
                } else {
                    self.queue.push_back(*job);
                }
            }
            Event::Cancel(id) => self.cancel(&id, now),
            Event::Reply(reply) => {
                let slot = self.slots.iter().position(|s| {
                    matches!(&s.state, SlotState::Busy(r) if r.job.execution_id == reply.execution_id)
                });
                if let Some(slot) = slot {
                    self.send(slot, ToWorker::Reply(reply));
                }
            }
            Event::Shutdown(drain) => self.begin_drain(drain, now),
            Event::Closed => self.begin_drain(Duration::ZERO, now),
            Event::Template(ev) => self.on_template(ev, now),
            Event::Tick => self.on_timer(now),
            Event::Packages(dir) => {
                self.packages = dir.map(Arc::new);
                self.packages_version += 1;
                self.shared
                    .packages_version
                    .store(self.packages_version, Ordering::Relaxed);
            }
        }
        // Before dispatching: a stale template that just became idle is replaced rather
        // than given the next execution, so the rollover always progresses under load.
        self.roll_over();
        self.dispatch(now);
        self.publish_stats();
        self.finish_drain_if_done(now);
        std::mem::take(&mut self.actions)
    }

    /// Starts a template for `slot`; returns its generation.
    fn launch(&mut self, slot: usize) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.shared
            .templates_started
            .fetch_add(1, Ordering::Relaxed);
        self.actions.push(Action::Spawn {
            slot,
            generation,
            packages: self.packages.clone(),
        });
        generation
    }

    /// Replaces templates started with an older package set, one at a time: an idle one
    /// is asked to shut down (its slot restarts with the current set) only while no
    /// other template is starting or retiring, so every other slot keeps serving and an
    /// execution waits at most one template start. A busy one finishes its execution
    /// first, on the set it started with; it is never killed for this.
    fn roll_over(&mut self) {
        if self.drain.is_some() {
            return;
        }
        let current = self.packages_version;
        let changing = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Starting | SlotState::Retiring));
        if changing {
            return;
        }
        let stale_idle = self
            .slots
            .iter()
            .position(|s| s.packages_version != current && matches!(s.state, SlotState::Idle));
        if let Some(slot) = stale_idle {
            tracing::info!(slot, "replacing a template for the new package set");
            self.slots[slot].state = SlotState::Retiring;
            self.send(slot, ToWorker::Shutdown);
        }
    }

    fn send(&mut self, slot: usize, msg: ToWorker) {
        self.actions.push(Action::Template {
            slot,
            cmd: TemplateCmd::Send(Box::new(msg)),
        });
    }

    fn emit(&mut self, event: PoolEvent) {
        self.actions.push(Action::Emit(event));
    }

    fn cancel(&mut self, id: &ExecutionId, now: Instant) {
        if let Some(job) = self.queue.remove(id) {
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
        // Sent ahead: its template starts it after the current one; killed then.
        if let Some(ahead) = self
            .slots
            .iter_mut()
            .filter_map(|s| s.ahead.as_mut())
            .find(|a| a.job.execution_id == *id)
        {
            ahead.cancelled = true;
            return;
        }
        let found = self.slots.iter().position(|s| {
            matches!(&s.state, SlotState::Busy(r) if r.job.execution_id == *id && r.kill == KillState::NotAsked)
        });
        if let Some(slot) = found {
            self.kill_running(slot, KillReason::Cancelled, now);
        }
    }

    fn begin_drain(&mut self, drain: Duration, now: Instant) {
        match &mut self.drain {
            // A second shutdown request: escalate, the drain ends now.
            Some(d) => d.deadline = now,
            None => {
                self.drain = Some(Drain {
                    deadline: now + drain,
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
        self.on_timer(now);
    }

    /// Reports a job that never started as handed back (see `PoolEvent::Returned`).
    fn hand_back(&mut self, execution_id: ExecutionId) {
        self.returned += 1;
        self.emit(PoolEvent::Returned { execution_id });
    }

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
                self.send(i, ToWorker::Shutdown);
                self.slots[i].state = SlotState::Retiring;
            }
        }
        None
    }

    /// Hands queued jobs to idle templates, then (fork mode) one each ahead to busy
    /// templates whose executions are short.
    fn dispatch(&mut self, now: Instant) {
        while !self.queue.is_empty() {
            let Some(slot) = self.pick_slot() else {
                break;
            };
            let job = self.queue.pop_front().expect("queue is not empty");
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.hand_over(slot, &job);
            self.slots[slot].state = SlotState::Busy(Box::new(Running::new(job, now)));
        }
        self.send_ahead(now);
    }

    /// Sends the queue's next jobs ahead to busy fork-mode templates (one each at most)
    /// whose last execution and current one so far are short, preferring a template
    /// whose last organization is the job's (its compiled-code cache).
    fn send_ahead(&mut self, now: Instant) {
        if self.cfg.isolation != Isolation::Fork || self.drain.is_some() {
            return;
        }
        let current = self.packages_version;
        let under = self.cfg.ahead_if_under;
        let eligible = |s: &Slot| {
            s.ahead.is_none()
                // A stale template is replaced when it is next idle: keep that coming.
                && s.packages_version == current
                && s.last_run.is_some_and(|d| d < under)
                && matches!(&s.state, SlotState::Busy(r)
                    if r.kill == KillState::NotAsked
                        // A template may wait for the supervisor to refill its module
                        // cache before such a job, reading what comes meanwhile: it
                        // must not be holding the next job then (it would be inherited
                        // by this job's child).
                        && r.job.modules_generation == 0
                        && now.saturating_duration_since(r.dispatched) < under)
        };
        while let Some(front) = self.queue.front() {
            let org = front.org.clone();
            let candidates = || (0..self.slots.len()).filter(|&i| eligible(&self.slots[i]));
            let Some(slot) = candidates()
                .find(|&i| self.slots[i].tenant.as_ref() == Some(&org))
                .or_else(|| candidates().min_by_key(|&i| self.slots[i].last_dispatch))
            else {
                return;
            };
            let job = self.queue.pop_front().expect("queue is not empty");
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.hand_over(slot, &job);
            self.shared.sent_ahead.fetch_add(1, Ordering::Relaxed);
            self.slots[slot].ahead = Some(Ahead {
                job,
                cancelled: false,
            });
        }
    }

    /// Sends `job` to the slot's template (its module manifest first, when the template
    /// lacks it).
    fn hand_over(&mut self, slot: usize, job: &Job) {
        {
            self.dispatches += 1;
            self.slots[slot].last_dispatch = self.dispatches;
            self.slots[slot].tenant = Some(job.org.clone());
            let modules_manifest = match &job.modules_manifest {
                Some(m) => {
                    if self.slots[slot].manifest != m.id {
                        // Only when the template lacks it: never per execution.
                        self.slots[slot].manifest = m.id;
                        self.send(slot, ToWorker::Modules(m.as_ref().clone()));
                    }
                    self.manifest = Some(m.clone());
                    m.id
                }
                None => 0,
            };
            let msg = ToWorker::Execute(warden_protocol::Execute {
                execution_id: job.execution_id.to_string(),
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
            // If the template task is gone its Gone event is on the way and will
            // finalise this execution as crashed (or, sent ahead, requeue it).
            self.send(slot, msg);
        }
    }

    fn on_template(&mut self, ev: TemplateEvent, now: Instant) {
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
                    s.state = SlotState::Retiring;
                    self.send(slot, ToWorker::Shutdown);
                } else {
                    s.state = SlotState::Idle;
                    if let Some(m) = self.manifest.clone() {
                        self.slots[slot].manifest = m.id;
                        self.send(slot, ToWorker::Modules(m.as_ref().clone()));
                    }
                }
                self.check_started();
            }
            TemplateEvent::Frame {
                slot,
                generation,
                msg,
            } => {
                if self.slots[slot].generation == generation {
                    self.on_frame(slot, msg, now);
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
                self.on_gone(slot, was_ready, reason, exit_code, exit_signal, now);
            }
        }
    }

    fn on_frame(&mut self, slot: usize, msg: FromWorker, now: Instant) {
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
                let started_at = running.started_at;
                self.emit(PoolEvent::Started {
                    execution_id: m.execution_id.into(),
                    pid: m.pid,
                    started_at,
                });
            }
            FromWorker::Log(log) => self.emit(PoolEvent::Log(log)),
            FromWorker::Request(req) => self.emit(PoolEvent::Request(req)),
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
                self.slots[slot].last_run = Some(now.saturating_duration_since(running.dispatched));
                let out = outcome_from_ended(*running, ended.clone(), now);
                self.end(out, interrupted);
                self.after_execution(slot, &ended);
                self.promote_ahead(slot, now);
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
            s.state = SlotState::Retiring;
            self.send(slot, ToWorker::Shutdown);
        }
    }

    /// After an `Ended`: the job sent ahead to the slot (its template starts it now)
    /// becomes its running execution. Killed at once when it was cancelled meanwhile,
    /// or when the drain's deadline has passed.
    fn promote_ahead(&mut self, slot: usize, now: Instant) {
        let Some(ahead) = self.slots[slot].ahead.take() else {
            return;
        };
        self.slots[slot].state = SlotState::Busy(Box::new(Running::new(ahead.job, now)));
        let drain_over = self.drain.as_ref().is_some_and(|d| now >= d.deadline);
        if ahead.cancelled {
            self.kill_running(slot, KillReason::Cancelled, now);
        } else if drain_over {
            if let Some(d) = &mut self.drain {
                d.abandoned += 1;
            }
            self.kill_running(slot, KillReason::Shutdown, now);
        }
    }

    /// A job sent ahead to a template that is gone never started: back to the queue, or
    /// (shutting down) handed back.
    fn requeue_ahead(&mut self, slot: usize) {
        let Some(ahead) = self.slots[slot].ahead.take() else {
            return;
        };
        if self.drain.is_some() {
            self.hand_back(ahead.job.execution_id);
        } else if ahead.cancelled {
            let out = ExecutionOutcome::not_run(
                &ahead.job.execution_id,
                Status::Cancelled,
                "Cancelled",
                "cancelled before it started",
            );
            self.finish(out);
        } else {
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
            self.queue.push_back(ahead.job);
        }
    }

    fn protocol_violation(&mut self, slot: usize, what: &str) {
        tracing::warn!(slot, what, "worker broke the protocol; killing it");
        self.actions.push(Action::Template {
            slot,
            cmd: TemplateCmd::Kill,
        });
    }

    fn on_gone(
        &mut self,
        slot: usize,
        was_ready: bool,
        reason: String,
        exit_code: Option<i32>,
        exit_signal: Option<i32>,
        now: Instant,
    ) {
        let state = std::mem::replace(&mut self.slots[slot].state, SlotState::Down(None));
        let retiring = matches!(state, SlotState::Retiring);
        self.slots[slot].last_run = None;
        self.requeue_ahead(slot);
        if let SlotState::Busy(running) = state {
            let interrupted = running.interrupted();
            let out = outcome_from_template_death(*running, &reason, exit_code, exit_signal, now);
            self.end(out, interrupted);
        }
        if !was_ready {
            if self.drain.is_some() {
                tracing::debug!(slot, %reason, "worker stopped before it was ready (shutting down)");
            } else {
                tracing::error!(slot, %reason, "worker failed to start");
            }
            if self.starting {
                self.starting = false;
                self.actions.push(Action::Started(Err(reason)));
                // The pool is unusable: stop now.
                self.begin_drain(Duration::ZERO, now);
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
        self.slots[slot].state = SlotState::Down(Some(now + backoff));
        if backoff.is_zero() {
            self.respawn(slot);
        }
    }

    fn respawn(&mut self, slot: usize) {
        let generation = self.launch(slot);
        let packages_version = self.packages_version;
        let s = &mut self.slots[slot];
        s.generation = generation;
        s.packages_version = packages_version;
        s.state = SlotState::Starting;
        s.tenant = None;
    }

    fn check_started(&mut self) {
        if self.starting
            && self
                .slots
                .iter()
                .all(|s| !matches!(s.state, SlotState::Starting))
        {
            self.starting = false;
            self.actions.push(Action::Started(Ok(())));
        }
    }

    /// The earliest instant at which a [`Event::Tick`] has something to do.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.drain.as_ref().map(|d| d.deadline);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for s in &self.slots {
            match &s.state {
                SlotState::Busy(r) => match r.kill {
                    KillState::NotAsked => consider(r.deadline),
                    KillState::Asked { at, .. } => consider(at + self.cfg.kill_grace),
                    KillState::TemplateKilled { .. } => {}
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
                    KillState::NotAsked if now >= r.deadline => {
                        self.kill_running(slot, KillReason::Timeout, now)
                    }
                    KillState::NotAsked if drain_over => {
                        if let Some(d) = &mut self.drain {
                            d.abandoned += 1;
                        }
                        self.kill_running(slot, KillReason::Shutdown, now)
                    }
                    KillState::Asked { at, .. } if now >= at + self.cfg.kill_grace => {
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
        r.kill = KillState::Asked { why, at: now };
        match isolation {
            // The child is the template's: it kills the child's process group.
            Isolation::Fork => {
                let execution_id = r.job.execution_id.clone();
                self.send(
                    slot,
                    ToWorker::Kill {
                        execution_id: execution_id.into_string(),
                    },
                );
            }
            // The code runs in the template itself: only killing it stops the code.
            Isolation::Reuse => self.kill_template(slot),
        }
    }

    fn kill_template(&mut self, slot: usize) {
        if let SlotState::Busy(r) = &mut self.slots[slot].state {
            if let KillState::Asked { why, .. } = r.kill {
                r.kill = KillState::TemplateKilled { why };
            }
        }
        self.actions.push(Action::Template {
            slot,
            cmd: TemplateCmd::Kill,
        });
    }

    /// Ends the dispatcher (`Action::Stop`) once a drain is complete.
    fn finish_drain_if_done(&mut self, now: Instant) {
        let Some(d) = &mut self.drain else {
            return;
        };
        let busy = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Busy(_)));
        if busy || !self.queue.is_empty() {
            return;
        }
        if !d.stopping {
            d.stopping = true;
            for slot in 0..self.slots.len() {
                match self.slots[slot].state {
                    // A starting template is told on its hello (see `Ready`): a Shutdown
                    // frame before its Welcome would be a protocol error to it.
                    SlotState::Idle => {
                        self.slots[slot].state = SlotState::Retiring;
                        self.send(slot, ToWorker::Shutdown);
                    }
                    SlotState::Down(_) => self.slots[slot].state = SlotState::Down(None),
                    _ => {}
                }
            }
        }
        let Some(d) = &self.drain else {
            unreachable!("checked above")
        };
        let all_gone = self
            .slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Down(_)));
        // Templates get until the drain deadline (plus a grace) to exit by themselves.
        let late = now >= d.deadline + self.cfg.kill_grace;
        if !all_gone && !late {
            return;
        }
        let report = ShutdownReport {
            drained: self.drained,
            abandoned: d.abandoned,
            returned: self.returned,
        };
        if late {
            for slot in 0..self.slots.len() {
                self.actions.push(Action::Template {
                    slot,
                    cmd: TemplateCmd::Kill,
                });
            }
        }
        if self.starting {
            self.starting = false;
            self.actions.push(Action::Started(Err(
                "the pool was shut down while starting".into(),
            )));
        }
        self.actions.push(Action::Stop(report));
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
        let stale = self
            .slots
            .iter()
            .filter(|s| s.packages_version != self.packages_version)
            .count();
        self.shared.packages_stale.store(stale, Ordering::Relaxed);
    }

    /// The end of a started execution: `Interrupted` when the drain killed it.
    fn end(&mut self, out: ExecutionOutcome, interrupted: bool) {
        if interrupted {
            self.shared.completed.fetch_add(1, Ordering::Relaxed);
            self.emit(PoolEvent::Interrupted(out));
        } else {
            self.finish(out);
        }
    }

    fn finish(&mut self, out: ExecutionOutcome) {
        self.shared.completed.fetch_add(1, Ordering::Relaxed);
        if self.drain.is_some() {
            self.drained += 1;
        }
        self.emit(PoolEvent::Finished(out));
    }
}

fn outcome_from_ended(r: Running, ended: Ended, now: Instant) -> ExecutionOutcome {
    let (exit_code, exit_signal) = match ended.exit {
        ExitKind::Exited(c) => (Some(c), None),
        ExitKind::Signaled(s) => (None, Some(s)),
        _ => (None, None),
    };
    let mut out = base_outcome(&r, now);
    out.peak_memory_bytes = ended.peak_memory_bytes;
    out.cpu_seconds = (ended.user_cpu_us + ended.system_cpu_us) as f64 / 1e6;
    out.exit_code = exit_code;
    out.exit_signal = exit_signal;
    if let Some(why) = r.kill.reason() {
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
    r: Running,
    reason: &str,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    now: Instant,
) -> ExecutionOutcome {
    let mut out = base_outcome(&r, now);
    out.exit_code = exit_code;
    out.exit_signal = exit_signal;
    if let Some(why) = r.kill.reason() {
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

/// `finished_at` and `started_at` are wall-clock times for the record only; every
/// decision uses the `Instant` the driver passed in.
fn base_outcome(r: &Running, now: Instant) -> ExecutionOutcome {
    ExecutionOutcome {
        execution_id: r.job.execution_id.clone(),
        status: Status::Crashed,
        result_json: None,
        error: None,
        started_at: Some(r.started_at),
        finished_at: SystemTime::now(),
        duration: now.saturating_duration_since(r.dispatched),
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

#[cfg(test)]
mod tests {
    //! The dispatcher fed events by hand, with made-up instants: no process, no socket,
    //! no runtime. Each test reads the actions it gets back as the driver would.

    use std::path::PathBuf;

    use warden_protocol::{Hello, Log, LogLevel, Reply, ReplyOutcome, Started};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(2);

    fn config(workers: usize, isolation: Isolation) -> PoolConfig {
        let mut cfg = PoolConfig::new(PathBuf::from("/nonexistent"), PathBuf::from("/nonexistent"));
        cfg.workers = workers;
        cfg.isolation = isolation;
        cfg.timeout = TIMEOUT;
        cfg.kill_grace = GRACE;
        cfg
    }

    fn job(id: &str, org: Option<&str>) -> Job {
        Job {
            execution_id: id.into(),
            path: "wf.py".into(),
            source: "def main(): return 1".into(),
            function: "main".into(),
            params_json: "{}".into(),
            context_json: "{}".into(),
            timeout: TIMEOUT,
            limits: None,
            modules_generation: 0,
            org: org.map(str::to_string),
            modules_manifest: None,
            priority: 0,
        }
    }

    fn ended(id: &str, exit: ExitKind) -> FromWorker {
        FromWorker::Ended(Ended {
            execution_id: id.into(),
            exit,
            peak_memory_bytes: 1,
            user_cpu_us: 1,
            system_cpu_us: 1,
            worker_rss_bytes: 1,
        })
    }

    fn success(id: &str) -> FromWorker {
        FromWorker::Result(ExecutionResult {
            execution_id: id.into(),
            outcome: Outcome::Success {
                result_json: "1".into(),
            },
            duration_us: 1,
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        })
    }

    /// A dispatcher and a clock; remembers each slot's current template generation.
    struct Harness {
        d: Dispatcher,
        t0: Instant,
        now: Instant,
        generations: Vec<u64>,
    }

    impl Harness {
        /// Every template started and ready.
        fn ready(cfg: PoolConfig) -> Harness {
            let mut h = Harness::starting(cfg);
            let mut last = Vec::new();
            for slot in 0..h.generations.len() {
                last = h.hello(slot);
            }
            assert!(matches!(started(&last), Some(Ok(()))));
            h
        }

        /// Templates spawned, none ready yet.
        fn starting(cfg: PoolConfig) -> Harness {
            let workers = cfg.workers;
            let (d, first) = Dispatcher::new(Arc::new(cfg), Arc::new(Shared::default()));
            let now = Instant::now();
            let mut h = Harness {
                d,
                t0: now,
                now,
                generations: vec![0; workers],
            };
            h.note(&first);
            assert_eq!(spawns(&first), (0..workers).collect::<Vec<_>>());
            h
        }

        fn note(&mut self, actions: &[Action]) {
            for a in actions {
                if let Action::Spawn {
                    slot, generation, ..
                } = a
                {
                    self.generations[*slot] = *generation;
                }
            }
        }

        /// Moves the clock to `secs` after the start.
        fn at(&mut self, secs: f64) -> &mut Self {
            self.now = self.t0 + Duration::from_secs_f64(secs);
            self
        }

        fn step(&mut self, event: Event) -> Vec<Action> {
            let actions = self.d.step(event, self.now);
            self.note(&actions);
            actions
        }

        fn tick(&mut self) -> Vec<Action> {
            self.step(Event::Tick)
        }

        fn submit(&mut self, job: Job) -> Vec<Action> {
            self.d.shared.queued.fetch_add(1, Ordering::Relaxed);
            self.step(Event::Submit(Box::new(job)))
        }

        fn hello(&mut self, slot: usize) -> Vec<Action> {
            let generation = self.generations[slot];
            self.step(Event::Template(TemplateEvent::Ready {
                slot,
                generation,
                hello: Hello {
                    protocol_version: warden_protocol::PROTOCOL_VERSION,
                    worker_id: generation,
                    pid: 1000 + slot as u32,
                    isolation: Isolation::Fork,
                    python_version: "3".into(),
                },
                spawn_to_ready: Duration::from_millis(5),
            }))
        }

        fn frame(&mut self, slot: usize, msg: FromWorker) -> Vec<Action> {
            let generation = self.generations[slot];
            self.step(Event::Template(TemplateEvent::Frame {
                slot,
                generation,
                msg,
            }))
        }

        /// The slot's template ended; `signal` is how.
        fn gone(&mut self, slot: usize, was_ready: bool, signal: Option<i32>) -> Vec<Action> {
            let generation = self.generations[slot];
            self.step(Event::Template(TemplateEvent::Gone {
                slot,
                generation,
                was_ready,
                reason: "worker process ended unexpectedly".into(),
                exit_code: None,
                exit_signal: signal,
            }))
        }

        /// The slot ran `id` to a successful end.
        fn succeed(&mut self, slot: usize, id: &str) -> Vec<Action> {
            assert!(self.frame(slot, success(id)).is_empty());
            self.frame(slot, ended(id, ExitKind::Exited(0)))
        }
    }

    /// One fork-mode worker that ran `a` for 1 ms and now runs `b` (from 1 ms on).
    fn running_after_a_short_one() -> Harness {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        assert_eq!(executes(&h.submit(job("a", None))), [(0, "a".to_string())]);
        assert!(executes(&h.submit(job("b", None))).is_empty());
        h.at(0.001);
        assert_eq!(executes(&h.succeed(0, "a")), [(0, "b".to_string())]);
        h
    }

    #[test]
    fn after_a_short_execution_the_next_job_is_sent_ahead_and_runs_when_the_current_ends() {
        let mut h = running_after_a_short_one();
        // b's template gets c now, while b runs: one ahead, no more.
        assert_eq!(executes(&h.submit(job("c", None))), [(0, "c".to_string())]);
        assert!(executes(&h.submit(job("d", None))).is_empty());
        assert_eq!(h.d.shared.queued.load(Ordering::Relaxed), 1);
        assert_eq!(h.d.shared.sent_ahead.load(Ordering::Relaxed), 1);
        // b ends: c is the running one (its frames count, its deadline starts now), and
        // d goes ahead in turn.
        h.at(0.002);
        let acts = h.succeed(0, "b");
        assert_eq!(finished(&acts).len(), 1);
        assert_eq!(executes(&acts), [(0, "d".to_string())]);
        assert!(h.frame(0, success("c")).is_empty());
        h.at(0.003);
        let acts = h.frame(0, ended("c", ExitKind::Exited(0)));
        let out = finished(&acts);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].execution_id.as_str(), "c");
        assert_eq!(out[0].status, Status::Success);
        assert_eq!(out[0].duration, Duration::from_millis(1));
        // d's deadline runs from c's Ended, not from when it was sent.
        h.at(0.003 + TIMEOUT.as_secs_f64() - 0.0005);
        assert!(child_kills(&h.tick()).is_empty());
        h.at(0.003 + TIMEOUT.as_secs_f64());
        assert_eq!(child_kills(&h.tick()), [(0, "d".to_string())]);
    }

    #[test]
    fn nothing_is_sent_ahead_of_long_executions_nor_in_reuse_mode() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.submit(job("a", None));
        h.submit(job("b", None));
        h.at(AHEAD_IF_UNDER.as_secs_f64());
        assert_eq!(executes(&h.succeed(0, "a")), [(0, "b".to_string())]);
        assert!(executes(&h.submit(job("c", None))).is_empty());

        // Short executions, but the current one has already run long.
        let mut h = running_after_a_short_one();
        h.at(0.001 + AHEAD_IF_UNDER.as_secs_f64());
        assert!(executes(&h.submit(job("c", None))).is_empty());

        let mut h = Harness::ready(config(1, Isolation::Reuse));
        h.submit(job("a", None));
        h.submit(job("b", None));
        h.at(0.001);
        assert_eq!(executes(&h.succeed(0, "a")), [(0, "b".to_string())]);
        assert!(executes(&h.submit(job("c", None))).is_empty());
    }

    #[test]
    fn a_job_sent_ahead_to_a_template_that_dies_goes_back_to_the_queue_never_lost() {
        let mut h = running_after_a_short_one();
        h.submit(job("c", None));
        let acts = h.gone(0, true, Some(libc::SIGKILL));
        // b crashed with its template; c never started: queued again, run by the next
        // template.
        let out = finished(&acts);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].execution_id.as_str(), "b");
        assert_eq!(out[0].status, Status::Crashed);
        assert!(returned(&acts).is_empty());
        assert_eq!(executes(&h.hello(0)), [(0, "c".to_string())]);
    }

    #[test]
    fn a_job_cancelled_while_sent_ahead_is_killed_as_it_starts() {
        let mut h = running_after_a_short_one();
        h.submit(job("c", None));
        assert!(h.step(Event::Cancel("c".into())).is_empty());
        h.at(0.002);
        let acts = h.succeed(0, "b");
        assert_eq!(child_kills(&acts), [(0, "c".to_string())]);
        let acts = h.frame(0, ended("c", ExitKind::Signaled(libc::SIGKILL)));
        let out = finished(&acts);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Cancelled);
    }

    #[test]
    fn a_job_sent_ahead_during_a_drain_is_killed_once_the_deadline_passed() {
        let mut h = running_after_a_short_one();
        h.submit(job("c", None));
        // Drain with no time left: b is killed, then c as soon as it is the running one.
        let acts = h.step(Event::Shutdown(Duration::ZERO));
        assert_eq!(child_kills(&acts), [(0, "b".to_string())]);
        let acts = h.frame(0, ended("b", ExitKind::Signaled(libc::SIGKILL)));
        assert_eq!(interrupted(&acts).len(), 1);
        assert_eq!(child_kills(&acts), [(0, "c".to_string())]);
        let acts = h.frame(0, ended("c", ExitKind::Signaled(libc::SIGKILL)));
        assert_eq!(interrupted(&acts)[0].execution_id.as_str(), "c");
    }

    #[test]
    fn a_new_package_set_replaces_templates_one_at_a_time_never_a_busy_one() {
        let mut h = Harness::ready(config(2, Isolation::Fork));
        let first = h.submit(job("a", None));
        let busy = executes(&first)[0].0;
        let idle = 1 - busy;
        let set = PathBuf::from("/packages/2-abc");
        let acts = h.step(Event::Packages(Some(set.clone())));
        // The idle template goes; the busy one keeps running its execution.
        assert_eq!(shutdowns(&acts), [idle]);
        assert!(child_kills(&acts).is_empty() && template_kills(&acts).is_empty());
        assert_eq!(h.d.shared.packages_stale.load(Ordering::Relaxed), 2);
        // Work submitted meanwhile waits for the new template (one start at most).
        assert!(executes(&h.submit(job("b", None))).is_empty());
        let acts = h.gone(idle, true, None);
        let new = acts.iter().find_map(|a| match a {
            Action::Spawn { slot, packages, .. } if *slot == idle => Some(packages.clone()),
            _ => None,
        });
        assert_eq!(new, Some(Some(Arc::new(set.clone()))));
        assert_eq!(executes(&h.hello(idle)), [(idle, "b".to_string())]);
        assert_eq!(h.d.shared.packages_stale.load(Ordering::Relaxed), 1);
        // The old template finishes "a" on the old set, then is replaced in turn.
        let acts = h.succeed(busy, "a");
        assert_eq!(finished(&acts).len(), 1);
        assert_eq!(shutdowns(&acts), [busy]);
        h.gone(busy, true, None);
        h.hello(busy);
        assert_eq!(h.d.shared.packages_stale.load(Ordering::Relaxed), 0);
        assert!(shutdowns(&h.succeed(idle, "b")).is_empty());
    }

    fn spawns(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { slot, .. } => Some(*slot),
                _ => None,
            })
            .collect()
    }

    /// `(slot, execution id)` of every Execute sent.
    fn executes(actions: &[Action]) -> Vec<(usize, String)> {
        sent(actions, |m| match m {
            ToWorker::Execute(e) => Some(e.execution_id.clone()),
            _ => None,
        })
    }

    /// `(slot, execution id)` of every child Kill sent.
    fn child_kills(actions: &[Action]) -> Vec<(usize, String)> {
        sent(actions, |m| match m {
            ToWorker::Kill { execution_id } => Some(execution_id.clone()),
            _ => None,
        })
    }

    /// The slots told to shut down.
    fn shutdowns(actions: &[Action]) -> Vec<usize> {
        sent(actions, |m| matches!(m, ToWorker::Shutdown).then_some(()))
            .into_iter()
            .map(|(slot, ())| slot)
            .collect()
    }

    fn sent<T>(actions: &[Action], pick: impl Fn(&ToWorker) -> Option<T>) -> Vec<(usize, T)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Template {
                    slot,
                    cmd: TemplateCmd::Send(msg),
                } => pick(msg).map(|x| (*slot, x)),
                _ => None,
            })
            .collect()
    }

    /// The slots whose template is SIGKILLed.
    fn template_kills(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Template {
                    slot,
                    cmd: TemplateCmd::Kill,
                } => Some(*slot),
                _ => None,
            })
            .collect()
    }

    fn finished(actions: &[Action]) -> Vec<&ExecutionOutcome> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(PoolEvent::Finished(out)) => Some(out),
                _ => None,
            })
            .collect()
    }

    fn interrupted(actions: &[Action]) -> Vec<&ExecutionOutcome> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(PoolEvent::Interrupted(out)) => Some(out),
                _ => None,
            })
            .collect()
    }

    fn returned(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(PoolEvent::Returned { execution_id }) => Some(execution_id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn started(actions: &[Action]) -> Option<&Result<(), String>> {
        actions.iter().find_map(|a| match a {
            Action::Started(r) => Some(r),
            _ => None,
        })
    }

    fn stopped(actions: &[Action]) -> Option<&ShutdownReport> {
        actions.iter().find_map(|a| match a {
            Action::Stop(r) => Some(r),
            _ => None,
        })
    }

    fn error_type(out: &ExecutionOutcome) -> &str {
        &out.error.as_ref().expect("an error").error_type
    }

    fn pair(slot: usize, id: &str) -> (usize, String) {
        (slot, id.to_string())
    }

    #[test]
    fn start_up_is_reported_once_every_template_said_hello() {
        let mut h = Harness::starting(config(2, Isolation::Fork));
        assert!(started(&h.hello(0)).is_none());
        assert!(matches!(started(&h.hello(1)), Some(Ok(()))));
        assert_eq!(h.d.shared.ready.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_template_that_fails_at_start_up_stops_the_pool() {
        let mut h = Harness::starting(config(2, Isolation::Fork));
        h.hello(0);
        let actions = h.gone(1, false, None);
        assert!(matches!(started(&actions), Some(Err(_))));
        // The drain is immediate: the ready template is told to stop, nothing restarts.
        assert_eq!(shutdowns(&actions), vec![0]);
        assert!(spawns(&actions).is_empty());
        assert!(stopped(&actions).is_none());
        let actions = h.gone(0, true, None);
        assert!(stopped(&actions).is_some());
        assert!(started(&actions).is_none(), "start-up is answered once");
    }

    #[test]
    fn jobs_go_to_idle_slots_and_the_rest_wait_in_order() {
        let mut h = Harness::ready(config(2, Isolation::Fork));
        assert_eq!(executes(&h.submit(job("a", None))), vec![pair(0, "a")]);
        assert_eq!(executes(&h.submit(job("b", None))), vec![pair(1, "b")]);
        assert!(executes(&h.submit(job("c", None))).is_empty());
        assert!(executes(&h.submit(job("d", None))).is_empty());
        assert_eq!(h.d.shared.busy.load(Ordering::Relaxed), 2);
        assert_eq!(h.d.shared.queued.load(Ordering::Relaxed), 2);

        let started_frame = FromWorker::Started(Started {
            execution_id: "b".into(),
            pid: 42,
        });
        let actions = h.frame(1, started_frame);
        assert!(matches!(
            &actions[..],
            [Action::Emit(PoolEvent::Started { execution_id, pid: 42, .. })] if execution_id == "b"
        ));
        let log = FromWorker::Log(Log {
            execution_id: "b".into(),
            seq: 0,
            timestamp_us: 0,
            level: LogLevel::Info,
            message: "hi".into(),
        });
        assert!(matches!(
            &h.frame(1, log)[..],
            [Action::Emit(PoolEvent::Log(_))]
        ));

        // The slot that frees first takes the queue's head, in the same step.
        h.at(1.0);
        let actions = h.succeed(1, "b");
        let out = finished(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].execution_id, "b");
        assert_eq!(out[0].status, Status::Success);
        assert_eq!(out[0].duration, Duration::from_secs(1));
        assert_eq!(executes(&actions), vec![pair(1, "c")]);
        assert_eq!(h.d.shared.queued.load(Ordering::Relaxed), 1);
        assert_eq!(h.d.shared.completed.load(Ordering::Relaxed), 1);

        // No result before Ended: a crash, with the exit code.
        let actions = h.frame(0, ended("a", ExitKind::Exited(3)));
        assert_eq!(finished(&actions)[0].status, Status::Crashed);
        assert_eq!(finished(&actions)[0].exit_code, Some(3));
        assert_eq!(executes(&actions), vec![pair(0, "d")]);
    }

    #[test]
    fn replies_reach_the_running_execution_only() {
        let mut h = Harness::ready(config(2, Isolation::Fork));
        h.submit(job("a", None));
        let reply = |id: &str| Reply {
            execution_id: id.into(),
            request_id: 1,
            outcome: ReplyOutcome::Ok {
                value_json: "null".into(),
            },
        };
        let actions = h.step(Event::Reply(reply("a")));
        let replies = sent(&actions, |m| matches!(m, ToWorker::Reply(_)).then_some(()));
        assert_eq!(replies, vec![(0, ())]);
        assert!(h.step(Event::Reply(reply("gone"))).is_empty());
    }

    #[test]
    fn frames_out_of_place_kill_the_template() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        // Nothing is running on slot 0.
        assert_eq!(template_kills(&h.frame(0, success("x"))), vec![0]);
        h.submit(job("a", None));
        assert_eq!(template_kills(&h.frame(0, success("other"))), vec![0]);
        assert!(h.frame(0, success("a")).is_empty());
        assert_eq!(
            template_kills(&h.frame(0, success("a"))),
            vec![0],
            "a second result"
        );
    }

    #[test]
    fn deadline_kills_the_child_and_ended_gives_timeout() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.submit(job("a", None));
        assert_eq!(h.d.next_timer(), Some(h.t0 + TIMEOUT));
        assert!(h.at(9.9).tick().is_empty());
        let actions = h.at(10.0).tick();
        assert_eq!(child_kills(&actions), vec![pair(0, "a")]);
        assert!(template_kills(&actions).is_empty());
        assert_eq!(h.d.next_timer(), Some(h.t0 + TIMEOUT + GRACE));

        let actions = h.at(10.5).frame(0, ended("a", ExitKind::Signaled(9)));
        let out = finished(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Timeout);
        assert_eq!(error_type(out[0]), "Timeout");
        assert_eq!(out[0].exit_signal, Some(9));
        assert_eq!(h.d.next_timer(), None);
    }

    #[test]
    fn no_ended_within_the_grace_kills_the_template() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.submit(job("a", None));
        h.submit(job("b", None));
        h.at(10.0).tick();
        assert!(h.at(11.9).tick().is_empty());
        let actions = h.at(12.0).tick();
        assert_eq!(template_kills(&actions), vec![0]);
        assert_eq!(
            h.d.next_timer(),
            None,
            "nothing more to time: its Gone ends it"
        );
        assert!(h.at(20.0).tick().is_empty(), "the template is killed once");

        let actions = h.gone(0, true, Some(9));
        let out = finished(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].execution_id, "a");
        assert_eq!(out[0].status, Status::Timeout);
        // A template that had said hello is replaced at once.
        assert_eq!(spawns(&actions), vec![0]);
        // b waits for the new template.
        assert!(executes(&actions).is_empty());
        assert_eq!(executes(&h.hello(0)), vec![pair(0, "b")]);
    }

    #[test]
    fn reuse_mode_kills_the_template_for_a_deadline() {
        let mut h = Harness::ready(config(1, Isolation::Reuse));
        h.submit(job("a", None));
        let actions = h.at(10.0).tick();
        assert!(child_kills(&actions).is_empty());
        assert_eq!(template_kills(&actions), vec![0]);
        let actions = h.gone(0, true, Some(9));
        assert_eq!(finished(&actions)[0].status, Status::Timeout);
        assert_eq!(spawns(&actions), vec![0]);
    }

    #[test]
    fn cancel_ends_queued_work_at_once_and_kills_running_work() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.submit(job("a", None));
        h.submit(job("b", None));

        let actions = h.step(Event::Cancel("b".into()));
        let out = finished(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].execution_id, "b");
        assert_eq!(out[0].status, Status::Cancelled);
        assert_eq!(out[0].started_at, None);
        assert_eq!(h.d.shared.queued.load(Ordering::Relaxed), 0);

        let actions = h.step(Event::Cancel("a".into()));
        assert_eq!(child_kills(&actions), vec![pair(0, "a")]);
        assert!(finished(&actions).is_empty());
        assert!(h.step(Event::Cancel("a".into())).is_empty(), "killed once");
        assert!(h.step(Event::Cancel("unknown".into())).is_empty());

        let actions = h.frame(0, ended("a", ExitKind::Signaled(9)));
        let out = finished(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Cancelled);
        assert_eq!(error_type(out[0]), "Cancelled");
    }

    #[test]
    fn a_result_before_the_kill_does_not_win_over_the_kill() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.submit(job("a", None));
        h.frame(0, success("a"));
        h.step(Event::Cancel("a".into()));
        let actions = h.frame(0, ended("a", ExitKind::Exited(0)));
        assert_eq!(finished(&actions)[0].status, Status::Cancelled);
    }

    #[test]
    fn template_death_ends_its_execution_once_and_replaces_it() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.submit(job("a", None));
        let old = h.generations[0];
        let actions = h.gone(0, true, Some(11));
        let out = finished(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Crashed);
        assert_eq!(out[0].exit_signal, Some(11));
        let message = &out[0].error.as_ref().unwrap().message;
        assert!(message.contains("SIGSEGV"), "{message}");
        assert!(message.contains("ended unexpectedly"), "{message}");
        assert_eq!(spawns(&actions), vec![0]);
        assert_ne!(h.generations[0], old);

        // Late frames and reports of the dead template are ignored.
        let late = Event::Template(TemplateEvent::Frame {
            slot: 0,
            generation: old,
            msg: ended("a", ExitKind::Exited(0)),
        });
        assert!(h.step(late).is_empty());
        let late = Event::Template(TemplateEvent::Gone {
            slot: 0,
            generation: old,
            was_ready: true,
            reason: "again".into(),
            exit_code: None,
            exit_signal: None,
        });
        assert!(h.step(late).is_empty());
        assert_eq!(h.d.shared.completed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn replacements_that_fail_to_start_back_off() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        h.gone(0, true, Some(9));
        // The replacement never says hello: 200 ms, then 400 ms before the next one.
        let actions = h.at(1.0).gone(0, false, None);
        assert!(spawns(&actions).is_empty());
        assert!(
            started(&actions).is_none(),
            "start-up was over: not a pool failure"
        );
        assert_eq!(h.d.next_timer(), Some(h.t0 + Duration::from_millis(1200)));
        assert!(h.at(1.1).tick().is_empty());
        assert_eq!(spawns(&h.at(1.2).tick()), vec![0]);
        h.at(2.0).gone(0, false, None);
        assert_eq!(h.d.next_timer(), Some(h.t0 + Duration::from_millis(2400)));
        assert_eq!(spawns(&h.at(2.4).tick()), vec![0]);
        // Work waits meanwhile; a hello resets the back-off.
        assert!(executes(&h.submit(job("a", None))).is_empty());
        assert_eq!(executes(&h.hello(0)), vec![pair(0, "a")]);
        h.gone(0, true, None);
        assert_eq!(h.d.slots[0].failed_starts, 0);
        let actions = h.at(3.0).gone(0, false, None);
        assert!(spawns(&actions).is_empty());
        assert_eq!(h.d.next_timer(), Some(h.t0 + Duration::from_millis(3200)));
    }

    #[test]
    fn drain_hands_back_the_queue_and_lets_running_work_finish() {
        let mut h = Harness::ready(config(2, Isolation::Fork));
        h.submit(job("a", None));
        h.submit(job("b", None));
        h.submit(job("c", None));

        let actions = h.step(Event::Shutdown(Duration::from_secs(30)));
        assert_eq!(returned(&actions), vec!["c"]);
        assert!(child_kills(&actions).is_empty());
        assert_eq!(h.d.shared.queued.load(Ordering::Relaxed), 0);
        let actions = h.submit(job("d", None));
        assert_eq!(returned(&actions), vec!["d"]);
        assert!(executes(&actions).is_empty());

        // A slot that frees during the drain takes nothing and is told to stop only
        // once nothing runs any more.
        let actions = h.at(1.0).succeed(0, "a");
        assert_eq!(finished(&actions).len(), 1);
        assert!(shutdowns(&actions).is_empty());
        let actions = h.at(2.0).succeed(1, "b");
        assert_eq!(finished(&actions).len(), 1);
        assert_eq!(shutdowns(&actions), vec![0, 1]);
        assert!(stopped(&actions).is_none());

        assert!(stopped(&h.gone(0, true, None)).is_none());
        let actions = h.gone(1, true, None);
        assert!(
            spawns(&actions).is_empty(),
            "nothing restarts during a drain"
        );
        let report = stopped(&actions).expect("stopped");
        assert_eq!(
            (report.drained, report.abandoned, report.returned),
            (2, 0, 2)
        );
    }

    #[test]
    fn drain_deadline_interrupts_what_still_runs() {
        let mut h = Harness::ready(config(2, Isolation::Fork));
        h.submit(job("a", None));
        h.step(Event::Shutdown(Duration::from_secs(5)));
        assert_eq!(h.d.next_timer(), Some(h.t0 + Duration::from_secs(5)));
        let actions = h.at(5.0).tick();
        assert_eq!(child_kills(&actions), vec![pair(0, "a")]);

        let actions = h.at(5.5).frame(0, ended("a", ExitKind::Signaled(9)));
        assert!(finished(&actions).is_empty());
        let out = interrupted(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Cancelled);
        assert_eq!(error_type(out[0]), SHUTDOWN);
        assert_eq!(shutdowns(&actions), vec![0, 1]);

        // Templates that do not exit are killed a grace after the drain's deadline.
        h.gone(0, true, None);
        assert!(h.at(6.9).tick().is_empty());
        let actions = h.at(7.0).tick();
        assert_eq!(template_kills(&actions), vec![0, 1]);
        let report = stopped(&actions).expect("stopped");
        assert_eq!(
            (report.drained, report.abandoned, report.returned),
            (0, 1, 0)
        );
    }

    #[test]
    fn a_second_shutdown_ends_the_drain_now() {
        let mut h = Harness::ready(config(1, Isolation::Reuse));
        h.submit(job("a", None));
        assert!(h.step(Event::Shutdown(Duration::from_secs(60))).is_empty());
        let actions = h.at(1.0).step(Event::Shutdown(Duration::from_secs(60)));
        // Reuse mode: the code runs in the template, so the template is killed.
        assert_eq!(template_kills(&actions), vec![0]);
        let actions = h.gone(0, true, Some(9));
        assert_eq!(error_type(interrupted(&actions)[0]), SHUTDOWN);
        assert_eq!(stopped(&actions).expect("stopped").abandoned, 1);
    }

    #[test]
    fn dropping_every_handle_stops_at_once() {
        let mut h = Harness::ready(config(1, Isolation::Fork));
        let actions = h.step(Event::Closed);
        assert_eq!(shutdowns(&actions), vec![0]);
        assert!(stopped(&h.gone(0, true, None)).is_some());
    }

    #[test]
    fn fork_mode_prefers_the_slot_that_last_ran_the_same_org() {
        let mut h = Harness::ready(config(3, Isolation::Fork));
        assert_eq!(
            executes(&h.submit(job("a1", Some("A")))),
            vec![pair(0, "a1")]
        );
        assert_eq!(
            executes(&h.submit(job("b1", Some("B")))),
            vec![pair(1, "b1")]
        );
        h.succeed(0, "a1");
        h.succeed(1, "b1");
        // Slot 1 ran B last; slots 2 (never used) and 0 have waited longer.
        assert_eq!(
            executes(&h.submit(job("b2", Some("B")))),
            vec![pair(1, "b2")]
        );
        // No slot ran C: the longest idle one.
        assert_eq!(
            executes(&h.submit(job("c1", Some("C")))),
            vec![pair(2, "c1")]
        );
        // The remaining slot serves anyone, even another organization's.
        assert_eq!(
            executes(&h.submit(job("b3", Some("B")))),
            vec![pair(0, "b3")]
        );
    }

    #[test]
    fn fork_mode_without_an_org_takes_the_longest_idle_slot() {
        let mut h = Harness::ready(config(2, Isolation::Fork));
        h.submit(job("a", None));
        h.submit(job("b", None));
        h.succeed(1, "b");
        h.succeed(0, "a");
        // Slot 0 was dispatched to first, so it has waited longest.
        assert_eq!(executes(&h.submit(job("c", None))), vec![pair(0, "c")]);
    }

    #[test]
    fn reuse_mode_binds_a_template_to_one_org() {
        let mut h = Harness::ready(config(2, Isolation::Reuse));
        assert_eq!(
            executes(&h.submit(job("a1", Some("A")))),
            vec![pair(0, "a1")]
        );
        h.succeed(0, "a1");
        // Slot 0 now serves A only: B goes to the fresh slot 1.
        assert_eq!(
            executes(&h.submit(job("b1", Some("B")))),
            vec![pair(1, "b1")]
        );
        h.succeed(1, "b1");
        assert_eq!(
            executes(&h.submit(job("a2", Some("A")))),
            vec![pair(0, "a2")]
        );
        h.succeed(0, "a2");

        // C: no slot serves it and none is fresh, so the longest-idle one (slot 1) is
        // recycled and C waits for its replacement.
        let actions = h.submit(job("c1", Some("C")));
        assert!(executes(&actions).is_empty());
        assert_eq!(shutdowns(&actions), vec![1]);
        // While one is changing, nothing more is recycled, even for another org.
        let actions = h.submit(job("d1", Some("D")));
        assert!(shutdowns(&actions).is_empty());
        let actions = h.gone(1, true, None);
        assert_eq!(spawns(&actions), vec![1]);
        assert_eq!(executes(&h.hello(1)), vec![pair(1, "c1")]);
    }

    #[test]
    fn reuse_mode_recycles_a_template_after_enough_executions() {
        let mut cfg = config(1, Isolation::Reuse);
        cfg.max_executions_per_worker = 2;
        let mut h = Harness::ready(cfg);
        h.submit(job("a", None));
        assert!(shutdowns(&h.succeed(0, "a")).is_empty());
        h.submit(job("b", None));
        h.submit(job("c", None));
        let actions = h.succeed(0, "b");
        assert_eq!(shutdowns(&actions), vec![0]);
        assert!(
            executes(&actions).is_empty(),
            "c waits for the new template"
        );
        assert_eq!(spawns(&h.gone(0, true, None)), vec![0]);
        assert_eq!(executes(&h.hello(0)), vec![pair(0, "c")]);
    }
}
