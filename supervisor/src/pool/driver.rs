//! The pool's I/O side: the [`Pool`] handle callers hold, and the task that runs the
//! `Dispatcher` and carries out what it decides.
//!
//! The task puts everything that can happen into one order with a single `select!`
//! (a caller's request, a template task's event, the dispatcher's next timer), hands it
//! to `Dispatcher::step` with the time, and applies the `Action`s it returns:
//! starting template tasks, sending them commands, sending [`PoolEvent`]s, answering
//! start-up and shutdown. It makes no decision of its own (nextest's dispatcher and
//! executor split, with the decisions kept synchronous so they are unit-tested without
//! processes: see [`super::dispatcher`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::config::{PoolConfig, PoolError};
use super::dispatcher::{Action, Dispatcher, Event, Shared, ShutdownReport};
use super::template_task::{self, TemplateCmd, TemplateEvent};
use super::uids::{self, SlotIds};
use super::{firewall, posture};
use crate::outcome::{ExecutionId, Job, PoolEvent};

/// Handle to a running pool. Cloning it is cheap; the pool stops when [`Pool::shutdown`]
/// is called or every handle is dropped.
#[derive(Clone)]
pub struct Pool {
    requests: mpsc::UnboundedSender<Command>,
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
    /// How many package sets were given with [`Pool::set_packages`] so far.
    pub packages_version: u64,
    /// Templates still running with an older package set than the last one given.
    pub packages_stale: usize,
    /// Jobs sent to a busy fork-mode template ahead of its current execution's end
    /// (`dispatcher`, "Sent ahead").
    pub sent_ahead: u64,
}

/// What a [`Pool`] handle asks of the driver task.
enum Command {
    Submit(Box<Job>),
    Cancel(ExecutionId),
    Reply(warden_protocol::Reply),
    Packages(Option<std::path::PathBuf>),
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
        let start_timeout = cfg.start_timeout;
        let cfg = Arc::new(cfg);
        let (dispatcher, first) = Dispatcher::new(cfg.clone(), shared.clone());
        let driver = Driver {
            cmds: vec![None; cfg.workers],
            cfg,
            dispatcher,
            requests: req_rx,
            tmpl_tx,
            tmpl_rx,
            events,
            startup: Some(ready_tx),
            done: None,
            _lease: lease,
        };
        tokio::spawn(driver.run(first));
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
        match self.requests.send(Command::Submit(Box::new(job))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(Command::Submit(job))) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(job)
            }
            Err(_) => unreachable!("we sent a Submit"),
        }
    }

    /// Cancels a queued or running execution (it ends `cancelled`). Unknown ids are
    /// ignored: the execution already finished, or never came here.
    pub fn cancel(&self, execution_id: &ExecutionId) {
        let _ = self.requests.send(Command::Cancel(execution_id.clone()));
    }

    /// Answers a [`PoolEvent::Request`]. A reply for an execution that already ended
    /// is dropped.
    pub fn reply(&self, reply: warden_protocol::Reply) {
        let _ = self.requests.send(Command::Reply(reply));
    }

    /// Stops taking work and hands back what is queued (`PoolEvent::Returned`), lets
    /// what is running finish for up to `drain`, then kills what is left (reported
    /// `PoolEvent::Interrupted`) and stops every template. Called again, the drain
    /// ends now.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let (done, rx) = oneshot::channel();
        if self
            .requests
            .send(Command::Shutdown { drain, done })
            .is_err()
        {
            return ShutdownReport::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Rolls the pool over to a new package set (`dir` on the templates' import path, or
    /// none): templates are replaced one at a time as they become idle; executions that
    /// are running finish on the set they started with. [`PoolStats::packages_stale`]
    /// says when no template of an older set is left.
    pub fn set_packages(&self, dir: Option<std::path::PathBuf>) {
        let _ = self.requests.send(Command::Packages(dir));
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
            sent_ahead: s.sent_ahead.load(Ordering::Relaxed),
            last_spawn_to_ready_us: s.last_spawn_to_ready_us.load(Ordering::Relaxed),
            packages_version: s.packages_version.load(Ordering::Relaxed),
            packages_stale: s.packages_stale.load(Ordering::Relaxed),
        }
    }
}

/// The pool's task: the dispatcher plus the channels and processes it acts through.
struct Driver {
    cfg: Arc<PoolConfig>,
    dispatcher: Dispatcher,
    requests: mpsc::UnboundedReceiver<Command>,
    tmpl_tx: mpsc::UnboundedSender<TemplateEvent>,
    tmpl_rx: mpsc::UnboundedReceiver<TemplateEvent>,
    events: mpsc::UnboundedSender<PoolEvent>,
    /// Each slot's current template task (`None` before its first start). Dropping a
    /// sender makes its task kill the template ("pool shut down").
    cmds: Vec<Option<mpsc::UnboundedSender<TemplateCmd>>>,
    startup: Option<oneshot::Sender<Result<(), String>>>,
    /// The first shutdown request's answer (a second request only moves the deadline).
    done: Option<oneshot::Sender<ShutdownReport>>,
    /// The slots' uids, held until the driver (and so every template) is gone.
    _lease: Option<uids::Lease>,
}

impl Driver {
    async fn run(mut self, first: Vec<Action>) {
        if self.apply(first) {
            return;
        }
        loop {
            let timer = self.dispatcher.next_timer();
            let event = tokio::select! {
                req = self.requests.recv() => match req {
                    Some(Command::Submit(job)) => Event::Submit(job),
                    Some(Command::Cancel(id)) => Event::Cancel(id),
                    Some(Command::Reply(reply)) => Event::Reply(reply),
                    Some(Command::Packages(dir)) => Event::Packages(dir),
                    Some(Command::Shutdown { drain, done }) => {
                        if self.done.is_none() {
                            self.done = Some(done);
                        }
                        Event::Shutdown(drain)
                    }
                    // Every handle dropped: stop now.
                    None => Event::Closed,
                },
                Some(ev) = self.tmpl_rx.recv() => Event::Template(ev),
                _ = sleep_until_opt(timer) => Event::Tick,
            };
            let actions = self.dispatcher.step(event, Instant::now());
            if self.apply(actions) {
                return;
            }
        }
    }

    /// Carries out the dispatcher's actions, in order; true once it said stop.
    fn apply(&mut self, actions: Vec<Action>) -> bool {
        for action in actions {
            match action {
                Action::Spawn {
                    slot,
                    generation,
                    packages,
                } => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(template_task::run(
                        self.cfg.clone(),
                        slot,
                        generation,
                        packages,
                        self.tmpl_tx.clone(),
                        rx,
                    ));
                    self.cmds[slot] = Some(tx);
                }
                Action::Template { slot, cmd } => {
                    // If the template task is gone its Gone event is on the way, and the
                    // dispatcher finalises whatever the command was about.
                    if let Some(tx) = &self.cmds[slot] {
                        let _ = tx.send(cmd);
                    }
                }
                Action::Emit(event) => {
                    let _ = self.events.send(event);
                }
                Action::Started(result) => {
                    if let Some(tx) = self.startup.take() {
                        let _ = tx.send(result);
                    }
                }
                Action::Stop(report) => {
                    if let Some(done) = self.done.take() {
                        let _ = done.send(report);
                    }
                    return true;
                }
            }
        }
        false
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
