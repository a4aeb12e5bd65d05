//! Reuse-mode executions (`--isolation reuse`, trusted code only): the template runs the
//! function itself, with the same runner and frames as a forked child.
//!
//! What is and is not isolated between executions:
//! - The workflow's namespace is a fresh module each time; the modules an execution
//!   imported from outside the interpreter's library directories (the workflow's own
//!   modules, anything on a `sys.path` entry it added) are removed from `sys.modules`
//!   afterwards, `sys.path` is restored, and output capture is reinstalled. Standard
//!   library and installed packages it imported stay loaded (some C extensions cannot be
//!   initialised twice in one process).
//! - Limits are per process and cannot be raised again once lowered: the template takes
//!   those of its first execution (memory, open files, processes, file size; not CPU
//!   time, which would add up over its executions) for the rest of its life, before any
//!   workflow code runs. The supervisor covers the rest: it enforces deadlines by killing
//!   the whole template, recycles it on memory growth (it gets `worker_rss_bytes` in
//!   every Ended) by sending Shutdown, replaces it if it dies, and gives a template the
//!   executions of one organization only (recycling it to serve another).
//! - The template confined itself with the children's seccomp filter at start-up.
//! - A `Kill` cannot be answered while the function runs (the template is busy running
//!   it), which is why the supervisor kills the template instead. The exception is a
//!   function waiting in `_warden.request`: the template is then reading its connection,
//!   so a Kill for the execution ends the template there and then, and a Shutdown makes
//!   the request fail and the template exit after the execution.

use pyo3::Python;
use warden_protocol::{frame, Ended, Execute, ExitKind, FrameError, FromWorker, Started};

use crate::connection::Connection;
use crate::error::WorkerError;
use crate::forked::Next;
use crate::procfs;
use crate::python::interpreter::describe;
use crate::python::request;
use crate::python::runner::Runner;
use crate::reap::{self, Usage};
use crate::request::{Interrupted, Side};

use std::os::fd::AsRawFd;
use std::sync::Once;

/// Applies the first execution's limits (CPU time aside) to the template, once. A limit
/// that cannot be applied ends the template: it must not run code unconfined.
fn limit_once(e: &Execute) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut limits = e.limits.clone();
        limits.cpu_seconds = 0;
        if let Err(why) = crate::sandbox::apply_limits(&limits) {
            eprintln!("warden-worker: cannot limit the reuse template, exiting: {why}");
            // SAFETY: ends the process at once; the supervisor reports the execution
            // as crashed and starts a new template.
            unsafe { libc::_exit(1) };
        }
    });
}

pub fn execute(runner: &Runner, conn: &mut Connection, e: &Execute) -> Result<Next, WorkerError> {
    limit_once(e);
    // Started is written with the execution's first frame; for a quick execution that
    // logs nothing, Started, Result and Ended go out in one write (one wake-up of the
    // supervisor instead of three).
    let started = frame::encode(
        &FromWorker::Started(Started {
            execution_id: e.execution_id.clone(),
            pid: std::process::id(),
        }),
        conn.max_frame(),
    )
    .map_err(WorkerError::connection("sending Started"))?;
    let before = Usage::of_self();
    let delivered = Python::attach(|py| {
        let state = runner.snapshot(py);
        let delivered = runner.run(
            py,
            e,
            conn.as_raw_fd(),
            Side::Template,
            conn.max_frame(),
            started,
        );
        match state {
            Ok(state) => {
                if let Err(err) = runner.restore(py, state) {
                    eprintln!(
                        "warden-worker: cannot restore state after a reuse execution: {}",
                        describe(py, &err)
                    );
                }
            }
            Err(err) => eprintln!(
                "warden-worker: cannot snapshot state before a reuse execution: {}",
                describe(py, &err)
            ),
        }
        delivered
    });
    // Processes the code started and left running do not outlive the execution.
    reap::sweep();
    // A request of this execution saw the supervisor go away or ask us to stop.
    let interrupted = request::take_interruption();
    if interrupted == Some(Interrupted::Closed) {
        return Ok(Next::Exit);
    }
    let rest = delivered.map_err(|err| WorkerError::Connection {
        during: "sending an execution's output",
        source: FrameError::Io(err),
    })?;
    conn.hold_raw(&rest);
    let after = Usage::of_self();
    conn.send(
        &FromWorker::Ended(Ended {
            execution_id: e.execution_id.clone(),
            exit: ExitKind::InProcess,
            peak_memory_bytes: after.peak_memory_bytes,
            user_cpu_us: after.user_cpu_us.saturating_sub(before.user_cpu_us),
            system_cpu_us: after.system_cpu_us.saturating_sub(before.system_cpu_us),
            worker_rss_bytes: procfs::rss_bytes(),
        }),
        "sending Ended",
    )?;
    match interrupted {
        Some(Interrupted::Shutdown) => Ok(Next::Exit),
        _ => Ok(Next::Continue),
    }
}
