//! Fork-mode executions, as the template sees them: keep a child forked in advance (the
//! spare), hand it the execution, relay its frames, answer the supervisor, and report
//! how the child ended.
//!
//! ```text
//! idle:    Spare::fork ─▶ socketpair + fork ─▶ child: sandbox, warm up (idle slots), wait for Execute
//! Execute ─▶ spare still current and alive? else discard it and fork one now
//!          ─▶ Execute queued for the child's socket ─▶ Started
//!          ─▶ poll { fd 3, child socket, pidfd }
//!              fd 3:    Kill → killpg · Shutdown → killpg, exit after Ended · EOF → killpg, exit
//!                       Reply (this execution) → queued for the child's socket
//!                       Modules, Execute (the next execution's, sent ahead; one at
//!                       most) → kept in the connection, handled after Ended
//!              socket:  relay valid frames (Log, Request, Result); garbage → killpg,
//!                       ProtocolError; writable → write what is queued (Execute, Replies)
//!              pidfd:   child exited (left a zombie: its pgid stays reserved)
//!          ─▶ killpg(group) ─▶ wait4 (status, rusage) ─▶ sweep escapees ─▶ drain socket
//!          ─▶ Ended   (always the last message of the execution) ─▶ fork the next spare
//! ```
//!
//! Forking in advance takes the `fork` (about 0.3 ms of page-table copying for the
//! template's ~15 MiB) and the child's first copy-on-write faults off the execution's
//! path when the template has idle time; under a full queue it costs what forking on
//! demand did. A spare forked before the template's interpreter state changed (a new
//! module snapshot, asyncio imported for an async workflow; see
//! [`interpreter::state`]) would run the execution against stale state, so it is
//! discarded and a fresh child forked. The spare's warm-up counts in the execution's
//! CPU and peak memory (about 0.1 ms, a few hundred KiB).
//!
//! A spare forked while the connection keeps an `Execute` sent ahead has a copy of it
//! in its memory, so it runs that execution or none ([`Spare::usable`]); a child is
//! never forked on demand while one is kept (only the module-cache refill could read
//! one then, and the supervisor sends nothing ahead of such an execution).
//!
//! The template forks with CPython's fork protocol (`PyOS_BeforeFork` /
//! `PyOS_AfterFork_*`, as `os.fork` does) while holding the GIL; being single-threaded,
//! it has no other thread whose locks the child could inherit.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{setpgid, Pid};
use pyo3::Python;
use warden_protocol::{
    frame, Code, Ended, ErrorInfo, Execute, ExecutionResult, ExitKind, FrameError, FromWorker,
    Outcome, Started, ToWorker,
};

use crate::child;
use crate::code_cache::CodeCache;
use crate::connection::Connection;
use crate::error::WorkerError;
use crate::procfs;
use crate::python::interpreter;
use crate::python::runner::Runner;
use crate::reap::{self, Usage};
use crate::relay::{Pumped, Relay};
use crate::wipe::{self, Buffer};
use crate::{fds, sandbox};
use zeroize::Zeroize;

/// Replies queued for a child beyond this (or two frames, if larger) mean it is not
/// reading them.
const MAX_QUEUED_REPLIES: usize = 1024 * 1024;

/// Exit code reported when there is no child status to report: the child could not be
/// created (then a `Result` explains why) or could not be waited for.
pub const UNKNOWN_EXIT: i32 = -1;

/// What the template does after an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Next {
    Continue,
    /// Shutdown was requested, or the supervisor went away.
    Exit,
}

/// A child forked in advance, waiting on its socket for the `Execute` it will run.
pub struct Spare {
    pid: Pid,
    pidfd: Option<OwnedFd>,
    /// The template's end of the child's socket (non-blocking).
    socket: UnixStream,
    /// [`interpreter::state`] when it was forked.
    state: u64,
    /// When it was forked: right after the previous execution's `Ended`, so the time to
    /// the next `Execute` tells whether the slot is kept busy ([`warm_next`]).
    forked_at: Instant,
    /// The execution whose `Execute` the template held (sent ahead by the supervisor,
    /// `Connection::queue`) when it forked this child: the child's memory holds a copy,
    /// so it may run that execution and no other.
    holds: Option<String>,
    /// Its working directory ([`sandbox::next_scratch`]), removed after it.
    scratch: PathBuf,
}

/// How long a slot must have waited for its last `Execute` for the next spare to warm up.
/// Warming runs a trivial function (a fraction of a millisecond of Python that cannot be
/// interrupted): on an idle slot it takes the page faults the next execution would take,
/// but on a busy one the next `Execute` is already on its way when the spare starts, and
/// would wait for it.
const WARM_UP_MIN_IDLE: Duration = Duration::from_millis(1);

/// Should the next spare warm up, given how long the current one waited for its
/// `Execute` (`None`: there was no spare)?
fn warm_next(waited: Option<Duration>) -> bool {
    waited.is_none_or(|w| w >= WARM_UP_MIN_IDLE)
}

impl Spare {
    /// Forks the next child; `warm`: may it warm up while no `Execute` is waiting.
    pub fn fork(runner: &Runner, conn: &Connection, warm: bool) -> io::Result<Spare> {
        let max_frame = conn.max_frame();
        let holds = conn.queued_execution().map(str::to_string);
        let state = interpreter::state();
        let forked_at = Instant::now();
        let (ours, theirs) = UnixStream::pair()?;
        let template_pid = Pid::this();
        let scratch = sandbox::next_scratch();
        let pid = fork_child(
            runner,
            theirs.as_raw_fd(),
            template_pid,
            &scratch,
            max_frame,
            warm,
        )?;
        drop(theirs);
        // Also set from the child; doing it here too closes the window in which a Kill
        // would find the child still in the template's group. EACCES/ESRCH mean the
        // child already did it or is already gone.
        let _ = setpgid(pid, pid);
        let spare = Spare {
            pid,
            pidfd: fds::pidfd_open(pid).ok(),
            socket: ours,
            state,
            forked_at,
            holds,
            scratch,
        };
        // A blocking socket could hang the template on a half-written frame.
        if let Err(err) = fds::set_nonblocking(spare.socket.as_raw_fd()) {
            spare.discard();
            return Err(err);
        }
        Ok(spare)
    }

    /// Kills and reaps it, and removes its working directory.
    pub fn discard(self) {
        reap::kill_group(self.pid);
        let _ = reap::reap(self.pid);
        sandbox::clean_after(&self.scratch);
    }

    /// Has it died (killed from outside, say)? It stays unreaped (a zombie, so its pid
    /// and process-group id cannot be reused) until [`Spare::reap_dead`].
    pub fn exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => fds::readable_now(fd.as_raw_fd()),
            None => reap::has_exited(self.pid, false).unwrap_or(true),
        }
    }

    /// Reaps a spare that [`Spare::exited`]. It never ran user code, so it left nothing
    /// in its process group to kill.
    pub fn reap_dead(self) {
        let _ = reap::reap(self.pid);
        sandbox::clean_after(&self.scratch);
    }

    /// Its pidfd, to watch while idle; `None` without pidfd support.
    pub fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Was it forked from the current interpreter state?
    pub fn current(&self) -> bool {
        self.state == interpreter::state()
    }

    /// The spare if it can run `execution_id` now: alive, forked from the current
    /// interpreter state, and holding no other execution's data. A dead one is reaped, a
    /// stale one (or one forked while another execution's `Execute` was held) killed and
    /// reaped.
    fn usable(spare: Option<Spare>, execution_id: &str) -> Option<Spare> {
        let s = spare?;
        if s.exited() {
            s.reap_dead();
            return None;
        }
        if s.state != interpreter::state()
            || s.holds.as_deref().is_some_and(|id| id != execution_id)
        {
            s.discard();
            return None;
        }
        Some(s)
    }
}

/// Runs `e` in a child. `e` is wiped (see [`crate::wipe`]) before the next spare is
/// forked: no later child may inherit it.
pub fn execute(
    runner: &Runner,
    conn: &mut Connection,
    e: &mut Execute,
    spare: &mut Option<Spare>,
    code: &mut CodeCache,
) -> Result<Next, WorkerError> {
    let warm = warm_next(spare.as_ref().map(|s| s.forked_at.elapsed()));
    pyo3::Python::attach(|py| runner.prepare_for(py, e));
    let prepared = code.prepare(e);
    if prepared.discard_spare {
        // Forked while the cache held another organization's code.
        if let Some(s) = spare.take() {
            s.discard();
        }
    }
    let child = match Spare::usable(spare.take(), &e.execution_id) {
        Some(s) => s,
        // A child forked now would hold a copy of the next execution's Execute, sent
        // ahead and read while this one waited for the supervisor to refill the module
        // cache (`modules::sync`). The supervisor sends nothing ahead of an execution
        // that uses workspace modules, so this is a supervisor bug: refuse.
        None if conn.queued_execution().is_some() => {
            let err = io::Error::other("the next execution's data is held by the template");
            return not_started(conn, e, "cannot fork the execution's child", err);
        }
        None => match Spare::fork(runner, conn, false) {
            Ok(s) => s,
            Err(err) => return not_started(conn, e, "cannot fork the execution's child", err),
        },
    };
    // Encoded in place (no clone left behind), into an allocation of its exact size.
    let msg = ToWorker::Execute(std::mem::take(e));
    let handoff = frame::encode_exact(&msg, conn.max_frame());
    let ToWorker::Execute(taken) = msg else {
        unreachable!("built as an Execute just above")
    };
    *e = taken;
    let handoff = match handoff {
        Ok(bytes) => Buffer::from_vec(bytes),
        Err(err) => {
            child.discard();
            let err = io::Error::other(err.to_string());
            return not_started(conn, e, "cannot pass the execution to its child", err);
        }
    };
    let pid = child.pid;
    let scratch = child.scratch;
    let mut watch = Watch {
        e: &*e,
        pid,
        pidfd: child.pidfd,
        socket: Some(child.socket),
        relay: Relay::new(
            &e.execution_id,
            conn.max_frame(),
            matches!(e.code, Code::Wanted),
        ),
        // The Execute goes first, as the socket takes it (it may be larger than the
        // socket's buffer).
        replies: handoff,
        max_frame: conn.max_frame(),
        next: Next::Continue,
        lost: None,
    };
    watch.write_replies();
    // Held, not sent: it goes out with the child's first frame, or with its Result and
    // Ended in one write when the execution is quick (one wake-up of the supervisor
    // instead of three). `watch` flushes it if nothing follows within HOLD_AT_MOST.
    match conn.hold(
        &FromWorker::Started(Started {
            execution_id: e.execution_id.clone(),
            // The wire carries a pid as u32 (a live pid is positive).
            pid: pid.as_raw() as u32,
        }),
        "sending Started",
    ) {
        Ok(()) => watch.watch(conn),
        Err(err) => {
            reap::kill_group(pid);
            watch.lost = Some(Lost::Error(err));
        }
    }
    let compiled = watch.relay.take_code();
    let next = watch.finish(conn)?;
    if let (Some(key), Some(bytes)) = (prepared.key, compiled) {
        code.store(key, bytes);
    }
    // Nothing it was sent may stay: the next spare is a copy of this process.
    wipe::execute(e);
    if next == Next::Continue {
        // The next execution's child, forked now, while the supervisor reads Ended.
        // If it fails, the next Execute tries again and reports why.
        *spare = Spare::fork(runner, conn, warm)
            .inspect_err(|err| eprintln!("warden-worker: cannot fork a spare child: {err}"))
            .ok();
    }
    // Its child is reaped and its escapees swept: nothing it wrote may outlive it (done
    // while the spare warms up; see `sandbox::clean_after`).
    sandbox::clean_after(&scratch);
    Ok(next)
}

/// Forks a child that waits for its execution ([`child::run`]). Only the parent returns.
fn fork_child(
    runner: &Runner,
    socket_fd: RawFd,
    template_pid: Pid,
    scratch: &Path,
    max_frame: usize,
    warm: bool,
) -> io::Result<Pid> {
    Python::attach(|py| {
        child::point_python_at(py, scratch).map_err(io::Error::other)?;
        // SAFETY: the CPython fork protocol, called with the GIL held as os.fork does.
        // The template is single-threaded, so no lock can be held by another thread.
        unsafe { pyo3::ffi::PyOS_BeforeFork() };
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { pyo3::ffi::PyOS_AfterFork_Child() };
            child::run(
                py,
                runner,
                socket_fd,
                template_pid,
                scratch,
                max_frame,
                warm,
            );
        }
        let err = io::Error::last_os_error();
        unsafe { pyo3::ffi::PyOS_AfterFork_Parent() };
        if pid < 0 {
            Err(err)
        } else {
            Ok(Pid::from_raw(pid))
        }
    })
}

/// The supervisor connection failed during an execution.
enum Lost {
    /// Closed cleanly: the supervisor is gone; exit quietly once the child is reaped.
    Closed,
    Error(WorkerError),
}

/// One running child and everything the template knows about it.
struct Watch<'a> {
    e: &'a Execute,
    pid: Pid,
    /// Readable once the child has exited. `None` if pidfd_open failed (old kernel):
    /// then the loop polls with a short timeout and asks `waitid`.
    pidfd: Option<OwnedFd>,
    /// The template's end of the output socket; `None` once it ended or broke.
    socket: Option<UnixStream>,
    relay: Relay,
    /// Encoded Replies not yet written to the child's socket (it is non-blocking: a child
    /// that does not read its replies must not stall the template), after the Execute
    /// itself. Zeroed as written.
    replies: Buffer,
    max_frame: usize,
    next: Next,
    lost: Option<Lost>,
}

impl Watch<'_> {
    /// Runs until the child has exited.
    fn watch(&mut self, conn: &mut Connection) {
        loop {
            let conn_fd = if self.lost.is_none() {
                conn.as_raw_fd()
            } else {
                -1
            };
            let sock_fd = self.socket.as_ref().map_or(-1, |s| s.as_raw_fd());
            let pid_fd = self.pidfd.as_ref().map_or(-1, |f| f.as_raw_fd());
            // Negative fds are ignored by poll.
            let mut fds = [conn_fd, sock_fd, pid_fd].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            if !self.replies.is_empty() {
                fds[1].events |= libc::POLLOUT;
            }
            let timeout = if conn.has_held() {
                HOLD_AT_MOST_MS
            } else if self.pidfd.is_some() {
                -1
            } else {
                10
            };
            // SAFETY: `fds` is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("warden-worker: poll failed, killing the execution: {err}");
                reap::kill_group(self.pid);
                let _ = reap::has_exited(self.pid, true);
                return;
            }
            if n == 0 && conn.has_held() && self.lost.is_none() {
                if let Err(err) = conn.flush() {
                    reap::kill_group(self.pid);
                    self.lost = Some(Lost::Error(WorkerError::connection("sending Started")(
                        FrameError::Io(err),
                    )));
                }
            }
            if fds[0].revents != 0 {
                self.on_supervisor(conn);
            }
            if fds[1].revents & !libc::POLLOUT != 0 {
                self.on_output(conn);
            }
            if fds[1].revents & libc::POLLOUT != 0 {
                self.write_replies();
            }
            let exited = if self.pidfd.is_some() {
                fds[2].revents != 0
            } else {
                reap::has_exited(self.pid, false).unwrap_or(true)
            };
            if exited {
                return;
            }
        }
    }

    fn on_supervisor(&mut self, conn: &mut Connection) {
        let id = &self.e.execution_id;
        match conn.recv("waiting for an execution to end") {
            Ok(Some(ToWorker::Kill { execution_id })) if &execution_id == id => {
                reap::kill_group(self.pid);
            }
            Ok(Some(ToWorker::Kill { execution_id })) => {
                eprintln!("warden-worker: ignoring Kill for {execution_id:?}: running {id:?}");
            }
            Ok(Some(ToWorker::Shutdown)) => {
                reap::kill_group(self.pid);
                self.next = Next::Exit;
            }
            // The next execution, sent ahead (one at most): run after this one.
            Ok(Some(ToWorker::Execute(other))) if conn.queued_execution().is_none() => {
                conn.queue(ToWorker::Execute(other));
            }
            Ok(Some(ToWorker::Execute(mut other))) => {
                eprintln!(
                    "warden-worker: supervisor bug: a second Execute {:?} sent ahead while \
                     {id:?} is running; ignored",
                    other.execution_id
                );
                wipe::execute(&mut other);
            }
            Ok(Some(ToWorker::Welcome(_))) => {
                eprintln!("warden-worker: ignoring an unexpected Welcome while running {id:?}")
            }
            // The manifest of the next execution, sent ahead with it: applied after this
            // one, in order.
            Ok(Some(msg @ ToWorker::Modules(_))) => conn.queue(msg),
            Ok(Some(ToWorker::Reply(reply))) => {
                let mut reply = ToWorker::Reply(reply);
                if matches!(&reply, ToWorker::Reply(r) if &r.execution_id == id) {
                    self.queue_reply(&reply);
                }
                // Otherwise the answer to a request of an execution that already ended.
                // Either way it may carry a secret.
                wipe::to_worker(&mut reply);
            }
            Ok(None) => {
                reap::kill_group(self.pid);
                self.lost = Some(Lost::Closed);
            }
            Err(err) => {
                reap::kill_group(self.pid);
                self.lost = Some(Lost::Error(err));
            }
        }
    }

    /// Queues a Reply for the child and writes what the socket takes now.
    fn queue_reply(&mut self, reply: &ToWorker) {
        if self.socket.is_none() {
            return;
        }
        match frame::encode_exact(reply, self.max_frame) {
            Ok(mut bytes) => {
                self.replies.extend(&bytes);
                bytes.zeroize();
            }
            Err(err) => {
                // The supervisor sent it, so it fit a frame; this cannot really happen.
                eprintln!("warden-worker: cannot re-encode a reply for the child: {err}");
                return;
            }
        }
        // One reply per request, so only a child that sends requests and never reads the
        // answers gets here; it must not make the template hold unbounded memory.
        if self.replies.len() > MAX_QUEUED_REPLIES.max(2 * self.max_frame) {
            self.relay
                .fail("the child does not read the replies to its requests".into());
            reap::kill_group(self.pid);
            self.replies.clear();
            return;
        }
        self.write_replies();
    }

    /// Writes queued Replies until the socket would block.
    fn write_replies(&mut self) {
        let Some(sock) = self.socket.as_mut() else {
            self.replies.clear();
            return;
        };
        while !self.replies.is_empty() {
            match sock.write(self.replies.data()) {
                Ok(0) => break,
                Ok(n) => self.replies.consume(n),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE and the like: the child closed its end; nobody will read them.
                Err(_) => {
                    self.replies.clear();
                    break;
                }
            }
        }
    }

    fn on_output(&mut self, conn: &mut Connection) {
        let Some(sock) = self.socket.as_mut() else {
            return;
        };
        let connected = self.lost.is_none();
        let mut forward = |frames: &[u8]| {
            if connected {
                conn.hold_raw(frames);
            }
            Ok(())
        };
        let pumped = self.relay.pump(sock, &mut forward);
        // Logs go out at once; a Result (the child's last frame) waits for Ended.
        let pumped = match pumped {
            Ok(p) if connected && !self.relay.result_seen() => conn.flush().map(|()| p),
            other => other,
        };
        match pumped {
            Ok(Pumped::Progress | Pumped::WouldBlock) => {}
            Ok(Pumped::Eof) => self.socket = None,
            Ok(Pumped::Broken) => {
                reap::kill_group(self.pid);
                self.socket = None;
            }
            Err(err) => {
                reap::kill_group(self.pid);
                self.lost = Some(Lost::Error(WorkerError::connection(
                    "relaying a child's frames",
                )(FrameError::Io(err))));
            }
        }
    }

    /// Kills what is left, reaps, relays what is still buffered and sends Ended.
    fn finish(mut self, conn: &mut Connection) -> Result<Next, WorkerError> {
        // The child is dead but unreaped, so its process-group id cannot have been
        // reused: this reaches only what it left behind in its group.
        reap::kill_group(self.pid);
        let reaped = reap::reap(self.pid);
        // Release the execution's descriptors before Ended: once the supervisor has
        // Ended, the template holds only what it held before the execution.
        self.pidfd = None;
        // Escapees (setsid, double fork) were reparented to us, the subreaper.
        reap::sweep();
        // Every writer of the socket is dead now, so this is bounded by its buffer.
        if let Some(mut sock) = self.socket.take() {
            let connected = self.lost.is_none();
            // Held: they go out in one write with Ended, below.
            let mut forward = |frames: &[u8]| {
                if connected {
                    conn.hold_raw(frames);
                }
                Ok(())
            };
            if let Err(err) = self.relay.drain(&mut sock, &mut forward) {
                self.lost = Some(Lost::Error(WorkerError::connection(
                    "relaying a child's frames",
                )(FrameError::Io(err))));
            }
        }
        // Ended means "back to idle": nothing of this execution may still be open when
        // the supervisor reads it (it checks the template's fds between executions).
        drop(self.pidfd.take());
        let (status, usage) = match reaped {
            Ok(r) => r,
            Err(err) => {
                eprintln!("warden-worker: cannot reap child {}: {err}", self.pid);
                (ExitKind::Exited(UNKNOWN_EXIT), Usage::default())
            }
        };
        let exit = if let Some(reason) = self.relay.violation() {
            ExitKind::ProtocolError(reason.to_string())
        } else if let (Some(reason), ExitKind::Exited(_)) = (self.relay.leftover(), &status) {
            // A child that was killed may well die mid-frame; one that exited on its
            // own has no excuse for leaving half a frame behind.
            ExitKind::ProtocolError(reason)
        } else {
            status
        };
        match self.lost {
            None => {
                send_ended(conn, &self.e.execution_id, exit, usage)?;
                Ok(self.next)
            }
            Some(Lost::Closed) => Ok(Next::Exit),
            Some(Lost::Error(err)) => Err(err),
        }
    }
}

/// How long the template holds frames back (see `Connection::hold`) before writing them
/// anyway, so a long execution's Started is not delayed.
const HOLD_AT_MOST_MS: libc::c_int = 2;

fn send_ended(
    conn: &mut Connection,
    execution_id: &str,
    exit: ExitKind,
    usage: Usage,
) -> Result<(), WorkerError> {
    conn.send(
        &FromWorker::Ended(Ended {
            execution_id: execution_id.to_string(),
            exit,
            peak_memory_bytes: usage.peak_memory_bytes,
            user_cpu_us: usage.user_cpu_us,
            system_cpu_us: usage.system_cpu_us,
            worker_rss_bytes: procfs::rss_bytes(),
        }),
        "sending Ended",
    )
}

/// No child could be created. There is no Started (no process exists); a Result says
/// why and Ended, as always, closes the execution, so the supervisor records a failure
/// with a reason rather than waiting for a process that will never report.
fn not_started(
    conn: &mut Connection,
    e: &Execute,
    what: &str,
    err: io::Error,
) -> Result<Next, WorkerError> {
    eprintln!("warden-worker: {what}: {err}");
    conn.send(
        &FromWorker::Result(ExecutionResult {
            execution_id: e.execution_id.clone(),
            outcome: Outcome::Failed(ErrorInfo {
                error_type: "WorkerError".into(),
                message: format!("{what}: {err}"),
                traceback: String::new(),
            }),
            duration_us: 0,
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        }),
        "sending a Result",
    )?;
    send_ended(
        conn,
        &e.execution_id,
        ExitKind::Exited(UNKNOWN_EXIT),
        Usage::default(),
    )?;
    Ok(Next::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_warms_up_only_after_an_idle_slot() {
        // First spare, or after a failed fork: nothing says the slot is busy.
        assert!(warm_next(None));
        // The Execute came while the spare was still being forked or cleaned up after:
        // the slot is kept busy, a warm-up would delay the next one.
        assert!(!warm_next(Some(Duration::from_micros(300))));
        assert!(!warm_next(Some(
            WARM_UP_MIN_IDLE - Duration::from_micros(1)
        )));
        assert!(warm_next(Some(WARM_UP_MIN_IDLE)));
        assert!(warm_next(Some(Duration::from_secs(2))));
    }
}
