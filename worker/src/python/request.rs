//! `_warden.request(op, args_json) -> str`: how a running execution asks the supervisor
//! something and blocks until it answers. The generic mechanism under the workflow SDK
//! (`kv_get`, `config_secret`, ...) and the module cache's `module_miss`.
//!
//! Python API (module `_warden`, built into the worker):
//!
//! ```python
//! value_json = _warden.request("kv_get", json.dumps({"key": "k"}))
//! ```
//!
//! - `op`: what is asked; the supervisor routes on it.
//! - `args_json`: a JSON text (an object, by convention), passed through unchanged.
//! - returns the reply's `value_json` (a JSON text) when the supervisor answers Ok;
//! - raises `RuntimeError(message)` when it answers Err (unknown op, not allowed, not
//!   found, ...), when called outside an execution, or when the worker is shutting down.
//!
//! The call releases the GIL while it waits, so other Python threads keep running; calls
//! from several threads are served one at a time. There is no timeout of its own: the
//! execution's deadline covers it. In reuse mode, a Kill for the execution that arrives
//! while it waits ends the template at once (the supervisor replaces it), and a Shutdown
//! makes the call raise and the template exit after the execution.
//!
//! Rust callers (the module finder) use [`call`].

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use warden_protocol::{ReplyOutcome, Request};

use crate::python::capture;
use crate::request::{self as exchange, Interrupted, Side};

/// Exit code of a reuse-mode template that was told to kill the execution it was running
/// while that execution waited for a reply.
pub const EXIT_KILLED: i32 = 113;

/// Where the running execution's requests go.
#[derive(Debug)]
struct Channel {
    fd: std::os::fd::RawFd,
    side: Side,
    execution_id: String,
    max_frame: usize,
    next_id: u32,
}

static CHANNEL: Mutex<Option<Channel>> = Mutex::new(None);
/// Held for a whole exchange (without the GIL): one reader of the fd at a time.
static EXCHANGE: Mutex<()> = Mutex::new(());
/// A Shutdown or a closed connection seen while waiting (reuse mode): the template's
/// loop must stop after this execution.
static INTERRUPTION: Mutex<Option<Interrupted>> = Mutex::new(None);

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // Nothing these locks guard can be left half-updated by a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts accepting requests for one execution on `fd` (the same fd its output goes to).
/// Request ids start at 1: the template keeps 0 for its own requests.
pub fn begin(fd: std::os::fd::RawFd, side: Side, execution_id: &str, max_frame: usize) {
    *lock(&CHANNEL) = Some(Channel {
        fd,
        side,
        execution_id: execution_id.to_string(),
        max_frame,
        next_id: 1,
    });
}

/// Stops accepting requests (the execution is over).
pub fn end() {
    *lock(&CHANNEL) = None;
}

/// What the template must do after the execution because of something that arrived
/// while a request waited (reuse mode), if anything.
pub fn take_interruption() -> Option<Interrupted> {
    lock(&INTERRUPTION).take()
}

/// Why a [`call`] produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no execution is running, so there is nobody to ask")]
    NoExecution,
    /// The supervisor answered with an error.
    #[error("{0}")]
    Refused(String),
    #[error("request `{op}` failed: {why}")]
    Failed { op: String, why: String },
}

/// Sends `op(args_json)` for the running execution and waits for the answer.
pub fn call(py: Python<'_>, op: &str, args_json: &str) -> Result<String, RequestError> {
    let (fd, side, max_frame, request) = {
        let mut guard = lock(&CHANNEL);
        let ch = guard.as_mut().ok_or(RequestError::NoExecution)?;
        let request = Request {
            execution_id: ch.execution_id.clone(),
            request_id: ch.next_id,
            op: op.to_string(),
            args_json: args_json.to_string(),
        };
        ch.next_id = ch.next_id.wrapping_add(1).max(1);
        (ch.fd, ch.side, ch.max_frame, request)
    };
    let failed = |why: String| RequestError::Failed {
        op: op.to_string(),
        why,
    };
    let bytes = exchange::encode(&request, max_frame).map_err(failed)?;
    // Without the GIL: other Python threads run while this one waits. Both locks are
    // taken and released inside, never while waiting for the GIL.
    let outcome = py.detach(|| {
        let _one_at_a_time = lock(&EXCHANGE);
        // Under the log sink's lock, so a Log from another thread cannot split it.
        capture::write_frame(fd, &bytes).map_err(|e| Interrupted::Failed(e.to_string()))?;
        exchange::wait_for_reply(fd, side, max_frame, &request)
    });
    match outcome {
        Ok(ReplyOutcome::Ok { value_json }) => Ok(value_json),
        Ok(ReplyOutcome::Err { message }) => Err(RequestError::Refused(message)),
        Err(Interrupted::Killed) => {
            // Reuse mode: this process *is* the execution. Stop it the only way that
            // cannot be caught, taking anything it started along.
            crate::reap::sweep();
            // SAFETY: ends the process at once; nothing of this execution may go on.
            unsafe { libc::_exit(EXIT_KILLED) }
        }
        Err(why @ (Interrupted::Shutdown | Interrupted::Closed)) => {
            if side == Side::Template {
                *lock(&INTERRUPTION) = Some(why.clone());
            }
            Err(failed(why.to_string()))
        }
        Err(why) => Err(failed(why.to_string())),
    }
}

/// `_warden.request(op, args_json) -> str`: asks the supervisor `op` for the running
/// execution and returns its answer (JSON text). Raises RuntimeError with the
/// supervisor's message when it answers with an error, and RuntimeError when there is
/// no execution or the worker is stopping.
#[pyfunction]
pub fn request(py: Python<'_>, op: &str, args_json: &str) -> PyResult<String> {
    if op.is_empty() {
        return Err(PyRuntimeError::new_err("request: `op` must not be empty"));
    }
    call(py, op, args_json).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}
