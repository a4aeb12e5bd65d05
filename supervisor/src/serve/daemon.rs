//! The daemon behind [`crate::serve::serve`], in three parts: [`Daemon::start`] (connect
//! to every service, start the stages), [`Daemon::run`] (the main loop: one `select!`
//! that hands each event to its handler), and [`Daemon::shut_down`] (the bounded stop
//! sequence). What a handler decides from plain data alone is a pure function at the
//! bottom of this file ([`on_request`], [`end_of_run`], [`give_back_of`], [`drained`]),
//! unit-tested without processes or services.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use warden_protocol::Log;

use super::acker;
use super::handback::HandBacks;
use super::held::Held;
use super::inflight::{Inflight, Meta};
use super::outage::RedisOutage;
use super::places::Places;
use super::prepare::{self, Dispatch};
use super::publisher::Publisher;
use super::{due, sweeper};
use super::{ServeConfig, ServeError, ServeReport, Shutdown};
use crate::intake::{
    CancelListener, CancelSignal, Heartbeat, Intake, Keys, Liveness, SupervisorStatus,
};
use crate::modules::{ModuleCache, ModuleSync};
use crate::ops::metrics::{Metrics, Sources};
use crate::ops::notify;
use crate::ops::ready::{Checks, Readiness};
use crate::outcome::{ExecutionId, ExecutionOutcome, PoolEvent};
use crate::packages::PackageKeeper;
use crate::pool::Pool;
use crate::sdk::Sdk;
use crate::store::{Completed, Reservation, Store, StoreError, Writer, WriterHandle};

/// After the drain's deadline, time to kill what still runs, give back what will not
/// finish and write the last results, before the process must be gone.
const FLUSH_GRACE: Duration = Duration::from_secs(1);
/// How soon after a second signal the process is gone.
const SECOND_SIGNAL_GRACE: Duration = Duration::from_secs(1);
/// The most one side call to Redis or PostgreSQL may take off the main path.
const SIDE_TIMEOUT: Duration = Duration::from_secs(2);
/// Even past the deadline, this long to delete the heartbeat (so peers take over at
/// once instead of after the TTL).
const HEARTBEAT_DELETE_MIN: Duration = Duration::from_millis(300);

/// Everything the running daemon owns: the services, the stages' tasks and channels,
/// and the main loop's own state.
pub(super) struct Daemon {
    cfg: ServeConfig,
    store: Store,
    intake: Intake,
    heartbeat: Heartbeat,
    liveness: watch::Receiver<Liveness>,
    liveness_open: bool,
    cancels: CancelListener,
    sdk: Sdk,
    modules: ModuleSync,
    stop_modules: watch::Sender<bool>,
    module_follower: JoinHandle<()>,
    pool: Pool,
    pool_events: mpsc::UnboundedReceiver<PoolEvent>,
    writer: WriterHandle,
    acker: JoinHandle<()>,
    acks_waiting: acker::Waiting,
    held: Held,
    publisher: Publisher,
    hand_backs: HandBacks,
    /// Intake places in all, and one permit per free one.
    capacity: usize,
    permits: Arc<Semaphore>,
    /// The same places as the reader sees them (with the probes' debt), for the report.
    places: Places,
    stop_reader: watch::Sender<bool>,
    dispatches: mpsc::Receiver<Vec<Dispatch>>,
    reader: JoinHandle<()>,
    sweeper: JoinHandle<u64>,
    /// The due-work poller (retries and delayed starts).
    due: JoinHandle<u64>,
    taken_over: Arc<AtomicU64>,
    inflight: Inflight,
    report: ServeReport,
    /// Finished executions waiting for a place in the writer, with whether each holds
    /// an intake place (given back once the writer takes it: that is the back-pressure).
    to_writer: VecDeque<(Completed, bool)>,
    status_tick: tokio::time::Interval,
    log_tick: tokio::time::Interval,
    /// Entries peers took over during a heartbeat lapse, found off the loop.
    lapse_tx: mpsc::UnboundedSender<Vec<String>>,
    lapse_rx: mpsc::UnboundedReceiver<Vec<String>>,
    rate: RateWindow,
    started: chrono::DateTime<chrono::Utc>,
    stop: Stop,
    /// The pool's drain, once shutdown has begun.
    draining: Option<JoinHandle<()>>,
    /// `--http`: the counters this loop updates (`None`: nothing is counted).
    metrics: Option<Metrics>,
    /// What `/readyz` reports; moved to draining when shutdown begins.
    ready: Readiness,
    /// systemd's watchdog, pinged from this loop (`None`: no watchdog).
    watchdog: Option<tokio::time::Interval>,
    /// `--retention`'s task.
    retention: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Start-up: every service connected ([`connect`]) and every stage started, or the
    /// step that failed.
    pub(super) async fn start(
        cfg: ServeConfig,
        shutdown: watch::Receiver<Option<Shutdown>>,
        metrics: Option<Metrics>,
        ready: Readiness,
    ) -> Result<Daemon, ServeError> {
        let Services {
            store,
            intake,
            heartbeat,
            liveness,
            cancels,
            sdk,
            modules,
            stop_modules,
            module_follower,
            pool,
            pool_events,
        } = connect(&cfg).await?;
        let mut writer_cfg = cfg.writer.clone();
        writer_cfg.metrics = metrics.as_ref().map(Metrics::commit);
        let (writer, committed) = Writer::spawn(store.clone(), writer_cfg);
        // Config changes of committed executions reach the cache before their completions.
        let committed = sdk.after_commit(committed);
        let held = Held::default();
        let outage = RedisOutage::default();
        if let Some(m) = &metrics {
            m.set_sources(Sources {
                pool: pool.clone(),
                workers: cfg.pool.workers,
                store: store.clone(),
                intake: intake.clone(),
                modules: modules.clone(),
                outage: outage.clone(),
            });
        }
        let acks_waiting = acker::Waiting::default();
        let (direct_acks, direct_acks_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(acker::run(
            intake.clone(),
            committed,
            direct_acks_rx,
            outage.clone(),
            acks_waiting.clone(),
            held.clone(),
        ));
        let publisher = Publisher::new(intake.clone(), outage.clone());
        let hand_backs = HandBacks::spawn(store.clone(), cfg.consumer.clone());

        // One permit per execution this supervisor holds (running or queued in the pool).
        let capacity = cfg.pool.workers + cfg.prefetch;
        // A probe for other lanes' work may overdraw one lane's worth: the workers.
        let places = Places::new(capacity, cfg.pool.workers.max(1));
        let permits = places.permits.clone();
        let (stop_reader, reader_stopped) = watch::channel(false);
        let (dispatch_tx, dispatches) = mpsc::channel(4);
        let taken_over = Arc::new(AtomicU64::new(0));
        let sweeper = tokio::spawn(
            sweeper::Sweeper {
                store: store.clone(),
                intake: intake.clone(),
                every: cfg.sweep_every,
                older_than: cfg.heartbeat_ttl * 2,
                stop: reader_stopped.clone(),
            }
            .run(),
        );
        let due = tokio::spawn(
            due::DuePoller {
                store: store.clone(),
                intake: intake.clone(),
                every: due::POLL_EVERY,
                lease: due::LEASE,
                stop: reader_stopped.clone(),
            }
            .run(),
        );
        let retention = cfg.retention.clone().map(|r| {
            tokio::spawn(crate::ops::retention::run(
                store.clone(),
                r,
                metrics.clone(),
                reader_stopped.clone(),
            ))
        });
        let reader = tokio::spawn(
            prepare::Reader {
                intake: intake.clone(),
                store: store.clone(),
                writer: writer.clone(),
                held: held.clone(),
                direct_acks,
                sdk: sdk.clone(),
                modules: modules.clone(),
                places: places.clone(),
                read_linger: cfg.read_linger,
                out: dispatch_tx,
                consumer: cfg.consumer.clone(),
                liveness: heartbeat.watch(),
                taken_over: taken_over.clone(),
                read_block: cfg.read_block,
                queues: cfg.queues.clone().into(),
                fair_probe: cfg.fair_probe,
                enough_per_lane: cfg.pool.workers.max(1),
                default_timeout: cfg.pool.timeout,
                stop: reader_stopped,
            }
            .run(),
        );
        tracing::info!(
            consumer = %cfg.consumer,
            workers = cfg.pool.workers,
            db_connections = cfg.db_connections,
            "serving"
        );

        let (lapse_tx, lapse_rx) = mpsc::unbounded_channel();
        let stop = Stop::new(
            shutdown,
            cfg.drain_timeout + cfg.pool.kill_grace + FLUSH_GRACE,
        );
        ready.serving(Checks {
            store: store.clone(),
            intake: intake.clone(),
            pool: pool.clone(),
        });
        notify::ready();
        let watchdog = notify::watchdog_every().map(|every| {
            tracing::info!(every = ?every, "pinging systemd's watchdog");
            tokio::time::interval(every)
        });
        Ok(Daemon {
            cfg,
            store,
            intake,
            heartbeat,
            liveness,
            liveness_open: true,
            cancels,
            sdk,
            modules,
            stop_modules,
            module_follower,
            pool,
            pool_events,
            writer,
            acker,
            acks_waiting,
            held,
            publisher,
            hand_backs,
            capacity,
            permits,
            places,
            stop_reader,
            dispatches,
            reader,
            sweeper,
            due,
            taken_over,
            inflight: Inflight::default(),
            report: ServeReport::default(),
            to_writer: VecDeque::new(),
            status_tick: tokio::time::interval(Duration::from_secs(1)),
            log_tick: tokio::time::interval(Duration::from_millis(20)),
            lapse_tx,
            lapse_rx,
            rate: RateWindow::default(),
            started: chrono::Utc::now(),
            stop,
            draining: None,
            metrics,
            ready,
            watchdog,
            retention,
        })
    }

    /// The main loop, until everything in flight has ended after a shutdown request (or
    /// its deadline passed); then the stop sequence.
    pub(super) async fn run(mut self) -> ServeReport {
        loop {
            let deadline = self.stop.deadline;
            tokio::select! {
                request = self.stop.next_signal() => self.on_shutdown(request),
                _ = sleep_until_opt(deadline), if self.draining.is_some() => {
                    tracing::warn!(in_flight = self.inflight.len(), "shutdown deadline passed; leaving what is unfinished to another supervisor");
                    break;
                }
                changed = self.liveness.changed(), if self.liveness_open => {
                    if changed.is_err() {
                        self.liveness_open = false;
                        continue;
                    }
                    self.on_liveness();
                }
                Some(taken) = self.lapse_rx.recv() => self.on_taken_over(taken),
                Some(batch) = self.dispatches.recv() => self.on_dispatches(batch),
                Some(ev) = self.pool_events.recv() => self.on_pool_event(ev),
                reservation = self.writer.reserve(), if !self.to_writer.is_empty() => {
                    self.on_writer_room(reservation);
                }
                Some(sig) = self.cancels.recv() => self.on_cancel(sig),
                _ = self.log_tick.tick(), if self.publisher.has_logs() => self.publisher.flush_logs(),
                _ = self.status_tick.tick() => self.on_status_tick(),
                _ = tick_opt(&mut self.watchdog), if self.watchdog.is_some() => notify::watchdog(),
            }
            let pool_drained = self.draining.as_ref().map(JoinHandle::is_finished);
            if drained(
                pool_drained,
                self.inflight.is_empty(),
                self.pool_events.is_empty(),
                self.to_writer.is_empty(),
            ) {
                break;
            }
        }
        self.shut_down().await
    }

    /// A shutdown request: the first stops intake and drains the pool; `Now` after that
    /// interrupts what still runs.
    fn on_shutdown(&mut self, request: Shutdown) {
        match on_request(self.draining.is_some(), request, self.cfg.drain_timeout) {
            OnRequest::StartDrain { drain } => {
                self.ready.draining();
                notify::stopping();
                tracing::info!(drain = ?self.cfg.drain_timeout, in_flight = self.inflight.len(), "shutting down: intake stopped, queued executions handed back, draining what runs");
                let _ = self.stop_reader.send(true);
                let p = self.pool.clone();
                self.draining = Some(tokio::spawn(async move {
                    p.shutdown(drain).await;
                }));
            }
            OnRequest::Interrupt => {
                tracing::warn!("second signal: interrupting what still runs and stopping within a second; what is unfinished is left to another supervisor");
                let p = self.pool.clone();
                tokio::spawn(async move {
                    p.shutdown(Duration::ZERO).await;
                });
            }
            OnRequest::Nothing => {}
        }
    }

    /// The heartbeat's state changed: after a lapse, asks (off the loop) which entries
    /// peers took over meanwhile.
    fn on_liveness(&mut self) {
        let now = *self.liveness.borrow_and_update();
        if now.lapses <= self.report.heartbeat_lapses {
            return;
        }
        self.report.heartbeat_lapses = now.lapses;
        // Peers may have taken over entries meanwhile: those runs are theirs.
        // Asked off the loop (Redis may be slow to answer as it returns).
        let (sids, i, tx) = (
            self.inflight.stream_ids(),
            self.intake.clone(),
            self.lapse_tx.clone(),
        );
        tokio::spawn(async move {
            let taken = match tokio::time::timeout(SIDE_TIMEOUT, i.taken_over(&sids)).await {
                Ok(Ok(taken)) => taken,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not check which entries peers took over (results of those are refused by the store anyway)");
                    return;
                }
                Err(_) => {
                    tracing::warn!("could not check in time which entries peers took over (results of those are refused by the store anyway)");
                    return;
                }
            };
            let _ = tx.send(taken);
        });
    }

    /// Entries peers took over during a lapse: their runs here are killed, their
    /// outcomes dropped.
    fn on_taken_over(&mut self, taken: Vec<String>) {
        self.held.remove(taken.iter().map(String::as_str));
        for id in self.inflight.mark_lost(&taken) {
            tracing::warn!(execution = %id, "a peer took this execution over while the heartbeat was gone: killing it here, its outcome will not be recorded");
            self.report.lost_to_peers += 1;
            self.pool.cancel(&id);
        }
    }

    /// A batch the reader prepared: into the pool, or (shutdown begun) given back.
    fn on_dispatches(&mut self, batch: Vec<Dispatch>) {
        for d in batch {
            let (id, sid) = (d.job.execution_id.clone(), d.meta.stream_id.clone());
            if self.draining.is_some() {
                // Prepared as intake stopped: never started, so it goes back.
                self.hand_backs.give_back(id, sid, None);
                self.permits.add_permits(1);
                self.report.returned += 1;
                continue;
            }
            if let Some(m) = &self.metrics {
                m.started(&d.meta.workflow_name, d.meta.org.as_deref());
            }
            self.inflight.insert(id.clone(), d.meta);
            if self.pool.submit(d.job).is_err() {
                // The pool stopped between read and submit: give it back, never drop it.
                self.returned(&id);
            }
        }
    }

    fn on_pool_event(&mut self, ev: PoolEvent) {
        match ev {
            PoolEvent::Started {
                execution_id,
                started_at,
                ..
            } => {
                // Its row says `running` with no start time until the result is
                // committed; the start mark says it left the queue (publisher.rs).
                if let Some(meta) = self.inflight.mark_started(&execution_id) {
                    let mark = crate::intake::StartMark {
                        attempt: meta.attempt.unwrap_or(1),
                        started_at: chrono::DateTime::<chrono::Utc>::from(started_at),
                        supervisor: self.cfg.consumer.clone(),
                    };
                    let timeout = meta.timeout;
                    self.publisher.started(execution_id.as_str(), mark, timeout);
                }
            }
            PoolEvent::Request(req) if Sdk::handles(&req.op) => {
                // The org is what this supervisor dispatched, never what the request says.
                match self.inflight.org_id(req.execution_id.as_str()) {
                    Some(org_id) => {
                        let p = self.pool.clone();
                        self.sdk.handle(req, org_id, move |reply| p.reply(reply));
                    }
                    None => self.pool.reply(crate::pool::unavailable(
                        &req,
                        "the execution is not running here",
                    )),
                }
            }
            PoolEvent::Request(req) if req.op == crate::modules::MISS_OP => {
                // A worker lost a module (or the whole cache): re-cache it from the
                // database, off the main loop, then let the import go on.
                let (m, p) = (self.modules.clone(), self.pool.clone());
                tokio::spawn(async move { p.reply(m.answer(&req).await) });
            }
            PoolEvent::Request(req) => {
                self.pool.reply(crate::pool::unavailable(
                    &req,
                    "this supervisor does not serve it",
                ));
            }
            PoolEvent::Log(mut log) => {
                self.sdk.on_log(&mut log);
                self.publisher.log(log.clone());
                self.inflight.log(log);
            }
            PoolEvent::Finished(mut out) => {
                self.publisher.ended(out.execution_id.as_str());
                // Redacted and checked before it reaches the writer or the acker.
                let org_id = self.inflight.org_id(&out.execution_id).flatten();
                self.sdk.on_finished(&mut out, org_id);
                self.finished(out);
            }
            PoolEvent::Interrupted(mut out) => {
                self.publisher.ended(out.execution_id.as_str());
                let org_id = self.inflight.org_id(&out.execution_id).flatten();
                self.sdk.on_finished(&mut out, org_id);
                let started_at = out.started_at.unwrap_or_else(std::time::SystemTime::now);
                self.interrupted(&out.execution_id, started_at);
            }
            PoolEvent::Returned { execution_id } => {
                self.publisher.ended(execution_id.as_str());
                self.returned(&execution_id)
            }
        }
    }

    /// The writer has room: the oldest waiting result goes in, and its place goes back
    /// to the reader.
    fn on_writer_room(&mut self, reservation: Result<Reservation, StoreError>) {
        let (item, place) = self.to_writer.pop_front().expect("not empty");
        if let Ok(r) = reservation {
            if r.submit(item).is_err() {
                tracing::error!("the result writer stopped; the execution stays pending in the stream and will be taken over");
            }
        }
        if place {
            self.permits.add_permits(1);
        }
    }

    fn on_cancel(&mut self, sig: CancelSignal) {
        match sig {
            CancelSignal::Cancel(id) => {
                if self.inflight.contains(&id) {
                    tracing::info!(execution = %id, "cancel requested");
                    self.pool.cancel(&id);
                }
            }
            CancelSignal::Resubscribed => {
                // Cancels sent while we were not listening are still marked; checked
                // off the loop (Redis may be slow to answer right after it returns).
                let (ids, i, p) = (self.inflight.ids(), self.intake.clone(), self.pool.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(flags)) =
                        tokio::time::timeout(SIDE_TIMEOUT, i.is_cancelled(&ids)).await
                    {
                        for (id, c) in ids.iter().zip(flags) {
                            if c {
                                p.cancel(id);
                            }
                        }
                    }
                });
            }
        }
    }

    fn on_status_tick(&mut self) {
        let stats = self.pool.stats();
        let mut st =
            SupervisorStatus::for_this_process(self.cfg.consumer.clone(), stats.workers as u32);
        st.workers_busy = stats.busy as u32;
        st.executions_completed = self.report.executions;
        st.executions_per_sec = self.rate.per_sec(self.report.executions);
        st.started_at = self.started;
        st.queues = self.cfg.queues.clone();
        st.executions_queued = self.inflight.queued() as u32;
        self.publisher.status(st);
        // Start marks left waiting (no log line took them along): sent at least once
        // a second, with no timer of their own in the loop.
        self.publisher.flush_logs();
    }

    /// Hands a finished execution on to the writer, through `to_writer` (the main loop
    /// moves it into the writer as soon as the writer has room; its place is given back
    /// then, which is how intake pauses while the database is away).
    fn finished(&mut self, out: ExecutionOutcome) {
        match end_of_run(&mut self.inflight, &out.execution_id) {
            RunEnd::Lost { place } => {
                // A peer runs it now: nothing of this run is recorded or acknowledged.
                if place {
                    self.permits.add_permits(1);
                }
            }
            RunEnd::Unknown { place } => {
                self.count(&out);
                tracing::warn!(execution = %out.execution_id, "finished execution was not in flight");
                if place {
                    self.permits.add_permits(1);
                }
            }
            RunEnd::Record { meta, logs, place } => {
                self.count(&out);
                if let Some(m) = &self.metrics {
                    m.ended(
                        out.status,
                        &meta.workflow_name,
                        meta.org.as_deref(),
                        out.duration,
                    );
                }
                // The item carries its stream entry and completion on to the acker.
                let last_seq = logs.iter().map(|l| l.seq).max();
                let item = (*meta).into_completed(out, logs);
                if let Some(note) = super::inflight::retry_note(&item, last_seq) {
                    self.publisher.log(note);
                }
                self.to_writer.push_back((item, place));
            }
        }
    }

    fn count(&mut self, out: &ExecutionOutcome) {
        self.report.executions += 1;
        *self
            .report
            .by_status
            .entry(out.status.as_str().to_string())
            .or_default() += 1;
    }

    /// An execution the pool never started (or that never reached it): its row goes
    /// back to `pending` at the same attempt, its entry stays pending in the stream.
    fn returned(&mut self, id: &ExecutionId) {
        self.report.returned += 1;
        self.give_back(id, None);
    }

    /// An execution the drain's deadline (or a second signal) cut off: an interrupted
    /// attempt, run again elsewhere at attempt + 1; its logs are not kept.
    fn interrupted(&mut self, id: &ExecutionId, started_at: std::time::SystemTime) {
        self.report.interrupted += 1;
        self.give_back(id, Some(started_at));
    }

    /// `started_at`: when the attempt started (`None`: it never did).
    fn give_back(&mut self, id: &ExecutionId, started_at: Option<std::time::SystemTime>) {
        let GiveBack { place, stream_id } = give_back_of(&mut self.inflight, id);
        if place {
            self.permits.add_permits(1);
        }
        if let Some(sid) = stream_id {
            self.hand_backs.give_back(id.clone(), sid, started_at);
        }
    }

    /// The stop sequence. Every wait here is bounded by the shutdown deadline (a second
    /// signal brings it to within a second).
    async fn shut_down(self) -> ServeReport {
        let Daemon {
            store,
            intake,
            heartbeat,
            modules,
            stop_modules,
            mut module_follower,
            writer,
            mut acker,
            acks_waiting,
            mut publisher,
            mut hand_backs,
            capacity,
            permits,
            places,
            stop_reader,
            mut dispatches,
            mut reader,
            mut sweeper,
            mut due,
            taken_over,
            mut report,
            mut to_writer,
            mut stop,
            retention,
            ..
        } = self;
        let _ = stop_reader.send(true);
        // A delete in flight rolls back; the next supervisor's pass does it again.
        if let Some(r) = retention {
            r.abort();
        }
        // Batches the reader prepares until it stops are given back, unstarted.
        let reader_done = stop
            .within("waiting for the intake to stop", async {
                loop {
                    tokio::select! {
                        Some(batch) = dispatches.recv() => {
                            for d in batch {
                                hand_backs.give_back(d.job.execution_id, d.meta.stream_id, None);
                                permits.add_permits(1);
                                report.returned += 1;
                            }
                        }
                        _ = &mut reader => break,
                    }
                }
            })
            .await;
        if reader_done.is_none() {
            reader.abort();
        }
        // What it sent just before it ended.
        while let Ok(batch) = dispatches.try_recv() {
            for d in batch {
                hand_backs.give_back(d.job.execution_id, d.meta.stream_id, None);
                permits.add_permits(1);
                report.returned += 1;
            }
        }
        // Results still waiting for the writer (the deadline came first): their places are
        // given back; their entries stay pending for another supervisor.
        if !to_writer.is_empty() {
            tracing::warn!(
                executions = to_writer.len(),
                "results not handed to the writer before the deadline; their stream entries stay pending"
            );
            for (_, place) in to_writer.drain(..) {
                if place {
                    permits.add_permits(1);
                }
            }
        }
        report.places = capacity;
        report.places_free_at_stop = places.free();
        // Given back before this supervisor's heartbeat goes, so that whoever takes the
        // entries over finds the rows `pending`.
        let left = stop.left();
        report.handed_back = hand_backs.finish(left).await.unwrap_or(0);
        // The writer commits what it holds, then closes its channel; the acker drains it.
        let writer = writer.close();
        let flushed = stop
            .within("committing and acknowledging the last results", async {
                let _ = (&mut acker).await;
            })
            .await;
        if flushed.is_none() {
            writer.abandon();
            acker.abort();
            tracing::warn!(
                acknowledgements_waiting = acks_waiting.get(),
                results_uncommitted = writer.pending(),
                "stopping with results not committed or not acknowledged (is PostgreSQL or Redis \
                 away?): their stream entries stay pending and another supervisor takes them over \
                 (a committed one is found done and only acknowledged)"
            );
        }
        // The sweeper stopped with intake; a sweep in flight is given what time is left.
        match tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), &mut sweeper).await {
            Ok(swept) => report.swept = swept.unwrap_or(0),
            Err(_) => sweeper.abort(),
        }
        match tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), &mut due).await {
            Ok(enqueued) => report.due_enqueued = enqueued.unwrap_or(0),
            Err(_) => due.abort(),
        }
        report.taken_over = taken_over.load(Ordering::Relaxed);
        // Last: rows are handed back and what was committed is acknowledged (or, past the
        // deadline, the writer and the acker are stopped, so nothing of this supervisor's
        // is committed after this). Peers may now take over at once what is left pending.
        // Even past the deadline the key is deleted if Redis answers quickly; otherwise it
        // expires on its own within the TTL.
        let heartbeat_left = stop.left().clamp(HEARTBEAT_DELETE_MIN, SIDE_TIMEOUT);
        if tokio::time::timeout(heartbeat_left, heartbeat.stop())
            .await
            .is_err()
        {
            tracing::warn!("could not delete the heartbeat in time; it expires on its own");
        }
        publisher.retire(stop.left().min(SIDE_TIMEOUT)).await;
        report.redis = intake.calls();
        let _ = stop_modules.send(true);
        if tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), &mut module_follower)
            .await
            .is_err()
        {
            module_follower.abort();
        }
        report.module_cache_redis = modules.cache().calls();
        let _ = tokio::time::timeout(stop.left().min(SIDE_TIMEOUT), store.close()).await;
        tracing::info!(
            executions = report.executions,
            statuses = ?report.by_status,
            returned = report.returned,
            interrupted = report.interrupted,
            handed_back = report.handed_back,
            "stopped"
        );
        report
    }
}

/// The services the daemon works with, connected (each step's failure named).
struct Services {
    store: Store,
    intake: Intake,
    heartbeat: Heartbeat,
    /// Watched from the heartbeat's start, so no lapse during start-up goes unseen.
    liveness: watch::Receiver<Liveness>,
    cancels: CancelListener,
    sdk: Sdk,
    modules: ModuleSync,
    stop_modules: watch::Sender<bool>,
    module_follower: JoinHandle<()>,
    pool: Pool,
    pool_events: mpsc::UnboundedReceiver<PoolEvent>,
}

/// Every fallible start-up step, in order: PostgreSQL and its schema, Redis and the
/// stream's group, the heartbeat, the cancel subscription, the SDK, the module cache,
/// the workers' Redis access, the pool.
async fn connect(cfg: &ServeConfig) -> Result<Services, ServeError> {
    let store = Store::connect(&cfg.database_url, cfg.db_connections)
        .await
        .map_err(ServeError::DatabaseConnect)?;
    store.check_schema().await.map_err(ServeError::Schema)?;
    let keys = Keys::new(cfg.key_prefix.clone());
    let intake = Intake::connect(&cfg.redis_url, keys, cfg.consumer.clone()).await?;
    intake.ensure_group().await?;
    // The concurrency limits as stored now (the CLI republishes them on every change).
    let limits = store.limits().await.map_err(ServeError::DatabaseConnect)?;
    let limited = intake.publish_limits(&limits).await?;
    if limited > 0 {
        tracing::info!(limits = limited, "concurrency limits in force");
    }
    // Peers see this supervisor alive from now on; set before the first read.
    let heartbeat = Heartbeat::start(&intake, cfg.heartbeat_ttl)
        .await
        .map_err(ServeError::Heartbeat)?;
    let liveness = heartbeat.watch();
    // Advice only: a Redis that persists nothing loses unread requests when it restarts.
    crate::intake::persistence::warn_if_unpersisted(intake.client(), &cfg.redis_url).await;
    let cancels = intake.cancel_listener().await?;
    let sdk = Sdk::start(
        store.clone(),
        intake.client(),
        intake.keys().clone(),
        cfg.secret_key.clone(),
    )
    .await?;

    // The module cache: filled from the database now, then kept in step (LISTEN).
    let module_cache = ModuleCache::connect(&cfg.redis_url, intake.keys().clone()).await?;
    let modules = ModuleSync::new(store.clone(), module_cache);
    let (stop_modules, modules_stopped) = watch::channel(false);
    let package_changes = modules.package_changes();
    let module_follower = modules
        .start(&cfg.database_url, modules_stopped.clone())
        .await?;
    // The workspace's packages: installed before the pool starts, so its first
    // templates import them; then followed (on the same LISTEN connection).
    let mut packages = PackageKeeper::new(
        store.clone(),
        cfg.packages_root.clone(),
        cfg.consumer.clone(),
    );
    // Workers read the cache from the same Redis (unless told otherwise, e.g. a Unix
    // socket for network-isolated workers), as a read-only user; never the database.
    let mut pool_cfg = cfg.pool.clone();
    let access = match pool_cfg.redis_url.take() {
        Some(url) => crate::modules::access::check_read_only(&url, &cfg.key_prefix)
            .await
            .map(|()| url),
        None => {
            crate::modules::access::worker_url(store.pool(), &cfg.redis_url, &cfg.key_prefix).await
        }
    };
    pool_cfg.redis_url = Some(access?);
    pool_cfg.key_prefix = cfg.key_prefix.clone();
    pool_cfg.packages_dir = packages.prepare().await;

    let (pool_tx, pool_events) = mpsc::unbounded_channel();
    let pool = Pool::start(pool_cfg, pool_tx).await?;
    // Ends with the module follower (`stop_modules`).
    tokio::spawn(packages.follow(pool.clone(), package_changes, modules_stopped));
    Ok(Services {
        store,
        intake,
        heartbeat,
        liveness,
        cancels,
        sdk,
        modules,
        stop_modules,
        module_follower,
        pool,
        pool_events,
    })
}

/// The shutdown's clock: the requests, and the instant by which the process must be
/// gone (set by the first request, brought closer by `Now`).
struct Stop {
    requests: watch::Receiver<Option<Shutdown>>,
    closed: bool,
    /// The strongest request seen so far.
    seen: Option<Shutdown>,
    /// Drain timeout plus [`FLUSH_GRACE`] and the pool's kill grace.
    first_grace: Duration,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    fn new(requests: watch::Receiver<Option<Shutdown>>, first_grace: Duration) -> Stop {
        Stop {
            requests,
            closed: false,
            seen: None,
            first_grace,
            deadline: None,
        }
    }

    /// The next request stronger than any before; a dropped sender counts as `Now`.
    /// Sets or tightens the deadline.
    async fn next_signal(&mut self) -> Shutdown {
        loop {
            if self.closed {
                std::future::pending::<()>().await;
            }
            let request = match self.requests.changed().await {
                Ok(()) => *self.requests.borrow_and_update(),
                Err(_) => {
                    self.closed = true;
                    Some(Shutdown::Now)
                }
            };
            let Some(request) = request.filter(|r| Some(*r) > self.seen) else {
                continue;
            };
            self.seen = Some(request);
            let now = tokio::time::Instant::now();
            let grace = match request {
                Shutdown::Now => SECOND_SIGNAL_GRACE,
                Shutdown::Drain => self.first_grace,
            };
            self.deadline = Some(self.deadline.map_or(now + grace, |d| d.min(now + grace)));
            return request;
        }
    }

    /// Time left before the deadline.
    fn left(&self) -> Duration {
        self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    /// `work`, unless the deadline comes first (`None`); a second signal meanwhile
    /// brings the deadline closer.
    async fn within<F: std::future::Future>(&mut self, what: &str, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let deadline = self.deadline;
            tokio::select! {
                out = &mut work => return Some(out),
                _ = sleep_until_opt(deadline) => {
                    tracing::warn!(what, "shutdown deadline passed");
                    return None;
                }
                _ = self.next_signal() => {}
            }
        }
    }
}

/// The next tick of `interval`, or never.
async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Executions per second over the last few status ticks.
#[derive(Default)]
struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    fn per_sec(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((now, total));
        while self.samples.len() > 5 {
            self.samples.pop_front();
        }
        let (t0, n0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            0.0
        } else {
            (total - n0) as f64 / dt
        }
    }
}

// ---- decisions: pure functions of plain data ----

/// What a shutdown request does.
#[derive(Debug, PartialEq, Eq)]
enum OnRequest {
    /// Stop intake and drain the pool for `drain` (zero: interrupt at once).
    StartDrain {
        drain: Duration,
    },
    /// Already draining: interrupt what still runs.
    Interrupt,
    Nothing,
}

fn on_request(draining: bool, request: Shutdown, drain_timeout: Duration) -> OnRequest {
    match (draining, request) {
        (false, Shutdown::Drain) => OnRequest::StartDrain {
            drain: drain_timeout,
        },
        (false, Shutdown::Now) => OnRequest::StartDrain {
            drain: Duration::ZERO,
        },
        (true, Shutdown::Now) => OnRequest::Interrupt,
        (true, Shutdown::Drain) => OnRequest::Nothing,
    }
}

/// How a run's `Finished` is taken, and whether it held an intake place (to give back).
#[derive(Debug)]
enum RunEnd {
    /// A peer took its entry over: nothing of it is recorded or acknowledged.
    Lost { place: bool },
    /// Not in flight (a second dispatch of the same id, whose first end took it).
    Unknown { place: bool },
    /// To the writer, with what was kept about it.
    Record {
        meta: Box<Meta>,
        logs: Vec<Log>,
        place: bool,
    },
}

/// The in-flight bookkeeping of a run's end: its place released, its entry removed.
fn end_of_run(inflight: &mut Inflight, id: &ExecutionId) -> RunEnd {
    // Every end of a dispatch gives its place back, whether or not its execution is
    // still in flight (a second dispatch of the same id ends after the first).
    let place = inflight.release_place(id);
    if inflight.take_lost(id) {
        inflight.remove(id);
        return RunEnd::Lost { place };
    }
    match inflight.remove(id) {
        Some((meta, logs)) => RunEnd::Record {
            meta: Box::new(meta),
            logs,
            place,
        },
        None => RunEnd::Unknown { place },
    }
}

/// What giving an unfinished execution back involves.
#[derive(Debug, PartialEq, Eq)]
struct GiveBack {
    /// It held an intake place (to give back).
    place: bool,
    /// The stream entry whose row goes back to `pending` (`None`: not in flight, or a
    /// peer took it over: the row is the peer's).
    stream_id: Option<String>,
}

fn give_back_of(inflight: &mut Inflight, id: &ExecutionId) -> GiveBack {
    let place = inflight.release_place(id);
    let lost = inflight.take_lost(id);
    let stream_id = inflight
        .remove(id)
        .filter(|_| !lost)
        .map(|(meta, _)| meta.stream_id);
    GiveBack { place, stream_id }
}

/// Whether the main loop is done: shutdown begun, the pool's drain over, and nothing
/// left in flight, unread from the pool, or waiting for the writer.
fn drained(
    pool_drained: Option<bool>,
    inflight_empty: bool,
    events_empty: bool,
    to_writer_empty: bool,
) -> bool {
    pool_drained == Some(true) && inflight_empty && events_empty && to_writer_empty
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sid: &str) -> Meta {
        Meta {
            stream_id: sid.to_string(),
            workflow_id: Some(1),
            org_id: None,
            workflow_name: "wf".into(),
            org: None,
            caller: None,
            time_saved_seconds: 0.0,
            value: 0.0,
            attempt: Some(1),
            retry: None,
            timeout: Duration::ZERO,
            started: false,
        }
    }

    #[test]
    fn a_first_request_starts_the_drain_and_now_after_it_interrupts() {
        let t = Duration::from_secs(30);
        assert_eq!(
            on_request(false, Shutdown::Drain, t),
            OnRequest::StartDrain { drain: t }
        );
        assert_eq!(
            on_request(false, Shutdown::Now, t),
            OnRequest::StartDrain {
                drain: Duration::ZERO
            }
        );
        assert_eq!(on_request(true, Shutdown::Now, t), OnRequest::Interrupt);
        assert_eq!(on_request(true, Shutdown::Drain, t), OnRequest::Nothing);
        assert!(Shutdown::Now > Shutdown::Drain);
    }

    #[test]
    fn a_finished_run_is_recorded_with_its_place_and_logs() {
        let mut inflight = Inflight::default();
        inflight.insert("e1".into(), meta("1-0"));
        inflight.log(Log {
            execution_id: "e1".into(),
            seq: 0,
            level: warden_protocol::LogLevel::Info,
            message: "hi".into(),
            timestamp_us: 0,
        });
        match end_of_run(&mut inflight, &"e1".into()) {
            RunEnd::Record { meta, logs, place } => {
                assert_eq!(meta.stream_id, "1-0");
                assert_eq!(logs.len(), 1);
                assert!(place);
            }
            other => panic!("{other:?}"),
        }
        assert!(inflight.is_empty());
    }

    #[test]
    fn a_run_lost_to_a_peer_is_dropped_but_gives_its_place_back() {
        let mut inflight = Inflight::default();
        inflight.insert("e1".into(), meta("1-0"));
        assert_eq!(inflight.mark_lost(&["1-0".to_string()]), vec!["e1"]);
        assert!(matches!(
            end_of_run(&mut inflight, &"e1".into()),
            RunEnd::Lost { place: true }
        ));
        assert!(inflight.is_empty());
    }

    #[test]
    fn a_second_dispatch_of_an_id_gives_back_both_places_and_records_once() {
        let mut inflight = Inflight::default();
        inflight.insert("e1".into(), meta("1-0"));
        inflight.insert("e1".into(), meta("1-0"));
        assert!(matches!(
            end_of_run(&mut inflight, &"e1".into()),
            RunEnd::Record { place: true, .. }
        ));
        assert!(
            !inflight.is_empty(),
            "the second dispatch still holds a place"
        );
        assert!(matches!(
            end_of_run(&mut inflight, &"e1".into()),
            RunEnd::Unknown { place: true }
        ));
        assert!(inflight.is_empty());
        assert!(matches!(
            end_of_run(&mut inflight, &"never".into()),
            RunEnd::Unknown { place: false }
        ));
    }

    #[test]
    fn given_back_rows_are_handed_back_unless_a_peer_took_them() {
        let mut inflight = Inflight::default();
        inflight.insert("mine".into(), meta("1-0"));
        inflight.insert("theirs".into(), meta("2-0"));
        inflight.mark_lost(&["2-0".to_string()]);
        assert_eq!(
            give_back_of(&mut inflight, &"mine".into()),
            GiveBack {
                place: true,
                stream_id: Some("1-0".into())
            }
        );
        assert_eq!(
            give_back_of(&mut inflight, &"theirs".into()),
            GiveBack {
                place: true,
                stream_id: None
            }
        );
        assert_eq!(
            give_back_of(&mut inflight, &"unknown".into()),
            GiveBack {
                place: false,
                stream_id: None
            }
        );
        assert!(inflight.is_empty());
    }

    #[test]
    fn the_loop_ends_only_after_shutdown_with_nothing_left() {
        assert!(!drained(None, true, true, true), "not shutting down");
        assert!(
            !drained(Some(false), true, true, true),
            "pool still draining"
        );
        assert!(!drained(Some(true), false, true, true), "still in flight");
        assert!(
            !drained(Some(true), true, false, true),
            "pool events unread"
        );
        assert!(
            !drained(Some(true), true, true, false),
            "results for the writer"
        );
        assert!(drained(Some(true), true, true, true));
    }
}
