//! The template process: start-up, the handshake, and the message loop.
//!
//! Start-up order matters for the ~15 ms spawn-to-Hello budget and for safety: the
//! standard fds and signal state are made sane, the template becomes a child subreaper
//! (so nothing an execution starts can escape being killed and reaped), fd 3 is checked
//! before the comparatively slow interpreter start, and only then is Hello sent. The
//! module cache is loaded when the supervisor sends its manifest (right after the
//! handshake, once the supervisor has one).
//!
//! The loop handles one execution at a time: the module snapshot is brought up to the
//! `Execute`'s generation (see [`crate::modules::sync`]), then it runs to its `Ended` before the
//! next message is read (in fork mode the supervisor connection is still watched during
//! the execution, for Kill and Shutdown; see [`crate::forked`]). In fork mode the
//! template keeps one child forked in advance between executions ([`forked::Spare`]);
//! it is killed and reaped when the template exits.

use std::os::fd::{AsRawFd, BorrowedFd};

use pyo3::Python;
use warden_protocol::{FromWorker, Hello, Isolation, ToWorker, PROTOCOL_VERSION};

use crate::cli::Args;
use crate::code_cache::CodeCache;
use crate::connection::Connection;
use crate::error::WorkerError;
use crate::forked::{self, Next};
use crate::modules::source::RedisSource;
use crate::modules::sync::{self, Prepared};
use crate::python::interpreter;
use crate::{fds, modules, procfs, reap, reuse, sandbox, seccomp, wipe};

pub fn run(args: &Args) -> Result<(), WorkerError> {
    fds::ensure_std_fds().map_err(WorkerError::os("opening /dev/null on closed standard fds"))?;
    sandbox::reset_signals();
    reap::become_subreaper().map_err(WorkerError::os("becoming a child subreaper"))?;
    sandbox::make_undumpable().map_err(WorkerError::os("making the template non-dumpable"))?;
    let scratch = args
        .scratch_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("scratch"));
    sandbox::set_scratch(scratch, args.private_tmp)
        .map_err(WorkerError::os("creating the scratch directory"))?;
    let mut conn = Connection::inherit(args.max_frame)?;
    procfs::open_statm();
    let python = interpreter::start()?;

    handshake(&mut conn, args, python.version.clone())?;
    // After Hello: a slow or absent Redis must not delay (or fail) the handshake.
    let cache = args
        .redis_url
        .as_deref()
        .map(|url| RedisSource::new(url, &args.key_prefix));
    Python::attach(|py| modules::sync::start(py, cache))?;

    // Confined for good, now that the handshake and the first module load are done:
    // the children inherit the filter (and a reuse template runs workflows itself).
    let unix_redis = args
        .redis_url
        .as_deref()
        .is_some_and(|u| u.starts_with("unix:") || u.starts_with("redis+unix:"));
    seccomp::confine_template(!unix_redis).map_err(|e| WorkerError::Os {
        during: "confining the template with seccomp",
        source: std::io::Error::other(e),
    })?;
    // Fork mode: the child for the next execution, forked while there is nothing to do.
    let mut spare = None;
    let mut code = CodeCache::default();
    if args.isolation == Isolation::Fork {
        spare = forked::Spare::fork(&python.runner, &conn, true)
            .inspect_err(|err| eprintln!("warden-worker: cannot fork a spare child: {err}"))
            .ok();
    }
    loop {
        wait_for_message(&conn, &mut spare);
        let next = match conn.next("waiting for work")? {
            // The supervisor closed the connection: nothing left to do.
            None => Next::Exit,
            Some(ToWorker::Execute(mut e)) => {
                let next =
                    match Python::attach(|py| sync::prepare(py, &mut conn, &e, args.isolation))? {
                        Prepared::Skip(next) => next,
                        Prepared::Run => match args.isolation {
                            Isolation::Fork => forked::execute(
                                &python.runner,
                                &mut conn,
                                &mut e,
                                &mut spare,
                                &mut code,
                            )?,
                            Isolation::Reuse => reuse::execute(&python.runner, &mut conn, &e)?,
                        },
                    };
                // Nothing of an execution stays in the template (see `wipe`); fork mode
                // wiped it already, before forking the next spare.
                wipe::execute(&mut e);
                next
            }
            Some(ToWorker::Reply(mut reply)) => {
                // A reply for an execution that already ended (it may carry a secret).
                wipe::reply(&mut reply);
                Next::Continue
            }
            Some(ToWorker::Modules(m)) => {
                Python::attach(|py| sync::receive(py, m, args.isolation));
                // Fork mode: a spare forked before the new snapshot would only be
                // discarded by the next execution; fork its replacement now, while idle.
                if let Some(stale) = spare.take_if(|s| !s.current()) {
                    stale.discard();
                    spare = forked::Spare::fork(&python.runner, &conn, true)
                        .inspect_err(|err| {
                            eprintln!("warden-worker: cannot fork a spare child: {err}")
                        })
                        .ok();
                }
                Next::Continue
            }
            // A Kill racing with the execution's Ended: that execution is already over.
            Some(ToWorker::Kill { .. }) => Next::Continue,
            Some(ToWorker::Shutdown) => Next::Exit,
            Some(ToWorker::Welcome(_)) => {
                eprintln!("warden-worker: ignoring a second Welcome");
                Next::Continue
            }
        };
        if next == Next::Exit {
            if let Some(s) = spare.take() {
                s.discard();
            }
            reap::sweep();
            return Ok(());
        }
    }
}

/// Blocks until the supervisor's next message is readable, reaping the spare if it dies
/// meanwhile (something outside killed it: no zombie is left, and the next execution
/// forks a fresh child).
fn wait_for_message(conn: &Connection, spare: &mut Option<forked::Spare>) {
    if conn.has_queued() {
        return;
    }
    let Some(pidfd) = spare.as_ref().and_then(|s| s.pidfd()) else {
        return;
    };
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: both stay open for the whole loop: the connection is borrowed for it, and
    // the spare that owns the pidfd is taken only right before returning.
    let fds = unsafe { [conn.as_raw_fd(), pidfd].map(|fd| BorrowedFd::borrow_raw(fd)) };
    let mut fds = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    // Readable, at end of file or failed (any event at all).
    let fired = |p: &PollFd| p.any() != Some(false);
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            // recv() will block and report the connection's state itself.
            Err(_) => return,
        }
        if fired(&fds[1]) && spare.as_ref().is_some_and(|s| s.exited()) {
            if let Some(s) = spare.take() {
                s.reap_dead();
            }
            return;
        }
        if fired(&fds[0]) {
            return;
        }
    }
}

fn handshake(
    conn: &mut Connection,
    args: &Args,
    python_version: String,
) -> Result<(), WorkerError> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: args.worker_id,
        pid: std::process::id(),
        isolation: args.isolation,
        python_version,
    };
    conn.send(&FromWorker::Hello(hello), "sending Hello")?;
    match conn.recv("waiting for Welcome")? {
        Some(ToWorker::Welcome(w)) if w.accepted && w.protocol_version == PROTOCOL_VERSION => {
            Ok(())
        }
        Some(ToWorker::Welcome(w)) if w.accepted => Err(WorkerError::Refused(format!(
            "the supervisor speaks protocol {} and this worker {PROTOCOL_VERSION}",
            w.protocol_version
        ))),
        Some(ToWorker::Welcome(w)) => Err(WorkerError::Refused(
            w.reason.unwrap_or_else(|| "no reason given".into()),
        )),
        Some(other) => Err(WorkerError::Unexpected {
            during: "waiting for Welcome",
            what: format!("{other:?}"),
        }),
        None => Err(WorkerError::Unexpected {
            during: "waiting for Welcome",
            what: "the connection closed".into(),
        }),
    }
}
