//! The forked child of one fork-mode execution: forked in advance (a spare), it sandboxes
//! itself, warms up while nothing is asked of it, waits for its `Execute`, applies the
//! execution's limits, runs the function, writes its frames and `_exit`s.
//!
//! Everything here runs after `fork` in a copy of the template, with the GIL held. The
//! child never returns into the template's code and never runs destructors or `atexit`
//! handlers: it leaves with `libc::_exit`, whatever happens. Fd 3, which
//! [`sandbox::isolate_fds`] points at the child's end of its socket, carries the
//! `Execute` in, then its frames out and the replies to its requests in
//! ([`crate::request`]).

use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use pyo3::Python;
use warden_protocol::{io as frame_io, ErrorInfo, Execute, ExecutionResult, Outcome, ToWorker};

use crate::fds::{self, CONNECTION_FD};
use crate::python::runner::{self, Runner};
use crate::request::Side;
use crate::{sandbox, seccomp, std_output};

/// Exit code when the template died before the child could arrange to die with it.
pub const EXIT_ORPHANED: i32 = 111;
/// Exit code when the output socket could not be set up or written: nobody will ever
/// read this child's Result, but the template (if alive) reports the code in `Ended`.
pub const EXIT_OUTPUT_LOST: i32 = 112;

/// Exit code of a spare the template closed without giving it an execution.
pub const EXIT_UNUSED: i32 = 0;

pub fn run(
    py: Python<'_>,
    runner: &Runner,
    socket_fd: RawFd,
    template_pid: nix::unistd::Pid,
    scratch: &std::path::Path,
    max_frame: usize,
    warm: bool,
) -> ! {
    // Group first, so that from here on one killpg reaches this process and everything it
    // starts (the template also sets it from its side; whichever runs first wins). It
    // cannot fail for a fresh child of a process that is not a session leader's
    // foreground job being changed, so an error is ignored rather than fatal.
    let _ = sandbox::enter_own_group();
    if sandbox::die_with_template(template_pid).is_err() {
        exit(EXIT_ORPHANED);
    }
    if sandbox::isolate_fds(socket_fd).is_err() {
        exit(EXIT_OUTPUT_LOST);
    }
    // Fds 1 and 2 are the supervisor's stdout and stderr until this: a workflow must
    // never write there (forged log lines, a truncated log file).
    if std_output::redirect().is_err() {
        exit(EXIT_OUTPUT_LOST);
    }
    // Its own uid and gid (when the supervisor gave it some), its own scratch directory
    // (Python's HOME and TMPDIR already point there: `point_python_at`, in the template),
    // then the seccomp filter: from there on nothing this process runs can reach its
    // template, the host's services or the kernel's namespaces. A child that cannot
    // confine itself runs no workflow.
    let confined = sandbox::become_child_user()
        .map_err(|e| format!("cannot switch to the children's uid: {e}"))
        .and_then(|()| {
            sandbox::enter_scratch(scratch).map_err(|e| {
                format!(
                    "cannot create the execution's directory {}: {e}",
                    scratch.display()
                )
            })
        })
        .and_then(|()| seccomp::deny_unix_sockets());
    // Idle time is spent taking the faults the execution would otherwise take, when the
    // slot is idle (`warm`, see `forked::warm_next`); an Execute that is already waiting
    // is not kept waiting for it.
    if warm && confined.is_ok() && !fds::readable_now(CONNECTION_FD) {
        runner.warm_up(py, CONNECTION_FD, max_frame);
    }
    // SAFETY: fd 3 is this process's open socket; ManuallyDrop keeps it open (it is
    // still the output) when `stream` goes out of scope.
    let mut stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(CONNECTION_FD) });
    let e = match frame_io::read(&mut *stream, max_frame) {
        Ok(Some(ToWorker::Execute(e))) => e,
        // Closed: the template discarded this spare.
        Ok(None) => exit(EXIT_UNUSED),
        Ok(Some(_)) | Err(_) => exit(EXIT_OUTPUT_LOST),
    };
    execute(py, runner, &e, max_frame, confined)
}

fn execute(
    py: Python<'_>,
    runner: &Runner,
    e: &Execute,
    max_frame: usize,
    confined: Result<(), String>,
) -> ! {
    if let Err(reason) = confined.and_then(|()| sandbox::apply_limits(&e.limits)) {
        // Refuse to run user code unconfined; say why.
        let result = ExecutionResult {
            execution_id: e.execution_id.clone(),
            outcome: Outcome::Failed(ErrorInfo {
                error_type: "SandboxError".into(),
                message: format!("the execution's sandbox could not be applied: {reason}"),
                traceback: String::new(),
            }),
            duration_us: 0,
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        };
        let code = match runner::write_result(CONNECTION_FD, result, max_frame) {
            Ok(()) => 0,
            Err(_) => EXIT_OUTPUT_LOST,
        };
        exit(code);
    }
    let sent = runner
        .run(py, e, CONNECTION_FD, Side::Child, max_frame, Vec::new())
        .and_then(|rest| crate::fds::write_all(CONNECTION_FD, &rest));
    match sent {
        Ok(()) => exit(0),
        Err(_) => exit(EXIT_OUTPUT_LOST),
    }
}

/// `HOME`, `TMPDIR` and `tempfile`'s cached directory become the next child's own
/// directory. Run by the template right before it forks that child
/// ([`sandbox::next_scratch`] says why there).
pub fn point_python_at(py: Python<'_>, dir: &std::path::Path) -> Result<(), String> {
    use pyo3::types::PyAnyMethods;
    let dir = dir.display().to_string();
    let set = || -> pyo3::PyResult<()> {
        let environ = py.import("os")?.getattr("environ")?;
        environ.set_item("HOME", &dir)?;
        environ.set_item("TMPDIR", &dir)?;
        // `tempfile` reads TMPDIR when first used; only a copy imported earlier (by the
        // template) has a directory cached. Importing it here would cost milliseconds.
        if let Ok(tempfile) = py.import("sys")?.getattr("modules")?.get_item("tempfile") {
            tempfile.setattr("tempdir", &dir)?;
        }
        Ok(())
    };
    set().map_err(|e| format!("cannot point Python at the execution's directory: {e}"))
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; nothing of this copy of the template
    // (Rust destructors, Python finalisation, stdio buffers) may run in the child.
    unsafe { libc::_exit(code) }
}
